//! `TransportClient` and `RpcHandler` over real connections: echo, failures, one-way
//! messages, concurrency, both directions, timeouts, closing, sizes.
//!
//! Ports Spark's `RpcIntegrationSuite` and `RequestTimeoutIntegrationSuite`
//! (network-common) where they apply.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use rpcenv::RpcError;

use crate::support::{
    ClientSide, Fixture, HOST, LONG, PROMPTLY, assert_connection_error, assert_echo, call,
    call_sync_in_thread, join, recv_within, spawn, wait_for,
};

/// A body of `len` bytes that is not one of the test handler's commands.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// Echo and failures (Spark RpcIntegrationSuite)

#[test]
fn echo_of_empty_body() {
    let f = Fixture::new(&[]);
    assert_echo(&f.client(), b"");
}

#[test]
fn echo_of_one_byte_body() {
    let f = Fixture::new(&[]);
    assert_echo(&f.client(), b"x");
}

#[test]
fn echo_of_64_kib_body() {
    let f = Fixture::new(&[]);
    assert_echo(&f.client(), &pattern(64 * 1024));
}

#[test]
fn echo_of_16_mib_body() {
    let f = Fixture::new(&[]);
    let body = pattern(16 * 1024 * 1024);
    let answer = f
        .client()
        .send_rpc_sync(body.clone(), LONG)
        .expect("16 MiB echo");
    assert_eq!(answer.len(), body.len());
    assert!(answer == body, "the 16 MiB echo differs from what was sent");
}

/// Spark `singleRPC` + `doubleRPC`: two requests in flight on one client at once.
#[test]
fn single_rpc_and_double_rpc() {
    let f = Fixture::new(&[]);
    let client = f.client();
    assert_echo(&client, b"hello/Aaron");
    let (_, first) = call(&client, "hello/Bob");
    let (_, second) = call(&client, "hello/Carl");
    assert_eq!(recv_within(&first, 10).expect("first"), b"hello/Bob");
    assert_eq!(recv_within(&second, 10).expect("second"), b"hello/Carl");
    assert_eq!(f.handler.requests(), 3);
}

/// Spark `returnErrorRPC`: `responder.fail("boom")` reaches the caller as `Remote`.
#[test]
fn handler_failure_is_a_remote_error_containing_its_text() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let err = client.send_rpc_sync("fail:boom", LONG).unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { message } if message.contains("boom")),
        "{err:?}"
    );
    assert!(err.to_string().contains("boom"), "{err}");
    // The connection is fine afterwards.
    assert!(client.is_active());
    assert_echo(&client, b"after");
}

/// Spark `sendSuccessAndFailure` / `doubleTrouble`: a mixed batch in flight at once,
/// each callback gets its own outcome.
#[test]
fn send_success_and_failure_each_get_their_own_outcome() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let body = if i % 2 == 0 {
                format!("hello/{i}")
            } else {
                format!("fail:Returned: {i}")
            };
            (i, call(&client, body).1)
        })
        .collect();
    for (i, rx) in calls {
        let answer = recv_within(&rx, 10);
        if i % 2 == 0 {
            assert_eq!(
                answer.expect("a success"),
                format!("hello/{i}").into_bytes()
            );
        } else {
            let err = answer.unwrap_err();
            let expected = format!("Returned: {i}");
            assert!(
                matches!(&err, RpcError::Remote { message } if message == &expected),
                "request {i}: {err:?}"
            );
        }
    }
}

/// A dropped `Responder` fails the request at once, with `Remote`, not a timeout.
#[test]
fn dropped_responder_fails_the_request_at_once() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let started = Instant::now();
    let err = client.send_rpc_sync("drop", LONG).unwrap_err();
    assert!(matches!(err, RpcError::Remote { .. }), "{err:?}");
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_echo(&client, b"after");
}

