//! [`ConcurrentRpcEndpoint`] (issue 11): handlers that run at the same time on the shared
//! dispatcher pool, up to `max_concurrent`; `on_start` first and alone, `on_stop` last and
//! once; panics to `on_error`; stop and shutdown while handlers run; local and remote
//! calls; the type checks; flow control with the inbox bounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rpcenv::{
    ConcurrentRpcEndpoint, EndpointContext, EndpointKind, RpcAddress, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcError,
};
use serde::{Deserialize, Serialize};

use crate::support::{
    PROMPTLY, address_of, client_env, client_env_with, join, lock, rpc_conf, server_env,
    server_env_with, spawn, wait_for,
};

/// What a test endpoint is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Msg {
    /// Answer `n + 1`.
    Echo(u64),
    /// Wait (at most [`PROMPTLY`]) until this many handlers are in `Meet` at once; answer
    /// whether they all were.
    Meet(usize),
    /// Sleep this many milliseconds, then answer `0`.
    Sleep(u64),
    /// Panic.
    Panic,
    /// Wait for the gate to open (at most 30 s), then answer `1`.
    Hold,
    /// Answer a `String`, whatever the ask expects.
    Text,
    /// Answer the sender's address.
    Sender,
    /// Send this many `Bytes` messages to itself; answer how many went.
    SelfSend(u32),
    /// A payload (one-way messages): counted.
    Bytes(Vec<u8>),
}

