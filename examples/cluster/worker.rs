//! The [`Worker`] endpoint, which runs tasks on threads of its own, and a [`WorkerNode`]:
//! an env with a worker in it, registered with the master and sending heartbeats.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, info, warn};
use rpcenv::{
    EndpointContext, RpcAddress, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcError,
};

use super::{HeartbeatReply, MasterMsg, StopSignal, Ticker, WORKER, WorkerMsg, run_task};

/// How long one registration or heartbeat ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a worker that stops waits for the master to take note of its goodbye.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Calls the worker holds that must never be answered: after [`WorkerNode::crash`],
/// tasks that were running stay silent, as they would if the process had died.
type Graveyard = Arc<Mutex<Vec<RpcCallContext>>>;

/// The worker endpoint. Its handlers only queue tasks, so it runs on the shared
/// dispatcher pool; the tasks run on `cores` threads of its own (`worker-ID-task-N`),
/// which answer the asks when the tasks are done.
pub(crate) struct Worker {
    id: String,
    cores: u32,
    task_delay: Duration,
    tasks: Option<Sender<Job>>,
    executors: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    crashed: Arc<AtomicBool>,
    graveyard: Graveyard,
    /// The master's address and who to tell when the connection to it closes.
    master: Option<(RpcAddress, String, WorkerObserver)>,
}

struct Job {
    task_id: u64,
    input: u64,
    reply: RpcCallContext,
}

impl Worker {
    /// A worker that runs `cores` tasks at a time, each taking `task_delay` longer than
    /// its computation (a stand-in for real work).
    pub(crate) fn new(id: impl Into<String>, cores: u32, task_delay: Duration) -> Self {
        Self {
            id: id.into(),
            cores: cores.max(1),
            task_delay,
            tasks: None,
            executors: Vec::new(),
            stopping: Arc::default(),
            crashed: Arc::default(),
            graveyard: Arc::default(),
            master: None,
        }
    }

    /// Tells `observer` when the connection to the master (at `address`, named by `uri`)
    /// closes.
    fn watch_master(mut self, address: RpcAddress, uri: String, observer: WorkerObserver) -> Self {
        self.master = Some((address, uri, observer));
        self
    }

    fn execute(job: Job, delay: Duration, crashed: &AtomicBool, graveyard: &Graveyard) {
        let Job {
            task_id,
            input,
            reply,
        } = job;
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        let result = panic::catch_unwind(AssertUnwindSafe(|| run_task(input)));
        if crashed.load(Ordering::Acquire) {
            graveyard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(reply);
            return;
        }
        match result {
            Ok(value) => {
                debug!("task {task_id} done");
                reply.reply(value);
            }
            Err(_) => reply.send_failure(format!("task {task_id} panicked")),
        }
    }
}

impl RpcEndpoint for Worker {
    type Message = WorkerMsg;

    fn on_start(&mut self, _ctx: &EndpointContext<WorkerMsg>) {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for n in 0..self.cores {
            let rx = rx.clone();
            let (delay, stopping, crashed, graveyard) = (
                self.task_delay,
                Arc::clone(&self.stopping),
                Arc::clone(&self.crashed),
                Arc::clone(&self.graveyard),
            );
            let spawned = thread::Builder::new()
                .name(format!("worker-{}-task-{n}", self.id))
                .spawn(move || {
                    for job in rx {
                        if stopping.load(Ordering::Acquire) {
                            if crashed.load(Ordering::Acquire) {
                                graveyard
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(job.reply);
                            } else {
                                job.reply.send_failure("the worker is stopping");
                            }
                            continue;
                        }
                        Self::execute(job, delay, &crashed, &graveyard);
                    }
                });
            match spawned {
                Ok(handle) => self.executors.push(handle),
                Err(err) => warn!("worker {}: cannot start a task thread: {err:#}", self.id),
            }
        }
        if !self.executors.is_empty() {
            self.tasks = Some(tx);
        }
    }

