//! `AES/CTR/NoPadding`, Spark's `CtrTransportCipher`: each direction of the connection is
//! one continuous AES-CTR keystream (commons-crypto `CryptoOutputStream` /
//! `CryptoInputStream`). The counter block starts at the direction's 16-byte IV and
//! counts as one 128-bit big-endian integer, wrapping at 2^128 (NIST SP 800-38A; `ctr`'s
//! `Ctr128BE`). Nothing is added to the stream: ciphertext and plaintext have the same
//! length and the same boundaries, so any split of the bytes decrypts alike. There is no
//! integrity check; a flipped bit reaches the frame decoder flipped.

use aes::{Aes128, Aes256};
use ctr::cipher::{KeyIvInit, StreamCipher};
use std::fmt;

use super::AuthError;
use super::keys::ChannelKey;

/// One direction's keystream position. The AES key schedule is built once, here.
pub(crate) struct CtrStream {
    /// The AES key schedule and the counter position.
    cipher: Keystream,
}

/// The keystream for the key's length: AES-128 for version-2 keys, AES-256 for
/// version-1 keys. Boxed: the key schedules are large, and the enum is moved around.
enum Keystream {
    /// A 16-byte (version 2) key.
    Aes128(Box<ctr::Ctr128BE<Aes128>>),
    /// A 32-byte (version 1) key.
    Aes256(Box<ctr::Ctr128BE<Aes256>>),
}

impl CtrStream {
    /// The keystream for `key` starting at counter block `iv`.
    pub(super) fn new(key: &ChannelKey, iv: &[u8; 16]) -> Self {
        let iv = iv.into();
        let cipher = match key {
            ChannelKey::Aes128(key) => {
                Keystream::Aes128(Box::new(ctr::Ctr128BE::<Aes128>::new(key.into(), iv)))
            }
            ChannelKey::Aes256(key) => {
                Keystream::Aes256(Box::new(ctr::Ctr128BE::<Aes256>::new(key.into(), iv)))
            }
        };
        Self { cipher }
    }

    /// XORs the next `bytes.len()` keystream bytes into `bytes`. Fails, changing nothing,
    /// only once the counter has come back to its IV (after 2^128 blocks).
    pub(super) fn apply(&mut self, bytes: &mut [u8]) -> Result<(), AuthError> {
        let result = match &mut self.cipher {
            Keystream::Aes128(cipher) => cipher.try_apply_keystream(bytes),
            Keystream::Aes256(cipher) => cipher.try_apply_keystream(bytes),
        };
        result.map_err(|_| AuthError::new("the AES-CTR keystream of this connection is used up"))
    }

    /// Appends the encryption (or decryption: they are the same) of the concatenation of
    /// `parts` to `out`.
    pub(super) fn apply_to_parts(
        &mut self,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), AuthError> {
        let start = out.len();
        out.reserve(super::channel::total_len(parts).unwrap_or(0));
        for part in parts {
            out.extend_from_slice(part);
        }
        let result = self.apply(&mut out[start..]);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

impl fmt::Debug for CtrStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.cipher {
            Keystream::Aes128(_) => 128,
            Keystream::Aes256(_) => 256,
        };
        write!(f, "CtrStream(AES-{bits}-CTR)")
    }
}
