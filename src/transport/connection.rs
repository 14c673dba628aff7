//! One connection's shared state: its write queue, its table of requests, the answers it
//! owes, whether it reads, and closing.
//!
//! A [`Conn`] is shared (`Arc`) by the `rpc-io-N` event loop that owns it (which alone
//! reads, see `reader`) and by every [`TransportClient`](super::TransportClient) and [`Responder`](super::Responder) handle, which
//! hand it frames from any thread (see `write_queue` for which thread writes each one).
//! Closing lets go of the socket at once, however many handles are left: later calls on
//! a handle fail with the reason it closed.
//!
//! A connection whose peer closed its side (end of stream) is *closing*: it reads no more
//! and takes no new requests or messages, fails the requests it sent at once (the peer
//! cannot answer them), and still writes the answers it owes for requests the peer sent
//! before; it closes once they are written, or after `rpc.io.connectionTimeout`.

use std::any::Any;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use log::{debug, error, trace, warn};

use crate::auth::Encryptor;
use crate::buffer_pool::BufferPool;
use crate::error::{RESPONSE_NOT_SENT, RpcError};
use crate::frame::header_type::MessageType;
use crate::frame::{
    Body, FrameHeader, stream_failure_body, stream_request_body, stream_response_body,
};
use crate::log_limit::{LogLimit, kind, peer_warn};
use crate::metrics::{PeerMetrics, since_stamp};
use crate::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex, Weak};
use crate::threads::panic_message;
use crate::transport::TransportConf;
use crate::transport::read_turn::{self, ReadTurn, reading_a_connection};
use crate::transport::requests::{Callback, Requests};
use crate::transport::socket::Wire;
use crate::transport::stream::{Counted, Pending as PendingStream, Sink, StreamBody, Streams};
use crate::transport::watch::{Rewatch, Watch};
use crate::transport::write_queue::{
    Admission, After, Frame, Kind, Label, Receipt, Submitted, WriteQueue, settle_all,
};

/// Why a loop is woken for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Frames wait to be written.
    Flush,
    /// Reading may go on (it was paused).
    Resume,
    /// The connection may be done (a closing connection's last answer was given).
    Check,
}

/// How a connection reaches its event loop from any thread.
pub(crate) trait Notify: Rewatch + Send + Sync {
    /// `conn_id` was closed; the loop forgets it and reports it inactive.
    fn closed(&self, conn_id: u64);
    /// The loop has something to do for `conn`.
    fn wake(&self, conn: Arc<Conn>, why: Wake);
}

/// Counts the transport keeps for the whole context (for the env's statistics), and
/// whether the env above it is shutting down.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// One-way messages accepted for sending and lost with their connection.
    pub(crate) one_way_dropped: AtomicU64,
    /// Inbound connections closed at accept because of `rpc.io.maxConnections`.
    pub(crate) connections_refused: AtomicU64,
    /// The env is shutting down: senders waiting for room give up with `EnvStopped`.
    pub(crate) stopping: AtomicBool,
    /// Outbound connections established.
    pub(crate) connects: AtomicU64,
    /// Outbound connection attempts that failed.
    pub(crate) connect_failures: AtomicU64,
    /// Bytes, frames in and out of connections that were dropped (the others keep
    /// theirs).
    pub(crate) closed: ConnTotals,
    /// The highest totals a metrics snapshot reported, so that none reports less than
    /// an earlier one (a connection dropped while a snapshot runs may be missed by it).
    pub(crate) reported: ConnTotals,
    /// Read turns taken by callers waiting for their answer (see `read_turn`).
    pub(crate) caller_turns: AtomicU64,
    /// Read turns taken by idle dispatcher threads waiting for the next request on the
    /// connection they last answered (see `read_turn::lead`).
    pub(crate) lead_turns: AtomicU64,
    /// Reads the event loop left because a caller held the read turn (it was told of bytes
    /// the caller reads): rare, since the loop's poller stops watching the socket for
    /// bytes during a turn (see `watch`).
    pub(crate) turn_found_taken: AtomicU64,
    /// Read turns whose holder waited on its poller before it read, the last read of the
    /// socket having emptied it (see `read_turn`'s `take_turn`).
    pub(crate) turns_waiting_first: AtomicU64,
    /// Answers (or failures the peer sent) read by the caller waiting for them, in its
    /// read turn: the turns that ended with a timeout, a close or a shutdown, or with an
    /// answer the loop read before the turn was taken, are not counted.
    pub(crate) caller_answers: AtomicU64,
    /// Asks timed out, by the key that set their deadline.
    pub(crate) timeouts: Mutex<BTreeMap<&'static str, u64>>,
    /// Refused input from peers, by kind, and the limit on its log lines.
    pub(crate) log_limit: LogLimit,
    /// Large frame buffers kept for reuse (see `buffer_pool`).
    pub(crate) buffers: Arc<BufferPool>,
    /// The connections of this context, for the metrics; each removes itself when
    /// dropped.
    conns: Mutex<HashMap<u64, Weak<Conn>>>,
}

