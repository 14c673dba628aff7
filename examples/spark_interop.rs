//! The Rust side of the Spark interop check (`interop/spark/run.sh`).
//!
//! A peer that speaks the echo protocol of `interop/spark/SparkPeer.java` over
//! `rpcenv::transport`, so that a real Spark `TransportClient` can be pointed at an rpcenv
//! server and an rpcenv client at a real Spark `TransportServer`:
//!
//! ```text
//! cargo run --example spark_interop -- server [auth options] <port-file>
//! cargo run --example spark_interop -- client [auth options] <port>
//! ```
//!
//! Without auth options the connections are plaintext (Spark with `spark.authenticate=false`).
//! With `--auth-secret S --cipher C --engine-version V` every connection runs Spark's
//! `AuthEngine` handshake ([`AuthBootstrap`], app id [`SPARK_RPC_APP_ID`]) and is then
//! encrypted with `C` (`AES/CTR/NoPadding` or `AES/GCM/NoPadding`), the channel key derived
//! as `spark.network.crypto.authEngineVersion` `V` says; the Spark side must be configured
//! alike (`interop/spark/README.md`). The client then also runs the check `wrong_secret`
//! first: a client factory with another secret must be refused promptly with
//! [`RpcError::Auth`], before the real client connects.
//!
//! Echo protocol (both servers):
//!
//! * RPC `FAIL:<rest>` is answered with a failure whose text contains `<rest>`;
//! * RPC `__count__` is answered with the number of one-way messages received so far,
//!   in ASCII decimal;
//! * RPC `__shutdown__` is answered with `bye`, then the server exits 0;
//! * any other RPC is answered with its own body;
//! * a one-way message increments the one-way counter;
//! * `StreamRequest("/files/<name>")` streams the file `<name>` of the server's stream
//!   directory: `s0`, `s1`, `s1m`, `s64m` (0 B, 1 B, 1 MiB, 64 MiB, byte `i` of a file of
//!   `size` bytes is `stream_byte(size, i)`); anything else is Spark's "not found". The
//!   rpcenv server serves them from an rpcenv [`FileServer`](rpcenv::FileServer); the
//!   Spark server from a `StreamManager` of `FileSegmentManagedBuffer`s.
//!
//! The client runs the checks against 127.0.0.1:`<port>` and prints `PASS <name>` or
//! `FAIL <name>: <why>` per check, then `interop client: N passed, M failed`; it exits 0
//! iff every check passed. Set `RUST_LOG=debug` for the transport's logs.

// The crate's own `sync` wrappers are private; its public API takes `std::sync::Arc`.
#![allow(clippy::disallowed_types)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use std::io::Read as _;

use rpcenv::transport::{
    AuthBootstrap, Cipher, EngineVersion, Responder, RpcHandler, SPARK_RPC_APP_ID, StreamBody,
    TransportClient, TransportClientFactory, TransportConf, TransportContext,
};
use rpcenv::{FileServer, RpcConf, RpcEnv, RpcError};

/// The files both servers stream: name and size.
const STREAM_FILES: [(&str, u64, &str); 4] = [
    ("s0", 0, "0B"),
    ("s1", 1, "1B"),
    ("s1m", 1 << 20, "1MiB"),
    ("s64m", 64 << 20, "64MiB"),
];

/// Byte `i` of a stream file of `size` bytes (the same function as `SparkPeer.streamByte`).
fn stream_byte(size: u64, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(i >> 9).wrapping_add(size) & 0xff) as u8
}

/// The content of a stream file of `size` bytes.
fn stream_content(size: u64) -> Vec<u8> {
    (0..size).map(|i| stream_byte(size, i)).collect()
}

const HOST: &str = "127.0.0.1";
/// Upper bound for every single wait of the client (per check).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// The server gives up (exit 1) if nobody asks it to shut down within this time.
const SERVER_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How long a handshake may take (the Spark side uses the same `spark.network.auth.rpcTimeout`).
const AUTH_TIMEOUT: Duration = Duration::from_secs(20);
/// A refused handshake must fail within this time, well under 10 s (a timeout would take
/// `AUTH_TIMEOUT`).
const WRONG_SECRET_BOUND: Duration = Duration::from_secs(5);

