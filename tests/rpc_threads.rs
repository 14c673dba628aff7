//! Shutting down two envs that talked to each other leaves none of their threads behind.
//!
//! A binary of its own with a single test: it counts the process's threads by name,
//! which other tests running in parallel in the same process would disturb.
//!
//! Linux keeps at most 15 bytes of a thread's name in `/proc/self/task/*/comm`, so
//! `rpc-dispatcher-0` shows as `rpc-dispatcher-` and `rpc-endpoint-NAME` as
//! `rpc-endpoint-NA`.

#![cfg(target_os = "linux")]
#![allow(clippy::disallowed_types)] // tests use std's types directly

mod proc_threads;

use proc_threads::rpc_threads;

use std::thread;
use std::time::{Duration, Instant};

use rpcenv::{EndpointContext, RpcCallContext, RpcConf, RpcEndpoint, RpcEnv, Threading};

struct Echo;

impl RpcEndpoint for Echo {
    type Message = u64;

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(n);
    }
}

/// An endpoint on a thread of its own, `rpc-endpoint-solo`.
struct Solo;

impl RpcEndpoint for Solo {
    type Message = u64;

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(n + 1);
    }

    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
}

fn count(threads: &[String], name: &str) -> usize {
    threads.iter().filter(|t| *t == name).count()
}

/// Polls the thread names every 10 ms until `condition` holds; panics after 10 s showing
/// the names.
#[track_caller]
fn wait_until(what: &str, condition: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads = rpc_threads();
        if condition(&threads) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; rpc threads: {threads:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn conf() -> RpcConf {
    RpcConf::new()
        .set("rpc.io.threads", "2")
        .set("rpc.dispatcher.numThreads", "2")
        .set("rpc.askTimeout", "60s")
        .set("rpc.lookupTimeout", "60s")
}

#[test]
fn shutdown_of_a_server_and_a_client_env_that_talked_leaves_no_rpc_thread() {
    let _ = env_logger::builder().is_test(true).try_init();
    assert_eq!(rpc_threads(), Vec::<String>::new());
    let server = RpcEnv::builder("threads-server")
        .bind_address("127.0.0.1")
        .port(0)
        .conf(conf())
        .build()
        .unwrap();
    let address = server.address().unwrap();
    let echo = server.setup_endpoint("echo", Echo).unwrap();
    let solo = server.setup_endpoint("solo", Solo).unwrap();
    let client = RpcEnv::builder("threads-client")
        .client_mode(true)
        .conf(conf())
        .build()
        .unwrap();

    // Two envs running: each has its dispatcher pool and its timeout thread; the server
    // accepts on rpc-boss and serves on rpc-io-N; the dedicated endpoint has its own.
    // (A thread names itself as it starts: poll until they all have.)
    assert_eq!(solo.ask_sync::<u64>(1).unwrap(), 2);
    wait_until("the threads of two running envs", |running| {
        count(running, "rpc-dispatcher-") == 4
            && count(running, "rpc-timeout") == 2
            && count(running, "rpc-boss") == 1
            && count(running, "rpc-endpoint-so") == 1
    });

    // A remote ask: the client connects on its rpc-connect pool, over rpc-io threads.
    let remote = client.setup_endpoint_ref::<u64>(&address, "echo").unwrap();
    assert_eq!(remote.ask_sync::<u64>(7).unwrap(), 7);
    wait_until("a connect thread and event loops", |talking| {
        count(talking, "rpc-connect-0") == 1 && count(talking, "rpc-io-0") >= 1
    });

    client.shutdown();
    server.shutdown();
    drop(remote);
    drop(echo);
    drop(solo);
    drop(client);
    drop(server);

    // The event loops exit when the last owner of the transport drops; everything else
    // was joined by shutdown.
    wait_until("no rpc thread left after shutdown", <[String]>::is_empty);
}
