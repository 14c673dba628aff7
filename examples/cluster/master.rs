//! The [`Master`] endpoint: registers workers, tracks their heartbeats and connections,
//! hands submitted tasks to them and answers the drivers with the results.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, info, warn};
use rpcenv::{
    EndpointContext, Pending, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcError,
    Threading,
};

use super::{
    BoundPorts, ClusterStatus, HeartbeatReply, MAX_TASK_FAILURES, MasterMsg, TaskOutcome,
    TaskReport, Ticker, WorkerMsg, WorkerStatus,
};

/// The master's settings.
#[derive(Debug, Clone)]
pub(crate) struct MasterConf {
    /// A worker without a heartbeat for this long is lost.
    pub(crate) worker_timeout: Duration,
    /// The deadline of each `RunTask` ask; a worker that misses it is lost.
    pub(crate) task_timeout: Duration,
}

impl Default for MasterConf {
    fn default() -> Self {
        Self {
            worker_timeout: Duration::from_secs(10),
            task_timeout: Duration::from_secs(60),
        }
    }
}

/// A change of the master's state, given to the observer (the `master` example prints
/// them as `MASTER <event>` lines, which tests parse).
#[derive(Debug, Clone)]
pub(crate) enum MasterEvent {
    WorkerRegistered {
        id: String,
        /// The worker env's listen address, or `client-mode`.
        address: String,
        cores: u32,
        memory_mb: u64,
    },
    WorkerRefused {
        id: String,
        reason: String,
    },
    WorkerLost {
        id: String,
        reason: String,
        /// The tasks it was running, queued again.
        requeued: Vec<u64>,
    },
    /// A worker said goodbye: it stops cleanly.
    WorkerLeft {
        id: String,
        /// The tasks it was running, queued again.
        requeued: Vec<u64>,
    },
    /// A heartbeat from an id the master does not know; the worker is told to register
    /// again.
    UnknownHeartbeat {
        id: String,
    },
    TaskRequeued {
        task_id: u64,
        from: String,
    },
    TaskFailed {
        task_id: u64,
        worker: String,
        failures: u32,
        error: String,
    },
}

impl fmt::Display for MasterEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `key=value` pairs; a free-text value comes last.
        match self {
            Self::WorkerRegistered {
                id,
                address,
                cores,
                memory_mb,
            } => write!(
                f,
                "worker registered id={id} address={address} cores={cores} memory_mb={memory_mb}"
            ),
            Self::WorkerRefused { id, reason } => {
                write!(f, "worker refused id={id} reason={reason}")
            }
            Self::WorkerLost {
                id,
                reason,
                requeued,
            } => write!(
                f,
                "worker lost id={id} requeued={} reason={reason}",
                requeued.len()
            ),
            Self::WorkerLeft { id, requeued } => {
                write!(f, "worker left id={id} requeued={}", requeued.len())
            }
            Self::UnknownHeartbeat { id } => {
                write!(
                    f,
                    "worker unknown id={id} reason=heartbeat from an unregistered id; told to register again"
                )
            }
            Self::TaskRequeued { task_id, from } => {
                write!(f, "task requeued id={task_id} from={from}")
            }
            Self::TaskFailed {
                task_id,
                worker,
                failures,
                error,
            } => write!(
                f,
                "task failed id={task_id} worker={worker} failures={failures}/{MAX_TASK_FAILURES} error={error:#}"
            ),
        }
    }
}

/// Receives each [`MasterEvent`], on the master's thread: keep it quick.
pub(crate) type Observer = Box<dyn Fn(&MasterEvent) + Send>;

/// The master endpoint. It never blocks, but it runs on a thread of its own
/// ([`Threading::Dedicated`]) so that its scheduling does not wait behind other endpoints
/// of its env.
pub(crate) struct Master {
    conf: MasterConf,
    observer: Observer,
    self_ref: Option<RpcEndpointRef<MasterMsg>>,
    port: u16,
    workers: BTreeMap<String, WorkerEntry>,
    /// Submitted tasks without a result yet.
    tasks: HashMap<u64, TaskEntry>,
    /// Tasks to hand out, oldest (and re-queued) first. May hold ids that have finished
    /// since (skipped).
    queue: VecDeque<u64>,
    next_incarnation: u64,
    timer: Option<Ticker>,
    /// The collectors of lost workers, still waiting for their last asks.
    retired: Vec<JoinHandle<()>>,
}

