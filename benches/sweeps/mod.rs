//! The scaling sweeps of the workload bench: how rpcenv's figures change with one
//! parameter, beside `plain-tcp` in the same run where the baseline can do the same.
//!
//! ```text
//! cargo bench --bench workloads -- S-payload S-callers S-idle S-inflight S-endpoints
//! cargo bench --bench workloads -- sweeps [--quick] [--charts DIR] [--payload vec|bytes]
//! cargo bench --bench workloads -- --sweep S-callers      # the same as naming it
//! ```
//!
//! `sweeps` (or `S-all`) runs all five and S-record; `--quick` makes each about ten times
//! smaller. `--system NAME` (repeatable) picks the systems of S-payload, S-callers and
//! S-idle (default: `rpcenv` then `plain-tcp`); S-inflight and S-endpoints measure rpcenv
//! only (they have no plain counterpart). Every sweep prints one table to stdout, with a
//! ratio column against `plain-tcp` when both ran. S-payload and S-callers also draw SVG
//! charts, `DIR/payload.svg` and `DIR/callers.svg` (default `DIR`: `benches/charts`), and
//! print their paths.
//!
//! | sweep | shape | points (full; `--quick`) | figures |
//! |---|---|---|---|
//! | S-payload | W3: one connection, pipelined echoes | 64 B to 16 MiB in powers of 4; powers of 16 to 4 MiB | req/s, MB/s of payload one way; 64 in flight, fewer above 1 MiB so that at most 64 MiB is in flight |
//! | S-callers | W6: N threads, each its own connection, one ask at a time | 1 to 256 in powers of 2; 1 to 64 in powers of 4 | req/s of all, p50/p99 of every round trip |
//! | S-idle | W7 in a child process | 1k, 2k, 4k, 8k, 10k idle connections (a point the open-file limit does not allow is skipped); 100, 300, 1k | RSS growth per idle connection, W1 p50 while they are held |
//! | S-inflight | one caller `ask`s N 64-byte echoes, then waits for all | 1k, 10k, 100k; 1k, 10k | req/s, peak RSS growth; a `QueueFull` is reported as the result |
//! | S-endpoints | W1 over N endpoints of one env, round robin | 10, 100, 1k, 10k; 10, 100, 1k | p50/p99, p50 against 10 endpoints, time to register them |
//! | S-record | the bench's latency recording | 1M synthetic durations, 5 alternating rounds | ns per record: exact samples (sorted, nearest rank) vs `hdrhistogram`, and their p50/p99 |
//!
//! Latencies of the sweeps are recorded in an `hdrhistogram` (nanoseconds, 3 significant
//! digits: within 0.1 %), merged across threads; W1-W7 keep their exact samples.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rpcenv::{Pending, RpcEnv, RpcError, SharedBytes};

use super::{
    BenchError, BenchMsg, Bytes, Connection, Context, ECHO_ENDPOINT, EchoEndpoint, FILL,
    Measurement, Options, Payload, PayloadKind, PipePlan, PlainTcp, Result, RpcEnvSystem, SMALL,
    Scale, System, check_echo, idle_in_child, join, rss_kib, stamp,
};

/// The sweeps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    Payload,
    Callers,
    Idle,
    Inflight,
    Endpoints,
    Record,
}

impl Sweep {
    const ALL: [Self; 6] = [
        Self::Payload,
        Self::Callers,
        Self::Idle,
        Self::Inflight,
        Self::Endpoints,
        Self::Record,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Payload => "S-payload",
            Self::Callers => "S-callers",
            Self::Idle => "S-idle",
            Self::Inflight => "S-inflight",
            Self::Endpoints => "S-endpoints",
            Self::Record => "S-record",
        }
    }

    fn parse(name: &str) -> Option<Vec<Self>> {
        if name.eq_ignore_ascii_case("sweeps") || name.eq_ignore_ascii_case("S-all") {
            return Some(Self::ALL.to_vec());
        }
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
            .map(|s| vec![s])
    }
}

/// What the command line asked of the sweeps.
#[derive(Debug, Default)]
pub(crate) struct SweepArgs {
    pub(crate) sweeps: Vec<Sweep>,
    charts: Option<PathBuf>,
}

