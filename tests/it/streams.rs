//! Streams and the file server: Spark's `RpcEnvSuite` file-server assertions, hostile
//! stream ids, concurrent and large downloads, encrypted connections, a connection cut
//! in the middle of a stream, and the transport-level `stream` calls.

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rpcenv::transport::{
    Responder, RpcHandler, StreamBody, StreamCallback, TransportClient, TransportContext,
};
use rpcenv::{RpcConf, RpcEnv, RpcError};

use crate::frames::stream_request_frame;
use crate::support::{
    ClientSide, HOST, PROMPTLY, client_env, client_env_with, init_logger, lock, recv_within,
    rpc_conf, server_env, server_env_with, spawn, transport_conf,
};

/// A directory under the system's temp dir, removed (with its contents) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "rpcenv-streams-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("a temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to `name` (relative) and returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("parent dirs");
        }
        fs::write(&path, bytes).expect("a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `len` pseudo-random bytes (xorshift), different for each `seed`.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Downloads `uri` with `env` and returns its bytes, or the error of the read that failed.
fn download(env: &RpcEnv, uri: &str) -> io::Result<Vec<u8>> {
    let mut reader = env
        .open_channel(uri)
        .map_err(|err| io::Error::other(err.to_string()))?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    Ok(out)
}

/// The [`RpcError`] inside a failed read.
fn rpc_error(err: &io::Error) -> &RpcError {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<RpcError>())
        .unwrap_or_else(|| panic!("not an RpcError: {err}"))
}

// ---- Spark's RpcEnvSuite "file server" (spark-rpc.md §6 item 34) ----

#[test]
fn file_server_serves_files_jars_and_directories_as_spark_does() {
    let tmp = TempDir::new("suite");
    let file = tmp.file("file", &bytes(1000, 1));
    let file_with_space = tmp.file("file name", &bytes(777, 2));
    let empty = tmp.file("empty", b"");
    let jar = tmp.file("jar", &bytes(3000, 3));
    let dir1 = tmp.path().join("dir1");
    let dir2 = tmp.path().join("dir2");
    let file1 = tmp.file("dir1/file1", &bytes(500, 4));
    let file2 = tmp.file("dir2/file2", &bytes(501, 5));

    let server = server_env("fs-server");
    let fs = server.file_server();
    let file_uri = fs.add_file(&file).unwrap();
    let space_uri = fs.add_file(&file_with_space).unwrap();
    let empty_uri = fs.add_file(&empty).unwrap();
    let jar_uri = fs.add_jar(&jar).unwrap();
    let dir1_uri = fs.add_directory("/dir1", &dir1).unwrap();
    let dir2_uri = fs.add_directory("/dir2", &dir2).unwrap();
    let addr = server.address().unwrap();
    assert_eq!(file_uri, format!("rpc://{addr}/files/file"));
    assert_eq!(space_uri, format!("rpc://{addr}/files/file%20name"));
    assert_eq!(jar_uri, format!("rpc://{addr}/jars/jar"));
    assert_eq!(dir1_uri, format!("rpc://{addr}/dir1"));

    // addDirectory refuses the reserved bases and equivalent re-registrations.
    for (base, text) in [
        ("/files", "Directory URI cannot be /files nor /jars."),
        ("/jars", "Directory URI cannot be /files nor /jars."),
        ("/dir1/././", "URI '/dir1' already registered."),
        ("/dir2/../dir2/", "URI '/dir2' already registered."),
    ] {
        let err = fs.add_directory(base, tmp.path()).unwrap_err();
        assert!(matches!(err, RpcError::FileServer { .. }), "{err}");
        assert!(err.to_string().contains(text), "{base}: {err}");
    }

    let client = client_env("fs-client");
    let expected = [
        (file_uri.clone(), file.clone()),
        (space_uri, file_with_space),
        (empty_uri, empty),
        (jar_uri.clone(), jar),
        (format!("{dir1_uri}/file1"), file1),
        (format!("{dir2_uri}/file2"), file2),
    ];
    for (uri, path) in &expected {
        let got = download(&client, uri).unwrap_or_else(|err| panic!("{uri}: {err}"));
        assert_eq!(got, fs::read(path).unwrap(), "{uri}");
    }

    // Missing files under files, jars and dir1 fail, with Spark's text.
    for uri in [
        format!("rpc://{addr}/files/fileMissing"),
        format!("rpc://{addr}/jars/jarMissing"),
        format!("rpc://{addr}/dir1/fileMissing"),
    ] {
        let err = download(&client, &uri).expect_err(&uri);
        assert_eq!(err.kind(), ErrorKind::NotFound, "{uri}: {err}");
        let stream_id = uri.split_once(&addr.to_string()).unwrap().1;
        assert!(
            matches!(rpc_error(&err), RpcError::Remote { message }
                if message == &format!("Stream '{stream_id}' was not found.")),
            "{uri}: {err}"
        );
    }
    // A directory base nobody added is Spark's "Invalid stream URI".
    let err = download(&client, &format!("rpc://{addr}/nodir/x")).expect_err("no such base");
    assert!(
        err.to_string()
            .contains("Invalid stream URI: nodir not found."),
        "{err}"
    );

    // Removing makes a file unavailable; the URI works as the name too.
    assert!(fs.remove_file(&file_uri));
    assert!(!fs.remove_file("file"));
    assert!(fs.remove_jar("jar"));
    assert_eq!(
        download(&client, &file_uri).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        download(&client, &jar_uri).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    client.shutdown();
    server.shutdown();
}

#[test]
fn adding_a_name_again_with_another_path_fails_naming_both() {
    let tmp = TempDir::new("readd");
    let a = tmp.file("a/same.txt", b"a");
    let b = tmp.file("b/same.txt", b"b");
    let server = server_env("readd");
    let fs = server.file_server();
    let uri = fs.add_file(&a).unwrap();
    assert_eq!(fs.add_file(&a).unwrap(), uri, "the same file again is fine");
    let err = fs.add_file(&b).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("File same.txt was already registered with a different path"),
        "{text}"
    );
    assert!(
        text.contains(&a.canonicalize().unwrap().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&b.canonicalize().unwrap().display().to_string()),
        "{text}"
    );
    // Jars are a table of their own.
    fs.add_jar(&b).unwrap();
    assert!(fs.add_file(tmp.path().join("missing")).is_err());
    server.shutdown();
}

