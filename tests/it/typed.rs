//! Typed calls (issue 10): replies and messages of another type than the other side
//! expects are errors naming both types, locally and remotely; lookups check the message
//! type; every handler gets its context; errors name their cause.

use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};

use serde::{Deserialize, Serialize};

use rpcenv::{
    EndpointContext, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError,
};

use crate::support::{
    LONG, address_of, client_env, client_env_with, recv_within, rpc_conf, server_env,
    server_env_with,
};

/// A key-value store's messages, as a new user writes them.
#[derive(Debug, Serialize, Deserialize)]
enum KvMsg {
    /// Replies with the previous value, `Option<String>`.
    Put(String, String),
    /// Replies with the value, `Option<String>`.
    Get(String),
    /// Replies with whether the key is there, `bool`.
    Contains(String),
    /// Replies with the number of keys, `u64`.
    Len,
}

#[derive(Default)]
struct Kv {
    map: HashMap<String, String>,
}

impl RpcEndpoint for Kv {
    type Message = KvMsg;

    fn receive_and_reply(
        &mut self,
        msg: KvMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<KvMsg>,
    ) {
        match msg {
            KvMsg::Put(key, value) => reply.reply(self.map.insert(key, value)),
            KvMsg::Get(key) => reply.reply(self.map.get(&key).cloned()),
            KvMsg::Contains(key) => reply.reply(self.map.contains_key(&key)),
            KvMsg::Len => reply.reply(self.map.len() as u64),
        }
    }
}

/// Another protocol, to look `kv` up with by mistake.
#[derive(Debug, Serialize, Deserialize)]
enum CounterMsg {
    Add(u64),
    Get,
}

/// `err` is the error of a reply of type `replied` to an ask that expected `expected`.
#[track_caller]
fn assert_reply_type_error<T: std::fmt::Debug>(
    result: Result<T, RpcError>,
    replied: &str,
    expected: &str,
) {
    let err = match result {
        Err(err) => err,
        Ok(value) => panic!("a {replied} asked as {expected} gave Ok({value:?})"),
    };
    let text = err.to_string();
    assert!(matches!(err, RpcError::Decode { .. }), "{err:?}");
    let needle = format!("replied with {replied}, the ask expected {expected}");
    assert!(text.contains(&needle), "{text:?} should say {needle:?}");
    assert!(
        text.contains("endpoint kv"),
        "{text:?} should name the endpoint"
    );
}

/// The shapes of the issue, through `kv`: each wrong reply type fails naming both types,
/// the right ones work, and the endpoint goes on serving.
fn check_kv_reply_types(kv: &RpcEndpointRef<KvMsg>) {
    let put = || KvMsg::Put("k".into(), "v".into());
    // A Put answered with Option<String> asked as bool.
    assert_reply_type_error(kv.ask_sync::<bool>(put()), "Option<String>", "bool");
    // A missing key asked as u64, and as String.
    let get = || KvMsg::Get("missing".into());
    assert_reply_type_error(kv.ask_sync::<u64>(get()), "Option<String>", "u64");
    assert_reply_type_error(kv.ask_sync::<String>(get()), "Option<String>", "String");
    // A bool asked as u8.
    let contains = || KvMsg::Contains("k".into());
    assert_reply_type_error(kv.ask_sync::<u8>(contains()), "bool", "u8");
    // The same through ask().wait() and ask_sync_timeout.
    assert_reply_type_error(kv.ask::<u8>(contains()).wait(), "bool", "u8");
    assert_reply_type_error(kv.ask_sync_timeout::<bool>(KvMsg::Len, LONG), "u64", "bool");
    // The right types work, and the endpoint kept serving.
    assert!(kv.ask_sync::<bool>(contains()).unwrap());
    assert_eq!(kv.ask_sync::<Option<String>>(get()).unwrap(), None);
    assert_eq!(
        kv.ask_sync::<Option<String>>(KvMsg::Get("k".into()))
            .unwrap(),
        Some("v".to_owned())
    );
    assert_eq!(
        kv.ask_sync::<Option<String>>(put()).unwrap(),
        Some("v".to_owned())
    );
    assert_eq!(kv.ask_sync::<u64>(KvMsg::Len).unwrap(), 1);
}

