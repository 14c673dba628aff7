//! The small cluster the examples run: its protocol, the [`Master`] and [`Worker`]
//! endpoints, a worker node with its registration and heartbeats, and a flag parser.
//!
//! Shared by `master.rs`, `worker.rs` and `demo.rs` through
//! `#[path = "cluster/mod.rs"] mod cluster;`.
//!
//! ```text
//! driver ──SubmitTask (ask)──▶ Master ──RunTask (ask)──▶ Worker
//!        ◀──TaskReport────────        ◀──result───────
//!                              Master ◀──RegisterWorker / Heartbeat (asks)── worker node
//! ```
//!
//! The master loses a worker when the connection to it closes (`on_disconnected`), when
//! an ask to it fails for a reason other than the task itself (the connection is gone,
//! the worker stopped), or when its heartbeats stop for the worker timeout. The tasks it
//! was running go back to the front of the queue and run on another worker.

// Each example uses part of this module.
#![allow(dead_code, unused_imports)]
// Examples use std's Arc and Mutex directly.
#![allow(clippy::disallowed_types)]

pub(crate) mod flags;
mod master;
mod worker;

use std::fmt;
use std::io::BufRead;
use std::time::Duration;

use rpcenv::{RpcConf, RpcEndpointRef};
use serde::{Deserialize, Serialize};

pub(crate) use self::master::{Master, MasterConf, MasterEvent};
pub(crate) use self::worker::{
    StartError, Worker, WorkerEvent, WorkerNode, WorkerObserver, WorkerOptions, master_address,
};

/// The name the master endpoint is registered under.
pub(crate) const MASTER: &str = "Master";
/// The name the worker endpoint is registered under, in each worker's env.
pub(crate) const WORKER: &str = "Worker";

/// What the master receives.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum MasterMsg {
    /// Ask from a worker node: add me. Replied `()`, or failed with "duplicate worker id
    /// ID" when a worker of that id is registered.
    RegisterWorker {
        worker: RpcEndpointRef<WorkerMsg>,
        id: String,
        cores: u32,
        memory_mb: u64,
    },
    /// From a worker node's heartbeat thread, every heartbeat interval. As an ask it is
    /// replied a [`HeartbeatReply`]; as a one-way message it only counts.
    Heartbeat { id: String },
    /// Ask from a worker node that stops cleanly: forget me (the master logs "worker
    /// left", queues its tasks again, and replies `()`).
    Goodbye { id: String },
    /// Ask: the ports the master bound; replied a [`BoundPorts`].
    BoundPortsRequest,
    /// Ask from a driver: run this task. Replied a [`TaskReport`] once some worker ran it
    /// (on another worker if the first one is lost), or failed after
    /// [`MAX_TASK_FAILURES`] failures of the task itself. Task ids are the driver's.
    SubmitTask { task_id: u64, input: u64 },
    /// Ask: the workers and the queue; replied a [`ClusterStatus`].
    Status,
    /// The master's own: the outcome of a `RunTask` ask (sent by the thread that waits
    /// for a worker's answers).
    TaskResult {
        worker_id: String,
        /// Which registration of that id (an id can register again after it was lost).
        incarnation: u64,
        task_id: u64,
        outcome: TaskOutcome,
    },
    /// The master's own: the timer's tick, to look for workers whose heartbeats stopped.
    CheckWorkers,
}

/// What a worker's endpoint receives.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WorkerMsg {
    /// Ask: run [`run_task`] on `input`; replied the `u64` result.
    RunTask { task_id: u64, input: u64 },
    /// Ask: replied `()`. One-way: ignored (the master sends it to test a connection).
    Ping,
}

/// The outcome of one `RunTask` ask, as the master sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskOutcome {
    /// The worker ran the task.
    Done(u64),
    /// The task failed on the worker (it answered with a failure): counts against the
    /// task.
    Failed(String),
    /// The worker did not answer (connection closed, worker stopped, timeout): the worker
    /// is lost and the task runs elsewhere, without counting against it.
    Unreachable(String),
}

/// The reply to [`MasterMsg::Heartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HeartbeatReply {
    /// Known; carry on.
    Ack,
    /// The master does not know this id (it was declared lost, or the master restarted):
    /// register again.
    Reregister,
}

/// The reply to [`MasterMsg::BoundPortsRequest`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct BoundPorts {
    /// The port of the master's rpc env.
    pub(crate) rpc_port: u16,
}

/// The reply to [`MasterMsg::SubmitTask`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskReport {
    pub(crate) task_id: u64,
    pub(crate) result: u64,
    /// The worker whose result this is.
    pub(crate) worker: String,
    /// How many times the task was handed to a worker (2 or more: it was re-run).
    pub(crate) attempts: u32,
}

