//! [`Outbox`]: the messages to one remote env, while its connection is made and after.
//!
//! `send` and `ask` never wait for the network, only for room. The first message to a peer
//! queues and starts a connect on the `rpc-connect-N` pool; once connected, the queue goes
//! out in order and later messages go straight to the connection (whose write queue and
//! windows bound them, see `flow`). The queue while connecting holds at most
//! `rpc.io.maxQueuedBytes`; beyond it senders wait for the connect like they would for
//! room. When the connect fails, every queued ask fails at once with the `Connection` error
//! and queued one-way messages are counted and logged as lost (their receipts told); for
//! a while after that, messages to the peer fail at once with the same error instead of
//! connecting again: [`FAIL_FAST`] after one failure, twice as long after each further
//! one in a row, up to [`MAX_FAIL_FAST`]. A connection that closes is replaced by the
//! next message.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::conf::keys;
use crate::error::RpcError;
use crate::frame::Body;
use crate::rpc::address::RpcAddress;
use crate::rpc::call::{Call, Reply};
use crate::rpc::env::EnvInner;
use crate::sync::atomic::Ordering;
use crate::sync::{Arc, Condvar, Mutex, Weak};
use crate::transport::{self, Admission, Label, TransportClient};

/// How long after a failed connect messages to that peer fail at once; doubled after each
/// further failure in a row.
pub(crate) const FAIL_FAST: Duration = Duration::from_millis(500);

/// The longest a run of failed connects makes messages to the peer fail at once.
pub(crate) const MAX_FAIL_FAST: Duration = Duration::from_secs(8);

/// How long an idle `rpc-connect-N` thread waits for work before it exits.
pub(crate) const CONNECT_IDLE: Duration = Duration::from_secs(60);

/// A message waiting for (or written to) a connection.
pub(crate) enum OutboxMessage {
    OneWay {
        body: Body,
        receipt: Option<transport::Receipt>,
    },
    Ask {
        body: Body,
        call: Arc<Call>,
    },
}

impl OutboxMessage {
    fn len(&self) -> usize {
        match self {
            Self::OneWay { body, .. } | Self::Ask { body, .. } => body.len(),
        }
    }

    /// Fails the message with `error`: an ask through its call, a one-way message through
    /// its receipt. Returns the error for a one-way message (its sender hears it).
    fn fail(self, error: RpcError) -> Result<(), RpcError> {
        match self {
            Self::Ask { call, .. } => {
                call.complete(Err(error));
                Ok(())
            }
            Self::OneWay { receipt, .. } => {
                if let Some(receipt) = receipt {
                    receipt(Err(error.clone()));
                }
                Err(error)
            }
        }
    }
}

/// Sends an ask's request on `client` with `label` (the endpoint, for its window); its
/// outcome completes `call`. The request carries the call's deadline, so a peer that is
/// slow to answer is never cut off before it.
pub(crate) fn send_rpc_on(
    client: &TransportClient,
    label: Option<Label>,
    body: Body,
    call: Arc<Call>,
    admission: Admission,
) {
    if call.is_done() {
        // Timed out or aborted while queued: nobody wants the answer.
        return;
    }
    let on_answer = Arc::clone(&call);
    let reply_client = client.clone();
    let id = client.send_rpc_with(
        body,
        Box::new(move |result| {
            on_answer.complete(result.map(|body| Reply::Remote {
                body,
                client: reply_client,
            }));
        }),
        call.deadline().instant(),
        label,
        admission,
    );
    call.set_sent(client, id);
}

/// Sends `msg` on `client`.
pub(crate) fn send_on(
    client: &TransportClient,
    label: Option<Label>,
    msg: OutboxMessage,
    admission: Admission,
) -> Result<(), RpcError> {
    match msg {
        OutboxMessage::OneWay { body, receipt } => {
            client.send_one_way_with(body, label, admission, receipt)
        }
        OutboxMessage::Ask { body, call } => {
            send_rpc_on(client, label, body, call, admission);
            Ok(())
        }
    }
}

struct State {
    client: Option<TransportClient>,
    /// Messages waiting for the connect, each with its endpoint.
    queue: VecDeque<(Label, OutboxMessage)>,
    /// Bytes of the bodies in `queue`.
    queued_bytes: usize,
    connecting: bool,
    stopped: bool,
    /// The last connect failure, when it happened, and how long sends fail at once.
    failed: Option<(Instant, Duration, RpcError)>,
    /// Connects that failed in a row.
    failures: u32,
    /// Threads waiting for room in `queue`.
    waiters: usize,
}

