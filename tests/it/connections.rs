//! The inputs of the connection-layer issue, one or more tests each: a handler's outgoing
//! messages and answers go out while it runs, liveness keys (`rpc.io.connectionTimeout`,
//! `rpc.io.frameTimeout`, `rpc.io.maxConnections`), half-close, and a bounded shutdown
//! while a connect hangs.
//!
//! Every wait is bounded; time appears in assertions only as generous bounds that catch a
//! call that waited for a timeout it should not have waited for, or hung.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpcenv::{
    EndpointContext, RpcAddress, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcError, Threading,
};

use crate::support::{
    HOST, PROMPTLY, address_of, assert_connection_error, client_env, client_env_with,
    expect_closed_by_peer, join, lock, recv_within, rpc_conf, server_env, server_env_with, spawn,
    wait_for,
};

/// [`rpc_conf`] with `overrides`.
fn conf_with(overrides: &[(&str, &str)]) -> RpcConf {
    let mut conf = rpc_conf();
    for (key, value) in overrides {
        conf.insert(*key, *value);
    }
    conf
}

/// Runs `f` and asserts it took less than [`PROMPTLY`]; `what` names it in the failure.
#[track_caller]
fn promptly<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    let took = started.elapsed();
    assert!(took < PROMPTLY, "{what} took {took:?}: not prompt");
    value
}

/// Joins the threads an endpoint spawned (they answer asks later).
fn join_all(threads: &Mutex<Vec<JoinHandle<()>>>) {
    for handle in std::mem::take(&mut *lock(threads)) {
        join(handle);
    }
}

// ---------------------------------------------------------------------------------------
// Messages and endpoints

/// Answers every ask with twice the number.
struct Doubler;

impl RpcEndpoint for Doubler {
    type Message = u64;

    fn receive_and_reply(&mut self, n: u64, reply: RpcCallContext) {
        reply.reply(2 * n);
    }
}

/// Answers every ask with three times the number, from a thread of its own, `delay`
/// later.
struct Late {
    delay: Duration,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl RpcEndpoint for Late {
    type Message = u64;

    fn receive_and_reply(&mut self, n: u64, reply: RpcCallContext) {
        let delay = self.delay;
        let thread = spawn("test-late-answer", move || {
            thread::sleep(delay);
            reply.reply(3 * n);
        });
        lock(&self.threads).push(thread);
    }
}

/// Counts one-way messages; answers an ask with how many came before it.
#[derive(Default)]
struct Counter {
    count: u64,
}

impl RpcEndpoint for Counter {
    type Message = u64;

    fn receive(&mut self, _n: u64, _ctx: &EndpointContext<u64>) {
        self.count += 1;
    }

    fn receive_and_reply(&mut self, _n: u64, reply: RpcCallContext) {
        reply.reply(self.count);
    }
}

// ---------------------------------------------------------------------------------------
// Raw Spark frames

/// The bytes of a Spark RpcRequest frame.
fn rpc_request(id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(21 + body.len());
    frame.extend_from_slice(&((21 + body.len()) as i64).to_be_bytes());
    frame.push(3);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A request envelope with no sender (as from a client-mode env) for `endpoint`, then
/// `content`, the message's codec bytes (the layout of `src/rpc/envelope.rs`).
fn envelope(endpoint: &str, content: &[u8]) -> Vec<u8> {
    let mut body = vec![1, 0];
    body.extend_from_slice(&(endpoint.len() as u16).to_be_bytes());
    body.extend_from_slice(endpoint.as_bytes());
    body.extend_from_slice(content);
    body
}

/// A frame as a raw peer reads it: its type, its request id (0 for a one-way message) and
/// its body.
#[derive(Debug)]
struct RawFrame {
    kind: u8,
    id: u64,
    body: Vec<u8>,
}

/// Reads one frame (RpcRequest 3, RpcResponse 4, RpcFailure 5 or OneWayMessage 9).
fn read_frame(stream: &mut TcpStream) -> io::Result<RawFrame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let len = i64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
    assert!(
        (13..1 << 24).contains(&len),
        "a frame of {len} bytes from the server"
    );
    let mut rest = vec![0u8; len as usize - 9];
    stream.read_exact(&mut rest)?;
    let kind = head[8];
    let (id, body_at) = match kind {
        3..=5 => (
            u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
            12,
        ),
        9 => (0, 4),
        other => panic!("unexpected frame type {other} from the server"),
    };
    Ok(RawFrame {
        kind,
        id,
        body: rest[body_at..].to_vec(),
    })
}

/// Reads frames until the answer to request `id` (skipping the server's hello and other
/// one-way control frames).
fn read_answer(stream: &mut TcpStream, id: u64) -> RawFrame {
    loop {
        let frame = read_frame(stream).expect("the answer to a raw request");
        match frame.kind {
            9 => continue,
            4 | 5 if frame.id == id => return frame,
            _ => panic!("unexpected frame while waiting for the answer to {id}: {frame:?}"),
        }
    }
}

/// A raw connection with read and write timeouts of 10 s.
fn raw_connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect((HOST, port)).expect("a raw connection");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("a write timeout");
    stream
}

