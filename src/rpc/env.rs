//! [`RpcEnv`] and its builder: the wiring of transport, dispatcher, outboxes and timeouts,
//! and the shutdown sequence.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conf::{RpcConf, Settings, keys};
use crate::error::RpcError;
use crate::frame::Body;
use crate::log_limit;
use crate::metrics::{EnvMetrics, PeerMetrics, RpcMetrics};
use crate::rpc::address::{RpcAddress, endpoint_uri, parse_endpoint_uri};
use crate::rpc::call::{CallInfo, What};
use crate::rpc::concurrent::ConcurrentRpcEndpoint;
use crate::rpc::dispatcher::Dispatcher;
use crate::rpc::endpoint::RpcEndpoint;
use crate::rpc::endpoint_ref::{RefInner, RpcEndpointRef};
use crate::rpc::file_server::{FileServer, parse_uri};
use crate::rpc::handler::RpcEnvHandler;
use crate::rpc::message_loop::on_loop_of;
use crate::rpc::outbox::{CONNECT_IDLE, Outbox};
use crate::rpc::timeout::Timeouts;
use crate::rpc::types::{self, TypeLabel};
use crate::rpc::verifier::{self, CheckExistence, Verdict, Verifier};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Arc, Condvar, Mutex};
use crate::threads::{Pool, Workers, spawn};
use crate::transport::{
    Admission, Counters, RpcHandler, StreamReader, TransportClientFactory, TransportConf,
    TransportContext, TransportServer, frame_len, on_event_loop,
};

