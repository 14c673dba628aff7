//! One ask from start to end: the shared [`Call`] slot, the caller's [`Pending`] and the
//! endpoint's [`RpcCallContext`].

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::RpcError;
use crate::metrics::{self, EndpointStats};
use crate::rpc::address::RpcAddress;
use crate::rpc::endpoint::describe_sender;
use crate::rpc::endpoint_ref::{RefInner, decode_scope};
use crate::rpc::env::EnvInner;
use crate::rpc::envelope::{self, ReplyError};
use crate::rpc::message_loop::on_a_loop;
use crate::rpc::timeout::Deadline;
use crate::rpc::types::{self, TypeLabel};
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Condvar, Mutex};
use crate::threads::panic_message;
use crate::transport::{Awaited, Responder, TransportClient, from_peer, read_for_answer};

/// A value that can travel locally without being serialized, and be serialized when it
/// must (a local reply or message of the same name but another type than the one the
/// other side expects, e.g. a copy of an enum in another module).
pub(crate) trait Content: Send {
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    fn encode(&self, what: &dyn fmt::Display) -> Result<Vec<u8>, RpcError>;
    /// The value's type, as `std::any::type_name` spells it.
    fn type_name(&self) -> &'static str;
    /// The fingerprint of the value's type (see `types`).
    fn fingerprint(&self) -> u64;
}

impl<T: Serialize + Send + 'static> Content for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn encode(&self, what: &dyn fmt::Display) -> Result<Vec<u8>, RpcError> {
        codec::encode(self, what)
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }

    fn fingerprint(&self) -> u64 {
        types::fingerprint::<T>()
    }
}

/// Turns local content into a `T`: moved when it is one; serialized and deserialized when
/// it is a type of the same name (see `types`); otherwise `Err(Ok(name))` with the wire
/// name of its type. `Err(Err(_))`: it did not encode or decode.
pub(crate) fn downcast_or_decode<T: DeserializeOwned + 'static>(
    content: Box<dyn Content>,
    env: &Arc<EnvInner>,
    what: impl fmt::Display,
) -> Result<T, Result<String, RpcError>> {
    if content.as_any().is::<T>() {
        if let Ok(value) = content.into_any().downcast::<T>() {
            return Ok(*value);
        }
        unreachable!("the type was checked");
    }
    if content.fingerprint() != types::fingerprint::<T>() {
        return Err(Ok(TypeLabel(content.type_name()).to_string()));
    }
    let bytes = content.encode(&what).map_err(Err)?;
    decode_scope(env, None, || codec::decode::<T>(&bytes, what)).map_err(Err)
}

/// The answer an ask received, before it is turned into the asked type.
pub(crate) enum Reply {
    /// From an endpoint of the same env: the value itself.
    Local(Box<dyn Content>),
    /// From a peer: the response body, and the connection it came over (refs inside it
    /// to client-mode endpoints are bound to that connection).
    Remote {
        body: Vec<u8>,
        client: TransportClient,
    },
}

/// The outcome and who waits for it (notifying nobody costs a system call).
struct Slot {
    state: State,
    waiter: Waiter,
}

/// Who an outcome set by another thread must wake.
enum Waiter {
    Nobody,
    /// A thread blocked on the call's condition variable.
    Blocked,
    /// A thread reading the connection for the answer, blocked on its own poller (see
    /// `transport::read_turn`).
    Reading(Arc<mio::Waker>),
}

enum State {
    Waiting,
    Done(Result<Reply, RpcError>),
    /// The outcome was handed out (or the call abandoned).
    Taken,
}

impl Awaited for Call {
    fn is_done(&self) -> bool {
        Self::is_done(self)
    }

    fn answered(&self) -> bool {
        match &self.state.lock().state {
            State::Done(outcome) => from_peer(outcome),
            State::Waiting | State::Taken => false,
        }
    }

