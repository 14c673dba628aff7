//! The example nodes as separate processes: a `master` and `worker`s started as child
//! processes, the master's `MASTER …` lines on stdout read to follow what it sees.
//!
//! - two workers (one in client mode) register; a driver process (`demo --connect`)
//!   runs tasks through them; a third worker with a taken id is refused; killing each
//!   worker makes the master drop it, through its connection closing (the worker timeout
//!   is set far beyond the wait);
//! - a worker that stops answering (SIGSTOP) is lost by its heartbeats, and registers
//!   again when it runs again;
//! - a worker whose master dies prints its failed heartbeats (a connection error), and
//!   registers again with a new master on the same port;
//! - a worker started before its master keeps trying until the master is there;
//! - with `--secret-file`, workers with the master's secret register and run tasks over
//!   encrypted connections; a worker with another secret fails with an authentication
//!   error and is never registered;
//! - bad flags end with exit status 2 and a message; `--help` prints the usage.

mod example_bins;

// The examples' flag parser, whose unit tests run here.
#[allow(dead_code)]
#[path = "../examples/cluster/flags.rs"]
mod flags;

use std::net::TcpListener;
use std::time::Duration;

use example_bins::Node;

/// The bound of every wait for something that should happen soon.
const WAIT: Duration = Duration::from_secs(30);
/// How soon the master must drop a killed worker. Far below the worker timeout the
/// master runs with, so only the closed connection can explain it.
const NOTICE: Duration = Duration::from_secs(10);

/// Starts a master on a free port of 127.0.0.1 and returns it with its workers' URI.
fn master(extra: &[&str]) -> (Node, String) {
    let mut args = vec!["--port", "0", "--worker-timeout", "60s"];
    args.extend_from_slice(extra);
    let mut master = Node::spawn("master", "master", &args);
    let uri = workers_uri(&mut master);
    (master, uri)
}

/// Waits for `master`'s listening line; the URI its workers reach it at.
fn workers_uri(master: &mut Node) -> String {
    let line = master.expect_line("MASTER listening on", WAIT, |l| {
        l.starts_with("MASTER listening on ")
    });
    let address = line["MASTER listening on ".len()..].trim().to_owned();
    format!("rpc://Master@{address}")
}

/// Starts a master (named `name` in the output) on `port`, which must be free, and
/// waits until it listens there.
fn master_on(name: &str, port: &str) -> Node {
    let mut master = Node::spawn(name, "master", &["--port", port, "--worker-timeout", "60s"]);
    let listening = master.expect_line("MASTER listening on", WAIT, |l| {
        l.starts_with("MASTER listening on ")
    });
    assert!(
        listening.ends_with(&format!(":{port}")),
        "the port was taken meanwhile: {listening}"
    );
    master
}

/// A port of 127.0.0.1 that was free a moment ago, and the URI of a master there.
fn free_port() -> (u16, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    (port, format!("rpc://Master@127.0.0.1:{port}"))
}

/// Starts the worker `id` of the master at `uri`, with `extra` flags.
fn start_worker(id: &str, uri: &str, extra: &[&str]) -> Node {
    let mut args = vec!["--master", uri, "--id", id];
    args.extend_from_slice(extra);
    Node::spawn(id, "worker", &args)
}

/// Waits for the next line of `master` saying that worker `id` registered.
fn expect_registered(master: &mut Node, id: &str) {
    let registered = format!("MASTER worker registered id={id} ");
    master.expect_line(&format!("{id}'s registration"), WAIT, |l| {
        l.starts_with(&registered)
    });
}

/// Checks that `master` has said, or now says, that each worker of `ids` registered (in
/// any order).
fn expect_all_registered(master: &mut Node, ids: &[&str]) {
    for id in ids {
        let registered = format!("MASTER worker registered id={id} ");
        if !master.saw(&registered) {
            master.expect_line(&registered, WAIT, |l| l.starts_with(&registered));
        }
    }
}

/// Waits for `worker`'s line saying that it registered as `id`.
fn expect_worker_registered(worker: &mut Node, id: &str) {
    let registered = format!("WORKER registered id={id} ");
    worker.expect_line(&format!("{id}'s registration"), WAIT, |l| {
        l.starts_with(&registered)
    });
}

