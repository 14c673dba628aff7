//! The whole cluster in one process on loopback: a master, three workers (`w3` in client
//! mode) and a driver, each in an env of its own, talking over TCP.
//!
//! ```text
//! cargo run --release --example demo
//! RUST_LOG=debug cargo run --release --example demo     # every task handed out
//! cargo run --release --example demo -- --help
//! ```
//!
//! The driver submits a batch of tasks to the master from a few threads (each an ask that
//! the master answers once some worker has run the task). Halfway through, one worker is
//! killed: its env shuts down as if its process had died, so the tasks it was running
//! never answer. The master notices (the connection closes), puts those tasks back in
//! the queue, and the other workers run them. At the end the demo checks every result
//! against its own computation, prints a summary (tasks done, who ran them, ask latency)
//! and exits 0, or 1 if a task was lost, failed, or came back wrong, or the master did
//! not notice the lost worker. The last line is machine-readable:
//! `DEMO OK tasks=300/300 rerun=2 wrong=0 failed=0 lost=0` (or `DEMO FAILED …`).
//!
//! With `--connect rpc://Master@host:port` it is only a driver, for a master and workers
//! started as separate processes (`examples/master.rs`, `examples/worker.rs`).

#![allow(clippy::disallowed_types)] // examples use std's Arc directly

#[path = "cluster/mod.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use rpcenv::{RpcConf, RpcEnv, RpcError};

use clap::Parser;
use cluster::flags::{RpcFlags, fail, parse_duration};
use cluster::{
    BoundPorts, MASTER, Master, MasterConf, MasterEvent, MasterMsg, Millis, TaskReport, WorkerNode,
    WorkerOptions, run_task,
};

const HOST: &str = "127.0.0.1";
/// The longest the batch may take before the demo gives up on it.
const BATCH_LIMIT: Duration = Duration::from_secs(60);
/// How long the master may take to notice the killed worker.
const NOTICE_LIMIT: Duration = Duration::from_secs(10);
/// The workers: id and whether it runs in client mode.
const WORKERS: [(&str, bool); 3] = [("w1", false), ("w2", false), ("w3", true)];
/// Plain round trips measured before the batch.
const PINGS: usize = 200;

/// What the main thread hears about.
enum Event {
    /// From the master's observer, with the moment it happened.
    Master(MasterEvent, Instant),
    /// From a driver thread.
    Done {
        task_id: u64,
        input: u64,
        outcome: Result<TaskReport, RpcError>,
        latency: Duration,
    },
}

/// The input of task `task_id`: each task sums 20 000 to 30 000 mixed numbers.
fn input_of(task_id: u64) -> u64 {
    20_000 + task_id.wrapping_mul(7919) % 10_000
}

/// A master, three workers (one in client mode) and a driver in one process: runs a batch
/// of tasks, kills a worker halfway, and checks that every task still finishes.
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Flags {
    /// Tasks in the batch.
    #[arg(long, value_name = "N", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    tasks: u64,
    /// Driver threads, each with one task ask in flight.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..))]
    drivers: u64,
    /// Extra time each task takes on a worker.
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    task_delay: Duration,
    /// The worker to kill halfway: w1, w2, w3 (client mode) or none [default: w2].
    #[arg(long, value_name = "ID", value_parser = ["w1", "w2", "w3", "none"],
          conflicts_with = "connect")]
    kill: Option<String>,
    /// Drive a running master (rpc://Master@host:port) instead: no cluster is started, no
    /// worker killed.
    #[arg(long, value_name = "URI")]
    connect: Option<String>,
    #[command(flatten)]
    rpc: RpcFlags,
}

