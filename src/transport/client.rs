//! [`TransportClient`]: requests and one-way messages over one connection.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Waker;

use crate::error::RpcError;
use crate::frame::Body;
use crate::sync::{Arc, Condvar, Mutex};
use crate::transport::connection::Conn;
use crate::transport::read_turn::{Awaited, from_peer, read_for_answer};
use crate::transport::requests::Callback;
use crate::transport::stream::{CallbackSink, StreamCallback, StreamReader};
use crate::transport::write_queue::{Admission, Label, Receipt};

/// One connection, seen from the side that sends on it.
///
/// A handle: clones share the connection. Every connection is bidirectional, so the
/// client an [`RpcHandler`](super::RpcHandler) is given for an inbound connection can send
/// requests back to the peer that opened it. Request ids are sequential per connection.
/// When the connection closes, every outstanding request fails at once with
/// [`RpcError::Connection`] naming the peer.
///
/// Sends never wait for the network, only for room: a connection queues at most
/// `rpc.io.maxQueuedBytes` of frames to write; a send that finds it full waits up to
/// `rpc.io.sendTimeout` for the peer to read, then fails with [`RpcError::QueueFull`]
/// naming the peer, the bytes queued and the limit. On an `rpc-io-N` thread (inside an
/// [`RpcHandler`](super::RpcHandler) method) a full queue fails at once instead: an event
/// loop never waits. Answers given through a [`Responder`](super::Responder) never wait.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use rpcenv::transport::{Responder, RpcHandler, TransportClient, TransportConf, TransportContext};
///
/// struct Echo;
/// impl RpcHandler for Echo {
///     fn receive(&self, _: &TransportClient, message: Vec<u8>, responder: Responder) {
///         responder.reply(message)
///     }
/// }
/// let ctx = TransportContext::new(TransportConf::default(), Arc::new(Echo));
/// let server = ctx.create_server("127.0.0.1", 0)?;
/// let factory = ctx.create_client_factory();
/// let client = factory.create_client("127.0.0.1", server.port())?;
/// assert_eq!(client.send_rpc_sync(b"hello", Duration::from_secs(5))?, b"hello");
/// client.send(b"one-way")?;
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[derive(Clone)]
pub struct TransportClient {
    conn: Arc<Conn>,
}

impl TransportClient {
    pub(crate) fn new(conn: Arc<Conn>) -> Self {
        Self { conn }
    }

    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    /// Sends a request. `callback` receives the response body, or the failure, exactly
    /// once: on the thread that reads the answer when it arrives (an `rpc-io-N` thread,
    /// or a thread blocked in [`send_rpc_sync`](Self::send_rpc_sync) or an ask on the same
    /// connection, which reads it for the loop: either way it must not block), or on this
    /// thread if the request cannot be sent at all (frame too large, connection closed). Returns the request id, for [`remove_rpc_request`](Self::remove_rpc_request).
    ///
    /// A request sent this way has no deadline of its own: if the peer stays silent for
    /// `rpc.io.connectionTimeout` while it waits, the connection is closed and the request
    /// fails with [`RpcError::Connection`].
    pub fn send_rpc(
        &self,
        body: impl Into<Vec<u8>>,
        callback: impl FnOnce(Result<Vec<u8>, RpcError>) + Send + 'static,
    ) -> u64 {
        let admission = self.conn.admission(None);
        self.conn.send_rpc(
            Body::from(body.into()),
            Box::new(callback),
            None,
            None,
            admission,
        )
    }

    /// Sends a request on the rpc layer's behalf: with its own `deadline` (which the
    /// silent-peer rule leaves alone), a flow-control `label`, and `admission`.
    pub(crate) fn send_rpc_with(
        &self,
        body: Body,
        callback: Callback,
        deadline: Option<Instant>,
        label: Option<Label>,
        admission: Admission,
    ) -> u64 {
        self.conn
            .send_rpc(body, callback, deadline, label, admission)
    }

