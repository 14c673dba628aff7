//! The RPC layer: envs, endpoints and their references, on top of the transport.
//!
//! | file | concept |
//! |---|---|
//! | `env.rs` | [`RpcEnv`] and its builder; shutdown |
//! | `address.rs` | [`RpcAddress`], endpoint URIs |
//! | `endpoint.rs` | [`RpcEndpoint`], [`EndpointContext`], [`Threading`] |
//! | `concurrent.rs` | [`ConcurrentRpcEndpoint`]: handlers that run several at a time |
//! | `endpoint_ref.rs` | [`RpcEndpointRef`], its serde form |
//! | `call.rs` | [`Pending`], [`RpcCallContext`], the shared call slot |
//! | `envelope.rs` | the request and reply envelopes on the wire |
//! | `dispatcher.rs` | the name → endpoint registry and routing |
//! | `inbox.rs` | one endpoint's queue and lifecycle |
//! | `message_loop.rs` | the threads that run endpoint code |
//! | `outbox.rs` | the queue to one remote env while it connects |
//! | `file_server.rs` | [`FileServer`]: files, jars and directories served as streams; download URIs |
//! | `flow.rs` | flow control between envs: per-endpoint windows |
//! | `receipt.rs` | [`Receipt`]: the outcome of one one-way message |
//! | `handler.rs` | the transport handler: envelopes in, connection events |
//! | `verifier.rs` | the `endpoint-verifier` endpoint |
//! | `timeout.rs` | ask deadlines and the `rpc-timeout` thread |
//! | `types.rs` | wire names and fingerprints of message and reply types |

mod address;
mod call;
mod concurrent;
mod dispatcher;
mod endpoint;
mod endpoint_ref;
mod env;
mod envelope;
mod file_server;
mod flow;
mod handler;
mod inbox;
mod message_loop;
mod outbox;
mod receipt;
mod timeout;
mod types;
mod verifier;

pub use self::address::RpcAddress;
pub use self::call::{Pending, RpcCallContext};
pub use self::concurrent::ConcurrentRpcEndpoint;
pub use self::endpoint::{EndpointContext, RpcEndpoint, Threading};
pub use self::endpoint_ref::RpcEndpointRef;
pub use self::env::{RpcEnv, RpcEnvBuilder};
pub use self::file_server::FileServer;
pub use self::receipt::Receipt;
