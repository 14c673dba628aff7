//! A stress test of the RPC layer: N clients, each a client-mode env with a connection of
//! its own and a thread of its own, send numbered messages (one-way, asks, or both) to one
//! `stress` endpoint, which checks that every client's messages arrive complete, intact and
//! in order. At the end each client asks the endpoint what it received and compares it
//! with what it sent. A progress bar runs on stderr; the summary, with the process's peak
//! resident set, goes to stdout.
//!
//! ```text
//! cargo run --release --example stress                       # 4 clients x 10000, mixed
//! cargo run --release --example stress -- --clients 8 --messages 100000 --mode ask --window 64
//! cargo run --release --example stress -- --help
//!
//! # Server and clients in separate processes:
//! cargo run --release --example stress -- --serve --port 7078
//! cargo run --release --example stress -- --connect rpc://stress@127.0.0.1:7078
//! ```
//!
//! Exit code: 0 when nothing was lost and order held, 1 otherwise, 2 for bad flags.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};
use rpcenv::{
    EndpointContext, Pending, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcError, Threading,
};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The name of the endpoint the clients talk to.
const ENDPOINT: &str = "stress";

/// How long the final count may take: in `send` mode it waits for the server to work
/// through everything queued before it.
const FINISH_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the progress bar is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The largest `--payload` accepted (the default `rpc.message.maxSize` is 128 MiB).
const MAX_PAYLOAD: usize = 64 << 20;

/// At most this many error messages are kept per client.
const MAX_ERRORS_KEPT: usize = 3;

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// A payload that serializes as one byte string, not as a sequence of `u8`s (serde's
/// form for `Vec<u8>`, which encodes and decodes element by element).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes(v))
    }

    /// For formats that write bytes as a sequence.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            bytes.push(b);
        }
        Ok(Bytes(bytes))
    }
}

/// What the clients send to the `stress` endpoint.
#[derive(Debug, Serialize, Deserialize)]
enum StressMsg {
    /// Message `seq` (0, 1, 2, … across one-way messages and asks alike) of client
    /// `client` of run `run`. As an ask it is answered with an [`Echo`].
    Data {
        run: u64,
        client: u32,
        seq: u64,
        payload: Bytes,
    },
    /// An ask, after the client's last message: answered with its [`Tally`]. `clients`
    /// is the run's number of clients: once all of them have finished, a `--serve`
    /// server prints a line about the run.
    Finish { run: u64, client: u32, clients: u32 },
}

/// The answer to an ask of [`StressMsg::Data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Echo {
    seq: u64,
    len: u64,
}

/// What the server saw of one client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Tally {
    /// Messages received, one-way and asks.
    received: u64,
    one_way: u64,
    asks: u64,
    /// Messages whose sequence number was not the one after the previous message's.
    order_violations: u64,
    /// Messages whose payload was not the expected bytes.
    corrupt: u64,
    /// The first order violation: (expected, got).
    first_violation: Option<(u64, u64)>,
    /// The server process's peak resident set in KiB when it answered (`None`: unknown).
    server_peak_rss_kib: Option<u64>,
    /// The next sequence number expected.
    #[serde(skip)]
    next: u64,
}

/// The byte every payload byte of message `seq` of client `client` is.
fn fill_byte(client: u32, seq: u64) -> u8 {
    (seq as u8) ^ (client as u8).wrapping_mul(37) ^ 0x5a
}

// ---------------------------------------------------------------------------------------
// The server endpoint
// ---------------------------------------------------------------------------------------

/// Checks and counts every client's messages.
struct StressServer {
    clients: HashMap<(u64, u32), Tally>,
    /// Clients of each run that asked for their final count.
    finished: HashMap<u64, u32>,
    /// Print a line when all the clients of a run have finished (`--serve`).
    report_runs: bool,
    threading: Threading,
}

impl StressServer {
    /// One more client of `run` has finished; with `--serve`, the last one prints
    /// `STRESS run … finished: … peak_rss_mib=…` (clients that never connected send
    /// no `Finish`, so such a run prints nothing).
    fn finish(&mut self, run: u64, clients: u32) {
        if !self.report_runs {
            return;
        }
        let done = self.finished.entry(run).or_insert(0);
        *done += 1;
        if *done < clients {
            return;
        }
        self.finished.remove(&run);
        let received: u64 = self
            .clients
            .iter()
            .filter(|((r, _), _)| *r == run)
            .map(|(_, tally)| tally.received)
            .sum();
        println!(
            "STRESS run {run:016x} finished: clients={clients} received={received} \
             peak_rss_mib={}",
            mib(peak_rss_kib())
        );
    }

