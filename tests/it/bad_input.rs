//! Untrusted bytes over raw `std::net::TcpStream`s (DESIGN §5): a bad frame closes that
//! one connection, is reported to `exception_caught`, panics nothing, and the server
//! keeps serving everyone else. Also hand-written Spark frames and a slow consumer.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rpcenv::RpcError;

use crate::support::{
    Fixture, HOST, LONG, PROMPTLY, assert_echo, expect_closed_by_peer, raw_connect, wait_for,
};

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The bytes of a Spark RpcRequest frame.
fn rpc_request(id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(21 + body.len());
    frame.extend_from_slice(&((21 + body.len()) as i64).to_be_bytes());
    frame.push(3);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A frame header: length and type, then `rest`.
fn frame(length: i64, message_type: u8, rest: &[u8]) -> Vec<u8> {
    let mut bytes = length.to_be_bytes().to_vec();
    bytes.push(message_type);
    bytes.extend_from_slice(rest);
    bytes
}

/// Sends `bytes` on a raw connection to a fresh echo server (then hangs up if `hang_up`)
/// and checks: the server closes that connection, reports it inactive, and a normal
/// client keeps working before, during and after. Returns what `exception_caught` saw for
/// that connection.
fn send_bad_input(bytes: &[u8], hang_up: bool) -> Vec<RpcError> {
    // One event loop: the raw connection and the normal client's (both ends) share it,
    // so a loop that died of the bad input would show.
    let f = Fixture::new(&[("rpc.io.threads", "1")]);
    let client = f.client();
    assert_echo(&client, b"before");

    let mut raw = raw_connect(f.port());
    let raw_addr: SocketAddr = raw.local_addr().expect("the raw socket's address");
    wait_for("the server to take the raw connection", 5, || {
        f.handler.saw_active_peer(raw_addr)
    });
    assert_echo(&client, b"during");

    raw.write_all(bytes).expect("the bad bytes are sent");
    if hang_up {
        raw.shutdown(Shutdown::Write).expect("half-close");
    }
    expect_closed_by_peer(&mut raw, 5);
    wait_for("channel_inactive for the raw connection", 5, || {
        f.handler.saw_inactive_peer(raw_addr)
    });

    assert!(
        client.is_active(),
        "the bad input closed another connection"
    );
    assert_echo(&client, b"after");
    assert_eq!(f.client().id(), client.id(), "the normal client survived");
    let fresh = f.ctx.create_client_factory();
    assert_echo(
        &fresh
            .create_client(HOST, f.port())
            .expect("a new connection"),
        b"new",
    );
    let exceptions = f.handler.exceptions();
    assert!(
        exceptions.iter().all(|(peer, _)| *peer == raw_addr),
        "errors on other connections: {exceptions:?}"
    );
    f.handler.exceptions_of(raw_addr)
}

#[track_caller]
fn assert_one_error(errors: &[RpcError], check: impl Fn(&RpcError) -> bool) {
    assert_eq!(errors.len(), 1, "exception_caught once: {errors:?}");
    assert!(
        check(&errors[0]),
        "unexpected error: {:?} ({})",
        errors[0],
        errors[0]
    );
}

#[test]
fn garbage_bytes_close_only_that_connection() {
    // An HTTP request at the RPC port: "GET / HT" read as a frame length is ~5e18.
    let errors = send_bad_input(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", false);
    assert_one_error(&errors, |_| true);
}

#[test]
fn random_garbage_closes_only_that_connection() {
    // Deterministic pseudo-random bytes (an LCG), 4 KiB.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 56) as u8
        })
        .collect();
    let errors = send_bad_input(&bytes, false);
    assert_one_error(&errors, |_| true);
}

#[test]
fn frame_claiming_one_tib_is_refused() {
    let tib: i64 = 1 << 40;
    let errors = send_bad_input(&frame(tib, 3, &[0; 12]), false);
    assert_one_error(&errors, |err| {
        matches!(err, RpcError::FrameTooLarge { size, .. } if *size == 1 << 40)
            && err.to_string().contains("1099511627776")
    });
}

