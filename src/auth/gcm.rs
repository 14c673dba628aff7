//! `AES/GCM/NoPadding`, Spark's `GcmTransportCipher`: every outgoing message becomes one
//! envelope of Tink `AesGcmHkdfStreaming` segments inside Spark's own length prefix.
//!
//! ```text
//! u64 BE total   the whole envelope's length, these 8 bytes included
//! u8     hl      header length: 1 + key length + 7 (24 for a 16-byte key, 40 for 32)
//! salt           key length random bytes, per envelope
//! prefix         7 random bytes, per envelope
//! segments       AES-GCM ciphertext + 16-byte tag each; all but the last are exactly
//!                32768 bytes on the wire (32752 of plaintext); the last is what is left
//! ```
//!
//! The envelope key is `HKDF-SHA256(session key, salt, u64_be(total), key length)`;
//! segment `i` uses the nonce `prefix ‖ u32_be(i) ‖ last` (last = 1 on the final segment),
//! no associated data, and a 128-bit tag. Unlike Tink's own stream format, the header
//! does not shorten the first segment: Spark writes it outside the segment arithmetic.
//!
//! [`GcmDecryptor`] follows Spark's `DecryptionHandler`: length, then header, then
//! segments until `total` bytes are in, whatever way the bytes are split or coalesced.
//! It hands out each segment's plaintext once its tag checks and holds at most one
//! segment (32768 bytes) plus the 48-byte length and header, whatever a peer claims.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit};
use std::fmt;
use zeroize::Zeroizing;

use super::keys::{ChannelKey, hkdf_sha256};
use super::{AuthError, Random};

/// Bytes of the length field in front of every envelope.
const LENGTH_LEN: usize = 8;
/// Bytes of the random nonce prefix in the header.
const PREFIX_LEN: usize = 7;
/// Bytes of a GCM tag.
const TAG_LEN: usize = 16;
/// Bytes on the wire of every segment but the last.
const SEGMENT_LEN: usize = 32768;
/// Plaintext bytes in every segment but the last.
pub(crate) const SEGMENT_PLAINTEXT_LEN: usize = SEGMENT_LEN - TAG_LEN;
/// The longest header: a 32-byte key.
const MAX_HEADER_LEN: usize = 1 + 32 + PREFIX_LEN;
/// The fewest bytes a last segment can have: one byte of plaintext and a tag. An envelope
/// with no plaintext has no segment at all (Tink's `expectedCiphertextSize(0)` is the
/// header alone): Spark sends one for an empty stream body (`StreamResponse` of 0 bytes).
const MIN_LAST_SEGMENT_LEN: u64 = 1 + TAG_LEN as u64;

/// What the decryptor's errors add while no envelope has come through yet.
const FIRST_ENVELOPE_HINT: &str = ". This is the first encrypted message from the peer: \
    two sides configured with different secrets, ciphers (rpc.io.encryption.cipher; Spark: \
    spark.network.crypto.cipher) or auth engine versions \
    (rpc.io.encryption.authEngineVersion; Spark: spark.network.crypto.authEngineVersion) fail exactly this way, since the cipher and the \
    version are not negotiated on the wire";

/// The header length for a session key: the length byte, the salt, the nonce prefix.
fn header_len(key: &ChannelKey) -> usize {
    1 + key.as_bytes().len() + PREFIX_LEN
}

/// The wire length of the envelope for `plaintext_len` bytes, or `None` when it would not
/// fit Spark's signed 64-bit length or Tink's 32-bit segment numbers.
fn envelope_len(plaintext_len: usize, key: &ChannelKey) -> Option<u64> {
    let plaintext_len = u64::try_from(plaintext_len).ok()?;
    let full = plaintext_len / SEGMENT_PLAINTEXT_LEN as u64;
    let rest = plaintext_len % SEGMENT_PLAINTEXT_LEN as u64;
    let segments = full + u64::from(rest > 0);
    if segments > 1 << 32 {
        return None;
    }
    let last = if rest > 0 { rest + TAG_LEN as u64 } else { 0 };
    let total = full
        .checked_mul(SEGMENT_LEN as u64)?
        .checked_add(last)?
        .checked_add((LENGTH_LEN + header_len(key)) as u64)?;
    i64::try_from(total).is_ok().then_some(total)
}