    /// Checks message `seq` of a client; returns the payload length.
    fn record(&mut self, run: u64, client: u32, seq: u64, payload: &Bytes, ask: bool) -> u64 {
        let tally = self.clients.entry((run, client)).or_default();
        tally.received += 1;
        if ask {
            tally.asks += 1;
        } else {
            tally.one_way += 1;
        }
        if seq != tally.next {
            tally.order_violations += 1;
            if tally.first_violation.is_none() {
                tally.first_violation = Some((tally.next, seq));
                warn!(
                    "run {run:016x} client {client}: expected message {}, got {seq}",
                    tally.next
                );
            }
        }
        tally.next = seq.wrapping_add(1);
        let expected = fill_byte(client, seq);
        if !payload.0.iter().all(|&b| b == expected) {
            tally.corrupt += 1;
            warn!("run {run:016x} client {client}: message {seq} has a corrupt payload");
        }
        payload.0.len() as u64
    }
}

impl RpcEndpoint for StressServer {
    type Message = StressMsg;

    fn receive(&mut self, msg: StressMsg, _ctx: &EndpointContext<StressMsg>) {
        match msg {
            StressMsg::Data {
                run,
                client,
                seq,
                payload,
            } => {
                self.record(run, client, seq, &payload, false);
            }
            StressMsg::Finish { client, .. } => {
                warn!("client {client} sent Finish as a one-way message; it is an ask");
            }
        }
    }

    fn receive_and_reply(
        &mut self,
        msg: StressMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            StressMsg::Data {
                run,
                client,
                seq,
                payload,
            } => {
                let len = self.record(run, client, seq, &payload, true);
                reply.reply(Echo { seq, len });
            }
            StressMsg::Finish {
                run,
                client,
                clients,
            } => {
                let mut tally = self
                    .clients
                    .get(&(run, client))
                    .cloned()
                    .unwrap_or_default();
                tally.server_peak_rss_kib = peak_rss_kib();
                info!(
                    "run {run:016x} client {client}: {} received ({} one-way, {} asks), \
                     {} order violations, {} corrupt",
                    tally.received,
                    tally.one_way,
                    tally.asks,
                    tally.order_violations,
                    tally.corrupt
                );
                reply.reply(tally);
                self.finish(run, clients);
            }
        }
    }

    /// `--threading`: a thread of its own by default (it is the only endpoint, and the
    /// busiest thread of the run), or the shared dispatcher pool.
    fn threading(&self) -> Threading {
        self.threading
    }
}

/// Where and how the server runs.
#[derive(Debug, Clone)]
struct ServerOpts {
    host: String,
    advertise: Option<String>,
    port: u16,
    threading: Threading,
    conf: RpcConf,
    /// Print a line when all the clients of a run have finished (`--serve`).
    report_runs: bool,
}

/// A server env with the `stress` endpoint.
fn start_server(opts: &ServerOpts) -> Result<RpcEnv, RpcError> {
    let mut builder = RpcEnv::builder("stress-server")
        .bind_address(&opts.host)
        .port(opts.port)
        .conf(opts.conf.clone());
    if let Some(advertise) = &opts.advertise {
        builder = builder.advertise_address(advertise);
    }
    let env = builder.build()?;
    let endpoint = StressServer {
        clients: HashMap::new(),
        finished: HashMap::new(),
        report_runs: opts.report_runs,
        threading: opts.threading,
    };
    if let Err(err) = env.setup_endpoint(ENDPOINT, endpoint) {
        env.shutdown();
        return Err(err);
    }
    Ok(env)
}

// ---------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Send,
    Ask,
    Mixed,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Send => "send",
            Self::Ask => "ask",
            Self::Mixed => "mixed",
        })
    }
}

#[derive(Debug, Clone)]
struct RunOpts {
    clients: u32,
    messages: u64,
    payload: usize,
    mode: Mode,
    window: usize,
    connect: Option<String>,
    /// The in-process server (unused with `--connect`).
    server: ServerOpts,
    quiet: bool,
    /// Progress as plain lines rather than a bar.
    progress_lines: bool,
}

#[derive(Debug)]
enum Command {
    Run(RunOpts),
    Serve(ServerOpts),
}