/// Spark `throwErrorRPC`: a handler that panics fails that request (promptly, `Remote`),
/// and the server goes on serving that connection and new ones.
#[test]
fn panicking_handler_fails_the_request_and_server_keeps_serving() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let started = Instant::now();
    let err = client.send_rpc_sync("panic", LONG).unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { message } if message.contains("panicked")),
        "{err:?}"
    );
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(client.is_active());
    assert_echo(&client, b"same connection");
    // A second panic, then a new connection.
    assert!(client.send_rpc_sync("panic", LONG).is_err());
    let other = ClientSide::new(&[]);
    assert_echo(&other.connect(f.port()), b"new connection");
}

// ---------------------------------------------------------------------------------------
// Concurrency

#[test]
fn many_concurrent_send_rpc_on_one_client_each_get_their_own_body() {
    const COUNT: usize = 200;
    let f = Fixture::new(&[]);
    let client = f.client();
    let calls: Vec<_> = (0..COUNT)
        .map(|i| (i, call(&client, format!("msg-{i}")).1))
        .collect();
    for (i, rx) in calls {
        let answer = recv_within(&rx, 20).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(answer, format!("msg-{i}").into_bytes());
    }
    assert_eq!(f.handler.requests(), COUNT);
    assert_eq!(client.outstanding_requests(), 0);
}

#[test]
fn concurrent_send_rpc_sync_from_many_threads_on_one_client() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 25;
    let f = Fixture::new(&[]);
    let client = f.client();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            spawn(&format!("test-caller-{t}"), move || {
                for i in 0..PER_THREAD {
                    let body = format!("thread-{t}-msg-{i}").into_bytes();
                    let answer = client.send_rpc_sync(body.clone(), LONG).expect("an echo");
                    assert_eq!(answer, body);
                }
            })
        })
        .collect();
    for handle in handles {
        join(handle);
    }
    assert_eq!(f.handler.requests(), THREADS * PER_THREAD);
}

/// Answers that come back in another order than the requests went out each reach their
/// own caller (request ids, not order, match them).
#[test]
fn answers_out_of_order_reach_their_own_callers() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let calls: Vec<_> = (0..5)
        .map(|i| (i, call(&client, format!("hold-{i}")).1))
        .collect();
    wait_for("5 held requests", 10, || f.handler.held() == 5);
    assert_eq!(f.handler.release_held_reversed(), 5);
    for (i, rx) in calls {
        assert_eq!(
            recv_within(&rx, 10).expect("an answer"),
            format!("hold-{i}").into_bytes()
        );
    }
}

#[test]
fn request_ids_from_send_rpc_are_distinct() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let calls: Vec<_> = (0..100).map(|i| call(&client, format!("id-{i}"))).collect();
    let ids: HashSet<u64> = calls.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 100, "request ids repeat: {ids:?}");
    for (_, rx) in calls {
        recv_within(&rx, 10).expect("an echo");
    }
}

/// Spark `sendOneWayMessage`: every one-way message arrives, and none is outstanding.
#[test]
fn one_way_messages_all_arrive() {
    const COUNT: usize = 500;
    let f = Fixture::new(&[]);
    let client = f.client();
    for i in 0..COUNT {
        client
            .send(format!("one-way-{i:04}"))
            .expect("a one-way send");
    }
    assert_eq!(client.outstanding_requests(), 0);
    wait_for("all one-way messages", 10, || f.handler.one_way() == COUNT);
    assert_eq!(f.handler.one_way_bytes(), COUNT * "one-way-0000".len());
    assert_eq!(f.handler.requests(), 0, "one-way messages are not requests");
}

// ---------------------------------------------------------------------------------------
// Both directions

/// The server's handler, given the inbound client, sends a request back to the client
/// side, whose own handler (a second context) answers it.
#[test]
fn server_handler_calls_back_the_client_side_handler() {
    let f = Fixture::new(&[]);
    let side = ClientSide::new(&[]);
    let client = side.connect(f.port());
    let answer = client
        .send_rpc_sync("call-back:ping from the server", LONG)
        .expect("call back");
    assert_eq!(answer, b"ping from the server");
    assert_eq!(
        side.handler.requests(),
        1,
        "the client side's handler answered"
    );
    assert_eq!(f.handler.requests(), 1);
}

