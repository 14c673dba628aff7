//! A master node: an env listening on `--host`/`--port` with the `Master` endpoint, which
//! registers workers, tracks their heartbeats and connections, and runs the tasks drivers
//! submit on them.
//!
//! ```text
//! cargo run --example master                          # 127.0.0.1:7077 (or the next free port)
//! cargo run --example master -- --port 0 --worker-timeout 5s
//! cargo run --example worker -- --master rpc://Master@127.0.0.1:7077 --id w1
//! ```
//!
//! It prints one line per state change on stdout, for people and scripts:
//!
//! ```text
//! MASTER listening on 127.0.0.1:7077
//! MASTER worker registered id=w1 address=127.0.0.1:40123 cores=2 memory_mb=1024
//! MASTER worker lost id=w1 requeued=0 reason=the connection to 127.0.0.1:40123 closed
//! ```
//!
//! and logs through `env_logger` on stderr (`RUST_LOG=debug` for more).
//!
//! Stopping: Ctrl-C, SIGTERM, or `quit` and Enter on stdin shut its env down cleanly
//! (the endpoints stop, the connections close, the workers see it at once).

#[path = "cluster/mod.rs"]
mod cluster;

use std::process::ExitCode;

use rpcenv::{RpcConf, RpcEnv};

use cluster::flags::Cli;
use cluster::{MASTER, Master, MasterConf};

fn main() -> ExitCode {
    let args = Cli::new(
        "master",
        "A master node: registers workers, watches their heartbeats and connections, runs \
         submitted tasks on them. Ctrl-C, SIGTERM or `quit` on stdin stop it cleanly.",
    )
    .flag(
        "host",
        "HOST",
        Some("127.0.0.1"),
        "the address to listen on",
    )
    .flag(
        "advertise",
        "HOST",
        None,
        "the host workers should use to reach it (needed with --host 0.0.0.0)",
    )
    .flag(
        "port",
        "PORT",
        Some("7077"),
        "the port to listen on (0: any free port); when taken, the next 16 are tried",
    )
    .flag(
        "worker-timeout",
        "DURATION",
        Some("10s"),
        "a worker without a heartbeat for this long is lost",
    )
    .flag(
        "task-timeout",
        "DURATION",
        Some("60s"),
        "a worker that does not answer a task within this is lost",
    )
    .flag("secret-file", "PATH", None, cluster::SECRET_HELP)
    .repeated("conf", "KEY=VALUE", cluster::CONF_HELP)
    .parse();
    let conf = MasterConf {
        worker_timeout: args.duration("worker-timeout"),
        task_timeout: args.duration("task-timeout"),
    };
    if conf.worker_timeout.is_zero() {
        args.fail("--worker-timeout must be more than 0");
    }
    let host: String = args.get("host");
    let port: u16 = args.get("port");
    let rpc_conf = cluster::rpc_conf(&args, RpcConf::new());
    cluster::init_logger();
    let quit = cluster::Quit::install();

    let mut builder = RpcEnv::builder("master")
        .bind_address(host)
        .port(port)
        .conf(rpc_conf);
    if let Some(advertise) = args.opt("advertise") {
        builder = builder.advertise_address(advertise);
    }
    let env = match builder.build() {
        Ok(env) => env,
        Err(err) => {
            eprintln!("master: cannot start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let master = Master::new(conf, Box::new(|event| println!("MASTER {event}")));
    if let Err(err) = env.setup_endpoint(MASTER, master) {
        eprintln!("master: cannot register the Master endpoint: {err:#}");
        return ExitCode::FAILURE;
    }
    let address = env.address().expect("a server env has an address");
    println!("MASTER listening on {address}");
    log::info!(
        "workers join with: cargo run --example worker -- --master rpc://{MASTER}@{address}"
    );

    quit.wait();
    env.shutdown();
    println!("MASTER stopped");
    ExitCode::SUCCESS
}
