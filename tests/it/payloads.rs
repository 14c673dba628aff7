//! Byte payloads (issue 11): `serde_bytes::ByteBuf`, `bytes::Bytes` and `Vec<u8>` go
//! through an ask to another env and back intact, at sizes around the codec's and the
//! transport's edges; a received `SharedBytes` is a view of the received frame, and
//! interoperates with a `ByteBuf` on the other side.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use rpcenv::{EndpointContext, RpcCallContext, RpcEndpoint, RpcError, SharedBytes};

use crate::support::{
    address_of, client_env, client_env_with, rpc_conf, server_env, server_env_with,
};

/// The same bytes, carried three ways; each is answered in kind.
#[derive(Debug, Serialize, Deserialize)]
enum PayloadMsg {
    /// Answered with a `ByteBuf` of the bytes reversed.
    Buf(ByteBuf),
    /// Answered with a `Bytes` of the bytes reversed.
    Shared(Bytes),
    /// Answered with a `Vec<u8>` of the bytes reversed.
    Raw(Vec<u8>),
}

struct Reverser;

impl RpcEndpoint for Reverser {
    type Message = PayloadMsg;

    fn receive_and_reply(
        &mut self,
        msg: PayloadMsg,
        reply: RpcCallContext,
        _ctx: &EndpointContext<PayloadMsg>,
    ) {
        match msg {
            PayloadMsg::Buf(buf) => {
                let mut bytes = buf.into_vec();
                bytes.reverse();
                reply.reply(ByteBuf::from(bytes));
            }
            PayloadMsg::Shared(shared) => {
                let mut bytes = shared.to_vec();
                bytes.reverse();
                reply.reply(Bytes::from(bytes));
            }
            PayloadMsg::Raw(mut bytes) => {
                bytes.reverse();
                reply.reply(bytes);
            }
        }
    }
}

/// `len` bytes that differ from their neighbours, so a shifted or reordered copy shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn byte_payloads_round_trip_through_an_ask() {
    let server = server_env("payload-server");
    server
        .setup_endpoint("reverse", Reverser)
        .expect("endpoint");
    let client = client_env("payload-client");
    let reverse = client
        .setup_endpoint_ref::<PayloadMsg>(&address_of(&server), "reverse")
        .expect("lookup");
    // Around the varint widths of the length (250, 2^16) and the transport's flattening
    // of small frames (1 KiB) and its body reads (64 KiB).
    for len in [0, 1, 250, 251, 1000, 1100, 65_535, 65_536, 70_000, 1 << 20] {
        let bytes = pattern(len);
        let mut reversed = bytes.clone();
        reversed.reverse();

        let buf: ByteBuf = reverse
            .ask_sync(PayloadMsg::Buf(ByteBuf::from(bytes.clone())))
            .unwrap_or_else(|err| panic!("ByteBuf of {len}: {err}"));
        assert_eq!(buf.as_slice(), reversed.as_slice(), "ByteBuf of {len}");

        let shared: Bytes = reverse
            .ask_sync(PayloadMsg::Shared(Bytes::from(bytes.clone())))
            .unwrap_or_else(|err| panic!("Bytes of {len}: {err}"));
        assert_eq!(shared.as_ref(), reversed.as_slice(), "Bytes of {len}");

        let raw: Vec<u8> = reverse
            .ask_sync(PayloadMsg::Raw(bytes))
            .unwrap_or_else(|err| panic!("Vec<u8> of {len}: {err}"));
        assert_eq!(raw, reversed, "Vec<u8> of {len}");
    }
    client.shutdown();
    server.shutdown();
}

/// The message of the `SharedBytes` side.
mod shared_side {
    use rpcenv::SharedBytes;
    use serde::{Deserialize, Serialize};

    /// The same name and layout as `buf_side::Chunk`: the two interoperate.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) enum Chunk {
        /// Two payloads.
        Data(SharedBytes, SharedBytes),
        /// The answer of a receiver whose two payloads were not views of one frame.
        Copied,
    }
}

/// The message of the `ByteBuf` side.
mod buf_side {
    use serde::{Deserialize, Serialize};
    use serde_bytes::ByteBuf;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) enum Chunk {
        Data(ByteBuf, ByteBuf),
        Copied,
    }
}