/// The reply to [`MasterMsg::Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterStatus {
    pub(crate) workers: Vec<WorkerStatus>,
    /// Submitted tasks not handed to any worker yet.
    pub(crate) queued: usize,
    /// Tasks handed to a worker, without a result yet.
    pub(crate) running: usize,
    /// The master env's metrics, as [`metrics_lines`] (empty where the master does not
    /// fill them in).
    pub(crate) metrics: Vec<String>,
}

impl ClusterStatus {
    /// `status workers=N jobs_queued=Q running=R`, one `worker id=…` line per worker, then the
    /// metrics lines.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "status workers={} jobs_queued={} running={}",
            self.workers.len(),
            self.queued,
            self.running
        )];
        for w in &self.workers {
            lines.push(format!(
                "worker id={} address={} cores={} running={} completed={}",
                w.id, w.address, w.cores, w.running, w.completed
            ));
        }
        lines.extend(self.metrics.iter().cloned());
        lines
    }
}

/// One worker in a [`ClusterStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerStatus {
    pub(crate) id: String,
    /// Its listen address, or `client-mode`.
    pub(crate) address: String,
    pub(crate) cores: u32,
    pub(crate) running: usize,
    pub(crate) completed: u64,
}

/// A task fails for good after this many failures of its own (a lost worker does not
/// count).
pub(crate) const MAX_TASK_FAILURES: u32 = 4;

/// The work of a task: deterministic, so a driver can check any worker's answer. It sums
/// a 64-bit mix of every number below `input` (wrapping).
pub(crate) fn run_task(input: u64) -> u64 {
    (0..input).fold(0u64, |sum, i| sum.wrapping_add(mix(i)))
}

/// SplitMix64's finalizer.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) use self::flags::{CONF_HELP, SECRET_HELP};

/// `base` with `--secret-file` and then every `--conf KEY=VALUE` flag applied, in order (a
/// later one wins, so `--conf rpc.io.encryption.enabled=false` keeps the authentication
/// and drops the encryption). A flag that is not `KEY=VALUE`, or a key, value or secret
/// file the library rejects, ends the program with `fail` (a usage error, exit status 2).
pub(crate) fn rpc_conf(args: &flags::RpcFlags, base: RpcConf, fail: fn(&str) -> !) -> RpcConf {
    let mut conf = base;
    let secret_file = args.secret_file.as_deref();
    if let Some(path) = secret_file {
        conf = conf
            .set("rpc.authenticate", "true")
            .set("rpc.authenticate.secret.file", path)
            .set("rpc.io.encryption.enabled", "true");
    }
    let items = &args.conf;
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            fail(&format!("--conf takes KEY=VALUE, not '{item}'"));
        };
        conf.insert(key.trim(), value.trim());
    }
    // Checked once all are in: some keys only make sense together (a secret with
    // rpc.authenticate). The error names its key; the flag that set it is named too.
    if let Err(err) = conf.validate() {
        let key = match &err {
            rpcenv::RpcError::Config { key, .. } => key.as_str(),
            _ => "",
        };
        let flag = items
            .iter()
            .rev()
            .find(|item| item.split_once('=').is_some_and(|(k, _)| k.trim() == key))
            .map(|item| format!("--conf {item}"))
            .or_else(|| secret_file.map(|path| format!("--secret-file {path}")))
            .unwrap_or_else(|| "--conf".to_owned());
        fail(&format!("{flag}: {err:#}"));
    }
    conf
}

/// An env's metrics as text lines, for people and scripts: `metrics <status line>` (see
/// [`rpcenv::RpcMetrics::status_line`]), then one `endpoint name=…` line per endpoint
/// (inbox depth and high-water mark, messages handled, handler time p50/p99 as bucket
/// bounds, panics, asks answered/failed/dropped).
pub(crate) fn metrics_lines(metrics: &rpcenv::RpcMetrics) -> Vec<String> {
    let mut lines = vec![format!(
        "metrics env={} {}",
        metrics.env.name,
        metrics.status_line()
    )];
    for e in &metrics.endpoints {
        let time = |p: f64| {
            e.handler_time.percentile(p).map_or_else(
                || "-".to_owned(),
                |d| format!("<{}", Millis(d)).replace(' ', ""),
            )
        };
        lines.push(format!(
            "endpoint name={} kind={} inbox={} inbox_max={} handled={} p50={} p99={} panics={} \
             asks_answered={} asks_failed={} asks_dropped={}",
            e.name,
            e.kind,
            e.inbox_depth,
            e.inbox_high_water,
            e.messages_handled,
            time(50.0),
            time(99.0),
            e.panics,
            e.asks_answered,
            e.asks_failed,
            e.asks_dropped
        ));
    }
    lines
}

/// Sets up `env_logger`: `RUST_LOG` when it is set, else `info`.
pub(crate) fn init_logger() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

