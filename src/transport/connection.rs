//! One connection: its write queue, its table of outstanding requests, reading and
//! dispatching frames, and closing.
//!
//! A [`Conn`] is shared (`Arc`) by its event loop, which alone reads from it, and by every
//! [`TransportClient`] and [`Responder`] handle, which write to it from any thread. It is
//! written against [`Wire`], not a socket, so its logic is tested over in-memory pipes.
//!
//! Writing. Header and body go out in one `writev`, the body never copied (measured: a
//! copy into one buffer cost a quarter of the 16 MiB echo throughput and gained nothing
//! on small frames). Who writes:
//!
//! - an isolated send is written at once by the thread that sends it, so a caller
//!   waiting for its answer pays no hand-off to another thread;
//! - a send within [`BURST`] of the previous one on the same connection, or a request
//!   sent while others are outstanding (a pipeline, whose answers come in anyway), is
//!   queued, and the event loop, woken once, writes the whole burst (or the sender does,
//!   once [`BATCH_BYTES`] pile up): a million one-way messages cost thousands of
//!   syscalls, not a million, and a window of 64 requests travels in a few segments;
//! - while one thread is inside `writev` the others only append: it takes what they
//!   queued when it is done (the lock is never held across the syscall);
//! - while an event loop dispatches a batch of frames it read, replies to its own
//!   connections are queued and flushed once at the end of the batch;
//! - what a full socket does not take waits for the loop's next writable event.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice, Read};
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use log::{debug, error, trace, warn};

use crate::error::RpcError;
use crate::frame::{FrameDecoder, FrameHeader, Message};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex};
use crate::transport::socket::{Wire, WireReader, interrupted, would_block};
use crate::transport::{Responder, RpcHandler, TransportClient};

/// What to do with the answer to one request; called exactly once.
pub(crate) type Callback = Box<dyn FnOnce(Result<Vec<u8>, RpcError>) + Send>;

/// How a connection reaches its event loop from any thread.
pub(crate) trait Notify: Send + Sync {
    /// `conn_id` was closed; the loop forgets it and reports it inactive.
    fn closed(&self, conn_id: u64);
    /// `conn` has frames queued for the loop to write.
    fn flush(&self, conn: Arc<Conn>);
}

/// A body this large or larger that is still missing is read from the socket straight
/// into the frame's own buffer instead of through the loop's scratch buffer.
const DIRECT_READ_THRESHOLD: usize = 32 * 1024;

/// At most this many slices go into one `writev`.
const MAX_SLICES: usize = 256;

/// A frame sent within this time of the previous one on the same connection is part of
/// a burst: the event loop writes the burst in one go instead of a `writev` per frame.
/// Longer than any gap between back-to-back sends, shorter than a loopback round trip, so
/// a caller waiting for each answer still writes at once.
const BURST: Duration = Duration::from_micros(10);

/// A burst writes itself (on the sending thread) once this much is queued.
const BATCH_BYTES: usize = 64 * 1024;

/// A sending thread writes at most this many batches before leaving the rest to the
/// event loop.
const MAX_SENDER_ROUNDS: usize = 4;

/// Why a connection closed, kept for the errors of later calls.
#[derive(Debug, Clone)]
struct CloseReason {
    text: String,
    source: Option<Arc<io::Error>>,
}

impl CloseReason {
    /// The [`RpcError::Connection`] for `peer` that tells this reason, `what` happened.
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
    /// The event loop that owns the connection's reads.
    loop_id: usize,
    peer: SocketAddr,
    max_frame: u64,
    wire: Box<dyn Wire>,
    notify: Arc<dyn Notify>,
    open: AtomicBool,
    close_reason: OnceLock<CloseReason>,
    writes: Mutex<WriteQueue>,
    requests: Mutex<Requests>,
    next_request_id: AtomicU64,
    /// When the last frame was sent, from [`clock_nanos`].
    last_send: AtomicU64,
}

