//! `RpcEnv::metrics`: exact counts after a scripted exchange.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpcenv::{
    EndpointContext, EndpointKind, EndpointMetrics, RpcCallContext, RpcEndpoint, RpcError,
    RpcMetrics, Threading,
};
use serde::{Deserialize, Serialize};

use crate::support::{address_of, client_env, server_env, wait_for};

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    /// Answered with n + 1; one-way: counted.
    Add(u64),
    /// Waits, then answers (after the asker timed out).
    Slow(u64),
    Panic,
    /// Drops its call context.
    Ignore,
    /// Waits on the gate (until the test releases it).
    Block,
}

struct Calc {
    gate: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    threading: Threading,
}

impl RpcEndpoint for Calc {
    type Message = Msg;
    fn threading(&self) -> Threading {
        self.threading
    }
    fn receive(&mut self, msg: Msg, _ctx: &EndpointContext<Msg>) {
        if let Msg::Block = msg {
            let gate = self.gate.lock().unwrap().take().expect("one Block");
            gate.recv_timeout(Duration::from_secs(20))
                .expect("the test opens the gate");
        }
    }
    fn receive_and_reply(&mut self, msg: Msg, reply: RpcCallContext, _ctx: &EndpointContext<Msg>) {
        match msg {
            Msg::Add(n) => reply.reply(n + 1),
            Msg::Slow(n) => {
                std::thread::sleep(Duration::from_millis(300));
                reply.reply(n + 1);
            }
            Msg::Panic => panic!("asked to panic"),
            Msg::Ignore => drop(reply),
            Msg::Block => reply.reply(0u64),
        }
    }
    fn on_error(&mut self, _error: RpcError, _ctx: &EndpointContext<Msg>) {}
}

fn endpoint<'a>(metrics: &'a RpcMetrics, name: &str) -> &'a EndpointMetrics {
    metrics
        .endpoints
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("endpoint {name} in {metrics:#?}"))
}

