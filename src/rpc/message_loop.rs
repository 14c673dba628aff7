//! Message loops: the threads that run endpoint code.
//!
//! The shared loop has `rpc.dispatcher.numThreads` threads (`rpc-dispatcher-N`) that take
//! scheduled inboxes from one queue; a dedicated loop has one thread (`rpc-endpoint-NAME`)
//! for one endpoint. Endpoint code runs under `catch_unwind`: a panic goes to the
//! endpoint's `on_error`, and the thread goes on. Messages from peers are decoded here,
//! not on the I/O threads.

use std::cell::Cell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use log::{debug, error};
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::RpcError;
use crate::log_limit::{kind, peer_warn};
use crate::metrics::{self, EndpointStats};
use crate::rpc::address::RpcAddress;
use crate::rpc::call::{RpcCallContext, downcast_or_decode};
use crate::rpc::endpoint::{EndpointContext, RpcEndpoint};
use crate::rpc::endpoint_ref::decode_scope;
use crate::rpc::env::EnvInner;
use crate::rpc::inbox::{Handler, Inbox, InboxMessage, Payload, Turn};
use crate::rpc::types::{self, TypeLabel};
use crate::sync::Arc;
use crate::threads::{Pool, Workers, panic_message};

thread_local! {
    /// The id of the env whose message loop runs on this thread (0: none).
    static LOOP_ENV: Cell<u64> = const { Cell::new(0) };
}

/// Whether the current thread is a message-loop thread of any env.
pub(crate) fn on_a_loop() -> bool {
    LOOP_ENV.with(Cell::get) != 0
}

/// Whether the current thread is a message-loop thread of the env `env_id`.
pub(crate) fn on_loop_of(env_id: u64) -> bool {
    LOOP_ENV.with(Cell::get) == env_id
}

/// The threads that run scheduled inboxes: a [`Pool`] of `rpc-dispatcher-N` threads shared
/// by the env's endpoints, or one `rpc-endpoint-NAME` thread for one endpoint, which ends
/// once that endpoint has stopped.
pub(crate) struct MessageLoop {
    name: String,
    env_id: u64,
    pool: Arc<Pool>,
    dedicated: bool,
}

impl MessageLoop {
    /// The shared loop: `threads` threads named `rpc-dispatcher-N`.
    pub(crate) fn shared(env_id: u64, threads: usize) -> Result<Arc<Self>, RpcError> {
        Ok(Arc::new(Self {
            name: "shared".into(),
            env_id,
            pool: Pool::leading("rpc-dispatcher-", threads, crate::transport::lead)?,
            dedicated: false,
        }))
    }

    /// A dedicated loop for the endpoint `name`: one thread, `rpc-endpoint-NAME`, that
    /// exits once the endpoint has stopped.
    pub(crate) fn dedicated(env_id: u64, name: &str) -> Result<Arc<Self>, RpcError> {
        Ok(Arc::new(Self {
            name: format!("endpoint {name}"),
            env_id,
            pool: Pool::new(format!("rpc-endpoint-{name}"), Workers::Fixed(1))?,
            dedicated: true,
        }))
    }

    /// Runs a turn of `inbox` on one of the loop's threads.
    pub(crate) fn schedule(self: &Arc<Self>, inbox: Arc<Inbox>) {
        let this = Arc::clone(self);
        let job = Box::new(move || {
            LOOP_ENV.with(|e| e.set(this.env_id));
            if inbox.process() == Turn::Finished && this.dedicated {
                // The endpoint is gone: its thread ends after this turn.
                this.pool.stop(None);
            }
        });
        if self.pool.execute(job).is_err() {
            // Only after stop: the env is shutting down and the inbox's messages are
            // failed by the dispatcher.
            debug!("message loop {} is stopped; inbox not run", self.name);
        }
    }

    /// Whether every thread has exited.
    pub(crate) fn is_done(&self) -> bool {
        self.pool.is_done()
    }

    /// Lets the threads run what is scheduled and exit, joining them until `deadline`;
    /// threads still busy then are left running (and logged).
    pub(crate) fn stop(&self, deadline: Instant) {
        self.pool.stop(Some(deadline));
    }
}

impl fmt::Debug for MessageLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageLoop")
            .field("name", &self.name)
            .field("pool", &self.pool)
            .finish()
    }
}

/// One call of endpoint code, the same for both kinds of endpoint.
pub(crate) enum Call<M> {
    OnStart,
    OnStop,
    Receive(M),
    Ask(M, RpcCallContext),
    OnError(RpcError),
    Connected(RpcAddress),
    Disconnected(RpcAddress),
    NetworkError(RpcError, RpcAddress),
}

