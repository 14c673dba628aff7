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
//! WORKER heartbeat failed id=w1 error=connection to 127.0.0.1:7077 failed: no env listens there, or it cannot be reached: Connection refused (os error 111)
//! WORKER heartbeats resumed id=w1 failed=3
//! WORKER registered again id=w1
//! ```
//!
//! (one `heartbeat failed` line per failed heartbeat). Stopping: Ctrl-C, SIGTERM, or
//! `quit` and Enter on stdin shut its env down cleanly (its endpoints stop, its
//! connections close) and the master notices at once; if the machine vanishes instead,
//! the master notices after `--worker-timeout` without heartbeats.

#[path = "cluster/mod.rs"]
mod cluster;

use std::process::ExitCode;

use rpcenv::RpcConf;

use cluster::flags::Cli;
use cluster::{WorkerNode, WorkerObserver, WorkerOptions};

fn main() -> ExitCode {
    let args = Cli::new(
        "worker",
        "A worker node: registers with the master, sends heartbeats, runs tasks. Type \
         `quit` on stdin, Ctrl-C or SIGTERM stop it cleanly.",
    )
    .flag(
        "master",
        "URI",
        Some("rpc://Master@127.0.0.1:7077"),
        "the master's endpoint",
    )
    .flag("id", "ID", None, "the worker's id [default: worker-PID]")
    .switch(
        "client-mode",
        "open no listener; the master answers over this worker's connection",
    )
    .flag(
        "host",
        "HOST",
        Some("127.0.0.1"),
        "the address to listen on (not with --client-mode)",
    )
    .flag(
        "port",
        "PORT",
        None,
        "the port to listen on [default: any free port] (not with --client-mode)",
    )
    .flag("cores", "N", Some("2"), "tasks run at once")
    .flag(
        "memory-mb",
        "MB",
        Some("1024"),
        "memory offered (informational)",
    )
    .flag(
        "heartbeat",
        "DURATION",
        Some("1s"),
        "time between two heartbeats",
    )
    .flag(
        "task-delay",
        "DURATION",
        Some("0ms"),
        "extra time each task takes (a stand-in for real work)",
    )
    .flag(
        "register-timeout",
        "DURATION",
        None,
        "give up registering after this long [default: keep trying]",
    )
    .flag("secret-file", "PATH", None, cluster::SECRET_HELP)
    .repeated("conf", "KEY=VALUE", cluster::CONF_HELP)
    .parse();
    if args.switch("client-mode") && args.has("port") {
        args.fail(
            "--client-mode and --port exclude each other: a client-mode worker listens on no port",
        );
    }
    let id = args
        .opt("id")
        .map_or_else(|| format!("worker-{}", std::process::id()), str::to_owned);
    let mut opts = WorkerOptions::new(id, args.get::<String>("master"));
    opts.client_mode = args.switch("client-mode");
    opts.host = args.get("host");
    opts.port = if args.has("port") {
        args.get("port")
    } else {
        0
    };
    opts.cores = args.get("cores");
    if opts.cores == 0 {
        args.fail("--cores must be at least 1");
    }
    opts.memory_mb = args.get("memory-mb");
    opts.heartbeat_interval = args.duration("heartbeat");
    if opts.heartbeat_interval.is_zero() {
        args.fail("--heartbeat must be more than 0");
    }
    opts.task_delay = args.duration("task-delay");
    if args.has("register-timeout") {
        opts.register_timeout = Some(args.duration("register-timeout"));
    }
    opts.conf = cluster::rpc_conf(&args, RpcConf::new());
    opts.observer = WorkerObserver::new(|event| println!("WORKER {event}"));
    cluster::init_logger();
    let quit = cluster::Quit::install();

    let (id, master) = (opts.id.clone(), opts.master.clone());
    let mut node = match WorkerNode::start(opts) {
        Ok(node) => node,
        Err(err) => {
            eprintln!("worker: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let address = node
        .address()
        .map_or_else(|| "client-mode".to_owned(), |a| a.to_string());
    println!("WORKER registered id={id} master={master} address={address}");

    quit.wait();
    node.shutdown();
    println!("WORKER stopped id={id}");
    ExitCode::SUCCESS
}