#[test]
fn wrong_reply_types_fail_naming_both_types_locally() {
    let env = server_env("kv-local");
    let kv = env.setup_endpoint("kv", Kv::default()).unwrap();
    check_kv_reply_types(&kv);
    // A reference looked up by address in the same env is local too.
    let looked_up = env
        .setup_endpoint_ref::<KvMsg>(&address_of(&env), "kv")
        .unwrap();
    assert_reply_type_error(
        looked_up.ask_sync::<u8>(KvMsg::Contains("k".into())),
        "bool",
        "u8",
    );
    env.shutdown();
}

#[test]
fn wrong_reply_types_fail_naming_both_types_remotely_from_two_client_envs() {
    let server = server_env("kv-server");
    server.setup_endpoint("kv", Kv::default()).unwrap();
    let addr = address_of(&server);
    // A client-mode env and a server env, each with its own connection.
    let client = client_env("kv-client");
    let peer = server_env("kv-peer");
    for env in [&client, &peer] {
        let kv = env.setup_endpoint_ref::<KvMsg>(&addr, "kv").unwrap();
        check_kv_reply_types(&kv);
        // The wrong reply named the peer too.
        let err = kv.ask_sync::<u8>(KvMsg::Contains("k".into())).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        // Clear the store for the next env.
        let _ = kv.ask_sync::<Option<String>>(KvMsg::Put("k".into(), "v".into()));
    }
    client.shutdown();
    peer.shutdown();
    server.shutdown();
}

/// `assert_reply_type_error` is not an assertion that cannot fail.
#[test]
#[should_panic(expected = "gave Ok(3)")]
fn the_reply_type_assertion_fails_on_a_right_reply() {
    assert_reply_type_error::<u64>(Ok(3), "u64", "u64");
}

#[test]
fn lookup_with_another_message_type_fails_naming_both_types() {
    let server = server_env("lookup-types");
    server.setup_endpoint("kv", Kv::default()).unwrap();
    let addr = address_of(&server);
    let client = client_env("lookup-types-client");
    for env in [&client, &server] {
        let err = env
            .setup_endpoint_ref::<CounterMsg>(&addr, "kv")
            .unwrap_err();
        match &err {
            RpcError::MessageType {
                endpoint,
                takes,
                sent,
            } => {
                assert_eq!(endpoint, &format!("rpc://kv@{addr}"));
                assert_eq!(&**takes, "KvMsg");
                assert_eq!(sent.as_deref(), Some("CounterMsg"));
            }
            other => panic!("expected MessageType, got {other:?}"),
        }
        let text = err.to_string();
        for needle in ["kv", "KvMsg", "CounterMsg", "RpcEndpointRef<KvMsg>"] {
            assert!(text.contains(needle), "{text:?} should contain {needle:?}");
        }
        let by_uri = env.setup_endpoint_ref_by_uri::<CounterMsg>(&format!("rpc://kv@{addr}"));
        assert!(
            matches!(by_uri, Err(RpcError::MessageType { .. })),
            "{by_uri:?}"
        );
        // The right type is found, and a missing name is still EndpointNotFound.
        env.setup_endpoint_ref::<KvMsg>(&addr, "kv").unwrap();
        assert!(matches!(
            env.setup_endpoint_ref::<KvMsg>(&addr, "nope"),
            Err(RpcError::EndpointNotFound { .. })
        ));
    }
    client.shutdown();
    server.shutdown();
}

/// Counts what reaches it, and reports errors.
struct Counter {
    total: u64,
    errors: Sender<RpcError>,
}

impl RpcEndpoint for Counter {
    type Message = CounterMsg;

    fn receive(&mut self, msg: CounterMsg, _ctx: &EndpointContext<CounterMsg>) {
        if let CounterMsg::Add(n) = msg {
            self.total += n;
        }
    }

    fn receive_and_reply(
        &mut self,
        msg: CounterMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<CounterMsg>,
    ) {
        match msg {
            CounterMsg::Get => reply.reply(self.total),
            CounterMsg::Add(n) => {
                self.total += n;
                reply.reply(self.total)
            }
        }
    }