/// How long a shutdown waits for endpoints to run `on_stop` and for threads to exit
/// before it leaves them behind (and logs them).
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Builds an [`RpcEnv`]; see [`RpcEnv::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct RpcEnvBuilder {
    name: String,
    bind_address: String,
    advertise_address: Option<String>,
    port: u16,
    conf: RpcConf,
    client_mode: bool,
}

impl RpcEnvBuilder {
    /// The address to listen on (default `127.0.0.1`). Binding the wildcard (`0.0.0.0`
    /// or `::`) needs an [`advertise_address`](Self::advertise_address).
    pub fn bind_address(mut self, host: impl Into<String>) -> Self {
        self.bind_address = host.into();
        self
    }

    /// The host other envs should use to reach this one, as it appears in
    /// [`RpcEnv::address`] and in references this env hands out (default: the bind
    /// address).
    pub fn advertise_address(mut self, host: impl Into<String>) -> Self {
        self.advertise_address = Some(host.into());
        self
    }

    /// The port to listen on (default 0: any free port). On a collision the next ports
    /// are tried, up to `rpc.port.maxRetries` more.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The configuration; checked by [`build`](Self::build).
    pub fn conf(mut self, conf: RpcConf) -> Self {
        self.conf = conf;
        self
    }

    /// A client-mode env opens no listener ([`RpcEnv::address`] is `None`); its
    /// endpoints are reached by peers over the connections it opens to them.
    pub fn client_mode(mut self, client_mode: bool) -> Self {
        self.client_mode = client_mode;
        self
    }

    /// Checks the configuration, binds (in server mode) and starts the env's threads.
    ///
    /// Fails with [`RpcError::Config`] for a bad key or value, [`RpcError::Bind`] when no
    /// port could be bound, [`RpcError::Io`] when a thread cannot be started.
    pub fn build(self) -> Result<RpcEnv, RpcError> {
        let settings = self.conf.settings()?;
        let wildcard = matches!(
            self.bind_address.trim_matches(['[', ']']),
            "0.0.0.0" | "::" | "0:0:0:0:0:0:0:0"
        );
        if !self.client_mode && wildcard && self.advertise_address.is_none() {
            return Err(RpcError::config(
                "advertise_address",
                format!(
                    "binding {} needs an advertise address that peers can reach",
                    self.bind_address
                ),
            ));
        }
        let id = random_id();
        let handler = Arc::new(RpcEnvHandler::new());
        let transport = TransportContext::new(
            TransportConf::from_settings(&settings),
            Arc::clone(&handler) as Arc<dyn RpcHandler>,
        );
        let (server, address) = if self.client_mode {
            (None, None)
        } else {
            let server = match &settings.auth {
                Some(auth) => {
                    transport.create_server_with_bootstrap(&self.bind_address, self.port, auth)?
                }
                None => transport.create_server(&self.bind_address, self.port)?,
            };
            let host = self.advertise_address.unwrap_or(self.bind_address);
            let address = RpcAddress::new(host, server.port());
            (Some(server), Some(address))
        };
        let factory = match &settings.auth {
            Some(auth) => transport.create_client_factory_with_bootstrap(auth),
            None => transport.create_client_factory(),
        };
        // Downloads get connections of their own (Spark's "files" transport), so that a
        // large file never holds up the messages to the same peer.
        let files_factory = match &settings.auth {
            Some(auth) => transport.create_client_factory_with_bootstrap(auth),
            None => transport.create_client_factory(),
        };
        let file_server = FileServer::new(address.clone());
        let counters = Arc::clone(transport.counters());
        let dispatcher = Dispatcher::new(id, settings.dispatcher_threads)?;
        let timeouts = Timeouts::start()?;
        let connect_pool = Pool::new(
            "rpc-connect-",
            Workers::Cached {
                max: settings.connect_threads,
                idle: CONNECT_IDLE,
            },
        )?;
        let inner = Arc::new(EnvInner {
            id,
            name: self.name,
            settings,
            address,
            handler: Arc::clone(&handler),
            server: Mutex::new(server),
            factory,
            files_factory,
            file_server,
            dispatcher,
            outboxes: Mutex::new(HashMap::new()),
            timeouts,
            connect_pool,
            counters,
            stopped: AtomicBool::new(false),
            terminated: Mutex::new(false),
            terminated_cv: Condvar::default(),
            #[cfg(feature = "metrics")]
            publisher: Mutex::new(None),
        });
        handler.set_env(Arc::downgrade(&inner));
        #[cfg(feature = "metrics")]
        {
            let env = Arc::downgrade(&inner);
            let interval = inner.settings.metrics_interval;
            let snapshot = move || env.upgrade().map(|env| env.metrics());
            match crate::metrics::facade::Publisher::start(interval, snapshot) {
                Ok(publisher) => *inner.publisher.lock() = Some(publisher),
                Err(err) => {
                    inner.shutdown();
                    return Err(err);
                }
            }
        }
        if inner.address.is_some() {
            let verifier = Verifier {
                env: Arc::downgrade(&inner),
            };
            if let Err(err) = inner
                .dispatcher
                .register(&inner, verifier::NAME.into(), verifier)
            {
                inner.shutdown();
                return Err(err);
            }
        }
        match &inner.address {
            Some(address) => info!("rpc env {} listening on {address}", inner.name),
            None => info!("rpc env {} started in client mode", inner.name),
        }
        Ok(RpcEnv {
            _owner: Some(Arc::new(Owner {
                inner: Arc::clone(&inner),
            })),
            inner,
        })
    }
}

fn random_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    // Never 0, which means "unknown" in references.
    hasher.finish() | 1
}

/// An RPC environment: a registry of named endpoints, a listener (unless in client mode)
/// and connections to other envs.
///
/// A handle: clones share the env, and it is `Send + Sync`. The env shuts down when
/// [`shutdown`](Self::shutdown) is called or the last handle built by
/// [`RpcEnvBuilder::build`] (and its clones) is dropped; the handle an endpoint gets from
/// [`EndpointContext::env`](crate::EndpointContext::env) does not keep it running.
///
/// ```
/// use rpcenv::{EndpointContext, RpcCallContext, RpcEndpoint, RpcEnv};
/// struct Echo;
/// impl RpcEndpoint for Echo {
///     type Message = String;
///     fn receive_and_reply(
///         &mut self,
///         msg: String,
///         reply: RpcCallContext,
///         _ctx: &EndpointContext<Self::Message>,
///     ) {
///         reply.reply(msg)
///     }
/// }
/// let env = RpcEnv::builder("master").bind_address("127.0.0.1").port(0).build()?;
/// let addr = env.address().expect("a server env has an address");
/// env.setup_endpoint("echo", Echo)?;
///
/// let driver = RpcEnv::builder("driver").client_mode(true).build()?;
/// let echo = driver.setup_endpoint_ref_by_uri::<String>(&format!("rpc://echo@{addr}"))?;
/// assert_eq!(echo.ask_sync::<String>("hi".into())?, "hi");
/// driver.shutdown();
/// env.shutdown();
/// env.await_termination();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[derive(Clone)]
pub struct RpcEnv {
    inner: Arc<EnvInner>,
    _owner: Option<Arc<Owner>>,
}

/// Shuts the env down when the last handle its owner holds is dropped.
struct Owner {
    inner: Arc<EnvInner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

impl RpcEnv {
    /// A builder for an env called `name` (the name shows in logs).
    pub fn builder(name: impl Into<String>) -> RpcEnvBuilder {
        RpcEnvBuilder {
            name: name.into(),
            bind_address: "127.0.0.1".into(),
            advertise_address: None,
            port: 0,
            conf: RpcConf::new(),
            client_mode: false,
        }
    }

    /// A handle that does not keep the env running.
    pub(crate) fn internal(inner: Arc<EnvInner>) -> Self {
        Self {
            inner,
            _owner: None,
        }
    }

    /// The env's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address peers reach this env at (advertised host, bound port); `None` in
    /// client mode.
    pub fn address(&self) -> Option<RpcAddress> {
        self.inner.address.clone()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Registers `endpoint` as `name` and returns a reference to it. Its `on_start` runs
    /// before any message.
    ///
    /// Fails with [`RpcError::EndpointExists`] if the name is taken (it is free again once
    /// that endpoint is [stopped](Self::stop)), [`RpcError::EnvStopped`] after
    /// shutdown, and [`RpcError::EndpointPanicked`] (naming the endpoint, `threading()`
    /// and the panic's message) if the endpoint's
    /// [`threading`](RpcEndpoint::threading) panics; then nothing is registered.
    pub fn setup_endpoint<E: RpcEndpoint>(
        &self,
        name: impl Into<String>,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message>, RpcError> {
        self.inner.check_running()?;
        self.inner
            .dispatcher
            .register(&self.inner, name.into(), endpoint)
    }

    /// Registers the concurrent `endpoint` as `name` and returns a reference to it: its
    /// messages may run several at a time on the shared `rpc-dispatcher-N` pool (see
    /// [`ConcurrentRpcEndpoint`] for what is promised). Its `on_start` runs first, alone.
    ///
    /// Fails with [`RpcError::EndpointExists`] if the name is taken (it is free again once
    /// that endpoint is [stopped](Self::stop)), [`RpcError::EnvStopped`] after
    /// shutdown, and [`RpcError::EndpointPanicked`] (naming the endpoint,
    /// `max_concurrent()` and the panic's message) if the endpoint's
    /// [`max_concurrent`](ConcurrentRpcEndpoint::max_concurrent) panics; then nothing is
    /// registered.
    pub fn setup_concurrent_endpoint<E: ConcurrentRpcEndpoint>(
        &self,
        name: impl Into<String>,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message>, RpcError> {
        self.inner.check_running()?;
        self.inner
            .dispatcher
            .register_concurrent(&self.inner, name.into(), endpoint)
    }

    /// A reference to the endpoint `name` of the env at `address`, after asking that env
    /// whether the endpoint exists and takes messages of type `M` (within
    /// `rpc.lookupTimeout`); an address of this env is looked up here, without a message.
    /// Spark's `setupEndpointRef`.
    ///
    /// Fails with [`RpcError::EndpointNotFound`] naming the URI when it does not exist,
    /// with [`RpcError::MessageType`] naming the URI and both types when it takes another
    /// message type (compared by name, see the crate docs, "Checked types"), with
    /// [`RpcError::Connection`] when the env cannot be reached, and with
    /// [`RpcError::Timeout`] naming `rpc.lookupTimeout` when it does not answer.
    pub fn setup_endpoint_ref<M>(
        &self,
        address: impl AsRef<RpcAddress>,
        name: &str,
    ) -> Result<RpcEndpointRef<M>, RpcError>
    where
        M: Serialize + DeserializeOwned + Send + 'static,
    {
        let inner = &self.inner;
        inner.check_running()?;
        let address = address.as_ref();
        let uri = endpoint_uri(Some(address), name);
        let target = |env_id| {
            Arc::new(RefInner::new(
                inner,
                name.into(),
                Some(address.clone()),
                env_id,
                None,
            ))
        };
        let other_type = |uri: String, takes: String| RpcError::MessageType {
            endpoint: uri,
            takes: takes.into(),
            sent: Some(TypeLabel::of::<M>().to_string().into()),
        };
        if inner.address.as_ref() == Some(address) {
            let Some(inbox) = inner.dispatcher.inbox(name) else {
                return Err(RpcError::EndpointNotFound { uri });
            };
            let (fingerprint, takes) = inbox.message_type();
            if fingerprint != types::fingerprint::<M>() {
                return Err(other_type(uri, TypeLabel(takes).to_string()));
            }
            let local = target(inner.id);
            let _ = local.inbox.set(Arc::downgrade(&inbox));
            return Ok(RpcEndpointRef::from_inner(local));
        }
        let verifier = RpcEndpointRef::<CheckExistence>::from_inner(Arc::new(RefInner::new(
            inner,
            verifier::NAME.into(),
            Some(address.clone()),
            0,
            None,
        )));
        let info = CallInfo::new(
            What::Text(format!("lookup of {uri}")),
            inner.settings.lookup_timeout,
            keys::LOOKUP_TIMEOUT,
        );
        let question = CheckExistence {
            name: name.to_owned(),
            message_type: std::any::type_name::<M>().to_owned(),
        };
        match verifier.ask_info::<Verdict>(question, info).wait() {
            Ok(Verdict::Exists) => Ok(RpcEndpointRef::from_inner(target(0))),
            Ok(Verdict::OtherType { takes }) => Err(other_type(uri, takes)),
            Ok(Verdict::Missing) | Err(RpcError::EndpointNotFound { .. }) => {
                Err(RpcError::EndpointNotFound { uri })
            }
            Err(err) => Err(err),
        }
    }

    /// [`setup_endpoint_ref`](Self::setup_endpoint_ref) for a URI
    /// `rpc://name@host:port` (`spark://` is accepted too). A URI that does not parse is
    /// [`RpcError::InvalidAddress`].
    pub fn setup_endpoint_ref_by_uri<M>(&self, uri: &str) -> Result<RpcEndpointRef<M>, RpcError>
    where
        M: Serialize + DeserializeOwned + Send + 'static,
    {
        let (address, name) = parse_endpoint_uri(uri)?;
        self.setup_endpoint_ref(&address, &name)
    }

    /// Stops an endpoint of this env: `on_stop` runs after the messages already queued,
    /// asks it still holds unanswered fail with [`RpcError::EndpointStopped`], later
    /// calls to it fail the same way, and its name is free again. References resolve by
    /// name, as in Spark: once another endpoint is registered under that name, calls
    /// through old references reach the new one. Stopping it again is a no-op (also
    /// through an old reference once the name is taken again). A reference to an
    /// endpoint of another env is [`RpcError::EndpointNotFound`].
    pub fn stop<M>(&self, endpoint: &RpcEndpointRef<M>) -> Result<(), RpcError> {
        let target = endpoint.inner();
        let ours =
            target.client.is_none() && self.inner.is_self(target.env_id, target.address.as_ref());
        if !ours {
            return Err(RpcError::EndpointNotFound { uri: target.uri() });
        }
        if let Some(cached) = target.inbox.get() {
            // The reference knows its endpoint: stop that one only. If it is gone or no
            // longer registered, it stopped already (the name may belong to a newer
            // endpoint by now).
            let Some(cached) = cached.upgrade() else {
                return Ok(());
            };
            let current = self.inner.dispatcher.inbox(&target.name);
            if !current.is_some_and(|c| Arc::ptr_eq(&c, &cached)) {
                return Ok(());
            }
        }
        self.inner.dispatcher.stop_endpoint(&target.name);
        Ok(())
    }

    /// The files, jars and directories this env serves to other envs' (or Spark's)
    /// [`open_channel`](Self::open_channel) (Spark's `RpcEnv.fileServer`, its
    /// `NettyStreamManager`). In client mode it serves nothing: its `add_*` methods fail.
    ///
    /// ```
    /// use std::io::Read;
    /// use rpcenv::RpcEnv;
    ///
    /// let dir = std::env::temp_dir().join(format!("rpcenv-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("app.conf");
    /// std::fs::write(&path, b"workers = 4\n")?;
    ///
    /// let master = RpcEnv::builder("master").bind_address("127.0.0.1").port(0).build()?;
    /// let uri = master.file_server().add_file(&path)?; // rpc://127.0.0.1:<port>/files/app.conf
    ///
    /// let worker = RpcEnv::builder("worker").client_mode(true).build()?;
    /// let mut text = String::new();
    /// worker.open_channel(&uri)?.read_to_string(&mut text)?;
    /// assert_eq!(text, "workers = 4\n");
    /// # worker.shutdown();
    /// # master.shutdown();
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_server(&self) -> &FileServer {
        &self.inner.file_server
    }

    /// Downloads a file another env serves (Spark's `NettyRpcEnv.openChannel`): `uri` is
    /// what that env's [`FileServer`] returned, `rpc://host:port/files/<name>` (or
    /// `/jars/`, or a directory's URI with a relative path appended; `spark://` is
    /// accepted too, so a Spark server's files can be fetched). Works from client-mode
    /// envs.
    ///
    /// Blocks while it connects (downloads use connections of their own, one per peer by
    /// default, not those of the env's messages) and sends the request; the returned
    /// [`StreamReader`] gives the bytes as they arrive, holding at most
    /// `rpc.io.maxQueuedBytes` of them, so a file larger than memory streams through. A
    /// missing file, or a connection that closes before the file is whole, fails the
    /// reader's `read` (never a short read that looks whole).
    ///
    /// Fails with [`RpcError::InvalidAddress`] for a URI without host, port or path
    /// (Spark's "Host name must be defined." and so on), [`RpcError::Connection`] when
    /// the server cannot be reached, [`RpcError::EnvStopped`] after shutdown.
    pub fn open_channel(&self, uri: &str) -> Result<StreamReader, RpcError> {
        self.inner.check_running()?;
        let parsed = parse_uri(uri)?;
        let client = self
            .inner
            .files_factory
            .create_client(&parsed.host, parsed.port)?;
        debug!(
            "downloading {} from {}",
            parsed.stream_id,
            client.remote_address()
        );
        client.stream_reader(&parsed.stream_id)
    }

    /// Shuts the env down; idempotent. Pending asks fail at once with
    /// [`RpcError::EnvStopped`], queued outgoing messages too; every endpoint runs
    /// `on_stop`; the listener and connections close; the threads exit. Waits up to five
    /// seconds for endpoints and threads that are busy, then leaves them behind (logged).
    ///
    /// Called from an endpoint of this env, it returns at once and the shutdown runs on
    /// a thread of its own.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// A snapshot of what the env is doing: its connections by peer, its endpoints,
    /// and env-wide counts (see [`RpcMetrics`] for every figure, and
    /// [`RpcMetrics::status_line`] for a line to log). Cheap enough to call every
    /// second: it takes the registries' locks (connections, endpoints) briefly and
    /// copies counters; nothing on the message path waits for it. Works after
    /// shutdown too (no connections or endpoints then, the counts kept).
    pub fn metrics(&self) -> RpcMetrics {
        self.inner.metrics()
    }

    /// Blocks until a shutdown of this env has completed. Do not call it from an
    /// endpoint of this env.
    pub fn await_termination(&self) {
        let mut terminated = self.inner.terminated.lock();
        while !*terminated {
            terminated = self
                .inner
                .terminated_cv
                .wait_timeout(terminated, Duration::from_secs(3600));
        }
    }
}

impl fmt::Debug for RpcEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcEnv")
            .field("name", &self.inner.name)
            .field("address", &self.inner.address)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

/// The env itself, shared by its handles, references and calls.
pub(crate) struct EnvInner {
    id: u64,
    name: String,
    settings: Settings,
    address: Option<RpcAddress>,
    handler: Arc<RpcEnvHandler>,
    server: Mutex<Option<TransportServer>>,
    factory: TransportClientFactory,
    /// The connections of downloads (`open_channel`).
    files_factory: TransportClientFactory,
    file_server: FileServer,
    dispatcher: Dispatcher,
    outboxes: Mutex<HashMap<RpcAddress, Arc<Outbox>>>,
    timeouts: Timeouts,
    connect_pool: Arc<Pool>,
    /// Counts kept with the transport's (messages lost, connections refused).
    counters: Arc<Counters>,
    stopped: AtomicBool,
    terminated: Mutex<bool>,
    terminated_cv: Condvar,
    /// The `rpc-metrics` thread (the `metrics` feature).
    #[cfg(feature = "metrics")]
    publisher: Mutex<Option<crate::metrics::facade::Publisher>>,
}

impl EnvInner {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn address(&self) -> Option<&RpcAddress> {
        self.address.as_ref()
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    pub(crate) fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub(crate) fn handler(&self) -> &RpcEnvHandler {
        &self.handler
    }

    pub(crate) fn client_factory(&self) -> &TransportClientFactory {
        &self.factory
    }

    pub(crate) fn file_server(&self) -> &FileServer {
        &self.file_server
    }

    pub(crate) fn connect_pool(&self) -> &Pool {
        &self.connect_pool
    }

    /// A request body from this env to the endpoint `receiver` (see
    /// `envelope::encode_request`), its buffer from the env's pool when large.
    pub(crate) fn encode_request<M: Serialize + ?Sized>(
        &self,
        receiver: &str,
        reply_type: u64,
        msg: &M,
    ) -> Result<Body, RpcError> {
        crate::rpc::envelope::encode_request(
            self.address(),
            receiver,
            reply_type,
            msg,
            Some(&self.counters().buffers),
        )
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn metrics(&self) -> RpcMetrics {
        let counters = &self.counters;
        let closed = &counters.closed;
        let mut env = EnvMetrics {
            name: self.name.clone(),
            address: self.address.clone(),
            bytes_in: closed.bytes_in.load(Ordering::Relaxed),
            bytes_out: closed.bytes_out.load(Ordering::Relaxed),
            frames_in: closed.frames_in.load(Ordering::Relaxed),
            frames_out: closed.frames_out.load(Ordering::Relaxed),
            asks_in_flight: self.timeouts.pending(),
            timeouts: counters
                .timeouts
                .lock()
                .iter()
                .map(|(k, n)| (k.trim_start_matches("the timeout given to ").to_owned(), *n))
                .collect(),
            connects: counters.connects.load(Ordering::Relaxed),
            connect_failures: counters.connect_failures.load(Ordering::Relaxed),
            connections_refused: counters.connections_refused.load(Ordering::Relaxed),
            one_way_dropped: counters.one_way_dropped.load(Ordering::Relaxed),
            frames_rejected: counters.log_limit.rejected(),
            auth_failures: counters.log_limit.count(log_limit::kind::AUTH),
            answers_read_by_callers: counters.caller_answers.load(Ordering::Relaxed),
            dispatcher_read_turns: counters.lead_turns.load(Ordering::Relaxed),
            buffers_reused: counters.buffers.reused(),
            ..EnvMetrics::default()
        };
        let mut peers: BTreeMap<SocketAddr, PeerMetrics> = BTreeMap::new();
        // Closed connections still held count in the totals (they add theirs to
        // `closed` only when dropped), not as connections or peers.
        for conn in counters.live_conns() {
            let c = conn.metrics();
            env.bytes_in += c.bytes_in;
            env.bytes_out += c.bytes_out;
            env.frames_in += c.frames_in;
            env.frames_out += c.frames_out;
            if !conn.is_open() {
                continue;
            }
            env.connections += 1;
            env.bytes_queued += c.bytes_queued;
            match peers.get_mut(&c.address) {
                None => {
                    peers.insert(c.address, c);
                }
                Some(p) => {
                    p.connections += c.connections;
                    p.inbound += c.inbound;
                    p.bytes_in += c.bytes_in;
                    p.bytes_out += c.bytes_out;
                    p.frames_in += c.frames_in;
                    p.frames_out += c.frames_out;
                    p.bytes_queued += c.bytes_queued;
                    p.asks_in_flight += c.asks_in_flight;
                    p.last_activity = match (p.last_activity, c.last_activity) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
        }
        // A connection dropped between the read of `closed` and the registry's lock is
        // in neither (never in both): no snapshot reports less than an earlier one.
        let reported = &counters.reported;
        for (total, high) in [
            (&mut env.bytes_in, &reported.bytes_in),
            (&mut env.bytes_out, &reported.bytes_out),
            (&mut env.frames_in, &reported.frames_in),
            (&mut env.frames_out, &reported.frames_out),
        ] {
            *total = high.fetch_max(*total, Ordering::Relaxed).max(*total);
        }
        RpcMetrics {
            at: SystemTime::now(),
            env,
            peers: peers.into_values().collect(),
            endpoints: self.dispatcher.metrics(),
        }
    }

    /// Whether a reference with this target env id and address points into this env.
    pub(crate) fn is_self(&self, env_id: u64, address: Option<&RpcAddress>) -> bool {
        env_id == self.id || (address.is_some() && address == self.address.as_ref())
    }

    /// How a caller's message waits for room: up to `rpc.io.sendTimeout`, or `until` if
    /// sooner; never on an event loop, nor when the timeout is zero.
    pub(crate) fn admission(&self, until: Option<Instant>) -> Admission {
        let timeout = self.settings.send_timeout;
        if timeout.is_zero() || on_event_loop() {
            return Admission::Try;
        }
        let limit = Instant::now().checked_add(timeout);
        Admission::Wait(match (limit, until) {
            (Some(limit), Some(until)) => Some(limit.min(until)),
            (limit, until) => limit.or(until),
        })
    }

    /// `body` if a frame carrying it (a request, or a one-way message) fits
    /// `rpc.message.maxSize`; checked before a message waits for a connection, so that it
    /// fails at once rather than after the connect.
    pub(crate) fn check_frame(&self, body: Body, request: bool) -> Result<Body, RpcError> {
        let size = frame_len(body.len(), request);
        if size > self.settings.max_message_size {
            return Err(RpcError::FrameTooLarge {
                size,
                max: self.settings.max_message_size,
            });
        }
        Ok(body)
    }

    pub(crate) fn check_running(&self) -> Result<(), RpcError> {
        if self.stopped.load(Ordering::Acquire) {
            Err(RpcError::EnvStopped)
        } else {
            Ok(())
        }
    }

    /// The outbox for `address`, made on first use.
    pub(crate) fn outbox(self: &Arc<Self>, address: &RpcAddress) -> Arc<Outbox> {
        let mut outboxes = self.outboxes.lock();
        if let Some(outbox) = outboxes.get(address) {
            return Arc::clone(outbox);
        }
        let outbox = Arc::new(Outbox::new(
            address.clone(),
            Arc::downgrade(self),
            self.settings.max_queued_bytes,
        ));
        outboxes.insert(address.clone(), Arc::clone(&outbox));
        if self.stopped.load(Ordering::Acquire) {
            outbox.stop();
        }
        outbox
    }

    pub(crate) fn shutdown(self: &Arc<Self>) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        if on_loop_of(self.id) {
            // An endpoint of this env asked: its thread cannot wait for itself.
            let env = Arc::clone(self);
            let spawned = spawn("rpc-shutdown".into(), move || env.run_shutdown());
            if spawned.is_ok() {
                return;
            }
        }
        self.run_shutdown();
    }

    fn run_shutdown(&self) {
        let started = Instant::now();
        let deadline = started + SHUTDOWN_GRACE;
        debug!("rpc env {} shutting down", self.name);
        // Senders waiting for room on a connection give up now, not when it closes.
        self.counters.stopping.store(true, Ordering::Release);
        let pending = self.timeouts.stop();
        if !pending.is_empty() {
            debug!("{} pending asks fail with EnvStopped", pending.len());
        }
        for call in pending {
            call.complete(Err(RpcError::EnvStopped));
        }
        let outboxes = std::mem::take(&mut *self.outboxes.lock());
        for outbox in outboxes.values() {
            outbox.stop();
        }
        // Endpoints stop before connections close, so they see no disconnect events
        // caused by this env's own shutdown.
        self.dispatcher.stop(deadline);
        if let Some(server) = self.server.lock().take() {
            server.close();
        }
        self.factory.close();
        self.files_factory.close();
        self.connect_pool.stop(Some(deadline));
        #[cfg(feature = "metrics")]
        if let Some(publisher) = self.publisher.lock().take() {
            // The last figures, with every connection closed.
            publisher.stop();
        }
        *self.terminated.lock() = true;
        self.terminated_cv.notify_all();
        info!("rpc env {} stopped in {:?}", self.name, started.elapsed());
    }
}
