//! One connection: its write queue, its table of outstanding requests, reading and
//! dispatching frames, and closing.
//!
//! A [`Conn`] is shared (`Arc`) by its event loop, which alone reads from it, and by every
//! [`TransportClient`] and [`Responder`] handle, which write to it from any thread. It is
//! written against [`Wire`], not a socket, so its logic is tested over in-memory pipes.
//!
//! Writing: a frame is written straight away by the thread that sends it when the queue
//! is empty (one `writev` of header and body, no copy of the body); what the socket does
//! not take waits in the queue for the loop's next writable event. While an event loop
//! dispatches a batch of frames it has read, writes to its own connections are queued
//! and flushed once at the end of the batch, so a burst of replies costs one syscall.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice, Read};
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use log::{debug, error, trace, warn};

use crate::error::RpcError;
use crate::frame::{FrameDecoder, FrameHeader, Message};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex};
use crate::transport::socket::{Wire, WireReader, interrupted, would_block};
use crate::transport::{Responder, RpcHandler, TransportClient};

/// What to do with the answer to one request; called exactly once.
pub(crate) type Callback = Box<dyn FnOnce(Result<Vec<u8>, RpcError>) + Send>;

/// How a connection tells its event loop that it was closed from another thread.
pub(crate) trait Notify: Send + Sync {
    /// `conn_id` was closed; the loop forgets it and reports it inactive.
    fn closed(&self, conn_id: u64);
}

/// A body this large or larger that is still missing is read from the socket straight
/// into the frame's own buffer instead of through the loop's scratch buffer.
const DIRECT_READ_THRESHOLD: usize = 32 * 1024;

/// At most this many slices go into one `writev`.
const MAX_SLICES: usize = 64;

/// Why a connection closed, kept for the errors of later calls.
#[derive(Debug, Clone)]
struct CloseReason {
    text: String,
    source: Option<Arc<io::Error>>,
}

pub(crate) struct Conn {
    id: u64,
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
}

#[derive(Default)]
struct WriteQueue {
    segments: VecDeque<Segment>,
    closed: bool,
    flush_scheduled: bool,
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
        let queue = self.writes.lock();
        queue.segments.iter().map(|s| s.len() - s.written).sum()
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
        let reason = self.close_reason.get();
        RpcError::Connection {
            peer: self.peer.to_string(),
            reason: match reason {
                Some(reason) => format!("is closed ({})", reason.text),
                None => "is closed".to_owned(),
            },
            source: reason.and_then(|r| r.source.clone()),
        }
    }

    /// The error for a request that was outstanding when the connection closed.
    fn outstanding_error(&self, reason: &CloseReason) -> RpcError {
        RpcError::Connection {
            peer: self.peer.to_string(),
            reason: format!("closed with the request outstanding ({})", reason.text),
            source: reason.source.clone(),
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
        {
            let mut requests = self.requests.lock();
            if requests.closed {
                drop(requests);
                run_callback(callback, Err(self.closed_error()), self.peer);
                return id;
            }
            requests.pending.insert(id, callback);
            requests.sent += 1;
        }
        trace!("request {id} to {} ({} bytes)", self.peer, body.len());
        if let Err(err) = self.write_frame(header, body) {
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
        self.write_frame(header, body)
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
        if let Err(err) = self.write_frame(header, body) {
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

    /// Queues a frame, writing it at once when nothing is queued before it.
    fn write_frame(self: &Arc<Self>, header: FrameHeader, body: Vec<u8>) -> Result<(), RpcError> {
        let mut queue = self.writes.lock();
        if queue.closed {
            return Err(self.closed_error());
        }
        let was_empty = queue.segments.is_empty();
        queue.segments.push_back(Segment {
            header,
            body,
            written: 0,
        });
        if !was_empty || queue.flush_scheduled {
            // Someone flushes already: the loop at the end of its batch, or on the
            // writable event that follows a full socket buffer.
            return Ok(());
        }
        if defer_flush(self) {
            queue.flush_scheduled = true;
            return Ok(());
        }
        match self.flush_locked(&mut queue) {
            Ok(()) => Ok(()),
            Err(err) => {
                drop(queue);
                let err = self.fail_write(err);
                Err(err)
            }
        }
    }

    /// Writes what is queued until the socket would block. Called by the event loop on a
    /// writable event and at the end of a batch.
    pub(crate) fn flush(&self) {
        let mut queue = self.writes.lock();
        queue.flush_scheduled = false;
        if queue.closed || queue.segments.is_empty() {
            return;
        }
        if let Err(err) = self.flush_locked(&mut queue) {
            drop(queue);
            self.fail_write(err);
        }
    }

    fn fail_write(&self, err: io::Error) -> RpcError {
        debug!("write to {} failed: {err}", self.peer);
        self.close_with(CloseReason {
            text: format!("write failed: {err}"),
            source: Some(Arc::new(err)),
        });
        self.closed_error()
    }

    fn flush_locked(&self, queue: &mut WriteQueue) -> io::Result<()> {
        while !queue.segments.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for segment in &queue.segments {
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
                        let Some(front) = queue.segments.front_mut() else {
                            break;
                        };
                        let left = front.len() - front.written;
                        if written >= left {
                            written -= left;
                            queue.segments.pop_front();
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
            if !queue.segments.is_empty() {
                let _ = self.flush_locked(&mut queue);
            }
            queue.closed = true;
            queue.segments.clear();
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
        let err = self.outstanding_error(&reason);
        for (_, callback) in pending {
            run_callback(callback, Err(err.clone()), self.peer);
        }
        true
    }

    /// Reads until the socket would block or `budget` bytes were read, handing every whole
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
        let error = RpcError::Connection {
            peer: self.peer.to_string(),
            reason: reason.text.clone(),
            source: reason.source.clone(),
        };
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

/// Defers the flush of `conn` to the end of the current batch, if this thread is its
/// event loop in the middle of one.
fn defer_flush(conn: &Arc<Conn>) -> bool {
    BATCH.with(|batch| match &mut *batch.borrow_mut() {
        Some((loop_id, conns)) if *loop_id == conn.loop_id => {
            conns.push(Arc::clone(conn));
            true
        }
        _ => false,
    })
}
