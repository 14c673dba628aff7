//! Closing a server and a client factory stops and joins every thread they started.
//!
//! A binary of its own with a single test: it counts the process's threads by name,
//! which other tests running in parallel in the same process would disturb.

#![cfg(target_os = "linux")]
#![allow(clippy::disallowed_types)] // tests use std's Arc directly

mod proc_threads;

use proc_threads::rpc_threads;

use std::sync::Arc;
use std::time::Duration;

use rpcenv::RpcConf;
use rpcenv::transport::{
    Responder, RpcHandler, TransportClient, TransportClientFactory, TransportConf,
    TransportContext, TransportServer,
};

struct Echo;

impl RpcHandler for Echo {
    fn receive(&self, _client: &TransportClient, message: Vec<u8>, responder: Responder) {
        responder.reply(message);
    }
}

/// A server, a factory, and a client that has made one round trip.
fn serve_and_ping(
    ctx: &TransportContext,
) -> (TransportServer, TransportClientFactory, TransportClient) {
    let server = ctx.create_server("127.0.0.1", 0).unwrap();
    let factory = ctx.create_client_factory();
    let client = factory.create_client("127.0.0.1", server.port()).unwrap();
    let reply = client
        .send_rpc_sync(b"ping", Duration::from_secs(10))
        .unwrap();
    assert_eq!(reply, b"ping");
    (server, factory, client)
}

#[test]
fn close_and_drop_join_every_thread_the_server_and_factory_started() {
    assert_eq!(rpc_threads(), Vec::<String>::new());
    let conf = TransportConf::from_conf(&RpcConf::new().set("rpc.io.threads", "3")).unwrap();
    let ctx = TransportContext::new(conf, Arc::new(Echo));
    let (server, factory, client) = serve_and_ping(&ctx);
    assert_eq!(
        rpc_threads(),
        ["rpc-boss", "rpc-io-0", "rpc-io-1", "rpc-io-2"]
    );

    server.close();
    // The factory still uses the event loops; only the boss is gone.
    assert_eq!(rpc_threads(), ["rpc-io-0", "rpc-io-1", "rpc-io-2"]);
    factory.close();
    // close() returned after joining: no polling needed.
    assert_eq!(rpc_threads(), Vec::<String>::new());
    assert!(!client.is_active());

    // Dropping joins as well.
    let (server, factory, client) = serve_and_ping(&ctx);
    assert_eq!(rpc_threads().len(), 4);
    drop(factory);
    drop(server);
    assert_eq!(rpc_threads(), Vec::<String>::new());
    assert!(!client.is_active());
}
