//! A peer asking for paths outside what the file server serves cannot flood the logs:
//! 2,000 refused `StreamRequest`s from a raw socket produce a bounded number of `warn`
//! lines, and every one is counted in the metrics. Its own test binary: it installs the
//! process's one logger.

#![allow(clippy::disallowed_types)]

#[path = "support/capture_log.rs"]
mod capture_log;
#[path = "support/frames.rs"]
mod frames;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use log::LevelFilter;
use rpcenv::RpcEnv;

use crate::frames::stream_request_frame;

const REQUESTS: u64 = 2_000;

#[test]
fn many_refused_stream_requests_log_a_bounded_number_of_lines() {
    capture_log::install(LevelFilter::Warn);
    let dir = std::env::temp_dir().join(format!("rpcenv-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    std::fs::write(dir.join("ok.txt"), b"ok").expect("a served file");
    let server = RpcEnv::builder("refusing")
        .bind_address("127.0.0.1")
        .port(0)
        .build()
        .expect("a server env");
    server
        .file_server()
        .add_directory("served", &dir)
        .expect("the directory is served");
    let port = server.address().expect("an address").port();
    let mut raw = TcpStream::connect(("127.0.0.1", port)).expect("a raw connection");
    raw.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("a write timeout");
    let mut bytes = Vec::new();
    for i in 0..REQUESTS {
        // Every second one leads out of the directory, the others are no plain path.
        let id = if i % 2 == 0 {
            format!("/served/../../etc/passwd{i}")
        } else {
            format!("/served/./ok.txt{i}")
        };
        bytes.extend_from_slice(&stream_request_frame(id.as_bytes()));
    }
    raw.write_all(&bytes).expect("the requests are sent");

    let counted = || {
        server
            .metrics()
            .env
            .frames_rejected
            .get("bad_stream_request")
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while counted() < REQUESTS {
        assert!(
            Instant::now() < deadline,
            "the server did not answer in 60 s: {:?}",
            server.metrics().env.frames_rejected
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counted(), REQUESTS, "each refusal counted once");
    drop(raw);
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);

    let lines = capture_log::lines();
    let refused: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("refused stream"))
        .collect();
    // Five at once, then at most one per 10 s while the requests last (under 60 s).
    assert!((5..=11).contains(&refused.len()), "{refused:#?}");
}
