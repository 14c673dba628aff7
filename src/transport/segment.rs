//! What a write queue holds: frames written from their own body, and small frames copied
//! one after another into a shared buffer.
//!
//! A small frame (body up to [`FLATTEN_MAX`] bytes) handed to a busy connection is copied
//! into the buffer at the queue's tail, as hyper's `WriteBuf` flattens, and its body is
//! freed at once by the thread that made it. The event loop then writes a few large
//! slices instead of two per frame, and never frees memory another thread allocated for
//! each small frame (which costs the allocator far more than the copy). A large body is
//! never copied: it is written from its own buffer, after its header.
//!
//! On an encrypted connection the thread that writes *seals* each segment before its
//! first byte goes out ([`Segments::seal`]): AES-CTR encrypts it in place, AES-GCM turns it
//! into one envelope. A sealed segment is never appended to and never sealed again, so a
//! write that stops half way resumes with the same ciphertext.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use log::trace;

use crate::auth::{AuthError, Encryptor};
use crate::error::RpcError;
use crate::frame::FrameHeader;
use crate::transport::socket::{Wire, interrupted, would_block};

/// At most this many slices go into one `writev`.
const MAX_SLICES: usize = 256;

/// Bodies up to this size are copied into the shared buffer at the queue's tail.
pub(crate) const FLATTEN_MAX: usize = 1024;

/// A shared buffer grows up to this size; the next small frame starts another.
const CHUNK: usize = 64 * 1024;

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
pub(crate) type Label = crate::sync::Arc<str>;

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
    body: Vec<u8>,
    kind: Kind,
    pub(crate) label: Option<Label>,
    receipt: Option<Receipt>,
}

impl Frame {
    pub(crate) fn new(header: FrameHeader, body: Vec<u8>, kind: Kind) -> Self {
        Self {
            header,
            body,
            kind,
            label: None,
            receipt: None,
        }
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

    /// The frame's length: header and body.
    pub(crate) fn len(&self) -> usize {
        self.header.as_bytes().len() + self.body.len()
    }

    /// What the frame costs of its label's window, and of the queue while it is held.
    pub(crate) fn charge(&self) -> usize {
        self.body.len() + FRAME_CHARGE
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
    /// The bytes not yet written, as (up to) two slices.
    fn remaining(&self) -> (&[u8], &[u8]) {
        match self {
            Self::Whole { frame, written, .. } => {
                let header = frame.header.as_bytes();
                if *written < header.len() {
                    (&header[*written..], &frame.body)
                } else {
                    (&[], &frame.body[*written - header.len()..])
                }
            }
            Self::Flat { bytes, written, .. } => (&bytes[*written..], &[]),
        }
    }

    /// Bytes not yet written.
    pub(crate) fn remaining_len(&self) -> usize {
        match self {
            Self::Whole { frame, written, .. } => frame.len() - written,
            Self::Flat { bytes, written, .. } => bytes.len() - written,
        }
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
        }
    }

    /// Makes this segment's wire bytes with `cipher`, unless that was done.
    fn seal(&mut self, cipher: &mut Encryptor) -> Result<(), AuthError> {
        match self {
            Self::Whole { sealed: true, .. }
            | Self::Flat {
                sealed: Some(_), ..
            } => Ok(()),
            Self::Whole {
                frame,
                written,
                sealed,
            } => {
                debug_assert_eq!(*written, 0, "a segment is sealed before it is written");
                if cipher.encrypt_in_place(frame.header.as_bytes_mut()) {
                    cipher.encrypt_in_place(&mut frame.body);
                    *sealed = true;
                    return Ok(());
                }
                let len = frame.len();
                let mut wire = Vec::with_capacity(cipher.max_output(len));
                cipher.encrypt(&[frame.header.as_bytes(), &frame.body], &mut wire)?;
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
        }
    }

    /// What of this segment was never written.
    pub(crate) fn abandon(self, unwritten: &mut Unwritten) {
        match self {
            Self::Whole { mut frame, .. } => {
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
        }
    }
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
    /// segment of its own (its body is never copied).
    pub(crate) fn push(&mut self, frame: Frame) {
        let len = frame.len();
        if frame.body.len() > FLATTEN_MAX {
            self.push_whole(frame);
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
        bytes.extend_from_slice(&frame.body);
        marks.push_back(Mark {
            end: bytes.len(),
            len,
            kind: frame.kind,
            receipt: frame.receipt,
        });
    }

    /// Appends a frame as a segment of its own (the thread that writes it at once).
    pub(crate) fn push_whole(&mut self, frame: Frame) {
        self.queue.push_back(Segment::Whole {
            frame,
            written: 0,
            sealed: false,
        });
    }

    /// Seals, in order, every segment not sealed yet with `cipher` (see the module docs).
    /// Called by the one thread that writes, outside the queue's lock.
    pub(crate) fn seal(&mut self, cipher: &mut Encryptor) -> Result<(), AuthError> {
        for segment in &mut self.queue {
            segment.seal(cipher)?;
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

    /// Writes until everything is written or the socket would block. The segments written
    /// in full leave `self` and go to the returned [`Finished`], with what they finished.
    pub(crate) fn write_to(&mut self, wire: &dyn Wire) -> (Finished, usize, Option<io::Error>) {
        let mut finished = Finished::default();
        let mut bytes = 0;
        while !self.queue.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for segment in &self.queue {
                    if count + 2 > MAX_SLICES {
                        break;
                    }
                    let (first, second) = segment.remaining();
                    for part in [first, second] {
                        if !part.is_empty() {
                            slices[count] = IoSlice::new(part);
                            count += 1;
                        }
                    }
                }
                wire.write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return (finished, bytes, Some(io::ErrorKind::WriteZero.into())),
                Ok(mut written) => {
                    trace!("wrote {written} bytes");
                    bytes += written;
                    while written > 0 {
                        let Some(front) = self.queue.front_mut() else {
                            break;
                        };
                        let step = written.min(front.remaining_len());
                        front.advance(step, &mut finished);
                        written -= step;
                        if front.remaining_len() == 0 {
                            let done = self.queue.pop_front().expect("checked");
                            finished.segments.push(done);
                        }
                    }
                }
                Err(err) if would_block(&err) => break,
                Err(err) if interrupted(&err) => {}
                Err(err) => return (finished, bytes, Some(err)),
            }
        }
        (finished, bytes, None)
    }
}