fn usage_error(message: &str) -> ! {
    fail::<Flags>(message)
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let tasks = flags.tasks;
    let drivers = usize::try_from(flags.drivers).unwrap_or(usize::MAX);
    let task_delay = flags.task_delay;
    let connect = flags.connect.clone();
    let kill = match (flags.kill.as_deref(), &connect) {
        (None, Some(_)) | (Some("none"), _) => None,
        (None, None) => Some("w2".to_owned()),
        (Some(id), _) => Some(id.to_owned()),
    };
    // Every env of the demo (master, workers, driver) gets the same settings.
    let conf = cluster::rpc_conf(
        &flags.rpc,
        RpcConf::new()
            .set("rpc.io.threads", "2")
            .set("rpc.dispatcher.numThreads", "2"),
        usage_error,
    );
    cluster::init_logger();
    let demo = Demo {
        conf,
        tasks,
        drivers,
        task_delay,
        kill,
        connect,
    };
    match demo.run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            println!("DEMO FAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

struct Demo {
    /// The settings of every env.
    conf: RpcConf,
    tasks: u64,
    drivers: usize,
    task_delay: Duration,
    kill: Option<String>,
    /// A running master to drive instead of a cluster of our own.
    connect: Option<String>,
}

/// The nodes the demo started (none with `--connect`).
struct Cluster {
    master_env: Option<RpcEnv>,
    workers: Vec<Option<WorkerNode>>,
    master_uri: String,
    /// The port the master's env bound, when it is ours.
    master_port: Option<u16>,
}

/// What the main thread saw of the batch.
#[derive(Default)]
struct Tally {
    done: u64,
    wrong: Vec<u64>,
    failed: Vec<(u64, String)>,
    per_worker: BTreeMap<String, u64>,
    /// Tasks whose result came on a second or later attempt, and from whom.
    rerun: BTreeMap<u64, String>,
    latencies: Vec<Duration>,
    /// When the kill began.
    killed_at: Option<Instant>,
    /// When the master declared the killed worker lost, and why.
    noticed: Option<(Instant, String)>,
    requeued: BTreeSet<u64>,
}

impl Demo {
    fn run(&self) -> Result<bool, String> {
        let started = Instant::now();
        let conf = self.conf.clone();
        let (tx, rx) = crossbeam_channel::unbounded::<Event>();

        let mut cluster = match &self.connect {
            Some(uri) => {
                println!("rpcenv demo: a driver for the master at {uri}");
                Cluster {
                    master_env: None,
                    workers: Vec::new(),
                    master_uri: uri.clone(),
                    master_port: None,
                }
            }
            None => self.start_cluster(&conf, &tx)?,
        };
        let mut tally = Tally::default();
        drain(&rx, &mut tally, self.kill.as_deref());

        // The driver.
        let driver_env = RpcEnv::builder("driver")
            .client_mode(true)
            .conf(conf)
            .build()
            .map_err(|err| format!("driver env: {err:#}"))?;
        let master_uri = &cluster.master_uri;
        let master = driver_env
            .setup_endpoint_ref_by_uri::<MasterMsg>(master_uri)
            .map_err(|err| format!("driver: looking up {master_uri}: {err:#}"))?;
        let mut pings = Vec::with_capacity(PINGS);
        let mut port = 0;
        for _ in 0..PINGS {
            let asked = Instant::now();
            let ports: BoundPorts = master
                .ask_sync_timeout(MasterMsg::BoundPortsRequest, Duration::from_secs(10))
                .map_err(|err| format!("driver: BoundPortsRequest: {err:#}"))?;
            pings.push(asked.elapsed());
            port = ports.rpc_port;
            if cluster.master_port.is_some_and(|bound| bound != port) {
                return Err(format!(
                    "the master says it bound port {port}, its env says {:?}",
                    cluster.master_port
                ));
            }
        }
        println!(
            "driver: the master answers BoundPortsRequest with port {port}; submitting {} tasks from {} threads",
            self.tasks, self.drivers
        );

        let next = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for n in 0..self.drivers {
            let (master, next, tx, tasks) =
                (master.clone(), Arc::clone(&next), tx.clone(), self.tasks);
            let spawned = thread::Builder::new()
                .name(format!("driver-{n}"))
                .spawn(move || {
                    loop {
                        let task_id = next.fetch_add(1, Ordering::Relaxed);
                        if task_id >= tasks {
                            break;
                        }
                        let input = input_of(task_id);
                        let asked = Instant::now();
                        let outcome = master.ask_sync_timeout::<TaskReport>(
                            MasterMsg::SubmitTask { task_id, input },
                            BATCH_LIMIT,
                        );
                        let latency = asked.elapsed();
                        let done = Event::Done {
                            task_id,
                            input,
                            outcome,
                            latency,
                        };
                        if tx.send(done).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|err| format!("cannot start a driver thread: {err:#}"))?;
            threads.push(spawned);
        }
        drop(tx);

        // The batch, with the kill halfway.
        let batch_started = Instant::now();
        let deadline = batch_started + BATCH_LIMIT;
        let kill_at = self.tasks / 2;
        while tally.done + (tally.failed.len() as u64) < self.tasks {
            let event = match rx.recv_deadline(deadline) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    println!("driver: the batch did not finish within {BATCH_LIMIT:?}");
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            handle(event, &mut tally, self.kill.as_deref());
            if tally.done == kill_at && tally.killed_at.is_none() {
                if let Some(victim) = &self.kill {
                    let index = WORKERS
                        .iter()
                        .position(|(id, _)| id == victim)
                        .expect("checked by the flag parser");
                    if let Some(node) = cluster.workers[index].take() {
                        println!(
                            "driver: {}/{} tasks done; killing worker {victim} (its env shuts down as if the process died)",
                            tally.done, self.tasks
                        );
                        tally.killed_at = Some(Instant::now());
                        node.crash();
                    }
                }
            }
        }
        let batch_time = batch_started.elapsed();
        println!(
            "driver: {}/{} tasks done in {}",
            tally.done,
            self.tasks,
            Millis(batch_time)
        );
        if self.kill.is_some() && tally.noticed.is_none() {
            let limit = Instant::now() + NOTICE_LIMIT;
            while tally.noticed.is_none() {
                match rx.recv_deadline(limit) {
                    Ok(event) => handle(event, &mut tally, self.kill.as_deref()),
                    Err(_) => break,
                }
            }
        }

        // Everything stops; the metrics of each env are taken first (the live view).
        for handle in threads {
            let _ = handle.join();
        }
        let mut snapshots = vec![driver_env.metrics()];
        if let Some(master_env) = &cluster.master_env {
            snapshots.push(master_env.metrics());
        }
        for node in cluster.workers.iter().flatten() {
            snapshots.push(node.metrics());
        }
        driver_env.shutdown();
        drain(&rx, &mut tally, self.kill.as_deref());
        // The master first, so that it does not report the workers leaving.
        if let Some(master_env) = &cluster.master_env {
            master_env.shutdown();
            master_env.await_termination();
        }
        for node in cluster.workers.iter_mut().filter_map(Option::as_mut) {
            node.shutdown();
        }

        println!();
        println!("metrics of each env (status line, then one line per endpoint)");
        for snapshot in &snapshots {
            for line in cluster::metrics_lines(snapshot) {
                println!("  {line}");
            }
        }
        Ok(self.summary(&tally, &pings, started.elapsed()))
    }

    /// Starts the master and the workers, each in an env of its own.
    fn start_cluster(
        &self,
        conf: &RpcConf,
        events: &crossbeam_channel::Sender<Event>,
    ) -> Result<Cluster, String> {
        let master_env = RpcEnv::builder("master")
            .bind_address(HOST)
            .port(0)
            .conf(conf.clone())
            .build()
            .map_err(|err| format!("master env: {err:#}"))?;
        let observer = events.clone();
        let master = Master::new(
            MasterConf {
                worker_timeout: Duration::from_secs(10),
                task_timeout: Duration::from_secs(30),
            },
            Box::new(move |event| {
                let _ = observer.send(Event::Master(event.clone(), Instant::now()));
            }),
        );
        master_env
            .setup_endpoint(MASTER, master)
            .map_err(|err| format!("master endpoint: {err:#}"))?;
        let master_address = master_env.address().expect("a server env has an address");
        let master_uri = format!("rpc://{MASTER}@{master_address}");
        println!(
            "rpcenv demo: a master, {} workers and a driver in one process, each in an env of its own",
            WORKERS.len()
        );
        println!("master listening on {master_address}");

        let mut workers = Vec::new();
        for (id, client_mode) in WORKERS {
            let mut opts = WorkerOptions::new(id, master_uri.clone());
            opts.client_mode = client_mode;
            opts.cores = 2;
            opts.task_delay = self.task_delay;
            opts.heartbeat_interval = Duration::from_secs(1);
            opts.register_timeout = Some(Duration::from_secs(10));
            opts.conf = conf.clone();
            let node = WorkerNode::start(opts)?;
            let shown = node
                .address()
                .map_or_else(|| "client mode, no listener".to_owned(), |a| a.to_string());
            println!("worker {id} started ({shown}), 2 cores");
            workers.push(Some(node));
        }
        Ok(Cluster {
            master_env: Some(master_env),
            workers,
            master_uri,
            master_port: Some(master_address.port()),
        })
    }

    /// Prints the summary; true when everything checked out.
    fn summary(&self, tally: &Tally, pings: &[Duration], elapsed: Duration) -> bool {
        let mut problems = Vec::new();
        let lost = self.tasks - tally.done - tally.failed.len() as u64;
        if lost > 0 {
            problems.push(format!("{lost} tasks never finished"));
        }
        if !tally.failed.is_empty() {
            problems.push(format!("{} tasks failed", tally.failed.len()));
            for (task_id, err) in tally.failed.iter().take(5) {
                println!("  task {task_id} failed: {err:#}");
            }
        }
        if !tally.wrong.is_empty() {
            problems.push(format!(
                "{} results were wrong (tasks {:?})",
                tally.wrong.len(),
                tally.wrong
            ));
        }
        if let Some(victim) = &self.kill {
            if tally.killed_at.is_none() {
                problems.push(format!("worker {victim} was never killed"));
            } else if tally.noticed.is_none() {
                problems.push(format!(
                    "the master did not notice that worker {victim} was lost"
                ));
            }
            if tally.rerun.values().any(|w| w == victim) {
                problems.push(format!("a re-run task was answered by the dead {victim}"));
            }
        }

        println!();
        println!("summary");
        println!(
            "  tasks        {}/{} done, every result checked against the driver's own ({} wrong, {} failed)",
            tally.done,
            self.tasks,
            tally.wrong.len(),
            tally.failed.len()
        );
        let per_worker: Vec<String> = tally
            .per_worker
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect();
        println!("  per worker   {}", per_worker.join(", "));
        match (&self.kill, tally.killed_at, &tally.noticed) {
            (Some(victim), Some(killed), Some((noticed, reason))) => {
                println!(
                    "  worker lost  {victim}, noticed {} after the kill began: {reason}",
                    Millis(noticed.saturating_duration_since(killed))
                );
                let rerun: Vec<String> = tally
                    .rerun
                    .iter()
                    .map(|(t, w)| format!("{t} on {w}"))
                    .collect();
                println!(
                    "  re-run       {} tasks queued again, {} finished elsewhere: {}",
                    tally.requeued.len(),
                    tally.rerun.len(),
                    if rerun.is_empty() {
                        "-".to_owned()
                    } else {
                        rerun.join(", ")
                    }
                );
            }
            (Some(victim), _, _) => println!("  worker lost  {victim}: NOT NOTICED"),
            (None, _, _) if self.connect.is_some() => {}
            (None, _, _) => println!("  worker lost  none (--kill none)"),
        }
        let (p50, p99) = percentiles(&tally.latencies);
        let tasks = match self.connect {
            Some(_) => String::new(),
            None => format!(", tasks of {} + compute", Millis(self.task_delay)),
        };
        println!(
            "  task asks    p50 {}, p99 {} (SubmitTask to TaskReport; {} driver threads{tasks})",
            Millis(p50),
            Millis(p99),
            self.drivers,
        );
        let (p50, p99) = percentiles(pings);
        println!(
            "  plain asks   p50 {}, p99 {} ({} BoundPortsRequest round trips, driver to master)",
            Millis(p50),
            Millis(p99),
            pings.len()
        );
        println!("  elapsed      {}", Millis(elapsed));
        let line = format!(
            "tasks={}/{} rerun={} wrong={} failed={} lost={lost}",
            tally.done,
            self.tasks,
            tally.rerun.len(),
            tally.wrong.len(),
            tally.failed.len()
        );
        if problems.is_empty() {
            println!("DEMO OK {line}");
            true
        } else {
            println!("DEMO FAILED {line}: {}", problems.join("; "));
            false
        }
    }
}

/// Handles the events already there.
fn drain(rx: &crossbeam_channel::Receiver<Event>, tally: &mut Tally, victim: Option<&str>) {
    while let Ok(event) = rx.try_recv() {
        handle(event, tally, victim);
    }
}

fn handle(event: Event, tally: &mut Tally, victim: Option<&str>) {
    match event {
        Event::Master(event, at) => {
            println!("MASTER {event}");
            match &event {
                MasterEvent::WorkerLost { id, reason, .. }
                    if Some(id.as_str()) == victim && tally.killed_at.is_some() =>
                {
                    tally.noticed.get_or_insert_with(|| (at, reason.clone()));
                }
                MasterEvent::TaskRequeued { task_id, .. } => {
                    tally.requeued.insert(*task_id);
                }
                _ => {}
            }
        }
        Event::Done {
            task_id,
            input,
            outcome,
            latency,
        } => match outcome {
            Ok(report) => {
                tally.done += 1;
                tally.latencies.push(latency);
                if report.result != run_task(input) || report.task_id != task_id {
                    tally.wrong.push(task_id);
                }
                *tally.per_worker.entry(report.worker.clone()).or_default() += 1;
                if report.attempts > 1 {
                    println!(
                        "driver: task {task_id} done by {} on attempt {}",
                        report.worker, report.attempts
                    );
                    tally.rerun.insert(task_id, report.worker);
                }
            }
            Err(err) => tally.failed.push((task_id, err.to_string())),
        },
    }
}

/// The 50th and 99th percentiles (nearest rank).
fn percentiles(samples: &[Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank =
        |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    (rank(0.50), rank(0.99))
}
