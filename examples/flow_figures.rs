//! Memory figures of flow control, in one process on loopback: how far the resident set
//! grows when a peer floods an env, against the bounds the configuration sets.
//!
//! - **input 2**: a raw TCP socket writes 3,000 small asks (Spark `RpcRequest` frames
//!   carrying rpcenv request envelopes) to an endpoint that answers each with 64 KiB, and
//!   never reads an answer. The server stops reading a peer that does not read its
//!   answers once `rpc.io.maxQueuedBytes` of them wait, so the growth should stay under
//!   that bound plus 16 MiB, and the server should stop reading asks. The check comes
//!   as answers are given, so asks read before then are still answered: by default the
//!   asks go in one write, as a pipelining peer sends them; `--pace` spaces them out.
//!   `asks_read` on the `FLOW` line shows how far the server read.
//! - **input 3**: a client-mode env sends 1,500 one-way messages of 100 kB to an endpoint
//!   that takes 2 ms over each. The sender waits when its queues are full, so the growth
//!   should stay under the receiver's inbox window (`rpc.dispatcher.inboxCapacity`) plus
//!   the sender's queues (`rpc.io.maxQueuedBytes` ready, and as much again held for the
//!   endpoint) plus 16 MiB.
//!
//! ```text
//! cargo run --release --example flow_figures
//! cargo run --release --example flow_figures -- --only input3 --conf rpc.io.maxQueuedBytes=1m
//! ```
//!
//! Growth is the largest `VmRSS` sampled while an input runs (every 5 ms) minus `VmRSS`
//! just before it started (Linux; elsewhere the figures are `unknown`). The allocator keeps
//! memory that was freed, so a second input may reuse what the first one left and show
//! less growth than it would alone: `--only` runs one input by itself. These are figures
//! for people, not a test: nothing runs this program in CI.

#![allow(clippy::disallowed_types)] // examples use std's Arc directly

use std::fmt;
use std::io::Write as _;
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpcenv::{EndpointContext, RpcCallContext, RpcConf, RpcEndpoint, RpcEnv, Threading};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Input 2: asks written by the raw socket.
const ASKS: u64 = 3_000;
/// Input 2: bytes of each answer by default (the asks themselves are a few dozen bytes).
const ANSWER_BYTES: u32 = 64 * 1024;
/// Input 2: how long the server is watched after the asks are written.
const WATCH: Duration = Duration::from_secs(3);

/// Input 3: one-way messages sent.
const MESSAGES: u64 = 1_500;
/// Input 3: payload bytes of each message.
const MESSAGE_BYTES: usize = 100_000;
/// Input 3: how long the endpoint takes over each message.
const HANDLING: Duration = Duration::from_millis(2);
/// Input 3: how long the messages may take to be handled before the run gives up.
const DEADLINE: Duration = Duration::from_secs(45);

/// What each bound allows beyond the queues: threads, buffers, the allocator's slack.
const SLACK_MIB: f64 = 16.0;
/// How often the resident set is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

const MAX_QUEUED_BYTES: &str = "rpc.io.maxQueuedBytes";
const INBOX_CAPACITY: &str = "rpc.dispatcher.inboxCapacity";

const USAGE: &str = "\
flow_figures: memory figures of rpcenv's flow control, in one process on loopback.

  input2  a raw socket writes 3,000 small asks whose answers (64 KiB each) it never reads;
          bound: rpc.io.maxQueuedBytes + 16 MiB
  input3  a client-mode env sends 1,500 one-way messages of 100 kB to an endpoint that
          takes 2 ms over each; bound: rpc.dispatcher.inboxCapacity
          + 2 x rpc.io.maxQueuedBytes (ready, and held for the endpoint) + 16 MiB

USAGE:
    flow_figures [--only input2|input3] [--pace US] [--answer SIZE] [--conf KEY=VALUE]...

OPTIONS:
    --only INPUT         run one input only (the allocator keeps what an earlier input
                         freed, which a later one may reuse)
    --pace US            input2: write the asks one at a time, US microseconds apart
                         (default 0: all of them in one write)
    --answer SIZE        input2: bytes of each answer; suffixes k and m (default 64k)
    --conf KEY=VALUE     an rpcenv setting for every env (repeatable); the bounds follow
                         rpc.io.maxQueuedBytes and rpc.dispatcher.inboxCapacity
    -h, --help           this text