/// The command line, parsed by clap; [`Flags::command`] checks what goes together.
#[derive(Debug, clap::Parser)]
#[command(name = "stress", about = ABOUT, after_help = AFTER_HELP)]
struct Flags {
    /// Client envs, each on its own thread (default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: Option<u32>,
    /// Messages per client (default 10000).
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(0..=u64::MAX / 4096))]
    messages: Option<u64>,
    /// Payload bytes per message; suffixes k and m (KiB, MiB) work (default 64, at most
    /// 64m).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    payload: Option<usize>,
    /// send: one-way messages; ask: asks; mixed: both, half and half in a pseudo-random
    /// order (default mixed).
    #[arg(long, value_name = "MODE", value_parser = ["send", "ask", "mixed"])]
    mode: Option<String>,
    /// Asks in flight per client (default 16).
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u64).range(1..=(1 << 20)))]
    window: Option<u64>,
    /// rpc://stress@HOST:PORT of a `stress --serve` process instead of an in-process
    /// server.
    #[arg(long, value_name = "URI", value_parser = check_uri)]
    connect: Option<String>,
    /// The server endpoint runs on a thread of its own (dedicated) or on the env's shared
    /// dispatcher pool (shared) (default dedicated; not with --connect).
    #[arg(long, value_name = "T", value_parser = ["dedicated", "shared"])]
    threading: Option<String>,
    /// Run only the server endpoint; prints `STRESS serving on rpc://stress@HOST:PORT`,
    /// then a line `STRESS run ID finished: clients=N received=M peak_rss_mib=X` after each
    /// run whose clients all finished; runs until Ctrl-C or SIGTERM (exit 0).
    #[arg(long)]
    serve: bool,
    /// With --serve: the address to bind (default 127.0.0.1).
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// With --serve: the host clients use, as printed (default: H; needed when H is
    /// 0.0.0.0 or ::).
    #[arg(long, value_name = "A")]
    advertise: Option<String>,
    /// With --serve: the port to bind (default 0: any free port).
    #[arg(long, value_name = "P")]
    port: Option<u16>,
    /// An rpcenv setting for every env, e.g. --conf rpc.io.threads=2 (repeatable); client
    /// envs default to rpc.io.threads=1 and rpc.dispatcher.numThreads=1.
    #[arg(long, value_name = "KEY=VALUE")]
    conf: Vec<String>,
    /// No progress bar (there is none either when stderr is not a terminal).
    #[arg(long, conflicts_with = "progress_lines")]
    quiet: bool,
    /// Instead of the bar, a plain line of progress on stderr every second (for logs and
    /// pipes: no `\r` frames), with the same live figures.
    #[arg(long)]
    progress_lines: bool,
}

const ABOUT: &str = "A stress test of rpcenv. Clients, each a client-mode env with its own \
connection and thread, send numbered messages to one endpoint, which checks that each \
client's messages arrive complete, intact and in order; each client then compares the \
server's count with what it sent.

  stress [OPTIONS]                  run clients against an in-process server
  stress [OPTIONS] --connect URI    run clients against `stress --serve`
  stress --serve [--host H] [--port P] [--advertise A] [--threading T]";

const AFTER_HELP: &str = "The summary ends with a line `RESULT lost=0 order_violations=0 \
corrupt=0 bad_replies=0 errors=0 ask_failures=0 peak_rss_mib=X` when all went well: X is \
this process's peak resident set (VmHWM, Linux; `unknown` elsewhere), which covers the \
in-process server; with --connect, `server_peak_rss_mib=Y` follows, the server's peak when \
it gave the final counts. Ask latencies are recorded in an HDR histogram (hdrhistogram, 3 \
significant digits). Exit code: 0 when nothing was lost and order held, 1 otherwise, 2 for \
bad flags. Logs go to stderr; RUST_LOG=info (or debug) shows more.";