#[test]
fn unknown_message_type_is_refused() {
    let errors = send_bad_input(&frame(26, 42, &[0; 17]), false);
    assert_one_error(&errors, |err| {
        matches!(err, RpcError::Decode { .. }) && err.to_string().contains("42")
    });
}

#[test]
fn unsupported_spark_type_chunk_fetch_request_is_refused() {
    // ChunkFetchRequest (0): stream id i64 + chunk index i32.
    let errors = send_bad_input(&frame(21, 0, &[0; 12]), false);
    assert_one_error(&errors, |err| {
        matches!(err, RpcError::Decode { .. }) && err.to_string().contains("type 0")
    });
}

#[test]
fn negative_frame_length_is_refused() {
    let errors = send_bad_input(&frame(-1, 3, &[0; 12]), false);
    assert_one_error(&errors, |err| {
        matches!(err, RpcError::Decode { .. }) && err.to_string().contains("-1")
    });
}

#[test]
fn too_short_frame_length_is_refused() {
    // Spark `testEmptyFrame` is length 8; 4 is shorter than the length field itself.
    for length in [4, 8] {
        let errors = send_bad_input(&frame(length, 3, &[0; 12]), false);
        assert_one_error(&errors, |err| {
            matches!(err, RpcError::Decode { .. }) && err.to_string().contains(&length.to_string())
        });
    }
}

#[test]
fn body_length_disagreeing_with_frame_length_is_refused() {
    // An RpcRequest of 26 bytes whose body length field says 1000.
    let mut bytes = frame(26, 3, &7u64.to_be_bytes());
    bytes.extend_from_slice(&1000i32.to_be_bytes());
    bytes.extend_from_slice(b"hello");
    let errors = send_bad_input(&bytes, false);
    assert_one_error(&errors, |err| matches!(err, RpcError::Decode { .. }));
}

#[test]
fn truncated_frame_followed_by_hang_up_closes_the_connection() {
    // An RpcRequest announcing 100 body bytes, 10 of them sent, then the peer hangs up.
    let mut bytes = rpc_request(7, &[b'a'; 100]);
    bytes.truncate(21 + 10);
    let errors = send_bad_input(&bytes, true);
    // A hang-up is no exception in Spark either; if one is reported, it is only one.
    assert!(errors.len() <= 1, "{errors:?}");
}

#[test]
fn hang_up_after_a_partial_length_field_closes_the_connection() {
    let errors = send_bad_input(&[0, 0, 0], true);
    assert!(errors.len() <= 1, "{errors:?}");
}

/// The captured Spark RpcRequest "hello" (frames.md (a)) gets exactly the captured
/// RpcResponse (a') from the echo server.
#[test]
fn hand_written_spark_rpc_request_gets_the_exact_spark_rpc_response() {
    let f = Fixture::new(&[]);
    let mut raw = raw_connect(f.port());
    raw.write_all(&hex("000000000000001a03479fa24948c9b3e80000000568656c6c6f"))
        .expect("the request is sent");
    let mut response = [0u8; 26];
    raw.read_exact(&mut response).expect("a 26-byte response");
    assert_eq!(
        response.to_vec(),
        hex("000000000000001a04479fa24948c9b3e80000000568656c6c6f")
    );
    // A one-way "hello" (frames.md (b)) arrives too, and the connection stays open.
    raw.write_all(&hex("0000000000000012090000000568656c6c6f"))
        .expect("one-way sent");
    wait_for("the one-way message", 5, || f.handler.one_way() == 1);
    assert_eq!(f.handler.one_way_bytes(), 5);
    raw.write_all(&rpc_request(1, b"again"))
        .expect("a second request");
    let mut second = vec![0u8; 21 + 5];
    raw.read_exact(&mut second).expect("a second response");
    assert_eq!(second, {
        let mut expected = rpc_request(1, b"again");
        expected[8] = 4;
        expected
    });
    assert!(f.handler.exceptions().is_empty());
}