/// Makes `$endpoint` (an [`RpcEndpoint`] or a
/// [`ConcurrentRpcEndpoint`](crate::ConcurrentRpcEndpoint), whose methods have the same
/// names) run the [`Call`] `$call` with the context `$ctx`.
macro_rules! run_call {
    ($endpoint:expr, $call:expr, $ctx:expr) => {
        match $call {
            Call::OnStart => $endpoint.on_start($ctx),
            Call::OnStop => $endpoint.on_stop($ctx),
            Call::Receive(msg) => $endpoint.receive(msg, $ctx),
            Call::Ask(msg, reply) => $endpoint.receive_and_reply(msg, reply, $ctx),
            Call::OnError(error) => $endpoint.on_error(error, $ctx),
            Call::Connected(remote) => $endpoint.on_connected(&remote, $ctx),
            Call::Disconnected(remote) => $endpoint.on_disconnected(&remote, $ctx),
            Call::NetworkError(error, remote) => $endpoint.on_network_error(&error, &remote, $ctx),
        }
    };
}
pub(crate) use run_call;

/// How [`Runner::handle`] reaches an endpoint and the context of its calls: [`Exclusive`]
/// (`&mut` an [`RpcEndpoint`] and its one context) or `concurrent::Shared` (`&` a
/// [`ConcurrentRpcEndpoint`](crate::ConcurrentRpcEndpoint), and a context of each
/// message's own).
pub(crate) trait Reach {
    type Message: DeserializeOwned + 'static;

    /// Names `sender` (`None`: no sender) in the context of the calls that follow.
    fn set_sender(&mut self, sender: Option<RpcAddress>);

    /// Runs `call` (not under `catch_unwind`: that is [`Runner`]'s).
    fn call(&mut self, call: Call<Self::Message>);
}

/// An [`RpcEndpoint`], borrowed to handle one message, and its context.
pub(crate) struct Exclusive<'a, E: RpcEndpoint> {
    endpoint: &'a mut E,
    ctx: &'a mut EndpointContext<E::Message>,
}

impl<E: RpcEndpoint> Reach for Exclusive<'_, E> {
    type Message = E::Message;

    fn set_sender(&mut self, sender: Option<RpcAddress>) {
        self.ctx.set_sender(sender);
    }

    fn call(&mut self, call: Call<E::Message>) {
        run_call!(self.endpoint, call, self.ctx);
    }
}

/// What handling a message takes besides the endpoint, whichever its kind: decoding, the
/// rate-limited warning, the failed ask, `on_error`, the count of panics.
pub(crate) struct Runner {
    env: Arc<EnvInner>,
    name: Arc<str>,
    /// The fingerprint of the endpoint's message type.
    message_type: u64,
    /// The endpoint's counters (panics; the outcomes of its asks), shared with its inbox.
    stats: Arc<EndpointStats>,
}

impl Runner {
    /// The runner of the endpoint `name`, whose messages are `M`s.
    pub(crate) fn new<M: 'static>(
        env: Arc<EnvInner>,
        name: Arc<str>,
        stats: Arc<EndpointStats>,
    ) -> Self {
        Self {
            env,
            name,
            message_type: types::fingerprint::<M>(),
            stats,
        }
    }

    /// Handles `msg` with the endpoint `reach` reaches: sets the sender of its context,
    /// decodes a message (one that does not decode is logged, rate-limited per peer, and
    /// goes to `on_error`; an ask fails, and goes to `on_error` only if `Deserialize`
    /// panicked) and runs the endpoint's code for it under [`guard`](Self::guard).
    pub(crate) fn handle<R: Reach>(&self, mut reach: R, msg: InboxMessage) {
        let call = match msg {
            InboxMessage::OnStart => {
                debug!("endpoint {} starts", self.name);
                Call::OnStart
            }
            InboxMessage::OnStop => {
                debug!("endpoint {} stops", self.name);
                Call::OnStop
            }
            InboxMessage::Connected(remote) => Call::Connected(remote),
            InboxMessage::Disconnected(remote) => Call::Disconnected(remote),
            InboxMessage::NetworkError(error, remote) => Call::NetworkError(error, remote),
            InboxMessage::OneWay { sender, payload } => {
                reach.set_sender(sender);
                let peer = payload.peer();
                match self.decode::<R::Message>(payload) {
                    Ok(msg) => self.guard(&mut reach, Call::Receive(msg)),
                    Err((err, panicked)) => {
                        if panicked {
                            metrics::bump(&self.stats.panics);
                        }
                        peer_warn!(
                            self.env.counters().log_limit,
                            peer,
                            kind::DECODE,
                            "one-way message for endpoint {} dropped: {err:#}",
                            self.name
                        );
                        self.guard(&mut reach, Call::OnError(err));
                    }
                }
                return;
            }
            InboxMessage::Ask { payload, mut reply } => {
                reach.set_sender(reply.sender_address());
                reply.count_in(&self.stats);
                let peer = payload.peer();
                match self.decode::<R::Message>(payload) {
                    Ok(msg) => self.guard(&mut reach, Call::Ask(msg, reply)),
                    Err((err, panicked)) => {
                        peer_warn!(
                            self.env.counters().log_limit,
                            peer,
                            kind::DECODE,
                            "ask for endpoint {} failed: {err:#}",
                            self.name
                        );
                        reply.fail(err.clone());
                        if panicked {
                            metrics::bump(&self.stats.panics);
                            self.guard(&mut reach, Call::OnError(err));
                        }
                    }
                }
                return;
            }
        };
        reach.set_sender(None);
        self.guard(&mut reach, call);
    }

    fn decode<M: DeserializeOwned + 'static>(
        &self,
        payload: Payload,
    ) -> Result<M, (RpcError, bool)> {
        decode_payload::<M>(&self.env, &self.name, self.message_type, payload)
    }

    /// Runs `call`; a panic is counted, fails the ask the handler held
    /// ([`RpcCallContext::answer_panicked`]) and goes to `on_error`, whose own panic is
    /// logged and ignored.
    fn guard<R: Reach>(&self, reach: &mut R, call: Call<R::Message>) {
        let outcome = catch_unwind(AssertUnwindSafe(|| reach.call(call)));
        let Err(payload) = outcome else {
            return;
        };
        metrics::bump(&self.stats.panics);
        let message = panic_message(payload.as_ref());
        RpcCallContext::answer_panicked(&message);
        let error = RpcError::EndpointPanicked {
            endpoint: self.name.to_string(),
            message,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| reach.call(Call::OnError(error))));
        if let Err(payload) = outcome {
            let message = panic_message(payload.as_ref());
            RpcCallContext::answer_panicked(&message);
            error!(
                "on_error of endpoint {} panicked ({message}); ignored",
                self.name
            );
        }
    }
}

