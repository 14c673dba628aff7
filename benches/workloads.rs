//! The workload benchmark of `BENCH.md`: W1–W8 against the RPC layer (`RpcEnv`, an echo
//! endpoint, `ask`/`send`), the transport (`TransportClient` and an echo `RpcHandler`),
//! both also encrypted (Spark's `AuthEngine` handshake, then AES-GCM or AES-CTR), and a
//! plain blocking-TCP baseline, server and client in this one process, on loopback.
//!
//! ```text
//! cargo bench --bench workloads -- [W1 W2 ...] [--quick] [--threads N] [--system NAME]
//!                                  [--conns N] [--payload vec|bytes|shared]
//! ```
//!
//! With no workload named, all run. `--quick` scales every workload down about ten
//! times (smoke runs). `--threads N` sets `rpc.io.threads` (default 2). `--system NAME`
//! (repeatable) runs only the systems named, in that order, every workload asked for
//! (e.g. to profile one). Without it every system runs its default workloads: all of
//! them for `transport`, `rpcenv` and `plain-tcp`; W1, W2, W3 and W5 for the encrypted
//! `transport-gcm`, `rpcenv-gcm` and `rpcenv-ctr`; none for `rpcenv-gcm-v1` and
//! `rpcenv-ctr-v2` (only when named). `--conns N` sets the idle connections of W7 (default
//! 10,000; 1,000 with `--quick`). `--payload bytes` makes the rpcenv systems carry the
//! payload as serde bytes (as `serde_bytes::ByteBuf`) instead of a `Vec<u8>`; `--payload
//! shared` as `rpcenv::SharedBytes` (serde bytes on the wire, a view of the received frame
//! on decode; the client copies each answer into the next request's buffer, outside the
//! timing in W1 and W5, inside it in W3 and W6). The
//! `--bench` argument cargo adds is ignored. Results go to stdout, one line per workload
//! and system, then one ratio line per system against `plain-tcp` (when it ran), then one
//! per encrypted system against the same system in plaintext (when it ran); none for W7,
//! whose targets are absolute. Diagnostics go to stderr. Any failure is printed and makes
//! the exit status non-zero; a W7 that cannot run (too few file descriptors, or an
//! encrypted system) prints a `skipped` line instead.
//!
//! W8 (file download with `RpcEnv::open_channel` beside plain `std::io::copy` from the
//! file to a socket, see `w8/mod.rs`) runs after the others, alone when it is the only
//! workload named.
//!
//! The sweeps (`sweeps`, or any of `S-payload S-callers S-idle S-inflight S-endpoints
//! S-record`, or `--sweep NAME`; `--charts DIR` for their SVG charts) scale one parameter
//! each, beside `plain-tcp`; with one named only the sweeps run. See `sweeps/mod.rs`.
//!
//! Units: `MB` is 10^6 bytes of payload counted one way (the request bodies, not the
//! echoes and not the frame headers); `us` is microseconds.
//!
//! Adding a system means implementing [`System`], [`Server`] and [`Connection`] and
//! adding it to the list in [`systems`].

