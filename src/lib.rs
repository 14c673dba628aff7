//! rpcenv: a thread-based, synchronous RPC engine with the architecture of Apache Spark's
//! `NettyRpcEnv`, built on `mio` and plain threads instead of Netty and futures.
//!
//! Programs without an async runtime register endpoints by name in an [`RpcEnv`] and talk
//! to endpoints in other envs, on this machine or others, with blocking calls. The bytes
//! on the wire are framed as in Spark's `network-common` transport.
//!
//! ```
//! use rpcenv::{RpcCallContext, RpcEndpoint, RpcEnv};
//!
//! struct Echo;
//! impl RpcEndpoint for Echo {
//!     type Message = String;
//!     fn receive_and_reply(&mut self, msg: String, reply: RpcCallContext) {
//!         reply.reply(format!("echo: {msg}"))
//!     }
//! }
//!
//! let server = RpcEnv::builder("server").bind_address("127.0.0.1").port(0).build()?;
//! server.setup_endpoint("echo", Echo)?;
//! let client = RpcEnv::builder("client").client_mode(true).build()?;
//! let echo = client.setup_endpoint_ref::<String>(&server.address().unwrap(), "echo")?;
//! assert_eq!(echo.ask_sync::<String>("hi".into())?, "echo: hi");
//! # client.shutdown();
//! # server.shutdown();
//! # Ok::<(), rpcenv::RpcError>(())
//! ```
//!
//! # The API at a glance
//!
//! | item | what it is |
//! |---|---|
//! | [`RpcEnv`], [`RpcEnvBuilder`] | an environment: endpoints by name, a listener (or client mode), connections |
//! | [`RpcEndpoint`], [`Threading`] | the trait user code implements; where it runs |
//! | [`EndpointContext`] | given to handlers: own reference, env, sender |
//! | [`RpcEndpointRef`] | a typed, serializable reference: `send`, `ask`, `ask_sync` |
//! | [`Pending`] | an ask under way: `wait`, `try_wait`, `wait_timeout`, `abort` |
//! | [`RpcCallContext`] | the way to answer one ask: `reply`, `send_failure` |
//! | [`RpcAddress`] | `host:port` of a server env |
//! | [`RpcConf`] | string-keyed configuration, checked at `build()` |
//! | [`RpcError`] | every failure |
//! | [`transport`] | the layer below: Spark frames over mio event loops |
//!
//! # Threads: who runs what
//!
//! | thread | count | runs |
//! |---|---|---|
//! | `rpc-boss` | 1 per server env | accepts connections |
//! | `rpc-io-N` | `rpc.io.threads` | reads and writes frames, reads request envelopes; never endpoint code |
//! | `rpc-dispatcher-N` | `rpc.dispatcher.numThreads` | handlers of shared endpoints, one message at a time per endpoint; decodes their messages |
//! | `rpc-endpoint-NAME` | 1 per dedicated endpoint | that endpoint's handlers only |
//! | `rpc-connect-N` | up to `rpc.connect.threads`, idle ones exit after 60 s | blocking connects for outboxes |
//! | `rpc-timeout` | 1 | fails asks at their deadlines |
//!
//! # What blocks
//!
//! - `send`, `ask` and `ask_timeout` never wait for the network: a message to another env
//!   is written to its connection if it is open, or queued while a `rpc-connect-N`
//!   thread connects.
//! - `ask_sync`, `Pending::wait` and `setup_endpoint_ref*` block the caller until the
//!   answer, a failure, or the deadline. Do not call them from a handler for an ask to
//!   the same endpoint (it cannot answer while its handler waits), and avoid long waits on
//!   the shared pool: a blocked `rpc-dispatcher-N` thread serves no other endpoint. Give
//!   an endpoint that blocks [`Threading::Dedicated`].
//! - There is no back-pressure yet: a sender that sends faster than the peer's endpoint
//!   handles makes the connection's write queue (sender side) and the endpoint's inbox
//!   (receiver side) grow without bound, as in Spark. A stream of one-way messages
//!   should be paced by an occasional ask (its reply comes after every message sent
//!   before it).
//! - Serde writes a `Vec<u8>` element by element; for large byte payloads use a type
//!   that serializes as bytes (`serialize_bytes`, e.g. with the `serde_bytes` crate),
//!   which the codec copies in one go.
//! - Replies and messages an endpoint writes while it works through a burst of queued
//!   messages go out together, in one write per connection, when the burst ends (at most
//!   64 messages, and no new message starts more than 50 µs after the first). A handler
//!   that runs long therefore delays the replies of the ones that ran just before it in
//!   the same burst by its own duration.
//! - `shutdown` waits up to five seconds for endpoints to run `on_stop` and for threads
//!   to exit, then leaves busy ones behind and logs them.
//!
//! # Guarantees and failures
//!
//! - Messages from one sender to one endpoint are handled in the order they were sent;
//!   an endpoint handles one message at a time: `on_start` first, `on_stop` last, once.
//! - Every ask ends exactly once: its reply; [`RpcError::Remote`] (the endpoint called
//!   `send_failure`, or panicked); [`RpcError::NoReply`] at once if the endpoint dropped
//!   the call context; [`RpcError::Connection`] naming the peer at once if the connect
//!   fails or the connection closes with the ask outstanding; [`RpcError::EnvStopped`]
//!   at once when this env shuts down (a peer that shuts down closes the connection:
//!   `Connection`, or `EnvStopped` if its endpoints were already gone); or
//!   [`RpcError::Timeout`] at its deadline,
//!   naming the duration and the key (or argument) that set it.
//! - Nothing is retried: an ask is sent once. A message queued while connecting whose
//!   connect fails is failed back (asks) or logged at `warn` (one-way messages); for
//!   500 ms after a failed connect, messages to that peer fail at once with the same
//!   error instead of connecting again, and the next message after that reconnects.
//! - A panic in endpoint code is caught and given to [`RpcEndpoint::on_error`]; the
//!   endpoint and the env keep running.
//! - Local calls (same env) never touch a socket; a message or reply of the type the
//!   other side expects is moved, not serialized.
//! - Bytes from the network are untrusted: a frame is checked against
//!   `rpc.message.maxSize` before anything is allocated for it, and a message or reply
//!   that does not decode is an [`RpcError::Decode`], never a panic.
//! - A reference to an endpoint of a client-mode env is bound, when it is received, to
//!   the connection it came over; forwarded on to a third env it does not work there.
//!
//! # Layers
//!
//! | layer | what it knows |
//! |---|---|
//! | frame (private) | Spark frames ⇄ bytes; an incremental decoder; no I/O |
//! | [`transport`] | sockets, event loops, requests and their answers; no endpoints |
//! | rpc (private, re-exported above) | envs, endpoints, envelopes, timeouts; no sockets |
//! | codec (private) | the one place that calls bincode (serde) |

#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod codec;
mod conf;
mod error;
mod fnv;
mod frame;
mod rpc;
mod sync;
mod threads;
pub mod transport;

pub use crate::conf::RpcConf;
pub use crate::error::RpcError;
pub use crate::rpc::{
    EndpointContext, Pending, Receipt, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef,
    RpcEnv, RpcEnvBuilder, Threading,
};
