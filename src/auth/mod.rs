//! The sans-IO core of Spark's authentication and channel encryption (`AuthEngine`, Spark
//! 4.3 `network-common`, package `org.apache.spark.network.crypto`): the handshake, the
//! session keys, and the two channel ciphers. No sockets, threads or clocks; randomness
//! comes in through [`Random`], so Spark's captured vectors replay byte for byte.
//!
//! | part | file | follows |
//! |---|---|---|
//! | the message of both handshake steps | `message.rs` | `AuthMessage`: tag `0xFB`, appId, salt, ciphertext |
//! | client challenge, server response, client finish | `engine.rs` | `AuthEngine.challenge`, `response`, `deriveSessionCipher` |
//! | session key and IVs, versions 1 and 2 | `keys.rs` | `AuthEngine.generateTransportCipher` |
//! | `AES/CTR/NoPadding` | `ctr.rs` | `CtrTransportCipher` (commons-crypto `CryptoOutputStream` / `CryptoInputStream`) |
//! | `AES/GCM/NoPadding` | `gcm.rs` | `GcmTransportCipher` over Tink's `AesGcmHkdfStreaming` |
//! | one direction's cipher, whichever it is | `channel.rs` | the handlers Spark adds first in the pipeline |
//!
//! The handshake is one exchange in the bodies of an ordinary `RpcRequest` and its
//! `RpcResponse`: the client sends its X25519 public key sealed with AES-128-GCM under a
//! key derived (HKDF-SHA256, RFC 5869) from the shared secret; the server answers with its
//! own, sealed the same way with the client's whole message as associated data. Both sides
//! then hold the X25519 shared secret (RFC 7748) and the transcript of the two messages,
//! from which [`SessionKeys`] derive the channel key and the two stream IVs.
//!
//! **Neither the cipher nor the engine version is negotiated on the wire.** Both sides
//! must be configured alike (Spark: `spark.network.crypto.cipher` and
//! `spark.network.crypto.authEngineVersion`, default 1). A mismatch lets the handshake
//! succeed and shows only at the first encrypted frame: garbage under CTR, a failed tag
//! (or an unexpected header length) under GCM. The decryptors' errors say so.
//!
//! What the ciphers protect, as in Spark: CTR encrypts without any integrity check. GCM
//! authenticates every segment of an envelope, binds segments to their place (index and
//! last flag in the nonce) and their envelope (per-envelope key from a random salt and
//! the envelope length), but envelopes are independent of each other: an attacker on the
//! path can replay or drop a whole envelope without any tag failing. Spark accepts this;
//! Spark recommends TLS where it matters.

mod channel;
mod ctr;
mod engine;
mod gcm;
mod keys;
mod message;
mod random;

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod vectors;

use std::borrow::Cow;
use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

pub(crate) use channel::{Decryptor, Encryptor};
pub(crate) use engine::{ClientHandshake, respond};
pub(crate) use gcm::{EnvelopeSealer, SEGMENT_PLAINTEXT_LEN};
pub(crate) use keys::SessionKeys;
pub(crate) use random::{ChannelRandom, OsRandom, Random};

/// The channel cipher, Spark's `spark.network.crypto.cipher`. Spark's default is
/// [`Cipher::AesCtr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// `AES/GCM/NoPadding`: Spark's `GcmTransportCipher`, authenticated envelopes.
    AesGcm,
    /// `AES/CTR/NoPadding`: Spark's `CtrTransportCipher`, one keystream per direction,
    /// no integrity check.
    AesCtr,
}

impl Cipher {
    /// The cipher for a Spark transformation name, compared ignoring ASCII case as Java's
    /// JCE does; `None` for anything else.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        [Self::AesGcm, Self::AesCtr]
            .into_iter()
            .find(|cipher| cipher.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The Spark transformation name: `AES/GCM/NoPadding` or `AES/CTR/NoPadding`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AesGcm => "AES/GCM/NoPadding",
            Self::AesCtr => "AES/CTR/NoPadding",
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the channel key is derived, Spark's `spark.network.crypto.authEngineVersion`.
/// The handshake bytes are the same for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineVersion {
    /// Spark's default: the raw 32-byte X25519 shared secret is the key (AES-256).
    V1,
    /// The key is HKDF-SHA256(shared secret, transcript, "derivedKey"), 16 bytes (AES-128).
    V2,
}

impl EngineVersion {
    /// The version for Spark's setting, `"1"` or `"2"`; `None` for anything else.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "1" => Some(Self::V1),
            "2" => Some(Self::V2),
            _ => None,
        }
    }
}

/// The shared secret: the UTF-8 bytes of the configured string, used as they are (Spark
/// does not decode it), wiped from memory on drop. `Debug` prints no bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Secret(Vec<u8>);

impl Secret {
    /// The secret whose key material is the UTF-8 encoding of `s`.
    pub(crate) fn new(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }

    /// The key material, for HKDF.
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Compared in constant time (for configurations that are compared as a whole).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.as_bytes(), other.as_bytes()).into()
    }
}

impl Eq for Secret {}

/// What one side needs for the handshake: Spark's appId (`"sparkSaslUser"` for RPC
/// traffic, `SecurityManager.getSaslUser`), the shared secret, and the engine version.
#[derive(Clone, Debug)]
pub(crate) struct AuthSettings {
    /// The identity both sides must present alike, compared in constant time.
    pub(crate) app_id: String,
    /// The pre-shared secret.
    pub(crate) secret: Secret,
    /// How the channel key is derived from the handshake.
    pub(crate) version: EngineVersion,
}

/// Why a handshake or channel failed. Its text names the cause and the setting to check;
/// it never contains key material, the secret or any derived value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuthError {
    reason: Cow<'static, str>,
}

impl AuthError {
    /// An error with this explanation (lower case, one sentence or two).
    fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The explanation, as `Display` prints it.
    #[cfg(test)]
    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for AuthError {}

/// Whether an RPC body is an AuthEngine message: its first byte is Spark's tag `0xFB`
/// (`AuthMessage.TAG_BYTE`). A SASL message starts with `0xEA` instead.
pub(crate) fn is_auth_message(body: &[u8]) -> bool {
    body.first() == Some(&message::TAG)
}
