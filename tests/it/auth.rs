//! Authentication and encryption (Spark's `AuthEngine`) end to end: transport servers and
//! factories made with an [`AuthBootstrap`], and envs with `rpc.authenticate`.
//!
//! Ports of Spark's `AuthIntegrationSuite` (spark-rpc.md §6.12) are named
//! `auth_integration_suite_*`, and of the `RpcEnvSuite` tests 26-31 (§6.1)
//! `rpc_env_suite_*`; the SASL variants (27, 30) have no counterpart (rpcenv speaks only
//! `AuthEngine`) and run with AES-CTR instead. The replay test (`testAuthReplay`) needs
//! the crate's handshake by hand and lives with the transport's unit tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rpcenv::transport::{
    AuthBootstrap, Cipher, EngineVersion, TransportClientFactory, TransportContext, TransportServer,
};
use rpcenv::{
    EndpointContext, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError,
    SharedBytes,
};
use serde::{Deserialize, Serialize};

use crate::support::{
    HOST, LONG, PROMPTLY, TestHandler, address_of, assert_echo, expect_closed_by_peer, init_logger,
    join, raw_connect, rpc_conf, spawn, transport_conf, wait_for,
};

const SECRET: &str = "rpcenv-test-secret";

/// A server that requires `server_auth`, with its own context and [`TestHandler`], and a
/// factory in another context that authenticates with `client_auth` (either may be
/// `None`: plaintext). `handler` is the server's.
struct Secured {
    factory: TransportClientFactory,
    server: TransportServer,
    _contexts: (TransportContext, TransportContext),
    handler: Arc<TestHandler>,
}

impl Secured {
    fn new(server_auth: Option<&AuthBootstrap>, client_auth: Option<&AuthBootstrap>) -> Self {
        Self::with_conf(server_auth, client_auth, &[])
    }

    fn with_conf(
        server_auth: Option<&AuthBootstrap>,
        client_auth: Option<&AuthBootstrap>,
        server_conf: &[(&str, &str)],
    ) -> Self {
        init_logger();
        let handler = TestHandler::new();
        let server_ctx = TransportContext::new(transport_conf(server_conf), handler.clone());
        let server = match server_auth {
            Some(auth) => server_ctx.create_server_with_bootstrap(HOST, 0, auth),
            None => server_ctx.create_server(HOST, 0),
        }
        .expect("a server on 127.0.0.1:0");
        let client_ctx = TransportContext::new(transport_conf(&[]), TestHandler::new());
        let factory = match client_auth {
            Some(auth) => client_ctx.create_client_factory_with_bootstrap(auth),
            None => client_ctx.create_client_factory(),
        };
        Self {
            factory,
            server,
            _contexts: (server_ctx, client_ctx),
            handler,
        }
    }

    fn both(auth: &AuthBootstrap) -> Self {
        Self::new(Some(auth), Some(auth))
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    fn connect(&self) -> Result<rpcenv::transport::TransportClient, RpcError> {
        self.factory.create_client(HOST, self.port())
    }
}

/// Every combination of cipher and engine version, as Spark offers them.
fn all_settings() -> Vec<AuthBootstrap> {
    let mut all = Vec::new();
    for cipher in [Cipher::AesGcm, Cipher::AesCtr] {
        for version in [EngineVersion::V1, EngineVersion::V2] {
            all.push(
                AuthBootstrap::new("sparkSaslUser", SECRET)
                    .with_encryption(Some(cipher))
                    .with_engine_version(version),
            );
        }
    }
    all
}

#[track_caller]
fn assert_auth_error(err: &RpcError, port: u16) {
    assert!(
        matches!(err, RpcError::Auth { .. }),
        "expected Auth, got {err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("{HOST}:{port}")),
        "{text:?} should name the peer"
    );
    assert!(!text.contains(SECRET), "{text:?} names the secret");
}

// ---------------------------------------------------------------------------------------
// Transport: what works
// ---------------------------------------------------------------------------------------

/// `AuthIntegrationSuite.testNewAuth`, and the interop checks (0 B to 16 MiB echoes, a
/// failure's text, 1,000 one-way messages, 200 concurrent requests) for every cipher and
/// engine version.
#[test]
fn auth_integration_suite_new_auth_works_with_every_cipher_and_version() {
    for auth in all_settings() {
        let what = format!("{auth:?}");
        let side = Secured::both(&auth);
        let client = side.connect().unwrap_or_else(|err| panic!("{what}: {err}"));
        for size in [0, 1, 100, 32_751, 32_752, 32_753, 64 * 1024, 1 << 20] {
            assert_echo(&client, &vec![7u8; size]);
        }
        let err = client
            .send_rpc_sync(b"fail:boom".to_vec(), LONG)
            .expect_err("the handler fails it");
        assert!(err.to_string().contains("boom"), "{what}: {err}");
        for i in 0..1000u32 {
            client
                .send(i.to_be_bytes().to_vec())
                .expect("a one-way message");
        }
        wait_for("1000 one-way messages", 10, || {
            side.handler.one_way() == 1000
        });
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let client = client.clone();
                spawn(&format!("concurrent-{t}"), move || {
                    for i in 0..50u32 {
                        let body = format!("{t}-{i}").into_bytes();
                        let answer = client.send_rpc_sync(body.clone(), LONG).expect("an echo");
                        assert_eq!(answer, body);
                    }
                })
            })
            .collect();
        for thread in threads {
            join(thread);
        }
        assert_eq!(side.handler.active().len(), 1, "{what}");
    }
}

/// Large bodies go in several GCM segments (32,752 plaintext bytes each) both ways, and a
/// 16 MiB body in one envelope.
#[test]
fn sixteen_mib_both_ways_with_each_cipher() {
    for cipher in [Cipher::AesGcm, Cipher::AesCtr] {
        let auth = AuthBootstrap::new("app", SECRET).with_encryption(Some(cipher));
        let side = Secured::both(&auth);
        let client = side.connect().expect("authenticated");
        let body: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
        let answer = client
            .send_rpc_sync(body.clone(), LONG)
            .expect("16 MiB echo");
        assert!(answer == body, "{cipher:?}: the echo differs");
    }
}

