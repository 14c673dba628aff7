//! rpcenv: a thread-based, synchronous RPC engine with the architecture of Apache Spark's
//! `NettyRpcEnv`, built on `mio` and plain threads instead of Netty and futures.

#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

mod conf;
mod error;
mod frame;
mod sync;

pub use crate::conf::RpcConf;
pub use crate::error::RpcError;
