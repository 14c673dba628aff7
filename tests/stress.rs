//! The `stress` example as a user runs it: short runs in each mode against an in-process
//! server, a `--serve` process with a `--connect` client process, and bad flags.
//!
//! The binary is `target/<profile>/examples/stress`, next to this test's own directory.
//! `cargo test` builds it before running tests, but `cargo test --test stress` does not,
//! so the first test to need it runs `cargo build --example stress` (a no-op when it is
//! up to date) rather than test a stale binary.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A run that takes longer than this is killed and fails the test.
const LIMIT: Duration = Duration::from_secs(60);

/// The stress binary, built (once per test process) if needed.
fn stress_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/stress-HASH → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in target/<profile>/deps");
        let bin = profile_dir
            .join("examples")
            .join(format!("stress{}", std::env::consts::EXE_SUFFIX));
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "--example", "stress"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        let status = build
            .status()
            .expect("running cargo build --example stress");
        assert!(status.success(), "cargo build --example stress: {status}");
        assert!(
            bin.is_file(),
            "no stress binary at {} (run `cargo build --example stress`)",
            bin.display()
        );
        bin
    })
}

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

/// A child process that is killed if the test lets go of it (a failed assertion too).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
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
    let mut child = Command::new(stress_bin())
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

#[test]
fn mixed_run_loses_nothing() {
    let out = run(&["--clients", "3", "--messages", "2000", "--mode", "mixed"]);
    out.assert_passed();
    assert!(out.stdout.contains("6000 sent"), "{out}");
    assert!(out.stdout.contains("ask latency   p50"), "{out}");
    // The progress bar ends at 100%.
    assert!(out.stderr.contains("100%"), "{out}");
}

#[test]
fn send_run_loses_nothing() {
    let out = run(&[
        "--clients",
        "3",
        "--messages",
        "2000",
        "--mode",
        "send",
        "--quiet",
    ]);
    out.assert_passed();
    assert!(out.stdout.contains("(6000 one-way, 0 asks)"), "{out}");
}

#[test]
fn ask_run_loses_nothing() {
    let out = run(&[
        "--clients",
        "3",
        "--messages",
        "2000",
        "--mode",
        "ask",
        "--window",
        "4",
        "--payload",
        "1k",
        "--quiet",
    ]);
    out.assert_passed();
    assert!(out.stdout.contains("(0 one-way, 6000 asks)"), "{out}");
    assert_eq!(out.result("bad_replies"), 0, "{out}");
}

#[test]
fn shared_dispatcher_run_loses_nothing() {
    let out = run(&[
        "--clients",
        "3",
        "--messages",
        "2000",
        "--mode",
        "mixed",
        "--threading",
        "shared",
        "--quiet",
    ]);
    out.assert_passed();
    assert!(out.stdout.contains("on the shared dispatcher"), "{out}");
}

#[test]
fn serve_and_connect_in_separate_processes() {
    let mut server = Guard(
        Command::new(stress_bin())
            .args(["--serve", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting stress --serve"),
    );
    let stdout = server.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("serve-stdout".into())
        .spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        })
        .expect("spawning the reader");
    let line = rx
        .recv_timeout(LIMIT)
        .expect("stress --serve printed no line within the limit");
    let uri = line
        .trim()
        .strip_prefix("STRESS serving on ")
        .unwrap_or_else(|| panic!("unexpected first line of stress --serve: {line:?}"))
        .to_owned();
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
    // The server outlives its clients.
    assert!(
        matches!(server.0.try_wait(), Ok(None)),
        "stress --serve exited after the run"
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