/// `AuthIntegrationSuite.testLargeMessageEncryption`: a failure text longer than any
/// cipher buffer arrives whole.
#[test]
fn auth_integration_suite_large_message_encryption() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::both(&auth);
    let client = side.connect().expect("authenticated");
    let text = "x".repeat(100_000);
    let err = client
        .send_rpc_sync(format!("fail:{text}").into_bytes(), LONG)
        .expect_err("the handler fails it");
    assert!(err.to_string().contains(&text), "the failure text is cut");
}

/// Authentication alone (no channel cipher): the connection goes on in plaintext.
#[test]
fn authentication_without_encryption_works() {
    let auth = AuthBootstrap::new("app", SECRET).with_encryption(None);
    let side = Secured::both(&auth);
    let client = side.connect().expect("authenticated");
    assert_echo(&client, b"hello");
}

/// The handshake is the connection's first whole frame: an authenticated connection that
/// is quiet afterwards is not taken for one that never sent a frame
/// (`rpc.io.frameTimeout`).
#[test]
fn an_authenticated_quiet_connection_outlives_the_frame_timeout() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::with_conf(
        Some(&auth),
        Some(&auth),
        &[("rpc.io.frameTimeout", "300ms")],
    );
    let client = side.connect().expect("authenticated");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(client.is_active(), "the quiet connection was closed");
    assert_echo(&client, b"still here");
}

/// The server side sends requests back over the client's encrypted connection.
#[test]
fn the_server_calls_back_over_the_encrypted_connection() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::both(&auth);
    let client = side.connect().expect("authenticated");
    let answer = client
        .send_rpc_sync(b"call-back:ping".to_vec(), LONG)
        .expect("the call back is answered");
    assert_eq!(answer, b"ping");
}

// ---------------------------------------------------------------------------------------
// Transport: what is refused, promptly
// ---------------------------------------------------------------------------------------

/// `AuthIntegrationSuite.testAuthFailure`: a wrong secret fails `create_client` promptly
/// with `Auth` naming the peer; the server's handler hears nothing of the connection.
#[test]
fn auth_integration_suite_auth_failure() {
    let server_auth = AuthBootstrap::new("app", SECRET);
    let client_auth = AuthBootstrap::new("app", "another secret");
    let side = Secured::new(Some(&server_auth), Some(&client_auth));
    let started = Instant::now();
    let err = side.connect().expect_err("a wrong secret is refused");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_auth_error(&err, side.port());
    std::thread::sleep(Duration::from_millis(200));
    assert!(side.handler.active().is_empty(), "the handler heard of it");
    assert!(
        side.handler.inactive().is_empty(),
        "the handler heard of it"
    );
    assert!(
        side.handler.exceptions().is_empty(),
        "the handler heard of it"
    );
}

/// A different app id is refused like a wrong secret.
#[test]
fn a_different_app_id_is_refused() {
    let server_auth = AuthBootstrap::new("app", SECRET);
    let client_auth = AuthBootstrap::new("other-app", SECRET);
    let side = Secured::new(Some(&server_auth), Some(&client_auth));
    let err = side.connect().expect_err("a different app id is refused");
    assert_auth_error(&err, side.port());
}

/// A client that does not authenticate gets a failure for its request, and nothing
/// reaches the handler.
#[test]
fn a_plaintext_client_is_answered_with_a_failure_and_nothing_reaches_the_handler() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::new(Some(&auth), None);
    let client = side.connect().expect("a plaintext TCP connection");
    let started = Instant::now();
    let err = client
        .send_rpc_sync(b"hello".to_vec(), LONG)
        .expect_err("an unauthenticated request fails");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(
        err.to_string().contains("Authentication failed"),
        "unexpected error: {err}"
    );
    wait_for("the connection to close", 5, || !client.is_active());
    assert_eq!(side.handler.requests(), 0);
    assert!(side.handler.active().is_empty());
}

/// A one-way message before the handshake closes the connection at once.
#[test]
fn a_one_way_message_before_the_handshake_closes_the_connection() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::new(Some(&auth), None);
    let client = side.connect().expect("a plaintext TCP connection");
    client.send(b"sneaky".to_vec()).expect("queued");
    wait_for("the connection to close", 5, || !client.is_active());
    assert_eq!(side.handler.one_way(), 0);
    assert!(side.handler.active().is_empty());
}

/// A peer that connects and says nothing, or sends half a handshake, is closed after the
/// bootstrap's timeout.
#[test]
fn silent_and_half_handshaking_peers_are_closed_after_the_handshake_timeout() {
    let auth = AuthBootstrap::new("app", SECRET).with_timeout(Duration::from_millis(500));
    let side = Secured::new(Some(&auth), None);
    let mut silent = raw_connect(side.port());
    let mut half = raw_connect(side.port());
    // A request frame of 123 bytes, cut after its header and 3 body bytes.
    let mut frame = 123u64.to_be_bytes().to_vec();
    frame.push(3);
    frame.extend_from_slice(&1u64.to_be_bytes());
    frame.extend_from_slice(&102u32.to_be_bytes());
    frame.extend_from_slice(&[0xfb, 0, 0]);
    half.write_all(&frame).expect("half a handshake");
    let started = Instant::now();
    expect_closed_by_peer(&mut silent, 10);
    expect_closed_by_peer(&mut half, 10);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the timeout"
    );
    assert!(side.handler.active().is_empty());
}

/// A frame before the handshake may not claim more than a handshake needs: one that
/// claims 1 GiB is refused at its header.
#[test]
fn a_large_frame_before_the_handshake_is_refused_at_its_header() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::new(Some(&auth), None);
    let mut raw = raw_connect(side.port());
    let mut header = (1u64 << 30).to_be_bytes().to_vec();
    header.push(3);
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&((1u32 << 30) - 21).to_be_bytes());
    raw.write_all(&header).expect("a header");
    expect_closed_by_peer(&mut raw, 5);
}