    fn on_error(&mut self, error: RpcError, _ctx: &EndpointContext<CounterMsg>) {
        let _ = self.errors.send(error);
    }
}

/// A reference whose endpoint's name was taken by an endpoint of another message type
/// fails at its first message with `MessageType`, naming both types, instead of handing
/// the other endpoint bytes it decodes as something else.
#[test]
fn a_message_of_another_type_is_refused_naming_both_types() {
    let server = server_env("retyped");
    let addr = address_of(&server);
    let local_kv = server.setup_endpoint("kv", Kv::default()).unwrap();
    let client = client_env("retyped-client");
    let remote_kv = client.setup_endpoint_ref::<KvMsg>(&addr, "kv").unwrap();
    server.stop(&local_kv).unwrap();
    let (errors, seen) = mpsc::channel();
    server
        .setup_endpoint("kv", Counter { total: 0, errors })
        .unwrap();
    for kv in [&local_kv, &remote_kv] {
        let err = kv.ask_sync::<u64>(KvMsg::Len).unwrap_err();
        match &err {
            RpcError::MessageType { takes, sent, .. } => {
                assert_eq!(&**takes, "CounterMsg");
                assert_eq!(sent.as_deref(), Some("KvMsg"));
            }
            other => panic!("expected MessageType, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with("endpoint kv ")
                || text.starts_with(&format!("endpoint rpc://kv@{addr} ")),
            "{text}"
        );
        assert!(
            text.contains("takes messages of type CounterMsg, not KvMsg"),
            "{text}"
        );
        // A one-way message of the wrong type reaches on_error, not receive.
        kv.send(KvMsg::Len).unwrap();
        match recv_within(&seen, 10) {
            RpcError::MessageType { takes, .. } => assert_eq!(&*takes, "CounterMsg"),
            other => panic!("expected MessageType, got {other:?}"),
        }
    }
    // The counter was never handed a KvMsg.
    let counter = client
        .setup_endpoint_ref::<CounterMsg>(&addr, "kv")
        .unwrap();
    assert_eq!(counter.ask_sync::<u64>(CounterMsg::Get).unwrap(), 0);
    client.shutdown();
    server.shutdown();
}

mod v1 {
    use serde::{Deserialize, Serialize};

    /// Version 1 of a protocol.
    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) enum Msg {
        Ping(u64),
        Echo(String),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Point {
        pub(crate) x: u64,
    }
}

mod v2 {
    use serde::{Deserialize, Serialize};

    /// Version 2: a variant appended (wire-compatible with version 1 for the old ones).
    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) enum Msg {
        Ping(u64),
        Echo(String),
        Shout(String),
    }

    /// Version 2 of the reply: a field added (not wire-compatible).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Point {
        pub(crate) x: u64,
        pub(crate) y: u64,
    }
}

/// A version-1 endpoint: it answers `Ping` with a version-1 `Point`.
struct V1;

impl RpcEndpoint for V1 {
    type Message = v1::Msg;

    fn receive_and_reply(
        &mut self,
        msg: v1::Msg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<v1::Msg>,
    ) {
        match msg {
            v1::Msg::Ping(x) => reply.reply(v1::Point { x }),
            v1::Msg::Echo(text) => reply.reply(text),
        }
    }
}

