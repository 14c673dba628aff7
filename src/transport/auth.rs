//! [`AuthBootstrap`]: the shared-secret handshake of Spark's `AuthEngine` on every new
//! connection, and the channel cipher that may follow it.
//!
//! Who does what:
//!
//! - **Client** (a [`TransportClientFactory`](super::TransportClientFactory) made with a
//!   bootstrap): the thread that connects (an `rpc-connect-N` thread for an
//!   [`RpcEnv`](crate::RpcEnv)) runs the handshake right after the TCP connect, before the
//!   connection is given to an event loop or anyone else: it writes the challenge
//!   (an `RpcRequest`), reads exactly the answer frame (never a byte beyond it, which would
//!   already be ciphertext), and the connection starts with its channel cipher in place.
//!   Spark's `AuthClientBootstrap` does the same in `doBootstrap`.
//! - **Server** (a [`TransportServer`](super::TransportServer) made with a bootstrap): a new
//!   connection is unauthenticated until its first frame, an `RpcRequest` carrying an
//!   `AuthMessage`, checks out. The event loop answers it in plaintext, and everything
//!   after that answer, both ways, goes through the channel cipher. Before that nothing
//!   reaches the [`RpcHandler`](super::RpcHandler), not even `channel_active` (which
//!   comes with the first frame that decrypts, as a replayed challenge gives no keys): any other
//!   frame is answered with a failure (requests) and the connection is closed, and a peer
//!   that has not authenticated within the bootstrap's timeout is closed. Frames before
//!   the handshake may be at most [`MAX_HANDSHAKE_FRAME`] bytes. Spark's
//!   `AuthServerBootstrap` and `AuthRpcHandler` do the same, except that they tell the
//!   handler about the connection before it authenticated.
//!
//! Without a channel cipher ([`AuthBootstrap::with_encryption`]`(None)`, which Spark's
//! `AuthEngine` does not offer), the client follows the handshake with one more frame, a
//! one-way message carrying a 32-byte confirmation derived from the handshake's keys, and
//! the server takes the connection as authenticated only once it checks out. The
//! challenge crosses the network in clear; without the confirmation anyone who saw one
//! could replay it on a connection of their own and be taken as authenticated.
//!
//! Neither the cipher nor the engine version is negotiated on the wire (Spark's protocol
//! has no field for them): two sides configured differently complete the handshake, and
//! then fail on the first encrypted frame, with an error saying so.
//!
//! What the channel protects against: AES-CTR (Spark's default) only hides the bytes; a
//! changed byte reaches the frame decoder. AES-GCM also detects a changed, cut,
//! reordered or spliced segment, and the connection closes with
//! [`RpcError::Auth`]. Its envelopes are not numbered (Spark's `GcmTransportCipher`
//! does not number them either), so a whole envelope replayed by someone on the path is
//! accepted again; closing that would change the wire format Spark speaks.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::debug;
use zeroize::Zeroizing;

use crate::auth::{
    AuthError, AuthSettings, ChannelRandom, Cipher, ClientHandshake, Decryptor, Encryptor,
    EngineVersion, OsRandom, Random, Secret,
};
use crate::conf::keys;
use crate::error::RpcError;
use crate::frame::{FrameDecoder, FrameHeader, Message};
use crate::transport::socket::{interrupted, would_block};

/// The largest frame a peer may send before it authenticated (an `AuthMessage` is about
/// a hundred bytes; Spark's failure answer, a Java stack trace, a few thousand).
pub(crate) const MAX_HANDSHAKE_FRAME: u64 = 64 * 1024;

/// The app id Spark's `NettyRpcEnv` authenticates as (`SecurityManager.getSaslUser()`).
pub const SPARK_RPC_APP_ID: &str = "sparkSaslUser";

/// The default of [`AuthBootstrap::with_timeout`] (and of `rpc.authenticate.timeout`).
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a handshake that waits looks whether its factory closed.
const CHECK: Duration = Duration::from_millis(50);

