//! One connection's write side: the frames on their way to the socket, who writes them,
//! the room senders wait for, and the frames held back until the peer grants a window.
//!
//! # Who writes a frame
//!
//! The connection's `rpc-io-N` event loop owns the socket's write side. A frame handed
//! to the queue is written by:
//!
//! - **the thread that hands it over**, at once, with one non-blocking `writev`, when the
//!   connection is idle: nothing is queued or being written, and the frame is neither part
//!   of a burst (another frame found the connection idle less than [`BURST`] before it)
//!   nor one of a pipeline (a
//!   request sent while others wait for their answers, an answer given while others are
//!   owed). A caller waiting for its answer thus pays no hand-off to another thread. What
//!   the socket does not take is left to the event loop;
//! - **the event loop** otherwise: the hand-over wakes it once (later frames find it
//!   woken and only append), and it writes everything queued when it runs, in few large
//!   `writev`s (small frames are copied into shared buffers, see `segment`), until the
//!   socket would block; it resumes on the socket's writable event. Frames handed over on
//!   the loop's own thread (a transport handler answering as it reads) are written at the
//!   end of the loop's turn. If [`BATCH`] bytes pile up before a woken loop comes, the
//!   sender that finds them writes them (once), so a batch never waits for a slow wake-up.
//!
//! Nothing is ever held back to be batched: batching comes from the loop writing all that
//! queued up while it was being woken. Only one thread writes at a time; the others
//! append meanwhile, and the lock is never held across a system call.
//!
//! # Room
//!
//! Frames ready to write may take [`limit`](WriteQueue::new) bytes (`rpc.io.maxQueuedBytes`).
//! A frame is accepted while the queue is below the limit (so one frame larger than the
//! limit still goes); beyond it a sender waits for room, fails at once, or goes anyway,
//! as its [`Admission`] says. Answers and control frames go anyway: they are bounded by
//! what the peer asked, and refusing them would lose the answer.
//!
//! # Windows
//!
//! A frame with a [`Label`] (the rpc layer labels messages with the endpoint they are for)
//! also needs window: each label starts with the connection's initial window, a frame
//! takes `len + FRAME_CHARGE` of it, and the peer grants more as its endpoint consumes
//! what it received. A frame that finds no window (or frames of its label already held)
//! is held, in order, until [`grant`](WriteQueue::grant) makes room; held frames of one
//! label never delay frames of another. Each label may hold `limit` bytes; beyond that its
//! senders wait as above.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crate::auth::Encryptor;
use crate::conf::keys;
use crate::error::RpcError;
use crate::fnv::FnvMap;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Condvar, Mutex, MutexGuard};
use crate::transport::segment::{Segments, Unwritten, Written};
use crate::transport::socket::Wire;

pub(crate) use crate::transport::segment::{FRAME_CHARGE, Frame, Kind, Label, Receipt};

/// A frame handed over within this time of the previous one on the same connection is
/// part of a burst, which the event loop writes in one go. Longer than any gap between
/// back-to-back sends, shorter than a loopback round trip, so a caller waiting for each
/// answer still writes its own frame at once.
pub(crate) const BURST: Duration = Duration::from_micros(10);

/// The event loop writes at most this many rounds of newly queued frames for one
/// connection before it lets the other connections of the loop have their turn.
const LOOP_ROUNDS: usize = 8;

/// When this much waits for a loop that was woken and has not come yet, the next sender
/// writes it (so a batch never waits for a slow wake-up).
const BATCH: usize = 64 * 1024;

/// How often a sender waiting for room looks whether its env is shutting down.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The window of a label before the peer has said how large its windows are.
pub(crate) const INITIAL_WINDOW: usize = 64 * 1024;

/// How a frame is let in when the queue has no room for it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Admission {
    /// Wait for room until this instant (`None`: for as long as it takes).
    Wait(Option<Instant>),
    /// Fail at once with [`RpcError::QueueFull`].
    Try,
    /// Go anyway (answers, control frames, frames already let in elsewhere).
    Force,
}

