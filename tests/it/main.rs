//! Integration tests of rpcenv, one binary (STYLE.md habit 8): real sockets on
//! 127.0.0.1 and port 0, bounded waits, every started thread joined.
//!
//! Run with `cargo test --test it`; `RUST_LOG=debug` shows the crate's logs.

// The crate routes `Arc`/`Mutex` through `crate::sync` for loom; tests are not modelled
// by loom and use the standard types directly.
#![allow(clippy::disallowed_types)]

#[path = "../support/frames.rs"]
mod frames;
mod support;

mod auth;
mod bad_input;
mod caller_reads;
mod concurrent;
mod connections;
mod dispatcher_reads;
mod hostile;
mod metrics;
mod ordering;
mod payloads;
mod pool;
mod rpc_env;
mod rpc_semantics;
mod server;
mod streams;
mod transport;
mod typed;
