//! [`RpcEndpoint`], the trait user code implements, and [`EndpointContext`], what it is
//! given while it runs.

use std::fmt;

use log::{debug, error, warn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RpcError;
use crate::rpc::address::RpcAddress;
use crate::rpc::call::RpcCallContext;
use crate::rpc::endpoint_ref::RpcEndpointRef;
use crate::rpc::env::RpcEnv;

/// Which threads run an endpoint's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threading {
    /// The env's shared `rpc-dispatcher-N` pool (`rpc.dispatcher.numThreads` threads),
    /// which serves every shared endpoint in turn.
    #[default]
    Shared,
    /// A thread of its own, `rpc-endpoint-NAME`: an endpoint that blocks or runs long
    /// cannot hold up the others, and they cannot delay it.
    Dedicated,
}

/// A named service in an [`RpcEnv`]: it receives messages of one type, one at a time.
///
/// Lifecycle: [`on_start`](Self::on_start) runs before any message, then messages and
/// connection events in order, then [`on_stop`](Self::on_stop) once, after the last
/// message. All of them run on one thread at a time (`&mut self`), on the shared
/// dispatcher pool or on a dedicated thread (see [`threading`](Self::threading)), never on
/// an I/O thread. A panic in any of them is caught and given to
/// [`on_error`](Self::on_error); the endpoint keeps running.
///
/// Messages sent with [`RpcEndpointRef::send`] reach [`receive`](Self::receive); asks reach
/// [`receive_and_reply`](Self::receive_and_reply) with the [`RpcCallContext`] to answer
/// them. Every handler has one signature style: what happened first, then the
/// [`EndpointContext`] last, which gives the endpoint's own reference, its env and the
/// sender of the message being handled. (Spark's `RpcEndpoint` keeps `self` and
/// `rpcEnv` as fields and passes an `RpcCallContext` to `receiveAndReply`; here both
/// come with every call.)
///
/// An ask's reply type is the asker's choice (`ask_sync::<R>`); reply with exactly that
/// type (by name, see the crate docs, "Checked types"), or the asker gets an error naming
/// both types.
///
/// Handlers should not block for long on the shared pool: while every
/// `rpc-dispatcher-N` thread is blocked, every shared endpoint waits. Use
/// [`Threading::Dedicated`] for an endpoint that blocks, and never wait in a handler for
/// an ask to the same endpoint.
///
/// ```
/// use rpcenv::{EndpointContext, RpcCallContext, RpcEndpoint};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum Msg {
///     Add(u64),
///     Get,
/// }
/// #[derive(Default)]
/// struct Counter {
///     total: u64,
/// }
/// impl RpcEndpoint for Counter {
///     type Message = Msg;
///     fn receive(&mut self, msg: Msg, _ctx: &EndpointContext<Msg>) {
///         if let Msg::Add(n) = msg {
///             self.total += n
///         }
///     }
///     fn receive_and_reply(&mut self, msg: Msg, reply: RpcCallContext, _ctx: &EndpointContext<Msg>) {
///         match msg {
///             Msg::Get => reply.reply(self.total),
///             Msg::Add(_) => reply.send_failure("Add is a one-way message"),
///         }
///     }
/// }
/// let env = rpcenv::RpcEnv::builder("doc").client_mode(true).build()?;
/// let counter = env.setup_endpoint("counter", Counter::default())?;
/// counter.send(Msg::Add(2))?;
/// counter.send(Msg::Add(3))?;
/// // Messages from one sender arrive in order: the ask comes after both adds.
/// assert_eq!(counter.ask_sync::<u64>(Msg::Get)?, 5);
/// # env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
pub trait RpcEndpoint: Send + 'static {
    /// The type of the messages and asks it receives.
    type Message: Serialize + DeserializeOwned + Send + 'static;

    /// A one-way message. The default logs it as unexpected.
    fn receive(&mut self, msg: Self::Message, ctx: &EndpointContext<Self::Message>) {
        let _ = msg;
        warn!(
            "endpoint {} does not handle one-way messages; one from {} was dropped",
            ctx.self_ref().name(),
            describe_sender(ctx.sender_address().as_ref())
        );
    }

    /// An ask: answer it through `reply` (now, or later from any thread); `ctx` gives
    /// this endpoint's own reference, its env and the asker's address. The default fails
    /// it with [`RpcError::Remote`] saying the endpoint does not answer asks.
    fn receive_and_reply(
        &mut self,
        msg: Self::Message,
        reply: RpcCallContext,
        ctx: &EndpointContext<Self::Message>,
    ) {
        let _ = (msg, ctx);
        let text = format!(
            "endpoint {} does not answer asks (it does not implement receive_and_reply)",
            reply.endpoint()
        );
        reply.send_failure(text);
    }

    /// Runs before any message.
    fn on_start(&mut self, ctx: &EndpointContext<Self::Message>) {
        let _ = ctx;
    }

    /// Runs once, after the last message, when the endpoint or its env is stopped. Sends
    /// to this endpoint fail with [`RpcError::EndpointStopped`] from now on.
    fn on_stop(&mut self, ctx: &EndpointContext<Self::Message>) {
        let _ = ctx;
    }

    /// A handler panicked ([`RpcError::EndpointPanicked`]) or a message for this endpoint
    /// could not be decoded ([`RpcError::Decode`], [`RpcError::MessageType`]). The
    /// default logs a panic as an error; a message that could not be decoded was logged
    /// already (once, as a warning limited per peer) by the env, so the default logs it
    /// at debug level only. A panic in `on_error` itself is logged and ignored.
    fn on_error(&mut self, error: RpcError, ctx: &EndpointContext<Self::Message>) {
        match error {
            RpcError::Decode { .. } | RpcError::MessageType { .. } => {
                debug!("endpoint {}: {error:#}", ctx.self_ref().name());
            }
            _ => error!("endpoint {}: {error:#}", ctx.self_ref().name()),
        }
    }

    /// A remote env connected to this one, or this one to it. `remote` is its listen
    /// address when known (a server env), else its socket address (a client-mode env).
    fn on_connected(&mut self, remote: &RpcAddress, ctx: &EndpointContext<Self::Message>) {
        let _ = (remote, ctx);
    }

    /// A connection reported by [`on_connected`](Self::on_connected) closed.
    fn on_disconnected(&mut self, remote: &RpcAddress, ctx: &EndpointContext<Self::Message>) {
        let _ = (remote, ctx);
    }

    /// A connection reported by [`on_connected`](Self::on_connected) failed (a bad frame,
    /// an I/O error); [`on_disconnected`](Self::on_disconnected) follows.
    fn on_network_error(
        &mut self,
        error: &RpcError,
        remote: &RpcAddress,
        ctx: &EndpointContext<Self::Message>,
    ) {
        let _ = (error, remote, ctx);
    }

    /// Where its code runs; asked once, when it is registered.
    fn threading(&self) -> Threading {
        Threading::Shared
    }
}

