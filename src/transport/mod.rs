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
//! - `send_rpc` and `send` never wait for the network: a frame is written at once if the
//!   socket takes it, otherwise queued for the event loop.
//! - `send_rpc_sync` blocks its caller until the answer or the timeout.
//! - `create_client` blocks while it connects.
//!
//! # Back-pressure
//!
//! None yet: what a peer does not read waits in memory in its connection's write queue,
//! as in Netty. A handler that answers a peer which never reads makes that queue grow.
//!
//! # Failures
//!
//! A frame larger than `rpc.message.maxSize`, a frame of a type this crate does not
//! speak, or garbage closes that one connection (logged at `warn`); its outstanding
//! requests fail at once with [`RpcError::Connection`](crate::RpcError::Connection). The
//! length of a frame is checked before anything is allocated for it, and a frame's buffer
//! grows only as its bytes arrive. A connection with requests outstanding that stays
//! quiet for `rpc.io.connectionTimeout` is closed the same way.

mod client;
mod client_factory;
mod conf;
mod connection;
mod context;
mod event_loop;
mod handler;
mod reader;
mod requests;
mod server;
mod socket;
#[cfg(test)]
mod tests;
mod write_queue;

pub use self::client::TransportClient;
pub use self::client_factory::TransportClientFactory;
pub use self::conf::TransportConf;
pub(crate) use self::connection::{Counters, frame_len, on_event_loop};
pub use self::context::TransportContext;
pub use self::handler::{Responder, RpcHandler};
pub use self::server::TransportServer;
pub(crate) use self::write_queue::{Admission, FRAME_CHARGE, Label, Receipt};
