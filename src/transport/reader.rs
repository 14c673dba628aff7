//! The read side of one connection, run by whoever holds its read turn (its event loop,
//! or a caller waiting for its answer: see `read_turn`): reading, decoding, and
//! handing each whole frame on (requests and one-way messages to the [`RpcHandler`],
//! answers to the waiting callbacks).
//!
//! Reading stops while the connection is paused (`set_auto_read(false)`, or a peer that
//! does not read its answers): bytes already read wait, undecoded, until it resumes, and
//! the peer is slowed by TCP itself. It also stops at the peer's end of stream, after
//! which the connection only writes the answers it owes.
//!
//! On a connection a server accepted with an [`AuthBootstrap`], the reader runs the
//! server side of the handshake on the first frame, and gives nothing to the handler
//! (not even `channel_active`) before the peer has shown that it holds the keys: on an
//! encrypted connection the handler hears of it with the first frame that decrypts; on
//! an authenticated plaintext one, once the peer confirmed the handshake. On an encrypted connection every byte
//! read goes through the channel cipher's [`Decryptor`] first; the bytes that follow the
//! handshake in the same read are already ciphertext.

use std::io::Read;
use std::time::{Duration, Instant};

use log::{debug, trace};

use crate::auth::{self, ChannelRandom, Decryptor, OsRandom, SessionKeys};
use crate::error::{RESPONSE_NOT_SENT, RpcError};
use crate::frame::{FrameDecoder, FrameError, Item, Message};
use crate::log_limit::{kind, peer_warn};
use crate::metrics::stamp_at;
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::transport::auth::{AuthBootstrap, MAX_HANDSHAKE_FRAME, auth_error};
use crate::transport::connection::{CloseReason, Conn, guard};
use crate::transport::socket::{Wire, WireReader, interrupted, would_block};
use crate::transport::stream::Sink;
use crate::transport::{Responder, RpcHandler, TransportClient};

/// A body this large or larger that is still missing is read from the socket straight
/// into the frame's own buffer instead of through the loop's scratch buffer.
const DIRECT_READ_THRESHOLD: usize = 32 * 1024;

/// The slowest a frame may arrive, in bytes per second, beyond `rpc.io.frameTimeout`.
pub(crate) const MIN_FRAME_RATE: u64 = 64 * 1024;

/// Reads from `wire` into `room` until it is full, the peer ended the stream, or a read
/// failed (`WouldBlock` included), as `read_to_end` of `room.len()` bytes would: the
/// bytes read, and `Ok` when the room is full or the stream ended (fewer bytes then).
fn read_into(wire: &dyn Wire, room: &mut [u8]) -> (usize, std::io::Result<()>) {
    let mut got = 0;
    while got < room.len() {
        match wire.read(&mut room[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if interrupted(&err) => {}
            Err(err) => return (got, Err(err)),
        }
    }
    (got, Ok(()))
}

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
    /// The peer failed to authenticate, or sent a request above the maximum frame size:
    /// it was answered with a failure, and the connection closes once that is written
    /// (with [`Reader::take_refusal`] as the failure to report, if any).
    Refused,
}

/// What decoding a run of bytes came to.
enum Decoded {
    /// All of it was used.
    Done,
    /// Reading must stop (see [`ReadOutcome`]).
    Stop(ReadOutcome),
    /// The handshake started the channel cipher after this many bytes: the rest is
    /// ciphertext.
    Encrypted(usize),
}

/// What the server side of the handshake came to.
enum Handshake {
    /// Authenticated; the connection goes on in plaintext.
    Plain,
    /// Authenticated; what follows is ciphertext.
    Encrypted,
    /// Refused with a failure answer.
    Refused,
    /// Closed at once.
    Closed,
}

/// A stream's bytes are read from the socket straight into pieces of at most this size,
/// handed to its reader without a copy.
const STREAM_PIECE: usize = 256 * 1024;

/// The stream whose raw bytes are arriving (after its `StreamResponse`).
struct Active {
    stream_id: String,
    /// `None` for a stream nobody asked for: its bytes are dropped.
    sink: Option<Box<dyn Sink>>,
}