/// The compatibility rules of the crate docs: types match by name, so a copy of the enum
/// in another module (or program) with a variant appended works for the variants both
/// know; a variant the endpoint does not know, or a reply whose shape changed, is a
/// `Decode` error that names the type and the endpoint.
#[test]
fn message_enums_stay_compatible_when_variants_are_appended() {
    let server = server_env("versions");
    let addr = address_of(&server);
    let local = server.setup_endpoint("proto", V1).unwrap();
    let client = client_env("versions-client");
    // Looked up with version 2 of the enum: the same name, so the lookup succeeds.
    let remote = client
        .setup_endpoint_ref::<v2::Msg>(&addr, "proto")
        .unwrap();
    let local_v2 = server
        .setup_endpoint_ref::<v2::Msg>(&addr, "proto")
        .unwrap();
    for proto in [&remote, &local_v2] {
        assert_eq!(
            proto
                .ask_sync::<String>(v2::Msg::Echo("hi".into()))
                .unwrap(),
            "hi"
        );
        assert_eq!(
            proto.ask_sync::<v1::Point>(v2::Msg::Ping(4)).unwrap(),
            v1::Point { x: 4 }
        );
        // The appended variant is not one the endpoint knows.
        let err = proto
            .ask_sync::<String>(v2::Msg::Shout("HI".into()))
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RpcError::Decode { .. }), "{err:?}");
        assert!(
            text.contains("message for endpoint proto as Msg"),
            "{text:?}"
        );
        // A reply of the same name but another shape does not decode, naming the type.
        let err = proto.ask_sync::<v2::Point>(v2::Msg::Ping(4)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RpcError::Decode { .. }), "{err:?}");
        assert!(text.contains("the reply of endpoint proto"), "{text:?}");
        assert!(text.contains("as Point"), "{text:?}");
    }
    // The version-1 reference still works.
    assert_eq!(
        local.ask_sync::<v1::Point>(v1::Msg::Ping(1)).unwrap(),
        v1::Point { x: 1 }
    );
    client.shutdown();
    server.shutdown();
}

/// What an ask handler saw of its context.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    self_uri: String,
    env_name: String,
    sender: Option<RpcAddress>,
}

#[derive(Debug, Serialize, Deserialize)]
enum CtxMsg {
    Note,
    Notes,
    Inspect,
}

#[derive(Default)]
struct Inspector {
    notes: u64,
}

impl RpcEndpoint for Inspector {
    type Message = CtxMsg;

    fn receive(&mut self, msg: CtxMsg, _ctx: &EndpointContext<CtxMsg>) {
        if let CtxMsg::Note = msg {
            self.notes += 1;
        }
    }

    fn receive_and_reply(
        &mut self,
        msg: CtxMsg,
        reply: RpcCallContext,
        ctx: &EndpointContext<CtxMsg>,
    ) {
        match msg {
            CtxMsg::Note => reply.send_failure("Note is one-way"),
            CtxMsg::Notes => reply.reply(self.notes),
            CtxMsg::Inspect => {
                assert_eq!(ctx.sender_address(), reply.sender_address());
                // Its own reference works from the handler: a note to itself, handled
                // after this ask.
                let me = ctx.self_ref();
                me.send(CtxMsg::Note).unwrap();
                reply.reply(Seen {
                    self_uri: me.uri(),
                    env_name: ctx.env().name().to_owned(),
                    sender: ctx.sender_address(),
                });
            }
        }
    }
}

#[test]
fn receive_and_reply_gets_the_context_its_env_its_own_ref_and_the_sender() {
    let server = server_env("inspected");
    let addr = address_of(&server);
    server
        .setup_endpoint("inspector", Inspector::default())
        .unwrap();
    let peer = server_env("inspecting-peer");
    let client = client_env("inspecting-client");
    let mut expected_notes = 0;
    for (env, sender) in [(&peer, Some(address_of(&peer))), (&client, None)] {
        let inspector = env
            .setup_endpoint_ref::<CtxMsg>(&addr, "inspector")
            .unwrap();
        expected_notes += 1;
        let seen = inspector.ask_sync::<Seen>(CtxMsg::Inspect).unwrap();
        assert_eq!(seen.self_uri, format!("rpc://inspector@{addr}"));
        assert_eq!(seen.env_name, "inspected");
        assert_eq!(seen.sender, sender);
        // The note it sent itself was queued before this ask.
        assert_eq!(
            inspector.ask_sync::<u64>(CtxMsg::Notes).unwrap(),
            expected_notes
        );
    }
    client.shutdown();
    peer.shutdown();
    server.shutdown();
}

