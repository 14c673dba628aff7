//! [`RpcEnvHandler`]: the transport handler of every connection of an env. It reads the
//! envelope of each request, hands the message to the dispatcher (the message itself is
//! decoded later, on the endpoint's thread), and turns connections into the
//! `on_connected` / `on_disconnected` / `on_network_error` events of every endpoint.
//!
//! A connection is announced (`Connected`) once, with the best address known for the
//! peer: the address this env dialed for an outbound connection; for an inbound one, the
//! listen address its first message names, or its socket address when it comes from a
//! client-mode env. `Disconnected` and `NetworkError` follow only for announced
//! connections, with the same address.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use log::debug;

use crate::error::RpcError;
use crate::log_limit::{kind, peer_warn};
use crate::rpc::address::{RpcAddress, endpoint_uri};
use crate::rpc::call::RpcCallContext;
use crate::rpc::env::EnvInner;
use crate::rpc::envelope::{self, Control, RequestHeader, Sender};
use crate::rpc::flow::Inflow;
use crate::rpc::inbox::{Inbox, InboxMessage, Payload};
use crate::sync::{Arc, Mutex, Weak};
use crate::transport::{Responder, RpcHandler, StreamBody, TransportClient};

/// What the handler keeps for one connection (its attachment): its flow-control state,
/// and what its earlier requests already told, so that a run of requests from one sender
/// to one endpoint makes its sender's address and finds its endpoint once.
struct Inbound {
    inflow: Arc<Inflow>,
    /// Only the connection's event loop takes it, one request at a time.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The sender field of the last request that named one, and the address made of it.
    sender: Option<(Box<str>, u16, RpcAddress)>,
    /// The connection was announced: requests need not look again.
    announced: bool,
    /// The inbox the last request went to; used again while it is not stopped.
    inbox: Option<Arc<Inbox>>,
}

impl Seen {
    /// The address `sender` names, made once per sender field.
    fn sender(&mut self, sender: Option<Sender<'_>>) -> Option<RpcAddress> {
        let sender = sender?;
        if let Some((host, port, address)) = &self.sender {
            if **host == *sender.host && *port == sender.port {
                return Some(address.clone());
            }
        }
        let address = sender.address();
        self.sender = Some((sender.host.into(), sender.port, address.clone()));
        Some(address)
    }
}

/// The handler behind an env's transport.
pub(crate) struct RpcEnvHandler {
    env: OnceLock<Weak<EnvInner>>,
    /// Connection id → the address it was announced with.
    announced: Mutex<HashMap<u64, RpcAddress>>,
}

impl RpcEnvHandler {
    pub(crate) fn new() -> Self {
        Self {
            env: OnceLock::new(),
            announced: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn set_env(&self, env: Weak<EnvInner>) {
        let _ = self.env.set(env);
    }

    fn env(&self) -> Option<Arc<EnvInner>> {
        self.env.get().and_then(Weak::upgrade)
    }

    /// Posts `Connected(address)` for `client`'s connection unless it was announced;
    /// `address` is made only then. Returns whether the connection is announced (now or
    /// before); `false` once it is inactive.
    pub(crate) fn announce(
        &self,
        env: &EnvInner,
        client: &TransportClient,
        address: impl FnOnce() -> RpcAddress,
    ) -> bool {
        let mut announced = self.announced.lock();
        if !client.is_active() {
            return false;
        }
        if announced.contains_key(&client.id()) {
            return true;
        }
        let address = address();
        announced.insert(client.id(), address.clone());
        debug!(
            "connection {} announced as {address} to the endpoints of {}",
            client.id(),
            env.name()
        );
        // Posted under the lock, so a Disconnected for the same connection comes after.
        env.dispatcher()
            .post_to_all(|| InboxMessage::Connected(address.clone()));
        true
    }

    /// What this handler keeps for `client`'s connection (made on first use).
    fn inbound<'a>(&self, env: &EnvInner, client: &'a TransportClient) -> Option<&'a Inbound> {
        client.attachment(|| Inbound {
            inflow: Arc::new(Inflow::new(env.settings().inbox_capacity)),
            seen: Mutex::new(Seen::default()),
        })
    }

    /// The flow-control state of `client`'s connection (made on first use).
    fn inflow(&self, env: &EnvInner, client: &TransportClient) -> Option<Arc<Inflow>> {
        self.inbound(env, client)
            .map(|inbound| Arc::clone(&inbound.inflow))
    }

