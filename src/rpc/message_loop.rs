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

use bytes::Bytes;
use log::{debug, error};
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::RpcError;
use crate::log_limit::{kind, peer_warn};
use crate::metrics::{self, EndpointStats};
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
            pool: Pool::new("rpc-dispatcher-", Workers::Fixed(threads))?,
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

/// An endpoint with its context, behind the [`Handler`] the inbox calls.
pub(crate) struct Typed<E: RpcEndpoint> {
    endpoint: E,
    ctx: EndpointContext<E::Message>,
    env: Arc<EnvInner>,
    name: Arc<str>,
    /// The fingerprint of `E::Message`.
    message_type: u64,
    /// The endpoint's counters (panics; the outcomes of its asks).
    stats: Arc<EndpointStats>,
}

impl<E: RpcEndpoint> Typed<E> {
    pub(crate) fn new(
        endpoint: E,
        ctx: EndpointContext<E::Message>,
        env: Arc<EnvInner>,
        name: Arc<str>,
    ) -> Self {
        Self {
            endpoint,
            ctx,
            env,
            name,
            message_type: types::fingerprint::<E::Message>(),
            stats: Arc::default(),
        }
    }

    /// Counts in `stats` (the inbox's).
    pub(crate) fn counting_in(self, stats: Arc<EndpointStats>) -> Self {
        Self { stats, ..self }
    }

    fn decode(&self, payload: Payload) -> Result<E::Message, (RpcError, bool)> {
        decode_payload::<E::Message>(&self.env, &self.name, self.message_type, payload)
    }

    /// Runs endpoint code; a panic goes to `on_error`.
    fn guard(&mut self, f: impl FnOnce(&mut E, &EndpointContext<E::Message>)) {
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut self.endpoint, &self.ctx)));
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
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.endpoint.on_error(error, &self.ctx)
        }));
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
            // is a view of it.
            let body = Bytes::from(body);
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

impl<E: RpcEndpoint> Handler for Typed<E> {
    fn handle(&mut self, msg: InboxMessage) {
        match msg {
            InboxMessage::OnStart => {
                self.ctx.set_sender(None);
                debug!("endpoint {} starts", self.name);
                self.guard(|e, ctx| e.on_start(ctx));
            }
            InboxMessage::OnStop => {
                self.ctx.set_sender(None);
                debug!("endpoint {} stops", self.name);
                self.guard(|e, ctx| e.on_stop(ctx));
            }
            InboxMessage::OneWay { sender, payload } => {
                self.ctx.set_sender(sender);
                let peer = payload.peer();
                match self.decode(payload) {
                    Ok(msg) => self.guard(|e, ctx| e.receive(msg, ctx)),
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
                        self.guard(|e, ctx| e.on_error(err, ctx));
                    }
                }
            }
            InboxMessage::Ask { payload, mut reply } => {
                self.ctx.set_sender(reply.sender_address());
                reply.count_in(&self.stats);
                let peer = payload.peer();
                match self.decode(payload) {
                    Ok(msg) => self.guard(|e, ctx| e.receive_and_reply(msg, reply, ctx)),
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
                            self.guard(|e, ctx| e.on_error(err, ctx));
                        }
                    }
                }
            }
            InboxMessage::Connected(remote) => {
                self.ctx.set_sender(None);
                self.guard(|e, ctx| e.on_connected(&remote, ctx));
            }
            InboxMessage::Disconnected(remote) => {
                self.ctx.set_sender(None);
                self.guard(|e, ctx| e.on_disconnected(&remote, ctx));
            }
            InboxMessage::NetworkError(error, remote) => {
                self.ctx.set_sender(None);
                self.guard(|e, ctx| e.on_network_error(&error, &remote, ctx));
            }
        }
    }
}