    fn arm(&self, waker: Option<&Arc<mio::Waker>>) -> bool {
        let mut slot = self.state.lock();
        if !matches!(slot.state, State::Waiting) {
            slot.waiter = Waiter::Nobody;
            return false;
        }
        slot.waiter = match waker {
            Some(waker) => Waiter::Reading(Arc::clone(waker)),
            None => Waiter::Nobody,
        };
        true
    }
}

/// What an ask is, for error messages; formatted only when an error needs it.
pub(crate) enum What {
    /// An ask through this reference: "ask of endpoint echo at 127.0.0.1:7077".
    Ask(Arc<RefInner>),
    /// Anything else, e.g. "lookup of rpc://echo@127.0.0.1:7077".
    Text(String),
}

impl What {
    /// Who answers: "endpoint echo at 127.0.0.1:7077".
    fn target(&self) -> String {
        match self {
            Self::Ask(target) => target.describe(),
            Self::Text(text) => text.clone(),
        }
    }

    /// The endpoint's URI, when the call is an ask through a reference.
    fn uri(&self) -> Option<String> {
        match self {
            Self::Ask(target) => Some(target.uri()),
            Self::Text(_) => None,
        }
    }
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ask(target) => write!(f, "ask of {}", target.describe()),
            Self::Text(text) => f.write_str(text),
        }
    }
}

/// What the errors of a call say about it.
pub(crate) struct CallInfo {
    pub(crate) what: What,
    pub(crate) after: Duration,
    pub(crate) key: &'static str,
    /// The type of the message sent (`std::any::type_name`), for a `MessageType` error.
    message: &'static str,
}

impl CallInfo {
    pub(crate) fn new(what: What, after: Duration, key: &'static str) -> Self {
        Self {
            what,
            after,
            key,
            message: "",
        }
    }

    /// This call sends an `M`.
    pub(crate) fn sending<M>(self) -> Self {
        Self {
            message: std::any::type_name::<M>(),
            ..self
        }
    }
}

/// The slot an ask's outcome lands in: filled once (first outcome wins), by the endpoint's
/// reply, a transport failure, the timeout thread, an abort or a shutdown.
pub(crate) struct Call {
    id: u64,
    deadline: Deadline,
    info: CallInfo,
    env: Arc<EnvInner>,
    state: Mutex<Slot>,
    ready: Condvar,
    /// The connection and request id once sent, to forget the request on timeout or abort.
    sent: Mutex<Option<(TransportClient, u64)>>,
}

static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(0);

impl Call {
    /// A call, registered with the env's timeouts (or failed at once if the env stopped).
    pub(crate) fn start(env: &Arc<EnvInner>, info: CallInfo) -> Arc<Self> {
        let call = Arc::new(Self {
            id: NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed),
            deadline: Deadline::after(Instant::now(), info.after),
            info,
            env: Arc::clone(env),
            state: Mutex::new(Slot {
                state: State::Waiting,
                waiter: Waiter::Nobody,
            }),
            ready: Condvar::default(),
            sent: Mutex::new(None),
        });
        if !env.timeouts().register(&call) {
            call.complete(Err(RpcError::EnvStopped));
        }
        call
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// Sets the outcome unless one is set already; returns whether this one was taken.
    pub(crate) fn complete(&self, outcome: Result<Reply, RpcError>) -> bool {
        let mut slot = self.state.lock();
        if !matches!(slot.state, State::Waiting) {
            drop(slot);
            match outcome {
                Ok(_) => debug!("late reply to call {} dropped", self.id),
                Err(err) => debug!("late failure of call {} dropped: {err:#}", self.id),
            }
            return false;
        }
        slot.state = State::Done(outcome);
        let waiter = std::mem::replace(&mut slot.waiter, Waiter::Nobody);
        drop(slot);
        match waiter {
            Waiter::Nobody => {}
            Waiter::Blocked => self.ready.notify_all(),
            Waiter::Reading(waker) => {
                let _ = waker.wake();
            }
        }
        self.env.timeouts().cancel(self.deadline, self.id);
        true
    }

