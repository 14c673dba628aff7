//! [`RpcEndpointRef`]: a typed handle to an endpoint, here or in another env.

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::conf::keys;
use crate::error::RpcError;
use crate::rpc::address::{RpcAddress, endpoint_uri};
use crate::rpc::call::{Call, CallInfo, Pending, RpcCallContext, What};
use crate::rpc::env::EnvInner;
use crate::rpc::inbox::{Inbox, InboxMessage, Payload};
use crate::rpc::outbox::{Outbox, OutboxMessage, send_rpc_on};
use crate::rpc::receipt::Receipt;
use crate::rpc::types;
use crate::sync::{Arc, Weak};
use crate::transport::{self, Admission, FRAME_CHARGE, TransportClient};

/// What a reference points at.
pub(crate) struct RefInner {
    /// The env that holds this reference (and sends through it).
    pub(crate) env: Arc<EnvInner>,
    pub(crate) name: Arc<str>,
    /// The target env's listen address; `None` for an endpoint in a client-mode env.
    pub(crate) address: Option<RpcAddress>,
    /// The target env's id, `0` when unknown.
    pub(crate) env_id: u64,
    /// For an endpoint of a client-mode env: the connection that env opened to this one.
    pub(crate) client: Option<TransportClient>,
    /// For a local endpoint: its inbox, to skip the name lookup.
    pub(crate) inbox: OnceLock<Weak<Inbox>>,
    /// For a remote endpoint: the outbox to its env, to skip the address lookup.
    pub(crate) outbox: OnceLock<Arc<Outbox>>,
}

impl RefInner {
    /// A reference held by `env` to the endpoint `name` of the env at `address`
    /// (`env_id` 0 when unknown).
    pub(crate) fn new(
        env: &Arc<EnvInner>,
        name: Arc<str>,
        address: Option<RpcAddress>,
        env_id: u64,
        client: Option<TransportClient>,
    ) -> Self {
        Self {
            env: Arc::clone(env),
            name,
            address,
            env_id,
            client,
            inbox: OnceLock::new(),
            outbox: OnceLock::new(),
        }
    }

    fn outbox(&self, address: &RpcAddress) -> &Arc<Outbox> {
        self.outbox.get_or_init(|| self.env.outbox(address))
    }
}

enum Route<'a> {
    Local,
    Client(&'a TransportClient),
    Remote(&'a RpcAddress),
}

impl RefInner {
    fn route(&self) -> Route<'_> {
        if let Some(client) = &self.client {
            return Route::Client(client);
        }
        match &self.address {
            _ if self.env.is_self(self.env_id, self.address.as_ref()) => Route::Local,
            Some(address) => Route::Remote(address),
            // A client-mode endpoint without a connection: deserialization binds those of
            // other envs to the connection they came over, so this one is this env's.
            None => Route::Local,
        }
    }

    pub(crate) fn uri(&self) -> String {
        endpoint_uri(self.address.as_ref(), &self.name)
    }

    pub(crate) fn describe(&self) -> String {
        match (&self.address, &self.client) {
            (Some(address), _) => format!("endpoint {} at {address}", self.name),
            (None, Some(client)) => format!(
                "endpoint {} of the client-mode env at {}",
                self.name,
                client.remote_address()
            ),
            (None, None) => format!("endpoint {} of this env", self.name),
        }
    }
}

/// A typed reference to an endpoint whose messages are `M`, in this env or another.
///
/// Cheap to clone, `Send + Sync`, and serializable: a reference put inside a message
/// works on the receiving side, including a reference to an endpoint of a client-mode env
/// (its calls then go back over the connection that env opened; once that connection is
/// closed they fail at once with [`RpcError::Connection`]).
///
/// Messages from one sender to one endpoint are delivered in the order they were sent.
/// Calls to an endpoint of the same env never touch a socket, and a message or reply of
/// the type the other side expects is moved, not serialized.
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
/// let server = RpcEnv::builder("server").bind_address("127.0.0.1").port(0).build()?;
/// server.setup_endpoint("echo", Echo)?;
/// let client = RpcEnv::builder("client").client_mode(true).build()?;
/// let echo = client.setup_endpoint_ref::<String>(&server.address().unwrap(), "echo")?;
/// let back: String = echo.ask_sync("hello".to_string())?;
/// assert_eq!(back, "hello");
/// # client.shutdown();
/// # server.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
pub struct RpcEndpointRef<M> {
    inner: Arc<RefInner>,
    _message: PhantomData<fn(M) -> M>,
}

