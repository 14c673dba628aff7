//! The AuthEngine handshake of Spark 4.3 (`AuthEngine`, driven by `AuthClientBootstrap`
//! and `AuthRpcHandler`): one challenge from the client, one response from the server,
//! each an [`AuthMessage`] in the body of an ordinary `RpcRequest` / `RpcResponse`.
//!
//! Each side seals an ephemeral X25519 public key (RFC 7748) with AES-128-GCM under a key
//! encryption key `HKDF-SHA256(secret, salt, aad, 16)`, where `aad` is the appId and the
//! salt, plus, for the server, the client's whole encoded challenge; the same `aad` is the
//! GCM associated data. The sealed form is Tink `AesGcmJce`'s: a random 12-byte nonce,
//! the ciphertext, the 16-byte tag. Only a holder of the secret can produce or open
//! either message; there is no other key confirmation, so a wrong secret fails here and a
//! wrong cipher or engine version at the first encrypted frame.
//!
//! Both sides then compute the X25519 shared secret and derive [`SessionKeys`] from it and
//! the transcript (challenge followed by response, as encoded).

use std::fmt;

use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::keys::{Role, SessionKeys, hkdf_sha256};
use super::message::AuthMessage;
use super::{AuthError, AuthSettings, Random};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit};

/// Bytes of each side's salt (Spark: `AES_GCM_KEY_SIZE_BYTES`).
const SALT_LEN: usize = 16;
/// Bytes of the key encryption key: AES-128.
const KEK_LEN: usize = 16;
/// Bytes of Tink's AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Bytes of a GCM tag.
const TAG_LEN: usize = 16;
/// Bytes of an X25519 key.
const KEY_LEN: usize = 32;
/// Bytes of a sealed public key: nonce, ciphertext, tag (60).
const SEALED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// The client's side of a handshake under way: its X25519 secret (wiped on drop) and
/// the challenge it sent.
pub(crate) struct ClientHandshake {
    /// The ephemeral X25519 private key (x25519-dalek wipes it on drop).
    private: StaticSecret,
    /// The encoded challenge, the first half of the transcript.
    challenge: Vec<u8>,
}

impl ClientHandshake {
    /// Starts a handshake (`AuthEngine.challenge`): draws the X25519 key, the salt and the
    /// nonce from `rng`, in that order. Returns the handshake and the body of the challenge
    /// `RpcRequest`.
    pub(crate) fn start(
        settings: &AuthSettings,
        rng: &mut dyn Random,
    ) -> Result<(Self, Vec<u8>), AuthError> {
        check_secret(settings)?;
        let private = draw_private_key(rng)?;
        let public = PublicKey::from(&private);
        let challenge = seal_message(settings, public.as_bytes(), &[], rng)?;
        let body = challenge.clone();
        Ok((Self { private, challenge }, body))
    }

    /// Finishes the handshake (`AuthEngine.deriveSessionCipher`) with the body of the
    /// server's `RpcResponse`: checks the appId, opens the server's public key, and
    /// derives this side's session keys.
    pub(crate) fn finish(
        self,
        settings: &AuthSettings,
        response: &[u8],
    ) -> Result<SessionKeys, AuthError> {
        let message = AuthMessage::decode(response)?;
        check_app_id(settings, message.app_id, "server")?;
        let server_public = open_public_key(settings, &message, &self.challenge).map_err(|()| {
            AuthError::new(
                "the server's auth response does not decrypt: the server has a different \
                 secret (rpc.authenticate.secret; Spark: spark.authenticate.secret) or appId, \
                 or the response was altered on the way",
            )
        })?;
        let shared = self.private.diffie_hellman(&server_public);
        if !shared.was_contributory() {
            return Err(AuthError::new(
                "the server's X25519 public key is a low-order point",
            ));
        }
        let transcript = [self.challenge.as_slice(), response].concat();
        SessionKeys::derive(
            settings.version,
            shared.as_bytes(),
            &transcript,
            Role::Client,
        )
    }
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("challenge_len", &self.challenge.len())
            .finish_non_exhaustive()
    }
}

/// The server's side (`AuthEngine.response` in `AuthRpcHandler`): takes the body of the
/// client's first `RpcRequest`, checks its appId and opens the client's public key, then
/// draws its own X25519 key, salt and nonce from `rng`, in that order. Returns the body of
/// the `RpcResponse` to send (in plaintext; encryption starts after it) and this side's
/// session keys. On error the caller answers with an `RpcFailure` and closes, as Spark
/// does.
pub(crate) fn respond(
    settings: &AuthSettings,
    challenge: &[u8],
    rng: &mut dyn Random,
) -> Result<(Vec<u8>, SessionKeys), AuthError> {
    check_secret(settings)?;
    let message = AuthMessage::decode(challenge)?;
    check_app_id(settings, message.app_id, "client")?;
    let client_public = open_public_key(settings, &message, &[]).map_err(|()| {
        AuthError::new(
            "the client's auth challenge does not decrypt: the client has a different secret \
             (rpc.authenticate.secret; Spark: spark.authenticate.secret), or the challenge \
             was altered on the way",
        )
    })?;
    let private = draw_private_key(rng)?;
    let shared = private.diffie_hellman(&client_public);
    if !shared.was_contributory() {
        // Tink refuses these points too (`Curve25519.validatePubKeyAndClearMsb`).
        return Err(AuthError::new(
            "the client's X25519 public key is a low-order point",
        ));
    }
    let public = PublicKey::from(&private);
    let response = seal_message(settings, public.as_bytes(), challenge, rng)?;
    let transcript = [challenge, response.as_slice()].concat();
    let keys = SessionKeys::derive(
        settings.version,
        shared.as_bytes(),
        &transcript,
        Role::Server,
    )?;
    Ok((response, keys))
}

