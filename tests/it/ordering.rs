//! Frames on one connection arrive in the order each thread sent them, whoever writes
//! them (the sender, a combining writer, or the event loop flushing a burst).

use std::sync::{Arc, Mutex};

use rpcenv::transport::{Responder, RpcHandler, TransportClient, TransportContext};

use crate::support::{HOST, LONG, init_logger, join, spawn, transport_conf};

const THREADS: u32 = 4;
const PER_THREAD: u32 = 5_000;

/// Records one-way messages and the bodies of requests, in arrival order.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(u32, u32)>>,
}

fn decode(message: &[u8]) -> (u32, u32) {
    let thread = u32::from_be_bytes(message[..4].try_into().unwrap());
    let seq = u32::from_be_bytes(message[4..8].try_into().unwrap());
    (thread, seq)
}

impl RpcHandler for Recorder {
    fn receive(&self, _client: &TransportClient, message: Vec<u8>, responder: Responder) {
        self.seen.lock().unwrap().push(decode(&message));
        responder.reply(message);
    }

    fn receive_one_way(&self, _client: &TransportClient, message: Vec<u8>) {
        self.seen.lock().unwrap().push(decode(&message));
    }
}

fn message(thread: u32, seq: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + (seq as usize % 300));
    body.extend(thread.to_be_bytes());
    body.extend(seq.to_be_bytes());
    // Varying sizes, so frames end at every offset of the write buffers.
    body.resize(8 + (seq as usize % 300), 0x5a);
    body
}

#[test]
fn per_sender_order_holds_with_many_threads_on_one_connection() {
    init_logger();
    let recorder = Arc::new(Recorder::default());
    let ctx = TransportContext::new(transport_conf(&[]), recorder.clone());
    let server = ctx.create_server(HOST, 0).unwrap();
    let factory = ctx.create_client_factory();
    let client = factory.create_client(HOST, server.port()).unwrap();

    let senders: Vec<_> = (0..THREADS)
        .map(|thread| {
            let client = client.clone();
            spawn("ordering-sender", move || {
                for seq in 0..PER_THREAD {
                    // Mostly one-way, every tenth a request answered asynchronously.
                    if seq % 10 == 9 {
                        client.send_rpc(message(thread, seq), |result| {
                            result.expect("the request is answered");
                        });
                    } else {
                        client.send(message(thread, seq)).unwrap();
                    }
                }
                // A synchronous request last: its answer means every frame before it on
                // this connection was handled.
                client
                    .send_rpc_sync(message(thread, PER_THREAD), LONG)
                    .unwrap();
            })
        })
        .collect();
    for sender in senders {
        join(sender);
    }

    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), (THREADS * (PER_THREAD + 1)) as usize);
    let mut next = vec![0u32; THREADS as usize];
    for (thread, seq) in seen {
        assert_eq!(seq, next[thread as usize], "thread {thread} out of order");
        next[thread as usize] += 1;
    }
    factory.close();
    server.close();
}