/// A door that handlers wait at until it opens.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        *lock(&self.open) = true;
        self.cv.notify_all();
    }

    /// Waits for the gate to open, at most `limit`.
    fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut open = lock(&self.open);
        while !*open {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            open = self
                .cv
                .wait_timeout(open, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// What the test endpoints saw; shared with the test.
#[derive(Default)]
struct Stats {
    running: AtomicUsize,
    most: AtomicUsize,
    handled: AtomicUsize,
    starts: AtomicUsize,
    stops: AtomicUsize,
    /// Handlers that began before `on_start` returned or after `on_stop` began; `on_stop`
    /// while handlers ran; `on_start` while handlers ran.
    violations: Mutex<Vec<String>>,
    errors: Mutex<Vec<RpcError>>,
    /// "start", "stop", and "handled" per message, in the order they happened.
    events: Mutex<Vec<&'static str>>,
    meeting: Mutex<usize>,
    met: Condvar,
    gate: Gate,
}

impl Stats {
    fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    fn enter(&self) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let (starts, stops) = (
            self.starts.load(Ordering::SeqCst),
            self.stops.load(Ordering::SeqCst),
        );
        if starts != 1 || stops != 0 {
            self.violation(format!(
                "a handler ran with {starts} on_start and {stops} on_stop behind it"
            ));
        }
    }

    fn exit(&self) {
        lock(&self.events).push("handled");
        self.handled.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits until `n` handlers met here, at most [`PROMPTLY`].
    fn meet(&self, n: usize) -> bool {
        let deadline = Instant::now() + PROMPTLY;
        let mut meeting = lock(&self.meeting);
        *meeting += 1;
        self.met.notify_all();
        while *meeting < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            meeting = self
                .met
                .wait_timeout(meeting, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// The concurrent test endpoint.
struct Probe {
    stats: Arc<Stats>,
    limit: usize,
    start_pause: Duration,
}

impl Probe {
    fn new(stats: &Arc<Stats>) -> Self {
        Self {
            stats: Arc::clone(stats),
            limit: usize::MAX,
            start_pause: Duration::ZERO,
        }
    }

    fn run(&self, msg: Msg, reply: Option<RpcCallContext>, ctx: &EndpointContext<Msg>) {
        self.stats.enter();
        let answer = |reply: Option<RpcCallContext>, f: &dyn Fn(RpcCallContext)| {
            if let Some(reply) = reply {
                f(reply)
            }
        };
        match msg {
            Msg::Echo(n) => answer(reply, &|r| r.reply(n + 1)),
            Msg::Meet(n) => {
                let met = self.stats.meet(n);
                answer(reply, &|r| r.reply(met));
            }
            Msg::Sleep(ms) => {
                thread::sleep(Duration::from_millis(ms));
                answer(reply, &|r| r.reply(0u64));
            }
            Msg::Panic => {
                self.stats.running.fetch_sub(1, Ordering::SeqCst);
                panic!("probe told to panic");
            }
            Msg::Hold => {
                self.stats.gate.wait(Duration::from_secs(30));
                answer(reply, &|r| r.reply(1u64));
            }
            Msg::Text => answer(reply, &|r| r.reply("text".to_owned())),
            Msg::Sender => answer(reply, &|r| r.reply(ctx.sender_address())),
            Msg::SelfSend(n) => {
                let me = ctx.self_ref();
                let went = (0..n)
                    .filter(|_| me.send(Msg::Bytes(vec![1; 100])).is_ok())
                    .count();
                answer(reply, &|r| r.reply(went as u32));
            }
            Msg::Bytes(_) => {}
        }
        self.stats.exit();
    }
}

impl ConcurrentRpcEndpoint for Probe {
    type Message = Msg;

    fn on_start(&self, _ctx: &EndpointContext<Msg>) {
        if self.stats.running.load(Ordering::SeqCst) != 0 {
            self.stats.violation("on_start while handlers ran".into());
        }
        thread::sleep(self.start_pause);
        lock(&self.stats.events).push("start");
        self.stats.starts.fetch_add(1, Ordering::SeqCst);
    }

    fn receive(&self, msg: Msg, ctx: &EndpointContext<Msg>) {
        self.run(msg, None, ctx);
    }

    fn receive_and_reply(&self, msg: Msg, reply: RpcCallContext, ctx: &EndpointContext<Msg>) {
        self.run(msg, Some(reply), ctx);
    }

    fn on_stop(&self, _ctx: &EndpointContext<Msg>) {
        let running = self.stats.running.load(Ordering::SeqCst);
        if running != 0 {
            self.stats
                .violation(format!("on_stop while {running} handlers ran"));
        }
        lock(&self.stats.events).push("stop");
        self.stats.stops.fetch_add(1, Ordering::SeqCst);
    }

    fn on_error(&self, error: RpcError, _ctx: &EndpointContext<Msg>) {
        lock(&self.stats.errors).push(error);
    }

    fn max_concurrent(&self) -> usize {
        self.limit
    }
}

/// Registers a [`Probe`] as `probe` in `env`, the default one as `configure` changes it;
/// returns its stats and a reference to it.
fn setup_probe(
    env: &RpcEnv,
    configure: impl FnOnce(Probe) -> Probe,
) -> (Arc<Stats>, RpcEndpointRef<Msg>) {
    let stats = Arc::new(Stats::default());
    let probe = configure(Probe::new(&stats));
    let probe = env.setup_concurrent_endpoint("probe", probe).unwrap();
    (stats, probe)
}

/// A client-mode env with `threads` dispatcher threads.
fn env_with_threads(name: &str, threads: usize) -> RpcEnv {
    client_env_with(
        name,
        rpc_conf().set("rpc.dispatcher.numThreads", threads.to_string()),
    )
}

#[track_caller]
fn assert_no_violations(stats: &Stats) {
    let violations = lock(&stats.violations);
    assert!(violations.is_empty(), "{violations:?}");
}

/// Four asks on a pool of four threads meet inside their handlers: they run at the same
/// time. (An `RpcEndpoint` handles them one at a time, so the first would wait alone.)
#[test]
fn four_handlers_run_at_once_on_a_pool_of_four_threads() {
    let env = env_with_threads("concurrent-meet", 4);
    let (stats, probe) = setup_probe(&env, |p| p);
    let pending: Vec<_> = (0..4).map(|_| probe.ask::<bool>(Msg::Meet(4))).collect();
    for p in pending {
        assert!(p.wait().unwrap(), "a handler waited alone: no parallelism");
    }
    assert_eq!(stats.most.load(Ordering::SeqCst), 4);
    assert_no_violations(&stats);
    env.shutdown();
}

/// With `max_concurrent` 2 on a pool of four threads, never more than two handlers run
/// at once, and two do.
#[test]
fn max_concurrent_caps_the_handlers_running_at_once() {
    let env = env_with_threads("concurrent-cap", 4);
    let (stats, probe) = setup_probe(&env, |p| Probe { limit: 2, ..p });
    let pending: Vec<_> = (0..16).map(|_| probe.ask::<u64>(Msg::Sleep(10))).collect();
    for p in pending {
        assert_eq!(p.wait().unwrap(), 0);
    }
    // A reply goes out before its handler has returned.
    wait_for("every handler to return", 10, || {
        stats.handled.load(Ordering::SeqCst) == 16
    });
    assert_eq!(stats.most.load(Ordering::SeqCst), 2);
    env.shutdown();
}

/// Messages sent while a slow `on_start` runs wait for it; `on_stop` runs once, last,
/// after every message; nothing ran alongside either.
#[test]
fn on_start_runs_first_and_alone_and_on_stop_last_and_once() {
    let env = env_with_threads("concurrent-lifecycle", 4);
    let (stats, probe) = setup_probe(&env, |p| Probe {
        start_pause: Duration::from_millis(100),
        ..p
    });
    for _ in 0..40 {
        probe.send(Msg::Sleep(1)).unwrap();
    }
    let pending: Vec<_> = (0..10).map(|n| probe.ask::<u64>(Msg::Echo(n))).collect();
    for (n, p) in pending.into_iter().enumerate() {
        assert_eq!(p.wait().unwrap(), n as u64 + 1);
    }
    env.stop(&probe).unwrap();
    wait_for("on_stop", 10, || stats.stops.load(Ordering::SeqCst) == 1);
    assert!(matches!(
        probe.send(Msg::Echo(0)),
        Err(RpcError::EndpointStopped { .. })
    ));
    env.shutdown();
    let events = lock(&stats.events).clone();
    assert_eq!(events.len(), 52, "{events:?}");
    assert_eq!(events[0], "start");
    assert_eq!(events[51], "stop");
    assert_eq!(stats.starts.load(Ordering::SeqCst), 1);
    assert_eq!(stats.stops.load(Ordering::SeqCst), 1);
    assert_no_violations(&stats);
}

/// A panic fails its ask with `Remote` and reaches `on_error` as `EndpointPanicked`; the
/// endpoint answers the next asks, also while another of its handlers runs.
#[test]
fn a_panic_goes_to_on_error_and_later_messages_are_still_handled() {
    let env = env_with_threads("concurrent-panic", 2);
    let (stats, probe) = setup_probe(&env, |p| p);
    for round in 0..3 {
        match probe.ask_sync::<u64>(Msg::Panic) {
            Err(RpcError::Remote { message }) => {
                assert!(message.contains("probe told to panic"), "{message}")
            }
            other => panic!("expected Remote, got {other:?}"),
        }
        probe.send(Msg::Panic).unwrap();
        assert_eq!(probe.ask_sync::<u64>(Msg::Echo(round)).unwrap(), round + 1);
    }
    wait_for("six errors", 10, || lock(&stats.errors).len() == 6);
    for err in lock(&stats.errors).iter() {
        assert!(
            matches!(err, RpcError::EndpointPanicked { endpoint, message }
                if endpoint == "probe" && message.contains("probe told to panic")),
            "{err:?}"
        );
    }
    // The metrics count a concurrent endpoint's handlers as they do the others' (a
    // handler is counted once it returned, just after its error reached `on_error`).
    let probe_metrics = || {
        env.metrics()
            .endpoints
            .into_iter()
            .find(|e| e.name == "probe")
            .expect("the probe's metrics")
    };
    wait_for("ten handled", 10, || {
        let e = probe_metrics();
        e.messages_handled == 10 && e.handler_time.count() == 10
    });
    let e = &probe_metrics();
    assert_eq!(e.kind, EndpointKind::Concurrent);
    assert_eq!(e.panics, 6, "{e:?}");
    assert_eq!((e.asks_answered, e.asks_failed), (3, 3), "{e:?}");
    // on_start and the nine messages.
    assert_eq!(e.messages_handled, 10, "{e:?}");
    assert_eq!(e.handler_time.count(), 10, "{e:?}");
    env.shutdown();
}

/// Stopping the endpoint while a handler is blocked: later messages fail with
/// `EndpointStopped` at once, `on_stop` waits for the handler, whose ask is still
/// answered, and then runs once.
#[test]
fn stop_while_a_handler_is_blocked_waits_for_it_before_on_stop() {
    let env = env_with_threads("concurrent-stop", 2);
    let (stats, probe) = setup_probe(&env, |p| p);
    let held = probe.ask::<u64>(Msg::Hold);
    wait_for("the handler to block", 10, || {
        stats.running.load(Ordering::SeqCst) == 1
    });
    env.stop(&probe).unwrap();
    let started = Instant::now();
    assert!(matches!(
        probe.send(Msg::Echo(0)),
        Err(RpcError::EndpointStopped { .. })
    ));
    assert!(matches!(
        probe.ask_sync::<u64>(Msg::Echo(0)),
        Err(RpcError::EndpointStopped { .. })
    ));
    assert!(started.elapsed() < PROMPTLY);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        stats.stops.load(Ordering::SeqCst),
        0,
        "on_stop did not wait"
    );
    stats.gate.open();
    assert_eq!(held.wait().unwrap(), 1);
    wait_for("on_stop", 10, || stats.stops.load(Ordering::SeqCst) == 1);
    assert_eq!(*lock(&stats.events), ["start", "handled", "stop"]);
    assert_no_violations(&stats);
    env.shutdown();
}

/// Env shutdown while two handlers are blocked: it waits for them (they are let go after
/// 200 ms), then `on_stop` runs once, and shutdown returns well within its deadline.
#[test]
fn shutdown_with_busy_handlers_waits_for_them_then_runs_on_stop() {
    let env = env_with_threads("concurrent-shutdown", 2);
    let (stats, probe) = setup_probe(&env, |p| p);
    let held: Vec<_> = (0..2).map(|_| probe.ask::<u64>(Msg::Hold)).collect();
    wait_for("both handlers to block", 10, || {
        stats.running.load(Ordering::SeqCst) == 2
    });
    let opener = {
        let stats = Arc::clone(&stats);
        spawn("opener", move || {
            thread::sleep(Duration::from_millis(200));
            stats.gate.open();
        })
    };
    let started = Instant::now();
    env.shutdown();
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    join(opener);
    for p in held {
        // Asks of the env itself fail with EnvStopped at shutdown unless answered first.
        match p.wait() {
            Ok(1) | Err(RpcError::EnvStopped) => {}
            other => panic!("expected 1 or EnvStopped, got {other:?}"),
        }
    }
    assert_eq!(stats.stops.load(Ordering::SeqCst), 1);
    assert_eq!(
        *lock(&stats.events),
        ["start", "handled", "handled", "stop"]
    );
    assert_no_violations(&stats);
}

/// Asks and one-way messages from a remote env (over the network, from four threads at
/// once) and from the endpoint's own env; handlers see the sender of their own message.
#[test]
fn remote_and_local_asks_and_one_way_messages_are_handled() {
    let server = server_env("concurrent-server");
    let (stats, local) = setup_probe(&server, |p| p);
    let client = server_env("concurrent-client");
    let remote = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "probe")
        .unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let remote = remote.clone();
            spawn("asker", move || {
                for n in 0..50 {
                    let x = t * 1000 + n;
                    assert_eq!(remote.ask_sync::<u64>(Msg::Echo(x)).unwrap(), x + 1);
                    remote.send(Msg::Bytes(vec![1; 100])).unwrap();
                }
            })
        })
        .collect();
    for n in 0..50 {
        assert_eq!(local.ask_sync::<u64>(Msg::Echo(n)).unwrap(), n + 1);
        local.send(Msg::Echo(n)).unwrap();
    }
    threads.into_iter().for_each(join);
    assert_eq!(
        remote.ask_sync::<Option<RpcAddress>>(Msg::Sender).unwrap(),
        client.address()
    );
    wait_for("every message", 10, || {
        stats.handled.load(Ordering::SeqCst) == 4 * 100 + 100 + 1
    });
    assert_no_violations(&stats);
    client.shutdown();
    server.shutdown();
}

/// A reply of another type than the ask expects is a `Decode` error naming both, locally
/// and remotely; a lookup with another message type is `MessageType`.
#[test]
fn replies_and_lookups_of_the_wrong_type_are_errors() {
    let server = server_env("concurrent-types");
    let (_, local) = setup_probe(&server, |p| p);
    let client = client_env("concurrent-types-client");
    let remote = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "probe")
        .unwrap();
    for (side, probe) in [("local", &local), ("remote", &remote)] {
        match probe.ask_sync::<u64>(Msg::Text) {
            Err(RpcError::Decode { .. }) => {}
            other => panic!("{side}: expected Decode, got {other:?}"),
        }
        let err = probe.ask_sync::<bool>(Msg::Text).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("String") && text.contains("bool"),
            "{side}: {text}"
        );
        assert_eq!(probe.ask_sync::<String>(Msg::Text).unwrap(), "text");
    }
    match client.setup_endpoint_ref::<u64>(address_of(&server), "probe") {
        Err(RpcError::MessageType { .. }) => {}
        other => panic!("expected MessageType, got {other:?}"),
    }
    client.shutdown();
    server.shutdown();
}

