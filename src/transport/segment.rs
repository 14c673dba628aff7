//! What a write queue holds: frames written from their own body, and small frames copied
//! one after another into a shared buffer.
//!
//! A small frame (body up to [`FLATTEN_MAX`] bytes) handed to a busy connection is copied
//! into the buffer at the queue's tail, as hyper's `WriteBuf` flattens, and its body is
//! freed at once by the thread that made it. The event loop then writes a few large
//! slices instead of two per frame, and never frees memory another thread allocated for
//! each small frame (which costs the allocator far more than the copy). A large body is
//! never copied: it is written from its own buffer, after its header, and so are the
//! pieces spliced into it (a [`Body`] with large `SharedBytes` left in their own buffers),
//! each a slice of the same `writev`.
//!
//! On an encrypted connection the thread that writes *seals* each segment before its
//! first byte goes out ([`Segments::seal`]): AES-CTR encrypts it in place, AES-GCM turns it
//! into one envelope. A body with spliced pieces is never encrypted in place (the pieces
//! are the caller's buffers, never modified): the cipher reads its parts and writes the
//! ciphertext into a buffer of its own, as GCM always does. A sealed segment is never appended to and never sealed again, so a
//! write that stops half way resumes with the same ciphertext. A GCM envelope for a frame
//! over [`LAZY_SEAL_MIN`] bytes is sealed [`SEAL_CHUNK`] bytes at a time, each chunk when
//! the socket has taken the one before ([`Segment::Envelope`]): the writer holds 256 KiB
//! of ciphertext instead of a copy of the whole frame, and the peer decrypts the first
//! segments while the last are being sealed.
//!
//! A stream's body (a [`StreamBody`] after its `StreamResponse`) is a segment of its own.
//! A file goes out with `sendfile` (see [`Wire::send_file`]) on a plaintext connection; on
//! an encrypted one it is read in pieces of [`FILE_PIECE`] bytes, each sealed just before
//! it is written, and nothing after it is sealed before it is done (the cipher's order is
//! the wire's). One call of [`Segments::write_to`] writes at most [`FILE_TURN`] bytes of
//! stream bodies, then yields, so a large file never keeps the other connections of the
//! event loop waiting.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};

use log::trace;

use crate::auth::{AuthError, Encryptor, EnvelopeSealer, SEGMENT_PLAINTEXT_LEN};
use crate::buffer_pool::BufferPool;
use crate::error::RpcError;
use crate::frame::{Body, FrameHeader};
use crate::sync::Arc;
use crate::transport::socket::{Wire, interrupted, would_block};
use crate::transport::stream::{Counted, Source, StreamBody};

/// A file on an encrypted connection is read and sealed in pieces of this size.
pub(crate) const FILE_PIECE: usize = 256 * 1024;

/// One call of [`Segments::write_to`] writes at most this many bytes of stream bodies.
pub(crate) const FILE_TURN: usize = 4 * 1024 * 1024;

/// At most this many slices go into one `writev`.
const MAX_SLICES: usize = 256;

/// Bodies up to this size are copied into the shared buffer at the queue's tail.
pub(crate) const FLATTEN_MAX: usize = 1024;

/// A shared buffer grows up to this size; the next small frame starts another.
const CHUNK: usize = 64 * 1024;

/// On a GCM connection, frames longer than this (4 envelope segments) are sealed a chunk
/// at a time as the socket drains; shorter ones in one go.
const LAZY_SEAL_MIN: usize = 4 * SEGMENT_PLAINTEXT_LEN;

/// Plaintext sealed per chunk of a lazily sealed envelope: 8 segments, 256 KiB on the wire.
const SEAL_CHUNK: usize = 8 * SEGMENT_PLAINTEXT_LEN;

/// A shared buffer starts with this capacity (and doubles as it fills).
const CHUNK_START: usize = 4 * 1024;

/// What a labelled frame costs beyond its body, of its label's window and of the sender's
/// queue while it is held: a fixed share for the structures that hold each message. A held
/// frame's record is 80 bytes and a receiver's inbox entry 152, each in a queue that grows
/// by doubling, plus the allocator's header of the body: 256 bytes keeps a window of small
/// messages close to the memory they take (with 64, a flood of 64-byte messages took
/// twice its bound).
pub(crate) const FRAME_CHARGE: usize = 256;

/// A flow-control label: frames with the same label share a window.
pub(crate) type Label = Arc<str>;

/// Called once a frame was handed to the socket in full (`Ok`), or with why it never
/// will be.
pub(crate) type Receipt = Box<dyn FnOnce(Result<(), RpcError>) + Send>;

/// What a frame is, for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A one-way message: counted when it is lost with the connection.
    OneWay,
    /// A request: its caller learns of a loss through the request table.
    Request,
    /// An answer to the peer's request.
    Answer,
    /// A control frame (window grants and the like).
    Control,
}

/// One frame on its way: its header, its body, and what to tell when it is written.
pub(crate) struct Frame {
    header: FrameHeader,
    body: Body,
    kind: Kind,
    pub(crate) label: Option<Label>,
    receipt: Option<Receipt>,
    /// A stream's body, written after the frame.
    tail: Option<StreamBody>,
}

impl Frame {
    pub(crate) fn new(header: FrameHeader, body: impl Into<Body>, kind: Kind) -> Self {
        Self {
            header,
            body: body.into(),
            kind,
            label: None,
            receipt: None,
            tail: None,
        }
    }

    /// The frame followed by a stream's body (a `StreamResponse`).
    pub(crate) fn with_tail(mut self, tail: StreamBody) -> Self {
        self.tail = Some(tail);
        self
    }

    /// Whether a stream's body follows the frame (the event loop writes it).
    pub(crate) fn has_tail(&self) -> bool {
        self.tail.is_some()
    }

    pub(crate) fn with_label(mut self, label: Option<Label>) -> Self {
        self.label = label;
        self
    }