/// `64`, `4k` (KiB), `1m` (MiB).
fn parse_size(value: &str) -> Result<usize, String> {
    let text = value.trim().to_ascii_lowercase();
    let (digits, unit) = match text.strip_suffix(['k', 'm']) {
        Some(digits) if text.ends_with('k') => (digits, 1usize << 10),
        Some(digits) => (digits, 1 << 20),
        None => (text.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or_else(|| {
            format!("a size in bytes from 0 to {MAX_PAYLOAD} (64m) is expected, e.g. 64, 4k or 1m")
        })
}

impl Flags {
    /// What to run, or a message about flags that do not go together.
    fn command(self) -> Result<Command, String> {
        let mut conf = RpcConf::new();
        for item in &self.conf {
            let Some((key, val)) = item.split_once('=') else {
                return Err(format!("--conf takes KEY=VALUE, not '{item}'"));
            };
            conf.insert(key.trim(), val.trim());
            if let Err(err) = conf.validate() {
                return Err(format!("--conf {item}: {err:#}"));
            }
        }
        let threading = match self.threading.as_deref() {
            Some("shared") => Threading::Shared,
            _ => Threading::Dedicated,
        };
        let server = ServerOpts {
            host: "127.0.0.1".into(),
            advertise: None,
            port: 0,
            threading,
            conf,
            report_runs: false,
        };
        if self.serve {
            let client_flags = [
                ("--clients", self.clients.is_some()),
                ("--messages", self.messages.is_some()),
                ("--payload", self.payload.is_some()),
                ("--mode", self.mode.is_some()),
                ("--window", self.window.is_some()),
                ("--connect", self.connect.is_some()),
                ("--quiet", self.quiet),
                ("--progress-lines", self.progress_lines),
            ];
            if let Some((flag, _)) = client_flags.iter().find(|(_, given)| *given) {
                return Err(format!("{flag} does not go with --serve"));
            }
            return Ok(Command::Serve(ServerOpts {
                host: self.host.unwrap_or_else(|| "127.0.0.1".into()),
                advertise: self.advertise,
                port: self.port.unwrap_or(0),
                report_runs: true,
                ..server
            }));
        }
        if self.threading.is_some() && self.connect.is_some() {
            return Err(
                "--threading does not go with --connect: give it to `stress --serve`".into(),
            );
        }
        for (flag, given) in [
            ("--host", self.host.is_some()),
            ("--advertise", self.advertise.is_some()),
            ("--port", self.port.is_some()),
        ] {
            if given {
                return Err(format!("{flag} only goes with --serve"));
            }
        }
        Ok(Command::Run(RunOpts {
            clients: self.clients.unwrap_or(4),
            messages: self.messages.unwrap_or(10_000),
            payload: self.payload.unwrap_or(64),
            mode: match self.mode.as_deref() {
                Some("send") => Mode::Send,
                Some("ask") => Mode::Ask,
                _ => Mode::Mixed,
            },
            window: usize::try_from(self.window.unwrap_or(16)).unwrap_or(usize::MAX),
            connect: self.connect,
            server,
            quiet: self.quiet,
            progress_lines: self.progress_lines,
        }))
    }
}

/// `rpc://name@host:port` (or `spark://`); the library checks the rest when it connects.
fn check_uri(uri: &str) -> Result<String, String> {
    let ok = uri
        .strip_prefix("rpc://")
        .or_else(|| uri.strip_prefix("spark://"))
        .and_then(|rest| rest.split_once('@'))
        .and_then(|(name, addr)| {
            let (_, port) = addr.rsplit_once(':')?;
            (!name.is_empty() && port.parse::<u16>().is_ok()).then_some(())
        })
        .is_some();
    if ok {
        Ok(uri.to_owned())
    } else {
        Err("expected rpc://NAME@HOST:PORT (as printed by `stress --serve`)".to_owned())
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// What one client did and heard.
#[derive(Debug, Default)]
struct ClientReport {
    id: u32,
    one_way: u64,
    asks: u64,
    /// Asks that ended in an error.
    ask_failures: u64,
    /// Echoes with the wrong sequence number or length.
    bad_replies: u64,
    /// Round trips of the asks that were answered.
    latency: Latency,
    /// The server's count for this client; `None` if it could not be had.
    tally: Option<Tally>,
    /// Errors of any kind (connect, send, ask, final count).
    errors: u64,
    error_messages: Vec<String>,
    /// When the final count came back.
    finished: Option<Instant>,
}

impl ClientReport {
    fn error(&mut self, what: &str, err: &RpcError) {
        self.errors += 1;
        if self.error_messages.len() < MAX_ERRORS_KEPT {
            self.error_messages.push(format!("{what}: {err:#}"));
        }
    }

    fn sent(&self) -> u64 {
        self.one_way + self.asks
    }

    /// Messages sent that the server did not count.
    fn lost(&self) -> u64 {
        let received = self.tally.as_ref().map_or(0, |t| t.received);
        self.sent().saturating_sub(received)
    }
}

/// A small deterministic generator for the mixed mode's choice.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// An ask under way.
struct InFlight {
    seq: u64,
    started: Instant,
    pending: Pending<Echo>,
}

/// Counts finished messages for the progress bar, a batch at a time.
struct Progress<'a> {
    shared: &'a AtomicU64,
    local: u64,
}

impl Progress<'_> {
    fn add(&mut self, n: u64) {
        self.local += n;
        if self.local >= 64 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.shared.fetch_add(self.local, Ordering::Relaxed);
        self.local = 0;
    }
}

struct ClientSetup<'a> {
    id: u32,
    run: u64,
    uri: &'a str,
    opts: &'a RunOpts,
    start: &'a Barrier,
    progress: &'a AtomicU64,
    /// Asks sent and not yet answered, of every client (for the progress bar).
    asks_in_flight: &'a AtomicU64,
}

/// The start line: every client passes it once, connected or not, and so does one that
/// panics before it (on drop), so the barrier always opens.
struct StartGate<'a> {
    barrier: &'a Barrier,
    passed: bool,
}