// The bench is outside the library: the crate's own `Arc`/`Mutex` wrappers are private,
// so it uses the standard ones.
#![allow(clippy::disallowed_types)]

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use rpcenv::transport::{
    AuthBootstrap, Cipher, EngineVersion, Responder, RpcHandler, TransportClient,
    TransportClientFactory, TransportConf, TransportContext, TransportServer,
};
use rpcenv::{
    ConcurrentRpcEndpoint, EndpointContext, Pending, RpcAddress, RpcCallContext, RpcConf,
    RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError, SharedBytes,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The byte every payload is filled with (around the sequence stamps).
const FILL: u8 = 0xA5;
/// W1, W2, W4, W6 payload.
const SMALL: usize = 64;
/// W3 payload.
const MEDIUM: usize = 4 << 10;
/// W5 payload.
const LARGE: usize = 16 << 20;
/// Requests in flight in W2 and W3.
const WINDOW: usize = 64;
/// Caller threads (and connections) in W6.
const FAN_IN: usize = 32;
/// The longest any single answer may take before the workload fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the count request of W4 may take (it waits behind every one-way message).
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a plain-TCP server thread may take to notice its client closed.
const SERVE_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// `BufReader` / `BufWriter` capacity of the plain-TCP baseline.
const PLAIN_BUFFER: usize = 64 << 10;
/// Idle connections held in W7 (a tenth of it with `--quick`).
const IDLE_CONNS: usize = 10_000;
/// Set in the environment of the process that runs one W7 (see `idle_in_child`).
const W7_CHILD: &str = "RPCENV_BENCH_W7_CHILD";
/// File descriptors W7 leaves for everything but its idle connections.
const FD_MARGIN: u64 = 100;
/// The longest W7 waits for the server to accept its idle connections.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections W7 opens before it waits for the server to accept them: fewer than
/// the smallest listen backlog (std's 128), so that no connect waits for a dropped SYN to
/// be sent again a second later.
const CONNECT_BATCH: usize = 100;

mod sweeps;
mod w8;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    // W8 is a workload of its own (see `w8/mod.rs`): with only it named, only it runs.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The sweeps (see `sweeps/mod.rs`): with one named, only the sweeps run.
    let sweep_args = match sweeps::take_args(&mut args) {
        Ok(sweep_args) => sweep_args,
        Err(err) => {
            eprintln!("error: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !sweep_args.sweeps.is_empty() {
        return match Options::parse(args.into_iter()) {
            Ok(Some(options)) => match sweeps::run(&sweep_args, &options) {
                0 => ExitCode::SUCCESS,
                failed => {
                    eprintln!("error: {failed} sweep(s) failed");
                    ExitCode::FAILURE
                }
            },
            Ok(None) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    let named = |args: &[String]| {
        args.iter().any(|arg| {
            Workload::ALL
                .iter()
                .any(|w| w.name().eq_ignore_ascii_case(arg))
        })
    };
    let w8_named = args.iter().any(|arg| arg.eq_ignore_ascii_case("W8"));
    args.retain(|arg| !arg.eq_ignore_ascii_case("W8"));
    let others = !w8_named || named(&args);
    let run_w8 = w8_named || !named(&args);
    let w8_status = |options: &Options| {
        if !run_w8 || std::env::var_os(W7_CHILD).is_some() {
            return ExitCode::SUCCESS;
        }
        match w8::run(options.quick, options.io_threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        }
    };
    if !others {
        return match Options::parse(args.into_iter()) {
            Ok(Some(options)) => w8_status(&options),
            Ok(None) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    let options = match Options::parse(args.into_iter()) {
        Ok(Some(options)) => options,
        Ok(None) => return ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let scale = Scale::new(options.quick, options.conns);
    let systems = systems(&options);
    let known: Vec<&str> = systems.iter().map(|s| s.name()).collect();
    if let Some(unknown) = options
        .systems
        .iter()
        .find(|name| !known.contains(&name.as_str()))
    {
        eprintln!(
            "error: unknown system {unknown:?} (known: {})\n{USAGE}",
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    // The systems in the order they run: the list's order, or that of `--system`.
    let order: Vec<usize> = if options.systems.is_empty() {
        (0..systems.len()).collect()
    } else {
        let mut order = Vec::new();
        for name in &options.systems {
            let index = known.iter().position(|known| known == name);
            if let Some(index) = index.filter(|index| !order.contains(index)) {
                order.push(index);
            }
        }
        order
    };
    let index_of = |name: &str| known.iter().position(|known| *known == name);
    // A W7 child (see `idle_in_child`) prints its result line and errors only.
    let child = std::env::var_os(W7_CHILD).is_some();
    if !child {
        eprintln!(
            "workloads: {} ({}), rpc.io.threads={}, rpcenv payload: {}",
            options
                .workloads
                .iter()
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(" "),
            if options.quick {
                "quick: about 1/10 of the full size"
            } else {
                "full size"
            },
            options.io_threads,
            options.payload.describe()
        );
    }
    // With no `--system`, each system runs the workloads it runs by default; a system
    // named runs every workload asked for.
    let runs = |system: &dyn System, workload: Workload| {
        !options.systems.is_empty() || system.default_run().includes(workload)
    };
    let mut failures = 0;
    let started = Instant::now();
    for &workload in &options.workloads {
        let mut results: Vec<Option<Measurement>> = systems.iter().map(|_| None).collect();
        for &index in &order {
            let system = systems[index].as_ref();
            if !runs(system, workload) {
                continue;
            }
            let began = Instant::now();
            let outcome = if workload == Workload::W7 && !child {
                idle_in_child(system.name(), &options, &scale)
            } else {
                run(workload, system, &scale)
            };
            match outcome {
                Ok(measurement) => {
                    println!(
                        "{} system={} {}",
                        workload.name(),
                        system.name(),
                        measurement
                    );
                    if !child {
                        eprintln!(
                            "  ({} system={} took {:.1} s)",
                            workload.name(),
                            system.name(),
                            began.elapsed().as_secs_f64()
                        );
                    }
                    results[index] = Some(measurement);
                }
                Err(err) => {
                    eprintln!(
                        "error: {} system={} failed: {err}",
                        workload.name(),
                        system.name()
                    );
                    failures += 1;
                }
            }
        }
        // Every system against the baseline, then every encrypted system against the
        // same system in plaintext.
        let ratio = |index: usize, base: usize| {
            let (Some(measured), Some(base_measured)) = (&results[index], &results[base]) else {
                return;
            };
            if let Some((key, ratio)) = measured.ratio_to(base_measured) {
                println!(
                    "{} ratio {}/{} {key}={ratio:.2}",
                    workload.name(),
                    systems[index].name(),
                    systems[base].name()
                );
            }
        };
        if let Some(baseline) = index_of(PlainTcp::NAME) {
            for &index in order.iter().filter(|&&index| index != baseline) {
                ratio(index, baseline);
            }
        }
        for &index in &order {
            if let Some(plaintext) = systems[index].plaintext().and_then(index_of) {
                ratio(index, plaintext);
            }
        }
    }
    if !child {
        eprintln!(
            "all workloads took {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    if w8_status(&options) != ExitCode::SUCCESS {
        failures += 1;
    }
    if failures > 0 {
        eprintln!("error: {failures} workload run(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Every system, in the order they run by default. The baseline comes last; every other
/// system gets a ratio line against it, and every encrypted one a ratio line against
/// the same system in plaintext.
fn systems(options: &Options) -> Vec<Box<dyn System>> {
    let io_threads = options.io_threads;
    let payload = options.payload;
    let transport = |name, encryption, default_run| -> Box<dyn System> {
        Box::new(TransportSystem {
            name,
            io_threads,
            encryption,
            default_run,
        })
    };
    let rpcenv = |name, encryption, default_run| -> Box<dyn System> {
        Box::new(RpcEnvSystem {
            name,
            io_threads,
            payload,
            encryption,
            default_run,
        })
    };
    // rpcenv's default (AES-128-GCM, keys from HKDF), and Spark's (AES-256-CTR, the raw
    // X25519 output as the key); the other two pairings only when named.
    let gcm_v2 = Encryption::new(Cipher::AesGcm, EngineVersion::V2);
    let ctr_v1 = Encryption::new(Cipher::AesCtr, EngineVersion::V1);
    let gcm_v1 = Encryption::new(Cipher::AesGcm, EngineVersion::V1);
    let ctr_v2 = Encryption::new(Cipher::AesCtr, EngineVersion::V2);
    vec![
        transport("transport", None, DefaultRun::All),
        transport("transport-gcm", Some(gcm_v2), DefaultRun::Encrypted),
        rpcenv("rpcenv", None, DefaultRun::All),
        rpcenv("rpcenv-gcm", Some(gcm_v2), DefaultRun::Encrypted),
        rpcenv("rpcenv-ctr", Some(ctr_v1), DefaultRun::Encrypted),
        rpcenv("rpcenv-gcm-v1", Some(gcm_v1), DefaultRun::Named),
        rpcenv("rpcenv-ctr-v2", Some(ctr_v2), DefaultRun::Named),
        Box::new(PlainTcp),
    ]
}

const USAGE: &str = "usage: cargo bench --bench workloads -- [W1 .. W8] [--quick] [--threads N] \
                     [--system NAME]... [--conns N] [--payload vec|bytes|shared]
       cargo bench --bench workloads -- [sweeps | S-payload S-callers S-idle S-inflight \
                     S-endpoints S-record | --sweep NAME]... [--charts DIR] [--quick] ...
systems: transport transport-gcm rpcenv rpcenv-gcm rpcenv-ctr rpcenv-gcm-v1 rpcenv-ctr-v2 \
                     plain-tcp";

// ---------------------------------------------------------------------------------------
// Options and sizes
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,
}

impl Workload {
    const ALL: [Self; 7] = [
        Self::W1,
        Self::W2,
        Self::W3,
        Self::W4,
        Self::W5,
        Self::W6,
        Self::W7,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::W1 => "W1",
            Self::W2 => "W2",
            Self::W3 => "W3",
            Self::W4 => "W4",
            Self::W5 => "W5",
            Self::W6 => "W6",
            Self::W7 => "W7",
        }
    }
}

/// Which workloads a system runs when no `--system` is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultRun {
    /// Every workload.
    All,
    /// [`ENCRYPTED_WORKLOADS`]: what encryption changes, in about a minute per system.
    Encrypted,
    /// None: the system runs only when named.
    Named,
}

/// What the encrypted systems run by default: latency, small and medium pipelined
/// requests, large messages. (W4 and W6 run when a system is named; W7's raw idle
/// connections never authenticate, so an encrypted system skips it.)
const ENCRYPTED_WORKLOADS: [Workload; 4] = [Workload::W1, Workload::W2, Workload::W3, Workload::W5];

impl DefaultRun {
    fn includes(self, workload: Workload) -> bool {
        match self {
            Self::All => true,
            Self::Encrypted => ENCRYPTED_WORKLOADS.contains(&workload),
            Self::Named => false,
        }
    }
}

/// How the rpcenv systems carry the payload in `BenchMsg` (`--payload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    /// A plain serde `Vec<u8>` (the default): a sequence, element by element.
    Seq,
    /// [`Bytes`]: serde's bytes, as `serde_bytes::ByteBuf` (the length, then one copy).
    Bytes,
    /// [`SharedBytes`]: serde's bytes on the wire; received, a view of the frame (no copy).
    Shared,
}

impl PayloadKind {
    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "vec" => Ok(Self::Seq),
            "bytes" => Ok(Self::Bytes),
            "shared" => Ok(Self::Shared),
            _ => Err(format!(
                "--payload takes vec, bytes or shared, not {value:?}"
            )),
        }
    }

    /// The option's value.
    fn option(self) -> &'static str {
        match self {
            Self::Seq => "vec",
            Self::Bytes => "bytes",
            Self::Shared => "shared",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Seq => "Vec<u8> (serde sequence)",
            Self::Bytes => "serde bytes (as serde_bytes::ByteBuf)",
            Self::Shared => "rpcenv::SharedBytes (a view of the received frame)",
        }
    }
}

#[derive(Debug)]
struct Options {
    workloads: Vec<Workload>,
    quick: bool,
    io_threads: usize,
    /// The systems to run, in this order; empty means each system's default run.
    systems: Vec<String>,
    /// `--conns`: W7's idle connections, instead of the default.
    conns: Option<usize>,
    /// `--payload`: how the rpcenv systems carry the payload.
    payload: PayloadKind,
}

impl Options {
    /// The options, or `None` when only the usage was asked for.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, String> {
        let mut workloads = Vec::new();
        let mut quick = false;
        let mut io_threads = 2;
        let mut systems = Vec::new();
        let mut conns = None;
        let mut payload = PayloadKind::Seq;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => {}
                "--quick" => quick = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                "--threads" => {
                    let value = args.next().ok_or("--threads needs a value")?;
                    io_threads = parse_threads(&value)?;
                }
                "--system" => systems.push(args.next().ok_or("--system needs a name")?),
                _ if arg.starts_with("--system=") => {
                    systems.push(arg["--system=".len()..].to_owned())
                }
                _ if arg.starts_with("--threads=") => {
                    io_threads = parse_threads(&arg["--threads=".len()..])?;
                }
                "--conns" => {
                    let value = args.next().ok_or("--conns needs a value")?;
                    conns = Some(parse_conns(&value)?);
                }
                _ if arg.starts_with("--conns=") => {
                    conns = Some(parse_conns(&arg["--conns=".len()..])?);
                }
                "--payload" => {
                    payload = PayloadKind::parse(&args.next().ok_or("--payload needs a value")?)?;
                }
                _ if arg.starts_with("--payload=") => {
                    payload = PayloadKind::parse(&arg["--payload=".len()..])?;
                }
                _ => {
                    let workload = Workload::ALL
                        .into_iter()
                        .find(|w| w.name().eq_ignore_ascii_case(&arg))
                        .ok_or_else(|| format!("unknown argument {arg:?}"))?;
                    if !workloads.contains(&workload) {
                        workloads.push(workload);
                    }
                }
            }
        }
        if workloads.is_empty() {
            workloads = Workload::ALL.to_vec();
        }
        Ok(Some(Self {
            workloads,
            quick,
            io_threads,
            systems,
            conns,
            payload,
        }))
    }
}

fn parse_conns(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("--conns takes a positive integer, not {value:?}")),
    }
}

fn parse_threads(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("--threads takes a positive integer, not {value:?}")),
    }
}

/// The size of every workload; `--quick` divides each by about ten.
#[derive(Debug)]
struct Scale {
    w1_warmup: usize,
    w1_measured: usize,
    pipe_warmup: Duration,
    pipe_measure: Duration,
    w4_messages: u64,
    w5_warmup: usize,
    w5_measured: usize,
    w6_warmup: Duration,
    w6_measure: Duration,
    w7_conns: usize,
}

