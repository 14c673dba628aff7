//! Bytes → [`Message`]: the incremental [`FrameDecoder`] and its [`FrameError`].
//!
//! The decoder believes nothing a peer claims before checking it: the frame length is
//! checked against the maximum as soon as its 8 bytes are in, before anything is
//! allocated (a frame above it is refused once its type byte is in, or, for a request,
//! once its request id is in too, so that the request can be answered), and a body buffer only grows with the bytes that actually arrive (see
//! [`FrameDecoder::pending_body`] for the exact rule).

use std::fmt;

use crate::buffer_pool::BufferPool;
use crate::error::RpcError;
use crate::sync::Arc;

use super::header::{
    LENGTH_FIELD_LEN, MAX_HEADER_LEN, MIN_FRAME_LEN, Message, MessageType, RPC_HEADER_LEN,
};

/// A body buffer may hold this much capacity before the peer has sent that many bytes of
/// the body; beyond it, capacity is at most twice the bytes received.
const BODY_ALLOCATION_FLOOR: usize = 64 * 1024;

/// How much of the header of a request above the maximum is read: the length, the type
/// and the request id.
const TOO_LARGE_REQUEST_LEN: usize = MIN_FRAME_LEN + 8;

/// What is wrong with a frame. Every variant is a fault of the peer; the connection that
/// sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The claimed frame length is above the maximum frame size.
    TooLarge {
        /// The claimed frame length in bytes.
        size: u64,
        /// The maximum frame size in bytes.
        max: u64,
    },
    /// An RpcRequest above the maximum frame size: the request can be answered (with a
    /// failure) before the connection closes.
    RequestTooLarge {
        /// The request's id.
        request_id: u64,
        /// The claimed frame length in bytes.
        size: u64,
        /// The maximum frame size in bytes.
        max: u64,
    },
    /// An RpcResponse or RpcFailure above the maximum frame size: the request it answers
    /// can be failed with the sizes before the connection closes.
    ResponseTooLarge {
        /// The id of the request it answers.
        request_id: u64,
        /// The claimed frame length in bytes.
        size: u64,
        /// The maximum frame size in bytes.
        max: u64,
    },
    /// The frame length is negative, shorter than the 9-byte minimum, or shorter than the
    /// header of the frame's type.
    BadLength(i64),
    /// A Spark message type this crate does not speak (0-2, 10-12).
    UnsupportedType(u8),
    /// A byte that is no Spark message type at all (13..=255).
    UnknownType(u8),
    /// The header contradicts itself, e.g. the body length disagrees with the frame length.
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { size, max } => {
                write!(
                    f,
                    "frame of {size} bytes exceeds the maximum of {max} bytes"
                )
            }
            Self::RequestTooLarge {
                request_id,
                size,
                max,
            } => write!(
                f,
                "request {request_id}: frame of {size} bytes exceeds the maximum of {max} bytes"
            ),
            Self::ResponseTooLarge {
                request_id,
                size,
                max,
            } => write!(
                f,
                "answer to request {request_id}: frame of {size} bytes exceeds the maximum of \
                 {max} bytes"
            ),
            Self::BadLength(len) => write!(f, "invalid frame length {len}"),
            Self::UnsupportedType(byte) => match MessageType::try_from(*byte) {
                Ok(message_type) => write!(f, "unsupported message type {byte} ({message_type})"),
                Err(_) => write!(f, "unsupported message type {byte}"),
            },
            Self::UnknownType(byte) => write!(f, "unknown message type {byte}"),
            Self::Malformed(reason) => write!(f, "malformed frame: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for RpcError {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::TooLarge { size, max }
            | FrameError::RequestTooLarge { size, max, .. }
            | FrameError::ResponseTooLarge { size, max, .. } => Self::FrameTooLarge { size, max },
            other => Self::decode("frame", other.to_string()),
        }
    }
}

/// What [`FrameDecoder::next`] yields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// A whole message.
    Message(Message),
    /// The next raw bytes of the stream announced by the last StreamResponse; `end`: they
    /// are its last.
    StreamData {
        /// Bytes of the stream, borrowed from the input.
        data: &'a [u8],
        /// These were the stream's last bytes: frames follow.
        end: bool,
    },
}