/// Whether `second` starts where `first` ends plus the length of `second` (a varint of
/// 1, 3 or 5 bytes): both are views of one received frame (copies would be two separate
/// buffers). An empty view points nowhere in particular and proves nothing.
fn views_of_one_frame(first: &[u8], second: &[u8]) -> bool {
    let prefix = match second.len() {
        0..=250 => 1,
        251..=65_535 => 3,
        _ => 5,
    };
    first.is_empty()
        || second.is_empty()
        || first.as_ptr_range().end.wrapping_add(prefix) == second.as_ptr()
}

/// Answers `Data(a, b)` with `Data(b, a)` when `a` and `b` are views of the received
/// frame, `Copied` otherwise.
struct Swapper;

impl RpcEndpoint for Swapper {
    type Message = shared_side::Chunk;

    fn receive_and_reply(
        &mut self,
        msg: shared_side::Chunk,
        reply: RpcCallContext,
        _ctx: &EndpointContext<shared_side::Chunk>,
    ) {
        match msg {
            shared_side::Chunk::Data(a, b) if views_of_one_frame(&a, &b) => {
                reply.reply(shared_side::Chunk::Data(b, a));
            }
            _ => reply.reply(shared_side::Chunk::Copied),
        }
    }
}

#[test]
fn shared_bytes_are_views_of_the_received_frame_and_interoperate_with_byte_buf() {
    let server = server_env("shared-server");
    server.setup_endpoint("swap", Swapper).expect("endpoint");
    let client = client_env("shared-client");
    let as_shared = client
        .setup_endpoint_ref::<shared_side::Chunk>(&address_of(&server), "swap")
        .expect("lookup");
    let as_buf = client
        .setup_endpoint_ref::<buf_side::Chunk>(&address_of(&server), "swap")
        .expect("lookup");
    // Small frames (flattened by the transport) and large ones (read directly into the
    // frame body).
    for len in [0, 1, 1000, 70_000, 1 << 20] {
        let first = pattern(len);
        let second = pattern(200);

        // SharedBytes on both sides: views on the server and in the client's reply.
        let answer: shared_side::Chunk = as_shared
            .ask_sync(shared_side::Chunk::Data(
                SharedBytes::from(first.clone()),
                SharedBytes::from(second.clone()),
            ))
            .unwrap_or_else(|err| panic!("SharedBytes of {len}: {err}"));
        let shared_side::Chunk::Data(b, a) = answer else {
            panic!("the server's SharedBytes of {len} were copies")
        };
        assert_eq!((&*a, &*b), (&first[..], &second[..]), "len {len}");
        assert!(views_of_one_frame(&b, &a), "the reply of {len} was copied");

        // ByteBuf in, SharedBytes on the server (still views), ByteBuf out.
        let answer: buf_side::Chunk = as_buf
            .ask_sync(buf_side::Chunk::Data(
                ByteBuf::from(first.clone()),
                ByteBuf::from(second.clone()),
            ))
            .unwrap_or_else(|err| panic!("ByteBuf of {len}: {err}"));
        assert_eq!(
            answer,
            buf_side::Chunk::Data(ByteBuf::from(second), ByteBuf::from(first)),
            "len {len}"
        );
    }
    client.shutdown();
    server.shutdown();
}

/// Answers a list of payloads with the same payloads in reverse order.
struct Reverse<T = SharedBytes>(std::marker::PhantomData<T>);

impl<T> Reverse<T> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T: Serialize + serde::de::DeserializeOwned + Send + 'static> RpcEndpoint for Reverse<T> {
    type Message = Vec<T>;

    fn receive_and_reply(
        &mut self,
        mut msg: Vec<T>,
        reply: RpcCallContext,
        _ctx: &EndpointContext<Vec<T>>,
    ) {
        msg.reverse();
        reply.reply(msg);
    }
}

/// Payloads of several sizes around the size above which a `SharedBytes` is written from
/// its own buffer rather than copied into the frame (16 KiB).
fn payloads() -> Vec<SharedBytes> {
    [0, 100, 16 * 1024 - 1, 16 * 1024, 70_000, 3 << 20]
        .into_iter()
        .enumerate()
        .map(|(i, len)| SharedBytes::from((0..len).map(|b| (b + i) as u8).collect::<Vec<u8>>()))
        .collect()
}