impl Scale {
    /// The sizes; `conns` (from `--conns`) overrides W7's idle connections.
    fn new(quick: bool, conns: Option<usize>) -> Self {
        if quick {
            Self {
                w1_warmup: 200,
                w1_measured: 2_000,
                pipe_warmup: Duration::from_millis(100),
                pipe_measure: Duration::from_millis(500),
                w4_messages: 100_000,
                w5_warmup: 1,
                w5_measured: 2,
                w6_warmup: Duration::from_millis(100),
                w6_measure: Duration::from_millis(500),
                w7_conns: conns.unwrap_or(IDLE_CONNS / 10),
            }
        } else {
            Self {
                w1_warmup: 2_000,
                w1_measured: 20_000,
                pipe_warmup: Duration::from_secs(1),
                pipe_measure: Duration::from_secs(5),
                w4_messages: 1_000_000,
                w5_warmup: 3,
                w5_measured: 20,
                w6_warmup: Duration::from_secs(1),
                w6_measure: Duration::from_secs(5),
                w7_conns: conns.unwrap_or(IDLE_CONNS),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct BenchError(String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl BenchError {
    fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Adds what was being done to an error.
trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|err| BenchError(format!("{what}: {err}")))
    }
}

fn join<T>(handle: JoinHandle<Result<T>>, what: &str) -> Result<T> {
    handle.join().map_err(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".to_owned());
        BenchError(format!("{what} panicked: {text}"))
    })?
}

// ---------------------------------------------------------------------------------------
// The systems under test
// ---------------------------------------------------------------------------------------

/// A system under test: it starts echo servers.
trait System {
    fn name(&self) -> &'static str;
    /// Starts a fresh echo server (each workload gets its own, so W4's count starts at 0).
    fn start(&self) -> Result<Box<dyn Server>>;
    /// The workloads it runs when no `--system` is named.
    fn default_run(&self) -> DefaultRun {
        DefaultRun::All
    }
    /// For an encrypted system, the same system in plaintext (its ratio line's base).
    fn plaintext(&self) -> Option<&'static str> {
        None
    }
}

/// The shared secret of every encrypted system.
const BENCH_SECRET: &str = "rpcenv-bench shared secret";

/// The app id of the transport's handshake.
const BENCH_APP_ID: &str = "rpcenv-bench";

/// How an encrypted system protects its connections: Spark's `AuthEngine` handshake with
/// [`BENCH_SECRET`] on every connection, then this channel cipher, keyed as this engine
/// version derives the key.
#[derive(Debug, Clone, Copy)]
struct Encryption {
    cipher: Cipher,
    version: EngineVersion,
}

impl Encryption {
    fn new(cipher: Cipher, version: EngineVersion) -> Self {
        Self { cipher, version }
    }

    /// The value of `rpc.io.encryption.authEngineVersion`.
    fn version_conf(self) -> &'static str {
        match self.version {
            EngineVersion::V1 => "1",
            EngineVersion::V2 => "2",
        }
    }

    /// Adds the keys that turn it on to an rpcenv configuration.
    fn configure(self, conf: RpcConf) -> RpcConf {
        conf.set("rpc.authenticate", "true")
            .set("rpc.authenticate.secret", BENCH_SECRET)
            .set("rpc.io.encryption.enabled", "true")
            .set("rpc.io.encryption.cipher", self.cipher.to_string())
            .set("rpc.io.encryption.authEngineVersion", self.version_conf())
    }

    /// The transport's bootstrap for it.
    fn bootstrap(self) -> AuthBootstrap {
        AuthBootstrap::new(BENCH_APP_ID, BENCH_SECRET)
            .with_encryption(Some(self.cipher))
            .with_engine_version(self.version)
    }
}

/// A running echo server: echoes requests, counts one-way messages, and answers a count
/// request with the number of one-way messages it received.
trait Server {
    /// Opens a new connection to the server, distinct from every other one.
    fn connect(&self) -> Result<Box<dyn Connection>>;
    /// A connection for W6's many callers: an rpcenv server serves them with its
    /// concurrent echo endpoint ([`ConcurrentEchoEndpoint`]).
    fn connect_fan_in(&self) -> Result<Box<dyn Connection>> {
        self.connect()
    }
    /// Stops the server and joins its threads. Close the connections first.
    fn close(self: Box<Self>) -> Result<()>;
    /// Where W7's idle connections (plain `TcpStream`s that never send a byte) go;
    /// `None` when the server cannot take them.
    fn idle_target(&self) -> Option<IdleTarget> {
        None
    }
}

/// The listening socket W7 opens idle connections to.
#[derive(Debug, Clone, Copy)]
struct IdleTarget {
    addr: SocketAddr,
    /// File descriptors one idle connection costs this process: the client's socket and
    /// every descriptor the server holds for it.
    fds_per_conn: u64,
}

/// One client connection. Dropping it closes it too; `close` reports errors.
trait Connection: Send {
    /// A number that tells this connection from the others of the same system.
    fn id(&self) -> u64;
    /// One synchronous round trip; returns the echo (the caller may reuse its buffer).
    fn echo_sync(&mut self, body: Vec<u8>) -> Result<Echoed>;
    /// `plan.window` requests in flight, as long as `plan` says; counts the answers
    /// that arrive inside the measured window.
    fn pipelined(&mut self, plan: &PipePlan) -> Result<u64>;
    /// Sends `messages` one-way messages of `payload` bytes, then one request whose
    /// answer is the server's count of one-way messages; returns that count.
    fn one_way_then_count(&mut self, messages: u64, payload: usize) -> Result<u64>;
    fn close(self: Box<Self>) -> Result<()>;
}

/// What a pipelined run does.
#[derive(Debug, Clone, Copy)]
struct PipePlan {
    payload: usize,
    window: usize,
    warmup: Duration,
    measure: Duration,
}

/// The measured window of a timed run: answers completing in `[warm_end, end)` count.
#[derive(Debug, Clone, Copy)]
struct TimeWindow {
    warm_end: Instant,
    end: Instant,
}

impl TimeWindow {
    fn starting_now(warmup: Duration, measure: Duration) -> Self {
        let now = Instant::now();
        Self {
            warm_end: now + warmup,
            end: now + warmup + measure,
        }
    }
}

/// Counts completions inside a [`TimeWindow`].
#[derive(Debug)]
struct Meter {
    window: TimeWindow,
    counted: u64,
    past_end: bool,
}

impl Meter {
    fn new(window: TimeWindow) -> Self {
        Self {
            window,
            counted: 0,
            past_end: false,
        }
    }

    /// One completion, now.
    fn record(&mut self) {
        let now = Instant::now();
        if now >= self.window.end {
            self.past_end = true;
        } else if now >= self.window.warm_end {
            self.counted += 1;
        }
    }
}

// --- payload stamps ---------------------------------------------------------------------

/// Writes `seq` into the first 8 bytes and, when there is room, the last 8.
fn stamp(body: &mut [u8], seq: u64) {
    let bytes = seq.to_le_bytes();
    let len = body.len();
    if len >= 8 {
        body[..8].copy_from_slice(&bytes);
    }
    if len >= 16 {
        body[len - 8..].copy_from_slice(&bytes);
    }
}

/// Checks an echo: its length, its stamps (equal to `seq` when given, else to each
/// other) and, when `full`, that every other byte is [`FILL`].
fn check_echo(reply: &[u8], len: usize, seq: Option<u64>, full: bool) -> Result<()> {
    if reply.len() != len {
        return Err(BenchError(format!(
            "echo of {} bytes, expected {len}",
            reply.len()
        )));
    }
    if len < 16 {
        return Ok(());
    }
    let head = u64::from_le_bytes(reply[..8].try_into().expect("8 bytes"));
    let tail = u64::from_le_bytes(reply[len - 8..].try_into().expect("8 bytes"));
    if head != tail || seq.is_some_and(|seq| seq != head) {
        return Err(BenchError(format!(
            "echo stamped {head}/{tail}, expected {}",
            seq.map_or_else(|| "equal stamps".to_owned(), |s| s.to_string())
        )));
    }
    if full && reply[8..len - 8].iter().any(|&b| b != FILL) {
        return Err(BenchError::new("echo body differs from the request"));
    }
    Ok(())
}

// --- system=transport -------------------------------------------------------------------

/// `TransportClient` against an echo [`RpcHandler`], one `TransportContext` (and one set
/// of `rpc-io-N` loops) for the server and its clients; with `encryption`, the server and
/// every factory have its [`AuthBootstrap`].
#[derive(Debug)]
struct TransportSystem {
    name: &'static str,
    io_threads: usize,
    encryption: Option<Encryption>,
    default_run: DefaultRun,
}

/// The body of the count request of W4 (its length differs from every echo payload).
const COUNT_REQUEST: &[u8] = b"rpcenv-bench: how many one-way messages?";

/// Echoes requests, counts one-way messages, answers [`COUNT_REQUEST`] with the count.
#[derive(Debug, Default)]
struct EchoHandler {
    one_way: AtomicU64,
}

impl RpcHandler for EchoHandler {
    fn receive(&self, _client: &TransportClient, message: Vec<u8>, responder: Responder) {
        if message.as_slice() == COUNT_REQUEST {
            let count = self.one_way.load(Ordering::SeqCst);
            responder.reply(count.to_le_bytes().to_vec());
        } else {
            responder.reply(message);
        }
    }

    fn receive_one_way(&self, _client: &TransportClient, _message: Vec<u8>) {
        self.one_way.fetch_add(1, Ordering::Relaxed);
    }
}