    /// For a request from `sender` to `receiver` on `client`'s connection: the sender's
    /// address, and the inbox of the endpoint or why there is none. Announces the
    /// connection (an inbound one with its sender's address) unless it was.
    fn route(
        &self,
        env: &EnvInner,
        client: &TransportClient,
        inbound: Option<&Inbound>,
        sender: Option<Sender<'_>>,
        receiver: &str,
    ) -> (Option<RpcAddress>, Result<Arc<Inbox>, RpcError>) {
        let resolve = || {
            env.dispatcher()
                .resolve(receiver, || endpoint_uri(env.address(), receiver))
        };
        let Some(inbound) = inbound else {
            let sender = sender.map(Sender::address);
            self.announce_sender(env, client, sender.as_ref());
            return (sender, resolve());
        };
        let mut seen = inbound.seen.lock();
        let sender = seen.sender(sender);
        if !seen.announced {
            seen.announced = self.announce_sender(env, client, sender.as_ref());
        }
        let cached = seen
            .inbox
            .as_ref()
            .filter(|inbox| **inbox.name() == *receiver && !inbox.is_stopped());
        if let Some(inbox) = cached {
            return (sender, Ok(Arc::clone(inbox)));
        }
        let resolved = resolve();
        seen.inbox = resolved.as_ref().ok().cloned();
        (sender, resolved)
    }

    /// A control message from the peer (see `flow`).
    fn control(&self, env: &EnvInner, client: &TransportClient, body: &[u8]) {
        match envelope::decode_control(body) {
            Ok(Control::Hello { window }) => {
                debug!(
                    "{} speaks flow control, windows of {window} bytes",
                    client.remote_address()
                );
                if let Some(inflow) = self.inflow(env, client) {
                    inflow.peer_said_hello();
                }
                client.set_flow_controlled(window as usize);
            }
            Ok(Control::Grant { endpoint, bytes }) => client.grant(endpoint, bytes as usize),
            Err(err) => peer_warn!(
                env.counters().log_limit,
                client.remote_address(),
                kind::BAD_CONTROL,
                "bad control message from {}: {err:#}",
                client.remote_address()
            ),
        }
    }

    fn header<'a>(
        &self,
        client: &TransportClient,
        body: &'a [u8],
    ) -> Result<RequestHeader<'a>, RpcError> {
        envelope::decode_request(body).inspect_err(|err| {
            peer_warn!(
                client.conn().env_counters().log_limit,
                client.remote_address(),
                kind::BAD_REQUEST,
                "bad request from {}: {err:#}",
                client.remote_address()
            );
        })
    }

    /// Announces an inbound connection with its sender's listen address, or its socket
    /// address when the sender is a client-mode env; whether it is announced.
    fn announce_sender(
        &self,
        env: &EnvInner,
        client: &TransportClient,
        sender: Option<&RpcAddress>,
    ) -> bool {
        self.announce(env, client, || match sender {
            Some(address) => address.clone(),
            None => RpcAddress::from_socket_addr(client.remote_address()),
        })
    }
}

