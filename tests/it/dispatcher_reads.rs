//! An idle `rpc-dispatcher-N` thread reads the connection it last answered a request on
//! (the leader/follower pattern, see `transport::read_turn::lead`): the next request on
//! it reaches a dispatcher without a hand-off from the event loop. Work from elsewhere
//! still wakes it at once, a close is still seen at once, and a shutdown does not wait
//! for it.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rpcenv::{EndpointContext, RpcAddress, RpcCallContext, RpcEndpoint, RpcEnv};
use serde::{Deserialize, Serialize};

use crate::support::{
    address_of, client_env_with, raw_connect, rpc_conf, server_env_with, wait_for,
};

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

// ---------------------------------------------------------------------------------------
// Raw peers against a dispatcher that reads their connection.

/// Answers anything with how many asks it got; counts one-way messages too.
struct Counter(u64);

impl RpcEndpoint for Counter {
    type Message = Vec<u8>;
    fn receive(&mut self, _msg: Vec<u8>, _: &EndpointContext<Vec<u8>>) {
        self.0 += 1;
    }
    fn receive_and_reply(
        &mut self,
        _msg: Vec<u8>,
        reply: RpcCallContext,
        _: &EndpointContext<Vec<u8>>,
    ) {
        self.0 += 1;
        reply.reply(self.0);
    }
}

