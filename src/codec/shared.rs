//! [`SharedBytes`]: a byte payload that a received message lends out of its frame.

use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

/// The newtype name [`SharedBytes`] deserializes under: the codec's `Decoder` recognizes
/// it and offers the received frame's bytes through [`OFFERED`] instead of a copy.
pub(super) const NAME: &str = "\0rpcenv::SharedBytes";

/// A [`SharedBytes`] of at least this many bytes (16 KiB) is not copied when rpcenv
/// encodes a message or reply for a connection: its buffer is written to the socket at its
/// place in the frame. Smaller ones cost less to copy than to write as a piece of their own.
pub(crate) const SPLICE_MIN: usize = 16 * 1024;

thread_local! {
    /// The buffer of the [`SharedBytes`] (of at least [`SPLICE_MIN`] bytes) whose
    /// `serialize_bytes` call is under way, for a splicing encoder to take instead of a
    /// copy; emptied when the call returns.
    static LENT: RefCell<Option<Bytes>> = const { RefCell::new(None) };

    /// A view the decoder offers for the bytes it is about to hand to a `SharedBytes`
    /// visitor; taken by that visitor, and cleared by the decoder after the call.
    static OFFERED: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Offers `view` (a view of the same bytes as `f` visits) to the [`SharedBytes`] visitor
/// that `f` calls, and takes it back afterwards if `f` did not use it, even if `f`
/// panics (a view left behind would keep its frame alive).
pub(super) fn offer<T>(view: Bytes, f: impl FnOnce() -> T) -> T {
    /// Empties the slot when dropped.
    struct Withdraw;

    impl Drop for Withdraw {
        fn drop(&mut self) {
            OFFERED.with(|slot| slot.borrow_mut().take());
        }
    }

    OFFERED.with(|slot| *slot.borrow_mut() = Some(view));
    let _withdraw = Withdraw;
    f()
}

/// Lends `bytes` to the encoder that `f` calls (see [`LENT`]), and takes it back
/// afterwards, even if `f` panics.
fn lend<T>(bytes: Bytes, f: impl FnOnce() -> T) -> T {
    /// Empties the slot when dropped.
    struct TakeBack;

    impl Drop for TakeBack {
        fn drop(&mut self) {
            LENT.with(|slot| slot.borrow_mut().take());
        }
    }

    LENT.with(|slot| *slot.borrow_mut() = Some(bytes));
    let _take_back = TakeBack;
    f()
}

/// Whether `bytes` are exactly those of the lent buffer (the same address and length).
fn lent_is(slot: &Option<Bytes>, bytes: &[u8]) -> bool {
    slot.as_ref()
        .is_some_and(|lent| lent.as_ptr() == bytes.as_ptr() && lent.len() == bytes.len())
}

/// Whether `bytes` are those of a lent [`SharedBytes`] (a splicing encoder would take them).
pub(super) fn is_lent(bytes: &[u8]) -> bool {
    bytes.len() >= SPLICE_MIN && LENT.with(|slot| lent_is(&slot.borrow(), bytes))
}

/// The lent buffer, if `bytes` are exactly its bytes.
pub(super) fn take_lent(bytes: &[u8]) -> Option<Bytes> {
    if bytes.len() < SPLICE_MIN {
        return None;
    }
    LENT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if lent_is(&slot, bytes) {
            slot.take()
        } else {
            None
        }
    })
}

/// The offered view if it is one of exactly `bytes` (the same address and length).
fn take_offered(bytes: &[u8]) -> Option<Bytes> {
    OFFERED.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_ref() {
            Some(view) if view.as_ptr() == bytes.as_ptr() && view.len() == bytes.len() => {
                slot.take()
            }
            _ => None,
        }
    })
}