/// The nonce of segment `index`: the envelope's prefix, the index, the last flag.
fn segment_nonce(prefix: &[u8; PREFIX_LEN], index: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0; 12];
    nonce[..PREFIX_LEN].copy_from_slice(prefix);
    nonce[PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// The AES-GCM instance of one envelope, keyed by HKDF from the session key. Not boxed:
/// the encryptor builds one on the stack per envelope, and the decryptor is boxed whole.
#[allow(clippy::large_enum_variant)]
enum SegmentCipher {
    /// A 16-byte (version 2) session key gives 16-byte envelope keys.
    Aes128(Aes128Gcm),
    /// A 32-byte (version 1) session key gives 32-byte envelope keys.
    Aes256(Aes256Gcm),
}

impl SegmentCipher {
    /// Tink's per-envelope key: HKDF-SHA256 of the session key with the envelope's salt,
    /// and Spark's length field as "associated data" (HKDF info).
    fn new(key: &ChannelKey, salt: &[u8], total: u64) -> Result<Self, AuthError> {
        let info = total.to_be_bytes();
        Ok(match key {
            ChannelKey::Aes128(ikm) => {
                let mut okm = Zeroizing::new([0; 16]);
                hkdf_sha256(ikm, salt, &info, &mut *okm)?;
                Self::Aes128(Aes128Gcm::new((&*okm).into()))
            }
            ChannelKey::Aes256(ikm) => {
                let mut okm = Zeroizing::new([0; 32]);
                hkdf_sha256(ikm, salt, &info, &mut *okm)?;
                Self::Aes256(Aes256Gcm::new((&*okm).into()))
            }
        })
    }

    /// Encrypts `buf` in place and returns its tag.
    fn seal(&self, nonce: &[u8; 12], buf: &mut [u8]) -> Result<[u8; TAG_LEN], AuthError> {
        let tag = match self {
            Self::Aes128(cipher) => cipher.encrypt_inout_detached(nonce.into(), &[], buf.into()),
            Self::Aes256(cipher) => cipher.encrypt_inout_detached(nonce.into(), &[], buf.into()),
        };
        tag.map(Into::into)
            .map_err(|_| AuthError::new("AES-GCM refused to encrypt a segment"))
    }

    /// Checks `tag` and decrypts `buf` in place; `buf` is unchanged when the tag fails.
    fn open(&self, nonce: &[u8; 12], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let result = match self {
            Self::Aes128(cipher) => {
                cipher.decrypt_inout_detached(nonce.into(), &[], buf.into(), tag.into())
            }
            Self::Aes256(cipher) => {
                cipher.decrypt_inout_detached(nonce.into(), &[], buf.into(), tag.into())
            }
        };
        result.is_ok()
    }
}

/// The sending half: one envelope per call, with a fresh salt and nonce prefix.
pub(crate) struct GcmEncryptor {
    /// The session key, the HKDF input of every envelope key.
    key: ChannelKey,
    /// Where salts and nonce prefixes come from.
    rng: Box<dyn Random + Send>,
}

impl GcmEncryptor {
    /// The encryptor for the session key `key`, drawing salts and prefixes from `rng`.
    pub(super) fn new(key: ChannelKey, rng: Box<dyn Random + Send>) -> Self {
        Self { key, rng }
    }

    /// Appends one envelope holding the concatenation of `parts` to `out`; nothing for
    /// empty input. On error nothing is appended.
    pub(super) fn encrypt(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), AuthError> {
        let start = out.len();
        let result = self.encrypt_envelope(parts, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encrypt_envelope(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), AuthError> {
        let plaintext_len = super::channel::total_len(parts)
            .ok_or_else(|| AuthError::new("a message is too large to encrypt"))?;
        if plaintext_len == 0 {
            return Ok(());
        }
        let total = self.wire_len(plaintext_len)?;
        out.reserve(usize::try_from(total).unwrap_or(usize::MAX));
        let mut sealer = self.begin(plaintext_len, out)?;
        sealer.seal(parts, out)
    }

    /// The wire length of the envelope for `plaintext_len` (non-zero) bytes.
    fn wire_len(&self, plaintext_len: usize) -> Result<u64, AuthError> {
        envelope_len(plaintext_len, &self.key)
            .filter(|total| usize::try_from(*total).is_ok())
            .ok_or_else(|| {
                AuthError::new(format!(
                    "a message of {plaintext_len} bytes is too large for one AES-GCM envelope"
                ))
            })
    }

    /// Starts one envelope for `plaintext_len` bytes (at least one): appends its length
    /// field and header (with a fresh salt and nonce prefix) to `out`, and returns the
    /// [`EnvelopeSealer`] that seals its segments, a few at a time if the caller likes.
    /// On error nothing is appended.
    pub(crate) fn begin(
        &mut self,
        plaintext_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<EnvelopeSealer, AuthError> {
        if plaintext_len == 0 {
            return Err(AuthError::new(
                "an AES-GCM envelope needs at least one byte",
            ));
        }
        let total = self.wire_len(plaintext_len)?;
        let header_len = header_len(&self.key);
        let mut head = [0; LENGTH_LEN + MAX_HEADER_LEN];
        head[..LENGTH_LEN].copy_from_slice(&total.to_be_bytes());
        head[LENGTH_LEN] = u8::try_from(header_len).unwrap_or(u8::MAX);
        let head = &mut head[..LENGTH_LEN + header_len];
        // Tink draws the salt, then the prefix; one call gives the same bytes in order.
        self.rng.fill(&mut head[LENGTH_LEN + 1..])?;
        let (salt, prefix) = head[LENGTH_LEN + 1..].split_at(header_len - 1 - PREFIX_LEN);
        let prefix: [u8; PREFIX_LEN] = prefix.try_into().unwrap_or_default();
        let cipher = SegmentCipher::new(&self.key, salt, total)?;
        out.extend_from_slice(head);
        Ok(EnvelopeSealer {
            cipher,
            prefix,
            index: 0,
            left: plaintext_len,
        })
    }

    /// The most [`encrypt`](Self::encrypt) appends for `len` bytes of plaintext.
    pub(super) fn max_output(&self, len: usize) -> usize {
        match len {
            0 => 0,
            _ => envelope_len(len, &self.key)
                .and_then(|total| usize::try_from(total).ok())
                .unwrap_or(usize::MAX),
        }
    }
}

impl fmt::Debug for GcmEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcmEncryptor")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The segments of one envelope that [`GcmEncryptor::begin`] started: sealed in order,
/// in as many calls as the caller likes, each call whole segments of
/// [`SEGMENT_PLAINTEXT_LEN`] plaintext bytes (or what is left, for the last). A writer
/// seals a large frame this way as the socket drains, holding a few segments of
/// ciphertext instead of the whole envelope.
pub(crate) struct EnvelopeSealer {
    /// The envelope's AES-GCM key.
    cipher: SegmentCipher,
    /// The envelope's nonce prefix.
    prefix: [u8; PREFIX_LEN],
    /// The next segment's index.
    index: u32,
    /// Plaintext bytes not sealed yet.
    left: usize,
}

impl EnvelopeSealer {
    /// Plaintext bytes not sealed yet; 0 once the last segment is.
    pub(crate) fn left(&self) -> usize {
        self.left
    }

    /// Seals the concatenation of `parts` as the next segments, appending ciphertext and
    /// tags to `out`. The plaintext must be a whole number of segments
    /// ([`SEGMENT_PLAINTEXT_LEN`] bytes each) or exactly what is left. On error nothing is
    /// appended.
    pub(crate) fn seal(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), AuthError> {
        let len = super::channel::total_len(parts)
            .ok_or_else(|| AuthError::new("a message is too large to encrypt"))?;
        if len > self.left || (len < self.left && len % SEGMENT_PLAINTEXT_LEN != 0) {
            return Err(AuthError::new(format!(
                "{len} bytes do not make whole AES-GCM segments of the {} left of an envelope",
                self.left
            )));
        }
        let start = out.len();
        out.reserve(len + len.div_ceil(SEGMENT_PLAINTEXT_LEN) * TAG_LEN);
        let mut parts = parts.iter().copied();
        let mut pending: &[u8] = &[];
        let mut todo = len;
        while todo > 0 {
            let segment_len = todo.min(SEGMENT_PLAINTEXT_LEN);
            todo -= segment_len;
            self.left -= segment_len;
            let segment_start = out.len();
            let mut need = segment_len;
            while need > 0 {
                if pending.is_empty() {
                    match parts.next() {
                        Some(part) => pending = part,
                        None => break,
                    }
                    continue;
                }
                let (now, later) = pending.split_at(need.min(pending.len()));
                out.extend_from_slice(now);
                pending = later;
                need -= now.len();
            }
            let nonce = segment_nonce(&self.prefix, self.index, self.left == 0);
            match self.cipher.seal(&nonce, &mut out[segment_start..]) {
                Ok(tag) => out.extend_from_slice(&tag),
                Err(err) => {
                    out.truncate(start);
                    return Err(err);
                }
            }
            self.index = self.index.wrapping_add(1);
        }
        Ok(())
    }
}

impl fmt::Debug for EnvelopeSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeSealer")
            .field("index", &self.index)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

/// Where the decryptor is in the current envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the 8-byte length (`head` holds what has come).
    Length,
    /// Reading the header (`head` holds the length and what has come of the header).
    Header,
    /// Reading segments.
    Segments,
    /// Failed; every later call fails with the same error.
    Failed,
}

/// The receiving half: an incremental state machine over the byte stream.
pub(crate) struct GcmDecryptor {
    /// The session key, the HKDF input of every envelope key.
    key: ChannelKey,
    /// Where in the current envelope the stream is.
    phase: Phase,
    /// The length field and the header of the current envelope, as far as they came.
    head: [u8; LENGTH_LEN + MAX_HEADER_LEN],
    /// How much of `head` is filled.
    head_len: usize,
    /// The current envelope's claimed total length.
    total: u64,
    /// Wire bytes of the current envelope's segments not yet complete; 0 until the
    /// header's length byte has been checked.
    remaining: u64,
    /// The current segment's index.
    index: u32,
    /// The current envelope's nonce prefix.
    prefix: [u8; PREFIX_LEN],
    /// The current envelope's cipher, once its header is in.
    cipher: Option<SegmentCipher>,
    /// A segment's bytes as far as they came, when they came split.
    segment: Vec<u8>,
    /// Envelopes decrypted whole so far.
    envelopes: u64,
    /// Why it failed, once it has.
    failure: Option<AuthError>,
}

impl GcmDecryptor {
    /// The decryptor for the session key `key`.
    pub(super) fn new(key: ChannelKey) -> Self {
        Self {
            key,
            phase: Phase::Length,
            head: [0; LENGTH_LEN + MAX_HEADER_LEN],
            head_len: 0,
            total: 0,
            remaining: 0,
            index: 0,
            prefix: [0; PREFIX_LEN],
            cipher: None,
            segment: Vec::new(),
            envelopes: 0,
            failure: None,
        }
    }

    /// Takes the next bytes of the stream and appends the plaintext of every segment they
    /// complete to `out`. After an error, every later call fails with it.
    pub(super) fn decrypt(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let result = self.run(input, out);
        if let Err(err) = &result {
            self.phase = Phase::Failed;
            self.cipher = None;
            self.segment = Vec::new();
            self.failure = Some(err.clone());
        }
        result
    }

    /// An envelope has started and not finished.
    pub(super) fn is_mid_envelope(&self) -> bool {
        match self.phase {
            Phase::Length => self.head_len > 0,
            Phase::Header | Phase::Segments => true,
            Phase::Failed => false,
        }
    }

    /// The capacity of the segment buffer, to check the memory bound.
    #[cfg(test)]
    pub(super) fn buffered_capacity(&self) -> usize {
        self.segment.capacity()
    }

    fn run(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthError> {
        while !input.is_empty() {
            match self.phase {
                Phase::Length => {
                    input = self.fill_head(input, LENGTH_LEN);
                    if self.head_len == LENGTH_LEN {
                        self.start_envelope()?;
                    }
                }
                Phase::Header => {
                    let header_len = header_len(&self.key);
                    input = self.fill_head(input, LENGTH_LEN + header_len);
                    self.check_header(header_len)?;
                    if self.head_len == LENGTH_LEN + header_len {
                        self.start_segments(header_len)?;
                    }
                }
                Phase::Segments => input = self.read_segment(input, out)?,
                Phase::Failed => {
                    return Err(self
                        .failure
                        .clone()
                        .unwrap_or_else(|| AuthError::new("the AES-GCM channel failed earlier")));
                }
            }
        }
        Ok(())
    }

    /// Copies bytes from `input` into `head` until it holds `upto`; returns the rest.
    fn fill_head<'i>(&mut self, input: &'i [u8], upto: usize) -> &'i [u8] {
        let want = upto.saturating_sub(self.head_len).min(input.len());
        let (now, rest) = input.split_at(want);
        if let Some(dst) = self.head.get_mut(self.head_len..self.head_len + want) {
            dst.copy_from_slice(now);
            self.head_len += want;
        }
        rest
    }

    fn hint(&self) -> &'static str {
        if self.envelopes == 0 {
            FIRST_ENVELOPE_HINT
        } else {
            ""
        }
    }

    /// Takes the length field. Spark refuses only a negative one here; the rest of the
    /// checks wait for the header's first byte (see [`check_header`](Self::check_header)).
    fn start_envelope(&mut self) -> Result<(), AuthError> {
        let mut field = [0; LENGTH_LEN];
        field.copy_from_slice(&self.head[..LENGTH_LEN]);
        let total = u64::from_be_bytes(field);
        if i64::try_from(total).is_err() {
            return Err(self.bad_length());
        }
        self.total = total;
        self.phase = Phase::Header;
        Ok(())
    }

    fn bad_length(&self) -> AuthError {
        let mut field = [0; LENGTH_LEN];
        field.copy_from_slice(&self.head[..LENGTH_LEN]);
        AuthError::new(format!(
            "invalid AES-GCM envelope length {} from the peer{}",
            i64::from_be_bytes(field),
            self.hint()
        ))
    }

    /// Checks the header's length byte as soon as it is in (Tink rejects one that is not
    /// what its key size gives), then the length field against the segment layout: room
    /// for the header and at least one byte of plaintext, and a last segment longer than
    /// a tag. The byte goes first: a version mismatch shows there, and is named.
    fn check_header(&mut self, header_len: usize) -> Result<(), AuthError> {
        if self.head_len <= LENGTH_LEN || self.remaining != 0 {
            return Ok(());
        }
        let byte = usize::from(self.head[LENGTH_LEN]);
        if byte != header_len {
            return Err(self.bad_header_byte(byte, header_len));
        }
        let Some(segments) = self.total.checked_sub((LENGTH_LEN + header_len) as u64) else {
            return Err(self.bad_length());
        };
        let last = segments % SEGMENT_LEN as u64;
        if last != 0 && last < MIN_LAST_SEGMENT_LEN {
            return Err(self.bad_length());
        }
        self.remaining = segments;
        Ok(())
    }

    fn bad_header_byte(&self, byte: usize, header_len: usize) -> AuthError {
        let ours = self.key.as_bytes().len();
        let theirs = byte.wrapping_sub(1 + PREFIX_LEN);
        AuthError::new(if theirs == 16 || theirs == 32 {
            let version = |key_len| if key_len == 32 { 1 } else { 2 };
            format!(
                "the peer's AES-GCM envelope header is for a {theirs}-byte session key \
                 (auth engine version {}), this side derives a {ours}-byte key (version \
                 {}): set the same rpc.io.encryption.authEngineVersion (Spark: \
                 spark.network.crypto.authEngineVersion) on both sides; it is not \
                 negotiated on the wire",
                version(theirs),
                version(ours)
            )
        } else {
            format!(
                "invalid AES-GCM envelope header length {byte} from the peer, expected \
                 {header_len}{}",
                self.hint()
            )
        })
    }

    /// The header is in: derives the envelope's key.
    fn start_segments(&mut self, header_len: usize) -> Result<(), AuthError> {
        let salt_end = LENGTH_LEN + header_len - PREFIX_LEN;
        let salt = &self.head[LENGTH_LEN + 1..salt_end];
        self.cipher = Some(SegmentCipher::new(&self.key, salt, self.total)?);
        self.prefix
            .copy_from_slice(&self.head[salt_end..salt_end + PREFIX_LEN]);
        self.head_len = 0;
        self.index = 0;
        self.phase = Phase::Segments;
        if self.remaining == 0 {
            // An empty envelope: the header was all of it.
            self.envelopes += 1;
            self.cipher = None;
            self.phase = Phase::Length;
        }
        Ok(())
    }

    /// Reads (part of) the current segment; decrypts it once whole. Returns the rest of
    /// `input`.
    fn read_segment<'i>(
        &mut self,
        input: &'i [u8],
        out: &mut Vec<u8>,
    ) -> Result<&'i [u8], AuthError> {
        // At most SEGMENT_LEN, so the cast cannot truncate.
        let len = self.remaining.min(SEGMENT_LEN as u64) as usize;
        let rest = if self.segment.is_empty() && input.len() >= len {
            // The whole segment is here: decrypt it straight from the input.
            let (segment, rest) = input.split_at(len);
            self.open_segment(segment, out)?;
            rest
        } else {
            if self.segment.is_empty() {
                self.segment.reserve_exact(len);
            }
            let want = (len - self.segment.len()).min(input.len());
            let (now, rest) = input.split_at(want);
            self.segment.extend_from_slice(now);
            if self.segment.len() == len {
                let segment = std::mem::take(&mut self.segment);
                let result = self.open_segment(&segment, out);
                self.segment = segment;
                self.segment.clear();
                result?;
            }
            rest
        };
        Ok(rest)
    }

    /// Checks and decrypts one whole segment (ciphertext and tag) into `out`.
    fn open_segment(&mut self, segment: &[u8], out: &mut Vec<u8>) -> Result<(), AuthError> {
        let last = self.remaining == segment.len() as u64;
        let (Some(cipher), Some((ciphertext, tag))) =
            (&self.cipher, segment.split_last_chunk::<TAG_LEN>())
        else {
            return Err(AuthError::new("an AES-GCM segment without its key or tag"));
        };
        let start = out.len();
        out.extend_from_slice(ciphertext);
        let nonce = segment_nonce(&self.prefix, self.index, last);
        if !cipher.open(&nonce, &mut out[start..], tag) {
            out.truncate(start);
            return Err(AuthError::new(format!(
                "AES-GCM tag check failed on segment {} of the peer's envelope {}: the \
                 bytes were altered, cut short or replayed on the way, or the key differs{}",
                self.index,
                self.envelopes,
                self.hint()
            )));
        }
        self.remaining -= segment.len() as u64;
        if last {
            self.envelopes += 1;
            self.cipher = None;
            self.phase = Phase::Length;
        } else {
            self.index = self
                .index
                .checked_add(1)
                .ok_or_else(|| AuthError::new("an AES-GCM envelope with over 2^32 segments"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for GcmDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcmDecryptor")
            .field("key", &self.key)
            .field("phase", &self.phase)
            .field("envelopes", &self.envelopes)
            .finish_non_exhaustive()
    }
}
