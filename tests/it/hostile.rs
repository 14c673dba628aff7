//! Hostile peers and awkward users against the connection layer: hand-made control
//! messages, peers that overrun windows, do not read, trickle frames or storm the
//! listener, senders caught by a shutdown, messages larger than every bound.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rpcenv::{EndpointContext, RpcCallContext, RpcConf, RpcEndpoint, RpcError, Threading};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::support::{
    HOST, address_of, client_env_with, join, rpc_conf, server_env_with, spawn, wait_for,
};

fn conf_with(overrides: &[(&str, &str)]) -> RpcConf {
    let mut conf = rpc_conf();
    for (key, value) in overrides {
        conf.insert(*key, *value);
    }
    conf
}

/// Bytes that serialize as one byte string.
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

/// Counts what it gets; answers an ask with the count so far.
#[derive(Clone, Default)]
struct Count(Arc<AtomicUsize>);

impl RpcEndpoint for Count {
    type Message = Blob;
    fn receive(&mut self, _msg: Blob, _ctx: &EndpointContext<Blob>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn receive_and_reply(
        &mut self,
        _msg: Blob,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        reply.reply(n as u64);
    }
}

/// The resident set size of this process, in bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

// ---------------------------------------------------------------------------------------
// Raw frames

fn rpc_request(id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(21 + body.len());
    frame.extend_from_slice(&((21 + body.len()) as i64).to_be_bytes());
    frame.push(3);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

fn one_way(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(13 + body.len());
    frame.extend_from_slice(&((13 + body.len()) as i64).to_be_bytes());
    frame.push(9);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A request envelope without sender for `endpoint`, then `content`.
fn envelope(endpoint: &str, content: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 0];
    body.extend_from_slice(&(endpoint.len() as u16).to_be_bytes());
    body.extend_from_slice(endpoint.as_bytes());
    // No claim about the message's type or the reply's (fingerprints 0).
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(content);
    body
}

fn hello(window: u32) -> Vec<u8> {
    let mut body = vec![2, 1, 1];
    body.extend_from_slice(&window.to_be_bytes());
    body
}

fn grant(endpoint: &str, bytes: u32) -> Vec<u8> {
    let mut body = vec![2, 2];
    body.extend_from_slice(&(endpoint.len() as u16).to_be_bytes());
    body.extend_from_slice(endpoint.as_bytes());
    body.extend_from_slice(&bytes.to_be_bytes());
    body
}

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

/// A raw connection with small socket buffers, never read, whose writes time out quickly:
/// how much it can write shows whether the server still reads it.
fn raw_connect_small(port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    let addr: std::net::SocketAddr = (std::net::Ipv4Addr::LOCALHOST, port).into();
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("a write timeout");
    stream
}

/// Writes `frame` over and over until a write is stuck for `stuck_after` or `max` bytes
/// went; returns the bytes written.
fn write_until_stuck(
    stream: &mut TcpStream,
    mut next: impl FnMut(u64) -> Vec<u8>,
    max: usize,
    stuck_after: Duration,
) -> usize {
    stream
        .set_write_timeout(Some(stuck_after))
        .expect("timeout");
    let mut written = 0;
    let mut i = 0;
    while written < max {
        let frame = next(i);
        i += 1;
        let mut at = 0;
        while at < frame.len() {
            match stream.write(&frame[at..]) {
                Ok(0) => return written,
                Ok(n) => {
                    at += n;
                    written += n;
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return written;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return written,
            }
        }
    }
    written
}

fn read_some(stream: &mut TcpStream, secs: u64) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(secs)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

// =======================================================================================
// R1. Messages to an endpoint the peer does not have (yet, or any more) give their
// window back at once.

/// Env B had an endpoint "late"; it was stopped. Env A asks it 20 times with 4 KiB, more
/// than B's 64 KiB window: each ask fails at once with EndpointStopped or
/// EndpointNotFound (B grants back the window of a message it refuses before an inbox),
/// and once B registers "late" again, asks to it are answered.
#[test]
fn asks_to_a_stopped_endpoint_fail_at_once_and_it_is_reached_once_registered_again() {
    let b = server_env_with(
        "rt-b",
        conf_with(&[
            ("rpc.dispatcher.inboxCapacity", "64k"),
            ("rpc.io.sendTimeout", "2s"),
        ]),
    );
    let a = client_env_with("rt-a", conf_with(&[("rpc.io.sendTimeout", "2s")]));
    let late_b = b.setup_endpoint("late", Count::default()).unwrap();
    let late = a
        .setup_endpoint_ref::<Blob>(&address_of(&b), "late")
        .expect("a ref to late");
    b.stop(&late_b).unwrap();
    wait_for("late to stop", 5, || {
        matches!(
            late.ask_sync_timeout::<u64>(Blob(vec![]), Duration::from_secs(1)),
            Err(RpcError::EndpointStopped { .. } | RpcError::EndpointNotFound { .. })
        )
    });

    // 20 asks of 4 KiB to the stopped endpoint: 80 KiB, more than B's 64 KiB window.
    let mut slow = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let result = late.ask_sync_timeout::<u64>(Blob(vec![7; 4096]), Duration::from_secs(1));
        if !matches!(
            result,
            Err(RpcError::EndpointStopped { .. } | RpcError::EndpointNotFound { .. })
        ) {
            slow.push((i, result, started.elapsed()));
        }
    }
    eprintln!(
        "asks to the stopped endpoint that did not fail at once: {}",
        slow.len()
    );
    if let Some(first) = slow.first() {
        eprintln!("first: {first:?}");
    }

    // Register it again under the same name: asks must work now.
    b.setup_endpoint("late", Count::default()).unwrap();
    let started = Instant::now();
    let answer = late.ask_sync_timeout::<u64>(Blob(vec![1; 16]), Duration::from_secs(5));
    eprintln!(
        "ask after registering it again: {answer:?} in {:?}",
        started.elapsed()
    );
    a.shutdown();
    b.shutdown();
    assert!(
        slow.is_empty(),
        "asks to a stopped endpoint did not fail at once: {slow:?}"
    );
    assert_eq!(answer.expect("the endpoint registered again answers"), 1);
}

/// A connection remembers the endpoint its last message went to; once that endpoint is
/// stopped and another is registered under its name, the next message on the same
/// connection reaches the new one.
#[test]
fn a_message_after_its_endpoint_is_registered_again_reaches_the_new_one() {
    let b = server_env_with("again-b", conf_with(&[]));
    let a = client_env_with("again-a", conf_with(&[]));
    let first = Count::default();
    let first_ref = b.setup_endpoint("again", first.clone()).unwrap();
    let to_b = a
        .setup_endpoint_ref::<Blob>(&address_of(&b), "again")
        .expect("a ref to again");
    for n in 1..=3u64 {
        let answer = to_b.ask_sync_timeout::<u64>(Blob(vec![1]), Duration::from_secs(5));
        assert_eq!(answer.expect("the first endpoint answers"), n);
    }
    b.stop(&first_ref).unwrap();
    let second = Count::default();
    b.setup_endpoint("again", second.clone()).unwrap();
    to_b.send(Blob(vec![2])).expect("sent");
    let answer = to_b.ask_sync_timeout::<u64>(Blob(vec![3]), Duration::from_secs(5));
    a.shutdown();
    b.shutdown();
    assert_eq!(answer.expect("the endpoint registered again answers"), 2);
    assert_eq!(first.0.load(Ordering::SeqCst), 3);
}

// =======================================================================================
// R2. A raw peer that says hello (claims flow control) and then never reads its answers
// is soon no longer read.

/// Floods asks to an endpoint that does not exist (each answered with an error frame) from
/// a raw peer that never reads, with and without a hello first. Without a hello the
/// server stops reading once the answers owed reach `rpc.io.maxQueuedBytes`; with a hello
/// (a peer that claims to read what it is sent) it stops once the unread answers have
/// filled the queue with the socket taking nothing for 250 ms: what the peer gets in is
/// bounded by what it sends in that time, not by how long it keeps sending (before, it
/// was read until `rpc.io.connectionTimeout`: 64 MiB and +130 MiB of RSS here).
#[test]
fn raw_peer_that_says_hello_and_never_reads_its_answers_is_soon_no_longer_read() {
    let b = server_env_with(
        "rt-answers",
        conf_with(&[
            ("rpc.io.maxQueuedBytes", "64k"),
            ("rpc.io.connectionTimeout", "60s"),
        ]),
    );
    let port = address_of(&b).port();
    let body = envelope("nope-this-endpoint-does-not-exist", &[0]);
    let measure = |say_hello: bool| {
        let mut raw = raw_connect_small(port);
        if say_hello {
            raw.write_all(&one_way(&hello(64 * 1024))).unwrap();
        }
        let before = rss();
        let started = Instant::now();
        let written = write_until_stuck(
            &mut raw,
            |i| rpc_request(i, &body),
            64 << 20,
            Duration::from_millis(1000),
        );
        let grew = rss().saturating_sub(before);
        eprintln!(
            "hello={say_hello}: the peer wrote {} KiB of asks without reading in {:?}; RSS +{} MiB",
            written >> 10,
            started.elapsed(),
            grew >> 20
        );
        drop(raw);
        (written, grew)
    };
    let (without, _) = measure(false);
    let (with, grew) = measure(true);
    b.shutdown();
    // The socket buffers on both sides hold a few MiB whatever the server does; 8 MiB
    // leaves room for them on a loaded machine and is far below the 64 MiB of a server
    // that keeps reading.
    assert!(
        without < 8 << 20,
        "without hello the server stops reading: {without}"
    );
    assert!(
        with < 32 << 20,
        "with a hello the server read {} MiB of asks whose answers nobody reads (RSS +{} MiB)",
        with >> 20,
        grew >> 20
    );
}

// =======================================================================================
// R3. Window grants for endpoint names that were never used are not kept.

/// A raw peer sends 1,500 grants, each for a different 60 KB endpoint name (90 MB in
/// all): the server keeps none of them (a grant for a label it never used is ignored), so
/// its memory does not grow with what the peer sends.
#[test]
fn grants_for_thousands_of_distinct_names_do_not_grow_memory() {
    let b = server_env_with("rt-grants", rpc_conf());
    b.setup_endpoint("count", Count::default()).unwrap();
    let port = address_of(&b).port();
    let mut raw = raw_connect(port);
    raw.write_all(&one_way(&hello(64 * 1024))).unwrap();
    let before = rss();
    let mut sent = 0usize;
    for i in 0..1500u32 {
        let mut name = format!("{i:08}");
        name.push_str(&"g".repeat(60_000));
        let frame = one_way(&grant(&name, u32::MAX));
        raw.write_all(&frame).unwrap();
        sent += frame.len();
    }
    // A request to see that everything before it was read.
    raw.write_all(&rpc_request(1, &envelope("count", &[0])))
        .unwrap();
    // The server's hello (20 bytes), then the answer: once it is here, all was read.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && seen.len() < 41 {
        match read_some(&mut raw, 1) {
            Ok(bytes) if bytes.is_empty() => break,
            Ok(bytes) => seen.extend_from_slice(&bytes),
            Err(_) => {}
        }
    }
    assert!(seen.len() >= 41, "the ask after the grants is answered");
    thread::sleep(Duration::from_millis(500));
    let grew = rss().saturating_sub(before);
    eprintln!("sent {} MiB of grants; RSS +{} MiB", sent >> 20, grew >> 20);
    drop(raw);
    b.shutdown();
    assert!(grew < 32 << 20, "RSS grew by {} MiB", grew >> 20);
}

// =======================================================================================
// R4. Shutdown while senders wait for room.

/// Holds its first message until `release` is dropped or sent to.
struct Gated {
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl RpcEndpoint for Gated {
    type Message = Blob;
    fn receive(&mut self, _msg: Blob, _ctx: &EndpointContext<Blob>) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv_timeout(Duration::from_secs(30));
        }
    }
    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
}

