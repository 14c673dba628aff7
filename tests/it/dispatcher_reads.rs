//! An idle `rpc-dispatcher-N` thread reads the connection it last answered a request on
//! (the leader/follower pattern, see `transport::read_turn::lead`): the next request on
//! it reaches a dispatcher without a hand-off from the event loop. Work from elsewhere
//! still wakes it at once, a close is still seen at once, and a shutdown does not wait
//! for it.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rpcenv::{EndpointContext, RpcAddress, RpcCallContext, RpcEndpoint, RpcEnv};
use serde::{Deserialize, Serialize};

use crate::support::{address_of, client_env_with, rpc_conf, server_env_with};

/// The longest a step may take that should be prompt: far below the 10 s a dispatcher
/// reads a quiet connection before it leaves it, far above any honest delay.
const PROMPTLY: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct Add(u64);

/// Answers `Add(n)` with n + 1; tells `events` of each peer that disconnects.
struct Adder(Sender<RpcAddress>);

impl RpcEndpoint for Adder {
    type Message = Add;
    fn receive_and_reply(&mut self, msg: Add, reply: RpcCallContext, _: &EndpointContext<Add>) {
        reply.reply(msg.0 + 1);
    }
    fn on_disconnected(&mut self, remote: &RpcAddress, _: &EndpointContext<Add>) {
        let _ = self.0.send(remote.clone());
    }
}

fn turns(env: &RpcEnv) -> u64 {
    env.metrics().env.dispatcher_read_turns
}

/// A server whose one dispatcher thread is the only one that can lead, and its events.
fn server(name: &str) -> (RpcEnv, crossbeam_channel::Receiver<RpcAddress>) {
    let conf = rpc_conf().set("rpc.dispatcher.numThreads", "1");
    let server = server_env_with(name, conf);
    let (tx, events) = crossbeam_channel::unbounded();
    server.setup_endpoint("adder", Adder(tx)).unwrap();
    (server, events)
}

/// Asks `Add(n)` from a new client env; the env and the answer.
fn client_asks(server: &RpcEnv, name: &str, n: u64) -> (RpcEnv, u64) {
    let client = client_env_with(name, rpc_conf());
    let adder = client
        .setup_endpoint_ref::<Add>(address_of(server), "adder")
        .unwrap();
    let answer = adder
        .ask_sync_timeout::<u64>(Add(n), PROMPTLY)
        .expect("answered promptly");
    (client, answer)
}

#[test]
fn an_idle_dispatcher_reads_the_connection_it_answered_on() {
    let (server, _events) = server("lead-server");
    let client = client_env_with("lead-client", rpc_conf());
    let adder = client
        .setup_endpoint_ref::<Add>(address_of(&server), "adder")
        .unwrap();
    let before = turns(&server);
    for n in 0..20 {
        assert_eq!(adder.ask_sync::<u64>(Add(n)).unwrap(), n + 1);
        // Time for the dispatcher to take the turn before the next request.
        std::thread::sleep(Duration::from_millis(5));
    }
    let taken = turns(&server) - before;
    assert!(
        taken >= 10,
        "the dispatcher read the connection after {taken} of 20 answers"
    );
    assert_eq!(turns(&client), 0, "a client env answered nothing");
    client.shutdown();
    server.shutdown();
}

#[test]
fn a_request_on_another_connection_wakes_a_leading_dispatcher() {
    let (server, _events) = server("lead-wake-server");
    let (first, answer) = client_asks(&server, "lead-wake-first", 1);
    assert_eq!(answer, 2);
    std::thread::sleep(Duration::from_millis(50));
    // The one dispatcher reads `first`'s connection now; a request from another peer
    // is read by the event loop, and must not wait until the dispatcher stops leading.
    let start = Instant::now();
    let (second, answer) = client_asks(&server, "lead-wake-second", 10);
    assert_eq!(answer, 11);
    assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
    assert!(turns(&server) >= 1, "the dispatcher led");
    for env in [first, second, server] {
        env.shutdown();
    }
}

#[test]
fn a_peer_that_goes_away_from_a_leading_dispatcher_is_seen_at_once() {
    let (server, events) = server("lead-close-server");
    let (client, answer) = client_asks(&server, "lead-close-client", 1);
    assert_eq!(answer, 2);
    std::thread::sleep(Duration::from_millis(50));
    client.shutdown();
    events
        .recv_timeout(PROMPTLY)
        .expect("the server sees its peer go");
    // The dispatcher is free for the next peer.
    let (other, answer) = client_asks(&server, "lead-close-other", 5);
    assert_eq!(answer, 6);
    other.shutdown();
    server.shutdown();
}

#[test]
fn a_shutdown_does_not_wait_for_a_leading_dispatcher() {
    let (server, _events) = server("lead-stop-server");
    let (client, answer) = client_asks(&server, "lead-stop-client", 1);
    assert_eq!(answer, 2);
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    server.shutdown();
    assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
    client.shutdown();
}
