//! Values ⇄ bytes: the one place in the crate that calls `bincode`.
//!
//! Every message body, reply and envelope header is serialized here with serde and
//! bincode 2's `standard` configuration: integers are variable-length (varint), little
//! endian, and there is no size limit. A decode must consume all of its bytes; anything
//! left over is an error.
//!
//! # Untrusted bytes
//!
//! Bytes come from peers, so decoding never allocates what the bytes merely claim: a
//! length prefix is believed only as far as the bytes that follow it bear it out.
//! bincode 2.0.1 does not ensure that on its own. Its serde decoder (`decode_from_slice`
//! is just `borrow_decode_from_slice`) answers `deserialize_string` and
//! `deserialize_byte_buf`, which `String` (and `PathBuf`, `serde_bytes::ByteBuf`, …)
//! ask for, with its owned `Vec<u8>` decoding, which allocates the claimed length before
//! reading a byte: a 20-byte buffer claiming a 1 TiB string aborts the process.
//! So [`decode`] puts a [`Bounded`] adapter between bincode and the value's
//! `Deserialize`:
//!
//! - it turns `deserialize_string` into `deserialize_str` and `deserialize_byte_buf` into
//!   `deserialize_bytes`, which bincode answers by borrowing from the input slice; a
//!   claimed length longer than what is left fails before anything is allocated, and the
//!   string is then copied at its true length;
//! - it caps the size hint of every sequence and map at the input's length, so on top
//!   of serde's own cap (1 MiB of preallocation per collection) a collection never
//!   preallocates more elements than there are input bytes;
//! - it stops at [`MAX_DEPTH`] levels of nesting, so deeply nested input of a recursive
//!   type is a decode error rather than a stack overflow.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::error::RpcError;

/// The deepest nesting [`decode`] accepts; each struct, enum variant, `Option`, newtype,
/// sequence element and map entry is one level.
const MAX_DEPTH: usize = 256;

/// The bincode configuration of every value: varint integers, little endian, no limit.
fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Serializes `value`; `what` names it in errors (e.g. "message for endpoint echo"). It
/// is rendered only for an error, so callers pass `format_args!` on the hot path.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    what: impl fmt::Display,
) -> Result<Vec<u8>, RpcError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|err| encode_error(what, err))
}

/// Appends the serialization of `value` to `out` (used to write an envelope header then
/// the content in one buffer); `what` names it in errors. On error `out` is left as it
/// was.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    what: impl fmt::Display,
) -> Result<(), RpcError> {
    let start = out.len();
    match bincode::serde::encode_into_std_write(value, out, config()) {
        Ok(_) => Ok(()),
        Err(err) => {
            out.truncate(start);
            Err(encode_error(what, err))
        }
    }
}

/// Deserializes a whole `bytes` as `T`; trailing bytes are an error. `what` names the
/// value in errors.
///
/// Safe on untrusted bytes: see the module documentation.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl fmt::Display,
) -> Result<T, RpcError> {
    let seed = Bounded {
        inner: PhantomData::<T>,
        limits: Limits {
            depth: 0,
            max_hint: bytes.len(),
        },
    };
    let (value, read) = bincode::serde::seed_decode_from_slice(seed, bytes, config())
        .map_err(|err| decode_error(&what, err))?;
    if read != bytes.len() {
        return Err(RpcError::decode(
            what.to_string(),
            format!("{} trailing bytes", bytes.len() - read),
        ));
    }
    Ok(value)
}

fn encode_error(what: impl fmt::Display, err: bincode::error::EncodeError) -> RpcError {
    let reason = match err {
        bincode::error::EncodeError::OtherString(reason) => reason,
        err => err.to_string(),
    };
    RpcError::Encode {
        what: what.to_string(),
        reason,
    }
}

fn decode_error(what: impl fmt::Display, err: bincode::error::DecodeError) -> RpcError {
    let reason = match err {
        bincode::error::DecodeError::UnexpectedEnd { additional } => {
            format!("truncated: at least {additional} more bytes needed")
        }
        bincode::error::DecodeError::OtherString(reason) => reason,
        err => err.to_string(),
    };
    RpcError::decode(what.to_string(), reason)
}

/// What a [`Bounded`] adapter enforces at its level of the value.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// How deep the value being decoded is nested; the top level is 0.
    depth: usize,
    /// The most a collection's size hint may say: the length of the whole input.
    max_hint: usize,
}

impl Limits {
    /// Wraps `inner` at this level.
    fn wrap<T>(self, inner: T) -> Bounded<T> {
        Bounded {
            inner,
            limits: self,
        }
    }

    /// Wraps `inner` one level deeper.
    fn nested<T>(self, inner: T) -> Bounded<T> {
        Bounded {
            inner,
            limits: Self {
                depth: self.depth + 1,
                ..self
            },
        }
    }

    /// Fails when this level is deeper than [`MAX_DEPTH`].
    fn check<E: de::Error>(self) -> Result<(), E> {
        if self.depth > MAX_DEPTH {
            Err(E::custom(format_args!(
                "nested deeper than {MAX_DEPTH} levels"
            )))
        } else {
            Ok(())
        }
    }

    fn cap(self, hint: Option<usize>) -> Option<usize> {
        hint.map(|n| n.min(self.max_hint))
    }
}

/// The adapter of [`decode`] around every serde deserializer, visitor, access and seed
/// of a decode (see the module documentation for what it changes).
#[derive(Debug)]
struct Bounded<T> {
    inner: T,
    limits: Limits,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Bounded<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.limits.check()?;
        self.inner.deserialize(self.limits.wrap(deserializer))
    }
}

/// Forwards `deserialize_*` methods that take only a visitor, wrapping the visitor.
macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(self.limits.wrap(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_bytes deserialize_option deserialize_unit
        deserialize_seq deserialize_map deserialize_identifier deserialize_ignored_any
    }

    /// Borrows from the input instead of letting bincode allocate the claimed length.
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_str(self.limits.wrap(visitor))
    }

    /// Borrows from the input instead of letting bincode allocate the claimed length.
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_bytes(self.limits.wrap(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_unit_struct(name, self.limits.wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_newtype_struct(name, self.limits.wrap(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple(len, self.limits.wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_tuple_struct(name, len, self.limits.wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_struct(name, fields, self.limits.wrap(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_enum(name, variants, self.limits.wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Forwards `visit_*` methods that take a plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Bounded<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool)
        visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64) visit_char(char)
        visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let inner = self.limits.nested(deserializer);
        inner.limits.check()?;
        self.inner.visit_some(inner)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        let inner = self.limits.nested(deserializer);
        inner.limits.check()?;
        self.inner.visit_newtype_struct(inner)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(self.limits.wrap(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(self.limits.wrap(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(self.limits.wrap(data))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Bounded<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(self.limits.nested(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.limits.cap(self.inner.size_hint())
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Bounded<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(self.limits.nested(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(self.limits.nested(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.limits.cap(self.inner.size_hint())
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Bounded<A> {
    type Error = A::Error;
    type Variant = Bounded<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let limits = self.limits;
        let (value, variant) = self.inner.variant_seed(limits.nested(seed))?;
        Ok((value, limits.wrap(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Bounded<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(self.limits.nested(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, self.limits.wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, self.limits.wrap(visitor))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
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
