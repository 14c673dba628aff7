//! The read turn of a connection: which thread may read its socket now.
//!
//! A connection's event loop holds the turn by default. A thread that blocks on the
//! answer to the connection's only outstanding request (an `ask_sync`, a
//! `Pending::wait`, a `send_rpc_sync`) may take it and read the socket itself, as gRPC
//! core's synchronous calls do (the thread that waits on a completion queue is the one
//! that polls): the answer then wakes the caller straight from the kernel, instead of
//! waking the loop, which would wake the caller (one thread hand-off less per round trip).
//!
//! While a caller holds the turn:
//! - the caller waits for the socket on a poller of its own thread, which also holds a
//!   `Waker` that an outcome arriving by another way (a close, a timeout, an abort)
//!   wakes. The loop's poller stops watching the socket for bytes meanwhile (one
//!   `epoll_ctl` each way, see `watch`), so the answer wakes the caller alone; when the
//!   turn is given back the loop watches again, and bytes that came after the caller's
//!   last read are reported to it at once. A loop told of bytes just before the turn was
//!   taken finds the turn taken and leaves them (the caller reads once more before it
//!   gives the turn back if that happened after its last read);
//! - the caller reads with the connection's [`Reader`], under the turn's lock (held only
//!   while it reads, so the loop never waits on a caller that is blocked waiting for
//!   the socket; a handler or callback that blocks holds it up as it would on the loop's
//!   own thread), and hands on
//!   every frame exactly as the loop would: answers to their callbacks, requests and
//!   one-way messages to the [`RpcHandler`] (which only queues them: endpoint code never
//!   runs there, on a loop or a caller). Like a loop, it never waits for room to send
//!   while it reads ([`on_event_loop`] says so);
//! - anything but a plain read (the peer's end of stream, a bad frame, a pause) is
//!   handed back to the loop, which deals with it as if it had read it.
//!
//! The caller gives the turn back as soon as its answer is in (or its time is up).
//!
//! A turn costs one read per frame awaited: a thread that takes the turn when the last
//! read of the socket emptied it waits on its poller first, rather than read to find
//! nothing (why no byte is missed that way: `take_turn`).
//!
//! An idle `rpc-dispatcher-N` thread takes the turn the same way ([`lead`]): it waits for
//! the next request on the connection it last answered one on, until its pool has work.
//!
//! The turn is taken only when it pays and is safe: the request is the connection's
//! only outstanding one and no stream is under way (a connection busy with many callers
//! is better read by its loop), the connection is open, not paused and authenticated,
//! and the calling thread is not an event loop (nor already reading a connection).

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::Instant;

use log::{debug, error};
use mio::unix::SourceFd;
use mio::{Events, Poll, Token, Waker};

use crate::error::RpcError;
use crate::sync::atomic::Ordering;
use crate::sync::{Arc, Mutex, Weak};
use crate::transport::connection::{CloseReason, Conn, Wake, on_event_loop};
use crate::transport::reader::{ReadOutcome, Reader};
use crate::transport::socket::{Wire, interrupted};
use crate::transport::watch;
use crate::transport::{RpcHandler, TransportClient};

/// Bytes a caller reads before it looks at its own answer again.
const CALLER_BUDGET: usize = 1 << 20;

/// Size of the read buffer of each thread that reads a connection for its answer.
const CALLER_SCRATCH: usize = 16 * 1024;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// The read side of a connection and who holds it (see the module docs).
#[derive(Default)]
pub(crate) struct ReadTurn {
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// The reader and the handler its frames go to; `None` before the loop took the
    /// connection over and after it let it go.
    reader: Option<(Box<Reader>, Arc<dyn RpcHandler>)>,
    /// A caller holds the turn.
    caller: bool,
    /// What a caller's read came to that the loop must deal with (see [`ReadOutcome`]).
    handover: Option<ReadOutcome>,
    /// The loop was told that the socket is readable since the caller's last read: the
    /// caller reads once more before it gives the turn back.
    missed: bool,
    /// The last read of the socket, by the loop or a thread holding the turn, emptied
    /// it: a thread that takes the turn waits on its poller before it reads (see
    /// [`take_turn`]).
    drained: bool,
}

/// What the loop's read came to: an outcome, with the refusal to report when the reader
/// refused the peer's request.
pub(crate) type LoopRead = (ReadOutcome, Option<RpcError>);

impl ReadTurn {
    /// The loop takes the connection over with `reader`, whose frames go to `handler`.
    pub(crate) fn install(&self, reader: Box<Reader>, handler: Arc<dyn RpcHandler>) {
        let mut slot = self.slot.lock();
        slot.reader = Some((reader, handler));
        slot.drained = false;
    }

    /// The loop lets the connection go: the reader, if it still had it.
    pub(crate) fn take_reader(&self) -> Option<Box<Reader>> {
        self.slot.lock().reader.take().map(|(reader, _)| reader)
    }

    /// On the loop: `read` runs with the reader, unless a caller holds the turn (then
    /// `None`: the caller reads once more before it gives the turn back). An outcome a
    /// caller handed back is returned instead of reading, but for a pause (which may have
    /// ended while the caller held the turn: reading finds out).
    pub(crate) fn on_loop(
        &self,
        conn: &Conn,
        read: impl FnOnce(&mut Reader, &dyn RpcHandler) -> ReadOutcome,
    ) -> Option<LoopRead> {
        let mut slot = self.slot.lock();
        if slot.caller {
            slot.missed = true;
            conn.env_counters()
                .turn_found_taken
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // A pause a caller's read came to may be over by now (its resume found the turn
        // taken, and a handed-over outcome stops the caller's last read): the loop reads,
        // which comes to `Paused` again at once if it is not over.
        let handover = slot
            .handover
            .take()
            .filter(|outcome| *outcome != ReadOutcome::Paused);
        let (reader, handler) = slot.reader.as_mut()?;
        let outcome = handover.unwrap_or_else(|| read(reader, &**handler));
        let refusal = if outcome == ReadOutcome::Refused {
            reader.take_refusal()
        } else {
            None
        };
        slot.drained = outcome == ReadOutcome::Drained;
        Some((outcome, refusal))
    }

    /// `look` at the reader, if the loop still has the connection. From the loop only
    /// (a caller reading at that moment makes it wait for the end of that read).
    pub(crate) fn with_reader<R>(&self, look: impl FnOnce(&Reader) -> R) -> Option<R> {
        let slot = self.slot.lock();
        slot.reader.as_ref().map(|(reader, _)| look(reader))
    }
}

/// What a thread waits for while it reads a connection: the outcome of one request.
pub(crate) trait Awaited {
    /// Whether the outcome is in.
    fn is_done(&self) -> bool;
    /// Whether the outcome is in and came from the peer (its answer, or a failure it
    /// sent), not from this side (a close, a timeout, a shutdown).
    fn answered(&self) -> bool;
    /// From now until the next call, an outcome set by another thread wakes `waker`
    /// (`None`: nobody). False, with nothing armed, when the outcome is in already.
    fn arm(&self, waker: Option<&Arc<Waker>>) -> bool;
    /// Called once the thread found something to read, before it tries to take the turn:
    /// whether it still may (a pool's worker claims the pool's one leader's place here,
    /// see [`lead`]). True unless said otherwise.
    fn claim(&self) -> bool {
        true
    }
}

thread_local! {
    /// The poller of a thread that reads connections for its answers, made on first use.
    static POLLER: RefCell<Option<Poller>> = const { RefCell::new(None) };
    /// The thread holds a connection's read turn: like an event loop, it must not wait
    /// for room to send.
    static READING: Cell<bool> = const { Cell::new(false) };
    /// The thread is a dispatcher that may lead (see [`lead`]).
    static LEADS: Cell<bool> = const { Cell::new(false) };
    /// The connection a leading thread last answered a request on, and the frames read
    /// from it by then.
    static LAST_PEER: RefCell<(Weak<Conn>, u64)> = const { RefCell::new((Weak::new(), 0)) };
}

/// Who takes a read turn, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taker {
    /// A caller waiting for its answer ([`read_for_answer`]).
    Caller,
    /// An idle dispatcher thread waiting for work ([`lead`]).
    Leader,
}