/// Plaintext buffers larger than this are not kept between reads.
const PLAIN_KEEP: usize = 256 * 1024;

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
    /// Bytes read from the socket so far (published to the connection's stats after
    /// each turn).
    bytes_read: u64,
    /// When the frame under way began to arrive (or reading resumed in its middle).
    frame_started: Option<Instant>,
    /// The last read stopped because reading was paused.
    was_paused: bool,
    /// Whole frames received.
    frames: u64,
    /// The peer must authenticate first (a server's connection with a bootstrap).
    auth: Option<AuthBootstrap>,
    /// The largest frame once the peer authenticated.
    max_frame: u64,
    /// The incoming half of the channel cipher, once the connection is encrypted.
    decryptor: Option<Box<Decryptor>>,
    /// The plaintext of the last bytes read, on an encrypted connection.
    plain: Vec<u8>,
    /// Whole frames received when the handshake ended (on a server's connection, or an
    /// encrypted one): a first frame after it that does not decode most likely means the
    /// two sides' encryption settings differ (AES-CTR has no integrity check to say so).
    frames_at_handshake: Option<u64>,
    /// The handler was told that the connection is active.
    active: bool,
    /// Why a request was refused (a frame above the maximum), to report once the
    /// refusal is written and the connection closes.
    refusal: Option<RpcError>,
    /// Bytes of a refused request still to read and drop (so that its sender, still
    /// writing it, reads the refusal rather than a reset), and how many were dropped.
    discard: u64,
    discarded: u64,
    /// The stream whose bytes are arriving.
    stream: Option<Active>,
    /// Authenticated without encryption: the keys of the handshake the server answered,
    /// whose confirmation the peer's next frame must carry (see
    /// [`SessionKeys::confirmation`]). The peer counts as unauthenticated until it does.
    unconfirmed: Option<SessionKeys>,
    /// An encrypted connection a server accepted, whose peer has not yet sent a frame
    /// that decrypts: it must, within this long of connecting (the handshake's timeout),
    /// or a peer that replayed a challenge it saw could hold the connection open forever.
    awaiting_first_frame: Option<Duration>,
}

/// The header bytes of a refused request that the decoder reads: length, type, id.
const REFUSED_HEADER_LEN: u64 = 8 + 1 + 8;

/// The largest rest of a refused request that is read and dropped before the connection
/// closes; the rest of a larger claim is not waited for.
const MAX_DISCARD: u64 = 1 << 30;

impl Reader {
    /// A reader of `wire`: with `decryptor`, of an encrypted connection; with `auth`, of a
    /// connection whose peer must authenticate first.
    pub(crate) fn new(
        wire: Arc<dyn Wire>,
        max_frame: u64,
        now: Instant,
        decryptor: Option<Box<Decryptor>>,
        auth: Option<AuthBootstrap>,
    ) -> Self {
        let first_max = if auth.is_some() {
            max_frame.min(MAX_HANDSHAKE_FRAME)
        } else {
            max_frame
        };
        let mut decoder = FrameDecoder::new(first_max);
        // Before the handshake nothing is answered: a frame above the limit is refused at
        // its length field.
        decoder.set_read_refused_ids(auth.is_none());
        Self {
            wire,
            decoder,
            stash: Vec::new(),
            since: now,
            last_read: now,
            bytes_read: 0,
            frame_started: None,
            was_paused: false,
            frames: 0,
            frames_at_handshake: decryptor.as_ref().map(|_| 0),
            auth,
            max_frame,
            decryptor,
            plain: Vec::new(),
            active: false,
            refusal: None,
            discard: 0,
            discarded: 0,
            stream: None,
            unconfirmed: None,
            awaiting_first_frame: None,
        }
    }

    /// The failure that made this reader refuse the peer's request (see
    /// [`ReadOutcome::Refused`]), if that is why it stopped.
    pub(crate) fn take_refusal(&mut self) -> Option<RpcError> {
        self.refusal.take()
    }

    /// Whether the peer has yet to authenticate; `Some` gives how long it may take.
    pub(crate) fn awaiting_auth(&self) -> Option<Duration> {
        self.auth
            .as_ref()
            .map(AuthBootstrap::timeout)
            .or(self.awaiting_first_frame)
    }