    pub(crate) fn is_done(&self) -> bool {
        !matches!(self.state.lock().state, State::Waiting)
    }

    /// Records where the request went, so that a timeout or abort can forget it.
    pub(crate) fn set_sent(&self, client: &TransportClient, request_id: u64) {
        if self.is_done() {
            client.remove_rpc_request(request_id);
        } else {
            *self.sent.lock() = Some((client.clone(), request_id));
        }
    }

    fn forget_request(&self) {
        if let Some((client, id)) = self.sent.lock().take() {
            client.remove_rpc_request(id);
        }
    }

    fn timeout_error(&self) -> RpcError {
        RpcError::Timeout {
            what: self.info.what.to_string(),
            after: self.info.after,
            key: self.info.key,
        }
    }

    /// The deadline passed (called by the `rpc-timeout` thread).
    pub(crate) fn expire(&self) {
        if self.complete(Err(self.timeout_error())) {
            self.env.counters().timed_out(self.info.key);
            debug!("{} timed out after {:?}", self.info.what, self.info.after);
            self.forget_request();
        }
    }

    /// Waits for the outcome until `until` (or the call's own deadline, if earlier).
    /// `None`: `until` passed first.
    fn wait_until(&self, until: Deadline) -> Option<Result<Reply, RpcError>> {
        let limit = until.min(self.deadline);
        self.read_answer(limit);
        let mut slot = self.state.lock();
        loop {
            match std::mem::replace(&mut slot.state, State::Taken) {
                State::Done(outcome) => return Some(outcome),
                State::Taken => panic!("the outcome of this ask was already taken by try_wait"),
                State::Waiting => slot.state = State::Waiting,
            }
            let now = Instant::now();
            let wait = match limit {
                Deadline::At(at) if at <= now => break,
                Deadline::At(at) => at - now,
                Deadline::Never => Duration::from_secs(3600),
            };
            slot.waiter = Waiter::Blocked;
            slot = self.ready.wait_timeout(slot, wait);
        }
        drop(slot);
        if limit == self.deadline {
            // The call's own deadline: it times out now, whether or not the timeout
            // thread got there first.
            self.expire();
            return self.take();
        }
        None
    }

    /// Reads the connection the request went out on for its answer, on this thread, when
    /// it may (see `transport::read_turn`): the answer then wakes this thread directly.
    fn read_answer(&self, limit: Deadline) {
        let Some(client) = self.sent.lock().as_ref().map(|(client, _)| client.clone()) else {
            return;
        };
        let until = match limit {
            Deadline::At(at) => Some(at),
            Deadline::Never => None,
        };
        read_for_answer(&client, self, until);
    }

    fn take(&self) -> Option<Result<Reply, RpcError>> {
        let mut slot = self.state.lock();
        match std::mem::replace(&mut slot.state, State::Taken) {
            State::Done(outcome) => Some(outcome),
            State::Waiting => {
                slot.state = State::Waiting;
                None
            }
            State::Taken => None,
        }
    }

    /// `err`, with the type this call sent filled in where it names none.
    fn name_sent_type(&self, err: RpcError) -> RpcError {
        match err {
            RpcError::MessageType {
                endpoint,
                takes,
                sent: None,
            } if !self.info.message.is_empty() => RpcError::MessageType {
                endpoint: self.info.what.uri().unwrap_or(endpoint),
                takes,
                sent: Some(TypeLabel(self.info.message).to_string().into()),
            },
            other => other,
        }
    }

    /// Gives up on the call: a later reply is dropped.
    fn abandon(&self, reason: RpcError) {
        if self.complete(Err(reason)) {
            self.forget_request();
        }
        self.state.lock().state = State::Taken;
    }
}