/// Same, with one context: the outbound connection is served by the same handler.
#[test]
fn bidirectional_rpc_within_one_context() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let answer = client
        .send_rpc_sync("call-back:round trip", LONG)
        .expect("call back");
    assert_eq!(answer, b"round trip");
    assert_eq!(f.handler.requests(), 2, "one request each way");
}

/// A thread outside any handler uses the inbound `TransportClient` the server side was
/// given to call the client side, synchronously and one-way.
#[test]
fn server_side_can_use_inbound_client_from_any_thread() {
    let f = Fixture::new(&[]);
    let side = ClientSide::new(&[]);
    let client = side.connect(f.port());
    wait_for("the inbound connection", 5, || {
        f.handler.active().len() == 1
    });
    let inbound = f.handler.active().remove(0);
    assert_ne!(inbound.id(), client.id());
    assert_eq!(
        inbound
            .send_rpc_sync("from the server", LONG)
            .expect("reverse rpc"),
        b"from the server"
    );
    inbound
        .send("one-way from the server")
        .expect("reverse one-way");
    wait_for("the reverse one-way message", 5, || {
        side.handler.one_way() == 1
    });
    assert_eq!(side.handler.requests(), 1);
    // And the forward direction still works.
    assert_echo(&client, b"forward");
}

// ---------------------------------------------------------------------------------------
// channel_active / channel_inactive

#[test]
fn channel_active_and_inactive_for_inbound_and_outbound_connections() {
    let f = Fixture::new(&[]);
    let side = ClientSide::new(&[]);
    let client = side.connect(f.port());
    wait_for("channel_active for the outbound connection", 5, || {
        side.handler.saw_active_id(client.id())
    });
    wait_for("channel_active for the inbound connection", 5, || {
        f.handler.active().len() == 1
    });
    let inbound = f.handler.active().remove(0);
    assert_eq!(inbound.remote_address().ip().to_string(), HOST);
    assert!(inbound.is_active());
    assert!(f.handler.inactive().is_empty());
    assert!(side.handler.inactive().is_empty());

    client.close();
    wait_for("channel_inactive for the outbound connection", 5, || {
        side.handler.saw_inactive_id(client.id())
    });
    wait_for("channel_inactive for the inbound connection", 5, || {
        f.handler.saw_inactive_id(inbound.id())
    });
    assert!(!inbound.is_active());
    assert_eq!(
        side.handler.active().len(),
        1,
        "channel_active once per connection"
    );
    assert_eq!(
        side.handler.inactive().len(),
        1,
        "channel_inactive once per connection"
    );
    assert_eq!(f.handler.inactive().len(), 1);
}

#[test]
fn channel_inactive_on_both_sides_when_the_server_closes_the_connection() {
    let f = Fixture::new(&[]);
    let side = ClientSide::new(&[]);
    let client = side.connect(f.port());
    wait_for("the inbound connection", 5, || {
        f.handler.active().len() == 1
    });
    f.handler.active()[0].close();
    wait_for("channel_inactive on the client side", 5, || {
        side.handler.saw_inactive_id(client.id())
    });
    wait_for("channel_inactive on the server side", 5, || {
        f.handler.inactive().len() == 1
    });
    assert!(!client.is_active());
}

// ---------------------------------------------------------------------------------------
// Timeouts

#[test]
fn send_rpc_sync_times_out_and_the_late_answer_is_ignored() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let started = Instant::now();
    let err = client
        .send_rpc_sync("hold", Duration::from_millis(300))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, RpcError::Timeout { after, .. } if *after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("300ms"),
        "{err} should name the duration"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "timed out early: {elapsed:?}"
    );
    assert!(elapsed < PROMPTLY, "took {elapsed:?}");
    assert_eq!(
        client.outstanding_requests(),
        0,
        "the timed-out request is forgotten"
    );

    // The late answer arrives before the next echo's (same connection, in order) and is
    // dropped; the next request gets its own answer.
    assert_eq!(f.handler.release_held(), 1);
    assert_echo(&client, b"next");
    assert!(client.is_active());
    assert_eq!(client.outstanding_requests(), 0);
}