/// Marks the calling thread as one that may [`lead`]: an `rpc-dispatcher-N` thread.
pub(crate) fn may_lead() {
    LEADS.with(|leads| leads.set(true));
}

/// On a thread that may lead: `conn` is the connection it answered a request on last,
/// the one it reads next time it is idle. Elsewhere nothing.
pub(crate) fn answered_on(conn: &Arc<Conn>) {
    if !LEADS.with(Cell::get) {
        return;
    }
    let frames = conn.stats.frames_in.load(Ordering::Relaxed);
    LAST_PEER.with(|last| {
        let mut last = last.borrow_mut();
        if last.0.as_ptr() != Arc::as_ptr(conn) {
            last.0 = Arc::downgrade(conn);
        }
        last.1 = frames;
    });
}

/// An idle dispatcher thread reads the connection it last answered a request on until
/// `awaited` (its pool has work) is done or `until` passes: the leader/follower pattern
/// (Schmidt et al., as in Netty's and gRPC core's pollers taking turns). The next request
/// on that connection then wakes this thread straight from the kernel; its read queues
/// the request's inbox on the pool, which hands the job to this thread (no other thread
/// is woken), so a request and its answer cost no hand-off from the connection's event
/// loop to a dispatcher. The thread holds the turn as a caller would (see the module
/// docs): endpoint code runs only once it has given the turn back, as the job it picked.
///
/// Returns false at once, having done nothing, when the thread may not lead (it answered
/// nothing yet, the connection is gone, closing, paused, streaming or being read by a
/// caller, or another worker of its pool leads), or should not: frames came in on the
/// connection since the answer (a peer
/// with requests in flight, whose loop reads them while dispatchers handle them). The
/// thread then waits for work as it otherwise would.
pub(crate) fn lead(awaited: &dyn Awaited, until: Instant) -> bool {
    if !LEADS.with(Cell::get) {
        return false;
    }
    // Taken: a thread leads once per request it answered, so a lead that ends without
    // work (the connection closing, a quiet peer) is not tried again until it answers.
    let (peer, frames) = LAST_PEER.with(|last| last.replace((Weak::new(), 0)));
    let Some(conn) = peer.upgrade() else {
        return false;
    };
    // Frames came in since the answer: the peer keeps several requests in flight, and
    // its loop reads them while the dispatchers handle what it read. Reading them here
    // would put the reading on a dispatcher too; a peer that waits for each answer sends
    // nothing until it has it.
    if conn.stats.frames_in.load(Ordering::Relaxed) != frames {
        return false;
    }
    if on_event_loop()
        || awaited.is_done()
        || !conn.is_active()
        || conn.is_paused()
        || conn.streams_outstanding().0 != 0
    {
        return false;
    }
    // Only now, with a connection to read: a worker that finds it has nothing to lead
    // does not keep one that has from leading meanwhile.
    if !awaited.claim() {
        // Another leads: this one may lead next time it is idle.
        LAST_PEER.with(|last| *last.borrow_mut() = (Arc::downgrade(&conn), frames));
        return false;
    }
    hold_turn(
        &TransportClient::new(conn),
        awaited,
        Some(until),
        Taker::Leader,
    )
}

/// Whether `outcome` came from the peer (see [`Awaited::answered`]): anything but the
/// failures this side makes up for a call it gives up on.
pub(crate) fn from_peer<T>(outcome: &Result<T, RpcError>) -> bool {
    !matches!(
        outcome,
        Err(RpcError::Connection { .. } | RpcError::Timeout { .. } | RpcError::EnvStopped)
    )
}

/// Whether the calling thread holds a connection's read turn.
pub(crate) fn reading_a_connection() -> bool {
    READING.with(Cell::get)
}

/// A thread's own poller: its two descriptors (an epoll and an eventfd) and its read
/// buffer live as long as the thread.
struct Poller {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    scratch: Box<[u8]>,
    /// The connection whose socket is registered, and its descriptor: kept between
    /// turns, so that a thread asking one peer again and again registers once (bytes
    /// its loop read meanwhile leave at most one stale event, which costs a read).
    registered: Option<(u64, RawFd)>,
}

impl Poller {
    fn new() -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Self {
            poll,
            events: Events::with_capacity(4),
            waker,
            scratch: vec![0; CALLER_SCRATCH].into_boxed_slice(),
            registered: None,
        })
    }
}

/// Reads `client`'s connection on the calling thread until `awaited` is done or `until`
/// passes, if this thread may take the connection's read turn (see the module docs).
/// Returns false at once, having done nothing, when it may not; the caller then waits
/// as it otherwise would. Either way the caller looks at the outcome afterwards: this
/// only makes it arrive sooner.
pub(crate) fn read_for_answer(
    client: &TransportClient,
    awaited: &dyn Awaited,
    until: Option<Instant>,
) -> bool {
    let conn = client.conn();
    if on_event_loop()
        || awaited.is_done()
        || !conn.is_active()
        || conn.is_paused()
        || conn.requests().len() != 1
        || conn.streams_outstanding().0 != 0
    {
        return false;
    }
    hold_turn(client, awaited, until, Taker::Caller)
}

/// Takes `client`'s read turn for the calling thread and reads until `awaited` is done,
/// `until` passes or the read comes to what the loop must deal with; false, having done
/// nothing, if the turn could not be taken.
fn hold_turn(
    client: &TransportClient,
    awaited: &dyn Awaited,
    until: Option<Instant>,
    taker: Taker,
) -> bool {
    let conn = client.conn();
    // `try_with`: a thread-local's destructor may ask after the poller was destroyed.
    POLLER
        .try_with(|cell| {
            let Ok(mut cell) = cell.try_borrow_mut() else {
                return false;
            };
            let poller = match &mut *cell {
                Some(poller) => poller,
                empty => match Poller::new() {
                    Ok(poller) => empty.insert(poller),
                    Err(err) => {
                        debug!(
                            "no poller for this thread ({err:#}): answers come through the loop"
                        );
                        return false;
                    }
                },
            };
            let Some((wire, read_first)) = take_turn(conn, poller, taker) else {
                return false;
            };
            // Read by the loop before the turn was taken (the loop reads under the turn's
            // lock): not this thread's answer.
            let done_before = awaited.is_done();
            READING.with(|reading| reading.set(true));
            let unwinding = Unwinding(conn);
            let handover = read_until_answered(conn, client, poller, awaited, until, read_first);
            READING.with(|reading| reading.set(false));
            give_back(conn, client, poller, handover);
            std::mem::forget(unwinding);
            // While this thread holds the turn nobody else reads the connection: an answer
            // that came in meanwhile is one it read.
            if taker == Taker::Caller && !done_before && awaited.answered() {
                conn.env_counters()
                    .caller_answers
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Only now may the socket close: its descriptor was this turn's.
            drop(wire);
            true
        })
        .unwrap_or(false)
}

/// Armed while a thread holds a turn: dropped only if the thread unwinds meanwhile (a
/// panic inside a read, which only a bug in a frame's handler or in this crate raises),
/// it gives the turn up and closes the connection, whose reader is then in an unknown
/// state, so that neither the loop nor the thread's later sends are held up by a turn
/// nobody holds. A normal end forgets it.
struct Unwinding<'a>(&'a Arc<Conn>);