const USAGE: &str = "\
usage: spark_interop server [AUTH] <port-file>
       spark_interop client [AUTH] <port>
       spark_interop --help

  server <port-file>  serve the echo protocol on 127.0.0.1 (port chosen by the OS), write the
                      port to <port-file>, run until an RPC `__shutdown__` arrives (exit 0) or
                      10 minutes pass (exit 1)
  client <port>       run the interop checks against an echo server on 127.0.0.1:<port>, then
                      send it `__shutdown__`; exit 0 iff every check passed

  AUTH (all three or none; none: plaintext):
    --auth-secret S     authenticate every connection with Spark's AuthEngine, app id
                        \"sparkSaslUser\", shared secret S (spark.authenticate.secret)
    --cipher C          then encrypt with C: AES/CTR/NoPadding or AES/GCM/NoPadding
                        (spark.network.crypto.cipher)
    --engine-version V  derive the channel key as version V does: 1 or 2
                        (spark.network.crypto.authEngineVersion)
  With AUTH the client first checks that a client with another secret is refused
  (check `wrong_secret`).

Environment: RUST_LOG (env_logger) selects the log level, e.g. RUST_LOG=debug.";

/// The AuthEngine settings, alike on both sides (no `Auth`: plaintext).
#[derive(Clone)]
struct Auth {
    secret: String,
    cipher: Cipher,
    version: EngineVersion,
}

impl Auth {
    fn bootstrap(&self) -> AuthBootstrap {
        AuthBootstrap::new(SPARK_RPC_APP_ID, &self.secret)
            .with_encryption(Some(self.cipher))
            .with_engine_version(self.version)
            .with_timeout(AUTH_TIMEOUT)
    }
}

enum Mode {
    Help,
    Server(PathBuf, Option<Auth>),
    Client(u16, Option<Auth>),
}

fn parse_cipher(s: &str) -> Result<Cipher, String> {
    match s {
        "AES/CTR/NoPadding" => Ok(Cipher::AesCtr),
        "AES/GCM/NoPadding" => Ok(Cipher::AesGcm),
        _ => Err(format!(
            "invalid cipher {s:?} (expected AES/CTR/NoPadding or AES/GCM/NoPadding)"
        )),
    }
}

fn parse_version(s: &str) -> Result<EngineVersion, String> {
    match s {
        "1" => Ok(EngineVersion::V1),
        "2" => Ok(EngineVersion::V2),
        _ => Err(format!("invalid engine version {s:?} (expected 1 or 2)")),
    }
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let (mode, rest) = match args {
        [flag] if flag == "--help" || flag == "-h" || flag == "help" => return Ok(Mode::Help),
        [] => return Err("missing mode (server or client)".to_owned()),
        [mode, rest @ ..] if mode == "server" || mode == "client" => (mode.as_str(), rest),
        [other, ..] => return Err(format!("unknown mode {other:?}")),
    };
    let (mut secret, mut cipher, mut version) = (None, None, None);
    let mut positional = Vec::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let slot = match arg.as_str() {
            "--auth-secret" => &mut secret,
            "--cipher" => &mut cipher,
            "--engine-version" => &mut version,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag:?}")),
            _ => {
                positional.push(arg);
                continue;
            }
        };
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        *slot = Some(value.as_str());
    }
    let auth = match (secret, cipher, version) {
        (None, None, None) => None,
        (Some(""), _, _) => return Err("--auth-secret must not be empty".to_owned()),
        (Some(secret), Some(cipher), Some(version)) => Some(Auth {
            secret: secret.to_owned(),
            cipher: parse_cipher(cipher)?,
            version: parse_version(version)?,
        }),
        _ => return Err("--auth-secret, --cipher and --engine-version go together".to_owned()),
    };
    let [arg] = positional.as_slice() else {
        return Err(format!("{mode}: expected exactly one argument"));
    };
    if mode == "server" {
        if arg.is_empty() {
            Err("server: the port file must not be empty".to_owned())
        } else {
            Ok(Mode::Server(PathBuf::from(arg), auth))
        }
    } else {
        match arg.parse::<u16>() {
            Ok(p) if p != 0 => Ok(Mode::Client(p, auth)),
            _ => Err(format!("client: invalid port {arg:?} (expected 1..=65535)")),
        }
    }
}