#[test]
fn remove_rpc_request_forgets_the_request_and_drops_its_callback() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let (id, rx) = call(&client, "hold");
    wait_for("the held request", 5, || f.handler.held() == 1);
    assert_eq!(client.outstanding_requests(), 1);
    assert!(client.remove_rpc_request(id), "it was outstanding");
    assert!(!client.remove_rpc_request(id), "it is gone");
    assert_eq!(client.outstanding_requests(), 0);
    // The callback was dropped without being called.
    assert!(matches!(
        rx.try_recv(),
        Err(std::sync::mpsc::TryRecvError::Disconnected)
    ));
    // Its answer, when it comes, goes nowhere; the connection keeps working.
    f.handler.release_held();
    assert_echo(&client, b"still fine");
    assert!(rx.try_recv().is_err());
}

/// Spark `RequestTimeoutIntegrationSuite.timeoutInactiveRequests` and
/// `timeoutCleanlyClosesClient`: a request without a deadline of its own that the server
/// never answers fails with `Connection` naming `rpc.io.connectionTimeout` once the peer
/// has been silent that long, the client is then inactive, and the factory hands out a
/// fresh, working one.
#[test]
fn timeout_inactive_requests_and_timeout_cleanly_closes_client() {
    let f = Fixture::new(&[("rpc.io.connectionTimeout", "1s")]);
    let client = f.client();
    assert_echo(&client, b"quick");
    let started = Instant::now();
    let (_, rx) = call(&client, "hold");
    let err = recv_within(&rx, 30).unwrap_err();
    let elapsed = started.elapsed();
    assert_connection_error(&err, f.port());
    assert!(
        err.to_string().contains("rpc.io.connectionTimeout"),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_secs(1),
        "closed before the timeout: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(!client.is_active());

    let fresh = f.client();
    assert_ne!(fresh.id(), client.id(), "a new connection");
    assert!(fresh.is_active());
    assert_echo(&fresh, b"fresh");
}

/// `rpc.io.connectionTimeout` never cuts a request short of its own, longer deadline: a
/// peer that answers after 2.5 s is waited for by requests with 10 s deadlines, with the
/// timeout at 1 s, and so are the other requests on the connection.
#[test]
fn connection_timeout_does_not_cap_a_requests_own_longer_deadline() {
    let f = Fixture::new(&[("rpc.io.connectionTimeout", "1s")]);
    let client = f.client();
    assert_echo(&client, b"quick");
    let started = Instant::now();
    let (slow, slow_rx) = call_sync_in_thread(&client, b"hold", Duration::from_secs(10));
    let (other, other_rx) = call_sync_in_thread(&client, b"hold", Duration::from_secs(10));
    wait_for("both requests held", 5, || f.handler.held() == 2);
    thread::sleep(Duration::from_millis(2500));
    f.handler.release_held();
    for (thread, rx) in [(slow, slow_rx), (other, other_rx)] {
        let (answer, _) = recv_within(&rx, 15);
        assert_eq!(answer.expect("answered after 2.5 s"), b"hold");
        thread.join().unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert!(client.is_active());
}

/// The silent-peer rule counts the peer's silence only: requests this side keeps sending
/// (every 300 ms, each with a deadline of its own) do not keep alive a connection on which
/// a request without a deadline waits for a peer that never answers.
#[test]
fn our_own_sends_do_not_reset_the_silent_peer_rule() {
    let listener = std::net::TcpListener::bind((HOST, 0)).expect("a raw listener");
    let port = listener.local_addr().expect("its address").port();
    let side = ClientSide::new(&[("rpc.io.connectionTimeout", "1s")]);
    let client = side.connect(port);
    let (_peer, _) = listener.accept().expect("the connection"); // never answers
    let started = Instant::now();
    let (_, open_ended) = call(&client, "no deadline");
    let mut timed_out = 0;
    while client.is_active() && started.elapsed() < Duration::from_secs(10) {
        let err = client
            .send_rpc_sync("with a deadline", Duration::from_millis(300))
            .unwrap_err();
        if matches!(err, RpcError::Timeout { .. }) {
            timed_out += 1;
        }
    }
    let err = recv_within(&open_ended, 5).unwrap_err();
    assert!(
        err.to_string().contains("rpc.io.connectionTimeout"),
        "{err}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    assert!(
        timed_out >= 2,
        "the periodic requests kept going: {timed_out}"
    );
}

/// A connection with nothing outstanding is not closed by the idle check (Spark keeps
/// quiet RPC connections open; `closeIdleConnections` is false for RPC).
#[test]
fn idle_connection_without_outstanding_requests_stays_open() {
    let f = Fixture::new(&[("rpc.io.connectionTimeout", "1s")]);
    let client = f.client();
    assert_echo(&client, b"before");
    thread::sleep(Duration::from_millis(2500));
    assert!(
        client.is_active(),
        "the idle check closed a quiet connection"
    );
    assert!(f.handler.inactive().is_empty());
    assert_eq!(f.client().id(), client.id(), "the pooled client is reused");
    assert_echo(&client, b"after");
}

// ---------------------------------------------------------------------------------------
// Outstanding requests fail at once when the connection goes

#[test]
fn outstanding_requests_fail_at_once_when_the_server_is_closed() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let (handle, rx) = call_sync_in_thread(&client, b"hold", LONG);
    let (_, async_rx) = call(&client, "hold");
    wait_for("2 held requests", 5, || f.handler.held() == 2);
    f.server.close();
    let (answer, elapsed) = recv_within(&rx, 10);
    join(handle);
    assert_connection_error(&answer.unwrap_err(), f.port());
    assert!(elapsed < PROMPTLY, "took {elapsed:?}");
    assert_connection_error(&recv_within(&async_rx, 5).unwrap_err(), f.port());
    wait_for("the client to see the close", 5, || !client.is_active());
}

#[test]
fn outstanding_requests_fail_at_once_when_the_server_handler_closes_the_connection() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let (handle, rx) = call_sync_in_thread(&client, b"hold", LONG);
    let (_, held_rx) = call(&client, "hold");
    wait_for("2 held requests", 5, || f.handler.held() == 2);
    let (_, close_rx) = call(&client, "close");
    let (answer, elapsed) = recv_within(&rx, 10);
    join(handle);
    assert_connection_error(&answer.unwrap_err(), f.port());
    assert!(elapsed < PROMPTLY, "took {elapsed:?}");
    assert_connection_error(&recv_within(&held_rx, 5).unwrap_err(), f.port());
    assert_connection_error(&recv_within(&close_rx, 5).unwrap_err(), f.port());
    wait_for("the client to see the close", 5, || !client.is_active());
    // The server itself is fine.
    assert_echo(&f.client(), b"new connection");
}

