//! Values ⇄ bytes: the one place in the crate that serializes with serde.
//!
//! Every message body, reply and envelope header is written in bincode 2.0.1's
//! `standard()` format: integers are variable-length (varint), little endian, and there is
//! no size limit. A decode must consume all of its bytes; anything left over is an error.
//!
//! The serde `Serializer` ([`ser`]) and `Deserializer` ([`de`]) are this crate's own,
//! written for exactly that format, so that a byte payload costs what copying it costs:
//! bincode's serde adapter goes through its generic `Writer`/`Reader` for every byte
//! (about 5 ns per byte of a `Vec<u8>`, each way). The bytes are bincode's to the bit:
//! the tests compare them with `bincode::serde::encode_to_vec(.., standard())` for many
//! types, and decode bincode's bytes, so peers built with the bincode codec interoperate.
//!
//! # Byte payloads
//!
//! | payload type | encode | decode |
//! |---|---|---|
//! | `serde_bytes::ByteBuf`, `bytes::Bytes` (serde feature), anything that calls `serialize_bytes` / `deserialize_byte_buf` | the length, then one `extend_from_slice` | one borrow of the frame, copied once into the value |
//! | `Vec<u8>`, `[u8; N]` (serde hands them over byte by byte) | a push per byte | a bounds-checked byte read and a push per byte |
//!
//! A value is measured first (a pass that only counts bytes) and then written into a
//! buffer reserved at its exact size: the envelope header and the value share one buffer
//! that never grows, and the transport writes it from there. So beyond what the kernel
//! copies, a byte payload is copied once on each side: into the frame body when it is
//! encoded, and out of the received frame body (which the transport reads from the socket
//! into its final buffer) when it is decoded.
//!
//! # Untrusted bytes
//!
//! Bytes come from peers, so decoding never allocates what the bytes merely claim, by
//! construction of [`de::Decoder`]:
//!
//! - strings and byte strings are borrowed from the input once their claimed length is
//!   checked against what is left; a longer claim fails before anything is allocated,
//!   and the value then copies them at their true length;
//! - the size hint of every sequence and map is at most the number of input bytes left,
//!   so on top of serde's own cap (1 MiB of preallocation per collection) a collection
//!   never preallocates more elements than there are input bytes;
//! - it stops at [`MAX_DEPTH`] levels of nesting, so deeply nested input of a recursive
//!   type is a decode error rather than a stack overflow;
//! - `deserialize_any` (untagged enums, `flatten`) is an error, not a guess.

mod de;
mod ser;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RpcError;

/// The deepest nesting [`decode`] accepts; each sequence, tuple, struct, map, enum variant
/// with fields, `Some` and newtype is one level.
const MAX_DEPTH: usize = 256;

/// Why a value did not encode or decode: the reason, as errors report it.
#[derive(Debug)]
struct Error(String);

impl Error {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// The number of bytes `value` encodes to.
fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    let mut counter = ser::Counter::default();
    value.serialize(&mut ser::Encoder { out: &mut counter })?;
    Ok(counter.0)
}

/// Serializes `value`; `what` names it in errors (e.g. "message for endpoint echo"). It
/// is rendered only for an error, so callers pass `format_args!` on the hot path.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    what: impl fmt::Display,
) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::new();
    encode_into(value, &mut out, what)?;
    Ok(out)
}

/// Appends the serialization of `value` to `out` (used to write an envelope header then
/// the content in one buffer), reserving exactly the room it takes first; `what` names it
/// in errors. On error `out` is left as it was.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    what: impl fmt::Display,
) -> Result<(), RpcError> {
    let start = out.len();
    let result = encoded_len(value).and_then(|len| {
        out.reserve_exact(len);
        value.serialize(&mut ser::Encoder { out: &mut *out })
    });
    result.map_err(|err| {
        out.truncate(start);
        RpcError::Encode {
            what: what.to_string(),
            reason: err.0,
        }
    })
}