impl StartGate<'_> {
    fn pass(&mut self) {
        if !self.passed {
            self.passed = true;
            self.barrier.wait();
        }
    }
}

impl Drop for StartGate<'_> {
    fn drop(&mut self) {
        self.pass();
    }
}

/// One client: its own env and connection; sends its messages, then asks for its tally.
fn run_client(setup: &ClientSetup<'_>) -> ClientReport {
    let ClientSetup {
        id, run, uri, opts, ..
    } = *setup;
    let mut gate = StartGate {
        barrier: setup.start,
        passed: false,
    };
    let mut report = ClientReport {
        id,
        ..ClientReport::default()
    };
    let connected = RpcEnv::builder(format!("stress-client-{id}"))
        .client_mode(true)
        .conf(client_conf(&opts.server.conf))
        .build()
        .and_then(
            |env| match env.setup_endpoint_ref_by_uri::<StressMsg>(uri) {
                Ok(target) => Ok((env, target)),
                Err(err) => {
                    env.shutdown();
                    Err(err)
                }
            },
        );
    // Everyone starts together, connected or not (a failed client must not hold up the
    // others at the barrier).
    gate.pass();
    let (env, target) = match connected {
        Ok(connected) => connected,
        Err(err) => {
            report.error(&format!("connecting to {uri}"), &err);
            return report;
        }
    };
    send_all(&target, setup, &mut report);
    let finish = StressMsg::Finish {
        run,
        client: id,
        clients: opts.clients,
    };
    match target.ask_sync_timeout::<Tally>(finish, FINISH_TIMEOUT) {
        Ok(tally) => report.tally = Some(tally),
        Err(err) => report.error("asking for the final count", &err),
    }
    report.finished = Some(Instant::now());
    env.shutdown();
    env.await_termination();
    report
}

/// The sending loop of one client.
fn send_all(
    target: &RpcEndpointRef<StressMsg>,
    setup: &ClientSetup<'_>,
    report: &mut ClientReport,
) {
    let ClientSetup { id, run, opts, .. } = *setup;
    let mut progress = Progress {
        shared: setup.progress,
        local: 0,
    };
    let mut window: VecDeque<InFlight> = VecDeque::with_capacity(opts.window);
    let mut choice =
        XorShift(0x9e37_79b9_7f4a_7c15 ^ (u64::from(id) + 1).wrapping_mul(0xff51_afd7_ed55_8ccd));
    let expected_len = opts.payload as u64;
    let in_flight = setup.asks_in_flight;
    let complete = |flight: InFlight, report: &mut ClientReport, progress: &mut Progress<'_>| {
        let outcome = flight.pending.wait();
        in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(echo) => {
                report.latency.record(flight.started.elapsed());
                let expected = Echo {
                    seq: flight.seq,
                    len: expected_len,
                };
                if echo != expected {
                    report.bad_replies += 1;
                    if report.bad_replies == 1 {
                        warn!("client {id}: ask {} was answered with {echo:?}", flight.seq);
                    }
                }
            }
            Err(err) => {
                report.ask_failures += 1;
                report.error(&format!("ask {}", flight.seq), &err);
            }
        }
        progress.add(1);
    };
    for seq in 0..opts.messages {
        let ask = match opts.mode {
            Mode::Send => false,
            Mode::Ask => true,
            Mode::Mixed => choice.next() >> 63 == 1,
        };
        let msg = StressMsg::Data {
            run,
            client: id,
            seq,
            payload: Bytes(vec![fill_byte(id, seq); opts.payload]),
        };
        if ask {
            while window.len() >= opts.window {
                let flight = window.pop_front().expect("the window is not empty");
                complete(flight, report, &mut progress);
            }
            let started = Instant::now();
            let pending = target.ask::<Echo>(msg);
            in_flight.fetch_add(1, Ordering::Relaxed);
            report.asks += 1;
            window.push_back(InFlight {
                seq,
                started,
                pending,
            });
        } else {
            match target.send(msg) {
                Ok(()) => {
                    report.one_way += 1;
                    progress.add(1);
                }
                Err(err) => {
                    // The connection or the env is gone: what follows would fail too.
                    report.error(&format!("send {seq}"), &err);
                    break;
                }
            }
        }
    }
    while let Some(flight) = window.pop_front() {
        complete(flight, report, &mut progress);
    }
    progress.flush();
}

/// The configuration of a client env: one I/O thread and one dispatcher thread (a
/// client env has one connection and no endpoints), unless `--conf` says otherwise.
fn client_conf(user: &RpcConf) -> RpcConf {
    let mut conf = RpcConf::new()
        .set("rpc.io.threads", "1")
        .set("rpc.dispatcher.numThreads", "1");
    for (key, value) in user.iter() {
        conf.insert(key, value);
    }
    conf
}

