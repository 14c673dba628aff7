//! The `RequestMessage` envelope inside `RpcRequest` and `OneWayMessage` bodies, and the
//! reply envelope inside `RpcResponse` bodies.
//!
//! A request body is a small header followed by the message's codec bytes (all integers
//! big-endian):
//!
//! ```text
//! version   u8      3 (1: the envelope before type fingerprints)
//! sender    u8      0: none (a client-mode env), 1: followed by
//!           u16 len, host (UTF-8), u16 port
//! receiver  u16 len, endpoint name (UTF-8)
//! message   u64     fingerprint of the message's type (see `types`); 0: no claim
//! reply     u64     fingerprint of the reply type the asker expects; 0: none (a one-way
//!                   message, or no claim)
//! content   the rest: the message, encoded by the codec
//! ```
//!
//! The receiver refuses a message whose type fingerprint is not its endpoint's, and an
//! endpoint's reply whose type fingerprint is not the one the ask expects is answered
//! with an error instead (`ReplyType`), so that neither is decoded as a type it is not.
//!
//! A reply body is one status byte, then the reply's codec bytes (`0`) or an error the
//! wire can carry (`1`): `Remote`, `NoReply`, `EndpointStopped`, `EndpointNotFound`,
//! `EnvStopped`, `Decode`, `Encode`, `MessageType` and `ReplyType` (the endpoint replied
//! with another type than the ask expects: its type's name) keep their kind across the
//! network; anything else travels as `Remote` with its text.
//!
//! A control body (first byte `2`) carries the flow control between envs (see `flow`); it
//! travels in a `OneWayMessage` and never reaches an endpoint:
//!
//! ```text
//! kind      u8      1: hello, 2: grant
//! hello     u8 version (1), u32 window: the bytes per endpoint the sender of the hello
//!           lets its peer have in flight before it grants more
//! grant     u16 len, endpoint name (UTF-8), u32 bytes: more window for that endpoint
//! ```
//!
//! Only the message and the reply go through the codec; the headers are read by hand,
//! without trusting any length in them.

use serde::{Deserialize, Serialize};

use crate::buffer_pool::BufferPool;
use crate::codec;
use crate::error::RpcError;
use crate::frame::Body;
use crate::rpc::address::RpcAddress;
use crate::rpc::types::{self, TypeLabel};

/// 1 was the envelope without type fingerprints; 2 is taken by control bodies.
const VERSION: u8 = 3;
const CONTROL: u8 = 2;
const HELLO: u8 = 1;
const GRANT: u8 = 2;
const FLOW_CONTROL_VERSION: u8 = 1;
const REPLY_OK: u8 = 0;
const REPLY_ERR: u8 = 1;

/// The header of a request body, borrowed from it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RequestHeader<'a> {
    /// The listen address of the env that sent it; `None` for a client-mode env.
    pub(crate) sender: Option<Sender<'a>>,
    /// The endpoint it is for.
    pub(crate) receiver: &'a str,
    /// The fingerprint of the message's type; 0: no claim.
    pub(crate) message_type: u64,
    /// The fingerprint of the reply type the asker expects; 0: none.
    pub(crate) reply_type: u64,
    /// Where the content starts in the body.
    pub(crate) content_start: usize,
}

/// The sender field of a request header as written (a non-empty UTF-8 host and a port),
/// before it is made an [`RpcAddress`] (which normalizes the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sender<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
}

impl Sender<'_> {
    /// The address the field names.
    pub(crate) fn address(self) -> RpcAddress {
        RpcAddress::new(self.host, self.port)
    }
}