/// The ways a node is told to stop: Ctrl-C (SIGINT), SIGTERM, SIGHUP, or a line `quit`
/// (or `exit`) on stdin; the node then shuts its env down cleanly. Installed first thing
/// in `main`, so that a signal that comes while the node starts is kept for
/// [`wait`](Self::wait) instead of killing the process. On end of input (stdin closed or
/// `/dev/null`) only the signals end the wait; the stdin reader is a detached thread that
/// may stay blocked in `read` until the process exits.
pub(crate) struct Quit {
    rx: crossbeam_channel::Receiver<&'static str>,
    /// A line `status` on stdin.
    status: crossbeam_channel::Receiver<()>,
}

impl Quit {
    /// Catches Ctrl-C and SIGTERM, and starts reading stdin.
    pub(crate) fn install() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<&'static str>();
        let (status_tx, status) = crossbeam_channel::unbounded::<()>();
        let on_signal = tx.clone();
        if let Err(err) = ctrlc::set_handler(move || {
            let _ = on_signal.send("a signal");
        }) {
            log::warn!("cannot catch Ctrl-C/SIGTERM ({err:#}); type quit to stop");
        }
        let reader = std::thread::Builder::new()
            .name("stdin-quit".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    match line {
                        Ok(line) if matches!(line.trim(), "quit" | "exit") => {
                            let _ = tx.send("quit on stdin");
                            return;
                        }
                        Ok(line) if line.trim() == "status" => {
                            let _ = status_tx.send(());
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        if let Err(err) = reader {
            log::warn!("cannot read stdin ({err:#}); stop with Ctrl-C");
        }
        Self { rx, status }
    }

    /// Blocks until the node is told to stop (at once if it was told while starting).
    pub(crate) fn wait(self) {
        if let Ok(why) = self.rx.recv() {
            log::info!("stopping: {why}");
        }
    }

    /// Blocks until the node is told to stop; meanwhile calls `tick` every `every` (if
    /// given) and `status` for each line `status` on stdin.
    pub(crate) fn wait_serving(
        self,
        every: Option<Duration>,
        mut tick: impl FnMut(),
        mut status: impl FnMut(),
    ) {
        let period = every.unwrap_or(Duration::from_secs(3600));
        let mut next = std::time::Instant::now() + period;
        // Once stdin ends, its channel is closed: never ready again.
        let mut status_rx = self.status.clone();
        loop {
            let timeout =
                crossbeam_channel::after(next.saturating_duration_since(std::time::Instant::now()));
            crossbeam_channel::select! {
                recv(self.rx) -> why => {
                    if let Ok(why) = why {
                        log::info!("stopping: {why}");
                    }
                    return;
                }
                recv(status_rx) -> got => {
                    if got.is_ok() {
                        status();
                    } else {
                        status_rx = crossbeam_channel::never();
                    }
                }
                recv(timeout) -> _ => {
                    if every.is_some() {
                        tick();
                    }
                    next += period;
                }
            }
        }
    }

    /// A [`StopSignal`] that sees the same requests, for work that must end early when the
    /// node is told to stop (a worker still registering). A request it sees is taken
    /// from the channel: the node then stops without waiting on the `Quit` itself.
    pub(crate) fn signal(&self) -> StopSignal {
        StopSignal {
            rx: Some(self.rx.clone()),
            seen: std::sync::Arc::default(),
        }
    }
}

/// Whether a node was told to stop; see [`Quit::signal`]. [`none`](Self::none) is never
/// told.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopSignal {
    rx: Option<crossbeam_channel::Receiver<&'static str>>,
    seen: std::sync::Arc<std::sync::Mutex<Option<&'static str>>>,
}

impl StopSignal {
    /// A signal that never fires (nodes run inside tests and the demo).
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// Sleeps for `pause` or until the node is told to stop; returns why it stops, if it
    /// was told (now or before).
    pub(crate) fn sleep(&self, pause: Duration) -> Option<&'static str> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = *seen {
            return Some(why);
        }
        let Some(rx) = &self.rx else {
            drop(seen);
            std::thread::sleep(pause);
            return None;
        };
        let why = rx.recv_timeout(pause).ok();
        *seen = why;
        why
    }
}

/// `12.3 ms`, `450 µs`, `1.20 s`.
pub(crate) struct Millis(pub(crate) Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_secs_f64() * 1e6;
        if micros < 1000.0 {
            write!(f, "{micros:.0} µs")
        } else if micros < 1e6 {
            write!(f, "{:.1} ms", micros / 1000.0)
        } else {
            write!(f, "{:.2} s", micros / 1e6)
        }
    }
}

/// A named thread that calls `tick` every `every` until `tick` returns false or the
/// ticker is stopped (which joins the thread).
pub(crate) struct Ticker {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    pub(crate) fn spawn(
        name: impl Into<String>,
        every: Duration,
        mut tick: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    if !tick() {
                        break;
                    }
                }
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops the thread (after the tick it is running, if any) and joins it.
    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
