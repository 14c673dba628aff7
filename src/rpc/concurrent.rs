//! [`ConcurrentRpcEndpoint`]: an endpoint whose messages may run at the same time on the
//! shared dispatcher pool (Spark's plain `RpcEndpoint`, as opposed to its
//! `ThreadSafeRpcEndpoint`), and the handler its inbox calls.

use log::{debug, error, warn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RpcError;
use crate::rpc::address::RpcAddress;
use crate::rpc::call::RpcCallContext;
use crate::rpc::endpoint::{EndpointContext, describe_sender};
use crate::rpc::inbox::{InboxMessage, SharedHandler};
use crate::rpc::message_loop::{Call, Hosted, Reach, run_call};

/// A named service in an [`RpcEnv`](crate::RpcEnv) whose messages may be handled several
/// at a time: Spark's plain `RpcEndpoint` (whose `Inbox` runs with `enableConcurrent`),
/// where rpcenv's [`RpcEndpoint`](crate::RpcEndpoint) is Spark's
/// `ThreadSafeRpcEndpoint`. Registered with
/// [`RpcEnv::setup_concurrent_endpoint`](crate::RpcEnv::setup_concurrent_endpoint); its
/// references, asks, one-way messages, flow control and type checks are those of any
/// endpoint.
///
/// **Which kind to pick.** A concurrent endpoint suits handlers that keep no state, or
/// keep it behind their own locks or atomics, serving independent requests from many
/// callers: a slow request no longer holds up the others. Keep
/// [`RpcEndpoint`](crate::RpcEndpoint) (one message at a time, `&mut self`) when each
/// message changes state, or when messages from one sender must be handled in order.
///
/// **How it runs.** Handlers take `&self` and run on the env's shared `rpc-dispatcher-N`
/// pool (`rpc.dispatcher.numThreads` threads), never on an I/O thread: up to one message
/// per pool thread at once, and at most [`max_concurrent`](Self::max_concurrent) (by
/// default every pool thread). While its handlers block, the pool threads they hold
/// serve no other shared endpoint.
///
/// - [`on_start`](Self::on_start) runs first and alone: no message runs before it
///   returned.
/// - Messages and connection events run in any order, at the same time; nothing is
///   promised about the order of messages, not even from one sender.
/// - [`on_stop`](Self::on_stop) runs last and once, alone, after every message already
///   running or queued has returned. [`RpcEnv::stop`](crate::RpcEnv::stop) returns at
///   once and `on_stop` follows when the running handlers return; env shutdown waits for
///   that, no longer than its five-second deadline (then it leaves the endpoint behind
///   and logs it). From the stop on, new messages fail with
///   [`RpcError::EndpointStopped`] (or [`RpcError::EnvStopped`] once the env shuts down).
/// - A new pool thread joins in only when every thread already on this endpoint is busy
///   in a handler and messages wait (Spark's `Inbox` instead schedules itself once per
///   message), so a lightly loaded endpoint wakes one thread, not several.
/// - A panic in any handler is caught and given to [`on_error`](Self::on_error) (an ask
///   the handler held fails with [`RpcError::Remote`]); the endpoint keeps running.
///
/// Every handler gets its own [`EndpointContext`], whose
/// [`sender_address`](EndpointContext::sender_address) is that of its message.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use rpcenv::{ConcurrentRpcEndpoint, EndpointContext, RpcCallContext};
///
/// /// Squares numbers; counts what it served.
/// #[derive(Default)]
/// struct Squares {
///     served: AtomicU64,
/// }
/// impl ConcurrentRpcEndpoint for Squares {
///     type Message = u64;
///     fn receive_and_reply(&self, n: u64, reply: RpcCallContext, _ctx: &EndpointContext<u64>) {
///         self.served.fetch_add(1, Ordering::Relaxed);
///         reply.reply(n * n)
///     }
/// }
/// let env = rpcenv::RpcEnv::builder("doc").client_mode(true).build()?;
/// let squares = env.setup_concurrent_endpoint("squares", Squares::default())?;
/// assert_eq!(squares.ask_sync::<u64>(7)?, 49);
/// # env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
pub trait ConcurrentRpcEndpoint: Send + Sync + 'static {
    /// The type of the messages and asks it receives.
    type Message: Serialize + DeserializeOwned + Send + 'static;

    /// A one-way message. The default logs it as unexpected.
    fn receive(&self, msg: Self::Message, ctx: &EndpointContext<Self::Message>) {
        let _ = msg;
        warn!(
            "endpoint {} does not handle one-way messages; one from {} was dropped",
            ctx.self_ref().name(),
            describe_sender(ctx.sender_address().as_ref())
        );
    }

    /// An ask: answer it through `reply` (now, or later from any thread). The default
    /// fails it with [`RpcError::Remote`] saying the endpoint does not answer asks.
    fn receive_and_reply(
        &self,
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

    /// Runs first, alone, before any message.
    fn on_start(&self, ctx: &EndpointContext<Self::Message>) {
        let _ = ctx;
    }

    /// Runs once, last and alone, after every running handler returned, when the
    /// endpoint or its env is stopped. Sends to this endpoint fail with
    /// [`RpcError::EndpointStopped`] from the stop on.
    fn on_stop(&self, ctx: &EndpointContext<Self::Message>) {
        let _ = ctx;
    }

    /// A handler panicked ([`RpcError::EndpointPanicked`]) or a message for this endpoint
    /// could not be decoded ([`RpcError::Decode`], [`RpcError::MessageType`]). The default
    /// logs it: a panic at `error`; a message that did not decode only at `debug`, since
    /// the env has already logged it once (rate-limited per peer) at `warn`. A panic in
    /// `on_error` itself is logged and ignored. May run while other handlers run.
    fn on_error(&self, error: RpcError, ctx: &EndpointContext<Self::Message>) {
        match error {
            RpcError::Decode { .. } | RpcError::MessageType { .. } => {
                debug!("endpoint {}: {error:#}", ctx.self_ref().name());
            }
            _ => error!("endpoint {}: {error:#}", ctx.self_ref().name()),
        }
    }

    /// A remote env connected to this one, or this one to it (see
    /// [`RpcEndpoint::on_connected`](crate::RpcEndpoint::on_connected)).
    fn on_connected(&self, remote: &RpcAddress, ctx: &EndpointContext<Self::Message>) {
        let _ = (remote, ctx);
    }

    /// A connection reported by [`on_connected`](Self::on_connected) closed. It may run
    /// at the same time as that `on_connected`.
    fn on_disconnected(&self, remote: &RpcAddress, ctx: &EndpointContext<Self::Message>) {
        let _ = (remote, ctx);
    }

    /// A connection reported by [`on_connected`](Self::on_connected) failed (a bad frame,
    /// an I/O error); [`on_disconnected`](Self::on_disconnected) follows, possibly at
    /// the same time.
    fn on_network_error(
        &self,
        error: &RpcError,
        remote: &RpcAddress,
        ctx: &EndpointContext<Self::Message>,
    ) {
        let _ = (error, remote, ctx);
    }

    /// The most handlers of this endpoint that run at once, asked once, when it is
    /// registered. The default, `usize::MAX`, means one per `rpc-dispatcher-N` thread
    /// (`rpc.dispatcher.numThreads`); a larger value is that too, and 0 counts as 1 (one
    /// at a time, though not in order).
    ///
    /// A handler that waits for the answer of an ask to its own endpoint
    /// (`ctx.self_ref().ask_sync(..)`) needs another handler to be free to answer it: with
    /// `max_concurrent` 1, or with every allowed handler waiting that way, none is, and
    /// the ask fails with [`RpcError::Timeout`] only at its deadline (`rpc.askTimeout`),
    /// as it would for an [`RpcEndpoint`](crate::RpcEndpoint). Send to itself
    /// ([`send`](crate::RpcEndpointRef::send) never waits there) or ask without waiting
    /// instead.
    fn max_concurrent(&self) -> usize {
        usize::MAX
    }
}

/// A concurrent endpoint, borrowed to handle one message, with the context of its calls:
/// the endpoint's own, or (for a message with a sender address) a copy naming the sender.
struct Shared<'a, E: ConcurrentRpcEndpoint> {
    endpoint: &'a E,
    ctx: &'a EndpointContext<E::Message>,
    with_sender: Option<EndpointContext<E::Message>>,
}

impl<E: ConcurrentRpcEndpoint> Reach for Shared<'_, E> {
    type Message = E::Message;

    fn set_sender(&mut self, sender: Option<RpcAddress>) {
        self.with_sender = sender.map(|sender| self.ctx.with_sender(Some(sender)));
    }

    fn call(&mut self, call: Call<E::Message>) {
        let ctx = self.with_sender.as_ref().unwrap_or(self.ctx);
        run_call!(self.endpoint, call, ctx);
    }
}

impl<E: ConcurrentRpcEndpoint> SharedHandler for Hosted<E, E::Message> {
    fn handle(&self, msg: InboxMessage) {
        let shared = Shared {
            endpoint: &self.endpoint,
            ctx: &self.ctx,
            with_sender: None,
        };
        self.runner.handle(shared, msg);
    }
}