/// A byte payload that, in a message rpcenv received, is a view of the received frame
/// rather than a copy of it: shared, reference counted and immutable (a
/// [`bytes::Bytes`] inside).
///
/// **On the wire** it is a serde byte string (its length as a varint, then the bytes),
/// exactly as `serde_bytes::ByteBuf`, `bytes::Bytes` (serde feature) or a `Vec<u8>` with
/// `#[serde(with = "serde_bytes")]` write it: a field of this type on one side and one of
/// those on the other interoperate, as long as the message types keep the same name (the
/// type check compares names: a reply asked for as `SharedBytes` must be replied as
/// `SharedBytes`).
///
/// **Decoding.** When rpcenv decodes a message or reply that came over a connection, a
/// `SharedBytes` in it takes no copy: it points into the body of the received frame,
/// which the transport read from the socket into its final buffer. Every other decoder
/// (bincode, JSON, rpcenv's own for a message of a local endpoint sent as another type of
/// the same name) copies the bytes once, as for a `ByteBuf`. A message sent to an endpoint
/// of the same env is moved, not encoded, so its `SharedBytes` is the sender's.
///
/// **Encoding (zero-copy send).** When rpcenv encodes a message (`send`, `ask`) or a reply
/// for another env, a `SharedBytes` of at least 16 KiB is not copied into the frame: its
/// length prefix is, and the frame goes to the socket in one vectored write (`writev`) of
/// the header, the encoded bytes and each such buffer at its place. The frame's bytes,
/// its length and what it counts against `rpc.message.maxSize`, `rpc.io.maxQueuedBytes`,
/// flow-control windows and the bytes-sent metrics are exactly those of the copied frame.
/// The `SharedBytes` (a reference count, not a copy) is held by the write queue until the
/// frame is written in full or its connection closes; the buffer is never modified.
/// Smaller ones are copied into the frame, as a `ByteBuf` is, which costs less than a
/// piece of its own. On an encrypted connection (`rpc.io.encryption.enabled`) the cipher
/// reads the buffer where it is and writes the ciphertext into its own buffer (AES-GCM a
/// 256 KiB chunk at a time, AES-CTR the whole frame at once): that is the one copy there.
/// Other encoders (bincode, JSON) see a plain byte string.
///
/// **When to use it**: large payloads that the receiver keeps or forwards (a block
/// cached, a chunk relayed to another env): it saves one copy of the payload per
/// received message, and [`Clone`] is a reference count, not a copy.
///
/// **What it keeps alive**: the whole received frame stays in memory while any view of
/// it does. A small slice of a large message kept for long (a 100-byte key out of a
/// 16 MiB message) pins the 16 MiB: copy what you keep (`to_vec()`, which `Deref` to
/// `[u8]` gives, or `SharedBytes::from(view.to_vec())`). For payloads that are small, or read once and
/// dropped, a `ByteBuf` costs the same.
///
/// ```
/// use rpcenv::SharedBytes;
/// use serde::{Deserialize, Serialize};
///
/// /// A block store's messages: a block received in `Put` is kept as a view of the frame
/// /// it arrived in, and sent on as it is.
/// #[derive(Serialize, Deserialize)]
/// enum StoreMsg {
///     Put { id: u64, data: SharedBytes },
///     Get { id: u64 },
/// }
///
/// let block = SharedBytes::from(vec![7u8; 1 << 20]); // takes the Vec's buffer
/// let kept = block.clone(); // a reference count, not a copy
/// assert_eq!(kept.len(), 1 << 20);
/// // A small part kept for long: copied, so it does not pin the whole block.
/// let header: Vec<u8> = block[..16].to_vec();
/// assert_eq!(header, [7u8; 16]);
/// let _ = StoreMsg::Put { id: 1, data: block };
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedBytes(Bytes);

