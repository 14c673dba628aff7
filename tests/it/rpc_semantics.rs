//! The semantics of DESIGN.md §3 and §5 (issue 3) that Spark's own suites do not test:
//! `NoReply`, replies from other threads, `Pending` (many in flight, `try_wait`,
//! `wait_timeout`, `abort`), shutdown failing pending asks and staying bounded, refs to
//! client-mode endpoints, per-sender ordering, prompt connection failures and reconnects,
//! bad envelopes, setup errors, local calls without serialization, and connection events
//! per connection. (The ports of Spark's `RpcEnvSuite` live in `rpc_env.rs`.)
//!
//! "Promptly" means well before the 60 s ask timeout in play: [`PROMPT`] is a generous
//! upper bound that only catches a call that waited for its timeout, or hung.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpcenv::{
    EndpointContext, Pending, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcError, Threading,
};
use serde::{Deserialize, Serialize, Serializer};

use crate::support::{
    ClientSide, HOST, LONG, address_of, assert_connection_error, client_env, init_logger, join,
    lock, recv_within, refused_port, rpc_conf, server_env, server_env_with, spawn, wait_for,
};

/// The bound on anything that must happen "at once" (the ask timeout in play is 60 s).
const PROMPT: Duration = Duration::from_secs(10);

/// Runs `f` and asserts it took less than [`PROMPT`].
#[track_caller]
fn promptly<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    let took = started.elapsed();
    assert!(
        took < PROMPT,
        "{what} took {took:?}: not prompt (the timeout in play is {LONG:?})"
    );
    value
}

/// Asserts `err` is `Connection` naming `127.0.0.1:port`, or `EnvStopped` (what the
/// peer answers while it is stopping).
#[track_caller]
fn assert_connection_or_env_stopped(err: &RpcError, port: u16) {
    if !matches!(err, RpcError::EnvStopped) {
        assert_connection_error(err, port);
    }
}

// ---------------------------------------------------------------------------------------
// Endpoints

/// Doubles what it is asked.
struct Doubler;

impl RpcEndpoint for Doubler {
    type Message = u64;

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(2 * n);
    }
}

/// Drops every call context without answering.
struct Dropper;

impl RpcEndpoint for Dropper {
    type Message = u32;

    fn receive_and_reply(
        &mut self,
        _n: u32,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        drop(reply);
    }
}