/// Authenticates every connection of a server or client factory with a shared secret,
/// and encrypts it afterwards: Spark's `AuthClientBootstrap` and `AuthServerBootstrap`
/// (the `AuthEngine` protocol of Spark 4.x: X25519, HKDF-SHA256, AES-GCM) in one. Give
/// it to [`TransportContext::create_server_with_bootstrap`](super::TransportContext::create_server_with_bootstrap) and
/// [`TransportContext::create_client_factory_with_bootstrap`](super::TransportContext::create_client_factory_with_bootstrap); see the module docs of
/// [`transport`](super) for who runs the handshake where.
///
/// Defaults: the channel is encrypted with AES-GCM (authenticated), keys are derived with
/// engine version 2, and a handshake must end within 30 s. To talk to Spark 4.3 with
/// `spark.authenticate=true` and `spark.network.crypto.enabled=true`, match its
/// `spark.network.crypto.cipher` (Spark's default: AES-CTR) and
/// `spark.network.crypto.authEngineVersion` (Spark's default: 1), and use the app id
/// [`SPARK_RPC_APP_ID`] for its RpcEnv traffic.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use rpcenv::transport::{AuthBootstrap, Responder, RpcHandler, TransportClient, TransportConf, TransportContext};
/// struct Echo;
/// impl RpcHandler for Echo {
///     fn receive(&self, _: &TransportClient, message: Vec<u8>, responder: Responder) {
///         responder.reply(message)
///     }
/// }
/// let auth = AuthBootstrap::new("my-app", "a shared secret");
/// let ctx = TransportContext::new(TransportConf::default(), Arc::new(Echo));
/// let server = ctx.create_server_with_bootstrap("127.0.0.1", 0, &auth)?;
/// let factory = ctx.create_client_factory_with_bootstrap(&auth);
/// let client = factory.create_client("127.0.0.1", server.port())?;
/// assert_eq!(client.send_rpc_sync(b"hi", Duration::from_secs(5))?, b"hi");
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[derive(Clone)]
pub struct AuthBootstrap {
    settings: AuthSettings,
    encryption: Option<Cipher>,
    timeout: Duration,
}

impl AuthBootstrap {
    /// Authenticates as (and accepts only) `app_id` with `secret` (its UTF-8 bytes are the
    /// key material, as Spark takes `spark.authenticate.secret`), encrypting with AES-GCM
    /// and engine version 2. An empty secret authenticates nothing: every handshake with
    /// it fails with [`RpcError::Auth`].
    pub fn new(app_id: &str, secret: &str) -> Self {
        Self {
            settings: AuthSettings {
                app_id: app_id.to_owned(),
                secret: Secret::new(secret),
                version: EngineVersion::V2,
            },
            encryption: Some(Cipher::AesGcm),
            timeout: DEFAULT_AUTH_TIMEOUT,
        }
    }

    /// The channel cipher after the handshake; `None`: authenticate only, and send
    /// everything after the handshake in plaintext (Spark's
    /// `spark.network.crypto.enabled=true` always encrypts).
    pub fn with_encryption(mut self, cipher: Option<Cipher>) -> Self {
        self.encryption = cipher;
        self
    }

    /// How the channel key is derived from the handshake (Spark's
    /// `spark.network.crypto.authEngineVersion`).
    pub fn with_engine_version(mut self, version: EngineVersion) -> Self {
        self.settings.version = version;
        self
    }

    /// How long a handshake may take: a client waits this long for the server's answer,
    /// and a server closes a connection that has not authenticated this long after it was
    /// accepted (Spark's `spark.network.auth.rpcTimeout`). On an encrypted connection the
    /// peer's first frame after the handshake must come by then too: only a frame that
    /// decrypts shows that the peer holds the keys, and not merely a challenge it saw
    /// on the network.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The app id.
    pub fn app_id(&self) -> &str {
        &self.settings.app_id
    }

    /// The channel cipher, if the channel is encrypted.
    pub fn encryption(&self) -> Option<Cipher> {
        self.encryption
    }

    /// The key derivation's version.
    pub fn engine_version(&self) -> EngineVersion {
        self.settings.version
    }

    /// How long a handshake may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn settings(&self) -> &AuthSettings {
        &self.settings
    }
}