/// The frames waiting to be written, and who is to write them.
///
/// Invariant: while `segments` is not empty, somebody will write them: the thread that
/// set `writing`, the event loop on its next writable event (`blocked`), or the event
/// loop soon (`flush_scheduled`).
#[derive(Default)]
struct WriteQueue {
    segments: VecDeque<Segment>,
    /// Bytes in `segments` not yet written.
    bytes: usize,
    closed: bool,
    /// A thread is writing, with the queue's frames taken out of it.
    writing: bool,
    /// The socket would not take more: the event loop resumes on a writable event.
    blocked: bool,
    /// The event loop will flush: at the end of its batch, or for a burst of sends.
    flush_scheduled: bool,
    /// The event loop asked for a flush while a writer was busy: the writer goes on.
    flush_requested: bool,
}

/// Who runs a writer's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// A thread that sent a frame: it hands over to the event loop after a few rounds.
    Sender,
    /// The event loop.
    Loop,
}

/// One frame waiting to be written: its header and the bytes after it.
struct Segment {
    header: FrameHeader,
    body: Vec<u8>,
    written: usize,
}

impl Segment {
    /// The parts of header and body not yet written.
    fn remaining(&self) -> (&[u8], &[u8]) {
        let header = self.header.as_bytes();
        if self.written < header.len() {
            (&header[self.written..], &self.body)
        } else {
            (&[], &self.body[self.written - header.len()..])
        }
    }

    fn len(&self) -> usize {
        self.header.as_bytes().len() + self.body.len()
    }

    fn remaining_len(&self) -> usize {
        self.len() - self.written
    }
}

#[derive(Default)]
struct Requests {
    pending: HashMap<u64, Callback>,
    /// Requests ever sent: the event loop watches it change to tell a quiet connection
    /// from one that is merely slow to answer.
    sent: u64,
    closed: bool,
}

