//! The serde `Serializer` of bincode 2.0.1's `standard()` format, writing into a
//! `Vec<u8>` (or counting the bytes it would write, for an exact reservation).
//!
//! The format, as `bincode::serde::encode_to_vec(.., standard())` writes it:
//!
//! | value | bytes |
//! |---|---|
//! | `u8`, `i8` | the byte |
//! | `bool` | `0` or `1` |
//! | `u16`, `u32`, `u64`, `usize` | varint: below 251 one byte; else `251` and a LE `u16`, `252` and a LE `u32`, `253` and a LE `u64`, the smallest that holds it |
//! | `u128` | as `u64`, or `254` and a LE `u128` |
//! | `i16` … `i128` | zigzag (`0, -1, 1, -2, …` as `0, 1, 2, 3, …`), then as the unsigned type |
//! | `f32`, `f64` | little endian IEEE 754 |
//! | `char` | its UTF-8 bytes (1 to 4, no length) |
//! | `str`, bytes | varint length, then the bytes |
//! | `Option` | `0`, or `1` then the value |
//! | unit, unit struct | nothing |
//! | enum variant | varint variant index (`u32`), then its fields |
//! | sequence, map | varint length, then the elements (key, value, key, …) |
//! | tuple, struct, newtype | the fields in order |

use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::ser::{
    self, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant,
};

use super::{Error, shared};

/// Where an [`Encoder`] puts bytes.
pub(super) trait Output: Default {
    /// Appends one byte.
    fn push(&mut self, byte: u8);
    /// Appends `bytes`.
    fn extend(&mut self, bytes: &[u8]);

    /// Appends the bytes of a byte string (after its length): as [`extend`](Self::extend),
    /// unless the output splices a lent [`SharedBytes`](super::SharedBytes) instead.
    #[inline]
    fn byte_string(&mut self, bytes: &[u8]) {
        self.extend(bytes);
    }
}

impl Output for Vec<u8> {
    #[inline]
    fn push(&mut self, byte: u8) {
        Self::push(self, byte);
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the bytes instead of writing them: all of them, and those a [`Splicer`] would
/// splice rather than copy.
#[derive(Debug, Default)]
pub(super) struct Counter {
    pub(super) total: usize,
    /// Bytes of lent [`SharedBytes`](super::SharedBytes) (counted in `total` too).
    pub(super) lent: usize,
    /// Whether lent bytes are counted in `lent` (a count for a [`Splicer`]).
    pub(super) splicing: bool,
}

impl Output for Counter {
    #[inline]
    fn push(&mut self, _: u8) {
        self.total += 1;
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
    }

    fn byte_string(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        if self.splicing && shared::is_lent(bytes) {
            self.lent += bytes.len();
        }
    }
}

/// Writes into a buffer, except lent [`SharedBytes`](super::SharedBytes) (those of at
/// least [`SPLICE_MIN`](shared::SPLICE_MIN) bytes), which it records as pieces to go on
/// the wire at their place instead of copying them.
#[derive(Debug, Default)]
pub(super) struct Splicer {
    pub(super) bytes: Vec<u8>,
    /// `(at, piece)`: `piece` goes before `bytes[at..]`.
    pub(super) spliced: Vec<(usize, Bytes)>,
}

impl Output for Splicer {
    #[inline]
    fn push(&mut self, byte: u8) {
        self.bytes.push(byte);
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn byte_string(&mut self, bytes: &[u8]) {
        match shared::take_lent(bytes) {
            Some(piece) => self.spliced.push((self.bytes.len(), piece)),
            None => self.bytes.extend_from_slice(bytes),
        }
    }
}

/// Varint tags: the value follows as a little-endian u16, u32, u64, u128.
pub(super) const U16_TAG: u8 = 251;
pub(super) const U32_TAG: u8 = 252;
pub(super) const U64_TAG: u8 = 253;
pub(super) const U128_TAG: u8 = 254;

/// bincode's varint of an unsigned integer up to 64 bits.
#[inline]
fn varint<O: Output>(out: &mut O, v: u64) {
    if v < u64::from(U16_TAG) {
        out.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(U16_TAG);
        out.extend(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(U32_TAG);
        out.extend(&v.to_le_bytes());
    } else {
        out.push(U64_TAG);
        out.extend(&v.to_le_bytes());
    }
}

/// bincode's varint of a `u128`.
fn varint_u128<O: Output>(out: &mut O, v: u128) {
    match u64::try_from(v) {
        Ok(v) => varint(out, v),
        Err(_) => {
            out.push(U128_TAG);
            out.extend(&v.to_le_bytes());
        }
    }
}

/// Zigzag: 0, -1, 1, -2, … as 0, 1, 2, 3, ….
#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn zigzag_i128(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

/// The serializer: writes each value to `out` as bincode `standard()` does.
#[derive(Debug)]
pub(super) struct Encoder<'o, O> {
    pub(super) out: &'o mut O,
}

impl<O: Output> Encoder<'_, O> {
    /// Starts a sequence or map of `len` elements (entries): writes the length, then
    /// hands the output to the [`Compound`] that writes the elements.
    #[inline]
    fn compound<'a>(&'a mut self, len: Option<usize>) -> Result<Compound<'a, O>, Error> {
        let len = len.ok_or_else(|| {
            Error::new("a sequence or map must know its length before its first element")
        })?;
        varint(self.out, len as u64);
        Ok(Compound::new(self.out))
    }
}