/// A run id: tells runs apart on a `--serve` server that outlives them.
fn run_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

// ---------------------------------------------------------------------------------------
// Progress bar
// ---------------------------------------------------------------------------------------

/// Draws a progress bar (`indicatif`) on stderr every [`PROGRESS_EVERY`] until `stop` says
/// so (or is dropped), then the last state; `live` gives the text next to it (asks in
/// flight, queue depths from the env's metrics). Only started when stderr is a terminal: a
/// pipe or a file gets no frames.
fn report_progress(
    done: &AtomicU64,
    total: u64,
    stop: &mpsc::Receiver<()>,
    live: &dyn Fn() -> String,
) {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{bar:30}] {percent:>3}% {pos}/{len} {per_sec} {elapsed_precise} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("#>."),
    );
    loop {
        let finished = match stop.recv_timeout(PROGRESS_EVERY) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        };
        bar.set_position(done.load(Ordering::Relaxed));
        bar.set_message(live());
        if finished {
            bar.finish();
            return;
        }
    }
}

/// `--progress-lines`: `STRESS progress 53% 3180/6000 msg, asks in flight 12, …` on
/// stderr every second until `stop` says so, then the last state.
fn report_lines(
    done: &AtomicU64,
    total: u64,
    stop: &mpsc::Receiver<()>,
    live: &dyn Fn() -> String,
) {
    loop {
        let finished = match stop.recv_timeout(Duration::from_secs(1)) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        };
        let count = done.load(Ordering::Relaxed);
        let percent = (count.min(total) * 100).checked_div(total).unwrap_or(100);
        eprintln!("STRESS progress {percent}% {count}/{total} msg, {}", live());
        if finished {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------

/// Ask latencies in µs, in an HDR histogram (3 significant digits: within 0.1 %), so a
/// run of any length needs the same few tens of kilobytes per client.
#[derive(Debug, Clone)]
struct Latency(hdrhistogram::Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(hdrhistogram::Histogram::new(3).expect("3 significant digits are allowed"))
    }
}

impl Latency {
    fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us);
    }

    fn merge(&mut self, other: &Self) {
        if let Err(err) = self.0.add(&other.0) {
            warn!("latencies of a client left out: {err:?}");
        }
    }

    fn total(&self) -> u64 {
        self.0.len()
    }

    fn max(&self) -> u64 {
        self.0.max()
    }

    /// The value at quantile `q`, never above the maximum seen.
    fn percentile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q).min(self.0.max())
    }
}

/// `1 client`, `4 clients`.
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The peak resident set of this process in KiB (`VmHWM` in `/proc/self/status`; Linux
/// only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// KiB as MiB with one decimal, or `unknown`.
fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "unknown".to_owned(),
        |kib| format!("{:.1}", kib as f64 / 1024.0),
    )
}

