//! Spark network-common message types and the header layout of the frames rpcenv speaks.
//!
//! Only plain values live here: the type codes, the header sizes and the [`Message`] enum.
//! Nothing in this file reads a length from a peer, let alone allocates by one.

use std::fmt;

use super::decode::FrameError;

/// Bytes of the frame length (`i64`) that opens every frame.
pub(crate) const LENGTH_FIELD_LEN: usize = 8;

/// The shortest frame Spark can send: the length field and the type byte.
pub(crate) const MIN_FRAME_LEN: usize = LENGTH_FIELD_LEN + 1;

/// Header of RpcRequest, RpcResponse and RpcFailure: frame length, type, request id (`i64`)
/// and body (or error string) length (`i32`).
pub(crate) const RPC_HEADER_LEN: usize = MIN_FRAME_LEN + 8 + 4;

/// Header of OneWayMessage: frame length, type and body length (`i32`).
pub(crate) const ONE_WAY_HEADER_LEN: usize = MIN_FRAME_LEN + 4;

/// The longest header of any frame rpcenv speaks (21 bytes).
pub(crate) const MAX_HEADER_LEN: usize = RPC_HEADER_LEN;

/// Spark network-common message type codes (`org.apache.spark.network.protocol.Message$Type`).
///
/// Spark also has `User` (-1, byte `0xff`), which its own decoder refuses; here it is an
/// unknown byte like 13..=254. Only RpcRequest, RpcResponse, RpcFailure and OneWayMessage
/// are spoken by rpcenv; see [`MessageType::header_len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum MessageType {
    /// 0: fetch one chunk of a registered stream (shuffle).
    ChunkFetchRequest = 0,
    /// 1: a fetched chunk.
    ChunkFetchSuccess = 1,
    /// 2: a chunk fetch that failed.
    ChunkFetchFailure = 2,
    /// 3: an RPC that expects a response or failure with the same request id.
    RpcRequest = 3,
    /// 4: the successful answer to an RpcRequest.
    RpcResponse = 4,
    /// 5: the failed answer to an RpcRequest, carrying an error string.
    RpcFailure = 5,
    /// 6: open a named stream.
    StreamRequest = 6,
    /// 7: the head of a stream.
    StreamResponse = 7,
    /// 8: a stream that could not be opened.
    StreamFailure = 8,
    /// 9: a message that expects no answer.
    OneWayMessage = 9,
    /// 10: an RPC followed by a stream of data.
    UploadStream = 10,
    /// 11: ask for push-based shuffle metadata.
    MergedBlockMetaRequest = 11,
    /// 12: push-based shuffle metadata.
    MergedBlockMetaSuccess = 12,
}

impl MessageType {
    /// Spark's name of the type, for error texts.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ChunkFetchRequest => "ChunkFetchRequest",
            Self::ChunkFetchSuccess => "ChunkFetchSuccess",
            Self::ChunkFetchFailure => "ChunkFetchFailure",
            Self::RpcRequest => "RpcRequest",
            Self::RpcResponse => "RpcResponse",
            Self::RpcFailure => "RpcFailure",
            Self::StreamRequest => "StreamRequest",
            Self::StreamResponse => "StreamResponse",
            Self::StreamFailure => "StreamFailure",
            Self::OneWayMessage => "OneWayMessage",
            Self::UploadStream => "UploadStream",
            Self::MergedBlockMetaRequest => "MergedBlockMetaRequest",
            Self::MergedBlockMetaSuccess => "MergedBlockMetaSuccess",
        }
    }

    /// The whole header length (frame length + type byte + type header) of a type rpcenv
    /// speaks, or `None` for the Spark types it does not.
    pub(crate) fn header_len(self) -> Option<usize> {
        match self {
            Self::RpcRequest | Self::RpcResponse | Self::RpcFailure => Some(RPC_HEADER_LEN),
            Self::OneWayMessage => Some(ONE_WAY_HEADER_LEN),
            // Their headers hold strings: the rest of the frame is collected (bounded by
            // the maximum frame size) and parsed whole.
            Self::StreamRequest | Self::StreamResponse | Self::StreamFailure => Some(MIN_FRAME_LEN),
            _ => None,
        }
    }
}