impl Drop for Unwinding<'_> {
    fn drop(&mut self) {
        let _ = READING.try_with(|reading| reading.set(false));
        let conn = self.0;
        conn.read_turn().slot.lock().caller = false;
        conn.set_caller_reading(false);
        error!(
            "a read of connection {} panicked while a waiting thread held its read turn; \
             closing the connection",
            conn.id()
        );
        conn.close_with(CloseReason::new("a read of the connection panicked"));
    }
}

/// Takes the turn of `conn` for the calling thread, its socket registered with the
/// thread's poller. Returns the socket (held until the turn is given back, so that its
/// descriptor stays the same file) and whether the thread must read before it waits on
/// its poller, or `None` with the turn not taken.
///
/// The thread need not read first when the last read of the socket emptied it: every
/// byte that came since then raised an edge on the thread's poller, which is still
/// pending. The registration is edge-triggered and stays between turns, so an edge is
/// taken only by this thread's own wait, which it follows with a read: a byte that came
/// before that wait was read then, or was left by a read that did not empty the socket
/// (and that read cleared `drained`). A new registration reports bytes already there.
/// Waiting first saves the read that would find nothing on each turn taken as a request
/// or an answer is awaited.
fn take_turn(conn: &Arc<Conn>, poller: &mut Poller, taker: Taker) -> Option<(Arc<dyn Wire>, bool)> {
    let turn = conn.read_turn();
    // The loop holds the lock only while it reads or looks at the reader.
    let mut slot = turn.slot.lock();
    if slot.caller || slot.handover.is_some() {
        return None;
    }
    let (reader, _) = slot.reader.as_ref()?;
    if reader.awaiting_auth().is_some() || reader.streaming() {
        return None;
    }
    let wire = Arc::clone(reader.wire());
    let fd = wire.raw_fd()?;
    if poller.registered.is_none_or(|(id, _)| id != conn.id()) {
        let registry = poller.poll.registry();
        if let Some((_, old)) = poller.registered.take() {
            // Gone with its socket already if that closed (`ENOENT` then).
            let _ = registry.deregister(&mut SourceFd(&old));
        }
        if let Err(err) = registry.register(&mut SourceFd(&fd), SOCKET, watch::READ_INTEREST) {
            debug!(
                "cannot watch connection {} on this thread: {err:#}",
                conn.id()
            );
            return None;
        }
        poller.registered = Some((conn.id(), fd));
    }
    slot.caller = true;
    slot.missed = false;
    // The loop is no longer woken by bytes: they are this thread's to wait for.
    conn.set_caller_reading(true);
    let counters = conn.env_counters();
    match taker {
        Taker::Caller => &counters.caller_turns,
        Taker::Leader => &counters.lead_turns,
    }
    .fetch_add(1, Ordering::Relaxed);
    if slot.drained {
        counters.turns_waiting_first.fetch_add(1, Ordering::Relaxed);
    }
    Some((wire, !slot.drained))
}

/// Reads and waits until `awaited` is done, `until` passes, or the read comes to
/// something the loop must deal with (returned).
fn read_until_answered(
    conn: &Arc<Conn>,
    client: &TransportClient,
    poller: &mut Poller,
    awaited: &dyn Awaited,
    until: Option<Instant>,
    mut read_first: bool,
) -> Option<ReadOutcome> {
    let turn = conn.read_turn();
    // After a hang-up (or urgent data) the socket is read to its end: a short read does
    // not mean that nothing is left (the end of stream raises no new edge, and a read
    // stops short at an urgent mark).
    let mut hang_up = false;
    loop {
        // Only the first pass may wait before it reads (see `take_turn`).
        let outcome = if !std::mem::replace(&mut read_first, true) {
            ReadOutcome::Drained
        } else {
            let mut guard = turn.slot.lock();
            let slot = &mut *guard;
            slot.missed = false;
            let Some((reader, handler)) = slot.reader.as_mut() else {
                // The loop let the connection go: its requests failed with it.
                return None;
            };
            let outcome = reader.read_ready(
                conn,
                client,
                &mut poller.scratch,
                CALLER_BUDGET,
                &**handler,
                hang_up,
                Instant::now(),
            );
            slot.drained = outcome == ReadOutcome::Drained;
            outcome
        };
        match outcome {
            ReadOutcome::Drained => {}
            // Read on at once while bytes are left, until the deadline: a peer that sends
            // faster than this thread hands frames on must not keep it past it.
            ReadOutcome::Budget
                if !awaited.is_done() && until.is_none_or(|until| Instant::now() < until) =>
            {
                continue;
            }
            // Bytes are left for the loop (which reads again after a budget ran out).
            other => return Some(other),
        }
        if awaited.is_done() {
            return None;
        }
        let timeout = match until {
            Some(until) => {
                let now = Instant::now();
                if until <= now {
                    return None;
                }
                Some(until - now)
            }
            None => None,
        };
        if !awaited.arm(Some(&poller.waker)) {
            return None;
        }
        let polled = poller.poll.poll(&mut poller.events, timeout);
        awaited.arm(None);
        hang_up = poller.events.iter().any(watch::read_to_end);
        if let Err(err) = polled {
            if !interrupted(&err) {
                error!("cannot wait on connection {}: {err:#}", conn.id());
                return None;
            }
        }
    }
}