/// `SharedBytes` sent to an endpoint of the same env are moved, never encoded: the
/// reply's payloads are the very buffers sent.
#[test]
fn shared_bytes_to_a_local_endpoint_are_the_buffers_sent() {
    let env = server_env("shared-local");
    let reverse = env
        .setup_endpoint("reverse", Reverse::<SharedBytes>::new())
        .expect("endpoint");
    let sent = payloads();
    let answer: Vec<SharedBytes> = reverse.ask_sync(sent.clone()).expect("a local ask");
    assert_eq!(answer.len(), sent.len());
    for (back, sent) in answer.iter().rev().zip(&sent) {
        assert_eq!(back.as_ptr(), sent.as_ptr(), "moved, not copied");
    }
    env.shutdown();
}

/// Large `SharedBytes` in a request and in its reply (written from their own buffers)
/// arrive as the copied bytes would, next to small ones (copied into the frame).
#[test]
fn shared_bytes_of_every_size_go_to_another_env_and_back() {
    let server = server_env("shared-remote");
    server
        .setup_endpoint("reverse", Reverse::<SharedBytes>::new())
        .expect("endpoint");
    let client = client_env("shared-remote-client");
    let reverse = client
        .setup_endpoint_ref::<Vec<SharedBytes>>(&address_of(&server), "reverse")
        .expect("lookup");
    let sent = payloads();
    for _ in 0..3 {
        let mut answer: Vec<SharedBytes> = reverse.ask_sync(sent.clone()).expect("an ask");
        answer.reverse();
        assert!(answer == sent, "the payloads came back intact");
    }
    client.shutdown();
    server.shutdown();
}

/// A message with spliced `SharedBytes` counts against `rpc.message.maxSize` exactly as
/// the same bytes copied in (a `ByteBuf`): the same frame size in the error, and a frame
/// of exactly the maximum goes.
#[test]
fn shared_bytes_count_against_max_size_as_copied_bytes_do() {
    let max = 256 * 1024;
    // Endpoint names of the same length, so that the envelopes are too.
    let server = server_env("shared-max-server");
    server
        .setup_endpoint("shared", Reverse::<SharedBytes>::new())
        .expect("endpoint");
    server
        .setup_endpoint("copied", Reverse::<ByteBuf>::new())
        .expect("endpoint");
    let client = client_env_with(
        "shared-max-client",
        rpc_conf().set("rpc.message.maxSize", max.to_string()),
    );
    let as_shared = client
        .setup_endpoint_ref::<Vec<SharedBytes>>(&address_of(&server), "shared")
        .expect("lookup");
    let as_buf = client
        .setup_endpoint_ref::<Vec<ByteBuf>>(&address_of(&server), "copied")
        .expect("lookup");
    let too_large = |err: RpcError| match err {
        RpcError::FrameTooLarge { size, .. } => size,
        other => panic!("expected FrameTooLarge, got {other:?}"),
    };
    // Two payloads of 100,000 bytes (spliced) and a small one (copied): over by `excess`.
    let lens = [100_000, 100, 100_000];
    let shared: Vec<SharedBytes> = lens
        .iter()
        .map(|&n| SharedBytes::from(vec![1; n]))
        .collect();
    let bufs: Vec<ByteBuf> = lens.iter().map(|&n| ByteBuf::from(vec![1; n])).collect();
    let big = SharedBytes::from(vec![2; max]);
    let size = too_large(
        as_shared
            .ask_sync::<Vec<SharedBytes>>(vec![big.clone()])
            .unwrap_err(),
    );
    let size_buf = too_large(
        as_buf
            .ask_sync::<Vec<ByteBuf>>(vec![ByteBuf::from(vec![2; max])])
            .unwrap_err(),
    );
    assert_eq!(size, size_buf);
    // The frame's overhead beyond the payload; a payload that fills the frame exactly goes.
    let overhead = size - max as u64;
    let fits = max - overhead as usize;
    let answer: Vec<SharedBytes> = as_shared
        .ask_sync(vec![big.slice(..fits)])
        .expect("a frame of exactly rpc.message.maxSize");
    assert_eq!(answer[0].len(), fits);
    let over = as_shared.ask_sync::<Vec<SharedBytes>>(vec![big.slice(..fits + 1)]);
    assert_eq!(too_large(over.unwrap_err()), max as u64 + 1);
    // Several payloads, some spliced and some copied, under the limit: both arrive.
    assert_eq!(
        as_shared
            .ask_sync::<Vec<SharedBytes>>(shared.clone())
            .expect("ask")
            .len(),
        3
    );
    assert_eq!(as_buf.ask_sync::<Vec<ByteBuf>>(bufs).expect("ask").len(), 3);
    client.shutdown();
    server.shutdown();
}

