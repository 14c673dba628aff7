//! The sans-IO Spark frame codec: [`Message`] values ⇄ the bytes of Spark network-common.
//!
//! Every message is one frame, all integers big-endian (see `frames.md` for captured bytes):
//!
//! ```text
//! frame length: i64 (counts ALL bytes, incl. these 8) | type: u8 | type header | body
//!
//! RpcRequest    (3): request id i64 | body length i32 | body
//! RpcResponse   (4): request id i64 | body length i32 | body
//! RpcFailure    (5): request id i64 | error length i32 | UTF-8 error text
//! OneWayMessage (9):                  body length i32 | body
//! StreamRequest (6): stream id (i32 length + UTF-8)
//! StreamResponse(7): stream id | byte count i64   -- then byte count raw bytes, NOT counted
//! StreamFailure (8): stream id | error (i32 length + UTF-8)
//! ```
//!
//! After a StreamResponse whose byte count is above zero, the decoder hands out the next
//! byte-count bytes raw, in whatever pieces they arrive ([`Item::StreamData`]), as Spark's
//! `StreamInterceptor` does, then goes back to frames.
//!
//! [`FrameHeader`] encodes a header inline so the body can be written without a copy;
//! [`FrameDecoder`] takes any split of the byte stream and yields whole messages, checking
//! each length before believing it. This module does no I/O, spawns no threads and reads
//! no clock; `transport` drives it.

mod body;
mod decode;
mod encode;
mod header;

/// Spark's message type codes.
pub(crate) mod header_type {
    pub(crate) use super::header::MessageType;
}

#[cfg(test)]
mod tests;

pub(crate) use body::Body;
pub(crate) use decode::{FrameDecoder, FrameError, Item};
pub(crate) use encode::FrameHeader;
pub(crate) use header::{Message, stream_failure_body, stream_request_body, stream_response_body};