/// Answers every ask from a thread of its own, 50 ms later: even numbers with their
/// double, odd ones with a failure.
struct LateReplier {
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl RpcEndpoint for LateReplier {
    type Message = u32;

    fn receive_and_reply(
        &mut self,
        n: u32,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let thread = spawn("test-late-reply", move || {
            thread::sleep(Duration::from_millis(50));
            if n % 2 == 0 {
                reply.reply(2 * n);
            } else {
                reply.send_failure(format!("{n} is odd"));
            }
        });
        lock(&self.threads).push(thread);
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum HoldMsg {
    /// Kept unanswered in the shared list until the test releases it.
    Hold(u32),
    /// Answered at once with the number.
    Now(u32),
}

/// Call contexts held outside the endpoint, so only the test ends them.
type Held = Arc<Mutex<Vec<(u32, RpcCallContext)>>>;

struct Holder {
    held: Held,
}

impl RpcEndpoint for Holder {
    type Message = HoldMsg;

    fn receive_and_reply(
        &mut self,
        msg: HoldMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            HoldMsg::Hold(n) => lock(&self.held).push((n, reply)),
            HoldMsg::Now(n) => reply.reply(n),
        }
    }
}

/// Answers every held ask with its number; returns how many.
fn release(held: &Held) -> usize {
    let held = std::mem::take(&mut *lock(held));
    let count = held.len();
    for (n, reply) in held {
        reply.reply(n);
    }
    count
}

#[track_caller]
fn wait_held(held: &Held, count: usize) {
    wait_for(&format!("{count} held asks"), 10, || {
        lock(held).len() >= count
    });
}

/// A server env with a [`Holder`] called "holder", and a client env with a reference to
/// it: every test of `Pending` runs on the local and on the remote reference.
struct HoldFixture {
    server: RpcEnv,
    client: RpcEnv,
    held: Held,
    local: RpcEndpointRef<HoldMsg>,
    remote: RpcEndpointRef<HoldMsg>,
}

impl HoldFixture {
    fn new(name: &str) -> Self {
        let server = server_env(&format!("{name}-server"));
        let held = Held::default();
        let local = server
            .setup_endpoint(
                "holder",
                Holder {
                    held: Arc::clone(&held),
                },
            )
            .expect("holder registered");
        let client = client_env(&format!("{name}-client"));
        let remote = client
            .setup_endpoint_ref(address_of(&server), "holder")
            .expect("a reference to the holder");
        Self {
            server,
            client,
            held,
            local,
            remote,
        }
    }

    fn refs(&self) -> [(&'static str, &RpcEndpointRef<HoldMsg>); 2] {
        [("local", &self.local), ("remote", &self.remote)]
    }

    fn shutdown(self) {
        release(&self.held);
        self.client.shutdown();
        self.server.shutdown();
    }
}

// ---------------------------------------------------------------------------------------
// 1. NoReply

#[track_caller]
fn assert_no_reply(result: Result<u32, RpcError>, endpoint: &str) {
    match result {
        Err(RpcError::NoReply { endpoint: name }) => assert_eq!(name, endpoint),
        other => panic!("expected NoReply naming {endpoint}, got {other:?}"),
    }
}

#[test]
fn no_reply_a_dropped_call_context_fails_a_local_ask_at_once_naming_the_endpoint() {
    let env = client_env("no-reply-local");
    let dropper = env.setup_endpoint("dropper", Dropper).unwrap();
    let result = promptly("a local ask answered by a drop", || {
        dropper.ask::<u32>(1).wait()
    });
    assert_no_reply(result, "dropper");
    let err = dropper.ask_sync::<u32>(2).unwrap_err();
    assert!(err.to_string().contains("dropper"), "{err}");
    env.shutdown();
}

#[test]
fn no_reply_a_dropped_call_context_fails_a_remote_ask_at_once_naming_the_endpoint() {
    let server = server_env("no-reply-server");
    server.setup_endpoint("dropper", Dropper).unwrap();
    let client = client_env("no-reply-client");
    let dropper = client
        .setup_endpoint_ref::<u32>(address_of(&server), "dropper")
        .unwrap();
    let result = promptly("a remote ask answered by a drop", || {
        dropper.ask::<u32>(1).wait()
    });
    assert_no_reply(result, "dropper");
    // The connection is fine afterwards.
    assert_no_reply(dropper.ask_sync(2), "dropper");
    client.shutdown();
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// 2. A call context answered later, from another thread

fn check_late_replies(endpoint: &RpcEndpointRef<u32>, side: &str) {
    let answer = promptly("an ask answered 50 ms later", || {
        endpoint.ask_sync::<u32>(4)
    });
    assert_eq!(answer.expect(side), 8, "{side}");
    match endpoint.ask_sync::<u32>(3) {
        Err(RpcError::Remote { message }) => assert_eq!(message, "3 is odd", "{side}"),
        other => panic!("{side}: expected the failure sent later, got {other:?}"),
    }
    // Several at once, all answered from their own threads.
    let pending: Vec<Pending<u32>> = (0..5).map(|i| endpoint.ask(2 * i)).collect();
    for (i, p) in (0..5).zip(pending) {
        assert_eq!(p.wait().expect(side), 4 * i, "{side}");
    }
}

fn join_all(threads: &Mutex<Vec<JoinHandle<()>>>) {
    for thread in std::mem::take(&mut *lock(threads)) {
        join(thread);
    }
}

#[test]
fn call_context_moved_to_another_thread_and_answered_50ms_later_answers_a_local_ask() {
    let env = client_env("late-local");
    let threads = Arc::default();
    let late = env
        .setup_endpoint(
            "late",
            LateReplier {
                threads: Arc::clone(&threads),
            },
        )
        .unwrap();
    check_late_replies(&late, "local");
    join_all(&threads);
    env.shutdown();
}

#[test]
fn call_context_moved_to_another_thread_and_answered_50ms_later_answers_a_remote_ask() {
    let server = server_env("late-server");
    let threads = Arc::default();
    server
        .setup_endpoint(
            "late",
            LateReplier {
                threads: Arc::clone(&threads),
            },
        )
        .unwrap();
    let client = client_env("late-client");
    let late = client
        .setup_endpoint_ref::<u32>(address_of(&server), "late")
        .unwrap();
    check_late_replies(&late, "remote");
    join_all(&threads);
    client.shutdown();
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// 3. Pending

#[test]
fn pending_200_remote_asks_in_flight_from_one_thread_each_get_their_own_reply() {
    let server = server_env("many-server");
    server.setup_endpoint("double", Doubler).unwrap();
    let client = client_env("many-client");
    let double = client
        .setup_endpoint_ref::<u64>(address_of(&server), "double")
        .unwrap();
    let pending: Vec<Pending<u64>> = (0..200).map(|n| double.ask(n)).collect();
    let answers: Vec<u64> = promptly("200 asks in flight", || {
        pending
            .into_iter()
            .map(|p| p.wait().expect("every ask is answered"))
            .collect()
    });
    assert_eq!(answers, (0..200).map(|n| 2 * n).collect::<Vec<u64>>());
    client.shutdown();
    server.shutdown();
}

#[test]
fn pending_try_wait_is_none_while_under_way_then_some_exactly_once_and_is_done_follows() {
    let f = HoldFixture::new("try-wait");
    for (side, holder) in f.refs() {
        let mut pending = holder.ask::<u32>(HoldMsg::Hold(7));
        wait_held(&f.held, 1);
        // The endpoint has it and has not answered.
        assert!(pending.try_wait().is_none(), "{side}");
        assert!(!pending.is_done(), "{side}");
        assert!(pending.try_wait().is_none(), "{side}");
        assert_eq!(release(&f.held), 1);
        wait_for("the reply", 10, || pending.is_done());
        match pending.try_wait() {
            Some(Ok(7)) => {}
            other => panic!("{side}: expected Some(Ok(7)), got {other:?}"),
        }
        // Handed out once.
        assert!(pending.try_wait().is_none(), "{side}");
        assert!(pending.is_done(), "{side}");
        drop(pending);
        // An ask answered at once is done by the time the endpoint has answered.
        let mut quick = holder.ask::<u32>(HoldMsg::Now(3));
        wait_for("the quick reply", 10, || quick.is_done());
        assert!(matches!(quick.try_wait(), Some(Ok(3))), "{side}");
    }
    f.shutdown();
}

#[test]
fn pending_wait_timeout_shorter_than_the_reply_is_timeout_naming_wait_timeout() {
    let f = HoldFixture::new("wait-timeout");
    for (side, holder) in f.refs() {
        let pending = holder.ask::<u32>(HoldMsg::Hold(1));
        wait_held(&f.held, 1);
        let wait = Duration::from_millis(100);
        match pending.wait_timeout(wait) {
            Err(RpcError::Timeout { after, key, .. }) => {
                assert_eq!(after, wait, "{side}");
                assert_eq!(key, "the timeout given to wait_timeout", "{side}");
            }
            other => panic!("{side}: expected Timeout, got {other:?}"),
        }
        // The late reply is discarded; the reference keeps working.
        assert_eq!(release(&f.held), 1);
        assert_eq!(holder.ask_sync::<u32>(HoldMsg::Now(5)).expect(side), 5);
        // A wait_timeout longer than the reply gets the reply.
        let pending = holder.ask::<u32>(HoldMsg::Now(6));
        assert_eq!(pending.wait_timeout(LONG).expect(side), 6);
    }
    let pending = f.local.ask::<u32>(HoldMsg::Hold(2));
    let text = pending
        .wait_timeout(Duration::from_millis(10))
        .unwrap_err()
        .to_string();
    assert!(text.contains("the timeout given to wait_timeout"), "{text}");
    assert!(text.contains("10ms"), "{text}");
    f.shutdown();
}

#[test]
fn pending_abort_discards_the_late_reply_and_the_next_ask_works() {
    let f = HoldFixture::new("abort");
    for (side, holder) in f.refs() {
        let pending = holder.ask::<u32>(HoldMsg::Hold(1));
        wait_held(&f.held, 1);
        pending.abort();
        // The endpoint answers after the abort: the reply goes nowhere.
        assert_eq!(release(&f.held), 1);
        assert_eq!(holder.ask_sync::<u32>(HoldMsg::Now(2)).expect(side), 2);
        // Aborting several in flight, then a new ask.
        for n in 0..3 {
            holder.ask::<u32>(HoldMsg::Hold(n)).abort();
        }
        wait_held(&f.held, 3);
        assert_eq!(release(&f.held), 3);
        assert_eq!(holder.ask_sync::<u32>(HoldMsg::Now(4)).expect(side), 4);
    }
    f.shutdown();
}

// ---------------------------------------------------------------------------------------
// 4. Shutdown

/// Keeps every call context inside itself, never answering; says when one arrived.
struct Sink {
    held: Vec<RpcCallContext>,
    arrived: Sender<()>,
}

impl RpcEndpoint for Sink {
    type Message = u32;

    fn receive_and_reply(
        &mut self,
        _n: u32,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        self.held.push(reply);
        let _ = self.arrived.send(());
    }
}

/// A server env with a [`Sink`] called "sink", and a channel saying when an ask arrived.
fn sink_env(name: &str) -> (RpcEnv, RpcEndpointRef<u32>, Receiver<()>) {
    let env = server_env(name);
    let (arrived_tx, arrived) = mpsc::channel();
    let sink = env
        .setup_endpoint(
            "sink",
            Sink {
                held: Vec::new(),
                arrived: arrived_tx,
            },
        )
        .unwrap();
    (env, sink, arrived)
}

#[test]
fn shutdown_from_another_thread_fails_pending_local_asks_at_once_with_env_stopped() {
    let (env, sink, arrived) = sink_env("shutdown-local");
    let pending: Vec<Pending<u32>> = (0..3).map(|n| sink.ask(n)).collect();
    for _ in 0..3 {
        recv_within(&arrived, 10);
    }
    let stopper = {
        let env = env.clone();
        spawn("test-shutdown", move || env.shutdown())
    };
    promptly("local asks failing at shutdown", || {
        for p in pending {
            match p.wait() {
                Err(RpcError::EnvStopped) => {}
                other => panic!("expected EnvStopped, got {other:?}"),
            }
        }
    });
    join(stopper);
}

#[test]
fn shutdown_fails_remote_asks_held_by_its_endpoint_with_env_stopped_or_connection() {
    let (server, _sink, arrived) = sink_env("shutdown-remote-server");
    let port = address_of(&server).port();
    let client = client_env("shutdown-remote-client");
    let remote = client
        .setup_endpoint_ref::<u32>(address_of(&server), "sink")
        .unwrap();
    let pending: Vec<Pending<u32>> = (0..3).map(|n| remote.ask(n)).collect();
    for _ in 0..3 {
        recv_within(&arrived, 10);
    }
    let stopper = {
        let server = server.clone();
        spawn("test-shutdown", move || server.shutdown())
    };
    // The endpoint never answered: the asks fail because the server env stopped, not
    // because the endpoint "dropped the call without replying".
    promptly("remote asks failing as their server shuts down", || {
        for p in pending {
            let err = p.wait().expect_err("the server never answers");
            assert_connection_or_env_stopped(&err, port);
        }
    });
    join(stopper);
    client.shutdown();
}

#[test]
fn stopping_an_endpoint_fails_the_asks_it_still_holds_with_endpoint_stopped() {
    let (server, sink, arrived) = sink_env("stop-held-server");
    let client = client_env("stop-held-client");
    let remote = client
        .setup_endpoint_ref::<u32>(address_of(&server), "sink")
        .unwrap();
    let local: Pending<u32> = sink.ask(1);
    let far: Pending<u32> = remote.ask(2);
    for _ in 0..2 {
        recv_within(&arrived, 10);
    }
    server.stop(&sink).unwrap();
    // Not NoReply: the endpoint did not drop them, it was stopped holding them.
    promptly("held asks failing as their endpoint stops", || {
        for p in [local, far] {
            match p.wait() {
                Err(RpcError::EndpointStopped { name }) => assert_eq!(name, "sink"),
                other => panic!("expected EndpointStopped, got {other:?}"),
            }
        }
    });
    client.shutdown();
    server.shutdown();
}

#[test]
fn calls_after_shutdown_fail_with_env_stopped() {
    let server = server_env("after-shutdown-server");
    let local = server.setup_endpoint("double", Doubler).unwrap();
    let client = client_env("after-shutdown-client");
    let remote = client
        .setup_endpoint_ref::<u64>(address_of(&server), "double")
        .unwrap();
    assert_eq!(remote.ask_sync::<u64>(1).unwrap(), 2);
    client.shutdown();
    server.shutdown();
    assert!(server.is_stopped() && client.is_stopped());
    for (side, endpoint) in [("local", &local), ("remote", &remote)] {
        assert!(
            matches!(endpoint.send(1), Err(RpcError::EnvStopped)),
            "{side}"
        );
        let result = promptly("an ask after shutdown", || endpoint.ask_sync::<u64>(1));
        assert!(
            matches!(result, Err(RpcError::EnvStopped)),
            "{side}: {result:?}"
        );
    }
    assert!(matches!(
        server.setup_endpoint("late", Doubler),
        Err(RpcError::EnvStopped)
    ));
    assert!(matches!(
        client.setup_endpoint("late", Doubler),
        Err(RpcError::EnvStopped)
    ));
    assert!(matches!(
        client.setup_endpoint_ref::<u64>(address_of(&server), "double"),
        Err(RpcError::EnvStopped)
    ));
}

#[test]
fn shutdown_is_idempotent_also_from_two_threads_at_once_and_await_termination_returns() {
    let env = server_env("idempotent");
    env.setup_endpoint("double", Doubler).unwrap();
    env.shutdown();
    env.shutdown();
    env.shutdown();
    env.await_termination();
    assert!(env.is_stopped());

    let (env, sink, arrived) = sink_env("concurrent-shutdown");
    let (stopped_tx, stopped) = mpsc::channel();
    env.setup_endpoint("stop-watch", StopWatch(stopped_tx))
        .unwrap();
    let pending = sink.ask::<u32>(1);
    recv_within(&arrived, 10);
    let (done_tx, done) = mpsc::channel();
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let env = env.clone();
            let done = done_tx.clone();
            spawn("test-shutdown", move || {
                env.shutdown();
                env.await_termination();
                let _ = done.send(i);
            })
        })
        .collect();
    for _ in 0..2 {
        recv_within(&done, 30);
    }
    for thread in threads {
        join(thread);
    }
    assert!(matches!(pending.wait(), Err(RpcError::EnvStopped)));
    // on_stop ran exactly once.
    assert_eq!(recv_within(&stopped, 10), "stop-watch");
    assert!(stopped.recv_timeout(Duration::from_millis(100)).is_err());
    env.await_termination();
}

/// Says its name on `on_stop`.
struct StopWatch(Sender<String>);

impl RpcEndpoint for StopWatch {
    type Message = u64;

    fn receive_and_reply(
        &mut self,
        n: u64,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(n);
    }

    fn on_stop(&mut self, ctx: &EndpointContext<u64>) {
        let _ = self.0.send(ctx.self_ref().name().to_owned());
    }
}

#[test]
fn dropping_the_last_env_handle_shuts_the_env_down_and_runs_on_stop() {
    let env = server_env("dropped");
    let (stopped_tx, stopped) = mpsc::channel();
    let watch = env
        .setup_endpoint("stop-watch", StopWatch(stopped_tx))
        .unwrap();
    let clone = env.clone();
    drop(clone);
    // A clone going away is not the last handle.
    assert!(stopped.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(watch.ask_sync::<u64>(3).unwrap(), 3);
    drop(env);
    assert_eq!(recv_within(&stopped, 10), "stop-watch");
    // A reference does not keep the env running; its calls now fail.
    assert!(matches!(watch.send(1), Err(RpcError::EnvStopped)));
    assert!(matches!(
        watch.ask_sync::<u64>(1),
        Err(RpcError::EnvStopped)
    ));
}

/// Calls `shutdown` of its own env from inside `receive`.
struct Quitter;

impl RpcEndpoint for Quitter {
    type Message = ();

    fn receive(&mut self, _msg: (), ctx: &EndpointContext<()>) {
        ctx.env().shutdown();
    }
}

#[test]
fn shutdown_called_from_inside_an_endpoint_does_not_deadlock_and_the_env_terminates() {
    let env = server_env("self-shutdown");
    let quitter = env.setup_endpoint("quitter", Quitter).unwrap();
    quitter.send(()).unwrap();
    let (done_tx, done) = mpsc::channel();
    let waiter = {
        let env = env.clone();
        spawn("test-await", move || {
            env.await_termination();
            let _ = done_tx.send(());
        })
    };
    recv_within(&done, 30);
    join(waiter);
    assert!(env.is_stopped());
    env.shutdown();
}

// ---------------------------------------------------------------------------------------
// 5. Bounded shutdown

/// Blocks in `receive` until the test releases it; a thread of its own.
struct Stuck {
    entered: Sender<()>,
    release: Receiver<()>,
    stopped: Sender<()>,
}

impl RpcEndpoint for Stuck {
    type Message = u32;

    fn receive(&mut self, _n: u32, _ctx: &EndpointContext<u32>) {
        let _ = self.entered.send(());
        // Ends when the test releases it, or drops the sender by failing.
        let _ = self.release.recv();
    }

    fn on_stop(&mut self, _ctx: &EndpointContext<u32>) {
        let _ = self.stopped.send(());
    }

    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
}

#[test]
fn shutdown_returns_although_a_dedicated_endpoint_is_blocked_forever_in_receive() {
    let env = server_env("stuck");
    let (entered_tx, entered) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let (stopped_tx, stopped) = mpsc::channel();
    let stuck = env
        .setup_endpoint(
            "stuck",
            Stuck {
                entered: entered_tx,
                release: release_rx,
                stopped: stopped_tx,
            },
        )
        .unwrap();
    stuck.send(1).unwrap();
    recv_within(&entered, 10);
    // An ask queued behind the blocked message.
    let pending = stuck.ask::<u32>(2);
    let (done_tx, done) = mpsc::channel();
    let started = Instant::now();
    let stopper = {
        let env = env.clone();
        spawn("test-shutdown", move || {
            env.shutdown();
            let _ = done_tx.send(());
        })
    };
    // The queued ask fails as the shutdown begins, not once its grace has run out.
    assert!(matches!(pending.wait(), Err(RpcError::EnvStopped)));
    recv_within(&done, 30);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "shutdown took {took:?} (its grace is 5 s)"
    );
    join(stopper);
    assert!(env.is_stopped());
    // Released, the endpoint finishes its message and then runs on_stop, once.
    release_tx.send(()).unwrap();
    recv_within(&stopped, 10);
    assert!(stopped.recv_timeout(Duration::from_millis(100)).is_err());
}

// ---------------------------------------------------------------------------------------
// 6. References to client-mode endpoints

#[derive(Debug, Serialize, Deserialize)]
enum WorkerMsg {
    Note(u32),
    Ping(u32),
}

/// An endpoint of a client-mode env: reports what it gets and who sent it.
struct Worker {
    seen: Sender<(String, Option<RpcAddress>)>,
}

impl RpcEndpoint for Worker {
    type Message = WorkerMsg;

    fn receive(&mut self, msg: WorkerMsg, ctx: &EndpointContext<WorkerMsg>) {
        let _ = self.seen.send((format!("{msg:?}"), ctx.sender_address()));
    }

    fn receive_and_reply(
        &mut self,
        msg: WorkerMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let _ = self.seen.send((format!("{msg:?}"), reply.sender_address()));
        match msg {
            WorkerMsg::Ping(n) => reply.reply(n + 1),
            WorkerMsg::Note(_) => reply.send_failure("Note is one-way"),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum RegistryMsg {
    Register(RpcEndpointRef<WorkerMsg>),
}

/// Keeps the last worker reference it was sent, where the test can take it.
struct Registry {
    slot: Arc<Mutex<Option<RpcEndpointRef<WorkerMsg>>>>,
}

impl RpcEndpoint for Registry {
    type Message = RegistryMsg;

    fn receive_and_reply(
        &mut self,
        msg: RegistryMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let RegistryMsg::Register(worker) = msg;
        *lock(&self.slot) = Some(worker);
        reply.reply(true);
    }
}

#[test]
fn ref_to_a_client_mode_endpoint_works_over_the_clients_connection_then_fails_with_connection() {
    let server = server_env("registry-server");
    let server_address = address_of(&server);
    let slot = Arc::default();
    server
        .setup_endpoint(
            "registry",
            Registry {
                slot: Arc::clone(&slot),
            },
        )
        .unwrap();
    let client = client_env("worker-client");
    let (seen_tx, seen) = mpsc::channel();
    let worker = client
        .setup_endpoint("worker", Worker { seen: seen_tx })
        .unwrap();
    assert_eq!(worker.address(), None);
    let registry = client
        .setup_endpoint_ref::<RegistryMsg>(&server_address, "registry")
        .unwrap();
    assert!(
        registry
            .ask_sync::<bool>(RegistryMsg::Register(worker))
            .unwrap()
    );
    // Deserialized inside the server env: its calls go back over the client's connection.
    let stored = lock(&slot)
        .clone()
        .expect("the registry stored the reference");
    assert_eq!(stored.name(), "worker");
    assert_eq!(stored.address(), None);

    stored.send(WorkerMsg::Note(1)).unwrap();
    let (what, sender) = recv_within(&seen, 10);
    assert_eq!(what, "Note(1)");
    assert_eq!(sender, Some(server_address.clone()));
    assert_eq!(
        promptly("an ask of a client-mode endpoint", || {
            stored.ask_sync::<u32>(WorkerMsg::Ping(5))
        })
        .unwrap(),
        6
    );
    let (what, sender) = recv_within(&seen, 10);
    assert_eq!(what, "Ping(5)");
    assert_eq!(sender, Some(server_address));

    client.shutdown();
    let result = promptly("an ask over a closed client connection", || {
        stored.ask_sync::<u32>(WorkerMsg::Ping(6))
    });
    assert!(
        matches!(result, Err(RpcError::Connection { .. })),
        "expected Connection, got {result:?}"
    );
    // The connection is known closed now: one-way messages fail at once too.
    assert!(matches!(
        stored.send(WorkerMsg::Note(2)),
        Err(RpcError::Connection { .. })
    ));
    drop(stored);
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// 7. Per-sender ordering

#[derive(Serialize, Deserialize)]
enum SeqMsg {
    Item { from: u32, n: u32 },
    Report { from: u32 },
}

/// Checks that the items from each sender come numbered 0, 1, 2, … without a gap.
#[derive(Default)]
struct SeqChecker {
    next: HashMap<u32, u32>,
    faults: Vec<String>,
}

impl RpcEndpoint for SeqChecker {
    type Message = SeqMsg;

    fn receive(&mut self, msg: SeqMsg, _ctx: &EndpointContext<SeqMsg>) {
        if let SeqMsg::Item { from, n } = msg {
            let expected = self.next.entry(from).or_insert(0);
            if n != *expected && self.faults.len() < 10 {
                self.faults
                    .push(format!("sender {from}: got {n}, expected {expected}"));
            }
            *expected = n + 1;
        }
    }

    fn receive_and_reply(
        &mut self,
        msg: SeqMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            SeqMsg::Report { from } => reply.reply((
                self.next.get(&from).copied().unwrap_or(0),
                self.faults.clone(),
            )),
            SeqMsg::Item { .. } => reply.send_failure("items are one-way"),
        }
    }
}

const SEQ_THREADS: u32 = 3;
const SEQ_MESSAGES: u32 = 2_000;

/// `SEQ_THREADS` threads each send `SEQ_MESSAGES` numbered messages through `checker`,
/// then ask for their report: every message arrived, in order, before the ask.
fn check_order(checker: &RpcEndpointRef<SeqMsg>) {
    let threads: Vec<_> = (0..SEQ_THREADS)
        .map(|from| {
            let checker = checker.clone();
            spawn("test-seq-sender", move || {
                for n in 0..SEQ_MESSAGES {
                    checker.send(SeqMsg::Item { from, n }).expect("a send");
                }
                checker.ask_sync::<(u32, Vec<String>)>(SeqMsg::Report { from })
            })
        })
        .collect();
    for thread in threads {
        let (count, faults) = join(thread).expect("the report");
        assert_eq!(faults, Vec::<String>::new());
        assert_eq!(count, SEQ_MESSAGES, "the ask overtook some messages");
    }
}

#[test]
fn per_sender_order_3_threads_2000_messages_each_then_an_ask_remotely() {
    let server = server_env("order-server");
    server.setup_endpoint("seq", SeqChecker::default()).unwrap();
    let client = client_env("order-client");
    let checker = client
        .setup_endpoint_ref(address_of(&server), "seq")
        .unwrap();
    check_order(&checker);
    client.shutdown();
    server.shutdown();
}

#[test]
fn per_sender_order_3_threads_2000_messages_each_then_an_ask_locally() {
    let env = server_env("order-local");
    let checker = env.setup_endpoint("seq", SeqChecker::default()).unwrap();
    check_order(&checker);
    env.shutdown();
}

/// Keeps the last reference it was sent, where the test can take it.
struct Forwarder {
    slot: Arc<Mutex<Option<RpcEndpointRef<SeqMsg>>>>,
}

impl RpcEndpoint for Forwarder {
    type Message = RpcEndpointRef<SeqMsg>;

    fn receive_and_reply(
        &mut self,
        target: RpcEndpointRef<SeqMsg>,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        *lock(&self.slot) = Some(target);
        reply.reply(());
    }
}

#[test]
fn messages_queued_while_the_first_connect_is_under_way_go_out_in_order_once_connected() {
    let target = server_env("queued-target");
    target.setup_endpoint("seq", SeqChecker::default()).unwrap();
    let holder = server_env("queued-holder");
    let slot = Arc::default();
    holder
        .setup_endpoint(
            "forwarder",
            Forwarder {
                slot: Arc::clone(&slot),
            },
        )
        .unwrap();
    // The holder env receives a reference to the target's endpoint inside a message: it
    // has never talked to the target, so its first message there starts the connect and
    // the following ones queue behind it.
    let client = client_env("queued-client");
    let seq = client
        .setup_endpoint_ref::<SeqMsg>(address_of(&target), "seq")
        .unwrap();
    let forwarder = client
        .setup_endpoint_ref::<RpcEndpointRef<SeqMsg>>(address_of(&holder), "forwarder")
        .unwrap();
    forwarder.ask_sync::<()>(seq).unwrap();
    let checker = lock(&slot)
        .take()
        .expect("the forwarder stored the reference");
    assert_eq!(checker.address(), Some(address_of(&target)));
    check_order(&checker);
    drop(checker);
    client.shutdown();
    holder.shutdown();
    target.shutdown();
}

/// Records the name of the thread that deserializes it.
#[derive(Debug)]
struct Traced(u32);

static DECODED_ON: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Serialize for Traced {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Traced {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(deserializer)?;
        let name = thread::current().name().unwrap_or("unnamed").to_owned();
        lock(&DECODED_ON).push(name);
        Ok(Self(n))
    }
}

/// Answers `Traced(n)` with `n`; on the shared pool or a thread of its own.
struct TracedEcho(Threading);

impl RpcEndpoint for TracedEcho {
    type Message = Traced;

    fn receive(&mut self, _msg: Traced, _ctx: &EndpointContext<Traced>) {}

    fn receive_and_reply(
        &mut self,
        Traced(n): Traced,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(n);
    }

    fn threading(&self) -> Threading {
        self.0
    }
}

#[test]
fn messages_from_peers_are_decoded_on_the_endpoints_thread_not_on_an_io_thread() {
    let server = server_env("decode-thread-server");
    server
        .setup_endpoint("shared", TracedEcho(Threading::Shared))
        .unwrap();
    server
        .setup_endpoint("own", TracedEcho(Threading::Dedicated))
        .unwrap();
    let client = client_env("decode-thread-client");
    for (name, thread_prefix) in [("shared", "rpc-dispatcher-"), ("own", "rpc-endpoint-own")] {
        let endpoint = client
            .setup_endpoint_ref::<Traced>(address_of(&server), name)
            .unwrap();
        lock(&DECODED_ON).clear();
        endpoint.send(Traced(1)).unwrap();
        assert_eq!(endpoint.ask_sync::<u32>(Traced(2)).unwrap(), 2);
        let threads = std::mem::take(&mut *lock(&DECODED_ON));
        assert_eq!(threads.len(), 2, "{name}: {threads:?}");
        for thread in threads {
            assert!(
                thread.starts_with(thread_prefix),
                "{name}: decoded on {thread}"
            );
        }
    }
    client.shutdown();
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// 8. Connection failures

#[test]
fn lookup_at_a_port_nobody_listens_on_fails_promptly_with_connection_naming_the_peer() {
    let (_holder, port) = refused_port();
    let client = client_env("dead-port");
    let address = RpcAddress::new(HOST, port);
    let err = promptly("a lookup at a dead port", || {
        client.setup_endpoint_ref::<u32>(&address, "nobody")
    })
    .unwrap_err();
    assert_connection_error(&err, port);
    let uri = format!("rpc://nobody@{HOST}:{port}");
    let err = promptly("a lookup by URI at a dead port", || {
        client.setup_endpoint_ref_by_uri::<u32>(&uri)
    })
    .unwrap_err();
    assert_connection_error(&err, port);
    // Past the fail-fast window it connects (and fails) again.
    thread::sleep(Duration::from_millis(600));
    let err = promptly("a lookup at a dead port after the window", || {
        client.setup_endpoint_ref::<u32>(&address, "nobody")
    })
    .unwrap_err();
    assert_connection_error(&err, port);
    client.shutdown();
}

#[test]
fn after_failed_connects_sends_fail_at_once_for_a_window_that_doubles_with_each_failure() {
    let server = server_env("fail-fast-server");
    let port = address_of(&server).port();
    server.setup_endpoint("double", Doubler).unwrap();
    let client = client_env("fail-fast-client");
    let double = client
        .setup_endpoint_ref::<u64>(address_of(&server), "double")
        .unwrap();
    assert_eq!(double.ask_sync::<u64>(1).unwrap(), 2);
    server.shutdown();
    // Nobody listens at the port now. The first ask may still find the old connection
    // open (it then fails when the client notices the close) or connect and be refused.
    let err = promptly("an ask to a peer that shut down", || {
        double.ask_sync::<u64>(2)
    })
    .unwrap_err();
    assert_connection_or_env_stopped(&err, port);
    // How long sends fail at once after each failed connect: poll with one-way messages
    // until one is accepted (which starts the next connect, refused in turn).
    let mut windows = Vec::new();
    for _ in 0..3 {
        let err = promptly("an ask to a dead port", || double.ask_sync::<u64>(3)).unwrap_err();
        assert_connection_or_env_stopped(&err, port);
        let failed = Instant::now();
        // Right after, a message fails at once with the same error.
        match double.send(4) {
            Err(err) => assert_connection_error(&err, port),
            Ok(()) => panic!("a send within the fail-fast window was accepted"),
        }
        let deadline = failed + Duration::from_secs(20);
        while double.send(5).is_err() {
            assert!(Instant::now() < deadline, "sends kept failing for 20 s");
            thread::sleep(Duration::from_millis(20));
        }
        windows.push(failed.elapsed());
        // Let the connect the accepted message started fail.
        thread::sleep(Duration::from_millis(100));
    }
    assert!(windows[0] >= Duration::from_millis(400), "{windows:?}");
    for pair in windows.windows(2) {
        assert!(
            pair[1] >= pair[0] + pair[0] / 2,
            "the window doubles with each failure in a row: {windows:?}"
        );
    }
    // Asks queued behind a failing connect all fail with its failure, at once.
    let pending: Vec<Pending<u64>> = (0..5).map(|n| double.ask(n)).collect();
    promptly("asks queued behind a failing connect", || {
        for p in pending {
            assert_connection_or_env_stopped(&p.wait().unwrap_err(), port);
        }
    });
    client.shutdown();
}

/// Answers with the length of what it is asked.
struct Length;

impl RpcEndpoint for Length {
    type Message = Vec<u8>;

    fn receive_and_reply(
        &mut self,
        bytes: Vec<u8>,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(bytes.len() as u64);
    }
}

#[test]
fn next_message_after_the_peer_closed_the_connection_reconnects_to_the_same_peer() {
    // The server refuses requests above 1 KiB, answering them with both sizes, and then
    // closes the connection they came on.
    let server = server_env_with(
        "reconnect-server",
        rpc_conf().set("rpc.message.maxSize", "1k"),
    );
    let port = address_of(&server).port();
    server.setup_endpoint("length", Length).unwrap();
    let client = client_env("reconnect-client");
    let length = client
        .setup_endpoint_ref::<Vec<u8>>(address_of(&server), "length")
        .unwrap();
    assert_eq!(length.ask_sync::<u64>(vec![1; 10]).unwrap(), 10);
    let err = promptly("an ask whose connection the peer closes", || {
        length.ask_sync::<u64>(vec![0; 4096])
    })
    .unwrap_err();
    assert!(
        matches!(err, RpcError::FrameTooLarge { size, max: 1024 } if size > 4096),
        "{err:?}"
    );
    let _ = port;
    // The next message opens a new connection to the same address.
    let answer = promptly("an ask on a new connection", || {
        length.ask_sync::<u64>(vec![2; 20])
    });
    assert_eq!(answer.unwrap(), 20);
    length.send(vec![3; 5]).unwrap();
    assert_eq!(length.ask_sync::<u64>(vec![4; 30]).unwrap(), 30);
    client.shutdown();
    server.shutdown();
}

#[test]
fn asks_to_a_peer_that_shut_down_fail_promptly_and_another_peer_is_still_reached() {
    let first = server_env("peer-a");
    let first_port = address_of(&first).port();
    first.setup_endpoint("double", Doubler).unwrap();
    let client = client_env("peer-client");
    let to_first = client
        .setup_endpoint_ref::<u64>(address_of(&first), "double")
        .unwrap();
    assert_eq!(to_first.ask_sync::<u64>(1).unwrap(), 2);
    first.shutdown();
    for n in 0..3 {
        let err = promptly("an ask to a peer that shut down", || {
            to_first.ask_sync::<u64>(n)
        })
        .unwrap_err();
        assert_connection_or_env_stopped(&err, first_port);
    }
    let second = server_env("peer-c");
    second.setup_endpoint("double", Doubler).unwrap();
    let to_second = client
        .setup_endpoint_ref::<u64>(address_of(&second), "double")
        .unwrap();
    assert_eq!(
        promptly("an ask to a new peer", || to_second.ask_sync::<u64>(21)).unwrap(),
        42
    );
    client.shutdown();
    second.shutdown();
}

#[test]
fn connection_closing_with_an_ask_outstanding_fails_the_ask_promptly_with_connection() {
    let server = server_env("close-outstanding-server");
    let port = address_of(&server).port();
    let held = Held::default();
    server
        .setup_endpoint(
            "holder",
            Holder {
                held: Arc::clone(&held),
            },
        )
        .unwrap();
    let client = client_env("close-outstanding-client");
    let holder = client
        .setup_endpoint_ref::<HoldMsg>(address_of(&server), "holder")
        .unwrap();
    let pending = holder.ask::<u32>(HoldMsg::Hold(1));
    wait_held(&held, 1);
    // The context stays held by the test: only the connection closing can end the ask.
    server.shutdown();
    let err = promptly("an ask whose connection closed", || pending.wait()).unwrap_err();
    assert_connection_or_env_stopped(&err, port);
    // Answering on a connection that is gone is harmless.
    assert_eq!(release(&held), 1);
    client.shutdown();
}

// ---------------------------------------------------------------------------------------
// 9. Bad envelopes, sent with the transport directly

/// A request envelope with no sender (as from a client-mode env) for `endpoint`, then
/// `content` as it is (DESIGN §5; the layout of `src/rpc/envelope.rs`).
fn envelope(endpoint: &str, content: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 0];
    body.extend_from_slice(&(endpoint.len() as u16).to_be_bytes());
    body.extend_from_slice(endpoint.as_bytes());
    // No claim about the message's type or the reply's (fingerprints 0).
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(content);
    body
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum StrictMsg {
    /// Encoded `[0, a, b]` for small numbers.
    Add(u32, u32),
    /// Encoded `[1]`.
    Ping,
}

/// Answers `Add` with the sum and `Ping` with 7; reports one-way messages and errors.
struct Strict {
    received: Sender<StrictMsg>,
    errors: Sender<RpcError>,
}

impl RpcEndpoint for Strict {
    type Message = StrictMsg;

    fn receive(&mut self, msg: StrictMsg, _ctx: &EndpointContext<StrictMsg>) {
        let _ = self.received.send(msg);
    }

    fn receive_and_reply(
        &mut self,
        msg: StrictMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            StrictMsg::Add(a, b) => reply.reply(a + b),
            StrictMsg::Ping => reply.reply(7u32),
        }
    }

    fn on_error(&mut self, error: RpcError, _ctx: &EndpointContext<StrictMsg>) {
        let _ = self.errors.send(error);
    }
}

struct StrictFixture {
    env: RpcEnv,
    strict: RpcEndpointRef<StrictMsg>,
    received: Receiver<StrictMsg>,
    errors: Receiver<RpcError>,
    raw: ClientSide,
}

impl StrictFixture {
    fn new(name: &str) -> Self {
        let env = server_env(name);
        let (received_tx, received) = mpsc::channel();
        let (errors_tx, errors) = mpsc::channel();
        let strict = env
            .setup_endpoint(
                "strict",
                Strict {
                    received: received_tx,
                    errors: errors_tx,
                },
            )
            .unwrap();
        Self {
            env,
            strict,
            received,
            errors,
            raw: ClientSide::new(&[]),
        }
    }

    fn port(&self) -> u16 {
        address_of(&self.env).port()
    }

    /// The env still serves: a raw, hand-built ask and an ordinary one are answered.
    #[track_caller]
    fn assert_serving(&self) {
        let client = self.raw.connect(self.port());
        let reply = client
            .send_rpc_sync(envelope("strict", &[0, 2, 3]), LONG)
            .expect("a well-formed hand-built ask");
        assert_eq!(reply, [0, 5], "status 0, then the sum 5");
        assert_eq!(self.strict.ask_sync::<u32>(StrictMsg::Ping).unwrap(), 7);
    }
}

#[test]
fn garbage_request_body_is_answered_with_a_remote_error_mentioning_the_envelope() {
    let f = StrictFixture::new("garbage-request");
    f.assert_serving();
    let client = f.raw.connect(f.port());
    for garbage in [
        &b""[..],
        b"\x07garbage",
        b"\x01\x05",
        b"\x01\x00\xff\xffstrict",
    ] {
        let result = promptly("a request with a bad envelope", || {
            client.send_rpc_sync(garbage, LONG)
        });
        match result {
            Err(RpcError::Remote { message }) => {
                assert!(message.contains("envelope"), "{garbage:?}: {message}");
            }
            other => panic!("{garbage:?}: expected Remote, got {other:?}"),
        }
    }
    assert!(
        client.is_active(),
        "a bad envelope does not close the connection"
    );
    f.assert_serving();
    f.env.shutdown();
}

#[test]
fn envelope_for_an_unknown_endpoint_is_answered_with_an_error_reply_and_the_env_keeps_serving() {
    let f = StrictFixture::new("unknown-endpoint");
    let client = f.raw.connect(f.port());
    let reply = promptly("an ask for an unknown endpoint", || {
        client.send_rpc_sync(envelope("no-such-endpoint", &[1]), LONG)
    })
    .expect("an answer, carrying the error");
    assert_eq!(
        reply.first(),
        Some(&1),
        "status byte 1 (an error): {reply:?}"
    );
    assert!(contains(&reply, b"no-such-endpoint"), "{reply:?}");
    f.assert_serving();
    f.env.shutdown();
}

#[test]
fn undecodable_ask_content_is_answered_with_an_error_reply_and_the_endpoint_keeps_serving() {
    let f = StrictFixture::new("undecodable-ask");
    let client = f.raw.connect(f.port());
    // An unknown variant, a truncated one, and a good one with a byte left over.
    for content in [&[200u8][..], &[0, 1], &[1, 9]] {
        let reply = promptly("an ask with undecodable content", || {
            client.send_rpc_sync(envelope("strict", content), LONG)
        })
        .expect("an answer, carrying the error");
        assert_eq!(
            reply.first(),
            Some(&1),
            "{content:?}: status 1, got {reply:?}"
        );
        assert!(
            contains(&reply, b"message for endpoint strict"),
            "{content:?}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    f.assert_serving();
    f.env.shutdown();
}

#[test]
fn one_way_garbage_is_dropped_and_undecodable_one_way_content_goes_to_on_error_as_decode() {
    let f = StrictFixture::new("undecodable-one-way");
    let client = f.raw.connect(f.port());
    client.send(&b"\x07garbage"[..]).unwrap();
    client.send(envelope("no-such-endpoint", &[1])).unwrap();
    client.send(envelope("strict", &[200])).unwrap();
    client.send(envelope("strict", &[0, 4, 4])).unwrap();
    // Messages on one connection are handled in order: the error came first.
    let error = recv_within(&f.errors, 10);
    assert!(matches!(error, RpcError::Decode { .. }), "{error:?}");
    assert!(
        error.to_string().contains("message for endpoint strict"),
        "{error}"
    );
    assert_eq!(recv_within(&f.received, 10), StrictMsg::Add(4, 4));
    // Nothing else reached the endpoint: the garbage and the unknown name were dropped
    // before it.
    assert!(matches!(f.errors.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(f.received.try_recv(), Err(TryRecvError::Empty)));
    assert!(
        client.is_active(),
        "one-way garbage does not close the connection"
    );
    f.assert_serving();
    f.env.shutdown();
}

#[derive(Serialize, Deserialize)]
struct Shape {
    name: String,
    sides: Vec<u32>,
}

/// Answers every ask with a [`Shape`].
struct Shaper;

impl RpcEndpoint for Shaper {
    type Message = u8;

    fn receive_and_reply(
        &mut self,
        _msg: u8,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(Shape {
            name: "triangle".into(),
            sides: vec![3, 4, 5],
        });
    }
}

#[test]
fn reply_that_does_not_decode_as_the_asked_type_is_a_decode_error_locally_and_remotely() {
    let server = server_env("bad-reply-server");
    let local = server.setup_endpoint("shaper", Shaper).unwrap();
    let client = client_env("bad-reply-client");
    let remote = client
        .setup_endpoint_ref::<u8>(address_of(&server), "shaper")
        .unwrap();
    for (side, shaper) in [("local", &local), ("remote", &remote)] {
        let result = promptly("an ask with a mistyped reply", || shaper.ask_sync::<u64>(1));
        assert!(
            matches!(result, Err(RpcError::Decode { .. })),
            "{side}: expected Decode, got {result:?}"
        );
        let result = shaper.ask_sync::<Vec<(u64, bool)>>(1);
        assert!(
            matches!(result, Err(RpcError::Decode { .. })),
            "{side}: expected Decode, got {result:?}"
        );
    }
    client.shutdown();
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// 10. Setup errors

/// Answers every ask with its name; says it on `on_stop`.
struct Named(&'static str, Sender<&'static str>);

impl RpcEndpoint for Named {
    type Message = u8;

    fn receive_and_reply(
        &mut self,
        _msg: u8,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(self.0.to_owned());
    }

    fn on_stop(&mut self, _ctx: &EndpointContext<u8>) {
        let _ = self.1.send(self.0);
    }
}

#[test]
fn a_taken_name_is_endpoint_exists_and_the_name_is_free_again_after_stop() {
    let env = server_env("names");
    let (stopped_tx, stopped) = mpsc::channel();
    let first = env
        .setup_endpoint("svc", Named("first", stopped_tx.clone()))
        .unwrap();
    match env.setup_endpoint("svc", Named("second", stopped_tx.clone())) {
        Err(RpcError::EndpointExists { name }) => assert_eq!(name, "svc"),
        other => panic!("expected EndpointExists, got {other:?}"),
    }
    // The first one is untouched by the failed registration (whose endpoint is dropped
    // without ever starting or stopping).
    assert_eq!(first.ask_sync::<String>(0).unwrap(), "first");
    env.stop(&first).unwrap();
    assert_eq!(recv_within(&stopped, 10), "first");
    let second = env
        .setup_endpoint("svc", Named("second", stopped_tx))
        .expect("the name is free after stop");
    assert_eq!(second.ask_sync::<String>(0).unwrap(), "second");
    // Observed behaviour (as in Spark, whose refs are a name and an address): a reference
    // is resolved by name, so the old reference now reaches the new endpoint of that
    // name rather than failing with EndpointStopped.
    assert_eq!(first.ask_sync::<String>(0).unwrap(), "second");
    first.send(0).unwrap();
    env.shutdown();
    assert_eq!(recv_within(&stopped, 10), "second");
}

#[test]
fn stopping_again_through_a_stale_ref_does_not_stop_a_newer_endpoint_of_that_name() {
    let env = server_env("stale-stop");
    let (stopped_tx, stopped) = mpsc::channel();
    let first = env
        .setup_endpoint("svc", Named("first", stopped_tx.clone()))
        .unwrap();
    env.stop(&first).unwrap();
    assert_eq!(recv_within(&stopped, 10), "first");
    // Not a wait for a result: it lets the message loop drop its last handle on the old
    // inbox, which makes the bug show on every run instead of on most.
    thread::sleep(Duration::from_millis(100));
    let second = env
        .setup_endpoint("svc", Named("second", stopped_tx))
        .unwrap();
    // `stop` documents: "Stopping it again is a no-op."
    env.stop(&first).unwrap();
    assert!(
        stopped.recv_timeout(Duration::from_millis(200)).is_err(),
        "stopping the stopped endpoint again stopped the new one"
    );
    assert_eq!(second.ask_sync::<String>(0).unwrap(), "second");
    env.shutdown();
}

#[test]
fn calls_through_a_ref_after_stop_fail_with_endpoint_stopped_locally_and_remotely() {
    let server = server_env("stopped-server");
    let (stopped_tx, stopped) = mpsc::channel();
    let local = server
        .setup_endpoint("stop-watch", StopWatch(stopped_tx))
        .unwrap();
    let client = client_env("stopped-client");
    let remote = client
        .setup_endpoint_ref::<u64>(address_of(&server), "stop-watch")
        .unwrap();
    assert_eq!(remote.ask_sync::<u64>(1).unwrap(), 1);
    server.stop(&local).unwrap();
    assert_eq!(recv_within(&stopped, 10), "stop-watch");

    match local.send(1) {
        Err(RpcError::EndpointStopped { name }) => assert_eq!(name, "stop-watch"),
        other => panic!("local send: expected EndpointStopped, got {other:?}"),
    }
    match local.ask_sync::<u64>(1) {
        Err(RpcError::EndpointStopped { name }) => assert_eq!(name, "stop-watch"),
        other => panic!("local ask: expected EndpointStopped, got {other:?}"),
    }
    // A remote one-way message cannot learn it; it is accepted and dropped (logged) there.
    remote.send(2).unwrap();
    match promptly("a remote ask of a stopped endpoint", || {
        remote.ask_sync::<u64>(3)
    }) {
        Err(RpcError::EndpointStopped { name }) => assert_eq!(name, "stop-watch"),
        other => panic!("remote ask: expected EndpointStopped, got {other:?}"),
    }
    // Stopping again is a no-op; on_stop ran once.
    server.stop(&local).unwrap();
    assert!(stopped.recv_timeout(Duration::from_millis(100)).is_err());
    // An env cannot stop another env's endpoint.
    assert!(matches!(
        client.stop(&remote),
        Err(RpcError::EndpointNotFound { .. })
    ));
    client.shutdown();
    server.shutdown();
}

#[test]
fn setup_endpoint_ref_by_uri_with_a_bad_uri_is_invalid_address() {
    let env = client_env("bad-uri");
    for uri in [
        "not a uri",
        "rpc://echo@127.0.0.1",
        "rpc://127.0.0.1:7077",
        "http://echo@127.0.0.1:7077",
        "rpc://echo@127.0.0.1:99999",
        "rpc-client://echo",
    ] {
        match env.setup_endpoint_ref_by_uri::<u32>(uri) {
            Err(RpcError::InvalidAddress { input, .. }) => assert_eq!(input, uri),
            other => panic!("{uri:?}: expected InvalidAddress, got {other:?}"),
        }
    }
    env.shutdown();
}

#[test]
fn binding_the_wildcard_without_an_advertise_address_is_a_config_error() {
    init_logger();
    for host in ["0.0.0.0", "::"] {
        let result = RpcEnv::builder("wildcard")
            .bind_address(host)
            .port(0)
            .conf(rpc_conf())
            .build();
        match result {
            Err(err @ RpcError::Config { .. }) => {
                assert!(err.to_string().contains("advertise"), "{err}");
            }
            other => panic!("{host}: expected Config, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 11. Local calls touch no socket and serialize nothing

/// Reports one-way messages with their sender; answers asks with their length and
/// sender.
struct Recorder(Sender<(String, Option<RpcAddress>)>);

impl RpcEndpoint for Recorder {
    type Message = String;

    fn receive(&mut self, msg: String, ctx: &EndpointContext<String>) {
        let _ = self.0.send((msg, ctx.sender_address()));
    }

    fn receive_and_reply(
        &mut self,
        msg: String,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let sender = reply.sender_address();
        reply.reply((msg.len() as u64, sender));
    }
}

#[test]
fn client_mode_env_without_a_listener_serves_local_sends_and_asks() {
    let env = client_env("local-only");
    assert_eq!(env.address(), None);
    let (tx, rx) = mpsc::channel();
    let recorder = env.setup_endpoint("recorder", Recorder(tx)).unwrap();
    recorder.send("hello".into()).unwrap();
    assert_eq!(recv_within(&rx, 10), ("hello".to_owned(), None));
    let (len, sender) = recorder
        .ask_sync::<(u64, Option<RpcAddress>)>("four".into())
        .unwrap();
    assert_eq!((len, sender), (4, None));
    env.shutdown();
}

/// Refuses to be serialized; deserializes normally.
#[derive(Debug, PartialEq, Deserialize)]
struct Opaque(u32);

impl Serialize for Opaque {
    fn serialize<S: Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Opaque refuses to be serialized"))
    }
}

/// Answers `Opaque(n)` with `Opaque(n + 1)`; reports one-way messages.
struct OpaqueEcho(Sender<u32>);

impl RpcEndpoint for OpaqueEcho {
    type Message = Opaque;

    fn receive(&mut self, Opaque(n): Opaque, _ctx: &EndpointContext<Opaque>) {
        let _ = self.0.send(n);
    }

    fn receive_and_reply(
        &mut self,
        Opaque(n): Opaque,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(Opaque(n + 1));
    }
}

#[test]
fn local_messages_and_replies_of_the_endpoints_own_types_are_not_serialized() {
    let server = server_env("opaque-server");
    let client = client_env("opaque-client");
    for env in [&server, &client] {
        let (tx, rx) = mpsc::channel();
        let echo = env.setup_endpoint("opaque", OpaqueEcho(tx)).unwrap();
        echo.send(Opaque(1))
            .expect("a local send is not serialized");
        assert_eq!(recv_within(&rx, 10), 1);
        assert_eq!(
            echo.ask_sync::<Opaque>(Opaque(2))
                .expect("a local ask and its reply are not serialized"),
            Opaque(3)
        );
    }
    // A reference looked up by the env's own address is local as well.
    let by_address = server
        .setup_endpoint_ref::<Opaque>(address_of(&server), "opaque")
        .unwrap();
    assert_eq!(by_address.ask_sync::<Opaque>(Opaque(4)).unwrap(), Opaque(5));
    // The premise: across envs the message must be serialized, and cannot be.
    let remote = client
        .setup_endpoint_ref::<Opaque>(address_of(&server), "opaque")
        .unwrap();
    assert!(matches!(
        remote.ask_sync::<Opaque>(Opaque(6)),
        Err(RpcError::Encode { .. })
    ));
    assert!(matches!(
        remote.send(Opaque(7)),
        Err(RpcError::Encode { .. })
    ));
    client.shutdown();
    server.shutdown();
}

#[test]
fn call_context_sender_address_is_the_askers_listen_address_and_none_for_client_mode() {
    let server = server_env("sender-server");
    let (tx, _rx) = mpsc::channel();
    let local = server.setup_endpoint("recorder", Recorder(tx)).unwrap();
    let peer = server_env("sender-peer");
    let client = client_env("sender-client");
    let from_peer = peer
        .setup_endpoint_ref::<String>(address_of(&server), "recorder")
        .unwrap();
    let from_client = client
        .setup_endpoint_ref::<String>(address_of(&server), "recorder")
        .unwrap();
    for (who, endpoint, expected) in [
        ("the server itself", &local, Some(address_of(&server))),
        ("a server-mode peer", &from_peer, Some(address_of(&peer))),
        ("a client-mode env", &from_client, None),
    ] {
        let (_, sender) = endpoint
            .ask_sync::<(u64, Option<RpcAddress>)>("x".into())
            .unwrap();
        assert_eq!(sender, expected, "asked by {who}");
    }
    client.shutdown();
    peer.shutdown();
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// 12. Connection events

#[derive(Debug, PartialEq)]
enum Event {
    Connected(RpcAddress),
    Disconnected(RpcAddress),
    NetworkError(RpcAddress),
}

/// Reports connection events; answers asks with their number.
struct Watcher(Sender<Event>);

impl RpcEndpoint for Watcher {
    type Message = u32;

    fn receive_and_reply(
        &mut self,
        n: u32,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        reply.reply(n);
    }

    fn on_connected(&mut self, remote: &RpcAddress, _ctx: &EndpointContext<u32>) {
        let _ = self.0.send(Event::Connected(remote.clone()));
    }

    fn on_disconnected(&mut self, remote: &RpcAddress, _ctx: &EndpointContext<u32>) {
        let _ = self.0.send(Event::Disconnected(remote.clone()));
    }

    fn on_network_error(
        &mut self,
        _error: &RpcError,
        remote: &RpcAddress,
        _ctx: &EndpointContext<u32>,
    ) {
        let _ = self.0.send(Event::NetworkError(remote.clone()));
    }
}

#[test]
fn one_connected_and_one_disconnected_per_connection_with_the_peers_listen_address() {
    let server = server_env("events-server");
    let (tx, events) = mpsc::channel();
    server.setup_endpoint("watcher", Watcher(tx)).unwrap();
    let peer = server_env("events-peer");
    let peer_address = address_of(&peer);
    let watcher = peer
        .setup_endpoint_ref::<u32>(address_of(&server), "watcher")
        .unwrap();
    for n in 0..5 {
        assert_eq!(watcher.ask_sync::<u32>(n).unwrap(), n);
        watcher.send(n).unwrap();
    }
    // The listen address the peer advertises, not its connection's ephemeral port.
    assert_eq!(
        recv_within(&events, 10),
        Event::Connected(peer_address.clone())
    );
    assert_eq!(watcher.ask_sync::<u32>(9).unwrap(), 9);
    assert!(
        events.recv_timeout(Duration::from_millis(200)).is_err(),
        "one connection, one Connected"
    );
    drop(watcher);
    peer.shutdown();
    assert_eq!(recv_within(&events, 10), Event::Disconnected(peer_address));
    assert!(
        events.recv_timeout(Duration::from_millis(300)).is_err(),
        "one connection, one Disconnected"
    );
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// Regressions

/// Moves its call context to a thread of its own, which panics holding it.
struct PanicsElsewhere {
    threads: Vec<JoinHandle<()>>,
}

impl RpcEndpoint for PanicsElsewhere {
    type Message = u32;

    fn receive_and_reply(
        &mut self,
        _msg: u32,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        let thread = thread::Builder::new()
            .name("test-panics-elsewhere".into())
            .spawn(move || {
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _held = reply;
                    panic!("boom elsewhere");
                }));
                assert!(caught.is_err());
            })
            .unwrap();
        self.threads.push(thread);
    }

    fn on_stop(&mut self, _ctx: &EndpointContext<u32>) {
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

#[test]
fn a_call_context_dropped_by_a_panic_on_another_thread_fails_the_ask_at_once() {
    let server = server_env("panics-elsewhere");
    let local = server
        .setup_endpoint(
            "p",
            PanicsElsewhere {
                threads: Vec::new(),
            },
        )
        .unwrap();
    let client = client_env("panics-elsewhere-client");
    let remote = client
        .setup_endpoint_ref::<u32>(address_of(&server), "p")
        .unwrap();
    for endpoint in [&local, &remote] {
        let result = promptly("an ask whose context a panic dropped", || {
            endpoint.ask_sync::<u32>(1)
        });
        assert!(
            matches!(&result, Err(RpcError::Remote { message }) if message.contains("panicked")),
            "{result:?}"
        );
    }
    client.shutdown();
    server.shutdown();
}

#[test]
fn refs_to_client_mode_endpoints_of_different_envs_are_not_equal() {
    let a = client_env("eq-a");
    let b = client_env("eq-b");
    let ra = a.setup_endpoint("worker", Doubler).unwrap();
    let rb = b.setup_endpoint("worker", Doubler).unwrap();
    assert_eq!(ra, ra.clone());
    assert_ne!(ra, rb, "same name, no address, but different envs");
    // Hash and Eq read only the name, address and env id, which never change.
    #[allow(clippy::mutable_key_type)]
    let set: std::collections::HashSet<_> = [ra.clone(), rb.clone(), ra.clone()].into();
    assert_eq!(set.len(), 2);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_network_error_reaches_every_endpoint_with_the_peers_address_then_the_disconnect() {
    let server = server_env_with("network-error", rpc_conf().set("rpc.message.maxSize", "1k"));
    let (tx, events) = mpsc::channel();
    server.setup_endpoint("watcher", Watcher(tx)).unwrap();
    // A hand-built ask from a peer that says it listens on 10.9.8.7:4321.
    let peer = RpcAddress::new("10.9.8.7", 4321);
    let mut ask = vec![3, 1];
    ask.extend_from_slice(&(peer.host().len() as u16).to_be_bytes());
    ask.extend_from_slice(peer.host().as_bytes());
    ask.extend_from_slice(&peer.port().to_be_bytes());
    ask.extend_from_slice(&envelope("watcher", &[5])[2..]);
    let raw = ClientSide::new(&[]);
    let client = raw.connect(address_of(&server).port());
    assert_eq!(client.send_rpc_sync(ask, LONG).unwrap(), [0, 5]);
    assert_eq!(recv_within(&events, 10), Event::Connected(peer.clone()));
    // A frame above the server's rpc.message.maxSize: it closes the connection.
    client.send(vec![0u8; 4096]).unwrap();
    assert_eq!(recv_within(&events, 10), Event::NetworkError(peer.clone()));
    assert_eq!(recv_within(&events, 10), Event::Disconnected(peer));
    server.shutdown();
}

#[test]
fn the_timeout_thread_fails_an_ask_nobody_waits_for_at_its_deadline() {
    let (env, sink, arrived) = sink_env("unwaited-timeout");
    let mut pending: Pending<u32> = sink.ask_timeout(1, Duration::from_millis(50));
    recv_within(&arrived, 10);
    // Nobody blocks in wait(): only the rpc-timeout thread can end the ask.
    wait_for("the ask to time out by itself", 10, || pending.is_done());
    match pending.try_wait() {
        Some(Err(RpcError::Timeout { after, key, .. })) => {
            assert_eq!(after, Duration::from_millis(50));
            assert_eq!(key, "the timeout given to ask_timeout");
        }
        other => panic!("expected a Timeout, got {other:?}"),
    }
    env.shutdown();
}

/// A reply type whose `Deserialize` panics.
#[derive(Debug)]
struct Explodes;

impl<'de> Deserialize<'de> for Explodes {
    fn deserialize<D: serde::Deserializer<'de>>(_deserializer: D) -> Result<Self, D::Error> {
        panic!("the reply's Deserialize exploded")
    }
}

mod replied {
    /// What the endpoint replies: of the same name as [`super::Explodes`], so that the
    /// asker decodes it (a local one too: the types differ).
    #[derive(serde::Serialize)]
    pub(super) struct Explodes(pub(super) u64);
}

/// Replies to `n` with a [`replied::Explodes`], and to `0` with `0u64`.
struct ExplodingReplier;

impl RpcEndpoint for ExplodingReplier {
    type Message = u64;

    fn receive_and_reply(&mut self, n: u64, reply: RpcCallContext, _: &EndpointContext<u64>) {
        match n {
            0 => reply.reply(0u64),
            n => reply.reply(replied::Explodes(n)),
        }
    }
}

/// A reply whose `Deserialize` panics is a `Decode` error that says so, for a remote and
/// a local asker alike (the local one decodes because the types differ), not a panic of
/// the caller.
#[test]
fn a_panicking_reply_deserialize_is_a_decode_error_not_a_panic_of_the_caller() {
    let server = server_env("explode-server");
    let double = server.setup_endpoint("double", ExplodingReplier).unwrap();
    let client = client_env("explode-client");
    let remote = client
        .setup_endpoint_ref::<u64>(address_of(&server), "double")
        .unwrap();
    for (side, result) in [
        ("remote", remote.ask_sync::<Explodes>(1)),
        ("local", double.ask_sync::<Explodes>(1)),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, RpcError::Decode { .. }), "{side}: {err:?}");
        assert!(err.to_string().contains("exploded"), "{side}: {err}");
    }
    assert_eq!(
        remote.ask_sync::<u64>(0).unwrap(),
        0,
        "the connection goes on"
    );
    client.shutdown();
    server.shutdown();
}