/// The `write`/`writev` system calls this process made, from `/proc/self/io` (Linux
/// only; `recvfrom`, which the transport reads with, is not counted there). With an
/// in-process server it covers both sides of every connection.
fn write_syscalls() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Prints the summary; returns whether the run passed.
fn summarize(opts: &RunOpts, target: &str, reports: &[ClientReport], elapsed: Duration) -> bool {
    let one_way: u64 = reports.iter().map(|r| r.one_way).sum();
    let asks: u64 = reports.iter().map(|r| r.asks).sum();
    let total = one_way + asks;
    let received: u64 = reports
        .iter()
        .filter_map(|r| r.tally.as_ref())
        .map(|t| t.received)
        .sum();
    let lost: u64 = reports.iter().map(ClientReport::lost).sum();
    // A message counted more often than it was sent is out of order too.
    let extra: u64 = reports
        .iter()
        .map(|r| {
            r.tally
                .as_ref()
                .map_or(0, |t| t.received.saturating_sub(r.sent()))
        })
        .sum();
    let order_violations: u64 = reports
        .iter()
        .filter_map(|r| r.tally.as_ref())
        .map(|t| t.order_violations)
        .sum::<u64>()
        + extra;
    let corrupt: u64 = reports
        .iter()
        .filter_map(|r| r.tally.as_ref())
        .map(|t| t.corrupt)
        .sum();
    let bad_replies: u64 = reports.iter().map(|r| r.bad_replies).sum();
    let ask_failures: u64 = reports.iter().map(|r| r.ask_failures).sum();
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let mut latency = Latency::default();
    for report in reports {
        latency.merge(&report.latency);
    }

    let secs = elapsed.as_secs_f64().max(1e-9);
    println!("STRESS summary");
    println!("  target        {target}");
    println!(
        "  setup         mode {}, {} x {} messages, payload {} B, window {}{}",
        opts.mode,
        plural(u64::from(opts.clients), "client"),
        opts.messages,
        opts.payload,
        opts.window,
        match (&opts.connect, opts.server.threading) {
            (Some(_), _) => "",
            (None, Threading::Dedicated) => ", endpoint on a dedicated thread",
            (None, Threading::Shared) => ", endpoint on the shared dispatcher",
        }
    );
    let planned = u64::from(opts.clients) * opts.messages;
    let unsent = if total < planned {
        format!(" of {planned} planned")
    } else {
        String::new()
    };
    println!(
        "  messages      {total} sent{unsent} ({one_way} one-way, {asks} asks), {received} received"
    );
    println!("  elapsed       {secs:.3} s");
    if received == 0 {
        println!("  throughput    n/a (nothing received)");
    } else {
        // What arrived, not what was sent: a run that lost messages does not look fast.
        let received_mb = received as f64 * opts.payload as f64 / 1e6;
        println!(
            "  throughput    {:.0} msg/s, {:.2} MB/s of payload (received)",
            received as f64 / secs,
            received_mb / secs
        );
    }
    if latency.total() == 0 {
        println!("  ask latency   n/a (no asks answered)");
    } else {
        println!(
            "  ask latency   p50 {} us, p90 {} us, p99 {} us, max {} us ({} asks)",
            latency.percentile(0.50),
            latency.percentile(0.90),
            latency.percentile(0.99),
            latency.max(),
            latency.total()
        );
    }
    let peak = peak_rss_kib();
    // With --connect the server is another process: its peak comes with the final counts
    // (the largest, as the clients finish at different times).
    let server_peak = opts.connect.as_ref().map(|_| {
        reports
            .iter()
            .filter_map(|r| r.tally.as_ref()?.server_peak_rss_kib)
            .max()
    });
    let unit = |kib: Option<u64>| match kib {
        Some(_) => format!("{} MiB", mib(kib)),
        None => "unknown".to_owned(),
    };
    match server_peak {
        None => println!(
            "  peak RSS      {} (this process: the server and the clients)",
            unit(peak)
        ),
        Some(server) => println!(
            "  peak RSS      {} (this process: the clients), {} (the server, so far)",
            unit(peak),
            unit(server)
        ),
    }
    match write_syscalls() {
        Some(writes) if total > 0 => println!(
            "  write calls   {writes} write/writev syscalls, {:.2} per message (this process)",
            writes as f64 / total as f64
        ),
        Some(writes) => {
            println!(
                "  write calls   {writes} write/writev syscalls, no messages sent (this process)"
            );
        }
        None => {}
    }
    for report in reports {
        if let Some((expected, got)) = report.tally.as_ref().and_then(|t| t.first_violation) {
            println!(
                "  client {}: first order violation: expected message {expected}, got {got}",
                report.id
            );
        }
        if report.lost() > 0 {
            println!(
                "  client {}: lost {} of {} messages",
                report.id,
                report.lost(),
                report.sent()
            );
        }
        for message in &report.error_messages {
            println!("  client {}: {message}", report.id);
        }
        if report.errors > report.error_messages.len() as u64 {
            println!(
                "  client {}: {} more errors",
                report.id,
                report.errors - report.error_messages.len() as u64
            );
        }
    }
    let server_rss = server_peak.map_or_else(String::new, |kib| {
        format!(" server_peak_rss_mib={}", mib(kib))
    });
    println!(
        "RESULT lost={lost} order_violations={order_violations} corrupt={corrupt} \
         bad_replies={bad_replies} errors={errors} ask_failures={ask_failures} \
         peak_rss_mib={}{server_rss}",
        mib(peak)
    );
    let passed = lost == 0
        && order_violations == 0
        && corrupt == 0
        && bad_replies == 0
        && errors == 0
        && reports.iter().all(|r| r.tally.is_some());
    println!("{}", if passed { "PASS" } else { "FAIL" });
    passed
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let flags = <Flags as clap::Parser>::parse();
    let command = match flags.command() {
        Ok(command) => command,
        Err(message) => <Flags as clap::CommandFactory>::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit(),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match command {
        Command::Serve(server) => serve(&server),
        Command::Run(opts) => run(&opts),
    }
}

/// `--serve`: the endpoint only, until the process is killed.
fn serve(opts: &ServerOpts) -> ExitCode {
    let env = match start_server(opts) {
        Ok(env) => env,
        Err(err) => {
            eprintln!("stress: cannot start the server: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let address = env.address().expect("a server env has an address");
    // Ctrl-C and SIGTERM shut the env down cleanly (exit 0); caught before the address
    // is printed, so a signal sent on seeing it is never the default (fatal) one.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let caught = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    });
    println!("STRESS serving on rpc://{ENDPOINT}@{address}");
    if let Err(err) = caught {
        warn!("cannot catch Ctrl-C/SIGTERM ({err:#}); the server stops when killed");
        env.await_termination();
        return ExitCode::SUCCESS;
    }
    let _ = stop_rx.recv();
    info!("stopping: a signal");
    env.shutdown();
    env.await_termination();
    println!("STRESS stopped");
    ExitCode::SUCCESS
}

/// The clients, against an in-process server or `--connect`.
fn run(opts: &RunOpts) -> ExitCode {
    let server = match &opts.connect {
        Some(_) => None,
        None => match start_server(&opts.server) {
            Ok(env) => Some(env),
            Err(err) => {
                eprintln!("stress: cannot start the in-process server: {err:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    let uri = match (&opts.connect, &server) {
        (Some(uri), _) => uri.clone(),
        (None, Some(env)) => format!(
            "rpc://{ENDPOINT}@{}",
            env.address().expect("a server env has an address")
        ),
        (None, None) => unreachable!("an in-process server is started without --connect"),
    };
    let target = if opts.connect.is_some() {
        uri.clone()
    } else {
        format!("{uri} (in-process)")
    };
    info!(
        "run: {} against {target}",
        plural(u64::from(opts.clients), "client")
    );

    let run = run_id();
    let total = u64::from(opts.clients) * opts.messages;
    let progress = AtomicU64::new(0);
    let asks_in_flight = AtomicU64::new(0);
    let start = Barrier::new(opts.clients as usize + 1);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();

    let (reports, elapsed) = thread::scope(|scope| {
        let mut clients = Vec::new();
        for id in 0..opts.clients {
            let setup = ClientSetup {
                id,
                run,
                uri: &uri,
                opts,
                start: &start,
                progress: &progress,
                asks_in_flight: &asks_in_flight,
            };
            let spawned = thread::Builder::new()
                .name(format!("stress-client-{id}"))
                .spawn_scoped(scope, move || run_client(&setup));
            match spawned {
                Ok(handle) => clients.push(handle),
                Err(err) => {
                    // Without all the clients the barrier would never open.
                    eprintln!("stress: cannot start client thread {id}: {err:#}");
                    std::process::exit(1);
                }
            }
        }
        start.wait();
        let started = Instant::now();
        let lines = opts.progress_lines;
        let reporter = if opts.quiet || !(lines || std::io::stderr().is_terminal()) {
            None
        } else {
            let progress = &progress;
            let (asks_in_flight, server) = (&asks_in_flight, &server);
            // Next to the bar: asks in flight, and with an in-process server its queues.
            let live = move || {
                let asks = asks_in_flight.load(Ordering::Relaxed);
                match server {
                    Some(env) => {
                        let metrics = env.metrics();
                        let inbox: usize = metrics.endpoints.iter().map(|e| e.inbox_depth).sum();
                        let inbox_max = metrics
                            .endpoints
                            .iter()
                            .map(|e| e.inbox_high_water)
                            .max()
                            .unwrap_or(0);
                        format!(
                            "asks in flight {asks}, server inbox {inbox} (max {inbox_max}), \
                             write queues {} B",
                            metrics.env.bytes_queued
                        )
                    }
                    None => format!("asks in flight {asks}"),
                }
            };
            thread::Builder::new()
                .name("stress-progress".into())
                .spawn_scoped(scope, move || {
                    if lines {
                        report_lines(progress, total, &stop_rx, &live);
                    } else {
                        report_progress(progress, total, &stop_rx, &live);
                    }
                })
                .map_err(|err| warn!("no progress bar: {err:#}"))
                .ok()
        };
        let reports: Vec<ClientReport> = clients
            .into_iter()
            .enumerate()
            .map(|(id, handle)| {
                handle.join().unwrap_or_else(|_| {
                    let mut report = ClientReport {
                        id: id as u32,
                        ..ClientReport::default()
                    };
                    report.errors += 1;
                    report
                        .error_messages
                        .push("the client thread panicked".into());
                    report
                })
            })
            .collect();
        let _ = stop_tx.send(());
        if let Some(reporter) = reporter {
            let _ = reporter.join();
        }
        let finished = reports
            .iter()
            .filter_map(|r| r.finished)
            .max()
            .unwrap_or_else(Instant::now);
        (reports, finished.saturating_duration_since(started))
    });

    if let Some(server) = server {
        server.shutdown();
        server.await_termination();
    }
    if summarize(opts, &target, &reports, elapsed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