    /// Sends a request and waits up to `timeout` for its answer. When it is the
    /// connection's only outstanding request, the calling thread reads the connection
    /// itself meanwhile (one thread hand-off less than being woken by the event loop),
    /// handing every other frame to the [`RpcHandler`](super::RpcHandler) as the loop
    /// would. A failure the peer sends
    /// is [`RpcError::Remote`]; the connection closing while waiting is
    /// [`RpcError::Connection`], at once; the timeout running out is [`RpcError::Timeout`]
    /// and forgets the request, so a late answer is dropped.
    ///
    /// From an [`RpcHandler`](super::RpcHandler) method or a [`send_rpc`](Self::send_rpc)
    /// callback on the connection it came from, the answer cannot come: the thread that
    /// would read it is this one. Such a call fails at its `timeout`, and holds up the
    /// connection's event loop until then (see [`RpcHandler`](super::RpcHandler)).
    pub fn send_rpc_sync(
        &self,
        body: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        // Blocks on a condition variable, without spinning: on a small machine the
        // event loops need the CPU that spinning would burn.
        let answer = Arc::new(Answer::default());
        let slot = Arc::clone(&answer);
        let deadline = Instant::now().checked_add(timeout);
        let id = self.conn.send_rpc(
            Body::from(body.into()),
            Box::new(move |result| slot.set(result)),
            deadline,
            None,
            self.conn.admission(deadline),
        );
        // The answer to the connection's only request is read on this thread when it
        // may be (see `read_turn`); else, or if it is not in yet, it is waited for.
        read_for_answer(self, &*answer, deadline);
        if let Some(result) = answer.wait_until(deadline) {
            return result;
        }
        if self.remove_rpc_request(id) {
            return Err(RpcError::Timeout {
                what: format!("request {id} to {}", self.conn.peer()),
                after: timeout,
                key: "the timeout given to send_rpc_sync",
            });
        }
        // The answer raced the deadline: its callback has run or is running.
        answer
            .wait_until(None)
            .unwrap_or_else(|| Err(self.conn.closed_error()))
    }

    /// Sends a one-way message. `Ok` means it was queued on an open connection (or
    /// written); it fails at once if the connection is closed or the frame is larger than
    /// `rpc.message.maxSize`, and with [`RpcError::QueueFull`] if there is no room within
    /// `rpc.io.sendTimeout`.
    pub fn send(&self, body: impl Into<Vec<u8>>) -> Result<(), RpcError> {
        let admission = self.conn.admission(None);
        self.conn
            .send_one_way(Body::from(body.into()), None, admission, None)
    }

    /// [`send`](Self::send) that never waits: with no room in the write queue it fails at
    /// once with [`RpcError::QueueFull`].
    pub fn try_send(&self, body: impl Into<Vec<u8>>) -> Result<(), RpcError> {
        self.conn
            .send_one_way(Body::from(body.into()), None, Admission::Try, None)
    }

    /// Sends a one-way message on the rpc layer's behalf, with a flow-control `label`,
    /// `admission`, and a `receipt` told once it is written or lost.
    pub(crate) fn send_one_way_with(
        &self,
        body: Body,
        label: Option<Label>,
        admission: Admission,
        receipt: Option<Receipt>,
    ) -> Result<(), RpcError> {
        self.conn.send_one_way(body, label, admission, receipt)
    }

    /// Sends a control frame (never waits, never counted as a lost message).
    pub(crate) fn send_control(&self, body: Vec<u8>) -> Result<(), RpcError> {
        self.conn.send_control(body)
    }

    /// Asks the peer for stream `stream_id` (Spark's `TransportClient.stream`): `callback`
    /// gets its bytes as they arrive and then `on_complete`, or `on_failure` (the peer's
    /// `StreamFailure` as [`RpcError::Remote`], or [`RpcError::Connection`] if the
    /// connection closes first), on an `rpc-io-N` thread; see [`StreamCallback`]. A request
    /// that cannot be sent at all fails on this thread. Streams are answered in the order
    /// they were asked for. Waits for room in the write queue like [`send`](Self::send).
    pub fn stream(&self, stream_id: &str, callback: impl StreamCallback) {
        let sink = Box::new(CallbackSink {
            stream_id: stream_id.to_owned(),
            callback,
        });
        let admission = self.conn.admission(None);
        if let Err((err, Some(mut sink))) = self.conn.stream(stream_id.to_owned(), sink, admission)
        {
            crate::transport::connection::guard(self.conn.peer(), "a stream callback", || {
                crate::transport::stream::Sink::fail(&mut *sink, err)
            });
        }
    }

    /// Asks the peer for stream `stream_id` and returns a blocking [`StreamReader`] of its
    /// bytes, which holds at most `rpc.io.maxQueuedBytes` of them (the connection is not
    /// read beyond that until the reader catches up). Fails at once if the request cannot
    /// be sent (connection closed, no room within `rpc.io.sendTimeout`); a stream the peer
    /// fails, or that the connection cuts short, fails the reader's `read`.
    pub fn stream_reader(&self, stream_id: &str) -> Result<StreamReader, RpcError> {
        let (reader, sink) = StreamReader::new(
            Arc::clone(&self.conn),
            stream_id.to_owned(),
            self.conn.writes().limit(),
            self.conn.connection_timeout(),
        );
        let admission = self.conn.admission(None);
        match self
            .conn
            .stream(stream_id.to_owned(), Box::new(sink), admission)
        {
            Ok(()) => Ok(reader),
            Err((err, _)) => Err(err),
        }
    }

