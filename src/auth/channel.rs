//! One direction of an encrypted connection, whichever cipher it uses: the [`Encryptor`]
//! for what this side sends and the [`Decryptor`] for what it receives. Spark puts the
//! matching handlers first in the netty pipeline, under the frame decoder, so frames are
//! unchanged inside and only the bytes on the socket are transformed; the transport uses
//! these the same way.

use std::fmt;

use super::AuthError;
use super::ctr::CtrStream;
use super::gcm::{EnvelopeSealer, GcmDecryptor, GcmEncryptor};

/// The total length of `parts`, or `None` if it overflows `usize`.
pub(super) fn total_len(parts: &[&[u8]]) -> Option<usize> {
    parts
        .iter()
        .try_fold(0usize, |total, part| total.checked_add(part.len()))
}

/// The sending half of an encrypted connection.
pub(crate) enum Encryptor {
    /// `AES/CTR/NoPadding`: one keystream for the whole direction.
    Ctr(CtrStream),
    /// `AES/GCM/NoPadding`: one envelope per call.
    Gcm(GcmEncryptor),
}

impl Encryptor {
    /// Encrypts the next plaintext of this direction's stream (whole frames or any run of
    /// bytes, in stream order; `parts` are concatenated) and appends what goes on the wire
    /// to `out`: CTR the same number of bytes; GCM one envelope for the whole of `parts`
    /// (never an empty envelope: nothing is appended for empty input). On error nothing
    /// is appended.
    pub(crate) fn encrypt(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), AuthError> {
        match self {
            Self::Ctr(stream) => stream.apply_to_parts(parts, out),
            Self::Gcm(encryptor) => encryptor.encrypt(parts, out),
        }
    }

    /// CTR only, the fast path: encrypts `bytes` in place and returns true. Returns false,
    /// doing nothing, for GCM, and for a CTR keystream that is used up (after 2^128
    /// blocks; [`encrypt`](Self::encrypt) then reports the error).
    pub(crate) fn encrypt_in_place(&mut self, bytes: &mut [u8]) -> bool {
        match self {
            Self::Ctr(stream) => stream.apply(bytes).is_ok(),
            Self::Gcm(_) => false,
        }
    }

    /// GCM only: starts one envelope for `len` plaintext bytes (at least one), appending
    /// its length field and header to `out`, and returns the sealer of its segments (see
    /// [`EnvelopeSealer`]). `None`, doing nothing, for CTR.
    pub(crate) fn begin_envelope(
        &mut self,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Option<Result<EnvelopeSealer, AuthError>> {
        match self {
            Self::Ctr(_) => None,
            Self::Gcm(encryptor) => Some(encryptor.begin(len, out)),
        }
    }

    /// The most [`encrypt`](Self::encrypt) appends for `len` plaintext bytes: `len` for
    /// CTR; for GCM the envelope's length field, header and segment tags as well.
    pub(crate) fn max_output(&self, len: usize) -> usize {
        match self {
            Self::Ctr(_) => len,
            Self::Gcm(encryptor) => encryptor.max_output(len),
        }
    }
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ctr(stream) => f.debug_tuple("Encryptor::Ctr").field(stream).finish(),
            Self::Gcm(encryptor) => f.debug_tuple("Encryptor::Gcm").field(encryptor).finish(),
        }
    }
}

/// The receiving half of an encrypted connection.
pub(crate) enum Decryptor {
    /// `AES/CTR/NoPadding`: one keystream for the whole direction.
    Ctr(CtrStream),
    /// `AES/GCM/NoPadding`: envelopes, decoded incrementally. Boxed: it holds an
    /// envelope's AES-GCM key schedule and its buffers.
    Gcm(Box<GcmDecryptor>),
}

impl Decryptor {
    /// Takes the next bytes read from the socket (split or coalesced arbitrarily) and
    /// appends the plaintext they complete to `out` (GCM: each segment's plaintext once
    /// its tag checks). Errors (GCM): a bad envelope length or header byte, a tag that
    /// fails (tampered, replayed, truncated and resumed, wrong key). After an error every
    /// later call fails too. Memory held is at most one segment (32768 bytes) plus a
    /// header, whatever the peer claims.
    pub(crate) fn decrypt(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthError> {
        match self {
            Self::Ctr(stream) => stream.apply_to_parts(&[input], out),
            Self::Gcm(decryptor) => decryptor.decrypt(input, out),
        }
    }

    /// An envelope has started and not finished (always false for CTR): the stream is
    /// truncated if it ends now.
    pub(crate) fn is_mid_envelope(&self) -> bool {
        match self {
            Self::Ctr(_) => false,
            Self::Gcm(decryptor) => decryptor.is_mid_envelope(),
        }
    }
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ctr(stream) => f.debug_tuple("Decryptor::Ctr").field(stream).finish(),
            Self::Gcm(decryptor) => f.debug_tuple("Decryptor::Gcm").field(decryptor).finish(),
        }
    }
}
