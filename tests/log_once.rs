//! What is logged once: a one-way message an endpoint cannot decode is one `warn` line
//! (the env's), not a second one from the default `on_error`; a failed connect is an
//! error returned to the caller, not also a `warn` line of the library's. Its own test
//! binary: it installs the process's one logger.

#![allow(clippy::disallowed_types)]

#[path = "support/capture_log.rs"]
mod capture_log;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use log::LevelFilter;
use rpcenv::{EndpointContext, RpcEndpoint, RpcEnv, RpcError};

/// Takes strings; counts them.
struct Words(std::sync::mpsc::Sender<String>);

impl RpcEndpoint for Words {
    type Message = String;
    fn receive(&mut self, msg: String, _ctx: &EndpointContext<String>) {
        let _ = self.0.send(msg);
    }
}

/// Takes numbers; the default `on_error`.
struct Numbers(std::sync::mpsc::Sender<u64>);

impl RpcEndpoint for Numbers {
    type Message = u64;
    fn receive(&mut self, msg: u64, _ctx: &EndpointContext<u64>) {
        let _ = self.0.send(msg);
    }
}

fn lines_with(needle: &str) -> Vec<String> {
    capture_log::lines()
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

#[test]
fn a_bad_one_way_message_and_a_failed_connect_are_logged_once() {
    capture_log::install(LevelFilter::Debug);
    let server = RpcEnv::builder("log-once")
        .bind_address("127.0.0.1")
        .port(0)
        .build()
        .expect("a server env");
    let address = server.address().expect("an address");
    let client = RpcEnv::builder("log-once-client")
        .client_mode(true)
        .build()
        .expect("a client env");

    // A reference to `words` of type String; `words` then takes numbers instead.
    let (words_tx, _words_rx) = std::sync::mpsc::channel();
    let words = server
        .setup_endpoint("words", Words(words_tx))
        .expect("words");
    let remote = client
        .setup_endpoint_ref::<String>(&address, "words")
        .expect("a reference");
    server.stop(&words).expect("stopped");
    let (numbers_tx, numbers_rx) = std::sync::mpsc::channel();
    let numbers = server
        .setup_endpoint("words", Numbers(numbers_tx))
        .expect("numbers");
    remote.send("not a number".to_owned()).expect("sent");
    // A good message after it: once it is handled, the bad one was handled too.
    let good = client
        .setup_endpoint_ref::<u64>(&address, "words")
        .expect("a reference");
    good.send(7).expect("sent");
    assert_eq!(numbers_rx.recv_timeout(Duration::from_secs(30)), Ok(7));
    let about_it = lines_with("endpoint words");
    assert_eq!(about_it.len(), 1, "{about_it:#?}");
    assert!(about_it[0].starts_with("WARN "), "{about_it:#?}");
    server.stop(&numbers).expect("stopped");

    // A port nobody listens on: the error comes back, the library logs no warning.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let started = Instant::now();
    let err = client
        .setup_endpoint_ref::<u64>(
            &format!("127.0.0.1:{port}")
                .parse::<rpcenv::RpcAddress>()
                .unwrap(),
            "none",
        )
        .expect_err("nobody listens there");
    assert!(matches!(err, RpcError::Connection { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let connect_lines = lines_with(&format!("127.0.0.1:{port}"));
    assert!(connect_lines.is_empty(), "{connect_lines:#?}");

    client.shutdown();
    server.shutdown();
}