/// An endpoint of either kind with its context and [`Runner`], behind the [`Handler`]
/// (an [`RpcEndpoint`]) or the [`SharedHandler`](crate::rpc::inbox::SharedHandler) (a
/// [`ConcurrentRpcEndpoint`](crate::ConcurrentRpcEndpoint)) its inbox calls. `M` is the
/// endpoint's message type.
pub(crate) struct Hosted<E, M> {
    pub(crate) endpoint: E,
    /// The context of events and of messages; a concurrent endpoint's message with a
    /// sender address gets a copy naming it.
    pub(crate) ctx: EndpointContext<M>,
    pub(crate) runner: Runner,
}

impl<E, M: 'static> Hosted<E, M> {
    pub(crate) fn new(
        endpoint: E,
        ctx: EndpointContext<M>,
        env: Arc<EnvInner>,
        name: Arc<str>,
        stats: Arc<EndpointStats>,
    ) -> Self {
        Self {
            endpoint,
            ctx,
            runner: Runner::new::<M>(env, name, stats),
        }
    }
}

/// Decodes a message for the endpoint `name`, whose messages are of type `M` with the
/// fingerprint `message_type`. `Err((error, true))`: the message's `Deserialize`
/// panicked (a bug the endpoint hears of through `on_error`). A message of another type
/// than the endpoint's (by name, see `types`) is a [`RpcError::MessageType`]. A payload
/// from a peer gives its share of the window back here, as it leaves the inbox.
pub(crate) fn decode_payload<M: DeserializeOwned + 'static>(
    env: &Arc<EnvInner>,
    name: &Arc<str>,
    expected_type: u64,
    payload: Payload,
) -> Result<M, (RpcError, bool)> {
    let what = format_args!("message for endpoint {} as {}", name, TypeLabel::of::<M>());
    let other_type = |sent: Option<Box<str>>| RpcError::MessageType {
        endpoint: name.to_string(),
        takes: TypeLabel::of::<M>().to_string().into(),
        sent,
    };
    let decoded = catch_unwind(AssertUnwindSafe(|| match payload {
        Payload::Local(content) => match downcast_or_decode(content, env, what) {
            Ok(msg) => Ok(msg),
            Err(Ok(sent)) => Err(other_type(Some(sent.into()))),
            Err(Err(err)) => Err(err),
        },
        Payload::Remote {
            body,
            start,
            message_type,
            client,
            charge,
        } => {
            // The message has left the inbox: its window goes back to the sender.
            drop(charge);
            if message_type != 0 && message_type != expected_type {
                return Err(other_type(None));
            }
            // The body becomes shareable without a copy: a `SharedBytes` in the message
            // is a view of it. A large body's buffer goes back to the pool when the last
            // view drops.
            let body = env.counters().buffers.share(body);
            decode_scope(env, Some(&client), || {
                codec::decode_shared::<M>(&body, start, what)
            })
        }
    }));
    match decoded {
        Ok(result) => result.map_err(|err| (err, false)),
        Err(payload) => Err((
            RpcError::decode(
                format!("message for endpoint {} as {}", name, TypeLabel::of::<M>()),
                format!(
                    "its Deserialize panicked: {}",
                    panic_message(payload.as_ref())
                ),
            ),
            true,
        )),
    }
}

impl<E: RpcEndpoint> Handler for Hosted<E, E::Message> {
    fn handle(&mut self, msg: InboxMessage) {
        let Self {
            endpoint,
            ctx,
            runner,
        } = self;
        runner.handle(Exclusive { endpoint, ctx }, msg);
    }
}