/// Turns an outcome into the asked type.
///
/// A reply of another type than `T` (by name, see `types`) is an [`RpcError::Decode`]
/// naming both types; so is a reply that does not decode as a `T`. A `Deserialize` that
/// panics is an [`RpcError::Decode`] saying so, not a panic of the caller.
fn into_typed<T: DeserializeOwned + 'static>(
    outcome: Result<Reply, RpcError>,
    call: &Call,
) -> Result<T, RpcError> {
    let env = &call.env;
    let reply = match outcome {
        Ok(reply) => reply,
        Err(err) => return Err(call.name_sent_type(err)),
    };
    let what = || {
        format!(
            "the reply of {} as {}",
            call.info.what.target(),
            TypeLabel::of::<T>()
        )
    };
    let other_type = |replied: String| {
        RpcError::decode(
            what(),
            format!(
                "the endpoint replied with {replied}, the ask expected {}",
                TypeLabel::of::<T>()
            ),
        )
    };
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        let lazy_what = LazyWhat(&what);
        match reply {
            Reply::Local(content) => match downcast_or_decode(content, env, lazy_what) {
                Ok(value) => Ok(value),
                Err(Ok(replied)) => Err(other_type(replied)),
                Err(Err(err)) => Err(err),
            },
            Reply::Remote { body, client } => match envelope::decode_reply(&body) {
                Ok(payload) => {
                    // The payload is the body's tail; the body becomes shareable without
                    // a copy, so a `SharedBytes` in the reply is a view of it.
                    let start = body.len() - payload.len();
                    // A large body's buffer goes back to the pool when the last view drops.
                    let body = env.counters().buffers.share(body);
                    decode_scope(env, Some(&client), || {
                        codec::decode_shared::<T>(&body, start, lazy_what)
                    })
                }
                Err(ReplyError::OtherType(replied)) => Err(other_type(replied)),
                Err(ReplyError::Failed(err)) => Err(call.name_sent_type(err)),
            },
        }
    }));
    decoded.unwrap_or_else(|payload| {
        Err(RpcError::decode(
            what(),
            format!(
                "its Deserialize panicked: {}",
                panic_message(payload.as_ref())
            ),
        ))
    })
}

/// Displays what a closure makes: an error's `what`, made only if there is an error.
struct LazyWhat<'a>(&'a dyn Fn() -> String);

impl fmt::Display for LazyWhat<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// An ask under way: its reply, its failure or its timeout, when it comes.
///
/// Returned by [`RpcEndpointRef::ask`](crate::RpcEndpointRef::ask). Many can be in flight
/// from one thread; each ends exactly once, with the reply decoded as `T`, or with an
/// [`RpcError`]: `Timeout` at its deadline, `Connection` as soon as its connection fails,
/// `EnvStopped` as soon as the env shuts down, whatever the endpoint sends with
/// [`RpcCallContext::send_failure`] as `Remote`, and `NoReply` if the endpoint drops the
/// context. Dropping a `Pending` abandons the ask: the reply is discarded when it comes.
///
/// ```
/// # use rpcenv::{EndpointContext, RpcEnv, RpcEndpoint, RpcCallContext};
/// # struct Double;
/// # impl RpcEndpoint for Double {
/// #     type Message = u64;
/// #     fn receive_and_reply(&mut self, n: u64, reply: RpcCallContext, _: &EndpointContext<u64>) {
/// #         reply.reply(2 * n)
/// #     }
/// # }
/// let env = RpcEnv::builder("doc").client_mode(true).build()?;
/// let double = env.setup_endpoint("double", Double)?;
/// let pending: Vec<_> = (0..10u64).map(|n| double.ask::<u64>(n)).collect();
/// let answers: Vec<u64> = pending.into_iter().map(|p| p.wait()).collect::<Result<_, _>>()?;
/// assert_eq!(answers[9], 18);
/// # env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[must_use = "a dropped Pending abandons the ask"]
pub struct Pending<T> {
    call: Option<Arc<Call>>,
    _reply: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + 'static> Pending<T> {
    pub(crate) fn new(call: Arc<Call>) -> Self {
        Self {
            call: Some(call),
            _reply: PhantomData,
        }
    }