/// The answer of [`Filler`] as it is sent: a `ByteBuf`, copied into the frame.
mod filled_buf {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(crate) struct Filled(pub(crate) serde_bytes::ByteBuf);
}

/// The answer of [`Filler`] as the caller takes it: a view of the received frame.
mod filled_shared {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(crate) struct Filled(pub(crate) rpcenv::SharedBytes);
}

/// Answers `(seed, len)` with `len` bytes of [`seeded`]`(seed, len)`, copied into the
/// reply's frame: a buffer as large as the payload.
struct Filler;

impl RpcEndpoint for Filler {
    type Message = (u8, u32);

    fn receive_and_reply(
        &mut self,
        (seed, len): (u8, u32),
        reply: RpcCallContext,
        _ctx: &EndpointContext<(u8, u32)>,
    ) {
        reply.reply(filled_buf::Filled(ByteBuf::from(seeded(
            seed,
            len as usize,
        ))));
    }
}

/// `len` bytes that differ from their neighbours and from those of another seed.
fn seeded(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 7 + i / 251) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

fn reused(env: &rpcenv::RpcEnv) -> u64 {
    env.metrics().env.buffers_reused
}

/// Large answers are read into, and encoded into, buffers of earlier large frames (the
/// env's pool) once those were written or their last view dropped; a `SharedBytes` the
/// caller keeps holds its frame's buffer, which no later frame is given, so it stays
/// intact while the answers after it reuse other buffers. In the clear and encrypted.
#[test]
fn large_frames_reuse_pooled_buffers_and_kept_views_stay_intact() {
    let encrypted = rpc_conf()
        .set("rpc.authenticate", "true")
        .set("rpc.authenticate.secret", "pooled")
        .set("rpc.io.encryption.enabled", "true")
        .set("rpc.io.encryption.cipher", "AES/GCM/NoPadding");
    for (what, conf) in [("clear", rpc_conf()), ("aes-gcm", encrypted)] {
        let server = server_env_with("pooled-server", conf.clone());
        server.setup_endpoint("fill", Filler).expect("endpoint");
        let client = client_env_with("pooled-client", conf);
        let fill = client
            .setup_endpoint_ref::<(u8, u32)>(&address_of(&server), "fill")
            .expect("lookup");
        const LEN: usize = 3 << 20;
        const KEPT: u8 = 4;
        const LATER: u8 = 8;
        // Answers kept: each holds its frame's buffer, none is back in the pool.
        let kept: Vec<SharedBytes> = (0..KEPT)
            .map(|seed| {
                fill.ask_sync::<filled_shared::Filled>((seed, LEN as u32))
                    .unwrap_or_else(|err| panic!("{what}: kept ask {seed}: {err}"))
                    .0
            })
            .collect();
        let before = reused(&client);
        // Answers dropped at once: each frame's buffer goes back for the next one.
        for seed in KEPT..KEPT + LATER {
            let filled_shared::Filled(answer) = fill
                .ask_sync((seed, LEN as u32))
                .unwrap_or_else(|err| panic!("{what}: later ask {seed}: {err}"));
            assert!(*answer == seeded(seed, LEN)[..], "{what}: answer {seed}");
            for (held, view) in kept.iter().enumerate() {
                assert!(
                    !view.as_ptr_range().contains(&answer.as_ptr()),
                    "{what}: answer {seed} was read into kept answer {held}'s buffer"
                );
            }
        }
        let later = reused(&client) - before;
        assert!(
            later >= u64::from(LATER) - 1,
            "{what}: {later} of {LATER} answers read into a reused buffer"
        );
        assert!(
            reused(&server) > 0,
            "{what}: the server encodes into reused buffers"
        );
        for (seed, view) in kept.iter().enumerate() {
            assert!(
                **view == seeded(seed as u8, LEN)[..],
                "{what}: kept answer {seed} changed"
            );
        }
        drop(kept);
        client.shutdown();
        server.shutdown();
    }
}