impl Counters {
    /// Every connection not yet dropped, open or closed: a closed one that something
    /// still holds (a pooled client is replaced only at its next use) has not yet added
    /// its counts to [`closed`](Self::closed). The caller drops the handles after the
    /// registry's lock is let go (dropping the last handle takes it, to leave the
    /// registry).
    pub(crate) fn live_conns(&self) -> Vec<Arc<Conn>> {
        self.conns
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Counts a timeout of an ask whose deadline `key` set.
    pub(crate) fn timed_out(&self, key: &'static str) {
        *self.timeouts.lock().entry(key).or_default() += 1;
    }
}

/// Bytes and frames through connections.
#[derive(Debug, Default)]
pub(crate) struct ConnTotals {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) frames_out: AtomicU64,
}

/// What one connection counts for the metrics (see [`crate::metrics`]).
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    /// Written by the connection's event loop only.
    pub(crate) bytes_in: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    /// When bytes last arrived ([`crate::metrics::stamp_at`]; 0: never).
    pub(crate) last_read: AtomicU64,
}

/// What an answer is assumed to cost before a peer's answers were seen.
const INITIAL_ANSWER_ESTIMATE: usize = 64 * 1024;

/// The most requests a peer that does not speak flow control is read ahead of its
/// answers.
pub(crate) const MAX_OWED: usize = 64;

/// How long the unread answers of a peer that speaks flow control may fill the write
/// queue, with the socket taking nothing, before its requests are no longer read.
const STALL_GRACE: Duration = Duration::from_millis(250);

/// Why reading is paused (bits of `Conn::paused`).
const PAUSED_BY_USER: u8 = 1;
/// The peer does not read the answers it asked for (and speaks no flow control).
const PAUSED_BY_ANSWERS: u8 = 2;
/// A stream's reader has not taken what it was given (see `stream`).
const PAUSED_BY_STREAM: u8 = 4;

thread_local! {
    /// On the `rpc-io-N` threads, which event loop runs there: a sender there never waits
    /// for room, and frames its own connections get are written at the end of its turn.
    static EVENT_LOOP: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the calling thread as the event loop `loop_id`.
pub(crate) fn mark_event_loop(loop_id: usize) {
    EVENT_LOOP.with(|on| on.set(Some(loop_id)));
}

/// Whether the calling thread is an event loop, or holds a connection's read turn (see
/// `read_turn`): either must never wait.
pub(crate) fn on_event_loop() -> bool {
    EVENT_LOOP.with(Cell::get).is_some() || reading_a_connection()
}

/// The length of the frame that carries a body of `body_len` bytes: a request (or answer)
/// or a one-way message.
pub(crate) fn frame_len(body_len: usize, request: bool) -> u64 {
    let header = if request {
        FrameHeader::rpc_request(0, 0)
    } else {
        FrameHeader::one_way(0)
    };
    header.frame_len() + body_len as u64
}

/// Why a connection closed, kept for the errors of later calls.
#[derive(Debug, Clone)]
pub(crate) struct CloseReason {
    pub(crate) text: String,
    pub(crate) source: Option<Arc<io::Error>>,
    /// The connection failed (a socket error, a bad frame, a peer gone silent), rather
    /// than being closed by either side: the handler hears of it (`exception_caught`),
    /// with this error when there is one (else a `Connection` error telling `text`).
    failure: Option<Option<RpcError>>,
}

impl CloseReason {
    /// A close by either side.
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            source: None,
            failure: None,
        }
    }

    /// A failure: a peer gone silent or stalled, a frame cut short.
    pub(crate) fn failure(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            source: None,
            failure: Some(None),
        }
    }

    /// A failure the peer caused, reported as `error` (a bad frame: `Decode`,
    /// `FrameTooLarge`).
    pub(crate) fn fault(error: RpcError) -> Self {
        Self {
            text: error.to_string(),
            source: None,
            failure: Some(Some(error)),
        }
    }

    /// A failure of the socket.
    pub(crate) fn io(text: impl Into<String>, err: io::Error) -> Self {
        Self {
            text: text.into(),
            source: Some(Arc::new(err)),
            failure: Some(None),
        }
    }

    /// The reason with its OS error, for logs.
    fn describe(&self) -> String {
        match &self.source {
            Some(err) => format!("{}: {err:#}", self.text),
            None => self.text.clone(),
        }
    }

    /// The [`RpcError::Connection`] for `peer` that tells this reason, `what` happened.
    /// Its text does not repeat the OS error: that is the error's `source`, which its
    /// `Display` appends once.
    fn error(&self, peer: SocketAddr, what: &str) -> RpcError {
        RpcError::Connection {
            peer: peer.to_string(),
            reason: format!("{what} ({})", self.text),
            source: self.source.clone(),
        }
    }
}

