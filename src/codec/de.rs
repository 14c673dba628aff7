//! The serde `Deserializer` of bincode 2.0.1's `standard()` format (see `ser` for the
//! format), reading a byte slice and borrowing strings and bytes from it.
//!
//! It accepts what bincode 2.0.1 accepts (a varint need not be in its shortest form, but
//! its tag must fit the type: `252` is no `u16`) and is safe on untrusted input by
//! construction:
//!
//! - nothing is allocated here: a string or byte string is borrowed from the input once
//!   its claimed length is checked against what is left (a `String` or `ByteBuf` then
//!   copies it at its true length);
//! - the size hint of a sequence or map is at most the number of input bytes left, so a
//!   collection never preallocates for more elements than the input can hold (serde caps
//!   it at 1 MiB on top);
//! - nesting deeper than [`MAX_DEPTH`] is an error, not a stack overflow;
//! - the sequences and maps of one decode claim at most one element per input byte plus
//!   [`MAX_EMPTY_ELEMENTS`] (elements that take no bytes, such as `()`), so a `Vec<()>`
//!   that claims 2^60 elements is an error rather than 2^60 turns of a loop;
//! - `deserialize_any`, `deserialize_identifier` and `deserialize_ignored_any` are errors:
//!   the format does not describe itself.

use bytes::Bytes;
use serde::de::{
    self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};

use super::Error;
use super::ser::{U16_TAG, U32_TAG, U64_TAG, U128_TAG};
use super::shared;
use super::{MAX_DEPTH, MAX_EMPTY_ELEMENTS};

/// The deserializer: `input` is what is left to read.
#[derive(Debug)]
pub(super) struct Decoder<'de> {
    pub(super) input: &'de [u8],
    /// The buffer `input` lies in, when it is a received frame's body that views may
    /// share: a [`shared::SharedBytes`] then becomes a view of it instead of a copy.
    owner: Option<&'de Bytes>,
    /// How many sequences, maps, options, newtypes and variants hold the current value.
    depth: usize,
    /// How many more elements the sequences and maps still to come may claim: one per
    /// input byte plus [`MAX_EMPTY_ELEMENTS`] (elements that take no bytes).
    claims_left: usize,
}

/// The error of input that ends `missing` bytes too early.
fn truncated(missing: usize) -> Error {
    Error::new(format!("truncated: at least {missing} more bytes needed"))
}

impl<'de> Decoder<'de> {
    pub(super) fn new(input: &'de [u8]) -> Self {
        Self {
            input,
            owner: None,
            depth: 0,
            claims_left: MAX_EMPTY_ELEMENTS.saturating_add(input.len()),
        }
    }

    /// Decodes `input`, a part of `owner`, lending views of `owner` to `SharedBytes`.
    pub(super) fn shared(owner: &'de Bytes, input: &'de [u8]) -> Self {
        Self {
            owner: Some(owner),
            ..Self::new(input)
        }
    }

    /// The next byte.
    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        match self.input.split_first() {
            Some((&byte, rest)) => {
                self.input = rest;
                Ok(byte)
            }
            None => Err(truncated(1)),
        }
    }

    /// The next `len` bytes, borrowed; checked against what is left first.
    #[inline]
    fn take(&mut self, len: usize) -> Result<&'de [u8], Error> {
        if len > self.input.len() {
            return Err(truncated(len - self.input.len()));
        }
        let (taken, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(taken)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A varint of an unsigned type whose widest tag is `max_tag` (`U16_TAG` for `u16`, …).
    #[inline]
    fn varint(&mut self, max_tag: u8, ty: &str) -> Result<u64, Error> {
        let tag = self.byte()?;
        if tag < U16_TAG {
            return Ok(tag.into());
        }
        if tag > max_tag {
            return Err(Error::new(format!("invalid varint tag {tag} for a {ty}")));
        }
        Ok(match tag {
            U16_TAG => u16::from_le_bytes(self.array()?).into(),
            U32_TAG => u32::from_le_bytes(self.array()?).into(),
            _ => u64::from_le_bytes(self.array()?),
        })
    }

    fn varint_u128(&mut self, ty: &str) -> Result<u128, Error> {
        if self.input.first() == Some(&U128_TAG) {
            self.input = &self.input[1..];
            return Ok(u128::from_le_bytes(self.array()?));
        }
        if self.input.first() == Some(&255) {
            return Err(Error::new(format!("invalid varint tag 255 for a {ty}")));
        }
        self.varint(U64_TAG, ty).map(u128::from)
    }

    /// A length: a `u64` varint.
    #[inline]
    fn len(&mut self) -> Result<usize, Error> {
        let len = self.varint(U64_TAG, "length")?;
        usize::try_from(len).map_err(|_| Error::new(format!("length {len} is above usize")))
    }

    /// The length of a sequence or map, charged to what the input may still claim: an
    /// element takes at least one byte unless it is empty (`()`, a unit struct), so
    /// beyond one per byte only [`MAX_EMPTY_ELEMENTS`] elements can be real, and a claim
    /// of more is refused before any of them is read. Once per collection, not per
    /// element: the loop of a `Vec<u8>` pays nothing for it.
    fn claimed_len(&mut self) -> Result<usize, Error> {
        let len = self.len()?;
        if len > self.claims_left {
            return Err(Error::new(format!(
                "{len} elements claimed, more than the input can hold (one per byte left, \
                 plus at most {MAX_EMPTY_ELEMENTS} that take no bytes)"
            )));
        }
        self.claims_left -= len;
        Ok(len)
    }

    /// A string or byte string: its length, then its bytes, borrowed.
    #[inline]
    fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let len = self.len()?;
        self.take(len)
    }

    fn str(&mut self) -> Result<&'de str, Error> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|err| Error::new(format!("invalid UTF-8 in a string: {err}")))
    }

    /// Runs `f` one level deeper; fails beyond [`MAX_DEPTH`].
    #[inline]
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::new(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// The elements of a sequence, tuple or struct of `len` elements.
    fn seq<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_seq(Access::new(de, len)))
    }
}