fn main() -> ExitCode {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Mode::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Mode::Server(port_file, auth)) => run_server(&port_file, auth.as_ref()),
        Ok(Mode::Client(port, auth)) => run_client(port, auth.as_ref()),
        Err(msg) => {
            eprintln!("spark_interop: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

// ------------------------------------------------------------------------------------ server

struct EchoHandler {
    one_ways: AtomicU64,
    shutdown: mpsc::Sender<()>,
    /// The server's files (an rpcenv file server), streamed on request.
    files: Option<FileServer>,
}

impl RpcHandler for EchoHandler {
    fn receive(&self, _client: &TransportClient, message: Vec<u8>, responder: Responder) {
        if let Some(rest) = message.strip_prefix(b"FAIL:") {
            responder.fail(String::from_utf8_lossy(rest).into_owned());
        } else if message == b"__count__" {
            responder.reply(self.one_ways.load(Ordering::SeqCst).to_string());
        } else if message == b"__shutdown__" {
            responder.reply("bye");
            let _ = self.shutdown.send(());
        } else {
            responder.reply(message);
        }
    }

    fn receive_one_way(&self, _client: &TransportClient, _message: Vec<u8>) {
        self.one_ways.fetch_add(1, Ordering::SeqCst);
    }

    fn exception_caught(&self, error: &RpcError, client: &TransportClient) {
        eprintln!("spark_interop server: exception on {client:?}: {error:#}");
    }

    fn open_stream(
        &self,
        _client: &TransportClient,
        stream_id: &str,
    ) -> Result<Option<StreamBody>, String> {
        match &self.files {
            Some(files) => files.open_stream(stream_id),
            None => Ok(None),
        }
    }
}

/// A temp directory with the stream files, removed when dropped.
struct StreamDir(PathBuf);

impl StreamDir {
    fn create() -> std::io::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("rpcenv-interop-streams-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        for (name, size, _) in STREAM_FILES {
            fs::write(dir.join(name), stream_content(size))?;
        }
        Ok(Self(dir))
    }
}

impl Drop for StreamDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, format!("{port}\n"))?;
    fs::rename(&tmp, path)
}

