//! Running the example programs from tests: building them, and child processes whose
//! output is read line by line with bounded waits, killed when the test lets go of them.
//!
//! The binaries are `target/<profile>/examples/NAME`, next to the test's own directory.
//! `cargo test` builds the examples before it runs tests, but `cargo test --test nodes`
//! does not, so the first test that needs them runs `cargo build --example …` (a no-op
//! when they are up to date) rather than test stale binaries.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// The examples the tests run.
const EXAMPLES: [&str; 5] = ["master", "worker", "demo", "stress", "transport_demo"];

/// How many of a child's last lines a failure message shows.
const SHOWN: usize = 200;

/// `target/<profile>/examples`, with the examples built (once per test process).
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/nodes-HASH → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in target/<profile>/deps");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for example in EXAMPLES {
            build.args(["--example", example]);
        }
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        let status = build.status().expect("running cargo build --example …");
        assert!(
            status.success(),
            "building the examples failed ({status}); run `cargo build --examples` to see why"
        );
        profile_dir.join("examples")
    })
}

/// The path of example `name`, built if needed.
pub(crate) fn example(name: &str) -> PathBuf {
    let bin = examples_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "no {name} binary at {}: run `cargo build --examples`",
        bin.display()
    );
    bin
}

/// A child process with its stdout and stderr read line by line (stderr lines start
/// with `err| `). Killed and waited for when dropped, so a failed assertion leaves no
/// process behind.
pub(crate) struct Node {
    name: String,
    child: Child,
    lines: Receiver<String>,
    /// The last lines read, for failure messages.
    seen: VecDeque<String>,
    status: Option<ExitStatus>,
    /// Its stdin, when started with [`spawn_with_stdin`](Self::spawn_with_stdin).
    stdin: Option<ChildStdin>,
}

impl Node {
    /// Starts example `example` with `args`, stdin closed.
    pub(crate) fn spawn(name: &str, example_name: &str, args: &[&str]) -> Self {
        Self::start(name, example_name, args, false)
    }

    /// Starts example `example` with `args` and a pipe to its stdin, for
    /// [`send_line`](Self::send_line).
    pub(crate) fn spawn_with_stdin(name: &str, example_name: &str, args: &[&str]) -> Self {
        Self::start(name, example_name, args, true)
    }

    /// Writes `line` and a newline to the process's stdin.
    #[track_caller]
    pub(crate) fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("started with spawn_with_stdin");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|err| panic!("{}: writing to its stdin: {err}", self.name));
    }

    fn start(name: &str, example_name: &str, args: &[&str], piped_stdin: bool) -> Self {
        let bin = example(example_name);
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(if piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name} ({}): {err}", bin.display()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        forward(stdout, "", tx.clone(), &format!("{name}-out"));
        forward(stderr, "err| ", tx, &format!("{name}-err"));
        let stdin = child.stdin.take();
        Self {
            name: name.to_owned(),
            child,
            lines,
            seen: VecDeque::new(),
            status: None,
            stdin,
        }
    }

    /// Reads lines until one satisfies `pred`, within `within`, and returns it; panics
    /// with `what` and the last lines otherwise.
    #[track_caller]
    pub(crate) fn expect_line(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.remember(&line);
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no {what} within {within:?}\n{}",
                        self.name,
                        self.output()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let exit = self.exit_text();
                    panic!(
                        "{}: its output ended before {what} ({exit})\n{}",
                        self.name,
                        self.output()
                    )
                }
            }
        }
    }

    /// Waits for the process to exit by itself, within `within`; reads all its output.
    #[track_caller]
    pub(crate) fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                        self.remember(&line);
                    }
                }
                Ok(None) => {
                    self.kill();
                    panic!(
                        "{}: still running after {within:?}; killed\n{}",
                        self.name,
                        self.output()
                    )
                }
                Err(err) => panic!("{}: waiting for it: {err}", self.name),
            }
        }
        // The pipes close with the process: the rest of its output comes promptly.
        let drain_until = Instant::now() + Duration::from_secs(5);
        loop {
            let left = drain_until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.remember(&line),
                Err(_) => break,
            }
        }
        self.status.expect("set above")
    }

    /// Whether the process still runs.
    pub(crate) fn is_running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (SIGKILL on Unix) and waits for it.
    pub(crate) fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Everything read so far (the last [`SHOWN`] lines).
    pub(crate) fn output(&self) -> String {
        let mut text = format!("--- last {} lines of {} ---\n", self.seen.len(), self.name);
        for line in &self.seen {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// How many of the lines read so far (the last [`SHOWN`]) contain `needle`.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    /// The first line read so far that satisfies `pred`; panics with `what` otherwise.
    #[track_caller]
    pub(crate) fn expect_line_seen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.seen
            .iter()
            .find(|l| pred(l))
            .cloned()
            .unwrap_or_else(|| panic!("{}: no {what}\n{}", self.name, self.output()))
    }

    /// Whether a line read so far contains `needle`.
    pub(crate) fn saw(&self, needle: &str) -> bool {
        self.seen.iter().any(|l| l.contains(needle))
    }

    fn remember(&mut self, line: &str) {
        if self.seen.len() == SHOWN {
            self.seen.pop_front();
        }
        self.seen.push_back(line.to_owned());
    }

    fn exit_text(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!("it exited: {status}"),
            _ => "still running".to_owned(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends each line of `pipe`, prefixed, to `tx`, on a thread that ends with the pipe.
fn forward(pipe: impl Read + Send + 'static, prefix: &'static str, tx: Sender<String>, name: &str) {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(format!("{prefix}{line}")).is_err() {
                    break;
                }
            }
        })
        .expect("spawning a pipe reader thread");
}
