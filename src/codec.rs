//! Values ⇄ bytes: the one place in the crate that serializes with serde.
//!
//! Every message body, reply and envelope header is written in bincode 2.0.1's
//! `standard()` format: integers are variable-length (varint), little endian, and there is
//! no size limit. A decode must consume all of its bytes; anything left over is an error.
//!
//! The serde `Serializer` ([`ser`]) and `Deserializer` ([`de`]) are this crate's own,
//! written for exactly that format, so that a byte payload costs what copying it costs:
//! bincode's serde adapter goes through its generic `Writer`/`Reader` for every byte of a
//! `Vec<u8>`. Measured by `codec_cost_of_16_mib_payloads` (16 MiB, release build, medians
//! of 5 alternating rounds in one process, on a 2-core machine under a load of 4 to 16):
//! a `Vec<u8>` encodes in about 1.0 to 1.3 ns per byte (bincode: 1.4 to 3.6) and decodes
//! in 0.8 to 1.4 (bincode: 1.1 to 2.6), roughly 2x; a `ByteBuf` takes about 0.1 ns per
//! byte each way (a `memcpy`; bincode's path was close, 0.1 to 0.4). The bytes are
//! bincode's to the bit:
//! the tests compare them with `bincode::serde::encode_to_vec(.., standard())` for many
//! types, and decode bincode's bytes, so peers built with the bincode codec interoperate.
//!
//! # Byte payloads
//!
//! | payload type | encode | decode |
//! |---|---|---|
//! | `serde_bytes::ByteBuf`, `bytes::Bytes` (serde feature), anything that calls `serialize_bytes` / `deserialize_byte_buf` | the length, then one `extend_from_slice` | one borrow of the frame, copied once into the value |
//! | [`SharedBytes`] | as `ByteBuf`; from 16 KiB on, for a frame ([`encode_spliced`]), the length only: the buffer is written to the socket at its place | a view of the received frame body ([`decode_shared`]); a copy as for `ByteBuf` elsewhere ([`decode`]) |
//! | `Vec<u8>`, `[u8; N]` (serde hands them over byte by byte) | a push per byte | a bounds-checked byte read and a push per byte |
//!
//! A value is measured first (a pass that only counts bytes) and then written into a
//! buffer reserved at its exact size: the envelope header and the value share one buffer
//! that never grows, and the transport writes it from there. So beyond what the kernel
//! copies, a byte payload is copied once on each side: into the frame body when it is
//! encoded, and out of the received frame body (which the transport reads from the socket
//! into its final buffer) when it is decoded. A [`SharedBytes`] of at least 16 KiB is not
//! copied at all on a plaintext connection: encoded for a frame ([`encode_spliced`]), its
//! buffer is written to the socket from where it is, and decoded from a received frame
//! ([`decode_shared`]), it is a view of the body. (On an encrypted connection the cipher
//! reads it where it is and writes the ciphertext into a buffer of its own.)
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
//! - its sequences and maps claim at most one element per input byte plus
//!   [`MAX_EMPTY_ELEMENTS`] (elements that take no bytes), so a `Vec<()>` claiming 2^60
//!   elements is an error at once, not a loop of 2^60 turns;
//! - `deserialize_any` (untagged enums, `flatten`) is an error, not a guess.

mod de;
mod ser;
mod shared;

use std::fmt;

use bytes::Bytes;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::buffer_pool::BufferPool;
use crate::error::RpcError;

pub use shared::SharedBytes;

/// The deepest nesting [`decode`] accepts; each sequence, tuple, struct, map, enum variant
/// with fields, `Some` and newtype is one level.
const MAX_DEPTH: usize = 256;