struct WorkerEntry {
    worker: RpcEndpointRef<WorkerMsg>,
    /// Its env's listen address; `None` for a client-mode worker.
    address: Option<RpcAddress>,
    incarnation: u64,
    cores: u32,
    last_heartbeat: Instant,
    running: BTreeSet<u64>,
    completed: u64,
    collector: Collector,
}

struct TaskEntry {
    input: u64,
    attempts: u32,
    failures: u32,
    /// The worker (id, incarnation) running it.
    running_on: Option<(String, u64)>,
    reply: Option<RpcCallContext>,
}

impl Master {
    pub(crate) fn new(conf: MasterConf, observer: Observer) -> Self {
        Self {
            conf,
            observer,
            self_ref: None,
            port: 0,
            workers: BTreeMap::new(),
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            next_incarnation: 1,
            timer: None,
            retired: Vec::new(),
        }
    }

    fn emit(&self, event: MasterEvent) {
        (self.observer)(&event);
    }

    fn register(
        &mut self,
        worker: RpcEndpointRef<WorkerMsg>,
        id: String,
        cores: u32,
        memory_mb: u64,
        reply: RpcCallContext,
    ) {
        if self.workers.contains_key(&id) {
            let reason = format!("duplicate worker id {id}");
            warn!("refused a worker: {reason}");
            self.emit(MasterEvent::WorkerRefused {
                id,
                reason: reason.clone(),
            });
            reply.send_failure(reason);
            return;
        }
        if cores == 0 {
            reply.send_failure(format!("worker {id} offers 0 cores"));
            return;
        }
        let Some(master) = self.self_ref.clone() else {
            reply.send_failure("the master is not started");
            return;
        };
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let collector = match Collector::spawn(&id, incarnation, master) {
            Ok(collector) => collector,
            Err(err) => {
                reply.send_failure(format!("cannot start a thread for worker {id}: {err:#}"));
                return;
            }
        };
        let address = worker.address();
        let shown = address
            .as_ref()
            .map_or_else(|| "client-mode".to_owned(), ToString::to_string);
        info!("worker {id} registered: {shown}, {cores} cores, {memory_mb} MB");
        self.workers.insert(
            id.clone(),
            WorkerEntry {
                worker,
                address,
                incarnation,
                cores,
                last_heartbeat: Instant::now(),
                running: BTreeSet::new(),
                completed: 0,
                collector,
            },
        );
        self.emit(MasterEvent::WorkerRegistered {
            id,
            address: shown,
            cores,
            memory_mb,
        });
        reply.reply(());
        self.schedule();
    }

    fn heartbeat(&mut self, id: &str) -> HeartbeatReply {
        match self.workers.get_mut(id) {
            Some(worker) => {
                worker.last_heartbeat = Instant::now();
                HeartbeatReply::Ack
            }
            None => {
                info!("heartbeat from unknown worker {id}: telling it to register again");
                self.emit(MasterEvent::UnknownHeartbeat { id: id.to_owned() });
                HeartbeatReply::Reregister
            }
        }
    }

    fn submit(&mut self, task_id: u64, input: u64, reply: RpcCallContext) {
        if self.tasks.contains_key(&task_id) {
            reply.send_failure(format!("duplicate task id {task_id}"));
            return;
        }
        debug!("task {task_id} submitted (input {input})");
        self.tasks.insert(
            task_id,
            TaskEntry {
                input,
                attempts: 0,
                failures: 0,
                running_on: None,
                reply: Some(reply),
            },
        );
        self.queue.push_back(task_id);
        self.schedule();
    }