    fn call(&self) -> &Arc<Call> {
        match &self.call {
            Some(call) => call,
            None => unreachable!("a Pending holds its call until it is consumed"),
        }
    }

    /// Blocks until the ask ends, and returns its reply or failure.
    ///
    /// # Panics
    ///
    /// If [`try_wait`](Self::try_wait) already returned the outcome.
    pub fn wait(mut self) -> Result<T, RpcError> {
        let call = self.call.take().expect("held until consumed");
        let outcome = call
            .wait_until(Deadline::Never)
            .unwrap_or_else(|| Err(call.timeout_error()));
        into_typed(outcome, &call)
    }

    /// Blocks at most `timeout` (and no longer than the ask's own deadline). When
    /// `timeout` runs out first the ask is abandoned and the result is
    /// [`RpcError::Timeout`] naming "the timeout given to wait_timeout".
    ///
    /// # Panics
    ///
    /// If [`try_wait`](Self::try_wait) already returned the outcome.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<T, RpcError> {
        let call = self.call.take().expect("held until consumed");
        match call.wait_until(Deadline::after(Instant::now(), timeout)) {
            Some(outcome) => into_typed(outcome, &call),
            None => {
                let err = RpcError::Timeout {
                    what: call.info.what.to_string(),
                    after: timeout,
                    key: "the timeout given to wait_timeout",
                };
                call.abandon(err.clone());
                Err(err)
            }
        }
    }

    /// The outcome if the ask has ended, without blocking; `None` while it is under way.
    /// The outcome is handed out once: after `Some`, later calls return `None`.
    pub fn try_wait(&mut self) -> Option<Result<T, RpcError>> {
        let call = self.call();
        let outcome = call.take()?;
        Some(into_typed(outcome, call))
    }

    /// Whether the ask has ended (replied, failed or timed out), without blocking.
    pub fn is_done(&self) -> bool {
        self.call().is_done()
    }

    /// Gives up on the ask: the reply is discarded when it comes. The remote endpoint is
    /// not told and may still run the request.
    pub fn abort(mut self) {
        if let Some(call) = self.call.take() {
            call.abandon(RpcError::Remote {
                message: "aborted by the caller".into(),
            });
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            if !call.is_done() {
                call.abandon(RpcError::Remote {
                    message: "the Pending was dropped".into(),
                });
            }
        }
    }
}

impl<T> fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Pending");
        if let Some(call) = &self.call {
            s.field("ask", &call.info.what.to_string())
                .field("done", &call.is_done());
        }
        s.finish()
    }
}

/// Where an answer goes.
enum ReplyTarget {
    Local(Arc<Call>),
    Remote(Responder),
}

/// The way an endpoint answers one ask: [`reply`](Self::reply) or
/// [`send_failure`](Self::send_failure), once, from any thread, now or later.
///
/// Dropping it without either fails the ask at once with [`RpcError::NoReply`] naming the
/// endpoint; if the endpoint panicked while holding it, the ask fails with
/// [`RpcError::Remote`] carrying the panic's message.
///
/// ```
/// use rpcenv::{EndpointContext, RpcCallContext, RpcEndpoint};
/// struct Div;
/// impl RpcEndpoint for Div {
///     type Message = (i64, i64);
///     fn receive_and_reply(
///         &mut self,
///         (a, b): (i64, i64),
///         reply: RpcCallContext,
///         _ctx: &EndpointContext<Self::Message>,
///     ) {
///         if b == 0 {
///             reply.send_failure("division by zero")
///         } else {
///             reply.reply(a / b)
///         }
///     }
/// }
/// let env = rpcenv::RpcEnv::builder("doc").client_mode(true).build()?;
/// let div = env.setup_endpoint("div", Div)?;
/// assert_eq!(div.ask_sync::<i64>((7, 2))?, 3);
/// assert!(matches!(
///     div.ask_sync::<i64>((7, 0)),
///     Err(rpcenv::RpcError::Remote { message }) if message == "division by zero"
/// ));
/// # env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[must_use = "a dropped RpcCallContext fails the ask with NoReply"]
pub struct RpcCallContext {
    target: Option<ReplyTarget>,
    endpoint: Arc<str>,
    sender: Option<RpcAddress>,
    /// The fingerprint of the reply type a remote asker expects; 0: no check (a local
    /// asker checks the value itself).
    reply_type: u64,
    /// The counters of the endpoint that handles it, once it reached the endpoint.
    stats: Option<Arc<EndpointStats>>,
}

