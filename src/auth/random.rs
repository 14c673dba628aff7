//! Where the handshake and the GCM channel get their random bytes: the [`Random`] trait,
//! [`OsRandom`], the operating system's generator, and [`ChannelRandom`], the generator an
//! encrypted connection draws its envelope salts from. Tests replay Spark's recorded draws
//! through the same trait.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use zeroize::Zeroizing;

use super::AuthError;

/// A source of cryptographically secure random bytes. Spark draws from `SecureRandom`
/// (through Tink's `Random.randBytes`); the draws here come in the same order: a
/// handshake side takes its X25519 private key (32 bytes), then its salt (16), then the
/// AES-GCM nonce (12); the GCM channel takes each envelope's salt (key length) and nonce
/// prefix (7).
pub(crate) trait Random {
    /// Fills `buf` entirely with random bytes, or fails.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AuthError>;
}

/// The operating system's generator (`getrandom`: `getrandom(2)` on Linux).
#[derive(Debug, Default)]
pub(crate) struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AuthError> {
        getrandom::fill(buf).map_err(|err| {
            AuthError::new(format!(
                "the operating system's random number generator failed: {err}"
            ))
        })
    }
}

/// Bytes a [`ChannelRandom`] hands out before it takes a fresh seed from the OS.
const RESEED_AFTER: usize = 64 * 1024;

/// One encrypted connection's generator for GCM envelope salts and nonce prefixes:
/// ChaCha20 (RustCrypto's `ChaCha20Rng`, RFC 8439's cipher as a keystream) seeded from
/// the operating system at its first draw, and seeded afresh after every 64 KiB it hands
/// out. A system call per envelope costs about as much as sealing a small message; this
/// costs a few dozen nanoseconds. Its state is wiped when it is dropped or reseeded. A
/// failed seed fails the draw (and so the message), like [`OsRandom`].
#[derive(Default)]
pub(crate) struct ChannelRandom {
    /// `None` until the first draw, and after [`RESEED_AFTER`] bytes.
    rng: Option<ChaCha20Rng>,
    /// Bytes handed out since the last seed.
    drawn: usize,
}

impl Random for ChannelRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AuthError> {
        if self.drawn >= RESEED_AFTER {
            self.rng = None;
        }
        let rng = match &mut self.rng {
            Some(rng) => rng,
            None => {
                let mut seed = Zeroizing::new([0; 32]);
                OsRandom.fill(&mut *seed)?;
                self.drawn = 0;
                self.rng.insert(ChaCha20Rng::from_seed(*seed))
            }
        };
        rng.fill_bytes(buf);
        self.drawn += buf.len();
        Ok(())
    }
}

impl std::fmt::Debug for ChannelRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelRandom").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_random_draws_differ_and_reseed() {
        let mut a = ChannelRandom::default();
        let mut b = ChannelRandom::default();
        let (mut x, mut y) = ([0; 39], [0; 39]);
        a.fill(&mut x).unwrap();
        b.fill(&mut y).unwrap();
        assert_ne!(x, y, "two connections draw different salts");
        let first = a.rng.as_ref().map(ChaCha20Rng::get_seed);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..RESEED_AFTER / 39 + 2 {
            a.fill(&mut x).unwrap();
            assert!(seen.insert(x), "no draw repeats");
        }
        assert_ne!(a.rng.as_ref().map(ChaCha20Rng::get_seed), first, "reseeded");
        assert!(a.drawn < RESEED_AFTER);
    }
}