impl System for TransportSystem {
    fn name(&self) -> &'static str {
        self.name
    }

    fn default_run(&self) -> DefaultRun {
        self.default_run
    }

    fn plaintext(&self) -> Option<&'static str> {
        self.encryption.map(|_| "transport")
    }

    fn start(&self) -> Result<Box<dyn Server>> {
        let conf = RpcConf::new()
            .set("rpc.io.threads", self.io_threads.to_string())
            // W7's idle connections never send a byte (see `RpcEnvSystem::conf`).
            .set("rpc.io.frameTimeout", "0")
            .set("rpc.io.maxConnections", "1048576");
        let conf = TransportConf::from_conf(&conf).context("transport configuration")?;
        let ctx = TransportContext::new(conf, Arc::new(EchoHandler::default()));
        let auth = self.encryption.map(Encryption::bootstrap);
        let server = match &auth {
            None => ctx.create_server("127.0.0.1", 0),
            Some(auth) => ctx.create_server_with_bootstrap("127.0.0.1", 0, auth),
        }
        .context("transport server")?;
        let port = server.port();
        Ok(Box::new(TransportBenchServer {
            ctx,
            server,
            port,
            auth,
        }))
    }
}

#[derive(Debug)]
struct TransportBenchServer {
    ctx: TransportContext,
    server: TransportServer,
    port: u16,
    /// The bootstrap of the server and of every client factory, when encrypted.
    auth: Option<AuthBootstrap>,
}

impl Server for TransportBenchServer {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        // A factory per connection: a factory pools one client per peer by default.
        let factory = match &self.auth {
            None => self.ctx.create_client_factory(),
            Some(auth) => self.ctx.create_client_factory_with_bootstrap(auth),
        };
        let client = factory
            .create_client("127.0.0.1", self.port)
            .context(format_args!("transport connect to 127.0.0.1:{}", self.port))?;
        Ok(Box::new(TransportConnection { factory, client }))
    }

    fn close(self: Box<Self>) -> Result<()> {
        // Closing the server releases the event loops once every factory is closed too;
        // the last release joins the rpc-io threads.
        self.server.close();
        drop(self.ctx);
        Ok(())
    }

    fn idle_target(&self) -> Option<IdleTarget> {
        if self.auth.is_some() {
            // Raw idle connections never authenticate: the server closes them.
            return None;
        }
        Some(IdleTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], self.port)),
            // The client's socket and the one the server accepted.
            fds_per_conn: 2,
        })
    }
}

#[derive(Debug)]
struct TransportConnection {
    factory: TransportClientFactory,
    client: TransportClient,
}

impl TransportConnection {
    /// Sends one request of a pipelined run; its answer goes to `answers`.
    fn send_pipelined(&self, body: Vec<u8>, answers: &Sender<Result<Vec<u8>, RpcError>>) {
        let answers = answers.clone();
        self.client.send_rpc(body, move |result| {
            // An unbounded channel never blocks; it is only disconnected when the run
            // has already failed and stopped listening.
            let _ = answers.send(result);
        });
    }
}

impl Connection for TransportConnection {
    fn id(&self) -> u64 {
        self.client.id()
    }

    fn echo_sync(&mut self, body: Vec<u8>) -> Result<Echoed> {
        self.client
            .send_rpc_sync(body, REPLY_TIMEOUT)
            .map(Echoed::Vec)
            .context("send_rpc_sync")
    }

    fn pipelined(&mut self, plan: &PipePlan) -> Result<u64> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut meter = Meter::new(TimeWindow::starting_now(plan.warmup, plan.measure));
        let mut seq = 0u64;
        for _ in 0..plan.window {
            let mut body = vec![FILL; plan.payload];
            stamp(&mut body, seq);
            seq += 1;
            self.send_pipelined(body, &tx);
        }
        let mut in_flight = plan.window;
        while in_flight > 0 {
            let answer = match rx.recv_timeout(REPLY_TIMEOUT) {
                Ok(answer) => answer,
                Err(err) => {
                    return Err(BenchError(format!(
                        "no answer within {REPLY_TIMEOUT:?} with {in_flight} requests in \
                         flight ({err}); the client has {} outstanding",
                        self.client.outstanding_requests()
                    )));
                }
            };
            in_flight -= 1;
            let mut body = answer.context(format_args!("request (of {seq} sent)"))?;
            check_echo(&body, plan.payload, None, false)?;
            meter.record();
            if !meter.past_end {
                stamp(&mut body, seq);
                seq += 1;
                self.send_pipelined(body, &tx);
                in_flight += 1;
            }
        }
        Ok(meter.counted)
    }

    fn one_way_then_count(&mut self, messages: u64, payload: usize) -> Result<u64> {
        for i in 0..messages {
            self.client
                .send(vec![FILL; payload])
                .context(format_args!("one-way message {i} of {messages}"))?;
        }
        let answer = self
            .client
            .send_rpc_sync(COUNT_REQUEST, COUNT_TIMEOUT)
            .context("count request")?;
        let count: [u8; 8] = answer
            .as_slice()
            .try_into()
            .map_err(|_| BenchError(format!("count answer of {} bytes, not 8", answer.len())))?;
        Ok(u64::from_le_bytes(count))
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.client.close();
        self.factory.close();
        Ok(())
    }
}

// --- system=rpcenv ----------------------------------------------------------------------

/// The RPC layer: a server `RpcEnv` with an echo endpoint, and per connection a
/// client-mode `RpcEnv` of its own (its own transport, hence its own connection) holding
/// a reference to that endpoint from `setup_endpoint_ref`; with `encryption`, every env
/// is configured with its keys.
#[derive(Debug)]
struct RpcEnvSystem {
    name: &'static str,
    io_threads: usize,
    payload: PayloadKind,
    encryption: Option<Encryption>,
    default_run: DefaultRun,
}

/// The name of the echo endpoint.
const ECHO_ENDPOINT: &str = "echo";
/// The name of the concurrent echo endpoint W6 calls on rpcenv servers.
const CONCURRENT_ECHO_ENDPOINT: &str = "echo-concurrent";

/// `rpc.message.maxSize` of every env: room for W5's 16 MiB and its envelope.
const RPC_MAX_MESSAGE: &str = "64m";

/// The messages of the echo endpoint. The payload is a plain serde `Vec<u8>` (bincode
/// writes its length, then the bytes), or with `--payload bytes` [`Bytes`].
#[derive(Debug, Serialize, Deserialize)]
enum BenchMsg {
    /// Asked: answered with the same bytes. Sent one way: counted.
    Echo(Vec<u8>),
    /// As `Echo`, the payload as serde bytes.
    EchoBytes(Bytes),
    /// As `Echo`, the payload as serde bytes that a received message borrows.
    EchoShared(SharedBytes),
    /// Asked: answered with the number of one-way messages received (`u64`).
    Count,
}

/// A payload serde sees as bytes, as `serde_bytes::ByteBuf` (not a dependency here):
/// `serialize_bytes` (bincode writes the length, then the bytes in one copy) and
/// `deserialize_byte_buf`.
#[derive(Debug)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Takes bytes however the format hands them over.
        struct BytesVisitor;

        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = Bytes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte array")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(bytes.to_vec()))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(bytes))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bytes, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(Bytes(bytes))
            }
        }

        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

/// What an echo carries: the payload type asked with and answered in.
trait Payload: Serialize + DeserializeOwned + Send + 'static {
    /// The echo request carrying `body`.
    fn echo(body: Vec<u8>) -> BenchMsg;
    /// The bytes.
    fn into_echoed(self) -> Echoed;
}

impl Payload for Vec<u8> {
    fn echo(body: Vec<u8>) -> BenchMsg {
        BenchMsg::Echo(body)
    }

    fn into_echoed(self) -> Echoed {
        Echoed::Vec(self)
    }
}

impl Payload for Bytes {
    fn echo(body: Vec<u8>) -> BenchMsg {
        BenchMsg::EchoBytes(Self(body))
    }

    fn into_echoed(self) -> Echoed {
        Echoed::Vec(self.0)
    }
}

impl Payload for SharedBytes {
    fn echo(body: Vec<u8>) -> BenchMsg {
        BenchMsg::EchoShared(Self::from(body))
    }

    fn into_echoed(self) -> Echoed {
        Echoed::Shared(self)
    }
}

/// The answer of an echo: its own buffer, or (`--payload shared`) a view of the frame
/// it arrived in.
enum Echoed {
    Vec(Vec<u8>),
    Shared(SharedBytes),
}

impl Echoed {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Vec(body) => body,
            Self::Shared(body) => body,
        }
    }

    /// The bytes as a buffer to stamp and send again: a copy for a view (W1 and W5 make
    /// it outside their timing; W3 and W6 count it).
    fn into_vec(self) -> Vec<u8> {
        match self {
            Self::Vec(body) => body,
            Self::Shared(body) => body.to_vec(),
        }
    }
}

/// Echoes asks, counts one-way messages, answers [`BenchMsg::Count`] with the count.
#[derive(Debug, Default)]
struct EchoEndpoint {
    one_way: u64,
}

impl RpcEndpoint for EchoEndpoint {
    type Message = BenchMsg;

    fn receive(&mut self, _msg: BenchMsg, _ctx: &EndpointContext<BenchMsg>) {
        self.one_way += 1;
    }

    fn receive_and_reply(
        &mut self,
        msg: BenchMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            BenchMsg::Echo(body) => reply.reply(body),
            BenchMsg::EchoBytes(body) => reply.reply(body),
            BenchMsg::EchoShared(body) => reply.reply(body),
            BenchMsg::Count => reply.reply(self.one_way),
        }
    }
}