#[test]
fn a_client_mode_env_serves_nothing_but_downloads() {
    let tmp = TempDir::new("client-mode");
    let path = tmp.file("x", b"x");
    let client = client_env("cm");
    let err = client.file_server().add_file(&path).unwrap_err();
    assert!(err.to_string().contains("client-mode"), "{err}");
    assert!(
        client
            .file_server()
            .add_directory("/d", tmp.path())
            .is_err()
    );
    for bad in [
        "http://127.0.0.1:1/files/x",
        "rpc://127.0.0.1/files/x",
        "rpc://127.0.0.1:1",
        "rpc://:1/files/x",
    ] {
        assert!(
            matches!(
                client.open_channel(bad),
                Err(RpcError::InvalidAddress { .. })
            ),
            "{bad}"
        );
    }
    let (_holder, port) = crate::support::refused_port();
    let err = client
        .open_channel(&format!("rpc://127.0.0.1:{port}/files/x"))
        .unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err}");
    client.shutdown();
    assert!(matches!(
        client.open_channel("rpc://127.0.0.1:1/files/x"),
        Err(RpcError::EnvStopped)
    ));
}

// ---- path safety ----

#[test]
fn hostile_stream_ids_get_a_stream_failure_never_a_file_from_elsewhere() {
    let tmp = TempDir::new("hostile");
    let secret = bytes(64, 99);
    tmp.file("secret.txt", &secret);
    tmp.file("outside/other.txt", &secret);
    let served = tmp.path().join("served");
    tmp.file("served/ok.txt", b"ok");
    tmp.file("served/sub/deep.txt", b"deep");
    fs::create_dir_all(served.join("emptydir")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret.txt"), served.join("link-out")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside"), served.join("dir-out")).unwrap();
    std::os::unix::fs::symlink(served.join("ok.txt"), served.join("link-in")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", served.join("abs-link")).unwrap();

    let server = server_env("hostile");
    server
        .file_server()
        .add_directory("/served", &served)
        .unwrap();
    server
        .file_server()
        .add_file(tmp.file("plain.txt", b"plain"))
        .unwrap();
    let port = server.address().unwrap().port();

    // A raw transport client sends the ids exactly as given (no URI decoding).
    let side = ClientSide::new(&[]);
    let client = side.connect(port);
    let fetch = |id: &str| -> io::Result<Vec<u8>> {
        let mut reader = client.stream_reader(id).map_err(io::Error::other)?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    };
    // Positive controls.
    assert_eq!(fetch("/served/ok.txt").unwrap(), b"ok");
    assert_eq!(fetch("/served/sub/deep.txt").unwrap(), b"deep");
    assert_eq!(fetch("/served/link-in").unwrap(), b"ok");
    assert_eq!(fetch("/files/plain.txt").unwrap(), b"plain");

    let secret_path = tmp.path().join("secret.txt").display().to_string();
    let hostile = [
        "/served/../secret.txt".to_owned(),
        "/served/sub/../../secret.txt".to_owned(),
        "/served/..".to_owned(),
        "/served/./ok.txt".to_owned(),
        "/served//ok.txt".to_owned(),
        format!("/served/{secret_path}"),
        format!("/served//{secret_path}"),
        "/served/link-out".to_owned(),
        "/served/dir-out/other.txt".to_owned(),
        "/served/abs-link".to_owned(),
        "/served/emptydir".to_owned(),
        "/served/sub".to_owned(),
        "/served/".to_owned(),
        "/served".to_owned(),
        "/served/ok.txt\0".to_owned(),
        "/served/ok\0.txt".to_owned(),
        "/served/%2e%2e/secret.txt".to_owned(),
        "/served/..%2fsecret.txt".to_owned(),
        "/served/..\\secret.txt".to_owned(),
        "/files/../secret.txt".to_owned(),
        "/files/secret.txt".to_owned(),
        "/files/".to_owned(),
        "/files/../../etc/passwd".to_owned(),
        "/jars/plain.txt".to_owned(),
        "/../secret.txt".to_owned(),
        "//etc/passwd".to_owned(),
        "/etc/passwd".to_owned(),
        secret_path.clone(),
        "".to_owned(),
        "/".to_owned(),
        "files".to_owned(),
    ];
    for id in &hostile {
        match fetch(id) {
            Ok(got) => panic!("{id:?} served {} bytes", got.len()),
            Err(err) => {
                assert!(
                    matches!(rpc_error(&err), RpcError::Remote { .. }),
                    "{id:?}: not a StreamFailure: {err}"
                );
            }
        }
    }
    // The connection is still fine after all of them.
    assert_eq!(fetch("/served/ok.txt").unwrap(), b"ok");

    // Through URIs, encoded separators decode into segments that are refused as well.
    let env = client_env("hostile-uri");
    let addr = server.address().unwrap();
    for path in [
        "/served/..%2Fsecret.txt",
        "/served/%2E%2E/secret.txt",
        "/served/sub%2F..%2F..%2Fsecret.txt",
        "/served/%2Fetc%2Fpasswd",
        "/served/ok.txt%00",
    ] {
        let uri = format!("rpc://{addr}{path}");
        assert!(download(&env, &uri).is_err(), "{uri}");
    }
    env.shutdown();
    server.shutdown();
}