/// Writes a request body: the header, then `content` through the codec. `reply_type` is
/// the fingerprint of the reply type an ask expects (0 for a one-way message). Large
/// `SharedBytes` in `content` are spliced into the body, not copied (see
/// [`codec::encode_spliced`]); a large body's buffer comes from `pool` when it can.
pub(crate) fn encode_request<M: Serialize + ?Sized>(
    sender: Option<&RpcAddress>,
    receiver: &str,
    reply_type: u64,
    content: &M,
    pool: Option<&BufferPool>,
) -> Result<Body, RpcError> {
    let mut out = Vec::with_capacity(64);
    out.push(VERSION);
    match sender {
        Some(address) => {
            out.push(1);
            put_str(&mut out, address.host(), "sender host")?;
            out.extend_from_slice(&address.port().to_be_bytes());
        }
        None => out.push(0),
    }
    put_str(&mut out, receiver, "endpoint name")?;
    out.extend_from_slice(&types::fingerprint::<M>().to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    let mut spliced = Vec::new();
    codec::encode_spliced(
        content,
        &mut out,
        &mut spliced,
        pool,
        format_args!(
            "message for endpoint {receiver} (a {})",
            TypeLabel::of::<M>()
        ),
    )?;
    Ok(Body::spliced(out, spliced))
}

fn put_str(out: &mut Vec<u8>, text: &str, what: &str) -> Result<(), RpcError> {
    let len = u16::try_from(text.len()).map_err(|_| RpcError::Encode {
        what: what.into(),
        reason: format!("{} bytes is longer than 65535", text.len()),
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Reads the header of a request body.
pub(crate) fn decode_request(body: &[u8]) -> Result<RequestHeader<'_>, RpcError> {
    let mut reader = Reader {
        body,
        at: 0,
        what: "request envelope",
    };
    let version = reader.u8()?;
    if version == CONTROL {
        return Err(RpcError::decode(
            "request envelope",
            "it is a flow-control message, which travels one-way only",
        ));
    }
    if version != VERSION {
        return Err(RpcError::decode(
            "request envelope",
            format!(
                "envelope version {version}, this env speaks {VERSION}: \
                 both sides must run the same version of rpcenv"
            ),
        ));
    }
    let sender = match reader.u8()? {
        0 => None,
        1 => {
            let host = reader.str("sender host")?;
            if host.is_empty() {
                return Err(RpcError::decode("request envelope", "empty sender host"));
            }
            let port = u16::from_be_bytes([reader.u8()?, reader.u8()?]);
            Some(Sender { host, port })
        }
        flag => {
            return Err(RpcError::decode(
                "request envelope",
                format!("sender flag {flag} is neither 0 nor 1"),
            ));
        }
    };
    let receiver = reader.str("endpoint name")?;
    let message_type = reader.u64()?;
    let reply_type = reader.u64()?;
    Ok(RequestHeader {
        sender,
        receiver,
        message_type,
        reply_type,
        content_start: reader.at,
    })
}

/// A control message between envs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control<'a> {
    /// The peer speaks flow control; its windows are `window` bytes per endpoint.
    Hello { window: u32 },
    /// The peer grants `bytes` more window for its endpoint `endpoint`.
    Grant { endpoint: &'a str, bytes: u32 },
}

/// Whether a one-way body is a control message rather than a request envelope.
pub(crate) fn is_control(body: &[u8]) -> bool {
    body.first() == Some(&CONTROL)
}

/// A hello announcing windows of `window` bytes per endpoint.
pub(crate) fn encode_hello(window: usize) -> Vec<u8> {
    let window = u32::try_from(window).unwrap_or(u32::MAX);
    let mut out = vec![CONTROL, HELLO, FLOW_CONTROL_VERSION];
    out.extend_from_slice(&window.to_be_bytes());
    out
}

/// A grant of `bytes` more window for `endpoint`.
pub(crate) fn encode_grant(endpoint: &str, bytes: usize) -> Result<Vec<u8>, RpcError> {
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    let mut out = vec![CONTROL, GRANT];
    put_str(&mut out, endpoint, "endpoint name")?;
    out.extend_from_slice(&bytes.to_be_bytes());
    Ok(out)
}

/// Reads a control body.
pub(crate) fn decode_control(body: &[u8]) -> Result<Control<'_>, RpcError> {
    let mut reader = Reader {
        body,
        at: 0,
        what: "control message",
    };
    if reader.u8()? != CONTROL {
        return Err(RpcError::decode("control message", "not a control message"));
    }
    let control = match reader.u8()? {
        HELLO => {
            let version = reader.u8()?;
            if version != FLOW_CONTROL_VERSION {
                return Err(RpcError::decode(
                    "control message",
                    format!("unknown flow-control version {version}"),
                ));
            }
            Control::Hello {
                window: reader.u32()?,
            }
        }
        GRANT => Control::Grant {
            endpoint: reader.str("endpoint name")?,
            bytes: reader.u32()?,
        },
        kind => {
            return Err(RpcError::decode(
                "control message",
                format!("unknown kind {kind}"),
            ));
        }
    };
    if reader.at != body.len() {
        return Err(RpcError::decode(
            "control message",
            format!("{} bytes after its end", body.len() - reader.at),
        ));
    }
    Ok(control)
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RpcError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.body.len())
            .ok_or_else(|| {
                RpcError::decode(
                    self.what,
                    format!(
                        "needs {n} more bytes at offset {} of {}",
                        self.at,
                        self.body.len()
                    ),
                )
            })?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, RpcError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, RpcError> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(bytes))
    }

    fn u32(&mut self) -> Result<u32, RpcError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn str(&mut self, what: &str) -> Result<&'a str, RpcError> {
        let len = u16::from_be_bytes([self.u8()?, self.u8()?]);
        let bytes = self.take(usize::from(len))?;
        std::str::from_utf8(bytes).map_err(|e| RpcError::decode(self.what, format!("{what}: {e}")))
    }
}