impl<M> RpcEndpointRef<M> {
    pub(crate) fn from_inner(inner: Arc<RefInner>) -> Self {
        Self {
            inner,
            _message: PhantomData,
        }
    }

    pub(crate) fn inner(&self) -> &Arc<RefInner> {
        &self.inner
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The listen address of the endpoint's env; `None` for an endpoint of a client-mode
    /// env.
    pub fn address(&self) -> Option<RpcAddress> {
        self.inner.address.clone()
    }

    /// `rpc://name@host:port`, or `rpc-client://name` for a client-mode endpoint.
    pub fn uri(&self) -> String {
        self.inner.uri()
    }
}

impl<M: Serialize + Send + 'static> RpcEndpointRef<M> {
    /// Sends a one-way message. Never waits for the network, only for room: a message to
    /// another env goes to that env's connection (connecting first, off this thread, if
    /// needed), one to this env into the endpoint's inbox.
    ///
    /// When there is no room (the connection's write queue holds `rpc.io.maxQueuedBytes`,
    /// the endpoint's window on it is used up and `rpc.io.maxQueuedBytes` more wait for it,
    /// or a local endpoint's inbox holds `rpc.dispatcher.inboxCapacity` from this env), it
    /// waits up to `rpc.io.sendTimeout` and then fails with [`RpcError::QueueFull`] naming
    /// the queue, the bytes queued and the limit. An endpoint sending to itself never
    /// waits (no room could come while it does).
    ///
    /// `Ok` means the message was accepted for delivery. It fails at once when this env is
    /// stopped ([`RpcError::EnvStopped`]), a local endpoint does not exist or is stopped,
    /// the message does not encode or is larger than `rpc.message.maxSize`
    /// ([`RpcError::FrameTooLarge`]), or the connection is known to be down
    /// ([`RpcError::Connection`], also for a while after a connect to that env failed). A
    /// message accepted and then lost (its connect fails, its connection closes before it
    /// was written) is counted and logged at `warn`; use
    /// [`send_with_receipt`](Self::send_with_receipt) to hear of it.
    pub fn send(&self, msg: M) -> Result<(), RpcError> {
        let admission = self.inner.env.admission(None);
        self.send_with(msg, admission, None)
    }

    /// [`send`](Self::send) that never waits: with no room it fails at once with
    /// [`RpcError::QueueFull`].
    pub fn try_send(&self, msg: M) -> Result<(), RpcError> {
        self.send_with(msg, Admission::Try, None)
    }

    /// [`send`](Self::send), and a [`Receipt`] that tells when the message was written to
    /// the connection (or put in a local endpoint's inbox), or why it never will be.
    pub fn send_with_receipt(&self, msg: M) -> Result<Receipt, RpcError> {
        let (receipt, resolve) = Receipt::new();
        let admission = self.inner.env.admission(None);
        self.send_with(msg, admission, Some(resolve))?;
        Ok(receipt)
    }

    fn send_with(
        &self,
        msg: M,
        admission: Admission,
        receipt: Option<transport::Receipt>,
    ) -> Result<(), RpcError> {
        let inner = &*self.inner;
        let env = &inner.env;
        if let Err(err) = env.check_running() {
            return settle(receipt, Err(err));
        }
        match inner.route() {
            Route::Local => {
                let posted = env.dispatcher().post(
                    inner,
                    InboxMessage::OneWay {
                        sender: env.address().cloned(),
                        payload: Payload::Local(Box::new(msg)),
                    },
                    local_charge::<M>(),
                    admission,
                );
                settle(receipt, posted)
            }
            Route::Client(client) => {
                let body = match env.encode_request(&inner.name, 0, &msg) {
                    Ok(body) => body,
                    Err(err) => return settle(receipt, Err(err)),
                };
                let label = Some(Arc::clone(&inner.name));
                client.send_one_way_with(body, label, admission, receipt)
            }
            Route::Remote(address) => {
                let body = match env
                    .encode_request(&inner.name, 0, &msg)
                    .and_then(|body| env.check_frame(body, false))
                {
                    Ok(body) => body,
                    Err(err) => return settle(receipt, Err(err)),
                };
                let label = Arc::clone(&inner.name);
                inner.outbox(address).send(
                    label,
                    OutboxMessage::OneWay { body, receipt },
                    admission,
                )
            }
        }
    }