/// Setting up a second endpoint under a taken name is `EndpointExists`, for either kind,
/// and after shutdown it is `EnvStopped`.
#[test]
fn setup_errors_are_those_of_setup_endpoint() {
    struct Plain;
    impl RpcEndpoint for Plain {
        type Message = Msg;
    }
    let env = client_env("concurrent-setup");
    let stats = Arc::new(Stats::default());
    env.setup_endpoint("plain", Plain).unwrap();
    env.setup_concurrent_endpoint("probe", Probe::new(&stats))
        .unwrap();
    for name in ["plain", "probe"] {
        match env.setup_concurrent_endpoint(name, Probe::new(&stats)) {
            Err(RpcError::EndpointExists { name: taken }) => assert_eq!(taken, name),
            other => panic!("expected EndpointExists, got {other:?}"),
        }
    }
    assert!(matches!(
        env.setup_endpoint("probe", Plain),
        Err(RpcError::EndpointExists { .. })
    ));
    env.shutdown();
    assert!(matches!(
        env.setup_concurrent_endpoint("later", Probe::new(&stats)),
        Err(RpcError::EnvStopped)
    ));
}

/// A panic in `threading()` (an `RpcEndpoint`) or `max_concurrent()` (a concurrent one),
/// read when the endpoint is set up, fails the setup with `EndpointPanicked` naming the
/// endpoint, the method and the panic; nothing is registered, so the name stays free.
#[test]
fn a_panic_in_threading_or_max_concurrent_fails_the_setup_and_registers_nothing() {
    struct BadThreading;
    impl RpcEndpoint for BadThreading {
        type Message = Msg;
        fn threading(&self) -> rpcenv::Threading {
            panic!("no threading today")
        }
    }
    struct BadLimit;
    impl ConcurrentRpcEndpoint for BadLimit {
        type Message = Msg;
        fn max_concurrent(&self) -> usize {
            panic!("no limit today")
        }
    }
    let env = client_env("concurrent-setup-panics");
    let failures = [
        (env.setup_endpoint("bad", BadThreading).err(), "threading()"),
        (
            env.setup_concurrent_endpoint("bad", BadLimit).err(),
            "max_concurrent()",
        ),
    ];
    for (failure, method) in failures {
        match failure {
            Some(RpcError::EndpointPanicked { endpoint, message }) => {
                assert_eq!(endpoint, "bad");
                assert!(message.contains(method), "{message}");
                assert!(message.contains("today"), "{message}");
            }
            other => panic!("expected EndpointPanicked, got {other:?}"),
        }
    }
    assert!(env.metrics().endpoints.iter().all(|e| e.name != "bad"));
    let stats = Arc::new(Stats::default());
    let probe = env.setup_concurrent_endpoint("bad", Probe::new(&stats));
    assert_eq!(probe.unwrap().ask_sync::<u64>(Msg::Echo(1)).unwrap(), 2);
    env.shutdown();
}

