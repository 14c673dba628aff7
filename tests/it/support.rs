//! Shared helpers: logger, configuration, a scriptable echo handler with counters, and
//! bounded waits that panic with a message instead of hanging.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rpcenv::transport::{
    Responder, RpcHandler, TransportClient, TransportClientFactory, TransportConf,
    TransportContext, TransportServer,
};
use rpcenv::{RpcAddress, RpcConf, RpcEnv, RpcError};

/// The host every test binds and connects to.
pub(crate) const HOST: &str = "127.0.0.1";

/// A timeout that must never be what ends a call in a test: a call that fails "at once"
/// fails long before it.
pub(crate) const LONG: Duration = Duration::from_secs(60);

/// "Promptly": a generous upper bound that only catches hangs (well under [`LONG`]).
pub(crate) const PROMPTLY: Duration = Duration::from_secs(5);

/// Sets up `env_logger` once for the whole binary (`RUST_LOG=debug` to see the logs).
pub(crate) fn init_logger() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A [`TransportConf`] with `rpc.io.threads=2` (the CI box has 2 cores) and `overrides`.
pub(crate) fn transport_conf(overrides: &[(&str, &str)]) -> TransportConf {
    let mut conf = RpcConf::new().set("rpc.io.threads", "2");
    for (key, value) in overrides {
        conf.insert(*key, *value);
    }
    TransportConf::from_conf(&conf).expect("the test configuration is valid")
}

/// The configuration of the RPC tests' envs: 2 I/O and 2 dispatcher threads (the CI box
/// has 2 cores), and ask and lookup timeouts of [`LONG`], so that a call which ends
/// sooner did not wait for its timeout.
pub(crate) fn rpc_conf() -> RpcConf {
    RpcConf::new()
        .set("rpc.io.threads", "2")
        .set("rpc.dispatcher.numThreads", "2")
        .set("rpc.askTimeout", "60s")
        .set("rpc.lookupTimeout", "60s")
}

/// A server env on 127.0.0.1 and a free port, with `conf`.
pub(crate) fn server_env_with(name: &str, conf: RpcConf) -> RpcEnv {
    init_logger();
    RpcEnv::builder(name)
        .bind_address(HOST)
        .port(0)
        .conf(conf)
        .build()
        .unwrap_or_else(|err| panic!("server env {name}: {err}"))
}

/// A server env on 127.0.0.1 and a free port, with [`rpc_conf`].
pub(crate) fn server_env(name: &str) -> RpcEnv {
    server_env_with(name, rpc_conf())
}

/// A client-mode env (no listener), with `conf`.
pub(crate) fn client_env_with(name: &str, conf: RpcConf) -> RpcEnv {
    init_logger();
    RpcEnv::builder(name)
        .client_mode(true)
        .conf(conf)
        .build()
        .unwrap_or_else(|err| panic!("client env {name}: {err}"))
}

/// A client-mode env (no listener), with [`rpc_conf`].
pub(crate) fn client_env(name: &str) -> RpcEnv {
    client_env_with(name, rpc_conf())
}

/// A port a connect to is refused: held by a socket that is bound but not listening, so
/// nothing else takes it while the returned socket lives.
pub(crate) fn refused_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let holder = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    let any: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    holder.bind(&any.into()).expect("bind 127.0.0.1:0");
    let port = holder
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("a bound address")
        .port();
    (holder, port)
}

/// The listen address of a server env.
pub(crate) fn address_of(env: &RpcEnv) -> RpcAddress {
    env.address().expect("a server env has an address")
}

/// Locks a test mutex, ignoring poisoning (a failed assertion elsewhere must not turn
/// into a second, confusing panic here).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An echo handler that counts what it sees and obeys a few commands in the body:
///
/// | body | answer |
/// |---|---|
/// | `fail:TEXT` | `responder.fail(TEXT)` |
/// | `drop` | the responder is dropped unanswered |
/// | `panic` | the handler panics |
/// | `hold…` | the responder is kept until [`release_held`](Self::release_held), which echoes |
/// | `close` | the handler closes the connection it came on, then drops the responder |
/// | `big:N` | a reply of `N` bytes |
/// | `call-back:BODY` | sends `BODY` as a request back over the same connection and answers with what comes back |
/// | anything else | echoed |
#[derive(Default)]
pub(crate) struct TestHandler {
    requests: AtomicUsize,
    one_way: AtomicUsize,
    one_way_bytes: AtomicUsize,
    active: Mutex<Vec<TransportClient>>,
    inactive: Mutex<Vec<TransportClient>>,
    exceptions: Mutex<Vec<(SocketAddr, RpcError)>>,
    held: Mutex<Vec<(Vec<u8>, Responder)>>,
}

impl TestHandler {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Requests received (one-way messages not included).
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// One-way messages received.
    pub(crate) fn one_way(&self) -> usize {
        self.one_way.load(Ordering::SeqCst)
    }

