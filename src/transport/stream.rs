//! Streams (Spark's `StreamRequest` / `StreamResponse` / `StreamFailure`): what a server
//! sends ([`StreamBody`]), how a client receives one ([`StreamCallback`], [`StreamReader`]),
//! and the client's queue of streams asked for and not yet answered.
//!
//! # Wire and order
//!
//! A client asks with `StreamRequest(id)`; the peer answers each request, **in order**,
//! with `StreamResponse(id, byteCount)` followed by exactly `byteCount` raw bytes (not
//! counted in the frame), or with `StreamFailure(id, error)`. As in Spark's
//! `TransportResponseHandler`, answers are matched to requests by their order on the
//! connection (a FIFO of callbacks), not by id.
//!
//! # Threads and bounds
//!
//! - The **server's** `rpc-io-N` event loop reads the `StreamRequest`, calls
//!   [`RpcHandler::open_stream`](super::RpcHandler::open_stream), and writes the answer
//!   and then the body itself: a file goes from the page cache to the socket with
//!   `sendfile` (Linux, plaintext connections), or is read in pieces of 256 KiB and
//!   sealed on an encrypted one. It writes at most 4 MiB of stream bytes per turn before
//!   the loop's other connections have theirs, and waits for nothing: a socket that takes
//!   no more resumes on its writable event. The file stays open (one descriptor) until it
//!   is written.
//! - The **client's** event loop hands the bytes on as they arrive: to a
//!   [`StreamCallback`] (which must not block), or into a [`StreamReader`]'s buffer of at
//!   most `rpc.io.maxQueuedBytes` (4 MiB by default). When that buffer is full the
//!   connection is no longer read (TCP slows the server) until the reader took half of
//!   it: nothing is dropped, and a stream is never held whole in memory.
//! - The caller of [`StreamReader::read`] waits for bytes, at most
//!   `rpc.io.connectionTimeout` at a time.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::error::RpcError;
use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::{Arc, Condvar, Mutex};
use crate::transport::connection::Conn;

/// What a server sends as the body of one stream (Spark's `ManagedBuffer`): a region of
/// a file (`FileSegmentManagedBuffer`, sent with zero-copy `sendfile` where it can be) or
/// bytes in memory (`NioManagedBuffer`).
pub struct StreamBody {
    pub(crate) source: Source,
    pub(crate) len: u64,
    /// Counts the body among its connection's stream bodies queued, until it is written or
    /// dropped.
    pub(crate) counted: Option<Counted>,
}

/// One count of a counter, taken back when dropped.
pub(crate) struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub(crate) fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counter))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) enum Source {
    File { file: File, offset: u64 },
    Bytes(Vec<u8>),
}

impl StreamBody {
    /// The whole of `file`, whose length is taken now. Fails with the OS error if its
    /// metadata cannot be read, and with `InvalidInput` if it is not a regular file.
    pub fn file(file: File) -> io::Result<Self> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Self::file_segment(file, 0, meta.len()))
    }

    /// `len` bytes of `file` from `offset`. If the file turns out shorter when it is sent,
    /// the connection closes (the peer was promised `len` bytes) and the peer's stream
    /// fails.
    pub fn file_segment(file: File, offset: u64, len: u64) -> Self {
        Self {
            source: Source::File { file, offset },
            len,
            counted: None,
        }
    }

    /// Bytes in memory.
    pub fn bytes(bytes: Vec<u8>) -> Self {
        Self {
            len: bytes.len() as u64,
            source: Source::Bytes(bytes),
            counted: None,
        }
    }

    /// The body's length in bytes: the `byteCount` of the `StreamResponse`.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.source {
            Source::File { .. } => "file",
            Source::Bytes(_) => "bytes",
        };
        f.debug_struct("StreamBody")
            .field("kind", &kind)
            .field("len", &self.len)
            .finish()
    }
}

