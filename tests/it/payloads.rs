//! Byte payloads (issue 11): `serde_bytes::ByteBuf`, `bytes::Bytes` and `Vec<u8>` go
//! through an ask to another env and back intact, at sizes around the codec's and the
//! transport's edges.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use rpcenv::{EndpointContext, RpcCallContext, RpcEndpoint};

use crate::support::{address_of, client_env, server_env};

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
