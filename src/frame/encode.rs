//! Messages → bytes: a small inline [`FrameHeader`] for the body that follows it.
//!
//! The body is never copied: the transport writes the header and the body `Vec` one after
//! the other in one vectored write.

use super::header::{
    LENGTH_FIELD_LEN, MAX_HEADER_LEN, MIN_FRAME_LEN, MessageType, ONE_WAY_HEADER_LEN,
    RPC_HEADER_LEN,
};

/// The header of one frame (length, type, type header), at most 21 bytes, kept inline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameHeader {
    /// The header bytes; only the first `len` are used.
    bytes: [u8; MAX_HEADER_LEN],
    /// How many of `bytes` make up the header (9, 13 or 21).
    len: u8,
}

impl FrameHeader {
    /// The header of an RpcRequest whose body is `body_len` bytes long.
    pub(crate) fn rpc_request(request_id: u64, body_len: usize) -> Self {
        Self::new(MessageType::RpcRequest, Some(request_id), body_len)
    }

    /// The header of an RpcResponse whose body is `body_len` bytes long.
    pub(crate) fn rpc_response(request_id: u64, body_len: usize) -> Self {
        Self::new(MessageType::RpcResponse, Some(request_id), body_len)
    }

    /// The header of an RpcFailure whose UTF-8 error text is `error_len` bytes long.
    pub(crate) fn rpc_failure(request_id: u64, error_len: usize) -> Self {
        Self::new(MessageType::RpcFailure, Some(request_id), error_len)
    }

    /// The header of a OneWayMessage whose body is `body_len` bytes long.
    pub(crate) fn one_way(body_len: usize) -> Self {
        Self::new(MessageType::OneWayMessage, None, body_len)
    }

    /// The header of a StreamRequest, StreamResponse or StreamFailure whose fields (see
    /// `stream_*_body`) take `body_len` bytes: only the frame length and the type byte. A
    /// StreamResponse's stream bytes follow the frame and are not counted here.
    pub(crate) fn stream(message_type: MessageType, body_len: usize) -> Self {
        debug_assert!(matches!(
            message_type,
            MessageType::StreamRequest | MessageType::StreamResponse | MessageType::StreamFailure
        ));
        let frame_len = MIN_FRAME_LEN as u64 + body_len as u64;
        let mut bytes = [0; MAX_HEADER_LEN];
        bytes[..LENGTH_FIELD_LEN].copy_from_slice(&frame_len.to_be_bytes());
        bytes[LENGTH_FIELD_LEN] = message_type as u8;
        Self {
            bytes,
            len: MIN_FRAME_LEN as u8,
        }
    }

    /// No header at all: raw bytes that follow another frame (a stream's body).
    pub(crate) fn empty() -> Self {
        Self {
            bytes: [0; MAX_HEADER_LEN],
            len: 0,
        }
    }

    /// Lays out `length | type | [request id] | body length`, all big-endian.
    ///
    /// Callers check sizes against `rpc.message.maxSize` (always below 2^31) first, so the
    /// body length fits Spark's `i32` field.
    fn new(message_type: MessageType, request_id: Option<u64>, body_len: usize) -> Self {
        debug_assert!(
            i32::try_from(body_len).is_ok(),
            "a body of {body_len} bytes does not fit a Spark frame"
        );
        let header_len = if request_id.is_some() {
            RPC_HEADER_LEN
        } else {
            ONE_WAY_HEADER_LEN
        };
        let frame_len = header_len as u64 + body_len as u64;
        let mut bytes = [0; MAX_HEADER_LEN];
        bytes[..LENGTH_FIELD_LEN].copy_from_slice(&frame_len.to_be_bytes());
        bytes[LENGTH_FIELD_LEN] = message_type as u8;
        let mut at = MIN_FRAME_LEN;
        if let Some(id) = request_id {
            // u64 and i64 share their big-endian bytes: the id is cast bit for bit.
            bytes[at..at + 8].copy_from_slice(&id.to_be_bytes());
            at += 8;
        }
        bytes[at..at + 4].copy_from_slice(&(body_len as i32).to_be_bytes());
        debug_assert_eq!(at + 4, header_len);
        Self {
            bytes,
            len: header_len as u8,
        }
    }