/// Echoes asks on as many dispatcher threads at once as there are callers (W6).
#[derive(Debug, Default)]
struct ConcurrentEchoEndpoint;

impl ConcurrentRpcEndpoint for ConcurrentEchoEndpoint {
    type Message = BenchMsg;

    fn receive_and_reply(
        &self,
        msg: BenchMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            BenchMsg::Echo(body) => reply.reply(body),
            BenchMsg::EchoBytes(body) => reply.reply(body),
            BenchMsg::EchoShared(body) => reply.reply(body),
            BenchMsg::Count => reply.send_failure("the concurrent echo counts nothing"),
        }
    }
}

impl RpcEnvSystem {
    /// The configuration of the server env and of every client env.
    fn conf(&self) -> RpcConf {
        let conf = RpcConf::new()
            .set("rpc.io.threads", self.io_threads.to_string())
            .set("rpc.message.maxSize", RPC_MAX_MESSAGE)
            // Bounds every `ask_sync` and `Pending::wait` of the bench.
            .set("rpc.askTimeout", format!("{}s", REPLY_TIMEOUT.as_secs()))
            // W7's idle connections never send a byte: they stay open however long W7
            // takes (by default a connection silent since it connected is closed), and
            // however many there are (W7 raises the open-file limit only after the env,
            // whose default cap follows that limit, is built).
            .set("rpc.io.frameTimeout", "0")
            .set("rpc.io.maxConnections", "1048576");
        match self.encryption {
            Some(encryption) => encryption.configure(conf),
            None => conf,
        }
    }
}

impl System for RpcEnvSystem {
    fn name(&self) -> &'static str {
        self.name
    }

    fn default_run(&self) -> DefaultRun {
        self.default_run
    }

    fn plaintext(&self) -> Option<&'static str> {
        self.encryption.map(|_| "rpcenv")
    }

    fn start(&self) -> Result<Box<dyn Server>> {
        let conf = self.conf();
        let env = RpcEnv::builder("bench-server")
            .bind_address("127.0.0.1")
            .port(0)
            .conf(conf.clone())
            .build()
            .context("server env")?;
        env.setup_endpoint(ECHO_ENDPOINT, EchoEndpoint::default())
            .context("echo endpoint")?;
        env.setup_concurrent_endpoint(CONCURRENT_ECHO_ENDPOINT, ConcurrentEchoEndpoint)
            .context("concurrent echo endpoint")?;
        let address = env
            .address()
            .ok_or_else(|| BenchError::new("the server env has no address"))?;
        Ok(Box::new(RpcEnvServer {
            env,
            address,
            conf,
            payload: self.payload,
            encrypted: self.encryption.is_some(),
        }))
    }
}

#[derive(Debug)]
struct RpcEnvServer {
    env: RpcEnv,
    address: RpcAddress,
    conf: RpcConf,
    payload: PayloadKind,
    encrypted: bool,
}

impl RpcEnvServer {
    /// A client-mode env of its own (its own connection) with a reference to `endpoint`.
    fn connect_to(&self, endpoint: &str) -> Result<Box<dyn Connection>> {
        // Every client env is its own connection; the number tells them apart.
        static NEXT_CLIENT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        let env = RpcEnv::builder(format!("bench-client-{id}"))
            .conf(self.conf.clone())
            .client_mode(true)
            .build()
            .context("client-mode env")?;
        // Looks the endpoint up over the connection the asks then use.
        let echo = env
            .setup_endpoint_ref::<BenchMsg>(&self.address, endpoint)
            .context(format_args!("setup_endpoint_ref to {}", self.address))?;
        Ok(Box::new(RpcEnvConnection {
            env,
            echo,
            id,
            payload: self.payload,
        }))
    }
}

impl Server for RpcEnvServer {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        self.connect_to(ECHO_ENDPOINT)
    }

    fn connect_fan_in(&self) -> Result<Box<dyn Connection>> {
        self.connect_to(CONCURRENT_ECHO_ENDPOINT)
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.env.shutdown();
        Ok(())
    }

    fn idle_target(&self) -> Option<IdleTarget> {
        if self.encrypted {
            // Raw idle connections never authenticate: the server closes them.
            return None;
        }
        Some(IdleTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], self.address.port())),
            // The client's socket and the one the server env accepted.
            fds_per_conn: 2,
        })
    }
}

#[derive(Debug)]
struct RpcEnvConnection {
    env: RpcEnv,
    echo: RpcEndpointRef<BenchMsg>,
    id: u64,
    payload: PayloadKind,
}

impl RpcEnvConnection {
    fn echo_sync_as<P: Payload>(&self, body: Vec<u8>) -> Result<Echoed> {
        self.echo
            .ask_sync::<P>(P::echo(body))
            .map(P::into_echoed)
            .context("ask_sync")
    }

    fn pipelined_as<P: Payload>(&self, plan: &PipePlan) -> Result<u64> {
        let mut meter = Meter::new(TimeWindow::starting_now(plan.warmup, plan.measure));
        // The asks in flight, oldest first: wait for the oldest, then ask again.
        let mut in_flight: VecDeque<Pending<P>> = VecDeque::with_capacity(plan.window);
        let mut seq = 0u64;
        for _ in 0..plan.window {
            let mut body = vec![FILL; plan.payload];
            stamp(&mut body, seq);
            seq += 1;
            in_flight.push_back(self.echo.ask(P::echo(body)));
        }
        while let Some(oldest) = in_flight.pop_front() {
            let echoed = oldest
                .wait()
                .map(P::into_echoed)
                .context(format_args!("ask (of {seq} sent)"))?;
            check_echo(echoed.bytes(), plan.payload, None, false)?;
            let mut body = echoed.into_vec();
            meter.record();
            if !meter.past_end {
                stamp(&mut body, seq);
                seq += 1;
                in_flight.push_back(self.echo.ask(P::echo(body)));
            }
        }
        Ok(meter.counted)
    }

    fn one_way_then_count_as<P: Payload>(&self, messages: u64, payload: usize) -> Result<u64> {
        for i in 0..messages {
            self.echo
                .send(P::echo(vec![FILL; payload]))
                .context(format_args!("one-way message {i} of {messages}"))?;
        }
        self.echo
            .ask_timeout::<u64>(BenchMsg::Count, COUNT_TIMEOUT)
            .wait()
            .context("count ask")
    }
}

impl Connection for RpcEnvConnection {
    fn id(&self) -> u64 {
        self.id
    }

    fn echo_sync(&mut self, body: Vec<u8>) -> Result<Echoed> {
        match self.payload {
            PayloadKind::Seq => self.echo_sync_as::<Vec<u8>>(body),
            PayloadKind::Bytes => self.echo_sync_as::<Bytes>(body),
            PayloadKind::Shared => self.echo_sync_as::<SharedBytes>(body),
        }
    }

    fn pipelined(&mut self, plan: &PipePlan) -> Result<u64> {
        match self.payload {
            PayloadKind::Seq => self.pipelined_as::<Vec<u8>>(plan),
            PayloadKind::Bytes => self.pipelined_as::<Bytes>(plan),
            PayloadKind::Shared => self.pipelined_as::<SharedBytes>(plan),
        }
    }

    fn one_way_then_count(&mut self, messages: u64, payload: usize) -> Result<u64> {
        match self.payload {
            PayloadKind::Seq => self.one_way_then_count_as::<Vec<u8>>(messages, payload),
            PayloadKind::Bytes => self.one_way_then_count_as::<Bytes>(messages, payload),
            PayloadKind::Shared => self.one_way_then_count_as::<SharedBytes>(messages, payload),
        }
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.env.shutdown();
        Ok(())
    }
}

// --- system=plain-tcp -------------------------------------------------------------------

/// The baseline: blocking `std::net::TcpStream`s with `TCP_NODELAY`, frames of an 8-byte
/// length, an 8-byte request id and the body (big endian), one server thread per
/// connection that echoes through a `BufReader` and a `BufWriter`, flushing whenever it
/// has no more buffered input.
#[derive(Debug)]
struct PlainTcp;

/// Request id of a one-way frame: counted, not answered.
const ONE_WAY_ID: u64 = u64::MAX;
/// Request id of the count request: answered with the count of one-way frames (8 bytes,
/// little endian).
const COUNT_ID: u64 = u64::MAX - 1;
/// Request id of the frame that ends a pipelined run (echoed like any other).
const END_ID: u64 = u64::MAX - 2;
/// The largest frame body the baseline accepts.
const PLAIN_MAX_BODY: u64 = 1 << 30;

fn write_frame(out: &mut impl Write, id: u64, body: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&(body.len() as u64).to_be_bytes());
    header[8..].copy_from_slice(&id.to_be_bytes());
    out.write_all(&header)?;
    out.write_all(body)
}

/// Reads one frame into `body` (reusing its allocation); returns its request id.
fn read_frame(input: &mut impl Read, body: &mut Vec<u8>) -> io::Result<u64> {
    let mut header = [0u8; 16];
    input.read_exact(&mut header)?;
    let len = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let id = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
    if len > PLAIN_MAX_BODY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame body of {len} bytes (max {PLAIN_MAX_BODY})"),
        ));
    }
    body.resize(len as usize, 0);
    input.read_exact(body)?;
    Ok(id)
}

impl PlainTcp {
    const NAME: &'static str = "plain-tcp";
}