/// A client that authenticates against a server that does not: the server answers the
/// handshake as an ordinary (undecodable) request, and the client fails with `Auth`.
#[test]
fn an_authenticating_client_against_a_plaintext_server_fails_promptly() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::new(None, Some(&auth));
    let started = Instant::now();
    let err = side
        .connect()
        .expect_err("the plaintext server cannot authenticate");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_auth_error(&err, side.port());
}

/// Neither the cipher nor the engine version is on the wire: two sides that differ
/// complete the handshake and fail on the first encrypted frame, promptly, and the
/// error says what to check.
#[test]
fn mismatched_cipher_or_version_fails_the_first_frame_promptly() {
    let base = AuthBootstrap::new("app", SECRET);
    let pairs = [
        (
            base.clone().with_encryption(Some(Cipher::AesGcm)),
            base.clone().with_encryption(Some(Cipher::AesCtr)),
        ),
        (
            base.clone().with_engine_version(EngineVersion::V1),
            base.clone().with_engine_version(EngineVersion::V2),
        ),
        (
            base.clone().with_encryption(None),
            base.clone().with_encryption(Some(Cipher::AesGcm)),
        ),
        // AES-CTR has no integrity check: the hint comes from the frame decoder.
        (
            base.clone()
                .with_encryption(Some(Cipher::AesCtr))
                .with_engine_version(EngineVersion::V1),
            base.clone()
                .with_encryption(Some(Cipher::AesCtr))
                .with_engine_version(EngineVersion::V2),
        ),
    ];
    for (server_auth, client_auth) in pairs {
        let side = Secured::new(Some(&server_auth), Some(&client_auth));
        let client = side.connect().expect("the handshake itself succeeds");
        let started = Instant::now();
        let err = client
            .send_rpc_sync(b"hello".to_vec(), LONG)
            .expect_err("the first frame cannot be read");
        assert!(
            started.elapsed() < PROMPTLY,
            "{server_auth:?} vs {client_auth:?}: took {:?}",
            started.elapsed()
        );
        // The client says what to check.
        assert!(
            matches!(err, RpcError::Connection { .. } | RpcError::Auth { .. })
                && err.to_string().contains("negotiated"),
            "{server_auth:?} vs {client_auth:?}: {err:?}"
        );
        assert_eq!(side.handler.requests(), 0);
        // The server's handler hears nothing of a peer that never sent a frame it could
        // read (the server logs what to check): a peer that replays a challenge it saw
        // fails the same way.
        std::thread::sleep(Duration::from_millis(100));
        assert!(side.handler.active().is_empty());
        assert!(side.handler.exceptions().is_empty());
    }
}

/// A proxy between client and server that flips one bit of what the server sends, at
/// byte `flip_at` of the stream; it runs until either side closes.
fn tampering_proxy(upstream: u16, flip_at: usize) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind((HOST, 0)).expect("a proxy port");
    let port = listener.local_addr().expect("its address").port();
    let handle = spawn("tampering-proxy", move || {
        let (client, _) = listener.accept().expect("the client");
        let server = TcpStream::connect((HOST, upstream)).expect("the server");
        let done = Arc::new(AtomicBool::new(false));
        let pump = |mut from: TcpStream, mut to: TcpStream, flip: Option<usize>| {
            let done = Arc::clone(&done);
            spawn("proxy-pump", move || {
                from.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("a read timeout");
                let mut seen = 0usize;
                let mut buf = [0u8; 16 * 1024];
                let deadline = Instant::now() + Duration::from_secs(20);
                while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match from.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if let Some(at) = flip {
                                if (seen..seen + n).contains(&at) {
                                    buf[at - seen] ^= 0x01;
                                }
                            }
                            seen += n;
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        Err(err)
                            if matches!(
                                err.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                done.store(true, Ordering::SeqCst);
                let _ = to.shutdown(std::net::Shutdown::Both);
            })
        };
        let up = pump(
            client.try_clone().expect("a clone"),
            server.try_clone().expect("a clone"),
            None,
        );
        let down = pump(server, client, Some(flip_at));
        join(up);
        join(down);
    });
    (port, handle)
}

/// A flipped bit in an AES-GCM segment fails its tag: the client closes the connection
/// and the request fails promptly instead of reading tampered bytes.
#[test]
fn a_tampered_gcm_segment_closes_the_connection_promptly() {
    let auth = AuthBootstrap::new("app", SECRET);
    let side = Secured::both(&auth);
    // The handshake answer is 123 bytes with this app id (102-byte body); byte 200 of what
    // the server sends is inside the first encrypted envelope.
    let (proxy, handle) = tampering_proxy(side.port(), 200);
    let client = side
        .factory
        .create_client(HOST, proxy)
        .expect("the handshake passes the proxy untouched");
    let started = Instant::now();
    let err = client
        .send_rpc_sync(vec![1u8; 1000], LONG)
        .expect_err("the tampered answer is not accepted");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(
        matches!(err, RpcError::Connection { .. } | RpcError::Auth { .. }),
        "{err:?}"
    );
    client.close();
    join(handle);
}

// ---------------------------------------------------------------------------------------
// RpcEnv
// ---------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Echo(String),
    Count,
    /// A reference to another endpoint, travelling in a message.
    Relay(RpcEndpointRef<Self>, String),
}

struct Echo {
    count: u64,
}

impl RpcEndpoint for Echo {
    type Message = Msg;

    fn receive(&mut self, _msg: Msg, _ctx: &EndpointContext<Msg>) {
        self.count += 1;
    }

    fn receive_and_reply(
        &mut self,
        msg: Msg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Self::Message>,
    ) {
        match msg {
            Msg::Echo(text) => reply.reply(text),
            Msg::Count => reply.reply(self.count),
            Msg::Relay(target, text) => match target.ask_sync::<String>(Msg::Echo(text)) {
                Ok(answer) => reply.reply(answer),
                Err(err) => reply.send_failure(err.to_string()),
            },
        }
    }
}

