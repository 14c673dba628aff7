//! The inputs of the connection-layer issue, one or more tests each: a handler's outgoing
//! messages go out while it runs, bounded queues and flow control (a raw peer that never
//! reads its answers, a one-way flood, two envs flooding each other while their handlers
//! ask back), `try_send`, receipts, liveness keys (`rpc.io.connectionTimeout`,
//! `rpc.io.frameTimeout`, `rpc.io.maxConnections`), connections of client-mode envs that
//! leave, a `Deserialize` that panics, failures after a connection is lost, half-close,
//! and a bounded shutdown while a connect hangs.
//!
//! Every wait is bounded; time appears in assertions only as generous bounds that catch a
//! call that waited for a timeout it should not have waited for, or hung.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpcenv::{
    EndpointContext, Receipt, RpcAddress, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef,
    RpcEnv, RpcError, Threading,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::support::{
    HOST, LONG, PROMPTLY, address_of, assert_connection_error, client_env, client_env_with,
    expect_closed_by_peer, join, lock, raw_connect, recv_within, rpc_conf, server_env,
    server_env_with, spawn, wait_for,
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

/// Bytes that serialize as one byte string (serde writes a `Vec<u8>` element by element,
/// which is slow for the 100 kB payloads here).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl Visitor<'_> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Blob, E> {
                Ok(Blob(bytes.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(bytes))
            }
        }
        deserializer.deserialize_byte_buf(BlobVisitor)
    }
}

/// A numbered message with a payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chunk {
    seq: u64,
    data: Blob,
}

impl Chunk {
    fn new(seq: u64, size: usize) -> Self {
        Self {
            seq,
            data: Blob(vec![seq as u8; size]),
        }
    }
}

/// The sequence numbers a [`Sink`] handled, in order.
type Seen = Arc<Mutex<Vec<u64>>>;

/// Records the sequence number of every [`Chunk`] (one-way, or asked: then it answers with
/// how many it has handled), after sleeping `pause`; the first message waits for `gate`
/// to be released (a send on it, or its sender dropped).
struct Sink {
    seen: Seen,
    pause: Duration,
    gate: Option<(Receiver<()>, Sender<()>)>,
    threading: Threading,
}

/// Holds the first message a gated [`Sink`] handles until it is released (or dropped).
struct Gate {
    release: Sender<()>,
    holding: Receiver<()>,
}

impl Gate {
    /// Waits until the sink's handler holds its first message (it has left the inbox).
    fn wait_holding(&self) {
        recv_within(&self.holding, 10);
    }

    fn release(self) {
        let _ = self.release.send(());
    }
}

impl Sink {
    fn new(seen: &Seen) -> Self {
        Self {
            seen: Arc::clone(seen),
            pause: Duration::ZERO,
            gate: None,
            threading: Threading::Shared,
        }
    }

    fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Holds the first message (on a thread of its own) until the returned gate is
    /// released or dropped.
    fn gated(mut self) -> (Self, Gate) {
        let (release, gate) = mpsc::channel();
        let (holding_tx, holding) = mpsc::channel();
        self.gate = Some((gate, holding_tx));
        self.threading = Threading::Dedicated;
        (self, Gate { release, holding })
    }

    fn handle(&mut self, seq: u64) -> usize {
        if let Some((gate, holding)) = self.gate.take() {
            let _ = holding.send(());
            let _ = gate.recv_timeout(LONG);
        }
        if !self.pause.is_zero() {
            thread::sleep(self.pause);
        }
        let mut seen = lock(&self.seen);
        seen.push(seq);
        seen.len()
    }
}

impl RpcEndpoint for Sink {
    type Message = Chunk;

    fn receive(&mut self, msg: Chunk, _ctx: &EndpointContext<Chunk>) {
        self.handle(msg.seq);
    }

    fn receive_and_reply(
        &mut self,
        msg: Chunk,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let handled = self.handle(msg.seq);
        reply.reply(handled as u64);
    }

    fn threading(&self) -> Threading {
        self.threading
    }
}

#[track_caller]
fn assert_in_order(seen: &Seen, count: u64) {
    let seen = lock(seen);
    assert_eq!(seen.len() as u64, count, "messages handled");
    if let Some(at) = (0..count).position(|seq| seen[seq as usize] != seq) {
        panic!(
            "messages handled out of order or twice from position {at}: {:?}",
            &seen[at..seen.len().min(at + 10)]
        );
    }
}

/// Answers every ask with twice the number.
struct Doubler;

impl RpcEndpoint for Doubler {
    type Message = u64;

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
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

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
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