/// Incremental decoder: any split of the byte stream yields the same messages.
///
/// Headers are assembled in a fixed inline array; a body is assembled in the one `Vec`
/// that ends up in the [`Message`]. A body that is already whole in the input is copied
/// out with a single exact allocation.
pub(crate) struct FrameDecoder {
    /// Largest accepted frame length (whole frame, header included).
    max_frame_size: u64,
    /// Where in the current frame the decoder is.
    state: State,
    /// How many bytes of its input the call that failed took (the header bytes of a
    /// refused request that were in it).
    consumed_by_error: usize,
    /// Whether a frame above the maximum is refused only once its type byte (and a
    /// request's id, to answer it) is in; otherwise at its length field.
    read_refused_ids: bool,
    /// Where the buffer of a large body comes from, if it can (see
    /// [`set_pool`](FrameDecoder::set_pool)).
    pool: Option<Arc<BufferPool>>,
}

/// Where in a frame the decoder is.
enum State {
    /// Collecting a header (possibly none of it yet).
    Header(PartialHeader),
    /// Collecting a body whose header was valid.
    Body(PartialBody),
    /// Handing out the raw bytes of a stream (after a StreamResponse).
    Stream {
        /// Bytes of the stream still to come.
        remaining: u64,
        /// Bytes of the stream handed out so far.
        received: u64,
    },
    /// A frame was bad; the decoder only repeats the error.
    Failed(FrameError),
}

/// The bytes of a header received so far.
struct PartialHeader {
    /// The header bytes; the first `filled` are valid.
    bytes: [u8; MAX_HEADER_LEN],
    /// How many bytes of the header are in.
    filled: usize,
    /// How many header bytes the next check needs: the length field, then the type byte,
    /// then the rest of that type's header.
    target: usize,
    /// The length field is above the maximum: only the type byte and a request's id are
    /// read, to answer the request, then the frame is refused.
    too_large: bool,
    /// The type byte was checked (a stream frame's header ends with it).
    typed: bool,
}

/// What the header of a frame said, once all of it was in and checked.
struct ParsedHeader {
    /// The kind of message the body completes.
    kind: Kind,
    /// The body (or error text) length in bytes.
    body_len: usize,
}

/// The kind of message under assembly, with its request id.
#[derive(Clone, Copy)]
enum Kind {
    /// An RpcRequest with this id.
    Request(u64),
    /// An RpcResponse with this id.
    Response(u64),
    /// An RpcFailure with this id.
    Failure(u64),
    /// A OneWayMessage.
    OneWay,
    /// A StreamRequest, StreamResponse or StreamFailure: the body is the rest of the frame.
    Stream(MessageType),
}

/// A body under assembly.
struct PartialBody {
    /// The kind of message the body completes.
    kind: Kind,
    /// The body's buffer: its first `filled` bytes are those received so far. Bytes
    /// beyond them, up to its length (at most `body_len`), are initialised but not the
    /// body's: a pooled buffer's old bytes, or room offered to a reader; they are
    /// overwritten as the body arrives, and the message is made only once all of it did.
    /// Its capacity follows the allocation rule, unless it came from the pool.
    body: Vec<u8>,
    /// Body bytes received.
    filled: usize,
    /// The body length the header announced.
    body_len: usize,
}

impl FrameDecoder {
    /// `max_frame_size`: largest accepted frame length (whole frame, header included).
    pub(crate) fn new(max_frame_size: u64) -> Self {
        Self {
            max_frame_size,
            state: State::Header(PartialHeader::default()),
            consumed_by_error: 0,
            read_refused_ids: true,
            pool: None,
        }
    }

    /// Takes the buffer of each body of `POOLED_MIN` (1 MiB) or more from `pool` when it
    /// has one that fits, once the body's header is in and checked against the maximum.
    /// That buffer is lent whole before the body's bytes arrive: it is memory the pool
    /// holds already, so a peer's claim still allocates nothing, and the claims of peers
    /// that stall hold at most what the pool held. Without one, the allocation rule holds.
    pub(crate) fn set_pool(&mut self, pool: Arc<BufferPool>) {
        self.pool = Some(pool);
    }