/// Takes the sweep names, `--sweep NAME` and `--charts DIR` out of `args`.
pub(crate) fn take_args(args: &mut Vec<String>) -> Result<SweepArgs, String> {
    let mut out = SweepArgs::default();
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = std::mem::take(args).into_iter();
    let add = |out: &mut SweepArgs, name: &str| -> Result<(), String> {
        let sweeps = Sweep::parse(name).ok_or_else(|| format!("unknown sweep {name:?}"))?;
        for sweep in sweeps {
            if !out.sweeps.contains(&sweep) {
                out.sweeps.push(sweep);
            }
        }
        Ok(())
    };
    while let Some(arg) = iter.next() {
        if arg == "--sweep" {
            add(&mut out, &iter.next().ok_or("--sweep needs a name")?)?;
        } else if let Some(name) = arg.strip_prefix("--sweep=") {
            add(&mut out, name)?;
        } else if arg == "--charts" {
            out.charts = Some(iter.next().ok_or("--charts needs a directory")?.into());
        } else if let Some(dir) = arg.strip_prefix("--charts=") {
            out.charts = Some(dir.into());
        } else if Sweep::parse(&arg).is_some() {
            add(&mut out, &arg)?;
        } else {
            rest.push(arg);
        }
    }
    *args = rest;
    Ok(out)
}

/// Runs the sweeps asked for; the number that failed.
pub(crate) fn run(sweeps: &SweepArgs, options: &Options) -> usize {
    let names: Vec<String> = if options.systems.is_empty() {
        vec!["rpcenv".into(), PlainTcp::NAME.into()]
    } else {
        options.systems.clone()
    };
    let all = super::systems(options);
    let systems: Vec<&dyn System> = names
        .iter()
        .filter_map(|name| all.iter().find(|s| s.name() == name).map(|s| s.as_ref()))
        .collect();
    let rpcenv = RpcEnvSystem {
        name: "rpcenv",
        io_threads: options.io_threads,
        payload: options.payload,
        encryption: None,
        default_run: super::DefaultRun::All,
    };
    let charts = sweeps
        .charts
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/charts"));
    let mut failures = 0;
    for &sweep in &sweeps.sweeps {
        if std::env::var_os(INFLIGHT_CHILD).is_some() {
            failures += usize::from(inflight_sweep(&rpcenv, options).is_err());
            continue;
        }
        let began = Instant::now();
        eprintln!(
            "{}: {}",
            sweep.name(),
            if options.quick { "quick" } else { "full" }
        );
        let outcome = match sweep {
            Sweep::Payload => payload_sweep(&systems, options.quick, &charts),
            Sweep::Callers => callers_sweep(&systems, options.quick, &charts),
            Sweep::Idle => idle_sweep(&systems, options),
            Sweep::Inflight => inflight_sweep(&rpcenv, options),
            Sweep::Endpoints => endpoints_sweep(&rpcenv, options.quick),
            Sweep::Record => record_sweep(options.quick),
        };
        match outcome {
            Ok(()) => eprintln!(
                "  ({} took {:.1} s)",
                sweep.name(),
                began.elapsed().as_secs_f64()
            ),
            Err(err) => {
                eprintln!("error: {} failed: {err}", sweep.name());
                failures += 1;
            }
        }
    }
    failures
}

// --- tables -------------------------------------------------------------------------------

/// One table: a title, column heads, rows of cells; printed with aligned columns.
struct Table {
    title: String,
    heads: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: impl Into<String>, heads: &[&str]) -> Self {
        Self {
            title: title.into(),
            heads: heads.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self) {
        let mut widths: Vec<usize> = self.heads.iter().map(String::len).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.len());
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("\n{}", self.title);
        println!("{}", line(&self.heads));
        for row in &self.rows {
            println!("{}", line(row));
        }
    }
}