fn rpc_request(id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = ((21 + body.len()) as i64).to_be_bytes().to_vec();
    frame.push(3);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

fn one_way(body: &[u8]) -> Vec<u8> {
    let mut frame = ((13 + body.len()) as i64).to_be_bytes().to_vec();
    frame.push(9);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A request envelope without sender for `endpoint`, holding an empty `Vec<u8>`.
fn envelope(endpoint: &str) -> Vec<u8> {
    let mut body = vec![3, 0];
    body.extend_from_slice(&(endpoint.len() as u16).to_be_bytes());
    body.extend_from_slice(endpoint.as_bytes());
    body.extend_from_slice(&[0; 16]);
    body.push(0);
    body
}

/// Reads frames from `raw` until an answer to `id` (a response or a failure) arrives:
/// false if the peer closed first or none came within 10 s.
fn answer_to(raw: &mut std::net::TcpStream, id: u64) -> bool {
    crate::hostile::answers_to(raw, &[id]).contains_key(&id)
}

/// A server with one dispatcher thread, a `Counter` named "count" and an "adder".
fn counting_server(name: &str) -> RpcEnv {
    let conf = rpc_conf().set("rpc.dispatcher.numThreads", "1");
    let server = server_env_with(name, conf);
    server.setup_endpoint("count", Counter(0)).unwrap();
    let (tx, _) = crossbeam_channel::unbounded();
    server.setup_endpoint("adder", Adder(tx)).unwrap();
    server
}

/// A raw peer that asked and got its answer: a dispatcher reads its connection now.
/// (Asked again if the dispatcher that answered found another one leading, and slept.)
fn led_raw_peer(server: &RpcEnv) -> std::net::TcpStream {
    led(server, raw_connect(address_of(server).port()))
}

/// [`led_raw_peer`], on `raw`.
fn led(server: &RpcEnv, mut raw: std::net::TcpStream) -> std::net::TcpStream {
    use std::io::Write;
    let before = turns(server);
    for id in 1..=5 {
        raw.write_all(&rpc_request(id, &envelope("count"))).unwrap();
        assert!(answer_to(&mut raw, id), "ask {id} was answered");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            if turns(server) > before {
                return raw;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    panic!("no dispatcher read the raw peer's connection after 5 answers");
}

fn connections(env: &RpcEnv) -> usize {
    env.metrics().env.connections
}

/// A request trickled a byte at a time into a connection a dispatcher reads is answered
/// once its last byte is in.
#[test]
fn a_request_trickled_to_a_leading_dispatcher_is_answered() {
    use std::io::Write;
    let server = counting_server("lead-trickle-server");
    let mut raw = led_raw_peer(&server);
    let frame = rpc_request(102, &envelope("count"));
    for byte in &frame {
        raw.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    assert!(answer_to(&mut raw, 102), "the trickled ask was answered");
    assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
    drop(raw);
    server.shutdown();
}

/// A peer that closes halfway through a frame while a dispatcher reads its connection:
/// the connection goes at once, not when the dispatcher stops leading.
#[test]
fn a_peer_that_closes_mid_frame_under_a_leading_dispatcher_is_dropped_at_once() {
    use std::io::Write;
    let server = counting_server("lead-midframe-server");
    let mut raw = led_raw_peer(&server);
    assert_eq!(connections(&server), 1);
    let frame = rpc_request(102, &envelope("count"));
    raw.write_all(&frame[..frame.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(raw);
    wait_for("the server drops the connection", 3, || {
        connections(&server) == 0
    });
    let start = Instant::now();
    server.shutdown();
    assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
}

/// A bad frame (a negative length) read by a leading dispatcher closes the connection
/// at once, and the dispatcher goes on serving others.
#[test]
fn a_bad_frame_read_by_a_leading_dispatcher_closes_the_connection() {
    use std::io::Write;
    let server = counting_server("lead-badframe-server");
    let mut raw = led_raw_peer(&server);
    raw.write_all(&(-5i64).to_be_bytes()).unwrap();
    raw.write_all(&[3; 13]).unwrap();
    crate::support::expect_closed_by_peer(&mut raw, 3);
    wait_for("the server drops the connection", 3, || {
        connections(&server) == 0
    });
    let mut other = led_raw_peer(&server);
    other
        .write_all(&rpc_request(107, &envelope("count")))
        .unwrap();
    assert!(answer_to(&mut other, 107), "another peer is still answered");
    drop(other);
    server.shutdown();
}

/// A flood of one-way messages into a connection a dispatcher reads, then an ask on
/// another connection: everything is handled, the ask promptly.
#[test]
fn a_flood_into_a_leading_dispatcher_does_not_hold_up_another_peer() {
    use std::io::Write;
    let server = counting_server("lead-flood-server");
    let mut raw = led_raw_peer(&server);
    let mut flood = Vec::new();
    for _ in 0..20_000 {
        flood.extend_from_slice(&one_way(&envelope("count")));
    }
    let writer = {
        let mut raw = raw.try_clone().unwrap();
        crate::support::spawn("test-flood", move || {
            let _ = raw.write_all(&flood);
        })
    };
    let start = Instant::now();
    let (client, answer) = client_asks(&server, "lead-flood-client", 3);
    assert_eq!(answer, 4);
    assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
    crate::support::join(writer);
    raw.write_all(&rpc_request(109, &envelope("count")))
        .unwrap();
    assert!(
        answer_to(&mut raw, 109),
        "the flooding peer's ask was answered"
    );
    drop(raw);
    client.shutdown();
    server.shutdown();
}

/// A shutdown while a dispatcher reads a connection holding half a frame is prompt.
#[test]
fn a_shutdown_with_half_a_frame_under_a_leading_dispatcher_is_prompt() {
    use std::io::Write;
    let server = counting_server("lead-stop-half-server");
    let mut raw = led_raw_peer(&server);
    let frame = rpc_request(102, &envelope("count"));
    raw.write_all(&frame[..frame.len() - 3]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    server.shutdown();
    assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
    crate::support::expect_closed_by_peer(&mut raw, 3);
}

/// Blocks on its channel (at most 10 s) for each ask, then answers it.
struct Blocker(crossbeam_channel::Receiver<()>);

impl RpcEndpoint for Blocker {
    type Message = Vec<u8>;
    fn receive_and_reply(
        &mut self,
        _msg: Vec<u8>,
        reply: RpcCallContext,
        _: &EndpointContext<Vec<u8>>,
    ) {
        let _ = self.0.recv_timeout(Duration::from_secs(10));
        reply.reply(0u64);
    }
}

/// Two dispatcher threads: one reads a connection it answered on, the other sleeps on
/// the queue. Two asks come in together on another connection, one for an endpoint
/// that blocks: the sleeper takes that one, and the other is answered at once by the
/// dispatcher that was reading (not once the blocked one ends).
#[test]
fn an_ask_behind_one_that_blocks_the_other_dispatcher_is_answered_at_once() {
    use std::io::Write;
    let conf = rpc_conf().set("rpc.dispatcher.numThreads", "2");
    let server = server_env_with("lead-behind-server", conf);
    server.setup_endpoint("count", Counter(0)).unwrap();
    let (release, blocked) = crossbeam_channel::unbounded();
    server.setup_endpoint("blocker", Blocker(blocked)).unwrap();
    let port = address_of(&server).port();
    for round in 0..5 {
        // A dispatcher reads this peer's connection from now on.
        let led = led_raw_peer(&server);
        std::thread::sleep(Duration::from_millis(20));
        let mut raw = raw_connect(port);
        let mut both = rpc_request(1, &envelope("blocker"));
        both.extend_from_slice(&rpc_request(2, &envelope("count")));
        raw.write_all(&both).unwrap();
        let start = Instant::now();
        let answered = answer_to(&mut raw, 2);
        let took = start.elapsed();
        release.send(()).unwrap();
        assert!(answered, "round {round}: the second ask was answered");
        assert!(
            took < Duration::from_secs(2),
            "round {round}: answered after {took:?}, behind the blocked ask"
        );
        assert!(answer_to(&mut raw, 1), "round {round}: the blocked ask");
        // Both peers go, and with them the turn of the dispatcher reading either.
        drop((led, raw));
        wait_for("the server drops both connections", 5, || {
            connections(&server) == 0
        });
    }
    server.shutdown();
}

/// Reads frames from `raw` to its end (or 20 s): the ids of the answers in them.
fn all_answers(raw: &mut std::net::TcpStream) -> std::collections::BTreeSet<u64> {
    use std::io::Read;
    raw.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => continue,
        }
        let mut at = 0;
        while at + 17 <= got.len() {
            let len = i64::from_be_bytes(got[at..at + 8].try_into().unwrap()) as usize;
            if at + len > got.len() {
                break;
            }
            if matches!(got[at + 8], 4 | 5) {
                ids.insert(u64::from_be_bytes(got[at + 9..at + 17].try_into().unwrap()));
            }
            at += len;
        }
        got.drain(..at);
    }
    ids
}

/// A peer whose connection a dispatcher reads sends many asks and ends its side: every
/// ask is answered, then the connection ends.
#[test]
fn asks_and_an_end_of_stream_under_a_leading_dispatcher_are_all_answered() {
    use std::io::Write;
    let server = counting_server("lead-halfclose-server");
    let mut raw = led_raw_peer(&server);
    let mut batch = Vec::new();
    for id in 1000..1300u64 {
        batch.extend_from_slice(&rpc_request(id, &envelope("count")));
    }
    raw.write_all(&batch).unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let ids = all_answers(&mut raw);
    let missing: Vec<u64> = (1000..1300).filter(|id| !ids.contains(id)).collect();
    assert!(missing.is_empty(), "unanswered: {missing:?}");
    wait_for("the server drops the connection", 5, || {
        connections(&server) == 0
    });
    server.shutdown();
}

/// A peer whose connection a dispatcher reads sends asks without reading its answers,
/// until the server stops reading it (its answers fill the socket and the queue); then
/// reads them all: every ask is answered.
#[test]
fn a_peer_paused_for_its_unread_answers_under_a_leading_dispatcher_is_read_again() {
    use std::io::Write;
    let conf = rpc_conf()
        .set("rpc.dispatcher.numThreads", "1")
        .set("rpc.io.sendBuffer", "64k")
        .set("rpc.io.receiveBuffer", "64k")
        .set("rpc.io.maxQueuedBytes", "64k");
    let server = server_env_with("lead-pause-server", conf);
    server.setup_endpoint("count", Counter(0)).unwrap();
    // Bounded buffers (not so small that TCP's window updates lag): the answers fill
    // them soon, and so do asks the server leaves.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], address_of(&server).port()).into();
    socket.connect(&addr.into()).unwrap();
    let mut raw = led(&server, socket.into());
    let asks = 50_000u64;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let mut raw = raw.try_clone().unwrap();
        let written = std::sync::Arc::clone(&written);
        crate::support::spawn("test-pause-writer", move || {
            for id in 0..asks {
                raw.write_all(&rpc_request(10_000 + id, &envelope("count")))
                    .unwrap();
                written.store(id + 1, std::sync::atomic::Ordering::Relaxed);
            }
            raw.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    // The answers pile up unread until the server stops reading: the writer is stuck.
    std::thread::sleep(Duration::from_millis(500));
    let stuck = written.load(std::sync::atomic::Ordering::Relaxed);
    let ids = all_answers(&mut raw);
    crate::support::join(writer);
    assert!(stuck < asks, "the server never stopped reading the peer");
    let missing = (10_000..10_000 + asks)
        .filter(|id| !ids.contains(id))
        .count();
    assert_eq!(missing, 0, "{missing} of {asks} asks unanswered");
    server.shutdown();
}

/// Many callers on a few connections to a server whose two dispatchers lead, asking in
/// turn with small random pauses (so that callers, leaders and loops keep taking the
/// read turns from one another): every ask is answered, none near its timeout.
#[test]
fn callers_and_leaders_taking_turns_lose_no_answer() {
    let conf = rpc_conf().set("rpc.dispatcher.numThreads", "2");
    let server = server_env_with("lead-mixed-server", conf);
    let (tx, _events) = crossbeam_channel::unbounded();
    server.setup_endpoint("adder", Adder(tx)).unwrap();
    let clients: Vec<RpcEnv> = (0..3)
        .map(|i| client_env_with(&format!("lead-mixed-client-{i}"), rpc_conf()))
        .collect();
    let slowest = std::thread::scope(|scope| {
        let callers: Vec<_> = clients
            .iter()
            .enumerate()
            .flat_map(|(c, client)| (0..2).map(move |t| (c, t, client)))
            .map(|(c, t, client)| {
                let server = &server;
                scope.spawn(move || {
                    let adder = client
                        .setup_endpoint_ref::<Add>(address_of(server), "adder")
                        .unwrap();
                    let mut seed = (c * 7 + t * 13 + 1) as u64;
                    let mut slowest = Duration::ZERO;
                    for n in 0..300u64 {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let pause = (seed >> 33) % 1500;
                        std::thread::sleep(Duration::from_micros(pause));
                        let start = Instant::now();
                        let answer = adder.ask_sync_timeout::<u64>(Add(n), Duration::from_secs(8));
                        slowest = slowest.max(start.elapsed());
                        assert_eq!(answer.expect("an answer"), n + 1);
                    }
                    slowest
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|caller| caller.join().unwrap())
            .max()
            .unwrap()
    });
    assert!(slowest < Duration::from_secs(2), "an ask took {slowest:?}");
    assert!(turns(&server) > 0, "the dispatchers led");
    for client in clients {
        client.shutdown();
    }
    server.shutdown();
}