/// Env A's threads send to a remote endpoint that takes nothing until their sends wait
/// for room (window used up, `rpc.io.maxQueuedBytes` held). Then A shuts down: the
/// waiting sends must fail at once, with `EnvStopped` (the docs: "EnvStopped at once
/// on shutdown"; senders "must fail promptly with EnvStopped").
#[test]
fn senders_waiting_for_a_window_fail_promptly_with_env_stopped_when_their_env_shuts_down() {
    waiting_senders_at_shutdown(false);
}

/// The same while an endpoint of A is busy (its handler runs for 4 s when the shutdown
/// starts): the shutdown waits for it (up to 5 s, documented), and the waiting senders
/// wait with it, although their failure is known at once.
#[test]
fn senders_waiting_for_room_are_not_held_up_by_a_busy_endpoint_at_shutdown() {
    waiting_senders_at_shutdown(true);
}

/// Sleeps 4 s on its first message.
struct Busy(Option<std::sync::mpsc::Sender<()>>);

impl RpcEndpoint for Busy {
    type Message = u8;
    fn receive(&mut self, _msg: u8, _ctx: &EndpointContext<u8>) {
        if let Some(started) = self.0.take() {
            let _ = started.send(());
        }
        thread::sleep(Duration::from_secs(4));
    }
    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
}