    /// Bytes of all one-way messages received.
    pub(crate) fn one_way_bytes(&self) -> usize {
        self.one_way_bytes.load(Ordering::SeqCst)
    }

    /// Clients passed to `channel_active`, in order.
    pub(crate) fn active(&self) -> Vec<TransportClient> {
        lock(&self.active).clone()
    }

    /// Clients passed to `channel_inactive`, in order.
    pub(crate) fn inactive(&self) -> Vec<TransportClient> {
        lock(&self.inactive).clone()
    }

    /// Whether `channel_active` saw a connection whose peer is `peer`.
    pub(crate) fn saw_active_peer(&self, peer: SocketAddr) -> bool {
        lock(&self.active)
            .iter()
            .any(|c| c.remote_address() == peer)
    }

    /// Whether `channel_inactive` saw a connection whose peer is `peer`.
    pub(crate) fn saw_inactive_peer(&self, peer: SocketAddr) -> bool {
        lock(&self.inactive)
            .iter()
            .any(|c| c.remote_address() == peer)
    }

    /// Whether `channel_active` saw connection `id`.
    pub(crate) fn saw_active_id(&self, id: u64) -> bool {
        lock(&self.active).iter().any(|c| c.id() == id)
    }

    /// Whether `channel_inactive` saw connection `id`.
    pub(crate) fn saw_inactive_id(&self, id: u64) -> bool {
        lock(&self.inactive).iter().any(|c| c.id() == id)
    }

    /// Errors passed to `exception_caught`, with the peer of their connection.
    pub(crate) fn exceptions(&self) -> Vec<(SocketAddr, RpcError)> {
        lock(&self.exceptions).clone()
    }

    /// The errors `exception_caught` saw for connections with `peer`.
    pub(crate) fn exceptions_of(&self, peer: SocketAddr) -> Vec<RpcError> {
        lock(&self.exceptions)
            .iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Requests held unanswered (`hold…`).
    pub(crate) fn held(&self) -> usize {
        lock(&self.held).len()
    }

    /// Answers the held requests in arrival order, echoing each; returns how many.
    pub(crate) fn release_held(&self) -> usize {
        let held = std::mem::take(&mut *lock(&self.held));
        let count = held.len();
        for (body, responder) in held {
            responder.reply(body);
        }
        count
    }

    /// Answers the held requests in reverse arrival order, echoing each.
    pub(crate) fn release_held_reversed(&self) -> usize {
        let held = std::mem::take(&mut *lock(&self.held));
        let count = held.len();
        for (body, responder) in held.into_iter().rev() {
            responder.reply(body);
        }
        count
    }
}

impl RpcHandler for TestHandler {
    fn receive(&self, client: &TransportClient, message: Vec<u8>, responder: Responder) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Some(text) = message.strip_prefix(b"fail:") {
            responder.fail(String::from_utf8_lossy(text).into_owned());
        } else if message == b"drop" {
            drop(responder);
        } else if message == b"panic" {
            panic!("the test handler panics on purpose");
        } else if message.starts_with(b"hold") {
            lock(&self.held).push((message, responder));
        } else if message == b"close" {
            client.close();
            drop(responder);
        } else if let Some(size) = message.strip_prefix(b"big:") {
            let size: usize = std::str::from_utf8(size)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("big:N carries a number");
            responder.reply(vec![b'x'; size]);
        } else if let Some(body) = message.strip_prefix(b"call-back:") {
            // Never block the event loop: the answer from the peer completes the
            // original request from the callback.
            client.send_rpc(body.to_vec(), move |result| match result {
                Ok(answer) => responder.reply(answer),
                Err(err) => responder.fail(format!("call back failed: {err}")),
            });
        } else {
            responder.reply(message);
        }
    }

    fn receive_one_way(&self, _client: &TransportClient, message: Vec<u8>) {
        self.one_way_bytes
            .fetch_add(message.len(), Ordering::SeqCst);
        self.one_way.fetch_add(1, Ordering::SeqCst);
    }

    fn channel_active(&self, client: &TransportClient) {
        lock(&self.active).push(client.clone());
    }

    fn channel_inactive(&self, client: &TransportClient) {
        lock(&self.inactive).push(client.clone());
    }

    fn exception_caught(&self, error: &RpcError, client: &TransportClient) {
        lock(&self.exceptions).push((client.remote_address(), error.clone()));
    }
}

/// A context with a [`TestHandler`], a server on 127.0.0.1:0 and a client factory.
///
/// Fields drop in order: the factory, then the server, then the context.
pub(crate) struct Fixture {
    pub(crate) factory: TransportClientFactory,
    pub(crate) server: TransportServer,
    pub(crate) ctx: TransportContext,
    pub(crate) handler: Arc<TestHandler>,
}