/// The errors that keep their kind across the network.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    Remote { message: String },
    NoReply { endpoint: String },
    EndpointStopped { name: String },
    EndpointNotFound { uri: String },
    EnvStopped,
    Decode { what: String, reason: String },
    Encode { what: String, reason: String },
    // Appended: bincode writes a variant's index, so new variants go last.
    ReplyType { replied: String },
    MessageType { endpoint: String, takes: String },
}

/// Why a reply carries no value.
#[derive(Debug)]
pub(crate) enum ReplyError {
    /// The ask failed.
    Failed(RpcError),
    /// The endpoint replied with a value of another type: this one (its wire name).
    OtherType(String),
}

impl From<RpcError> for ReplyError {
    fn from(err: RpcError) -> Self {
        Self::Failed(err)
    }
}

/// A reply body saying that the endpoint replied with a `replied` (a wire name) where the
/// ask expected another type.
pub(crate) fn encode_reply_type_error(replied: String) -> Vec<u8> {
    let mut out = vec![REPLY_ERR];
    if codec::encode_into(&WireError::ReplyType { replied }, &mut out, "reply error").is_err() {
        out.truncate(1);
    }
    out
}

/// A reply body carrying `value`, its large `SharedBytes` spliced in, not copied (see
/// [`codec::encode_spliced`]); a large body's buffer comes from `pool` when it can.
pub(crate) fn encode_reply<T: Serialize + ?Sized>(
    value: &T,
    pool: Option<&BufferPool>,
    what: impl std::fmt::Display,
) -> Result<Body, RpcError> {
    let mut out = Vec::with_capacity(16);
    out.push(REPLY_OK);
    let mut spliced = Vec::new();
    codec::encode_spliced(value, &mut out, &mut spliced, pool, what)?;
    Ok(Body::spliced(out, spliced))
}

/// A reply body carrying `error`.
pub(crate) fn encode_reply_error(error: &RpcError) -> Vec<u8> {
    let wire = match error.clone() {
        RpcError::Remote { message } => WireError::Remote { message },
        RpcError::NoReply { endpoint } => WireError::NoReply { endpoint },
        RpcError::EndpointStopped { name } => WireError::EndpointStopped { name },
        RpcError::EndpointNotFound { uri } => WireError::EndpointNotFound { uri },
        RpcError::EnvStopped => WireError::EnvStopped,
        RpcError::Decode { what, reason } => WireError::Decode { what, reason },
        RpcError::Encode { what, reason } => WireError::Encode { what, reason },
        RpcError::MessageType {
            endpoint, takes, ..
        } => WireError::MessageType {
            endpoint,
            takes: takes.into(),
        },
        other => WireError::Remote {
            message: other.to_string(),
        },
    };
    let mut out = vec![REPLY_ERR];
    if codec::encode_into(&wire, &mut out, "reply error").is_err() {
        // Strings and unit variants always encode; keep the status byte meaningful anyway.
        out.truncate(1);
        let _ = codec::encode_into(
            &WireError::Remote {
                message: "the error could not be encoded".into(),
            },
            &mut out,
            "reply error",
        );
    }
    out
}