impl TryFrom<u8> for MessageType {
    type Error = FrameError;

    /// Maps a type byte to its Spark type; bytes 13..=255 are [`FrameError::UnknownType`].
    fn try_from(byte: u8) -> Result<Self, FrameError> {
        Ok(match byte {
            0 => Self::ChunkFetchRequest,
            1 => Self::ChunkFetchSuccess,
            2 => Self::ChunkFetchFailure,
            3 => Self::RpcRequest,
            4 => Self::RpcResponse,
            5 => Self::RpcFailure,
            6 => Self::StreamRequest,
            7 => Self::StreamResponse,
            8 => Self::StreamFailure,
            9 => Self::OneWayMessage,
            10 => Self::UploadStream,
            11 => Self::MergedBlockMetaRequest,
            12 => Self::MergedBlockMetaSuccess,
            _ => return Err(FrameError::UnknownType(byte)),
        })
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One frame's content, for the Spark message types rpcenv speaks.
///
/// Request ids travel as `i64` on the wire; they are kept as `u64` and cast bit for bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// RpcRequest (3): a request the peer answers with a response or failure of the same id.
    RpcRequest {
        /// Chosen by the client, copied into the answer.
        request_id: u64,
        /// The request's bytes.
        body: Vec<u8>,
    },
    /// RpcResponse (4): the successful answer to the request with this id.
    RpcResponse {
        /// The id of the request answered.
        request_id: u64,
        /// The answer's bytes.
        body: Vec<u8>,
    },
    /// RpcFailure (5): the failed answer to the request with this id.
    RpcFailure {
        /// The id of the request answered.
        request_id: u64,
        /// The error text (from a Spark peer: the exception and its stack trace).
        error: String,
    },
    /// OneWayMessage (9): a message that expects no answer.
    OneWay {
        /// The message's bytes.
        body: Vec<u8>,
    },
    /// StreamRequest (6): `streamId` String. Asks the peer's stream manager for a stream.
    StreamRequest {
        /// The stream's id (for an env's file server, a path such as `/files/a.txt`).
        stream_id: String,
    },
    /// StreamResponse (7): `streamId` String, `byteCount` i64. The stream's `byte_count`
    /// raw bytes follow the frame and are not counted in its length.
    StreamResponse {
        /// The id of the stream answered.
        stream_id: String,
        /// How many raw bytes follow (a claim of the peer: never allocated up front).
        byte_count: u64,
    },
    /// StreamFailure (8): `streamId` String, `error` String.
    StreamFailure {
        /// The id of the stream that could not be opened.
        stream_id: String,
        /// Why (from Spark: "Stream '\<id>' was not found." or a stack trace).
        error: String,
    },
}

/// Appends Spark's `Encoders.Strings` form of `text`: an `i32` byte length and UTF-8.
pub(crate) fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as i32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The frame body (everything after the type byte) of a StreamRequest.
pub(crate) fn stream_request_body(stream_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + stream_id.len());
    put_string(&mut out, stream_id);
    out
}

/// The frame body (everything after the type byte) of a StreamResponse; the stream's
/// bytes follow the frame.
pub(crate) fn stream_response_body(stream_id: &str, byte_count: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + stream_id.len());
    put_string(&mut out, stream_id);
    out.extend_from_slice(&byte_count.to_be_bytes());
    out
}

/// The frame body (everything after the type byte) of a StreamFailure.
pub(crate) fn stream_failure_body(stream_id: &str, error: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + stream_id.len() + error.len());
    put_string(&mut out, stream_id);
    put_string(&mut out, error);
    out
}