impl Fixture {
    pub(crate) fn new(overrides: &[(&str, &str)]) -> Self {
        init_logger();
        let handler = TestHandler::new();
        let ctx = TransportContext::new(transport_conf(overrides), handler.clone());
        let server = ctx.create_server(HOST, 0).expect("a server on 127.0.0.1:0");
        let factory = ctx.create_client_factory();
        Self {
            factory,
            server,
            ctx,
            handler,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.server.port()
    }

    /// A (pooled) client of this fixture's factory, connected to its server.
    pub(crate) fn client(&self) -> TransportClient {
        self.factory
            .create_client(HOST, self.port())
            .expect("a client of the test server")
    }
}

/// A context with its own [`TestHandler`] and a client factory, but no server: the
/// "client side" of a bidirectional test.
pub(crate) struct ClientSide {
    pub(crate) factory: TransportClientFactory,
    pub(crate) handler: Arc<TestHandler>,
    _ctx: TransportContext,
}

impl ClientSide {
    pub(crate) fn new(overrides: &[(&str, &str)]) -> Self {
        init_logger();
        let handler = TestHandler::new();
        let ctx = TransportContext::new(transport_conf(overrides), handler.clone());
        let factory = ctx.create_client_factory();
        Self {
            factory,
            handler,
            _ctx: ctx,
        }
    }

    pub(crate) fn connect(&self, port: u16) -> TransportClient {
        self.factory
            .create_client(HOST, port)
            .expect("a client of the test server")
    }
}

/// Receives from `rx` within `secs` seconds, or panics saying so.
#[track_caller]
pub(crate) fn recv_within<T>(rx: &Receiver<T>, secs: u64) -> T {
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("nothing arrived within {secs} s"),
        Err(RecvTimeoutError::Disconnected) => {
            panic!("the sender was dropped without sending anything")
        }
    }
}

/// Polls `condition` every 10 ms for at most `secs` seconds; panics naming `what` if it
/// never held.
#[track_caller]
pub(crate) fn wait_for(what: &str, secs: u64, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if condition() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `std::thread::spawn` with a name (clippy.toml forbids the unnamed one).
pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .expect("a test thread")
}

/// Joins a test thread, re-raising its panic.
#[track_caller]
pub(crate) fn join<T>(handle: JoinHandle<T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// What a request's callback received.
pub(crate) type Answer = Result<Vec<u8>, RpcError>;

/// `send_rpc` whose answer arrives on the returned channel; also returns the request id.
pub(crate) fn call(client: &TransportClient, body: impl Into<Vec<u8>>) -> (u64, Receiver<Answer>) {
    let (tx, rx) = mpsc::channel();
    let id = client.send_rpc(body, move |answer| {
        let _ = tx.send(answer);
    });
    (id, rx)
}

/// `send_rpc_sync(body, timeout)` on a named thread: its answer and how long it took
/// arrive on the channel. Join the handle after receiving.
pub(crate) fn call_sync_in_thread(
    client: &TransportClient,
    body: &[u8],
    timeout: Duration,
) -> (JoinHandle<()>, Receiver<(Answer, Duration)>) {
    let (tx, rx) = mpsc::channel();
    let client = client.clone();
    let body = body.to_vec();
    let handle = spawn("test-sync-call", move || {
        let started = Instant::now();
        let answer = client.send_rpc_sync(body, timeout);
        let _ = tx.send((answer, started.elapsed()));
    });
    (handle, rx)
}

/// One round trip that must succeed promptly.
#[track_caller]
pub(crate) fn assert_echo(client: &TransportClient, body: &[u8]) {
    let started = Instant::now();
    let answer = client.send_rpc_sync(body, LONG).unwrap_or_else(|err| {
        panic!("echo of {} bytes failed: {err}", body.len());
    });
    assert_eq!(answer, body, "the echo differs from what was sent");
    assert!(
        started.elapsed() < PROMPTLY,
        "echo took {:?}",
        started.elapsed()
    );
}

/// Asserts `err` is `RpcError::Connection` and its message names `127.0.0.1:port`.
#[track_caller]
pub(crate) fn assert_connection_error(err: &RpcError, port: u16) {
    assert!(
        matches!(err, RpcError::Connection { .. }),
        "expected Connection, got {err:?}"
    );
    let text = err.to_string();
    let peer = format!("{HOST}:{port}");
    assert!(text.contains(&peer), "{text:?} should name the peer {peer}");
}

/// Reads from `stream` until the peer closes it (end of stream or a reset), discarding
/// what arrives; panics if it is still open after `secs` seconds.
#[track_caller]
pub(crate) fn expect_closed_by_peer(stream: &mut TcpStream, secs: u64) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("a read timeout on the raw socket");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // A reset or an abort also means the server closed it.
            Err(_) => return,
        }
        if Instant::now() >= deadline {
            panic!("the server did not close the connection within {secs} s");
        }
    }
}

/// A raw TCP connection to 127.0.0.1:`port`, with read and write timeouts of 10 s (so a
/// test that waits for bytes that never come fails instead of hanging).
pub(crate) fn raw_connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect((HOST, port)).expect("a raw connection");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("a write timeout");
    stream
}