impl RpcHandler for RpcEnvHandler {
    /// Streams are the env's file server (Spark's `NettyRpcHandler.getStreamManager`).
    fn open_stream(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<Option<StreamBody>, String> {
        let Some(env) = self.env() else {
            return Ok(None);
        };
        // Counted, and logged (rate-limited) when refused, by the file server.
        let peer = Some(client.remote_address());
        env.file_server()
            .open_stream_from(stream_id, peer, &env.counters().log_limit)
    }

    fn receive(&self, client: &TransportClient, message: Vec<u8>, responder: Responder) {
        let Some(env) = self.env() else {
            responder.reply(envelope::encode_reply_error(&RpcError::EnvStopped));
            return;
        };
        let RequestHeader {
            sender,
            receiver,
            message_type,
            reply_type,
            content_start,
        } = match self.header(client, &message) {
            Ok(header) => header,
            Err(err) => {
                // An RpcFailure, which any peer reads (one of another envelope version
                // included), saying why.
                responder.fail(err.to_string());
                return;
            }
        };
        let inbound = self.inbound(&env, client);
        let (sender, resolved) = self.route(&env, client, inbound, sender, receiver);
        let inbox = match resolved {
            Ok(inbox) => inbox,
            Err(err) => {
                if let Some(inbound) = inbound {
                    inbound.inflow.refund(client, receiver, message.len());
                }
                if !matches!(err, RpcError::EnvStopped) {
                    // The asker hears why; counted, logged only at debug.
                    let limit = &env.counters().log_limit;
                    let _ = limit.admit(Some(client.remote_address()), kind::UNKNOWN_ENDPOINT);
                    debug!("ask from {}: {err:#}", client.remote_address());
                }
                responder.reply(envelope::encode_reply_error(&err));
                return;
            }
        };
        let reply = RpcCallContext::remote(responder, Arc::clone(inbox.name()), sender, reply_type);
        let Some(inbound) = inbound else {
            reply.fail(RpcError::EnvStopped);
            return;
        };
        let charge = inbound.inflow.received(client, inbox.name(), message.len());
        let msg = InboxMessage::Ask {
            payload: Payload::Remote {
                body: message,
                start: content_start,
                message_type,
                client: client.clone(),
                charge,
            },
            reply,
        };
        // A failure is answered through the context the message carries.
        let _ = inbox.post(msg);
    }

    fn receive_one_way(&self, client: &TransportClient, message: Vec<u8>) {
        let Some(env) = self.env() else { return };
        if envelope::is_control(&message) {
            self.control(&env, client, &message);
            return;
        }
        let Ok(header) = self.header(client, &message) else {
            return;
        };
        let RequestHeader {
            sender,
            receiver,
            message_type,
            reply_type: _,
            content_start,
        } = header;
        let inbound = self.inbound(&env, client);
        let (sender, resolved) = self.route(&env, client, inbound, sender, receiver);
        if resolved.is_err() {
            if let Some(inbound) = inbound {
                inbound.inflow.refund(client, receiver, message.len());
            }
        }
        let posted = resolved.and_then(|inbox| {
            let inbound = inbound.ok_or(RpcError::EnvStopped)?;
            let charge = inbound.inflow.received(client, inbox.name(), message.len());
            inbox.post(InboxMessage::OneWay {
                sender,
                payload: Payload::Remote {
                    start: content_start,
                    message_type,
                    body: message,
                    client: client.clone(),
                    charge,
                },
            })
        });
        if let Err(err) = posted {
            peer_warn!(
                env.counters().log_limit,
                client.remote_address(),
                kind::UNKNOWN_ENDPOINT,
                "one-way message from {} dropped: {err:#}",
                client.remote_address()
            );
        }
    }

    fn channel_active(&self, client: &TransportClient) {
        // Every rpcenv connection opens with a hello, both ways: the peer then keeps to the
        // windows, and this side never stops reading it (see `flow`).
        let Some(env) = self.env() else { return };
        let window = env.settings().inbox_capacity;
        if let Err(err) = client.send_control(envelope::encode_hello(window)) {
            debug!("hello to {} not sent: {err:#}", client.remote_address());
        }
    }

    fn channel_inactive(&self, client: &TransportClient) {
        let mut announced = self.announced.lock();
        let Some(address) = announced.remove(&client.id()) else {
            return;
        };
        if let Some(env) = self.env() {
            debug!("connection {} to {address} closed", client.id());
            env.dispatcher()
                .post_to_all(|| InboxMessage::Disconnected(address.clone()));
        }
    }

    fn exception_caught(&self, error: &RpcError, client: &TransportClient) {
        let announced = self.announced.lock();
        let Some(address) = announced.get(&client.id()) else {
            return;
        };
        if let Some(env) = self.env() {
            env.dispatcher()
                .post_to_all(|| InboxMessage::NetworkError(error.clone(), address.clone()));
        }
    }
}

impl fmt::Debug for RpcEnvHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcEnvHandler")
            .field("announced", &self.announced.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_field_seen_before_gives_the_same_address_without_making_it_again() {
        let mut seen = Seen::default();
        let field = Sender {
            host: "0:0:0:0:0:0:0:1",
            port: 7077,
        };
        let first = seen.sender(Some(field)).expect("an address");
        assert_eq!(first, RpcAddress::new("::1", 7077));
        let again = seen.sender(Some(field)).expect("an address");
        assert_eq!(again, first);
        // The address was copied, not made again: the host is shared.
        assert_eq!(again.host().as_ptr(), first.host().as_ptr());

        let other_port = seen
            .sender(Some(Sender {
                host: "0:0:0:0:0:0:0:1",
                port: 7078,
            }))
            .expect("an address");
        assert_eq!(other_port, RpcAddress::new("::1", 7078));
        let other_host = seen
            .sender(Some(Sender {
                host: "10.0.0.1",
                port: 7078,
            }))
            .expect("an address");
        assert_eq!(other_host, RpcAddress::new("10.0.0.1", 7078));
        assert_eq!(seen.sender(None), None);
    }
}
