//! `TransportServer`: ports, the port-retry rule, closing.

use std::net::TcpStream;

use rpcenv::RpcError;

use crate::support::{ClientSide, Fixture, HOST, assert_echo, wait_for};

#[test]
fn port_zero_gives_a_nonzero_port() {
    let f = Fixture::new(&[]);
    assert_ne!(f.port(), 0);
    assert_eq!(f.server.local_address().port(), f.port());
    assert_eq!(f.server.local_address().ip().to_string(), HOST);
    assert_echo(&f.client(), b"hello");
}

/// Spark `RpcEnvSuite` "port conflict" (`Utils.startServiceOnPort`): a taken port makes
/// the server bind a later one.
#[test]
fn port_conflict_binds_a_different_port() {
    let f = Fixture::new(&[]);
    let taken = f.port();
    let second = f
        .ctx
        .create_server(HOST, taken)
        .expect("a server next to the taken port");
    assert_ne!(second.port(), taken);
    assert_ne!(second.port(), 0);
    let side = ClientSide::new(&[]);
    assert_echo(&side.connect(taken), b"first");
    assert_echo(&side.connect(second.port()), b"second");
}

#[test]
fn port_conflict_with_no_retries_fails_with_bind_error() {
    let f = Fixture::new(&[("rpc.port.maxRetries", "0")]);
    let taken = f.port();
    let err = f.ctx.create_server(HOST, taken).unwrap_err();
    assert!(
        matches!(&err, RpcError::Bind { start_port, retries: 0, .. } if *start_port == taken),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&taken.to_string()),
        "{text} should name the start port"
    );
    assert!(
        text.contains("rpc.port.maxRetries"),
        "{text} should name the key"
    );
    // The server that holds the port is unaffected.
    assert_echo(&f.client(), b"still serving");
}

#[test]
fn close_is_idempotent_refuses_new_connects_and_closes_accepted_connections() {
    let f = Fixture::new(&[]);
    let side = ClientSide::new(&[]);
    let client = side.connect(f.port());
    assert_echo(&client, b"before close");
    let port = f.port();
    f.server.close();
    f.server.close();
    wait_for("the accepted connection to close", 5, || {
        !client.is_active()
    });
    wait_for("channel_inactive on the server side", 5, || {
        f.handler.inactive().len() == 1
    });
    assert!(
        TcpStream::connect((HOST, port)).is_err(),
        "a closed server still accepts"
    );
    let err = side.factory.create_client(HOST, port).unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err:?}");
}

#[test]
fn closing_one_server_leaves_another_of_the_same_context_serving() {
    let f = Fixture::new(&[]);
    let second = f.ctx.create_server(HOST, 0).expect("a second server");
    let side = ClientSide::new(&[]);
    let to_first = side.connect(f.port());
    let to_second = side.connect(second.port());
    second.close();
    wait_for("the second server's connection to close", 5, || {
        !to_second.is_active()
    });
    assert!(to_first.is_active());
    assert_echo(&to_first, b"first still serves");
}