Prints one `FLOW inputN rss_growth_mib=.. bound_mib=.. ok|OVER` line per input; exit
code 0 when every input stayed under its bound, 1 otherwise, 2 for bad flags.
";

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// A `kB` field of `/proc/self/status` (Linux only).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The resident set now, in KiB.
fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples `VmRSS` on a thread of its own until stopped; keeps the largest sample.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: JoinHandle<()>,
}

impl Sampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib().unwrap_or(0)));
        let handle = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if let Some(kib) = rss_kib() {
                            peak.fetch_max(kib, Ordering::AcqRel);
                        }
                        thread::sleep(SAMPLE_EVERY);
                    }
                })
                .expect("spawning the sampler thread")
        };
        Self { stop, peak, handle }
    }

    /// Stops sampling; returns the largest resident set seen, in KiB.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let _ = self.handle.join();
        if let Some(kib) = rss_kib() {
            self.peak.fetch_max(kib, Ordering::AcqRel);
        }
        self.peak.load(Ordering::Acquire)
    }
}

/// The growth of one input against its bound.
struct Figure {
    baseline_kib: Option<u64>,
    peak_kib: u64,
    bound_mib: f64,
}

impl Figure {
    fn growth_mib(&self) -> Option<f64> {
        self.baseline_kib
            .map(|base| mib(self.peak_kib.saturating_sub(base)))
    }

    /// Under the bound (an unknown growth counts as under: nothing was seen over it).
    fn ok(&self) -> bool {
        self.growth_mib()
            .is_none_or(|growth| growth <= self.bound_mib)
    }

    fn verdict(&self) -> &'static str {
        if self.ok() { "ok" } else { "OVER" }
    }
}

impl fmt::Display for Figure {
    /// `rss_growth_mib=X bound_mib=Y`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.growth_mib() {
            Some(growth) => write!(f, "rss_growth_mib={growth:.1}")?,
            None => f.write_str("rss_growth_mib=unknown")?,
        }
        write!(f, " bound_mib={:.1}", self.bound_mib)
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// A size as rpcenv writes it (`4m`, `64k`, `1048576`, `2mb`), in bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &text[digits.len()..] {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        _ => return None,
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The bounds in force, in bytes.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    max_queued: u64,
    inbox: u64,
}

impl Bounds {
    fn of(conf: &RpcConf) -> Result<Self, String> {
        let size = |key: &str| {
            let value = conf.get(key).unwrap_or_default();
            parse_size(value).ok_or_else(|| format!("{key}={value}: not a size this tool reads"))
        };
        Ok(Self {
            max_queued: size(MAX_QUEUED_BYTES)?,
            inbox: size(INBOX_CAPACITY)?,
        })
    }

    fn input2_mib(&self) -> f64 {
        mib(self.max_queued / 1024) + SLACK_MIB
    }

    fn input3_mib(&self) -> f64 {
        mib((self.inbox + 2 * self.max_queued) / 1024) + SLACK_MIB
    }
}

/// One input: runs it, prints its figures.
type Input = fn(&Opts, Bounds) -> Result<Figure, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    Both,
    Input2,
    Input3,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
struct Opts {
    only: Only,
    /// Input 2: the gap between asks (zero: one write).
    pace: Duration,
    /// Input 2: bytes of each answer.
    answer: u32,
    conf: RpcConf,
}

/// The command line: `None` for `--help`.
fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    // The library's defaults, spelled out so that the bounds printed are the ones in force.
    let mut conf = RpcConf::new()
        .set(MAX_QUEUED_BYTES, "4m")
        .set(INBOX_CAPACITY, "4m");
    let mut only = Only::Both;
    let mut pace = Duration::ZERO;
    let mut answer = ANSWER_BYTES;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--only" => {
                only = match value()?.as_str() {
                    "input2" | "2" => Only::Input2,
                    "input3" | "3" => Only::Input3,
                    other => return Err(format!("--only takes input2 or input3, not '{other}'")),
                }
            }
            "--pace" => {
                let v = value()?;
                let us = v
                    .parse::<u64>()
                    .map_err(|_| format!("--pace takes microseconds, not '{v}'"))?;
                pace = Duration::from_micros(us);
            }
            "--answer" => {
                let v = value()?;
                answer = parse_size(&v)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n <= 64 << 20)
                    .ok_or_else(|| format!("--answer takes a size up to 64m, not '{v}'"))?;
            }
            "--conf" => {
                let v = value()?;
                let Some((key, val)) = v.split_once('=') else {
                    return Err(format!("--conf takes KEY=VALUE, not '{v}'"));
                };
                conf.insert(key.trim(), val.trim());
                conf.validate()
                    .map_err(|err| format!("--conf {v}: {err:#}"))?;
            }
            _ => return Err(format!("unknown argument '{arg}'")),
        }
    }
    Ok(Some(Opts {
        only,
        pace,
        answer,
        conf,
    }))
}

