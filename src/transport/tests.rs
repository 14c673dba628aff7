//! Connection logic over in-memory pipes: no sockets, no threads, no sleeps.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::error::RpcError;
use crate::frame::Message;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex, Weak};
use crate::transport::connection::{Conn, Counters, Notify, Wake};
use crate::transport::reader::{ReadOutcome, Reader};
use crate::transport::socket::Wire;
use crate::transport::watch::{Interest, Rewatch};
use crate::transport::write_queue::{Admission, Flushed};
use crate::transport::{Responder, RpcHandler, TransportClient, TransportConf};

const MAX_FRAME: u64 = 1 << 20;

/// One direction of an in-memory connection, holding at most `capacity` bytes.
struct Pipe {
    data: Mutex<VecDeque<u8>>,
    closed: AtomicBool,
    capacity: usize,
}

struct MemWire {
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
}

impl Wire for MemWire {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut data = self.rx.data.lock();
        if data.is_empty() {
            return if self.rx.closed.load(Ordering::Acquire) {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(data.len());
        for (slot, byte) in buf.iter_mut().zip(data.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.tx.closed.load(Ordering::Acquire) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut data = self.tx.data.lock();
        let mut room = self.tx.capacity - data.len();
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut written = 0;
        for buf in bufs {
            let n = buf.len().min(room);
            data.extend(&buf[..n]);
            written += n;
            room -= n;
            if room == 0 {
                break;
            }
        }
        Ok(written)
    }

    fn shutdown(&self) {
        self.tx.closed.store(true, Ordering::Release);
        self.rx.closed.store(true, Ordering::Release);
    }
}

struct NoLoop;

impl Rewatch for NoLoop {
    fn rewatch(&self, _: u64, _: RawFd, _: Interest, _: Interest) -> io::Result<()> {
        Ok(())
    }
}

impl Notify for NoLoop {
    fn closed(&self, _conn_id: u64) {}
    // `pump` flushes and reads both sides every round, as the event loop would.
    fn wake(&self, _conn: Arc<Conn>, _why: Wake) {}
}

/// Answers `ping:X` with `X`, `fail:X` with a failure, keeps other requests for the test
/// to answer, and records one-way messages.
#[derive(Default)]
struct TestHandler {
    held: Mutex<Vec<(Vec<u8>, Responder)>>,
    one_way: Mutex<Vec<Vec<u8>>>,
}

impl RpcHandler for TestHandler {
    fn receive(&self, _client: &TransportClient, message: Vec<u8>, responder: Responder) {
        if let Some(rest) = message.strip_prefix(b"ping:") {
            responder.reply(rest);
        } else if let Some(rest) = message.strip_prefix(b"fail:") {
            responder.fail(String::from_utf8_lossy(rest));
        } else if message == b"drop" {
            drop(responder);
        } else {
            self.held.lock().push((message, responder));
        }
    }

    fn receive_one_way(&self, _client: &TransportClient, message: Vec<u8>) {
        self.one_way.lock().push(message);
    }
}

struct Side {
    client: TransportClient,
    /// What the peer wrote and this side has not read yet.
    inbound: Arc<Pipe>,
    /// What this side wrote and the peer has not read yet.
    outbound: Arc<Pipe>,
    reader: Reader,
    handler: TestHandler,
    outcome: ReadOutcome,
    /// The socket as the connection holds it, to see when it is let go.
    wire: Weak<dyn Wire>,
}

impl Side {
    fn conn(&self) -> &Arc<Conn> {
        self.client.conn()
    }

    fn read(&mut self) {
        let mut scratch = [0; 256];
        let conn = Arc::clone(self.client.conn());
        if !matches!(self.outcome, ReadOutcome::Closed | ReadOutcome::Ended) {
            self.outcome = self.reader.read_ready(
                &conn,
                &self.client,
                &mut scratch,
                1 << 20,
                &self.handler,
                true,
                Instant::now(),
            );
            if self.outcome == ReadOutcome::Ended {
                conn.peer_closed();
            }
        }
    }

    /// What the event loop does when woken or writable.
    fn flush(&self) {
        if let Flushed::Failed(err) = self.conn().writes().flush() {
            self.conn().fail_write(err);
        }
        self.conn().after_flush();
    }

    fn queued(&self) -> usize {
        self.client.queued_bytes()
    }

    /// Whether this side's peer has bytes from it waiting.
    fn inbound_of_peer_is_empty(&self) -> bool {
        self.outbound.data.lock().is_empty()
    }

    /// Writes bytes as they are, bypassing the frame encoder (tests of bad input).
    fn write_raw(&self, bytes: Vec<u8>) {
        self.outbound.data.lock().extend(bytes);
    }
}

fn conf(limit: &str) -> TransportConf {
    TransportConf::from_conf(
        &crate::RpcConf::new()
            .set("rpc.message.maxSize", MAX_FRAME.to_string())
            .set("rpc.io.maxQueuedBytes", limit)
            .set("rpc.io.sendTimeout", "0"),
    )
    .unwrap()
}

fn pair(capacity: usize) -> (Side, Side) {
    pair_with(capacity, &conf("4m"))
}

fn pair_with(capacity: usize, conf: &TransportConf) -> (Side, Side) {
    let pipe = || {
        Arc::new(Pipe {
            data: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            capacity,
        })
    };
    let (a_to_b, b_to_a) = (pipe(), pipe());
    let side = |id, rx: Arc<Pipe>, tx: Arc<Pipe>, port, inbound| {
        let peer: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let wire: Arc<dyn Wire> = Arc::new(MemWire {
            rx: Arc::clone(&rx),
            tx: Arc::clone(&tx),
        });
        let weak = Arc::downgrade(&wire);
        let conn = Conn::new(
            id,
            usize::MAX - id as usize,
            peer,
            inbound,
            Arc::clone(&wire),
            conf,
            Arc::new(NoLoop),
            Arc::new(Counters::default()),
        );
        Side {
            client: TransportClient::new(conn),
            inbound: rx,
            outbound: tx,
            reader: Reader::new(wire, MAX_FRAME, Instant::now(), None, None),
            handler: TestHandler::default(),
            outcome: ReadOutcome::Drained,
            wire: weak,
        }
    };
    // `a` is the client of server `b` at 127.0.0.1:1000; `b` sees `a` at 127.0.0.1:2000.
    let a = side(1, Arc::clone(&b_to_a), Arc::clone(&a_to_b), 1000, false);
    let b = side(2, a_to_b, b_to_a, 2000, true);
    (a, b)
}

/// Moves bytes both ways until nothing is left to move (bounded).
fn pump(a: &mut Side, b: &mut Side) {
    for _ in 0..10_000 {
        a.flush();
        b.flush();
        a.read();
        b.read();
        let idle = |side: &Side| {
            side.conn().writes().is_drained()
                && (side.inbound.data.lock().is_empty() || side.conn().is_paused())
                && !side.reader.in_frame()
        };
        if idle(a) && idle(b) {
            return;
        }
    }
    panic!("pump did not settle");
}

type Slot = Arc<Mutex<Option<Result<Vec<u8>, RpcError>>>>;

fn request(side: &Side, body: &[u8]) -> (u64, Slot) {
    let slot: Slot = Arc::default();
    let out = Arc::clone(&slot);
    let id = side
        .client
        .send_rpc(body, move |result| *out.lock() = Some(result));
    (id, slot)
}

fn taken(slot: &Slot) -> Result<Vec<u8>, RpcError> {
    slot.lock().take().expect("the callback has not run")
}

#[test]
fn request_and_response() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, slot) = request(&client, b"ping:hello");
    pump(&mut client, &mut server);
    assert_eq!(taken(&slot).unwrap(), b"hello");
    assert_eq!(client.client.outstanding_requests(), 0);
}

