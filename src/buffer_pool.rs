//! [`BufferPool`]: large frame buffers kept for reuse instead of freed, as Netty's pooled
//! allocator keeps its chunks.
//!
//! A frame of 16 MiB costs one buffer on each side of each hop: the encoded request, the
//! request as read, the encoded reply, the reply as read. Freed and allocated again, each
//! such buffer comes back from the allocator as fresh pages (glibc gives large blocks back
//! to the system, by `munmap` or by trimming its heap), and every page faults in and is
//! zeroed by the kernel again: 4,096 faults per 16 MiB. A pool keeps the buffers of the
//! last large frames and lends them to the next ones, whose pages are already mapped.
//!
//! Each transport context (so each env) has one pool of at most [`POOL_BYTES`] (64 MiB),
//! lending only buffers of [`POOLED_MIN`] (1 MiB) or more:
//!
//! - below 1 MiB the allocator's own free lists serve reuse well (its heap is not trimmed
//!   for blocks that small), and copying the bytes costs more than faulting their pages;
//! - 64 MiB holds the four buffers of a 16 MiB round trip on each side of a hop, and a few
//!   more for frames in flight at once; it is memory an env keeps while it lives.
//!
//! A buffer goes back when the last reference to it drops: a frame body written to its
//! connection (see `Body::return_to`), or a received body once the last [`Bytes`] view of it
//! (a decoded `SharedBytes` the user keeps, say) is gone ([`BufferPool::share`]). A buffer
//! that does not fit under the bound is freed, as without a pool; nothing is evicted for
//! it. A buffer is lent for at most twice the bytes asked for, so a small frame never holds
//! a large buffer.

use std::fmt;

use bytes::Bytes;

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Mutex};

/// The smallest buffer capacity the pool keeps, in bytes (1 MiB).
pub(crate) const POOLED_MIN: usize = 1 << 20;

/// The most bytes of buffer capacity one pool keeps (64 MiB).
pub(crate) const POOL_BYTES: usize = 64 << 20;

/// A bounded set of large buffers to lend out again (see the module docs).
pub(crate) struct BufferPool {
    /// The most bytes of capacity kept.
    bound: usize,
    kept: Mutex<Kept>,
    /// Buffers lent out of the pool.
    reused: AtomicU64,
    /// Buffers given back that did not fit under the bound, and were freed.
    freed_at_bound: AtomicU64,
}

/// The buffers a pool holds.
#[derive(Default)]
struct Kept {
    buffers: Vec<Vec<u8>>,
    /// Their capacities' sum.
    bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `bound` bytes of buffers.
    pub(crate) fn new(bound: usize) -> Self {
        Self {
            bound,
            kept: Mutex::new(Kept::default()),
            reused: AtomicU64::new(0),
            freed_at_bound: AtomicU64::new(0),
        }
    }

    /// A kept buffer whose capacity holds `len` bytes and is at most twice that, the
    /// smallest there is; `None` if there is none or `len` is below [`POOLED_MIN`].
    ///
    /// The buffer's length and bytes are those its last user left: they are initialised
    /// memory the caller may overwrite in place (truncating or clearing it as it needs)
    /// rather than zero again.
    pub(crate) fn take(&self, len: usize) -> Option<Vec<u8>> {
        if len < POOLED_MIN {
            return None;
        }
        let mut kept = self.kept.lock();
        let most = len.saturating_mul(2);
        let (at, _) = kept
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, buffer)| (len..=most).contains(&buffer.capacity()))
            .min_by_key(|(_, buffer)| buffer.capacity())?;
        let buffer = kept.buffers.swap_remove(at);
        kept.bytes -= buffer.capacity();
        drop(kept);
        self.reused.fetch_add(1, Ordering::Relaxed);
        Some(buffer)
    }

    /// Keeps `buffer` to lend again if its capacity is at least [`POOLED_MIN`] and fits
    /// under the bound with those kept; otherwise frees it.
    pub(crate) fn give(&self, buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity < POOLED_MIN {
            return;
        }
        let mut kept = self.kept.lock();
        if kept.bytes + capacity > self.bound {
            drop(kept);
            self.freed_at_bound.fetch_add(1, Ordering::Relaxed);
            return;
        }
        kept.bytes += capacity;
        kept.buffers.push(buffer);
    }

    /// `buffer` as shareable [`Bytes`] without a copy; a buffer of [`POOLED_MIN`] or more
    /// comes back to this pool when the last view of it drops.
    pub(crate) fn share(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        if buffer.capacity() < POOLED_MIN {
            return Bytes::from(buffer);
        }
        Bytes::from_owner(Lent {
            buffer,
            pool: Arc::clone(self),
        })
    }

    /// Buffers lent out of the pool so far.
    pub(crate) fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Buffers given back and freed because the pool was full, so far.
    #[cfg(test)]
    pub(crate) fn freed_at_bound(&self) -> u64 {
        self.freed_at_bound.load(Ordering::Relaxed)
    }

    /// Bytes of buffer capacity kept now, and how many buffers.
    pub(crate) fn kept(&self) -> (usize, usize) {
        let kept = self.kept.lock();
        (kept.bytes, kept.buffers.len())
    }
}

