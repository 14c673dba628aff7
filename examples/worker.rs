//! A worker node: registers with a master (retrying with backoff until the master is
//! there), sends heartbeats from a timer thread, and runs the tasks the master gives it.
//!
//! ```text
//! cargo run --example worker -- --master rpc://Master@127.0.0.1:7077 --id w1
//! cargo run --example worker -- --master rpc://Master@127.0.0.1:7077 --id w2 --client-mode
//! ```
//!
//! With its own listener (`--port`, default any free port) the master reaches it by its
//! address; in `--client-mode` it opens no port and the master reaches it over the
//! connection it opened to the master.
//!
//! It prints one line per state change on stdout, for people and scripts:
//!
//! ```text
//! WORKER registered id=w1 master=rpc://Master@127.0.0.1:7077 address=127.0.0.1:40123
//! WORKER master lost id=w1 master=rpc://Master@127.0.0.1:7077 reason=the connection closed; heartbeats go on
//! WORKER heartbeat failed id=w1 error=connection to 127.0.0.1:7077 failed: no env listens there, or it cannot be reached: Connection refused (os error 111)
//! WORKER heartbeats resumed id=w1 failed=3
//! WORKER registered again id=w1
//! ```
//!
//! (one `heartbeat failed` line per failed heartbeat). Stopping: Ctrl-C, SIGTERM, or
//! `quit` and Enter on stdin shut its env down cleanly in every state, exit status 0: a
//! registered worker says goodbye (the master logs `worker left`), its endpoints stop,
//! its connections close; one still registering stops retrying (`WORKER stopped id=w1
//! before it registered (…)`). If the machine vanishes instead, the master notices after
//! `--worker-timeout` without heartbeats.

#[path = "cluster/mod.rs"]
mod cluster;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rpcenv::RpcConf;

use cluster::flags::{RpcFlags, fail, parse_duration};
use cluster::{StartError, WorkerNode, WorkerObserver, WorkerOptions};

/// A worker node: registers with the master, sends heartbeats, runs tasks. Type `quit` on
/// stdin, Ctrl-C or SIGTERM stop it cleanly, also while it is still registering.
#[derive(Debug, Parser)]
#[command(name = "worker")]
struct Flags {
    /// The master's endpoint (checked before the worker binds anything).
    #[arg(long, value_name = "URI", default_value = "rpc://Master@127.0.0.1:7077",
          value_parser = check_master_uri)]
    master: String,
    /// The worker's id [default: PID, so the env is worker-PID].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Open no listener; the master answers over this worker's connection.
    #[arg(long, conflicts_with = "port")]
    client_mode: bool,
    /// The address to listen on (not with --client-mode).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on [default: any free port] (not with --client-mode). A taken
    /// port is an error unless --port-fallback is given.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// When --port is taken, try the next 16 ports (rpc.port.maxRetries) instead of failing.
    #[arg(long)]
    port_fallback: bool,
    /// Tasks run at once.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    cores: u32,
    /// Memory offered (informational).
    #[arg(long, value_name = "MB", default_value_t = 1024)]
    memory_mb: u64,
    /// Time between two heartbeats.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Extra time each task takes (a stand-in for real work).
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
    task_delay: Duration,
    /// Log one compact status line (the env's metrics) this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    status_every: Option<Duration>,
    /// Give up registering after this long (the last attempt is cut to fit) [default: keep
    /// trying].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    register_timeout: Option<Duration>,
    #[command(flatten)]
    rpc: RpcFlags,
}

fn check_master_uri(uri: &str) -> Result<String, String> {
    cluster::master_address(uri).map(|_| uri.to_owned())
}

fn usage_error(message: &str) -> ! {
    fail::<Flags>(message)
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    if flags.heartbeat.is_zero() {
        usage_error("--heartbeat must be more than 0");
    }
    if flags.status_every.is_some_and(|every| every.is_zero()) {
        usage_error("--status-every must be more than 0");
    }
    // The pid alone: the env's name, `worker-ID`, adds the prefix.
    let id = flags
        .id
        .clone()
        .unwrap_or_else(|| std::process::id().to_string());
    let mut opts = WorkerOptions::new(id, flags.master.clone());
    opts.client_mode = flags.client_mode;
    opts.host = flags.host.clone();
    opts.port = flags.port.unwrap_or(0);
    opts.cores = flags.cores;
    opts.memory_mb = flags.memory_mb;
    opts.heartbeat_interval = flags.heartbeat;
    opts.task_delay = flags.task_delay;
    opts.register_timeout = flags.register_timeout;
    let base = if flags.port_fallback {
        RpcConf::new()
    } else {
        RpcConf::new().set("rpc.port.maxRetries", "0")
    };
    opts.conf = cluster::rpc_conf(&flags.rpc, base, usage_error);
    opts.observer = WorkerObserver::new(|event| println!("WORKER {event}"));
    cluster::init_logger();
    let quit = cluster::Quit::install();
    opts.stop = quit.signal();

    let (id, master) = (opts.id.clone(), opts.master.clone());
    let mut node = match WorkerNode::start(opts) {
        Ok(node) => node,
        Err(StartError::Stopped(why)) => {
            println!("WORKER stopped id={id} before it registered ({why})");
            return ExitCode::SUCCESS;
        }
        Err(StartError::Failed(err)) => {
            eprintln!("worker: {err}");
            return ExitCode::FAILURE;
        }
    };
    let address = node
        .address()
        .map_or_else(|| "client-mode".to_owned(), |a| a.to_string());
    if let (Some(asked), Some(bound)) = (flags.port.filter(|p| *p != 0), node.address()) {
        if bound.port() != asked {
            log::warn!("port {asked} was taken: the worker listens on {bound} instead");
        }
    }
    println!("WORKER registered id={id} master={master} address={address}");

    quit.wait_serving(
        flags.status_every,
        || log::info!("status id={id} {}", node.metrics().status_line()),
        || {
            for line in cluster::metrics_lines(&node.metrics()) {
                println!("WORKER {line}");
            }
        },
    );
    node.shutdown();
    println!("WORKER stopped id={id}");
    ExitCode::SUCCESS
}