    /// Whether [`set_pool`](Self::set_pool) gave it a pool.
    pub(crate) fn has_pool(&self) -> bool {
        self.pool.is_some()
    }

    /// A pooled buffer of `len` bytes (old bytes, not zeroed again), if the pool has one.
    fn pooled(&self, len: usize) -> Option<Vec<u8>> {
        let mut buffer = self.pool.as_ref()?.take(len)?;
        if buffer.len() >= len {
            buffer.truncate(len);
        } else {
            buffer.resize(len, 0);
        }
        Some(buffer)
    }

    /// Whether a frame above the maximum is refused only once its type byte and, for a
    /// request, its id are in, so that the request can be answered (the default); or at
    /// once when its length field is in (before a peer authenticated, when nothing is
    /// answered and a peer that claims a large frame and stalls must not be waited for).
    pub(crate) fn set_read_refused_ids(&mut self, read: bool) {
        self.read_refused_ids = read;
    }

    /// Changes the largest accepted frame length, for the frames whose header is still to
    /// come (a peer that authenticated may send larger frames than one that has not).
    pub(crate) fn set_max_frame(&mut self, max_frame_size: u64) {
        self.max_frame_size = max_frame_size;
    }

    /// Consumes a prefix of `input`: returns how many bytes were consumed and the message
    /// if one was completed; the raw bytes of a stream are consumed and dropped (see
    /// [`next`](Self::next) to receive them).
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), FrameError> {
        let (n, item) = self.next(input)?;
        Ok((
            n,
            match item {
                Some(Item::Message(message)) => Some(message),
                _ => None,
            },
        ))
    }

    /// Consumes a prefix of `input`: returns how many bytes were consumed and what they
    /// completed: a message, or a piece of a stream's raw bytes. `Ok((n, None))` means all
    /// `n == input.len()` bytes were consumed and more are needed.
    ///
    /// At most one item is returned per call. Callers loop:
    /// `while !input.is_empty() { let (n, item) = dec.next(input)?; input = &input[n..]; … }`.
    /// After an error the decoder is unusable (the connection is closed); further calls
    /// return the same error.
    pub(crate) fn next<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Item<'a>>), FrameError> {
        let result = match &mut self.state {
            State::Failed(err) => return Err(err.clone()),
            State::Stream { remaining, .. } => {
                if input.is_empty() {
                    return Ok((0, None));
                }
                let n = (*remaining).min(input.len() as u64) as usize;
                let end = self.stream_consumed(n);
                return Ok((
                    n,
                    Some(Item::StreamData {
                        data: &input[..n],
                        end,
                    }),
                ));
            }
            State::Body(partial) => {
                let n = partial.missing().min(input.len());
                partial.append(&input[..n]);
                let message = self.take_complete_body()?;
                return Ok((n, message.map(Item::Message)));
            }
            State::Header(header) => header.fill(input, self.max_frame_size, self.read_refused_ids),
        };
        let (consumed, parsed) = match result {
            Ok((consumed, Some(parsed))) => (consumed, parsed),
            Ok((consumed, None)) => return Ok((consumed, None)),
            Err((consumed, err)) => {
                self.consumed_by_error = consumed;
                self.state = State::Failed(err.clone());
                return Err(err);
            }
        };
        self.state = State::Header(PartialHeader::default());
        let ParsedHeader { kind, body_len } = parsed;
        let rest = &input[consumed..];
        if let Some(body) = rest.get(..body_len) {
            // The whole body is here: one allocation of exactly its size, or a pooled one.
            let body = match self.pooled(body_len) {
                Some(mut buffer) => {
                    buffer.copy_from_slice(body);
                    buffer
                }
                None => body.to_vec(),
            };
            let message = self.complete(kind, body)?;
            return Ok((consumed + body_len, Some(Item::Message(message))));
        }
        let mut partial = PartialBody {
            kind,
            body: self.pooled(body_len).unwrap_or_default(),
            filled: 0,
            body_len,
        };
        partial.append(rest);
        self.state = State::Body(partial);
        Ok((input.len(), None))
    }

    /// While a stream's raw bytes are being received: how many are still to come.
    pub(crate) fn stream_remaining(&self) -> Option<u64> {
        match self.state {
            State::Stream { remaining, .. } => Some(remaining),
            _ => None,
        }
    }

    /// Records `n` raw stream bytes received outside [`next`](Self::next) (read from the
    /// socket straight into the consumer's buffer; at most
    /// [`stream_remaining`](Self::stream_remaining)). Returns whether the stream is whole.
    pub(crate) fn stream_consumed(&mut self, n: usize) -> bool {
        let State::Stream {
            remaining,
            received,
        } = &mut self.state
        else {
            debug_assert!(n == 0, "stream bytes outside a stream");
            return false;
        };
        debug_assert!(n as u64 <= *remaining);
        *remaining -= (n as u64).min(*remaining);
        *received += n as u64;
        if *remaining == 0 {
            self.state = State::Header(PartialHeader::default());
            return true;
        }
        false
    }

    /// While a frame's body is being assembled and at least `threshold` bytes of it are
    /// still missing: the room in the body's buffer where its next bytes go, so the
    /// caller can read from the socket straight into it, then call
    /// [`body_filled`](Self::body_filled) with how many it read (from the room's start).
    /// `None` otherwise.
    ///
    /// The room is never longer than the bytes still missing. In a pooled buffer (see
    /// [`set_pool`](Self::set_pool)) it is all of them, and holds the buffer's old bytes,
    /// not zeroed again. Otherwise it is the buffer's spare capacity, zeroed, grown first
    /// if the buffer is (nearly) full, following the allocation rule: its capacity never
    /// exceeds max(64 KiB, 2 × body bytes received so far), and never the announced body
    /// length.
    pub(crate) fn pending_body(&mut self, threshold: usize) -> Option<&mut [u8]> {
        let State::Body(partial) = &mut self.state else {
            return None;
        };
        let missing = partial.missing();
        if missing == 0 || missing < threshold {
            return None;
        }
        if partial.body.len() < partial.body_len {
            // Grow when less than half the floor (or less than what is missing) is spare.
            let filled = partial.filled;
            partial.reserve(filled + missing.min(BODY_ALLOCATION_FLOOR / 2), filled);
            let want = missing.min(partial.body.capacity() - filled);
            partial.body.resize(filled + want, 0);
        }
        Some(&mut partial.body[partial.filled..])
    }

    /// After the caller wrote `n` bytes at the start of the room
    /// [`pending_body`](Self::pending_body) gave: the message if the body is now complete.
    pub(crate) fn body_filled(&mut self, n: usize) -> Result<Option<Message>, FrameError> {
        if let State::Body(partial) = &mut self.state {
            debug_assert!(
                partial.filled + n <= partial.body.len(),
                "{n} bytes written to a room of {}",
                partial.body.len() - partial.filled
            );
            partial.filled += n;
        } else {
            debug_assert!(n == 0, "body bytes outside a body");
        }
        self.take_complete_body()
    }

    /// How many bytes of the frame under way have arrived (its header counted as whole
    /// once its body is under way); 0 between frames.
    pub(crate) fn received(&self) -> u64 {
        match &self.state {
            State::Header(header) => header.filled as u64,
            State::Body(partial) => (MAX_HEADER_LEN + partial.filled) as u64,
            State::Stream { received, .. } => *received,
            State::Failed(_) => 0,
        }
    }

    /// How many bytes of its input the `decode` call that returned the error took: all of
    /// a refused request's header that was in it (its body starts right after).
    pub(crate) fn consumed_by_error(&self) -> usize {
        self.consumed_by_error
    }

    /// True when no partial frame is buffered (a hang-up now is clean, otherwise truncated).
    pub(crate) fn is_idle(&self) -> bool {
        matches!(&self.state, State::Header(header) if header.filled == 0)
    }

    /// Bytes of buffer capacity currently held for a partial frame (for tests of the
    /// allocation rule). Partial headers are inline and count as nothing.
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        match &self.state {
            State::Body(partial) => partial.body.capacity(),
            State::Header(_) | State::Stream { .. } | State::Failed(_) => 0,
        }
    }

    /// If a body is complete: the message, and the decoder waits for the next header (or
    /// a stream's raw bytes).
    fn take_complete_body(&mut self) -> Result<Option<Message>, FrameError> {
        match &self.state {
            State::Body(partial) if partial.filled >= partial.body_len => {}
            _ => return Ok(None),
        }
        match std::mem::replace(&mut self.state, State::Header(PartialHeader::default())) {
            State::Body(PartialBody {
                kind,
                mut body,
                filled,
                ..
            }) => {
                body.truncate(filled);
                self.complete(kind, body).map(Some)
            }
            _ => unreachable!("checked above"),
        }
    }

    /// The message made of `kind` and its whole `body`; after a StreamResponse announcing
    /// bytes, the decoder hands those out next. A body that does not parse fails the
    /// decoder.
    fn complete(&mut self, kind: Kind, body: Vec<u8>) -> Result<Message, FrameError> {
        match kind.finish(body) {
            Ok(message) => {
                if let Message::StreamResponse { byte_count, .. } = &message {
                    if *byte_count > 0 {
                        self.state = State::Stream {
                            remaining: *byte_count,
                            received: 0,
                        };
                    }
                }
                Ok(message)
            }
            Err(err) => {
                self.state = State::Failed(err.clone());
                Err(err)
            }
        }
    }
}