    /// Asks with the default deadline, `rpc.askTimeout`. Never waits for the network, only
    /// for room, like [`send`](Self::send), and no longer than the ask's own deadline; an
    /// ask that finds none ends with [`RpcError::QueueFull`]. Spark's `ask`.
    ///
    /// `R` is the reply type this ask expects: the endpoint must reply with an `R` (by
    /// name, see the crate docs, "Checked types"); a reply of another type ends the ask
    /// with [`RpcError::Decode`] naming both types, never with a value decoded as the
    /// wrong type. Write it out (`ask::<u64>(..)`, or `let n: u64 = ..wait()?`): with
    /// nothing to infer it from, the compiler stops at ``the trait bound `!:
    /// DeserializeOwned` is not satisfied``.
    pub fn ask<R: DeserializeOwned + 'static>(&self, msg: M) -> Pending<R> {
        let after = self.inner.env.settings().ask_timeout;
        self.ask_with(msg, after, keys::ASK_TIMEOUT)
    }

    /// Asks with the deadline `timeout` from now.
    pub fn ask_timeout<R: DeserializeOwned + 'static>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> Pending<R> {
        self.ask_with(msg, timeout, "the timeout given to ask_timeout")
    }

    /// Asks and waits for the reply, up to `rpc.askTimeout`.
    pub fn ask_sync<R: DeserializeOwned + 'static>(&self, msg: M) -> Result<R, RpcError> {
        self.ask(msg).wait()
    }

    /// Asks and waits for the reply, up to `timeout`.
    pub fn ask_sync_timeout<R: DeserializeOwned + 'static>(
        &self,
        msg: M,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        self.ask_with(msg, timeout, "the timeout given to ask_sync_timeout")
            .wait()
    }

    pub(crate) fn ask_with<R: DeserializeOwned + 'static>(
        &self,
        msg: M,
        after: Duration,
        key: &'static str,
    ) -> Pending<R> {
        let what = What::Ask(Arc::clone(&self.inner));
        self.ask_info(msg, CallInfo::new(what, after, key))
    }

    /// Asks; `info` says what a timeout error reports.
    pub(crate) fn ask_info<R: DeserializeOwned + 'static>(
        &self,
        msg: M,
        info: CallInfo,
    ) -> Pending<R> {
        let inner = &*self.inner;
        let env = &inner.env;
        let call = Call::start(env, info.sending::<M>());
        if call.is_done() {
            return Pending::new(call);
        }
        // Waiting for room ends at the ask's own deadline if that comes first.
        let admission = env.admission(call.deadline().instant());
        match inner.route() {
            Route::Local => {
                let reply = RpcCallContext::local(
                    Arc::clone(&call),
                    Arc::clone(&inner.name),
                    env.address().cloned(),
                );
                // A failed post fails the call through the context it carries.
                let _ = env.dispatcher().post(
                    inner,
                    InboxMessage::Ask {
                        payload: Payload::Local(Box::new(msg)),
                        reply,
                    },
                    local_charge::<M>(),
                    admission,
                );
            }
            Route::Client(client) => {
                let reply_type = types::fingerprint::<R>();
                match env.encode_request(&inner.name, reply_type, &msg) {
                    Ok(body) => send_rpc_on(
                        client,
                        Some(Arc::clone(&inner.name)),
                        body,
                        Arc::clone(&call),
                        admission,
                    ),
                    Err(err) => {
                        call.complete(Err(err));
                    }
                }
            }
            Route::Remote(address) => {
                let reply_type = types::fingerprint::<R>();
                match env
                    .encode_request(&inner.name, reply_type, &msg)
                    .and_then(|body| env.check_frame(body, true))
                {
                    Ok(body) => {
                        // Ask failures reach the call itself.
                        let _ = inner.outbox(address).send(
                            Arc::clone(&inner.name),
                            OutboxMessage::Ask {
                                body,
                                call: Arc::clone(&call),
                            },
                            admission,
                        );
                    }
                    Err(err) => {
                        call.complete(Err(err));
                    }
                }
            }
        }
        Pending::new(call)
    }
}