fn secure_conf(secret: &str, encryption: Option<&str>) -> RpcConf {
    let mut conf = rpc_conf()
        .set("rpc.authenticate", "true")
        .set("rpc.authenticate.secret", secret);
    if let Some(cipher) = encryption {
        conf = conf
            .set("rpc.io.encryption.enabled", "true")
            .set("rpc.io.encryption.cipher", cipher);
    }
    conf
}

fn env(name: &str, conf: RpcConf, client_mode: bool) -> RpcEnv {
    init_logger();
    let builder = RpcEnv::builder(name).conf(conf);
    let builder = if client_mode {
        builder.client_mode(true)
    } else {
        builder.bind_address(HOST).port(0)
    };
    builder
        .build()
        .unwrap_or_else(|err| panic!("env {name}: {err}"))
}

/// `RpcEnvSuite` 26, 28, 29 and 31 (and 27, 30 with AES-CTR for SASL): `send` and `ask`
/// between a server env and a client-mode env with authentication, and with each
/// cipher; refs travel in messages and are used from the other side.
#[test]
fn rpc_env_suite_send_and_ask_with_authentication_and_encryption() {
    let variants = [None, Some("AES/GCM/NoPadding"), Some("AES/CTR/NoPadding")];
    for encryption in variants {
        let server = env("auth-server", secure_conf(SECRET, encryption), false);
        let other = env("auth-other", secure_conf(SECRET, encryption), false);
        let client = env("auth-client", secure_conf(SECRET, encryption), true);
        server
            .setup_endpoint("echo", Echo { count: 0 })
            .expect("an endpoint");
        other
            .setup_endpoint("echo", Echo { count: 0 })
            .expect("an endpoint");
        let echo: RpcEndpointRef<Msg> = client
            .setup_endpoint_ref(address_of(&server), "echo")
            .expect("a lookup over an authenticated connection");
        for i in 0..10 {
            echo.send(Msg::Echo(format!("one-way {i}")))
                .expect("a send");
        }
        let answer: String = echo
            .ask_sync(Msg::Echo("hello".into()))
            .expect("an ask over an authenticated connection");
        assert_eq!(answer, "hello", "{encryption:?}");
        wait_for("10 one-way messages", 10, || {
            echo.ask_sync::<u64>(Msg::Count).expect("a count") == 10
        });
        // A ref to `other` travels to `server`, which asks it in turn.
        let other_echo: RpcEndpointRef<Msg> = server
            .setup_endpoint_ref(address_of(&other), "echo")
            .expect("a lookup between server envs");
        let relayed: String = echo
            .ask_sync(Msg::Relay(other_echo, "relayed".into()))
            .expect("a relayed ask");
        assert_eq!(relayed, "relayed", "{encryption:?}");
        client.shutdown();
        other.shutdown();
        server.shutdown();
    }
}

/// A lookup with a wrong secret fails promptly with `Auth` naming the peer, not after the
/// lookup timeout.
#[test]
fn a_mismatched_secret_fails_the_lookup_promptly_with_auth() {
    let server = env(
        "auth-server",
        secure_conf(SECRET, Some("AES/GCM/NoPadding")),
        false,
    );
    server
        .setup_endpoint("echo", Echo { count: 0 })
        .expect("an endpoint");
    let client = env(
        "auth-client",
        secure_conf("wrong", Some("AES/GCM/NoPadding")),
        true,
    );
    let started = Instant::now();
    let err = client
        .setup_endpoint_ref::<Msg>(&address_of(&server), "echo")
        .expect_err("a wrong secret");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_auth_error(&err, address_of(&server).port());
    client.shutdown();
    server.shutdown();
}

/// A plaintext env cannot reach an endpoint of an authenticating env: its lookup fails
/// promptly and the endpoint receives nothing.
#[test]
fn a_plaintext_env_reaches_nothing_on_an_authenticating_env() {
    let server = env("auth-server", secure_conf(SECRET, None), false);
    server
        .setup_endpoint("echo", Echo { count: 0 })
        .expect("an endpoint");
    let plain = env("plain-client", rpc_conf(), true);
    let started = Instant::now();
    let err = plain
        .setup_endpoint_ref::<Msg>(&address_of(&server), "echo")
        .expect_err("an unauthenticated lookup");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(!matches!(err, RpcError::Timeout { .. }), "{err:?}");
    // The error tells a new user what to look at: the server's failure answer, or, when
    // the server closed at the client's first frame (a one-way hello), the hint.
    let text = err.to_string();
    assert!(
        text.contains("rpc.authenticate") || text.contains("Authentication failed"),
        "{text}"
    );
    let local: RpcEndpointRef<Msg> = server
        .setup_endpoint_ref(address_of(&server), "echo")
        .expect("a local lookup");
    assert_eq!(local.ask_sync::<u64>(Msg::Count).expect("a count"), 0);
    plain.shutdown();
    server.shutdown();
}