    /// Hands queued tasks to the workers with free cores, the least busy first.
    fn schedule(&mut self) {
        let mut unreachable = Vec::new();
        while let Some(&task_id) = self.queue.front() {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                self.queue.pop_front(); // finished since it was queued
                continue;
            };
            if task.running_on.is_some() {
                self.queue.pop_front();
                continue;
            }
            let free = |w: &WorkerEntry| w.cores as usize - w.running.len().min(w.cores as usize);
            let Some((id, worker)) = self
                .workers
                .iter_mut()
                .filter(|(_, w)| free(w) > 0)
                .max_by_key(|(_, w)| (free(w), std::cmp::Reverse(w.completed)))
            else {
                return; // every core is busy
            };
            self.queue.pop_front();
            task.attempts += 1;
            task.running_on = Some((id.clone(), worker.incarnation));
            worker.running.insert(task_id);
            debug!("task {task_id} to worker {id} (attempt {})", task.attempts);
            let pending = worker.worker.ask_timeout::<u64>(
                WorkerMsg::RunTask {
                    task_id,
                    input: task.input,
                },
                self.conf.task_timeout,
            );
            if !worker.collector.collect(task_id, pending) {
                unreachable.push(id.clone());
                break;
            }
        }
        for id in unreachable {
            self.lose(&id, "its collector thread is gone".into());
        }
    }

    fn task_result(
        &mut self,
        worker_id: &str,
        incarnation: u64,
        task_id: u64,
        outcome: TaskOutcome,
    ) {
        let Some(worker) = self
            .workers
            .get_mut(worker_id)
            .filter(|w| w.incarnation == incarnation)
        else {
            // Its tasks were queued again when it was declared lost: what it says now
            // does not count, even a result that was on its way.
            debug!("task {task_id}: an answer from lost worker {worker_id} ignored");
            return;
        };
        if let TaskOutcome::Unreachable(error) = outcome {
            // The worker's running tasks, this one included, go back to the queue.
            self.lose(worker_id, format!("RunTask {task_id} failed: {error:#}"));
            return;
        }
        worker.running.remove(&task_id);
        match outcome {
            TaskOutcome::Done(result) => match self.tasks.remove(&task_id) {
                Some(mut task) => {
                    debug!("task {task_id} done by worker {worker_id}");
                    worker.completed += 1;
                    if let Some(reply) = task.reply.take() {
                        reply.reply(TaskReport {
                            task_id,
                            result,
                            worker: worker_id.to_owned(),
                            attempts: task.attempts,
                        });
                    }
                }
                None => debug!("late result of task {task_id} from worker {worker_id} ignored"),
            },
            TaskOutcome::Failed(error) => {
                let Some(task) = self.tasks.get_mut(&task_id) else {
                    return;
                };
                if task.running_on != Some((worker_id.to_owned(), incarnation)) {
                    return;
                }
                task.running_on = None;
                task.failures += 1;
                let failures = task.failures;
                warn!(
                    "task {task_id} failed on worker {worker_id} ({failures}/{MAX_TASK_FAILURES}): {error:#}"
                );
                self.emit(MasterEvent::TaskFailed {
                    task_id,
                    worker: worker_id.to_owned(),
                    failures,
                    error: error.clone(),
                });
                if failures >= MAX_TASK_FAILURES {
                    if let Some(mut task) = self.tasks.remove(&task_id) {
                        if let Some(reply) = task.reply.take() {
                            reply.send_failure(format!(
                                "task {task_id} failed {failures} times; the last error: {error:#}"
                            ));
                        }
                    }
                } else {
                    self.queue.push_front(task_id);
                }
            }
            TaskOutcome::Unreachable(_) => unreachable!("handled above"),
        }
        self.schedule();
    }

    /// Forgets worker `id` and queues its running tasks again, first in line.
    fn lose(&mut self, id: &str, reason: String) {
        self.forget(id, Some(reason));
    }

    /// Forgets worker `id` and queues its running tasks again, first in line: it was lost
    /// for `reason`, or (`None`) it said goodbye.
    fn forget(&mut self, id: &str, reason: Option<String>) {
        let Some(worker) = self.workers.remove(id) else {
            return;
        };
        let mut requeued = Vec::new();
        for &task_id in worker.running.iter().rev() {
            let Some(task) = self.tasks.get_mut(&task_id) else {
                continue;
            };
            if task.running_on.as_ref() == Some(&(id.to_owned(), worker.incarnation)) {
                task.running_on = None;
                self.queue.push_front(task_id);
                requeued.push(task_id);
            }
        }
        requeued.reverse();
        if let Some(handle) = worker.collector.retire() {
            self.retired.push(handle);
        }
        match reason {
            Some(reason) => {
                warn!(
                    "worker {id} lost: {reason}; {} of its tasks will run elsewhere",
                    requeued.len()
                );
                self.emit(MasterEvent::WorkerLost {
                    id: id.to_owned(),
                    reason,
                    requeued: requeued.clone(),
                });
            }
            None => {
                info!(
                    "worker {id} left; {} of its tasks will run elsewhere",
                    requeued.len()
                );
                self.emit(MasterEvent::WorkerLeft {
                    id: id.to_owned(),
                    requeued: requeued.clone(),
                });
            }
        }
        for task_id in requeued {
            info!("task {task_id} queued again (worker {id} gone)");
            self.emit(MasterEvent::TaskRequeued {
                task_id,
                from: id.to_owned(),
            });
        }
        self.schedule();
    }

    fn check_workers(&mut self) {
        let now = Instant::now();
        let timeout = self.conf.worker_timeout;
        let silent: Vec<(String, Duration)> = self
            .workers
            .iter()
            .map(|(id, w)| (id.clone(), now.duration_since(w.last_heartbeat)))
            .filter(|(_, quiet)| *quiet > timeout)
            .collect();
        for (id, quiet) in silent {
            self.lose(
                &id,
                format!(
                    "no heartbeat for {} ms (worker timeout {} ms)",
                    quiet.as_millis(),
                    timeout.as_millis()
                ),
            );
        }
        self.retired.retain(|handle| !handle.is_finished());
    }

    fn status(&self) -> ClusterStatus {
        ClusterStatus {
            workers: self
                .workers
                .iter()
                .map(|(id, w)| WorkerStatus {
                    id: id.clone(),
                    address: w
                        .address
                        .as_ref()
                        .map_or_else(|| "client-mode".to_owned(), ToString::to_string),
                    cores: w.cores,
                    running: w.running.len(),
                    completed: w.completed,
                })
                .collect(),
            queued: self
                .tasks
                .values()
                .filter(|t| t.running_on.is_none())
                .count(),
            running: self
                .tasks
                .values()
                .filter(|t| t.running_on.is_some())
                .count(),
            metrics: Vec::new(),
        }
    }
}