/// What a message to an endpoint of this env costs of the room this env's threads share
/// in its inbox: the message's own size and the fixed share every message costs (what
/// the message owns on the heap is not counted).
fn local_charge<M>() -> usize {
    size_of::<M>() + FRAME_CHARGE
}

/// Tells `receipt` (if any) the outcome, and returns it.
fn settle(
    receipt: Option<transport::Receipt>,
    outcome: Result<(), RpcError>,
) -> Result<(), RpcError> {
    if let Some(receipt) = receipt {
        receipt(outcome.clone());
    }
    outcome
}

impl<M> Clone for RpcEndpointRef<M> {
    fn clone(&self) -> Self {
        Self::from_inner(Arc::clone(&self.inner))
    }
}

impl<M> fmt::Debug for RpcEndpointRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpcEndpointRef({})", self.inner.uri())
    }
}

/// Two references are equal when they name the same endpoint at the same address; for
/// endpoints of client-mode envs (no address), in the same env.
impl<M> PartialEq for RpcEndpointRef<M> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.inner, &*other.inner);
        a.name == b.name && a.address == b.address && (a.address.is_some() || a.env_id == b.env_id)
    }
}

impl<M> Eq for RpcEndpointRef<M> {}

impl<M> Hash for RpcEndpointRef<M> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name.hash(state);
        self.inner.address.hash(state);
        if self.inner.address.is_none() {
            self.inner.env_id.hash(state);
        }
    }
}

/// A reference on the wire.
#[derive(Serialize, Deserialize)]
struct WireRef {
    address: Option<RpcAddress>,
    name: String,
    env_id: u64,
}

impl<M> Serialize for RpcEndpointRef<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef {
            address: self.inner.address.clone(),
            name: self.inner.name.to_string(),
            env_id: self.inner.env_id,
        }
        .serialize(serializer)
    }
}

impl<'de, M> Deserialize<'de> for RpcEndpointRef<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireRef::deserialize(deserializer)?;
        let (env, client) = SCOPE
            .with(|scope| scope.borrow().last().cloned())
            .ok_or_else(|| {
                serde::de::Error::custom(
                    "an RpcEndpointRef can only be deserialized by rpcenv, which binds it \
                     to the receiving env",
                )
            })?;
        let ours = env.is_self(wire.env_id, wire.address.as_ref());
        let inbox = OnceLock::new();
        if ours {
            if let Some(local) = env.dispatcher().inbox(&wire.name) {
                let _ = inbox.set(Arc::downgrade(&local));
            }
        }
        // A client-mode endpoint (no address) of another env is reached over the
        // connection the message came in on.
        let client = match (&wire.address, ours) {
            (None, false) => client,
            _ => None,
        };
        let inner = RefInner {
            inbox,
            ..RefInner::new(&env, wire.name.into(), wire.address, wire.env_id, client)
        };
        Ok(Self::from_inner(Arc::new(inner)))
    }
}

type Scope = (Arc<EnvInner>, Option<TransportClient>);

thread_local! {
    /// The env (and connection) that references decoded on this thread bind to.
    static SCOPE: RefCell<Vec<Scope>> = const { RefCell::new(Vec::new()) };
}

/// Runs `decode` with `env` (and the connection the bytes came over) as the binding of
/// every [`RpcEndpointRef`] it deserializes.
pub(crate) fn decode_scope<R>(
    env: &Arc<EnvInner>,
    client: Option<&TransportClient>,
    decode: impl FnOnce() -> R,
) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            SCOPE.with(|scope| scope.borrow_mut().pop());
        }
    }
    SCOPE.with(|scope| scope.borrow_mut().push((Arc::clone(env), client.cloned())));
    let _pop = Pop;
    decode()
}