/// The configuration says at build time what does not fit together, naming the key.
#[test]
fn bad_security_settings_are_config_errors_naming_the_key() {
    init_logger();
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("rpc.authenticate", "true")], "rpc.authenticate.secret"),
        (
            &[("rpc.io.encryption.enabled", "true")],
            "rpc.io.encryption.enabled",
        ),
        (
            &[
                ("rpc.authenticate", "true"),
                ("rpc.authenticate.secret", "a"),
                ("rpc.authenticate.secret.env", "SOME_VAR"),
            ],
            "rpc.authenticate.secret",
        ),
        (
            &[("rpc.io.encryption.cipher", "AES/CBC/PKCS5Padding")],
            "rpc.io.encryption.cipher",
        ),
        (
            &[("rpc.io.encryption.authEngineVersion", "3")],
            "rpc.io.encryption.authEngineVersion",
        ),
        (
            &[
                ("rpc.authenticate", "true"),
                ("rpc.authenticate.secret.file", "/nonexistent/secret"),
            ],
            "rpc.authenticate.secret.file",
        ),
        (
            &[
                ("rpc.authenticate", "true"),
                (
                    "rpc.authenticate.secret.env",
                    "RPCENV_TEST_VARIABLE_THAT_IS_NOT_SET",
                ),
            ],
            "rpc.authenticate.secret.env",
        ),
    ];
    for (settings, key) in cases {
        let mut conf = rpc_conf();
        for (k, v) in settings {
            conf = conf.set(*k, *v);
        }
        let err = RpcEnv::builder("bad")
            .client_mode(true)
            .conf(conf)
            .build()
            .expect_err("a bad combination");
        assert!(
            matches!(&err, RpcError::Config { key: k, .. } if k.starts_with(key)),
            "{settings:?}: expected Config naming {key}, got {err:?}"
        );
        assert!(!err.to_string().contains("SOME_SECRET"), "{err}");
    }
}

/// A secret file configures both sides alike (its bytes, Base64-encoded, as Spark takes
/// `spark.authenticate.secret.file`), and so does an environment variable (here `PATH`,
/// which every test process has: setting one would race the other tests' threads).
#[test]
fn a_secret_file_and_an_environment_variable_configure_both_sides() {
    let dir = std::env::temp_dir().join(format!("rpcenv-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join("secret");
    std::fs::write(&file, b"file secret\n").expect("the secret file");
    let by_file = rpc_conf().set("rpc.authenticate", "true").set(
        "rpc.authenticate.secret.file",
        file.to_str().expect("utf-8"),
    );
    // The same secret as a string: the Base64 of the file's bytes.
    let by_string = secure_conf("ZmlsZSBzZWNyZXQK", None);
    let server = env("file-server", by_file, false);
    server
        .setup_endpoint("echo", Echo { count: 0 })
        .expect("an endpoint");
    let client = env("string-client", by_string, true);
    let echo: RpcEndpointRef<Msg> = client
        .setup_endpoint_ref(address_of(&server), "echo")
        .expect("the file's secret is the Base64 of its bytes");
    assert_eq!(
        echo.ask_sync::<String>(Msg::Echo("x".into()))
            .expect("an ask"),
        "x"
    );
    client.shutdown();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);

    let path = std::env::var("PATH").expect("PATH is set");
    let by_env = rpc_conf()
        .set("rpc.authenticate", "true")
        .set("rpc.authenticate.secret.env", "PATH");
    let server = env("env-server", by_env, false);
    server
        .setup_endpoint("echo", Echo { count: 0 })
        .expect("an endpoint");
    let client = env("string-client", secure_conf(&path, None), true);
    let echo: RpcEndpointRef<Msg> = client
        .setup_endpoint_ref(address_of(&server), "echo")
        .expect("the variable's value is the secret");
    assert_eq!(
        echo.ask_sync::<String>(Msg::Echo("y".into()))
            .expect("an ask"),
        "y"
    );
    client.shutdown();
    server.shutdown();
}

// ---------------------------------------------------------------------------------------
// Hostile peers, by hand over raw sockets
// ---------------------------------------------------------------------------------------

/// A frame `[u64 length][type][rest]` as it goes on the wire.
fn raw_frame(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut frame = ((9 + rest.len()) as u64).to_be_bytes().to_vec();
    frame.push(kind);
    frame.extend_from_slice(rest);
    frame
}

/// An `RpcRequest` (type 3) frame.
fn raw_request(id: u64, body: &[u8]) -> Vec<u8> {
    let mut rest = id.to_be_bytes().to_vec();
    rest.extend_from_slice(&(body.len() as u32).to_be_bytes());
    rest.extend_from_slice(body);
    raw_frame(3, &rest)
}

/// Reads one whole frame from a blocking socket.
fn read_raw_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut length = [0; 8];
    stream.read_exact(&mut length)?;
    let len = u64::from_be_bytes(length);
    assert!((9..=1 << 20).contains(&len), "a frame of {len} bytes");
    let mut frame = vec![0; len as usize];
    frame[..8].copy_from_slice(&length);
    stream.read_exact(&mut frame[8..])?;
    Ok(frame)
}

/// The challenge frame a real client of `auth` sends, captured by a fake server that then
/// closes the connection (the client must fail with `Auth`, not hang).
fn capture_challenge(auth: &AuthBootstrap) -> Vec<u8> {
    init_logger();
    let listener = TcpListener::bind((HOST, 0)).expect("a port");
    let port = listener.local_addr().expect("its address").port();
    let fake = spawn("fake-server", move || {
        let (mut stream, _) = listener.accept().expect("the client");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        read_raw_frame(&mut stream).expect("the challenge")
    });
    let ctx = TransportContext::new(transport_conf(&[]), TestHandler::new());
    let factory = ctx.create_client_factory_with_bootstrap(auth);
    let started = Instant::now();
    let err = factory
        .create_client(HOST, port)
        .expect_err("the fake server closes mid-handshake");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_auth_error(&err, port);
    join(fake)
}

/// Writes `bytes` to a fresh raw connection and expects the server to close it (after
/// answering, at most, with one failure), with nothing reaching the handler.
#[track_caller]
fn expect_refused(side: &Secured, what: &str, bytes: &[u8]) {
    let mut raw = raw_connect(side.port());
    // The server may close before it has read everything: a failed write is fine.
    let _ = raw.write_all(bytes);
    let started = Instant::now();
    expect_closed_by_peer(&mut raw, 10);
    assert!(
        started.elapsed() < PROMPTLY,
        "{what}: closed after {:?}",
        started.elapsed()
    );
    assert_eq!(side.handler.requests(), 0, "{what}: a request got through");
    assert_eq!(side.handler.one_way(), 0, "{what}: a message got through");
    assert!(
        side.handler.active().is_empty(),
        "{what}: the handler heard of it"
    );
}