fn bytes_label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn micros_at(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

// --- S-payload ----------------------------------------------------------------------------

/// The most payload bytes S-payload keeps in flight.
const PAYLOAD_IN_FLIGHT: usize = 64 << 20;

fn payload_sweep(systems: &[&dyn System], quick: bool, charts: &Path) -> Result<()> {
    let sizes: Vec<usize> = if quick {
        (0..5).map(|i| 64 << (4 * i)).collect()
    } else {
        (0..10).map(|i| 64 << (2 * i)).collect()
    };
    let (warmup, measure) = if quick {
        (Duration::from_millis(50), Duration::from_millis(250))
    } else {
        (Duration::from_millis(300), Duration::from_millis(1500))
    };
    // results[system][size] = MB/s
    let mut results: Vec<Vec<Option<(f64, f64)>>> = vec![vec![None; sizes.len()]; systems.len()];
    for (j, &size) in sizes.iter().enumerate() {
        for (i, system) in systems.iter().enumerate() {
            // Large payloads get longer windows, so that some answers land in them.
            let stretch = if size >= 1 << 20 { 4 } else { 1 };
            let plan = PipePlan {
                payload: size,
                window: (PAYLOAD_IN_FLIGHT / size).clamp(1, super::WINDOW),
                warmup: warmup * stretch,
                measure: measure * stretch,
            };
            let server = system.start()?;
            let measured = server.connect().and_then(|mut conn| {
                let counted = conn.pipelined(&plan)?;
                conn.close()?;
                Ok(counted)
            });
            server.close()?;
            let counted =
                measured.map_err(|e| BenchError(format!("{} at {}: {e}", system.name(), size)))?;
            let req_per_s = counted as f64 / plan.measure.as_secs_f64();
            results[i][j] = Some((req_per_s, req_per_s * size as f64 / 1e6));
        }
    }
    let plain = systems.iter().position(|s| s.name() == PlainTcp::NAME);
    let mut heads = vec!["payload".to_owned(), "in flight".to_owned()];
    for system in systems {
        heads.push(format!("{} req/s", system.name()));
        heads.push(format!("{} MB/s", system.name()));
    }
    for (i, system) in systems.iter().enumerate() {
        if Some(i) != plain && plain.is_some() {
            heads.push(format!("{}/plain", system.name()));
        }
    }
    let heads: Vec<&str> = heads.iter().map(String::as_str).collect();
    let mut table = Table::new(
        "S-payload: pipelined echoes on one connection (W3 shape)",
        &heads,
    );
    for (j, &size) in sizes.iter().enumerate() {
        let mut row = vec![
            bytes_label(size),
            (PAYLOAD_IN_FLIGHT / size)
                .clamp(1, super::WINDOW)
                .to_string(),
        ];
        for result in &results {
            row.push(opt(result[j].map(|r| r.0), 0));
            row.push(opt(result[j].map(|r| r.1), 1));
        }
        if let Some(p) = plain {
            for i in (0..systems.len()).filter(|&i| i != p) {
                row.push(ratio(
                    results[i][j].map(|r| r.1),
                    results[p][j].map(|r| r.1),
                ));
            }
        }
        table.row(row);
    }
    table.print();
    let series = series(systems, &sizes, &results, |r| (r.1 > 0.0).then_some(r.1));
    let path = charts.join("payload.svg");
    chart(
        &path,
        "Pipelined echo throughput vs payload size (one connection)",
        "payload (bytes, log)",
        "MB/s of payload one way (log)",
        &series,
        true,
    )?;
    println!("chart: {}", path.display());
    Ok(())
}

// --- S-callers ----------------------------------------------------------------------------

/// One point of S-callers: req/s and the merged latency histogram.
fn callers_point(
    system: &dyn System,
    callers: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<(f64, Histogram<u64>)> {
    let server = system.start()?;
    let result = callers_on(server.as_ref(), callers, warmup, measure);
    let closed = server.close();
    let result = result?;
    closed?;
    Ok(result)
}

fn callers_on(
    server: &dyn super::Server,
    callers: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<(f64, Histogram<u64>)> {
    let mut conns: Vec<Box<dyn Connection>> = Vec::with_capacity(callers);
    for i in 0..callers {
        conns.push(server.connect().context(format_args!("connection {i}"))?);
    }
    let (go, wait_for_go) = crossbeam_channel::bounded::<()>(0);
    let window: Arc<OnceLock<super::TimeWindow>> = Arc::new(OnceLock::new());
    let mut threads = Vec::with_capacity(callers);
    let mut spawn_error = None;
    for (i, mut conn) in conns.into_iter().enumerate() {
        let wait_for_go = wait_for_go.clone();
        let window = Arc::clone(&window);
        let spawned = thread::Builder::new().name(format!("s-caller-{i}")).spawn(
            move || -> Result<(u64, Histogram<u64>)> {
                let mut hist = histogram();
                let _ = wait_for_go.recv();
                let Some(&window) = window.get() else {
                    return conn.close().map(|()| (0, hist));
                };
                let mut meter = super::Meter::new(window);
                let mut body = vec![FILL; SMALL];
                let mut seq = 0u64;
                while !meter.past_end {
                    stamp(&mut body, seq);
                    let started = Instant::now();
                    let reply = conn
                        .echo_sync(body)
                        .context(format_args!("caller {i}, round trip {seq}"))?;
                    let took = started.elapsed();
                    check_echo(reply.bytes(), SMALL, Some(seq), false)?;
                    let counted = meter.counted;
                    meter.record();
                    if meter.counted > counted {
                        hist.saturating_record(took.as_nanos() as u64);
                    }
                    body = reply.into_vec();
                    seq += 1;
                }
                conn.close()?;
                Ok((meter.counted, hist))
            },
        );
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(err) => {
                spawn_error = Some(BenchError(format!("cannot start caller {i}: {err}")));
                break;
            }
        }
    }
    if spawn_error.is_none() {
        let _ = window.set(super::TimeWindow::starting_now(warmup, measure));
    }
    drop(go);
    let mut total = 0;
    let mut merged = histogram();
    let mut errors = Vec::new();
    for (i, handle) in threads.into_iter().enumerate() {
        match join(handle, &format!("caller {i}")) {
            Ok((counted, hist)) => {
                total += counted;
                merged
                    .add(&hist)
                    .map_err(|e| BenchError(format!("merging histograms: {e}")))?;
            }
            Err(err) => errors.push(err.to_string()),
        }
    }
    if let Some(err) = spawn_error {
        errors.insert(0, err.to_string());
    }
    if !errors.is_empty() {
        return Err(BenchError(errors.join("; ")));
    }
    Ok((total as f64 / measure.as_secs_f64(), merged))
}

fn callers_sweep(systems: &[&dyn System], quick: bool, charts: &Path) -> Result<()> {
    let counts: Vec<usize> = if quick {
        vec![1, 4, 16, 64]
    } else {
        (0..9).map(|i| 1 << i).collect()
    };
    let (warmup, measure) = if quick {
        (Duration::from_millis(50), Duration::from_millis(250))
    } else {
        (Duration::from_millis(300), Duration::from_millis(1500))
    };
    let mut results: Vec<Vec<Option<(f64, f64, f64)>>> =
        vec![vec![None; counts.len()]; systems.len()];
    for (j, &callers) in counts.iter().enumerate() {
        for (i, system) in systems.iter().enumerate() {
            let (req_per_s, hist) =
                callers_point(*system, callers, warmup, measure).map_err(|e| {
                    BenchError(format!("{} with {callers} callers: {e}", system.name()))
                })?;
            results[i][j] = Some((req_per_s, micros_at(&hist, 0.5), micros_at(&hist, 0.99)));
        }
    }
    let plain = systems.iter().position(|s| s.name() == PlainTcp::NAME);
    let mut heads = vec!["callers".to_owned()];
    for system in systems {
        for what in ["req/s", "p50 us", "p99 us"] {
            heads.push(format!("{} {what}", system.name()));
        }
    }
    if let Some(p) = plain {
        for i in (0..systems.len()).filter(|&i| i != p) {
            heads.push(format!("{}/plain req/s", systems[i].name()));
            heads.push(format!("{}/plain p50", systems[i].name()));
        }
    }
    let heads: Vec<&str> = heads.iter().map(String::as_str).collect();
    let mut table = Table::new(
        "S-callers: N threads, each its own connection, one 64-byte ask at a time (W6 shape)",
        &heads,
    );
    for (j, &callers) in counts.iter().enumerate() {
        let mut row = vec![callers.to_string()];
        for result in &results {
            row.push(opt(result[j].map(|r| r.0), 0));
            row.push(opt(result[j].map(|r| r.1), 1));
            row.push(opt(result[j].map(|r| r.2), 1));
        }
        if let Some(p) = plain {
            for i in (0..systems.len()).filter(|&i| i != p) {
                row.push(ratio(
                    results[i][j].map(|r| r.0),
                    results[p][j].map(|r| r.0),
                ));
                row.push(ratio(
                    results[i][j].map(|r| r.1),
                    results[p][j].map(|r| r.1),
                ));
            }
        }
        table.row(row);
    }
    table.print();
    let series = series(systems, &counts, &results, |r| Some(r.0));
    let path = charts.join("callers.svg");
    chart(
        &path,
        "Round trips per second vs caller threads (64-byte asks)",
        "caller threads, one connection each (log)",
        "round trips per second",
        &series,
        false,
    )?;
    println!("chart: {}", path.display());
    Ok(())
}

// --- S-idle -------------------------------------------------------------------------------

/// `key=value` of a result line.
fn field(figures: &str, key: &str) -> Option<f64> {
    figures
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// One S-idle point: KiB per connection, W1 p50 held and before (us); or the child's
/// line when it has no figures (skipped, and why).
type IdlePoint = Result<(f64, f64, f64), String>;

fn idle_sweep(systems: &[&dyn System], options: &Options) -> Result<()> {
    let counts: &[usize] = if options.quick {
        &[100, 300, 1_000]
    } else {
        &[1_000, 2_000, 4_000, 8_000, 10_000]
    };
    // results[system][count] = (KiB per conn, W1 p50 held, W1 p50 before) or why skipped
    let mut results: Vec<Vec<IdlePoint>> = Vec::new();
    for system in systems {
        let mut row = Vec::new();
        for &conns in counts {
            let scale = Scale::new(options.quick, Some(conns));
            let measured = idle_in_child(system.name(), options, &scale)?;
            let Measurement::Relayed { figures } = measured else {
                return Err(BenchError::new("W7 child printed no figures"));
            };
            row.push(
                match (
                    field(&figures, "rss_per_conn_kib"),
                    field(&figures, "w1_p50_us"),
                    field(&figures, "w1_p50_idle_free_us"),
                ) {
                    (Some(kib), Some(p50), Some(free)) => Ok((kib, p50, free)),
                    _ => Err(figures),
                },
            );
        }
        results.push(row);
    }
    let plain = systems.iter().position(|s| s.name() == PlainTcp::NAME);
    let mut heads = vec!["idle conns".to_owned()];
    for system in systems {
        for what in ["KiB/conn", "W1 p50 us held", "W1 p50 us before"] {
            heads.push(format!("{} {what}", system.name()));
        }
    }
    if let Some(p) = plain {
        for i in (0..systems.len()).filter(|&i| i != p) {
            heads.push(format!("{}/plain KiB", systems[i].name()));
        }
    }
    let heads: Vec<&str> = heads.iter().map(String::as_str).collect();
    let mut table = Table::new(
        "S-idle: idle connections held (W7, a child process per point)",
        &heads,
    );
    let mut skipped = Vec::new();
    for (j, &conns) in counts.iter().enumerate() {
        let mut row = vec![conns.to_string()];
        for (i, result) in results.iter().enumerate() {
            match &result[j] {
                Ok((kib, p50, free)) => {
                    row.push(format!("{kib:.2}"));
                    row.push(format!("{p50:.1}"));
                    row.push(format!("{free:.1}"));
                }
                Err(why) => {
                    skipped.push(format!("{} at {conns}: {why}", systems[i].name()));
                    row.extend(["-".into(), "-".into(), "-".into()]);
                }
            }
        }
        if let Some(p) = plain {
            for i in (0..systems.len()).filter(|&i| i != p) {
                let kib = |r: &IdlePoint| r.as_ref().ok().map(|r| r.0);
                row.push(ratio(kib(&results[i][j]), kib(&results[p][j])));
            }
        }
        table.row(row);
    }
    table.print();
    for line in skipped {
        println!("  {line}");
    }
    Ok(())
}

// --- rpcenv-only sweeps -------------------------------------------------------------------

/// A server env with `endpoints` echo endpoints (`echo` when 1, else `echo-0`..), and a
/// client-mode env.
fn rpcenv_pair(system: &RpcEnvSystem, endpoints: usize) -> Result<(RpcEnv, RpcEnv, Vec<String>)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let conf = system.conf();
    let server = RpcEnv::builder(format!("sweep-server-{id}"))
        .bind_address("127.0.0.1")
        .port(0)
        .conf(conf.clone())
        .build()
        .context("server env")?;
    let names: Vec<String> = if endpoints == 1 {
        vec![ECHO_ENDPOINT.to_owned()]
    } else {
        (0..endpoints).map(|i| format!("echo-{i}")).collect()
    };
    for name in &names {
        if let Err(err) = server.setup_endpoint(name, EchoEndpoint::default()) {
            server.shutdown();
            return Err(BenchError(format!("endpoint {name}: {err}")));
        }
    }
    let client = match RpcEnv::builder(format!("sweep-client-{id}"))
        .conf(conf)
        .client_mode(true)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            server.shutdown();
            return Err(BenchError(format!("client env: {err}")));
        }
    };
    Ok((server, client, names))
}

