//! A master node: an env listening on `--host`/`--port` with the `Master` endpoint, which
//! registers workers, tracks their heartbeats and connections, and runs the tasks drivers
//! submit on them.
//!
//! ```text
//! cargo run --example master                          # 127.0.0.1:7077, or exit 1 if taken
//! cargo run --example master -- --port-fallback        # 7077, or the next free of 7078..=7093
//! cargo run --example master -- --port 0 --worker-timeout 5s
//! cargo run --example worker -- --master rpc://Master@127.0.0.1:7077 --id w1
//! ```
//!
//! It prints one line per state change on stdout, for people and scripts:
//!
//! ```text
//! MASTER listening on 127.0.0.1:7077
//! MASTER worker registered id=w1 address=127.0.0.1:40123 cores=2 memory_mb=1024
//! MASTER worker left id=w1 requeued=0
//! MASTER worker lost id=w2 requeued=1 reason=the connection to 127.0.0.1:40124 closed
//! ```
//!
//! (`left`: the worker said goodbye as it stopped; `lost`: it died or was cut off). With
//! `--port-fallback` and the port taken, the first line says so:
//! `MASTER listening on 127.0.0.1:7078 moved_from=7077 reason=port 7077 was taken`.
//!
//! and logs through `env_logger` on stderr (`RUST_LOG=debug` for more).
//!
//! Stopping: Ctrl-C, SIGTERM, or `quit` and Enter on stdin shut its env down cleanly
//! (the endpoints stop, the connections close, the workers see it at once).

#[path = "cluster/mod.rs"]
mod cluster;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rpcenv::{RpcConf, RpcEnv};

use cluster::flags::{RpcFlags, fail, parse_duration};
use cluster::{ClusterStatus, MASTER, Master, MasterConf, MasterMsg};

/// A master node: registers workers, watches their heartbeats and connections, runs
/// submitted tasks on them. Ctrl-C, SIGTERM or `quit` on stdin stop it cleanly.
#[derive(Debug, Parser)]
#[command(name = "master")]
struct Flags {
    /// The address to listen on.
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// The host workers should use to reach it (needed with --host 0.0.0.0).
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// The port to listen on (0: any free port). A taken port is an error unless
    /// --port-fallback is given: workers that expect the master there would reach
    /// whatever else listens on it.
    #[arg(long, value_name = "PORT", default_value_t = 7077)]
    port: u16,
    /// When --port is taken, try the next 16 ports (rpc.port.maxRetries, as Spark's
    /// spark.port.maxRetries); a move is logged and shown on the listening line.
    #[arg(long)]
    port_fallback: bool,
    /// A worker without a heartbeat for this long is lost.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    worker_timeout: Duration,
    /// Log one compact status line (workers, queue, the env's metrics) this often.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    status_every: Option<Duration>,
    /// A worker that does not answer a task within this is lost.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    task_timeout: Duration,
    #[command(flatten)]
    rpc: RpcFlags,
}

fn usage_error(message: &str) -> ! {
    fail::<Flags>(message)
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let conf = MasterConf {
        worker_timeout: flags.worker_timeout,
        task_timeout: flags.task_timeout,
    };
    if conf.worker_timeout.is_zero() {
        usage_error("--worker-timeout must be more than 0");
    }
    if flags.status_every.is_some_and(|every| every.is_zero()) {
        usage_error("--status-every must be more than 0");
    }
    let base = if flags.port_fallback {
        RpcConf::new()
    } else {
        RpcConf::new().set("rpc.port.maxRetries", "0")
    };
    let rpc_conf = cluster::rpc_conf(&flags.rpc, base, usage_error);
    cluster::init_logger();
    let quit = cluster::Quit::install();

    let mut builder = RpcEnv::builder("master")
        .bind_address(flags.host.clone())
        .port(flags.port)
        .conf(rpc_conf);
    if let Some(advertise) = &flags.advertise {
        builder = builder.advertise_address(advertise);
    }
    let env = match builder.build() {
        Ok(env) => env,
        Err(err) => {
            let hint = if flags.port_fallback || flags.port == 0 {
                ""
            } else {
                " (--port-fallback tries the next ports, --port 0 takes any free one)"
            };
            eprintln!("master: cannot start: {err:#}{hint}");
            return ExitCode::FAILURE;
        }
    };
    let master = Master::new(conf, Box::new(|event| println!("MASTER {event}")));
    let me = match env.setup_endpoint(MASTER, master) {
        Ok(me) => me,
        Err(err) => {
            eprintln!("master: cannot register the Master endpoint: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let address = env.address().expect("a server env has an address");
    if flags.port != 0 && address.port() != flags.port {
        log::warn!(
            "port {} was taken: the master listens on port {} instead; workers must use \
             rpc://{MASTER}@{address}",
            flags.port,
            address.port()
        );
        println!(
            "MASTER listening on {address} moved_from={} reason=port {} was taken",
            flags.port, flags.port
        );
    } else {
        println!("MASTER listening on {address}");
    }
    log::info!(
        "workers join with: cargo run --example worker -- --master rpc://{MASTER}@{address}"
    );

    // `status` on stdin: the same answer a remote `Status` ask gets, on stdout.
    let ask_status =
        || me.ask_sync_timeout::<ClusterStatus>(MasterMsg::Status, Duration::from_secs(10));
    quit.wait_serving(
        flags.status_every,
        || match ask_status() {
            Ok(status) => log::info!(
                "status workers={} jobs_queued={} running={} {}",
                status.workers.len(),
                status.queued,
                status.running,
                env.metrics().status_line()
            ),
            Err(err) => log::warn!("no status: {err:#}"),
        },
        || match ask_status() {
            Ok(status) => {
                for line in status.lines() {
                    println!("MASTER {line}");
                }
            }
            Err(err) => println!("MASTER status failed error={err:#}"),
        },
    );
    env.shutdown();
    println!("MASTER stopped");
    ExitCode::SUCCESS
}