impl RpcEndpoint for Master {
    type Message = MasterMsg;

    fn on_start(&mut self, ctx: &EndpointContext<MasterMsg>) {
        self.port = ctx.env().address().map_or(0, |a| a.port());
        let me = ctx.self_ref();
        self.self_ref = Some(me.clone());
        let every =
            (self.conf.worker_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        match Ticker::spawn("master-timer", every, move || {
            me.send(MasterMsg::CheckWorkers).is_ok()
        }) {
            Ok(timer) => self.timer = Some(timer),
            Err(err) => warn!("no master-timer thread, so no heartbeat checks: {err:#}"),
        }
        info!(
            "master started (worker timeout {} ms)",
            self.conf.worker_timeout.as_millis()
        );
    }

    fn receive_and_reply(
        &mut self,
        msg: MasterMsg,
        reply: RpcCallContext,
        ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            MasterMsg::RegisterWorker {
                worker,
                id,
                cores,
                memory_mb,
            } => self.register(worker, id, cores, memory_mb, reply),
            MasterMsg::Heartbeat { id } => reply.reply(self.heartbeat(&id)),
            MasterMsg::Goodbye { id } => {
                self.forget(&id, None);
                reply.reply(());
            }
            MasterMsg::BoundPortsRequest => reply.reply(BoundPorts {
                rpc_port: self.port,
            }),
            MasterMsg::SubmitTask { task_id, input } => self.submit(task_id, input, reply),
            MasterMsg::Status => {
                let mut status = self.status();
                status.metrics = super::metrics_lines(&ctx.env().metrics());
                reply.reply(status);
            }
            MasterMsg::TaskResult { .. } | MasterMsg::CheckWorkers => {
                reply.send_failure("the master sends this message to itself; it is not an ask")
            }
        }
    }