impl Default for BufferPool {
    /// A pool of [`POOL_BYTES`].
    fn default() -> Self {
        Self::new(POOL_BYTES)
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bytes, buffers) = self.kept();
        f.debug_struct("BufferPool")
            .field("bound", &self.bound)
            .field("kept_bytes", &bytes)
            .field("kept_buffers", &buffers)
            .field("reused", &self.reused())
            .finish()
    }
}

/// The owner of the bytes [`BufferPool::share`] hands out: gives the buffer back to its
/// pool when dropped, that is, when the last view of it is.
struct Lent {
    buffer: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn filled(len: usize, byte: u8) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(len);
        buffer.resize(len, byte);
        buffer
    }

    #[test]
    fn a_buffer_given_back_is_lent_again_with_its_bytes() {
        let pool = BufferPool::new(8 * MIB);
        assert!(pool.take(2 * MIB).is_none());
        let buffer = filled(2 * MIB, 7);
        let address = buffer.as_ptr();
        pool.give(buffer);
        assert_eq!(pool.kept(), (2 * MIB, 1));
        let again = pool.take(2 * MIB).expect("the kept buffer");
        assert_eq!(again.as_ptr(), address, "the same allocation");
        assert_eq!(again.len(), 2 * MIB);
        assert!(again.iter().all(|&b| b == 7));
        assert_eq!(pool.reused(), 1);
        assert_eq!(pool.kept(), (0, 0));
    }

    #[test]
    fn small_buffers_and_lopsided_fits_are_not_pooled() {
        let pool = BufferPool::new(64 * MIB);
        pool.give(filled(MIB - 1, 0));
        assert_eq!(pool.kept(), (0, 0), "below the pooled minimum");
        assert!(pool.take(MIB - 1).is_none());
        pool.give(filled(8 * MIB, 0));
        assert!(pool.take(MIB).is_none(), "8 MiB is more than twice 1 MiB");
        assert!(pool.take(9 * MIB).is_none(), "too small for 9 MiB");
        pool.give(filled(5 * MIB, 0));
        let fit = pool.take(4 * MIB).expect("a fit");
        assert_eq!(fit.capacity(), 5 * MIB, "the smallest that holds it");
    }

    #[test]
    fn the_bound_holds_and_what_does_not_fit_is_freed() {
        let pool = BufferPool::new(5 * MIB);
        pool.give(filled(2 * MIB, 0));
        pool.give(filled(2 * MIB, 0));
        pool.give(filled(2 * MIB, 0));
        assert_eq!(pool.kept(), (4 * MIB, 2));
        assert_eq!(pool.freed_at_bound(), 1);
        pool.give(filled(MIB, 0));
        assert_eq!(pool.kept(), (5 * MIB, 3));
        let _ = pool.take(MIB).expect("the 1 MiB buffer");
        pool.give(filled(6 * MIB, 0));
        assert_eq!(pool.kept(), (4 * MIB, 2), "larger than the room left");
        assert_eq!(pool.freed_at_bound(), 2);
    }

    #[test]
    fn shared_bytes_come_back_when_the_last_view_drops() {
        let pool = Arc::new(BufferPool::new(8 * MIB));
        let bytes = pool.share(filled(2 * MIB, 3));
        let view = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.kept(), (0, 0), "a view is still alive");
        assert_eq!(&view[..], &[3; 10]);
        drop(view);
        assert_eq!(pool.kept(), (2 * MIB, 1));
        // A small body is plain `Bytes`, never pooled.
        drop(pool.share(vec![1; 100]));
        assert_eq!(pool.kept(), (2 * MIB, 1));
    }

    #[test]
    fn many_threads_giving_and_taking_keep_the_count_and_the_bound() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 50;
        let pool = Arc::new(BufferPool::new(6 * MIB));
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let pool = &pool;
                std::thread::Builder::new()
                    .name(format!("pool-test-{t}"))
                    .spawn_scoped(scope, move || {
                        for round in 0..ROUNDS {
                            let mut buffer = pool.take(MIB).unwrap_or_default();
                            buffer.clear();
                            buffer.resize(MIB, (t * ROUNDS + round) as u8);
                            let bytes = pool.share(buffer);
                            assert!(bytes.iter().all(|&b| b == (t * ROUNDS + round) as u8));
                            drop(bytes);
                            assert!(pool.kept().0 <= 6 * MIB);
                        }
                    })
                    .expect("spawn");
            }
        });
        let (bytes, buffers) = pool.kept();
        assert!(bytes <= 6 * MIB);
        assert_eq!(bytes, buffers * MIB);
        assert!(buffers >= 1);
        assert!(pool.reused() > 0);
        assert_eq!(
            pool.reused() + buffers as u64 + pool.freed_at_bound.load(Ordering::Relaxed),
            (THREADS * ROUNDS) as u64,
            "every buffer made was taken again, kept, or freed"
        );
    }
}