/// The configuration of the flood tests: inboxes, windows and queues of 64k, sends that
/// give up after 300 ms.
fn small_bounds() -> rpcenv::RpcConf {
    rpc_conf()
        .set("rpc.dispatcher.inboxCapacity", "64k")
        .set("rpc.io.maxQueuedBytes", "64k")
        .set("rpc.io.sendTimeout", "300ms")
}

/// Sends 10 kB messages to `probe`, whose handlers are all held, until one fails;
/// returns how many went and the error.
fn flood(probe: &RpcEndpointRef<Msg>) -> (usize, RpcError) {
    for sent in 0..10_000 {
        if let Err(err) = probe.send(Msg::Bytes(vec![7; 10_000])) {
            return (sent, err);
        }
    }
    panic!("10000 messages of 10 kB went to an endpoint whose handlers are held");
}

/// A remote env flooding a concurrent endpoint whose handlers are all held is held to the
/// endpoint's window: after a bounded number of messages `send` fails with `QueueFull`;
/// once the handlers go on, every message accepted is handled.
#[test]
fn remote_flood_is_bounded_by_the_inbox_window() {
    let server = server_env_with("concurrent-flood", small_bounds());
    let (stats, local) = setup_probe(&server, |p| p);
    let client = client_env_with("concurrent-flood-client", small_bounds());
    // Looked up first: the lookup needs a pool thread, which the held handlers take all of.
    let remote = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "probe")
        .unwrap();
    let held: Vec<_> = (0..2).map(|_| local.ask::<u64>(Msg::Hold)).collect();
    wait_for("both handlers to block", 10, || {
        stats.running.load(Ordering::SeqCst) == 2
    });
    let (sent, err) = flood(&remote);
    // The window (64k) and the frames held for it on the client (64k), each exceeded by
    // a message at most, and the connection's queue: far below what an unbounded inbox
    // would take.
    assert!(sent <= 40, "{sent} messages of 10 kB went");
    assert!(
        matches!(err, RpcError::QueueFull { .. }),
        "expected QueueFull, got {err:?}"
    );
    stats.gate.open();
    for p in held {
        assert_eq!(p.wait().unwrap(), 1);
    }
    wait_for("every accepted message", 10, || {
        stats.handled.load(Ordering::SeqCst) == 2 + sent
    });
    client.shutdown();
    server.shutdown();
}