/// Waits (up to `within`) for `node` to exit with status 0, having said `says`.
fn expect_clean_exit(node: &mut Node, within: Duration, says: &str) {
    let status = node.wait_exit(within);
    assert!(status.success(), "exit {status}\n{}", node.output());
    assert!(node.saw(says), "expected '{says}'\n{}", node.output());
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to `node` with `kill`.
#[cfg(unix)]
fn signal(node: &Node, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &node.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal}: {status}");
}

#[test]
fn the_master_drops_killed_workers() {
    let (mut master, uri) = master(&[]);
    let mut w1 = start_worker("w1", &uri, &["--client-mode"]);
    let mut w2 = start_worker("w2", &uri, &["--port", "0"]);
    expect_all_registered(&mut master, &["w1", "w2"]);
    expect_worker_registered(&mut w1, "w1");
    expect_worker_registered(&mut w2, "w2");

    // A driver process runs tasks through them (the demo, driving this master).
    let mut driver = Node::spawn("driver", "demo", &["--connect", &uri, "--tasks", "40"]);
    let status = driver.wait_exit(WAIT);
    assert!(
        status.success() && driver.saw("DEMO OK tasks=40/40 "),
        "the driver: {status}\n{}",
        driver.output()
    );
    assert!(
        driver.saw("  per worker   w1 ") && driver.saw(", w2 "),
        "both workers run tasks\n{}",
        driver.output()
    );

    // A worker whose id is taken is refused, and says so.
    let mut duplicate = Node::spawn(
        "w2-again",
        "worker",
        &["--master", &uri, "--id", "w2", "--client-mode"],
    );
    let status = duplicate.wait_exit(WAIT);
    assert!(
        !status.success() && duplicate.saw("duplicate worker id w2"),
        "a second w2 must be refused ({status})\n{}",
        duplicate.output()
    );
    master.expect_line("the refusal", WAIT, |l| {
        l.starts_with("MASTER worker refused id=w2 ")
    });

    // Killed (SIGKILL): the client-mode worker's only connection closes.
    w1.kill();
    let lost = master.expect_line("w1 lost", NOTICE, |l| {
        l.starts_with("MASTER worker lost id=w1 ")
    });
    assert!(!lost.contains("no heartbeat"), "{lost}");
    assert!(
        !master.saw("MASTER worker lost id=w2 "),
        "w2 is still alive\n{}",
        master.output()
    );

    // The worker with a listener: its connections close.
    w2.kill();
    let lost = master.expect_line("w2 lost", NOTICE, |l| {
        l.starts_with("MASTER worker lost id=w2 ")
    });
    assert!(!lost.contains("no heartbeat"), "{lost}");
    master.kill();
}

#[test]
fn a_worker_reports_failed_heartbeats_and_registers_with_a_new_master() {
    let (mut master, uri) = master(&[]);
    let port = uri.rsplit(':').next().expect("host:port").to_owned();
    let mut worker = start_worker("w1", &uri, &["--client-mode"]);
    expect_worker_registered(&mut worker, "w1");

    // The master dies: the worker's heartbeats fail with a connection error.
    master.kill();
    let failed = worker.expect_line("a failed heartbeat", WAIT, |l| {
        l.starts_with("WORKER heartbeat failed id=w1 error=")
    });
    assert!(
        failed.contains(&format!("error=connection to 127.0.0.1:{port} ")),
        "{failed}"
    );
    // The closed connection is told on stdout too, once.
    if !worker.saw("WORKER master lost id=w1 ") {
        worker.expect_line("the master lost", WAIT, |l| {
            l.starts_with("WORKER master lost id=w1 ")
        });
    }

    // A new master on the same port does not know w1: it registers again.
    let mut master = master_on("master2", &port);
    worker.expect_line("heartbeats resumed", WAIT, |l| {
        l.starts_with("WORKER heartbeats resumed id=w1 failed=")
    });
    worker.expect_line("w1 registered again", WAIT, |l| {
        l == "WORKER registered again id=w1"
    });
    expect_registered(&mut master, "w1");
}

