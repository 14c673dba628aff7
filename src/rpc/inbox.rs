//! [`Inbox`]: one endpoint's queue and lifecycle.
//!
//! `OnStart` is queued first when the inbox is made; `stop` queues `OnStop` last and
//! refuses every later post, so `on_stop` runs once, after every message accepted before
//! it. An inbox is scheduled on its message loop at most once at a time, so its
//! messages are handled one at a time and in order.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::error::RpcError;
use crate::rpc::address::RpcAddress;
use crate::rpc::call::{Content, RpcCallContext};
use crate::rpc::message_loop::MessageLoop;
use crate::sync::{Arc, Mutex};
use crate::transport::{self, TransportClient};

/// A message's content on its way to an endpoint.
pub(crate) enum Payload {
    /// From this env: the value itself.
    Local(Box<dyn Content>),
    /// From a peer: the request body, where the content starts in it, and the connection
    /// it came over.
    Remote {
        body: Vec<u8>,
        start: usize,
        client: TransportClient,
    },
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
    queue: VecDeque<InboxMessage>,
    stopped: bool,
    /// Why it stopped (`EnvStopped` or `EndpointStopped`).
    why: Option<RpcError>,
    scheduled: bool,
    finished: bool,
}

/// One endpoint's queue.
pub(crate) struct Inbox {
    name: Arc<str>,
    state: Mutex<State>,
    handler: Mutex<Option<Box<dyn Handler>>>,
    runner: Arc<MessageLoop>,
}

/// How many messages one turn handles before the inbox yields its thread.
const TURN: usize = 64;
/// How long a turn goes on taking new messages.
const TURN_TIME: Duration = Duration::from_micros(50);

impl Inbox {
    /// An inbox with `OnStart` queued; call [`schedule_start`](Self::schedule_start) to run it.
    pub(crate) fn new(name: Arc<str>, handler: Box<dyn Handler>, runner: Arc<MessageLoop>) -> Self {
        Self {
            name,
            state: Mutex::new(State {
                queue: VecDeque::from([InboxMessage::OnStart]),
                stopped: false,
                why: None,
                scheduled: true,
                finished: false,
            }),
            handler: Mutex::new(Some(handler)),
            runner,
        }
    }

    pub(crate) fn schedule_start(self: &Arc<Self>) {
        self.runner.schedule(Arc::clone(self));
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Queues `msg`. If the inbox is stopped, an ask is failed with `EndpointStopped`
    /// through its context, and the error is returned.
    pub(crate) fn post(self: &Arc<Self>, msg: InboxMessage) -> Result<(), RpcError> {
        let mut state = self.state.lock();
        if state.stopped {
            drop(state);
            let error = RpcError::EndpointStopped {
                name: self.name.to_string(),
            };
            msg.fail(error.clone());
            return Err(error);
        }
        state.queue.push_back(msg);
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
        state.why = Some(why);
        state.queue.push_back(InboxMessage::OnStop);
        if state.scheduled {
            return true;
        }
        state.scheduled = true;
        drop(state);
        self.runner.schedule(Arc::clone(self));
        true
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.state.lock().stopped
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
        let mut handler = self.handler.lock();
        // Replies written during the turn go out together at its end (one write per
        // connection instead of one per reply). A turn ends after TURN messages, or at
        // the first message that finds TURN_TIME passed, so a reply waits at most for
        // the handlers that started within TURN_TIME after it.
        let started = Instant::now();
        let _batch = transport::defer_writes();
        for _ in 0..TURN {
            if started.elapsed() > TURN_TIME {
                break;
            }
            let msg = {
                let mut state = self.state.lock();
                match state.queue.pop_front() {
                    Some(msg) => msg,
                    None => {
                        state.scheduled = false;
                        return Turn::Idle;
                    }
                }
            };
            let last = matches!(msg, InboxMessage::OnStop);
            match handler.as_mut() {
                Some(h) => h.handle(msg),
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
                RpcCallContext::dropped_because(why, || *handler = None);
                let mut state = self.state.lock();
                state.finished = true;
                state.scheduled = false;
                let left = std::mem::take(&mut state.queue);
                drop(state);
                for msg in left {
                    msg.fail(RpcError::EndpointStopped {
                        name: self.name.to_string(),
                    });
                }
                return Turn::Finished;
            }
        }
        drop(handler);
        // Still scheduled: go to the back of the line so other inboxes get a turn.
        self.runner.schedule(Arc::clone(self));
        Turn::More
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