impl SharedBytes {
    /// An empty payload.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// The bytes as a [`bytes::Bytes`] (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A view of `range` of these bytes (no copy; it keeps the whole buffer alive).
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds, as slicing `[u8]` does.
    pub fn slice(&self, range: impl std::ops::RangeBounds<usize>) -> Self {
        Self(self.0.slice(range))
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SharedBytes {
    /// Takes the vector's buffer (no copy).
    fn from(bytes: Vec<u8>) -> Self {
        Self(Bytes::from(bytes))
    }
}

impl From<Bytes> for SharedBytes {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<SharedBytes> for Bytes {
    fn from(bytes: SharedBytes) -> Self {
        bytes.0
    }
}

impl From<&'static [u8]> for SharedBytes {
    /// Points at the static bytes (no copy).
    fn from(bytes: &'static [u8]) -> Self {
        Self(Bytes::from_static(bytes))
    }
}

impl PartialEq<[u8]> for SharedBytes {
    fn eq(&self, other: &[u8]) -> bool {
        *self.0 == *other
    }
}

impl fmt::Debug for SharedBytes {
    /// As [`bytes::Bytes`] prints: `b"…"` with escapes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Serialize for SharedBytes {
    /// A byte string. One of at least 16 KiB lends its buffer to rpcenv's encoder for the
    /// call, which then writes the buffer to the socket instead of a copy (see the type's
    /// docs).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.len() >= SPLICE_MIN {
            lend(self.0.clone(), || serializer.serialize_bytes(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    /// Asks for a newtype of a reserved name: rpcenv's decoder, decoding a received
    /// frame, answers with a view of the frame; any other answers as for a byte string
    /// and the bytes are copied.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(NAME, SharedBytesVisitor)
    }
}

/// Takes the offered view of the bytes it is given, or copies them.
struct SharedBytesVisitor;

impl<'de> Visitor<'de> for SharedBytesVisitor {
    type Value = SharedBytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<SharedBytes, D::Error> {
        deserializer.deserialize_byte_buf(self)
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<SharedBytes, E> {
        Ok(match take_offered(bytes) {
            Some(view) => SharedBytes(view),
            None => SharedBytes(Bytes::copy_from_slice(bytes)),
        })
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<SharedBytes, E> {
        Ok(SharedBytes::from(bytes))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<SharedBytes, E> {
        Ok(SharedBytes(Bytes::copy_from_slice(text.as_bytes())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<SharedBytes, E> {
        Ok(SharedBytes::from(text.into_bytes()))
    }

    /// Formats that write bytes as a sequence of numbers (JSON).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SharedBytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(SharedBytes::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde::de::value::{BytesDeserializer, Error as ValueError, SeqDeserializer};
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::codec::{decode, decode_shared, encode};

    /// Whether `view` lies inside `body` (it is a view, not a copy).
    fn inside(view: &[u8], body: &[u8]) -> bool {
        let range = body.as_ptr_range();
        let view = view.as_ptr_range();
        range.start <= view.start && view.end <= range.end
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Block {
        id: u64,
        data: SharedBytes,
        more: Vec<SharedBytes>,
        maybe: Option<SharedBytes>,
    }

    fn block() -> Block {
        Block {
            id: 7,
            data: SharedBytes::from(vec![1u8; 300]),
            more: vec![SharedBytes::from(&b"ab"[..]), SharedBytes::new()],
            maybe: Some(SharedBytes::from(vec![9u8; 70_000])),
        }
    }

    #[test]
    fn decoding_a_received_body_gives_views_of_it() {
        let mut body = vec![0xee, 0xff]; // a header before the content
        body.extend(encode(&block(), "block").expect("encode"));
        let body = Bytes::from(body);
        let decoded: Block = decode_shared(&body, 2, "block").expect("decode");
        assert_eq!(decoded, block());
        for view in [
            &decoded.data,
            &decoded.more[0],
            decoded.maybe.as_ref().unwrap(),
        ] {
            assert!(inside(view, &body), "a view of the body, not a copy");
        }
        // The views share the body: it stays alive after the last other handle goes.
        let data = decoded.data.clone();
        drop((decoded, body));
        assert_eq!(&*data, &[1u8; 300][..]);
    }

    #[test]
    fn decoding_without_an_owning_buffer_copies() {
        let bytes = encode(&block(), "block").expect("encode");
        let decoded: Block = decode(&bytes, "block").expect("decode");
        assert_eq!(decoded, block());
        assert!(!inside(&decoded.data, &bytes));
        assert!(!inside(decoded.maybe.as_ref().unwrap(), &bytes));
    }

    #[test]
    fn other_deserializers_copy() {
        let input = [1u8, 2, 3];
        let from_bytes =
            SharedBytes::deserialize(BytesDeserializer::<ValueError>::new(&input)).unwrap();
        assert_eq!(&*from_bytes, &input[..]);
        assert!(!inside(&from_bytes, &input));
        // Formats that write bytes as numbers (JSON).
        let seq = SeqDeserializer::<_, ValueError>::new(input.into_iter());
        let from_seq = SharedBytes::deserialize(seq).unwrap();
        assert_eq!(&*from_seq, &input[..]);
    }

    #[test]
    fn an_offer_is_taken_only_for_its_own_bytes_and_never_outlives_the_decode() {
        let owner = Bytes::from(vec![5u8; 16]);
        let other = [5u8; 16];
        // A visitor given other bytes than the offered view's copies them.
        let copied = offer(owner.slice(..), || take_offered(&other));
        assert!(copied.is_none());
        // The offer is gone after the call, taken or not.
        assert!(take_offered(&owner).is_none());
        let taken = offer(owner.clone(), || take_offered(&owner));
        assert_eq!(taken.as_deref(), Some(&owner[..]));
        // Nor after a visitor that panicked.
        let panicked = std::panic::catch_unwind(|| offer(owner.clone(), || panic!("visitor")));
        assert!(panicked.is_err());
        assert!(take_offered(&owner).is_none());
    }

    #[test]
    fn the_wire_is_a_byte_string_as_bincode_and_serde_bytes_write_it() {
        let config = bincode::config::standard();
        for len in [0, 1, 250, 251, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let shared = SharedBytes::from(bytes.clone());
            let buf = serde_bytes::ByteBuf::from(bytes.clone());
            let ours = encode(&shared, "shared").expect("encode");
            assert_eq!(ours, bincode::serde::encode_to_vec(&buf, config).unwrap());
            assert_eq!(
                ours,
                bincode::serde::encode_to_vec(&shared, config).unwrap()
            );
            // SharedBytes in, ByteBuf out and back, through our codec and bincode's.
            let back: serde_bytes::ByteBuf = decode(&ours, "buf").expect("decode");
            assert_eq!(back.as_slice(), &bytes[..]);
            let (back, _): (serde_bytes::ByteBuf, _) =
                bincode::serde::decode_from_slice(&ours, config).unwrap();
            assert_eq!(back.as_slice(), &bytes[..]);
            let (back, _): (SharedBytes, _) =
                bincode::serde::decode_from_slice(&ours, config).unwrap();
            assert_eq!(back, shared);
            let body = Bytes::from(ours);
            let back: SharedBytes = decode_shared(&body, 0, "shared").expect("decode");
            assert_eq!(back, shared);
        }
    }

    #[test]
    fn a_claimed_length_beyond_the_body_is_refused() {
        // A length of 2^40, then 3 bytes.
        let mut body = vec![253];
        body.extend((1u64 << 40).to_le_bytes());
        body.extend([1, 2, 3]);
        let body = Bytes::from(body);
        let err = decode_shared::<SharedBytes>(&body, 0, "shared").unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(take_offered(&body).is_none());
    }

    #[test]
    fn conversions_and_formatting() {
        let shared = SharedBytes::from(Bytes::from_static(b"hi\n"));
        assert_eq!(format!("{shared:?}"), "b\"hi\\n\"");
        assert_eq!(shared.len(), 3);
        assert_eq!(shared.slice(1..), SharedBytes::from(&b"i\n"[..]));
        assert_eq!(shared.clone().into_bytes(), Bytes::from_static(b"hi\n"));
        assert_eq!(Bytes::from(shared.clone()), shared.into_bytes());
    }

    /// Messages with large `SharedBytes` (several fields, nested in sequences, options,
    /// maps and enums) and small ones.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Spliceable {
        Unit,
        Blocks {
            name: String,
            first: SharedBytes,
            small: SharedBytes,
            rest: Vec<(u32, SharedBytes)>,
            maybe: Option<SharedBytes>,
            inner: Box<Block>,
        },
        Map(std::collections::BTreeMap<u16, SharedBytes>),
    }

    fn big(len: usize, fill: u8) -> SharedBytes {
        SharedBytes::from(vec![fill; len])
    }

    fn spliceables() -> Vec<Spliceable> {
        let inner = Block {
            id: 3,
            data: big(SPLICE_MIN, 4),
            more: vec![big(SPLICE_MIN - 1, 5), big(70_000, 6)],
            maybe: None,
        };
        vec![
            Spliceable::Unit,
            Spliceable::Blocks {
                name: "b".repeat(SPLICE_MIN),
                first: big(100_000, 1),
                small: big(300, 2),
                rest: vec![
                    (1, big(20_000, 3)),
                    (2, SharedBytes::new()),
                    (3, big(20_000, 3)),
                ],
                maybe: Some(big(1 << 20, 7)),
                inner: Box::new(inner),
            },
            Spliceable::Map(
                (0..4)
                    .map(|k| (k, big(SPLICE_MIN + usize::from(k), 8)))
                    .collect(),
            ),
        ]
    }

    /// The bytes and the pieces `encode_spliced` makes, joined, are `encode`'s bytes;
    /// each piece is the buffer of a `SharedBytes` of at least `SPLICE_MIN` bytes, and
    /// everything shorter is copied.
    #[test]
    fn spliced_encoding_is_the_copied_encoding_with_large_buffers_left_in_place() {
        for value in spliceables() {
            let copied = encode(&value, "value").expect("encode");
            let mut out = vec![0xaa, 0xbb];
            let mut spliced = Vec::new();
            crate::codec::encode_spliced(&value, &mut out, &mut spliced, None, "value")
                .expect("encode");
            let body = crate::frame::Body::spliced(out.clone(), spliced.clone());
            assert_eq!(body.len(), 2 + copied.len());
            assert!(body.to_vec()[2..] == copied[..], "{value:?}");
            let pieces = spliced.len();
            let lent: usize = spliced.iter().map(|(_, piece)| piece.len()).sum();
            assert_eq!(out.len() + lent, 2 + copied.len());
            assert!(spliced.iter().all(|(_, piece)| piece.len() >= SPLICE_MIN));
            match &value {
                Spliceable::Unit => assert_eq!(pieces, 0),
                Spliceable::Blocks { first, maybe, .. } => {
                    // first, two of rest, maybe, inner.data, inner.more[1].
                    assert_eq!(pieces, 6);
                    assert_eq!(spliced[0].1.as_ptr(), first.as_ptr(), "no copy");
                    assert_eq!(spliced[3].1.as_ptr(), maybe.as_ref().unwrap().as_ptr());
                    // The buffer is reserved at its exact size: no room for the pieces.
                    assert!(out.capacity() < out.len() + SPLICE_MIN);
                }
                Spliceable::Map(map) => {
                    assert_eq!(pieces, map.len());
                    assert_eq!(spliced[1].1.as_ptr(), map[&1].as_ptr());
                }
            }
            let back: Spliceable = decode(&body.to_vec()[2..], "value").expect("decode");
            assert_eq!(back, value);
        }
        // Nothing stays lent after an encode.
        assert!(LENT.with(|slot| slot.borrow().is_none()));
    }

    /// Other serializers see a plain byte string, and a failed encode leaves the output
    /// as it was.
    #[test]
    fn lending_changes_nothing_for_other_serializers_and_failures() {
        let value = big(SPLICE_MIN, 1);
        let config = bincode::config::standard();
        assert_eq!(
            bincode::serde::encode_to_vec(&value, config).unwrap(),
            encode(&value, "value").unwrap()
        );
        /// Fails after its byte payload was written.
        struct Failing(SharedBytes);
        impl Serialize for Failing {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error, SerializeTuple};
                let mut tuple = s.serialize_tuple(2)?;
                tuple.serialize_element(&self.0)?;
                drop(tuple);
                Err(S::Error::custom("refused"))
            }
        }
        let mut out = vec![1, 2];
        let mut spliced = vec![(1, bytes::Bytes::from_static(b"x"))];
        let err =
            crate::codec::encode_spliced(&Failing(value), &mut out, &mut spliced, None, "failing")
                .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert_eq!(out, [1, 2]);
        assert_eq!(spliced.len(), 1);
        assert!(LENT.with(|slot| slot.borrow().is_none()));
    }
}
