//! The one message of both handshake steps, Spark's `AuthMessage` (`spark.network.crypto`):
//!
//! ```text
//! tag 0xFB | u32 BE length | appId (UTF-8) | u32 BE length | salt | u32 BE length | ciphertext
//! ```
//!
//! The lengths are Spark's `Encoders.Strings` and `Encoders.ByteArrays`. Decoding takes
//! untrusted bytes: it borrows from the input (so it allocates nothing, whatever a length
//! claims), checks every length against the bytes actually present, and rejects trailing
//! bytes, so a decoded message re-encodes to exactly the bytes it came from (the
//! handshake transcript relies on that).

use super::AuthError;

/// The first byte of every AuthEngine message (Spark's `AuthMessage.TAG_BYTE`, -5).
pub(super) const TAG: u8 = 0xFB;

/// The first byte of a SASL message (Spark's `SaslMessage.TAG_BYTE`, -22): a peer with
/// `spark.network.crypto.enabled=false`.
const SASL_TAG: u8 = 0xEA;

/// One handshake message, borrowed from the bytes it was decoded from or will be encoded
/// into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AuthMessage<'a> {
    /// The sender's appId, as UTF-8 bytes (compared as bytes, never decoded).
    pub(super) app_id: &'a [u8],
    /// The HKDF salt of the key that seals the public key.
    pub(super) salt: &'a [u8],
    /// Tink `AesGcmJce` output: 12-byte nonce, sealed X25519 public key, 16-byte tag.
    pub(super) ciphertext: &'a [u8],
}

impl<'a> AuthMessage<'a> {
    /// Decodes a whole message body (an `RpcRequest` or `RpcResponse` body).
    pub(super) fn decode(body: &'a [u8]) -> Result<Self, AuthError> {
        let mut reader = Reader { rest: body };
        match reader.take(1, "the tag byte")?.first() {
            Some(&TAG) => {}
            Some(&SASL_TAG) => {
                return Err(AuthError::new(
                    "the peer started SASL (DIGEST-MD5) authentication, which rpcenv does \
                     not speak; set spark.network.crypto.enabled=true on the Spark side",
                ));
            }
            other => {
                return Err(AuthError::new(format!(
                    "expected an AuthEngine message (tag 0xfb), the peer sent one starting \
                     with 0x{:02x}",
                    other.copied().unwrap_or_default()
                )));
            }
        }
        let app_id = reader.field("the appId")?;
        let salt = reader.field("the salt")?;
        let ciphertext = reader.field("the ciphertext")?;
        if !reader.rest.is_empty() {
            return Err(AuthError::new(format!(
                "malformed auth message: {} bytes after its last field",
                reader.rest.len()
            )));
        }
        Ok(Self {
            app_id,
            salt,
            ciphertext,
        })
    }

