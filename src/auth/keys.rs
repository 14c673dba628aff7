//! The session keys a finished handshake leaves, as Spark's
//! `AuthEngine.generateTransportCipher` derives them, and the HKDF-SHA256 (RFC 5869) that
//! every derivation in this module uses (Tink's `Hkdf.computeHkdf("HMACSHA256", ...)`).
//!
//! With `shared` the X25519 output and `transcript` the client's message followed by the
//! server's (both encoded):
//!
//! | value | version 1 (Spark's default) | version 2 |
//! |---|---|---|
//! | channel key | `shared` itself, 32 bytes: AES-256 | `HKDF(shared, transcript, "derivedKey", 16)`: AES-128 |
//! | IV "inputIv" | `HKDF(shared, transcript, "inputIv", 16)` | the same |
//! | IV "outputIv" | `HKDF(shared, transcript, "outputIv", 16)` | the same |
//!
//! The client's output IV is "outputIv" and its input IV "inputIv"; the server's are
//! swapped, so client → server runs on "outputIv" and server → client on "inputIv".

use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::channel::{Decryptor, Encryptor};
use super::ctr::CtrStream;
use super::gcm::{GcmDecryptor, GcmEncryptor};
use super::{AuthError, Cipher, EngineVersion, Random};

/// HKDF-SHA256 of `ikm` with `salt` and `info`, filling `okm`.
pub(super) fn hkdf_sha256(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), AuthError> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, okm)
        .map_err(|_| AuthError::new("HKDF-SHA256 cannot produce that many bytes"))
}

/// The channel key: 16 bytes (AES-128, version 2) or 32 (AES-256, version 1). Wiped on
/// drop.
#[derive(Clone)]
pub(super) enum ChannelKey {
    /// A version-2 key.
    Aes128([u8; 16]),
    /// A version-1 key.
    Aes256([u8; 32]),
}

impl ChannelKey {
    /// The key bytes.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Aes128(key) => key,
            Self::Aes256(key) => key,
        }
    }
}

impl Zeroize for ChannelKey {
    fn zeroize(&mut self) {
        match self {
            Self::Aes128(key) => key.zeroize(),
            Self::Aes256(key) => key.zeroize(),
        }
    }
}

impl Drop for ChannelKey {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for ChannelKey {}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {}-byte key>", self.as_bytes().len())
    }
}

/// This side's keys for the channel: the key (the same both ways) and its two CTR IVs,
/// already assigned for its role, and the confirmation of an unencrypted channel (see
/// [`confirmation`](Self::confirmation)). Wiped on drop; `Debug` prints only the key
/// length.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct SessionKeys {
    key: ChannelKey,
    /// The IV of the bytes this side sends.
    output_iv: [u8; 16],
    /// The IV of the bytes this side receives.
    input_iv: [u8; 16],
    /// `HKDF(shared, transcript, "rpcenv-confirm", 32)`.
    confirmation: [u8; CONFIRMATION_LEN],
}

/// Bytes of [`SessionKeys::confirmation`].
pub(crate) const CONFIRMATION_LEN: usize = 32;

/// Which end of the handshake a side is; decides which IV is which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The side that sent the challenge.
    Client,
    /// The side that answered it.
    Server,
}

impl SessionKeys {
    /// Derives the keys from the X25519 shared secret and the transcript (both messages,
    /// client's first), as `AuthEngine.generateTransportCipher` does.
    pub(super) fn derive(
        version: EngineVersion,
        shared: &[u8; 32],
        transcript: &[u8],
        role: Role,
    ) -> Result<Self, AuthError> {
        let key = match version {
            EngineVersion::V1 => ChannelKey::Aes256(*shared),
            EngineVersion::V2 => {
                let mut key = ChannelKey::Aes128([0; 16]);
                if let ChannelKey::Aes128(bytes) = &mut key {
                    hkdf_sha256(shared, transcript, b"derivedKey", bytes)?;
                }
                key
            }
        };
        let mut input_iv = [0; 16];
        let mut output_iv = [0; 16];
        hkdf_sha256(shared, transcript, b"inputIv", &mut input_iv)?;
        hkdf_sha256(shared, transcript, b"outputIv", &mut output_iv)?;
        let mut confirmation = [0; CONFIRMATION_LEN];
        hkdf_sha256(shared, transcript, b"rpcenv-confirm", &mut confirmation)?;
        let (output_iv, input_iv) = match role {
            Role::Client => (output_iv, input_iv),
            Role::Server => (input_iv, output_iv),
        };
        Ok(Self {
            key,
            output_iv,
            input_iv,
            confirmation,
        })
    }

    /// What a client sends right after the handshake when the channel stays unencrypted
    /// (rpcenv's authentication without encryption, which Spark's `AuthEngine` does not
    /// have): proof that it holds the X25519 private key of its challenge. Without it,
    /// the challenge, which crosses the network in clear, could be replayed on another
    /// connection by anyone who saw it, and the server would take that connection's
    /// plaintext as authenticated. Bound to the transcript, so to this connection. (An
    /// encrypted channel needs none: a replayer has no channel key, and its first frame
    /// fails.)
    pub(crate) fn confirmation(&self) -> &[u8; CONFIRMATION_LEN] {
        &self.confirmation
    }

    /// Whether `theirs` is this handshake's [`confirmation`](Self::confirmation),
    /// compared in constant time.
    pub(crate) fn confirms(&self, theirs: &[u8]) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.confirmation[..], theirs).into()
    }

    /// This side's encryptor (outgoing bytes) and decryptor (incoming bytes); `rng` draws
    /// GCM salts and nonce prefixes (CTR needs none and drops it).
    pub(crate) fn channel(
        &self,
        cipher: Cipher,
        rng: Box<dyn Random + Send>,
    ) -> (Encryptor, Decryptor) {
        match cipher {
            Cipher::AesCtr => (
                Encryptor::Ctr(CtrStream::new(&self.key, &self.output_iv)),
                Decryptor::Ctr(CtrStream::new(&self.key, &self.input_iv)),
            ),
            Cipher::AesGcm => (
                Encryptor::Gcm(GcmEncryptor::new(self.key.clone(), rng)),
                Decryptor::Gcm(Box::new(GcmDecryptor::new(self.key.clone()))),
            ),
        }
    }

    /// The channel key.
    #[cfg(test)]
    pub(super) fn key(&self) -> &[u8] {
        self.key.as_bytes()
    }

    /// The IV of what this side sends.
    #[cfg(test)]
    pub(super) fn output_iv(&self) -> &[u8; 16] {
        &self.output_iv
    }

    /// The IV of what this side receives.
    #[cfg(test)]
    pub(super) fn input_iv(&self) -> &[u8; 16] {
        &self.input_iv
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