/// Zigzag back: 0, 1, 2, 3, … as 0, -1, 1, -2, ….
#[inline]
fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn unzigzag_i128(n: u128) -> i128 {
    ((n >> 1) as i128) ^ -((n & 1) as i128)
}

/// The number of bytes of a UTF-8 sequence that begins with `first`; 0 if none does.
fn utf8_width(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::new(
            "deserialize_any is not supported: the format does not describe itself \
             (untagged enums, flatten and skip_serializing_if cannot be decoded)",
        ))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            other => Err(Error::new(format!("invalid bool {other}"))),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i8(self.byte()? as i8)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i16(unzigzag(self.varint(U16_TAG, "i16")?) as i16)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i32(unzigzag(self.varint(U32_TAG, "i32")?) as i32)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(unzigzag(self.varint(U64_TAG, "i64")?))
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i128(unzigzag_i128(self.varint_u128("i128")?))
    }

    /// A bounds-checked read of one byte: what each element of a `Vec<u8>` costs.
    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u8(self.byte()?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u16(self.varint(U16_TAG, "u16")? as u16)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u32(self.varint(U32_TAG, "u32")? as u32)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(self.varint(U64_TAG, "u64")?)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u128(self.varint_u128("u128")?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f32(f32::from_le_bytes(self.array()?))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(f64::from_le_bytes(self.array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let first = self.byte()?;
        let width = utf8_width(first);
        if width == 0 {
            return Err(Error::new(format!("invalid char: first byte {first:#x}")));
        }
        let mut utf8 = [first, 0, 0, 0];
        utf8[1..width].copy_from_slice(self.take(width - 1)?);
        match std::str::from_utf8(&utf8[..width]).map(|s| s.chars().next()) {
            Ok(Some(c)) => visitor.visit_char(c),
            _ => Err(Error::new(format!("invalid char: {:x?}", &utf8[..width]))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }

    /// Borrowed, so checked against what is left before the visitor allocates.
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }

    /// One borrow of the input: a `ByteBuf` or `bytes::Bytes` then copies it in one go.
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => self.nested(|de| visitor.visit_some(de)),
            other => Err(Error::new(format!("invalid Option tag {other}"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    /// A newtype is its content. `shared::NAME` (a `SharedBytes`) with an owning buffer:
    /// the byte string's bytes are offered to the visitor as a view of that buffer.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if let Some(owner) = self.owner.filter(|_| name == shared::NAME) {
            let bytes = self.bytes()?;
            return shared::offer(owner.slice_ref(bytes), || {
                visitor.visit_borrowed_bytes(bytes)
            });
        }
        self.nested(|de| visitor.visit_newtype_struct(de))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.claimed_len()?;
        self.seq(len, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.seq(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.seq(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.claimed_len()?;
        self.nested(|de| visitor.visit_map(Access::new(de, len)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.seq(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::new(
            "identifiers are not supported: enum variants are sent as their index",
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::new(
            "ignored values are not supported: the format does not describe itself",
        ))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
///
/// It reads from a copy of the decoder, which it hands back to `parent` when the visitor
/// drops it. The visitor holds it by value, so the copy can live in registers: the loop of
/// a `Vec<u8>` is then a compare, a load and a push per byte, instead of reloading and
/// storing the decoder's position around every byte it pushes (a `u8` store may alias
/// anything, so the compiler cannot keep a position behind a `&mut` in a register).
struct Access<'a, 'de> {
    parent: &'a mut Decoder<'de>,
    de: Decoder<'de>,
    /// Elements (or entries) still to come.
    left: usize,
}

impl<'a, 'de> Access<'a, 'de> {
    #[inline]
    fn new(parent: &'a mut Decoder<'de>, left: usize) -> Self {
        let de = Decoder {
            input: parent.input,
            owner: parent.owner,
            depth: parent.depth,
            claims_left: parent.claims_left,
        };
        Self { parent, de, left }
    }
}

impl Drop for Access<'_, '_> {
    #[inline]
    fn drop(&mut self) {
        self.parent.input = self.de.input;
        self.parent.claims_left = self.de.claims_left;
    }
}

impl<'de> SeqAccess<'de> for Access<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut self.de).map(Some)
    }

    /// At most the bytes left: no element takes less than a byte that allocates.
    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len()))
    }
}

impl<'de> MapAccess<'de> for Access<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut self.de).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len()))
    }
}

impl<'de> EnumAccess<'de> for &mut Decoder<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self), Error> {
        let index = self.varint(U32_TAG, "variant index")? as u32;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for &mut Decoder<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        self.nested(|de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.seq(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.seq(fields.len(), visitor)
    }
}
