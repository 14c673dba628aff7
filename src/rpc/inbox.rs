//! [`Inbox`]: one endpoint's queue and lifecycle.
//!
//! `OnStart` is queued first when the inbox is made; `stop` queues `OnStop` last and
//! refuses every later post, so `on_stop` runs once, after every message accepted before
//! it. The inbox of an [`RpcEndpoint`](crate::RpcEndpoint) is scheduled on its message
//! loop at most once at a time, so its messages are handled one at a time and in order.
//!
//! The inbox of a [`ConcurrentRpcEndpoint`](crate::ConcurrentRpcEndpoint) is scheduled up
//! to `limit` times at once (Spark's `Inbox` with `enableConcurrent`): each scheduled turn
//! is a worker taking messages from the same queue. `OnStart` runs alone (no worker is
//! added before it returned); a worker that finds `OnStop` at the front while others are
//! still active leaves it there, so the last worker runs it, after every other message
//! returned.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::{self, ThreadId};
use std::time::Instant;

use log::error;

use crate::conf::keys;
use crate::error::RpcError;
use crate::metrics::{EndpointKind, EndpointMetrics, EndpointStats};
use crate::rpc::address::RpcAddress;
use crate::rpc::call::{Content, RpcCallContext};
use crate::rpc::flow::Charge;
use crate::rpc::message_loop::MessageLoop;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Arc, Condvar, Mutex, RwLock};
use crate::threads::panic_message;
use crate::transport::{Admission, TransportClient};

/// A message's content on its way to an endpoint.
pub(crate) enum Payload {
    /// From this env: the value itself.
    Local(Box<dyn Content>),
    /// From a peer: the request body, where the content starts in it, the connection it
    /// came over, and its share of the endpoint's window on that connection (given back
    /// when the payload is dropped).
    Remote {
        body: Vec<u8>,
        start: usize,
        /// The fingerprint of the message's type the sender claims (0: none).
        message_type: u64,
        client: TransportClient,
        charge: Charge,
    },
}

impl Payload {
    /// The socket address of the peer it came from; `None` from this env.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        match self {
            Self::Local(_) => None,
            Self::Remote { client, .. } => Some(client.remote_address()),
        }
    }
}

/// What an inbox holds.
pub(crate) enum InboxMessage {
    OnStart,
    OnStop,
    OneWay {
        sender: Option<RpcAddress>,
        payload: Payload,
    },
    /// The sender is the reply context's.
    Ask {
        payload: Payload,
        reply: RpcCallContext,
    },
    Connected(RpcAddress),
    Disconnected(RpcAddress),
    NetworkError(RpcError, RpcAddress),
}

impl InboxMessage {
    /// Fails an ask with `error` through its context; other messages are dropped.
    pub(crate) fn fail(self, error: RpcError) {
        if let Self::Ask { reply, .. } = self {
            reply.fail(error);
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::OnStart => "OnStart",
            Self::OnStop => "OnStop",
            Self::OneWay { .. } => "one-way message",
            Self::Ask { .. } => "ask",
            Self::Connected(_) => "Connected",
            Self::Disconnected(_) => "Disconnected",
            Self::NetworkError(..) => "NetworkError",
        }
    }
}

impl fmt::Debug for InboxMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// The typed endpoint behind an inbox, as the message loop sees it.
pub(crate) trait Handler: Send {
    fn handle(&mut self, msg: InboxMessage);
}

/// The typed concurrent endpoint behind an inbox: called from several threads at once.
pub(crate) trait SharedHandler: Send + Sync {
    fn handle(&self, msg: InboxMessage);
}

/// The endpoint an inbox runs, and how.
pub(crate) enum Endpoint {
    /// One message at a time.
    Exclusive(Box<dyn Handler>),
    /// Up to `limit` messages at once (at least 1).
    Concurrent {
        handler: Box<dyn SharedHandler>,
        limit: usize,
    },
}

/// What one turn of [`Inbox::process`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Nothing left to do for now.
    Idle,
    /// Messages are left; the inbox was scheduled again.
    More,
    /// `on_stop` ran; the inbox is done for good.
    Finished,
}