/// Local senders to a concurrent endpoint whose handlers are all held wait for room in
/// its inbox, then fail with `QueueFull` naming the inbox and its key.
#[test]
fn local_flood_is_bounded_by_the_inbox_capacity() {
    let env = client_env_with("concurrent-local-flood", small_bounds());
    let (stats, probe) = setup_probe(&env, |p| p);
    let held: Vec<_> = (0..2).map(|_| probe.ask::<u64>(Msg::Hold)).collect();
    wait_for("both handlers to block", 10, || {
        stats.running.load(Ordering::SeqCst) == 2
    });
    let (sent, err) = flood(&probe);
    // A local message costs its size and a fixed share (256 bytes), not its heap bytes:
    // at most 64k / 256 messages, and one over.
    assert!((1..=257).contains(&sent), "{sent} messages went");
    match &err {
        RpcError::QueueFull { queue, key, .. } => {
            assert_eq!(*key, "rpc.dispatcher.inboxCapacity");
            assert!(queue.contains("probe"), "{queue}");
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    stats.gate.open();
    for p in held {
        assert_eq!(p.wait().unwrap(), 1);
    }
    wait_for("every accepted message", 10, || {
        stats.handled.load(Ordering::SeqCst) == 2 + sent
    });
    env.shutdown();
}

/// A handler sending to its own endpoint never waits for room, though the inbox is full
/// (`rpc.dispatcher.inboxCapacity` 64k, about 220 local messages) and no other thread takes messages out
/// (`max_concurrent` 1): the sends all go at once.
#[test]
fn a_handler_sending_to_its_own_full_inbox_does_not_wait() {
    let env = client_env_with(
        "concurrent-self-send",
        rpc_conf()
            .set("rpc.dispatcher.inboxCapacity", "64k")
            .set("rpc.io.sendTimeout", "20s"),
    );
    let (stats, probe) = setup_probe(&env, |p| Probe { limit: 1, ..p });
    let started = Instant::now();
    assert_eq!(probe.ask_sync::<u32>(Msg::SelfSend(400)).unwrap(), 400);
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    wait_for("every message", 10, || {
        stats.handled.load(Ordering::SeqCst) == 401
    });
    assert_eq!(stats.most.load(Ordering::SeqCst), 1);
    env.shutdown();
}

// ---------------------------------------------------------------------------------------
// Lifecycle races: stop while on_start runs, from inside a handler, twice; the name taken
// again at once; panics in on_start, on_stop and the endpoint's drop.

/// What one instance of [`Life`] saw.
#[derive(Default)]
struct LifeCounts {
    starts: AtomicUsize,
    stops: AtomicUsize,
    handled: AtomicUsize,
    /// Handlers that ran before `on_start` returned or after `on_stop` began.
    out_of_order: AtomicUsize,
    dropped: AtomicUsize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum LifeMsg {
    /// Answer `n + 1`.
    Echo(u64),
    /// Stop this endpoint from inside the handler (twice), then answer `0`.
    StopSelf,
    /// Drop the call context without answering.
    Ignore,
    /// Ask itself `Echo(1)` and wait up to 500 ms; answer 1 if answered, 0 on a timeout.
    AskSelf,
}

struct Life {
    counts: Arc<LifeCounts>,
    start_ms: u64,
    panic_in_start: bool,
    panic_in_stop: bool,
    panic_in_drop: bool,
    limit: usize,
}

impl ConcurrentRpcEndpoint for Life {
    type Message = LifeMsg;
    fn receive_and_reply(
        &self,
        msg: LifeMsg,
        reply: RpcCallContext,
        ctx: &EndpointContext<LifeMsg>,
    ) {
        let c = &self.counts;
        if c.starts.load(Ordering::SeqCst) != 1 || c.stops.load(Ordering::SeqCst) != 0 {
            c.out_of_order.fetch_add(1, Ordering::SeqCst);
        }
        c.handled.fetch_add(1, Ordering::SeqCst);
        match msg {
            LifeMsg::Echo(n) => reply.reply(n + 1),
            LifeMsg::StopSelf => {
                let me = ctx.self_ref();
                ctx.env().stop(&me).expect("stop from a handler");
                ctx.env().stop(&me).expect("a second stop is a no-op");
                reply.reply(0u64);
            }
            LifeMsg::Ignore => drop(reply),
            LifeMsg::AskSelf => {
                let me = ctx.self_ref();
                match me.ask_sync_timeout::<u64>(LifeMsg::Echo(1), Duration::from_millis(500)) {
                    Ok(2) => reply.reply(1u64),
                    Err(RpcError::Timeout { .. }) => reply.reply(0u64),
                    other => reply.send_failure(format!("{other:?}")),
                }
            }
        }
    }
    fn on_start(&self, _ctx: &EndpointContext<LifeMsg>) {
        thread::sleep(Duration::from_millis(self.start_ms));
        self.counts.starts.fetch_add(1, Ordering::SeqCst);
        assert!(!self.panic_in_start, "on_start panics");
    }
    fn on_stop(&self, _ctx: &EndpointContext<LifeMsg>) {
        self.counts.stops.fetch_add(1, Ordering::SeqCst);
        assert!(!self.panic_in_stop, "on_stop panics");
    }
    fn on_error(&self, _error: RpcError, _ctx: &EndpointContext<LifeMsg>) {}
    fn max_concurrent(&self) -> usize {
        self.limit
    }
}

impl Drop for Life {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
        if self.panic_in_drop && !thread::panicking() {
            panic!("the endpoint's drop panics");
        }
    }
}

fn life(counts: &Arc<LifeCounts>, round: usize) -> Life {
    Life {
        counts: Arc::clone(counts),
        start_ms: (round % 3) as u64,
        panic_in_start: round % 5 == 1,
        panic_in_stop: round % 4 == 2,
        panic_in_drop: false,
        limit: 1 + round % 3,
    }
}

/// 40 rounds: register, stop at once (while `on_start` may still run), stop again,
/// register the name again at once and ask through the old reference and the new; every
/// other round the endpoint stops itself from inside a handler. Each instance runs
/// `on_start` once and `on_stop` once (panicking in either or not), no handler runs
/// outside them, and every instance is dropped.
#[test]
fn stop_during_on_start_stop_twice_stop_from_a_handler_and_re_register_at_once() {
    let env = env_with_threads("conc-life", 3);
    let mut all = Vec::new();
    for round in 0..40 {
        let counts = Arc::new(LifeCounts::default());
        all.push(Arc::clone(&counts));
        let first = env
            .setup_concurrent_endpoint("life", life(&counts, round))
            .expect("the name is free");
        if round % 2 == 0 {
            env.stop(&first).expect("stop");
            env.stop(&first).expect("a second stop is a no-op");
        } else {
            let answer = first.ask_sync::<u64>(LifeMsg::StopSelf);
            assert_eq!(answer.expect("StopSelf is answered"), 0, "round {round}");
        }
        // The name is free again at once.
        let again = Arc::new(LifeCounts::default());
        all.push(Arc::clone(&again));
        let second = env
            .setup_concurrent_endpoint("life", life(&again, round + 1))
            .expect("the name is free again after the stop");
        assert_eq!(
            second.ask_sync::<u64>(LifeMsg::Echo(round as u64)).unwrap(),
            round as u64 + 1
        );
        // An old reference reaches the endpoint now registered under the name.
        assert_eq!(first.ask_sync::<u64>(LifeMsg::Echo(1)).unwrap(), 2);
        assert!(matches!(
            second.ask_sync::<u64>(LifeMsg::Ignore),
            Err(RpcError::NoReply { .. })
        ));
        env.stop(&second).expect("stop");
    }
    env.shutdown();
    for (i, counts) in all.iter().enumerate() {
        let seen = (
            counts.starts.load(Ordering::SeqCst),
            counts.stops.load(Ordering::SeqCst),
            counts.out_of_order.load(Ordering::SeqCst),
            counts.dropped.load(Ordering::SeqCst),
        );
        assert_eq!(
            seen,
            (1, 1, 0, 1),
            "instance {i}: (starts, stops, out of order, drops)"
        );
    }
}

/// An `RpcEndpoint` that answers its message and panics when dropped.
struct PanicsWhenDropped(Arc<AtomicUsize>);

impl RpcEndpoint for PanicsWhenDropped {
    type Message = u64;
    fn receive_and_reply(&mut self, n: u64, reply: RpcCallContext, _ctx: &EndpointContext<u64>) {
        reply.reply(n);
    }
}

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if !thread::panicking() {
            panic!("the endpoint's drop panics");
        }
    }
}