impl PartialEq for AuthBootstrap {
    fn eq(&self, other: &Self) -> bool {
        self.settings.app_id == other.settings.app_id
            && self.settings.version == other.settings.version
            && self.encryption == other.encryption
            && self.timeout == other.timeout
            && self.settings.secret == other.settings.secret
    }
}

impl Eq for AuthBootstrap {}

impl fmt::Debug for AuthBootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthBootstrap")
            .field("app_id", &self.settings.app_id)
            .field("secret", &"(hidden)")
            .field("encryption", &self.encryption.map(Cipher::name))
            .field("engine_version", &self.settings.version)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a connection starts with after the connecting side's handshake.
pub(crate) enum Security {
    /// Plaintext: no handshake, or one that authenticated without encrypting.
    Plain,
    /// The channel cipher's outgoing and incoming halves.
    Encrypted(Box<Encryptor>, Box<Decryptor>),
    /// The peer must authenticate first (a connection a server accepted).
    AwaitAuth(AuthBootstrap),
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::Encrypted(..) => "Encrypted",
            Self::AwaitAuth(_) => "AwaitAuth",
        })
    }
}

/// The error of a failed handshake with `peer`.
pub(crate) fn auth_error(peer: impl fmt::Display, reason: impl fmt::Display) -> RpcError {
    RpcError::Auth {
        peer: peer.to_string(),
        reason: reason.to_string(),
    }
}

/// Runs the client side of the handshake on the connecting thread, over `stream` (a fresh,
/// non-blocking connection to `peer`): writes the challenge, reads exactly the answer
/// frame, and returns what the connection starts with. Gives up when `cancelled` says so
/// (checked every 50 ms) and after the bootstrap's timeout. Fails with
/// [`RpcError::Auth`] naming the peer: refused (wrong secret or app id), a bad answer, no
/// answer in time, or the connection closed.
pub(crate) fn client_handshake(
    stream: &mut mio::net::TcpStream,
    peer: &str,
    bootstrap: &AuthBootstrap,
    cancelled: &dyn Fn() -> bool,
) -> Result<Security, RpcError> {
    let settings = bootstrap.settings();
    let mut rng = OsRandom;
    let (handshake, challenge) =
        ClientHandshake::start(settings, &mut rng).map_err(|e| auth_error(peer, e))?;
    let request_id = request_id(&mut rng).map_err(|e| auth_error(peer, e))?;
    let header = FrameHeader::rpc_request(request_id, challenge.len());
    let mut out = Vec::with_capacity(header.as_bytes().len() + challenge.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&challenge);
    // A timeout too long for a deadline (`Duration::MAX`) means none.
    let deadline = Instant::now().checked_add(bootstrap.timeout);
    let mut exchange = Exchange::new(stream, peer, deadline, bootstrap.timeout, cancelled)?;
    exchange.write_all(&out)?;
    let frame = exchange.read_frame()?;
    let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME);
    let message = match decoder.decode(&frame) {
        Ok((used, Some(message))) if used == frame.len() => message,
        _ => {
            return Err(auth_error(
                peer,
                "the answer to the handshake is not a frame",
            ));
        }
    };
    let keys = match message {
        Message::RpcResponse {
            request_id: id,
            body,
        } if id == request_id => handshake
            .finish(settings, &body)
            .map_err(|e| auth_error(peer, e))?,
        Message::RpcFailure {
            request_id: id,
            error,
        } if id == request_id => {
            // The peer's words, cut short and quoted with control characters escaped
            // (a hostile peer's text goes into errors and logs).
            let first_line = error.lines().next().unwrap_or("").trim();
            let first_line: String = first_line.chars().take(300).collect();
            return Err(auth_error(
                peer,
                format!(
                    "the peer refused the handshake ({first_line:?}): the secret or app id \
                     differs, or the peer does not authenticate"
                ),
            ));
        }
        _ => {
            return Err(auth_error(
                peer,
                "the peer answered the handshake with another frame",
            ));
        }
    };
    let security = match bootstrap.encryption {
        Some(cipher) => {
            let (encryptor, decryptor) = keys.channel(cipher, Box::<ChannelRandom>::default());
            Security::Encrypted(Box::new(encryptor), Box::new(decryptor))
        }
        None => {
            // Without encryption the server takes the connection as authenticated only
            // once it proves that this side holds the keys (see
            // `SessionKeys::confirmation`).
            let confirmation = keys.confirmation();
            let header = FrameHeader::one_way(confirmation.len());
            let mut out = Zeroizing::new(Vec::with_capacity(
                header.as_bytes().len() + confirmation.len(),
            ));
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(confirmation);
            exchange.write_all(&out)?;
            Security::Plain
        }
    };
    drop(exchange);
    debug!("authenticated with {peer}");
    Ok(security)
}