    fn receive_and_reply(
        &mut self,
        msg: WorkerMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            WorkerMsg::RunTask { task_id, input } => match &self.tasks {
                Some(tasks) => {
                    if let Err(err) = tasks.send(Job {
                        task_id,
                        input,
                        reply,
                    }) {
                        err.into_inner()
                            .reply
                            .send_failure("the worker's task threads are gone");
                    }
                }
                None => reply.send_failure("the worker has no task threads"),
            },
            WorkerMsg::Ping => reply.reply(()),
        }
    }

    fn receive(&mut self, msg: WorkerMsg, _ctx: &EndpointContext<WorkerMsg>) {
        if let WorkerMsg::RunTask { task_id, .. } = msg {
            warn!("worker {}: RunTask {task_id} must be an ask", self.id);
        }
    }

    fn on_disconnected(&mut self, remote: &RpcAddress, _ctx: &EndpointContext<WorkerMsg>) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if let Some((address, uri, observer)) = &self.master {
            if address == remote {
                warn!("worker {}: the connection to the master closed", self.id);
                observer.tell(&WorkerEvent::MasterLost {
                    id: self.id.clone(),
                    master: uri.clone(),
                });
            }
        }
    }

    fn on_stop(&mut self, _ctx: &EndpointContext<WorkerMsg>) {
        self.stopping.store(true, Ordering::Release);
        self.tasks = None;
        // Each finishes the task it is running (at most one task's time).
        for handle in self.executors.drain(..) {
            let _ = handle.join();
        }
        info!("worker {} stopped", self.id);
    }
}

/// A change a [`WorkerNode`] sees, given to its observer (the `worker` example prints
/// them as `WORKER <event>` lines, which scripts parse).
#[derive(Debug, Clone)]
pub(crate) enum WorkerEvent {
    /// A heartbeat ask failed: one event per failed heartbeat (at most one per heartbeat
    /// interval). `error` is the ask's error, e.g. `connection to HOST:PORT …`.
    HeartbeatFailed { id: String, error: String },
    /// The master answered a heartbeat again, after `failed` failed ones.
    HeartbeatsResumed { id: String, failed: u64 },
    /// The master did not know the worker, which registered again; `error` if that
    /// failed (the next heartbeat tries again).
    Reregistered { id: String, error: Option<String> },
    /// The connection to the master closed (it stopped, or the network failed); the
    /// heartbeats go on and register again once a master answers.
    MasterLost { id: String, master: String },
}

impl fmt::Display for WorkerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `key=value` pairs; a free-text value comes last.
        match self {
            Self::HeartbeatFailed { id, error } => {
                write!(f, "heartbeat failed id={id} error={error:#}")
            }
            Self::HeartbeatsResumed { id, failed } => {
                write!(f, "heartbeats resumed id={id} failed={failed}")
            }
            Self::Reregistered { id, error: None } => write!(f, "registered again id={id}"),
            Self::Reregistered {
                id,
                error: Some(error),
            } => write!(f, "registering again failed id={id} error={error:#}"),
            Self::MasterLost { id, master } => write!(
                f,
                "master lost id={id} master={master} reason=the connection closed; heartbeats go on"
            ),
        }
    }
}

/// Receives each [`WorkerEvent`], on the worker's heartbeat thread: keep it quick.
#[derive(Clone)]
pub(crate) struct WorkerObserver(Arc<dyn Fn(&WorkerEvent) + Send + Sync>);

impl WorkerObserver {
    pub(crate) fn new(observe: impl Fn(&WorkerEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(observe))
    }

    /// An observer that ignores every event.
    pub(crate) fn none() -> Self {
        Self::new(|_| {})
    }

    fn tell(&self, event: &WorkerEvent) {
        (self.0)(event);
    }
}

impl fmt::Debug for WorkerObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerObserver")
    }
}