    fn receive_and_reply(
        &mut self,
        _n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
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
    let mut body = vec![3, 0];
    body.extend_from_slice(&(endpoint.len() as u16).to_be_bytes());
    body.extend_from_slice(endpoint.as_bytes());
    // No claim about the message's type or the reply's (fingerprints 0).
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(content);
    body
}

/// The codec bytes of a `String` shorter than 251 bytes (bincode's varint length, then the
/// bytes).
fn short_string(text: &str) -> Vec<u8> {
    assert!(text.len() < 251, "a one-byte varint length");
    let mut bytes = vec![text.len() as u8];
    bytes.extend_from_slice(text.as_bytes());
    bytes
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

/// Whether `addr` (a socket address seen from the server) is `peer`.
fn is_peer(addr: &RpcAddress, peer: SocketAddr) -> bool {
    addr.port() == peer.port() && addr.host() == peer.ip().to_string()
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

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
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

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
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
// 2. A raw peer that sends many asks and never reads its answers

/// Answers every ask with [`PAD_ANSWER`] bytes of text; reports connections that close.
struct Padder {
    disconnected: Sender<RpcAddress>,
}

const PAD_ANSWER: usize = 256;

impl RpcEndpoint for Padder {
    type Message = String;

    fn receive_and_reply(
        &mut self,
        _msg: String,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply("x".repeat(PAD_ANSWER));
    }

    fn on_disconnected(&mut self, remote: &RpcAddress, _ctx: &EndpointContext<String>) {
        let _ = self.disconnected.send(remote.clone());
    }
}

/// A raw connection whose socket buffers are 4 KiB (set before connecting).
fn raw_connect_small_buffers(port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("a raw connection");
    socket.into()
}

/// Writes `bytes` on a non-blocking `stream` until all are written, the socket takes
/// nothing for `stuck_after`, or the write fails; returns how many bytes it took.
fn write_until_stuck(stream: &mut TcpStream, bytes: &[u8], stuck_after: Duration) -> usize {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut written = 0;
    let mut progress = Instant::now();
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(n) => {
                written += n;
                progress = Instant::now();
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if progress.elapsed() >= stuck_after {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // Closed by the server already (its connection timeout): it stopped reading.
            Err(_) => break,
        }
    }
    stream.set_nonblocking(false).expect("blocking again");
    written
}

/// A raw socket sends 3,000 small asks (hand-built RpcRequest frames carrying request
/// envelopes) and never reads the answers. The server stops reading it, so the raw
/// socket's writes block before all asks are written (its answers and the asks it holds
/// stay bounded); it keeps serving another client meanwhile; and with
/// `rpc.io.connectionTimeout=2s` it closes the stuck connection.
#[test]
fn raw_peer_that_never_reads_its_answers_stops_being_read_and_is_closed_after_the_connection_timeout()
 {
    const ASKS: usize = 3000;
    let server = server_env_with(
        "unread-answers",
        conf_with(&[
            ("rpc.io.connectionTimeout", "2s"),
            ("rpc.io.maxQueuedBytes", "16k"),
            ("rpc.io.sendBuffer", "8k"),
            ("rpc.io.receiveBuffer", "8k"),
            ("rpc.dispatcher.inboxCapacity", "64k"),
        ]),
    );
    let (disconnected_tx, disconnected) = mpsc::channel();
    server
        .setup_endpoint(
            "pad",
            Padder {
                disconnected: disconnected_tx,
            },
        )
        .unwrap();
    let port = address_of(&server).port();

    let mut raw = raw_connect_small_buffers(port);
    let raw_addr = raw.local_addr().expect("the raw socket's address");
    let content = short_string(&"q".repeat(200));
    let mut bytes = Vec::new();
    for id in 0..ASKS {
        bytes.extend_from_slice(&rpc_request(id as u64, &envelope("pad", &content)));
    }
    let written = write_until_stuck(&mut raw, &bytes, Duration::from_secs(1));
    let frame_len = bytes.len() / ASKS;
    assert!(
        written < bytes.len(),
        "the server read all {ASKS} asks ({} bytes) from a peer that reads no answers",
        bytes.len()
    );
    log::info!(
        "the raw peer wrote {} of {ASKS} asks before the server stopped reading it",
        written / frame_len
    );

    // Others are served meanwhile: the stuck peer holds no thread and bounded memory.
    let client = client_env("unread-answers-client");
    let pad = client
        .setup_endpoint_ref::<String>(address_of(&server), "pad")
        .unwrap();
    for _ in 0..3 {
        let answer = promptly("an ask of another client", || {
            pad.ask_sync::<String>("hi".into())
        })
        .unwrap();
        assert_eq!(answer.len(), PAD_ANSWER);
    }

    // rpc.io.connectionTimeout closes the stuck connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match disconnected.recv_timeout(left) {
            Ok(addr) if is_peer(&addr, raw_addr) => break,
            Ok(_) => {}
            Err(_) => panic!("the server did not close the stuck peer within 15 s"),
        }
    }
    expect_closed_by_peer(&mut raw, 5);
    assert_eq!(
        pad.ask_sync::<String>("after".into()).unwrap().len(),
        PAD_ANSWER
    );
    client.shutdown();
    server.shutdown();
}

// =======================================================================================
// 3. A one-way flood to a slow endpoint

/// `rpc.dispatcher.inboxCapacity` and `rpc.io.maxQueuedBytes` of 64k.
const SMALL_BOUNDS: [(&str, &str); 2] = [
    ("rpc.dispatcher.inboxCapacity", "64k"),
    ("rpc.io.maxQueuedBytes", "64k"),
];

/// 1,500 one-way messages of 100 kB to an endpoint that sleeps 1 ms per message, with
/// windows and queues of 64k on both sides. `send` waits for room: at no point is the
/// sender more than a few messages ahead of the endpoint. A `try_send` after every tenth
/// `send` either goes or fails at once with `QueueFull` naming the peer, the bytes queued
/// and the key of the limit. Every message accepted is handled exactly once, in order.
#[test]
fn one_way_flood_to_a_slow_endpoint_waits_for_room_refuses_try_send_and_loses_nothing() {
    const MESSAGES: u64 = 1500;
    const SIZE: usize = 100_000;
    // What may be on its way at once: the endpoint's window (64k, exceeded by one frame
    // at most), the frames held for it (64k, exceeded by one frame at most), the message
    // being handled; with room to spare. Without back-pressure the sender runs ahead by
    // nearly all of them.
    const MAX_AHEAD: u64 = 40;
    let bounds = conf_with(&SMALL_BOUNDS).set("rpc.io.sendTimeout", "30s");
    let server = server_env_with("flood-server", bounds.clone());
    let port = address_of(&server).port();
    let seen = Seen::default();
    server
        .setup_endpoint("slow", Sink::new(&seen).pause(Duration::from_millis(1)))
        .unwrap();
    let client = client_env_with("flood-client", bounds);
    let slow = client
        .setup_endpoint_ref::<Chunk>(address_of(&server), "slow")
        .unwrap();

    let mut refused = Vec::new();
    let mut most_ahead = 0;
    let started = Instant::now();
    for seq in 0..MESSAGES {
        let chunk = Chunk::new(seq, SIZE);
        let tried = seq % 10 == 5
            && match promptly("try_send", || slow.try_send(chunk.clone())) {
                Ok(()) => true,
                Err(err) => {
                    refused.push(err);
                    false
                }
            };
        if !tried {
            slow.send(chunk)
                .unwrap_or_else(|err| panic!("send {seq}: {err}"));
        }
        let handled = lock(&seen).len() as u64;
        most_ahead = most_ahead.max((seq + 1).saturating_sub(handled));
    }
    log::info!(
        "{MESSAGES} sends in {:?}, at most {most_ahead} ahead, {} try_sends refused",
        started.elapsed(),
        refused.len()
    );
    assert!(
        most_ahead <= MAX_AHEAD,
        "the sender ran {most_ahead} messages ahead of the endpoint: send did not wait for room"
    );
    assert!(
        !refused.is_empty(),
        "no try_send found the queue full while send had to wait"
    );
    for err in &refused {
        let RpcError::QueueFull {
            queued,
            limit,
            key,
            waited,
            ..
        } = err
        else {
            panic!("try_send failed with {err:?}, not QueueFull");
        };
        assert_eq!(
            (*limit, *key, *waited),
            (65536, "rpc.io.maxQueuedBytes", false)
        );
        assert!(*queued >= *limit, "{err}");
        let text = err.to_string();
        for needle in [
            format!("{HOST}:{port}"),
            format!("{queued} bytes queued"),
            "65536".to_owned(),
            "rpc.io.maxQueuedBytes".to_owned(),
        ] {
            assert!(text.contains(&needle), "{text:?} should contain {needle:?}");
        }
    }
    wait_for("every message to be handled", 60, || {
        lock(&seen).len() as u64 >= MESSAGES
    });
    assert_in_order(&seen, MESSAGES);
    client.shutdown();
    server.shutdown();
}

/// An endpoint that takes no messages (its handler is held): `send` of 100 kB messages
/// goes while there is window and room, then waits `rpc.io.sendTimeout` (500 ms) and fails
/// with `QueueFull` saying it waited; `try_send` fails at once. Once the endpoint goes on,
/// every message accepted is handled, in order.
#[test]
fn send_to_an_endpoint_that_takes_nothing_waits_the_send_timeout_then_fails_with_queue_full() {
    const SIZE: usize = 100_000;
    let server = server_env_with("stalled-server", conf_with(&SMALL_BOUNDS));
    let port = address_of(&server).port();
    let seen = Seen::default();
    let (sink, gate) = Sink::new(&seen).gated();
    server.setup_endpoint("stalled", sink).unwrap();
    let client = client_env_with(
        "stalled-client",
        conf_with(&SMALL_BOUNDS).set("rpc.io.sendTimeout", "500ms"),
    );
    let stalled = client
        .setup_endpoint_ref::<Chunk>(address_of(&server), "stalled")
        .unwrap();

    let mut accepted = 0;
    let (err, waited) = loop {
        assert!(
            accepted < 100,
            "100 messages of 100 kB went to a stalled endpoint"
        );
        let started = Instant::now();
        match stalled.send(Chunk::new(accepted, SIZE)) {
            Ok(()) => accepted += 1,
            Err(err) => break (err, started.elapsed()),
        }
    };
    assert!(
        matches!(
            err,
            RpcError::QueueFull {
                waited: true,
                key: "rpc.io.maxQueuedBytes",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "the send gave up after {waited:?}, before rpc.io.sendTimeout"
    );
    assert!(waited < PROMPTLY, "the send waited {waited:?}");
    let text = err.to_string();
    for needle in [&format!("{HOST}:{port}")[..], "rpc.io.sendTimeout"] {
        assert!(text.contains(needle), "{text:?} should contain {needle:?}");
    }
    let refused = promptly("try_send to a full queue", || {
        stalled.try_send(Chunk::new(accepted, SIZE))
    });
    assert!(
        matches!(refused, Err(RpcError::QueueFull { waited: false, .. })),
        "{refused:?}"
    );

    gate.release();
    wait_for("the accepted messages to be handled", 10, || {
        lock(&seen).len() as u64 >= accepted
    });
    // Room again: the next message goes.
    stalled.send(Chunk::new(accepted, SIZE)).unwrap();
    wait_for("the last message to be handled", 10, || {
        lock(&seen).len() as u64 > accepted
    });
    assert_in_order(&seen, accepted + 1);
    client.shutdown();
    server.shutdown();
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
// 7. Connections of client-mode envs that hand out references and leave

#[derive(Serialize, Deserialize)]
enum RegistryMsg {
    /// Keep this reference (to an endpoint of a client-mode env); answered with how many
    /// are kept.
    Register(RpcEndpointRef<u64>),
    /// Send to every kept reference; answered with how many sends failed with
    /// `Connection`, and how many had another outcome.
    SendToAll,
}

/// Keeps the references it is handed; counts disconnections.
struct Registry {
    refs: Vec<RpcEndpointRef<u64>>,
    disconnected: Arc<AtomicUsize>,
}

impl RpcEndpoint for Registry {
    type Message = RegistryMsg;

    fn receive_and_reply(
        &mut self,
        msg: RegistryMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            RegistryMsg::Register(r) => {
                self.refs.push(r);
                reply.reply(self.refs.len() as u64);
            }
            RegistryMsg::SendToAll => {
                let connection = self
                    .refs
                    .iter()
                    .filter(|r| matches!(r.send(1), Err(RpcError::Connection { .. })))
                    .count() as u64;
                reply.reply((connection, self.refs.len() as u64 - connection));
            }
        }
    }

    fn on_disconnected(&mut self, _remote: &RpcAddress, _ctx: &EndpointContext<RegistryMsg>) {
        self.disconnected.fetch_add(1, Ordering::SeqCst);
    }
}

/// The inodes of the ESTABLISHED IPv4 TCP sockets whose local port is `port`.
fn established_sockets(port: u16) -> HashSet<u64> {
    let table = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let established = *fields.get(3)? == "01";
            (local_port == port && established).then_some(())?;
            fields.get(9)?.parse().ok()
        })
        .collect()
}

/// The inodes of the sockets this process holds open.
fn open_sockets() -> HashSet<u64> {
    fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// 20 client-mode envs each hand the server a reference to one of their endpoints (in an
/// ask) and shut down. The server closes its side of each connection (no descriptor of
/// the process points to those sockets any more) although it still holds the references,
/// every endpoint hears `on_disconnected`, and sends through the references fail at once
/// with `Connection`.
#[test]
fn server_closes_the_connections_of_client_mode_envs_that_left_although_it_holds_their_refs() {
    const CLIENTS: usize = 20;
    let server = server_env("client-refs-server");
    let port = address_of(&server).port();
    let disconnected = Arc::new(AtomicUsize::new(0));
    let registry = server
        .setup_endpoint(
            "registry",
            Registry {
                refs: Vec::new(),
                disconnected: Arc::clone(&disconnected),
            },
        )
        .unwrap();
    let clients: Vec<RpcEnv> = (0..CLIENTS)
        .map(|i| {
            let env = client_env_with(
                &format!("client-refs-{i}"),
                conf_with(&[("rpc.io.threads", "1"), ("rpc.dispatcher.numThreads", "1")]),
            );
            let pinger = env.setup_endpoint("pinger", Counter::default()).unwrap();
            let remote = env
                .setup_endpoint_ref::<RegistryMsg>(address_of(&server), "registry")
                .unwrap();
            let kept = remote
                .ask_sync::<u64>(RegistryMsg::Register(pinger))
                .unwrap();
            assert_eq!(kept, i as u64 + 1);
            env
        })
        .collect();

    let server_side = established_sockets(port);
    assert_eq!(
        server_side.len(),
        CLIENTS,
        "one server-side socket per client env in /proc/net/tcp: {server_side:?}"
    );
    assert!(
        server_side.is_subset(&open_sockets()),
        "the process holds the server-side sockets"
    );

    for env in &clients {
        env.shutdown();
    }
    wait_for(
        "the server to close the sockets of the client envs that left",
        10,
        || open_sockets().is_disjoint(&server_side),
    );
    wait_for("on_disconnected for every client env", 10, || {
        disconnected.load(Ordering::SeqCst) == CLIENTS
    });
    let (connection, other) = registry
        .ask_sync::<(u64, u64)>(RegistryMsg::SendToAll)
        .unwrap();
    assert_eq!(
        (connection, other),
        (CLIENTS as u64, 0),
        "sends through references to client-mode envs that left"
    );
    server.shutdown();
}

// =======================================================================================
// 8. A message whose Deserialize panics

/// A number whose `Deserialize` panics on 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Touchy(u32);

impl Serialize for Touchy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(deserializer)?;
        assert_ne!(n, 13, "Touchy cannot stand 13");
        Ok(Self(n))
    }
}