impl Admission {
    /// How long to wait for room at `now` before looking again, or (`Err`) that there
    /// is no more waiting: `Err(true)` when the sender waited until its deadline,
    /// `Err(false)` when it was not to wait at all.
    pub(crate) fn wait_from(self, now: Instant) -> Result<Duration, bool> {
        match self {
            Self::Wait(None) => Ok(Duration::from_secs(3600)),
            Self::Wait(Some(deadline)) if now < deadline => Ok(deadline - now),
            Self::Wait(Some(_)) => Err(true),
            Self::Try => Err(false),
            Self::Force => Ok(Duration::ZERO),
        }
    }
}

/// What the connection must do after a frame was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Nothing: the frame was written, or someone who will write it knows.
    Nothing,
    /// Wake the event loop to write.
    WakeLoop,
}

/// What a turn of the event loop's writing left.
#[derive(Debug)]
pub(crate) enum Flushed {
    /// Everything is written, or another writer has it.
    Done,
    /// The socket is full: resume on its writable event.
    Blocked,
    /// More came while writing: write again after the other connections had their turn.
    Again,
    /// The socket failed; the connection must close.
    Failed(io::Error),
}

/// Why [`WriteQueue::submit`] did not take a frame.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// Not let in: the queue is closed or full.
    Refused(RpcError),
    /// Taken, but writing it failed: the connection must close.
    WriteFailed(io::Error),
}

/// The frames held for one label until the peer grants window.
#[derive(Default)]
struct Held {
    /// Window left (negative after a frame larger than what was left).
    window: i64,
    frames: VecDeque<Frame>,
    /// What the held frames cost: the sum of their charges (body and fixed share), which
    /// `rpc.io.maxQueuedBytes` bounds.
    bytes: usize,
}

struct State {
    /// What is cleared to go, in order (without what a writer has taken out).
    ready: Segments,
    /// Unwritten bytes cleared to go, those being written included.
    ready_bytes: usize,
    /// Unwritten bytes of answers among them.
    answer_bytes: usize,
    held: FnvMap<Label, Held>,
    /// The window a label starts with.
    initial_window: i64,
    /// `None` once the connection closed; a writer takes a clone for its system call.
    wire: Option<Arc<dyn Wire>>,
    /// The channel cipher of an encrypted connection. The thread that writes takes it
    /// with the segments it writes, and seals them outside the lock; `None` meanwhile.
    cipher: Option<Box<Encryptor>>,
    closed: bool,
    /// A thread is inside `writev` with segments taken out of `ready`.
    writing: bool,
    /// The event loop was woken to write and has not started yet.
    loop_woken: bool,
    /// The socket would not take more: the event loop resumes on a writable event.
    blocked: bool,
    /// The last write stopped after its share of stream bytes: the loop writes on after
    /// the other connections had their turn.
    yielded: bool,
    /// The event loop was told to write while another thread was writing: that thread
    /// wakes it again when done.
    loop_asked: bool,
    /// Since when the socket has taken nothing while frames wait.
    stalled_since: Option<Instant>,
    /// Threads waiting for room.
    waiters: usize,
    /// When a frame last found the connection idle (the start of a possible burst).
    last_submit: Option<Instant>,
    /// Bytes that went to the socket, for the metrics.
    bytes_out: u64,
    /// Frames handed over (admitted), for the metrics.
    frames_out: u64,
}

impl State {
    /// Whether someone will write what is in `ready` without being woken.
    fn has_writer(&self) -> bool {
        self.writing || self.blocked || self.loop_woken
    }

    fn push_ready(&mut self, frame: Frame) {
        self.ready_bytes += frame.len();
        if frame.kind() == Kind::Answer {
            self.answer_bytes += frame.len();
        }
        self.ready.push(frame);
    }
}

/// The write side of one connection (see the module docs).
pub(crate) struct WriteQueue {
    state: Mutex<State>,
    /// `State::blocked`, read without the lock after each write (see `watch`).
    blocked: AtomicBool,
    room: Condvar,
    limit: usize,
    /// Names the peer in `QueueFull` errors.
    peer: String,
}