thread_local! {
    /// While an endpoint is dropped after `on_stop`: what the call contexts it kept fail
    /// with.
    static DROPPED_BECAUSE: RefCell<Option<RpcError>> = const { RefCell::new(None) };
    /// Call contexts dropped while their endpoint panicked: the message loop answers them
    /// with the panic's message once it has caught the panic.
    static PANICKED: RefCell<Vec<RpcCallContext>> = const { RefCell::new(Vec::new()) };
}

impl RpcCallContext {
    pub(crate) fn local(call: Arc<Call>, endpoint: Arc<str>, sender: Option<RpcAddress>) -> Self {
        Self {
            target: Some(ReplyTarget::Local(call)),
            endpoint,
            sender,
            reply_type: 0,
            stats: None,
        }
    }

    /// The context of an ask from a peer that expects a reply of the type whose
    /// fingerprint is `reply_type` (0: no claim).
    pub(crate) fn remote(
        responder: Responder,
        endpoint: Arc<str>,
        sender: Option<RpcAddress>,
        reply_type: u64,
    ) -> Self {
        Self {
            target: Some(ReplyTarget::Remote(responder)),
            endpoint,
            sender,
            reply_type,
            stats: None,
        }
    }

    /// Counts what becomes of this ask in `stats` (its endpoint's).
    pub(crate) fn count_in(&mut self, stats: &Arc<EndpointStats>) {
        self.stats = Some(Arc::clone(stats));
    }

    /// Counts one outcome in the endpoint's counter `which` picks.
    fn count(&self, which: impl FnOnce(&EndpointStats) -> &AtomicU64) {
        if let Some(stats) = &self.stats {
            metrics::bump(which(stats));
        }
    }