// ---------------------------------------------------------------------------------------
// Messages and endpoints
// ---------------------------------------------------------------------------------------

/// A payload that serializes as one byte string, not as a sequence of `u8`s.
#[derive(Debug, Clone)]
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

impl Visitor<'_> for BytesVisitor {
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
}

/// Input 2: answers an ask for `n` bytes with `n` bytes; counts the asks it got.
struct Answers {
    handled: Arc<AtomicU64>,
}

impl RpcEndpoint for Answers {
    type Message = u32;

    fn receive_and_reply(
        &mut self,
        n: u32,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        self.handled.fetch_add(1, Ordering::AcqRel);
        reply.reply(Bytes(vec![0x5a; n as usize]));
    }
}

/// Input 3: takes [`HANDLING`] over each one-way message; counts them.
struct Slow {
    handled: Arc<AtomicU64>,
}

impl RpcEndpoint for Slow {
    type Message = Bytes;

    fn receive(&mut self, msg: Bytes, _ctx: &EndpointContext<Bytes>) {
        thread::sleep(HANDLING);
        std::hint::black_box(msg);
        self.handled.fetch_add(1, Ordering::AcqRel);
    }

    /// It sleeps: a thread of its own.
    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
}

// ---------------------------------------------------------------------------------------
// Input 2: a raw socket that asks and never reads
// ---------------------------------------------------------------------------------------

/// A Spark `RpcRequest` frame: length (i64, the whole frame), type 3, request id (i64),
/// body length (i32), all big-endian, then the body.
fn rpc_request(out: &mut Vec<u8>, id: u64, body: &[u8]) {
    out.extend_from_slice(&((21 + body.len()) as i64).to_be_bytes());
    out.push(3);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
}

/// An rpcenv request envelope (src/rpc/envelope.rs): version 1, no sender (as from a
/// client-mode env), the endpoint's name (u16 length, UTF-8), then the message encoded
/// as rpcenv encodes messages (bincode 2, standard configuration).
fn request_envelope(endpoint: &str, message: u32) -> Vec<u8> {
    let mut body = vec![1, 0];
    body.extend_from_slice(&(endpoint.len() as u16).to_be_bytes());
    body.extend_from_slice(endpoint.as_bytes());
    let content =
        bincode::serde::encode_to_vec(message, bincode::config::standard()).expect("a u32 encodes");
    body.extend_from_slice(&content);
    body
}

