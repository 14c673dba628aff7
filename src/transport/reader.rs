//! The read side of one connection, owned by its event loop: reading, decoding, and
//! handing each whole frame on (requests and one-way messages to the [`RpcHandler`],
//! answers to the waiting callbacks).
//!
//! Reading stops while the connection is paused (`set_auto_read(false)`, or a peer that
//! does not read its answers): bytes already read wait, undecoded, until it resumes, and
//! the peer is slowed by TCP itself. It also stops at the peer's end of stream, after
//! which the connection only writes the answers it owes.

use std::io::Read;
use std::time::{Duration, Instant};

use log::{debug, trace, warn};

use crate::error::RpcError;
use crate::frame::{FrameDecoder, Message};
use crate::sync::Arc;
use crate::transport::connection::{CloseReason, Conn, guard};
use crate::transport::socket::{Wire, WireReader, interrupted, would_block};
use crate::transport::{Responder, RpcHandler, TransportClient};

/// A body this large or larger that is still missing is read from the socket straight
/// into the frame's own buffer instead of through the loop's scratch buffer.
const DIRECT_READ_THRESHOLD: usize = 32 * 1024;

/// The slowest a frame may arrive, in bytes per second, beyond `rpc.io.frameTimeout`.
pub(crate) const MIN_FRAME_RATE: u64 = 64 * 1024;

/// What became of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Everything available was read.
    Drained,
    /// The read budget ran out with bytes possibly left: read again soon.
    Budget,
    /// Reading is paused; it goes on when the connection resumes.
    Paused,
    /// The peer ended its side of the stream at a frame boundary.
    Ended,
    /// The connection is closed (an error, a bad frame, or an end of stream mid-frame).
    Closed,
}

/// The read side of one connection (see the module docs).
pub(crate) struct Reader {
    wire: Arc<dyn Wire>,
    decoder: FrameDecoder,
    /// Bytes read but not decoded: reading paused in the middle of a read.
    stash: Vec<u8>,
    /// When the connection was taken over.
    since: Instant,
    /// When the last byte arrived (or the connection was taken over).
    last_read: Instant,
    /// When the frame under way began to arrive (or reading resumed in its middle).
    frame_started: Option<Instant>,
    /// The last read stopped because reading was paused.
    was_paused: bool,
    /// Whole frames received.
    frames: u64,
}

impl Reader {
    pub(crate) fn new(wire: Arc<dyn Wire>, max_frame: u64, now: Instant) -> Self {
        Self {
            wire,
            decoder: FrameDecoder::new(max_frame),
            stash: Vec::new(),
            since: now,
            last_read: now,
            frame_started: None,
            was_paused: false,
            frames: 0,
        }
    }

    /// When the last byte arrived (or the connection was taken over).
    pub(crate) fn last_read(&self) -> Instant {
        self.last_read
    }

    /// Since when the connection has been taken over.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// Whole frames received so far.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }

    /// Whether a frame is partly received.
    pub(crate) fn in_frame(&self) -> bool {
        !self.decoder.is_idle() || !self.stash.is_empty()
    }

    /// Whether the frame under way arrives too slowly at `now`: after `timeout` from its
    /// first byte, it must have come at [`MIN_FRAME_RATE`] since (a large frame on a slow
    /// but steady link is given its time; a peer that trickles a byte now and then, however
    /// large a frame it claims, is not).
    pub(crate) fn frame_too_slow(&self, timeout: Duration, now: Instant) -> bool {
        let Some(started) = self.frame_started else {
            return false;
        };
        let Some(late) = now.saturating_duration_since(started).checked_sub(timeout) else {
            return false;
        };
        let expected = late.as_secs_f64() * MIN_FRAME_RATE as f64;
        (self.decoder.received() as f64) < expected
    }