/// Receives one stream (Spark's `StreamCallback`), on the client's `rpc-io-N` event loop:
/// its methods must not block. Exactly one of `on_complete` and `on_failure` is called,
/// last. `on_data` gets the bytes in the pieces they arrive in.
///
/// To slow the server down, pause the connection with
/// [`TransportClient::set_auto_read`](super::TransportClient::set_auto_read); or use
/// [`TransportClient::stream_reader`](super::TransportClient::stream_reader), which does it
/// for you.
pub trait StreamCallback: Send + 'static {
    /// The next bytes of stream `stream_id`.
    fn on_data(&mut self, stream_id: &str, data: &[u8]);
    /// All bytes of the stream arrived.
    fn on_complete(&mut self, stream_id: &str);
    /// The stream failed: [`RpcError::Remote`] with the server's text (e.g. Spark's
    /// `"Stream '/files/x' was not found."`), or [`RpcError::Connection`] when the
    /// connection closed before the stream was whole.
    fn on_failure(&mut self, stream_id: &str, error: RpcError);
}

/// What the reader does with a stream's bytes (a [`StreamCallback`] or a
/// [`StreamReader`]'s buffer). A sink that wants no more for now pauses the connection
/// itself.
pub(crate) trait Sink: Send {
    fn data(&mut self, data: &[u8]);
    /// A piece read straight from the socket into its own buffer.
    fn chunk(&mut self, chunk: Vec<u8>) {
        self.data(&chunk);
    }
    fn complete(&mut self);
    fn fail(&mut self, error: RpcError);
}

/// A [`StreamCallback`] with its stream id, as a [`Sink`].
pub(crate) struct CallbackSink<C> {
    pub(crate) stream_id: String,
    pub(crate) callback: C,
}

impl<C: StreamCallback> Sink for CallbackSink<C> {
    fn data(&mut self, data: &[u8]) {
        self.callback.on_data(&self.stream_id, data);
    }
    fn complete(&mut self) {
        self.callback.on_complete(&self.stream_id);
    }
    fn fail(&mut self, error: RpcError) {
        self.callback.on_failure(&self.stream_id, error);
    }
}

/// A stream asked for and not yet answered.
pub(crate) struct Pending {
    pub(crate) stream_id: String,
    pub(crate) seq: u64,
    pub(crate) sink: Box<dyn Sink>,
}

#[derive(Default)]
struct Table {
    pending: VecDeque<Pending>,
    /// A stream's bytes are being received.
    active: bool,
    /// Since when some stream has been outstanding.
    since: Option<Instant>,
    next_seq: u64,
    closed: bool,
}

/// The streams one connection asked for, in wire order (see the module docs).
#[derive(Default)]
pub(crate) struct Streams {
    table: Mutex<Table>,
    /// Held while a stream is queued and its request submitted, so that the queue's order
    /// is the wire's.
    order: Mutex<()>,
}

impl Streams {
    /// Runs `submit` with the order lock held, after queueing `sink` (unless the table is
    /// closed: then `Err(sink)` comes back). If `submit` fails, the stream is taken back
    /// out (unless a close failed it meanwhile) and given back with the error.
    pub(crate) fn queue(
        &self,
        stream_id: String,
        sink: Box<dyn Sink>,
        submit: impl FnOnce() -> Result<(), RpcError>,
    ) -> Result<(), (RpcError, Option<Box<dyn Sink>>)> {
        let _order = self.order.lock();
        let seq = {
            let mut table = self.table.lock();
            if table.closed {
                drop(table);
                return Err((RpcError::connection("the peer", "is closed"), Some(sink)));
            }
            let seq = table.next_seq;
            table.next_seq += 1;
            if table.pending.is_empty() && !table.active {
                table.since = Some(Instant::now());
            }
            table.pending.push_back(Pending {
                stream_id,
                seq,
                sink,
            });
            seq
        };
        if let Err(err) = submit() {
            let mut table = self.table.lock();
            let ours = table.pending.back().is_some_and(|p| p.seq == seq);
            let sink = if ours {
                table.pending.pop_back().map(|p| p.sink)
            } else {
                None
            };
            return Err((err, sink));
        }
        Ok(())
    }

    /// The next stream asked for (its answer came); `active`: its bytes follow.
    pub(crate) fn pop(&self, active: bool) -> Option<Pending> {
        let mut table = self.table.lock();
        let pending = table.pending.pop_front();
        table.active = active && pending.is_some();
        if table.pending.is_empty() && !table.active {
            table.since = None;
        }
        pending
    }