#[test]
fn outstanding_requests_fail_at_once_when_the_client_is_closed() {
    let f = Fixture::new(&[]);
    let client = f.client();
    let (handle, rx) = call_sync_in_thread(&client, b"hold", LONG);
    let (_, async_rx) = call(&client, "hold");
    wait_for("2 held requests", 5, || f.handler.held() == 2);
    client.close();
    let (answer, elapsed) = recv_within(&rx, 10);
    join(handle);
    assert_connection_error(&answer.unwrap_err(), f.port());
    assert!(elapsed < PROMPTLY, "took {elapsed:?}");
    assert_connection_error(&recv_within(&async_rx, 5).unwrap_err(), f.port());
    assert!(!client.is_active());
    assert_eq!(client.outstanding_requests(), 0);
    client.close(); // idempotent
}

#[test]
fn calls_on_a_closed_client_fail_at_once_with_connection_error() {
    let f = Fixture::new(&[]);
    let client = f.client();
    client.close();
    let started = Instant::now();
    assert_connection_error(
        &client.send_rpc_sync("after close", LONG).unwrap_err(),
        f.port(),
    );
    assert_connection_error(&client.send("after close").unwrap_err(), f.port());
    let (_, rx) = call(&client, "after close");
    assert_connection_error(&recv_within(&rx, 5).unwrap_err(), f.port());
    assert!(started.elapsed() < PROMPTLY);
}