    /// Tells the handler that the connection is active, unless the peer must
    /// authenticate first (then the handshake does, once it succeeds).
    pub(crate) fn activate(&mut self, client: &TransportClient, handler: &dyn RpcHandler) {
        if self.auth.is_some() || self.active {
            return;
        }
        self.active = true;
        self.awaiting_first_frame = None;
        guard(client.remote_address(), "channel_active", || {
            handler.channel_active(client)
        });
    }

    /// Whether the handler was told that the connection is active (and so must hear when
    /// it ends).
    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    /// The socket it reads.
    pub(crate) fn wire(&self) -> &Arc<dyn Wire> {
        &self.wire
    }

    /// Whether a stream's bytes are arriving (or are next).
    pub(crate) fn streaming(&self) -> bool {
        self.stream.is_some() || self.decoder.stream_remaining().is_some()
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

    /// Whether a frame (or an encrypted envelope) is partly received.
    pub(crate) fn in_frame(&self) -> bool {
        self.discard > 0
            || !self.decoder.is_idle()
            || !self.stash.is_empty()
            || self
                .decryptor
                .as_ref()
                .is_some_and(|decryptor| decryptor.is_mid_envelope())
    }

    /// Whether the frame under way arrives too slowly at `now`: after `timeout` from its
    /// first byte, it must have come at [`MIN_FRAME_RATE`] since (a large frame on a slow
    /// but steady link is given its time; a peer that trickles a byte now and then, however
    /// large a frame it claims, is not). The body of a stream this side asked for is not
    /// held to a rate (a stall still closes the connection); one nobody asked for is.
    pub(crate) fn frame_too_slow(&self, timeout: Duration, now: Instant) -> bool {
        let Some(started) = self.frame_started else {
            return false;
        };
        if self.discard == 0
            && self
                .stream
                .as_ref()
                .is_some_and(|active| active.sink.is_some())
        {
            // A stream this side asked for may be as large as a file: on a slow but steady
            // link it takes its time (only a stall closes the connection).
            return false;
        }
        let Some(late) = now.saturating_duration_since(started).checked_sub(timeout) else {
            return false;
        };
        let expected = late.as_secs_f64() * MIN_FRAME_RATE as f64;
        let received = if self.discard > 0 {
            self.discarded
        } else {
            self.decoder.received()
        };
        (received as f64) < expected
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
        if !self.decoder.has_pool() {
            // Large bodies are read into the context's pooled buffers.
            self.decoder
                .set_pool(Arc::clone(&conn.env_counters().buffers));
        }
        let frames_before = self.frames;
        let bytes_before = self.bytes_read;
        if std::mem::take(&mut self.was_paused) {
            // The peer's silence is counted from when this side reads again.
            self.last_read = now;
            if self.frame_started.is_some() {
                // The frame's time ran on while this side did not read: it starts again.
                self.frame_started = Some(now);
            }
        }
        let outcome = self.read(conn, client, scratch, budget, handler, drain, now);
        if self.bytes_read != bytes_before {
            // Only this thread writes them: stores, not read-modify-writes.
            let stats = &conn.stats;
            stats.bytes_in.store(self.bytes_read, Ordering::Relaxed);
            stats.frames_in.store(self.frames, Ordering::Relaxed);
            stats.last_read.store(stamp_at(now), Ordering::Relaxed);
        }
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
            if let Some(outcome) = self.ingest(conn, client, handler, &stash, true) {
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
            let plain = self.decryptor.is_none() && self.auth.is_none();
            if let Some(remaining) = self.decoder.stream_remaining().filter(|_| plain) {
                if remaining >= DIRECT_READ_THRESHOLD as u64 {
                    // A stream's bytes go from the socket into a piece its reader keeps.
                    let want = remaining.min(STREAM_PIECE as u64) as usize;
                    let mut piece = Vec::with_capacity(want);
                    let result = WireReader(&*self.wire)
                        .take(want as u64)
                        .read_to_end(&mut piece);
                    let got = piece.len();
                    total += got;
                    self.bytes_read += got as u64;
                    if got < piece.capacity() / 2 {
                        // A reader holds up to `rpc.io.maxQueuedBytes` of pieces, counted
                        // by their bytes: a piece must not keep the room of a full one
                        // (a slow link delivers a few KiB per read).
                        piece.shrink_to_fit();
                    }
                    if got > 0 {
                        self.last_read = now;
                        let end = self.decoder.stream_consumed(got);
                        self.stream_data(conn, StreamPiece::Owned(piece), end);
                    }
                    match result {
                        Ok(_) if got < want => return self.end_of_stream(conn),
                        Ok(_) => {}
                        Err(err) if would_block(&err) => return ReadOutcome::Drained,
                        Err(err) if interrupted(&err) => {}
                        Err(err) => return self.failed(conn, err),
                    }
                    continue;
                }
            }
            let direct = if plain {
                self.decoder.pending_body(DIRECT_READ_THRESHOLD)
            } else {
                None
            };
            if let Some(room) = direct {
                // Read straight into the body's buffer: a pooled one holds old bytes,
                // overwritten here rather than zeroed first.
                let missing = room.len();
                let (got, result) = read_into(&*self.wire, room);
                total += got;
                self.bytes_read += got as u64;
                if got > 0 {
                    self.last_read = now;
                    match self.decoder.body_filled(got) {
                        Ok(Some(message)) => self.dispatch(conn, client, handler, message),
                        Ok(None) => {}
                        Err(err) => {
                            let err = RpcError::from(err);
                            peer_warn!(
                                conn.env_counters().log_limit,
                                conn.peer(),
                                kind::BAD_FRAME,
                                "closing the connection with {}: {err:#}",
                                conn.peer()
                            );
                            conn.close_with(CloseReason::fault(err));
                            return ReadOutcome::Closed;
                        }
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
                    self.bytes_read += n as u64;
                    self.last_read = now;
                    let plain = self.decryptor.is_none();
                    if let Some(outcome) = self.ingest(conn, client, handler, &scratch[..n], plain)
                    {
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

    /// Hands on what `input` holds: plaintext (`plain`) or bytes of the channel cipher.
    /// `Some` when reading must stop (see [`Self::decode`]).
    fn ingest(
        &mut self,
        conn: &Arc<Conn>,
        client: &TransportClient,
        handler: &dyn RpcHandler,
        mut input: &[u8],
        plain: bool,
    ) -> Option<ReadOutcome> {
        if plain {
            match self.decode(conn, client, handler, input) {
                Decoded::Done => return None,
                Decoded::Stop(outcome) => return Some(outcome),
                Decoded::Encrypted(used) => input = &input[used..],
            }
            if input.is_empty() {
                return None;
            }
        }
        let decryptor = self.decryptor.as_mut()?;
        let mut text = std::mem::take(&mut self.plain);
        text.clear();
        let outcome = match decryptor.decrypt(input, &mut text) {
            Ok(()) => match self.decode(conn, client, handler, &text) {
                Decoded::Done => None,
                Decoded::Stop(outcome) => Some(outcome),
                Decoded::Encrypted(_) => unreachable!("the channel cipher starts once"),
            },
            Err(err) => {
                let err = auth_error(conn.peer(), err);
                peer_warn!(
                    conn.env_counters().log_limit,
                    conn.peer(),
                    kind::AUTH,
                    "closing the connection: {err:#}"
                );
                conn.close_with(CloseReason::fault(err));
                Some(ReadOutcome::Closed)
            }
        };
        if text.capacity() <= PLAIN_KEEP {
            self.plain = text;
        }
        outcome
    }

    /// Decodes `input`, handing on each whole frame. Stops when the connection paused
    /// (the rest of `input` is kept), a bad frame closed it, or the handshake refused the
    /// peer or started the channel cipher.
    fn decode(
        &mut self,
        conn: &Arc<Conn>,
        client: &TransportClient,
        handler: &dyn RpcHandler,
        input: &[u8],
    ) -> Decoded {
        let mut offset = 0;
        while offset < input.len() {
            if self.discard > 0 {
                // The rest of a refused request: dropped as it comes.
                let n = usize::try_from(self.discard)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - offset);
                offset += n;
                self.discard -= n as u64;
                self.discarded += n as u64;
                if self.discard == 0 {
                    return Decoded::Stop(ReadOutcome::Refused);
                }
                continue;
            }
            match self.decoder.next(&input[offset..]) {
                Ok((used, item)) => {
                    offset += used;
                    let message = match item {
                        None => continue,
                        Some(Item::Message(message)) => message,
                        Some(Item::StreamData { data, end }) => {
                            self.stream_data(conn, StreamPiece::Borrowed(data), end);
                            if !conn.is_open() {
                                return Decoded::Stop(ReadOutcome::Closed);
                            }
                            if conn.is_paused() {
                                self.stash.extend_from_slice(&input[offset..]);
                                return Decoded::Stop(ReadOutcome::Paused);
                            }
                            continue;
                        }
                    };
                    if self.auth.is_some() {
                        // The handshake is a whole frame too (for `rpc.io.frameTimeout`).
                        self.frames += 1;
                        match self.authenticate(conn, client, handler, message) {
                            Handshake::Refused => return Decoded::Stop(ReadOutcome::Refused),
                            Handshake::Closed => return Decoded::Stop(ReadOutcome::Closed),
                            Handshake::Encrypted => return Decoded::Encrypted(offset),
                            Handshake::Plain => continue,
                        }
                    }
                    // On an encrypted connection a server accepted, the first frame (it
                    // decrypted, so the peer holds the keys) makes it active.
                    self.activate(client, handler);
                    self.dispatch(conn, client, handler, message);
                    if !conn.is_open() {
                        return Decoded::Stop(ReadOutcome::Closed);
                    }
                    if conn.is_paused() {
                        self.stash.extend_from_slice(&input[offset..]);
                        return Decoded::Stop(ReadOutcome::Paused);
                    }
                }
                Err(err) => {
                    // Answered only to an authenticated peer (one that still has to
                    // confirm or send its first encrypted frame counts as not yet).
                    let authenticated = self.auth.is_none()
                        && self.unconfirmed.is_none()
                        && self.awaiting_first_frame.is_none();
                    if let (
                        FrameError::RequestTooLarge {
                            request_id, size, ..
                        },
                        true,
                    ) = (&err, authenticated)
                    {
                        // The caller hears why at once, with both sizes and the key. The
                        // rest of the frame is read and dropped (up to MAX_DISCARD), so
                        // that a sender still writing it reads the answer rather than a
                        // reset; then the connection closes once the answer is written.
                        let (request_id, left) = (*request_id, size - REFUSED_HEADER_LEN);
                        let err = RpcError::from(err);
                        peer_warn!(
                            conn.env_counters().log_limit,
                            conn.peer(),
                            kind::TOO_LARGE,
                            "refusing request {request_id} from {}, then closing the \
                             connection: {err:#}",
                            conn.peer()
                        );
                        conn.refuse_request(request_id, &err);
                        self.refusal = Some(err);
                        if left == 0 || left > MAX_DISCARD {
                            return Decoded::Stop(ReadOutcome::Refused);
                        }
                        offset += self.decoder.consumed_by_error();
                        self.discard = left;
                        continue;
                    }
                    if let (FrameError::ResponseTooLarge { request_id, .. }, true) =
                        (&err, authenticated)
                    {
                        // The request it answers fails with both sizes; then the
                        // connection closes (the rest of the frame is not read).
                        let request_id = *request_id;
                        let err = RpcError::from(err);
                        peer_warn!(
                            conn.env_counters().log_limit,
                            conn.peer(),
                            kind::TOO_LARGE,
                            "closing the connection with {}: the answer to request \
                             {request_id}: {err:#}",
                            conn.peer()
                        );
                        conn.fail_and_close(request_id, err.clone(), CloseReason::fault(err));
                        return Decoded::Stop(ReadOutcome::Closed);
                    }
                    let err = if self.frames_at_handshake == Some(self.frames) {
                        auth_error(
                            conn.peer(),
                            format!(
                                "the first frame after the handshake does not decode ({}): \
                                 the two sides most likely differ in \
                                 rpc.io.encryption.enabled, rpc.io.encryption.cipher or \
                                 rpc.io.encryption.authEngineVersion (Spark: \
                                 spark.network.crypto.cipher, \
                                 spark.network.crypto.authEngineVersion), which are not \
                                 negotiated on the wire",
                                RpcError::from(err)
                            ),
                        )
                    } else if self.auth.is_some() {
                        // Not `rpc.message.maxSize`: the limit before the handshake.
                        let reason = match err {
                            FrameError::TooLarge { size, .. }
                            | FrameError::RequestTooLarge { size, .. }
                            | FrameError::ResponseTooLarge { size, .. } => format!(
                                "sent a frame of {size} bytes before authenticating (at most \
                                 {MAX_HANDSHAKE_FRAME} before the handshake)"
                            ),
                            err => format!(
                                "sent a frame that does not decode before authenticating ({})",
                                RpcError::from(err)
                            ),
                        };
                        auth_error(conn.peer(), reason)
                    } else {
                        RpcError::from(err)
                    };
                    let k = if matches!(err, RpcError::Auth { .. }) {
                        kind::AUTH
                    } else {
                        kind::BAD_FRAME
                    };
                    peer_warn!(
                        conn.env_counters().log_limit,
                        conn.peer(),
                        k,
                        "closing the connection with {}: {err:#}",
                        conn.peer()
                    );
                    conn.close_with(CloseReason::fault(err));
                    return Decoded::Stop(ReadOutcome::Closed);
                }
            }
        }
        Decoded::Done
    }

    /// The server side of the handshake, on the peer's first frame: answers it in
    /// plaintext, starts the channel cipher, and tells the handler the connection is
    /// active; or refuses the peer.
    fn authenticate(
        &mut self,
        conn: &Arc<Conn>,
        client: &TransportClient,
        handler: &dyn RpcHandler,
        message: Message,
    ) -> Handshake {
        let Some(bootstrap) = self.auth.clone() else {
            return Handshake::Plain;
        };
        let peer = conn.peer();
        if let Some(keys) = self.unconfirmed.take() {
            // Authentication without encryption: the frame after the handshake must
            // confirm it, or the challenge may have been replayed.
            if let Message::OneWay { body } = &message {
                if keys.confirms(body) {
                    return self.authenticated(conn, Some((client, handler)));
                }
            }
            let err = auth_error(
                peer,
                "did not confirm the handshake with the keys it derived (a challenge \
                 replayed from another connection, or a peer that does not speak \
                 rpcenv's authentication without encryption)",
            );
            peer_warn!(
                conn.env_counters().log_limit,
                conn.peer(),
                kind::AUTH,
                "closing the connection: {err}"
            );
            conn.close_with(CloseReason::fault(err));
            return Handshake::Closed;
        }
        let request_id = match message {
            Message::RpcRequest { request_id, body } if auth::is_auth_message(&body) => {
                match auth::respond(bootstrap.settings(), &body, &mut OsRandom) {
                    Ok((answer, keys)) => {
                        conn.answer_handshake(request_id, Ok(answer));
                        let Some(cipher) = bootstrap.encryption() else {
                            // Not authenticated until the peer confirms the handshake.
                            self.unconfirmed = Some(keys);
                            self.frames_at_handshake = Some(self.frames);
                            return Handshake::Plain;
                        };
                        let (encryptor, decryptor) =
                            keys.channel(cipher, Box::<ChannelRandom>::default());
                        conn.start_encryption(encryptor);
                        self.decryptor = Some(Box::new(decryptor));
                        // The handler hears of the connection at its first frame that
                        // decrypts: a peer that replays a challenge it saw has no keys,
                        // and its connection ends before that.
                        self.authenticated(conn, None);
                        self.awaiting_first_frame = Some(bootstrap.timeout());
                        return Handshake::Encrypted;
                    }
                    Err(err) => {
                        peer_warn!(
                            conn.env_counters().log_limit,
                            peer,
                            kind::AUTH,
                            "{peer} failed to authenticate: {err:#}"
                        );
                        request_id
                    }
                }
            }
            Message::RpcRequest { request_id, .. } => {
                peer_warn!(
                    conn.env_counters().log_limit,
                    peer,
                    kind::AUTH,
                    "{peer} sent a request before authenticating; closing the connection"
                );
                request_id
            }
            _ => {
                let err = auth_error(peer, "sent a frame other than the handshake first");
                peer_warn!(
                    conn.env_counters().log_limit,
                    peer,
                    kind::AUTH,
                    "closing the connection: {err:#}"
                );
                conn.close_with(CloseReason::fault(err));
                return Handshake::Closed;
            }
        };
        // Spark's `AuthRpcHandler` answers this text too.
        conn.answer_handshake(request_id, Err("Authentication failed.".to_owned()));
        Handshake::Refused
    }

    /// The peer has authenticated: frames may now be as large as configured and reach
    /// the handler, which hears that the connection is active now (`Some`) or with the
    /// first frame (`None`).
    fn authenticated(
        &mut self,
        conn: &Arc<Conn>,
        activate: Option<(&TransportClient, &dyn RpcHandler)>,
    ) -> Handshake {
        self.auth = None;
        self.decoder.set_max_frame(self.max_frame);
        self.decoder.set_read_refused_ids(true);
        self.frames_at_handshake = Some(self.frames);
        debug!("{} authenticated", conn.peer());
        if let Some((client, handler)) = activate {
            self.activate(client, handler);
        }
        Handshake::Plain
    }

    /// The peer ended its side. A pending socket error (a keep-alive or user timeout, a
    /// reset) makes it a failure; a frame cut short closes the connection; otherwise the
    /// connection is closing and only writes what it owes.
    fn end_of_stream(&mut self, conn: &Arc<Conn>) -> ReadOutcome {
        if let Some(err) = self.wire.take_error() {
            return self.failed(conn, err);
        }
        if let Some(outcome) = self.refused_channel(conn, "it closed the connection") {
            return outcome;
        }
        if self.in_frame() {
            peer_warn!(
                conn.env_counters().log_limit,
                conn.peer(),
                kind::BAD_FRAME,
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

    /// A peer that ends an encrypted connection (`how`) while this side waits for
    /// answers or streams, without having sent a single frame over the channel, most likely could
    /// not read this side's first frame: the two sides' channel settings differ (and the
    /// peer, a server, says so only in its log). Closes the connection with an error
    /// saying so, and returns `Some`; `None` in every other case.
    fn refused_channel(&mut self, conn: &Arc<Conn>, how: &str) -> Option<ReadOutcome> {
        if conn.requests().len() == 0 && conn.streams_outstanding().0 == 0 {
            return None;
        }
        if self.decryptor.is_none() && self.auth.is_none() && self.frames == 0 {
            // A plaintext connection the peer ends before sending a single frame: what an
            // authenticating server does to a peer that does not authenticate. The
            // connection ends as usual; the requests say what to check.
            conn.peer_closed_because(&format!(
                "closed by the peer ({how} before sending anything, while requests wait; \
                 a peer that requires authentication, rpc.authenticate or Spark's \
                 spark.authenticate, does this to a side that does not authenticate)"
            ));
            return None;
        }
        let silent = self.decryptor.is_some() && self.frames_at_handshake == Some(self.frames);
        if !silent {
            return None;
        }
        let err = auth_error(
            conn.peer(),
            format!(
                "{how} after the handshake without sending anything over the encrypted \
                 channel, while requests wait: it most likely could not read this side's \
                 first frame, because the two sides differ in rpc.io.encryption.enabled, \
                 rpc.io.encryption.cipher or rpc.io.encryption.authEngineVersion (Spark: \
                 spark.network.crypto.cipher, spark.network.crypto.authEngineVersion), \
                 which are not negotiated on the wire; the peer's log says more"
            ),
        );
        peer_warn!(
            conn.env_counters().log_limit,
            conn.peer(),
            kind::AUTH,
            "{err}"
        );
        conn.close_with(CloseReason::fault(err));
        Some(ReadOutcome::Closed)
    }

    fn failed(&mut self, conn: &Arc<Conn>, err: std::io::Error) -> ReadOutcome {
        if let Some(outcome) =
            self.refused_channel(conn, &format!("it reset the connection ({err})"))
        {
            return outcome;
        }
        debug!("read from {} failed: {err}", conn.peer());
        conn.close_with(CloseReason::io("read failed", err));
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
                // A refused request means the peer closes; an answer the peer could not
                // send for its own limit leaves the connection as it was.
                let refused = !error.starts_with(RESPONSE_NOT_SENT);
                match RpcError::from_failure(error) {
                    err @ RpcError::FrameTooLarge { .. } if refused => {
                        conn.complete_refused(request_id, err)
                    }
                    err => conn.complete(request_id, Err(err)),
                }
            }
            Message::StreamRequest { stream_id } => {
                trace!("stream request {stream_id} from {}", conn.peer());
                let mut result = Err("the stream manager panicked".to_owned());
                guard(conn.peer(), "open_stream", || {
                    result = handler.open_stream(client, &stream_id);
                });
                conn.respond_stream(&stream_id, result);
            }
            Message::StreamResponse {
                stream_id,
                byte_count,
            } => {
                let pending = conn.pop_stream(byte_count > 0);
                if pending.is_none() {
                    peer_warn!(
                        conn.env_counters().log_limit,
                        conn.peer(),
                        kind::UNKNOWN_STREAM,
                        "ignoring stream {stream_id} from {} ({byte_count} bytes): no stream \
                         was asked for",
                        conn.peer()
                    );
                }
                let mut sink = pending.map(|pending| {
                    if pending.stream_id != stream_id {
                        debug!(
                            "stream {stream_id} from {} answers the request for {}",
                            conn.peer(),
                            pending.stream_id
                        );
                    }
                    pending.sink
                });
                if byte_count == 0 {
                    if let Some(sink) = &mut sink {
                        guard(conn.peer(), "a stream callback", || sink.complete());
                    }
                } else {
                    self.stream = Some(Active { stream_id, sink });
                }
            }
            Message::StreamFailure { stream_id, error } => match conn.pop_stream(false) {
                Some(mut pending) => {
                    debug!("stream {stream_id} from {} failed: {error:#}", conn.peer());
                    let error = RpcError::Remote { message: error };
                    guard(conn.peer(), "a stream callback", || {
                        pending.sink.fail(error)
                    });
                }
                None => peer_warn!(
                    conn.env_counters().log_limit,
                    conn.peer(),
                    kind::UNKNOWN_STREAM,
                    "ignoring the failure of stream {stream_id} from {}: no stream was asked \
                     for",
                    conn.peer()
                ),
            },
        }
    }

    /// Hands the next bytes of the stream under way to its sink; `end`: they were its
    /// last.
    fn stream_data(&mut self, conn: &Arc<Conn>, piece: StreamPiece<'_>, end: bool) {
        let Some(active) = &mut self.stream else {
            return;
        };
        if let Some(sink) = &mut active.sink {
            guard(conn.peer(), "a stream callback", || match piece {
                StreamPiece::Borrowed(data) => sink.data(data),
                StreamPiece::Owned(piece) => sink.chunk(piece),
            });
        }
        if end {
            // A frame that follows is timed from its own first byte, not the stream's.
            self.frame_started = None;
            let active = self.stream.take().expect("checked");
            trace!("stream {} from {} is whole", active.stream_id, conn.peer());
            conn.stream_finished();
            if let Some(mut sink) = active.sink {
                guard(conn.peer(), "a stream callback", || sink.complete());
            }
        }
    }

    /// The connection closed: the stream under way, if any, fails with `error`.
    pub(crate) fn fail_stream(&mut self, peer: std::net::SocketAddr, error: RpcError) {
        if let Some(Active {
            sink: Some(mut sink),
            stream_id,
        }) = self.stream.take()
        {
            debug!("stream {stream_id} from {peer} fails: {error:#}");
            guard(peer, "a stream callback", || sink.fail(error));
        }
    }
}

/// Bytes of a stream: borrowed from the read buffer, or a piece read for it.
enum StreamPiece<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}
