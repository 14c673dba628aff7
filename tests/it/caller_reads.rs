//! An ask that is its connection's only request outstanding is read by the thread that
//! waits for it (the connection's read turn, see `transport::read_turn`): plaintext and
//! with each channel cipher, from a user thread and from a handler on a dispatcher
//! thread, and with frames for the caller's own endpoints arriving meanwhile.

use std::time::Duration;

use rpcenv::{
    EndpointContext, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError, Threading,
};
use serde::{Deserialize, Serialize};

use crate::support::{address_of, client_env_with, rpc_conf, server_env_with};

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    /// Answered with n + 1 after `ms` milliseconds (the caller is waiting by then).
    Late(u64, u64),
    /// Sends `Note(n)` to the asker's endpoint `notes`, then answers n + 1 late.
    NoteFirst(u64, Option<RpcEndpointRef<Note>>),
    /// Asks `next` for `Late(n, 20)` from the handler and answers with its answer.
    Relay(u64, RpcEndpointRef<Self>),
    /// Sends `count` notes of 2 kB to `notes` (each waiting for window), then answers
    /// `count`.
    Flood(u64, RpcEndpointRef<Page>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Page(u64, #[serde(with = "serde_bytes")] Vec<u8>);

#[derive(Debug, Serialize, Deserialize)]
struct Note(u64);

struct Server;

impl RpcEndpoint for Server {
    type Message = Msg;
    fn threading(&self) -> Threading {
        Threading::Dedicated
    }
    fn receive_and_reply(&mut self, msg: Msg, reply: RpcCallContext, _: &EndpointContext<Msg>) {
        match msg {
            Msg::Late(n, ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                reply.reply(n + 1);
            }
            Msg::NoteFirst(n, notes) => {
                notes.expect("a notes ref").send(Note(n)).expect("note");
                std::thread::sleep(Duration::from_millis(20));
                reply.reply(n + 1);
            }
            Msg::Relay(n, next) => match next.ask_sync::<u64>(Msg::Late(n, 20)) {
                Ok(answer) => reply.reply(answer),
                Err(err) => reply.send_failure(err.to_string()),
            },
            Msg::Flood(count, pages) => {
                for n in 0..count {
                    if let Err(err) = pages.send(Page(n, vec![7; 2000])) {
                        reply.send_failure(format!("page {n}: {err}"));
                        return;
                    }
                }
                reply.reply(count);
            }
        }
    }
}

struct Notes(crossbeam_channel::Sender<u64>);

impl RpcEndpoint for Notes {
    type Message = Note;
    fn receive(&mut self, Note(n): Note, _: &EndpointContext<Note>) {
        let _ = self.0.send(n);
    }
}

/// Takes pages slowly (so that the inbox stays full and the sender waits for window),
/// checking that they come in order.
struct Pages {
    next: u64,
    got: crossbeam_channel::Sender<u64>,
}

impl RpcEndpoint for Pages {
    type Message = Page;
    fn receive(&mut self, Page(n, body): Page, _: &EndpointContext<Page>) {
        assert_eq!(n, self.next, "pages in order");
        assert_eq!(body.len(), 2000);
        self.next = if n + 1 == FLOOD { 0 } else { n + 1 };
        std::thread::sleep(Duration::from_micros(200));
        let _ = self.got.send(n);
    }
}

/// Pages per flood: 600 kB, many windows of 64 kB.
const FLOOD: u64 = 300;

/// A peer floods an endpoint of the caller's env with one-way messages (through windows
/// of 64 kB, so the inbox is full most of the time and grants go back while the caller
/// reads) before it answers the caller: every answer comes and no message is lost.
/// The tests' configuration with authentication and the channel cipher `cipher`.
fn encrypted(cipher: &str) -> rpcenv::RpcConf {
    rpc_conf()
        .set("rpc.authenticate", "true")
        .set("rpc.authenticate.secret", "caller-reads")
        .set("rpc.io.encryption.enabled", "true")
        .set("rpc.io.encryption.cipher", cipher)
}

fn flood(conf: rpcenv::RpcConf) {
    let conf = conf
        .set("rpc.dispatcher.inboxCapacity", "64k")
        .set("rpc.io.maxQueuedBytes", "64k");
    let server = server_env_with("caller-reads-flood-server", conf.clone());
    server.setup_endpoint("late", Server).unwrap();
    let client = client_env_with("caller-reads-flood-client", conf);
    let (tx, rx) = crossbeam_channel::unbounded();
    let pages = client
        .setup_endpoint("pages", Pages { next: 0, got: tx })
        .unwrap();
    let late = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "late")
        .unwrap();
    let before = reads(&client);
    for round in 0..4 {
        let answer = late.ask_sync::<u64>(Msg::Flood(FLOOD, pages.clone()));
        assert_eq!(answer.unwrap(), FLOOD, "round {round}");
        for n in 0..FLOOD {
            let got = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("round {round}: page {n} within 10 s"));
            assert_eq!(got, n, "round {round}");
        }
    }
    assert!(
        reads(&client) > before,
        "a caller read while the pages came"
    );
    assert!(rx.try_recv().is_err(), "no page twice");
    client.shutdown();
    server.shutdown();
}

