//! The `stress` example as a user runs it: short runs in each mode against an in-process
//! server, a `--serve` process with a `--connect` client process, and bad flags.
//!
//! The binary is built, if needed, by `example_bins` (shared with the node tests).

mod example_bins;

use example_bins::{Node, example};
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A run that takes longer than this is killed and fails the test.
const LIMIT: Duration = Duration::from_secs(60);

/// Reads all of a child's pipe on a thread of its own.
fn collect(pipe: impl Read + Send + 'static, name: &str) -> JoinHandle<String> {
    thread::Builder::new()
        .name(format!("collect-{name}"))
        .spawn(move || {
            let mut text = String::new();
            let mut pipe = pipe;
            let _ = pipe.read_to_string(&mut text);
            text
        })
        .expect("spawning a collector thread")
}

/// Waits for `child` up to [`LIMIT`]; kills it and panics past that.
fn wait_bounded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {LIMIT:?}: killed");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished run left behind.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    /// `name=N` from the `RESULT` line of the summary.
    fn result(&self, name: &str) -> u64 {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .unwrap_or_else(|| panic!("no RESULT line in the summary:\n{self}"));
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name}=N on the RESULT line:\n{self}"))
    }

    /// `name=X` from the `RESULT` line, as text (`None` if the field is missing).
    fn result_text(&self, name: &str) -> Option<String> {
        let line = self.stdout.lines().find(|l| l.starts_with("RESULT "))?;
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    }

    /// Asserts that the `RESULT` line has `name=X`, X a size in MiB (Linux) or `unknown`.
    #[track_caller]
    fn assert_rss_field(&self, name: &str) {
        let value = self
            .result_text(name)
            .unwrap_or_else(|| panic!("no {name}= on the RESULT line:\n{self}"));
        if cfg!(target_os = "linux") {
            let mib: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value} is not a number:\n{self}"));
            assert!(mib > 0.0 && mib < 4096.0, "{name}={value}\n{self}");
        } else {
            assert_eq!(value, "unknown", "{self}");
        }
    }

    /// Asserts a run that passed: exit 0, nothing lost, order held.
    #[track_caller]
    fn assert_passed(&self) {
        assert_eq!(self.status.code(), Some(0), "exit status\n{self}");
        assert_eq!(self.result("lost"), 0, "lost\n{self}");
        assert_eq!(self.result("order_violations"), 0, "order\n{self}");
        assert_eq!(self.result("errors"), 0, "errors\n{self}");
        assert!(self.stdout.contains("\nPASS"), "{self}");
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the stress binary with `args` to the end (within [`LIMIT`]).
fn run(args: &[&str]) -> Output {
    let what = format!("stress {}", args.join(" "));
    let mut child = Command::new(example("stress"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    let stdout = collect(child.stdout.take().expect("piped"), "stdout");
    let stderr = collect(child.stderr.take().expect("piped"), "stderr");
    let status = wait_bounded(&mut child, &what);
    Output {
        status,
        stdout: stdout.join().expect("stdout collector"),
        stderr: stderr.join().expect("stderr collector"),
    }
}

/// A short in-process run: 3 clients of 2,000 messages in `mode`, then `extra` flags.
fn short_run(mode: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--clients", "3", "--messages", "2000", "--mode", mode];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn mixed_run_loses_nothing() {
    let out = short_run("mixed", &[]);
    out.assert_passed();
    assert!(out.stdout.contains("6000 sent"), "{out}");
    assert!(out.stdout.contains("ask latency   p50"), "{out}");
    // stderr is a pipe: no progress frames in it.
    assert!(!out.stderr.contains('\r'), "{out}");
    assert!(!out.stderr.contains("100%"), "{out}");
    assert!(out.stdout.contains("3 clients x 2000 messages"), "{out}");
}

/// `--progress-lines`: plain progress lines with the live figures (asks in flight, the
/// in-process server's inbox from its metrics), no `\r` frames.
#[test]
fn progress_lines_show_asks_in_flight_and_queues() {
    let out = short_run("mixed", &["--progress-lines"]);
    out.assert_passed();
    assert!(!out.stderr.contains('\r'), "{out}");
    assert!(
        out.stderr
            .contains("STRESS progress 100% 6000/6000 msg, asks in flight 0, server inbox "),
        "{out}"
    );
}

/// A run that sends nothing: the summary divides by no zero count (no throughput of
/// nothing, no per-message figure), and one client is "1 client".
#[test]
fn an_empty_run_summarizes_without_dividing_by_zero() {
    let out = run(&["--clients", "1", "--messages", "0", "--quiet"]);
    out.assert_passed();
    assert!(out.stdout.contains("1 client x 0 messages"), "{out}");
    assert!(!out.stdout.contains("1 clients"), "{out}");
    assert!(
        out.stdout.contains("throughput    n/a (nothing received)"),
        "{out}"
    );
    assert!(!out.stdout.contains("per message"), "{out}");
    assert!(!out.stdout.contains("inf"), "{out}");
    assert!(!out.stdout.contains("NaN"), "{out}");
}

/// `stress --serve` stops cleanly on SIGTERM: exit status 0.
#[cfg(unix)]
#[test]
fn serve_exits_0_on_sigterm() {
    let mut server = Node::spawn("serve", "stress", &["--serve", "--port", "0"]);
    server.expect_line("its address", LIMIT, |l| {
        l.starts_with("STRESS serving on ")
    });
    let kill = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(kill.success(), "kill -TERM: {kill}");
    let status = server.wait_exit(LIMIT);
    assert!(status.success(), "{status}\n{}", server.output());
    assert!(server.saw("STRESS stopped"), "{}", server.output());
}

#[test]
fn send_run_loses_nothing() {
    let out = short_run("send", &["--quiet"]);
    out.assert_passed();
    assert!(out.stdout.contains("(6000 one-way, 0 asks)"), "{out}");
    // The peak RSS covers the in-process server; there is no separate server figure.
    out.assert_rss_field("peak_rss_mib");
    assert!(out.stdout.contains("  peak RSS      "), "{out}");
    assert_eq!(out.result_text("server_peak_rss_mib"), None, "{out}");
}

#[test]
fn ask_run_loses_nothing() {
    let out = short_run("ask", &["--window", "4", "--payload", "1k", "--quiet"]);
    out.assert_passed();
    assert!(out.stdout.contains("(0 one-way, 6000 asks)"), "{out}");
    assert_eq!(out.result("bad_replies"), 0, "{out}");
}

#[test]
fn shared_dispatcher_run_loses_nothing() {
    let out = short_run("mixed", &["--threading", "shared", "--quiet"]);
    out.assert_passed();
    assert!(out.stdout.contains("on the shared dispatcher"), "{out}");
}

#[test]
fn serve_and_connect_in_separate_processes() {
    let mut server = Node::spawn("serve", "stress", &["--serve", "--port", "0"]);
    let line = server.expect_line("its address", LIMIT, |l| {
        l.starts_with("STRESS serving on ")
    });
    let uri = line["STRESS serving on ".len()..].trim().to_owned();
    assert!(uri.starts_with("rpc://stress@127.0.0.1:"), "{uri}");

    let out = run(&[
        "--connect",
        &uri,
        "--clients",
        "2",
        "--messages",
        "2000",
        "--mode",
        "mixed",
        "--quiet",
    ]);
    out.assert_passed();
    assert!(
        out.stdout.contains(&format!("target        {uri}\n")),
        "{out}"
    );
    // The clients' peak RSS and the server's, which came with the final counts.
    out.assert_rss_field("peak_rss_mib");
    out.assert_rss_field("server_peak_rss_mib");
    // The server says so too, once both clients have finished.
    let line = server.expect_line("the run's line", LIMIT, |l| {
        l.starts_with("STRESS run ") && l.contains(" finished: ")
    });
    assert!(
        line.contains("clients=2 received=4000 peak_rss_mib="),
        "{line}"
    );
    // The server outlives its clients.
    assert!(
        server.is_running(),
        "stress --serve exited after the run\n{}",
        server.output()
    );
    // A second run against the same server is counted on its own.
    run(&[
        "--connect",
        &uri,
        "--clients",
        "1",
        "--messages",
        "500",
        "--quiet",
    ])
    .assert_passed();
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, named) in [
        (&["--clients", "many"][..], "--clients"),
        (&["--frobnicate"][..], "--frobnicate"),
        (&["--mode", "fast"][..], "--mode"),
        (&["--window", "0"][..], "--window"),
        (&["--payload", "1g"][..], "--payload"),
        (&["--messages"][..], "--messages"),
        (&["--connect", "localhost:7077"][..], "--connect"),
        (&["--serve", "--clients", "2"][..], "--clients"),
        (&["--port", "7077"][..], "--port"),
        (&["--advertise", "example.com"][..], "--advertise"),
        (&["--threading", "pooled"][..], "--threading"),
        (
            &[
                "--connect",
                "rpc://stress@127.0.0.1:7077",
                "--threading",
                "shared",
            ][..],
            "--threading",
        ),
        (&["--conf", "rpc.askTimout=5s"][..], "--conf"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{out}");
        assert!(out.stderr.contains(named), "{args:?}: {named}\n{out}");
        assert!(out.stdout.is_empty(), "{args:?}\n{out}");
    }
}

#[test]
fn help_prints_usage() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{out}");
    for flag in [
        "--clients",
        "--messages",
        "--payload",
        "--mode",
        "--window",
        "--connect",
        "--serve",
        "--port",
    ] {
        assert!(out.stdout.contains(flag), "{flag}\n{out}");
    }
}