impl fmt::Debug for FrameDecoder {
    /// Shows progress, never payload bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("FrameDecoder");
        out.field("max_frame_size", &self.max_frame_size);
        match &self.state {
            State::Header(header) => out.field("header_bytes", &header.filled),
            State::Body(partial) => out
                .field("body_bytes", &partial.filled)
                .field("body_len", &partial.body_len)
                .field("capacity", &partial.body.capacity()),
            State::Stream {
                remaining,
                received,
            } => out
                .field("stream_bytes", received)
                .field("stream_remaining", remaining),
            State::Failed(err) => out.field("failed", err),
        };
        out.finish()
    }
}

impl Default for PartialHeader {
    fn default() -> Self {
        Self {
            bytes: [0; MAX_HEADER_LEN],
            filled: 0,
            target: LENGTH_FIELD_LEN,
            too_large: false,
            typed: false,
        }
    }
}

impl PartialHeader {
    /// The claimed frame length; valid once the length field is in.
    fn frame_len(&self) -> i64 {
        i64::from_be_bytes(self.array::<LENGTH_FIELD_LEN>(0))
    }

    /// `N` header bytes starting at `at`.
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[at..at + N]);
        out
    }

    /// Takes header bytes from `input`, checking each field as soon as it is in. Returns
    /// the bytes consumed and, once the header is whole, what it says.
    fn fill(
        &mut self,
        input: &[u8],
        max_frame_size: u64,
        read_refused_ids: bool,
    ) -> Result<(usize, Option<ParsedHeader>), (usize, FrameError)> {
        let mut consumed = 0;
        loop {
            let n = (self.target - self.filled).min(input.len() - consumed);
            self.bytes[self.filled..self.filled + n]
                .copy_from_slice(&input[consumed..consumed + n]);
            self.filled += n;
            consumed += n;
            if self.filled < self.target {
                return Ok((consumed, None));
            }
            let checked = match self.filled {
                LENGTH_FIELD_LEN => self.check_length(max_frame_size, read_refused_ids),
                MIN_FRAME_LEN if self.too_large => self.check_too_large_type(max_frame_size),
                TOO_LARGE_REQUEST_LEN if self.too_large => {
                    let request_id = u64::from_be_bytes(self.array::<8>(MIN_FRAME_LEN));
                    let size = self.frame_len() as u64;
                    let max = max_frame_size;
                    Err(
                        if self.bytes[LENGTH_FIELD_LEN] == MessageType::RpcRequest as u8 {
                            FrameError::RequestTooLarge {
                                request_id,
                                size,
                                max,
                            }
                        } else {
                            FrameError::ResponseTooLarge {
                                request_id,
                                size,
                                max,
                            }
                        },
                    )
                }
                MIN_FRAME_LEN if self.target == MIN_FRAME_LEN && self.typed => {
                    return self
                        .parse()
                        .map(|parsed| (consumed, Some(parsed)))
                        .map_err(|err| (consumed, err));
                }
                MIN_FRAME_LEN => {
                    let checked = self.check_type();
                    self.typed = checked.is_ok();
                    checked
                }
                _ => {
                    return self
                        .parse()
                        .map(|parsed| (consumed, Some(parsed)))
                        .map_err(|err| (consumed, err));
                }
            };
            self.target = checked.map_err(|err| (consumed, err))?;
        }
    }

    /// The length field is in: it must cover the length and type, and stay within the
    /// maximum. Nothing has been allocated for the frame yet. Next comes the type byte.
    fn check_length(
        &mut self,
        max_frame_size: u64,
        read_refused_ids: bool,
    ) -> Result<usize, FrameError> {
        let frame_len = self.frame_len();
        if frame_len < MIN_FRAME_LEN as i64 {
            return Err(FrameError::BadLength(frame_len));
        }
        if frame_len as u64 > max_frame_size {
            if !read_refused_ids {
                return Err(FrameError::TooLarge {
                    size: frame_len as u64,
                    max: max_frame_size,
                });
            }
            // Refused once the type byte (and a request's id) is in; nothing is allocated.
            self.too_large = true;
        }
        Ok(MIN_FRAME_LEN)
    }

    /// The type byte of a frame above the maximum is in: a request's id is read next
    /// (to answer it); any other frame is refused now.
    fn check_too_large_type(&self, max_frame_size: u64) -> Result<usize, FrameError> {
        let size = self.frame_len() as u64;
        let byte = self.bytes[LENGTH_FIELD_LEN];
        if byte == MessageType::RpcRequest as u8
            || byte == MessageType::RpcResponse as u8
            || byte == MessageType::RpcFailure as u8
        {
            // Each starts with a request id, read next.
            return Ok(TOO_LARGE_REQUEST_LEN);
        }
        Err(FrameError::TooLarge {
            size,
            max: max_frame_size,
        })
    }

    /// The type byte is in: it must be a type rpcenv speaks, and the frame must be long
    /// enough for that type's header. Next comes the rest of that header.
    fn check_type(&self) -> Result<usize, FrameError> {
        let byte = self.bytes[LENGTH_FIELD_LEN];
        let header_len = MessageType::try_from(byte)?
            .header_len()
            .ok_or(FrameError::UnsupportedType(byte))?;
        let frame_len = self.frame_len();
        if (frame_len as u64) < header_len as u64 {
            return Err(FrameError::BadLength(frame_len));
        }
        Ok(header_len)
    }

    /// The whole header is in: its body length must agree with the frame length.
    fn parse(&self) -> Result<ParsedHeader, FrameError> {
        let header_len = self.target;
        let frame_len = self.frame_len() as u64;
        let message_type = MessageType::try_from(self.bytes[LENGTH_FIELD_LEN])?;
        if header_len == MIN_FRAME_LEN {
            // A stream frame: the rest of the frame (within the maximum) is its body.
            return Ok(ParsedHeader {
                kind: Kind::Stream(message_type),
                body_len: (frame_len - MIN_FRAME_LEN as u64) as usize,
            });
        }
        let field = i32::from_be_bytes(self.array::<4>(header_len - 4));
        let expected = frame_len - header_len as u64;
        if field < 0 || field as u64 != expected {
            let what = match message_type {
                MessageType::RpcFailure => "error text",
                _ => "body",
            };
            return Err(FrameError::Malformed(format!(
                "{message_type} of {frame_len} bytes announces a {what} of {field} bytes, \
                 expected {expected}"
            )));
        }
        let request_id = || u64::from_be_bytes(self.array::<8>(MIN_FRAME_LEN));
        debug_assert!(header_len == RPC_HEADER_LEN || message_type == MessageType::OneWayMessage);
        let kind = match message_type {
            MessageType::RpcRequest => Kind::Request(request_id()),
            MessageType::RpcResponse => Kind::Response(request_id()),
            MessageType::RpcFailure => Kind::Failure(request_id()),
            _ => Kind::OneWay,
        };
        Ok(ParsedHeader {
            kind,
            body_len: field as usize,
        })
    }
}