    pub(crate) fn with_receipt(mut self, receipt: Option<Receipt>) -> Self {
        self.receipt = receipt;
        self
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The frame's length: header and body, and the stream body after it if any.
    pub(crate) fn len(&self) -> usize {
        let tail = self.tail.as_ref().map_or(0, |tail| tail.len as usize);
        self.header.as_bytes().len() + self.body.len() + tail
    }

    /// The bytes `start..end` of the frame as it goes on the wire (header, then the body's
    /// parts), as slices.
    fn range(&self, start: usize, end: usize) -> Vec<&[u8]> {
        let mut parts = Vec::new();
        let mut at = start;
        self.parts_from(start, |part| {
            let part = &part[..part.len().min(end.saturating_sub(at))];
            at += part.len();
            if !part.is_empty() {
                parts.push(part);
            }
            at < end
        });
        parts
    }

    /// Calls `f` with the non-empty parts of the frame's wire bytes from `start` on
    /// (header, then the body's parts), until it returns `false`.
    fn parts_from<'a>(&'a self, start: usize, mut f: impl FnMut(&'a [u8]) -> bool) {
        let header = self.header.as_bytes();
        if start < header.len() && !f(&header[start..]) {
            return;
        }
        self.body.parts_from(start.saturating_sub(header.len()), f);
    }

    /// What the frame costs of its label's window, and of the queue while it is held.
    pub(crate) fn charge(&self) -> usize {
        self.body.len() + FRAME_CHARGE
    }

    /// Lets the body's buffer go back to `pool` when the frame is dropped, if it is large
    /// enough to be pooled (see `Body::return_to`).
    pub(crate) fn return_body_to(&mut self, pool: &Arc<BufferPool>) {
        self.body.return_to(pool);
    }

    /// Gives back the body's spare capacity (left by encoding), for a frame that waits.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.body.shrink_to_fit();
    }

    /// Tells the frame's receipt, if any.
    pub(crate) fn settle(&mut self, outcome: Result<(), RpcError>) {
        if let Some(receipt) = self.receipt.take() {
            receipt(outcome);
        }
    }
}

/// One frame copied into a shared buffer: where it ends there, and what to tell.
pub(crate) struct Mark {
    end: usize,
    len: usize,
    kind: Kind,
    receipt: Option<Receipt>,
}

/// A file region being written (a stream's body).
pub(crate) struct FileSegment {
    file: File,
    /// Where the next byte to read (or send) is.
    offset: u64,
    /// Bytes of the region not yet read (or sent).
    remaining: u64,
    /// The region's length.
    len: u64,
    /// Queued before a channel cipher started: it goes out as it is.
    plain: bool,
    /// On an encrypted connection: the sealed piece being written.
    piece: Option<Piece>,
    /// Counted among the connection's stream bodies queued while it lives.
    _counted: Option<Counted>,
}

/// A sealed piece of a file: its wire bytes, how many were written, and the plaintext
/// bytes they stand for.
struct Piece {
    bytes: Vec<u8>,
    written: usize,
    plain: usize,
}

/// A piece of the queue.
pub(crate) enum Segment {
    /// A frame written from its own body (encrypted in place once `sealed`).
    Whole {
        frame: Frame,
        written: usize,
        sealed: bool,
    },
    /// Small frames copied one after another.
    Flat {
        bytes: Vec<u8>,
        written: usize,
        /// The frames in `bytes` not yet written in full, in order (once sealed, where
        /// each one's bytes end on the wire).
        marks: VecDeque<Mark>,
        /// Once sealed: `bytes` are what goes on the wire for this many plaintext bytes.
        sealed: Option<usize>,
    },
    /// A large frame in one GCM envelope, sealed a chunk at a time (see the module docs).
    Envelope {
        frame: Frame,
        sealer: Box<EnvelopeSealer>,
        /// The current chunk's wire bytes (the first chunk starts with the envelope's
        /// length field and header).
        wire: Vec<u8>,
        /// Bytes of `wire` written.
        written: usize,
        /// Plaintext bytes of the frame sealed so far, the current chunk's included.
        sealed: usize,
        /// Plaintext bytes in the current chunk.
        chunk: usize,
    },
    /// A file region (see the module docs).
    File(FileSegment),
}

/// What finished while bytes were written: receipts to tell (outside any lock) and the
/// bytes of answers that left.
#[derive(Default)]
pub(crate) struct Finished {
    pub(crate) receipts: Vec<Receipt>,
    pub(crate) answer_bytes: usize,
    /// Plaintext bytes whose wire bytes were all written.
    pub(crate) plain_bytes: usize,
    /// Whole segments written, dropped outside the lock with the receipts.
    segments: Vec<Segment>,
}

impl Finished {
    /// Tells the receipts `Ok` and frees what was written.
    pub(crate) fn settle(self) {
        for receipt in self.receipts {
            receipt(Ok(()));
        }
        drop(self.segments);
    }
}

/// What was never written when a connection closed.
#[derive(Default)]
pub(crate) struct Unwritten {
    pub(crate) receipts: Vec<Receipt>,
    /// One-way messages among them.
    pub(crate) one_way: usize,
}

impl Unwritten {
    /// Tells the receipts `outcome`.
    pub(crate) fn settle(self, outcome: &Result<(), RpcError>) {
        for receipt in self.receipts {
            receipt(outcome.clone());
        }
    }
}

impl Segment {
    /// Calls `f` with the non-empty parts of the bytes not yet written, in order, until
    /// it returns `false`.
    fn remaining_parts<'a>(&'a self, mut f: impl FnMut(&'a [u8]) -> bool) {
        let rest = match self {
            Self::Whole { frame, written, .. } => {
                frame.parts_from(*written, f);
                return;
            }
            Self::Flat { bytes, written, .. }
            | Self::Envelope {
                wire: bytes,
                written,
                ..
            } => &bytes[*written..],
            Self::File(file) => match &file.piece {
                Some(piece) => &piece.bytes[piece.written..],
                None => &[],
            },
        };
        if !rest.is_empty() {
            f(rest);
        }
    }

