//! Where the handshake and the GCM channel get their random bytes: the [`Random`] trait,
//! and [`OsRandom`], the operating system's generator. Tests replay Spark's recorded
//! draws through the same trait.

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
                "the operating system's random number generator failed: {err:#}"
            ))
        })
    }
}