/// Refuses an empty secret: anyone can present it, so it authenticates nothing.
fn check_secret(settings: &AuthSettings) -> Result<(), AuthError> {
    if settings.secret.as_bytes().is_empty() {
        return Err(AuthError::new(
            "this side's shared secret is empty, which authenticates nothing: give a \
             secret (rpc.authenticate.secret, .secret.file or .secret.env)",
        ));
    }
    Ok(())
}

/// Draws an X25519 private key. Tink sets and clears some bits of the 32 bytes it draws;
/// X25519 clamps the scalar the same way (RFC 7748 §5), so the raw draw gives the same key.
fn draw_private_key(rng: &mut dyn Random) -> Result<StaticSecret, AuthError> {
    let mut bytes = Zeroizing::new([0; KEY_LEN]);
    rng.fill(&mut *bytes)?;
    Ok(StaticSecret::from(*bytes))
}

/// The key encryption key of one message: `HKDF-SHA256(secret, salt, aad, 16)`.
pub(super) fn key_encryption_key(
    settings: &AuthSettings,
    salt: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<[u8; KEK_LEN]>, AuthError> {
    let mut kek = Zeroizing::new([0; KEK_LEN]);
    hkdf_sha256(settings.secret.as_bytes(), salt, aad, &mut *kek)?;
    Ok(kek)
}

/// `appId ‖ salt ‖ transcript`: the HKDF info and GCM associated data of one message
/// (`transcript` is empty for the challenge, the encoded challenge for the response).
fn associated_data(app_id: &[u8], salt: &[u8], transcript: &[u8]) -> Vec<u8> {
    [app_id, salt, transcript].concat()
}

/// Builds and encodes this side's message (`AuthEngine.encryptEphemeralPublicKey`):
/// draws the salt, then the nonce.
fn seal_message(
    settings: &AuthSettings,
    public: &[u8; KEY_LEN],
    transcript: &[u8],
    rng: &mut dyn Random,
) -> Result<Vec<u8>, AuthError> {
    let mut salt = [0; SALT_LEN];
    rng.fill(&mut salt)?;
    let app_id = settings.app_id.as_bytes();
    let aad = associated_data(app_id, &salt, transcript);
    let kek = key_encryption_key(settings, &salt, &aad)?;

    let mut nonce = [0; NONCE_LEN];
    rng.fill(&mut nonce)?;
    let mut sealed = [0; SEALED_LEN];
    let (nonce_field, rest) = sealed.split_at_mut(NONCE_LEN);
    nonce_field.copy_from_slice(&nonce);
    let (ciphertext, tag) = rest.split_at_mut(KEY_LEN);
    ciphertext.copy_from_slice(public);
    let computed = Aes128Gcm::new((&*kek).into())
        .encrypt_inout_detached((&nonce).into(), &aad, ciphertext.into())
        .map_err(|_| AuthError::new("AES-GCM refused to seal the X25519 public key"))?;
    tag.copy_from_slice(&computed);

    AuthMessage {
        app_id,
        salt: &salt,
        ciphertext: &sealed,
    }
    .encode()
}

/// Opens the peer's public key (`AuthEngine.decryptEphemeralPublicKey`). `Err(())` for
/// any failure: a wrong length or a failed tag, which both mean a different secret or an
/// altered message.
fn open_public_key(
    settings: &AuthSettings,
    message: &AuthMessage<'_>,
    transcript: &[u8],
) -> Result<PublicKey, ()> {
    let sealed: &[u8; SEALED_LEN] = message.ciphertext.try_into().map_err(|_| ())?;
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(KEY_LEN);
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| ())?;
    let tag = <[u8; TAG_LEN]>::try_from(tag).map_err(|_| ())?;
    let aad = associated_data(message.app_id, message.salt, transcript);
    let kek = key_encryption_key(settings, message.salt, &aad).map_err(|_| ())?;
    let mut public = [0; KEY_LEN];
    public.copy_from_slice(ciphertext);
    Aes128Gcm::new((&*kek).into())
        .decrypt_inout_detached(
            (&nonce).into(),
            &aad,
            (&mut public[..]).into(),
            (&tag).into(),
        )
        .map_err(|_| ())?;
    Ok(PublicKey::from(public))
}

/// Checks, in constant time, that the peer presented this side's appId
/// (`AuthEngine`'s "appId is different.").
fn check_app_id(settings: &AuthSettings, theirs: &[u8], peer: &str) -> Result<(), AuthError> {
    let ours = settings.app_id.as_bytes();
    if bool::from(ours.ct_eq(theirs)) {
        return Ok(());
    }
    let shown: String = String::from_utf8_lossy(theirs).chars().take(64).collect();
    Err(AuthError::new(format!(
        "the {peer} authenticates as appId {shown:?}, this side expects {:?}: both sides \
         must use the same appId (Spark's RPC traffic uses \"sparkSaslUser\")",
        settings.app_id
    )))
}