/// Gives the turn of `conn` back to its loop, with what the last read came to if the loop
/// must deal with it. If the loop was told of bytes since the caller's last read, the
/// caller reads them first (a loop that found the turn taken did not read).
fn give_back(
    conn: &Arc<Conn>,
    client: &TransportClient,
    poller: &mut Poller,
    mut handover: Option<ReadOutcome>,
) {
    let turn = conn.read_turn();
    loop {
        let mut guard = turn.slot.lock();
        let slot = &mut *guard;
        if handover.is_none() && slot.missed {
            slot.missed = false;
            if let Some((reader, handler)) = slot.reader.as_mut() {
                // To the end: what the loop was told of may be a hang-up, which raises
                // no new edge once this read leaves it.
                let outcome = reader.read_ready(
                    conn,
                    client,
                    &mut poller.scratch,
                    CALLER_BUDGET,
                    &**handler,
                    true,
                    Instant::now(),
                );
                slot.drained = outcome == ReadOutcome::Drained;
                if outcome == ReadOutcome::Drained {
                    continue;
                }
                handover = Some(outcome);
            }
        }
        slot.caller = false;
        slot.handover = handover;
        // The loop watches for bytes again; bytes that came after the last read are
        // reported to it at once.
        conn.set_caller_reading(false);
        break;
    }
    if handover.is_some() {
        conn.wake_loop(Wake::Resume);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crossbeam_channel::{Receiver, Sender};

    use crate::error::RpcError;
    use crate::sync::atomic::{AtomicU64, Ordering};
    use crate::sync::{Arc, Mutex};
    use crate::transport::{
        Responder, RpcHandler, TransportClient, TransportClientFactory, TransportConf,
        TransportContext, TransportServer,
    };

    const LONG: Duration = Duration::from_secs(30);
    /// Far below `LONG`: an outcome known at once is not waited for.
    const PROMPTLY: Duration = Duration::from_secs(5);
    /// The timeout of a request a handler makes on the connection it is handed a frame of.
    const NESTED: Duration = Duration::from_millis(300);

    /// The server side: answers by the request's text (see `receive`).
    #[derive(Default)]
    struct Server {
        held: Mutex<Vec<Responder>>,
        got: Mutex<Vec<Vec<u8>>>,
        /// The connection of the last `later` request.
        peer: Mutex<Option<TransportClient>>,
    }

    impl RpcHandler for Server {
        fn receive(&self, client: &TransportClient, message: Vec<u8>, responder: Responder) {
            self.got.lock().push(message.clone());
            let text = String::from_utf8_lossy(&message).into_owned();
            match text.split_once(':').unwrap_or((&text, "")) {
                ("echo", rest) => responder.reply(rest.as_bytes().to_vec()),
                ("slow", rest) => {
                    std::thread::sleep(Duration::from_millis(20));
                    responder.reply(rest.as_bytes().to_vec());
                }
                // The answer, then `n` messages to the caller's side right behind it.
                ("burst", n) => {
                    responder.reply(b"ok".to_vec());
                    for i in 0..n.parse().unwrap_or(0) {
                        client.send(format!("{i}").into_bytes()).expect("send");
                    }
                }
                ("big", len) => responder.reply(vec![7; len.parse().unwrap_or(0)]),
                // A message to the caller's side before the answer, on the same connection,
                // once the caller is waiting.
                ("back", rest) => {
                    std::thread::sleep(Duration::from_millis(20));
                    client.send(rest.as_bytes().to_vec()).expect("send back");
                    responder.reply(b"ok".to_vec());
                }
                // The answer; the test sends the caller's side a message later.
                ("later", _) => {
                    *self.peer.lock() = Some(client.clone());
                    responder.reply(b"ok".to_vec());
                }
                ("close", _) => {
                    std::thread::sleep(Duration::from_millis(20));
                    client.close();
                }
                _ => self.held.lock().push(responder),
            }
        }

        /// Stream `bytes:N`: N bytes, byte i being `i % 251`.
        fn open_stream(
            &self,
            _: &TransportClient,
            stream_id: &str,
        ) -> Result<Option<crate::transport::StreamBody>, String> {
            let Some(len) = stream_id.strip_prefix("bytes:") else {
                return Ok(None);
            };
            let len: usize = len.parse().map_err(|_| "a length".to_owned())?;
            let body = (0..len).map(|i| (i % 251) as u8).collect();
            Ok(Some(crate::transport::StreamBody::bytes(body)))
        }
    }

    /// The caller's side: one-way messages and the end of its connection, in order.
    struct Client(Sender<String>);

    impl RpcHandler for Client {
        fn receive(&self, _: &TransportClient, _: Vec<u8>, responder: Responder) {
            responder.fail("no requests here");
        }

        fn receive_one_way(&self, client: &TransportClient, message: Vec<u8>) {
            if message == b"nested" {
                // Blocks (which a handler must not): on the thread that reads the
                // connection, for an answer that only this thread would read.
                let start = Instant::now();
                let result = client.send_rpc_sync(b"echo:nested".to_vec(), NESTED);
                let took = start.elapsed();
                let _ = self.0.send(match result {
                    Err(RpcError::Timeout { .. }) if took >= NESTED && took < PROMPTLY => {
                        "nested: timed out".to_owned()
                    }
                    other => format!("nested: {other:?} after {took:?}"),
                });
                return;
            }
            let _ = self.0.send(String::from_utf8_lossy(&message).into_owned());
        }

        fn channel_inactive(&self, _: &TransportClient) {
            let _ = self.0.send("inactive".to_owned());
        }
    }

    struct Pair {
        server: Arc<Server>,
        _server_ctx: TransportContext,
        _listener: TransportServer,
        ctx: TransportContext,
        _factory: TransportClientFactory,
        client: TransportClient,
        events: Receiver<String>,
    }

    impl Pair {
        fn new() -> Self {
            Self::with_conf(&TransportConf::default())
        }

        fn with_conf(conf: &TransportConf) -> Self {
            let server = Arc::new(Server::default());
            let server_ctx =
                TransportContext::new(conf.clone(), Arc::clone(&server) as Arc<dyn RpcHandler>);
            let listener = server_ctx.create_server("127.0.0.1", 0).expect("server");
            let (tx, events) = crossbeam_channel::unbounded();
            let ctx = TransportContext::new(conf.clone(), Arc::new(Client(tx)));
            let factory = ctx.create_client_factory();
            let client = factory
                .create_client("127.0.0.1", listener.port())
                .expect("client");
            Self {
                server,
                _server_ctx: server_ctx,
                _listener: listener,
                ctx,
                _factory: factory,
                client,
                events,
            }
        }

        /// Read turns callers of the client's side took so far.
        fn turns(&self) -> u64 {
            self.ctx.counters().caller_turns.load(Ordering::Relaxed)
        }

        /// Answers callers of the client's side read in their turns so far.
        fn answers(&self) -> u64 {
            self.ctx.counters().caller_answers.load(Ordering::Relaxed)
        }

        fn call(&self, text: &str) -> Result<Vec<u8>, RpcError> {
            self.client.send_rpc_sync(text.as_bytes().to_vec(), LONG)
        }

        fn next_event(&self) -> String {
            self.events
                .recv_timeout(PROMPTLY)
                .expect("an event within 5 s")
        }

        /// Waits until the server holds `count` requests.
        fn wait_held(&self, count: usize) {
            let start = Instant::now();
            while self.server.held.lock().len() < count {
                assert!(
                    start.elapsed() < PROMPTLY,
                    "the server never got the request"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn a_caller_reads_the_answer_to_its_only_request_itself() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        // Answered 20 ms late: the caller is waiting by then, with the turn.
        for i in 0..5 {
            let text = format!("slow:{i}");
            assert_eq!(pair.call(&text).expect("answer"), i.to_string().as_bytes());
        }
        assert_eq!(pair.turns(), before + 5);
        // Fast answers may come before the caller looks: the loop reads those.
        for i in 0..20 {
            let text = format!("echo:{i}");
            assert_eq!(pair.call(&text).expect("answer"), i.to_string().as_bytes());
        }
    }

    /// A panic while a thread holds the turn (a bug of this crate's: a handler's panic
    /// is contained where it is called) does not leave the turn taken: the connection
    /// closes, and the next call on it fails at once rather than wait for a loop that
    /// would never read it again.
    #[test]
    fn a_panic_while_a_thread_holds_the_turn_closes_the_connection() {
        /// Waits for nothing, and panics once armed: inside the turn.
        struct Panics;

        impl super::Awaited for Panics {
            fn is_done(&self) -> bool {
                false
            }
            fn answered(&self) -> bool {
                false
            }
            fn arm(&self, _: Option<&Arc<mio::Waker>>) -> bool {
                panic!("a bug inside a read turn");
            }
        }

        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        // The connection's only outstanding request, which the server holds unanswered.
        let (tx, rx) = crossbeam_channel::bounded(1);
        pair.client.send_rpc(b"hold".to_vec(), move |result| {
            let _ = tx.send(result);
        });
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::read_for_answer(&pair.client, &Panics, Some(Instant::now() + LONG))
        }));
        assert!(unwound.is_err(), "the panic went through");
        assert_eq!(pair.turns(), before + 1, "the thread held the turn");
        assert!(!super::reading_a_connection(), "the thread no longer reads");
        let held = rx
            .recv_timeout(PROMPTLY)
            .expect("the held request's outcome");
        assert!(matches!(held, Err(RpcError::Connection { .. })), "{held:?}");
        let start = Instant::now();
        let result = pair.call("echo:after");
        assert!(
            matches!(result, Err(RpcError::Connection { .. })),
            "{result:?}"
        );
        assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
        assert_eq!(pair.next_event(), "inactive");
    }

    /// A turn taken after a read that emptied the socket waits before it reads: no read
    /// that finds nothing per call. The answers still arrive, read by their callers.
    #[test]
    fn a_caller_waits_before_it_reads_when_the_socket_was_emptied() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let first = || {
            pair.ctx
                .counters()
                .turns_waiting_first
                .load(Ordering::Relaxed)
        };
        let (turns, waited, answers) = (pair.turns(), first(), pair.answers());
        for i in 0..10 {
            let text = format!("slow:{i}");
            assert_eq!(pair.call(&text).expect("answer"), i.to_string().as_bytes());
        }
        assert_eq!(pair.turns(), turns + 10, "every call took the turn");
        assert_eq!(
            pair.answers(),
            answers + 10,
            "every answer was read by its caller"
        );
        // The warm-up's answer and each slow one are read to the socket's end (a short
        // read), by the loop or the caller, before the next call takes the turn.
        assert_eq!(first(), waited + 10, "turns that read before they waited");
    }

    /// Only the turns that ended with the answer in count as answers read by callers: a
    /// timeout, a close, or a failure the peer sent (which counts) tell them apart.
    /// While a caller holds the turn the loop's poller does not watch the socket for
    /// bytes: the answers wake the caller alone. (A loop that watched would be told of
    /// every answer and find the turn taken each time.)
    #[test]
    fn the_loop_is_not_woken_by_the_answers_a_caller_reads() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let taken = || pair.ctx.counters().turn_found_taken.load(Ordering::Relaxed);
        let (turns, found) = (pair.turns(), taken());
        for i in 0..10 {
            let text = format!("slow:{i}");
            assert_eq!(pair.call(&text).expect("answer"), i.to_string().as_bytes());
        }
        assert_eq!(pair.turns(), turns + 10, "every call took the turn");
        assert!(
            taken() - found <= 2,
            "the loop was told of {} of 10 answers read by their callers",
            taken() - found
        );
        // Bytes after the turn are the loop's again: a message the server sends later.
        pair.call("later:").expect("answer");
        let peer = pair.server.peer.lock().clone().expect("the server's side");
        peer.send(b"after".to_vec()).expect("send");
        assert_eq!(pair.next_event(), "after");
    }

    #[test]
    fn only_answers_a_caller_read_are_counted() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let (turns, answers) = (pair.turns(), pair.answers());
        for i in 0..3 {
            let text = format!("slow:{i}");
            assert_eq!(pair.call(&text).expect("answer"), i.to_string().as_bytes());
        }
        assert_eq!((pair.turns(), pair.answers()), (turns + 3, answers + 3));
        let result = pair
            .client
            .send_rpc_sync(b"hold".to_vec(), Duration::from_millis(100));
        assert!(
            matches!(result, Err(RpcError::Timeout { .. })),
            "{result:?}"
        );
        assert_eq!(
            (pair.turns(), pair.answers()),
            (turns + 4, answers + 3),
            "a timeout is no answer"
        );
        let result = pair.call("close");
        assert!(
            matches!(result, Err(RpcError::Connection { .. })),
            "{result:?}"
        );
        assert_eq!(
            (pair.turns(), pair.answers()),
            (turns + 5, answers + 3),
            "a close is no answer"
        );
    }

    #[test]
    fn a_large_answer_is_read_by_the_caller() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        let answer = pair.call("big:8388608").expect("8 MiB");
        assert_eq!(answer.len(), 8 << 20);
        assert!(answer.iter().all(|&b| b == 7));
        assert_eq!(pair.turns(), before + 1);
    }

    #[test]
    fn frames_for_others_are_handed_on_while_a_caller_reads() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        assert_eq!(pair.call("back:hello").expect("answer"), b"ok");
        assert_eq!(pair.turns(), before + 1);
        assert_eq!(pair.next_event(), "hello");
    }

    #[test]
    fn bytes_after_the_answer_are_read_by_the_loop() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        assert_eq!(pair.call("later:").expect("answer"), b"ok");
        std::thread::sleep(Duration::from_millis(50));
        let peer = pair.server.peer.lock().clone().expect("the server's side");
        peer.send(b"late".to_vec()).expect("send");
        // Nobody waits on the connection now: only its loop can read this.
        assert_eq!(pair.next_event(), "late");
        assert_eq!(pair.call("echo:again").expect("answer"), b"again");
    }

    /// Messages right behind the answer reach the loop or the caller about to give the
    /// turn back, whichever is told of them: none is left unread.
    #[test]
    fn messages_right_behind_an_answer_are_all_read() {
        let pair = Pair::new();
        for _ in 0..20 {
            assert_eq!(pair.call("burst:50").expect("answer"), b"ok");
        }
        for round in 0..20 {
            for i in 0..50 {
                assert_eq!(pair.next_event(), i.to_string(), "round {round}");
            }
        }
        assert!(pair.turns() > 0);
    }

    #[test]
    fn a_close_wakes_a_reading_caller_at_once() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        std::thread::scope(|scope| {
            let caller = scope.spawn(|| {
                let start = Instant::now();
                (pair.call("hold"), start.elapsed())
            });
            pair.wait_held(1);
            let start = Instant::now();
            while pair.turns() == before {
                assert!(
                    start.elapsed() < PROMPTLY,
                    "the caller never took the read turn"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            pair.client.close();
            let (result, took) = caller.join().expect("caller");
            assert!(
                matches!(result, Err(RpcError::Connection { .. })),
                "{result:?}"
            );
            assert!(took < PROMPTLY, "woken after {took:?}");
        });
    }

    #[test]
    fn a_peer_that_closes_wakes_a_reading_caller_and_its_loop_ends_the_connection() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        let start = Instant::now();
        let result = pair.call("close");
        assert!(
            matches!(result, Err(RpcError::Connection { .. })),
            "{result:?}"
        );
        assert!(
            start.elapsed() < PROMPTLY,
            "woken after {:?}",
            start.elapsed()
        );
        assert_eq!(
            pair.turns(),
            before + 1,
            "the caller read the end of the stream"
        );
        assert_eq!(pair.next_event(), "inactive");
    }

    #[test]
    fn a_timeout_gives_the_turn_back() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let start = Instant::now();
        let result = pair
            .client
            .send_rpc_sync(b"hold".to_vec(), Duration::from_millis(200));
        assert!(
            matches!(result, Err(RpcError::Timeout { .. })),
            "{result:?}"
        );
        assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
        // Answered through the loop (a callback), then by a caller again.
        let (tx, rx) = crossbeam_channel::bounded(1);
        pair.client.send_rpc(b"echo:loop".to_vec(), move |answer| {
            let _ = tx.send(answer);
        });
        let answer = rx.recv_timeout(PROMPTLY).expect("an answer").expect("ok");
        assert_eq!(answer, b"loop");
        assert_eq!(pair.call("echo:caller").expect("answer"), b"caller");
    }

    #[test]
    fn many_callers_on_one_connection_all_get_their_answers() {
        let pair = Pair::new();
        std::thread::scope(|scope| {
            let callers: Vec<_> = (0..8)
                .map(|t| {
                    let pair = &pair;
                    scope.spawn(move || {
                        for i in 0..50 {
                            let text = format!("echo:{t}-{i}");
                            let answer = pair.call(&text).expect("answer");
                            assert_eq!(answer, format!("{t}-{i}").as_bytes());
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.join().expect("caller");
            }
        });
        assert_eq!(pair.server.got.lock().len(), 400);
    }

    /// Waits until `done`, for at most [`PROMPTLY`].
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < PROMPTLY, "{what}: not within 5 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A caller whose read came to a pause hands it to the loop; if the connection was
    /// resumed while the caller still held the turn (its wake found the turn taken), the
    /// loop reads when it gets the turn back rather than taking the pause as its read.
    #[test]
    fn a_pause_that_ended_while_a_caller_held_the_turn_is_not_a_read() {
        let pair = Pair::new();
        assert_eq!(pair.call("later:").expect("answer"), b"ok");
        let peer = pair.server.peer.lock().clone().expect("the server's side");
        let conn = pair.client.conn();
        let turn = conn.read_turn();
        // A caller holds the turn; its read just came to a pause.
        turn.slot.lock().caller = true;
        pair.client.set_auto_read(false);
        peer.send(b"meanwhile".to_vec()).expect("send");
        // The resume wakes the loop, which finds the turn taken.
        pair.client.set_auto_read(true);
        wait_for("the loop finds the turn taken", || turn.slot.lock().missed);
        std::thread::sleep(Duration::from_millis(20));
        let mut poller = super::Poller::new().expect("a poller");
        super::give_back(
            conn,
            &pair.client,
            &mut poller,
            Some(super::ReadOutcome::Paused),
        );
        assert_eq!(pair.next_event(), "meanwhile");
        assert_eq!(pair.call("echo:after").expect("answer"), b"after");
    }

    /// A handler run by a caller that reads its connection (which must not block) and
    /// waits on the answer to a request of its own on the same connection: nobody reads
    /// that answer while it waits, so it fails at its own timeout, not later; then the
    /// caller gets its answer, and the connection goes on.
    #[test]
    fn a_handler_that_waits_on_its_own_connection_fails_at_its_timeout() {
        let pair = Pair::new();
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        let start = Instant::now();
        assert_eq!(pair.call("back:nested").expect("answer"), b"ok");
        assert!(start.elapsed() < PROMPTLY, "{:?}", start.elapsed());
        assert_eq!(pair.turns(), before + 1);
        assert_eq!(pair.next_event(), "nested: timed out");
        assert_eq!(pair.call("echo:after").expect("answer"), b"after");
    }

    /// One thread asks over several connections in turn, each closed and replaced by a
    /// new one every few rounds (whose descriptor is likely the number of the one just
    /// closed): its poller's registration follows, and no stale event or reused number
    /// costs an answer or delays one.
    #[test]
    fn one_thread_alternating_over_connections_that_come_and_go() {
        let pairs: Vec<Pair> = (0..3).map(|_| Pair::new()).collect();
        let mut clients: Vec<TransportClient> = pairs.iter().map(|p| p.client.clone()).collect();
        let factories: Vec<TransportClientFactory> = pairs
            .iter()
            .map(|p| p.ctx.create_client_factory())
            .collect();
        let turns = |i: usize| pairs[i].turns();
        let before: Vec<u64> = (0..3).map(turns).collect();
        let start = Instant::now();
        let mut late = 0;
        for round in 0..30 {
            for (i, client) in clients.iter().enumerate() {
                let text = if round % 2 == 0 {
                    format!("slow:{round}-{i}")
                } else {
                    format!("echo:{round}-{i}")
                };
                late += usize::from(round % 2 == 0);
                let answer = client.send_rpc_sync(text.into_bytes(), LONG);
                assert_eq!(answer.expect("answer"), format!("{round}-{i}").as_bytes());
            }
            if round % 5 == 4 {
                let i = round % 3;
                clients[i].close();
                let port = pairs[i]._listener.port();
                clients[i] = factories[i]
                    .create_client("127.0.0.1", port)
                    .expect("a new client");
                // Answered once its loop took it over: the next asks may take the turn.
                let warm = clients[i].send_rpc_sync(b"echo:warm".to_vec(), LONG);
                assert_eq!(warm.expect("warm-up"), b"warm");
            }
        }
        let taken: u64 = (0..3).map(|i| turns(i) - before[i]).sum();
        assert!(
            taken >= late as u64,
            "{taken} turns for {late} late answers"
        );
        // 45 slow answers of 20 ms, the rest at once.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    /// Streams asked for by one thread on the connection another thread reads for its
    /// answer: the caller hands the stream's bytes to its reader, which holds at most
    /// 64 kB of them and so pauses the connection again and again (the caller gives the
    /// turn back at the pause; the reader's resume wakes the loop). Every stream comes
    /// whole and in order, every answer comes, nothing waits for a timeout.
    #[test]
    fn streams_asked_for_while_a_caller_reads_come_whole() {
        use std::io::Read;
        let conf = TransportConf::from_conf(
            &crate::RpcConf::new()
                .set("rpc.io.maxQueuedBytes", "64k")
                .set("rpc.io.threads", "1"),
        )
        .expect("a configuration");
        let pair = Pair::with_conf(&conf);
        pair.call("echo:warm").expect("warm-up");
        let start = Instant::now();
        let before = pair.turns();
        std::thread::scope(|scope| {
            let caller = scope.spawn(|| {
                for i in 0..40 {
                    let text = format!("slow:{i}");
                    assert_eq!(pair.call(&text).expect("answer"), i.to_string().as_bytes());
                }
            });
            let streams = scope.spawn(|| {
                for round in 0..20 {
                    let len = 300_000 + round * 1000;
                    let mut reader = pair
                        .client
                        .stream_reader(&format!("bytes:{len}"))
                        .expect("a stream");
                    let mut got = Vec::with_capacity(len);
                    let mut buf = [0; 4096];
                    loop {
                        let n = reader.read(&mut buf).expect("stream bytes");
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if got.len() % (64 * 1024) < 4096 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    assert_eq!(got.len(), len, "round {round}");
                    assert!(
                        got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
                        "round {round}"
                    );
                }
            });
            caller.join().expect("caller");
            streams.join().expect("streams");
        });
        assert!(pair.turns() > before, "no caller read");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }

    /// A thread that asks from a thread-local's destructor, after its poller was
    /// destroyed (thread-locals go in the reverse order of their first use): the answer
    /// comes through the loop, with no panic (which would abort the process there).
    #[test]
    fn an_ask_from_a_thread_local_destructor_after_the_poller_is_gone() {
        use std::cell::RefCell;

        struct AskOnDrop(TransportClient, Sender<Result<Vec<u8>, RpcError>>);

        impl Drop for AskOnDrop {
            fn drop(&mut self) {
                let _ = self
                    .1
                    .send(self.0.send_rpc_sync(b"slow:bye".to_vec(), LONG));
            }
        }

        thread_local! {
            static ON_EXIT: RefCell<Option<AskOnDrop>> = const { RefCell::new(None) };
        }

        let pair = Pair::new();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let client = pair.client.clone();
        let counters = Arc::clone(pair.ctx.counters());
        let turns_then = Arc::new(AtomicU64::new(0));
        let then = Arc::clone(&turns_then);
        let thread = crate::threads::spawn("test-ask-on-exit".to_owned(), move || {
            ON_EXIT.with(|cell| *cell.borrow_mut() = Some(AskOnDrop(client.clone(), tx)));
            // Makes the poller, after `ON_EXIT`: it goes first. (Whether this ask takes the
            // turn depends on how soon its thread looks; not what is tested.)
            let answer = client.send_rpc_sync(b"slow:hi".to_vec(), LONG);
            assert_eq!(answer.expect("an answer"), b"hi");
            then.store(
                counters.caller_turns.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        })
        .expect("a thread");
        thread.join().expect("the thread");
        let answer = rx.recv_timeout(PROMPTLY).expect("the destructor's answer");
        assert_eq!(answer.expect("an answer"), b"bye");
        assert_eq!(
            pair.turns(),
            turns_then.load(Ordering::Relaxed),
            "the second answer came through the loop"
        );
    }

    /// A caller with no deadline of its own reads a connection whose peer stays silent:
    /// the loop closes it after `rpc.io.connectionTimeout` (its timers run while the
    /// caller holds the turn), which wakes the caller with the close.
    #[test]
    fn a_silent_peer_is_closed_at_the_connection_timeout_while_a_caller_reads() {
        let conf = TransportConf::from_conf(
            &crate::RpcConf::new().set("rpc.io.connectionTimeout", "300ms"),
        )
        .expect("a configuration");
        let pair = Pair::with_conf(&conf);
        pair.call("echo:warm").expect("warm-up");
        let before = pair.turns();
        let start = Instant::now();
        let result = pair.client.send_rpc_sync(b"hold".to_vec(), Duration::MAX);
        let took = start.elapsed();
        assert!(
            matches!(result, Err(RpcError::Connection { .. })),
            "{result:?}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < PROMPTLY,
            "closed after {took:?}"
        );
        assert_eq!(pair.turns(), before + 1, "the caller read meanwhile");
        assert_eq!(pair.next_event(), "inactive");
    }

    /// A handler that takes a millisecond for each one-way message, then drops it: slower
    /// than a peer can send.
    struct Slow;

    impl RpcHandler for Slow {
        fn receive(&self, _: &TransportClient, _: Vec<u8>, responder: Responder) {
            responder.fail("no requests here");
        }

        fn receive_one_way(&self, _: &TransportClient, _: Vec<u8>) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// On a raw server: accepts one connection and reads one request off it, returning
    /// the connection and the request's header (its id is bytes 9..17).
    fn accept_request(listener: &std::net::TcpListener) -> (std::net::TcpStream, [u8; 21]) {
        use std::io::Read;
        let (mut stream, _) = listener.accept().expect("a connection");
        stream
            .set_read_timeout(Some(PROMPTLY))
            .expect("a read timeout");
        let mut header = [0u8; 21];
        stream.read_exact(&mut header).expect("a request header");
        let len = i32::from_be_bytes(header[17..21].try_into().expect("4 bytes"));
        let mut body = vec![0u8; usize::try_from(len).expect("a length")];
        stream.read_exact(&mut body).expect("a request body");
        (stream, header)
    }

    /// A raw server that reads one request, never answers it, and sends one-way messages
    /// of 64 KiB as fast as it can for `flood`. Returns its port.
    fn flooding_server(flood: Duration) -> (u16, std::thread::JoinHandle<()>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        let thread = crate::threads::spawn("test-flooding-server".to_owned(), move || {
            let (mut stream, _) = accept_request(&listener);
            let body = vec![3u8; 64 * 1024];
            let mut frame = crate::frame::FrameHeader::one_way(body.len())
                .as_bytes()
                .to_vec();
            frame.extend_from_slice(&body);
            let frames: Vec<u8> = frame.repeat(16);
            let start = Instant::now();
            while start.elapsed() < flood {
                if stream.write_all(&frames).is_err() {
                    break;
                }
            }
        })
        .expect("a thread");
        (port, thread)
    }

    /// A `send_rpc_sync` whose caller reads a connection that a peer floods faster than
    /// it reads (every read ends with its budget spent) still ends at its timeout.
    #[test]
    fn a_flood_does_not_keep_a_reading_caller_past_its_timeout() {
        // Three rounds: a caller whose read happens to empty the socket gets away.
        for round in 0..3 {
            let ctx = TransportContext::new(TransportConf::default(), Arc::new(Slow));
            let factory = ctx.create_client_factory();
            let (port, server) = flooding_server(Duration::from_secs(3));
            let client = factory.create_client("127.0.0.1", port).expect("client");
            wait_for("the loop takes the connection over", || {
                client.conn().read_turn().with_reader(|_| ()).is_some()
            });
            let start = Instant::now();
            let result = client.send_rpc_sync(b"request".to_vec(), Duration::from_millis(200));
            let took = start.elapsed();
            assert!(
                matches!(result, Err(RpcError::Timeout { .. })),
                "round {round}: {result:?}"
            );
            assert!(
                took < Duration::from_millis(1500),
                "round {round}: timed out after {took:?}"
            );
            assert_eq!(ctx.counters().caller_turns.load(Ordering::Relaxed), 1);
            client.close();
            server.join().expect("the server");
        }
    }

    /// A raw server that answers the one request it reads with the first `cut` bytes of
    /// an answer, `delay` after it read it, then hangs up. Returns its port.
    fn cutting_server(cut: usize, delay: Duration) -> (u16, std::thread::JoinHandle<()>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        let thread = crate::threads::spawn("test-cutting-server".to_owned(), move || {
            let (mut stream, header) = accept_request(&listener);
            let answer = b"an answer that is cut short";
            let mut frame = ((21 + answer.len()) as i64).to_be_bytes().to_vec();
            frame.push(4);
            frame.extend_from_slice(&header[9..17]);
            frame.extend_from_slice(&(answer.len() as i32).to_be_bytes());
            frame.extend_from_slice(answer);
            std::thread::sleep(delay);
            stream.write_all(&frame[..cut]).expect("part of an answer");
            // Dropping the stream hangs up, right behind the bytes.
        })
        .expect("a thread");
        (port, thread)
    }

    /// The end of stream right behind a short read is seen: a hang-up reported with the
    /// bytes is read to its end (no new edge comes for it).
    #[test]
    fn a_hang_up_behind_part_of_the_answer_fails_the_call_at_once() {
        for cut in [0, 10, 30] {
            let (tx, _events) = crossbeam_channel::unbounded();
            let ctx = TransportContext::new(TransportConf::default(), Arc::new(Client(tx)));
            let factory = ctx.create_client_factory();
            let (port, server) = cutting_server(cut, Duration::from_millis(30));
            let client = factory.create_client("127.0.0.1", port).expect("client");
            std::thread::sleep(Duration::from_millis(10));
            let start = Instant::now();
            let result = client.send_rpc_sync(b"request".to_vec(), LONG);
            assert!(
                start.elapsed() < PROMPTLY,
                "cut {cut}: {:?}",
                start.elapsed()
            );
            assert!(
                matches!(result, Err(RpcError::Connection { .. })),
                "{result:?}"
            );
            assert_eq!(ctx.counters().caller_turns.load(Ordering::Relaxed), 1);
            server.join().expect("the server");
        }
    }

    /// A raw server that reads one request and writes what `answer` makes of its id,
    /// chunk after chunk with the delay given before each, then hangs up (`hang_up`) or
    /// waits up to 5 s for the client to. Returns its port.
    fn scripted_server(
        answer: impl FnOnce(&[u8]) -> Vec<(Duration, Vec<u8>)> + Send + 'static,
        hang_up: bool,
    ) -> (u16, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        let thread = crate::threads::spawn("test-scripted-server".to_owned(), move || {
            let (mut stream, header) = accept_request(&listener);
            for (delay, chunk) in answer(&header[9..17]) {
                std::thread::sleep(delay);
                if stream.write_all(&chunk).is_err() {
                    return;
                }
            }
            if !hang_up {
                let mut rest = [0u8; 64];
                let _ = stream.read(&mut rest);
            }
        })
        .expect("a thread");
        (port, thread)
    }

    /// An answer frame to request `id` (8 bytes) with `body`.
    fn answer_frame(id: &[u8], body: &[u8]) -> Vec<u8> {
        let mut frame = ((21 + body.len()) as i64).to_be_bytes().to_vec();
        frame.push(4);
        frame.extend_from_slice(id);
        frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
        frame.extend_from_slice(body);
        frame
    }

    /// Asks the scripted server once (after its loop took the connection over, so that
    /// the caller takes the read turn): the outcome, how long it took, and the turns.
    fn ask_scripted(
        answer: impl FnOnce(&[u8]) -> Vec<(Duration, Vec<u8>)> + Send + 'static,
        hang_up: bool,
    ) -> (Result<Vec<u8>, RpcError>, Duration, u64) {
        let (tx, _events) = crossbeam_channel::unbounded();
        let ctx = TransportContext::new(TransportConf::default(), Arc::new(Client(tx)));
        let factory = ctx.create_client_factory();
        let (port, server) = scripted_server(answer, hang_up);
        let client = factory.create_client("127.0.0.1", port).expect("client");
        wait_for("the loop takes the connection over", || {
            client.conn().read_turn().with_reader(|_| ()).is_some()
        });
        let start = Instant::now();
        let result = client.send_rpc_sync(b"request".to_vec(), LONG);
        let took = start.elapsed();
        client.close();
        server.join().expect("the server");
        let turns = ctx.counters().caller_turns.load(Ordering::Relaxed);
        (result, took, turns)
    }

    const GAP: Duration = Duration::from_millis(100);

    /// An answer that comes in pieces, with pauses between them, is read by its caller.
    #[test]
    fn an_answer_in_pieces_is_read_by_its_caller() {
        let (result, took, turns) = ask_scripted(
            |id| {
                let frame = answer_frame(id, b"in pieces");
                vec![
                    (GAP, frame[..5].to_vec()),
                    (GAP, frame[5..22].to_vec()),
                    (GAP, frame[22..].to_vec()),
                ]
            },
            false,
        );
        assert_eq!(result.expect("the answer"), b"in pieces");
        assert!(took < PROMPTLY, "{took:?}");
        assert_eq!(turns, 1);
    }

    /// A bad frame (a negative length) where the answer should be fails the caller at
    /// once.
    #[test]
    fn a_bad_frame_instead_of_the_answer_fails_the_caller_at_once() {
        let (result, took, turns) = ask_scripted(
            |_| {
                vec![(
                    GAP,
                    (-1i64)
                        .to_be_bytes()
                        .iter()
                        .chain(&[4; 13])
                        .copied()
                        .collect(),
                )]
            },
            false,
        );
        assert!(
            matches!(result, Err(RpcError::Connection { .. })),
            "{result:?}"
        );
        assert!(took < PROMPTLY, "{took:?}");
        assert_eq!(turns, 1);
    }

    /// An answer that claims more than the largest frame fails the caller at once, with
    /// nothing of that size allocated.
    #[test]
    fn an_answer_claiming_more_than_the_largest_frame_fails_the_caller_at_once() {
        let (result, took, turns) = ask_scripted(
            |id| {
                let mut frame = (1i64 << 40).to_be_bytes().to_vec();
                frame.push(4);
                frame.extend_from_slice(id);
                frame.extend_from_slice(&(i32::MAX).to_be_bytes());
                frame.extend_from_slice(&[1; 100]);
                vec![(GAP, frame)]
            },
            false,
        );
        assert!(result.is_err(), "{result:?}");
        assert!(took < PROMPTLY, "{took:?}");
        assert_eq!(turns, 1);
    }

    /// The answer with the peer's end of stream right behind it: the answer is in, and
    /// the hang-up is the loop's.
    #[test]
    fn an_answer_with_a_hang_up_right_behind_it_is_an_answer() {
        let (result, took, _) =
            ask_scripted(|id| vec![(GAP, answer_frame(id, b"last words"))], true);
        assert_eq!(result.expect("the answer"), b"last words");
        assert!(took < PROMPTLY, "{took:?}");
    }

    /// An answer trickled a byte at a time, far slower than `rpc.io.frameTimeout` allows
    /// a frame: the loop's timers close the connection while the caller reads it, which
    /// fails the caller then, not at its own timeout.
    #[test]
    fn an_answer_trickled_past_the_frame_timeout_fails_the_reading_caller() {
        let conf =
            TransportConf::from_conf(&crate::RpcConf::new().set("rpc.io.frameTimeout", "500ms"))
                .expect("a configuration");
        let (tx, _events) = crossbeam_channel::unbounded();
        let ctx = TransportContext::new(conf, Arc::new(Client(tx)));
        let factory = ctx.create_client_factory();
        let (port, server) = scripted_server(
            |id| {
                answer_frame(id, b"trickled")
                    .into_iter()
                    .map(|byte| (Duration::from_millis(100), vec![byte]))
                    .collect()
            },
            false,
        );
        let client = factory.create_client("127.0.0.1", port).expect("client");
        wait_for("the loop takes the connection over", || {
            client.conn().read_turn().with_reader(|_| ()).is_some()
        });
        let start = Instant::now();
        let result = client.send_rpc_sync(b"request".to_vec(), LONG);
        let took = start.elapsed();
        assert!(
            matches!(result, Err(RpcError::Connection { .. })),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(ctx.counters().caller_turns.load(Ordering::Relaxed), 1);
        server.join().expect("the server");
    }

    /// A raw server that answers the one request it reads with an answer whose first
    /// 10 bytes end in a byte of TCP urgent data (out of band: not part of the stream),
    /// the rest right behind. Returns its port.
    fn urgent_server() -> (u16, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        let server = crate::threads::spawn("test-urgent-server".to_owned(), move || {
            let (mut stream, header) = accept_request(&listener);
            let frame = answer_frame(&header[9..17], b"urgent");
            std::thread::sleep(GAP);
            stream.write_all(&frame[..10]).expect("a write");
            socket2::SockRef::from(&stream)
                .send_out_of_band(b"!")
                .expect("urgent data");
            stream.write_all(&frame[10..]).expect("a write");
            let mut rest = [0u8; 64];
            let _ = stream.read(&mut rest);
        })
        .expect("a thread");
        (port, server)
    }

    /// A peer that puts a byte of TCP urgent data in the middle of its answer: a read
    /// stops short at the urgent mark, with the rest of the answer in the socket and no
    /// new readable edge to come for it. The urgent data raises one (a priority event),
    /// after which the socket is read to its end: the answer comes at once, to a caller
    /// reading the connection (`caller`) or through its loop.
    fn urgent_data_in_an_answer(caller: bool) {
        let (port, server) = urgent_server();
        let (tx, _events) = crossbeam_channel::unbounded();
        let ctx = TransportContext::new(TransportConf::default(), Arc::new(Client(tx)));
        let factory = ctx.create_client_factory();
        let client = factory.create_client("127.0.0.1", port).expect("client");
        wait_for("the loop takes the connection over", || {
            client.conn().read_turn().with_reader(|_| ()).is_some()
        });
        let start = Instant::now();
        let timeout = Duration::from_secs(3);
        let result = if caller {
            client.send_rpc_sync(b"request".to_vec(), timeout)
        } else {
            let (answer_tx, answer_rx) = crossbeam_channel::bounded(1);
            client.send_rpc(b"request".to_vec(), move |answer| {
                let _ = answer_tx.send(answer);
            });
            answer_rx
                .recv_timeout(timeout)
                .unwrap_or(Err(RpcError::EnvStopped))
        };
        let took = start.elapsed();
        client.close();
        server.join().expect("the server");
        assert_eq!(result.expect("the answer"), b"urgent", "after {took:?}");
        assert!(took < Duration::from_secs(2), "answered after {took:?}");
        let turns = ctx.counters().caller_turns.load(Ordering::Relaxed);
        assert_eq!(turns, u64::from(caller));
    }

    #[test]
    fn urgent_data_in_an_answer_does_not_keep_it_from_its_reading_caller() {
        urgent_data_in_an_answer(true);
    }

    #[test]
    fn urgent_data_in_an_answer_does_not_keep_it_from_its_loop() {
        urgent_data_in_an_answer(false);
    }
}