/// The most elements that take no input bytes (`()`, unit structs, empty tuples) the
/// sequences and maps of one [`decode`] may claim, on top of one per input byte: their
/// count is the only thing a peer's bytes claim for them, so without a cap a `Vec<()>`
/// claiming 2^60 elements would loop 2^60 times on 9 bytes. bincode 2.0.1 has no such
/// cap (it loops); here a claim beyond it fails before any element is read.
const MAX_EMPTY_ELEMENTS: usize = 1 << 20;

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
    Ok(counter.total)
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
/// the content in one buffer), reserving the room it takes first (measured by a pass that
/// only counts bytes), so the buffer grows at most once; `what` names it in errors. On
/// error `out` is left as it was.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    what: impl fmt::Display,
) -> Result<(), RpcError> {
    let start = out.len();
    let result = encoded_len(value).and_then(|len| {
        // Not `reserve_exact`: values appended one after another to one buffer still
        // grow it geometrically. A large value gets exactly its room either way.
        out.reserve(len);
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

/// As [`encode_into`], except that each [`SharedBytes`] of at least
/// [`SPLICE_MIN`](shared::SPLICE_MIN) bytes in `value` is not copied into `out`: its
/// length is, and its buffer is pushed to `spliced` as `(at, piece)`, to go on the wire
/// before `out[at..]`. The bytes `out` and the pieces make together, in that order, are
/// exactly those [`encode_into`] writes. On error `out` and `spliced` are left as they
/// were.
///
/// When `out` must grow to a buffer of `POOLED_MIN` (1 MiB) or more, the buffer is taken
/// from `pool` if it has one that fits (`out`'s bytes are copied into it first), so its
/// pages are already in memory; the pool's old bytes in it are overwritten, not zeroed.
pub(crate) fn encode_spliced<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    spliced: &mut Vec<(usize, Bytes)>,
    pool: Option<&BufferPool>,
    what: impl fmt::Display,
) -> Result<(), RpcError> {
    let start = (out.len(), spliced.len());
    let mut splicer = ser::Splicer {
        bytes: std::mem::take(out),
        spliced: std::mem::take(spliced),
    };
    let mut counter = ser::Counter {
        splicing: true,
        ..ser::Counter::default()
    };
    let result = value
        .serialize(&mut ser::Encoder { out: &mut counter })
        .and_then(|()| {
            let needed = counter.total - counter.lent;
            let len = splicer.bytes.len() + needed;
            if len > splicer.bytes.capacity() {
                if let Some(mut buffer) = pool.and_then(|pool| pool.take(len)) {
                    buffer.clear();
                    buffer.extend_from_slice(&splicer.bytes);
                    splicer.bytes = buffer;
                }
            }
            splicer.bytes.reserve(needed);
            value.serialize(&mut ser::Encoder { out: &mut splicer })
        });
    *out = splicer.bytes;
    *spliced = splicer.spliced;
    result.map_err(|err| {
        out.truncate(start.0);
        spliced.truncate(start.1);
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
    decode_with(de::Decoder::new(bytes), what)
}

/// As [`decode`], of `body[start..]`, where `body` is a received frame's body: each
/// [`SharedBytes`] in the value becomes a view of `body` rather than a copy.
///
/// # Panics
///
/// If `start` is beyond `body`'s end.
pub(crate) fn decode_shared<T: DeserializeOwned>(
    body: &Bytes,
    start: usize,
    what: impl fmt::Display,
) -> Result<T, RpcError> {
    decode_with(de::Decoder::shared(body, &body[start..]), what)
}

fn decode_with<T: DeserializeOwned>(
    mut decoder: de::Decoder<'_>,
    what: impl fmt::Display,
) -> Result<T, RpcError> {
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

    #[test]
    fn a_claimed_2_pow_60_vec_of_units_is_rejected_promptly() {
        // Each `()` takes no bytes: only a cap on such elements stops the loop.
        let reason = rejected_promptly::<Vec<()>>(&claim(1 << 60));
        assert!(reason.contains("take no bytes"), "{reason}");
        rejected_promptly::<Vec<()>>(&claim(u64::MAX));
        rejected_promptly::<Vec<((), [u8; 0])>>(&claim(1 << 60));
        rejected_promptly::<BTreeMap<(), ()>>(&claim(1 << 60));
        rejected_promptly::<std::collections::HashSet<()>>(&claim(1 << 60));
        // Many inner vectors that each claim just under the cap share one budget.
        let mut bytes = vec![100];
        for _ in 0..100 {
            bytes.extend_from_slice(&claim(MAX_EMPTY_ELEMENTS as u64 - 1));
        }
        rejected_promptly::<Vec<Vec<()>>>(&bytes);
        // In a struct field, behind an option, in an enum variant.
        rejected_promptly::<(u8, Option<Vec<()>>)>(
            &[[7u8, 1].as_slice(), &claim(1 << 60)].concat(),
        );
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum Units {
            A,
            B(Vec<()>),
        }
        rejected_promptly::<Units>(&[[1u8].as_slice(), &claim(1 << 60)].concat());
    }

    #[test]
    fn units_up_to_the_cap_still_decode() {
        let ok: Vec<()> = decode(&claim(MAX_EMPTY_ELEMENTS as u64), "units").expect("decode");
        assert_eq!(ok.len(), MAX_EMPTY_ELEMENTS);
        round_trip(vec![(); 1000]);
        // Elements that take bytes fit in the allowance of one per input byte.
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Tagged {
            n: u8,
            unit: (),
        }
        let many: Vec<Tagged> = (0..2 * MAX_EMPTY_ELEMENTS)
            .map(|_| Tagged { n: 1, unit: () })
            .collect();
        round_trip(many);
    }

    #[test]
    fn every_varint_tag_at_every_width_is_a_value_or_an_error() {
        fn check<T: DeserializeOwned + Debug>(bytes: &[u8]) {
            let _ = decode::<T>(bytes, "v");
            let _ = decode::<Vec<T>>(&[[1u8].as_slice(), bytes].concat(), "v");
            let _ = decode::<Option<T>>(&[[1u8].as_slice(), bytes].concat(), "v");
        }
        for tag in 251..=255u8 {
            for extra in [0usize, 1, 2, 4, 8, 16, 17] {
                let mut bytes = vec![tag];
                bytes.extend(std::iter::repeat_n(0xffu8, extra));
                check::<u16>(&bytes);
                check::<i16>(&bytes);
                check::<u32>(&bytes);
                check::<i32>(&bytes);
                check::<u64>(&bytes);
                check::<i64>(&bytes);
                check::<u128>(&bytes);
                check::<i128>(&bytes);
                check::<usize>(&bytes);
                check::<String>(&bytes);
                check::<Message>(&bytes);
            }
            // A length tag wider than u64 is an error, not a truncation to 64 bits.
            let reason =
                decode_err::<String>(&[tag, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert!(
                tag < 254 || reason.contains("varint tag"),
                "{tag}: {reason}"
            );
        }
        let n = u128::from_le_bytes([254; 16]);
        assert_eq!(decode::<u128>(&[254; 17], "v").expect("u128"), n);
        assert_eq!(
            decode::<i128>(&[254; 17], "v").expect("i128"),
            (n >> 1) as i128
        );
        // Bytes that are no `char`: a surrogate, above U+10FFFF, a lone continuation.
        for bytes in [
            &[0xed, 0xa0, 0x80][..],
            &[0xf4, 0x90, 0x80, 0x80],
            &[0x80],
            &[0xc3],
        ] {
            decode_err::<char>(bytes);
            decode_err::<(u8, char)>(&[[1u8].as_slice(), bytes].concat());
        }
        // NaN is a value like any other.
        let nan: f64 = decode(&f64::NAN.to_le_bytes(), "v").expect("f64");
        assert!(nan.is_nan());
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

/// Wire compatibility with bincode 2.0.1 (`bincode::serde`, `standard()`), which peers
/// built before this codec use, and the cost of a byte payload against it.
#[cfg(test)]
mod bincode_reference {
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::io::Write;
    use std::time::Instant;

    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::*;

    fn reference<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("bincode")
    }

    fn reference_decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .ok()
            .filter(|(_, read)| *read == bytes.len())
            .map(|(value, _)| value)
    }

    /// Our bytes are bincode's; ours decode bincode's to the same value; every proper
    /// prefix is rejected; and bincode decodes ours.
    fn same_as_bincode<T>(value: &T) -> Result<(), TestCaseError>
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let ours = encode(value, "v").expect("encode");
        let theirs = reference(value);
        prop_assert_eq!(&ours, &theirs, "bytes of {:?}", value);
        let back: T = decode(&theirs, "v").expect("decode bincode's bytes");
        prop_assert_eq!(&back, value);
        let decoded = reference_decode::<T>(&ours);
        prop_assert_eq!(decoded.as_ref(), Some(value));
        for len in 0..theirs.len() {
            prop_assert!(decode::<T>(&theirs[..len], "v").is_err(), "prefix {}", len);
        }
        Ok(())
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Newtype(i64),
        Tuple(u16, char, Option<bool>),
        Struct {
            name: String,
            #[serde(with = "serde_bytes")]
            bytes: Vec<u8>,
            raw: Vec<u8>,
        },
        Nested(Box<Option<Self>>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapper(u32);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        id: u128,
        delta: i128,
        ratio: f64,
        small: f32,
        tiny: i8,
        flags: (bool, u8),
        wrapper: Wrapper,
        unit: (),
        shapes: Vec<Shape>,
        index: BTreeMap<String, Option<i32>>,
        buf: serde_bytes::ByteBuf,
    }

    /// Integers around every varint boundary.
    fn boundaries() -> Vec<u128> {
        let mut out = Vec::new();
        for edge in [0u128, 250, 251, 1 << 16, 1 << 32, 1 << 64] {
            for delta in [-2i128, -1, 0, 1, 2] {
                if let Ok(v) = u128::try_from(edge as i128 + delta) {
                    out.push(v);
                }
            }
        }
        out.extend([u128::MAX - 1, u128::MAX]);
        out
    }

    #[test]
    fn integers_at_varint_boundaries_are_bincodes() {
        for v in boundaries() {
            same_as_bincode(&v).expect("u128");
            same_as_bincode(&(v as i128)).expect("i128");
            same_as_bincode(&-(v as i128)).expect("-i128");
            same_as_bincode(&(v as u64)).expect("u64");
            same_as_bincode(&(v as i64)).expect("i64");
            same_as_bincode(&(v as u32)).expect("u32");
            same_as_bincode(&(v as i32)).expect("i32");
            same_as_bincode(&(v as u16)).expect("u16");
            same_as_bincode(&(v as i16)).expect("i16");
            same_as_bincode(&(v as u8)).expect("u8");
            same_as_bincode(&(v as i8)).expect("i8");
            same_as_bincode(&(v as usize)).expect("usize");
        }
        for v in [i64::MIN, i64::MIN + 1, i64::MAX] {
            same_as_bincode(&v).expect("i64");
        }
        same_as_bincode(&i128::MIN).expect("i128");
    }

    #[test]
    fn varints_are_read_as_bincode_reads_them() {
        // Not the shortest form: bincode accepts it, so do we.
        for bytes in [
            vec![251, 5, 0],
            vec![252, 5, 0, 0, 0],
            vec![253, 5, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(decode::<u64>(&bytes, "v").expect("u64"), 5);
            assert_eq!(reference_decode::<u64>(&bytes), Some(5));
        }
        // A tag wider than the type, and the reserved tag, are errors in both.
        type Check = fn(&[u8]) -> (bool, bool);
        let cases: [(&[u8], Check); 4] = [
            (&[252, 1, 0, 0, 0], |b| {
                (
                    decode::<u16>(b, "v").is_err(),
                    reference_decode::<u16>(b).is_none(),
                )
            }),
            (&[253, 1, 0, 0, 0, 0, 0, 0, 0], |b| {
                (
                    decode::<u32>(b, "v").is_err(),
                    reference_decode::<u32>(b).is_none(),
                )
            }),
            (
                &[254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                |b| {
                    (
                        decode::<u64>(b, "v").is_err(),
                        reference_decode::<u64>(b).is_none(),
                    )
                },
            ),
            (&[255, 1], |b| {
                (
                    decode::<u128>(b, "v").is_err(),
                    reference_decode::<u128>(b).is_none(),
                )
            }),
        ];
        for (bytes, check) in cases {
            assert_eq!(check(bytes), (true, true), "{bytes:?}");
        }
        let reason = decode::<u16>(&[252, 1, 0, 0, 0], "v").expect_err("u16");
        assert!(reason.to_string().contains("varint tag 252"), "{reason}");
    }

    #[test]
    fn deserialize_any_is_a_clear_error() {
        #[derive(Debug, Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Untagged {
            A(u8),
            B(String),
        }
        match decode::<Untagged>(&[1], "untagged") {
            Err(RpcError::Decode { reason, .. }) => {
                assert!(
                    reason.contains("deserialize_any is not supported"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_claimed_1_tib_inside_a_map_or_struct_is_rejected_promptly() {
        let mut claim = vec![253];
        claim.extend_from_slice(&(1u64 << 40).to_le_bytes());
        // A map of one entry whose key claims 1 TiB.
        let bytes = [&[1u8][..], &claim, b"abc"].concat();
        assert!(decode::<BTreeMap<String, u8>>(&bytes, "map").is_err());
        // A struct's third field (a Vec<u8>, serde's visitor preallocates by the hint).
        let bytes = [&[3u8, 1, b'n', 0][..], &claim, b"abc"].concat();
        assert!(decode::<Shape>(&bytes, "shape").is_err());
        // And a ByteBuf / Bytes.
        assert!(decode::<serde_bytes::ByteBuf>(&claim, "buf").is_err());
        assert!(decode::<Bytes>(&claim, "bytes").is_err());
    }

    #[test]
    fn byte_payload_types_take_the_bytes_path() {
        let payload: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let buf = serde_bytes::ByteBuf::from(payload.clone());
        let shared = Bytes::from(payload.clone());
        // All three are the length, then the bytes: interchangeable on the wire.
        let expected = reference(&payload);
        assert_eq!(encode(&buf, "buf").expect("encode"), expected);
        assert_eq!(encode(&shared, "bytes").expect("encode"), expected);
        assert_eq!(
            decode::<serde_bytes::ByteBuf>(&expected, "buf").expect("buf"),
            buf
        );
        assert_eq!(decode::<Bytes>(&expected, "bytes").expect("bytes"), shared);
        assert_eq!(decode::<Vec<u8>>(&expected, "vec").expect("vec"), payload);
    }

    #[test]
    fn encode_into_reserves_exactly_once() {
        let payload = serde_bytes::ByteBuf::from(vec![7u8; 100_000]);
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(b"header");
        encode_into(&payload, &mut out, "payload").expect("encode");
        assert_eq!(out.len(), 6 + 5 + 100_000);
        assert_eq!(out.capacity(), out.len());
        let raw = vec![7u8; 100_000];
        let mut out = b"header".to_vec();
        encode_into(&raw, &mut out, "payload").expect("encode");
        assert_eq!(out.capacity(), out.len());
    }

    // `prop_oneof!` builds its union with `std::sync::Arc`.
    #[allow(clippy::disallowed_types)]
    fn arb_shape() -> impl Strategy<Value = Shape> {
        let leaf = prop_oneof![
            Just(Shape::Unit),
            any::<i64>().prop_map(Shape::Newtype),
            (any::<u16>(), any::<char>(), any::<Option<bool>>())
                .prop_map(|(a, b, c)| Shape::Tuple(a, b, c)),
            (
                ".*",
                prop::collection::vec(any::<u8>(), 0..300),
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(name, bytes, raw)| Shape::Struct { name, bytes, raw }),
        ];
        leaf.prop_recursive(4, 16, 2, |inner| {
            prop::option::of(inner).prop_map(|s| Shape::Nested(Box::new(s)))
        })
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            (
                any::<u128>(),
                any::<i128>(),
                any::<f64>(),
                any::<f32>(),
                any::<i8>(),
            ),
            (any::<bool>(), any::<u8>(), any::<u32>()),
            prop::collection::vec(arb_shape(), 0..4),
            prop::collection::btree_map(".{0,8}", any::<Option<i32>>(), 0..4),
            prop::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(
                |((id, delta, ratio, small, tiny), (b, u, w), shapes, index, buf)| Record {
                    id,
                    delta,
                    ratio: if ratio.is_nan() { 0.5 } else { ratio },
                    small: if small.is_nan() { 0.25 } else { small },
                    tiny,
                    flags: (b, u),
                    wrapper: Wrapper(w),
                    unit: (),
                    shapes,
                    index,
                    buf: serde_bytes::ByteBuf::from(buf),
                },
            )
    }

    proptest! {
        #[test]
        fn scalars_are_bincodes(
            v in (any::<u64>(), any::<i64>(), any::<u32>(), any::<i32>(), any::<u16>(), any::<i16>()),
            w in (any::<u128>(), any::<i128>(), any::<char>(), any::<bool>(), ".*"),
            shift in 0u32..64,
        ) {
            same_as_bincode(&v)?;
            same_as_bincode(&w)?;
            // Small values too: every varint width is reached.
            same_as_bincode(&(v.0 >> shift, v.1 >> shift, v.2 >> (shift % 32)))?;
        }

        #[test]
        fn structures_are_bincodes(record in arb_record()) {
            same_as_bincode(&record)?;
        }

        #[test]
        fn shapes_are_bincodes(shapes in prop::collection::vec(arb_shape(), 0..8)) {
            same_as_bincode(&shapes)?;
            same_as_bincode(&Some(shapes))?;
        }

        #[test]
        fn arbitrary_bytes_decode_as_bincode_decodes_them(
            bytes in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            // Where bincode (which has no limits of its own to hit on inputs this
            // short) accepts bytes, we decode the same value; where it refuses, so do we.
            prop_assert_eq!(decode::<Shape>(&bytes, "v").ok(), reference_decode::<Shape>(&bytes));
            prop_assert_eq!(
                decode::<(u16, i32, Option<char>)>(&bytes, "v").ok(),
                reference_decode::<(u16, i32, Option<char>)>(&bytes)
            );
        }
    }

    /// The cost of a byte payload in the codec, in ns per byte: encode and decode of
    /// 16 MiB as `Vec<u8>` and as `serde_bytes::ByteBuf`, bincode's serde path against
    /// this codec, alternating rounds in one process. Run with
    /// `cargo test --release --lib codec_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: run it on its own, in release mode"]
    fn codec_cost_of_16_mib_payloads() {
        const LEN: usize = 16 << 20;
        const ROUNDS: usize = 5;
        fn time(f: impl Fn()) -> f64 {
            let start = Instant::now();
            f();
            start.elapsed().as_nanos() as f64 / LEN as f64
        }
        fn median(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        }
        fn measure<T: Serialize + DeserializeOwned + PartialEq>(label: &str, value: &T) {
            let bytes = encode(value, "v").expect("encode");
            let (mut old_enc, mut new_enc, mut old_dec, mut new_dec) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                old_enc.push(time(|| drop(std::hint::black_box(reference(value)))));
                new_enc.push(time(|| drop(std::hint::black_box(encode(value, "v")))));
                old_dec.push(time(|| {
                    let v: T = reference_decode(&bytes).expect("decode");
                    drop(std::hint::black_box(v));
                }));
                new_dec.push(time(|| {
                    let v: T = decode(&bytes, "v").expect("decode");
                    drop(std::hint::black_box(v));
                }));
            }
            let (oe, ne, od, nd) = (
                median(old_enc),
                median(new_enc),
                median(old_dec),
                median(new_dec),
            );
            let mut report = std::io::stderr().lock();
            let _ = writeln!(
                report,
                "{label}: encode bincode {oe:.3} ns/B, ours {ne:.3} ns/B ({:.1}x); \
                 decode bincode {od:.3} ns/B, ours {nd:.3} ns/B ({:.1}x)",
                oe / ne,
                od / nd
            );
        }
        let payload = vec![0xa5u8; LEN];
        measure("Vec<u8>", &payload);
        measure("ByteBuf", &serde_bytes::ByteBuf::from(payload));
    }
}