    /// The stream whose bytes were being received ended.
    pub(crate) fn finished_active(&self) {
        let mut table = self.table.lock();
        table.active = false;
        table.since = if table.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
    }

    /// Streams outstanding (asked for, or being received), and since when some has been.
    pub(crate) fn outstanding(&self) -> (usize, Option<Instant>) {
        let table = self.table.lock();
        (table.pending.len() + usize::from(table.active), table.since)
    }

    /// Closes the table; the streams not yet answered come back, to be failed.
    pub(crate) fn close(&self) -> Vec<Pending> {
        let mut table = self.table.lock();
        table.closed = true;
        table.since = None;
        table.pending.drain(..).collect()
    }
}

/// Where a [`StreamReader`] and the event loop meet.
struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    /// Read position in the first chunk.
    at: usize,
    /// Bytes buffered and not yet read.
    bytes: usize,
    /// This stream paused the connection.
    paused: bool,
    /// How it ended, once it did.
    done: Option<Result<(), RpcError>>,
    /// The reader was dropped: bytes are thrown away.
    abandoned: bool,
}

/// Pieces are gathered into one while they make at most this many bytes together.
const GATHER: usize = 64 * 1024;

/// The [`Sink`] of a [`StreamReader`]: buffers pieces up to `limit` bytes, then pauses the
/// connection.
pub(crate) struct ReaderSink {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    limit: usize,
}

impl Sink for ReaderSink {
    fn data(&mut self, data: &[u8]) {
        self.chunk(data.to_vec());
    }

    fn chunk(&mut self, chunk: Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        let mut state = self.shared.state.lock();
        if state.abandoned {
            return;
        }
        state.bytes += chunk.len();
        match state.chunks.back_mut() {
            // Small pieces (a slow link, or a peer trickling bytes) are gathered into one,
            // so the buffer costs about its bytes, not a `Vec` per piece.
            Some(back) if back.len() + chunk.len() <= GATHER => back.extend_from_slice(&chunk),
            _ => state.chunks.push_back(chunk),
        }
        if state.bytes >= self.limit && !state.paused {
            // Set while the lock is held, so the reader that drains it sees it and resumes.
            state.paused = true;
            self.conn.pause_for_stream();
        }
        drop(state);
        self.shared.ready.notify_one();
    }

    fn complete(&mut self) {
        self.finish(Ok(()));
    }

    fn fail(&mut self, error: RpcError) {
        self.finish(Err(error));
    }
}

impl ReaderSink {
    fn finish(&mut self, outcome: Result<(), RpcError>) {
        let mut state = self.shared.state.lock();
        if state.done.is_none() {
            state.done = Some(outcome);
        }
        drop(state);
        self.shared.ready.notify_all();
    }
}

impl Drop for ReaderSink {
    /// A sink dropped without an outcome (it cannot be, but a reader must never wait for
    /// nothing) ends the stream with an error.
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        if state.done.is_none() {
            state.done = Some(Err(RpcError::connection(
                self.conn.peer(),
                "dropped the stream before it was whole",
            )));
        }
        drop(state);
        self.shared.ready.notify_all();
    }
}

/// A stream being downloaded, as a blocking [`std::io::Read`] (what
/// [`TransportClient::stream_reader`](super::TransportClient::stream_reader) and
/// [`RpcEnv::open_channel`](crate::RpcEnv::open_channel) return; Spark's
/// `ReadableByteChannel` of `openChannel`).
///
/// `read` gives the bytes as they arrive and `Ok(0)` only once the stream is whole. It
/// fails, and keeps failing, when the stream does: a missing file or any failure the
/// server reports ([`RpcError::Remote`], as `io::ErrorKind::NotFound` when the server says
/// "not found", else `Other`), the connection closing before the stream is whole
/// ([`RpcError::Connection`], `ConnectionAborted`), or no byte arriving for
/// `rpc.io.connectionTimeout` ([`RpcError::Timeout`], `TimedOut`; bytes that come later
/// are thrown away, as after a drop). A short stream never
/// looks like a whole one. The [`RpcError`] is the `io::Error`'s inner error
/// (`err.get_ref()` / [`StreamReader::error`]).
///
/// Streams asked for on one connection arrive one after another: read them in the order
/// they were opened, or from different threads. A reader that is not read while a later
/// one on the same connection is waited for stalls both, until that wait times out.
/// Dropping the reader throws the rest of its stream away (it still crosses the network).
pub struct StreamReader {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    stream_id: String,
    limit: usize,
    timeout: Option<Duration>,
    received: u64,
}