#[test]
fn a_flood_of_messages_ahead_of_the_answer_is_all_handed_on() {
    flood(rpc_conf());
}

#[test]
fn a_flood_of_messages_ahead_of_the_answer_is_all_handed_on_through_aes_gcm() {
    flood(encrypted("AES/GCM/NoPadding"));
}

#[test]
fn a_flood_of_messages_ahead_of_the_answer_is_all_handed_on_through_aes_ctr() {
    flood(encrypted("AES/CTR/NoPadding"));
}

fn reads(env: &RpcEnv) -> u64 {
    env.metrics().env.answers_read_by_callers
}

fn check(conf: rpcenv::RpcConf) {
    let server = server_env_with("caller-reads-server", conf.clone());
    server.setup_endpoint("late", Server).unwrap();
    let client = client_env_with("caller-reads-client", conf.clone());
    let late = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "late")
        .unwrap();
    assert_eq!(late.ask_sync::<u64>(Msg::Late(0, 0)).unwrap(), 1);
    let before = reads(&client);
    for n in 0..5 {
        assert_eq!(late.ask_sync::<u64>(Msg::Late(n, 20)).unwrap(), n + 1);
    }
    assert_eq!(
        reads(&client),
        before + 5,
        "each late answer read by its caller"
    );

    // A one-way message to the caller's own endpoint arrives while it reads.
    let (tx, rx) = crossbeam_channel::unbounded();
    let notes = client.setup_endpoint("notes", Notes(tx)).unwrap();
    let before = reads(&client);
    let answer = late.ask_sync::<u64>(Msg::NoteFirst(7, Some(notes.clone())));
    assert_eq!(answer.unwrap(), 8);
    assert_eq!(reads(&client), before + 1);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);

    // A handler on a dispatcher thread asks another env and reads its answer itself.
    let third = server_env_with("caller-reads-third", conf);
    third.setup_endpoint("late", Server).unwrap();
    let relay_to = server
        .setup_endpoint_ref::<Msg>(address_of(&third), "late")
        .unwrap();
    let before = reads(&server);
    let answer = late.ask_sync::<u64>(Msg::Relay(40, relay_to));
    assert_eq!(answer.unwrap(), 41);
    assert_eq!(
        reads(&server),
        before + 1,
        "the relaying handler read its answer"
    );

    // A timeout while reading gives the connection back to its loop; it is no answer read.
    let before = reads(&client);
    let err = late
        .ask_sync_timeout::<u64>(Msg::Late(0, 300), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    assert_eq!(reads(&client), before, "a timeout is no answer read");
    let pending = late.ask::<u64>(Msg::Late(1, 0));
    assert_eq!(pending.wait().unwrap(), 2);
    for env in [client, server, third] {
        env.shutdown();
    }
}

#[test]
fn a_late_answer_is_read_by_its_caller() {
    check(rpc_conf());
}

#[test]
fn a_late_answer_is_read_by_its_caller_through_aes_gcm() {
    check(encrypted("AES/GCM/NoPadding"));
}

#[test]
fn a_late_answer_is_read_by_its_caller_through_aes_ctr() {
    check(encrypted("AES/CTR/NoPadding"));
}

/// The env of a caller that is reading its connection for an answer shuts down: the ask
/// fails at once, not when the answer would come, and nothing hangs.
#[test]
fn a_shutdown_wakes_a_reading_caller() {
    let server = server_env_with("caller-reads-shutdown-server", rpc_conf());
    server.setup_endpoint("late", Server).unwrap();
    let client = client_env_with("caller-reads-shutdown-client", rpc_conf());
    let late = client
        .setup_endpoint_ref::<Msg>(address_of(&server), "late")
        .unwrap();
    assert_eq!(late.ask_sync::<u64>(Msg::Late(0, 0)).unwrap(), 1);
    let before = reads(&client);
    std::thread::scope(|scope| {
        let caller = scope.spawn(|| {
            let start = std::time::Instant::now();
            (late.ask_sync::<u64>(Msg::Late(1, 3000)), start.elapsed())
        });
        // The caller is reading by then.
        std::thread::sleep(Duration::from_millis(200));
        client.shutdown();
        let (result, took) = caller.join().unwrap();
        let err = result.unwrap_err();
        assert!(
            matches!(err, RpcError::EnvStopped | RpcError::Connection { .. }),
            "{err}"
        );
        assert!(took < Duration::from_millis(2500), "failed after {took:?}");
    });
    assert_eq!(reads(&client), before, "a shutdown is no answer read");
    server.shutdown();
}