impl System for PlainTcp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn start(&self) -> Result<Box<dyn Server>> {
        let listener = TcpListener::bind("127.0.0.1:0").context("plain-tcp bind")?;
        let addr = listener.local_addr().context("plain-tcp local address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let stop = Arc::clone(&stop);
            let served = Arc::clone(&served);
            thread::Builder::new()
                .name("plain-accept".into())
                .spawn(move || accept_loop(&listener, &stop, &served))
                .context("cannot start the plain-tcp accept thread")?
        };
        Ok(Box::new(PlainServer {
            addr,
            stop,
            acceptor,
            served,
        }))
    }
}

/// A connection the plain-TCP server serves: a handle to shut it, and its thread.
struct Served {
    stream: TcpStream,
    thread: JoinHandle<Result<()>>,
}

#[derive(Debug)]
struct PlainServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<Result<()>>,
    served: Arc<Mutex<Vec<Served>>>,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Accepts until `stop` is set (and one more connection wakes it).
fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    served: &Mutex<Vec<Served>>,
) -> Result<()> {
    for n in 0u64.. {
        let (stream, peer) = listener.accept().context("plain-tcp accept")?;
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let handle = stream.try_clone().context("plain-tcp try_clone")?;
        let thread = thread::Builder::new()
            .name(format!("plain-serve-{n}"))
            .spawn(move || serve(stream).context(format_args!("plain-tcp server for {peer}")))
            .context("cannot start a plain-tcp server thread")?;
        served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Served {
                stream: handle,
                thread,
            });
    }
    Ok(())
}

/// Serves one connection until the client closes it at a frame boundary.
fn serve(stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(PLAIN_BUFFER, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(PLAIN_BUFFER, stream);
    let mut body = Vec::new();
    let mut one_way = 0u64;
    loop {
        if reader.buffer().is_empty() {
            writer.flush()?;
            if reader.fill_buf()?.is_empty() {
                return Ok(());
            }
        }
        match read_frame(&mut reader, &mut body)? {
            ONE_WAY_ID => one_way += 1,
            COUNT_ID => write_frame(&mut writer, COUNT_ID, &one_way.to_le_bytes())?,
            id => write_frame(&mut writer, id, &body)?,
        }
    }
}

impl Server for PlainServer {
    fn connect(&self) -> Result<Box<dyn Connection>> {
        let stream = TcpStream::connect(self.addr).context("plain-tcp connect")?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        // Bounds every wait of the client on a broken server.
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .context("SO_RCVTIMEO")?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .context("SO_SNDTIMEO")?;
        let port = stream
            .local_addr()
            .context("plain-tcp local address")?
            .port();
        let reader =
            BufReader::with_capacity(PLAIN_BUFFER, stream.try_clone().context("try_clone")?);
        let writer =
            BufWriter::with_capacity(PLAIN_BUFFER, stream.try_clone().context("try_clone")?);
        Ok(Box::new(PlainConnection {
            stream,
            reader,
            writer,
            next_id: 0,
            port,
        }))
    }

    fn close(self: Box<Self>) -> Result<()> {
        let mut errors = Vec::new();
        self.stop.store(true, Ordering::Release);
        // Wakes the accept thread, which then sees `stop`.
        if let Err(err) = TcpStream::connect(self.addr) {
            errors.push(format!("cannot wake the accept thread: {err}"));
        }
        if let Err(err) = join(self.acceptor, "the plain-tcp accept thread") {
            errors.push(err.to_string());
        }
        let served =
            std::mem::take(&mut *self.served.lock().unwrap_or_else(PoisonError::into_inner));
        for Served { stream, thread } in served {
            let deadline = Instant::now() + SERVE_EXIT_TIMEOUT;
            while !thread.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if !thread.is_finished() {
                errors.push(format!(
                    "a plain-tcp server thread still ran {SERVE_EXIT_TIMEOUT:?} after close; \
                     shutting its socket"
                ));
                let _ = stream.shutdown(Shutdown::Both);
            }
            if let Err(err) = join(thread, "a plain-tcp server thread") {
                errors.push(err.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BenchError(errors.join("; ")))
        }
    }

    fn idle_target(&self) -> Option<IdleTarget> {
        Some(IdleTarget {
            addr: self.addr,
            // The client's socket; the server's accepted one, the clone it keeps to shut
            // it and the clone its thread reads from.
            fds_per_conn: 4,
        })
    }
}

#[derive(Debug)]
struct PlainConnection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    next_id: u64,
    port: u16,
}

impl Connection for PlainConnection {
    fn id(&self) -> u64 {
        u64::from(self.port)
    }

    fn echo_sync(&mut self, mut body: Vec<u8>) -> Result<Echoed> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.writer, id, &body).context("plain-tcp write")?;
        self.writer.flush().context("plain-tcp flush")?;
        let got = read_frame(&mut self.reader, &mut body).context("plain-tcp read")?;
        if got != id {
            return Err(BenchError(format!(
                "answer to request {got}, expected {id}"
            )));
        }
        Ok(Echoed::Vec(body))
    }

    fn pipelined(&mut self, plan: &PipePlan) -> Result<u64> {
        // Window slots: the reader hands one back per answer, the writer takes one per
        // request. There are never more than `window` of them, so sends never block.
        let (slot_tx, slot_rx) = crossbeam_channel::bounded(plan.window);
        for _ in 0..plan.window {
            slot_tx.try_send(()).context("filling the window")?;
        }
        let window = TimeWindow::starting_now(plan.warmup, plan.measure);
        let stream = self.stream.try_clone().context("try_clone")?;
        let payload = plan.payload;
        let writer = thread::Builder::new()
            .name("plain-pipe-writer".into())
            .spawn(move || {
                let result = pipe_writer(&stream, payload, window.end, &slot_rx);
                if result.is_err() {
                    // Unblocks the reader at once instead of after its read timeout.
                    let _ = stream.shutdown(Shutdown::Both);
                }
                result
            })
            .context("cannot start the plain-tcp writer thread")?;
        let read = pipe_reader(&mut self.reader, payload, window, &slot_tx);
        drop(slot_tx);
        if read.is_err() {
            // Unblocks the writer if it is stuck in a write.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        let sent = join(writer, "the plain-tcp writer thread");
        match (read, sent) {
            (Ok((counted, answered)), Ok(sent)) if answered == sent => Ok(counted),
            (Ok((_, answered)), Ok(sent)) => {
                Err(BenchError(format!("{answered} answers to {sent} requests")))
            }
            (Ok(_), Err(err)) => Err(err),
            (Err(err), Ok(_)) => Err(err),
            (Err(read), Err(write)) => Err(BenchError(format!("{read}; {write}"))),
        }
    }

    fn one_way_then_count(&mut self, messages: u64, payload: usize) -> Result<u64> {
        let body = vec![FILL; payload];
        for i in 0..messages {
            write_frame(&mut self.writer, ONE_WAY_ID, &body)
                .context(format_args!("one-way message {i} of {messages}"))?;
        }
        write_frame(&mut self.writer, COUNT_ID, &[]).context("count request")?;
        self.writer.flush().context("plain-tcp flush")?;
        let mut answer = Vec::new();
        let id = read_frame(&mut self.reader, &mut answer).context("count answer")?;
        let count: [u8; 8] = answer
            .as_slice()
            .try_into()
            .map_err(|_| BenchError(format!("count answer of {} bytes, not 8", answer.len())))?;
        if id != COUNT_ID {
            return Err(BenchError(format!("count answer with request id {id}")));
        }
        Ok(u64::from_le_bytes(count))
    }

    fn close(self: Box<Self>) -> Result<()> {
        let Self {
            stream,
            reader,
            mut writer,
            ..
        } = *self;
        writer.flush().context("plain-tcp flush")?;
        if !reader.buffer().is_empty() {
            return Err(BenchError::new(
                "plain-tcp connection closed with unread input",
            ));
        }
        stream
            .shutdown(Shutdown::Both)
            .context("plain-tcp shutdown")
    }
}

/// Writes requests while it holds window slots, flushing whenever it runs out of them,
/// until `end`; then the end frame. Returns the number of requests sent.
fn pipe_writer(
    stream: &TcpStream,
    payload: usize,
    end: Instant,
    slots: &Receiver<()>,
) -> Result<u64> {
    let mut out = BufWriter::with_capacity(PLAIN_BUFFER, stream);
    let mut body = vec![FILL; payload];
    let mut sent = 0u64;
    loop {
        match slots.try_recv() {
            Ok(()) => {}
            Err(TryRecvError::Empty) => {
                out.flush().context("plain-tcp flush")?;
                match slots.recv_timeout(REPLY_TIMEOUT) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(BenchError(format!(
                            "no answer freed a window slot within {REPLY_TIMEOUT:?}"
                        )));
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(BenchError::new("the reader stopped"));
                    }
                }
            }
            Err(TryRecvError::Disconnected) => return Err(BenchError::new("the reader stopped")),
        }
        if Instant::now() >= end {
            break;
        }
        stamp(&mut body, sent);
        write_frame(&mut out, sent, &body).context("plain-tcp write")?;
        sent += 1;
    }
    write_frame(&mut out, END_ID, &[]).context("plain-tcp write")?;
    out.flush().context("plain-tcp flush")?;
    Ok(sent)
}