#[test]
fn failures_arrive_as_remote_errors() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, slot) = request(&client, b"fail:boom");
    let (_, dropped) = request(&client, b"drop");
    pump(&mut client, &mut server);
    assert!(matches!(taken(&slot), Err(RpcError::Remote { message }) if message == "boom"));
    assert!(
        matches!(taken(&dropped), Err(RpcError::Remote { message }) if message.contains("without replying"))
    );
}

#[test]
fn out_of_order_responses_reach_their_callers() {
    let (mut client, mut server) = pair(1 << 16);
    let slots: Vec<_> = (0..5)
        .map(|i| request(&client, format!("held {i}").as_bytes()))
        .collect();
    let ids: Vec<u64> = slots.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        [0, 1, 2, 3, 4],
        "request ids are sequential per connection"
    );
    pump(&mut client, &mut server);
    let mut held = std::mem::take(&mut *server.handler.held.lock());
    held.reverse();
    for (message, responder) in held {
        responder.reply(message);
    }
    pump(&mut client, &mut server);
    for (i, (_, slot)) in slots.iter().enumerate() {
        assert_eq!(taken(slot).unwrap(), format!("held {i}").as_bytes());
    }
}

#[test]
fn one_way_messages_arrive_in_order() {
    let (mut client, mut server) = pair(1 << 16);
    for i in 0..100u32 {
        client.client.send(i.to_be_bytes()).unwrap();
    }
    pump(&mut client, &mut server);
    let got: Vec<u32> = server
        .handler
        .one_way
        .lock()
        .iter()
        .map(|m| u32::from_be_bytes(m[..].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn outstanding_requests_fail_at_once_when_the_peer_closes() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, slot) = request(&client, b"held");
    pump(&mut client, &mut server);
    assert!(slot.lock().is_none());
    server.client.close();
    client.read();
    assert_eq!(client.outcome, ReadOutcome::Ended);
    let err = taken(&slot).unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1000"), "{err}");
    assert!(!client.client.is_active());
}

#[test]
fn calls_on_a_closed_connection_fail_at_once() {
    let (client, _server) = pair(1 << 16);
    client.client.close();
    let (_, slot) = request(&client, b"ping:x");
    assert!(matches!(taken(&slot), Err(RpcError::Connection { .. })));
    assert!(matches!(
        client.client.send(b"x"),
        Err(RpcError::Connection { .. })
    ));
}

#[test]
fn frames_above_max_size_are_refused_before_sending() {
    let (client, _server) = pair(1 << 16);
    let (_, slot) = request(&client, &vec![0; MAX_FRAME as usize]);
    assert!(matches!(
        taken(&slot),
        Err(RpcError::FrameTooLarge { max: MAX_FRAME, .. })
    ));
    assert!(matches!(
        client.client.send(vec![0; MAX_FRAME as usize]),
        Err(RpcError::FrameTooLarge { .. })
    ));
    assert!(client.client.is_active());
    assert_eq!(client.queued(), 0);
}

#[test]
fn a_full_pipe_queues_writes_until_the_peer_reads() {
    // 100 bytes of room: a 10 KiB body moves a little at a time.
    let (mut client, mut server) = pair(100);
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let mut ping = b"ping:".to_vec();
    ping.extend(&body);
    let (_, slot) = request(&client, &ping);
    assert!(client.queued() > 0);
    pump(&mut client, &mut server);
    assert_eq!(taken(&slot).unwrap(), body);
}

#[test]
fn a_reply_from_an_idle_connection_is_written_at_once_by_the_replying_thread() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, slot) = request(&client, b"held");
    pump(&mut client, &mut server);
    let (_, responder) = server.handler.held.lock().pop().unwrap();
    std::thread::sleep(Duration::from_millis(1));
    responder.reply(b"late".to_vec());
    // No loop ran: the replying thread wrote it.
    assert_eq!(server.queued(), 0);
    client.read();
    assert_eq!(taken(&slot).unwrap(), b"late");
}