/// One connection's shared state (see the module docs).
pub(crate) struct Conn {
    /// Unique in the process; also the connection's `mio::Token`.
    id: u64,
    /// The event loop that owns the connection.
    loop_id: usize,
    peer: SocketAddr,
    max_frame: u64,
    /// Accepted by a server (rather than made by a client factory).
    inbound: bool,
    send_timeout: Duration,
    notify: Arc<dyn Notify>,
    counters: Arc<Counters>,
    open: AtomicBool,
    /// The peer ended its side: no new requests or messages, only owed answers.
    closing: AtomicBool,
    close_reason: OnceLock<CloseReason>,
    writes: WriteQueue,
    requests: Requests,
    /// Streams this side asked for, in wire order.
    streams: Streams,
    /// `rpc.io.connectionTimeout`: how long a stream's reader waits for bytes.
    connection_timeout: Option<Duration>,
    /// Stream bodies (files) queued to the peer and not yet written: each holds a file
    /// open, so a peer is read at most [`MAX_OWED`] of them ahead.
    stream_bodies: Arc<AtomicUsize>,
    next_request_id: AtomicU64,
    /// Answers owed: responders not yet used.
    owed: AtomicUsize,
    /// Why reading is paused; 0: reading.
    paused: AtomicU8,
    /// The peer speaks the rpc layer's flow control: it reads what it is sent and keeps
    /// to its windows, so its answers never pause reading.
    flow_controlled: AtomicBool,
    /// The size of this peer's answers so far (a moving average, in bytes); it starts
    /// large, so that a peer is read only a few requests ahead before its answers are
    /// seen.
    answer_estimate: AtomicUsize,
    /// State an upper layer keeps per connection.
    attachment: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Who reads the socket: the loop, or a caller waiting for its answer.
    read_turn: ReadTurn,
    /// What the loop's poller watches the socket for.
    watch: Watch,
    /// What it counts for the metrics.
    pub(crate) stats: ConnStats,
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        loop_id: usize,
        peer: SocketAddr,
        inbound: bool,
        wire: Arc<dyn Wire>,
        conf: &TransportConf,
        notify: Arc<dyn Notify>,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        let conn = Arc::new(Self {
            id,
            loop_id,
            peer,
            max_frame: conf.max_message_size(),
            inbound,
            send_timeout: conf.send_timeout(),
            notify,
            counters,
            open: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            close_reason: OnceLock::new(),
            writes: WriteQueue::new(wire, conf.max_queued_bytes(), peer.to_string()),
            requests: Requests::default(),
            streams: Streams::default(),
            connection_timeout: conf.connection_timeout(),
            stream_bodies: Arc::new(AtomicUsize::new(0)),
            next_request_id: AtomicU64::new(0),
            owed: AtomicUsize::new(0),
            paused: AtomicU8::new(0),
            flow_controlled: AtomicBool::new(false),
            answer_estimate: AtomicUsize::new(INITIAL_ANSWER_ESTIMATE),
            attachment: OnceLock::new(),
            read_turn: ReadTurn::default(),
            watch: Watch::default(),
            stats: ConnStats::default(),
        });
        conn.counters.conns.lock().insert(id, Arc::downgrade(&conn));
        conn
    }

    /// This connection's figures, as a peer of one connection.
    pub(crate) fn metrics(&self) -> PeerMetrics {
        let (bytes_out, frames_out) = self.writes.totals();
        let (ready, held) = self.writes.queued();
        PeerMetrics {
            address: self.peer,
            connections: 1,
            inbound: usize::from(self.inbound),
            bytes_in: self.stats.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            frames_in: self.stats.frames_in.load(Ordering::Relaxed),
            frames_out,
            bytes_queued: (ready + held) as u64,
            asks_in_flight: self.requests.len(),
            last_activity: since_stamp(self.stats.last_read.load(Ordering::Relaxed)),
        }
    }

    /// The env-wide counters (and log limit) of this connection's context.
    pub(crate) fn env_counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn max_frame(&self) -> u64 {
        self.max_frame
    }

    pub(crate) fn is_inbound(&self) -> bool {
        self.inbound
    }

    /// Open and not closing: new requests and messages are taken.
    pub(crate) fn is_active(&self) -> bool {
        self.is_open() && !self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn writes(&self) -> &WriteQueue {
        &self.writes
    }

    pub(crate) fn requests(&self) -> &Requests {
        &self.requests
    }

    pub(crate) fn read_turn(&self) -> &ReadTurn {
        &self.read_turn
    }

    /// A caller takes (`true`) or gives back the read turn: the loop's poller stops or
    /// starts watching the socket for bytes (see `watch`).
    pub(crate) fn set_caller_reading(&self, reading: bool) {
        self.watch.set_caller(reading);
        self.rewatch();
    }

    /// After a write: the loop's poller watches the socket for room while the write queue
    /// is blocked, and only then (see `watch`).
    pub(crate) fn rewatch_after_write(&self) {
        if self.writes.is_blocked() != self.watch.watches_writable() {
            self.rewatch();
        }
    }

    /// Brings the loop's interest in the socket up to date (see `watch`). A change the
    /// poller refuses closes the connection: its loop would no longer hear of it.
    fn rewatch(&self) {
        // `None` once closed: the descriptor may be another socket's by now.
        let Some(wire) = self.writes.wire() else {
            return;
        };
        let Some(fd) = wire.raw_fd() else {
            return;
        };
        let synced = self
            .watch
            .sync(self.id, fd, || self.writes.is_blocked(), &*self.notify);
        if let Err(err) = synced {
            self.close_with(CloseReason::io(
                "cannot be watched by its event loop's poller",
                err,
            ));
        }
    }

    /// Wakes the connection's event loop for `why`.
    pub(crate) fn wake_loop(self: &Arc<Self>, why: Wake) {
        self.notify.wake(Arc::clone(self), why);
    }

    #[cfg(test)]
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The state an upper layer keeps for this connection, made by `make` on first use;
    /// `None` if it was made as another type.
    pub(crate) fn attachment<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        let any = self.attachment.get_or_init(|| Box::new(make()));
        any.downcast_ref::<T>()
    }

    /// If the connection closed because it failed: the error to report.
    pub(crate) fn failure(&self) -> Option<RpcError> {
        let reason = self.close_reason.get()?;
        match &reason.failure {
            Some(Some(error)) => Some(error.clone()),
            Some(None) => Some(reason.error(self.peer, "closed")),
            None => None,
        }
    }

    /// The error for a call made on this connection after it closed.
    pub(crate) fn closed_error(&self) -> RpcError {
        match self.close_reason.get() {
            Some(reason) => reason.error(self.peer, "is closed"),
            None if self.closing.load(Ordering::Acquire) => {
                RpcError::connection(self.peer, "is closed (closed by the peer)")
            }
            None => RpcError::connection(self.peer, "is closed"),
        }
    }

    fn check_size(&self, header: &FrameHeader) -> Result<(), RpcError> {
        if header.frame_len() > self.max_frame {
            return Err(RpcError::FrameTooLarge {
                size: header.frame_len(),
                max: self.max_frame,
            });
        }
        Ok(())
    }

    /// The admission of a caller's frame: wait up to `rpc.io.sendTimeout` (or `until`, if
    /// sooner) for room; never wait on an event loop.
    pub(crate) fn admission(&self, until: Option<Instant>) -> Admission {
        if on_event_loop() || self.send_timeout.is_zero() {
            return Admission::Try;
        }
        let limit = Instant::now().checked_add(self.send_timeout);
        let deadline = match (limit, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Admission::Wait(deadline)
    }

    /// Sends a request; `callback` gets the answer, or the failure, exactly once. It runs
    /// on the caller's thread if the request fails before it is sent. `deadline`: the
    /// request's own, if it has one (a silent peer closes the connection only for
    /// requests without one, after `rpc.io.connectionTimeout`).
    pub(crate) fn send_rpc(
        self: &Arc<Self>,
        body: Body,
        callback: Callback,
        deadline: Option<Instant>,
        label: Option<Label>,
        admission: Admission,
    ) -> u64 {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let header = FrameHeader::rpc_request(id, body.len());
        if let Err(err) = self.check_size(&header) {
            run_callback(callback, Err(err), self.peer);
            return id;
        }
        if !self.is_active() {
            run_callback(callback, Err(self.closed_error()), self.peer);
            return id;
        }
        let outstanding = match self.requests.insert(id, callback, deadline) {
            Ok(outstanding) => outstanding,
            Err(callback) => {
                run_callback(callback, Err(self.closed_error()), self.peer);
                return id;
            }
        };
        trace!("request {id} to {} ({} bytes)", self.peer, body.len());
        let frame = Frame::new(header, body, Kind::Request).with_label(label);
        if let Err(err) = self.submit(frame, admission, outstanding > 1) {
            // A close fails what is outstanding; if the close raced ahead of this request's
            // registration it is still here, and fails now.
            if let Some(callback) = self.requests.take(id) {
                run_callback(callback, Err(err), self.peer);
            }
        }
        id
    }

    /// Sends a one-way message. `receipt`, if given, learns when it was written in full or
    /// why it never will be.
    pub(crate) fn send_one_way(
        self: &Arc<Self>,
        body: Body,
        label: Option<Label>,
        admission: Admission,
        receipt: Option<Receipt>,
    ) -> Result<(), RpcError> {
        let header = FrameHeader::one_way(body.len());
        let frame = Frame::new(header, body, Kind::OneWay)
            .with_label(label)
            .with_receipt(receipt);
        if let Err(err) = self.check_size(&header) {
            settle_all([frame], &Err(err.clone()));
            return Err(err);
        }
        if !self.is_active() {
            let err = self.closed_error();
            settle_all([frame], &Err(err.clone()));
            return Err(err);
        }
        trace!(
            "one-way message to {} ({} bytes)",
            self.peer,
            header.frame_len()
        );
        self.submit(frame, admission, false)
    }

    /// Sends a control frame (a one-way message of the upper layer's own, e.g. a window
    /// grant): never waits, never counted as a lost message.
    pub(crate) fn send_control(self: &Arc<Self>, body: Vec<u8>) -> Result<(), RpcError> {
        if !self.is_open() {
            return Err(self.closed_error());
        }
        let header = FrameHeader::one_way(body.len());
        self.check_size(&header)?;
        self.submit(
            Frame::new(header, body, Kind::Control),
            Admission::Force,
            false,
        )
    }

    /// Hands `frame` to the write queue and does what it says: wake the loop, or close
    /// the connection when the write failed.
    fn submit(
        self: &Arc<Self>,
        mut frame: Frame,
        admission: Admission,
        pipelined: bool,
    ) -> Result<(), RpcError> {
        // A large body's buffer goes back to the pool once the frame is written (or
        // dropped unwritten), wherever that happens.
        frame.return_body_to(&self.counters.buffers);
        // On the connection's own event loop (a handler answering as it reads), the loop
        // writes what its turn queued at the turn's end: no write per frame.
        let on_owner = EVENT_LOOP.with(Cell::get) == Some(self.loop_id);
        match self.writes.submit(
            frame,
            admission,
            pipelined,
            on_owner,
            &self.counters.stopping,
            || self.closed_error(),
        ) {
            Ok(After::Nothing) => {
                self.rewatch_after_write();
                Ok(())
            }
            Ok(After::WakeLoop) => {
                self.notify.wake(Arc::clone(self), Wake::Flush);
                Ok(())
            }
            Err(Submitted::Refused(err)) => Err(err),
            Err(Submitted::WriteFailed(err)) => {
                // The frame was taken; the close tells what was not written.
                self.fail_write(err);
                Ok(())
            }
        }
    }

    /// Asks the peer for stream `stream_id`; `sink` gets its bytes and its end. On `Err`
    /// the sink (if it is given back) was never told anything.
    pub(crate) fn stream(
        self: &Arc<Self>,
        stream_id: String,
        sink: Box<dyn Sink>,
        admission: Admission,
    ) -> Result<(), (RpcError, Option<Box<dyn Sink>>)> {
        let body = stream_request_body(&stream_id);
        let header = FrameHeader::stream(MessageType::StreamRequest, body.len());
        if let Err(err) = self.check_size(&header) {
            return Err((err, Some(sink)));
        }
        if !self.is_active() {
            return Err((self.closed_error(), Some(sink)));
        }
        trace!("stream request {stream_id} to {}", self.peer);
        self.streams
            .queue(stream_id, sink, || {
                self.submit(Frame::new(header, body, Kind::Request), admission, false)
            })
            .map_err(|(err, sink)| match err {
                RpcError::Connection { .. } => (self.closed_error(), sink),
                other => (other, sink),
            })
    }

    /// The next stream this side asked for: its answer came (`active`: its bytes follow).
    pub(crate) fn pop_stream(&self, active: bool) -> Option<PendingStream> {
        self.streams.pop(active)
    }

    /// The stream whose bytes were being received ended.
    pub(crate) fn stream_finished(&self) {
        self.streams.finished_active();
    }

    /// Streams outstanding, and since when some has been (for the silent-peer rule).
    pub(crate) fn streams_outstanding(&self) -> (usize, Option<Instant>) {
        self.streams.outstanding()
    }

    /// How long a stream's reader waits for bytes (`rpc.io.connectionTimeout`).
    pub(crate) fn connection_timeout(&self) -> Option<Duration> {
        self.connection_timeout
    }

    /// Answers the peer's `StreamRequest` for `stream_id`: the body, a failure, or
    /// Spark's "not found". The body is written by the event loop after the frame
    /// (see `segment`). Never refused for room, like any answer.
    pub(crate) fn respond_stream(
        self: &Arc<Self>,
        stream_id: &str,
        result: Result<Option<StreamBody>, String>,
    ) {
        let frame = match result {
            Ok(Some(body)) => {
                trace!("stream {stream_id} to {}: {} bytes", self.peer, body.len());
                let fields = stream_response_body(stream_id, body.len());
                let header = FrameHeader::stream(MessageType::StreamResponse, fields.len());
                match self.check_size(&header) {
                    Ok(()) => {
                        let frame = Frame::new(header, fields, Kind::Answer);
                        if body.is_empty() {
                            frame
                        } else {
                            let mut body = body;
                            body.counted = Some(Counted::new(&self.stream_bodies));
                            frame.with_tail(body)
                        }
                    }
                    Err(err) => self.stream_failure(stream_id, err.to_string()),
                }
            }
            Ok(None) => {
                debug!("stream {stream_id} asked by {} was not found", self.peer);
                // Spark's TransportRequestHandler says exactly this.
                self.stream_failure(stream_id, format!("Stream '{stream_id}' was not found."))
            }
            Err(text) => {
                debug!("stream {stream_id} asked by {} failed: {text}", self.peer);
                self.stream_failure(stream_id, text)
            }
        };
        if let Err(err) = self.submit(frame, Admission::Force, true) {
            debug!(
                "answer to stream {stream_id} of {} dropped: {err:#}",
                self.peer
            );
        }
        self.after_request();
    }

    /// A `StreamFailure` frame, its text cut to fit the maximum frame size.
    fn stream_failure(&self, stream_id: &str, mut text: String) -> Frame {
        let id_len = stream_id.len().min(self.max_frame as usize / 2);
        let mut id_cut = id_len;
        while !stream_id.is_char_boundary(id_cut) {
            id_cut -= 1;
        }
        let stream_id = &stream_id[..id_cut];
        let room = (self.max_frame as usize).saturating_sub(9 + 8 + stream_id.len());
        if text.len() > room {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let fields = stream_failure_body(stream_id, &text);
        let header = FrameHeader::stream(MessageType::StreamFailure, fields.len());
        Frame::new(header, fields, Kind::Answer)
    }

    /// A stream's reader holds as much as it may: the connection is no longer read.
    pub(crate) fn pause_for_stream(&self) {
        if self.paused.fetch_or(PAUSED_BY_STREAM, Ordering::AcqRel) & PAUSED_BY_STREAM == 0 {
            trace!("reading from {} pauses for a stream's reader", self.peer);
        }
    }

    /// A stream's reader took half of what it held: reading goes on.
    pub(crate) fn resume_for_stream(self: &Arc<Self>) {
        self.resume(PAUSED_BY_STREAM);
    }

    /// Answers the peer's handshake request `id` (the server side of an
    /// [`AuthBootstrap`](super::AuthBootstrap)): a response, or a failure before the
    /// connection closes. Queued before the channel cipher starts, so it goes out in
    /// plaintext; not one of the answers the connection owes.
    pub(crate) fn answer_handshake(self: &Arc<Self>, id: u64, result: Result<Vec<u8>, String>) {
        let (header, body) = match result {
            Ok(body) => (FrameHeader::rpc_response(id, body.len()), body),
            Err(text) => self.failure_frame(id, text),
        };
        if let Err(err) = self.submit(
            Frame::new(header, body, Kind::Control),
            Admission::Force,
            false,
        ) {
            debug!("answer to the handshake of {} not sent: {err:#}", self.peer);
        }
    }

    /// Answers request `id`, whose frame this side refused (above `rpc.message.maxSize`),
    /// with a failure telling `error`, just before the connection closes: the caller
    /// learns why at once. Not one of the answers the connection owes.
    pub(crate) fn refuse_request(self: &Arc<Self>, id: u64, error: &RpcError) {
        let (header, body) = self.failure_frame(id, error.to_string());
        if let Err(err) = self.submit(
            Frame::new(header, body, Kind::Control),
            Admission::Force,
            false,
        ) {
            debug!("refusal of request {id} to {} not sent: {err:#}", self.peer);
        }
    }

    /// Seals everything queued from now on with `encryptor`, the outgoing half of the
    /// channel cipher; what is queued already goes out as it is.
    pub(crate) fn start_encryption(&self, encryptor: Encryptor) {
        self.writes.start_encryption(encryptor);
    }

    /// Counts an answer owed for a request the peer sent (a responder was made).
    pub(crate) fn owe_answer(&self) {
        self.owed.fetch_add(1, Ordering::AcqRel);
    }

    /// Answers request `id` with a response or a failure. Answers are never refused for
    /// room (they are bounded by what the peer asked); a peer that does not read them
    /// stops being read, unless it speaks flow control.
    pub(crate) fn respond(self: &Arc<Self>, id: u64, result: Result<Body, String>) {
        let (header, body) = match result {
            Ok(body) => {
                let header = FrameHeader::rpc_response(id, body.len());
                match self.check_size(&header) {
                    Ok(()) => (header, body),
                    Err(err) => {
                        warn!(
                            "response to request {id} from {} not sent: {err:#}",
                            self.peer
                        );
                        let (header, text) =
                            self.failure_frame(id, format!("{RESPONSE_NOT_SENT}{err:#}"));
                        (header, text.into())
                    }
                }
            }
            Err(text) => {
                let (header, text) = self.failure_frame(id, text);
                (header, text.into())
            }
        };
        let frame = Frame::new(header, body, Kind::Answer);
        read_turn::answered_on(self);
        // Like a request sent while others wait: an answer given while others are owed is
        // left to the loop, which the answers to come find woken.
        let more_owed = self.owed.load(Ordering::Acquire) > 1;
        if let Err(err) = self.submit(frame, Admission::Force, more_owed) {
            debug!("answer to request {id} from {} dropped: {err:#}", self.peer);
        }
        let owed = self.owed.fetch_sub(1, Ordering::AcqRel) - 1;
        if !self.flow_controlled.load(Ordering::Acquire) {
            // What this peer's answers cost so far, to foresee those still owed.
            let estimate = self.answer_estimate.load(Ordering::Relaxed);
            let len = header.frame_len() as usize;
            self.answer_estimate
                .store((estimate * 7 + len) / 8, Ordering::Relaxed);
        }
        if self.answer_backlog_full() {
            self.pause_for_answers();
        } else {
            self.resume(PAUSED_BY_ANSWERS);
        }
        if owed == 0 && self.closing.load(Ordering::Acquire) {
            self.notify.wake(Arc::clone(self), Wake::Check);
        }
    }

    /// Whether the peer's requests must no longer be read until it reads its answers.
    ///
    /// A peer that does not speak flow control is read at most [`MAX_OWED`] requests
    /// ahead of its answers, and not while the answers waiting to be written, with those
    /// still owed (at the size its answers had so far), fill the write queue: a peer that
    /// sends thousands of requests at once before reading any answer gets at most
    /// `rpc.io.maxQueuedBytes` plus [`MAX_OWED`] answers queued. A peer that speaks flow
    /// control reads what it is sent (an env of this crate never stops reading it), so it
    /// is held only once its unread answers fill the queue and the socket has taken nothing
    /// for [`STALL_GRACE`]: a hostile one that said hello and reads nothing.
    pub(crate) fn answer_backlog_full(&self) -> bool {
        if self.stream_bodies.load(Ordering::Acquire) >= MAX_OWED {
            return true;
        }
        let answers = self.writes.answer_bytes();
        let limit = self.writes.limit();
        if self.flow_controlled.load(Ordering::Acquire) {
            return answers >= limit
                && self
                    .writes
                    .stalled_for(Instant::now())
                    .is_some_and(|stalled| stalled >= STALL_GRACE);
        }
        let owed = self.owed.load(Ordering::Acquire);
        let estimate = self.answer_estimate.load(Ordering::Relaxed);
        owed >= MAX_OWED || answers + owed.saturating_mul(estimate) >= limit
    }

    /// Called on the event loop's ticks: holds a peer whose answers stay unread.
    pub(crate) fn check_answer_backlog(&self) {
        if self.paused.load(Ordering::Acquire) & PAUSED_BY_ANSWERS == 0
            && self.answer_backlog_full()
        {
            self.pause_for_answers();
        }
    }

    fn pause_for_answers(&self) {
        if self.paused.fetch_or(PAUSED_BY_ANSWERS, Ordering::AcqRel) & PAUSED_BY_ANSWERS == 0 {
            debug!(
                "{} does not read its answers fast enough ({} bytes queued, {} owed); \
                 reading from it pauses",
                self.peer,
                self.writes.answer_bytes(),
                self.owed.load(Ordering::Acquire)
            );
        }
    }

    /// Called by the reader after it handed on a request: a peer is no longer read once
    /// the answers it is owed would fill the write queue (see
    /// [`answer_backlog_full`](Self::answer_backlog_full)).
    pub(crate) fn after_request(&self) {
        if self.answer_backlog_full() {
            self.pause_for_answers();
        }
    }

    fn failure_frame(&self, id: u64, mut text: String) -> (FrameHeader, Vec<u8>) {
        let room = (self.max_frame as usize)
            .saturating_sub(FrameHeader::rpc_failure(id, 0).as_bytes().len());
        if text.len() > room {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        (FrameHeader::rpc_failure(id, text.len()), text.into_bytes())
    }

    /// Forgets request `id` (timed out, abandoned); a late answer is then logged and dropped.
    pub(crate) fn take_request(&self, id: u64) -> Option<Callback> {
        self.requests.take(id)
    }

    /// Adds window for `label` (the peer granted it).
    pub(crate) fn grant(self: &Arc<Self>, label: &str, bytes: usize) {
        if self.writes.grant(label, bytes) == After::WakeLoop {
            self.notify.wake(Arc::clone(self), Wake::Flush);
        }
    }

    /// The peer speaks flow control with windows of `window` bytes per label: it is
    /// trusted to read its answers, and labels start with that window.
    pub(crate) fn set_flow_controlled(self: &Arc<Self>, window: usize) {
        self.flow_controlled.store(true, Ordering::Release);
        if self.writes.set_initial_window(window) == After::WakeLoop {
            self.notify.wake(Arc::clone(self), Wake::Flush);
        }
        if !self.answer_backlog_full() {
            self.resume(PAUSED_BY_ANSWERS);
        }
    }

    /// Pauses (`false`) or resumes (`true`) reading, as Netty's `autoRead`.
    pub(crate) fn set_auto_read(self: &Arc<Self>, read: bool) {
        if read {
            self.resume(PAUSED_BY_USER);
        } else {
            self.paused.fetch_or(PAUSED_BY_USER, Ordering::AcqRel);
        }
    }

    fn resume(self: &Arc<Self>, why: u8) {
        let before = self.paused.fetch_and(!why, Ordering::AcqRel);
        if before & why != 0 && before & !why == 0 {
            self.notify.wake(Arc::clone(self), Wake::Resume);
        }
    }

    /// Whether reading is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire) != 0
    }

    /// Called by the event loop after writing: reading resumes once the answers a peer
    /// left unread are written.
    pub(crate) fn after_flush(self: &Arc<Self>) -> bool {
        if self.paused.load(Ordering::Acquire) & PAUSED_BY_ANSWERS != 0
            && !self.answer_backlog_full()
        {
            let before = self.paused.fetch_and(!PAUSED_BY_ANSWERS, Ordering::AcqRel);
            return before == PAUSED_BY_ANSWERS;
        }
        false
    }

    /// The peer ended its side of the stream. Fails the requests it will never answer;
    /// returns whether the connection is done (nothing owed and nothing left to write).
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed_because("closed by the peer")
    }

    /// [`peer_closed`](Self::peer_closed), with `text` as the reason the outstanding
    /// requests and streams fail with.
    pub(crate) fn peer_closed_because(&self, text: &str) -> bool {
        self.closing.store(true, Ordering::Release);
        let callbacks = self.requests.close();
        if !callbacks.is_empty() {
            debug!(
                "{} closed its side with {} requests outstanding",
                self.peer,
                callbacks.len()
            );
        }
        let err = CloseReason::new(text).error(self.peer, "closed with the request outstanding");
        for callback in callbacks {
            run_callback(callback, Err(err.clone()), self.peer);
        }
        let err = CloseReason::new(text).error(self.peer, "closed with the stream outstanding");
        fail_streams(self.streams.close(), &err, self.peer);
        self.is_finished()
    }

    /// A closing connection is finished once it owes nothing and wrote everything.
    pub(crate) fn is_finished(&self) -> bool {
        self.closing.load(Ordering::Acquire)
            && self.owed.load(Ordering::Acquire) == 0
            && self.writes.is_drained()
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Answers owed for requests the peer sent.
    pub(crate) fn owed(&self) -> usize {
        self.owed.load(Ordering::Acquire)
    }

    pub(crate) fn fail_write(&self, err: io::Error) -> RpcError {
        debug!("write to {} failed: {err:#}", self.peer);
        self.close_with(CloseReason::io("write failed", err));
        self.closed_error()
    }

    /// Closes the connection from this side: fails everything outstanding at once and
    /// tells the event loop.
    pub(crate) fn close(&self, reason: &str) {
        self.close_with(CloseReason::new(reason));
    }

    /// Marks the connection closed (once), lets go of the socket (writing first what it
    /// takes at once), fails outstanding requests and unwritten frames, and tells the
    /// event loop. Returns false if it was closed already.
    pub(crate) fn close_with(&self, reason: CloseReason) -> bool {
        if !self.open.swap(false, Ordering::AcqRel) {
            return false;
        }
        let _ = self.close_reason.set(reason.clone());
        let left = self.writes.close();
        let callbacks = self.requests.close();
        let streams = self.streams.close();
        self.notify.closed(self.id);
        debug!(
            "connection {} to {} closed ({} requests outstanding): {}",
            self.id,
            self.peer,
            callbacks.len(),
            reason.describe()
        );
        let lost = left.one_way;
        if lost > 0 {
            self.counters
                .one_way_dropped
                .fetch_add(lost as u64, Ordering::Relaxed);
            warn!(
                "{lost} one-way message(s) to {} not sent: the connection closed ({})",
                self.peer,
                reason.describe()
            );
        }
        left.settle(&Err(
            reason.error(self.peer, "closed before the frame was written")
        ));
        let err = reason.error(self.peer, "closed with the request outstanding");
        for callback in callbacks {
            run_callback(callback, Err(err.clone()), self.peer);
        }
        let err = reason.error(self.peer, "closed with the stream outstanding");
        fail_streams(streams, &err, self.peer);
        true
    }

    /// The peer refused request `id` as larger than its `rpc.message.maxSize` (`error`),
    /// and closes the connection after that answer: it is closed here first, so that the
    /// caller's next call takes a new connection, then the request gets `error`.
    pub(crate) fn complete_refused(&self, id: u64, error: RpcError) {
        self.fail_and_close(
            id,
            error,
            CloseReason::new(
                "closed after the peer refused a request above its rpc.message.maxSize",
            ),
        );
    }

    /// Fails request `id` with `error` and closes the connection for `reason`, the close
    /// first: a caller that goes on at once finds the connection closed (and a pool makes
    /// a new one), never this one still open and about to close under its next request.
    pub(crate) fn fail_and_close(&self, id: u64, error: RpcError, reason: CloseReason) {
        let callback = self.requests.take(id);
        self.close_with(reason);
        match callback {
            Some(callback) => run_callback(callback, Err(error), self.peer),
            None => debug!("failure of request {id} from {}: {error:#}", self.peer),
        }
    }

    /// Hands the answer to request `id` to its callback.
    pub(crate) fn complete(&self, id: u64, result: Result<Vec<u8>, RpcError>) {
        match self.requests.take(id) {
            Some(callback) => {
                trace!("answer to request {id} from {}", self.peer);
                run_callback(callback, result, self.peer);
            }
            None => peer_warn!(
                self.counters.log_limit,
                self.peer,
                kind::UNKNOWN_REQUEST_ID,
                "ignoring the answer to request {id} from {}: it is not outstanding \
                 (timed out or removed)",
                self.peer
            ),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.counters.conns.lock().remove(&self.id);
        let totals = &self.counters.closed;
        let (bytes_out, frames_out) = self.writes.totals();
        totals.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        totals.frames_out.fetch_add(frames_out, Ordering::Relaxed);
        let stats = &self.stats;
        let bytes_in = stats.bytes_in.load(Ordering::Relaxed);
        let frames_in = stats.frames_in.load(Ordering::Relaxed);
        totals.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        totals.frames_in.fetch_add(frames_in, Ordering::Relaxed);
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("open", &self.is_open())
            .field("closing", &self.is_closing())
            .finish()
    }
}

/// Fails streams that were never answered.
fn fail_streams(streams: Vec<PendingStream>, err: &RpcError, peer: SocketAddr) {
    if !streams.is_empty() {
        debug!("{} stream(s) from {peer} fail: {err:#}", streams.len());
    }
    for mut pending in streams {
        guard(peer, "a stream callback", || pending.sink.fail(err.clone()));
    }
}

/// Runs a request's callback, containing a panic so it cannot take the thread down.
fn run_callback(callback: Callback, result: Result<Vec<u8>, RpcError>, peer: SocketAddr) {
    guard(peer, "a request callback", move || callback(result));
}

/// Runs user code (a handler method, a callback) and logs a panic instead of unwinding
/// into the event loop.
pub(crate) fn guard(peer: SocketAddr, what: &str, f: impl FnOnce()) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(f)) {
        error!(
            "{what} panicked on the connection to {peer}: {}",
            panic_message(panic.as_ref())
        );
    }
}