    /// Bytes not yet written of what is sealed (of an envelope, of its current chunk).
    pub(crate) fn remaining_len(&self) -> usize {
        match self {
            Self::Whole { frame, written, .. } => frame.len() - written,
            Self::Flat { bytes, written, .. }
            | Self::Envelope {
                wire: bytes,
                written,
                ..
            } => bytes.len() - written,
            Self::File(file) => match &file.piece {
                Some(piece) => piece.bytes.len() - piece.written,
                None => file.remaining as usize,
            },
        }
    }

    /// Whether [`remaining_parts`](Self::remaining_parts) is all this segment has left to write, so
    /// that the next segment's bytes may follow it in the same write.
    fn remaining_is_all(&self) -> bool {
        match self {
            Self::Envelope { sealer, .. } => sealer.left() == 0,
            Self::File(file) => file.remaining == 0,
            _ => true,
        }
    }

    /// Everything is written.
    fn is_done(&self) -> bool {
        match self {
            Self::File(file) => file.remaining == 0 && file.piece.is_none(),
            _ => self.remaining_len() == 0 && self.remaining_is_all(),
        }
    }

    /// Whether the segment's wire bytes are made (or it goes out as it is).
    fn is_sealed(&self) -> bool {
        match self {
            Self::Whole { sealed, .. } => *sealed,
            Self::Flat { sealed, .. } => sealed.is_some(),
            Self::Envelope { .. } => true,
            Self::File(file) => file.plain || file.piece.is_some(),
        }
    }

    /// An envelope whose current chunk is written: seals the next one.
    fn refill(&mut self) -> Result<(), AuthError> {
        let Self::Envelope {
            sealer,
            wire,
            written,
            ..
        } = self
        else {
            return Ok(());
        };
        if *written < wire.len() || sealer.left() == 0 {
            return Ok(());
        }
        wire.clear();
        *written = 0;
        self.seal_next_chunk()
    }

    /// Appends an envelope's next chunk to its wire bytes.
    fn seal_next_chunk(&mut self) -> Result<(), AuthError> {
        let Self::Envelope {
            frame,
            sealer,
            wire,
            sealed,
            chunk,
            ..
        } = self
        else {
            return Ok(());
        };
        let len = SEAL_CHUNK.min(sealer.left());
        sealer.seal(&frame.range(*sealed, *sealed + len), wire)?;
        *sealed += len;
        *chunk = len;
        Ok(())
    }

    /// Records `n` more bytes written (at most what remains), collecting the frames it
    /// finished and the plaintext bytes it retired (those of an envelope all at once, when
    /// its last byte is written).
    fn advance(&mut self, n: usize, finished: &mut Finished) {
        match self {
            Self::Whole { frame, written, .. } => {
                *written += n;
                finished.plain_bytes += n;
                if *written == frame.len() {
                    if frame.kind == Kind::Answer {
                        finished.answer_bytes += frame.len();
                    }
                    finished.receipts.extend(frame.receipt.take());
                }
            }
            Self::Flat {
                bytes,
                written,
                marks,
                sealed,
            } => {
                *written += n;
                finished.plain_bytes += match *sealed {
                    Some(plain) if plain != bytes.len() => {
                        if *written == bytes.len() {
                            plain
                        } else {
                            0
                        }
                    }
                    _ => n,
                };
                while marks.front().is_some_and(|mark| mark.end <= *written) {
                    let mark = marks.pop_front().expect("checked");
                    if mark.kind == Kind::Answer {
                        finished.answer_bytes += mark.len;
                    }
                    finished.receipts.extend(mark.receipt);
                }
            }
            Self::Envelope {
                frame,
                sealer,
                wire,
                written,
                chunk,
                ..
            } => {
                *written += n;
                if *written == wire.len() {
                    finished.plain_bytes += std::mem::take(chunk);
                    if sealer.left() == 0 {
                        if frame.kind == Kind::Answer {
                            finished.answer_bytes += frame.len();
                        }
                        finished.receipts.extend(frame.receipt.take());
                    }
                }
            }
            Self::File(file) => {
                match &mut file.piece {
                    Some(piece) => {
                        piece.written += n;
                        if piece.written == piece.bytes.len() {
                            finished.plain_bytes += piece.plain;
                            file.piece = None;
                        }
                    }
                    None => {
                        // Sent as it is (sendfile).
                        file.offset += n as u64;
                        file.remaining -= n as u64;
                        finished.plain_bytes += n;
                    }
                }
                if file.remaining == 0 && file.piece.is_none() {
                    finished.answer_bytes += file.len as usize;
                }
            }
        }
    }