impl WriteQueue {
    /// A queue writing to `wire` (the connection to `peer`), letting senders in while
    /// fewer than `limit` bytes wait.
    pub(crate) fn new(wire: Arc<dyn Wire>, limit: usize, peer: String) -> Self {
        Self {
            state: Mutex::new(State {
                ready: Segments::default(),
                ready_bytes: 0,
                answer_bytes: 0,
                held: FnvMap::default(),
                initial_window: INITIAL_WINDOW as i64,
                wire: Some(wire),
                cipher: None,
                closed: false,
                writing: false,
                loop_woken: false,
                blocked: false,
                yielded: false,
                loop_asked: false,
                stalled_since: None,
                waiters: 0,
                last_submit: None,
                bytes_out: 0,
                frames_out: 0,
            }),
            blocked: AtomicBool::new(false),
            room: Condvar::default(),
            limit,
            peer,
        }
    }

    /// Queues `frame` and writes it at once if the connection is idle (see the module
    /// docs). `pipelined`: a request sent while others wait for their answers, or an answer
    /// given while others are owed; `on_owner`: handed over on the connection's own event
    /// loop, which writes it at the end of its turn. On an error the frame's receipt was told and the frame dropped; `closed`
    /// makes the error of a closed connection.
    pub(crate) fn submit(
        &self,
        mut frame: Frame,
        admission: Admission,
        pipelined: bool,
        on_owner: bool,
        stopping: &AtomicBool,
        closed: impl Fn() -> RpcError,
    ) -> Result<After, Submitted> {
        let state = self.state.lock();
        let mut state = match self.admit(state, &frame, admission, stopping, &closed) {
            Ok(state) => state,
            Err(err) => {
                frame.settle(Err(err.clone()));
                return Err(Submitted::Refused(err));
            }
        };
        state.frames_out += 1;
        if let Some(label) = frame.label.clone() {
            let initial = state.initial_window;
            let held = state.held.entry(label).or_insert_with(|| Held {
                window: initial,
                ..Held::default()
            });
            if !held.frames.is_empty() || held.window <= 0 {
                // A held frame may wait long: it keeps only what its body needs.
                frame.shrink_to_fit();
                held.bytes += frame.charge();
                held.frames.push_back(frame);
                return Ok(After::Nothing);
            }
            held.window -= frame.charge() as i64;
        }
        if state.has_writer() {
            // Whoever writes now (the busy writer, or the loop) takes it with the rest.
            state.push_ready(frame);
            if state.loop_woken
                && !state.writing
                && !state.blocked
                && !on_owner
                && state.ready_bytes >= BATCH
            {
                // The loop was woken and has not come yet while a batch piled up: this
                // thread writes it now rather than let it wait for the loop.
                if let Some(wire) = state.wire.clone() {
                    state.writing = true;
                    let mut batch = state.ready.take();
                    let mut cipher = state.cipher.take();
                    drop(state);
                    let written = write_batch(&mut batch, &mut cipher, &*wire);
                    drop(wire);
                    return match self.after_write(batch, cipher, written, false) {
                        (after, None) => Ok(after),
                        (_, Some(err)) => Err(Submitted::WriteFailed(err)),
                    };
                }
            }
            return Ok(After::Nothing);
        }
        // The clock is read only here, where it decides who writes.
        let now = Instant::now();
        let burst = state
            .last_submit
            .is_some_and(|last| now.saturating_duration_since(last) < BURST);
        state.last_submit = Some(now);
        if burst || pipelined || on_owner || frame.has_tail() || !state.ready.is_empty() {
            state.push_ready(frame);
            state.loop_woken = true;
            return Ok(After::WakeLoop);
        }
        // Idle: this thread writes its own frame, once, from its own buffer.
        let Some(wire) = state.wire.clone() else {
            state.push_ready(frame);
            return Ok(After::Nothing);
        };
        state.ready_bytes += frame.len();
        if frame.kind() == Kind::Answer {
            state.answer_bytes += frame.len();
        }
        state.writing = true;
        let mut cipher = state.cipher.take();
        drop(state);
        let mut batch = Segments::default();
        batch.push_whole(frame);
        let written = write_batch(&mut batch, &mut cipher, &*wire);
        drop(wire);
        match self.after_write(batch, cipher, written, false) {
            (after, None) => Ok(after),
            (_, Some(err)) => Err(Submitted::WriteFailed(err)),
        }
    }