    /// The header's bytes, to be written before the body.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The header bytes, for a channel cipher that encrypts them in place.
    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..usize::from(self.len)]
    }

    /// Total frame length (header + body) this header announces.
    pub(crate) fn frame_len(&self) -> u64 {
        let mut length = [0; LENGTH_FIELD_LEN];
        length.copy_from_slice(&self.bytes[..LENGTH_FIELD_LEN]);
        u64::from_be_bytes(length)
    }
}

/// Whole-message encoding, for tests: the transport writes a [`FrameHeader`] and the
/// body itself, without joining them.
#[cfg(test)]
impl super::header::Message {
    /// Splits a message into its header and the bytes that follow it in the frame
    /// (the body, the failure's UTF-8 error text, or a stream frame's fields), without
    /// copying the body.
    pub(crate) fn into_parts(self) -> (FrameHeader, Vec<u8>) {
        match self {
            Self::RpcRequest { request_id, body } => {
                (FrameHeader::rpc_request(request_id, body.len()), body)
            }
            Self::RpcResponse { request_id, body } => {
                (FrameHeader::rpc_response(request_id, body.len()), body)
            }
            Self::RpcFailure { request_id, error } => (
                FrameHeader::rpc_failure(request_id, error.len()),
                error.into_bytes(),
            ),
            Self::OneWay { body } => (FrameHeader::one_way(body.len()), body),
            other => {
                let header = other.header();
                (header, other.tail().into_owned())
            }
        }
    }

    /// The whole frame's length in bytes (a StreamResponse's stream bytes not counted).
    pub(crate) fn frame_len(&self) -> u64 {
        self.header().frame_len()
    }

    /// Appends the whole frame to `out` (tests, small frames). A StreamResponse's stream
    /// bytes are not part of it.
    pub(crate) fn encode_to(&self, out: &mut Vec<u8>) {
        let header = self.header();
        let tail = self.tail();
        out.reserve(header.as_bytes().len() + tail.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&tail);
    }

    /// The header of this message's frame.
    fn header(&self) -> FrameHeader {
        match self {
            Self::RpcRequest { request_id, body } => {
                FrameHeader::rpc_request(*request_id, body.len())
            }
            Self::RpcResponse { request_id, body } => {
                FrameHeader::rpc_response(*request_id, body.len())
            }
            Self::RpcFailure { request_id, error } => {
                FrameHeader::rpc_failure(*request_id, error.len())
            }
            Self::OneWay { body } => FrameHeader::one_way(body.len()),
            Self::StreamRequest { .. } => {
                FrameHeader::stream(MessageType::StreamRequest, self.tail().len())
            }
            Self::StreamResponse { .. } => {
                FrameHeader::stream(MessageType::StreamResponse, self.tail().len())
            }
            Self::StreamFailure { .. } => {
                FrameHeader::stream(MessageType::StreamFailure, self.tail().len())
            }
        }
    }

    /// The bytes that follow the header: the body, the failure's error text, or a
    /// stream frame's fields.
    fn tail(&self) -> std::borrow::Cow<'_, [u8]> {
        use super::header::{stream_failure_body, stream_request_body, stream_response_body};
        use std::borrow::Cow;
        match self {
            Self::RpcRequest { body, .. }
            | Self::RpcResponse { body, .. }
            | Self::OneWay { body } => Cow::Borrowed(body),
            Self::RpcFailure { error, .. } => Cow::Borrowed(error.as_bytes()),
            Self::StreamRequest { stream_id } => Cow::Owned(stream_request_body(stream_id)),
            Self::StreamResponse {
                stream_id,
                byte_count,
            } => Cow::Owned(stream_response_body(stream_id, *byte_count)),
            Self::StreamFailure { stream_id, error } => {
                Cow::Owned(stream_failure_body(stream_id, error))
            }
        }
    }
}