/// Reports one-way messages and errors; answers asks with twice the number.
struct TouchyEndpoint {
    received: Sender<u32>,
    errors: Sender<RpcError>,
}

impl RpcEndpoint for TouchyEndpoint {
    type Message = Touchy;

    fn receive(&mut self, msg: Touchy, _ctx: &EndpointContext<Touchy>) {
        let _ = self.received.send(msg.0);
    }

    fn receive_and_reply(
        &mut self,
        msg: Touchy,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(2 * msg.0);
    }

    fn on_error(&mut self, error: RpcError, _ctx: &EndpointContext<Touchy>) {
        let _ = self.errors.send(error);
    }
}

#[track_caller]
fn assert_decode_panic(err: &RpcError) {
    assert!(matches!(err, RpcError::Decode { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("panicked"), "{text:?} should say it panicked");
    assert!(
        text.contains("Touchy cannot stand 13"),
        "{text:?} should carry the panic's message"
    );
}

/// A remote one-way message and a remote ask whose `Deserialize` panics: `on_error` gets a
/// `Decode` error saying it panicked (for each), the ask fails at once with an error (not
/// a timeout), and later messages and asks are handled: the endpoint is not wedged.
#[test]
fn message_whose_deserialize_panics_goes_to_on_error_and_the_endpoint_keeps_serving() {
    let server = server_env("touchy-server");
    let (received_tx, received) = mpsc::channel();
    let (errors_tx, errors) = mpsc::channel();
    server
        .setup_endpoint(
            "touchy",
            TouchyEndpoint {
                received: received_tx,
                errors: errors_tx,
            },
        )
        .unwrap();
    let client = client_env("touchy-client");
    let touchy = client
        .setup_endpoint_ref::<Touchy>(address_of(&server), "touchy")
        .unwrap();

    touchy.send(Touchy(13)).unwrap();
    assert_decode_panic(&recv_within(&errors, 10));

    let err = promptly("an ask whose message panics in Deserialize", || {
        touchy.ask_sync::<u32>(Touchy(13))
    })
    .unwrap_err();
    assert!(!matches!(err, RpcError::Timeout { .. }), "{err:?}");
    assert_decode_panic(&err);
    assert_decode_panic(&recv_within(&errors, 10));

    assert_eq!(touchy.ask_sync::<u32>(Touchy(4)).unwrap(), 8);
    touchy.send(Touchy(5)).unwrap();
    assert_eq!(recv_within(&received, 10), 5);
    assert!(errors.try_recv().is_err(), "no other error");
    client.shutdown();
    server.shutdown();
}

// =======================================================================================
// 9. Failures after a connection is lost: receipts, sizes, failing fast

/// 500 `send_with_receipt`s of 100 kB to an endpoint whose env shuts down after it handled
/// 50 of them (the connection closes mid-stream): every send returns promptly and every
/// receipt resolves, the first ones `Ok`, the rest `Connection` naming the peer (a send
/// itself may fail with that at once); none hangs.
#[test]
fn receipts_of_a_stream_to_a_peer_that_goes_away_all_resolve_ok_or_connection() {
    const MESSAGES: u64 = 500;
    const HANDLED_BEFORE_SHUTDOWN: usize = 50;
    const SIZE: usize = 100_000;
    let server = server_env_with(
        "receipts-server",
        conf_with(&[("rpc.dispatcher.inboxCapacity", "64k")]),
    );
    let port = address_of(&server).port();
    let seen = Seen::default();
    server
        .setup_endpoint("sink", Sink::new(&seen).pause(Duration::from_millis(1)))
        .unwrap();
    let client = client_env("receipts-client");
    let sink = client
        .setup_endpoint_ref::<Chunk>(address_of(&server), "sink")
        .unwrap();

    type Outcome = (u64, Result<Receipt, RpcError>, Duration);
    let sender = spawn("test-receipts-sender", move || -> Vec<Outcome> {
        (0..MESSAGES)
            .map(|seq| {
                let started = Instant::now();
                let outcome = sink.send_with_receipt(Chunk::new(seq, SIZE));
                (seq, outcome, started.elapsed())
            })
            .collect()
    });
    wait_for("the sink to handle its first messages", 30, || {
        lock(&seen).len() >= HANDLED_BEFORE_SHUTDOWN
    });
    server.shutdown();
    let outcomes = join(sender);

    let (mut ok, mut failed) = (0, 0);
    for (seq, outcome, took) in outcomes {
        assert!(took < PROMPTLY, "send {seq} took {took:?}");
        let result = match outcome {
            Ok(receipt) => receipt
                .wait_timeout(PROMPTLY)
                .unwrap_or_else(|| panic!("the receipt of message {seq} did not resolve")),
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => ok += 1,
            Err(err) => {
                assert_connection_error(&err, port);
                failed += 1;
            }
        }
    }
    log::info!("{ok} receipts Ok, {failed} failed");
    assert!(ok >= HANDLED_BEFORE_SHUTDOWN, "only {ok} Ok");
    assert!(failed > 0, "no message was lost with the connection");
    client.shutdown();
}

/// Sends, on request, a message over `rpc.message.maxSize` and then a small one to the
/// reference it is asked with, and hands over what the sends returned.
struct Relay {
    outcomes: Sender<RelayOutcome>,
}

/// What the big send returned and how long it took, and what the small send returned.
type RelayOutcome = (Result<(), RpcError>, Duration, Result<Receipt, RpcError>);

impl RpcEndpoint for Relay {
    type Message = RpcEndpointRef<Blob>;

    fn receive_and_reply(
        &mut self,
        target: RpcEndpointRef<Blob>,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let started = Instant::now();
        let big = target.send(Blob(vec![7; 100 * 1024]));
        let took = started.elapsed();
        let small = target.send_with_receipt(Blob(vec![7; 10]));
        let _ = self.outcomes.send((big, took, small));
        reply.reply(());
    }
}

/// Sinks bytes.
struct ByteSink;

impl RpcEndpoint for ByteSink {
    type Message = Blob;

    fn receive(&mut self, _msg: Blob, _ctx: &EndpointContext<Blob>) {}
}

/// A one-way message over `rpc.message.maxSize` (64k here) to an env this env has no
/// connection to (it learned the reference from a message; that env is gone, so no
/// connection can ever be made) fails at once with `FrameTooLarge`, instead of being
/// queued for a connect; a small one is accepted and its receipt fails with `Connection`.
#[test]
fn one_way_message_over_max_size_fails_with_frame_too_large_before_any_connection() {
    let target_env = server_env("too-large-target");
    target_env.setup_endpoint("bytes", ByteSink).unwrap();
    let target_port = address_of(&target_env).port();
    let relay_env = server_env_with(
        "too-large-relay",
        conf_with(&[("rpc.message.maxSize", "64k")]),
    );
    let (outcomes_tx, outcomes) = mpsc::channel();
    relay_env
        .setup_endpoint(
            "relay",
            Relay {
                outcomes: outcomes_tx,
            },
        )
        .unwrap();
    let client = client_env("too-large-client");
    let target = client
        .setup_endpoint_ref::<Blob>(address_of(&target_env), "bytes")
        .unwrap();
    let relay = client
        .setup_endpoint_ref::<RpcEndpointRef<Blob>>(address_of(&relay_env), "relay")
        .unwrap();
    target_env.shutdown();

    relay.ask_sync::<()>(target).unwrap();
    let (big, took, small) = recv_within(&outcomes, 10);
    match big {
        Err(RpcError::FrameTooLarge { size, max }) => {
            assert_eq!(max, 64 * 1024);
            assert!(size > max, "{size}");
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(took < PROMPTLY, "the refused send took {took:?}");
    let small = match small {
        Ok(receipt) => receipt
            .wait_timeout(PROMPTLY)
            .expect("the receipt of a message to a gone env resolves"),
        Err(err) => Err(err),
    };
    assert_connection_error(&small.unwrap_err(), target_port);
    client.shutdown();
    relay_env.shutdown();
}

/// Reports the connections that close.
struct Watcher {
    disconnected: Sender<RpcAddress>,
}

impl RpcEndpoint for Watcher {
    type Message = u64;

    fn on_disconnected(&mut self, remote: &RpcAddress, _ctx: &EndpointContext<u64>) {
        let _ = self.disconnected.send(remote.clone());
    }
}

/// A sender sends every 600 ms (ten times) to a server env that shut down. Connects fail
/// and the time during which sends fail at once doubles after each failure in a row, so
/// most sends fail at once with `Connection` naming the peer; every send that was
/// accepted has a receipt that fails with `Connection`: nothing is lost without a word.
#[test]
fn sends_to_an_env_that_shut_down_mostly_fail_at_once_and_accepted_ones_have_failing_receipts() {
    const SENDS: u32 = 10;
    const EVERY: Duration = Duration::from_millis(600);
    let server = server_env("gone-server");
    let address = address_of(&server);
    let port = address.port();
    server
        .setup_endpoint("counter", Counter::default())
        .unwrap();
    let client = client_env("gone-client");
    let (disconnected_tx, disconnected) = mpsc::channel();
    client
        .setup_endpoint(
            "watcher",
            Watcher {
                disconnected: disconnected_tx,
            },
        )
        .unwrap();
    let counter = client
        .setup_endpoint_ref::<u64>(&address, "counter")
        .unwrap();
    assert_eq!(counter.ask_sync::<u64>(0).unwrap(), 0);
    server.shutdown();
    // The client saw the connection close: no send below can go to it.
    assert_eq!(recv_within(&disconnected, 10), address);

    let started = Instant::now();
    let mut receipts = Vec::new();
    let mut failed_at_once = 0;
    for i in 0..SENDS {
        let slot = started + EVERY * i;
        thread::sleep(slot.saturating_duration_since(Instant::now()));
        match promptly("a send to an env that is gone", || {
            counter.send_with_receipt(u64::from(i))
        }) {
            Ok(receipt) => receipts.push((i, receipt)),
            Err(err) => {
                assert_connection_error(&err, port);
                failed_at_once += 1;
            }
        }
    }
    log::info!(
        "{failed_at_once} of {SENDS} sends failed at once, {} accepted",
        receipts.len()
    );
    for (i, receipt) in receipts.iter() {
        match receipt.wait_timeout(PROMPTLY) {
            Some(Err(err)) => assert_connection_error(&err, port),
            other => panic!("the receipt of accepted send {i}: {other:?}"),
        }
    }
    assert!(
        failed_at_once > receipts.len(),
        "{failed_at_once} sends failed at once, {} were accepted (and lost)",
        receipts.len()
    );
    client.shutdown();
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

// =======================================================================================
// Two envs flooding each other while their handlers ask back: no deadlock

#[derive(Debug, Serialize, Deserialize)]
enum Work {
    /// A one-way message.
    Data { producer: u32, seq: u64, data: Blob },
    /// An ask: answered with what the other env's responder says to `seq`.
    Job { producer: u32, seq: u64 },
}

/// What a [`Worker`] saw.
#[derive(Debug, Default)]
struct WorkStats {
    data: u64,
    jobs: u64,
    out_of_order: u64,
    next: HashMap<u32, u64>,
}

/// Takes [`Work`] from the producers of the other env; answers a `Job` only after asking
/// the responder of that env.
struct Worker {
    responder: RpcEndpointRef<u64>,
    stats: Arc<Mutex<WorkStats>>,
}

impl Worker {
    fn check(&self, producer: u32, seq: u64) {
        let mut stats = lock(&self.stats);
        let next = stats.next.entry(producer).or_insert(0);
        let in_order = *next == seq;
        *next = seq + 1;
        if !in_order {
            stats.out_of_order += 1;
        }
    }
}

impl RpcEndpoint for Worker {
    type Message = Work;

    fn receive(&mut self, msg: Work, _ctx: &EndpointContext<Work>) {
        match msg {
            Work::Data { producer, seq, .. } => {
                self.check(producer, seq);
                lock(&self.stats).data += 1;
            }
            Work::Job { .. } => panic!("a job came as a one-way message"),
        }
    }

    fn receive_and_reply(
        &mut self,
        msg: Work,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let Work::Job { producer, seq } = msg else {
            reply.send_failure("data came as an ask");
            return;
        };
        self.check(producer, seq);
        lock(&self.stats).jobs += 1;
        match self.responder.ask_sync::<u64>(seq) {
            Ok(answer) => reply.reply(answer),
            Err(err) => reply.send_failure(format!("the ask back failed: {err}")),
        }
    }

    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
}

/// Answers `n` with `n + 1`.
struct PlusOne;

impl RpcEndpoint for PlusOne {
    type Message = u64;

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(n + 1);
    }
}

/// Two server envs A and B with small bounds (`rpc.io.maxQueuedBytes=64k`,
/// `rpc.dispatcher.inboxCapacity=64k`, `rpc.io.sendTimeout=60s`). Each has a `worker`
/// flooded by two producer threads of the other env with one-way messages of 4 kB and
/// asks; the worker answers an ask only after asking the `responder` of the other env.
/// It finishes promptly with nothing lost: every send is accepted, every ask answered,
/// and each worker saw every message of each producer once, in order.
///
/// The ask back goes to a separate responder endpoint, not to the other worker: an
/// endpoint handles one message at a time, so two endpoints that each wait, inside a
/// handler, for an answer from the other while both are busy deadlock in any actor
/// system, bounded queues or not. What this test checks is that the bounds add no
/// deadlock of their own: the responder's asks and answers get through the connections
/// that are full of the flood to the workers.
#[test]
fn two_envs_flooding_each_other_while_handlers_ask_back_finish_with_nothing_lost() {
    const PRODUCERS: u32 = 2;
    const MESSAGES: u64 = 3000;
    /// Every tenth message is an ask (the last one of each producer too).
    const ASK_EVERY: u64 = 10;
    let bounds = conf_with(&SMALL_BOUNDS).set("rpc.io.sendTimeout", "60s");
    let a = server_env_with("crossfire-a", bounds.clone());
    let b = server_env_with("crossfire-b", bounds);
    for env in [&a, &b] {
        env.setup_endpoint("responder", PlusOne).unwrap();
    }
    let mut targets = Vec::new();
    let mut all_stats = Vec::new();
    for (env, other) in [(&a, &b), (&b, &a)] {
        let responder = env
            .setup_endpoint_ref::<u64>(address_of(other), "responder")
            .unwrap();
        let stats = Arc::new(Mutex::new(WorkStats::default()));
        env.setup_endpoint(
            "worker",
            Worker {
                responder,
                stats: Arc::clone(&stats),
            },
        )
        .unwrap();
        all_stats.push((env.name().to_owned(), stats));
    }
    for (env, other) in [(&a, &b), (&b, &a)] {
        let worker = env
            .setup_endpoint_ref::<Work>(address_of(other), "worker")
            .unwrap();
        targets.push((env.name().to_owned(), worker));
    }

    let (done_tx, done) = mpsc::channel();
    let mut producers = Vec::new();
    for (from, worker) in &targets {
        for producer in 0..PRODUCERS {
            let worker = worker.clone();
            let done = done_tx.clone();
            let name = format!("{from}-producer-{producer}");
            producers.push(spawn("test-crossfire-producer", move || {
                let mut pending = Vec::new();
                for seq in 0..MESSAGES {
                    if seq % ASK_EVERY == ASK_EVERY - 1 {
                        pending.push((seq, worker.ask::<u64>(Work::Job { producer, seq })));
                    } else {
                        let data = Blob(vec![producer as u8; 4096]);
                        if let Err(err) = worker.send(Work::Data {
                            producer,
                            seq,
                            data,
                        }) {
                            panic!("{name}: send {seq}: {err}");
                        }
                    }
                }
                for (seq, answer) in pending {
                    match answer.wait() {
                        Ok(answer) => assert_eq!(answer, seq + 1, "{name}"),
                        Err(err) => panic!("{name}: ask {seq}: {err}"),
                    }
                }
                let _ = done.send(name);
            }));
        }
    }
    drop(done_tx);
    let mut finished = 0;
    while finished < producers.len() {
        match done.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => finished += 1,
            // Every producer ended, one at least by a panic: the join below shows it.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!(
                "only {finished} of {} producers finished within 60 s: a deadlock",
                producers.len()
            ),
        }
    }
    for producer in producers {
        join(producer);
    }

    let asks = MESSAGES / ASK_EVERY;
    for (name, stats) in &all_stats {
        let stats = lock(stats);
        assert_eq!(
            (stats.data, stats.jobs, stats.out_of_order),
            (
                u64::from(PRODUCERS) * (MESSAGES - asks),
                u64::from(PRODUCERS) * asks,
                0
            ),
            "the worker of {name}: one-way messages, asks, out of order"
        );
    }
    a.shutdown();
    b.shutdown();
}

// =======================================================================================
// try_send, send_with_receipt, and a full inbox of a local endpoint

/// `try_send` of 16 kB messages to a remote endpoint whose handler is held goes while
/// there is window and room, then fails at once with `QueueFull` (`waited: false`) naming
/// the peer; it never waits. Once the endpoint goes on, everything accepted is handled in
/// order, and `try_send` goes again. A `try_send` to a local endpoint whose inbox is full
/// fails at once the same way, naming the inbox.
#[test]
fn try_send_goes_while_there_is_room_and_fails_at_once_with_queue_full_when_there_is_none() {
    const SIZE: usize = 16 * 1024;
    let server = server_env_with("try-send-server", conf_with(&SMALL_BOUNDS));
    let port = address_of(&server).port();
    let seen = Seen::default();
    let (sink, gate) = Sink::new(&seen).gated();
    server.setup_endpoint("held", sink).unwrap();
    let client = client_env_with("try-send-client", conf_with(&SMALL_BOUNDS));
    let held = client
        .setup_endpoint_ref::<Chunk>(address_of(&server), "held")
        .unwrap();

    let mut accepted = 0;
    let err = loop {
        assert!(accepted < 1000, "1000 try_sends to a held endpoint went");
        match promptly("try_send", || held.try_send(Chunk::new(accepted, SIZE))) {
            Ok(()) => accepted += 1,
            Err(err) => break err,
        }
    };
    assert!(accepted > 0, "the first try_send found no room");
    assert!(
        matches!(
            err,
            RpcError::QueueFull {
                waited: false,
                key: "rpc.io.maxQueuedBytes",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("{HOST}:{port}")), "{err}");
    gate.release();
    wait_for("the accepted messages to be handled", 10, || {
        lock(&seen).len() as u64 >= accepted
    });
    held.try_send(Chunk::new(accepted, SIZE)).unwrap();
    wait_for("the last message to be handled", 10, || {
        lock(&seen).len() as u64 > accepted
    });
    assert_in_order(&seen, accepted + 1);

    // A local endpoint: its inbox holds 64k from this env's threads.
    let local_seen = Seen::default();
    let (local_sink, local_gate) = Sink::new(&local_seen).gated();
    let local = server.setup_endpoint("local-held", local_sink).unwrap();
    let mut local_accepted = 0;
    let err = loop {
        assert!(
            local_accepted < 100_000,
            "100000 try_sends to a held endpoint went"
        );
        match local.try_send(Chunk::new(local_accepted, 0)) {
            Ok(()) => local_accepted += 1,
            Err(err) => break err,
        }
    };
    assert!(
        matches!(
            err,
            RpcError::QueueFull {
                waited: false,
                key: "rpc.dispatcher.inboxCapacity",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("local-held"), "{err}");
    local_gate.release();
    wait_for("the local messages to be handled", 10, || {
        lock(&local_seen).len() as u64 >= local_accepted
    });
    assert_in_order(&local_seen, local_accepted);
    client.shutdown();
    server.shutdown();
}

/// `send_with_receipt` to a remote endpoint resolves `Ok` once the message is written
/// (`wait`, `is_done`, `try_wait` agree); to a local endpoint it is `Ok` at once, even
/// while the endpoint is busy (the message is in its inbox); to a stopped local endpoint
/// the send fails.
#[test]
fn send_with_receipt_resolves_ok_once_written_remote_and_local() {
    let server = server_env("receipt-server");
    let seen = Seen::default();
    server.setup_endpoint("sink", Sink::new(&seen)).unwrap();
    let client = client_env("receipt-client");
    let remote = client
        .setup_endpoint_ref::<Chunk>(address_of(&server), "sink")
        .unwrap();
    for seq in 0..5 {
        let receipt = remote.send_with_receipt(Chunk::new(seq, 1000)).unwrap();
        let outcome = receipt
            .wait_timeout(PROMPTLY)
            .expect("the receipt of a message to a live endpoint resolves");
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(receipt.is_done());
        assert!(matches!(receipt.try_wait(), Some(Ok(()))));
        promptly("Receipt::wait once resolved", || receipt.wait()).unwrap();
    }
    wait_for("the remote messages to be handled", 10, || {
        lock(&seen).len() == 5
    });

    let local_seen = Seen::default();
    let (local_sink, gate) = Sink::new(&local_seen).gated();
    let local = server.setup_endpoint("local", local_sink).unwrap();
    for seq in 0..3 {
        let receipt = local.send_with_receipt(Chunk::new(seq, 10)).unwrap();
        assert!(
            matches!(receipt.try_wait(), Some(Ok(()))),
            "the receipt of a message in a local inbox: {receipt:?}"
        );
    }
    gate.release();
    wait_for("the local messages to be handled", 10, || {
        lock(&local_seen).len() == 3
    });
    assert_in_order(&local_seen, 3);
    server.stop(&local).unwrap();
    let err = local.send_with_receipt(Chunk::new(3, 10)).unwrap_err();
    assert!(matches!(err, RpcError::EndpointStopped { .. }), "{err:?}");
    client.shutdown();
    server.shutdown();
}

/// Local senders to an endpoint whose inbox is full (`rpc.dispatcher.inboxCapacity=64k`,
/// the handler held) wait for room up to `rpc.io.sendTimeout` (300 ms here) and then fail
/// with `QueueFull` naming the endpoint, the bytes queued and the key; with a longer
/// timeout, a waiting sender gets in as soon as the endpoint takes messages again.
#[test]
fn local_sender_to_a_full_inbox_waits_for_room_then_fails_with_queue_full_naming_the_inbox() {
    let env = client_env_with(
        "full-inbox",
        conf_with(&[
            ("rpc.dispatcher.inboxCapacity", "64k"),
            ("rpc.io.sendTimeout", "300ms"),
        ]),
    );
    let seen = Seen::default();
    let (sink, gate) = Sink::new(&seen).gated();
    let held = env.setup_endpoint("gate", sink).unwrap();
    let mut accepted = 0;
    let (err, waited) = loop {
        assert!(accepted < 100_000, "100000 sends to a held endpoint went");
        let started = Instant::now();
        match held.send(Chunk::new(accepted, 0)) {
            Ok(()) => accepted += 1,
            Err(err) => break (err, started.elapsed()),
        }
    };
    let RpcError::QueueFull {
        queued,
        limit,
        key,
        waited: true,
        ..
    } = &err
    else {
        panic!("expected QueueFull after waiting, got {err:?}");
    };
    assert_eq!((*limit, *key), (65536, "rpc.dispatcher.inboxCapacity"));
    assert!(
        waited >= Duration::from_millis(300),
        "gave up after {waited:?}"
    );
    assert!(waited < PROMPTLY, "waited {waited:?}");
    let text = err.to_string();
    for needle in [
        "inbox of endpoint gate".to_owned(),
        format!("{queued} bytes queued"),
        "65536".to_owned(),
        "rpc.dispatcher.inboxCapacity".to_owned(),
        "rpc.io.sendTimeout".to_owned(),
    ] {
        assert!(text.contains(&needle), "{text:?} should contain {needle:?}");
    }
    gate.release();
    wait_for("the accepted messages to be handled", 10, || {
        lock(&seen).len() as u64 >= accepted
    });
    assert_in_order(&seen, accepted);
    env.shutdown();

    // A longer rpc.io.sendTimeout: the sender waits and gets in once there is room.
    let env = client_env_with(
        "full-inbox-waits",
        conf_with(&[
            ("rpc.dispatcher.inboxCapacity", "64k"),
            ("rpc.io.sendTimeout", "30s"),
        ]),
    );
    let seen = Seen::default();
    let (sink, gate) = Sink::new(&seen).gated();
    let held = env.setup_endpoint("gate", sink).unwrap();
    held.send(Chunk::new(0, 0)).unwrap();
    gate.wait_holding();
    let mut accepted = 1;
    while held.try_send(Chunk::new(accepted, 0)).is_ok() {
        accepted += 1;
        assert!(
            accepted < 100_000,
            "100000 try_sends to a held endpoint went"
        );
    }
    let (sent_tx, sent) = mpsc::channel();
    let waiting = {
        let held = held.clone();
        spawn("test-waiting-sender", move || {
            let _ = sent_tx.send(held.send(Chunk::new(accepted, 0)));
        })
    };
    if let Ok(outcome) = sent.recv_timeout(Duration::from_millis(300)) {
        panic!("a send to a full inbox returned without waiting: {outcome:?}");
    }
    gate.release();
    recv_within(&sent, 10).expect("the waiting send gets in once there is room");
    join(waiting);
    wait_for("every message to be handled", 10, || {
        lock(&seen).len() as u64 > accepted
    });
    assert_in_order(&seen, accepted + 1);
    env.shutdown();
}