/// The messages to one remote env, in order.
pub(crate) struct Outbox {
    address: RpcAddress,
    env: Weak<EnvInner>,
    /// `rpc.io.maxQueuedBytes`.
    limit: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Outbox {
    pub(crate) fn new(address: RpcAddress, env: Weak<EnvInner>, limit: usize) -> Self {
        Self {
            address,
            env,
            limit,
            state: Mutex::new(State {
                client: None,
                queue: VecDeque::new(),
                queued_bytes: 0,
                connecting: false,
                stopped: false,
                failed: None,
                failures: 0,
                waiters: 0,
            }),
            changed: Condvar::default(),
        }
    }

    /// Sends `msg` to the endpoint `label` now if connected, otherwise queues it (and
    /// starts connecting), waiting for room as `admission` says. A one-way message's
    /// failure known now is returned; an ask's goes to its call.
    pub(crate) fn send(
        self: &Arc<Self>,
        label: Label,
        msg: OutboxMessage,
        admission: Admission,
    ) -> Result<(), RpcError> {
        let mut state = self.state.lock();
        loop {
            if state.stopped {
                drop(state);
                return msg.fail(RpcError::EnvStopped);
            }
            if let Some(client) = &state.client {
                if client.is_active() {
                    let client = client.clone();
                    drop(state);
                    return send_on(&client, Some(label), msg, admission);
                }
                debug!("connection to {} closed; reconnecting", self.address);
                state.client = None;
            }
            if let Some((at, window, error)) = &state.failed {
                if at.elapsed() < *window {
                    let error = error.clone();
                    drop(state);
                    return msg.fail(error);
                }
                state.failed = None;
            }
            if state.queued_bytes < self.limit || matches!(admission, Admission::Force) {
                break;
            }
            let wait = match admission.wait_from(Instant::now()) {
                Ok(wait) => wait,
                Err(waited) => {
                    let error = RpcError::QueueFull {
                        queue: format!("queue of messages waiting to connect to {}", self.address),
                        queued: state.queued_bytes as u64,
                        limit: self.limit as u64,
                        key: keys::IO_MAX_QUEUED_BYTES,
                        waited,
                    };
                    drop(state);
                    return msg.fail(error);
                }
            };
            state.waiters += 1;
            state = self.changed.wait_timeout(state, wait);
            state.waiters -= 1;
        }
        state.queued_bytes += msg.len();
        state.queue.push_back((label, msg));
        if !state.connecting {
            state.connecting = true;
            drop(state);
            self.launch_connect();
        }
        Ok(())
    }

    fn launch_connect(self: &Arc<Self>) {
        let Some(env) = self.env.upgrade() else {
            self.connect_failed(RpcError::EnvStopped);
            return;
        };
        let outbox = Arc::clone(self);
        let job = Box::new(move || outbox.connect());
        if let Err(err) = env.connect_pool().execute(job) {
            self.connect_failed(err);
        }
    }

    /// Runs on a `rpc-connect-N` thread.
    fn connect(self: &Arc<Self>) {
        let Some(env) = self.env.upgrade() else {
            self.connect_failed(RpcError::EnvStopped);
            return;
        };
        let address = &self.address;
        match env
            .client_factory()
            .create_client(address.host(), address.port())
        {
            Ok(client) => {
                let _ = env.handler().announce(&env, &client, || address.clone());
                let mut state = self.state.lock();
                state.connecting = false;
                state.failures = 0;
                if state.stopped {
                    return;
                }
                // Written under the lock, before the client is published: the queue goes
                // out ahead of anything sent after. It was let in already: no waiting.
                for (label, msg) in std::mem::take(&mut state.queue) {
                    let _ = send_on(&client, Some(label), msg, Admission::Force);
                }
                state.queued_bytes = 0;
                state.client = Some(client);
                drop(state);
                self.changed.notify_all();
            }
            Err(err) => self.connect_failed(err),
        }
    }

    fn connect_failed(&self, error: RpcError) {
        let queued = {
            let mut state = self.state.lock();
            state.connecting = false;
            state.failures = state.failures.saturating_add(1);
            let window = FAIL_FAST
                .saturating_mul(1 << (state.failures - 1).min(16))
                .min(MAX_FAIL_FAST);
            state.failed = Some((Instant::now(), window, error.clone()));
            state.queued_bytes = 0;
            std::mem::take(&mut state.queue)
        };
        self.changed.notify_all();
        self.fail_all(queued, &error);
    }

    /// Fails everything queued with `EnvStopped`; later sends fail the same way.
    pub(crate) fn stop(&self) {
        let queued = {
            let mut state = self.state.lock();
            state.stopped = true;
            state.client = None;
            state.queued_bytes = 0;
            std::mem::take(&mut state.queue)
        };
        self.changed.notify_all();
        self.fail_all(queued, &RpcError::EnvStopped);
    }

    fn fail_all(&self, queued: VecDeque<(Label, OutboxMessage)>, error: &RpcError) {
        let mut lost = 0u64;
        for (_, msg) in queued {
            if msg.fail(error.clone()).is_err() {
                lost += 1;
            }
        }
        if lost > 0 {
            if let Some(env) = self.env.upgrade() {
                env.counters()
                    .one_way_dropped
                    .fetch_add(lost, Ordering::Relaxed);
            }
            warn!(
                "{lost} one-way message(s) to {} not sent: {error:#}",
                self.address
            );
        }
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Outbox")
            .field("address", &self.address)
            .field("connected", &state.client.is_some())
            .field("queued", &state.queue.len())
            .finish()
    }
}