pub(crate) fn describe_sender(sender: Option<&RpcAddress>) -> String {
    match sender {
        Some(address) => address.to_string(),
        None => "a client-mode env".to_owned(),
    }
}

/// What an endpoint's handlers are given: its own reference, its env, and the sender of
/// the message being handled.
pub struct EndpointContext<M> {
    self_ref: RpcEndpointRef<M>,
    env: RpcEnv,
    sender: Option<RpcAddress>,
}

impl<M> EndpointContext<M> {
    pub(crate) fn new(self_ref: RpcEndpointRef<M>, env: RpcEnv) -> Self {
        Self {
            self_ref,
            env,
            sender: None,
        }
    }

    pub(crate) fn set_sender(&mut self, sender: Option<RpcAddress>) {
        self.sender = sender;
    }

    /// A copy of this context naming `sender`.
    pub(crate) fn with_sender(&self, sender: Option<RpcAddress>) -> Self {
        Self {
            self_ref: self.self_ref.clone(),
            env: self.env.clone(),
            sender,
        }
    }

    /// A reference to this endpoint (valid from `on_start` on; after `on_stop` its calls
    /// fail with [`RpcError::EndpointStopped`]).
    pub fn self_ref(&self) -> RpcEndpointRef<M> {
        self.self_ref.clone()
    }

    /// The env this endpoint lives in. This handle does not keep the env running: the
    /// env shuts down when the last handle its owner holds is dropped.
    pub fn env(&self) -> &RpcEnv {
        &self.env
    }

    /// The listen address of the env that sent the message being handled; `None` for a
    /// client-mode sender, and outside message handlers.
    pub fn sender_address(&self) -> Option<RpcAddress> {
        self.sender.clone()
    }
}

impl<M> fmt::Debug for EndpointContext<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointContext")
            .field("self_ref", &self.self_ref)
            .field("sender", &self.sender)
            .finish()
    }
}