/// Every kind of first frame but a valid handshake, and handshakes that are cut,
/// altered, oversized, replayed, doubled or followed by plaintext: each is refused
/// promptly, and nothing reaches the handler, whichever channel the server uses.
#[test]
fn hostile_first_frames_reach_nothing_and_close_the_connection() {
    for encryption in [Some(Cipher::AesGcm), Some(Cipher::AesCtr), None] {
        let auth = AuthBootstrap::new("app", SECRET)
            .with_encryption(encryption)
            .with_timeout(Duration::from_secs(30));
        let side = Secured::new(Some(&auth), None);
        let challenge = capture_challenge(&auth);
        assert!(side.handler.active().is_empty());
        let body = &challenge[21..];

        let mut cases: Vec<(String, Vec<u8>)> = vec![
            (
                "a one-way message".into(),
                raw_frame(9, &[0, 0, 0, 1, b'x']),
            ),
            ("an ordinary request".into(), raw_request(1, b"hello")),
            ("a response to nothing".into(), {
                let mut rest = 0x1234_5678_9abc_def0u64.to_be_bytes().to_vec();
                rest.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
                raw_frame(4, &rest)
            }),
            ("a failure for nothing".into(), {
                let mut rest = 42u64.to_be_bytes().to_vec();
                rest.extend_from_slice(&[0, 0, 0, 3, b'b', b'a', b'd']);
                raw_frame(5, &rest)
            }),
            ("garbage".into(), vec![0xAB; 200]),
            ("a length of 2^64-1".into(), u64::MAX.to_be_bytes().to_vec()),
            (
                "a length of 2^62".into(),
                (1u64 << 62).to_be_bytes().to_vec(),
            ),
            (
                "a length shorter than a header".into(),
                3u64.to_be_bytes().to_vec(),
            ),
            ("a handshake with a SASL tag".into(), {
                let mut sasl = body.to_vec();
                sasl[0] = 0xEA;
                raw_request(7, &sasl)
            }),
            (
                "a handshake cut short".into(),
                raw_request(7, &body[..body.len() - 1]),
            ),
            ("a handshake with a byte more".into(), {
                let mut more = body.to_vec();
                more.push(0);
                raw_request(7, &more)
            }),
            ("a handshake with a 60 KB app id".into(), {
                let mut big = vec![0xFB];
                big.extend_from_slice(&60_000u32.to_be_bytes());
                big.extend_from_slice(&vec![b'a'; 60_000]);
                big.extend_from_slice(&body[1 + 4 + 3..]);
                raw_request(7, &big)
            }),
            ("a handshake frame over 64 KiB".into(), {
                let mut big = body.to_vec();
                big.extend_from_slice(&vec![0; 70_000]);
                raw_request(7, &big)
            }),
            (
                "a replayed handshake, then a plaintext request".into(),
                [challenge.clone(), raw_request(8, b"hello")].concat(),
            ),
            (
                "a replayed handshake, then a plaintext one-way message".into(),
                [challenge.clone(), raw_frame(9, &[0, 0, 0, 1, b'x'])].concat(),
            ),
            (
                "a replayed handshake twice".into(),
                [challenge.clone(), challenge.clone()].concat(),
            ),
            (
                "a replayed handshake, then garbage".into(),
                [challenge.clone(), vec![0x5A; 300]].concat(),
            ),
        ];
        // Stream frame types and unknown ones, with a small body.
        for kind in [0u8, 1, 2, 6, 7, 8, 10, 11, 0x7F, 0xFF] {
            cases.push((format!("a frame of type {kind}"), raw_frame(kind, &[0; 24])));
        }
        // One flipped bit in each byte of the handshake's body (tag, lengths, app id,
        // salt, nonce, sealed key, GCM tag).
        for at in 21..challenge.len() {
            let mut tampered = challenge.clone();
            tampered[at] ^= 0x01;
            cases.push((format!("a handshake with byte {at} altered"), tampered));
        }
        for (what, bytes) in &cases {
            expect_refused(&side, &format!("{encryption:?}: {what}"), bytes);
        }
    }
}