/// The reply's codec bytes, or the error it carries.
pub(crate) fn decode_reply(body: &[u8]) -> Result<&[u8], ReplyError> {
    match body.split_first() {
        Some((&REPLY_OK, payload)) => Ok(payload),
        Some((&REPLY_ERR, payload)) => {
            Err(match codec::decode::<WireError>(payload, "reply error")? {
                WireError::ReplyType { replied } => return Err(ReplyError::OtherType(replied)),
                WireError::MessageType { endpoint, takes } => RpcError::MessageType {
                    endpoint,
                    takes: takes.into(),
                    sent: None,
                },
                WireError::Remote { message } => RpcError::Remote { message },
                WireError::NoReply { endpoint } => RpcError::NoReply { endpoint },
                WireError::EndpointStopped { name } => RpcError::EndpointStopped { name },
                WireError::EndpointNotFound { uri } => RpcError::EndpointNotFound { uri },
                WireError::EnvStopped => RpcError::EnvStopped,
                WireError::Decode { what, reason } => RpcError::Decode { what, reason },
                WireError::Encode { what, reason } => RpcError::Encode { what, reason },
            }
            .into())
        }
        Some((status, _)) => {
            Err(RpcError::decode("reply", format!("unknown reply status {status}")).into())
        }
        None => Err(RpcError::decode("reply", "empty reply body").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_message_serialization_round_trips_sender_receiver_and_content() {
        let sender = RpcAddress::new("10.0.0.1", 7077);
        let body = encode_request(Some(&sender), "echo", 5, &(7u64, "hi".to_string()), None)
            .unwrap()
            .to_vec();
        let header = decode_request(&body).unwrap();
        assert_eq!(header.sender.map(Sender::address), Some(sender));
        assert_eq!(header.receiver, "echo");
        assert_eq!(header.message_type, types::fingerprint::<(u64, String)>());
        assert_eq!(header.reply_type, 5);
        let content: (u64, String) =
            codec::decode(&body[header.content_start..], "content").unwrap();
        assert_eq!(content, (7, "hi".to_string()));
    }

    #[test]
    fn request_message_serialization_without_sender_and_with_unit_content() {
        let body = encode_request(None, "e", 0, &(), None).unwrap().to_vec();
        let header = decode_request(&body).unwrap();
        assert_eq!(header.sender, None);
        assert_eq!(header.receiver, "e");
        assert_eq!(header.content_start, body.len());
    }

    #[test]
    fn ipv6_sender_round_trips() {
        let sender = RpcAddress::new("::1", 1);
        let body = encode_request(Some(&sender), "e", 0, &1u8, None)
            .unwrap()
            .to_vec();
        let header = decode_request(&body).unwrap();
        assert_eq!(header.sender.map(Sender::address), Some(sender));
    }

    #[test]
    fn every_truncation_of_a_header_is_a_decode_error() {
        let body = encode_request(Some(&RpcAddress::new("host", 9)), "endpoint", 7, &(), None)
            .unwrap()
            .to_vec();
        for len in 0..body.len() {
            let err = decode_request(&body[..len]).unwrap_err();
            assert!(matches!(err, RpcError::Decode { .. }), "{len}: {err}");
        }
    }

    #[test]
    fn bad_headers_are_decode_errors() {
        for body in [
            &[1u8, 0, 0, 0][..],             // an older version
            &[3, 7, 0, 0],                   // bad sender flag
            &[3, 0, 0xff, 0xff, b'a'],       // name longer than the body
            &[3, 0, 0, 2, 0xc3, 0x28],       // invalid UTF-8
            &[3, 1, 0, 0, 0, 1, 0, 1, b'e'], // empty sender host
            &[3, 0, 0, 1, b'e', 0, 0, 0],    // type fingerprints cut short
        ] {
            assert!(matches!(decode_request(body), Err(RpcError::Decode { .. })));
        }
    }

    #[test]
    fn control_messages_round_trip_and_bad_ones_are_decode_errors() {
        let hello = encode_hello(4 << 20);
        assert!(is_control(&hello));
        assert_eq!(
            decode_control(&hello).unwrap(),
            Control::Hello { window: 4 << 20 }
        );
        let grant = encode_grant("echo", 12_345).unwrap();
        assert_eq!(
            decode_control(&grant).unwrap(),
            Control::Grant {
                endpoint: "echo",
                bytes: 12_345
            }
        );
        assert!(!is_control(
            &encode_request(None, "e", 0, &(), None).unwrap().to_vec()
        ));
        for len in 0..grant.len() {
            assert!(decode_control(&grant[..len]).is_err(), "{len}");
        }
        for body in [
            &[2u8, 9][..],             // unknown kind
            &[2, 1, 7, 0, 0, 0, 1],    // unknown version
            &[2, 1, 1, 0, 0, 0, 1, 0], // trailing byte
        ] {
            assert!(matches!(decode_control(body), Err(RpcError::Decode { .. })));
        }
    }

    #[test]
    fn replies_round_trip_values_and_errors() {
        let body = encode_reply(&42u64, None, "reply").unwrap().to_vec();
        assert_eq!(
            codec::decode::<u64>(decode_reply(&body).unwrap(), "r").unwrap(),
            42
        );
        let errors = [
            RpcError::Remote {
                message: "boom".into(),
            },
            RpcError::NoReply {
                endpoint: "e".into(),
            },
            RpcError::EndpointStopped { name: "e".into() },
            RpcError::EndpointNotFound {
                uri: "rpc://e@h:1".into(),
            },
            RpcError::EnvStopped,
            RpcError::decode("message", "bad"),
            RpcError::MessageType {
                endpoint: "kv".into(),
                takes: "KvMsg".into(),
                sent: None,
            },
        ];
        for err in errors {
            let Err(ReplyError::Failed(back)) = decode_reply(&encode_reply_error(&err)) else {
                panic!("{err} did not come back as a failure");
            };
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(&err));
            assert_eq!(back.to_string(), err.to_string());
        }
        let other = RpcError::config("k", "v");
        let body = encode_reply_error(&other);
        let back = decode_reply(&body);
        assert!(
            matches!(back, Err(ReplyError::Failed(RpcError::Remote { message })) if message.contains("k"))
        );
        let body = encode_reply_type_error("Option<String>".into());
        let back = decode_reply(&body);
        assert!(matches!(back, Err(ReplyError::OtherType(t)) if t == "Option<String>"));
    }

    #[test]
    fn bad_reply_bodies_are_decode_errors() {
        for body in [&[][..], &[9], &[1, 200, 200]] {
            assert!(matches!(
                decode_reply(body),
                Err(ReplyError::Failed(RpcError::Decode { .. }))
            ));
        }
    }

    /// A request or reply with large `SharedBytes` has its buffers spliced in, and the
    /// same length and bytes as the body with them copied in.
    #[test]
    fn request_and_reply_bodies_splice_large_shared_bytes_and_keep_the_bytes() {
        use crate::codec::SharedBytes;
        let big = SharedBytes::from(vec![3u8; 100_000]);
        let value = (
            7u64,
            big.clone(),
            SharedBytes::from(vec![1u8; 10]),
            vec![big.clone()],
        );
        let content = codec::encode(&value, "content").unwrap();
        let sender = RpcAddress::new("host", 9);
        let body = encode_request(Some(&sender), "echo", 5, &value, None).unwrap();
        assert!(body.is_spliced());
        let flat = body.to_vec();
        assert_eq!(body.len(), flat.len());
        let header = decode_request(&flat).unwrap();
        assert_eq!(header.receiver, "echo");
        assert_eq!(flat[header.content_start..], content[..]);

        let reply = encode_reply(&value, None, "reply").unwrap();
        assert!(reply.is_spliced());
        assert_eq!(reply.len(), 1 + content.len());
        assert_eq!(decode_reply(&reply.to_vec()).unwrap(), &content[..]);
        // Small payloads are copied: one buffer.
        let small = encode_reply(&SharedBytes::from(vec![1u8; 100]), None, "reply").unwrap();
        assert!(!small.is_spliced());
    }
}