/// Endpoints whose drop panics, stopped on a pool of one thread: the panic is caught,
/// the endpoint counts as finished (shutdown does not wait its deadline for it), and a
/// call context another endpoint drops on that thread later still fails with `NoReply`,
/// not with the stopped endpoint's reason.
#[test]
fn a_panic_in_an_endpoints_drop_leaves_the_pool_thread_as_it_was() {
    let env = env_with_threads("conc-drop-panic", 1);
    let counts = Arc::new(LifeCounts::default());
    let mut endpoint = life(&counts, 0);
    endpoint.panic_in_drop = true;
    let doomed = env
        .setup_concurrent_endpoint("doomed", endpoint)
        .expect("registered");
    assert_eq!(doomed.ask_sync::<u64>(LifeMsg::Echo(1)).unwrap(), 2);
    env.stop(&doomed).expect("stop");
    wait_for("the endpoint to be dropped", 10, || {
        counts.dropped.load(Ordering::SeqCst) == 1
    });
    // The same with an `RpcEndpoint` on the shared pool.
    let exclusive_drops = Arc::new(AtomicUsize::new(0));
    let exclusive = env
        .setup_endpoint(
            "doomed-too",
            PanicsWhenDropped(Arc::clone(&exclusive_drops)),
        )
        .expect("registered");
    assert_eq!(exclusive.ask_sync::<u64>(1).unwrap(), 1);
    env.stop(&exclusive).expect("stop");
    wait_for("the exclusive endpoint to be dropped", 10, || {
        exclusive_drops.load(Ordering::SeqCst) == 1
    });
    let other_counts = Arc::new(LifeCounts::default());
    let other = env
        .setup_concurrent_endpoint("other", life(&other_counts, 0))
        .expect("registered");
    match other.ask_sync::<u64>(LifeMsg::Ignore) {
        Err(RpcError::NoReply { .. }) => {}
        other => panic!("a dropped context fails with NoReply, got {other:?}"),
    }
    let started = Instant::now();
    env.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown waited {:?} for an endpoint whose drop panicked",
        started.elapsed()
    );
}

/// A handler that waits for an ask to its own endpoint is answered when another handler
/// may run (`max_concurrent` 2), and times out at its deadline when none may (1), as the
/// docs of `max_concurrent` say; the endpoint serves on after.
#[test]
fn a_handler_asking_its_own_endpoint_needs_a_second_handler() {
    let env = env_with_threads("conc-ask-self", 2);
    for (limit, expected) in [(2, 1u64), (1, 0)] {
        let counts = Arc::new(LifeCounts::default());
        let mut endpoint = life(&counts, 0);
        endpoint.limit = limit;
        let me = env
            .setup_concurrent_endpoint(format!("ask-self-{limit}"), endpoint)
            .expect("registered");
        assert_eq!(
            me.ask_sync::<u64>(LifeMsg::AskSelf).unwrap(),
            expected,
            "max_concurrent {limit}"
        );
        assert_eq!(me.ask_sync::<u64>(LifeMsg::Echo(5)).unwrap(), 6);
    }
    env.shutdown();
}