/// A peer that sends its handshake a byte at a time, slower than the handshake timeout
/// allows, is closed at the timeout, and the handler hears nothing.
#[test]
fn a_slowloris_handshake_is_closed_at_the_handshake_timeout() {
    let auth = AuthBootstrap::new("app", SECRET).with_timeout(Duration::from_millis(600));
    let side = Secured::new(Some(&auth), None);
    let challenge = capture_challenge(&auth);
    let mut raw = raw_connect(side.port());
    raw.set_nodelay(true).expect("no delay");
    let started = Instant::now();
    let mut closed = false;
    for byte in &challenge {
        if raw.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    if !closed {
        expect_closed_by_peer(&mut raw, 10);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(side.handler.active().is_empty());
    assert_eq!(side.handler.requests(), 0);
}

/// A fake server that reads the challenge and answers it with `answer(request id,
/// challenge body)`, then keeps the connection open for `linger` (`None`: closes it).
fn hostile_server(
    answer: impl FnOnce(u64, &[u8]) -> Vec<u8> + Send + 'static,
    linger: Option<Duration>,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind((HOST, 0)).expect("a port");
    let port = listener.local_addr().expect("its address").port();
    let handle = spawn("hostile-server", move || {
        let (mut stream, _) = listener.accept().expect("the client");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        let challenge = read_raw_frame(&mut stream).expect("the challenge");
        let id = u64::from_be_bytes(challenge[9..17].try_into().expect("8 bytes"));
        let _ = stream.write_all(&answer(id, &challenge[21..]));
        let Some(linger) = linger else {
            return;
        };
        // Hold the connection open (the client must not wait for its end), at most
        // `linger`, or until the client closes it.
        let _ = stream.set_read_timeout(Some(linger));
        let mut buf = [0; 1024];
        let _ = stream.read(&mut buf);
    });
    (port, handle)
}

/// A server that answers the handshake with anything but a valid answer fails the
/// client's `create_client` promptly with `Auth` naming it; a silent one at the
/// handshake timeout.
#[test]
fn hostile_servers_fail_the_handshake_promptly_with_auth() {
    type Answer = Box<dyn FnOnce(u64, &[u8]) -> Vec<u8> + Send>;
    let response = |id: u64, body: &[u8]| {
        let mut rest = id.to_be_bytes().to_vec();
        rest.extend_from_slice(&(body.len() as u32).to_be_bytes());
        rest.extend_from_slice(body);
        raw_frame(4, &rest)
    };
    let cases: Vec<(&str, Option<Duration>, Answer)> = vec![
        (
            "garbage",
            Some(Duration::from_secs(20)),
            Box::new(|_, _| vec![0xAB; 100]),
        ),
        (
            "a length of 2^63",
            Some(Duration::from_secs(20)),
            Box::new(|_, _| (1u64 << 63).to_be_bytes().to_vec()),
        ),
        (
            "a response with another id",
            Some(Duration::from_secs(20)),
            Box::new(move |id, body| response(id ^ 1, body)),
        ),
        (
            "its own challenge as the answer",
            Some(Duration::from_secs(20)),
            Box::new(move |id, body| response(id, body)),
        ),
        (
            "a failure",
            Some(Duration::from_secs(20)),
            Box::new(|id, _| {
                let mut rest = id.to_be_bytes().to_vec();
                let text = b"java.lang.IllegalArgumentException: Authentication failed.\n\tat x";
                rest.extend_from_slice(&(text.len() as u32).to_be_bytes());
                rest.extend_from_slice(text);
                raw_frame(5, &rest)
            }),
        ),
        (
            "a failure with terminal escapes",
            Some(Duration::from_secs(20)),
            Box::new(|id, _| {
                let mut rest = id.to_be_bytes().to_vec();
                let text = b"\x1b[2J\x1b[31mrefused\r\x1b[0m";
                rest.extend_from_slice(&(text.len() as u32).to_be_bytes());
                rest.extend_from_slice(text);
                raw_frame(5, &rest)
            }),
        ),
        (
            "half an answer, then a close",
            None,
            Box::new(move |id, body| {
                let mut half = response(id, body);
                half.truncate(40);
                half
            }),
        ),
        (
            "a one-way message",
            Some(Duration::from_secs(20)),
            Box::new(|_, _| raw_frame(9, &[0, 0, 0, 1, b'x'])),
        ),
    ];
    let auth = AuthBootstrap::new("app", SECRET).with_timeout(Duration::from_secs(30));
    let ctx = TransportContext::new(transport_conf(&[]), TestHandler::new());
    let factory = ctx.create_client_factory_with_bootstrap(&auth);
    for (what, linger, answer) in cases {
        let (port, handle) = hostile_server(answer, linger);
        let started = Instant::now();
        let err = factory
            .create_client(HOST, port)
            .expect_err("a hostile answer is refused");
        assert!(
            started.elapsed() < PROMPTLY,
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_auth_error(&err, port);
        assert!(
            !err.to_string().contains("within"),
            "{what}: a known failure reported as a timeout: {err}"
        );
        assert!(
            !err.to_string().chars().any(char::is_control),
            "{what}: the peer's control characters reach the error: {err:?}"
        );
        join(handle);
    }
    // Silence: the handshake timeout.
    let quick = auth.clone().with_timeout(Duration::from_millis(500));
    let factory = ctx.create_client_factory_with_bootstrap(&quick);
    let (port, handle) = hostile_server(|_, _| Vec::new(), Some(Duration::from_secs(5)));
    let started = Instant::now();
    let err = factory.create_client(HOST, port).expect_err("no answer");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_auth_error(&err, port);
    join(handle);
}

// ---------------------------------------------------------------------------------------
// Configuration a new user may get wrong
// ---------------------------------------------------------------------------------------

/// A handshake timeout too long for a deadline (`Duration::MAX`, or
/// `rpc.authenticate.timeout=18446744073709551615`) means no deadline: the handshake
/// works, nothing panics.
#[test]
fn a_handshake_timeout_too_long_for_a_deadline_means_none() {
    let auth = AuthBootstrap::new("app", SECRET).with_timeout(Duration::MAX);
    let side = Secured::both(&auth);
    let client = side.connect().expect("authenticated");
    assert_echo(&client, b"no deadline");

    let conf = secure_conf(SECRET, Some("AES/GCM/NoPadding"))
        .set("rpc.authenticate.timeout", "18446744073709551615");
    let server = env("long-server", conf.clone(), false);
    server
        .setup_endpoint("echo", Echo { count: 0 })
        .expect("an endpoint");
    let client = env("long-client", conf, true);
    let echo: RpcEndpointRef<Msg> = client
        .setup_endpoint_ref(address_of(&server), "echo")
        .expect("a lookup");
    assert_eq!(
        echo.ask_sync::<String>(Msg::Echo("z".into()))
            .expect("an ask"),
        "z"
    );
    client.shutdown();
    server.shutdown();
}

/// A secret file larger than any secret (here 2 MiB; `/dev/zero` would never end) is a
/// `Config` error naming the key, not a read of whatever the file holds.
#[test]
fn a_huge_secret_file_is_a_config_error() {
    init_logger();
    let dir = std::env::temp_dir().join(format!("rpcenv-big-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join("secret");
    std::fs::write(&file, vec![b'k'; 2 << 20]).expect("the secret file");
    let conf = rpc_conf().set("rpc.authenticate", "true").set(
        "rpc.authenticate.secret.file",
        file.to_str().expect("utf-8"),
    );
    let err = RpcEnv::builder("big")
        .client_mode(true)
        .conf(conf)
        .build()
        .expect_err("a 2 MiB secret");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        matches!(&err, RpcError::Config { key, .. } if key == "rpc.authenticate.secret.file"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("kkkk"), "{err}");
}

/// The child's side of the test below: builds an env whose secret comes from the
/// variable named in `RPCENV_TEST_SECRET_VAR`, and prints the error.
const CHILD_VAR: &str = "RPCENV_TEST_SECRET_VAR";

/// A secret variable whose value is not UTF-8 is a `Config` error naming the key, and
/// neither the error's text nor its `Debug` form shows the value (the standard library's
/// `VarError` prints it). Run in a child process: setting a variable here would race the
/// other tests' threads.
#[test]
fn a_secret_variable_that_is_not_utf8_is_refused_without_showing_it() {
    if let Some(name) = std::env::var_os(CHILD_VAR) {
        let conf = rpc_conf().set("rpc.authenticate", "true").set(
            "rpc.authenticate.secret.env",
            name.to_str().expect("a name"),
        );
        match RpcEnv::builder("child")
            .client_mode(true)
            .conf(conf)
            .build()
        {
            Ok(env) => {
                println!("CHILD: built");
                env.shutdown();
            }
            Err(err) => println!("CHILD: {err} | {err:?}"),
        }
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "auth::a_secret_variable_that_is_not_utf8_is_refused_without_showing_it",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "RPCENV_TEST_BINARY_SECRET")
        .env(
            "RPCENV_TEST_BINARY_SECRET",
            std::ffi::OsStr::from_bytes(b"topsecretvalue\xff"),
        )
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.split_once("CHILD: ").map(|(_, said)| said))
        .unwrap_or_else(|| panic!("no answer from the child: {stdout}"));
    assert!(line.contains("rpc.authenticate.secret.env"), "{line}");
    assert!(line.contains("Config"), "{line}");
    assert!(
        !line.contains("topsecret"),
        "the error shows the secret: {line}"
    );
}

/// A plaintext client whose server closes the connection at its first frame, without a
/// word (what an authenticating server does to a one-way message before the handshake),
/// is told that the server may require authentication.
#[test]
fn a_plaintext_client_closed_before_any_answer_is_told_to_check_authentication() {
    init_logger();
    let listener = TcpListener::bind((HOST, 0)).expect("a port");
    let port = listener.local_addr().expect("its address").port();
    let server = spawn("closing-server", move || {
        let (mut stream, _) = listener.accept().expect("the client");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        read_raw_frame(&mut stream).expect("the request");
    });
    let ctx = TransportContext::new(transport_conf(&[]), TestHandler::new());
    let factory = ctx.create_client_factory();
    let client = factory.create_client(HOST, port).expect("a connection");
    let started = Instant::now();
    let err = client
        .send_rpc_sync(b"hello".to_vec(), LONG)
        .expect_err("closed without an answer");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(err.to_string().contains("rpc.authenticate"), "{err}");
    join(server);
}

/// An empty secret authenticates nothing (anyone could present it): a bootstrap made with
/// one fails every handshake with `Auth` saying so, on both sides, and the server's
/// handler hears nothing. (`rpc.authenticate.secret=""` is a `Config` error at build.)
#[test]
fn an_empty_secret_authenticates_nothing() {
    let empty = AuthBootstrap::new("app", "");
    let side = Secured::both(&empty);
    let err = side.connect().expect_err("an empty secret is refused");
    assert_auth_error(&err, side.port());
    assert!(err.to_string().contains("empty"), "{err}");
    // A client with the empty secret against a server with a real one, and the reverse.
    let real = AuthBootstrap::new("app", SECRET);
    for (server, client) in [(&real, &empty), (&empty, &real)] {
        let side = Secured::new(Some(server), Some(client));
        let err = side.connect().expect_err("an empty secret is refused");
        assert_auth_error(&err, side.port());
        std::thread::sleep(Duration::from_millis(50));
        assert!(side.handler.active().is_empty());
    }
    let err = RpcEnv::builder("empty")
        .client_mode(true)
        .conf(secure_conf("", None))
        .build()
        .expect_err("an empty secret");
    assert!(
        matches!(&err, RpcError::Config { key, .. } if key == "rpc.authenticate.secret"),
        "{err:?}"
    );
}

/// Answers a list of payloads with the same payloads in reverse order.
struct ReverseShared;

impl RpcEndpoint for ReverseShared {
    type Message = Vec<SharedBytes>;

    fn receive_and_reply(
        &mut self,
        mut msg: Vec<SharedBytes>,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Vec<SharedBytes>>,
    ) {
        msg.reverse();
        reply.reply(msg);
    }
}

/// `SharedBytes` large enough to be written from their own buffers in clear are copied
/// into the frame when it is sealed: an ask and its reply carrying several, next to small
/// ones, arrive intact with each cipher (AES-GCM frames above 128 KiB are sealed a chunk
/// at a time).
#[test]
fn shared_bytes_asks_over_encrypted_connections() {
    for encryption in ["AES/GCM/NoPadding", "AES/CTR/NoPadding"] {
        let server = env(
            "shared-server",
            secure_conf(SECRET, Some(encryption)),
            false,
        );
        let client = env("shared-client", secure_conf(SECRET, Some(encryption)), true);
        server
            .setup_endpoint("reverse", ReverseShared)
            .expect("an endpoint");
        let reverse: RpcEndpointRef<Vec<SharedBytes>> = client
            .setup_endpoint_ref(address_of(&server), "reverse")
            .expect("a lookup over an encrypted connection");
        let sent: Vec<SharedBytes> = [10, 16 * 1024, 100_000, 1 << 20, 300]
            .into_iter()
            .enumerate()
            .map(|(i, len)| SharedBytes::from(vec![i as u8 + 1; len]))
            .collect();
        for _ in 0..3 {
            let mut answer: Vec<SharedBytes> = reverse
                .ask_sync(sent.clone())
                .unwrap_or_else(|err| panic!("{encryption}: {err}"));
            answer.reverse();
            assert!(
                answer == sent,
                "{encryption}: the payloads came back intact"
            );
        }
        client.shutdown();
        server.shutdown();
    }
}