/// How to start a [`WorkerNode`].
#[derive(Debug, Clone)]
pub(crate) struct WorkerOptions {
    pub(crate) id: String,
    /// `rpc://Master@host:port`.
    pub(crate) master: String,
    /// No listener: the master reaches the worker over the connection the worker opens.
    pub(crate) client_mode: bool,
    /// Where to listen, unless in client mode.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) cores: u32,
    pub(crate) memory_mb: u64,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) task_delay: Duration,
    /// Give up registering after this long; `None`: keep trying.
    pub(crate) register_timeout: Option<Duration>,
    pub(crate) conf: RpcConf,
    /// Told about failed heartbeats and registrations again.
    pub(crate) observer: WorkerObserver,
    /// Ends the registration early (a node told to stop before it has a master).
    pub(crate) stop: StopSignal,
}

impl WorkerOptions {
    pub(crate) fn new(id: impl Into<String>, master: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            master: master.into(),
            client_mode: false,
            host: "127.0.0.1".into(),
            port: 0,
            cores: 2,
            memory_mb: 1024,
            heartbeat_interval: Duration::from_secs(1),
            task_delay: Duration::ZERO,
            register_timeout: None,
            conf: RpcConf::new(),
            observer: WorkerObserver::none(),
            stop: StopSignal::none(),
        }
    }
}

/// A worker's env, its [`Worker`] endpoint, its registration with the master and its
/// heartbeat thread (`worker-ID-heartbeat`). Dropping it shuts it down.
pub(crate) struct WorkerNode {
    id: String,
    env: RpcEnv,
    master: RpcEndpointRef<MasterMsg>,
    heartbeat: Option<Ticker>,
    crashed: Arc<AtomicBool>,
    graveyard: Graveyard,
}

impl WorkerNode {
    /// Checks the master's URI, starts the env and the worker, and registers with the
    /// master, retrying with backoff until the master is there (or `register_timeout`
    /// passes, or `opts.stop` fires). Fails at once when the master refuses the worker (a
    /// duplicate id).
    pub(crate) fn start(opts: WorkerOptions) -> Result<Self, StartError> {
        let master_address = master_address(&opts.master).map_err(StartError::Failed)?;
        let env = RpcEnv::builder(format!("worker-{}", opts.id))
            .client_mode(opts.client_mode)
            .bind_address(opts.host.clone())
            .port(opts.port)
            .conf(opts.conf.clone())
            .build()
            .map_err(|err| {
                StartError::Failed(format!("worker {}: cannot start its env: {err:#}", opts.id))
            })?;
        let worker = Worker::new(opts.id.clone(), opts.cores, opts.task_delay).watch_master(
            master_address,
            opts.master.clone(),
            opts.observer.clone(),
        );
        let (crashed, graveyard) = (Arc::clone(&worker.crashed), Arc::clone(&worker.graveyard));
        let me = env
            .setup_endpoint(WORKER, worker)
            .map_err(|err| StartError::Failed(format!("worker {}: {err:#}", opts.id)))?;
        let registration = Registration {
            id: opts.id.clone(),
            cores: opts.cores,
            memory_mb: opts.memory_mb,
            me,
        };
        let master = match register_with_retry(&env, &opts, &registration) {
            Ok(master) => master,
            Err(err) => {
                env.shutdown();
                env.await_termination();
                return Err(err);
            }
        };
        let heartbeat = Ticker::spawn(
            format!("worker-{}-heartbeat", opts.id),
            opts.heartbeat_interval,
            heartbeat(
                master.clone(),
                registration,
                opts.heartbeat_interval,
                opts.observer.clone(),
            ),
        )
        .map_err(|err| {
            StartError::Failed(format!(
                "worker {}: cannot start its heartbeat thread: {err:#}",
                opts.id
            ))
        })?;
        Ok(Self {
            id: opts.id,
            env,
            master,
            heartbeat: Some(heartbeat),
            crashed,
            graveyard,
        })
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The worker env's metrics now.
    pub(crate) fn metrics(&self) -> rpcenv::RpcMetrics {
        self.env.metrics()
    }

    /// The worker env's listen address; `None` in client mode.
    pub(crate) fn address(&self) -> Option<RpcAddress> {
        self.env.address()
    }

    /// Stops the heartbeats, says goodbye to the master (so it logs "worker left", not
    /// "worker lost") and shuts the env down: tasks running finish and are answered, the
    /// connections close.
    pub(crate) fn shutdown(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop();
            if !self.crashed.load(Ordering::Acquire) {
                let goodbye = MasterMsg::Goodbye {
                    id: self.id.clone(),
                };
                match self.master.ask_sync_timeout::<()>(goodbye, GOODBYE_TIMEOUT) {
                    Ok(()) => debug!("worker {}: the master took its goodbye", self.id),
                    Err(err) => debug!("worker {}: no goodbye to the master: {err:#}", self.id),
                }
            }
        }
        self.env.shutdown();
        self.env.await_termination();
    }