#[test]
fn garbage_closes_the_connection_and_reports_the_error() {
    let (mut client, mut server) = pair(1 << 16);
    let (id, slot) = request(&client, b"held");
    let (_, other) = request(&client, b"held");
    pump(&mut client, &mut server);
    // A response frame claiming 1 TiB: its id is read, then the connection closes.
    let mut bytes = (1u64 << 40).to_be_bytes().to_vec();
    bytes.push(4);
    server.write_raw(bytes);
    client.read();
    assert_eq!(client.outcome, ReadOutcome::Drained, "waits for the id");
    server.write_raw(id.to_be_bytes().to_vec());
    client.read();
    assert_eq!(client.outcome, ReadOutcome::Closed);
    // The request it answers fails with the sizes; the others with the connection.
    assert!(matches!(taken(&slot), Err(RpcError::FrameTooLarge { size, .. }) if size == 1 << 40));
    let slot = other;
    // What the event loop reports to the handler when it forgets the connection.
    let failure = client.conn().failure().expect("a failure to report");
    assert!(
        matches!(failure, RpcError::FrameTooLarge { size, .. } if size == 1 << 40),
        "{failure:?}"
    );
    assert!(matches!(taken(&slot), Err(RpcError::Connection { .. })));
}

#[test]
fn answers_to_unknown_requests_are_ignored() {
    let (mut client, mut server) = pair(1 << 16);
    let mut bytes = Vec::new();
    Message::RpcResponse {
        request_id: 99,
        body: b"stray".to_vec(),
    }
    .encode_to(&mut bytes);
    server.write_raw(bytes);
    let (_, slot) = request(&client, b"ping:ok");
    pump(&mut client, &mut server);
    assert_eq!(taken(&slot).unwrap(), b"ok");
    assert!(client.client.is_active());
}