/// Requests split into 1-byte writes are decoded the same (Spark `testSplitLengthField`).
#[test]
fn request_written_one_byte_at_a_time_is_answered() {
    let f = Fixture::new(&[]);
    let mut raw = raw_connect(f.port());
    raw.set_nodelay(true).expect("nodelay");
    let request = rpc_request(42, b"byte by byte");
    for byte in &request {
        raw.write_all(std::slice::from_ref(byte))
            .expect("one byte sent");
    }
    let mut response = vec![0u8; request.len()];
    raw.read_exact(&mut response).expect("the response");
    assert_eq!(response[8], 4, "an RpcResponse");
    assert_eq!(&response[9..17], &42u64.to_be_bytes());
    assert_eq!(&response[21..], b"byte by byte");
}

/// A raw client that asks for 50 × 1 MiB and reads nothing does not stall the other
/// connections on the same (single) event loop, and does not make the server queue its
/// answers without bound: once `rpc.io.maxQueuedBytes` of them wait, the server stops
/// reading its requests (TCP slows it down), and reads them again once it reads.
#[test]
fn slow_consumer_does_not_stall_other_connections_on_the_loop() {
    const REQUESTS: u64 = 50;
    const ANSWER: usize = 1024 * 1024;
    let f = Fixture::new(&[("rpc.io.threads", "1")]);
    let client = f.client();
    assert_echo(&client, b"before");

    let mut raw = raw_connect(f.port());
    let mut requests = Vec::new();
    for id in 0..REQUESTS {
        requests.extend_from_slice(&rpc_request(id, format!("big:{ANSWER}").as_bytes()));
    }
    raw.write_all(&requests).expect("the requests are sent");
    wait_for("the server to answer the slow consumer", 10, || {
        f.handler.requests() > 2
    });
    thread::sleep(Duration::from_millis(200));
    // 4 MiB of answers (the default limit) are queued, then it stops reading.
    let read = f.handler.requests() - 1;
    assert!(
        read < 10,
        "the server went on reading a peer that does not read: {read} requests"
    );

    // The slow consumer's answers pile up; the other connection is served promptly.
    for i in 0..20 {
        let started = Instant::now();
        let body = format!("meanwhile-{i}").into_bytes();
        let answer = client
            .send_rpc_sync(body.clone(), LONG)
            .expect("a round trip");
        assert_eq!(answer, body);
        assert!(
            started.elapsed() < PROMPTLY,
            "round trip {i} took {:?}",
            started.elapsed()
        );
    }
    // A new connection on the same loop too.
    let other = f.ctx.create_client_factory();
    assert_echo(
        &other.create_client(HOST, f.port()).expect("another client"),
        b"new",
    );

    // Nothing was lost: the slow consumer finally reads every answer.
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let mut ids = HashSet::new();
    let mut header = [0u8; 21];
    let mut body = vec![0u8; ANSWER];
    for _ in 0..REQUESTS {
        raw.read_exact(&mut header).expect("a response header");
        assert_eq!(
            i64::from_be_bytes(header[..8].try_into().unwrap()),
            (21 + ANSWER) as i64
        );
        assert_eq!(header[8], 4, "an RpcResponse");
        ids.insert(u64::from_be_bytes(header[9..17].try_into().unwrap()));
        raw.read_exact(&mut body).expect("a response body");
    }
    assert_eq!(ids, (0..REQUESTS).collect::<HashSet<_>>());
}

/// A valid request followed by garbage in the same write: the request reaches the
/// handler, then the connection is closed for the garbage. Spark answers the valid request
/// before closing (its response is flushed as soon as the handler gives it).
#[test]
fn valid_request_followed_by_garbage_is_answered_before_the_close() {
    let f = Fixture::new(&[]);
    let mut raw = raw_connect(f.port());
    let mut bytes = rpc_request(5, b"hello");
    bytes.extend_from_slice(&frame(-1, 3, &[0; 12]));
    raw.write_all(&bytes).expect("the bytes are sent");
    let mut response = Vec::new();
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    // Read until the server closes (EOF), keeping what arrived.
    let _ = raw.read_to_end(&mut response);
    wait_for("the handler to see the request", 5, || {
        f.handler.requests() == 1
    });
    let mut expected = rpc_request(5, b"hello");
    expected[8] = 4;
    assert_eq!(
        response, expected,
        "the answer to the valid request was not sent"
    );
}