    /// Shuts the env down as if the process had died: the tasks it is running are never
    /// answered (their asks fail when the connections close), no goodbye is sent.
    pub(crate) fn crash(mut self) {
        self.crashed.store(true, Ordering::Release);
        self.shutdown();
        // The connections are closed: these contexts have no one left to answer.
        let silent = std::mem::take(&mut *self.graveyard.lock().unwrap_or_else(|p| p.into_inner()));
        debug!("worker {}: {} tasks died with it", self.id, silent.len());
        for reply in silent {
            reply.send_failure("the worker crashed");
        }
    }
}

impl Drop for WorkerNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a worker tells the master about itself.
struct Registration {
    id: String,
    cores: u32,
    memory_mb: u64,
    me: RpcEndpointRef<WorkerMsg>,
}

impl Registration {
    fn register(
        &self,
        master: &RpcEndpointRef<MasterMsg>,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        master.ask_sync_timeout::<()>(
            MasterMsg::RegisterWorker {
                worker: self.me.clone(),
                id: self.id.clone(),
                cores: self.cores,
                memory_mb: self.memory_mb,
            },
            timeout,
        )
    }
}

fn register_with_retry(
    env: &RpcEnv,
    opts: &WorkerOptions,
    registration: &Registration,
) -> Result<RpcEndpointRef<MasterMsg>, StartError> {
    let started = Instant::now();
    let deadline = opts.register_timeout.map(|limit| started + limit);
    let mut backoff = Duration::from_millis(100);
    for attempt in 1.. {
        // The last attempt's ask is clipped to the deadline.
        let ask_timeout = deadline.map_or(ASK_TIMEOUT, |deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), ASK_TIMEOUT)
        });
        let err = match env.setup_endpoint_ref_by_uri::<MasterMsg>(&opts.master) {
            Ok(master) => match registration.register(&master, ask_timeout) {
                Ok(()) => {
                    info!("worker {} registered with {}", opts.id, opts.master);
                    return Ok(master);
                }
                Err(RpcError::Remote { message }) => {
                    return Err(StartError::Failed(format!(
                        "the master refused worker {}: {message}",
                        opts.id
                    )));
                }
                Err(err) => err,
            },
            Err(err @ RpcError::InvalidAddress { .. }) => {
                return Err(StartError::Failed(err.to_string()));
            }
            Err(err) => err,
        };
        let mut pause = backoff;
        if let (Some(deadline), Some(limit)) = (deadline, opts.register_timeout) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StartError::Failed(format!(
                    "worker {} could not register with {} within {} ms: {attempt} attempts \
                     in {} ms; the last one: {err:#}",
                    opts.id,
                    opts.master,
                    limit.as_millis(),
                    started.elapsed().as_millis()
                )));
            }
            pause = pause.min(left);
        }
        // The library logged a connection failure already (once); the attempt is told
        // with its error for the other kinds only.
        if matches!(err, RpcError::Connection { .. }) {
            warn!(
                "worker {}: registration attempt {attempt} with {} failed (no connection); next in {} ms",
                opts.id,
                opts.master,
                pause.as_millis()
            );
        } else {
            warn!(
                "worker {}: registration attempt {attempt} with {} failed ({err:#}); next in {} ms",
                opts.id,
                opts.master,
                pause.as_millis()
            );
        }
        if let Some(why) = opts.stop.sleep(pause) {
            return Err(StartError::Stopped(why));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    unreachable!("the loop returns")
}