/// What became of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Everything available was read.
    Drained,
    /// The read budget ran out with bytes possibly left: read again soon.
    Budget,
    /// The connection is closed (end of stream, an error, or a bad frame).
    Closed,
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        loop_id: usize,
        peer: SocketAddr,
        max_frame: u64,
        wire: Box<dyn Wire>,
        notify: Arc<dyn Notify>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            loop_id,
            peer,
            max_frame,
            wire,
            notify,
            open: AtomicBool::new(true),
            close_reason: OnceLock::new(),
            writes: Mutex::new(WriteQueue::default()),
            requests: Mutex::new(Requests::default()),
            next_request_id: AtomicU64::new(0),
            last_send: AtomicU64::new(0),
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn loop_id(&self) -> usize {
        self.loop_id
    }

    /// Bytes queued and not yet written.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.writes.lock().bytes
    }

    /// Writes bytes as they are, bypassing the frame encoder (tests of bad input).
    #[cfg(test)]
    pub(crate) fn write_raw_for_test(&self, bytes: Vec<u8>) {
        let written = self
            .wire
            .write_vectored(&[IoSlice::new(&bytes)])
            .expect("room for raw bytes");
        assert_eq!(written, bytes.len());
    }

    /// Requests outstanding now, and requests ever sent.
    pub(crate) fn request_stats(&self) -> (usize, u64) {
        let requests = self.requests.lock();
        (requests.pending.len(), requests.sent)
    }

    /// The error for a call made on this connection after it closed.
    pub(crate) fn closed_error(&self) -> RpcError {
        match self.close_reason.get() {
            Some(reason) => reason.error(self.peer, "is closed"),
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

    /// Sends a request; `callback` gets the answer, or the failure, exactly once. It runs
    /// on the caller's thread if the request fails before it is sent.
    pub(crate) fn send_rpc(self: &Arc<Self>, body: Vec<u8>, callback: Callback) -> u64 {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let header = FrameHeader::rpc_request(id, body.len());
        if let Err(err) = self.check_size(&header) {
            run_callback(callback, Err(err), self.peer);
            return id;
        }
        let pipelined = {
            let mut requests = self.requests.lock();
            if requests.closed {
                drop(requests);
                run_callback(callback, Err(self.closed_error()), self.peer);
                return id;
            }
            requests.pending.insert(id, callback);
            requests.sent += 1;
            requests.pending.len() > 1
        };
        trace!("request {id} to {} ({} bytes)", self.peer, body.len());
        if let Err(err) = self.write_frame(header, body, pipelined) {
            // Closing fails what is outstanding; if the close raced ahead of this request's
            // registration it is still here, and fails now.
            if let Some(callback) = self.take_request(id) {
                run_callback(callback, Err(err), self.peer);
            }
        }
        id
    }

    /// Sends a one-way message.
    pub(crate) fn send_one_way(self: &Arc<Self>, body: Vec<u8>) -> Result<(), RpcError> {
        let header = FrameHeader::one_way(body.len());
        self.check_size(&header)?;
        trace!("one-way message to {} ({} bytes)", self.peer, body.len());
        self.write_frame(header, body, false)
    }

    /// Answers request `id` with a response or a failure.
    pub(crate) fn respond(self: &Arc<Self>, id: u64, result: Result<Vec<u8>, String>) {
        let (header, body) = match result {
            Ok(body) => {
                let header = FrameHeader::rpc_response(id, body.len());
                match self.check_size(&header) {
                    Ok(()) => (header, body),
                    Err(err) => {
                        warn!(
                            "response to request {id} from {} not sent: {err}",
                            self.peer
                        );
                        self.failure_frame(id, format!("the response could not be sent: {err}"))
                    }
                }
            }
            Err(text) => self.failure_frame(id, text),
        };
        if let Err(err) = self.write_frame(header, body, false) {
            debug!("answer to request {id} from {} dropped: {err}", self.peer);
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
        self.requests.lock().pending.remove(&id)
    }

    /// Queues a frame and sees that somebody writes it.
    ///
    /// Who writes: if a writer is busy, it takes the frame with the rest; on an event
    /// loop in the middle of a batch, the loop at the batch's end; in a burst of sends
    /// (this one within [`BURST`] of the previous, or `pipelined`: a request sent while
    /// others wait for answers) the event loop, woken once for the whole burst, unless
    /// [`BATCH_BYTES`] have piled up; otherwise this thread, at once.
    fn write_frame(
        self: &Arc<Self>,
        header: FrameHeader,
        body: Vec<u8>,
        pipelined: bool,
    ) -> Result<(), RpcError> {
        let now = clock_nanos();
        let previous = self.last_send.swap(now, Ordering::Relaxed);
        let mut queue = self.writes.lock();
        if queue.closed {
            return Err(self.closed_error());
        }
        let segment = Segment {
            header,
            body,
            written: 0,
        };
        queue.bytes += segment.len();
        queue.segments.push_back(segment);
        if queue.writing || queue.blocked {
            // The busy writer, or the loop on the next writable event, takes it.
            return Ok(());
        }
        if !queue.flush_scheduled && defer_flush(self) {
            queue.flush_scheduled = true;
            return Ok(());
        }
        let burst = pipelined || now.saturating_sub(previous) < BURST.as_nanos() as u64;
        if queue.bytes < BATCH_BYTES && (queue.flush_scheduled || burst) {
            if !queue.flush_scheduled {
                queue.flush_scheduled = true;
                drop(queue);
                self.notify.flush(Arc::clone(self));
            }
            return Ok(());
        }
        queue.writing = true;
        drop(queue);
        self.write_out(Writer::Sender)
    }

    /// Writes what is queued until the socket would block. Called by the event loop on a
    /// writable event, at the end of a batch, and when a burst asked it to.
    pub(crate) fn flush(self: &Arc<Self>) {
        let mut queue = self.writes.lock();
        queue.flush_scheduled = false;
        queue.blocked = false;
        if queue.writing {
            // Another thread is inside `writev`: it goes on instead of stopping.
            queue.flush_requested = true;
            return;
        }
        if queue.closed || queue.segments.is_empty() {
            return;
        }
        queue.writing = true;
        drop(queue);
        let _ = self.write_out(Writer::Loop);
    }

    /// The writer's loop: takes everything queued, writes it without holding the lock (so
    /// other senders only append), and goes on while more arrives. The caller set
    /// `writing`; this clears it.
    fn write_out(self: &Arc<Self>, writer: Writer) -> Result<(), RpcError> {
        let mut batch = VecDeque::new();
        let mut rounds = 0;
        loop {
            {
                let mut queue = self.writes.lock();
                if queue.closed || queue.segments.is_empty() {
                    queue.writing = false;
                    queue.flush_requested = false;
                    return Ok(());
                }
                if writer == Writer::Sender && rounds == MAX_SENDER_ROUNDS {
                    // Enough of this caller's time: the event loop writes the rest.
                    queue.writing = false;
                    if !queue.flush_scheduled {
                        queue.flush_scheduled = true;
                        drop(queue);
                        self.notify.flush(Arc::clone(self));
                    }
                    return Ok(());
                }
                std::mem::swap(&mut batch, &mut queue.segments);
                queue.bytes = 0;
                queue.flush_requested = false;
            }
            rounds += 1;
            let result = self.write_segments(&mut batch);
            let mut queue = self.writes.lock();
            if queue.closed {
                // Closed while writing: what is left goes nowhere.
                queue.writing = false;
                return Ok(());
            }
            match result {
                Ok(()) if batch.is_empty() => {}
                Ok(()) => {
                    // The socket is full: what is left goes back in front of what came
                    // meanwhile, and the loop resumes on the writable event.
                    queue.bytes += batch.iter().map(Segment::remaining_len).sum::<usize>();
                    batch.extend(queue.segments.drain(..));
                    std::mem::swap(&mut batch, &mut queue.segments);
                    if queue.flush_requested {
                        // A writable event came while writing: try again now.
                        continue;
                    }
                    queue.writing = false;
                    queue.blocked = true;
                    return Ok(());
                }
                Err(err) => {
                    queue.writing = false;
                    drop(queue);
                    return Err(self.fail_write(err));
                }
            }
        }
    }

    /// Writes `batch` until it is empty or the socket would block, popping what was
    /// written. Called without the queue's lock.
    fn write_segments(&self, batch: &mut VecDeque<Segment>) -> io::Result<()> {
        while !batch.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for segment in batch.iter() {
                    if count + 2 > MAX_SLICES {
                        break;
                    }
                    let (header, body) = segment.remaining();
                    for part in [header, body] {
                        if !part.is_empty() {
                            slices[count] = IoSlice::new(part);
                            count += 1;
                        }
                    }
                }
                self.wire.write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    trace!("wrote {written} bytes to {}", self.peer);
                    while written > 0 {
                        let Some(front) = batch.front_mut() else {
                            break;
                        };
                        let left = front.remaining_len();
                        if written >= left {
                            written -= left;
                            batch.pop_front();
                        } else {
                            front.written += written;
                            written = 0;
                        }
                    }
                }
                Err(err) if would_block(&err) => return Ok(()),
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn fail_write(&self, err: io::Error) -> RpcError {
        debug!("write to {} failed: {err}", self.peer);
        self.close_with(CloseReason {
            text: format!("write failed: {err}"),
            source: Some(Arc::new(err)),
        });
        self.closed_error()
    }

    /// Closes the connection from this side: fails everything outstanding at once and
    /// tells the event loop.
    pub(crate) fn close(&self, reason: &str) {
        self.close_with(CloseReason {
            text: reason.to_owned(),
            source: None,
        });
    }

    /// Marks the connection closed (once), drops queued writes, shuts the socket, fails
    /// outstanding requests and tells the event loop. Returns false if it was closed already.
    fn close_with(&self, reason: CloseReason) -> bool {
        if !self.open.swap(false, Ordering::AcqRel) {
            return false;
        }
        let _ = self.close_reason.set(reason.clone());
        {
            let mut queue = self.writes.lock();
            // What was already answered goes out if the socket takes it now: a reply given
            // in the same batch as the peer's hang-up (or a bad frame after a good one) is
            // not lost. Best effort, never waiting.
            if !queue.writing && !queue.segments.is_empty() {
                let mut batch = std::mem::take(&mut queue.segments);
                let _ = self.write_segments(&mut batch);
            }
            queue.closed = true;
            queue.segments.clear();
            queue.bytes = 0;
        }
        let pending = {
            let mut requests = self.requests.lock();
            requests.closed = true;
            std::mem::take(&mut requests.pending)
        };
        self.wire.shutdown();
        self.notify.closed(self.id);
        if pending.is_empty() {
            debug!(
                "connection {} to {} closed: {}",
                self.id, self.peer, reason.text
            );
        } else {
            debug!(
                "connection {} to {} closed with {} requests outstanding: {}",
                self.id,
                self.peer,
                pending.len(),
                reason.text
            );
        }
        let err = reason.error(self.peer, "closed with the request outstanding");
        for (_, callback) in pending {
            run_callback(callback, Err(err.clone()), self.peer);
        }
        true
    }

    /// Reads until the socket would block (or, unless `drain`, a read comes back short) or
    /// `budget` bytes were read, handing every whole
    /// frame to `handler` (requests, one-way messages) or to the waiting callback
    /// (responses). On end of stream, an error or a bad frame it closes the connection and
    /// returns [`ReadOutcome::Closed`].
    pub(crate) fn read_ready(
        self: &Arc<Self>,
        client: &TransportClient,
        decoder: &mut FrameDecoder,
        scratch: &mut [u8],
        budget: usize,
        handler: &dyn RpcHandler,
        drain: bool,
    ) -> ReadOutcome {
        let mut total = 0;
        while self.is_open() {
            if total >= budget {
                return ReadOutcome::Budget;
            }
            if let Some((buffer, missing)) = decoder.pending_body(DIRECT_READ_THRESHOLD) {
                let before = buffer.len();
                let result = WireReader(&*self.wire)
                    .take(missing as u64)
                    .read_to_end(buffer);
                let got = buffer.len() - before;
                total += got;
                if got > 0 {
                    if let Some(message) = decoder.body_filled() {
                        self.dispatch(client, handler, message);
                    }
                }
                match result {
                    Ok(_) if got < missing => return self.read_eof(decoder),
                    Ok(_) => {}
                    Err(err) if would_block(&err) => return ReadOutcome::Drained,
                    Err(err) => return self.read_failed(client, handler, err),
                }
                continue;
            }
            match self.wire.read(scratch) {
                Ok(0) => return self.read_eof(decoder),
                Ok(n) => {
                    total += n;
                    // A read shorter than the buffer emptied the socket; new bytes raise a
                    // new edge. Only a hang-up must be read to its end now.
                    let drained = n < scratch.len() && !drain;
                    let mut input = &scratch[..n];
                    while !input.is_empty() {
                        match decoder.decode(input) {
                            Ok((used, message)) => {
                                input = &input[used..];
                                if let Some(message) = message {
                                    self.dispatch(client, handler, message);
                                }
                            }
                            Err(err) => {
                                let err = RpcError::from(err);
                                warn!("closing connection from {}: {err}", self.peer);
                                guard(self.peer, "exception_caught", || {
                                    handler.exception_caught(&err, client)
                                });
                                self.close_with(CloseReason {
                                    text: err.to_string(),
                                    source: None,
                                });
                                return ReadOutcome::Closed;
                            }
                        }
                    }
                    if drained {
                        return ReadOutcome::Drained;
                    }
                }
                Err(err) if would_block(&err) => return ReadOutcome::Drained,
                Err(err) if interrupted(&err) => {}
                Err(err) => return self.read_failed(client, handler, err),
            }
        }
        ReadOutcome::Closed
    }

    fn read_eof(&self, decoder: &FrameDecoder) -> ReadOutcome {
        let text = if decoder.is_idle() {
            "closed by the peer"
        } else {
            warn!(
                "connection from {} closed in the middle of a frame",
                self.peer
            );
            "closed by the peer in the middle of a frame"
        };
        self.close_with(CloseReason {
            text: text.to_owned(),
            source: None,
        });
        ReadOutcome::Closed
    }

    fn read_failed(
        &self,
        client: &TransportClient,
        handler: &dyn RpcHandler,
        err: io::Error,
    ) -> ReadOutcome {
        debug!("read from {} failed: {err}", self.peer);
        let reason = CloseReason {
            text: format!("read failed: {err}"),
            source: Some(Arc::new(err)),
        };
        let error = reason.error(self.peer, "closed");
        guard(self.peer, "exception_caught", || {
            handler.exception_caught(&error, client)
        });
        self.close_with(reason);
        ReadOutcome::Closed
    }

    fn dispatch(
        self: &Arc<Self>,
        client: &TransportClient,
        handler: &dyn RpcHandler,
        message: Message,
    ) {
        match message {
            Message::RpcRequest { request_id, body } => {
                trace!(
                    "request {request_id} from {} ({} bytes)",
                    self.peer,
                    body.len()
                );
                let responder = Responder::new(Arc::clone(self), request_id);
                guard(self.peer, "receive", || {
                    handler.receive(client, body, responder)
                });
            }
            Message::OneWay { body } => {
                trace!("one-way message from {} ({} bytes)", self.peer, body.len());
                guard(self.peer, "receive_one_way", || {
                    handler.receive_one_way(client, body)
                });
            }
            Message::RpcResponse { request_id, body } => self.complete(request_id, Ok(body)),
            Message::RpcFailure { request_id, error } => {
                self.complete(request_id, Err(RpcError::Remote { message: error }))
            }
        }
    }

    fn complete(&self, id: u64, result: Result<Vec<u8>, RpcError>) {
        match self.take_request(id) {
            Some(callback) => {
                trace!("answer to request {id} from {}", self.peer);
                run_callback(callback, result, self.peer);
            }
            None => warn!(
                "ignoring the answer to request {id} from {}: it is not outstanding \
                 (timed out or removed)",
                self.peer
            ),
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("open", &self.is_open())
            .finish()
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
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".to_owned());
        error!("{what} panicked on the connection to {peer}: {text}");
    }
}

thread_local! {
    /// Set while an event loop dispatches a batch: connections of that loop whose first
    /// queued frame waits for the batch's end to be flushed.
    static BATCH: RefCell<Option<(usize, Vec<Arc<Conn>>)>> = const { RefCell::new(None) };
}

/// Starts a batch on the event loop `loop_id`'s thread; `spare` is reused storage.
pub(crate) fn begin_batch(loop_id: usize, mut spare: Vec<Arc<Conn>>) {
    spare.clear();
    BATCH.with(|batch| *batch.borrow_mut() = Some((loop_id, spare)));
}

/// Ends the batch: the connections to flush now.
pub(crate) fn end_batch() -> Vec<Arc<Conn>> {
    BATCH.with(|batch| {
        batch
            .borrow_mut()
            .take()
            .map(|(_, conns)| conns)
            .unwrap_or_default()
    })
}

/// The `loop_id` of a batch that takes the connections of every loop: a thread that is
/// no event loop (one running endpoint code) defers its writes to its own batch's end.
pub(crate) const ANY_LOOP: usize = usize::MAX;

/// Defers the flush of `conn` to the end of the current batch, if this thread is its
/// event loop (or a thread batching for any loop) in the middle of one.
fn defer_flush(conn: &Arc<Conn>) -> bool {
    BATCH.with(|batch| match &mut *batch.borrow_mut() {
        Some((loop_id, conns)) if *loop_id == conn.loop_id || *loop_id == ANY_LOOP => {
            conns.push(Arc::clone(conn));
            true
        }
        _ => false,
    })
}

/// Nanoseconds since the first call in this process: a cheap clock for telling bursts of
/// sends from isolated ones. Never 0 after the first call, so 0 means "never sent".
fn clock_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    (epoch.elapsed().as_nanos() as u64).saturating_add(1)
}
