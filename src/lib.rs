//! rpcenv: a thread-based, synchronous RPC engine with the architecture of Apache Spark's
//! `NettyRpcEnv`, built on `mio` and plain threads instead of Netty and futures.
//!
//! Programs without an async runtime link it and talk over blocking calls. The bytes on
//! the wire are those of Spark's `network-common` transport, so a Spark peer is a real
//! peer.
//!
//! This version provides the transport: [`transport::TransportContext`] creates servers
//! (one `rpc-boss` thread accepting, `rpc-io-N` event loops serving) and pooled clients,
//! and an [`transport::RpcHandler`] answers requests.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use rpcenv::transport::{Responder, RpcHandler, TransportClient, TransportConf, TransportContext};
//!
//! struct Echo;
//! impl RpcHandler for Echo {
//!     fn receive(&self, _client: &TransportClient, message: Vec<u8>, responder: Responder) {
//!         responder.reply(message)
//!     }
//! }
//!
//! let ctx = TransportContext::new(TransportConf::default(), Arc::new(Echo));
//! let server = ctx.create_server("127.0.0.1", 0)?;
//! let factory = ctx.create_client_factory();
//! let client = factory.create_client("127.0.0.1", server.port())?;
//! assert_eq!(client.send_rpc_sync(b"hello", Duration::from_secs(5))?, b"hello");
//! # Ok::<(), rpcenv::RpcError>(())
//! ```
//!
//! # Layers
//!
//! | layer | what it knows |
//! |---|---|
//! | frame (private) | Spark frames ⇄ bytes; an incremental decoder; no I/O |
//! | [`transport`] | sockets, event loops, requests and their answers; no endpoints |
//!
//! Configuration is [`RpcConf`]: string keys checked when a configuration is built; every
//! failure is an [`RpcError`].

#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod codec;
mod conf;
mod error;
mod frame;
mod rpc;
mod sync;
pub mod transport;

pub use crate::conf::RpcConf;
pub use crate::error::RpcError;
pub use crate::rpc::{
    EndpointContext, Pending, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcEnvBuilder, Threading,
};