// ---- concurrency and size ----

#[test]
fn ten_concurrent_downloads_on_one_connection_and_across_connections() {
    let tmp = TempDir::new("ten");
    let server = server_env("ten-server");
    let files: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            let content = bytes(100_000 + i * 37_000, i as u64 + 10);
            let path = tmp.file(&format!("f{i}.bin"), &content);
            (server.file_server().add_file(&path).unwrap(), content)
        })
        .collect();

    // One client env: its downloads share one connection to the server.
    let client = client_env("ten-one");
    let readers: Vec<_> = files
        .iter()
        .map(|(uri, _)| client.open_channel(uri).unwrap())
        .collect();
    let threads: Vec<_> = readers
        .into_iter()
        .zip(files.iter().cloned())
        .map(|(mut reader, (uri, content))| {
            spawn("stream-test", move || {
                let mut got = Vec::new();
                reader.read_to_end(&mut got).unwrap();
                assert_eq!(got, content, "{uri}");
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a download");
    }
    client.shutdown();

    // Ten client envs: ten connections, at once.
    let threads: Vec<_> = files
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (uri, content))| {
            spawn("stream-test", move || {
                let env = client_env(&format!("ten-{i}"));
                assert_eq!(download(&env, &uri).unwrap(), content, "{uri}");
                env.shutdown();
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a download");
    }
    server.shutdown();
}

#[test]
fn a_download_larger_than_any_buffer_streams_through_in_bounded_pieces() {
    let tmp = TempDir::new("large");
    // 24 MiB through queues of 256 KiB: the reader's buffer fills and drains ~100 times.
    let content = bytes(24 << 20, 7);
    let path = tmp.file("large.bin", &content);
    let conf = rpc_conf().set("rpc.io.maxQueuedBytes", "256k");
    let server = server_env_with("large-server", conf.clone());
    let uri = server.file_server().add_file(&path).unwrap();
    let client = client_env_with("large-client", conf);
    let mut reader = client.open_channel(&uri).unwrap();
    let mut got = Vec::with_capacity(content.len());
    let mut buf = vec![0; 100_000];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() % (4 << 20) < n {
            // Let the buffer fill up now and then, so that reading pauses.
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(got.len(), content.len());
    assert!(got == content, "the bytes differ");
    assert_eq!(reader.bytes_read(), content.len() as u64);
    client.shutdown();
    server.shutdown();
}

#[test]
fn a_reader_that_stops_reading_stalls_no_other_connection() {
    let tmp = TempDir::new("slow");
    let big = bytes(8 << 20, 3);
    let small = bytes(300_000, 4);
    let conf = rpc_conf()
        .set("rpc.io.threads", "1")
        .set("rpc.io.maxQueuedBytes", "256k");
    let server = server_env_with("slow-server", conf.clone());
    let big_uri = server
        .file_server()
        .add_file(tmp.file("big", &big))
        .unwrap();
    let small_uri = server
        .file_server()
        .add_file(tmp.file("small", &small))
        .unwrap();
    let slow = client_env_with("slow-client", conf.clone());
    let mut stalled = slow.open_channel(&big_uri).unwrap();
    let mut first = [0; 10];
    stalled.read_exact(&mut first).unwrap();
    // The server's only event loop now has a connection whose peer reads nothing.
    for i in 0..3 {
        let other = client_env_with(&format!("fast-{i}"), conf.clone());
        assert_eq!(download(&other, &small_uri).unwrap(), small);
        other.shutdown();
    }
    let mut rest = Vec::new();
    stalled.read_to_end(&mut rest).unwrap();
    assert_eq!(first.len() + rest.len(), big.len());
    assert!(first[..] == big[..10] && rest[..] == big[10..]);
    slow.shutdown();
    server.shutdown();
}

// ---- encryption ----

#[test]
fn streams_cross_encrypted_connections_with_either_cipher() {
    let tmp = TempDir::new("crypto");
    let content = bytes((3 << 20) + 12_345, 5);
    let path = tmp.file("secret.bin", &content);
    let empty = tmp.file("empty.bin", b"");
    for cipher in ["AES/GCM/NoPadding", "AES/CTR/NoPadding"] {
        let conf = rpc_conf()
            .set("rpc.authenticate", "true")
            .set("rpc.authenticate.secret", "stream-secret")
            .set("rpc.io.encryption.enabled", "true")
            .set("rpc.io.encryption.cipher", cipher)
            .set("rpc.io.maxQueuedBytes", "512k");
        let server = server_env_with("crypto-server", conf.clone());
        let uri = server.file_server().add_file(&path).unwrap();
        let empty_uri = server.file_server().add_file(&empty).unwrap();
        let client = client_env_with("crypto-client", conf);
        // Two at once on the same connection, then the empty one, then a missing one.
        let mut a = client.open_channel(&uri).unwrap();
        let mut b = client.open_channel(&uri).unwrap();
        let reader = spawn("stream-test", move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let mut got = Vec::new();
        a.read_to_end(&mut got).unwrap();
        assert!(got == content, "{cipher}: the bytes differ");
        assert!(
            reader.join().unwrap() == content,
            "{cipher}: the bytes differ"
        );
        assert_eq!(download(&client, &empty_uri).unwrap(), b"", "{cipher}");
        let missing = uri.replace("secret.bin", "missing.bin");
        assert_eq!(
            download(&client, &missing).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            download(&client, &uri).unwrap().len(),
            content.len(),
            "{cipher}"
        );
        client.shutdown();
        server.shutdown();
    }
}

// ---- faults ----

/// A peer that answers the first `StreamRequest` with a `StreamResponse` of `announced`
/// bytes, sends `sent` of them, then closes the connection.
fn cut_short_server(announced: u64, sent: usize) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind((HOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = spawn("cut-short-server", move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket.set_read_timeout(Some(PROMPTLY)).unwrap();
        let mut length = [0; 8];
        socket.read_exact(&mut length).unwrap();
        let mut rest = vec![0; i64::from_be_bytes(length) as usize - 8];
        socket.read_exact(&mut rest).unwrap();
        assert_eq!(rest[0], 6, "a StreamRequest");
        let id = &rest[5..];
        let mut frame = Vec::new();
        let fields = 4 + id.len() + 8;
        frame.extend_from_slice(&((9 + fields) as i64).to_be_bytes());
        frame.push(7);
        frame.extend_from_slice(&(id.len() as i32).to_be_bytes());
        frame.extend_from_slice(id);
        frame.extend_from_slice(&(announced as i64).to_be_bytes());
        frame.extend_from_slice(&bytes(sent, 1));
        socket.write_all(&frame).unwrap();
        socket.flush().unwrap();
        thread::sleep(Duration::from_millis(50));
        drop(socket);
    });
    (port, thread)
}

#[test]
fn a_connection_dropped_mid_stream_fails_the_reader_promptly() {
    let (port, server) = cut_short_server(1 << 20, 100_000);
    let side = ClientSide::new(&[("rpc.io.connectionTimeout", "60s")]);
    let client = side.connect(port);
    let mut reader = client.stream_reader("/files/x").unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let err = reader
        .read_to_end(&mut got)
        .expect_err("a short stream is an error");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_eq!(
        got,
        bytes(100_000, 1),
        "the bytes before the cut are delivered"
    );
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    assert!(
        matches!(rpc_error(&err), RpcError::Connection { .. }),
        "{err}"
    );
    // It keeps failing, and the next stream on the closed connection fails at once.
    assert!(reader.read(&mut [0; 10]).is_err());
    assert!(client.stream_reader("/files/y").is_err());
    server.join().unwrap();
}

#[test]
fn a_stream_waiting_for_its_answer_fails_when_the_connection_drops() {
    let (port, server) = cut_short_server(10, 10);
    let side = ClientSide::new(&[]);
    let client = side.connect(port);
    let mut first = client.stream_reader("/files/a").unwrap();
    let mut second = client.stream_reader("/files/b").unwrap();
    let mut got = Vec::new();
    first.read_to_end(&mut got).unwrap();
    assert_eq!(got, bytes(10, 1));
    let started = Instant::now();
    let err = second.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(started.elapsed() < PROMPTLY);
    assert!(
        matches!(rpc_error(&err), RpcError::Connection { .. }),
        "{err}"
    );
    server.join().unwrap();
}

// ---- transport level ----

/// Serves `/bytes/<n>` as `n` bytes in memory, `/fail` as a failure, `/file` as the
/// middle of a file, and nothing else.
struct Streams {
    file: PathBuf,
}

impl RpcHandler for Streams {
    fn receive(&self, _: &TransportClient, message: Vec<u8>, responder: Responder) {
        responder.reply(message)
    }

    fn open_stream(&self, _: &TransportClient, id: &str) -> Result<Option<StreamBody>, String> {
        if let Some(n) = id.strip_prefix("/bytes/") {
            let n: usize = n.parse().map_err(|_| "bad length".to_owned())?;
            return Ok(Some(StreamBody::bytes(bytes(n, n as u64))));
        }
        match id {
            "/fail" => Err("no streams today".to_owned()),
            "/file" => {
                let file = fs::File::open(&self.file).map_err(|err| err.to_string())?;
                Ok(Some(StreamBody::file_segment(file, 1000, 50_000)))
            }
            "/panic" => panic!("a stream manager that panics"),
            "/shrunk" => {
                // Promises more than the file holds (it "shrank" after its length was taken).
                let file = fs::File::open(&self.file).map_err(|err| err.to_string())?;
                Ok(Some(StreamBody::file_segment(file, 0, 10 << 20)))
            }
            _ => Ok(None),
        }
    }
}

/// Collects what a [`StreamCallback`] is given.
struct Collect {
    data: Vec<u8>,
    done: mpsc::Sender<(String, Result<Vec<u8>, RpcError>)>,
}

impl StreamCallback for Collect {
    fn on_data(&mut self, _: &str, data: &[u8]) {
        self.data.extend_from_slice(data);
    }
    fn on_complete(&mut self, id: &str) {
        let _ = self
            .done
            .send((id.to_owned(), Ok(std::mem::take(&mut self.data))));
    }
    fn on_failure(&mut self, id: &str, error: RpcError) {
        let _ = self.done.send((id.to_owned(), Err(error)));
    }
}

#[test]
fn transport_streams_answer_in_order_with_callbacks_and_readers() {
    init_logger();
    let tmp = TempDir::new("transport");
    let content = bytes(100_000, 8);
    let file = tmp.file("f", &content);
    let ctx = TransportContext::new(transport_conf(&[]), Arc::new(Streams { file }));
    let server = ctx.create_server(HOST, 0).unwrap();
    let side = ClientSide::new(&[]);
    let client = side.connect(server.port());
    let (tx, rx) = mpsc::channel();
    let ids = [
        "/bytes/0",
        "/bytes/1",
        "/fail",
        "/missing",
        "/bytes/70000",
        "/file",
        "/panic",
    ];
    for id in ids {
        client.stream(
            id,
            Collect {
                data: Vec::new(),
                done: tx.clone(),
            },
        );
    }
    let results: Vec<_> = ids.iter().map(|_| recv_within(&rx, 10)).collect();
    let order: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(order, ids, "answers come in the order asked");
    assert_eq!(results[0].1.as_ref().unwrap(), &bytes(0, 0));
    assert_eq!(results[1].1.as_ref().unwrap(), &bytes(1, 1));
    assert!(
        matches!(&results[2].1, Err(RpcError::Remote { message }) if message == "no streams today")
    );
    assert!(matches!(&results[3].1, Err(RpcError::Remote { message })
            if message == "Stream '/missing' was not found."));
    assert_eq!(results[4].1.as_ref().unwrap(), &bytes(70_000, 70_000));
    assert_eq!(
        results[5].1.as_ref().unwrap(),
        &content[1000..51_000].to_vec()
    );
    assert!(matches!(&results[6].1, Err(RpcError::Remote { .. })));
    // The connection still carries RPCs, and readers too.
    assert_eq!(client.send_rpc_sync(b"ping", PROMPTLY).unwrap(), b"ping");
    let mut reader = client.stream_reader("/bytes/5").unwrap();
    assert_eq!(reader.stream_id(), "/bytes/5");
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, bytes(5, 5));
    // A callback for a closed connection fails at once, on the calling thread.
    client.close();
    let failed = Arc::new(Mutex::new(None));
    struct Once(Arc<Mutex<Option<RpcError>>>);
    impl StreamCallback for Once {
        fn on_data(&mut self, _: &str, _: &[u8]) {}
        fn on_complete(&mut self, _: &str) {}
        fn on_failure(&mut self, _: &str, error: RpcError) {
            *lock(&self.0) = Some(error);
        }
    }
    client.stream("/bytes/1", Once(Arc::clone(&failed)));
    assert!(matches!(*lock(&failed), Some(RpcError::Connection { .. })));
    server.close();
}

#[test]
fn dropping_a_reader_midway_leaves_the_connection_usable() {
    init_logger();
    let tmp = TempDir::new("drop");
    let file = tmp.file("f", b"");
    let conf: &[(&str, &str)] = &[("rpc.io.maxQueuedBytes", "64k")];
    let ctx = TransportContext::new(transport_conf(conf), Arc::new(Streams { file }));
    let server = ctx.create_server(HOST, 0).unwrap();
    let side = ClientSide::new(conf);
    let client = side.connect(server.port());
    let mut reader = client.stream_reader("/bytes/3000000").unwrap();
    let mut some = [0; 1000];
    reader.read_exact(&mut some).unwrap();
    drop(reader);
    let mut next = client.stream_reader("/bytes/1000").unwrap();
    let mut got = Vec::new();
    next.read_to_end(&mut got).unwrap();
    assert_eq!(got, bytes(1000, 1000));
    assert_eq!(client.send_rpc_sync(b"ping", PROMPTLY).unwrap(), b"ping");
    server.close();
}

#[test]
fn a_file_shorter_than_announced_fails_the_stream_never_a_short_success() {
    init_logger();
    let tmp = TempDir::new("shrunk");
    let file = tmp.file("f", &bytes(100_000, 9));
    for encrypted in [false, true] {
        let ctx = TransportContext::new(
            transport_conf(&[]),
            Arc::new(Streams { file: file.clone() }),
        );
        let side = ClientSide::new(&[]);
        let (server, client) = if encrypted {
            let auth = rpcenv::transport::AuthBootstrap::new("app", "secret")
                .with_encryption(Some(rpcenv::transport::Cipher::AesGcm));
            let server = ctx.create_server_with_bootstrap(HOST, 0, &auth).unwrap();
            let factory = TransportContext::new(
                transport_conf(&[]),
                Arc::new(Streams { file: file.clone() }),
            )
            .create_client_factory_with_bootstrap(&auth);
            let client = factory.create_client(HOST, server.port()).unwrap();
            (server, (client, Some(factory)))
        } else {
            let server = ctx.create_server(HOST, 0).unwrap();
            let client = side.connect(server.port());
            (server, (client, None))
        };
        let (client, _factory) = client;
        let mut reader = client.stream_reader("/shrunk").unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let err = reader
            .read_to_end(&mut got)
            .expect_err("a short stream fails");
        assert!(started.elapsed() < PROMPTLY);
        // In clear, what the file had went out first; encrypted, the first piece could not
        // be read whole, so nothing was sealed. Either way the stream fails.
        let expected = if encrypted { 0 } else { 100_000 };
        assert_eq!(got.len(), expected, "encrypted={encrypted}");
        assert!(
            matches!(rpc_error(&err), RpcError::Connection { .. }),
            "encrypted={encrypted}: {err}"
        );
        server.close();
    }
}

#[test]
fn a_stream_request_before_authenticating_closes_the_connection_and_sends_nothing() {
    let tmp = TempDir::new("unauth");
    let path = tmp.file("secret.bin", &bytes(1000, 12));
    let conf = rpc_conf()
        .set("rpc.authenticate", "true")
        .set("rpc.authenticate.secret", "s3cret");
    let server = server_env_with("unauth", conf);
    server.file_server().add_file(&path).unwrap();
    let port = server.address().unwrap().port();
    let mut socket = std::net::TcpStream::connect((HOST, port)).unwrap();
    socket.set_read_timeout(Some(PROMPTLY)).unwrap();
    let id = b"/files/secret.bin";
    let mut frame = ((9 + 4 + id.len()) as i64).to_be_bytes().to_vec();
    frame.push(6);
    frame.extend_from_slice(&(id.len() as i32).to_be_bytes());
    frame.extend_from_slice(id);
    socket.write_all(&frame).unwrap();
    let mut got = Vec::new();
    match socket.read_to_end(&mut got) {
        Ok(_) => {}
        Err(err) => assert_ne!(err.kind(), ErrorKind::WouldBlock, "not closed in time"),
    }
    assert!(got.is_empty(), "{} bytes came back", got.len());
    server.shutdown();
}

#[test]
fn a_worker_fetches_a_file_from_the_masters_file_server() {
    // The README's example, end to end.
    let tmp = TempDir::new("readme");
    let path = tmp.file("app.jar", &bytes(10_000, 11));
    let master = server_env("master");
    let uri = master.file_server().add_jar(&path).unwrap();
    let worker = client_env("worker");
    let mut channel = worker.open_channel(&uri).unwrap();
    let local = tmp.path().join("fetched.jar");
    let mut out = fs::File::create(&local).unwrap();
    let copied = io::copy(&mut channel, &mut out).unwrap();
    assert_eq!(copied, 10_000);
    assert_eq!(fs::read(&local).unwrap(), fs::read(&path).unwrap());
    worker.shutdown();
    master.shutdown();
}

#[allow(dead_code)]
fn _conf_is_used(_: RpcConf) {}

// ---- a new user and a hostile peer ----

/// Makes a FIFO at `path` (with the system's `mkfifo`).
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_fifo_in_a_served_directory_is_refused_without_blocking_the_event_loop() {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = TempDir::new("fifo");
    let served = tmp.path().join("served");
    tmp.file("served/ok.txt", b"ok");
    mkfifo(&served.join("pipe"));
    mkfifo(&tmp.path().join("flat-pipe"));
    let conf = rpc_conf().set("rpc.io.threads", "1");
    let server = server_env_with("fifo", conf);
    let uri = server
        .file_server()
        .add_directory("/served", &served)
        .unwrap();
    let err = server
        .file_server()
        .add_file(tmp.path().join("flat-pipe"))
        .expect_err("a FIFO added as a file");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = server
        .file_server()
        .add_jar(tmp.path())
        .expect_err("a directory added as a jar");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let env = client_env("fifo-client");
    let (tx, rx) = mpsc::channel();
    let handle = {
        let env = env.clone();
        let uri = format!("{uri}/pipe");
        spawn("fifo-download", move || {
            let _ = tx.send(download(&env, &uri));
        })
    };
    let outcome = rx.recv_timeout(Duration::from_secs(10));
    if outcome.is_err() {
        // The server is stuck opening the FIFO: give it a writer so it can go on.
        let _ = fs::OpenOptions::new()
            .write(true)
            .custom_flags(0o4000) // O_NONBLOCK
            .open(served.join("pipe"));
    }
    let outcome = outcome.expect("the request for a FIFO was never answered");
    let err = outcome.expect_err("a FIFO was served");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    handle.join().unwrap();
    // The loop is free: another connection downloads.
    let other = client_env("fifo-other");
    assert_eq!(download(&other, &format!("{uri}/ok.txt")).unwrap(), b"ok");
    other.shutdown();
    env.shutdown();
    server.shutdown();
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

#[test]
fn thousands_of_pipelined_stream_requests_hold_bounded_descriptors_and_memory() {
    let tmp = TempDir::new("pipelined");
    let path = tmp.file("one.bin", &bytes(1 << 20, 5));
    let conf = rpc_conf().set("rpc.io.threads", "1");
    let server = server_env_with("pipelined", conf);
    server.file_server().add_file(&path).unwrap();
    let port = server.address().unwrap().port();
    let before = open_fds();
    let mut hostile = Vec::new();
    for _ in 0..4 {
        let mut socket = std::net::TcpStream::connect((HOST, port)).unwrap();
        socket
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut batch = Vec::new();
        for _ in 0..2000 {
            batch.extend_from_slice(&stream_request_frame(b"/files/one.bin"));
        }
        let _ = socket.write_all(&batch);
        let mut batch = Vec::new();
        for i in 0..2000 {
            batch.extend_from_slice(&stream_request_frame(
                format!("/files/missing-{i}").as_bytes(),
            ));
        }
        let _ = socket.write_all(&batch);
        hostile.push(socket);
    }
    thread::sleep(Duration::from_millis(1500));
    let during = open_fds();
    // Another connection on the same loop still downloads.
    let env = client_env("pipelined-client");
    let uri = format!("rpc://{HOST}:{port}/files/one.bin");
    assert_eq!(download(&env, &uri).unwrap().len(), 1 << 20);
    assert!(
        during < before + 4 * 80,
        "{before} descriptors became {during}"
    );
    drop(hostile);
    env.shutdown();
    server.shutdown();
}

#[test]
fn names_with_spaces_unicode_and_percent_download_and_can_be_removed_and_added_again() {
    let tmp = TempDir::new("names");
    let server = server_env("names");
    let env = client_env("names-client");
    for name in [
        "a b.txt",
        "ünïcødé €.txt",
        "100% real%20.txt",
        "semi;colon=&x.txt",
        "#hash?.txt",
        "+plus.txt",
    ] {
        let path = tmp.file(name, name.as_bytes());
        let uri = server.file_server().add_file(&path).unwrap();
        assert_eq!(download(&env, &uri).unwrap(), name.as_bytes(), "{uri}");
        let uri = server.file_server().add_jar(&path).unwrap();
        assert_eq!(download(&env, &uri).unwrap(), name.as_bytes(), "{uri}");
        assert!(
            server
                .file_server()
                .remove_file(&uri.replace("/jars/", "/files/")),
            "{uri}"
        );
        let err = download(&env, &uri.replace("/jars/", "/files/")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let again = server.file_server().add_file(&path).unwrap();
        assert_eq!(download(&env, &again).unwrap(), name.as_bytes(), "{again}");
    }
    // A directory with such names; its URI plus the encoded name.
    let dir = tmp.path().join("d ir");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("x y%.txt"), b"xy").unwrap();
    let base = server.file_server().add_directory("/my dir", &dir).unwrap();
    assert!(base.ends_with("/my%20dir"), "{base}");
    assert_eq!(
        download(&env, &format!("{base}/x%20y%25.txt")).unwrap(),
        b"xy"
    );
    // Bad URIs fail at once; a missing file or base fails the read as not found.
    let addr = server.address().unwrap();
    for bad in ["", "rpc://", "nonsense", "http://127.0.0.1:1/files/x"] {
        assert!(
            matches!(env.open_channel(bad), Err(RpcError::InvalidAddress { .. })),
            "{bad:?}"
        );
    }
    for missing in ["files/nothing", "nobase/x"] {
        let err = download(&env, &format!("rpc://{addr}/{missing}")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{missing}: {err}");
    }
    env.shutdown();
    server.shutdown();
}

#[test]
fn unasked_stream_answers_and_odd_ids_sent_to_a_server_leave_it_answering() {
    let tmp = TempDir::new("hostile-frames");
    let server = server_env("hostile-frames");
    server
        .file_server()
        .add_file(tmp.file("ok.txt", b"ok"))
        .unwrap();
    let port = server.address().unwrap().port();
    let mut socket = std::net::TcpStream::connect((HOST, port)).unwrap();
    socket.set_read_timeout(Some(PROMPTLY)).unwrap();
    // A StreamResponse and a StreamFailure nobody asked for, then a request.
    let id = b"/x";
    let mut frame = ((9 + 4 + id.len() + 8) as i64).to_be_bytes().to_vec();
    frame.push(7);
    frame.extend_from_slice(&(id.len() as i32).to_be_bytes());
    frame.extend_from_slice(id);
    frame.extend_from_slice(&5i64.to_be_bytes());
    frame.extend_from_slice(b"12345");
    let garbage = [0xff, 0xfe, 0, 1, 2];
    frame.extend_from_slice(&((9 + 4 + id.len() + 4 + garbage.len()) as i64).to_be_bytes());
    frame.push(8);
    frame.extend_from_slice(&(id.len() as i32).to_be_bytes());
    frame.extend_from_slice(id);
    frame.extend_from_slice(&(garbage.len() as i32).to_be_bytes());
    frame.extend_from_slice(&garbage);
    frame.extend_from_slice(&stream_request_frame(&[0xff, 0xc0, b'/']));
    frame.extend_from_slice(&stream_request_frame(b""));
    frame.extend_from_slice(&stream_request_frame(b"/files/ok.txt"));
    socket.write_all(&frame).unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    let started = Instant::now();
    while !got.ends_with(b"ok") && started.elapsed() < PROMPTLY {
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err) => panic!("{err}"),
        }
    }
    assert!(got.ends_with(b"ok"), "{}", String::from_utf8_lossy(&got));
    server.shutdown();
}

#[test]
fn a_client_env_shut_down_mid_download_fails_its_reader_promptly() {
    let tmp = TempDir::new("shutdown");
    let path = tmp.file("big.bin", &bytes(16 << 20, 3));
    let server = server_env("shutdown");
    let uri = server.file_server().add_file(&path).unwrap();
    let env = client_env("shutdown-client");
    let mut reader = env.open_channel(&uri).unwrap();
    let mut some = [0; 1000];
    reader.read_exact(&mut some).unwrap();
    env.shutdown();
    let started = Instant::now();
    let mut rest = Vec::new();
    let err = reader
        .read_to_end(&mut rest)
        .expect_err("a download cut by a shutdown looked whole");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(
        (rest.len() as u64) < (16 << 20) - 1000,
        "{} bytes",
        rest.len()
    );
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    assert!(env.open_channel(&uri).is_err());
    server.shutdown();
}

#[test]
fn a_download_from_a_server_that_requires_authentication_says_so() {
    let tmp = TempDir::new("auth-hint");
    let path = tmp.file("f.txt", b"hello");
    let conf = rpc_conf()
        .set("rpc.authenticate", "true")
        .set("rpc.authenticate.secret", "s3cret");
    let server = server_env_with("auth-hint", conf.clone());
    let uri = server.file_server().add_file(&path).unwrap();
    // Without authentication: the server closes the connection; the reader says why.
    let plain = client_env("auth-hint-plain");
    let err = download(&plain, &uri).expect_err("served without authentication");
    assert_eq!(err.kind(), ErrorKind::ConnectionAborted, "{err}");
    assert!(err.to_string().contains("rpc.authenticate"), "{err}");
    // With the wrong secret: the handshake fails.
    let wrong = client_env_with(
        "auth-hint-wrong",
        rpc_conf()
            .set("rpc.authenticate", "true")
            .set("rpc.authenticate.secret", "other"),
    );
    assert!(download(&wrong, &uri).is_err());
    let right = client_env_with("auth-hint-right", conf);
    assert_eq!(download(&right, &uri).unwrap(), b"hello");
    for env in [plain, wrong, right] {
        env.shutdown();
    }
    server.shutdown();
}

#[test]
fn removing_by_uri_removes_only_from_the_table_the_uri_names() {
    let tmp = TempDir::new("remove-uri");
    let path = tmp.file("same.bin", b"same");
    let server = server_env("remove-uri");
    let fs = server.file_server();
    let file_uri = fs.add_file(&path).unwrap();
    let jar_uri = fs.add_jar(&path).unwrap();
    let dir_uri = fs.add_directory("/d", tmp.path()).unwrap();
    // A jar's URI, or a directory file's, given to remove_file removes no file.
    assert!(!fs.remove_file(&jar_uri));
    assert!(!fs.remove_file(&format!("{dir_uri}/same.bin")));
    assert!(!fs.remove_jar(&file_uri));
    let env = client_env("remove-uri-client");
    assert_eq!(download(&env, &file_uri).unwrap(), b"same");
    assert_eq!(download(&env, &jar_uri).unwrap(), b"same");
    assert!(fs.remove_jar(&jar_uri));
    assert!(fs.remove_file(&file_uri));
    assert_eq!(
        download(&env, &file_uri).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    env.shutdown();
    server.shutdown();
}

#[test]
fn an_env_drops_a_download_midway_and_downloads_again() {
    let tmp = TempDir::new("drop-env");
    let big = tmp.file("big.bin", &bytes(16 << 20, 8));
    let small = tmp.file("small.bin", &bytes(1000, 9));
    let server = server_env("drop-env");
    let big_uri = server.file_server().add_file(&big).unwrap();
    let small_uri = server.file_server().add_file(&small).unwrap();
    let env = client_env("drop-env-client");
    for _ in 0..3 {
        let mut reader = env.open_channel(&big_uri).unwrap();
        let mut some = [0; 1000];
        reader.read_exact(&mut some).unwrap();
        drop(reader);
        let started = Instant::now();
        assert_eq!(download(&env, &small_uri).unwrap(), bytes(1000, 9));
        assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    }
    env.shutdown();
    server.shutdown();
}

/// A server that answers two `StreamRequest`s: the first with a stream of `len` bytes
/// trickled at about 10 KiB/s (1 KiB every 100 ms, never stalling), the second with a
/// `StreamFailure` whose first bytes arrive with the last bytes of the stream and the
/// rest `gap` later.
fn trickling_server(len: usize, gap: Duration) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind((HOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = spawn("trickling-server", move || {
        let (mut socket, _) = listener.accept().unwrap();
        socket.set_read_timeout(Some(PROMPTLY)).unwrap();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut length = [0; 8];
            socket.read_exact(&mut length).unwrap();
            let mut rest = vec![0; i64::from_be_bytes(length) as usize - 8];
            socket.read_exact(&mut rest).unwrap();
            assert_eq!(rest[0], 6, "a StreamRequest");
            ids.push(rest[5..].to_vec());
        }
        let id = &ids[0];
        let mut frame = ((9 + 4 + id.len() + 8) as i64).to_be_bytes().to_vec();
        frame.push(7);
        frame.extend_from_slice(&(id.len() as i32).to_be_bytes());
        frame.extend_from_slice(id);
        frame.extend_from_slice(&(len as i64).to_be_bytes());
        socket.write_all(&frame).unwrap();
        let body = bytes(len, 4);
        let (mut pieces, last) = body.split_at(len - 1024);
        while !pieces.is_empty() {
            let (piece, rest) = pieces.split_at(1024.min(pieces.len()));
            if socket.write_all(piece).is_err() {
                return;
            }
            pieces = rest;
            thread::sleep(Duration::from_millis(100));
        }
        let (id, text) = (&ids[1], b"nope");
        let mut failure = ((9 + 4 + id.len() + 4 + text.len()) as i64)
            .to_be_bytes()
            .to_vec();
        failure.push(8);
        failure.extend_from_slice(&(id.len() as i32).to_be_bytes());
        failure.extend_from_slice(id);
        failure.extend_from_slice(&(text.len() as i32).to_be_bytes());
        failure.extend_from_slice(text);
        let mut end = last.to_vec();
        end.extend_from_slice(&failure[..4]);
        if socket.write_all(&end).is_err() {
            return;
        }
        thread::sleep(gap);
        let _ = socket.write_all(&failure[4..]);
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest);
    });
    (port, thread)
}

#[test]
fn a_download_on_a_slow_but_steady_link_is_not_cut_as_a_slow_frame() {
    // 30 KiB at 10 KiB/s with rpc.io.frameTimeout = 1s: a frame would be too slow; a stream
    // this side asked for is not (it may be as large as any file), only a stalled one is.
    let (port, server) = trickling_server(30 * 1024, Duration::from_millis(600));
    let side = ClientSide::new(&[("rpc.io.frameTimeout", "1s")]);
    let client = side.connect(port);
    let mut first = client.stream_reader("/files/slow").unwrap();
    let mut second = client.stream_reader("/files/next").unwrap();
    let mut got = Vec::new();
    first.read_to_end(&mut got).expect("the slow stream");
    assert_eq!(got, bytes(30 * 1024, 4));
    // The next answer's first bytes came with the stream's last; its rest 600 ms later:
    // the frame is timed from its own start, not the stream's.
    let err = second.read_to_end(&mut Vec::new()).unwrap_err();
    assert!(
        matches!(rpc_error(&err), RpcError::Remote { message } if message == "nope"),
        "{err}"
    );
    drop(client);
    drop(side);
    server.join().unwrap();
}