#[test]
fn a_panicking_callback_does_not_break_the_connection() {
    let (mut client, mut server) = pair(1 << 16);
    client
        .client
        .send_rpc(b"ping:x", |_| panic!("callback bug"));
    let (_, slot) = request(&client, b"ping:y");
    pump(&mut client, &mut server);
    assert_eq!(taken(&slot).unwrap(), b"y");
}

#[test]
fn a_burst_of_sends_waits_for_one_flush() {
    let (mut client, mut server) = pair(1 << 16);
    let slots: Vec<_> = (0..50)
        .map(|i| request(&client, format!("ping:{i}").as_bytes()))
        .collect();
    // The first went out at once; the rest of the burst waits for the loop's flush.
    assert!(client.queued() > 0);
    client.flush();
    assert_eq!(client.queued(), 0);
    pump(&mut client, &mut server);
    for (i, (_, slot)) in slots.iter().enumerate() {
        assert_eq!(taken(slot).unwrap(), i.to_string().as_bytes());
    }
}

#[test]
fn an_isolated_send_is_written_at_once() {
    let (client, _server) = pair(1 << 16);
    std::thread::sleep(Duration::from_millis(1));
    request(&client, b"ping:alone");
    assert_eq!(client.queued(), 0);
    assert!(!client.inbound_of_peer_is_empty());
}

#[test]
fn a_request_sent_while_others_are_outstanding_is_left_to_the_loop() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, first) = request(&client, b"held-1");
    pump(&mut client, &mut server);
    std::thread::sleep(Duration::from_millis(1));
    // Not a burst in time, but a pipeline: the answers to come wake the loop anyway.
    let (_, second) = request(&client, b"ping:second");
    assert!(client.queued() > 0);
    pump(&mut client, &mut server);
    assert_eq!(taken(&second).unwrap(), b"second");
    assert!(first.lock().is_none());
}

/// A receipt that records its outcome.
type Outcome = Arc<Mutex<Option<Result<(), RpcError>>>>;

fn receipt() -> (crate::transport::Receipt, Outcome) {
    let slot: Outcome = Arc::default();
    let out = Arc::clone(&slot);
    (Box::new(move |outcome| *out.lock() = Some(outcome)), slot)
}