    /// Waits (or fails) until `frame` may be let in; returns the lock. A wait gives up
    /// with `EnvStopped` within [`STOP_CHECK`] of `stopping` being set.
    fn admit<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        frame: &Frame,
        admission: Admission,
        stopping: &AtomicBool,
        closed: &impl Fn() -> RpcError,
    ) -> Result<MutexGuard<'a, State>, RpcError> {
        loop {
            if stopping.load(Ordering::Acquire) && !matches!(admission, Admission::Force) {
                return Err(RpcError::EnvStopped);
            }
            if state.closed {
                return Err(closed());
            }
            // A frame that will wait for its label's window needs room among those held
            // for that label; any other, room among the frames cleared to go.
            let held = frame.label.as_ref().and_then(|label| {
                state
                    .held
                    .get(label)
                    .filter(|held| !held.frames.is_empty() || held.window <= 0)
                    .map(|held| (label, held.bytes))
            });
            let queued = held.map_or(state.ready_bytes, |(_, bytes)| bytes);
            if queued < self.limit || matches!(admission, Admission::Force) {
                return Ok(state);
            }
            let wait = match admission.wait_from(Instant::now()) {
                Ok(wait) => wait,
                Err(waited) => {
                    let queue = match held {
                        Some((label, _)) => format!(
                            "queue of messages to endpoint {label} at {} waiting for its \
                             window",
                            self.peer
                        ),
                        None => format!("write queue to {}", self.peer),
                    };
                    return Err(RpcError::QueueFull {
                        queue,
                        queued: queued as u64,
                        limit: self.limit as u64,
                        key: keys::IO_MAX_QUEUED_BYTES,
                        waited,
                    });
                }
            };
            state.waiters += 1;
            state = self.room.wait_timeout(state, wait.min(STOP_CHECK));
            state.waiters -= 1;
        }
    }

    /// Writes what is queued until the socket would block. Called by the event loop when
    /// woken and on writable events.
    pub(crate) fn flush(&self) -> Flushed {
        for round in 0.. {
            let mut state = self.state.lock();
            if round == 0 {
                state.loop_woken = false;
                state.blocked = false;
                self.blocked.store(false, Ordering::Release);
            }
            if state.writing {
                // Another thread is inside `writev`: it wakes the loop again when done.
                state.loop_asked = true;
                return Flushed::Done;
            }
            if state.closed || state.ready.is_empty() {
                return Flushed::Done;
            }
            if round == LOOP_ROUNDS {
                state.loop_woken = true;
                return Flushed::Again;
            }
            let Some(wire) = state.wire.clone() else {
                return Flushed::Done;
            };
            state.writing = true;
            let mut batch = state.ready.take();
            let mut cipher = state.cipher.take();
            drop(state);
            let written = write_batch(&mut batch, &mut cipher, &*wire);
            drop(wire);
            match self.after_write(batch, cipher, written, true) {
                (_, Some(err)) => return Flushed::Failed(err),
                _ => {
                    let mut state = self.state.lock();
                    if state.blocked {
                        return Flushed::Blocked;
                    }
                    if std::mem::take(&mut state.yielded) {
                        // A stream's share is written: the other connections go first.
                        state.loop_woken = true;
                        return Flushed::Again;
                    }
                }
            }
        }
        unreachable!("the loop returns by its last round")
    }

    /// Puts back what a write left, tells the receipts of what it wrote, and says who
    /// writes next. Clears `writing`. `by_loop`: the event loop wrote (it goes on by
    /// itself; a sender wakes it for what is left).
    fn after_write(
        &self,
        batch: Segments,
        cipher: Option<Box<Encryptor>>,
        written: Written,
        by_loop: bool,
    ) -> (After, Option<io::Error>) {
        let Written {
            finished,
            bytes,
            error,
            yielded,
        } = written;
        let mut state = self.state.lock();
        state.writing = false;
        state.bytes_out += bytes as u64;
        let mut batch = batch;
        if cipher.is_some() {
            state.cipher = cipher;
        } else if state.cipher.is_some() {
            // The channel cipher started while this thread wrote what was queued before.
            batch.seal_as_is();
        }
        state.ready_bytes = state.ready_bytes.saturating_sub(finished.plain_bytes);
        state.answer_bytes = state.answer_bytes.saturating_sub(finished.answer_bytes);
        let progressed = bytes > 0;
        if state.closed {
            // Closed while this thread wrote: the closer could not take these frames.
            drop(state);
            finished.settle();
            let mut unwritten = Unwritten::default();
            for segment in batch.drain() {
                segment.abandon(&mut unwritten);
            }
            let lost = RpcError::connection(&self.peer, "closed while the frame was written");
            unwritten.settle(&Err(lost));
            return (After::Nothing, None);
        }
        let mut after = After::Nothing;
        // What is left goes back in front of what came meanwhile.
        let left = !batch.is_empty();
        if left {
            state.ready.put_back(batch);
        }
        if error.is_some() {
            // The caller closes the connection, which tells what is left.
        } else if left {
            if progressed || state.stalled_since.is_none() {
                state.stalled_since = Some(Instant::now());
            }
            if yielded {
                // Not blocked: the socket takes more, after the loop's other connections.
                state.loop_asked = false;
                if by_loop {
                    state.yielded = true;
                } else {
                    state.loop_woken = true;
                    after = After::WakeLoop;
                }
            } else if state.loop_asked {
                // The loop saw the socket writable while this thread wrote: try again.
                state.loop_asked = false;
                state.loop_woken = true;
                after = After::WakeLoop;
            } else {
                state.blocked = true;
                self.blocked.store(true, Ordering::Release);
            }
        } else {
            state.stalled_since = None;
            // A writable event the loop saw meanwhile needs no answer: nothing is left.
            state.loop_asked = false;
            if !by_loop && !state.ready.is_empty() && !state.loop_woken {
                state.loop_woken = true;
                after = After::WakeLoop;
            }
        }
        let wake_waiters = progressed && state.waiters > 0;
        drop(state);
        if wake_waiters {
            self.room.notify_all();
        }
        finished.settle();
        (after, error)
    }

    /// Seals everything queued from now on with `encryptor` (see [`Segments::seal`]); what
    /// is queued already, and what a thread is writing now, goes out as it is.
    pub(crate) fn start_encryption(&self, encryptor: Encryptor) {
        let mut state = self.state.lock();
        state.ready.seal_as_is();
        state.cipher = Some(Box::new(encryptor));
    }

    /// Adds `bytes` to `label`'s window and moves its held frames to the ready queue while
    /// there is window. A label this side never used is ignored, and a label whose
    /// window is whole again with nothing held is forgotten (it starts afresh when used
    /// again), so that grants cannot make the table grow.
    pub(crate) fn grant(&self, label: &str, bytes: usize) -> After {
        let mut state = self.state.lock();
        if state.closed {
            return After::Nothing;
        }
        let initial = state.initial_window;
        let Some(held) = state.held.get_mut(label) else {
            return After::Nothing;
        };
        held.window = held.window.saturating_add(bytes as i64);
        let moved = release(held);
        if held.frames.is_empty() && held.window >= initial {
            state.held.remove(label);
        }
        self.push_released(state, moved)
    }

    /// Sets the window every label starts with (the peer said how large its windows are);
    /// labels already in use get the difference.
    pub(crate) fn set_initial_window(&self, window: usize) -> After {
        let mut state = self.state.lock();
        if state.closed {
            return After::Nothing;
        }
        let delta = window as i64 - state.initial_window;
        state.initial_window = window as i64;
        let mut moved = Vec::new();
        for held in state.held.values_mut() {
            held.window += delta;
            moved.extend(release(held));
        }
        self.push_released(state, moved)
    }

    fn push_released(&self, mut state: MutexGuard<'_, State>, moved: Vec<Frame>) -> After {
        if moved.is_empty() {
            return After::Nothing;
        }
        for frame in moved {
            state.push_ready(frame);
        }
        let waiters = state.waiters > 0;
        let after = if state.has_writer() {
            After::Nothing
        } else {
            state.loop_woken = true;
            After::WakeLoop
        };
        drop(state);
        if waiters {
            // Held bytes went down: senders of that label may go on.
            self.room.notify_all();
        }
        after
    }

    /// Bytes of answers waiting to be written.
    pub(crate) fn answer_bytes(&self) -> usize {
        self.state.lock().answer_bytes
    }

    /// The most bytes that may wait before senders wait (`rpc.io.maxQueuedBytes`).
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes ready to write (those being written included), and bytes held for windows.
    pub(crate) fn queued(&self) -> (usize, usize) {
        let state = self.state.lock();
        (
            state.ready_bytes,
            state.held.values().map(|held| held.bytes).sum(),
        )
    }

    /// Bytes written to the socket and frames handed over so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.bytes_out, state.frames_out)
    }

    /// Whether the socket would not take more and the event loop waits for room: its
    /// poller must then watch the socket for it (see `watch`). Without the lock: as of
    /// the last write.
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// The socket, while the connection is open: held, its descriptor stays this socket's.
    pub(crate) fn wire(&self) -> Option<Arc<dyn Wire>> {
        self.state.lock().wire.clone()
    }

    /// Whether everything cleared to go was written (held frames aside).
    pub(crate) fn is_drained(&self) -> bool {
        self.state.lock().ready_bytes == 0
    }

    /// How long the socket has taken nothing while frames wait, as of `now`.
    pub(crate) fn stalled_for(&self, now: Instant) -> Option<Duration> {
        let state = self.state.lock();
        if state.ready_bytes == 0 {
            return None;
        }
        state
            .stalled_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Closes the queue: later frames fail, waiting senders fail, and the socket is let
    /// go (shut down, so the peer sees the close at once). First writes what the socket
    /// takes at once (best effort, never waiting), so an answer given just before the
    /// close is not lost. Returns what was never written, for the caller to tell and count
    /// outside any lock.
    pub(crate) fn close(&self) -> Unwritten {
        let mut state = self.state.lock();
        let mut unwritten = Unwritten::default();
        if state.closed {
            return unwritten;
        }
        state.closed = true;
        let wire = state.wire.take();
        let mut ready = state.ready.take();
        let mut finished = None;
        if !state.writing {
            if let Some(wire) = &wire {
                // Sealed as it goes on an encrypted connection: nothing leaves in clear.
                let cipher = state.cipher.as_deref_mut();
                finished = Some(ready.write_to(&**wire, cipher).finished);
            }
        }
        if let Some(wire) = &wire {
            // The peer sees the close at once, whoever else still holds the socket.
            wire.shutdown();
        }
        for segment in ready.drain() {
            segment.abandon(&mut unwritten);
        }
        for held in std::mem::take(&mut state.held).into_values() {
            for frame in held.frames {
                let mut segments = Segments::default();
                segments.push_whole(frame);
                for segment in segments.drain() {
                    segment.abandon(&mut unwritten);
                }
            }
        }
        state.ready_bytes = 0;
        state.answer_bytes = 0;
        let waiters = state.waiters > 0;
        drop(state);
        drop(wire);
        if waiters {
            self.room.notify_all();
        }
        if let Some(finished) = finished {
            finished.settle();
        }
        unwritten
    }
}

impl fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ready, held) = self.queued();
        f.debug_struct("WriteQueue")
            .field("peer", &self.peer)
            .field("ready_bytes", &ready)
            .field("held_bytes", &held)
            .field("limit", &self.limit)
            .finish()
    }
}

/// Writes `batch`, sealing it with the connection's channel cipher if it has one (see
/// [`Segments::write_to`]). A cipher that fails is a write error: the connection closes.
fn write_batch(
    batch: &mut Segments,
    cipher: &mut Option<Box<Encryptor>>,
    wire: &dyn Wire,
) -> Written {
    batch.write_to(wire, cipher.as_deref_mut())
}

/// Takes the held frames the window now covers, in order.
fn release(held: &mut Held) -> Vec<Frame> {
    let mut moved = Vec::new();
    while held.window > 0 {
        let Some(frame) = held.frames.pop_front() else {
            break;
        };
        held.bytes -= frame.charge();
        held.window -= frame.charge() as i64;
        moved.push(frame);
    }
    moved
}

/// Tells every frame's receipt `outcome`.
pub(crate) fn settle_all(frames: impl IntoIterator<Item = Frame>, outcome: &Result<(), RpcError>) {
    for mut frame in frames {
        frame.settle(outcome.clone());
    }
}
