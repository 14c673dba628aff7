//! The transport end to end, in one process on loopback: an echo server and a client
//! exchange requests, failures, one-way messages and a call in the other direction, then
//! the client measures round trips.
//!
//! ```text
//! cargo run --release --example transport_demo
//! RUST_LOG=debug cargo run --release --example transport_demo   # with the transport's log
//! ```

#![allow(clippy::disallowed_types)] // examples use std's Arc and Mutex directly

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rpcenv::transport::{Responder, RpcHandler, TransportClient, TransportConf, TransportContext};
use rpcenv::{RpcConf, RpcError};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Echoes requests, fails `FAIL:` ones, counts one-way messages (`count` returns the
/// number), and answers `call-me-back` by asking the caller a question on the same
/// connection.
#[derive(Default)]
struct Server {
    one_way: AtomicU64,
}

impl RpcHandler for Server {
    fn receive(&self, client: &TransportClient, message: Vec<u8>, responder: Responder) {
        if let Some(rest) = message.strip_prefix(b"FAIL:") {
            responder.fail(String::from_utf8_lossy(rest));
        } else if message == b"count" {
            responder.reply(self.one_way.load(Ordering::SeqCst).to_string());
        } else if message == b"call-me-back" {
            // Handlers must not block: ask asynchronously, answer when the reply comes.
            client.send_rpc(b"what is your name?", move |answer| match answer {
                Ok(name) => {
                    let mut text = b"hello, ".to_vec();
                    text.extend(name);
                    responder.reply(text);
                }
                Err(err) => responder.fail(err.to_string()),
            });
        } else {
            responder.reply(message);
        }
    }

    fn receive_one_way(&self, _client: &TransportClient, _message: Vec<u8>) {
        self.one_way.fetch_add(1, Ordering::SeqCst);
    }
}

/// The client side answers the server's questions.
struct Client;

impl RpcHandler for Client {
    fn receive(&self, _client: &TransportClient, _message: Vec<u8>, responder: Responder) {
        responder.reply("transport_demo");
    }
}

/// The transport layer alone (Spark's TransportContext, TransportServer and
/// TransportClient): an echo, a failure, one-way messages, concurrent requests, a request
/// the other way, a 16 MiB echo and round-trip latencies, on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "transport_demo")]
struct Flags {
    /// Round trips of 64 bytes timed at the end.
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..))]
    round_trips: u32,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(flags.round_trips as usize) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("transport_demo failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(round_trips: usize) -> Result<(), Box<dyn Error>> {
    let conf = TransportConf::from_conf(&RpcConf::new().set("rpc.io.threads", "2"))?;
    let server_ctx = TransportContext::new(conf.clone(), Arc::new(Server::default()));
    let server = server_ctx.create_server("127.0.0.1", 0)?;
    println!("server listening on 127.0.0.1:{}", server.port());

    let client_ctx = TransportContext::new(conf, Arc::new(Client));
    let factory = client_ctx.create_client_factory();
    let client = factory.create_client("127.0.0.1", server.port())?;

    let reply = client.send_rpc_sync(b"hello", TIMEOUT)?;
    println!("echo:          {:?}", String::from_utf8_lossy(&reply));

    match client.send_rpc_sync(b"FAIL:boom", TIMEOUT) {
        Err(RpcError::Remote { message }) => println!("failure:       {message:?}"),
        other => return Err(format!("expected a failure, got {other:?}").into()),
    }

    for i in 0..1000u32 {
        client.send(i.to_be_bytes())?;
    }
    let count = client.send_rpc_sync(b"count", TIMEOUT)?;
    println!(
        "one-way:       1000 sent, server counted {}",
        String::from_utf8_lossy(&count)
    );

    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..200u32 {
        let tx = tx.clone();
        client.send_rpc(format!("request {i}"), move |result| {
            let _ = tx.send((i, result));
        });
    }
    drop(tx);
    let mut matched = 0;
    for (i, result) in rx.iter().take(200) {
        if result? == format!("request {i}").as_bytes() {
            matched += 1;
        }
    }
    println!("concurrent:    200 in flight, {matched} answered with their own body");

    let reply = client.send_rpc_sync(b"call-me-back", TIMEOUT)?;
    println!("other way:     {:?}", String::from_utf8_lossy(&reply));

    let big = vec![0xabu8; 16 << 20];
    let started = Instant::now();
    let back = client.send_rpc_sync(big.clone(), TIMEOUT)?;
    let took = started.elapsed();
    println!(
        "16 MiB echo:   {} in {:.1} ms",
        if back == big {
            "identical"
        } else {
            "DIFFERENT"
        },
        took.as_secs_f64() * 1e3
    );

    let mut latencies = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        client.send_rpc_sync(&[7u8; 64][..], TIMEOUT)?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "round trips:   {round_trips} x 64 B, p50 {:.1} µs, p99 {:.1} µs",
        micros(latencies[latencies.len() / 2]),
        micros(latencies[latencies.len() * 99 / 100])
    );

    factory.close();
    server.close();
    println!("client and server closed; all threads joined");
    if matched != 200 || back != big || count != b"1000" {
        return Err("a check did not hold (see above)".into());
    }
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