// =======================================================================================
// 1. A handler's outgoing messages do not wait for its turn to end

/// Asks `b` (in another env) from `on_start` and from every ask it gets, and answers with
/// what `b` said.
struct AskOnward {
    b: RpcEndpointRef<u64>,
    threading: Threading,
    started: Sender<(Result<u64, RpcError>, Duration)>,
}

/// The deadline of the asks made inside handlers: a handler whose request waited for its
/// turn to end would get `Timeout` after it.
const INNER_DEADLINE: Duration = Duration::from_secs(8);

/// "Well under" [`INNER_DEADLINE`].
const WELL_UNDER: Duration = Duration::from_secs(4);

impl RpcEndpoint for AskOnward {
    type Message = u64;

    fn on_start(&mut self, _ctx: &EndpointContext<u64>) {
        let started = Instant::now();
        let answer = self.b.ask_sync_timeout::<u64>(21, INNER_DEADLINE);
        let _ = self.started.send((answer, started.elapsed()));
    }

    fn receive_and_reply(&mut self, n: u64, reply: RpcCallContext) {
        match self.b.ask_sync_timeout::<u64>(n, INNER_DEADLINE) {
            Ok(answer) => reply.reply(answer),
            Err(err) => reply.send_failure(err),
        }
    }

    fn threading(&self) -> Threading {
        self.threading
    }
}

/// Env F holds a reference to endpoint `b` of env B over an open connection. An endpoint
/// of F that asks `b` and waits, from `on_start` and from `receive_and_reply`, on the
/// shared pool and on a dedicated thread, is answered well before its 8 s deadline: the
/// request is written while the handler runs, not when its turn ends.
#[test]
fn handler_asking_another_env_and_waiting_is_answered_promptly_on_start_shared_and_dedicated() {
    let b_env = server_env("onward-b");
    b_env.setup_endpoint("b", Doubler).unwrap();
    let f_env = client_env("onward-f");
    let b = f_env
        .setup_endpoint_ref::<u64>(address_of(&b_env), "b")
        .unwrap();
    assert_eq!(b.ask_sync::<u64>(1).unwrap(), 2, "the connection is open");

    for (name, threading) in [
        ("asker-shared", Threading::Shared),
        ("asker-dedicated", Threading::Dedicated),
    ] {
        let (started_tx, started) = mpsc::channel();
        let asker = f_env
            .setup_endpoint(
                name,
                AskOnward {
                    b: b.clone(),
                    threading,
                    started: started_tx,
                },
            )
            .unwrap();
        let (answer, took) = recv_within(&started, 20);
        assert_eq!(
            answer.unwrap_or_else(|err| panic!("{name}: the ask from on_start failed: {err}")),
            42,
            "{name}: on_start"
        );
        assert!(
            took < WELL_UNDER,
            "{name}: the ask from on_start took {took:?}"
        );
        for n in 0..3 {
            let started = Instant::now();
            let answer = asker
                .ask_sync::<u64>(n)
                .unwrap_or_else(|err| panic!("{name}: ask {n} failed: {err}"));
            assert_eq!(answer, 2 * n, "{name}");
            let took = started.elapsed();
            assert!(took < WELL_UNDER, "{name}: ask {n} took {took:?}");
        }
    }
    f_env.shutdown();
    b_env.shutdown();
}

/// Answers at once, then sleeps `nap` in the same handler (saying when it starts
/// sleeping and when it is done).
struct Sleeper {
    started: Sender<()>,
    finished: Arc<AtomicBool>,
    nap: Duration,
}

impl RpcEndpoint for Sleeper {
    type Message = u64;