/// The outcome of one S-inflight point.
struct Inflight {
    answered: u64,
    queue_full: u64,
    other: Option<String>,
    req_per_s: f64,
    rss_growth_kib: u64,
}

fn inflight_as<P: Payload>(server: &RpcEnv, client: &RpcEnv, asks: usize) -> Result<Inflight> {
    let address = server
        .address()
        .ok_or_else(|| BenchError::new("no address"))?;
    let echo = client
        .setup_endpoint_ref::<BenchMsg>(&address, ECHO_ENDPOINT)
        .context("setup_endpoint_ref")?;
    let rss_before = rss_kib()?;
    let mut peak = rss_before;
    let started = Instant::now();
    let mut pending: Vec<Pending<P>> = Vec::with_capacity(asks);
    for seq in 0..asks {
        let mut body = vec![FILL; SMALL];
        stamp(&mut body, seq as u64);
        pending.push(echo.ask(P::echo(body)));
        if seq % 4096 == 0 {
            peak = peak.max(rss_kib()?);
        }
    }
    peak = peak.max(rss_kib()?);
    let mut answered = 0;
    let mut queue_full = 0;
    let mut other = None;
    for (seq, ask) in pending.into_iter().enumerate() {
        match ask.wait() {
            Ok(body) => {
                check_echo(body.into_echoed().bytes(), SMALL, Some(seq as u64), false)?;
                answered += 1;
            }
            Err(RpcError::QueueFull { .. }) => queue_full += 1,
            Err(err) => {
                other.get_or_insert_with(|| format!("ask {seq}: {err}"));
            }
        }
        if seq % 4096 == 0 {
            peak = peak.max(rss_kib()?);
        }
    }
    let elapsed = started.elapsed();
    Ok(Inflight {
        answered,
        queue_full,
        other,
        req_per_s: answered as f64 / elapsed.as_secs_f64(),
        rss_growth_kib: peak.saturating_sub(rss_before),
    })
}