#[test]
fn a_worker_waits_for_its_master() {
    // A port that was free a moment ago; the master, started later, must get it.
    let (port, uri) = free_port();
    let port = port.to_string();
    let mut worker = start_worker("w1", &uri, &["--client-mode"]);
    worker.expect_line("a failed registration attempt", WAIT, |l| {
        l.contains("registration attempt 1 ")
    });
    let mut master = master_on("master", &port);
    expect_registered(&mut master, "w1");
    expect_worker_registered(&mut worker, "w1");
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for (example, args, message) in [
        ("master", &["--bogus"][..], "unexpected argument '--bogus'"),
        (
            "master",
            &["--port", "seventy"][..],
            "invalid value 'seventy' for '--port <PORT>'",
        ),
        (
            "master",
            &["--worker-timeout", "5h"][..],
            "--worker-timeout",
        ),
        (
            "worker",
            &["--client-mode", "--port", "7078"][..],
            "the argument '--client-mode' cannot be used with '--port <PORT>'",
        ),
        (
            "worker",
            &["--cores"][..],
            "a value is required for '--cores <N>'",
        ),
        (
            "worker",
            &["--cores", "0"][..],
            "invalid value '0' for '--cores <N>'",
        ),
        (
            "worker",
            &["--master", "Master@127.0.0.1:7077"][..],
            "expected rpc://NAME@HOST:PORT",
        ),
        (
            "worker",
            &["--master", "rpc://Master@127.0.0.1:http"][..],
            "invalid value 'rpc://Master@127.0.0.1:http' for '--master <URI>'",
        ),
        (
            "demo",
            &["--kill", "w9"][..],
            "invalid value 'w9' for '--kill <ID>'",
        ),
        (
            "demo",
            &["--kill", "w1", "--connect", "rpc://Master@127.0.0.1:1"][..],
            "cannot be used with",
        ),
        (
            "transport_demo",
            &["--bogus"][..],
            "unexpected argument '--bogus'",
        ),
        (
            "master",
            &["--conf", "rpc.io.threads"][..],
            "--conf takes KEY=VALUE, not 'rpc.io.threads'",
        ),
        (
            "worker",
            &["--conf", "rpc.askTimeout=soon"][..],
            "--conf rpc.askTimeout=soon: invalid configuration rpc.askTimeout",
        ),
        (
            "demo",
            &["--conf", "rpc.io.threads=2", "--conf", "rpc.askTimout=5s"][..],
            "--conf rpc.askTimout=5s: invalid configuration rpc.askTimout: unknown key",
        ),
    ] {
        let mut node = Node::spawn(example, example, args);
        let status = node.wait_exit(WAIT);
        assert_eq!(
            status.code(),
            Some(2),
            "{example} {args:?}\n{}",
            node.output()
        );
        assert!(
            node.saw(message) && node.saw("--help"),
            "{example} {args:?}: expected '{message}' and a pointer to --help\n{}",
            node.output()
        );
        // The worker checks its --master before it binds or logs anything.
        assert!(
            !node.saw("listening"),
            "{example} {args:?}\n{}",
            node.output()
        );
    }
    for example in ["master", "worker", "demo", "transport_demo"] {
        let mut node = Node::spawn(example, example, &["--help"]);
        let status = node.wait_exit(WAIT);
        assert!(
            status.success(),
            "{example} --help: {status}\n{}",
            node.output()
        );
        assert!(node.saw("Usage:"), "{example} --help\n{}", node.output());
    }
}

/// A worker that stops answering (SIGSTOP) keeps its connection open: the master loses
/// it by its heartbeats, and once it runs again it is told to register again.
#[cfg(unix)]
#[test]
fn a_silent_worker_is_lost_by_its_heartbeats_and_registers_again() {
    let mut master = Node::spawn(
        "master",
        "master",
        &["--port", "0", "--worker-timeout", "2s"],
    );
    let uri = workers_uri(&mut master);
    let mut worker = start_worker("w1", &uri, &["--heartbeat", "200ms"]);
    expect_registered(&mut master, "w1");
    signal(&worker, "-STOP");
    let lost = master.expect_line("w1 lost", WAIT, |l| {
        l.starts_with("MASTER worker lost id=w1 ")
    });
    signal(&worker, "-CONT");
    assert!(lost.contains("no heartbeat"), "{lost}\n{}", master.output());
    master.expect_line("the unknown heartbeat", WAIT, |l| {
        l.starts_with("MASTER worker unknown id=w1 ")
    });
    master.expect_line("w1's second registration", WAIT, |l| {
        l.starts_with("MASTER worker registered id=w1 ")
    });
    worker.kill();
}