#[test]
fn a_full_write_queue_refuses_try_sends_and_waits_are_bounded_but_answers_go_anyway() {
    // 100 bytes of pipe, 1 KiB of queue.
    let (mut client, mut server) = pair_with(100, &conf("1k"));
    let mut accepted = 0;
    let err = loop {
        match client.client.try_send(vec![7; 100]) {
            Ok(()) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 100, "the queue never filled");
    };
    let text = err.to_string();
    assert!(
        matches!(err, RpcError::QueueFull { waited: false, .. }),
        "{err:?}"
    );
    for needle in [
        "write queue to 127.0.0.1:1000",
        "1024",
        "rpc.io.maxQueuedBytes",
    ] {
        assert!(text.contains(needle), "{text}");
    }
    // A send that may wait gives up at its deadline, saying it waited.
    let conn = Arc::clone(client.conn());
    let started = Instant::now();
    let until = Instant::now() + Duration::from_millis(50);
    let waited = conn.send_one_way(vec![7; 10].into(), None, Admission::Wait(Some(until)), None);
    assert!(
        matches!(waited, Err(RpcError::QueueFull { waited: true, .. })),
        "{waited:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    // Nothing accepted is lost once the peer reads.
    pump(&mut client, &mut server);
    assert_eq!(server.handler.one_way.lock().len(), accepted);
    assert!(client.client.try_send(vec![7; 100]).is_ok());
}

#[test]
fn a_sender_waiting_for_room_goes_on_as_soon_as_the_peer_reads() {
    let (mut client, mut server) = pair_with(100, &conf("1k"));
    while client.client.try_send(vec![1; 200]).is_ok() {}
    let conn = Arc::clone(client.conn());
    let sender = std::thread::Builder::new()
        .name("rpc-test-sender".into())
        .spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            conn.send_one_way(vec![2; 10].into(), None, Admission::Wait(Some(until)), None)
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    pump(&mut client, &mut server);
    sender
        .join()
        .unwrap()
        .expect("room came when the peer read");
    pump(&mut client, &mut server);
    assert_eq!(server.handler.one_way.lock().last().unwrap(), &vec![2; 10]);
}

#[test]
fn a_peer_that_does_not_read_its_answers_is_no_longer_read_until_it_does() {
    let (mut client, mut server) = pair_with(64, &conf("1k"));
    // 40 requests whose answers (100 bytes each) the client does not read.
    let conn = Arc::clone(client.conn());
    let slots: Vec<Slot> = (0..40)
        .map(|_| {
            let slot: Slot = Arc::default();
            let out = Arc::clone(&slot);
            let body = [b"ping:".as_slice(), &[9; 100]].concat();
            let callback = Box::new(move |result| *out.lock() = Some(result));
            conn.send_rpc(body.into(), callback, None, None, Admission::Force);
            slot
        })
        .collect();
    for _ in 0..200 {
        client.flush();
        server.read();
        server.flush();
    }
    assert!(
        server.conn().is_paused(),
        "the server stops reading requests"
    );
    let (ready, _) = server.conn().writes().queued();
    assert!(
        ready < 1024 + 200,
        "answers queued stay near the limit: {ready}"
    );
    assert!(
        client.queued() > 0,
        "requests wait in the client: TCP slows it down"
    );
    // Once the client reads, everything is answered.
    pump(&mut client, &mut server);
    assert!(!server.conn().is_paused());
    for slot in slots {
        assert_eq!(taken(&slot).unwrap(), vec![9; 100]);
    }
}

#[test]
fn a_peer_that_speaks_flow_control_is_read_whatever_its_answers() {
    let (client, mut server) = pair_with(64, &conf("1k"));
    server.conn().set_flow_controlled(1 << 20);
    for _ in 0..40 {
        request(&client, &[b"ping:".as_slice(), &[9; 100]].concat());
    }
    for _ in 0..200 {
        client.flush();
        server.read();
        server.flush();
    }
    assert!(!server.conn().is_paused());
}

#[test]
fn auto_read_off_leaves_frames_unread_and_on_reads_them_in_order() {
    let (mut client, mut server) = pair(1 << 16);
    server.client.set_auto_read(false);
    for i in 0..20u8 {
        client.client.send(vec![i]).unwrap();
    }
    pump(&mut client, &mut server);
    assert!(server.handler.one_way.lock().is_empty());
    server.client.set_auto_read(true);
    pump(&mut client, &mut server);
    let got: Vec<u8> = server.handler.one_way.lock().iter().map(|m| m[0]).collect();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

/// Pauses the connection from inside the handler after `after` one-way messages.
struct PausingHandler {
    seen: AtomicUsize,
    after: usize,
    got: Mutex<Vec<Vec<u8>>>,
}

impl RpcHandler for PausingHandler {
    fn receive(&self, _client: &TransportClient, _message: Vec<u8>, responder: Responder) {
        responder.fail("no");
    }

    fn receive_one_way(&self, client: &TransportClient, message: Vec<u8>) {
        self.got.lock().push(message);
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.after {
            client.set_auto_read(false);
        }
    }
}

#[test]
fn pausing_in_the_middle_of_a_read_keeps_the_bytes_already_read() {
    let (mut client, server) = pair(1 << 16);
    for i in 0..50u8 {
        client.client.send(vec![i; 3]).unwrap();
    }
    client.flush();
    let handler = PausingHandler {
        seen: AtomicUsize::new(0),
        after: 10,
        got: Mutex::default(),
    };
    let mut reader = server.reader;
    let conn = Arc::clone(server.client.conn());
    let mut scratch = [0; 4096];
    let outcome = reader.read_ready(
        &conn,
        &server.client,
        &mut scratch,
        1 << 20,
        &handler,
        true,
        Instant::now(),
    );
    assert_eq!(outcome, ReadOutcome::Paused);
    assert_eq!(handler.got.lock().len(), 10);
    conn.set_auto_read(true);
    let outcome = reader.read_ready(
        &conn,
        &server.client,
        &mut scratch,
        1 << 20,
        &handler,
        true,
        Instant::now(),
    );
    assert_eq!(outcome, ReadOutcome::Drained);
    let got: Vec<u8> = handler.got.lock().iter().map(|m| m[0]).collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    let _ = &mut client;
}

#[test]
fn after_the_peer_ends_its_side_the_answers_it_is_owed_still_go_out() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, slot) = request(&client, b"held");
    client.flush();
    // The client shuts its write side: the server reads the request, then the end.
    client.outbound.closed.store(true, Ordering::Release);
    server.read();
    assert_eq!(server.outcome, ReadOutcome::Ended);
    assert!(server.conn().is_open());
    assert!(
        !server.client.is_active(),
        "no new requests on a closing connection"
    );
    assert_eq!(server.conn().owed(), 1);
    let (_, responder) = server.handler.held.lock().pop().unwrap();
    responder.reply(b"still answered".to_vec());
    server.flush();
    assert!(server.conn().is_finished());
    client.read();
    assert_eq!(taken(&slot).unwrap(), b"still answered");
}