    /// Appends the encoding to `out`. Fails only for a field of 4 GiB or more.
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), AuthError> {
        out.reserve(self.encoded_len());
        out.push(TAG);
        for field in [self.app_id, self.salt, self.ciphertext] {
            let len = u32::try_from(field.len()).map_err(|_| {
                AuthError::new("an auth message field is longer than 4 GiB; check the appId")
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        Ok(())
    }

    /// The encoding as a new buffer.
    pub(super) fn encode(&self) -> Result<Vec<u8>, AuthError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// The length of the encoding.
    pub(super) fn encoded_len(&self) -> usize {
        1 + 12 + self.app_id.len() + self.salt.len() + self.ciphertext.len()
    }
}

/// Reads fields off the front of a message, checking each length first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The next `n` bytes, or an error naming `what` when fewer remain.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], AuthError> {
        if n > self.rest.len() {
            return Err(AuthError::new(format!(
                "truncated auth message: {what} needs {n} bytes, {} remain",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A u32-BE-length-prefixed field.
    fn field(&mut self, what: &str) -> Result<&'a [u8], AuthError> {
        let prefix = self.take(4, what)?;
        let mut len = [0; 4];
        len.copy_from_slice(prefix);
        // A length that does not fit usize exceeds any input, so `take` rejects it.
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        self.take(len, what)
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::auth::tests::hex(s)
    }

    /// The body of Spark's `ctr-v2` challenge (Appendix A), field by field.
    const BODY: &str = "fb0000000d737061726b5361736c557365720000001044b07eebf234142e207ef9f55a3e9f61\
                        0000003cc680ff0ace0f68864aedde9257952edc7bb0a562bb2171478357bb442fc8f3e9\
                        45e7b17de6e7d76a020f4214bac7e22c27a6ecea2ef3173829516eef";

    #[test]
    fn decodes_spark_challenge_and_reencodes_it_byte_for_byte() {
        let body = hex(BODY);
        let msg = AuthMessage::decode(&body).unwrap();
        assert_eq!(msg.app_id, b"sparkSaslUser");
        assert_eq!(msg.salt, hex("44b07eebf234142e207ef9f55a3e9f61"));
        assert_eq!(msg.ciphertext.len(), 60);
        assert_eq!(&msg.ciphertext[..12], hex("c680ff0ace0f68864aedde92"));
        assert_eq!(msg.encoded_len(), 102);
        assert_eq!(msg.encode().unwrap(), body);
    }

    #[test]
    fn every_prefix_is_rejected_without_panicking() {
        let body = hex(BODY);
        for len in 0..body.len() {
            let err = AuthMessage::decode(&body[..len]).unwrap_err();
            assert!(err.reason().contains("auth message"), "{len}: {err}");
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut body = hex(BODY);
        body.push(0);
        let err = AuthMessage::decode(&body).unwrap_err();
        assert_eq!(
            err.reason(),
            "malformed auth message: 1 bytes after its last field"
        );
    }

    #[test]
    fn other_tags_are_named() {
        let mut body = hex(BODY);
        body[0] = 0xEA;
        let err = AuthMessage::decode(&body).unwrap_err();
        assert!(err.reason().contains("SASL"), "{err}");
        assert!(
            err.reason().contains("spark.network.crypto.enabled=true"),
            "{err:#}"
        );
        body[0] = 0x03;
        let err = AuthMessage::decode(&body).unwrap_err();
        assert!(err.reason().contains("0x03"), "{err}");
        assert!(!crate::auth::is_auth_message(&body));
        assert!(!crate::auth::is_auth_message(&[]));
        assert!(crate::auth::is_auth_message(&hex(BODY)));
    }

    #[test]
    fn huge_claimed_lengths_are_rejected_not_allocated() {
        for claimed in [0xFFFF_FFFFu32, 0x8000_0000, 0x7FFF_FFFF, 1 << 30] {
            let mut body = vec![TAG];
            body.extend_from_slice(&claimed.to_be_bytes());
            body.extend_from_slice(b"short");
            let err = AuthMessage::decode(&body).unwrap_err();
            assert_eq!(
                err.reason(),
                format!("truncated auth message: the appId needs {claimed} bytes, 5 remain")
            );
        }
        // The same in the last field.
        let mut body = hex(&BODY[..2 * 42]);
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(AuthMessage::decode(&body).is_err());
    }

    #[test]
    fn empty_fields_round_trip() {
        let msg = AuthMessage {
            app_id: b"",
            salt: b"",
            ciphertext: b"",
        };
        let bytes = msg.encode().unwrap();
        assert_eq!(bytes, [TAG, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(AuthMessage::decode(&bytes).unwrap(), msg);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
            if let Ok(msg) = AuthMessage::decode(&bytes) {
                prop_assert_eq!(msg.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn round_trips(
            app_id in vec(any::<u8>(), 0..64),
            salt in vec(any::<u8>(), 0..64),
            ciphertext in vec(any::<u8>(), 0..128),
        ) {
            let msg = AuthMessage { app_id: &app_id, salt: &salt, ciphertext: &ciphertext };
            let bytes = msg.encode().unwrap();
            prop_assert_eq!(bytes.len(), msg.encoded_len());
            prop_assert_eq!(AuthMessage::decode(&bytes).unwrap(), msg);
        }

        #[test]
        fn mutated_spark_messages_never_panic(
            edits in vec((0usize..102, any::<u8>()), 1..6),
            cut in 0usize..=102,
        ) {
            let mut body = hex(BODY);
            for (at, byte) in edits {
                body[at] = byte;
            }
            body.truncate(cut);
            if let Ok(msg) = AuthMessage::decode(&body) {
                prop_assert_eq!(msg.encode().unwrap(), body);
            }
        }
    }
}