    /// Answers the ask with `value`.
    ///
    /// The asker chose its reply type (`ask_sync::<R>`); `T` must be that type, by name
    /// (module paths aside; see the crate docs, "Checked types"). A local asker of
    /// exactly `T` gets the value itself, without serialization. A `T` of another name
    /// is never decoded as `R`: the asker gets [`RpcError::Decode`] naming both types
    /// (checked here for a remote asker, which sent the fingerprint of `R`, so that
    /// nothing of the value is sent; the mismatch is logged at `warn`).
    pub fn reply<T: Serialize + Send + 'static>(mut self, value: T) {
        match self.target.take() {
            Some(ReplyTarget::Local(call)) => {
                self.count(|s| &s.asks_answered);
                call.complete(Ok(Reply::Local(Box::new(value))));
            }
            Some(ReplyTarget::Remote(responder)) => {
                if self.reply_type != 0 && self.reply_type != types::fingerprint::<T>() {
                    self.count(|s| &s.asks_failed);
                    let replied = TypeLabel::of::<T>().to_string();
                    warn!(
                        "endpoint {} replied with {replied} to an ask from {} that expects \
                         another type; the asker gets an error naming both",
                        self.endpoint,
                        describe_sender(self.sender.as_ref())
                    );
                    responder.reply(envelope::encode_reply_type_error(replied));
                    return;
                }
                let what = format_args!(
                    "the reply of endpoint {} (a {})",
                    self.endpoint,
                    TypeLabel::of::<T>()
                );
                self.count(|s| &s.asks_answered);
                let body = envelope::encode_reply(&value, responder.buffers(), what)
                    .unwrap_or_else(|err| envelope::encode_reply_error(&err).into());
                responder.reply_body(body);
            }
            None => {}
        }
    }

    /// Fails the ask: the asker gets [`RpcError::Remote`] with `message`.
    pub fn send_failure(self, message: impl fmt::Display) {
        self.fail(RpcError::Remote {
            message: message.to_string(),
        });
    }

    /// Fails the ask with `error` (sent as it is to a local asker, and with its kind kept
    /// to a remote one where the wire can carry it).
    pub(crate) fn fail(mut self, error: RpcError) {
        if self.target.is_some() {
            self.count(|s| &s.asks_failed);
        }
        match self.target.take() {
            Some(ReplyTarget::Local(call)) => {
                call.complete(Err(error));
            }
            Some(ReplyTarget::Remote(responder)) => {
                responder.reply(envelope::encode_reply_error(&error));
            }
            None => {}
        }
    }

    /// The name of the endpoint that was asked.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The listen address of the env that asked; `None` when it is a client-mode env
    /// (or this env itself in client mode). The same as
    /// [`EndpointContext::sender_address`](crate::EndpointContext::sender_address) in
    /// the handler the ask reached.
    pub fn sender_address(&self) -> Option<RpcAddress> {
        self.sender.clone()
    }

    /// Runs `drop_endpoint`; call contexts it drops fail with `why` instead of `NoReply`.
    pub(crate) fn dropped_because(why: RpcError, drop_endpoint: impl FnOnce()) {
        let previous = DROPPED_BECAUSE.with(|d| d.borrow_mut().replace(why));
        drop_endpoint();
        DROPPED_BECAUSE.with(|d| *d.borrow_mut() = previous);
    }

    /// Answers the contexts that were dropped by a panic on this thread.
    pub(crate) fn answer_panicked(message: &str) {
        let contexts = PANICKED.with(|p| std::mem::take(&mut *p.borrow_mut()));
        for ctx in contexts {
            let endpoint = Arc::clone(&ctx.endpoint);
            ctx.fail(RpcError::Remote {
                message: format!("endpoint {endpoint} panicked: {message}"),
            });
        }
    }
}

impl Drop for RpcCallContext {
    fn drop(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        if std::thread::panicking() {
            self.count(|s| &s.asks_failed);
        } else {
            self.count(|s| &s.asks_dropped);
        }
        let stash = Self {
            target: Some(target),
            endpoint: Arc::clone(&self.endpoint),
            sender: None,
            reply_type: 0,
            stats: None,
        };
        if std::thread::panicking() && on_a_loop() {
            // Left for the message loop, which catches the panic and knows its message.
            // During thread teardown the thread-local may be gone: then it is answered
            // here. On any other thread nobody would pick it up: it falls through to
            // the failure below.
            let mut slot = Some(stash);
            let _ = PANICKED.try_with(|p| p.borrow_mut().extend(slot.take()));
            if let Some(stash) = slot {
                let endpoint = Arc::clone(&stash.endpoint);
                stash.fail(RpcError::Remote {
                    message: format!("endpoint {endpoint} panicked"),
                });
            }
            return;
        }
        if std::thread::panicking() {
            let endpoint = Arc::clone(&stash.endpoint);
            stash.fail(RpcError::Remote {
                message: format!("endpoint {endpoint} panicked"),
            });
            return;
        }
        let why = DROPPED_BECAUSE
            .try_with(|d| d.borrow().clone())
            .ok()
            .flatten();
        let error = why.unwrap_or_else(|| RpcError::NoReply {
            endpoint: self.endpoint.to_string(),
        });
        stash.fail(error);
    }
}

impl fmt::Debug for RpcCallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcCallContext")
            .field("endpoint", &self.endpoint)
            .field("sender", &self.sender)
            .field("local", &matches!(self.target, Some(ReplyTarget::Local(_))))
            .finish()
    }
}
