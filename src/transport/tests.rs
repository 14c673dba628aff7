//! Connection logic over in-memory pipes: no sockets, no threads, no sleeps.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;

use crate::error::RpcError;
use crate::frame::{FrameDecoder, Message};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Mutex};
use crate::transport::connection::{self, Conn, Notify, ReadOutcome};
use crate::transport::socket::Wire;
use crate::transport::{Responder, RpcHandler, TransportClient};

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

impl Notify for NoLoop {
    fn closed(&self, _conn_id: u64) {}
    // `pump` flushes both sides every round, as the event loop would.
    fn flush(&self, _conn: Arc<Conn>) {}
}

/// Answers `ping:X` with `X`, `fail:X` with a failure, keeps other requests for the test
/// to answer, and records one-way messages and errors.
#[derive(Default)]
struct TestHandler {
    held: Mutex<Vec<(Vec<u8>, Responder)>>,
    one_way: Mutex<Vec<Vec<u8>>>,
    errors: Mutex<Vec<String>>,
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

    fn exception_caught(&self, error: &RpcError, _client: &TransportClient) {
        self.errors.lock().push(error.to_string());
    }
}

struct Side {
    client: TransportClient,
    /// What the peer wrote and this side has not read yet.
    inbound: Arc<Pipe>,
    /// What this side wrote and the peer has not read yet.
    outbound: Arc<Pipe>,
    decoder: FrameDecoder,
    handler: TestHandler,
    outcome: ReadOutcome,
}

impl Side {
    fn conn(&self) -> &Arc<Conn> {
        self.client.conn()
    }

    fn read(&mut self) {
        let mut scratch = [0; 256];
        let conn = Arc::clone(self.client.conn());
        if self.outcome != ReadOutcome::Closed {
            self.outcome = conn.read_ready(
                &self.client,
                &mut self.decoder,
                &mut scratch,
                1 << 20,
                &self.handler,
                true,
            );
        }
    }
}

impl Side {
    /// Whether this side's peer has bytes from it waiting.
    fn inbound_of_peer_is_empty(&self) -> bool {
        self.outbound.data.lock().is_empty()
    }
}

fn pair(capacity: usize) -> (Side, Side) {
    let pipe = || {
        Arc::new(Pipe {
            data: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            capacity,
        })
    };
    let (a_to_b, b_to_a) = (pipe(), pipe());
    let side = |id, loop_id, rx, tx, port| {
        let peer: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let wire = Box::new(MemWire {
            rx: Arc::clone(&rx),
            tx: Arc::clone(&tx),
        });
        let conn = Conn::new(id, loop_id, peer, MAX_FRAME, wire, Arc::new(NoLoop));
        Side {
            client: TransportClient::new(conn),
            inbound: rx,
            outbound: tx,
            decoder: FrameDecoder::new(MAX_FRAME),
            handler: TestHandler::default(),
            outcome: ReadOutcome::Drained,
        }
    };
    // `a` is the client of server `b` at 127.0.0.1:1000; `b` sees `a` at 127.0.0.1:2000.
    let a = side(
        1,
        usize::MAX - 1,
        Arc::clone(&b_to_a),
        Arc::clone(&a_to_b),
        1000,
    );
    let b = side(2, usize::MAX - 2, a_to_b, b_to_a, 2000);
    (a, b)
}

/// Moves bytes both ways until nothing is left to move (bounded).
fn pump(a: &mut Side, b: &mut Side) {
    for _ in 0..10_000 {
        a.conn().flush();
        b.conn().flush();
        a.read();
        b.read();
        let idle = |side: &Side| {
            side.conn().queued_bytes() == 0
                && side.inbound.data.lock().is_empty()
                && side.decoder.is_idle()
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
    assert_eq!(client.outcome, ReadOutcome::Closed);
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
    assert_eq!(client.conn().queued_bytes(), 0);
}

#[test]
fn a_full_pipe_queues_writes_until_the_peer_reads() {
    // 100 bytes of room: a 10 KiB body moves a little at a time.
    let (mut client, mut server) = pair(100);
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let mut ping = b"ping:".to_vec();
    ping.extend(&body);
    let (_, slot) = request(&client, &ping);
    assert!(client.conn().queued_bytes() > 0);
    pump(&mut client, &mut server);
    assert_eq!(taken(&slot).unwrap(), body);
}

#[test]
fn replies_in_a_batch_are_flushed_at_its_end() {
    let (mut client, mut server) = pair(1 << 16);
    let slots: Vec<_> = (0..3)
        .map(|i| request(&client, format!("ping:{i}").as_bytes()))
        .collect();
    // Back-to-back sends are a burst: the client's loop would write them.
    client.conn().flush();
    connection::begin_batch(server.conn().loop_id(), Vec::new());
    server.read();
    // The three replies wait in the queue: nothing written yet.
    assert!(server.conn().queued_bytes() > 0);
    let to_flush = connection::end_batch();
    assert_eq!(to_flush.len(), 1, "one flush for the whole batch");
    for conn in &to_flush {
        conn.flush();
    }
    assert_eq!(server.conn().queued_bytes(), 0);
    client.read();
    for (i, (_, slot)) in slots.iter().enumerate() {
        assert_eq!(taken(slot).unwrap(), i.to_string().as_bytes());
    }
}

#[test]
fn garbage_closes_the_connection_and_reports_the_error() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, slot) = request(&client, b"held");
    pump(&mut client, &mut server);
    // A response frame claiming 1 TiB.
    let mut bytes = (1u64 << 40).to_be_bytes().to_vec();
    bytes.push(4);
    server.conn().write_raw_for_test(bytes);
    client.read();
    assert_eq!(client.outcome, ReadOutcome::Closed);
    let errors = client.handler.errors.lock().clone();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("rpc.message.maxSize"), "{errors:?}");
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
    server.conn().write_raw_for_test(bytes);
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
    assert!(client.conn().queued_bytes() > 0);
    client.conn().flush();
    assert_eq!(client.conn().queued_bytes(), 0);
    pump(&mut client, &mut server);
    for (i, (_, slot)) in slots.iter().enumerate() {
        assert_eq!(taken(slot).unwrap(), i.to_string().as_bytes());
    }
}

#[test]
fn an_isolated_send_is_written_at_once() {
    let (client, _server) = pair(1 << 16);
    std::thread::sleep(std::time::Duration::from_millis(1));
    request(&client, b"ping:alone");
    assert_eq!(client.conn().queued_bytes(), 0);
    assert!(!client.inbound_of_peer_is_empty());
}

#[test]
fn a_request_sent_while_others_are_outstanding_is_left_to_the_loop() {
    let (mut client, mut server) = pair(1 << 16);
    let (_, first) = request(&client, b"held-1");
    pump(&mut client, &mut server);
    std::thread::sleep(std::time::Duration::from_millis(1));
    // Not a burst in time, but a pipeline: the answers to come wake the loop anyway.
    let (_, second) = request(&client, b"ping:second");
    assert!(client.conn().queued_bytes() > 0);
    pump(&mut client, &mut server);
    assert_eq!(taken(&second).unwrap(), b"second");
    assert!(first.lock().is_none());
}