/// A request above the receiver's `rpc.message.maxSize` (the sender allows it) is
/// answered with a failure naming both sizes and the key: the caller gets
/// `FrameTooLarge` with the sizes, at once, and the receiver goes on serving.
#[test]
fn an_over_size_request_is_answered_with_both_sizes_and_the_key() {
    let server = server_env_with("small-frames", rpc_conf().set("rpc.message.maxSize", "64k"));
    let addr = address_of(&server);
    server.setup_endpoint("kv", Kv::default()).unwrap();
    let client = client_env("big-frames");
    let kv = client.setup_endpoint_ref::<KvMsg>(&addr, "kv").unwrap();
    let big = "x".repeat(100 * 1024);
    let started = std::time::Instant::now();
    let err = kv
        .ask_sync::<Option<String>>(KvMsg::Put("k".into(), big))
        .unwrap_err();
    assert!(
        started.elapsed() < crate::support::PROMPTLY,
        "took {:?}",
        started.elapsed()
    );
    match &err {
        RpcError::FrameTooLarge { size, max } => {
            assert!(*size > 100 * 1024 && *size < 101 * 1024, "{err}");
            assert_eq!(*max, 64 * 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("rpc.message.maxSize"), "{text}");
    assert!(text.contains("65536"), "{text}");
    // Also when the frame is far larger than the socket buffers take at once.
    let huge = "x".repeat(8 << 20);
    let err = kv
        .ask_sync::<Option<String>>(KvMsg::Put("k".into(), huge))
        .unwrap_err();
    assert!(
        matches!(err, RpcError::FrameTooLarge { size, max: 65536 } if size > 8 << 20),
        "{err:?}"
    );
    // The sender reconnects and goes on; so does the receiver.
    assert_eq!(
        kv.ask_sync::<Option<String>>(KvMsg::Put("k".into(), "small".into()))
            .unwrap(),
        None
    );
    client.shutdown();
    server.shutdown();
}

/// Messages of an endpoint that answers with borrowed `'static` values, as a new user
/// writes `reply.reply("pong")`.
#[derive(Debug, Serialize, Deserialize)]
enum Borrowed {
    /// Replies with a `&'static str`.
    Ping,
    /// Replies with an `Option<&'static str>`.
    Label(bool),
    /// Replies with a `&'static [u8]`.
    Bytes,
    /// Replies with a `(&'static [&'static str], &'static [u8; 2])`.
    Nested,
}

struct BorrowedReplies;

impl RpcEndpoint for BorrowedReplies {
    type Message = Borrowed;

    fn receive_and_reply(
        &mut self,
        msg: Borrowed,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Borrowed>,
    ) {
        match msg {
            Borrowed::Ping => reply.reply("pong"),
            Borrowed::Label(some) => reply.reply(some.then_some("label")),
            Borrowed::Bytes => reply.reply(&b"abc"[..]),
            Borrowed::Nested => reply.reply((&["a", "b"][..], b"xy")),
        }
    }
}

/// A reference serializes as what it refers to, and no asker can name a borrowed type
/// (replies are `DeserializeOwned`): a `&str` reply is received as a `String`, a `&[T]`
/// as a `Vec<T>`, any other `&T` as a `T`, locally and remotely, never as a type error.
#[test]
fn borrowed_static_replies_are_received_as_their_owned_types() {
    let server = server_env("borrowed-server");
    let local = server.setup_endpoint("borrowed", BorrowedReplies).unwrap();
    let addr = address_of(&server);
    let client = client_env("borrowed-client");
    let remote = client
        .setup_endpoint_ref::<Borrowed>(&addr, "borrowed")
        .unwrap();
    for target in [&local, &remote] {
        assert_eq!(target.ask_sync::<String>(Borrowed::Ping).unwrap(), "pong");
        assert_eq!(
            target
                .ask_sync::<Option<String>>(Borrowed::Label(true))
                .unwrap(),
            Some("label".to_owned())
        );
        assert_eq!(
            target
                .ask_sync::<Option<String>>(Borrowed::Label(false))
                .unwrap(),
            None
        );
        assert_eq!(
            target.ask_sync::<Vec<u8>>(Borrowed::Bytes).unwrap(),
            b"abc".to_vec()
        );
        assert_eq!(
            target
                .ask_sync::<(Vec<String>, [u8; 2])>(Borrowed::Nested)
                .unwrap(),
            (vec!["a".to_owned(), "b".to_owned()], *b"xy")
        );
        // Another type is still an error naming both, as the endpoint spelled its type.
        let err = target.ask_sync::<u64>(Borrowed::Ping).unwrap_err();
        assert!(
            err.to_string()
                .contains("replied with &str, the ask expected u64"),
            "{err}"
        );
    }
    client.shutdown();
    server.shutdown();
}

/// A request envelope of another version (an older rpcenv, or a flow-control body sent as
/// a request) is answered with a failure that says which versions meet and what to do,
/// not only "cannot decode"; the connection and the endpoint go on.
#[test]
fn a_request_envelope_of_another_version_is_answered_naming_both_versions() {
    let server = server_env("envelope-versions");
    server.setup_endpoint("kv", Kv::default()).unwrap();
    let peer = crate::support::ClientSide::new(&[]);
    let client = peer.connect(address_of(&server).port());
    let envelope = |version: u8| {
        let mut body = vec![version, 0, 0, 2, b'k', b'v'];
        body.extend_from_slice(&[0; 16]);
        body.push(3); // KvMsg::Len
        body
    };
    for (version, needles) in [
        (
            1u8,
            &["envelope version 1", "speaks 3", "same version of rpcenv"][..],
        ),
        (9, &["envelope version 9", "speaks 3"]),
        (2, &["flow-control", "one-way"]),
    ] {
        let err = client.send_rpc_sync(envelope(version), LONG).unwrap_err();
        let text = err.to_string();
        for needle in needles {
            assert!(text.contains(needle), "{text:?} should say {needle:?}");
        }
    }
    // The current version is served on the same connection.
    let reply = client.send_rpc_sync(envelope(3), LONG).unwrap();
    assert_eq!(reply, [0, 0], "a reply envelope of 0u64");
    drop(client);
    server.shutdown();
}

/// Answers a `usize` with a `String` of that many bytes.
struct Sized_;

impl RpcEndpoint for Sized_ {
    type Message = usize;

    fn receive_and_reply(&mut self, n: usize, reply: RpcCallContext, _: &EndpointContext<usize>) {
        reply.reply("x".repeat(n))
    }
}

/// Asks `sized` (in `server`) from `client` for a 100 KiB reply, where one side allows
/// 64 KiB: the ask fails at once with `FrameTooLarge` and both sizes, and the next ask
/// works.
fn assert_over_size_reply_fails_with_both_sizes(server: RpcEnv, client: RpcEnv) {
    server.setup_endpoint("sized", Sized_).unwrap();
    let addr = address_of(&server);
    let sized = client.setup_endpoint_ref::<usize>(&addr, "sized").unwrap();
    let started = std::time::Instant::now();
    let err = sized.ask_sync::<String>(100 * 1024).unwrap_err();
    assert!(started.elapsed() < crate::support::PROMPTLY);
    match &err {
        RpcError::FrameTooLarge { size, max } => {
            assert!(*size > 100 * 1024 && *size < 101 * 1024, "{err}");
            assert_eq!(*max, 64 * 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(sized.ask_sync::<String>(3).unwrap(), "xxx");
    client.shutdown();
    server.shutdown();
}

/// A reply above the asker's own `rpc.message.maxSize` fails that ask with
/// `FrameTooLarge` and both sizes (the asker read the reply's id before refusing it), not
/// with a closed connection; the asker reconnects for the next ask.
#[test]
fn an_over_size_reply_fails_its_ask_with_both_sizes() {
    assert_over_size_reply_fails_with_both_sizes(
        server_env("big-replies"),
        client_env_with(
            "small-frames-asker",
            rpc_conf().set("rpc.message.maxSize", "64k"),
        ),
    );
}

/// A reply above the replier's own `rpc.message.maxSize` is not sent; the asker gets
/// `FrameTooLarge` with the replier's sizes (not a `Remote` failure to parse), at once,
/// and the connection still serves the next ask.
#[test]
fn a_reply_above_the_repliers_maximum_fails_the_ask_with_both_sizes() {
    assert_over_size_reply_fails_with_both_sizes(
        server_env_with(
            "small-replies",
            rpc_conf().set("rpc.message.maxSize", "64k"),
        ),
        client_env("big-frames-asker"),
    );
}