fn input2(opts: &Opts, bounds: Bounds) -> Result<Figure, String> {
    let answer = opts.answer;
    println!(
        "input2: a raw socket writes {ASKS} asks for {answer} bytes each ({}) and never \
         reads the answers",
        if opts.pace.is_zero() {
            "in one write".to_owned()
        } else {
            format!("one every {} us", opts.pace.as_micros())
        }
    );
    let baseline = rss_kib();
    let sampler = Sampler::start();
    let server = RpcEnv::builder("figures-answers")
        .bind_address("127.0.0.1")
        .port(0)
        .conf(opts.conf.clone())
        .build()
        .map_err(|err| format!("input2: cannot start the server env: {err:#}"))?;
    let handled = Arc::new(AtomicU64::new(0));
    server
        .setup_endpoint(
            "answers",
            Answers {
                handled: Arc::clone(&handled),
            },
        )
        .map_err(|err| format!("input2: cannot set up the endpoint: {err:#}"))?;
    let address = server.address().expect("a server env has an address");

    let body = request_envelope("answers", answer);
    let frame_len = 21 + body.len();
    let mut frames = Vec::with_capacity(ASKS as usize * frame_len);
    for id in 0..ASKS {
        rpc_request(&mut frames, id, &body);
    }
    let stream = TcpStream::connect((address.host(), address.port()))
        .map_err(|err| format!("input2: cannot connect to {address}: {err:#}"))?;
    stream
        .set_write_timeout(Some(WATCH))
        .map_err(|err| format!("input2: {err:#}"))?;
    // On a thread of its own, whose writes time out: a write into a socket the server no
    // longer reads blocks once the socket buffers are full.
    let writer = {
        let mut stream = stream
            .try_clone()
            .map_err(|err| format!("input2: {err:#}"))?;
        let pace = opts.pace;
        thread::Builder::new()
            .name("raw-asker".into())
            .spawn(move || -> std::io::Result<usize> {
                if pace.is_zero() {
                    stream.write_all(&frames)?;
                } else {
                    stream.set_nodelay(true)?;
                    for frame in frames.chunks(frame_len) {
                        stream.write_all(frame)?;
                        thread::sleep(pace);
                    }
                }
                Ok(frames.len())
            })
            .map_err(|err| format!("input2: {err:#}"))?
    };

    let written = writer.join().map_err(|_| "input2: the writer panicked")?;
    // Watch the server work through what it read, and see it stop.
    let watched = Instant::now();
    let mut read_at_half = 0;
    while watched.elapsed() < WATCH {
        thread::sleep(Duration::from_millis(50));
        if watched.elapsed() < WATCH / 2 {
            read_at_half = handled.load(Ordering::Acquire);
        }
    }
    let read = handled.load(Ordering::Acquire);
    let figure = Figure {
        baseline_kib: baseline,
        peak_kib: sampler.finish(),
        bound_mib: bounds.input2_mib(),
    };
    match written {
        Ok(bytes) => println!("  written       {ASKS} asks, {bytes} bytes"),
        Err(err) => println!("  written       not all: {err:#} (the server stopped reading)"),
    }
    println!(
        "  asks read     {read} of {ASKS} ({read_at_half} {:.1} s after the writes, {read} \
         {:.1} s after: {}); their answers total {:.1} MiB, unread",
        WATCH.as_secs_f64() / 2.0,
        WATCH.as_secs_f64(),
        if read == read_at_half && read < ASKS {
            "the server stopped reading"
        } else if read == ASKS {
            "all of them"
        } else {
            "still reading"
        },
        read as f64 * f64::from(answer) / f64::from(1 << 20)
    );
    println!(
        "  RSS           {} MiB before, {:.1} MiB at the peak",
        baseline.map_or_else(|| "unknown".to_owned(), |kib| format!("{:.1}", mib(kib))),
        mib(figure.peak_kib)
    );
    println!(
        "FLOW input2 {figure} (maxQueuedBytes + {SLACK_MIB:.0} MiB) asks_read={read} {}",
        figure.verdict()
    );

    let _ = stream.shutdown(Shutdown::Both);
    drop(stream);
    server.shutdown();
    server.await_termination();
    if let Some(kib) = rss_kib() {
        println!(
            "  RSS           {:.1} MiB once the socket closed and the env shut down",
            mib(kib)
        );
    }
    Ok(figure)
}

// ---------------------------------------------------------------------------------------
// Input 3: one-way messages to a slow endpoint
// ---------------------------------------------------------------------------------------