impl StreamReader {
    /// A reader and the sink the event loop fills.
    pub(crate) fn new(
        conn: Arc<Conn>,
        stream_id: String,
        limit: usize,
        timeout: Option<Duration>,
    ) -> (Self, ReaderSink) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::default(),
        });
        let sink = ReaderSink {
            shared: Arc::clone(&shared),
            conn: Arc::clone(&conn),
            limit,
        };
        (
            Self {
                shared,
                conn,
                stream_id,
                limit,
                timeout,
                received: 0,
            },
            sink,
        )
    }

    /// The stream's id.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.received
    }

    /// Whether the stream failed, and why (once it did; bytes before the failure are
    /// still read first).
    pub fn error(&self) -> Option<RpcError> {
        match &self.shared.state.lock().done {
            Some(Err(err)) => Some(err.clone()),
            _ => None,
        }
    }

    /// Bytes buffered and not yet read (for tests).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.shared.state.lock().bytes
    }

    /// Buffered pieces (for tests of what a buffer costs).
    #[cfg(test)]
    pub(crate) fn buffered_pieces(&self) -> usize {
        self.shared.state.lock().chunks.len()
    }

    /// Capacity of the buffered pieces (for tests of what a buffer costs).
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        let state = self.shared.state.lock();
        state.chunks.iter().map(Vec::capacity).sum()
    }

    fn to_io(err: RpcError) -> io::Error {
        let kind = match &err {
            RpcError::Remote { message } if message.contains("not found") => {
                io::ErrorKind::NotFound
            }
            RpcError::Connection { .. } | RpcError::EnvStopped => io::ErrorKind::ConnectionAborted,
            RpcError::Timeout { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self
            .timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let mut state = self.shared.state.lock();
        loop {
            if let Some(front) = state.chunks.front() {
                let at = state.at;
                let n = (front.len() - at).min(buf.len());
                buf[..n].copy_from_slice(&front[at..at + n]);
                if at + n == front.len() {
                    state.chunks.pop_front();
                    state.at = 0;
                } else {
                    state.at += n;
                }
                state.bytes -= n;
                let resume = state.paused && state.bytes <= self.limit / 2;
                if resume {
                    state.paused = false;
                }
                drop(state);
                if resume {
                    self.conn.resume_for_stream();
                }
                self.received += n as u64;
                return Ok(n);
            }
            match &state.done {
                Some(Ok(())) => return Ok(0),
                Some(Err(err)) => return Err(Self::to_io(err.clone())),
                None => {}
            }
            let wait = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => {
                        let err = RpcError::Timeout {
                            what: format!(
                                "stream {} from {} (no byte after {} bytes)",
                                self.stream_id,
                                self.conn.peer(),
                                self.received
                            ),
                            after: self.timeout.unwrap_or_default(),
                            key: crate::conf::keys::IO_CONNECTION_TIMEOUT,
                        };
                        // The stream failed: it keeps failing, and what still comes of it
                        // is thrown away (as if the reader were dropped).
                        state.done = Some(Err(err.clone()));
                        state.abandoned = true;
                        let resume = std::mem::take(&mut state.paused);
                        drop(state);
                        if resume {
                            self.conn.resume_for_stream();
                        }
                        return Err(Self::to_io(err));
                    }
                },
                None => Duration::from_secs(3600),
            };
            state = self.shared.ready.wait_timeout(state, wait);
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.abandoned = true;
        state.chunks.clear();
        state.bytes = 0;
        let resume = std::mem::take(&mut state.paused);
        drop(state);
        if resume {
            self.conn.resume_for_stream();
        }
    }
}

impl fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream_id", &self.stream_id)
            .field("peer", &self.conn.peer())
            .field("bytes_read", &self.received)
            .finish()
    }
}