// ---------------------------------------------------------------------------------------
// Sizes (rpc.message.maxSize)

/// RpcRequest/RpcResponse header: length (8) + type (1) + request id (8) + body length (4).
const RPC_HEADER: usize = 21;

/// OneWayMessage header: length (8) + type (1) + body length (4).
const ONE_WAY_HEADER: usize = 13;

#[test]
fn send_rpc_sync_of_too_large_body_fails_at_once_and_keeps_the_connection() {
    let f = Fixture::new(&[("rpc.message.maxSize", "64k")]);
    let client = f.client();
    let started = Instant::now();
    let err = client
        .send_rpc_sync(vec![1u8; 100 * 1024], LONG)
        .unwrap_err();
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    match &err {
        RpcError::FrameTooLarge { size, max } => {
            assert_eq!(*max, 64 * 1024);
            assert_eq!(*size, (100 * 1024 + RPC_HEADER) as u64);
            let text = err.to_string();
            assert!(
                text.contains(&size.to_string()) && text.contains(&max.to_string()),
                "{text}"
            );
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(f.handler.requests(), 0, "nothing was sent");
    assert!(client.is_active());
    assert_eq!(client.outstanding_requests(), 0);
    assert_eq!(f.client().id(), client.id(), "the same connection");
    assert_echo(&client, b"small");
}

#[test]
fn send_of_too_large_body_fails_at_once_and_keeps_the_connection() {
    let f = Fixture::new(&[("rpc.message.maxSize", "64k")]);
    let client = f.client();
    let err = client.send(vec![1u8; 100 * 1024]).unwrap_err();
    match &err {
        RpcError::FrameTooLarge { size, max } => {
            assert_eq!(*max, 64 * 1024);
            assert_eq!(*size, (100 * 1024 + ONE_WAY_HEADER) as u64);
            let text = err.to_string();
            assert!(
                text.contains(&size.to_string()) && text.contains(&max.to_string()),
                "{text}"
            );
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(client.is_active());
    client.send("small").expect("a small one-way message");
    wait_for("the small one-way message", 5, || f.handler.one_way() == 1);
    assert_echo(&client, b"small");
}

#[test]
fn frame_of_exactly_max_size_is_accepted_one_byte_more_is_not() {
    let f = Fixture::new(&[("rpc.message.maxSize", "64k")]);
    let client = f.client();
    let fits = pattern(64 * 1024 - RPC_HEADER);
    assert_eq!(
        client
            .send_rpc_sync(fits.clone(), LONG)
            .expect("a frame of maxSize"),
        fits
    );
    let err = client
        .send_rpc_sync(pattern(64 * 1024 - RPC_HEADER + 1), LONG)
        .unwrap_err();
    assert!(matches!(err, RpcError::FrameTooLarge { .. }), "{err:?}");
    assert_echo(&client, b"still fine");
}

/// An answer above the server's own `rpc.message.maxSize` is not sent: the server answers
/// with a failure carrying the sizes, which the caller gets as `FrameTooLarge`.
#[test]
fn handler_reply_too_large_gives_the_caller_frame_too_large_with_the_servers_sizes() {
    let f = Fixture::new(&[("rpc.message.maxSize", "64k")]);
    let client = f.client();
    let started = Instant::now();
    let err = client.send_rpc_sync("big:100000", LONG).unwrap_err();
    assert!(
        matches!(err, RpcError::FrameTooLarge { size, max: 65536 } if size > 100_000),
        "{err:?}"
    );
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(client.is_active());
    assert_echo(&client, b"after");
}

/// A request above the *server's* `rpc.message.maxSize` (the client allows it) makes the
/// server answer it with both sizes and close that connection; the caller fails at once
/// with `FrameTooLarge` and the sizes, and the server's `exception_caught` sees
/// `FrameTooLarge`.
#[test]
fn request_above_the_servers_max_size_fails_the_call_at_once() {
    let f = Fixture::new(&[("rpc.message.maxSize", "64k")]);
    let side = ClientSide::new(&[]);
    let client = side.connect(f.port());
    let started = Instant::now();
    let err = client
        .send_rpc_sync(vec![1u8; 100 * 1024], LONG)
        .unwrap_err();
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert!(
        matches!(err, RpcError::FrameTooLarge { size, max: 65536 } if size > 100 * 1024),
        "{err:?}"
    );
    wait_for("the server's exception_caught", 5, || {
        !f.handler.exceptions().is_empty()
    });
    let exceptions = f.handler.exceptions();
    assert!(
        matches!(exceptions[0].1, RpcError::FrameTooLarge { .. }),
        "{exceptions:?}"
    );
    assert_eq!(f.handler.requests(), 0);
    // The server keeps serving new connections.
    assert_echo(&side.connect(f.port()), b"small");
}

/// Large frames written by several threads at once on one connection never interleave
/// (each write may be partial).
#[test]
fn concurrent_large_requests_from_many_threads_are_not_interleaved() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 5;
    let f = Fixture::new(&[]);
    let client = f.client();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            spawn(&format!("test-large-caller-{t}"), move || {
                for i in 0..PER_THREAD {
                    let fill = (t * PER_THREAD + i) as u8;
                    let body = vec![fill; 1024 * 1024 + t * 7 + i];
                    let answer = client.send_rpc_sync(body.clone(), LONG).expect("an echo");
                    assert!(answer == body, "thread {t} request {i}: the echo differs");
                }
            })
        })
        .collect();
    for handle in handles {
        join(handle);
    }
    assert_eq!(f.handler.requests(), THREADS * PER_THREAD);
}

/// Closing a client while other threads are sending: every request's callback is called
/// exactly once (an answer or a failure), none is lost.
#[test]
fn every_callback_runs_once_when_close_races_with_senders() {
    const THREADS: usize = 3;
    const PER_THREAD: usize = 300;
    let f = Fixture::new(&[]);
    let client = f.client();
    let (tx, rx) = std::sync::mpsc::channel::<Result<Vec<u8>, RpcError>>();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            let tx = tx.clone();
            spawn(&format!("test-racing-sender-{t}"), move || {
                for i in 0..PER_THREAD {
                    let tx = tx.clone();
                    // Every tenth is held by the server, so some are surely
                    // outstanding when the close comes.
                    let body = if i % 10 == 0 {
                        format!("hold-{t}-{i}")
                    } else {
                        format!("race-{t}-{i}")
                    };
                    client.send_rpc(body, move |answer| {
                        tx.send(answer).expect("the test still listens");
                    });
                }
            })
        })
        .collect();
    // Close once a request is held, while the senders are (probably) still going.
    wait_for("a held request", 10, || f.handler.held() > 0);
    let mut answers = Vec::new();
    client.close();
    for handle in handles {
        join(handle);
    }
    drop(tx);
    // The channel disconnects once every callback ran or was dropped; a dropped one
    // (a lost request) leaves the count short.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(answer) => answers.push(answer),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("callbacks still pending 10 s after the close")
            }
        }
    }
    assert_eq!(answers.len(), THREADS * PER_THREAD, "callbacks lost");
    for answer in &answers {
        if let Err(err) = answer {
            assert_connection_error(err, f.port());
        }
    }
    assert!(
        answers.iter().any(Result::is_err),
        "the close failed nothing"
    );
    assert!(!client.is_active());
}