fn input3(opts: &Opts, bounds: Bounds) -> Result<Figure, String> {
    let conf = &opts.conf;
    println!(
        "input3: a client-mode env sends {MESSAGES} one-way messages of {MESSAGE_BYTES} bytes \
         to an endpoint that takes {} ms over each",
        HANDLING.as_millis()
    );
    let baseline = rss_kib();
    let sampler = Sampler::start();
    let server = RpcEnv::builder("figures-slow")
        .bind_address("127.0.0.1")
        .port(0)
        .conf(conf.clone())
        .build()
        .map_err(|err| format!("input3: cannot start the server env: {err:#}"))?;
    let handled = Arc::new(AtomicU64::new(0));
    server
        .setup_endpoint(
            "slow",
            Slow {
                handled: Arc::clone(&handled),
            },
        )
        .map_err(|err| format!("input3: cannot set up the endpoint: {err:#}"))?;
    let uri = format!(
        "rpc://slow@{}",
        server.address().expect("a server env has an address")
    );
    let client = RpcEnv::builder("figures-sender")
        .client_mode(true)
        .conf(conf.clone())
        .build()
        .map_err(|err| format!("input3: cannot start the client env: {err:#}"))?;

    let started = Instant::now();
    // `send` waits while the queues are full: the sender has a thread of its own.
    let sender = {
        let client = client.clone();
        thread::Builder::new()
            .name("sender".into())
            .spawn(move || -> Result<Duration, String> {
                let slow = client
                    .setup_endpoint_ref_by_uri::<Bytes>(&uri)
                    .map_err(|err| format!("looking up {uri}: {err:#}"))?;
                for i in 0..MESSAGES {
                    slow.send(Bytes(vec![i as u8; MESSAGE_BYTES]))
                        .map_err(|err| format!("message {i}: {err:#}"))?;
                }
                Ok(started.elapsed())
            })
            .map_err(|err| format!("input3: {err:#}"))?
    };

    // Until all are handled, or nothing moves any more once the sender has given up.
    let mut progress = (0, Instant::now());
    loop {
        let done = handled.load(Ordering::Acquire);
        if done > progress.0 {
            progress = (done, Instant::now());
        }
        let stalled = sender.is_finished() && progress.1.elapsed() > Duration::from_secs(2);
        if done >= MESSAGES || stalled || started.elapsed() > DEADLINE {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    let done = handled.load(Ordering::Acquire);
    let sent = sender.join().map_err(|_| "input3: the sender panicked")?;
    let figure = Figure {
        baseline_kib: baseline,
        peak_kib: sampler.finish(),
        bound_mib: bounds.input3_mib(),
    };
    match &sent {
        Ok(sent) => println!(
            "  sent          {MESSAGES} messages in {:.2} s",
            sent.as_secs_f64()
        ),
        Err(err) => println!("  sent          not all: {err:#}"),
    }
    println!(
        "  handled       {done} of {MESSAGES} in {:.2} s (at least {:.1} s of handling)",
        took.as_secs_f64(),
        (HANDLING * MESSAGES as u32).as_secs_f64()
    );
    println!(
        "  RSS           {} MiB before, {:.1} MiB at the peak",
        baseline.map_or_else(|| "unknown".to_owned(), |kib| format!("{:.1}", mib(kib))),
        mib(figure.peak_kib)
    );
    println!(
        "FLOW input3 {figure} (inboxCapacity + 2 x maxQueuedBytes + {SLACK_MIB:.0} MiB) \
         handled={done} elapsed_s={:.2} {}",
        took.as_secs_f64(),
        if done == MESSAGES {
            figure.verdict()
        } else {
            "INCOMPLETE"
        }
    );

    client.shutdown();
    client.await_termination();
    server.shutdown();
    server.await_termination();
    if done == MESSAGES {
        Ok(figure)
    } else {
        Err(format!(
            "input3: {done} of {MESSAGES} messages handled within {DEADLINE:?}"
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("flow_figures: {err:#}");
            eprintln!("Try 'flow_figures --help' for the flags.");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let conf = &opts.conf;
    let bounds = match Bounds::of(conf) {
        Ok(bounds) => bounds,
        Err(err) => {
            eprintln!("flow_figures: {err:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "FLOW bounds {MAX_QUEUED_BYTES}={} ({:.1} MiB) {INBOX_CAPACITY}={} ({:.1} MiB); \
         input2 bound {:.1} MiB, input3 bound {:.1} MiB",
        conf.get(MAX_QUEUED_BYTES).unwrap_or_default(),
        mib(bounds.max_queued / 1024),
        conf.get(INBOX_CAPACITY).unwrap_or_default(),
        mib(bounds.inbox / 1024),
        bounds.input2_mib(),
        bounds.input3_mib()
    );
    let mut ok = true;
    let runs: &[Input] = match opts.only {
        Only::Both => &[input2, input3],
        Only::Input2 => &[input2],
        Only::Input3 => &[input3],
    };
    for run in runs {
        match run(&opts, bounds) {
            Ok(figure) => ok &= figure.ok(),
            Err(err) => {
                eprintln!("flow_figures: {err:#}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