    fn receive_and_reply(&mut self, n: u64, reply: RpcCallContext) {
        reply.reply(n);
        let _ = self.started.send(());
        thread::sleep(self.nap);
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// Two endpoints of env B on one connection from the client. One answers and then
/// sleeps 2 s in the same handler: its answer reaches the client while it sleeps (with
/// nothing else on the connection that could carry it along), and so do the other
/// endpoint's answers meanwhile: no answer waits for the long handler to end.
#[test]
fn answer_of_one_endpoint_does_not_wait_for_another_endpoints_long_handler() {
    let b_env = server_env("long-handler-b");
    let finished = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = mpsc::channel();
    b_env
        .setup_endpoint(
            "sleeper",
            Sleeper {
                started: started_tx,
                finished: Arc::clone(&finished),
                nap: Duration::from_secs(2),
            },
        )
        .unwrap();
    b_env.setup_endpoint("quick", Doubler).unwrap();
    let client = client_env("long-handler-client");
    let sleeper = client
        .setup_endpoint_ref::<u64>(address_of(&b_env), "sleeper")
        .unwrap();
    let quick = client
        .setup_endpoint_ref::<u64>(address_of(&b_env), "quick")
        .unwrap();
    assert_eq!(
        quick.ask_sync::<u64>(1).unwrap(),
        2,
        "the connection is open"
    );

    let slow = sleeper.ask::<u64>(7);
    // Nothing else comes in on the connection that could carry the answer along.
    assert_eq!(slow.wait().unwrap(), 7);
    assert!(
        !finished.load(Ordering::SeqCst),
        "the answer given before the sleep came only after the handler was done"
    );
    recv_within(&started, 10);
    for n in 0..3 {
        assert_eq!(quick.ask_sync::<u64>(n).unwrap(), 2 * n);
    }
    assert!(
        !finished.load(Ordering::SeqCst),
        "the quick endpoint's answers came only after the other's long handler was done"
    );
    wait_for("the long handler to finish", 10, || {
        finished.load(Ordering::SeqCst)
    });
    client.shutdown();
    b_env.shutdown();
}

/// On a one-way message: sends one to `b`, says how that went, then sleeps `nap`.
struct SendThenSleep {
    b: RpcEndpointRef<u64>,
    sent: Sender<Result<(), RpcError>>,
    finished: Arc<AtomicBool>,
    nap: Duration,
}

impl RpcEndpoint for SendThenSleep {
    type Message = ();

    fn receive(&mut self, _msg: (), _ctx: &EndpointContext<()>) {
        let sent = self.b.send(1);
        let _ = self.sent.send(sent);
        thread::sleep(self.nap);
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// An endpoint of env F sends to `b` in env B and then sleeps 2 s in the same handler;
/// meanwhile an `ask_sync` to `b` from a plain thread of F is answered before the sleep
/// ends, and `b` had already received the handler's message (it went out at once, ahead
/// of the ask on the same connection).
#[test]
fn ask_from_a_plain_thread_is_not_delayed_while_an_endpoint_sleeps_after_a_send() {
    let b_env = server_env("send-sleep-b");
    b_env.setup_endpoint("counter", Counter::default()).unwrap();
    let f_env = client_env("send-sleep-f");
    let b = f_env
        .setup_endpoint_ref::<u64>(address_of(&b_env), "counter")
        .unwrap();
    assert_eq!(b.ask_sync::<u64>(0).unwrap(), 0, "the connection is open");
    let finished = Arc::new(AtomicBool::new(false));
    let (sent_tx, sent) = mpsc::channel();
    let sender = f_env
        .setup_endpoint(
            "sender",
            SendThenSleep {
                b: b.clone(),
                sent: sent_tx,
                finished: Arc::clone(&finished),
                nap: Duration::from_secs(2),
            },
        )
        .unwrap();
    sender.send(()).unwrap();
    recv_within(&sent, 10).expect("the handler's send is accepted");

    let count = promptly("an ask while the endpoint sleeps", || b.ask_sync::<u64>(0)).unwrap();
    assert!(
        !finished.load(Ordering::SeqCst),
        "the ask was answered only after the sleeping handler was done"
    );
    assert_eq!(
        count, 1,
        "the handler's message was not sent before the ask"
    );
    wait_for("the sleeping handler to finish", 10, || {
        finished.load(Ordering::SeqCst)
    });
    f_env.shutdown();
    b_env.shutdown();
}

// =======================================================================================
// 5. rpc.io.connectionTimeout never cuts an ask short of its own deadline

/// With `rpc.io.connectionTimeout=1s` on both sides, an ask with a 10 s deadline to an
/// endpoint that answers after 2.5 s (nothing comes back on the connection for longer
/// than 1 s) succeeds, and asks to another endpoint over the same connection meanwhile
/// are answered.
#[test]
fn ask_with_a_longer_deadline_outlives_the_connection_timeout_and_the_connection_keeps_serving() {
    let timeout = [("rpc.io.connectionTimeout", "1s")];
    let server = server_env_with("outlive-server", conf_with(&timeout));
    let threads = Arc::new(Mutex::new(Vec::new()));
    server
        .setup_endpoint(
            "late",
            Late {
                delay: Duration::from_millis(2500),
                threads: Arc::clone(&threads),
            },
        )
        .unwrap();
    server.setup_endpoint("quick", Doubler).unwrap();
    let client = client_env_with("outlive-client", conf_with(&timeout));
    let late = client
        .setup_endpoint_ref::<u64>(address_of(&server), "late")
        .unwrap();
    let quick = client
        .setup_endpoint_ref::<u64>(address_of(&server), "quick")
        .unwrap();
    assert_eq!(
        quick.ask_sync::<u64>(1).unwrap(),
        2,
        "the connection is open"
    );

    let asker = spawn("test-long-ask", move || {
        let started = Instant::now();
        let answer = late.ask_sync_timeout::<u64>(5, Duration::from_secs(10));
        (answer, started.elapsed())
    });
    // Longer than rpc.io.connectionTimeout with nothing coming back.
    thread::sleep(Duration::from_millis(1500));
    for n in 0..3 {
        let answer = promptly("an ask meanwhile", || quick.ask_sync::<u64>(n));
        assert_eq!(answer.unwrap(), 2 * n);
    }
    let (answer, took) = join(asker);
    assert_eq!(
        answer.unwrap_or_else(|err| panic!("the 10 s ask failed after {took:?}: {err}")),
        15
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(quick.ask_sync::<u64>(4).unwrap(), 8);
    join_all(&threads);
    client.shutdown();
    server.shutdown();
}

// =======================================================================================
// 6. rpc.io.frameTimeout and rpc.io.maxConnections

/// With `rpc.io.frameTimeout=1s`: a raw peer that connects and sends nothing, and one that
/// sends a frame header and one body byte, are both closed. A raw peer that sends a whole
/// ask is answered, stays open while idle between frames for longer than the timeout, and
/// is closed once it stalls in the middle of a frame. A client env is served throughout.
#[test]
fn frame_timeout_closes_silent_and_stalled_raw_peers_but_not_idle_ones() {
    let server = server_env_with("frame-timeout", conf_with(&[("rpc.io.frameTimeout", "1s")]));
    server.setup_endpoint("d", Doubler).unwrap();
    let port = address_of(&server).port();
    // A header announcing a 100-byte body, and its first byte.
    let partial = {
        let mut bytes = rpc_request(1, &[0u8; 100]);
        bytes.truncate(21 + 1);
        bytes
    };

    let mut silent = raw_connect(port);
    let mut stalled = raw_connect(port);
    stalled.write_all(&partial).expect("a header and one byte");
    let mut talker = raw_connect(port);
    talker
        .write_all(&rpc_request(7, &envelope("d", &[5])))
        .expect("an ask");
    let answer = read_answer(&mut talker, 7);
    assert_eq!((answer.kind, &answer.body[..]), (4, &[0u8, 10][..]));

    expect_closed_by_peer(&mut silent, 10);
    expect_closed_by_peer(&mut stalled, 10);

    // Idle between frames for longer than the frame timeout: still served.
    thread::sleep(Duration::from_millis(1500));
    talker
        .write_all(&rpc_request(8, &envelope("d", &[6])))
        .expect("another ask");
    let answer = read_answer(&mut talker, 8);
    assert_eq!((answer.kind, &answer.body[..]), (4, &[0u8, 12][..]));
    talker.write_all(&partial).expect("a header and one byte");
    expect_closed_by_peer(&mut talker, 10);

    let client = client_env("frame-timeout-client");
    let d = client
        .setup_endpoint_ref::<u64>(address_of(&server), "d")
        .unwrap();
    assert_eq!(d.ask_sync::<u64>(21).unwrap(), 42);
    client.shutdown();
    server.shutdown();
}

/// With `rpc.io.maxConnections=2` and two client envs connected, a third connection (raw)
/// is closed at once, and so is a third client env's (its lookup fails with
/// `Connection`), while the first two keep working.
#[test]
fn max_connections_closes_the_extra_connection_at_once_and_the_first_ones_keep_working() {
    let server = server_env_with(
        "max-connections",
        conf_with(&[("rpc.io.maxConnections", "2")]),
    );
    server.setup_endpoint("d", Doubler).unwrap();
    let port = address_of(&server).port();
    let clients: Vec<(RpcEnv, RpcEndpointRef<u64>)> = (0..2)
        .map(|i| {
            let env = client_env(&format!("max-connections-{i}"));
            let d = env
                .setup_endpoint_ref::<u64>(address_of(&server), "d")
                .unwrap();
            assert_eq!(d.ask_sync::<u64>(i).unwrap(), 2 * i);
            (env, d)
        })
        .collect();

    let mut raw = raw_connect(port);
    // Well before rpc.io.frameTimeout (30 s) could close it.
    expect_closed_by_peer(&mut raw, 3);
    let third = client_env("max-connections-third");
    let err = promptly("a lookup over a connection past the cap", || {
        third.setup_endpoint_ref::<u64>(address_of(&server), "d")
    })
    .unwrap_err();
    assert_connection_error(&err, port);
    third.shutdown();

    for (i, (_, d)) in clients.iter().enumerate() {
        let n = 10 + i as u64;
        assert_eq!(d.ask_sync::<u64>(n).unwrap(), 2 * n);
    }
    for (env, _) in clients {
        env.shutdown();
    }
    server.shutdown();
}

// =======================================================================================
// 10. Half-close at the RPC level

/// A raw client sends an ask to an endpoint that answers from another thread 200 ms
/// later, then shuts down its write side: it still reads the answer, then the server
/// closes.
#[test]
fn raw_ask_followed_by_half_close_still_gets_the_late_answer() {
    let server = server_env("half-close-server");
    let threads = Arc::new(Mutex::new(Vec::new()));
    server
        .setup_endpoint(
            "late",
            Late {
                delay: Duration::from_millis(200),
                threads: Arc::clone(&threads),
            },
        )
        .unwrap();
    let mut raw = raw_connect(address_of(&server).port());
    raw.write_all(&rpc_request(77, &envelope("late", &[7])))
        .expect("the ask is sent");
    raw.shutdown(Shutdown::Write).expect("half-close");
    let answer = read_answer(&mut raw, 77);
    assert_eq!((answer.kind, &answer.body[..]), (4, &[0u8, 21][..]));
    expect_closed_by_peer(&mut raw, 10);
    join_all(&threads);
    server.shutdown();
}

// =======================================================================================
// 11. A bounded shutdown while a connect hangs

/// A listener that drops SYNs: backlog 0, never accepting, its accept queue filled. A
/// plain connect to it is checked to hang (time out after 300 ms), or the test would mean
/// nothing. Returns the listener, the connections that fill it, and its port.
fn black_hole() -> (socket2::Socket, Vec<TcpStream>, u16) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    let any: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    listener.bind(&any.into()).expect("bind 127.0.0.1:0");
    listener.listen(0).expect("listen with backlog 0");
    let addr = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("a bound address");
    let mut fill = Vec::new();
    for _ in 0..4 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => fill.push(stream),
            Err(err) if matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                return (listener, fill, addr.port());
            }
            Err(err) => panic!("connect to the black hole: {err}"),
        }
    }
    panic!(
        "a listener with backlog 0 that never accepts took {} connections: connects to it \
         do not hang here, so the test would not be meaningful",
        fill.len()
    );
}

/// While an `rpc-connect` thread connects to a peer that drops SYNs (the connect timeout
/// is the default 120 s): a connect to a live server from the same env is not held up,
/// `shutdown()` returns within its bound (5 s grace; checked < 10 s), and the lookup
/// waiting on the hanging connect fails at once.
#[test]
fn shutdown_is_bounded_while_a_connect_hangs_and_other_connects_are_not_held_up() {
    let (listener, _fill, hole_port) = black_hole();
    let live = server_env("black-hole-live");
    live.setup_endpoint("d", Doubler).unwrap();
    let client = client_env("black-hole-client");
    let (lookup_tx, lookup_rx) = mpsc::channel();
    let env = client.clone();
    let lookup = spawn("test-black-hole-lookup", move || {
        let outcome = env.setup_endpoint_ref::<u64>(RpcAddress::new(HOST, hole_port), "x");
        let _ = lookup_tx.send(outcome.map(|_| ()));
    });
    // Give the connect to the black hole time to start on an rpc-connect thread.
    thread::sleep(Duration::from_millis(300));

    let d = promptly("a lookup of a live server while a connect hangs", || {
        client.setup_endpoint_ref::<u64>(address_of(&live), "d")
    })
    .unwrap();
    assert_eq!(d.ask_sync::<u64>(4).unwrap(), 8);
    assert!(
        lookup_rx.try_recv().is_err(),
        "the lookup through the black hole ended: the connect did not hang"
    );

    let started = Instant::now();
    client.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let outcome = recv_within(&lookup_rx, 5);
    assert!(
        matches!(outcome, Err(RpcError::EnvStopped)),
        "the lookup ended with {outcome:?}"
    );
    join(lookup);
    live.shutdown();
    drop(listener);
}