fn run_server(port_file: &Path, auth: Option<&Auth>) -> ExitCode {
    let (shutdown_tx, shutdown_rx) = mpsc::channel();
    // The files come from an rpcenv file server (of an env of their own; its listener is
    // not used): what a Spark client downloads is what an env serves.
    let stream_dir = match StreamDir::create() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("spark_interop server: cannot write the stream files: {e}");
            return ExitCode::FAILURE;
        }
    };
    let files_env = match RpcEnv::builder("interop-files").bind_address(HOST).build() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("spark_interop server: cannot start the files env: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, _, _) in STREAM_FILES {
        if let Err(e) = files_env.file_server().add_file(stream_dir.0.join(name)) {
            eprintln!("spark_interop server: cannot serve {name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let handler = Arc::new(EchoHandler {
        one_ways: AtomicU64::new(0),
        shutdown: shutdown_tx,
        files: Some(files_env.file_server().clone()),
    });
    let context = TransportContext::new(TransportConf::default(), handler.clone());
    let server = match auth {
        None => context.create_server(HOST, 0),
        Some(auth) => context.create_server_with_bootstrap(HOST, 0, &auth.bootstrap()),
    };
    let server = match server {
        Ok(server) => server,
        Err(e) => {
            eprintln!("spark_interop server: cannot listen on {HOST}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = server.port();
    if let Err(e) = write_port_file(port_file, port) {
        eprintln!(
            "spark_interop server: cannot write {}: {e}",
            port_file.display()
        );
        return ExitCode::FAILURE;
    }
    match auth {
        None => eprintln!("spark_interop server: listening on {HOST}:{port} (plaintext)"),
        Some(auth) => eprintln!(
            "spark_interop server: listening on {HOST}:{port} (AuthEngine, {}, engine {:?})",
            auth.cipher, auth.version
        ),
    }

    let asked = shutdown_rx.recv_timeout(SERVER_LIFETIME).is_ok();
    if asked {
        // Let the "bye" reply reach the wire before tearing the server down.
        thread::sleep(Duration::from_millis(300));
    } else {
        eprintln!(
            "spark_interop server: no __shutdown__ within {} s, giving up",
            SERVER_LIFETIME.as_secs()
        );
    }
    server.close();
    files_env.shutdown();
    drop(stream_dir);
    eprintln!(
        "spark_interop server: {} one-way messages received",
        handler.one_ways.load(Ordering::SeqCst)
    );
    if asked {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ------------------------------------------------------------------------------------ client

/// A check returns `Err(why)` when it failed.
type Check = Box<dyn Fn(&TransportClient) -> Result<(), String>>;

fn client_factory(auth: Option<&Auth>) -> TransportClientFactory {
    let (shutdown_tx, _shutdown_rx) = mpsc::channel();
    let handler = Arc::new(EchoHandler {
        one_ways: AtomicU64::new(0),
        shutdown: shutdown_tx,
        files: None,
    });
    let context = TransportContext::new(TransportConf::default(), handler);
    match auth {
        None => context.create_client_factory(),
        Some(auth) => context.create_client_factory_with_bootstrap(&auth.bootstrap()),
    }
}

fn run_client(port: u16, auth: Option<&Auth>) -> ExitCode {
    let mut passed = 0usize;
    let mut failed = 0usize;
    if let Some(auth) = auth {
        // Before the real client: a client with another secret must be refused.
        match check_wrong_secret(port, auth) {
            Ok(()) => {
                println!("PASS wrong_secret");
                passed += 1;
            }
            Err(why) => {
                println!("FAIL wrong_secret: {}", one_line(&why));
                failed += 1;
            }
        }
        let _ = std::io::stdout().flush();
    }

    let factory = client_factory(auth);

    match factory.create_client(HOST, port) {
        Err(e) => {
            println!("FAIL connect: {}", one_line(&e.to_string()));
            failed += 1;
        }
        Ok(client) => {
            let mut checks: Vec<(String, Check)> = Vec::new();
            for (size, name) in [
                (0, "0B"),
                (1, "1B"),
                (100, "100B"),
                (64 << 10, "64KiB"),
                (16 << 20, "16MiB"),
            ] {
                checks.push((
                    format!("echo_{name}"),
                    Box::new(move |c| check_echo(c, size)),
                ));
            }
            checks.push(("fail_boom".to_owned(), Box::new(check_failure)));
            checks.push(("oneway_1000_count".to_owned(), Box::new(check_one_way)));
            checks.push(("concurrent_200".to_owned(), Box::new(check_concurrent)));
            for (name, size, label) in STREAM_FILES {
                checks.push((
                    format!("stream_{label}"),
                    Box::new(move |c| check_stream(c, name, size)),
                ));
            }
            checks.push(("stream_missing".to_owned(), Box::new(check_stream_missing)));
            let open_auth = auth.cloned();
            checks.push((
                "open_channel_64MiB".to_owned(),
                Box::new(move |_| check_open_channel(port, open_auth.as_ref())),
            ));

            for (name, check) in &checks {
                match check(&client) {
                    Ok(()) => {
                        println!("PASS {name}");
                        passed += 1;
                    }
                    Err(why) => {
                        println!("FAIL {name}: {}", one_line(&why));
                        failed += 1;
                    }
                }
                let _ = std::io::stdout().flush();
            }

            // Not a check: ask the server to exit (run.sh checks that it did).
            match client.send_rpc_sync("__shutdown__", Duration::from_secs(10)) {
                Ok(reply) if reply == b"bye" => {}
                Ok(reply) => eprintln!(
                    "spark_interop client: __shutdown__ answered {:?}, not \"bye\"",
                    String::from_utf8_lossy(&reply)
                ),
                Err(e) => eprintln!("spark_interop client: __shutdown__ failed: {e}"),
            }
            client.close();
        }
    }
    factory.close();

    println!("interop client: {passed} passed, {failed} failed");
    let _ = std::io::stdout().flush();
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A client factory whose secret differs from the server's: `create_client` must fail
/// promptly with [`RpcError::Auth`] (the server refused the handshake, no timeout), and the
/// client must not get a connection.
fn check_wrong_secret(port: u16, auth: &Auth) -> Result<(), String> {
    let wrong = Auth {
        secret: format!("not-{}", auth.secret),
        ..auth.clone()
    };
    let factory = client_factory(Some(&wrong));
    let start = Instant::now();
    let result = factory.create_client(HOST, port);
    let took = start.elapsed();
    factory.close();
    match result {
        Ok(client) => {
            client.close();
            Err("create_client succeeded with a wrong secret".to_owned())
        }
        Err(RpcError::Auth { reason, .. }) if reason.contains("no answer to the handshake") => {
            Err(format!("refused by a timeout after {took:?}: {reason}"))
        }
        Err(RpcError::Auth { .. }) if took > WRONG_SECRET_BOUND => {
            Err(format!("refused only after {took:?}"))
        }
        // The reason quotes the server's failure text: "Authentication failed." from Spark
        // and rpcenv alike. Anything else (e.g. a connection closed without an answer) is
        // not a refusal of the handshake.
        Err(RpcError::Auth { reason, .. }) if !reason.contains("Authentication failed") => Err(
            format!("RpcError::Auth, but not the server's \"Authentication failed\": {reason}"),
        ),
        Err(e @ RpcError::Auth { .. }) => {
            println!(
                "    (wrong secret refused after {} ms: {})",
                took.as_millis(),
                one_line(&e.to_string())
            );
            Ok(())
        }
        Err(other) => Err(format!(
            "expected RpcError::Auth, got {other:?} after {took:?}"
        )),
    }
}

/// Compares what a stream gave with the file of `size` bytes.
fn compare_stream(got: &[u8], size: u64) -> Result<(), String> {
    if got.len() as u64 != size {
        return Err(format!("got {} bytes, expected {size}", got.len()));
    }
    match (0..size).find(|&i| got[i as usize] != stream_byte(size, i)) {
        Some(i) => Err(format!("byte {i} differs")),
        None => Ok(()),
    }
}

/// `TransportClient::stream` (callback) and `stream_reader` of one file.
fn check_stream(client: &TransportClient, name: &str, size: u64) -> Result<(), String> {
    let id = format!("/files/{name}");
    // The callback API, as Spark's StreamCallback.
    struct Collect(Vec<u8>, mpsc::Sender<Result<Vec<u8>, RpcError>>);
    impl rpcenv::transport::StreamCallback for Collect {
        fn on_data(&mut self, _: &str, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
        fn on_complete(&mut self, _: &str) {
            let _ = self.1.send(Ok(std::mem::take(&mut self.0)));
        }
        fn on_failure(&mut self, _: &str, error: RpcError) {
            let _ = self.1.send(Err(error));
        }
    }
    let (tx, rx) = mpsc::channel();
    client.stream(&id, Collect(Vec::new(), tx));
    let got = rx
        .recv_timeout(CHECK_TIMEOUT)
        .map_err(|_| format!("no end of {id} within {CHECK_TIMEOUT:?}"))?
        .map_err(|e| format!("stream {id} failed: {e}"))?;
    compare_stream(&got, size).map_err(|why| format!("stream {id}: {why}"))?;
    // The blocking reader.
    let mut reader = client
        .stream_reader(&id)
        .map_err(|e| format!("stream_reader {id}: {e}"))?;
    let mut got = Vec::new();
    reader
        .read_to_end(&mut got)
        .map_err(|e| format!("reading {id}: {e}"))?;
    compare_stream(&got, size).map_err(|why| format!("stream_reader {id}: {why}"))
}

/// A missing file fails the stream with the server's "not found".
fn check_stream_missing(client: &TransportClient) -> Result<(), String> {
    let mut reader = client
        .stream_reader("/files/missing")
        .map_err(|e| e.to_string())?;
    match reader.read_to_end(&mut Vec::new()) {
        Ok(n) => Err(format!("a missing file gave {n} bytes")),
        Err(e)
            if e.to_string()
                .contains("Stream '/files/missing' was not found.") =>
        {
            Ok(())
        }
        Err(e) => Err(format!("not Spark's \"not found\": {e}")),
    }
}

/// `RpcEnv::open_channel` of a client-mode env, with the same auth settings, downloads the
/// 64 MiB file by its `spark://` URI.
fn check_open_channel(port: u16, auth: Option<&Auth>) -> Result<(), String> {
    let mut conf = RpcConf::new();
    if let Some(auth) = auth {
        let cipher = match auth.cipher {
            Cipher::AesCtr => "AES/CTR/NoPadding",
            _ => "AES/GCM/NoPadding",
        };
        let version = match auth.version {
            EngineVersion::V1 => "1",
            _ => "2",
        };
        conf = conf
            .set("rpc.authenticate", "true")
            .set("rpc.authenticate.secret", auth.secret.clone())
            .set("rpc.io.encryption.enabled", "true")
            .set("rpc.io.encryption.cipher", cipher)
            .set("rpc.io.encryption.authEngineVersion", version);
    }
    let env = RpcEnv::builder("interop-download")
        .client_mode(true)
        .conf(conf)
        .build()
        .map_err(|e| format!("client env: {e}"))?;
    let size = 64 << 20;
    let result = (|| {
        let mut reader = env
            .open_channel(&format!("spark://{HOST}:{port}/files/s64m"))
            .map_err(|e| format!("open_channel: {e}"))?;
        let mut got = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut got)
            .map_err(|e| format!("reading: {e}"))?;
        compare_stream(&got, size)?;
        let mut missing = env
            .open_channel(&format!("spark://{HOST}:{port}/files/missing"))
            .map_err(|e| format!("open_channel: {e}"))?;
        match missing.read_to_end(&mut Vec::new()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => Err(format!("a missing file read as {other:?}")),
        }
    })();
    env.shutdown();
    result
}

fn check_echo(client: &TransportClient, size: usize) -> Result<(), String> {
    let body = pseudo_random_bytes(0x5eed_0000 + size as u64, size);
    let reply = client
        .send_rpc_sync(body.clone(), CHECK_TIMEOUT)
        .map_err(|e| e.to_string())?;
    if reply.len() != body.len() {
        return Err(format!(
            "reply is {} bytes, expected {}",
            reply.len(),
            body.len()
        ));
    }
    match reply.iter().zip(&body).position(|(a, b)| a != b) {
        Some(i) => Err(format!("reply differs from request at byte {i}")),
        None => Ok(()),
    }
}

fn check_failure(client: &TransportClient) -> Result<(), String> {
    match client.send_rpc_sync("FAIL:boom", CHECK_TIMEOUT) {
        Ok(reply) => Err(format!(
            "unexpected success: {:?}",
            String::from_utf8_lossy(&reply)
        )),
        Err(RpcError::Remote { message }) if message.contains("boom") => Ok(()),
        Err(RpcError::Remote { message }) => {
            Err(format!("failure text does not contain 'boom': {message:?}"))
        }
        Err(other) => Err(format!("expected RpcError::Remote, got {other:?}")),
    }
}

fn check_one_way(client: &TransportClient) -> Result<(), String> {
    // Same connection, one-ways first: the count request is written after all of them.
    for i in 0..1000 {
        client
            .send(format!("oneway-{i}"))
            .map_err(|e| format!("one-way message {i}: {e}"))?;
    }
    let reply = client
        .send_rpc_sync("__count__", CHECK_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    if text == "1000" {
        Ok(())
    } else {
        Err(format!("__count__ answered {text:?}, expected \"1000\""))
    }
}

fn check_concurrent(client: &TransportClient) -> Result<(), String> {
    const N: usize = 200;
    let mut seed = 0xc0ff_ee00_u64;
    let bodies: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let mut body = format!("concurrent-{i}:").into_bytes();
            let extra = 1 + (splitmix64(&mut seed) % 256) as usize;
            body.extend(pseudo_random_bytes(splitmix64(&mut seed), extra));
            body
        })
        .collect();

    let (tx, rx) = mpsc::channel::<(usize, Result<Vec<u8>, RpcError>)>();
    for (i, body) in bodies.iter().enumerate() {
        let tx = tx.clone();
        client.send_rpc(body.clone(), move |result| {
            let _ = tx.send((i, result));
        });
    }
    drop(tx);

    let deadline = Instant::now() + CHECK_TIMEOUT;
    let mut answered = [false; N];
    let mut count = 0;
    while count < N {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, result) = match rx.recv_timeout(left) {
            Ok(answer) => answer,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "{} of {N} requests unanswered after {} s",
                    N - count,
                    CHECK_TIMEOUT.as_secs()
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "{} of {N} callbacks were dropped without being called",
                    N - count
                ));
            }
        };
        if answered[i] {
            return Err(format!("request {i}: callback called twice"));
        }
        answered[i] = true;
        count += 1;
        match result {
            Ok(reply) if reply == bodies[i] => {}
            Ok(_) => return Err(format!("request {i}: reply differs from its request")),
            Err(e) => return Err(format!("request {i}: failed: {e}")),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------ helpers

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Keeps a (possibly multi-line, e.g. a Java stack trace) message on one output line.
fn one_line(text: &str) -> String {
    let flat = text.replace('\r', "").replace('\n', " | ");
    if flat.chars().count() > 400 {
        let cut: String = flat.chars().take(400).collect();
        format!("{cut}...")
    } else {
        flat
    }
}