#[test]
fn requests_to_a_peer_that_ended_its_side_fail_at_once() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, slot) = request(&client, b"held");
    pump(&mut client, &mut server);
    server.outbound.closed.store(true, Ordering::Release);
    client.read();
    assert_eq!(client.outcome, ReadOutcome::Ended);
    let err = taken(&slot).unwrap_err();
    assert!(err.to_string().contains("closed by the peer"), "{err}");
    let (_, later) = request(&client, b"ping:x");
    assert!(matches!(taken(&later), Err(RpcError::Connection { .. })));
}

#[test]
fn closing_lets_go_of_the_socket_while_handles_remain() {
    let (client, server) = pair(1 << 16);
    let Side { reader, wire, .. } = server;
    let handle = client.client.clone();
    drop(reader);
    assert!(
        wire.upgrade().is_some(),
        "open: the connection holds its socket"
    );
    // The server side closes (the loop would drop its reader when it removes the entry).
    let server_conn = TransportClient::new(Arc::clone(client.conn()));
    drop(server_conn);
    client.client.close();
    drop(client.reader);
    assert!(
        client.wire.upgrade().is_none(),
        "closed: the socket is let go"
    );
    assert!(!handle.is_active());
}

#[test]
fn labelled_frames_wait_for_window_without_holding_up_other_labels() {
    let (mut client, mut server) = pair(1 << 16);
    let conn = Arc::clone(client.conn());
    let label = |name: &str| Some(crate::transport::Label::from(name));
    // The window starts at 64 KiB: two 40 KiB messages to `a` use it up.
    for i in 0..3u8 {
        conn.send_one_way(vec![i; 40 * 1024].into(), label("a"), Admission::Try, None)
            .unwrap();
    }
    conn.send_one_way(b"to b".to_vec().into(), label("b"), Admission::Try, None)
        .unwrap();
    pump(&mut client, &mut server);
    let got: Vec<usize> = server.handler.one_way.lock().iter().map(Vec::len).collect();
    assert_eq!(
        got,
        [40 * 1024, 40 * 1024, 4],
        "the third `a` waits; `b` does not"
    );
    // A held message counts its charge (body and fixed share), not its frame's length.
    let (_, held) = conn.writes().queued();
    assert_eq!(held, 40 * 1024 + crate::transport::FRAME_CHARGE);
    conn.grant("a", 40 * 1024 + crate::transport::FRAME_CHARGE);
    pump(&mut client, &mut server);
    assert_eq!(server.handler.one_way.lock().len(), 4);
}