/// Reads answers until the end frame, handing a window slot back for each. Returns the
/// answers counted in the measured window and all answers.
fn pipe_reader(
    input: &mut BufReader<TcpStream>,
    payload: usize,
    window: TimeWindow,
    slots: &Sender<()>,
) -> Result<(u64, u64)> {
    let mut meter = Meter::new(window);
    let mut body = Vec::with_capacity(payload);
    let mut answered = 0u64;
    loop {
        let id = read_frame(input, &mut body).context("plain-tcp read")?;
        if id == END_ID {
            break;
        }
        check_echo(&body, payload, None, false)?;
        answered += 1;
        meter.record();
        match slots.try_send(()) {
            Ok(()) => {}
            Err(TrySendError::Full(())) => {
                return Err(BenchError::new("more answers than requests in the window"));
            }
            // The writer is done: it sent the end frame, or failed and shut the
            // stream (the next read fails, and joining it reports why).
            Err(TrySendError::Disconnected(())) => {}
        }
    }
    Ok((meter.counted, answered))
}

// ---------------------------------------------------------------------------------------
// The workloads
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Measurement {
    Latency {
        p50_us: f64,
        p99_us: f64,
        mean_us: f64,
    },
    Pipelined {
        req_per_s: f64,
        mb_per_s: Option<f64>,
    },
    OneWay {
        msg_per_s: f64,
        messages: u64,
    },
    Large {
        mb_per_s: f64,
        round_trips: usize,
    },
    FanIn {
        req_per_s: f64,
        connections: usize,
    },
    Idle {
        conns: usize,
        rss_per_conn_kib: f64,
        w1_p50_us: f64,
        w1_p50_idle_free_us: f64,
    },
    /// The workload could not run here (not a failure), and why.
    Skipped {
        reason: String,
    },
    /// The figures a child process printed for this workload and system.
    Relayed {
        figures: String,
    },
}

impl Measurement {
    /// The headline figure of `self` over that of `base`, and its key; `None` for W7
    /// (its targets are absolute) and for a skipped run.
    fn ratio_to(&self, base: &Self) -> Option<(&'static str, f64)> {
        match (self, base) {
            (Self::Latency { p50_us: a, .. }, Self::Latency { p50_us: b, .. }) => {
                Some(("p50", a / b))
            }
            (Self::Pipelined { req_per_s: a, .. }, Self::Pipelined { req_per_s: b, .. })
            | (Self::FanIn { req_per_s: a, .. }, Self::FanIn { req_per_s: b, .. }) => {
                Some(("req_per_s", a / b))
            }
            (Self::OneWay { msg_per_s: a, .. }, Self::OneWay { msg_per_s: b, .. }) => {
                Some(("msg_per_s", a / b))
            }
            (Self::Large { mb_per_s: a, .. }, Self::Large { mb_per_s: b, .. }) => {
                Some(("mb_per_s", a / b))
            }
            (Self::Idle { .. } | Self::Skipped { .. } | Self::Relayed { .. }, _)
            | (_, Self::Skipped { .. } | Self::Relayed { .. }) => None,
            _ => Some(("mismatched", f64::NAN)),
        }
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Idle {
                conns,
                rss_per_conn_kib,
                w1_p50_us,
                w1_p50_idle_free_us,
            } => write!(
                f,
                "conns={conns} rss_per_conn_kib={rss_per_conn_kib:.1} w1_p50_us={w1_p50_us:.1} \
                 w1_p50_idle_free_us={w1_p50_idle_free_us:.1}"
            ),
            Self::Skipped { ref reason } => write!(f, "skipped reason={reason:?}"),
            Self::Relayed { ref figures } => f.write_str(figures),
            Self::Latency {
                p50_us,
                p99_us,
                mean_us,
            } => {
                write!(
                    f,
                    "p50_us={p50_us:.1} p99_us={p99_us:.1} mean_us={mean_us:.1}"
                )
            }
            Self::Pipelined {
                req_per_s,
                mb_per_s: None,
            } => write!(f, "req_per_s={req_per_s:.0}"),
            Self::Pipelined {
                req_per_s,
                mb_per_s: Some(mb),
            } => {
                write!(f, "req_per_s={req_per_s:.0} mb_per_s={mb:.1}")
            }
            Self::OneWay {
                msg_per_s,
                messages,
            } => {
                write!(f, "msg_per_s={msg_per_s:.0} messages={messages}")
            }
            Self::Large {
                mb_per_s,
                round_trips,
            } => {
                write!(f, "mb_per_s={mb_per_s:.1} round_trips={round_trips}")
            }
            Self::FanIn {
                req_per_s,
                connections,
            } => {
                write!(f, "req_per_s={req_per_s:.0} connections={connections}")
            }
        }
    }
}

/// Runs one workload on a fresh server of `system`, then closes the server.
fn run(workload: Workload, system: &dyn System, scale: &Scale) -> Result<Measurement> {
    let server = system.start()?;
    let result = match workload {
        Workload::W1 => latency(server.as_ref(), scale),
        Workload::W2 => pipelined(server.as_ref(), scale, SMALL),
        Workload::W3 => pipelined(server.as_ref(), scale, MEDIUM),
        Workload::W4 => one_way(server.as_ref(), scale),
        Workload::W5 => large(server.as_ref(), scale),
        Workload::W6 => fan_in(server.as_ref(), scale),
        Workload::W7 => idle(server.as_ref(), scale),
    };
    let closed = server.close().context("closing the server");
    match (result, closed) {
        (Ok(measurement), Ok(())) => Ok(measurement),
        (Err(err), Ok(())) => Err(err),
        (Ok(_), Err(err)) => Err(err),
        (Err(err), Err(close)) => Err(BenchError(format!("{err}; then {close}"))),
    }
}

/// W1: synchronous 64-byte round trips on one connection; p50, p99 and mean of the
/// measured ones.
fn latency(server: &dyn Server, scale: &Scale) -> Result<Measurement> {
    let mut conn = server.connect()?;
    let measured = latency_on(conn.as_mut(), scale)?;
    conn.close()?;
    Ok(measured)
}

/// W1's round trips on `conn`, which stays open.
fn latency_on(conn: &mut dyn Connection, scale: &Scale) -> Result<Measurement> {
    let total = scale.w1_warmup + scale.w1_measured;
    let mut samples = Vec::with_capacity(scale.w1_measured);
    let mut body = vec![FILL; SMALL];
    for i in 0..total {
        let seq = i as u64;
        stamp(&mut body, seq);
        let started = Instant::now();
        let reply = conn
            .echo_sync(body)
            .context(format_args!("round trip {i}"))?;
        let took = started.elapsed();
        check_echo(reply.bytes(), SMALL, Some(seq), true)
            .context(format_args!("round trip {i}"))?;
        if i >= scale.w1_warmup {
            samples.push(took);
        }
        body = reply.into_vec();
    }
    samples.sort_unstable();
    let n = samples.len();
    if n == 0 {
        return Err(BenchError::new("no measured round trips"));
    }
    // Nearest rank: the smallest sample at or above the fraction p of all samples.
    let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = samples.iter().sum::<Duration>() / n as u32;
    Ok(Measurement::Latency {
        p50_us: micros(rank(0.50)),
        p99_us: micros(rank(0.99)),
        mean_us: micros(mean),
    })
}

/// W2 (64 bytes) and W3 (4 KiB): one connection, 64 requests in flight; answers per
/// second over the measured window, and for W3 MB/s of request payload.
fn pipelined(server: &dyn Server, scale: &Scale, payload: usize) -> Result<Measurement> {
    let mut conn = server.connect()?;
    let plan = PipePlan {
        payload,
        window: WINDOW,
        warmup: scale.pipe_warmup,
        measure: scale.pipe_measure,
    };
    let counted = conn.pipelined(&plan)?;
    conn.close()?;
    if counted == 0 {
        return Err(BenchError::new(
            "no answer arrived inside the measured window",
        ));
    }
    let req_per_s = counted as f64 / plan.measure.as_secs_f64();
    let mb_per_s = (payload > SMALL).then(|| req_per_s * payload as f64 / 1e6);
    Ok(Measurement::Pipelined {
        req_per_s,
        mb_per_s,
    })
}

/// W4: one-way 64-byte messages, then a count request whose answer must equal their
/// number; messages per second from the first send to that answer.
fn one_way(server: &dyn Server, scale: &Scale) -> Result<Measurement> {
    let mut conn = server.connect()?;
    let messages = scale.w4_messages;
    let started = Instant::now();
    let count = conn.one_way_then_count(messages, SMALL)?;
    let elapsed = started.elapsed();
    conn.close()?;
    if count != messages {
        return Err(BenchError(format!(
            "the receiver counted {count} one-way messages, {messages} were sent"
        )));
    }
    Ok(Measurement::OneWay {
        msg_per_s: messages as f64 / elapsed.as_secs_f64(),
        messages,
    })
}