fn waiting_senders_at_shutdown(busy: bool) {
    let small = [
        ("rpc.dispatcher.inboxCapacity", "64k"),
        ("rpc.io.maxQueuedBytes", "64k"),
        ("rpc.io.sendTimeout", "20s"),
    ];
    let b = server_env_with("rt-gated", conf_with(&small));
    let (release, gate) = std::sync::mpsc::channel();
    b.setup_endpoint("gated", Gated { gate: Some(gate) })
        .unwrap();
    let a = client_env_with("rt-senders", conf_with(&small));
    let gated = a
        .setup_endpoint_ref::<Blob>(&address_of(&b), "gated")
        .unwrap();
    // Fill window and held queue.
    let mut sent = 0;
    while gated.try_send(Blob(vec![1; 8000])).is_ok() {
        sent += 1;
        assert!(sent < 1000);
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..3 {
        let gated = gated.clone();
        let results = Arc::clone(&results);
        threads.push(spawn("rt-waiting-sender", move || {
            let started = Instant::now();
            let result = if t == 2 {
                gated.ask::<u64>(Blob(vec![2; 8000])).wait().map(|_| ())
            } else {
                gated.send(Blob(vec![2; 8000]))
            };
            results.lock().unwrap().push((t, result, started.elapsed()));
        }));
    }
    thread::sleep(Duration::from_millis(500));
    assert!(
        results.lock().unwrap().is_empty(),
        "the senders wait for room"
    );
    if busy {
        let (tx, rx) = std::sync::mpsc::channel();
        let busy = a.setup_endpoint("busy", Busy(Some(tx))).unwrap();
        busy.send(1).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    let started = Instant::now();
    a.shutdown();
    let shutdown_took = started.elapsed();
    for thread in threads {
        join(thread);
    }
    drop(release);
    b.shutdown();
    let results = results.lock().unwrap().clone();
    eprintln!("shutdown took {shutdown_took:?}; waiting senders: {results:#?}");
    for (t, result, took) in &results {
        assert!(
            *took < Duration::from_secs(2),
            "sender {t} took {took:?}: {result:?}"
        );
        assert!(
            matches!(result, Err(RpcError::EnvStopped)),
            "sender {t}: expected EnvStopped, got {result:?}"
        );
    }
}

// =======================================================================================
// R6. Messages larger than every bound still flow.

/// Records the sizes it gets; answers an ask with a reply as large as the message.
#[derive(Clone, Default)]
struct Sizes(Arc<Mutex<Vec<usize>>>);

impl RpcEndpoint for Sizes {
    type Message = Blob;
    fn receive(&mut self, msg: Blob, _ctx: &EndpointContext<Blob>) {
        self.0.lock().unwrap().push(msg.0.len());
    }
    fn receive_and_reply(
        &mut self,
        msg: Blob,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        self.0.lock().unwrap().push(msg.0.len());
        reply.reply(msg);
    }
}

/// 3 MiB messages, one-way and asked, with `rpc.io.maxQueuedBytes=64k` and
/// `rpc.dispatcher.inboxCapacity=64k` on both sides, from 3 threads at once, both ways.
#[test]
fn messages_much_larger_than_every_queue_bound_flow_both_ways() {
    let small = [
        ("rpc.dispatcher.inboxCapacity", "64k"),
        ("rpc.io.maxQueuedBytes", "64k"),
        ("rpc.io.sendTimeout", "20s"),
    ];
    let a = server_env_with("rt-big-a", conf_with(&small));
    let b = server_env_with("rt-big-b", conf_with(&small));
    let sa = Sizes::default();
    let sb = Sizes::default();
    a.setup_endpoint("sizes", sa.clone()).unwrap();
    b.setup_endpoint("sizes", sb.clone()).unwrap();
    let to_b = a
        .setup_endpoint_ref::<Blob>(&address_of(&b), "sizes")
        .unwrap();
    let to_a = b
        .setup_endpoint_ref::<Blob>(&address_of(&a), "sizes")
        .unwrap();
    let started = Instant::now();
    let mut threads = Vec::new();
    for (i, target) in [to_b.clone(), to_a.clone(), to_b].into_iter().enumerate() {
        threads.push(spawn("rt-big", move || {
            for n in 0..4 {
                let blob = Blob(vec![n as u8; 3 << 20]);
                if (i + n) % 2 == 0 {
                    target.send(blob).expect("a big one-way message");
                } else {
                    let back: Blob = target
                        .ask_sync_timeout(blob.clone(), Duration::from_secs(20))
                        .expect("a big ask");
                    assert_eq!(back, blob);
                }
            }
        }));
    }
    for thread in threads {
        join(thread);
    }
    wait_for("all big messages", 20, || {
        sa.0.lock().unwrap().len() == 4 && sb.0.lock().unwrap().len() == 8
    });
    eprintln!("12 messages of 3 MiB in {:?}", started.elapsed());
    a.shutdown();
    b.shutdown();
}

// =======================================================================================
// R8. Slowloris: a peer that trickles a frame one byte at a time.

/// With `rpc.io.frameTimeout=1s`, a raw peer connects, sends one whole small frame, then
/// sends the header of a 1 MB frame one byte every 600 ms, never finishing it. It is never
/// silent for 1 s, but a frame must come at 64 KiB/s once it has taken longer than the
/// frame timeout: it is closed within a few seconds.
#[test]
fn a_peer_trickling_one_byte_per_600ms_is_closed_by_the_frame_timeout() {
    let b = server_env_with("rt-slowloris", conf_with(&[("rpc.io.frameTimeout", "1s")]));
    let port = address_of(&b).port();
    let mut raw = raw_connect(port);
    // One whole frame first (the "sent nothing since it connected" rule is then passed).
    raw.write_all(&one_way(&hello(64 * 1024))).unwrap();
    let frame = rpc_request(1, &vec![0u8; 1 << 20]);
    let started = Instant::now();
    let mut closed_after = None;
    for byte in frame.iter().take(40) {
        if raw.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(600));
        // The server closing shows as end of stream (after its hello).
        raw.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let ended = loop {
            match raw.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => {} // the server's hello
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        raw.set_nonblocking(false).unwrap();
        if ended {
            closed_after = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    eprintln!(
        "trickling peer closed after {closed_after:?} (open for {:?})",
        started.elapsed()
    );
    b.shutdown();
    assert!(closed_after.is_some_and(|t| t < Duration::from_secs(10)));
}

// =======================================================================================
// R9. A connection storm at rpc.io.maxConnections does not leak slots.

#[test]
fn a_storm_of_connections_at_max_connections_leaves_every_slot_usable_after() {
    let b = server_env_with(
        "rt-storm",
        conf_with(&[
            ("rpc.io.maxConnections", "8"),
            ("rpc.io.frameTimeout", "2s"),
        ]),
    );
    b.setup_endpoint("count", Count::default()).unwrap();
    let port = address_of(&b).port();
    // 4 threads each open and drop 100 connections as fast as they can, some sending
    // half a frame, some a whole one, some nothing.
    let mut threads = Vec::new();
    for t in 0..4u64 {
        threads.push(spawn("rt-storm", move || {
            for i in 0..100u64 {
                if let Ok(mut raw) = TcpStream::connect((HOST, port)) {
                    let _ = raw.set_write_timeout(Some(Duration::from_millis(200)));
                    let frame = rpc_request(i, &envelope("count", &[0]));
                    match (t + i) % 3 {
                        0 => {}
                        1 => {
                            let _ = raw.write_all(&frame[..10]);
                        }
                        _ => {
                            let _ = raw.write_all(&frame);
                        }
                    }
                }
            }
        }));
    }
    for thread in threads {
        join(thread);
    }
    // Every slot must be free again: 8 raw connections are each answered.
    thread::sleep(Duration::from_millis(500));
    let mut held = Vec::new();
    for i in 0..8u64 {
        let mut raw = raw_connect(port);
        raw.write_all(&rpc_request(i, &envelope("count", &[0])))
            .unwrap();
        held.push(raw);
    }
    for (i, raw) in held.iter_mut().enumerate() {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        // The server's hello (20 bytes) then the answer (at least 21 bytes).
        while got.len() < 41 && Instant::now() < deadline {
            match read_some(raw, 1) {
                Ok(bytes) if bytes.is_empty() => panic!("slot {i}: closed by the server"),
                Ok(bytes) => got.extend_from_slice(&bytes),
                Err(_) => {}
            }
        }
        assert!(got.len() >= 41, "slot {i}: no answer ({} bytes)", got.len());
    }
    b.shutdown();
}

// =======================================================================================
// R10. Answers owed to a peer without flow control: the estimate of their size can be
// trained down, the cap of 64 requests read ahead cannot.

/// Answers every ask with 16 KiB; busy for 2 s on the first one (a moment of load).
struct Amplifier(bool);

impl RpcEndpoint for Amplifier {
    type Message = Blob;
    fn receive_and_reply(
        &mut self,
        _msg: Blob,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        if !self.0 {
            self.0 = true;
            thread::sleep(Duration::from_secs(2));
        }
        reply.reply(Blob(vec![9; 16 * 1024]));
    }
}

/// A raw peer (no hello) first asks an unknown endpoint 3,000 times and reads the small
/// error answers (the moving average of its answer size, `Conn::answer_estimate`, drops
/// from 64 KiB to ~100 bytes), then stops reading and sends tiny asks to an endpoint that
/// answers each with 16 KiB. The estimate alone would let the server read ~40,000 asks
/// ahead (4 MiB / ~100 B), all answered into the write queue (~600 MiB); a peer without
/// flow control is read at most 64 requests ahead of its answers, so it gets at most
/// `rpc.io.maxQueuedBytes` plus 64 answers queued.
#[test]
fn raw_peer_that_trains_the_answer_estimate_down_is_still_read_only_64_asks_ahead() {
    let b = server_env_with("rt-amplify", rpc_conf());
    b.setup_endpoint("big", Amplifier(false)).unwrap();
    let port = address_of(&b).port();
    let mut raw = raw_connect(port);
    // Prime: asks to an unknown endpoint, answers read.
    let nope = envelope("nope", &[0]);
    let mut batch = Vec::new();
    let primes = if std::env::var_os("RT_NO_PRIME").is_some() {
        0
    } else {
        3000u64
    };
    for i in 0..primes {
        batch.extend_from_slice(&rpc_request(i, &nope));
    }
    raw.write_all(&batch).unwrap();
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each failure answer is well over 60 bytes; 3000 of them and the hello.
    while got < primes as usize * 60 && Instant::now() < deadline {
        if let Ok(bytes) = read_some(&mut raw, 1) {
            if bytes.is_empty() {
                break;
            }
            got += bytes.len();
        }
    }
    // Drain the rest without blocking long.
    raw.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = raw.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    let before = rss();
    let big = envelope("big", &[0]);
    let written = write_until_stuck(
        &mut raw,
        |i| rpc_request(10_000 + i, &big),
        16 << 20,
        Duration::from_millis(1500),
    );
    thread::sleep(Duration::from_secs(3));
    let grew = rss().saturating_sub(before);
    let asks = written / (21 + big.len());
    eprintln!(
        "the peer got {asks} asks for 16 KiB answers read without reading any; RSS +{} MiB",
        grew >> 20
    );
    drop(raw);
    b.shutdown();
    assert!(grew < 64 << 20, "RSS grew by {} MiB", grew >> 20);
}

// =======================================================================================
// R11. Many threads send, ask, try_send and send_with_receipt while the peer env shuts
// down and comes back on the same port, twice: everything resolves, promptly.

#[test]
fn mixed_calls_from_many_threads_while_the_peer_restarts_all_resolve_promptly() {
    let conf = || {
        conf_with(&[
            ("rpc.askTimeout", "8s"),
            ("rpc.io.sendTimeout", "3s"),
            ("rpc.dispatcher.inboxCapacity", "64k"),
            ("rpc.io.maxQueuedBytes", "64k"),
        ])
    };
    let b = server_env_with("rt-chaos-b", conf());
    b.setup_endpoint("count", Count::default()).unwrap();
    let addr = address_of(&b);
    let port = addr.port();
    let a = client_env_with("rt-chaos-a", conf());
    let count = a.setup_endpoint_ref::<Blob>(&addr, "count").unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    #[derive(Debug, Default, Clone)]
    struct Tally {
        ok: usize,
        errors: std::collections::BTreeMap<String, usize>,
        slow: Vec<(String, Duration)>,
        unresolved_receipts: usize,
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let record =
        |tally: &Mutex<Tally>, what: &str, result: Result<(), RpcError>, took: Duration| {
            let mut t = tally.lock().unwrap();
            match result {
                Ok(()) => t.ok += 1,
                Err(err) => {
                    let kind = format!(
                        "{what}:{}",
                        format!("{err:?}").split([' ', '(', '{']).next().unwrap()
                    );
                    *t.errors.entry(kind.clone()).or_default() += 1;
                    // A failure that is known should not take long; QueueFull and Timeout are
                    // allowed their time.
                    if took > Duration::from_secs(2)
                        && !matches!(err, RpcError::QueueFull { .. } | RpcError::Timeout { .. })
                    {
                        t.slow.push((format!("{what}: {err}"), took));
                    }
                }
            }
        };
    let mut threads = Vec::new();
    for t in 0..4usize {
        let count = count.clone();
        let stop = Arc::clone(&stop);
        let tally = Arc::clone(&tally);
        threads.push(spawn("rt-chaos", move || {
            let mut receipts = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let blob = Blob(vec![t as u8; 100 + (i * 997) % 6000]);
                let started = Instant::now();
                match (t + i) % 4 {
                    0 => {
                        let r = count.send(blob);
                        record(&tally, "send", r, started.elapsed());
                    }
                    1 => {
                        let r = count.try_send(blob);
                        record(&tally, "try_send", r, started.elapsed());
                    }
                    2 => match count.send_with_receipt(blob) {
                        Ok(receipt) => receipts.push((receipt, started)),
                        Err(err) => record(&tally, "receipt-send", Err(err), started.elapsed()),
                    },
                    _ => {
                        let r = count.ask::<u64>(blob).wait().map(|_| ());
                        record(&tally, "ask", r, started.elapsed());
                    }
                }
                if i % 50 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            for (receipt, _started) in receipts {
                match receipt.wait_timeout(Duration::from_secs(15)) {
                    Some(r) => record(&tally, "receipt", r, Duration::ZERO),
                    None => tally.lock().unwrap().unresolved_receipts += 1,
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(700));
    b.shutdown();
    thread::sleep(Duration::from_millis(700));
    let b2 = RpcEnvBuilderHelper::on_port("rt-chaos-b2", port, conf());
    b2.setup_endpoint("count", Count::default()).unwrap();
    thread::sleep(Duration::from_millis(1500));
    b2.shutdown();
    thread::sleep(Duration::from_millis(300));
    let b3 = RpcEnvBuilderHelper::on_port("rt-chaos-b3", port, conf());
    b3.setup_endpoint("count", Count::default()).unwrap();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let started = Instant::now();
    for thread in threads {
        join(thread);
    }
    let joined = started.elapsed();
    let tally = tally.lock().unwrap().clone();
    eprintln!("threads stopped in {joined:?}; {tally:#?}");
    a.shutdown();
    b3.shutdown();
    assert_eq!(tally.unresolved_receipts, 0);
    assert!(
        tally.slow.is_empty(),
        "known failures that took long: {:?}",
        tally.slow
    );
}

struct RpcEnvBuilderHelper;

impl RpcEnvBuilderHelper {
    fn on_port(name: &str, port: u16, conf: RpcConf) -> rpcenv::RpcEnv {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match rpcenv::RpcEnv::builder(name)
                .bind_address(HOST)
                .port(port)
                .conf(conf.clone().set("rpc.port.maxRetries", "0"))
                .build()
            {
                Ok(env) => return env,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("rebind {port}: {err}");
                    thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!("cannot bind {port} again: {err}"),
            }
        }
    }
}

// =======================================================================================
// R13. Local senders waiting for room in an inbox when the endpoint stops or the env
// shuts down.

#[test]
fn local_senders_waiting_for_room_fail_promptly_when_the_endpoint_stops_or_the_env_shuts_down() {
    for shutdown in [false, true] {
        let env = server_env_with(
            "rt-local",
            conf_with(&[
                ("rpc.dispatcher.inboxCapacity", "64k"),
                ("rpc.io.sendTimeout", "20s"),
            ]),
        );
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gated = env
            .setup_endpoint("gated", Gated { gate: Some(gate) })
            .unwrap();
        gated.send(Blob(vec![])).unwrap();
        thread::sleep(Duration::from_millis(200)); // the handler holds it
        let mut n = 0;
        while gated.try_send(Blob(vec![])).is_ok() {
            n += 1;
            assert!(n < 100_000);
        }
        let mut threads = Vec::new();
        for t in 0..2 {
            let gated = gated.clone();
            threads.push(spawn("rt-local-sender", move || {
                let started = Instant::now();
                let r = if t == 0 {
                    gated.send(Blob(vec![]))
                } else {
                    gated.ask::<u64>(Blob(vec![])).wait().map(|_| ())
                };
                (r, started.elapsed())
            }));
        }
        thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        if shutdown {
            // The gated handler holds its thread; shutdown waits up to 5 s for it.
            let env2 = env.clone();
            let s = spawn("rt-shutdown", move || env2.shutdown());
            let results: Vec<_> = threads.into_iter().map(join).collect();
            eprintln!("shutdown: {results:?} ({:?})", started.elapsed());
            drop(release);
            join(s);
            for (r, took) in results {
                assert!(took < Duration::from_secs(2), "{r:?} after {took:?}");
                // Either is documented as acceptable; EndpointStopped for the send and
                // EnvStopped for the ask is what happens.
                assert!(
                    matches!(
                        r,
                        Err(RpcError::EnvStopped | RpcError::EndpointStopped { .. })
                    ),
                    "{r:?}"
                );
            }
        } else {
            env.stop(&gated).unwrap();
            let results: Vec<_> = threads.into_iter().map(join).collect();
            eprintln!("stop: {results:?} ({:?})", started.elapsed());
            drop(release);
            env.shutdown();
            for (r, took) in results {
                assert!(took < Duration::from_secs(2), "{r:?} after {took:?}");
                assert!(matches!(r, Err(RpcError::EndpointStopped { .. })), "{r:?}");
            }
        }
    }
}

// =======================================================================================
// R14. Half-close with many answers owed by a slow endpoint.

/// Answers after 20 ms with the number of asks so far.
struct Slow(u64);

impl RpcEndpoint for Slow {
    type Message = Blob;
    fn receive_and_reply(
        &mut self,
        _msg: Blob,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        thread::sleep(Duration::from_millis(20));
        self.0 += 1;
        reply.reply(self.0);
    }
}

#[test]
fn half_closed_raw_peer_gets_all_200_answers_of_a_slow_endpoint() {
    let b = server_env_with("rt-halfclose", rpc_conf());
    b.setup_endpoint("slow", Slow(0)).unwrap();
    let port = address_of(&b).port();
    let mut raw = raw_connect(port);
    let mut batch = Vec::new();
    for i in 0..200u64 {
        batch.extend_from_slice(&rpc_request(i, &envelope("slow", &[0])));
    }
    raw.write_all(&batch).unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match read_some(&mut raw, 1) {
            Ok(bytes) if bytes.is_empty() => break,
            Ok(bytes) => got.extend_from_slice(&bytes),
            Err(_) if Instant::now() < deadline => {}
            Err(err) => panic!("no end of stream within 20 s: {err}"),
        }
    }
    // Count response frames (type 4).
    let mut at = 0;
    let mut answers = 0;
    while at + 9 <= got.len() {
        let len = i64::from_be_bytes(got[at..at + 8].try_into().unwrap()) as usize;
        if got[at + 8] == 4 {
            answers += 1;
        }
        at += len;
    }
    b.shutdown();
    assert_eq!(answers, 200, "answers before the server closed");
}

// =======================================================================================
// R15. Hostile control messages: the server stays up and keeps answering.

#[test]
fn hostile_control_messages_neither_panic_nor_stop_the_connection() {
    let b = server_env_with("rt-controls", rpc_conf());
    b.setup_endpoint("count", Count::default()).unwrap();
    let port = address_of(&b).port();
    let mut raw = raw_connect(port);
    let mut batch = Vec::new();
    let controls: Vec<Vec<u8>> = vec![
        hello(0),
        hello(u32::MAX),
        hello(1),
        hello(64 * 1024),
        grant("count", u32::MAX),
        grant("count", u32::MAX),
        grant("count", 0),
        grant("does-not-exist", u32::MAX),
        grant("", 1),
        vec![2],
        vec![2, 1],
        vec![2, 1, 1],
        vec![2, 1, 1, 0, 0, 0, 0, 0],
        vec![2, 2, 0xff, 0xff],
        vec![2, 2, 0, 2, 0xc3, 0x28, 0, 0, 0, 1],
        vec![2, 7, 7, 7],
    ];
    for control in &controls {
        batch.extend_from_slice(&one_way(control));
        // The same body as a request: a failure answer, not a control message.
        batch.extend_from_slice(&rpc_request(77, control));
    }
    // A Spark frame of every other type with empty bodies, then an ask.
    raw.write_all(&batch).unwrap();
    raw.write_all(&rpc_request(1, &envelope("count", &[0])))
        .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        if let Ok(bytes) = read_some(&mut raw, 1) {
            assert!(!bytes.is_empty(), "the server closed the connection");
            got.extend_from_slice(&bytes);
            let mut at = 0;
            while at + 17 <= got.len() {
                let len = i64::from_be_bytes(got[at..at + 8].try_into().unwrap()) as usize;
                if at + len > got.len() {
                    break;
                }
                let id = u64::from_be_bytes(got[at + 9..at + 17].try_into().unwrap());
                if got[at + 8] == 4 && id == 1 {
                    answered = true;
                }
                at += len;
            }
        }
    }
    assert!(answered, "the ask after the hostile controls is answered");
    b.shutdown();
}

// =======================================================================================
// R16. Transport API: two peers that both send many large requests to each other over
// one connection.

/// Each side sends 10 requests of 16 MiB over the same connection at once and echoes the
/// other's. The transport's own back-pressure (a peer without flow control whose answers,
/// with those owed, reach `rpc.io.maxQueuedBytes` stops being read) would make each side
/// stop reading the other, which then cannot read its answers either, until
/// `rpc.io.connectionTimeout` (documented in `rpcenv::transport`); with a write queue that
/// holds the answers in flight both ways (here 512 MiB), they all arrive.
#[test]
fn transport_peers_exchanging_big_requests_both_ways_complete_when_the_queue_holds_them() {
    use crate::support::{ClientSide, Fixture};
    use std::sync::mpsc;
    let overrides = [
        ("rpc.io.connectionTimeout", "10s"),
        ("rpc.io.maxQueuedBytes", "512m"),
        ("rpc.message.maxSize", "32m"),
    ];
    let f = Fixture::new(&overrides);
    let side = ClientSide::new(&overrides);
    let client = side.connect(f.port());
    wait_for("the server to see the connection", 5, || {
        !f.handler.active().is_empty()
    });
    let back = f.handler.active()[0].clone();
    let body: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    for i in 0..10 {
        for (who, c) in [("client", &client), ("server", &back)] {
            let tx = tx.clone();
            c.send_rpc(body.clone(), move |answer| {
                let _ = tx.send((who, i, answer.map(|a| a.len())));
            });
        }
    }
    drop(tx);
    let mut ok = 0;
    let mut failed = Vec::new();
    while let Ok((who, i, answer)) = rx.recv_timeout(Duration::from_secs(30)) {
        match answer {
            Ok(_) => ok += 1,
            Err(err) => failed.push((who, i, err.to_string())),
        }
        if ok + failed.len() == 20 {
            break;
        }
    }
    let took = started.elapsed();
    eprintln!(
        "{ok} answers ok, {} failed, in {took:?}; first failure: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        ok,
        20,
        "answers ok ({took:?}); failures: {:?}",
        failed.first()
    );
    assert!(took < Duration::from_secs(9), "took {took:?}");
}

// =======================================================================================
// R17. TCP_USER_TIMEOUT also ends connections to live peers that stop reading.

/// The client pauses reading (`set_auto_read(false)`) for 3 s while the server sends it 16
/// MiB of one-way messages. On Linux the kernel applies `TCP_USER_TIMEOUT` to zero-window
/// probes too: with `rpc.io.tcpUserTimeout=1s` the server's connection is dropped (as
/// documented: a peer that reads nothing for the user timeout counts as gone) and the
/// handler hears of it (`exception_caught`); with the user timeout off (`0`) the live,
/// paused peer is kept and gets everything once it reads again.
#[test]
fn a_peer_that_reads_nothing_for_the_user_timeout_is_dropped_and_kept_with_it_off() {
    for (user_timeout, kept) in [("1s", false), ("0", true)] {
        let (alive, sent, got, exceptions) =
            pause_reading_for(Duration::from_secs(3), user_timeout);
        if kept {
            assert!(alive, "with the user timeout off, a paused peer is kept");
            assert_eq!(got, sent, "and gets everything once it reads");
        } else {
            assert!(
                !alive,
                "a peer that reads nothing for the user timeout is dropped"
            );
            assert_eq!(exceptions, 1, "the handler hears why");
        }
    }
}

/// Pauses a client's reading for `pause` while the server sends it up to 16 x 1 MiB;
/// returns whether the server's side was still open after the pause, what was sent and
/// what the client got, and how many failures the server's handler heard of.
fn pause_reading_for(pause: Duration, user_timeout: &str) -> (bool, usize, usize, usize) {
    use crate::support::{ClientSide, Fixture};
    let f = Fixture::new(&[("rpc.io.tcpUserTimeout", user_timeout)]);
    let side = ClientSide::new(&[]);
    let client = side.connect(f.port());
    wait_for("the server to see the connection", 5, || {
        !f.handler.active().is_empty()
    });
    let back = f.handler.active()[0].clone();
    client.set_auto_read(false);
    let started = Instant::now();
    let mut sent = 0;
    // As much as the write queue takes (`try_send`: the queue stays full while the peer
    // does not read).
    for _ in 0..16 {
        if back.try_send(vec![1u8; 1 << 20]).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent > 0);
    thread::sleep(pause.saturating_sub(started.elapsed()));
    let alive = back.is_active();
    client.set_auto_read(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive && side.handler.one_way() < sent && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    (
        alive,
        sent,
        side.handler.one_way(),
        f.handler.exceptions().len(),
    )
}

/// R1 with one-way messages: 20 messages of 4 KiB to a stopped endpoint (each written,
/// each dropped with a `warn` on B, its window given back), then the endpoint is
/// registered again: a message with a receipt to it is written and handled.
#[test]
fn one_way_messages_to_a_stopped_endpoint_do_not_use_up_its_window() {
    let b = server_env_with(
        "rt-b1",
        conf_with(&[("rpc.dispatcher.inboxCapacity", "64k")]),
    );
    let a = client_env_with("rt-a1", conf_with(&[("rpc.io.sendTimeout", "2s")]));
    let other = b.setup_endpoint("other", Count::default()).unwrap();
    let _ = other;
    let late_b = b.setup_endpoint("late", Count::default()).unwrap();
    let late = a
        .setup_endpoint_ref::<Blob>(&address_of(&b), "late")
        .unwrap();
    let other = a
        .setup_endpoint_ref::<Blob>(&address_of(&b), "other")
        .unwrap();
    b.stop(&late_b).unwrap();
    thread::sleep(Duration::from_millis(200));
    // Each is written (its receipt says so) before the endpoint comes back: a message
    // held for window goes out once the window the refused ones took is given back.
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let outcome = late
            .send_with_receipt(Blob(vec![7; 4096]))
            .and_then(|receipt| {
                receipt
                    .wait_timeout(Duration::from_secs(5))
                    .expect("written within 5 s")
            });
        outcomes.push(outcome.map_err(|e| e.to_string()));
    }
    eprintln!("sends to the stopped endpoint: {outcomes:?}");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    // An ask on the same connection: once it is answered, B has read (and dropped) the
    // messages written before it.
    other
        .ask_sync_timeout::<u64>(Blob(vec![]), Duration::from_secs(5))
        .unwrap();
    let counter = Count::default();
    b.setup_endpoint("late", counter.clone()).unwrap();
    let receipt = late.send_with_receipt(Blob(vec![1; 16])).unwrap();
    let outcome = receipt.wait_timeout(Duration::from_secs(5));
    // Written is not handled yet: give it the time to be handled.
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.0.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let handled = counter.0.load(Ordering::SeqCst);
    let other_answer = other.ask_sync_timeout::<u64>(Blob(vec![]), Duration::from_secs(5));
    eprintln!(
        "receipt after 5 s: {outcome:?}; handled: {handled}; other endpoint: {other_answer:?}"
    );
    a.shutdown();
    b.shutdown();
    assert!(other_answer.is_ok());
    assert!(matches!(outcome, Some(Ok(()))), "receipt: {outcome:?}");
    assert_eq!(handled, 1);
}

// =======================================================================================
// R17. Hostile message contents in valid envelopes: a decode error answer, never a hang
// or a crash, and the env goes on serving.

/// A recursive message type, as a peer would nest it to blow the stack.
#[derive(Debug, Serialize, Deserialize)]
enum Tree {
    Leaf,
    Node(Vec<Self>),
}

/// Answers the number of units it got.
struct Units;

impl RpcEndpoint for Units {
    type Message = Vec<()>;
    fn receive_and_reply(
        &mut self,
        msg: Vec<()>,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(msg.len() as u64);
    }
}

/// The same, several at a time.
struct ConcurrentUnits;

impl rpcenv::ConcurrentRpcEndpoint for ConcurrentUnits {
    type Message = Vec<()>;
    fn receive_and_reply(
        &self,
        msg: Vec<()>,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(msg.len() as u64);
    }
}

/// Answers how deep a tree is.
struct Trees;

impl RpcEndpoint for Trees {
    type Message = Tree;
    fn receive_and_reply(
        &mut self,
        msg: Tree,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let mut depth = 0u64;
        let mut at = &msg;
        while let Tree::Node(children) = at {
            depth += 1;
            match children.first() {
                Some(child) => at = child,
                None => break,
            }
        }
        reply.reply(depth);
    }
}

/// Whether an answer carried a value or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A response whose reply body has status 0: a value.
    Value,
    /// A response whose reply body has status 1 (an error), or a failure frame.
    Error,
}

/// Reads frames from `raw` until every id in `ids` has an answer (a response, type 4, or
/// a failure, type 5) or 10 s went by; returns each answer, by id.
pub(crate) fn answers_to(
    raw: &mut TcpStream,
    ids: &[u64],
) -> std::collections::BTreeMap<u64, Answer> {
    let mut got = Vec::new();
    let mut answers = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while answers.len() < ids.len() && Instant::now() < deadline {
        match read_some(raw, 1) {
            Ok(bytes) if bytes.is_empty() => break,
            Ok(bytes) => got.extend_from_slice(&bytes),
            Err(_) => continue,
        }
        let mut at = 0;
        while at + 17 <= got.len() {
            let len = i64::from_be_bytes(got[at..at + 8].try_into().unwrap()) as usize;
            if at + len > got.len() {
                break;
            }
            let id = u64::from_be_bytes(got[at + 9..at + 17].try_into().unwrap());
            if ids.contains(&id) {
                match got[at + 8] {
                    // The reply body's status byte follows the 4-byte body length.
                    4 if got.get(at + 21) == Some(&0) => answers.insert(id, Answer::Value),
                    4 | 5 => answers.insert(id, Answer::Error),
                    _ => None,
                };
            }
            at += len;
        }
        got.drain(..at);
    }
    answers
}

/// A varint claim of `len` elements.
fn claim(len: u64) -> Vec<u8> {
    let mut bytes = vec![253];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// A raw peer asks, in valid envelopes: a `Vec<()>` claiming 2^60 elements (each takes
/// no bytes: without a cap, a dispatcher thread loops 2^60 times), of a plain and of a
/// concurrent endpoint; a tree nested 100,000 deep; 1 TiB claimed as the length of a
/// tree's children. Each gets a failure answer at once, and asks after them are answered.
#[test]
fn hostile_contents_in_valid_envelopes_get_failures_and_the_env_goes_on() {
    let b = server_env_with(
        "rt-contents",
        conf_with(&[("rpc.dispatcher.numThreads", "2")]),
    );
    b.setup_endpoint("units", Units).unwrap();
    b.setup_concurrent_endpoint("units-c", ConcurrentUnits)
        .unwrap();
    b.setup_endpoint("trees", Trees).unwrap();
    let port = address_of(&b).port();
    let mut raw = raw_connect(port);
    let mut deep = [1u8, 1].repeat(100_000);
    deep.push(0);
    let hostile: [(&str, Vec<u8>); 5] = [
        ("units", claim(1 << 60)),
        ("units-c", claim(1 << 60)),
        ("units-c", claim(u64::MAX)),
        ("trees", deep),
        ("trees", [[1u8].as_slice(), &claim(1 << 40)].concat()),
    ];
    let mut batch = Vec::new();
    for (id, (name, content)) in hostile.iter().enumerate() {
        batch.extend_from_slice(&rpc_request(id as u64, &envelope(name, content)));
    }
    // Then asks that are fine: 3 units each, a tree 2 deep.
    batch.extend_from_slice(&rpc_request(10, &envelope("units", &[3])));
    batch.extend_from_slice(&rpc_request(11, &envelope("units-c", &[3])));
    batch.extend_from_slice(&rpc_request(12, &envelope("trees", &[1, 1, 1, 1, 0])));
    raw.write_all(&batch).unwrap();
    let answers = answers_to(&mut raw, &[0, 1, 2, 3, 4, 10, 11, 12]);
    for id in 0..hostile.len() as u64 {
        assert_eq!(
            answers.get(&id),
            Some(&Answer::Error),
            "hostile ask {id}: {answers:?}"
        );
    }
    for id in [10, 11, 12] {
        assert_eq!(
            answers.get(&id),
            Some(&Answer::Value),
            "ask {id}: {answers:?}"
        );
    }
    // And a well-behaved env still gets its answers.
    let a = client_env_with("rt-contents-client", rpc_conf());
    let units = a
        .setup_endpoint_ref::<Vec<()>>(address_of(&b), "units-c")
        .expect("a reference");
    assert_eq!(units.ask_sync::<u64>(vec![(); 5]).expect("an answer"), 5);
    a.shutdown();
    b.shutdown();
}