    /// Makes this segment's wire bytes with `cipher`, unless that was done. A file makes
    /// its next piece only when the last one is written.
    fn seal(&mut self, cipher: &mut Encryptor) -> Result<(), SealError> {
        if let Self::File(file) = self {
            if file.plain || file.piece.is_some() || file.remaining == 0 {
                return Ok(());
            }
            let want = (file.remaining as usize).min(FILE_PIECE);
            let mut plain = vec![0; want];
            read_exact_at(&file.file, &mut plain, file.offset).map_err(SealError::Io)?;
            file.offset += want as u64;
            file.remaining -= want as u64;
            let bytes = if cipher.encrypt_in_place(&mut plain) {
                plain
            } else {
                let mut wire = Vec::with_capacity(cipher.max_output(want));
                cipher
                    .encrypt(&[&plain], &mut wire)
                    .map_err(SealError::Cipher)?;
                wire
            };
            file.piece = Some(Piece {
                bytes,
                written: 0,
                plain: want,
            });
            return Ok(());
        }
        match self {
            Self::Whole { sealed: true, .. }
            | Self::Flat {
                sealed: Some(_), ..
            }
            | Self::Envelope { .. } => Ok(()),
            Self::Whole {
                frame,
                written,
                sealed,
            } => {
                debug_assert_eq!(*written, 0, "a segment is sealed before it is written");
                // A body with spliced pieces is never encrypted in place (the pieces are
                // the caller's): the cipher writes its wire bytes from the parts into a
                // buffer of its own (the one copy of such a payload on an encrypted
                // connection, as CTR's in-place copy was before).
                if let Some(body) = frame.body.as_flat_mut() {
                    if cipher.encrypt_in_place(frame.header.as_bytes_mut()) {
                        cipher.encrypt_in_place(body);
                        *sealed = true;
                        return Ok(());
                    }
                }
                let len = frame.len();
                if len > LAZY_SEAL_MIN {
                    let mut wire = Vec::with_capacity(64 + SEAL_CHUNK + SEAL_CHUNK / 1024);
                    if let Some(sealer) = cipher.begin_envelope(len, &mut wire) {
                        let placeholder = Self::Flat {
                            bytes: Vec::new(),
                            written: 0,
                            marks: VecDeque::new(),
                            sealed: Some(0),
                        };
                        let Self::Whole { frame, .. } = std::mem::replace(self, placeholder) else {
                            unreachable!("matched above");
                        };
                        *self = Self::Envelope {
                            frame,
                            sealer: Box::new(sealer?),
                            wire,
                            written: 0,
                            sealed: 0,
                            chunk: 0,
                        };
                        // The header goes out with the first chunk.
                        return Ok(self.seal_next_chunk()?);
                    }
                }
                let mut wire = Vec::with_capacity(cipher.max_output(len));
                cipher.encrypt(&frame.range(0, len), &mut wire)?;
                let mark = Mark {
                    end: wire.len(),
                    len,
                    kind: frame.kind,
                    receipt: frame.receipt.take(),
                };
                *self = Self::Flat {
                    bytes: wire,
                    written: 0,
                    marks: VecDeque::from([mark]),
                    sealed: Some(len),
                };
                Ok(())
            }
            Self::Flat {
                bytes,
                written,
                marks,
                sealed,
            } => {
                debug_assert_eq!(*written, 0, "a segment is sealed before it is written");
                let len = bytes.len();
                if cipher.encrypt_in_place(bytes) {
                    *sealed = Some(len);
                    return Ok(());
                }
                let mut wire = Vec::with_capacity(cipher.max_output(len));
                cipher.encrypt(&[bytes], &mut wire)?;
                // The frames are whole on the wire when the envelope is.
                for mark in marks.iter_mut() {
                    mark.end = wire.len();
                }
                *bytes = wire;
                *sealed = Some(len);
                Ok(())
            }
            Self::File(_) => unreachable!("handled above"),
        }
    }

    /// What of this segment was never written.
    pub(crate) fn abandon(self, unwritten: &mut Unwritten) {
        match self {
            Self::Whole { mut frame, .. } | Self::Envelope { mut frame, .. } => {
                if frame.kind == Kind::OneWay {
                    unwritten.one_way += 1;
                }
                unwritten.receipts.extend(frame.receipt.take());
            }
            Self::Flat { marks, .. } => {
                for mark in marks {
                    if mark.kind == Kind::OneWay {
                        unwritten.one_way += 1;
                    }
                    unwritten.receipts.extend(mark.receipt);
                }
            }
            Self::File(_) => {}
        }
    }
}

/// Why a segment could not be sealed.
pub(crate) enum SealError {
    Cipher(AuthError),
    Io(io::Error),
}

impl From<AuthError> for SealError {
    fn from(err: AuthError) -> Self {
        Self::Cipher(err)
    }
}

impl From<SealError> for io::Error {
    fn from(err: SealError) -> Self {
        match err {
            SealError::Cipher(err) => Self::other(format!("cannot encrypt: {err:#}")),
            SealError::Io(err) => err,
        }
    }
}