impl Kind {
    /// The message made of this kind and a whole body.
    fn finish(self, body: Vec<u8>) -> Result<Message, FrameError> {
        Ok(match self {
            Self::Request(request_id) => Message::RpcRequest { request_id, body },
            Self::Response(request_id) => Message::RpcResponse { request_id, body },
            Self::Failure(request_id) => Message::RpcFailure {
                request_id,
                // A bad string must not kill the connection: decode it lossily.
                error: lossy(body),
            },
            Self::OneWay => Message::OneWay { body },
            Self::Stream(message_type) => parse_stream(message_type, &body)?,
        })
    }
}

/// UTF-8 text, decoded lossily (a bad string must not kill the connection).
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

/// Parses the body of a stream frame (everything after its type byte); it must be used
/// exactly.
fn parse_stream(message_type: MessageType, body: &[u8]) -> Result<Message, FrameError> {
    let mut at = 0;
    let stream_id = take_string(message_type, body, &mut at)?;
    let message = match message_type {
        MessageType::StreamRequest => Message::StreamRequest { stream_id },
        MessageType::StreamResponse => {
            let bytes = body.get(at..at + 8).ok_or_else(|| {
                FrameError::Malformed(format!("{message_type} ends before its byte count"))
            })?;
            at += 8;
            let mut count = [0; 8];
            count.copy_from_slice(bytes);
            let byte_count = i64::from_be_bytes(count);
            if byte_count < 0 {
                return Err(FrameError::Malformed(format!(
                    "{message_type} announces a stream of {byte_count} bytes"
                )));
            }
            Message::StreamResponse {
                stream_id,
                byte_count: byte_count as u64,
            }
        }
        _ => {
            let error = take_string(message_type, body, &mut at)?;
            Message::StreamFailure { stream_id, error }
        }
    };
    if at != body.len() {
        return Err(FrameError::Malformed(format!(
            "{message_type} has {} bytes after its fields",
            body.len() - at
        )));
    }
    Ok(message)
}