#[test]
fn receipts_tell_written_frames_and_frames_lost_with_the_connection() {
    let (mut client, mut server) = pair_with(100, &conf("4m"));
    let conn = Arc::clone(client.conn());
    let (written, written_slot) = receipt();
    conn.send_one_way(vec![1; 10].into(), None, Admission::Try, Some(written))
        .unwrap();
    pump(&mut client, &mut server);
    assert!(matches!(*written_slot.lock(), Some(Ok(()))));
    // 10 KiB cannot pass a 100-byte pipe nobody reads: it is lost when the connection
    // closes, and says so, and is counted.
    let (lost, lost_slot) = receipt();
    conn.send_one_way(vec![2; 10_000].into(), None, Admission::Try, Some(lost))
        .unwrap();
    client.flush();
    assert!(lost_slot.lock().is_none());
    conn.close("closed by the test");
    let outcome = lost_slot.lock().take().expect("told at the close");
    let err = outcome.unwrap_err();
    assert!(err.to_string().contains("closed by the test"), "{err}");
    assert_eq!(conn.counters().one_way_dropped.load(Ordering::Relaxed), 1);
}

/// A connection whose write failed says so, with its OS error as the source and never
/// twice in one text (as in "(write failed: Broken pipe (os error 32)): Broken pipe (os
/// error 32)").
#[test]
fn a_failed_write_names_its_os_error_once() {
    let (client, _server) = pair(1 << 16);
    let (_, slot) = request(&client, b"outstanding");
    let broken = io::Error::new(io::ErrorKind::BrokenPipe, "Broken pipe (os error 32)");
    let err = client.conn().fail_write(broken);
    for err in [err, taken(&slot).unwrap_err()] {
        let text = err.to_string();
        assert!(!text.contains("Broken pipe"), "{text}");
        assert!(text.contains("write failed"), "{text}");
        let os = err.io_error().expect("the OS error");
        assert_eq!(os.kind(), io::ErrorKind::BrokenPipe);
        let source = std::error::Error::source(&err).expect("the OS error as source");
        assert!(source.to_string().contains("Broken pipe"));
        let alternate = format!("{err:#}");
        assert_eq!(alternate.matches("Broken pipe").count(), 1, "{alternate}");
    }
}

/// A request above the receiver's maximum is answered with a failure naming both sizes
/// and the key before the connection closes; the caller reads it as `FrameTooLarge`.
#[test]
fn a_request_above_the_maximum_is_answered_with_the_sizes_before_the_close() {
    let (client, mut server) = pair(1 << 16);
    // A raw request frame claiming 2 MiB, above the server's maximum.
    let mut bytes = (2u64 << 20).to_be_bytes().to_vec();
    bytes.push(3);
    bytes.extend_from_slice(&4242u64.to_be_bytes());
    client.write_raw(bytes);
    server.read();
    // The rest of the frame is read and dropped, then the connection is done.
    assert_eq!(server.outcome, ReadOutcome::Drained);
    client.write_raw(vec![0; (2 << 20) - 17]);
    for _ in 0..1000 {
        server.read();
        if server.outcome != ReadOutcome::Drained && server.outcome != ReadOutcome::Budget {
            break;
        }
    }
    assert_eq!(server.outcome, ReadOutcome::Refused);
    let written: Vec<u8> = client.inbound.data.lock().iter().copied().collect();
    let mut decoder = crate::frame::FrameDecoder::new(1 << 20);
    let mut input = &written[..];
    let mut refusal = None;
    while !input.is_empty() {
        let (used, message) = decoder.decode(input).expect("the server's frames decode");
        input = &input[used..];
        if let Some(Message::RpcFailure { request_id, error }) = message {
            refusal = Some((request_id, RpcError::from_failure(error)));
        }
    }
    let Some((4242, err)) = refusal else {
        panic!("no refusal of request 4242 in {written:?}");
    };
    assert!(
        matches!(err, RpcError::FrameTooLarge { size, max } if size == 2 << 20 && max == MAX_FRAME),
        "{err:?}"
    );
    assert!(err.to_string().contains("rpc.message.maxSize"), "{err}");
}