/// SIGTERM (as Ctrl-C) shuts a worker's env down cleanly: it exits 0, and the master
/// sees its connection close at once.
#[cfg(unix)]
#[test]
fn sigterm_shuts_a_worker_down_cleanly_and_the_master_notices() {
    let mut master = Node::spawn("master", "master", &["--port", "0"]);
    let uri = workers_uri(&mut master);
    let mut worker = start_worker("w1", &uri, &[]);
    expect_registered(&mut master, "w1");
    signal(&worker, "-TERM");
    // "stopping": the worker shut down through its handler.
    expect_clean_exit(&mut worker, WAIT, "stopping: a signal");
    master.expect_line("w1 left", NOTICE, |l| {
        l.starts_with("MASTER worker left id=w1 ")
    });
    assert!(!master.saw("worker lost id=w1"), "{}", master.output());
    master.kill();
}

#[test]
fn nodes_with_a_secret_file_authenticate_and_a_wrong_secret_is_refused() {
    let dir = std::env::temp_dir().join(format!("rpcenv-nodes-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let good = dir.join("good");
    let bad = dir.join("bad");
    std::fs::write(&good, b"the cluster's secret").expect("a secret file");
    std::fs::write(&bad, b"someone else's secret").expect("a secret file");
    let good = good.to_str().expect("utf-8").to_owned();
    let bad = bad.to_str().expect("utf-8").to_owned();

    let (mut master, uri) = master(&["--secret-file", &good]);
    let mut w1 = Node::spawn(
        "w1",
        "worker",
        &[
            "--master",
            &uri,
            "--id",
            "w1",
            "--port",
            "0",
            "--secret-file",
            &good,
        ],
    );
    let mut w2 = Node::spawn(
        "w2",
        "worker",
        &[
            "--master",
            &uri,
            "--id",
            "w2",
            "--client-mode",
            "--secret-file",
            &good,
        ],
    );
    expect_all_registered(&mut master, &["w1", "w2"]);
    let mut driver = Node::spawn(
        "driver",
        "demo",
        &["--connect", &uri, "--tasks", "20", "--secret-file", &good],
    );
    let status = driver.wait_exit(WAIT);
    assert!(
        status.success() && driver.saw("DEMO OK tasks=20/20 "),
        "the driver: {status}\n{}",
        driver.output()
    );

    let mut intruder = Node::spawn(
        "w3",
        "worker",
        &[
            "--master",
            &uri,
            "--id",
            "w3",
            "--client-mode",
            "--secret-file",
            &bad,
        ],
    );
    intruder.expect_line("an authentication failure", WAIT, |l| {
        l.contains("registration attempt 1 ") && l.contains("authentication with")
    });
    // And one without any secret.
    let mut plain = start_worker("w4", &uri, &["--client-mode"]);
    plain.expect_line("a failed registration", WAIT, |l| {
        l.contains("registration attempt 1 ")
    });
    assert!(
        !master.saw("MASTER worker registered id=w3 ")
            && !master.saw("MASTER worker registered id=w4 "),
        "a worker without the secret registered\n{}",
        master.output()
    );
    intruder.kill();
    plain.kill();
    w1.kill();
    w2.kill();
    master.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker with no master yet stops cleanly when told to: `quit` on stdin and SIGTERM
/// both end it with exit status 0, promptly, while it is still retrying.
#[test]
fn a_worker_still_registering_stops_cleanly() {
    let (_, uri) = free_port();
    let mut worker = Node::spawn_with_stdin("w1", "worker", &["--master", &uri, "--id", "w1"]);
    worker.expect_line("a failed registration attempt", WAIT, |l| {
        l.contains("registration attempt 2 ")
    });
    worker.send_line("quit");
    let says = "WORKER stopped id=w1 before it registered (quit on stdin)";
    expect_clean_exit(&mut worker, NOTICE, says);

    #[cfg(unix)]
    {
        let mut worker = start_worker("w2", &uri, &[]);
        worker.expect_line("a failed registration attempt", WAIT, |l| {
            l.contains("registration attempt 2 ")
        });
        signal(&worker, "-TERM");
        let says = "WORKER stopped id=w2 before it registered (a signal)";
        expect_clean_exit(&mut worker, NOTICE, says);
    }
}

/// `--register-timeout` uses its whole budget (the last attempt cut to fit) and says how
/// many attempts it made in how long; a failed connect is logged once per attempt.
#[test]
fn a_register_timeout_uses_its_whole_budget() {
    let (_, uri) = free_port();
    let mut worker = start_worker("w1", &uri, &["--register-timeout", "2s"]);
    let status = worker.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", worker.output());
    let line = worker.expect_line_seen("the give-up message", |l| {
        l.contains("could not register with")
    });
    assert!(line.contains("within 2000 ms"), "{line}");
    // 100 + 200 + 400 + 800 ms of backoff, then 500 ms left: 6 attempts in about 2 s (the
    // old code gave up at 1.5 s, when the next pause would pass the limit).
    let elapsed: u64 = line
        .split(" attempts in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no elapsed time in {line}"));
    assert!(elapsed >= 2000, "gave up after {elapsed} ms: {line}");
    // Only the give-up message names the failed connection: the library leaves it to
    // the worker, which logs each attempt once.
    assert_eq!(
        worker.count("connection to 127.0.0.1"),
        1,
        "a failed connect logged more than once:\n{}",
        worker.output()
    );
}

/// The default worker id is the process id; the env is `worker-PID`, not
/// `worker-worker-PID`.
#[test]
fn the_default_worker_id_has_one_prefix() {
    let (mut master, uri) = master(&[]);
    let mut worker = Node::spawn("worker", "worker", &["--master", &uri, "--client-mode"]);
    let pid = worker.pid();
    let line = master.expect_line("the registration", WAIT, |l| {
        l.starts_with("MASTER worker registered id=")
    });
    assert!(
        line.starts_with(&format!("MASTER worker registered id={pid} ")),
        "{line}"
    );
    worker.kill();
    master.kill();
}

/// A taken port is an error unless `--port-fallback` is given; then the move shows on the
/// listening line and in a warning.
#[test]
fn a_master_on_a_taken_port_fails_or_says_it_moved() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = taken.local_addr().expect("its address").port().to_string();
    let mut strict = Node::spawn("master", "master", &["--port", &port]);
    let status = strict.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", strict.output());
    assert!(strict.saw("--port-fallback"), "{}", strict.output());
    assert!(!strict.saw("MASTER listening"), "{}", strict.output());

    let mut moved = Node::spawn("master", "master", &["--port", &port, "--port-fallback"]);
    let line = moved.expect_line("MASTER listening on", WAIT, |l| {
        l.starts_with("MASTER listening on ")
    });
    assert!(line.contains(&format!(" moved_from={port} ")), "{line}");
    // On stderr, so it may come before the stdout line.
    let warning = format!("port {port} was taken: the master listens on port ");
    if !moved.saw(&warning) {
        moved.expect_line("the warning", WAIT, |l| l.contains(&warning));
    }
    moved.kill();
}

/// The live view: `--status-every` logs status lines on master and worker; `status` on
/// the master's stdin prints the worker table and the env's metrics; `quit` stops it.
#[test]
fn the_master_answers_status_and_nodes_log_status_lines() {
    let mut master = Node::spawn_with_stdin(
        "master",
        "master",
        &[
            "--port",
            "0",
            "--worker-timeout",
            "60s",
            "--status-every",
            "200ms",
        ],
    );
    let uri = workers_uri(&mut master);
    let mut worker = Node::spawn(
        "w1",
        "worker",
        &[
            "--master",
            &uri,
            "--id",
            "w1",
            "--client-mode",
            "--status-every",
            "200ms",
        ],
    );
    expect_registered(&mut master, "w1");
    master.expect_line("a status line", WAIT, |l| {
        // `jobs_queued=` is the master's; the one `queued=` is the metrics' bytes.
        l.contains("status workers=1 jobs_queued=0 running=0 conns=")
            && l.matches(" queued=").count() == 1
    });
    worker.expect_line("a status line", WAIT, |l| {
        l.contains("status id=w1 conns=1 ")
    });

    master.send_line("status");
    master.expect_line("the status", WAIT, |l| {
        l == "MASTER status workers=1 jobs_queued=0 running=0"
    });
    master.expect_line("the worker table", WAIT, |l| {
        l.starts_with("MASTER worker id=w1 address=client-mode cores=2 running=0 completed=0")
    });
    master.expect_line("the metrics", WAIT, |l| {
        l.starts_with("MASTER metrics env=master conns=1 ")
    });
    master.expect_line("the endpoint table", WAIT, |l| {
        l.starts_with("MASTER endpoint name=Master kind=dedicated ")
    });
    master.send_line("quit");
    let status = master.wait_exit(WAIT);
    assert!(status.success(), "{status}\n{}", master.output());
    worker.kill();
}