/// Set in the environment of the process that runs one S-inflight point: its asks.
const INFLIGHT_CHILD: &str = "RPCENV_BENCH_INFLIGHT_CHILD";

/// In an S-inflight child: runs the one point and prints its result line.
fn inflight_child(system: &RpcEnvSystem, asks: usize) -> Result<()> {
    let r = inflight_point(system, asks)?;
    println!(
        "inflight answered={} queue_full={} req_per_s={:.0} rss_growth_kib={} other={}",
        r.answered,
        r.queue_full,
        r.req_per_s,
        r.rss_growth_kib,
        r.other.unwrap_or_else(|| "-".into()).replace(' ', "_")
    );
    Ok(())
}

fn inflight_point(system: &RpcEnvSystem, asks: usize) -> Result<Inflight> {
    let (server, client, _) = rpcenv_pair(system, 1)?;
    let result = match system.payload {
        PayloadKind::Seq => inflight_as::<Vec<u8>>(&server, &client, asks),
        PayloadKind::Bytes => inflight_as::<Bytes>(&server, &client, asks),
        PayloadKind::Shared => inflight_as::<SharedBytes>(&server, &client, asks),
    };
    client.shutdown();
    server.shutdown();
    result
}

/// Runs one S-inflight point in a fresh process (this bench again), so that memory an
/// earlier sweep freed does not absorb the asks' allocations and hide them from the RSS.
fn inflight_in_child(options: &Options, asks: usize) -> Result<Inflight> {
    let exe = std::env::current_exe().context("the path of this bench")?;
    let output = std::process::Command::new(exe)
        .env(INFLIGHT_CHILD, asks.to_string())
        .args(["S-inflight", "--threads", &options.io_threads.to_string()])
        .args(["--payload", options.payload.option()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run S-inflight in a child process")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("inflight "))
        .filter(|_| output.status.success())
        .ok_or_else(|| {
            BenchError(format!(
                "the S-inflight child ended with {} and printed {:?}",
                output.status,
                stdout.trim()
            ))
        })?;
    let number = |key| field(line, key).ok_or_else(|| BenchError(format!("no {key} in {line:?}")));
    let other = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("other="))
        .filter(|other| *other != "-")
        .map(|other| other.replace('_', " "));
    Ok(Inflight {
        answered: number("answered")? as u64,
        queue_full: number("queue_full")? as u64,
        other,
        req_per_s: number("req_per_s")?,
        rss_growth_kib: number("rss_growth_kib")? as u64,
    })
}

fn inflight_sweep(system: &RpcEnvSystem, options: &Options) -> Result<()> {
    if let Some(asks) = std::env::var_os(INFLIGHT_CHILD) {
        let asks = asks
            .to_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::new("bad S-inflight child count"))?;
        return inflight_child(system, asks);
    }
    let counts: &[usize] = if options.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let mut table = Table::new(
        "S-inflight: one caller asks N 64-byte echoes, then waits for all (rpcenv only)",
        &[
            "asks",
            "answered",
            "QueueFull",
            "req/s",
            "peak RSS growth KiB",
            "B/ask",
            "other failure",
        ],
    );
    for &asks in counts {
        let r = inflight_in_child(options, asks)?;
        table.row(vec![
            asks.to_string(),
            r.answered.to_string(),
            r.queue_full.to_string(),
            format!("{:.0}", r.req_per_s),
            r.rss_growth_kib.to_string(),
            format!("{:.0}", r.rss_growth_kib as f64 * 1024.0 / asks as f64),
            r.other.unwrap_or_else(|| "-".into()),
        ]);
    }
    table.print();
    Ok(())
}