/// W5: 16 MiB echoes, one at a time; MB/s = payload bytes sent one way by the measured
/// round trips / the sum of their durations (each from send to the whole echo received).
fn large(server: &dyn Server, scale: &Scale) -> Result<Measurement> {
    let mut conn = server.connect()?;
    let mut body = vec![FILL; LARGE];
    let mut measured = Duration::ZERO;
    for i in 0..scale.w5_warmup + scale.w5_measured {
        let seq = i as u64;
        stamp(&mut body, seq);
        let started = Instant::now();
        let reply = conn
            .echo_sync(body)
            .context(format_args!("16 MiB round trip {i}"))?;
        let took = started.elapsed();
        check_echo(reply.bytes(), LARGE, Some(seq), true)
            .context(format_args!("16 MiB round trip {i}"))?;
        if i >= scale.w5_warmup {
            measured += took;
        }
        body = reply.into_vec();
    }
    conn.close()?;
    let bytes = (LARGE * scale.w5_measured) as f64;
    Ok(Measurement::Large {
        mb_per_s: bytes / measured.as_secs_f64() / 1e6,
        round_trips: scale.w5_measured,
    })
}

/// W6: 32 threads, each with its own connection, synchronous 64-byte round trips; the
/// round trips completed by all of them inside the measured window, per second.
fn fan_in(server: &dyn Server, scale: &Scale) -> Result<Measurement> {
    let mut conns = Vec::with_capacity(FAN_IN);
    for i in 0..FAN_IN {
        conns.push(
            server
                .connect_fan_in()
                .context(format_args!("connection {i}"))?,
        );
    }
    let ids: HashSet<u64> = conns.iter().map(|conn| conn.id()).collect();
    if ids.len() != FAN_IN {
        return Err(BenchError(format!(
            "{FAN_IN} connects gave {} distinct connections",
            ids.len()
        )));
    }
    // The callers wait until `go` is dropped; by then `window` is set, unless starting
    // the callers failed, in which case they close their connections and stop.
    let (go, wait_for_go) = crossbeam_channel::bounded::<()>(0);
    let window: Arc<OnceLock<TimeWindow>> = Arc::new(OnceLock::new());
    let mut threads = Vec::with_capacity(FAN_IN);
    let mut spawn_error = None;
    for (i, mut conn) in conns.into_iter().enumerate() {
        let wait_for_go = wait_for_go.clone();
        let window = Arc::clone(&window);
        let spawned = thread::Builder::new()
            .name(format!("w6-caller-{i}"))
            .spawn(move || {
                // Only ever disconnected: nothing is sent on `go`.
                let _ = wait_for_go.recv();
                let Some(&window) = window.get() else {
                    return conn.close().map(|()| 0);
                };
                let mut meter = Meter::new(window);
                let mut body = vec![FILL; SMALL];
                let mut seq = 0u64;
                while !meter.past_end {
                    stamp(&mut body, seq);
                    let reply = conn
                        .echo_sync(body)
                        .context(format_args!("caller {i}, round trip {seq}"))?;
                    check_echo(reply.bytes(), SMALL, Some(seq), false)?;
                    meter.record();
                    body = reply.into_vec();
                    seq += 1;
                }
                conn.close()?;
                Ok(meter.counted)
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(err) => {
                spawn_error = Some(BenchError(format!("cannot start caller thread {i}: {err}")));
                break;
            }
        }
    }
    if spawn_error.is_none() {
        let _ = window.set(TimeWindow::starting_now(scale.w6_warmup, scale.w6_measure));
    }
    drop(go);
    let mut total = 0u64;
    let mut errors = Vec::new();
    for (i, handle) in threads.into_iter().enumerate() {
        match join(handle, &format!("W6 caller thread {i}")) {
            Ok(counted) => total += counted,
            Err(err) => errors.push(err.to_string()),
        }
    }
    if let Some(err) = spawn_error {
        errors.insert(0, err.to_string());
    }
    if !errors.is_empty() {
        return Err(BenchError(errors.join("; ")));
    }
    Ok(Measurement::FanIn {
        req_per_s: total as f64 / scale.w6_measure.as_secs_f64(),
        connections: FAN_IN,
    })
}

/// W7: `scale.w7_conns` idle connections to one server (plain `TcpStream`s that never
/// send a byte, so that the server's side is what is measured), W1 on another connection
/// before and while they are held, and the growth of the process's RSS per idle
/// connection. Skipped, not failed, when the file-descriptor limit is too low.
fn idle(server: &dyn Server, scale: &Scale) -> Result<Measurement> {
    let Some(target) = server.idle_target() else {
        return Ok(Measurement::Skipped {
            reason: "this system takes no raw idle connections (they never authenticate)".into(),
        });
    };
    let conns = scale.w7_conns;
    let need = conns as u64 * target.fds_per_conn + FD_MARGIN;
    if let Some(reason) = raise_fd_limit(need)? {
        return Ok(Measurement::Skipped { reason });
    }
    let p50 = |measured: Measurement| match measured {
        Measurement::Latency { p50_us, .. } => p50_us,
        _ => unreachable!("latency_on measures latency"),
    };
    let mut conn = server.connect()?;
    let idle_free =
        p50(latency_on(conn.as_mut(), scale).context("W1 before the idle connections")?);
    let fds_before = open_fds()?;
    let rss_before = rss_kib()?;
    let mut held = Vec::with_capacity(conns);
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    while held.len() < conns {
        let i = held.len();
        held.push(
            TcpStream::connect(target.addr)
                .context(format_args!("idle connection {i} of {conns}"))?,
        );
        if held.len() % CONNECT_BATCH == 0 || held.len() == conns {
            // Every connection so far is accepted, and its descriptors held, by the server.
            let want = fds_before + held.len() * target.fds_per_conn as usize;
            let mut fds = open_fds()?;
            while fds < want {
                if Instant::now() >= deadline {
                    return Err(BenchError(format!(
                        "{} of {} idle connections accepted after {ACCEPT_TIMEOUT:?}",
                        fds.saturating_sub(fds_before) as u64 / target.fds_per_conn,
                        held.len()
                    )));
                }
                thread::sleep(Duration::from_millis(1));
                fds = open_fds()?;
            }
        }
    }
    let loaded =
        p50(latency_on(conn.as_mut(), scale).context("W1 with the idle connections held")?);
    let rss_after = rss_kib()?;
    drop(held);
    conn.close()?;
    Ok(Measurement::Idle {
        conns,
        rss_per_conn_kib: (rss_after as f64 - rss_before as f64) / conns as f64,
        w1_p50_us: loaded,
        w1_p50_idle_free_us: idle_free,
    })
}

/// Runs W7 for `system` in a fresh process: this bench again, with only W7 and that
/// system. In this process, heap memory that earlier workloads (and other systems' W7)
/// freed but the allocator kept resident would absorb the idle connections' allocations
/// and hide them from the RSS figure.
fn idle_in_child(system: &str, options: &Options, scale: &Scale) -> Result<Measurement> {
    let exe = std::env::current_exe().context("the path of this bench")?;
    let mut command = Command::new(exe);
    command
        .env(W7_CHILD, "1")
        .args(["W7", "--system", system])
        .args(["--conns", &scale.w7_conns.to_string()])
        .args(["--threads", &options.io_threads.to_string()])
        .args(["--payload", options.payload.option()])
        .stderr(Stdio::inherit());
    if options.quick {
        command.arg("--quick");
    }
    let output = command
        .output()
        .context("cannot run W7 in a child process")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let prefix = format!("W7 system={system} ");
    match stdout.lines().find_map(|line| line.strip_prefix(&prefix)) {
        Some(figures) if output.status.success() => Ok(Measurement::Relayed {
            figures: figures.to_owned(),
        }),
        _ => Err(BenchError(format!(
            "the W7 child process ended with {} and printed {:?}",
            output.status,
            stdout.trim()
        ))),
    }
}

/// Makes the soft `RLIMIT_NOFILE` at least `need`; `Some(reason)` when it cannot. There is
/// no libc here: the limits are read from `/proc/self/limits` and the soft one is raised
/// (up to the hard one) with `prlimit(1)`.
fn raise_fd_limit(need: u64) -> Result<Option<String>> {
    let (soft, hard) = fd_limits()?;
    if soft >= need {
        return Ok(None);
    }
    if hard >= need {
        let raised = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={need}:"))
            .status();
        match raised {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("W7: prlimit --nofile={need}: failed ({status})"),
            Err(err) => eprintln!("W7: cannot run prlimit: {err}"),
        }
        let (soft, _) = fd_limits()?;
        if soft >= need {
            eprintln!("W7: raised the soft RLIMIT_NOFILE to {soft}");
            return Ok(None);
        }
    }
    Ok(Some(format!("ulimit -n is {soft}; need {need}+")))
}

/// The soft and hard limits on open files (`u64::MAX` for unlimited).
fn fd_limits() -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("/proc/self/limits")?;
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .ok_or_else(|| BenchError::new("no \"Max open files\" in /proc/self/limits"))?;
    let mut fields = line.split_whitespace().map(|field| match field {
        "unlimited" => Ok(u64::MAX),
        n => n
            .parse::<u64>()
            .map_err(|_| BenchError(format!("bad open-files limit {n:?}"))),
    });
    let mut next = || {
        fields
            .next()
            .unwrap_or_else(|| Err(BenchError::new("short \"Max open files\" line")))
    };
    Ok((next()?, next()?))
}

/// The number of open file descriptors of this process.
fn open_fds() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")
        .context("/proc/self/fd")?
        .count())
}

/// The resident set size of this process, in KiB (`VmRSS` of `/proc/self/status`).
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::new("no VmRSS in /proc/self/status"))
}