/// Before the handshake the limit is the handshake's, and the error says so (not
/// `rpc.message.maxSize`, which the peer is far from).
#[test]
fn a_large_frame_before_the_handshake_is_named_as_such() {
    let (client, mut server) = pair(1 << 20);
    let wire = server.wire.upgrade().expect("the server's socket");
    let auth = crate::transport::AuthBootstrap::new("app", "secret");
    server.reader = Reader::new(wire, MAX_FRAME, Instant::now(), None, Some(auth));
    let mut header = 100_000u64.to_be_bytes().to_vec();
    header.push(3);
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&(100_000u32 - 21).to_be_bytes());
    client.write_raw(header);
    server.read();
    assert_eq!(server.outcome, ReadOutcome::Closed);
    let err = server.conn().failure().expect("a failure");
    assert!(matches!(err, RpcError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("before authenticating"), "{text}");
    assert!(!text.contains("rpc.message.maxSize"), "{text}");
}

#[test]
fn a_stream_arriving_in_small_pieces_is_held_at_about_its_size() {
    use crate::frame::header_type::MessageType;
    use crate::frame::{FrameHeader, stream_response_body};
    let (mut client, server) = pair(1 << 20);
    let reader = client.client.stream_reader("/files/x").unwrap();
    let fields = stream_response_body("/files/x", 1 << 20);
    let header = FrameHeader::stream(MessageType::StreamResponse, fields.len());
    let mut answer = header.as_bytes().to_vec();
    answer.extend_from_slice(&fields);
    server.write_raw(answer);
    client.read();
    // The body trickles in: 100 bytes per read, as from a slow link.
    for _ in 0..200 {
        server.write_raw(vec![7; 100]);
        client.read();
    }
    assert_eq!(reader.buffered(), 200 * 100);
    let held = reader.buffered_capacity();
    assert!(
        held <= 4 * 200 * 100,
        "20000 bytes buffered in {held} bytes of capacity"
    );
    // Single bytes, as a peer that trickles them: gathered, not a piece each.
    for _ in 0..2000 {
        server.write_raw(vec![7; 1]);
        client.read();
    }
    assert_eq!(reader.buffered(), 200 * 100 + 2000);
    assert!(
        reader.buffered_pieces() <= 4,
        "{} pieces",
        reader.buffered_pieces()
    );
    // And they read back in order.
    let mut reader = reader;
    let mut got = vec![0; 22_000];
    io::Read::read_exact(&mut reader, &mut got).unwrap();
    assert!(got.iter().all(|&byte| byte == 7));
}

#[test]
fn a_stream_reader_that_timed_out_keeps_failing() {
    use crate::frame::header_type::MessageType;
    use crate::frame::{FrameHeader, stream_response_body};
    let conf = TransportConf::from_conf(
        &crate::RpcConf::new()
            .set("rpc.message.maxSize", MAX_FRAME.to_string())
            .set("rpc.io.connectionTimeout", "50ms"),
    )
    .unwrap();
    let (mut client, server) = pair_with(1 << 20, &conf);
    let mut reader = client.client.stream_reader("/files/x").unwrap();
    let fields = stream_response_body("/files/x", 10);
    let header = FrameHeader::stream(MessageType::StreamResponse, fields.len());
    let mut answer = header.as_bytes().to_vec();
    answer.extend_from_slice(&fields);
    server.write_raw(answer);
    client.read();
    let mut buf = [0; 10];
    let err = io::Read::read(&mut reader, &mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    // The bytes come late: the stream already failed, and stays failed.
    server.write_raw(vec![7; 10]);
    client.read();
    let err = io::Read::read(&mut reader, &mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(matches!(reader.error(), Some(RpcError::Timeout { .. })));
}