/// Reads a Spark `Encoders.Strings` string (i32 byte length, UTF-8) at `at`, checking the
/// length against the bytes there are.
fn take_string(
    message_type: MessageType,
    body: &[u8],
    at: &mut usize,
) -> Result<String, FrameError> {
    let short = || FrameError::Malformed(format!("{message_type} ends inside a string"));
    let len_bytes = body.get(*at..*at + 4).ok_or_else(short)?;
    let mut len = [0; 4];
    len.copy_from_slice(len_bytes);
    let len = i32::from_be_bytes(len);
    if len < 0 {
        return Err(FrameError::Malformed(format!(
            "{message_type} has a string of {len} bytes"
        )));
    }
    let start = *at + 4;
    let text = body.get(start..start + len as usize).ok_or_else(short)?;
    *at = start + len as usize;
    Ok(lossy(text.to_vec()))
}

impl PartialBody {
    /// Body bytes still to come.
    fn missing(&self) -> usize {
        self.body_len - self.filled
    }

    /// Appends body bytes (never more than are missing): written over the buffer's
    /// bytes beyond those received where it has them (a pooled buffer), appended to it
    /// otherwise.
    fn append(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= self.missing());
        let end = self.filled + bytes.len();
        if let Some(room) = self.body.get_mut(self.filled..end) {
            room.copy_from_slice(bytes);
        } else {
            self.body.truncate(self.filled);
            self.reserve(end, end);
            self.body.extend_from_slice(bytes);
        }
        self.filled = end;
    }

    /// Makes room for `required` bytes of body in all once `received` bytes of it are in,
    /// following the allocation rule: capacity at most max(64 KiB, 2 × `received`), never
    /// above the body length. Doubles where the rule allows, so appends stay amortised O(1).
    ///
    /// `required` must itself fit the rule (callers ask for at most `received` + 32 KiB).
    fn reserve(&mut self, required: usize, received: usize) {
        let capacity = self.body.capacity();
        if required <= capacity {
            return;
        }
        let limit = BODY_ALLOCATION_FLOOR
            .max(received.saturating_mul(2))
            .min(self.body_len);
        debug_assert!(
            required <= limit,
            "{required} bytes exceed the allocation rule"
        );
        let target = required
            .max(capacity.saturating_mul(2))
            .max(BODY_ALLOCATION_FLOOR)
            .min(limit);
        self.body.reserve_exact(target - self.body.len());
    }
}