fn endpoints_as<P: Payload>(
    server: &RpcEnv,
    client: &RpcEnv,
    names: &[String],
    rounds: usize,
) -> Result<Histogram<u64>> {
    let address = server
        .address()
        .ok_or_else(|| BenchError::new("no address"))?;
    let mut refs = Vec::with_capacity(names.len());
    for name in names {
        refs.push(
            client
                .setup_endpoint_ref::<BenchMsg>(&address, name)
                .context(format_args!("setup_endpoint_ref {name}"))?,
        );
    }
    let warmup = rounds / 10;
    let mut hist = histogram();
    let mut body = vec![FILL; SMALL];
    for i in 0..warmup + rounds {
        stamp(&mut body, i as u64);
        let started = Instant::now();
        let reply = refs[i % refs.len()]
            .ask_sync::<P>(P::echo(body))
            .map(P::into_echoed)
            .context(format_args!("ask {i}"))?;
        let took = started.elapsed();
        check_echo(reply.bytes(), SMALL, Some(i as u64), true)?;
        if i >= warmup {
            hist.saturating_record(took.as_nanos() as u64);
        }
        body = reply.into_vec();
    }
    Ok(hist)
}

fn endpoints_sweep(system: &RpcEnvSystem, quick: bool) -> Result<()> {
    let (counts, rounds): (&[usize], usize) = if quick {
        (&[10, 100, 1_000], 2_000)
    } else {
        (&[10, 100, 1_000, 10_000], 20_000)
    };
    let mut table = Table::new(
        "S-endpoints: 64-byte asks round robin over N endpoints of one env (rpcenv only)",
        &["endpoints", "register ms", "p50 us", "p99 us", "p50 vs 10"],
    );
    let mut base = None;
    for &n in counts {
        let began = Instant::now();
        let (server, client, names) = rpcenv_pair(system, n)?;
        let register_ms = began.elapsed().as_secs_f64() * 1e3;
        let result = match system.payload {
            PayloadKind::Seq => endpoints_as::<Vec<u8>>(&server, &client, &names, rounds),
            PayloadKind::Bytes => endpoints_as::<Bytes>(&server, &client, &names, rounds),
            PayloadKind::Shared => endpoints_as::<SharedBytes>(&server, &client, &names, rounds),
        };
        client.shutdown();
        server.shutdown();
        let hist = result?;
        let p50 = micros_at(&hist, 0.5);
        let base = *base.get_or_insert(p50);
        table.row(vec![
            n.to_string(),
            format!("{register_ms:.0}"),
            format!("{p50:.1}"),
            format!("{:.1}", micros_at(&hist, 0.99)),
            format!("{:.2}", p50 / base),
        ]);
    }
    table.print();
    Ok(())
}