    /// Reads until the socket would block (or, unless `drain`, a read comes back short),
    /// `budget` bytes were read, or reading pauses, handing every whole frame on. On an
    /// error or a bad frame it closes the connection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read_ready(
        &mut self,
        conn: &Arc<Conn>,
        client: &TransportClient,
        scratch: &mut [u8],
        budget: usize,
        handler: &dyn RpcHandler,
        drain: bool,
        now: Instant,
    ) -> ReadOutcome {
        let frames_before = self.frames;
        if std::mem::take(&mut self.was_paused) && self.frame_started.is_some() {
            // The frame's time ran on while this side did not read: it starts again.
            self.frame_started = Some(now);
        }
        let outcome = self.read(conn, client, scratch, budget, handler, drain, now);
        if !self.in_frame() {
            self.frame_started = None;
        } else if self.frame_started.is_none() || self.frames != frames_before {
            self.frame_started = Some(now);
        }
        self.was_paused = outcome == ReadOutcome::Paused;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        conn: &Arc<Conn>,
        client: &TransportClient,
        scratch: &mut [u8],
        budget: usize,
        handler: &dyn RpcHandler,
        drain: bool,
        now: Instant,
    ) -> ReadOutcome {
        if conn.is_paused() {
            return ReadOutcome::Paused;
        }
        if !self.stash.is_empty() {
            let stash = std::mem::take(&mut self.stash);
            if let Some(outcome) = self.decode(conn, client, handler, &stash) {
                return outcome;
            }
        }
        let mut total = 0;
        loop {
            if !conn.is_open() {
                return ReadOutcome::Closed;
            }
            if conn.is_paused() {
                return ReadOutcome::Paused;
            }
            if total >= budget {
                return ReadOutcome::Budget;
            }
            if let Some((buffer, missing)) = self.decoder.pending_body(DIRECT_READ_THRESHOLD) {
                let before = buffer.len();
                let result = WireReader(&*self.wire)
                    .take(missing as u64)
                    .read_to_end(buffer);
                let got = buffer.len() - before;
                total += got;
                if got > 0 {
                    self.last_read = now;
                    if let Some(message) = self.decoder.body_filled() {
                        self.dispatch(conn, client, handler, message);
                    }
                }
                match result {
                    Ok(_) if got < missing => return self.end_of_stream(conn),
                    Ok(_) => {}
                    Err(err) if would_block(&err) => return ReadOutcome::Drained,
                    Err(err) => return self.failed(conn, err),
                }
                continue;
            }
            match self.wire.read(scratch) {
                Ok(0) => return self.end_of_stream(conn),
                Ok(n) => {
                    total += n;
                    self.last_read = now;
                    if let Some(outcome) = self.decode(conn, client, handler, &scratch[..n]) {
                        return outcome;
                    }
                    // A read shorter than the buffer emptied the socket; new bytes raise a
                    // new edge. Only a hang-up must be read to its end now.
                    if n < scratch.len() && !drain {
                        return ReadOutcome::Drained;
                    }
                }
                Err(err) if would_block(&err) => return ReadOutcome::Drained,
                Err(err) if interrupted(&err) => {}
                Err(err) => return self.failed(conn, err),
            }
        }
    }

    /// Decodes `input`, handing on each whole frame. `Some` when reading must stop: the
    /// connection paused (the rest of `input` is kept) or a bad frame closed it.
    fn decode(
        &mut self,
        conn: &Arc<Conn>,
        client: &TransportClient,
        handler: &dyn RpcHandler,
        mut input: &[u8],
    ) -> Option<ReadOutcome> {
        while !input.is_empty() {
            match self.decoder.decode(input) {
                Ok((used, message)) => {
                    input = &input[used..];
                    if let Some(message) = message {
                        self.dispatch(conn, client, handler, message);
                        if !conn.is_open() {
                            return Some(ReadOutcome::Closed);
                        }
                        if conn.is_paused() {
                            self.stash.extend_from_slice(input);
                            return Some(ReadOutcome::Paused);
                        }
                    }
                }
                Err(err) => {
                    let err = RpcError::from(err);
                    warn!("closing the connection with {}: {err}", conn.peer());
                    conn.close_with(CloseReason::fault(err));
                    return Some(ReadOutcome::Closed);
                }
            }
        }
        None
    }

    /// The peer ended its side. A pending socket error (a keep-alive or user timeout, a
    /// reset) makes it a failure; a frame cut short closes the connection; otherwise the
    /// connection is closing and only writes what it owes.
    fn end_of_stream(&mut self, conn: &Arc<Conn>) -> ReadOutcome {
        if let Some(err) = self.wire.take_error() {
            return self.failed(conn, err);
        }
        if self.in_frame() {
            warn!(
                "connection from {} closed in the middle of a frame",
                conn.peer()
            );
            conn.close_with(CloseReason::failure(
                "closed by the peer in the middle of a frame",
            ));
            return ReadOutcome::Closed;
        }
        trace!("{} ended its side of the connection", conn.peer());
        ReadOutcome::Ended
    }

    fn failed(&mut self, conn: &Arc<Conn>, err: std::io::Error) -> ReadOutcome {
        debug!("read from {} failed: {err}", conn.peer());
        conn.close_with(CloseReason::io(format!("read failed: {err}"), err));
        ReadOutcome::Closed
    }

    fn dispatch(
        &mut self,
        conn: &Arc<Conn>,
        client: &TransportClient,
        handler: &dyn RpcHandler,
        message: Message,
    ) {
        self.frames += 1;
        match message {
            Message::RpcRequest { request_id, body } => {
                trace!(
                    "request {request_id} from {} ({} bytes)",
                    conn.peer(),
                    body.len()
                );
                let responder = Responder::new(Arc::clone(conn), request_id);
                guard(conn.peer(), "receive", || {
                    handler.receive(client, body, responder)
                });
                conn.after_request();
            }
            Message::OneWay { body } => {
                trace!(
                    "one-way message from {} ({} bytes)",
                    conn.peer(),
                    body.len()
                );
                guard(conn.peer(), "receive_one_way", || {
                    handler.receive_one_way(client, body)
                });
            }
            Message::RpcResponse { request_id, body } => conn.complete(request_id, Ok(body)),
            Message::RpcFailure { request_id, error } => {
                conn.complete(request_id, Err(RpcError::Remote { message: error }))
            }
        }
    }
}