/// Deserializes a whole `bytes` as `T`; trailing bytes are an error. `what` names the
/// value in errors.
///
/// Safe on untrusted bytes: see the module documentation.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl fmt::Display,
) -> Result<T, RpcError> {
    let mut decoder = de::Decoder::new(bytes);
    let value =
        T::deserialize(&mut decoder).map_err(|err| RpcError::decode(what.to_string(), err.0))?;
    if !decoder.input.is_empty() {
        return Err(RpcError::decode(
            what.to_string(),
            format!("{} trailing bytes", decoder.input.len()),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Message {
        Ping,
        Text(String),
        Ask {
            id: u64,
            to: Option<String>,
            body: Vec<u8>,
        },
        Batch {
            items: Vec<Self>,
            tags: BTreeMap<String, i32>,
        },
        Pair(u8, Option<Box<Self>>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: u64,
        y: u64,
    }

    fn round_trip<T>(value: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let bytes = encode(&value, "value").expect("encode");
        let back: T = decode(&bytes, "value").expect("decode");
        assert_eq!(back, value);
        let mut out = vec![7, 7];
        encode_into(&value, &mut out, "value").expect("encode_into");
        assert_eq!(out[..2], [7, 7]);
        assert_eq!(out[2..], bytes[..]);
    }

    /// Asserts a decode error that names `what`, and returns its reason.
    fn decode_err<T: DeserializeOwned + Debug>(bytes: &[u8]) -> String {
        match decode::<T>(bytes, "test payload") {
            Ok(value) => panic!("{bytes:?} decoded to {value:?}"),
            Err(RpcError::Decode { what, reason }) => {
                assert_eq!(what, "test payload");
                let err = RpcError::decode(&what, &reason);
                assert!(err.to_string().contains("test payload"), "{err}");
                reason
            }
            Err(err) => panic!("not a Decode error: {err:?}"),
        }
    }

    /// A length prefix in bincode's varint: 253 then a little-endian u64.
    fn claim(len: u64) -> Vec<u8> {
        let mut bytes = vec![253];
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes
    }

    /// 20 bytes that begin with a claim of `len` elements.
    fn claim_in_20_bytes(len: u64) -> Vec<u8> {
        let mut bytes = claim(len);
        bytes.resize(20, b'a');
        bytes
    }

    /// Decodes `bytes` as `T`, expects an error within a second, and returns its reason.
    fn rejected_promptly<T: DeserializeOwned + Debug>(bytes: &[u8]) -> String {
        let start = Instant::now();
        let reason = decode_err::<T>(bytes);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        reason
    }

    #[test]
    fn round_trips() {
        round_trip(0u64);
        round_trip(u64::MAX);
        round_trip(String::new());
        round_trip("héllo".to_owned());
        round_trip(vec![0u8, 1, 255]);
        round_trip(Vec::<u8>::new());
        round_trip(Vec::<String>::new());
        round_trip(Some(3u16));
        round_trip(None::<String>);
        round_trip((1u64, vec![2u8; 1000], "three".to_owned()));
        round_trip(Point { x: 1, y: 2 });
        round_trip(Message::Ping);
        round_trip(Message::Text("t".to_owned()));
        round_trip(Message::Batch {
            items: vec![
                Message::Ask {
                    id: 7,
                    to: Some("echo".to_owned()),
                    body: vec![1, 2, 3],
                },
                Message::Ask {
                    id: 8,
                    to: None,
                    body: vec![],
                },
                Message::Pair(1, Some(Box::new(Message::Pair(2, None)))),
            ],
            tags: [("a".to_owned(), -1), ("b".to_owned(), 2)].into(),
        });
    }

    #[test]
    fn standard_config_is_varint_little_endian() {
        assert_eq!(encode(&250u64, "n").expect("encode"), [250]);
        assert_eq!(encode(&251u64, "n").expect("encode"), [251, 251, 0]);
        assert_eq!(encode(&0x1234u32, "n").expect("encode"), [251, 0x34, 0x12]);
        assert_eq!(encode("ab", "s").expect("encode"), [2, b'a', b'b']);
    }

    #[test]
    fn truncated_bytes_are_a_decode_error_naming_what() {
        let bytes = encode(&(1u64, "hello".to_owned()), "v").expect("encode");
        for len in 0..bytes.len() {
            let reason = decode_err::<(u64, String)>(&bytes[..len]);
            assert!(reason.contains("truncated"), "{reason}");
        }
    }

    #[test]
    fn trailing_bytes_are_a_decode_error() {
        let mut bytes = encode(&5u64, "v").expect("encode");
        bytes.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decode_err::<u64>(&bytes), "3 trailing bytes");
    }

    #[test]
    fn wrong_type_is_an_error_not_a_panic() {
        let bytes = encode("a string that is not a number", "v").expect("encode");
        decode_err::<u64>(&bytes);
        decode_err::<Point>(&bytes);
        decode_err::<Message>(&bytes);
        decode_err::<bool>(&[2]);
        decode_err::<char>(&[0xff]);
        decode_err::<String>(&[2, 0xff, 0xfe]);
        // Variant index 9 of an enum with five variants.
        decode_err::<Message>(&[9]);
    }

    #[test]
    fn a_claimed_1_tib_byte_vec_is_rejected_promptly() {
        rejected_promptly::<Vec<u8>>(&claim_in_20_bytes(1 << 40));
    }

    #[test]
    fn a_claimed_1_tib_string_is_rejected_promptly() {
        // bincode alone would allocate 1 TiB here and abort the process.
        let reason = rejected_promptly::<String>(&claim_in_20_bytes(1 << 40));
        assert!(reason.contains("truncated"), "{reason}");
        rejected_promptly::<Message>(&[[1u8].as_slice(), &claim_in_20_bytes(1 << 40)].concat());
        rejected_promptly::<Vec<String>>(&[[1u8].as_slice(), &claim_in_20_bytes(1 << 40)].concat());
    }

    #[test]
    fn a_claimed_2_pow_60_u64_vec_is_rejected_promptly() {
        rejected_promptly::<Vec<u64>>(&claim_in_20_bytes(1 << 60));
        rejected_promptly::<Vec<Vec<u64>>>(&claim_in_20_bytes(1 << 60));
        rejected_promptly::<BTreeMap<u64, u64>>(&claim_in_20_bytes(1 << 60));
        rejected_promptly::<Vec<u64>>(&claim_in_20_bytes(u64::MAX));
    }

    /// A value that asks for `deserialize_byte_buf`, as `serde_bytes::ByteBuf` does.
    #[derive(Debug)]
    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            deserializer.deserialize_byte_buf(V)
        }
    }

    #[test]
    fn a_claimed_1_tib_byte_buf_is_rejected_promptly() {
        rejected_promptly::<ByteBuf>(&claim_in_20_bytes(1 << 40));
        let ok: ByteBuf = decode(&[3, 1, 2, 3], "bytes").expect("decode");
        assert_eq!(ok.0, [1, 2, 3]);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Message::Pair(0, Some(Box::new(Message::Pair(0, Some(...)))))
        let level = [4u8, 0, 1];
        let nested = |levels: usize| {
            let mut bytes = level.repeat(levels);
            bytes.extend_from_slice(&[4, 0, 0]);
            bytes
        };
        // Each level is two deep: a tuple variant's field, then the Option's content.
        let ok: Message = decode(&nested(MAX_DEPTH / 2 - 1), "nested").expect("decode");
        assert!(matches!(ok, Message::Pair(0, Some(_))));
        let reason = decode_err::<Message>(&nested(MAX_DEPTH / 2));
        assert!(reason.contains("nested deeper"), "{reason}");
        let reason = decode_err::<Message>(&nested(100_000));
        assert!(reason.contains("nested deeper"), "{reason}");
    }

    #[test]
    fn encode_errors_name_what_and_leave_out_unchanged() {
        struct Failing;
        impl Serialize for Failing {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refused"))
            }
        }
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq((0..3).filter(|_| true))
            }
        }
        match encode(&Failing, "message for endpoint echo") {
            Err(RpcError::Encode { what, reason }) => {
                assert_eq!(what, "message for endpoint echo");
                assert_eq!(reason, "refused");
            }
            other => panic!("{other:?}"),
        }
        let mut out = vec![1, 2];
        let err = encode_into(&(5u8, Unsized), &mut out, "envelope").expect_err("unsized");
        assert!(matches!(err, RpcError::Encode { .. }), "{err:?}");
        assert!(err.to_string().contains("envelope"), "{err}");
        assert_eq!(out, [1, 2]);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = decode::<Vec<String>>(&bytes, "arbitrary");
            let _ = decode::<(u64, Vec<u8>, String)>(&bytes, "arbitrary");
            let _ = decode::<Message>(&bytes, "arbitrary");
        }

        #[test]
        fn decoding_arbitrary_bytes_after_a_claim_never_panics(
            len in any::<u64>(),
            tail in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let bytes = [claim(len), tail].concat();
            let _ = decode::<Vec<String>>(&bytes, "arbitrary");
            let _ = decode::<String>(&bytes, "arbitrary");
            let _ = decode::<Vec<u64>>(&bytes, "arbitrary");
        }

        #[test]
        fn round_trips_arbitrary_values(
            value in (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64), ".*"),
        ) {
            let bytes = encode(&value, "v").expect("encode");
            let back: (u64, Vec<u8>, String) = decode(&bytes, "v").expect("decode");
            prop_assert_eq!(back, value);
        }
    }
}
