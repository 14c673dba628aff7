//! [`Outbox`]: the queue of messages to one remote env, and [`ConnectPool`], the
//! `rpc-connect-N` threads that open its connection.
//!
//! `send` and `ask` never wait for the network. The first message to a peer queues and
//! starts a connect on the pool; once connected, the queue goes out in order and later
//! messages are written straight to the connection. When the connect fails, every queued
//! ask fails at once with the `Connection` error and queued one-way messages are logged
//! as lost; for [`FAIL_FAST`] after that, messages to the peer fail at once with the same
//! error instead of connecting again. A connection that closes is replaced by the next
//! message.

use std::collections::VecDeque;
use std::fmt;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, warn};

use crate::error::RpcError;
use crate::rpc::address::RpcAddress;
use crate::rpc::call::{Call, Reply};
use crate::rpc::env::EnvInner;
use crate::rpc::message_loop::join_until;
use crate::sync::{Arc, Mutex, Weak};
use crate::transport::TransportClient;

/// How long after a failed connect messages to that peer fail at once.
pub(crate) const FAIL_FAST: Duration = Duration::from_millis(500);

/// How long an idle `rpc-connect-N` thread waits for work before it exits.
pub(crate) const CONNECT_IDLE: Duration = Duration::from_secs(60);

/// A message waiting for (or written to) a connection.
pub(crate) enum OutboxMessage {
    OneWay(Vec<u8>),
    Ask { body: Vec<u8>, call: Arc<Call> },
}

/// Sends an ask's request on `client`; its outcome completes `call`.
pub(crate) fn send_rpc_on(client: &TransportClient, body: Vec<u8>, call: Arc<Call>) {
    if call.is_done() {
        // Timed out or aborted while queued: nobody wants the answer.
        return;
    }
    let on_answer = Arc::clone(&call);
    let reply_client = client.clone();
    let id = client.send_rpc(body, move |result| {
        on_answer.complete(result.map(|body| Reply::Remote {
            body,
            client: reply_client,
        }));
    });
    call.set_sent(client, id);
}

struct State {
    client: Option<TransportClient>,
    queue: VecDeque<OutboxMessage>,
    connecting: bool,
    stopped: bool,
    /// The last connect failure and when it happened.
    failed: Option<(Instant, RpcError)>,
}

/// The messages to one remote env, in order.
pub(crate) struct Outbox {
    address: RpcAddress,
    env: Weak<EnvInner>,
    state: Mutex<State>,
}

impl Outbox {
    pub(crate) fn new(address: RpcAddress, env: Weak<EnvInner>) -> Self {
        Self {
            address,
            env,
            state: Mutex::new(State {
                client: None,
                queue: VecDeque::new(),
                connecting: false,
                stopped: false,
                failed: None,
            }),
        }
    }

    /// Sends `msg` now if connected, otherwise queues it (and starts connecting).
    /// Errors are returned for one-way messages known to fail now; an ask's failure goes
    /// to its call.
    pub(crate) fn send(self: &Arc<Self>, msg: OutboxMessage) -> Result<(), RpcError> {
        let mut state = self.state.lock();
        if state.stopped {
            drop(state);
            return fail(msg, RpcError::EnvStopped);
        }
        if let Some(client) = &state.client {
            if client.is_active() {
                // Written under the lock: messages leave in the order they were sent.
                return write(client, msg);
            }
            debug!("connection to {} closed; reconnecting", self.address);
            state.client = None;
        }
        if let Some((at, error)) = &state.failed {
            if at.elapsed() < FAIL_FAST {
                let error = error.clone();
                drop(state);
                return fail(msg, error);
            }
            state.failed = None;
        }
        state.queue.push_back(msg);
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
                env.handler().announce(&env, &client, || address.clone());
                let mut state = self.state.lock();
                state.connecting = false;
                if state.stopped {
                    return;
                }
                for msg in std::mem::take(&mut state.queue) {
                    if let Err(err) = write(&client, msg) {
                        warn!("one-way message to {address} lost: {err}");
                    }
                }
                state.client = Some(client);
            }
            Err(err) => self.connect_failed(err),
        }
    }

    fn connect_failed(&self, error: RpcError) {
        let queued = {
            let mut state = self.state.lock();
            state.connecting = false;
            state.failed = Some((Instant::now(), error.clone()));
            std::mem::take(&mut state.queue)
        };
        fail_all(queued, &error, &self.address);
    }

    /// Fails everything queued with `EnvStopped`; later sends fail the same way.
    pub(crate) fn stop(&self) {
        let queued = {
            let mut state = self.state.lock();
            state.stopped = true;
            state.client = None;
            std::mem::take(&mut state.queue)
        };
        fail_all(queued, &RpcError::EnvStopped, &self.address);
    }
}

fn write(client: &TransportClient, msg: OutboxMessage) -> Result<(), RpcError> {
    match msg {
        OutboxMessage::OneWay(body) => client.send(body),
        OutboxMessage::Ask { body, call } => {
            send_rpc_on(client, body, call);
            Ok(())
        }
    }
}