#[test]
fn metrics_count_a_scripted_exchange_exactly() {
    const N: u64 = 10; // asks answered
    const M: u64 = 7; // one-way messages
    const K: u64 = 2; // asks timed out
    let server = server_env("metrics-server");
    let gate = Arc::new(Mutex::new(None));
    server
        .setup_endpoint(
            "calc",
            Calc {
                gate: Arc::clone(&gate),
                threading: Threading::Shared,
            },
        )
        .unwrap();
    let gone_here = server
        .setup_endpoint(
            "gone",
            Calc {
                gate: Arc::clone(&gate),
                threading: Threading::Shared,
            },
        )
        .unwrap();
    let client = client_env("metrics-client");
    let calc = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "calc")
        .unwrap();
    let gone = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "gone")
        .unwrap();
    for n in 0..N {
        assert_eq!(calc.ask_sync::<u64>(Msg::Add(n)).unwrap(), n + 1);
    }
    for n in 0..M {
        calc.send(Msg::Add(n)).unwrap();
    }
    for n in 0..K {
        let err = calc
            .ask_sync_timeout::<u64>(Msg::Slow(n), Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    }
    let err = calc.ask_sync::<u64>(Msg::Panic).unwrap_err();
    assert!(matches!(err, RpcError::Remote { .. }), "{err}");
    let err = calc.ask_sync::<u64>(Msg::Ignore).unwrap_err();
    assert!(matches!(err, RpcError::NoReply { .. }), "{err}");
    // An unknown endpoint: stopped on the server, then sent to.
    server.stop(&gone_here).unwrap();
    gone.send(Msg::Add(0)).unwrap();

    // What the server handled: OnStart, the client's Connected, N + M + K + 2 messages.
    let handled = 2 + N + M + K + 2;
    wait_for("the server to handle everything", 20, || {
        let m = server.metrics();
        endpoint(&m, "calc").messages_handled == handled
            && m.env.frames_rejected.get("unknown_endpoint") == Some(&1)
    });
    let m = server.metrics();
    let e = endpoint(&m, "calc");
    assert_eq!(e.kind, EndpointKind::Shared);
    assert_eq!(e.handler_time.count(), handled, "{e:?}");
    assert_eq!(e.panics, 1);
    assert_eq!(e.asks_answered, N + K);
    assert_eq!(e.asks_failed, 1, "the panic");
    assert_eq!(e.asks_dropped, 1, "the ignored ask");
    assert_eq!(e.inbox_depth, 0);
    assert!(e.handler_time.percentile(100.0).unwrap() >= Duration::from_millis(300));
    assert!(m.endpoints.iter().all(|e| e.name != "gone"), "{m:#?}");
    assert_eq!(m.env.connections, 1, "{m:#?}");
    assert_eq!(m.peers.len(), 1, "{m:#?}");
    let peer = &m.peers[0];
    assert_eq!((peer.connections, peer.inbound), (1, 1));
    // Requests: the lookups of calc and gone, N + K + 2 asks; M + 1 one-way messages
    // and the hello.
    let one_way = M + 2;
    assert!(peer.frames_in >= 2 + N + K + 2 + one_way, "{peer:?}");
    assert!(peer.bytes_in > peer.frames_in * 21, "{peer:?}");
    assert!(peer.frames_out >= 2 + N + K + 2, "{peer:?}");
    assert!(peer.last_activity.unwrap() < Duration::from_secs(60));
    assert_eq!(
        m.env.timeouts.values().sum::<u64>(),
        0,
        "the server timed out nothing"
    );

    let c = client.metrics();
    assert_eq!(
        c.env.timeouts.get("ask_sync_timeout"),
        Some(&K),
        "{:?}",
        c.env.timeouts
    );
    assert_eq!(c.env.asks_in_flight, 0);
    assert_eq!(c.env.connects, 1);
    assert_eq!(c.env.connect_failures, 0);
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].address.port(), address_of(&server).port());
    assert_eq!(c.peers[0].inbound, 0);
    assert_eq!(c.peers[0].asks_in_flight, 0);
    // What one side wrote, the other read (the connection is quiet now).
    wait_for("the late answers to arrive", 20, || {
        let (s, c) = (server.metrics(), client.metrics());
        s.env.bytes_out == c.env.bytes_in && c.env.bytes_out == s.env.bytes_in
    });
    // The answers that came after their asks timed out answer no outstanding request.
    let c = client.metrics();
    assert_eq!(c.env.frames_rejected.get("unknown_request_id"), Some(&K));
    let line = c.status_line();
    assert!(line.starts_with("conns=1 peers=1 in="), "{line}");
    assert!(line.contains(" timeouts=2 "), "{line}");
    assert!(line.ends_with(" dropped=0 rejected=2"), "{line}");

    // A dropped connection: the counts stay with the env, the peer goes.
    let before = server.metrics().env;
    client.shutdown();
    wait_for("the server to see the connection close", 20, || {
        server.metrics().env.connections == 0
    });
    let after = server.metrics();
    assert!(after.peers.is_empty(), "{after:#?}");
    assert!(after.env.frames_in >= before.frames_in);
    assert!(after.env.bytes_out >= before.bytes_out);
    server.shutdown();
}

#[test]
fn metrics_show_an_inbox_filling_up() {
    let server = server_env("metrics-inbox");
    let (open, gate) = mpsc::channel();
    let gate = Arc::new(Mutex::new(Some(gate)));
    let calc = server
        .setup_endpoint(
            "gated",
            Calc {
                gate,
                threading: Threading::Dedicated,
            },
        )
        .unwrap();
    calc.send(Msg::Block).unwrap();
    wait_for("the endpoint to block", 20, || {
        let m = server.metrics();
        endpoint(&m, "gated").messages_handled == 1 && endpoint(&m, "gated").inbox_depth == 0
    });
    for n in 0..20 {
        calc.send(Msg::Add(n)).unwrap();
    }
    let m = server.metrics();
    let e = endpoint(&m, "gated");
    assert_eq!(e.kind, EndpointKind::Dedicated);
    assert_eq!((e.inbox_depth, e.inbox_high_water), (20, 20), "{e:?}");
    let line = m.status_line();
    assert!(line.contains(" inbox=20 inbox_max=20 "), "{line}");
    open.send(()).unwrap();
    wait_for("the inbox to drain", 20, || {
        let m = server.metrics();
        endpoint(&m, "gated").messages_handled == 22
    });
    let m = server.metrics();
    let e = endpoint(&m, "gated");
    assert_eq!((e.inbox_depth, e.inbox_high_water), (0, 20));
    assert_eq!(e.handler_time.count(), 22);
    server.shutdown();
}