struct State {
    /// Messages, each with what it charged of the room for this env's own senders.
    queue: VecDeque<(InboxMessage, usize)>,
    /// Bytes charged by messages from this env's own threads.
    local_bytes: usize,
    /// Threads waiting for room.
    waiters: usize,
    /// The thread running the endpoint now, if any.
    running_on: Option<ThreadId>,
    stopped: bool,
    /// Why it stopped (`EnvStopped` or `EndpointStopped`).
    why: Option<RpcError>,
    scheduled: bool,
    finished: bool,
    /// Concurrent inboxes: the workers scheduled or running.
    active: usize,
    /// Concurrent inboxes: the active workers that took a message and have not come back
    /// for the next; the others are about to take one.
    busy: usize,
    /// Concurrent inboxes: whether `on_start` returned (no second worker before).
    started: bool,
    /// Concurrent inboxes: the threads running a worker now.
    running: Vec<ThreadId>,
    /// The most messages that ever waited at once.
    high_water: usize,
}

/// One endpoint's queue.
///
/// Messages from peers are bounded by the windows of `flow`; messages from this env's own
/// threads by `capacity` bytes together (`rpc.dispatcher.inboxCapacity`): a sender finding
/// no room waits (see [`post_local`](Self::post_local)). Lifecycle events are never
/// refused.
pub(crate) struct Inbox {
    name: Arc<str>,
    /// The type of the endpoint's messages: its fingerprint and `type_name`.
    message_type: (u64, &'static str),
    state: Mutex<State>,
    /// `State::stopped`, readable without the lock (set under it).
    stopped: AtomicBool,
    room: Condvar,
    capacity: usize,
    handler: Mutex<Option<Box<dyn Handler>>>,
    /// A concurrent endpoint: its workers hold the read side while they run; the worker
    /// that runs `OnStop` takes the write side to drop it.
    shared: RwLock<Option<Box<dyn SharedHandler>>>,
    /// How many workers a concurrent endpoint may have at once; 0 for an exclusive one.
    limit: usize,
    runner: Arc<MessageLoop>,
    /// Its counters, shared with its handler and the contexts of its asks.
    stats: Arc<EndpointStats>,
    kind: EndpointKind,
}

/// How many messages one turn handles before the inbox yields its thread.
const TURN: usize = 64;

impl Inbox {
    /// An inbox with `OnStart` queued; call [`schedule_start`](Self::schedule_start) to run it.
    pub(crate) fn new(
        name: Arc<str>,
        message_type: (u64, &'static str),
        endpoint: Endpoint,
        runner: Arc<MessageLoop>,
        capacity: usize,
        (stats, kind): (Arc<EndpointStats>, EndpointKind),
    ) -> Self {
        let (handler, shared, limit) = match endpoint {
            Endpoint::Exclusive(handler) => (Some(handler), None, 0),
            Endpoint::Concurrent { handler, limit } => (None, Some(handler), limit.max(1)),
        };
        Self {
            name,
            message_type,
            stopped: AtomicBool::new(false),
            room: Condvar::default(),
            capacity,
            state: Mutex::new(State {
                queue: VecDeque::from([(InboxMessage::OnStart, 0)]),
                local_bytes: 0,
                waiters: 0,
                running_on: None,
                stopped: false,
                why: None,
                scheduled: true,
                finished: false,
                // The worker schedule_start runs, for `OnStart`.
                active: usize::from(limit > 0),
                busy: 0,
                started: false,
                running: Vec::new(),
                high_water: 1,
            }),
            handler: Mutex::new(handler),
            shared: RwLock::new(shared),
            limit,
            runner,
            stats,
            kind,
        }
    }

    /// The endpoint's figures now.
    pub(crate) fn metrics(&self) -> EndpointMetrics {
        let (inbox_depth, inbox_high_water) = {
            let state = self.state.lock();
            (state.queue.len(), state.high_water)
        };
        let stats = &self.stats;
        EndpointMetrics {
            name: self.name.to_string(),
            kind: self.kind,
            inbox_depth,
            inbox_high_water,
            messages_handled: stats.handled.load(Ordering::Relaxed),
            handler_time: stats.handler_time(),
            panics: stats.panics.load(Ordering::Relaxed),
            asks_answered: stats.asks_answered.load(Ordering::Relaxed),
            asks_failed: stats.asks_failed.load(Ordering::Relaxed),
            asks_dropped: stats.asks_dropped.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn schedule_start(self: &Arc<Self>) {
        self.runner.schedule(Arc::clone(self));
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The type of the endpoint's messages: its fingerprint and `type_name`.
    pub(crate) fn message_type(&self) -> (u64, &'static str) {
        self.message_type
    }

    /// Queues `msg` (from a peer, whose window bounds it, or an event). If the inbox is
    /// stopped, an ask is failed with `EndpointStopped` through its context, and the error
    /// is returned.
    pub(crate) fn post(self: &Arc<Self>, msg: InboxMessage) -> Result<(), RpcError> {
        self.post_local(msg, 0, Admission::Force)
    }

    /// Queues `msg` from a thread of this env, charging `charge` bytes of the room this
    /// env's threads share; waits for room (or fails at once) as `admission` says. The
    /// endpoint's own handler sending to itself never waits: no room can come while it
    /// does. On an error an ask is failed through its context.
    pub(crate) fn post_local(
        self: &Arc<Self>,
        msg: InboxMessage,
        charge: usize,
        admission: Admission,
    ) -> Result<(), RpcError> {
        let mut state = self.state.lock();
        loop {
            if state.stopped {
                // Why it stopped: the env (`EnvStopped`) or this endpoint.
                let error = state
                    .why
                    .clone()
                    .unwrap_or_else(|| RpcError::EndpointStopped {
                        name: self.name.to_string(),
                    });
                drop(state);
                msg.fail(error.clone());
                return Err(error);
            }
            if charge == 0
                || state.local_bytes < self.capacity
                || state.running_on == Some(thread::current().id())
                || (self.limit > 0 && state.running.contains(&thread::current().id()))
            {
                break;
            }
            if matches!(admission, Admission::Force) {
                break;
            }
            let wait = match admission.wait_from(Instant::now()) {
                Ok(wait) => wait,
                Err(waited) => {
                    let error = RpcError::QueueFull {
                        queue: format!("inbox of endpoint {}", self.name),
                        queued: state.local_bytes as u64,
                        limit: self.capacity as u64,
                        key: keys::DISPATCHER_INBOX_CAPACITY,
                        waited,
                    };
                    drop(state);
                    msg.fail(error.clone());
                    return Err(error);
                }
            };
            state.waiters += 1;
            state = self.room.wait_timeout(state, wait);
            state.waiters -= 1;
        }
        state.local_bytes += charge;
        state.queue.push_back((msg, charge));
        state.high_water = state.high_water.max(state.queue.len());
        if self.limit > 0 {
            // Another worker, unless on_start still runs, the limit is reached, or an
            // active worker is about to take this message anyway.
            if state.started && state.active < self.limit && state.busy == state.active {
                state.active += 1;
                drop(state);
                self.runner.schedule(Arc::clone(self));
            }
            return Ok(());
        }
        if state.scheduled {
            return Ok(());
        }
        state.scheduled = true;
        drop(state);
        self.runner.schedule(Arc::clone(self));
        Ok(())
    }

    /// Queues `OnStop` and refuses later posts. `why` is what asks whose call contexts
    /// the endpoint still holds when it is dropped fail with. `false` if it was stopped
    /// already.
    pub(crate) fn stop(self: &Arc<Self>, why: RpcError) -> bool {
        let mut state = self.state.lock();
        if state.stopped {
            return false;
        }
        state.stopped = true;
        self.stopped.store(true, Ordering::Release);
        state.why = Some(why);
        state.queue.push_back((InboxMessage::OnStop, 0));
        state.high_water = state.high_water.max(state.queue.len());
        if state.waiters > 0 {
            // Waiting senders fail with EndpointStopped.
            self.room.notify_all();
        }
        if self.limit > 0 {
            // The last active worker runs OnStop; with none, one is started for it.
            if state.active == 0 {
                state.active = 1;
                drop(state);
                self.runner.schedule(Arc::clone(self));
            }
            return true;
        }
        if state.scheduled {
            return true;
        }
        state.scheduled = true;
        drop(state);
        self.runner.schedule(Arc::clone(self));
        true
    }

    /// Whether it was stopped: later posts are refused. Takes no lock.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.state.lock().finished
    }

    /// How many messages wait.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Handles up to a turn's worth of messages. Only the thread the inbox was scheduled
    /// on calls this.
    pub(crate) fn process(self: &Arc<Self>) -> Turn {
        if self.limit > 0 {
            return self.work();
        }
        let mut handler = self.handler.lock();
        self.state.lock().running_on = Some(thread::current().id());
        let turn = self.turn(&mut handler);
        drop(handler);
        if turn == Turn::More {
            // Still scheduled: go to the back of the line so other inboxes get a turn.
            self.runner.schedule(Arc::clone(self));
        }
        turn
    }

    fn turn(self: &Arc<Self>, handler: &mut Option<Box<dyn Handler>>) -> Turn {
        // One clock read per message: each handler time runs from the end of the one
        // before (taking the message out of the queue included).
        let mut clock = Instant::now();
        for _ in 0..TURN {
            let msg = {
                let mut state = self.state.lock();
                match state.queue.pop_front() {
                    Some((msg, charge)) => {
                        if charge > 0 {
                            state.local_bytes -= charge;
                            if state.waiters > 0 {
                                self.room.notify_all();
                            }
                        }
                        msg
                    }
                    None => {
                        state.scheduled = false;
                        state.running_on = None;
                        return Turn::Idle;
                    }
                }
            };
            let last = matches!(msg, InboxMessage::OnStop);
            match handler.as_mut() {
                Some(h) => {
                    h.handle(msg);
                    let now = Instant::now();
                    self.stats.handled(now.saturating_duration_since(clock));
                    clock = now;
                }
                None => msg.fail(RpcError::EndpointStopped {
                    name: self.name.to_string(),
                }),
            }
            if last {
                // Dropping the endpoint here ends the references it holds; the call
                // contexts it kept fail with the reason it stopped, not NoReply.
                let why = self
                    .state
                    .lock()
                    .why
                    .clone()
                    .unwrap_or(RpcError::EnvStopped);
                RpcCallContext::dropped_because(why, || drop_endpoint(&self.name, handler));
                let mut state = self.state.lock();
                state.finished = true;
                state.scheduled = false;
                state.running_on = None;
                state.local_bytes = 0;
                let left = std::mem::take(&mut state.queue);
                drop(state);
                for (msg, _) in left {
                    msg.fail(RpcError::EndpointStopped {
                        name: self.name.to_string(),
                    });
                }
                return Turn::Finished;
            }
        }
        self.state.lock().running_on = None;
        Turn::More
    }
}

impl Inbox {
    /// One turn of a worker of a concurrent inbox: up to a turn's worth of messages, while
    /// other workers take messages from the same queue.
    fn work(self: &Arc<Self>) -> Turn {
        let me = thread::current().id();
        let handler = self.shared.read();
        self.state.lock().running.push(me);
        let mut busy = false;
        for _ in 0..TURN {
            let msg = {
                let mut state = self.state.lock();
                if busy {
                    state.busy -= 1;
                }
                let alone = state.active == 1;
                match state.queue.front() {
                    Some((InboxMessage::OnStop, _)) if !alone => {
                        // The last worker runs it, once the others have returned.
                        Self::leave(&mut state, me);
                        return Turn::Idle;
                    }
                    None => {
                        Self::leave(&mut state, me);
                        return Turn::Idle;
                    }
                    Some(_) => {}
                }
                let Some((msg, charge)) = state.queue.pop_front() else {
                    unreachable!("the queue was not empty");
                };
                busy = true;
                state.busy += 1;
                // More waiting and every worker busy: another one takes the next.
                let spawn = state.started
                    && !state.queue.is_empty()
                    && state.active < self.limit
                    && state.busy == state.active;
                if spawn {
                    state.active += 1;
                }
                if charge > 0 {
                    state.local_bytes -= charge;
                    if state.waiters > 0 {
                        self.room.notify_all();
                    }
                }
                if spawn {
                    drop(state);
                    self.runner.schedule(Arc::clone(self));
                }
                msg
            };
            match msg {
                InboxMessage::OnStop => {
                    drop(handler);
                    return self.finish(me);
                }
                InboxMessage::OnStart => {
                    if let Some(h) = handler.as_ref() {
                        self.timed(|| h.handle(InboxMessage::OnStart));
                    }
                    // Now the others may start: as many as there are messages waiting.
                    let mut state = self.state.lock();
                    state.started = true;
                    let wanted = state.queue.len().min(self.limit);
                    let more = wanted.saturating_sub(state.active);
                    state.active += more;
                    drop(state);
                    for _ in 0..more {
                        self.runner.schedule(Arc::clone(self));
                    }
                }
                msg => match handler.as_ref() {
                    Some(h) => self.timed(|| h.handle(msg)),
                    None => msg.fail(RpcError::EndpointStopped {
                        name: self.name.to_string(),
                    }),
                },
            }
        }
        // Still active: back of the line, so other inboxes get a turn.
        let mut state = self.state.lock();
        state.running.retain(|t| *t != me);
        if busy {
            state.busy -= 1;
        }
        drop(state);
        drop(handler);
        self.runner.schedule(Arc::clone(self));
        Turn::More
    }

    /// Runs one handler call of a concurrent endpoint and counts it with its time.
    fn timed(&self, handle: impl FnOnce()) {
        let start = Instant::now();
        handle();
        self.stats.handled(start.elapsed());
    }

    /// A worker that found nothing for it leaves.
    fn leave(state: &mut State, me: ThreadId) {
        state.active -= 1;
        state.running.retain(|t| *t != me);
    }

    /// Runs `OnStop` on the last worker of a concurrent inbox and drops the endpoint.
    fn finish(self: &Arc<Self>, me: ThreadId) -> Turn {
        // Workers that left may still hold the read side for a moment.
        let mut handler = self.shared.write();
        if let Some(h) = handler.as_ref() {
            self.timed(|| h.handle(InboxMessage::OnStop));
        }
        let why = self
            .state
            .lock()
            .why
            .clone()
            .unwrap_or(RpcError::EnvStopped);
        RpcCallContext::dropped_because(why, || drop_endpoint(&self.name, &mut *handler));
        drop(handler);
        let mut state = self.state.lock();
        state.finished = true;
        state.active = 0;
        state.busy = 0;
        state.running.retain(|t| *t != me);
        state.local_bytes = 0;
        let left = std::mem::take(&mut state.queue);
        drop(state);
        for (msg, _) in left {
            msg.fail(RpcError::EndpointStopped {
                name: self.name.to_string(),
            });
        }
        Turn::Finished
    }
}

/// Drops a stopped endpoint. A panic in its `Drop` is caught and logged (and the asks
/// whose contexts it held fail with [`RpcError::Remote`]), so that the inbox still
/// finishes and the loop thread is left as it was.
fn drop_endpoint<T: ?Sized>(name: &str, endpoint: &mut Option<Box<T>>) {
    let endpoint = endpoint.take();
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(endpoint))) {
        let message = panic_message(payload.as_ref());
        RpcCallContext::answer_panicked(&message);
        error!("endpoint {name} panicked while it was dropped ({message}); ignored");
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Inbox")
            .field("name", &self.name)
            .field("queued", &state.queue.len())
            .field("stopped", &state.stopped)
            .finish()
    }
}
