//! `TransportClientFactory`: the per-peer pool, closing, failed connects.
//!
//! Ports Spark's `TransportClientFactorySuite` (network-common) where it applies.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rpcenv::RpcError;
use rpcenv::transport::TransportContext;

use crate::support::{
    Fixture, HOST, PROMPTLY, TestHandler, assert_connection_error, assert_echo, join, refused_port,
    spawn, transport_conf, wait_for,
};

/// Spark `reuseClientsUpToConfigVariable`: 10 × n sequential `create_client` calls give at
/// most n distinct clients, all active, and no failures.
#[test]
fn reuse_clients_up_to_config_variable() {
    for per_peer in 1..=4usize {
        let f = Fixture::new(&[("rpc.io.numConnectionsPerPeer", &per_peer.to_string())]);
        let mut ids = HashSet::new();
        for _ in 0..10 * per_peer {
            let client = f.client();
            assert!(client.is_active());
            ids.insert(client.id());
        }
        assert_pooled(&f, &ids, per_peer);
    }
}

/// Spark `reuseClientsUpToConfigVariableConcurrent`: the same with concurrent creators.
#[test]
fn reuse_clients_up_to_config_variable_concurrent() {
    for per_peer in 1..=4usize {
        let f = Arc::new(Fixture::new(&[(
            "rpc.io.numConnectionsPerPeer",
            &per_peer.to_string(),
        )]));
        let threads = 10 * per_peer;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = Arc::clone(&f);
                let barrier = Arc::clone(&barrier);
                spawn(&format!("test-creator-{t}"), move || {
                    barrier.wait();
                    let client = f
                        .factory
                        .create_client(HOST, f.port())
                        .unwrap_or_else(|e| panic!("create_client failed: {e}"));
                    assert!(client.is_active());
                    client.id()
                })
            })
            .collect();
        let ids: HashSet<u64> = handles.into_iter().map(join).collect();
        assert_pooled(&f, &ids, per_peer);
    }
}

/// Spark `returnDifferentClientsForDifferentServers`.
#[test]
fn return_different_clients_for_different_servers() {
    let f = Fixture::new(&[]);
    let second = f.ctx.create_server(HOST, 0).expect("a second server");
    let a = f
        .factory
        .create_client(HOST, f.port())
        .expect("client of server 1");
    let b = f
        .factory
        .create_client(HOST, second.port())
        .expect("client of server 2");
    assert!(a.is_active() && b.is_active());
    assert_ne!(a.id(), b.id());
    assert_eq!(a.remote_address().port(), f.port());
    assert_eq!(b.remote_address().port(), second.port());
    assert_echo(&a, b"one");
    assert_echo(&b, b"two");
}

/// Spark `neverReturnInactiveClients`.
#[test]
fn never_return_inactive_clients() {
    let f = Fixture::new(&[]);
    let first = f.client();
    first.close();
    wait_for("the closed client to be inactive", 5, || !first.is_active());
    let second = f.client();
    assert!(second.is_active());
    assert_ne!(second.id(), first.id());
    assert_echo(&second, b"new one");
}

/// A client closed by the server (not by this side) is not handed out again either.
#[test]
fn never_return_clients_closed_by_the_peer() {
    let f = Fixture::new(&[]);
    let first = f.client();
    assert!(first.send_rpc_sync("close", PROMPTLY).is_err());
    wait_for("the client to see the close", 5, || !first.is_active());
    let second = f.client();
    assert_ne!(second.id(), first.id());
    assert_echo(&second, b"new one");
}

/// Spark `closeBlockClientsWithFactory`: closing the factory makes all its clients
/// inactive.
#[test]
fn close_block_clients_with_factory() {
    let f = Fixture::new(&[("rpc.io.numConnectionsPerPeer", "2")]);
    let second = f.ctx.create_server(HOST, 0).expect("a second server");
    let clients = [
        f.client(),
        f.client(),
        f.factory
            .create_client(HOST, second.port())
            .expect("client of server 2"),
    ];
    assert!(clients.iter().all(|c| c.is_active()));
    f.factory.close();
    wait_for(
        "every client of the closed factory to be inactive",
        5,
        || clients.iter().all(|c| !c.is_active()),
    );
    f.factory.close(); // idempotent
    // The servers are unaffected.
    let other = f.ctx.create_client_factory();
    assert_echo(
        &other
            .create_client(HOST, f.port())
            .expect("a new factory's client"),
        b"x",
    );
}

/// Spark `closeFactoryBeforeCreateClient`.
#[test]
fn close_factory_before_create_client() {
    let f = Fixture::new(&[]);
    f.factory.close();
    let started = Instant::now();
    let err = f.factory.create_client(HOST, f.port()).unwrap_err();
    assert_connection_error(&err, f.port());
    assert!(started.elapsed() < PROMPTLY);
}

/// Spark `fastFailConnectionInTimeWindow` (first half; RPC never fast-fails): connecting
/// to a port nobody listens on fails promptly with `Connection` naming the address.
#[test]
fn connect_to_port_nobody_listens_on_fails_promptly() {
    crate::support::init_logger();
    let (holder, port) = refused_port();

    let ctx = TransportContext::new(transport_conf(&[]), TestHandler::new());
    let factory = ctx.create_client_factory();
    for _ in 0..2 {
        let started = Instant::now();
        let err = factory.create_client(HOST, port).unwrap_err();
        assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
        assert_connection_error(&err, port);
        assert!(
            std::error::Error::source(&err).is_some(),
            "the OS error is kept as the source: {err:?}"
        );
    }
    drop(holder);
}

/// Spark `unlimitedConnectionAndCreationTimeouts` (in part): with the timeout disabled
/// (`0`), an idle client stays active, and a failed connect still fails with a cause.
#[test]
fn disabled_connection_timeout_keeps_idle_clients_and_still_fails_connects() {
    let f = Fixture::new(&[("rpc.io.connectionTimeout", "0")]);
    let client = f.client();
    assert_echo(&client, b"x");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(client.is_active());
    let (_holder, port) = refused_port();
    let err = f.factory.create_client(HOST, port).unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
}

/// No more distinct clients than the pool holds, and the pool still works.
#[track_caller]
fn assert_pooled(f: &Fixture, ids: &HashSet<u64>, per_peer: usize) {
    assert!(
        ids.len() <= per_peer,
        "{} distinct clients with numConnectionsPerPeer={per_peer}",
        ids.len()
    );
    assert_echo(&f.client(), b"pooled");
}