impl<'a, O: Output> ser::Serializer for &'a mut Encoder<'_, O> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a, O>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Compound<'a, O>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push(u8::from(v));
        Ok(())
    }

    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.out.push(v as u8);
        Ok(())
    }

    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        varint(self.out, zigzag(v.into()));
        Ok(())
    }

    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        varint(self.out, zigzag(v.into()));
        Ok(())
    }

    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        varint(self.out, zigzag(v));
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        varint_u128(self.out, zigzag_i128(v));
        Ok(())
    }

    /// One byte: a push, so a `Vec<u8>` (which serde hands over element by element)
    /// costs a push per byte.
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.out.push(v);
        Ok(())
    }

    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        varint(self.out, v.into());
        Ok(())
    }

    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        varint(self.out, v.into());
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        varint(self.out, v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        varint_u128(self.out, v);
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.out.extend(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.out.extend(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.out.extend(v.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        varint(self.out, v.len() as u64);
        self.out.extend(v.as_bytes());
        Ok(())
    }

    /// The length, then the bytes in one copy.
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        varint(self.out, v.len() as u64);
        self.out.byte_string(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.out.push(0);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.out.push(1);
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        variant_index: u32,
        _: &'static str,
    ) -> Result<(), Error> {
        self.serialize_u32(variant_index)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        variant_index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        varint(self.out, variant_index.into());
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'a, O>, Error> {
        self.compound(len)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        variant_index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        varint(self.out, variant_index.into());
        Ok(self)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a, O>, Error> {
        self.compound(len)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        variant_index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        varint(self.out, variant_index.into());
        Ok(self)
    }

    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.serialize_str(&value.to_string())
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence or the entries of a map.
///
/// It writes into the output moved out of `parent`, and moves it back when serde drops
/// it (after `end`, or on an error). serde's loop holds it by value, so the output's
/// pointer and length can live in registers: a `Vec<u8>` costs a compare and a store per
/// byte, instead of reloading and storing the `Vec`'s length around every byte (a `u8`
/// store may alias anything, so the compiler cannot keep a length behind a `&mut` in a
/// register).
#[derive(Debug)]
pub(super) struct Compound<'a, O: Output> {
    parent: &'a mut O,
    out: O,
}

impl<'a, O: Output> Compound<'a, O> {
    #[inline]
    fn new(parent: &'a mut O) -> Self {
        let out = std::mem::take(parent);
        Self { parent, out }
    }
}

impl<O: Output> Drop for Compound<'_, O> {
    #[inline]
    fn drop(&mut self) {
        *self.parent = std::mem::take(&mut self.out);
    }
}

/// A serializer of compound values: each element (field, key, value) is written with
/// the encoder it gives.
trait Elements<O> {
    fn encoder(&mut self) -> Encoder<'_, O>;
}

/// Tuples and structs write their fields to the encoder's output.
impl<O> Elements<O> for &mut Encoder<'_, O> {
    #[inline]
    fn encoder(&mut self) -> Encoder<'_, O> {
        Encoder { out: self.out }
    }
}

/// Sequences and maps write their elements to the output the [`Compound`] holds.
impl<O: Output> Elements<O> for Compound<'_, O> {
    #[inline]
    fn encoder(&mut self) -> Encoder<'_, O> {
        Encoder { out: &mut self.out }
    }
}

/// Implements serde's compound traits: each element is the next value (a field's name,
/// `[&'static str]`, is not written), nothing at the end.
macro_rules! compound {
    ($($self_ty:ty: $trait:ident { $($method:ident $([$name:ty])?)* })*) => {$(
        impl<O: Output> $trait for $self_ty {
            type Ok = ();
            type Error = Error;

            $(
                #[inline]
                fn $method<T: Serialize + ?Sized>(
                    &mut self,
                    $(_: $name,)?
                    value: &T,
                ) -> Result<(), Error> {
                    value.serialize(&mut self.encoder())
                }
            )*

            #[inline]
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )*};
}

compound! {
    &mut Encoder<'_, O>: SerializeTuple { serialize_element }
    &mut Encoder<'_, O>: SerializeTupleStruct { serialize_field }
    &mut Encoder<'_, O>: SerializeTupleVariant { serialize_field }
    &mut Encoder<'_, O>: SerializeStruct { serialize_field [&'static str] }
    &mut Encoder<'_, O>: SerializeStructVariant { serialize_field [&'static str] }
    Compound<'_, O>: SerializeSeq { serialize_element }
    Compound<'_, O>: SerializeMap { serialize_key serialize_value }
}