/// A peer sending an RpcResponse or RpcFailure for a request it never got (unknown id)
/// is ignored (Spark warns "Ignoring response for RPC …"); the connection stays open.
#[test]
fn unsolicited_response_and_failure_are_ignored() {
    let f = Fixture::new(&[]);
    let mut raw = raw_connect(f.port());
    let mut response = rpc_request(999, b"nobody asked");
    response[8] = 4;
    let mut failure = rpc_request(998, b"nobody asked either");
    failure[8] = 5;
    raw.write_all(&response).expect("sent");
    raw.write_all(&failure).expect("sent");
    raw.write_all(&rpc_request(1, b"real")).expect("sent");
    let mut answer = vec![0u8; 21 + 4];
    raw.read_exact(&mut answer)
        .expect("the real request is answered");
    assert_eq!(&answer[21..], b"real");
    assert!(f.handler.exceptions().is_empty());
    assert_eq!(f.handler.inactive().len(), 0, "no connection was closed");
}

// ---------------------------------------------------------------------------------------
// A misbehaving server: a TransportClient talking to a raw std listener.

/// A raw "server": accepts one connection on 127.0.0.1:0 on a named thread, reads one
/// RpcRequest, and passes its request id and the stream to `behave`.
fn raw_server(
    behave: impl FnOnce(u64, TcpStream) + Send + 'static,
) -> (u16, thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind((HOST, 0)).expect("a raw listener");
    let port = listener.local_addr().expect("its address").port();
    let handle = crate::support::spawn("test-raw-server", move || {
        let (mut stream, _) = listener.accept().expect("a connection");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let mut header = [0u8; 21];
        stream.read_exact(&mut header).expect("a request header");
        assert_eq!(header[8], 3, "an RpcRequest");
        let id = u64::from_be_bytes(header[9..17].try_into().unwrap());
        let len = i32::from_be_bytes(header[17..21].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).expect("a request body");
        behave(id, stream);
    });
    (port, handle)
}

/// Sends one request to a raw server that misbehaves, and returns what the call got and
/// what the client side's `exception_caught` saw. The call must end promptly.
fn call_misbehaving_server(
    behave: impl FnOnce(u64, TcpStream) + Send + 'static,
) -> (Result<Vec<u8>, RpcError>, Vec<RpcError>) {
    let side = crate::support::ClientSide::new(&[("rpc.message.maxSize", "64k")]);
    let (port, handle) = raw_server(behave);
    let client = side.connect(port);
    let started = Instant::now();
    let answer = client.send_rpc_sync("request", LONG);
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    client.close(); // the raw server reads until the client hangs up
    crate::support::join(handle);
    // The loop reports a failed connection (`exception_caught`, then `channel_inactive`)
    // after the call failed: on the thread that read the answer, that may be the caller.
    wait_for("the connection reported inactive", 10, || {
        side.handler.saw_inactive_id(client.id())
    });
    let exceptions = side
        .handler
        .exceptions()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    (answer, exceptions)
}

/// frames.md (c'): a Spark RpcFailure reaches the caller as `Remote` with Spark's text.
#[test]
fn spark_rpc_failure_bytes_become_a_remote_error() {
    let (answer, exceptions) = call_misbehaving_server(|id, mut stream| {
        let mut failure = hex(
            "000000000000003e056b8f0c8b9a91762700000029737061726b616e63686f722e4563686f536572766572244563686f4661696c7572653a20626f6f6d0a",
        );
        failure[9..17].copy_from_slice(&id.to_be_bytes());
        stream.write_all(&failure).expect("the failure is sent");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest); // until the client hangs up
    });
    let err = answer.unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { message } if message == "sparkanchor.EchoServer$EchoFailure: boom\n"),
        "{err:?}"
    );
    assert!(exceptions.is_empty(), "{exceptions:?}");
}