// --- S-record -----------------------------------------------------------------------------

/// ns per record of the exact samples (push, then one sort) and of `hdrhistogram`, on
/// the same synthetic durations, in alternating rounds; and their percentiles.
fn record_sweep(quick: bool) -> Result<()> {
    let n = if quick { 100_000 } else { 1_000_000 };
    // Latency-like values: 20-60 us with a tail to 10 ms (xorshift, fixed seed).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let values: Vec<Duration> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = 20_000 + x % 40_000;
            let tail = if x % 100 == 0 { x % 10_000_000 } else { 0 };
            Duration::from_nanos(base + tail)
        })
        .collect();
    let rounds = 5;
    let mut exact_ns = Vec::new();
    let mut hdr_ns = Vec::new();
    let mut exact = (0.0, 0.0);
    let mut hdr = (0.0, 0.0);
    for _ in 0..rounds {
        let started = Instant::now();
        let mut samples = Vec::with_capacity(n);
        for v in &values {
            samples.push(std::hint::black_box(*v));
        }
        samples.sort_unstable();
        let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        exact = (
            rank(0.5).as_nanos() as f64 / 1e3,
            rank(0.99).as_nanos() as f64 / 1e3,
        );
        exact_ns.push(started.elapsed().as_nanos() as f64 / n as f64);

        let started = Instant::now();
        let mut h = histogram();
        for v in &values {
            h.saturating_record(std::hint::black_box(v.as_nanos() as u64));
        }
        hdr = (micros_at(&h, 0.5), micros_at(&h, 0.99));
        hdr_ns.push(started.elapsed().as_nanos() as f64 / n as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut table = Table::new(
        format!("S-record: recording {n} latencies, median of {rounds} alternating rounds"),
        &["recorder", "ns/record", "p50 us", "p99 us", "memory"],
    );
    table.row(vec![
        "exact (Vec, sort, nearest rank)".into(),
        format!("{:.1}", median(&mut exact_ns)),
        format!("{:.3}", exact.0),
        format!("{:.3}", exact.1),
        format!("{} KiB", n * 16 / 1024),
    ]);
    table.row(vec![
        "hdrhistogram (3 digits)".into(),
        format!("{:.1}", median(&mut hdr_ns)),
        format!("{:.3}", hdr.0),
        format!("{:.3}", hdr.1),
        format!("{} KiB", histogram().distinct_values() * 8 / 1024),
    ]);
    table.print();
    Ok(())
}

// --- charts -------------------------------------------------------------------------------

/// One chart series per system (its name, points): at each x of `xs`, the figure `y`
/// takes from the system's result there, where it has one and `y` gives one.
fn series<R: Copy>(
    systems: &[&dyn System],
    xs: &[usize],
    results: &[Vec<Option<R>>],
    y: impl Fn(R) -> Option<f64>,
) -> Vec<(&'static str, Vec<(f64, f64)>)> {
    systems
        .iter()
        .zip(results)
        .map(|(system, result)| {
            let points = xs
                .iter()
                .zip(result)
                .filter_map(|(&x, r)| r.and_then(&y).map(|y| (x as f64, y)))
                .collect();
            (system.name(), points)
        })
        .collect()
}

/// Draws `series` (name, points) as lines with points to an SVG at `path`; log x, and
/// log y when `log_y`.
fn chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<()> {
    use plotters::prelude::*;

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(format_args!("creating {}", dir.display()))?;
    }
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(BenchError::new("no points to chart"));
    }
    let err = |e: &dyn std::fmt::Display| BenchError(format!("chart {}: {e}", path.display()));
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let colors = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80);
    let x_range = (x0 / 1.2..x1 * 1.2).log_scale();
    let label_x = |x: &f64| bytes_or_count(*x);
    // The same chart over either kind of y axis (a log one and a linear one are two
    // types to plotters).
    macro_rules! draw {
        ($y_range:expr) => {{
            let mut chart = builder
                .build_cartesian_2d(x_range, $y_range)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&label_x)
                .y_label_formatter(&|y| short_number(*y))
                .draw()
                .map_err(|e| err(&e))?;
            for (k, (name, pts)) in series.iter().enumerate() {
                let color = colors[k % colors.len()];
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if log_y {
        draw!((y0 / 1.5..y1 * 1.5).log_scale());
    } else {
        draw!(0.0..y1 * 1.1);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// An axis label: a byte size when it is a power of two of 1024 or more, else the
/// number, shortened.
fn bytes_or_count(x: f64) -> String {
    let n = x.round() as usize;
    if n >= 1024 && n.is_power_of_two() {
        bytes_label(n)
    } else {
        short_number(x)
    }
}

/// `x` with a `k` or `M` suffix (10^3, 10^6) when it has one.
fn short_number(x: f64) -> String {
    if x >= 1e6 {
        format!("{}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