/// A request id as Spark makes them: a random non-negative `i64`.
fn request_id(rng: &mut dyn Random) -> Result<u64, AuthError> {
    let mut bytes = [0; 8];
    rng.fill(&mut bytes)?;
    Ok(u64::from_be_bytes(bytes) & (i64::MAX as u64))
}

/// Blocking reads and writes over a non-blocking stream, with a deadline.
struct Exchange<'a> {
    stream: &'a mut mio::net::TcpStream,
    poll: mio::Poll,
    events: mio::Events,
    peer: &'a str,
    /// `None`: no deadline.
    deadline: Option<Instant>,
    timeout: Duration,
    cancelled: &'a dyn Fn() -> bool,
}

impl<'a> Exchange<'a> {
    fn new(
        stream: &'a mut mio::net::TcpStream,
        peer: &'a str,
        deadline: Option<Instant>,
        timeout: Duration,
        cancelled: &'a dyn Fn() -> bool,
    ) -> Result<Self, RpcError> {
        let poll = mio::Poll::new()
            .map_err(|e| RpcError::connection_io(peer, "cannot wait for the handshake", e))?;
        poll.registry()
            .register(
                stream,
                mio::Token(0),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
            .map_err(|e| RpcError::connection_io(peer, "cannot wait for the handshake", e))?;
        Ok(Self {
            stream,
            poll,
            events: mio::Events::with_capacity(2),
            peer,
            deadline,
            timeout,
            cancelled,
        })
    }

    /// Waits for the stream to be ready again (or the deadline, or a cancel).
    fn wait(&mut self) -> Result<(), RpcError> {
        if (self.cancelled)() {
            return Err(RpcError::connection(
                self.peer,
                "cannot be made: the client factory is closed",
            ));
        }
        let left = self.deadline.map_or(CHECK, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return Err(auth_error(
                self.peer,
                format!(
                    "no answer to the handshake within {:?} ({})",
                    self.timeout,
                    keys::AUTH_TIMEOUT
                ),
            ));
        }
        match self.poll.poll(&mut self.events, Some(left.min(CHECK))) {
            Ok(()) => Ok(()),
            Err(err) if interrupted(&err) => Ok(()),
            Err(err) => Err(RpcError::connection_io(
                self.peer,
                "cannot wait for the handshake",
                err,
            )),
        }
    }

    fn failed(&self, err: io::Error) -> RpcError {
        auth_error(
            self.peer,
            format!("the connection failed during the handshake: {err:#}"),
        )
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), RpcError> {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(0) => return Err(self.failed(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(err) if would_block(&err) => self.wait()?,
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(self.failed(err)),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), RpcError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(auth_error(
                        self.peer,
                        "the peer closed the connection during the handshake (a peer that \
                         refuses it, or that expects other settings, does this)",
                    ));
                }
                Ok(n) => filled += n,
                Err(err) if would_block(&err) => self.wait()?,
                Err(err) if interrupted(&err) => {}
                Err(err) => return Err(self.failed(err)),
            }
        }
        Ok(())
    }

    /// Reads one whole frame (at most [`MAX_HANDSHAKE_FRAME`] bytes) and not a byte more.
    fn read_frame(&mut self) -> Result<Vec<u8>, RpcError> {
        let mut length = [0; 8];
        self.read_exact(&mut length)?;
        let len = u64::from_be_bytes(length);
        if !(9..=MAX_HANDSHAKE_FRAME).contains(&len) {
            return Err(auth_error(
                self.peer,
                format!("the answer to the handshake claims {len} bytes, not a handshake frame"),
            ));
        }
        let mut frame = vec![0; len as usize];
        frame[..8].copy_from_slice(&length);
        self.read_exact(&mut frame[8..])?;
        Ok(frame)
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        // The event loop that takes the stream over registers it with its own poller.
        let _ = self.poll.registry().deregister(self.stream);
    }
}