fn fail(msg: OutboxMessage, error: RpcError) -> Result<(), RpcError> {
    if let OutboxMessage::Ask { call, .. } = msg {
        call.complete(Err(error));
        return Ok(());
    }
    Err(error)
}

fn fail_all(queued: VecDeque<OutboxMessage>, error: &RpcError, address: &RpcAddress) {
    let mut lost = 0usize;
    for msg in queued {
        match msg {
            OutboxMessage::Ask { call, .. } => {
                call.complete(Err(error.clone()));
            }
            OutboxMessage::OneWay(_) => lost += 1,
        }
    }
    if lost > 0 {
        warn!("{lost} one-way message(s) to {address} lost: {error}");
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

type Job = Box<dyn FnOnce() + Send>;

/// A cached pool of `rpc-connect-N` threads: a thread is started when a job finds none
/// idle (up to `rpc.connect.threads`), and an idle thread exits after [`CONNECT_IDLE`].
pub(crate) struct ConnectPool {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    state: Arc<Mutex<PoolState>>,
    max: usize,
    idle_limit: Duration,
}

#[derive(Default)]
struct PoolState {
    threads: Vec<JoinHandle<()>>,
    /// Threads alive.
    alive: usize,
    /// Threads waiting for a job.
    idle: usize,
    /// Jobs sent and not yet taken.
    queued: usize,
    next_index: usize,
}

impl ConnectPool {
    pub(crate) fn new(max: usize, idle_limit: Duration) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            tx: Mutex::new(Some(tx)),
            rx,
            state: Arc::new(Mutex::new(PoolState::default())),
            max,
            idle_limit,
        }
    }

    /// Runs `job` on a pool thread.
    pub(crate) fn execute(&self, job: Job) -> Result<(), RpcError> {
        let tx = self.tx.lock();
        let Some(tx) = tx.as_ref() else {
            return Err(RpcError::EnvStopped);
        };
        let mut state = self.state.lock();
        state.queued += 1;
        if state.queued > state.idle && state.alive < self.max {
            let index = state.next_index;
            let rx = self.rx.clone();
            let shared = Arc::clone(&self.state);
            let idle_limit = self.idle_limit;
            let thread = thread::Builder::new()
                .name(format!("rpc-connect-{index}"))
                .spawn(move || worker(&rx, &shared, idle_limit));
            match thread {
                Ok(thread) => {
                    state.next_index += 1;
                    state.alive += 1;
                    state.threads.retain(|t| !t.is_finished());
                    state.threads.push(thread);
                }
                Err(err) if state.alive == 0 => {
                    state.queued -= 1;
                    return Err(RpcError::io("cannot start an rpc-connect thread", err));
                }
                // Another thread will take the job.
                Err(err) => warn!("cannot start another rpc-connect thread: {err}"),
            }
        }
        // Sent under the state lock, so an idle thread deciding to exit sees it queued.
        tx.send(job).map_err(|_| RpcError::EnvStopped)
    }

    /// How many pool threads are alive.
    pub(crate) fn threads(&self) -> usize {
        self.state.lock().alive
    }

    /// Lets the threads exit and joins them until `deadline` (a thread stuck in a connect
    /// is left to finish on its own).
    pub(crate) fn stop(&self, deadline: Instant) {
        self.tx.lock().take();
        let threads = std::mem::take(&mut self.state.lock().threads);
        join_until(threads, deadline, "the connect pool");
    }
}

fn worker(rx: &Receiver<Job>, state: &Mutex<PoolState>, idle_limit: Duration) {
    loop {
        state.lock().idle += 1;
        match rx.recv_timeout(idle_limit) {
            Ok(job) => {
                {
                    let mut state = state.lock();
                    state.idle -= 1;
                    state.queued -= 1;
                }
                job();
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut state = state.lock();
                state.idle -= 1;
                if state.queued > 0 {
                    continue;
                }
                state.alive -= 1;
                debug!("idle rpc-connect thread exits");
                return;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let mut state = state.lock();
                state.idle -= 1;
                state.alive -= 1;
                return;
            }
        }
    }
}

impl fmt::Debug for ConnectPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectPool")
            .field("threads", &self.threads())
            .field("max", &self.max)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn connect_pool_runs_jobs_grows_to_its_ceiling_and_idle_threads_exit() {
        let pool = ConnectPool::new(3, Duration::from_millis(100));
        let (tx, rx) = crossbeam_channel::unbounded();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        for _ in 0..5 {
            let tx = tx.clone();
            let release_rx = release_rx.clone();
            pool.execute(Box::new(move || {
                tx.send(thread::current().name().map(str::to_owned))
                    .unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
            }))
            .unwrap();
        }
        // Three run at once (the ceiling); the other two wait for a free thread.
        for _ in 0..3 {
            let name = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            assert!(name.starts_with("rpc-connect-"), "{name}");
        }
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        assert_eq!(pool.threads(), 3);
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // Idle threads exit after the idle limit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.threads() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.threads(), 0);
        // A new job after that starts a thread again.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        pool.execute(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ran.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        pool.stop(Instant::now() + Duration::from_secs(5));
        assert!(pool.execute(Box::new(|| {})).is_err());
    }
}