/// Why [`WorkerNode::start`] returned without a node.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The node was told to stop (`why`) before it registered.
    Stopped(&'static str),
    /// It cannot start or register.
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped(why) => write!(f, "stopped before it registered ({why})"),
            Self::Failed(message) => f.write_str(message),
        }
    }
}

impl From<StartError> for String {
    fn from(err: StartError) -> Self {
        err.to_string()
    }
}

/// The address in a master URI `rpc://NAME@HOST:PORT` (or `spark://`), checked before
/// the worker binds anything.
pub(crate) fn master_address(uri: &str) -> Result<RpcAddress, String> {
    let rest = uri
        .strip_prefix("rpc://")
        .or_else(|| uri.strip_prefix("spark://"))
        .ok_or_else(|| format!("'{uri}' is not an endpoint URI: expected rpc://NAME@HOST:PORT"))?;
    let (name, address) = rest
        .split_once('@')
        .ok_or_else(|| format!("'{uri}' has no endpoint name: expected rpc://NAME@HOST:PORT"))?;
    if name.is_empty() {
        return Err(format!("'{uri}' has an empty endpoint name"));
    }
    address
        .parse::<RpcAddress>()
        .map_err(|err| format!("'{uri}': {err:#}"))
}

/// The heartbeat thread's tick: one heartbeat ask; registers again when the master asks.
/// Failed heartbeats, heartbeats answered again and registrations again go to
/// `observer`.
fn heartbeat(
    master: RpcEndpointRef<MasterMsg>,
    registration: Registration,
    interval: Duration,
    observer: WorkerObserver,
) -> impl FnMut() -> bool + Send + 'static {
    // A heartbeat may take three intervals (at least 3 s): a master that vanished is
    // noticed by the connection first (keep-alive, rpc.io.tcpUserTimeout), and the
    // heartbeat then fails with a Connection error that says so, not with a timeout.
    let timeout = (interval * 3).max(Duration::from_secs(3));
    // Heartbeats failed in a row.
    let mut failed: u64 = 0;
    move || {
        let id = registration.id.clone();
        let reply = master.ask_sync_timeout::<HeartbeatReply>(MasterMsg::Heartbeat { id }, timeout);
        if reply.is_ok() && failed > 0 {
            info!(
                "worker {}: heartbeats reach the master again",
                registration.id
            );
            observer.tell(&WorkerEvent::HeartbeatsResumed {
                id: registration.id.clone(),
                failed: std::mem::take(&mut failed),
            });
        }
        match reply {
            Ok(HeartbeatReply::Ack) => {}
            Ok(HeartbeatReply::Reregister) => {
                info!(
                    "worker {}: the master does not know it; registering again",
                    registration.id
                );
                let error = match registration.register(&master, ASK_TIMEOUT) {
                    Ok(()) => {
                        info!("worker {} registered again", registration.id);
                        None
                    }
                    Err(err) => {
                        warn!(
                            "worker {}: registering again failed: {err:#}",
                            registration.id
                        );
                        Some(err.to_string())
                    }
                };
                observer.tell(&WorkerEvent::Reregistered {
                    id: registration.id.clone(),
                    error,
                });
            }
            Err(err) => {
                failed += 1;
                if failed == 1 {
                    warn!("worker {}: heartbeat failed: {err:#}", registration.id);
                }
                observer.tell(&WorkerEvent::HeartbeatFailed {
                    id: registration.id.clone(),
                    error: err.to_string(),
                });
            }
        }
        true
    }
}
