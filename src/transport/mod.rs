//! The transport layer: Spark-compatible frames over TCP, served by `mio` event loops.
//!
//! A [`TransportContext`] holds a [`TransportConf`] and an [`RpcHandler`]; it creates a
//! [`TransportServer`] (an `rpc-boss` thread that accepts connections) and a
//! [`TransportClientFactory`] (pooled, blocking connects). Both hand their connections to
//! the same `rpc-io-N` event loops, which read and decode frames and call the handler.
//! Every connection carries requests both ways: a [`TransportClient`] sends requests and
//! one-way messages, and the handler answers through a [`Responder`].
//!
//! The bytes on the wire are those of Spark's `network-common` (`RpcRequest`,
//! `RpcResponse`, `RpcFailure`, `OneWayMessage`), so a Spark `TransportClient` or
//! `TransportServer` is a real peer.
//!
//! # What blocks, what does not
//!
//! - Handler methods run on the event loops: they must not block.
//! - `send_rpc`, `send` and `try_send` never wait for the network. A frame is written at
//!   once by the calling thread when the connection is idle, otherwise queued for the
//!   connection's event loop, which writes everything queued when it runs (see
//!   [`TransportClient`]). Nothing is held back to be batched.
//! - A connection queues at most `rpc.io.maxQueuedBytes` of frames to write. A sender
//!   that finds the queue full waits for room up to `rpc.io.sendTimeout`, then fails with
//!   [`RpcError::QueueFull`](crate::RpcError::QueueFull); `try_send`, and any send on an
//!   event loop, fails at once instead. Answers given through a [`Responder`] never wait.
//! - `send_rpc_sync` blocks its caller until the answer or the timeout.
//! - `create_client` blocks while it connects.
//!
//! # Back-pressure
//!
//! A peer that does not read the answers it asked for stops being read (TCP then slows it
//! down) once it is owed 64 answers or its unread answers, with those owed at the size its
//! answers had so far, fill `rpc.io.maxQueuedBytes`; it is read again once it catches up. [`TransportClient::set_auto_read`] pauses and resumes reading a
//! connection, as Netty's `autoRead`. The RPC layer above adds per-endpoint windows (see
//! the crate docs) and marks its connections as flow-controlled, so that it never stops
//! reading a peer that keeps to them. Two peers of this transport that pipeline requests
//! to each other whose answers in flight outgrow `rpc.io.maxQueuedBytes` each stop reading
//! the other, and stall until `rpc.io.connectionTimeout` closes the connection: give them
//! a queue that holds those answers, or use the RPC layer, whose windows avoid it.
//!
//! # Failures
//!
//! A frame larger than `rpc.message.maxSize`, a frame of a type this crate does not speak,
//! or garbage closes that one connection (logged at `warn`); its outstanding requests fail
//! at once with [`RpcError::Connection`](crate::RpcError::Connection). The length of a
//! frame is checked before anything is allocated for it, and a frame's buffer grows only as
//! its bytes arrive, unless it is one of the context's pooled buffers (a body of 1 MiB or
//! more reuses the buffer of an earlier large frame, at most 64 MiB of them per context:
//! memory held already, not allocated for the claim). A peer that ends its side of the
//! stream still gets the answers it is owed; the requests sent to it fail at once. A peer
//! that stays silent for `rpc.io.connectionTimeout` while a request without a deadline of
//! its own waits, that reads nothing that long while frames wait, or
//! (`rpc.io.frameTimeout`) that stalls in the middle of a frame or sends nothing after
//! connecting, is closed the same way; so is one that TCP keep-alive or
//! `rpc.io.tcpUserTimeout` finds gone. A server holds at most `rpc.io.maxConnections`
//! inbound connections and closes further ones as it accepts them.
//!
//! # Authentication and encryption
//!
//! A server made with [`TransportContext::create_server_with_bootstrap`] and a factory made
//! with [`TransportContext::create_client_factory_with_bootstrap`] run Spark's
//! `AuthEngine` handshake on every connection before anything else, and then encrypt the
//! connection with AES-GCM or AES-CTR (see [`AuthBootstrap`]). The connecting thread runs
//! the client side; the server's event loop runs the server side on the first frame, and
//! the handler hears nothing of a connection (not even `channel_active`) until its peer
//! authenticated. On an encrypted connection, the thread that writes seals what it writes
//! (outside the write queue's lock) and the event loop decrypts what it reads, before the
//! frame decoder. A failed handshake is [`RpcError::Auth`](crate::RpcError::Auth) naming
//! the peer, on the client, and a `warn` line on the server; neither names the secret
//! or key material.

mod auth;
mod client;
mod client_factory;
mod conf;
mod connection;
mod context;
mod event_loop;
mod handler;
mod read_turn;
mod reader;
mod requests;
mod segment;
mod server;
mod socket;
mod stream;
#[cfg(test)]
mod tests;
mod watch;
mod write_queue;

pub use self::auth::{AuthBootstrap, DEFAULT_AUTH_TIMEOUT, SPARK_RPC_APP_ID};
pub use self::client::TransportClient;
pub use self::client_factory::TransportClientFactory;
pub use self::conf::TransportConf;
pub(crate) use self::connection::{Counters, frame_len, on_event_loop};
pub use self::context::TransportContext;
pub use self::handler::{Responder, RpcHandler};
pub(crate) use self::read_turn::{Awaited, from_peer, lead, may_lead, read_for_answer};
pub use self::server::TransportServer;
pub use self::stream::{StreamBody, StreamCallback, StreamReader};
pub(crate) use self::write_queue::{Admission, FRAME_CHARGE, Label, Receipt};
pub use crate::auth::{Cipher, EngineVersion};
