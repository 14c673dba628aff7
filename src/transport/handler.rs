//! [`RpcHandler`], the server side of every connection, and [`Responder`], its way to answer.

use std::fmt;

use crate::buffer_pool::BufferPool;
use crate::error::RpcError;
use crate::frame::Body;
use crate::sync::Arc;
use crate::transport::connection::Conn;
use crate::transport::{StreamBody, TransportClient};

/// What a connection does with the requests and one-way messages it receives.
///
/// One handler serves every connection of a [`TransportContext`](super::TransportContext),
/// inbound and outbound alike: every connection is bidirectional. Its methods run on the
/// thread that reads the connection: its `rpc-io-N` event loop, or a thread blocked on the
/// answer to the connection's only outstanding request, which reads it meanwhile (see
/// [`TransportClient::send_rpc_sync`]). They must not block: hand slow work to another
/// thread and answer through the [`Responder`], which is `Send`. A panic inside a method is caught
/// and logged, and the connection keeps running.
///
/// A method that waits anyway for an answer over the connection it was handed (a
/// `send_rpc_sync` on the `client` it got) waits for nothing: the thread that would read
/// that answer is the one waiting. The call fails at its own timeout with
/// [`RpcError::Timeout`] (never later, but with no deadline it
/// waits for ever), and until then the connection's event loop, with every connection it
/// serves, waits too.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use rpcenv::transport::{Responder, RpcHandler, TransportClient, TransportConf, TransportContext};
///
/// /// Answers requests with their own bytes; counts one-way messages.
/// #[derive(Default)]
/// struct Echo {
///     one_way: AtomicU64,
/// }
/// impl RpcHandler for Echo {
///     fn receive(&self, _client: &TransportClient, message: Vec<u8>, responder: Responder) {
///         responder.reply(message)
///     }
///     fn receive_one_way(&self, _client: &TransportClient, _message: Vec<u8>) {
///         self.one_way.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// let ctx = TransportContext::new(TransportConf::default(), Arc::new(Echo::default()));
/// # let _ = ctx;
/// ```
pub trait RpcHandler: Send + Sync + 'static {
    /// A request arrived. Answer it through `responder` (now or later, from any thread);
    /// dropping the responder unanswered sends the caller a failure at once.
    fn receive(&self, client: &TransportClient, message: Vec<u8>, responder: Responder);

    /// A one-way message arrived. By default it goes to [`receive`](Self::receive) with a
    /// responder whose answer is discarded.
    fn receive_one_way(&self, client: &TransportClient, message: Vec<u8>) {
        self.receive(client, message, Responder::discard());
    }

    /// The peer asked for stream `stream_id` (a `StreamRequest`; Spark's
    /// `getStreamManager().openStream(streamId)`). `Ok(Some(body))` sends it (a file with
    /// zero-copy `sendfile` where it can be); `Ok(None)` answers Spark's
    /// `StreamFailure("Stream '<id>' was not found.")`; `Err(text)` answers a
    /// `StreamFailure` with that text. Runs on the event loop: open the file and return,
    /// never read it here. By default every stream is not found.
    ///
    /// `stream_id` comes from the network: treat it as hostile (see
    /// [`RpcEnv::file_server`](crate::RpcEnv::file_server) for a server that does).
    fn open_stream(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<Option<StreamBody>, String> {
        let _ = (client, stream_id);
        Ok(None)
    }

    /// A connection, inbound or outbound, is ready to carry messages.
    fn channel_active(&self, client: &TransportClient) {
        let _ = client;
    }

    /// A connection closed; `client` is no longer active.
    fn channel_inactive(&self, client: &TransportClient) {
        let _ = client;
    }

    /// A connection is about to close because of `error` (a bad frame, an I/O error).
    /// [`channel_inactive`](Self::channel_inactive) follows.
    fn exception_caught(&self, error: &RpcError, client: &TransportClient) {
        let _ = (error, client);
    }
}

/// The answer to one request: [`reply`](Self::reply) or [`fail`](Self::fail), once.
///
/// Dropping a `Responder` without answering fails the request at once, so a caller never
/// waits for its timeout because a handler forgot it.
#[must_use = "a dropped Responder fails the request"]
pub struct Responder {
    target: Option<(Arc<Conn>, u64)>,
}

impl Responder {
    /// The responder to request `request_id` of `conn`, which owes the answer from now on.
    pub(crate) fn new(conn: Arc<Conn>, request_id: u64) -> Self {
        conn.owe_answer();
        Self {
            target: Some((conn, request_id)),
        }
    }

    /// A responder whose answer goes nowhere (the default one-way path).
    pub(crate) fn discard() -> Self {
        Self { target: None }
    }

    /// Sends `body` back as the response.
    pub fn reply(mut self, body: impl Into<Vec<u8>>) {
        if let Some((conn, id)) = self.target.take() {
            conn.respond(id, Ok(Body::from(body.into())));
        }
    }

    /// Sends `body` back as the response: a body with spliced pieces (see `Body`) goes
    /// out without them being copied.
    pub(crate) fn reply_body(mut self, body: Body) {
        if let Some((conn, id)) = self.target.take() {
            conn.respond(id, Ok(body));
        }
    }

    /// The pool of large buffers of the connection's context, to encode a large answer
    /// into; `None` for a one-way message.
    pub(crate) fn buffers(&self) -> Option<&BufferPool> {
        self.target
            .as_ref()
            .map(|(conn, _)| &*conn.env_counters().buffers)
    }

    /// Sends a failure whose text the caller receives as [`RpcError::Remote`].
    pub fn fail(mut self, error: impl Into<String>) {
        if let Some((conn, id)) = self.target.take() {
            conn.respond(id, Err(error.into()));
        }
    }

    /// The request id this responder answers, `None` for a one-way message.
    pub fn request_id(&self) -> Option<u64> {
        self.target.as_ref().map(|(_, id)| *id)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some((conn, id)) = self.target.take() {
            let text = if std::thread::panicking() {
                "the handler panicked while handling the request"
            } else {
                "the handler dropped the request without replying"
            };
            conn.respond(id, Err(text.into()));
        }
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some((conn, id)) => f
                .debug_struct("Responder")
                .field("peer", &conn.peer())
                .field("request_id", id)
                .finish(),
            None => f.write_str("Responder(one-way)"),
        }
    }
}