#[test]
fn server_answering_garbage_fails_the_call_at_once() {
    let (answer, exceptions) = call_misbehaving_server(|_, mut stream| {
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .expect("garbage sent");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let err = answer.unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err:?}");
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
}

#[test]
fn server_answering_a_frame_above_max_size_fails_the_call_at_once() {
    let (answer, exceptions) = call_misbehaving_server(|id, mut stream| {
        // An RpcResponse of 100 KiB against the client's 64k maximum.
        let mut header = rpc_request(id, &[]);
        header[..8].copy_from_slice(&((21 + 100 * 1024) as i64).to_be_bytes());
        header[8] = 4;
        header[17..21].copy_from_slice(&(100 * 1024i32).to_be_bytes());
        let _ = stream.write_all(&header);
        let _ = stream.write_all(&vec![0u8; 100 * 1024]);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    // The call hears why, with both sizes (the answer's id was read before refusing it).
    let err = answer.unwrap_err();
    assert!(
        matches!(err, RpcError::FrameTooLarge { size, max: 65536 } if size == 21 + 100 * 1024),
        "{err:?}"
    );
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    assert!(
        matches!(exceptions[0], RpcError::FrameTooLarge { .. }),
        "{exceptions:?}"
    );
}

#[test]
fn server_hanging_up_mid_response_fails_the_call_at_once() {
    let (answer, _) = call_misbehaving_server(|id, mut stream| {
        let mut response = rpc_request(id, b"a response cut short");
        response[8] = 4;
        stream
            .write_all(&response[..30])
            .expect("part of a response");
        // Dropping the stream hangs up.
    });
    let err = answer.unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err:?}");
}

/// A peer that sends a request and then half-closes (shutdown of its write side) gets
/// the answer the handler gave synchronously before the server saw the end of stream.
#[test]
fn request_followed_by_half_close_is_answered_before_the_close() {
    let f = Fixture::new(&[]);
    let mut raw = raw_connect(f.port());
    raw.write_all(&rpc_request(9, b"then FIN"))
        .expect("the request is sent");
    raw.shutdown(Shutdown::Write).expect("half-close");
    let mut response = Vec::new();
    let _ = raw.read_to_end(&mut response);
    wait_for("the handler to see the request", 5, || {
        f.handler.requests() == 1
    });
    let mut expected = rpc_request(9, b"then FIN");
    expected[8] = 4;
    assert_eq!(response, expected, "the answer to the request was not sent");
}

/// `send_rpc` to a peer that never reads queues up to `rpc.io.maxQueuedBytes` and then
/// refuses (here at once: `rpc.io.sendTimeout` is 0) with `QueueFull` naming the peer, the
/// bytes queued and the limit, instead of growing or blocking; the other connections of
/// the same (single) event loop keep working.
#[test]
fn send_rpc_to_a_peer_that_never_reads_is_bounded_and_does_not_block_the_loop() {
    const REQUESTS: usize = 40;
    let f = Fixture::new(&[]);
    let side =
        crate::support::ClientSide::new(&[("rpc.io.threads", "1"), ("rpc.io.sendTimeout", "0")]);
    let listener = std::net::TcpListener::bind((HOST, 0)).expect("a raw listener");
    let port = listener.local_addr().expect("its address").port();
    let stuck = side.connect(port);
    let (_peer, _) = listener.accept().expect("the connection"); // held open, never read
    let normal = side.connect(f.port());

    let started = Instant::now();
    let calls: Vec<_> = (0..REQUESTS)
        .map(|_| crate::support::call(&stuck, vec![7u8; 1024 * 1024]).1)
        .collect();
    assert!(
        started.elapsed() < PROMPTLY,
        "send_rpc blocked: {:?}",
        started.elapsed()
    );
    let queued = stuck.outstanding_requests();
    assert!(queued < REQUESTS, "nothing was refused");
    assert!(
        stuck.queued_bytes() <= 6 << 20,
        "{} bytes queued",
        stuck.queued_bytes()
    );
    for i in 0..10 {
        assert_echo(&normal, format!("meanwhile-{i}").as_bytes());
    }
    stuck.close();
    let mut refused = 0;
    for rx in calls {
        match crate::support::recv_within(&rx, 5).unwrap_err() {
            RpcError::QueueFull {
                queue, limit, key, ..
            } => {
                assert!(queue.contains(&port.to_string()), "{queue}");
                assert_eq!(limit, 4 << 20);
                assert_eq!(key, "rpc.io.maxQueuedBytes");
                refused += 1;
            }
            RpcError::Connection { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, REQUESTS - queued);
}