/// Reads exactly `buf.len()` bytes of `file` at `offset`; a file that ends sooner (it
/// shrank after its length was announced) is `UnexpectedEof`.
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file is shorter than the stream announced",
                ));
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(err) if interrupted(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Frames cleared to go, in order.
#[derive(Default)]
pub(crate) struct Segments {
    queue: VecDeque<Segment>,
}

impl Segments {
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Appends `frame`: copied into the shared buffer at the tail if it is small, else as a
    /// segment of its own (its body is never copied); then its stream body, if any.
    pub(crate) fn push(&mut self, mut frame: Frame) {
        let tail = frame.tail.take();
        self.push_head(frame);
        self.push_tail(tail);
    }

    /// Appends a stream's body as a segment of its own.
    fn push_tail(&mut self, tail: Option<StreamBody>) {
        let Some(tail) = tail else {
            return;
        };
        match tail.source {
            Source::Bytes(bytes) => {
                let frame = Frame::new(FrameHeader::empty(), bytes, Kind::Answer);
                self.push_head_whole(frame);
            }
            Source::File { file, offset } => {
                self.queue.push_back(Segment::File(FileSegment {
                    file,
                    offset,
                    remaining: tail.len,
                    len: tail.len,
                    plain: false,
                    piece: None,
                    _counted: tail.counted,
                }));
            }
        }
    }

    fn push_head(&mut self, frame: Frame) {
        let len = frame.len();
        if frame.body.len() > FLATTEN_MAX {
            self.push_head_whole(frame);
            return;
        }
        let fits = matches!(
            self.queue.back(),
            Some(Segment::Flat { bytes, sealed: None, .. }) if bytes.len() + len <= CHUNK
        );
        if !fits {
            self.queue.push_back(Segment::Flat {
                bytes: Vec::with_capacity(CHUNK_START.max(len)),
                written: 0,
                marks: VecDeque::new(),
                sealed: None,
            });
        }
        let Some(Segment::Flat { bytes, marks, .. }) = self.queue.back_mut() else {
            unreachable!("the tail is a shared buffer");
        };
        bytes.extend_from_slice(frame.header.as_bytes());
        frame
            .body
            .for_each_part(|part| bytes.extend_from_slice(part));
        marks.push_back(Mark {
            end: bytes.len(),
            len,
            kind: frame.kind,
            receipt: frame.receipt,
        });
    }

    /// Appends a frame as a segment of its own (the thread that writes it at once), then
    /// its stream body, if any.
    pub(crate) fn push_whole(&mut self, mut frame: Frame) {
        let tail = frame.tail.take();
        self.push_head_whole(frame);
        self.push_tail(tail);
    }

    fn push_head_whole(&mut self, frame: Frame) {
        self.queue.push_back(Segment::Whole {
            frame,
            written: 0,
            sealed: false,
        });
    }

    /// Seals, in order, every segment not sealed yet with `cipher` (see the module docs),
    /// up to the first file that is not written in full (it makes its next piece; what
    /// follows it is sealed once it is done). Called by the one thread that writes,
    /// outside the queue's lock.
    pub(crate) fn seal(&mut self, cipher: &mut Encryptor) -> Result<(), SealError> {
        for segment in &mut self.queue {
            segment.seal(cipher)?;
            if let Segment::File(file) = segment {
                if !file.plain && !segment.is_done() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Marks every segment sealed as it is: what was queued before a channel cipher
    /// started goes out in plaintext (a server's answer to the handshake).
    pub(crate) fn seal_as_is(&mut self) {
        for segment in &mut self.queue {
            match segment {
                Segment::Whole { sealed, .. } => *sealed = true,
                Segment::Flat { bytes, sealed, .. } => {
                    sealed.get_or_insert(bytes.len());
                }
                Segment::Envelope { .. } => {}
                Segment::File(file) => {
                    if file.piece.is_none() && file.remaining == file.len {
                        file.plain = true;
                    }
                }
            }
        }
    }

    /// Takes everything.
    pub(crate) fn take(&mut self) -> Self {
        std::mem::take(self)
    }

    /// Puts `front` (what a write left) back before what came meanwhile, moving the
    /// shorter of the two.
    pub(crate) fn put_back(&mut self, mut front: Self) {
        if front.queue.len() <= self.queue.len() {
            while let Some(segment) = front.queue.pop_back() {
                self.queue.push_front(segment);
            }
        } else {
            front.queue.extend(self.queue.drain(..));
            *self = front;
        }
    }

    /// Everything, for the close.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Segment> + '_ {
        self.queue.drain(..)
    }

    /// Writes until everything is written, the socket would block, or [`FILE_TURN`] bytes
    /// of stream bodies were written (then `yielded`). With `cipher` (an encrypted
    /// connection) it seals as it goes (see [`seal`](Self::seal)). The segments written in
    /// full leave `self` and go to the returned [`Finished`], with what they finished.
    pub(crate) fn write_to(
        &mut self,
        wire: &dyn Wire,
        mut cipher: Option<&mut Encryptor>,
    ) -> Written {
        let mut out = Written::default();
        let mut file_bytes = 0;
        while !self.queue.is_empty() {
            if file_bytes >= FILE_TURN {
                out.yielded = true;
                break;
            }
            if let Some(cipher) = cipher.as_deref_mut() {
                if let Err(err) = self.seal(cipher) {
                    out.error = Some(err.into());
                    return out;
                }
            }
            let encrypted = cipher.is_some();
            // A file not yet read into a sealed piece goes with `sendfile`: this many bytes.
            let sendfile = match self.queue.front() {
                Some(Segment::File(file)) if file.piece.is_none() && (file.plain || !encrypted) => {
                    Some((file.remaining as usize).min(FILE_TURN - file_bytes))
                }
                _ => None,
            };
            let result = match (sendfile, self.queue.front()) {
                (Some(count), Some(Segment::File(file))) => {
                    wire.send_file(&file.file, file.offset, count)
                }
                _ => {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let mut count = 0;
                    for segment in &self.queue {
                        if count == MAX_SLICES || (encrypted && !segment.is_sealed()) {
                            break;
                        }
                        if let Segment::File(file) = segment {
                            // Only a sealed piece is written with others, and nothing after it.
                            if let Some(piece) = &file.piece {
                                slices[count] = IoSlice::new(&piece.bytes[piece.written..]);
                                count += 1;
                            }
                            break;
                        }
                        // A segment with more parts than there is room for is written in
                        // part (a body with many spliced pieces).
                        let mut listed_all = true;
                        segment.remaining_parts(|part| {
                            if count == MAX_SLICES {
                                listed_all = false;
                                return false;
                            }
                            slices[count] = IoSlice::new(part);
                            count += 1;
                            true
                        });
                        if !listed_all || !segment.remaining_is_all() {
                            break;
                        }
                    }
                    if count == 0 {
                        // Nothing writable before a file that must go first (the next round
                        // writes it), or segments with nothing left: drop those.
                        self.pop_done(&mut out.finished);
                        if self
                            .queue
                            .front()
                            .is_some_and(|front| !matches!(front, Segment::File(_)))
                        {
                            debug_assert!(false, "a segment with nothing to write");
                            break;
                        }
                        continue;
                    }
                    wire.write_vectored(&slices[..count])
                }
            };
            // One handling of what `sendfile` or `writev` did.
            match result {
                Ok(0) if sendfile != Some(0) => {
                    out.error = Some(match sendfile {
                        Some(_) => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file is shorter than the stream announced",
                        ),
                        None => io::ErrorKind::WriteZero.into(),
                    });
                    return out;
                }
                Ok(mut written) => {
                    trace!("wrote {written} bytes (sendfile: {})", sendfile.is_some());
                    out.bytes += written;
                    // At least one step, so that an empty file (nothing to send) is done.
                    while let Some(front) = self.queue.front_mut() {
                        let step = written.min(front.remaining_len());
                        if let Segment::File(_) = front {
                            file_bytes += step;
                        }
                        written -= step;
                        if let Err(err) = self.advance_front(step, &mut out.finished) {
                            out.error = Some(err);
                            return out;
                        }
                        if written == 0 {
                            break;
                        }
                    }
                }
                Err(err) if would_block(&err) => break,
                Err(err) if interrupted(&err) => {}
                Err(err) => {
                    out.error = Some(err);
                    return out;
                }
            }
        }
        out
    }

    /// Records `n` bytes of the front segment written, moves it to `finished` once it is
    /// written in full, and seals a lazily sealed envelope's next chunk once its current
    /// one is written.
    fn advance_front(&mut self, n: usize, finished: &mut Finished) -> io::Result<()> {
        if let Some(front) = self.queue.front_mut() {
            front.advance(n, finished);
            if !front.is_done() && front.remaining_len() == 0 {
                front
                    .refill()
                    .map_err(|err| io::Error::other(format!("cannot encrypt: {err:#}")))?;
            }
        }
        self.pop_done(finished);
        Ok(())
    }

    /// Moves the written segments at the front to `finished`.
    fn pop_done(&mut self, finished: &mut Finished) {
        while self.queue.front().is_some_and(Segment::is_done) {
            let done = self.queue.pop_front().expect("checked");
            finished.segments.push(done);
        }
    }
}

/// What [`Segments::write_to`] did.
#[derive(Default)]
pub(crate) struct Written {
    pub(crate) finished: Finished,
    /// Bytes that went to the socket.
    pub(crate) bytes: usize,
    /// The socket (or a file, or the cipher) failed: the connection must close.
    pub(crate) error: Option<io::Error>,
    /// It stopped after [`FILE_TURN`] bytes of stream bodies with more to write.
    pub(crate) yielded: bool,
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use crate::sync::Mutex;

    use super::*;
    use crate::auth::Cipher;
    use crate::auth::tests::channel_pair;
    use crate::frame::Body;
    use crate::sync::Arc;
    use crate::sync::atomic::{AtomicUsize, Ordering};

    /// A socket that takes at most `per_write` bytes per call, and `budget` bytes until
    /// it would block, and keeps them.
    struct Trickle {
        per_write: usize,
        budget: Mutex<usize>,
        out: Mutex<Vec<u8>>,
    }

    impl Trickle {
        fn new(per_write: usize) -> Self {
            Self {
                per_write,
                budget: Mutex::new(0),
                out: Mutex::new(Vec::new()),
            }
        }

        fn allow(&self, bytes: usize) {
            *self.budget.lock() = bytes;
        }
    }

    impl Wire for Trickle {
        fn read(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut out = self.out.lock();
            let mut budget = self.budget.lock();
            if *budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut room = self.per_write.min(*budget);
            let start = room;
            for buf in bufs {
                let n = buf.len().min(room);
                out.extend_from_slice(&buf[..n]);
                room -= n;
                if room == 0 {
                    break;
                }
            }
            *budget -= start - room;
            Ok(start - room)
        }

        fn shutdown(&self) {}
    }

    fn frame(body_len: usize, fill: u8, receipts: &Arc<AtomicUsize>) -> (Frame, Vec<u8>) {
        let body = vec![fill; body_len];
        let header = FrameHeader::one_way(body_len);
        let mut plain = header.as_bytes().to_vec();
        plain.extend_from_slice(&body);
        let receipts = receipts.clone();
        let receipt: Receipt = Box::new(move |outcome| {
            assert!(outcome.is_ok());
            receipts.fetch_add(1, Ordering::SeqCst);
        });
        let frame = Frame::new(header, body, Kind::OneWay).with_receipt(Some(receipt));
        (frame, plain)
    }

    /// A large frame between small ones, on a GCM connection whose socket takes a few
    /// KiB per write: the writer holds one chunk of ciphertext at a time, every byte
    /// decrypts to the frames in order, and each receipt is told once, after its last byte.
    #[test]
    fn large_gcm_frames_are_sealed_a_chunk_at_a_time_as_the_socket_drains() {
        let (mut encryptor, mut decryptor) = channel_pair(Cipher::AesGcm);
        let receipts = Arc::new(AtomicUsize::new(0));
        let mut expected = Vec::new();
        let mut segments = Segments::default();
        for (len, fill) in [(10, 1), (3 << 20, 2), (20, 3), (LAZY_SEAL_MIN, 4), (5, 5)] {
            let (frame, plain) = frame(len, fill, &receipts);
            segments.push(frame);
            expected.extend_from_slice(&plain);
        }
        assert!(segments.seal(&mut encryptor).is_ok());
        let wire = Trickle::new(16_384);
        let mut plain_bytes = 0;
        let mut calls = 0;
        let mut chunked = 0;
        while !segments.is_empty() {
            calls += 1;
            assert!(calls < 10_000, "the writer makes progress");
            for segment in &segments.queue {
                if let Segment::Envelope { wire, .. } = segment {
                    chunked += 1;
                    assert!(wire.capacity() <= 64 + SEAL_CHUNK + SEAL_CHUNK / 1024);
                }
            }
            let told = receipts.load(Ordering::SeqCst);
            wire.allow(50_000);
            let Written {
                finished,
                error: err,
                ..
            } = segments.write_to(&wire, None);
            assert!(err.is_none());
            plain_bytes += finished.plain_bytes;
            let newly = finished.receipts.len();
            finished.settle();
            assert_eq!(receipts.load(Ordering::SeqCst), told + newly);
        }
        assert_eq!(receipts.load(Ordering::SeqCst), 5);
        assert!(chunked > 10, "the 3 MiB frame went out a chunk at a time");
        assert_eq!(plain_bytes, expected.len());
        let mut plain = Vec::new();
        decryptor.decrypt(&wire.out.lock(), &mut plain).unwrap();
        assert!(!decryptor.is_mid_envelope());
        assert_eq!(plain.len(), expected.len());
        assert!(plain == expected, "the frames decrypt in order");
    }

    /// A connection that closes mid-envelope tells the large frame's receipt it was never
    /// written, as for a frame in clear.
    #[test]
    fn an_envelope_cut_short_is_abandoned_like_any_frame() {
        let (mut encryptor, _) = channel_pair(Cipher::AesGcm);
        let receipts = Arc::new(AtomicUsize::new(0));
        let mut segments = Segments::default();
        let (frame, _) = frame(1 << 20, 7, &receipts);
        segments.push(frame);
        assert!(segments.seal(&mut encryptor).is_ok());
        let wire = Trickle::new(16_384);
        wire.allow(300_000);
        let Written {
            finished,
            bytes: written,
            ..
        } = segments.write_to(&wire, None);
        assert!(written > 0 && finished.receipts.is_empty());
        let mut unwritten = Unwritten::default();
        for segment in segments.drain() {
            segment.abandon(&mut unwritten);
        }
        assert_eq!((unwritten.one_way, unwritten.receipts.len()), (1, 1));
    }

    /// A socket that answers each `writev` and `sendfile` with the next result of its
    /// script (`Ok(n)`: it takes up to `n` bytes), and would block once the script ends.
    struct Scripted {
        script: Mutex<VecDeque<io::Result<usize>>>,
        out: Mutex<Vec<u8>>,
        sendfiles: AtomicUsize,
    }

    impl Scripted {
        fn new(script: Vec<io::Result<usize>>) -> Self {
            Self {
                script: Mutex::new(script.into()),
                out: Mutex::new(Vec::new()),
                sendfiles: AtomicUsize::new(0),
            }
        }

        fn next(&self) -> io::Result<usize> {
            self.script
                .lock()
                .pop_front()
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
        }
    }

    impl Wire for Scripted {
        fn read(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.next()?;
            let mut out = self.out.lock();
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(room);
                out.extend_from_slice(&buf[..n]);
                room -= n;
                taken += n;
            }
            Ok(taken)
        }

        fn send_file(&self, file: &File, offset: u64, count: usize) -> io::Result<usize> {
            use std::os::unix::fs::FileExt;
            self.sendfiles.fetch_add(1, Ordering::SeqCst);
            let room = self.next()?;
            let mut buf = vec![0; count.min(room)];
            let n = file.read_at(&mut buf, offset)?;
            self.out.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn shutdown(&self) {}
    }

    /// A file of `len` bytes (0, 1, 2, ...) in the temp directory, removed at once (the
    /// open handle keeps it).
    fn file_of(len: usize, tag: &str) -> (File, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let path =
            std::env::temp_dir().join(format!("rpcenv-segment-{tag}-{}-{len}", std::process::id()));
        std::fs::write(&path, &bytes).expect("write the temp file");
        let file = File::open(&path).expect("open the temp file");
        std::fs::remove_file(&path).expect("remove the temp file");
        (file, bytes)
    }

    fn push_file(segments: &mut Segments, file: File, len: usize) {
        segments.queue.push_back(Segment::File(FileSegment {
            file,
            offset: 0,
            remaining: len as u64,
            len: len as u64,
            plain: false,
            piece: None,
            _counted: None,
        }));
    }

    fn plain_frame(body_len: usize, fill: u8) -> (Frame, Vec<u8>) {
        let header = FrameHeader::one_way(body_len);
        let mut plain = header.as_bytes().to_vec();
        plain.extend_from_slice(&vec![fill; body_len]);
        let frame = Frame::new(header, vec![fill; body_len], Kind::OneWay);
        (frame, plain)
    }

    fn error_kind(written: &Written) -> Option<io::ErrorKind> {
        written.error.as_ref().map(io::Error::kind)
    }

    /// A frame, a file region and a frame, through interrupted, partial and blocked
    /// `writev` and `sendfile` calls: every byte goes out once, in order.
    #[test]
    fn writev_and_sendfile_results_are_handled_alike() {
        let (file, file_bytes) = file_of(100, "mixed");
        let (first, mut expected) = plain_frame(10, 1);
        let (last, last_bytes) = plain_frame(5, 3);
        expected.extend_from_slice(&file_bytes);
        expected.extend_from_slice(&last_bytes);
        let mut segments = Segments::default();
        segments.push(first);
        push_file(&mut segments, file, 100);
        segments.push(last);
        let wire = Scripted::new(vec![
            Err(io::ErrorKind::Interrupted.into()), // writev: again
            Ok(4),                                  // writev: part of the first frame
            Ok(1000),                               // writev: the rest of it, up to the file
            Err(io::ErrorKind::Interrupted.into()), // sendfile: again
            Ok(40),                                 // sendfile: part of the file
            Err(io::ErrorKind::WouldBlock.into()),  // sendfile: the socket is full
        ]);
        let written = segments.write_to(&wire, None);
        assert!(written.error.is_none());
        assert!(!written.yielded);
        assert_eq!(written.bytes, expected.len() - 60 - last_bytes.len());
        assert!(!segments.is_empty());
        *wire.script.lock() = vec![Ok(1000), Ok(1000)].into();
        let written = segments.write_to(&wire, None);
        assert!(written.error.is_none());
        assert_eq!(written.bytes, 60 + last_bytes.len());
        assert!(segments.is_empty());
        assert_eq!(*wire.out.lock(), expected);
        assert_eq!(wire.sendfiles.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_write_of_nothing_fails_as_write_zero_and_a_short_file_as_unexpected_eof() {
        let mut segments = Segments::default();
        segments.push(plain_frame(10, 1).0);
        let written = segments.write_to(&Scripted::new(vec![Ok(0)]), None);
        assert_eq!(error_kind(&written), Some(io::ErrorKind::WriteZero));

        let (file, _) = file_of(10, "short");
        let mut segments = Segments::default();
        push_file(&mut segments, file, 10);
        let written = segments.write_to(&Scripted::new(vec![Ok(0)]), None);
        assert_eq!(error_kind(&written), Some(io::ErrorKind::UnexpectedEof));

        for (frame_first, tag) in [(true, "reset-writev"), (false, "reset-sendfile")] {
            let (file, _) = file_of(10, tag);
            let mut segments = Segments::default();
            if frame_first {
                segments.push(plain_frame(10, 1).0);
            }
            push_file(&mut segments, file, 10);
            let wire = Scripted::new(vec![Err(io::ErrorKind::ConnectionReset.into())]);
            let written = segments.write_to(&wire, None);
            assert_eq!(error_kind(&written), Some(io::ErrorKind::ConnectionReset));
            assert_eq!(written.bytes, 0);
        }
    }

    /// An empty file region (`sendfile` of 0 bytes) is finished, not an error, and what
    /// follows it goes out in the same call.
    #[test]
    fn an_empty_file_region_is_finished_and_the_next_frame_written() {
        let (file, _) = file_of(0, "empty");
        let (last, expected) = plain_frame(5, 3);
        let mut segments = Segments::default();
        push_file(&mut segments, file, 0);
        segments.push(last);
        let wire = Scripted::new(vec![Ok(0), Ok(1000)]);
        let written = segments.write_to(&wire, None);
        assert!(written.error.is_none());
        assert!(segments.is_empty());
        assert_eq!(*wire.out.lock(), expected);
    }

    /// A one-way frame whose body is `bytes` with `pieces` spliced in (see `Body`), and
    /// the bytes it makes on the wire.
    fn spliced_frame(pieces: &[(usize, bytes::Bytes)]) -> (Frame, Vec<u8>) {
        let buffer: Vec<u8> = (0..100).collect();
        let body = Body::spliced(buffer, pieces.to_vec());
        let flat = body.to_vec();
        let header = FrameHeader::one_way(body.len());
        let mut plain = header.as_bytes().to_vec();
        plain.extend_from_slice(&flat);
        (Frame::new(header, body, Kind::OneWay), plain)
    }

    fn piece(len: usize, fill: u8) -> bytes::Bytes {
        bytes::Bytes::from(vec![fill; len])
    }

    /// A socket that keeps the bytes and the addresses of the slices it was handed.
    #[derive(Default)]
    struct Recorder {
        out: Mutex<Vec<u8>>,
        slices: Mutex<Vec<(usize, usize)>>,
    }

    impl Wire for Recorder {
        fn read(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            // At most 7000 bytes per call: slices are cut, and resumed in the middle.
            let mut room = 7000;
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(room);
                self.slices.lock().push((buf.as_ptr() as usize, buf.len()));
                self.out.lock().extend_from_slice(&buf[..n]);
                room -= n;
                taken += n;
            }
            Ok(taken)
        }

        fn send_file(&self, _: &File, _: u64, _: usize) -> io::Result<usize> {
            unreachable!("no files here")
        }

        fn shutdown(&self) {}
    }

    /// A frame with pieces spliced into its body goes out byte for byte as the frame with
    /// the pieces copied in, each piece straight from its own buffer; its length and its
    /// charge are the copied frame's. A body of more pieces than one `writev` takes is
    /// written over several.
    #[test]
    fn spliced_bodies_go_out_from_their_pieces_as_the_copied_body_would() {
        let big = piece(40_000, 9);
        let (spliced, plain) = spliced_frame(&[
            (0, piece(3, 1)),
            (10, big.clone()),
            (10, piece(5, 2)),
            (100, piece(20_000, 3)),
        ]);
        let many: Vec<_> = (0..300).map(|i| (i / 3, piece(7, i as u8))).collect();
        let (crowded, crowded_plain) = spliced_frame(&many);
        let (small, small_plain) = plain_frame(10, 4);
        let header_len = FrameHeader::one_way(0).as_bytes().len();
        let copied = Frame::new(
            FrameHeader::one_way(plain.len() - header_len),
            plain[header_len..].to_vec(),
            Kind::OneWay,
        );
        assert_eq!(spliced.len(), copied.len());
        assert_eq!(spliced.charge(), copied.charge());
        let expected = [small_plain.clone(), plain, crowded_plain, small_plain].concat();
        let mut segments = Segments::default();
        segments.push(small);
        segments.push(spliced);
        segments.push(crowded);
        segments.push(plain_frame(10, 4).0);
        let wire = Recorder::default();
        let mut bytes = 0;
        let mut calls = 0;
        while !segments.is_empty() {
            calls += 1;
            assert!(calls < 1000, "the writer makes progress");
            let written = segments.write_to(&wire, None);
            assert!(written.error.is_none());
            bytes += written.bytes;
        }
        assert_eq!(bytes, expected.len());
        assert!(
            *wire.out.lock() == expected,
            "the wire bytes are the copied frames'"
        );
        let start = big.as_ptr() as usize;
        assert!(
            wire.slices.lock().iter().any(|&(at, _)| at == start),
            "the 40 KiB piece is written from its own buffer"
        );
    }

    /// On an encrypted connection a spliced body decrypts to the copied frame's bytes;
    /// the cipher reads the pieces where they are (a large GCM frame is sealed a chunk at
    /// a time straight from them) and never modifies them.
    #[test]
    fn spliced_bodies_are_sealed_as_the_copied_body_would_be() {
        for cipher in [Cipher::AesCtr, Cipher::AesGcm] {
            for big in [50_000, LAZY_SEAL_MIN + 70_000] {
                let (mut encryptor, mut decryptor) = channel_pair(cipher);
                let large = piece(big, 1);
                let (frame, plain) =
                    spliced_frame(&[(5, large.clone()), (5, piece(3, 2)), (90, piece(20_000, 3))]);
                let mut segments = Segments::default();
                segments.push(frame);
                assert!(segments.seal(&mut encryptor).is_ok());
                if cipher == Cipher::AesGcm && big > LAZY_SEAL_MIN {
                    assert!(
                        matches!(
                            segments.queue.front(),
                            Some(Segment::Envelope { frame, .. }) if frame.body.is_spliced()
                        ),
                        "sealed a chunk at a time from the pieces"
                    );
                }
                let wire = Trickle::new(16_384);
                let mut calls = 0;
                while !segments.is_empty() {
                    calls += 1;
                    assert!(calls < 10_000, "the writer makes progress");
                    wire.allow(100_000);
                    let written = segments.write_to(&wire, Some(&mut encryptor));
                    assert!(written.error.is_none());
                }
                let mut out = Vec::new();
                decryptor.decrypt(&wire.out.lock(), &mut out).unwrap();
                assert!(
                    out == plain,
                    "{cipher:?} of {big}: the copied frame's bytes"
                );
                assert!(large.iter().all(|&b| b == 1), "the piece is left as it was");
            }
        }
    }
}