    /// Pauses (`false`) or resumes (`true`) reading from the connection, as Netty's
    /// `Channel.config().setAutoRead`. While paused, the peer's frames wait in the socket
    /// and TCP slows the peer down; nothing is lost. Answers to this side's requests wait
    /// too, so do not pause a connection on whose answers the code that resumes it waits.
    pub fn set_auto_read(&self, read: bool) {
        self.conn.set_auto_read(read);
    }

    /// Adds window for `label` (the peer granted it).
    pub(crate) fn grant(&self, label: &str, bytes: usize) {
        self.conn.grant(label, bytes);
    }

    /// The peer speaks flow control with windows of `window` bytes per label.
    pub(crate) fn set_flow_controlled(&self, window: usize) {
        self.conn.set_flow_controlled(window);
    }

    /// The state an upper layer keeps for this connection, made by `make` on first use;
    /// `None` if it was made as another type.
    pub(crate) fn attachment<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> Option<&T> {
        self.conn.attachment(make)
    }

    /// Bytes of frames queued to be written on this connection.
    pub fn queued_bytes(&self) -> usize {
        let (ready, held) = self.conn.writes().queued();
        ready + held
    }

    /// Forgets an outstanding request (it timed out, or the caller gave up); its answer,
    /// if it comes, is logged and dropped. Returns whether it was still outstanding. Its
    /// callback is dropped without being called.
    pub fn remove_rpc_request(&self, request_id: u64) -> bool {
        self.conn.take_request(request_id).is_some()
    }

    /// How many requests wait for an answer.
    pub fn outstanding_requests(&self) -> usize {
        self.conn.requests().len()
    }

    /// Whether the connection takes new requests and messages: open, and the peer has not
    /// ended its side.
    pub fn is_active(&self) -> bool {
        self.conn.is_active()
    }

    /// Closes the connection; outstanding requests fail at once with
    /// [`RpcError::Connection`]. Idempotent.
    pub fn close(&self) {
        self.conn.close("closed by this side");
    }

    /// The address of the peer.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.peer()
    }

    /// A number that identifies the connection within this process.
    pub fn id(&self) -> u64 {
        self.conn.id()
    }
}

impl PartialEq for TransportClient {
    fn eq(&self, other: &Self) -> bool {
        self.conn.id() == other.conn.id()
    }
}

impl Eq for TransportClient {}

impl Hash for TransportClient {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.conn.id().hash(state);
    }
}

impl fmt::Debug for TransportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportClient")
            .field("id", &self.conn.id())
            .field("peer", &self.conn.peer())
            .field("active", &self.conn.is_open())
            .finish()
    }
}

/// Where the callback of a `send_rpc_sync` leaves the answer for the waiting caller.
#[derive(Default)]
struct Answer {
    state: Mutex<AnswerState>,
    ready: Condvar,
}

#[derive(Default)]
struct AnswerState {
    result: Option<Result<Vec<u8>, RpcError>>,
    /// The poller of a thread that reads the connection for this answer.
    waker: Option<Arc<Waker>>,
}

impl Answer {
    fn set(&self, result: Result<Vec<u8>, RpcError>) {
        let mut state = self.state.lock();
        state.result = Some(result);
        let waker = state.waker.take();
        drop(state);
        self.ready.notify_one();
        if let Some(waker) = waker {
            let _ = waker.wake();
        }
    }

    /// The answer, or `None` once `deadline` passed (`None`: no deadline).
    fn wait_until(&self, deadline: Option<Instant>) -> Option<Result<Vec<u8>, RpcError>> {
        let mut state = self.state.lock();
        loop {
            if let Some(answer) = state.result.take() {
                return Some(answer);
            }
            let wait = match deadline {
                Some(deadline) => deadline.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600),
            };
            if wait.is_zero() {
                return None;
            }
            state = self.ready.wait_timeout(state, wait);
        }
    }
}

impl Awaited for Answer {
    fn is_done(&self) -> bool {
        self.state.lock().result.is_some()
    }

    fn answered(&self) -> bool {
        self.state.lock().result.as_ref().is_some_and(from_peer)
    }

    fn arm(&self, waker: Option<&Arc<Waker>>) -> bool {
        let mut state = self.state.lock();
        if state.result.is_some() {
            state.waker = None;
            return false;
        }
        state.waker = waker.cloned();
        true
    }
}