#[cfg(test)]
mod tests {
    //! The server side of the handshake against a client driven by hand over a plain
    //! socket: what a peer that has the secret, or replays what it saw, can do.

    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;
    use crate::sync::Arc;
    use crate::sync::atomic::{AtomicUsize, Ordering};
    use crate::transport::{
        Responder, RpcHandler, TransportClient, TransportConf, TransportContext,
    };

    const SECRET: &str = "rpcenv-test-secret";

    #[derive(Default)]
    struct Echo {
        requests: AtomicUsize,
    }

    impl RpcHandler for Echo {
        fn receive(&self, _: &TransportClient, message: Vec<u8>, responder: Responder) {
            self.requests.fetch_add(1, Ordering::SeqCst);
            responder.reply(message);
        }

        fn receive_one_way(&self, _: &TransportClient, _: Vec<u8>) {
            self.requests.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame(header: FrameHeader, body: &[u8]) -> Vec<u8> {
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Reads one frame from a blocking socket (10 s at most).
    fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut length = [0; 8];
        stream.read_exact(&mut length)?;
        let len = u64::from_be_bytes(length) as usize;
        let mut frame = vec![0; len];
        frame[..8].copy_from_slice(&length);
        stream.read_exact(&mut frame[8..])?;
        Ok(frame)
    }

    /// A client that runs the handshake by hand over a plain socket and returns the
    /// socket with its channel cipher.
    fn authenticated(port: u16, auth: &AuthBootstrap) -> (TcpStream, Encryptor, Decryptor) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("a connection");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        let (handshake, challenge) =
            ClientHandshake::start(auth.settings(), &mut OsRandom).expect("a challenge");
        stream
            .write_all(&frame(
                FrameHeader::rpc_request(7, challenge.len()),
                &challenge,
            ))
            .expect("the challenge");
        let answer = read_frame(&mut stream).expect("the answer");
        let Ok((
            _,
            Some(Message::RpcResponse {
                request_id: 7,
                body,
            }),
        )) = FrameDecoder::new(MAX_HANDSHAKE_FRAME).decode(&answer)
        else {
            panic!("the answer is not a response to the challenge");
        };
        let keys = handshake
            .finish(auth.settings(), &body)
            .expect("the server's answer");
        let cipher = auth.encryption().expect("an encrypted channel");
        let (encryptor, decryptor) = keys.channel(cipher, Box::<ChannelRandom>::default());
        (stream, encryptor, decryptor)
    }

    /// Reads `stream` until the peer closes it (true) or its read timeout passes (false),
    /// skipping whatever the peer sends meanwhile.
    fn closed_by_peer(stream: &mut TcpStream) -> bool {
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }

    fn server(
        auth: &AuthBootstrap,
    ) -> (TransportContext, super::super::TransportServer, Arc<Echo>) {
        let handler = Arc::new(Echo::default());
        let ctx = TransportContext::new(TransportConf::default(), handler.clone());
        let server = ctx
            .create_server_with_bootstrap("127.0.0.1", 0, auth)
            .expect("a server");
        (ctx, server, handler)
    }

    /// The client above is right: an encrypted request gets its encrypted answer.
    #[test]
    fn a_client_by_hand_is_answered_over_the_channel() {
        for cipher in [Cipher::AesGcm, Cipher::AesCtr] {
            let auth = AuthBootstrap::new("app", SECRET).with_encryption(Some(cipher));
            let (_ctx, server, handler) = server(&auth);
            let (mut stream, mut encryptor, mut decryptor) = authenticated(server.port(), &auth);
            let request = frame(FrameHeader::rpc_request(8, 5), b"hello");
            let mut wire = Vec::new();
            encryptor.encrypt(&[&request], &mut wire).expect("sealed");
            stream.write_all(&wire).expect("the request");
            let mut plain = Vec::new();
            let mut buf = [0; 4096];
            while plain.len() < 26 {
                let n = stream.read(&mut buf).expect("the answer");
                assert_ne!(n, 0, "{cipher:?}: closed before answering");
                decryptor
                    .decrypt(&buf[..n], &mut plain)
                    .expect("it decrypts");
            }
            assert_eq!(plain, frame(FrameHeader::rpc_response(8, 5), b"hello"));
            assert_eq!(handler.requests.load(Ordering::SeqCst), 1);
        }
    }