    fn receive(&mut self, msg: MasterMsg, ctx: &EndpointContext<MasterMsg>) {
        match msg {
            MasterMsg::Heartbeat { id } => {
                self.heartbeat(&id);
            }
            MasterMsg::TaskResult {
                worker_id,
                incarnation,
                task_id,
                outcome,
            } => self.task_result(&worker_id, incarnation, task_id, outcome),
            MasterMsg::CheckWorkers => self.check_workers(),
            other => warn!(
                "one-way {other:?} from {} ignored: it is an ask",
                ctx.sender_address()
                    .map_or_else(|| "a client-mode env".to_owned(), |a| a.to_string())
            ),
        }
    }

    fn on_disconnected(&mut self, remote: &RpcAddress, _ctx: &EndpointContext<MasterMsg>) {
        let gone: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.address.as_ref() == Some(remote))
            .map(|(id, _)| id.clone())
            .collect();
        if !gone.is_empty() {
            for id in gone {
                self.lose(&id, format!("the connection to {remote} closed"));
            }
            return;
        }
        // A client-mode worker is announced by its socket address, which its registration
        // does not name: test the connection of each client-mode worker. A send through a
        // reference bound to a closed connection fails at once.
        let closed: Vec<(String, RpcError)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.address.is_none())
            .filter_map(|(id, w)| {
                w.worker
                    .send(WorkerMsg::Ping)
                    .err()
                    .map(|e| (id.clone(), e))
            })
            .collect();
        for (id, err) in closed {
            self.lose(
                &id,
                format!("its connection closed (a disconnect from {remote}; {err:#})"),
            );
        }
    }

    fn on_stop(&mut self, _ctx: &EndpointContext<MasterMsg>) {
        if let Some(timer) = self.timer.take() {
            timer.stop();
        }
        for task in self.tasks.values_mut() {
            if let Some(reply) = task.reply.take() {
                reply.send_failure("the master stopped");
            }
        }
        let mut collectors = std::mem::take(&mut self.retired);
        for (_, worker) in std::mem::take(&mut self.workers) {
            collectors.extend(worker.collector.retire());
        }
        // Their asks failed with EnvStopped when the env began its shutdown.
        join_within(collectors, Duration::from_secs(2));
        info!("master stopped");
    }

    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
}

/// Waits for one worker's `RunTask` answers, in the order they were asked, and sends
/// each outcome to the master as a [`MasterMsg::TaskResult`]: the master itself never
/// waits.
struct Collector {
    tx: Option<Sender<(u64, Pending<u64>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn spawn(
        worker_id: &str,
        incarnation: u64,
        master: RpcEndpointRef<MasterMsg>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, Pending<u64>)>();
        let id = worker_id.to_owned();
        let thread = thread::Builder::new()
            .name(format!("master-collect-{worker_id}"))
            .spawn(move || {
                for (task_id, pending) in rx {
                    let outcome = match pending.wait() {
                        Ok(result) => TaskOutcome::Done(result),
                        Err(RpcError::Remote { message }) => TaskOutcome::Failed(message),
                        Err(err) => TaskOutcome::Unreachable(err.to_string()),
                    };
                    let msg = MasterMsg::TaskResult {
                        worker_id: id.clone(),
                        incarnation,
                        task_id,
                        outcome,
                    };
                    if master.send(msg).is_err() {
                        break; // the master stopped; the asks left are abandoned
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues an ask's answer for the master; false if the thread is gone.
    fn collect(&self, task_id: u64, pending: Pending<u64>) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.send((task_id, pending)).is_ok())
    }

    /// Takes no more asks; the thread ends after the last one it has.
    fn retire(mut self) -> Option<JoinHandle<()>> {
        self.tx = None;
        self.thread.take()
    }
}

/// Joins the threads that end within `within`; logs the others and leaves them.
fn join_within(handles: Vec<JoinHandle<()>>, within: Duration) {
    let deadline = Instant::now() + within;
    let mut left = handles;
    while !left.is_empty() && Instant::now() < deadline {
        let (done, busy): (Vec<_>, Vec<_>) = left.into_iter().partition(JoinHandle::is_finished);
        for handle in done {
            let _ = handle.join();
        }
        left = busy;
        if !left.is_empty() {
            thread::sleep(Duration::from_millis(5));
        }
    }
    for handle in left {
        warn!(
            "thread {} still busy after {} ms; left behind",
            handle.thread().name().unwrap_or("?"),
            within.as_millis()
        );
    }
}