#[test]
fn metrics_count_failed_connects() {
    let client = client_env("metrics-connect");
    let (_held, port) = crate::support::refused_port();
    let address = rpcenv::RpcAddress::new(crate::support::HOST, port);
    let err = client
        .setup_endpoint_ref::<Msg>(&address, "calc")
        .unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err}");
    let m = client.metrics();
    assert_eq!((m.env.connects, m.env.connect_failures), (0, 1));
    assert!(m.status_line().contains(" connect_failures=1 "));
    client.shutdown();
}

/// The byte and frame totals only grow: a connection the peer closed while this env
/// still holds it (a pooled client is replaced only at its next use) keeps counting in
/// them, though it no longer counts as open.
#[test]
fn totals_do_not_drop_when_a_held_connection_closes() {
    let server = server_env("metrics-held-server");
    let gate = Arc::new(Mutex::new(None));
    server
        .setup_endpoint(
            "calc",
            Calc {
                gate,
                threading: Threading::Shared,
            },
        )
        .unwrap();
    let client = client_env("metrics-held-client");
    let calc = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "calc")
        .unwrap();
    for i in 0..5 {
        assert_eq!(calc.ask_sync::<u64>(Msg::Add(i)).unwrap(), i + 1);
    }
    let before = client.metrics();
    assert_eq!(before.env.connections, 1);
    assert!(before.env.bytes_out > 0 && before.env.frames_in >= 5);
    server.shutdown();
    wait_for("the client to see the connection closed", 10, || {
        client.metrics().env.connections == 0
    });
    let after = client.metrics();
    assert!(after.peers.is_empty(), "{:?}", after.peers);
    let totals = |m: &RpcMetrics| {
        (
            m.env.bytes_in,
            m.env.bytes_out,
            m.env.frames_in,
            m.env.frames_out,
        )
    };
    let (b, a) = (totals(&before), totals(&after));
    assert!(
        a.0 >= b.0 && a.1 >= b.1 && a.2 >= b.2 && a.3 >= b.3,
        "totals dropped from {b:?} to {a:?}"
    );
    drop(calc);
    client.shutdown();
}

/// Snapshots in a loop on both sides while client envs connect, ask and shut down (their
/// connections closing under the snapshots): no snapshot waits on another lock for long
/// (the loop and the clients finish), and no total ever goes down between two snapshots.
#[test]
fn snapshots_while_connections_open_and_close_neither_block_nor_go_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = server_env("metrics-churn-server");
    server
        .setup_endpoint(
            "calc",
            Calc {
                gate: Arc::new(Mutex::new(None)),
                threading: Threading::Shared,
            },
        )
        .unwrap();
    let address = address_of(&server);
    let done = Arc::new(AtomicBool::new(false));
    let server = Arc::new(server);
    let snapshots = {
        let (server, done) = (Arc::clone(&server), Arc::clone(&done));
        crate::support::spawn("snapshots", move || {
            let totals = |m: &RpcMetrics| {
                [
                    m.env.bytes_in,
                    m.env.bytes_out,
                    m.env.frames_in,
                    m.env.frames_out,
                ]
            };
            let mut last = totals(&server.metrics());
            let mut taken = 0u64;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                let now = totals(&server.metrics());
                for (i, (a, b)) in last.iter().zip(&now).enumerate() {
                    assert!(b >= a, "total {i} went from {a} to {b}");
                }
                last = now;
                taken += 1;
            }
            taken
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let address = address.clone();
            crate::support::spawn("churn", move || {
                for round in 0..8u64 {
                    let client = client_env(&format!("metrics-churn-{t}-{round}"));
                    let calc = client
                        .setup_endpoint_ref::<Msg>(&address, "calc")
                        .expect("a reference");
                    for i in 0..5 {
                        assert_eq!(calc.ask_sync::<u64>(Msg::Add(i)).unwrap(), i + 1);
                    }
                    // Snapshots of the client too, while it goes down.
                    let _ = client.metrics();
                    drop(calc);
                    client.shutdown();
                    let m = client.metrics();
                    assert_eq!((m.env.connections, m.env.asks_in_flight), (0, 0));
                }
            })
        })
        .collect();
    for client in clients {
        crate::support::join(client);
    }
    done.store(true, Ordering::SeqCst);
    let taken = crate::support::join(snapshots);
    assert!(taken > 0);
    wait_for("the server to see every connection closed", 10, || {
        server.metrics().env.connections == 0
    });
    let m = server.metrics();
    assert_eq!(m.env.bytes_queued, 0);
    assert_eq!(endpoint(&m, "calc").inbox_depth, 0);
    server.shutdown();
}