    /// Authentication without encryption: the challenge crosses the network in clear, so
    /// anyone who saw one connection's challenge can send it again on a connection of
    /// their own. The server answers it (it cannot tell), but the replayer has no private
    /// key for it and so cannot confirm the handshake: its plaintext request reaches
    /// nothing, and the connection closes.
    #[test]
    fn a_replayed_challenge_without_encryption_gets_nothing_through() {
        let auth = AuthBootstrap::new("app", SECRET).with_encryption(None);
        let (_ctx, server, handler) = server(&auth);
        // What a real client sent, as seen on the wire.
        let (_handshake, challenge) =
            ClientHandshake::start(auth.settings(), &mut OsRandom).expect("a challenge");
        let captured = frame(FrameHeader::rpc_request(7, challenge.len()), &challenge);
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("a connection");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        stream.write_all(&captured).expect("the replayed challenge");
        stream
            .write_all(&frame(FrameHeader::rpc_request(8, 5), b"hello"))
            .expect("a plaintext request");
        stream
            .write_all(&frame(FrameHeader::one_way(5), b"hello"))
            .expect("a one-way message");
        let closed = closed_by_peer(&mut stream);
        assert!(closed, "the server kept the replayer's connection open");
        assert_eq!(
            handler.requests.load(Ordering::SeqCst),
            0,
            "a request got through"
        );
    }

    /// A peer that replays a challenge it saw and then sends nothing is closed at the
    /// handshake timeout, like one that never authenticated: it cannot hold a connection
    /// open (and a slot of `rpc.io.maxConnections`) without the secret.
    #[test]
    fn a_silent_replayer_is_closed_at_the_handshake_timeout() {
        for cipher in [Some(Cipher::AesGcm), Some(Cipher::AesCtr), None] {
            let auth = AuthBootstrap::new("app", SECRET)
                .with_encryption(cipher)
                .with_timeout(Duration::from_millis(300));
            let (_ctx, server, handler) = server(&auth);
            let (_handshake, challenge) =
                ClientHandshake::start(auth.settings(), &mut OsRandom).expect("a challenge");
            let mut stream =
                TcpStream::connect(("127.0.0.1", server.port())).expect("a connection");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("a read timeout");
            stream
                .write_all(&frame(
                    FrameHeader::rpc_request(7, challenge.len()),
                    &challenge,
                ))
                .expect("the replayed challenge");
            let started = Instant::now();
            let closed = closed_by_peer(&mut stream);
            assert!(closed, "{cipher:?}: the silent replayer is still connected");
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{cipher:?}: took {:?}",
                started.elapsed()
            );
            assert_eq!(handler.requests.load(Ordering::SeqCst), 0);
        }
    }

    /// Spark's `AuthIntegrationSuite.testAuthReplay`: a peer that completed (or replayed)
    /// the handshake but does not have the channel keys, and so sends frames as they are,
    /// gets nothing through: the server closes the connection at the first frame.
    #[test]
    fn auth_integration_suite_auth_replay_a_peer_without_the_keys_gets_nothing_through() {
        for cipher in [Cipher::AesGcm, Cipher::AesCtr] {
            let auth = AuthBootstrap::new("app", SECRET).with_encryption(Some(cipher));
            let (_ctx, server, handler) = server(&auth);
            let (mut stream, _, _) = authenticated(server.port(), &auth);
            let request = frame(FrameHeader::rpc_request(8, 5), b"hello");
            stream.write_all(&request).expect("a plaintext request");
            let closed = closed_by_peer(&mut stream);
            assert!(closed, "{cipher:?}: the server kept the connection open");
            assert_eq!(
                handler.requests.load(Ordering::SeqCst),
                0,
                "{cipher:?}: a request got through"
            );
        }
    }
}
