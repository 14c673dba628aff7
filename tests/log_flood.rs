//! A peer cannot flood the logs: 100,000 bad frames of each of two kinds from a raw
//! socket produce a bounded number of `warn` lines, and every one is counted in the
//! metrics. Its own test binary: it installs the process's one logger.

#![allow(clippy::disallowed_types)]

#[path = "support/capture_log.rs"]
mod capture_log;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use log::LevelFilter;
use rpcenv::RpcEnv;

const FRAMES: usize = 100_000;

/// An RpcResponse frame answering request `id`, which was never sent.
fn stray_answer(id: u64) -> Vec<u8> {
    let body = b"late";
    let mut frame = ((21 + body.len()) as i64).to_be_bytes().to_vec();
    frame.push(4);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A OneWayMessage frame whose body is no request envelope.
fn bad_envelope() -> Vec<u8> {
    let body = [0xffu8; 6];
    let mut frame = ((13 + body.len()) as i64).to_be_bytes().to_vec();
    frame.push(9);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_flood_of_bad_frames_logs_a_bounded_number_of_lines() {
    capture_log::install(LevelFilter::Warn);
    let server = RpcEnv::builder("flooded")
        .bind_address("127.0.0.1")
        .port(0)
        .build()
        .expect("a server env");
    let port = server.address().expect("an address").port();
    let mut raw = TcpStream::connect(("127.0.0.1", port)).expect("a raw connection");
    raw.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("a write timeout");
    let mut bytes = Vec::new();
    for id in 0..FRAMES as u64 {
        bytes.extend_from_slice(&stray_answer(id));
        bytes.extend_from_slice(&bad_envelope());
    }
    raw.write_all(&bytes).expect("the flood is sent");

    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = |kind: &str| {
        server
            .metrics()
            .env
            .frames_rejected
            .get(kind)
            .copied()
            .unwrap_or(0)
    };
    while counted("unknown_request_id") < FRAMES as u64 || counted("bad_request") < FRAMES as u64 {
        assert!(
            Instant::now() < deadline,
            "the server did not read the flood in 60 s: {:?}",
            server.metrics().env.frames_rejected
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = server.metrics();
    assert_eq!(
        metrics.env.frames_rejected["unknown_request_id"],
        FRAMES as u64
    );
    assert_eq!(metrics.env.frames_rejected["bad_request"], FRAMES as u64);
    assert_eq!(metrics.peers.len(), 1, "the connection stays open");
    assert!(metrics.peers[0].frames_in >= 2 * FRAMES as u64);
    drop(raw);
    server.shutdown();

    let lines = capture_log::lines();
    let ours: Vec<&String> = lines.iter().filter(|l| l.contains("rpcenv")).collect();
    let stray = ours
        .iter()
        .filter(|l| l.contains("ignoring the answer"))
        .count();
    let bad = ours
        .iter()
        .filter(|l| l.contains("bad request from"))
        .count();
    // Five of each at once, then at most one per 10 s while the flood lasts (under 60 s).
    assert!((5..=11).contains(&stray), "{stray} lines: {ours:#?}");
    assert!((5..=11).contains(&bad), "{bad} lines: {ours:#?}");
    assert!(ours.len() <= 30, "{} lines: {ours:#?}", ours.len());
}
