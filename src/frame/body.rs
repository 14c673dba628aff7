//! [`Body`]: the bytes that follow a frame's header, as one buffer with shared byte
//! strings spliced into it, so that a large payload goes on the wire from its own buffer.

use bytes::Bytes;

use crate::buffer_pool::{BufferPool, POOLED_MIN};
use crate::sync::Arc;

/// A frame's body: `bytes`, with each spliced piece going on the wire right before
/// `bytes[at..]`. Its length and its wire bytes are those of the one buffer that copying
/// each piece into `bytes` at its place would make.
#[derive(Default)]
pub(crate) struct Body {
    bytes: Vec<u8>,
    /// The spliced pieces, in wire order: `(at, piece)`, `at` never decreasing.
    spliced: Vec<(usize, Bytes)>,
    /// The spliced pieces' bytes.
    spliced_len: usize,
    /// Where `bytes` goes when the body is dropped (see [`return_to`](Self::return_to)).
    home: Option<Arc<BufferPool>>,
}

impl Body {
    /// `bytes` with `spliced` pieces: each `(at, piece)` goes before `bytes[at..]`.
    ///
    /// # Panics
    ///
    /// If an `at` is beyond `bytes`' end or below the one before it.
    pub(crate) fn spliced(bytes: Vec<u8>, spliced: Vec<(usize, Bytes)>) -> Self {
        let mut last = 0;
        for (at, _) in &spliced {
            assert!(
                last <= *at && *at <= bytes.len(),
                "a piece spliced at {at}, after one at {last}, into {} bytes",
                bytes.len()
            );
            last = *at;
        }
        let spliced_len = spliced.iter().map(|(_, piece)| piece.len()).sum();
        Self {
            bytes,
            spliced,
            spliced_len,
            home: None,
        }
    }

    /// Lets the buffer go back to `pool` when the body is dropped (once written, or
    /// given up), if its capacity is at least [`POOLED_MIN`]; a smaller one is freed as
    /// usual. Such a body keeps its capacity (see [`shrink_to_fit`](Self::shrink_to_fit)).
    pub(crate) fn return_to(&mut self, pool: &Arc<BufferPool>) {
        if self.home.is_none() && self.bytes.capacity() >= POOLED_MIN {
            self.home = Some(Arc::clone(pool));
        }
    }

    /// The body's length in bytes, spliced pieces included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() + self.spliced_len
    }

    /// Whether pieces are spliced in (the body is not one buffer).
    pub(crate) fn is_spliced(&self) -> bool {
        !self.spliced.is_empty()
    }

    /// Calls `f` with each non-empty part of the body in wire order.
    pub(crate) fn for_each_part<'a>(&'a self, mut f: impl FnMut(&'a [u8])) {
        let mut from = 0;
        for (at, piece) in &self.spliced {
            if *at > from {
                f(&self.bytes[from..*at]);
            }
            if !piece.is_empty() {
                f(piece);
            }
            from = *at;
        }
        if self.bytes.len() > from {
            f(&self.bytes[from..]);
        }
    }

    /// Calls `f` with the non-empty parts of the body's bytes `start..` in wire order,
    /// until it returns `false`.
    pub(crate) fn parts_from<'a>(&'a self, start: usize, mut f: impl FnMut(&'a [u8]) -> bool) {
        let mut offset = 0;
        let mut more = true;
        self.for_each_part(|part| {
            if !more {
                return;
            }
            let end = offset + part.len();
            if end > start {
                more = f(&part[start.saturating_sub(offset)..]);
            }
            offset = end;
        });
    }

    /// The bytes of a body that is one buffer, to encrypt in place; `None` if pieces are
    /// spliced in (they are the caller's buffers, never modified).
    pub(crate) fn as_flat_mut(&mut self) -> Option<&mut [u8]> {
        if self.is_spliced() {
            None
        } else {
            Some(&mut self.bytes)
        }
    }

    /// A copy of the whole body.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each_part(|part| out.extend_from_slice(part));
        out
    }

    /// Gives back the buffer's spare capacity (left by encoding), unless the buffer goes
    /// back to a pool: its capacity is what the pool lends out again (at most twice the
    /// bytes, see `BufferPool::take`).
    pub(crate) fn shrink_to_fit(&mut self) {
        if self.home.is_none() {
            self.bytes.shrink_to_fit();
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            spliced: Vec::new(),
            spliced_len: 0,
            home: None,
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(pool) = self.home.take() {
            pool.give(std::mem::take(&mut self.bytes));
        }
    }
}

impl std::fmt::Debug for Body {
    /// The lengths only, never the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("len", &self.len())
            .field("spliced", &self.spliced.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Body {
        // "ab" + "XY" + "cd" + "" + "Z" + "e", the empty piece skipped.
        Body::spliced(
            b"abcde".to_vec(),
            vec![
                (2, Bytes::from_static(b"XY")),
                (4, Bytes::new()),
                (4, Bytes::from_static(b"Z")),
            ],
        )
    }

    #[test]
    fn parts_are_the_buffer_with_the_pieces_in_place() {
        let body = body();
        assert_eq!(body.len(), 8);
        assert!(body.is_spliced());
        let mut parts = Vec::new();
        body.for_each_part(|part| parts.push(part.to_vec()));
        let expected: Vec<&[u8]> = vec![b"ab", b"XY", b"cd", b"Z", b"e"];
        assert_eq!(parts, expected);
        assert_eq!(body.to_vec(), b"abXYcdZe");
    }

    #[test]
    fn parts_from_any_offset_cover_the_rest() {
        let body = body();
        let whole = body.to_vec();
        for start in 0..=whole.len() {
            let mut rest = Vec::new();
            body.parts_from(start, |part| {
                assert!(!part.is_empty());
                rest.extend_from_slice(part);
                true
            });
            assert_eq!(rest, &whole[start..], "from {start}");
        }
        // Stops when told.
        let mut count = 0;
        body.parts_from(0, |_| {
            count += 1;
            count < 2
        });
        assert_eq!(count, 2);
    }

    #[test]
    fn only_a_body_of_one_buffer_is_lent_out_mutably() {
        let mut body = body();
        assert!(body.as_flat_mut().is_none());
        let mut flat = Body::from(b"abc".to_vec());
        assert_eq!(flat.as_flat_mut().map(|bytes| &*bytes), Some(&b"abc"[..]));
    }

    #[test]
    fn a_large_body_goes_back_to_its_pool_when_dropped() {
        let pool = Arc::new(BufferPool::default());
        let mut small = Body::from(vec![0; POOLED_MIN - 1]);
        small.return_to(&pool);
        drop(small);
        assert_eq!(pool.kept(), (0, 0));
        let mut large = Body::spliced(
            Vec::with_capacity(2 * POOLED_MIN),
            vec![(0, Bytes::from_static(b"piece"))],
        );
        large.return_to(&pool);
        large.shrink_to_fit();
        drop(large);
        assert_eq!(pool.kept(), (2 * POOLED_MIN, 1), "kept at its capacity");
    }

    #[test]
    #[should_panic(expected = "spliced at 3")]
    fn a_piece_out_of_order_is_refused() {
        let _ = Body::spliced(vec![0; 4], vec![(4, Bytes::new()), (3, Bytes::new())]);
    }
}
