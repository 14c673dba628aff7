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
use crate::rpc::envelope::{self, Control, RequestHeader};
use crate::rpc::flow::Inflow;
use crate::rpc::inbox::{InboxMessage, Payload};
use crate::sync::{Arc, Mutex, Weak};
use crate::transport::{Responder, RpcHandler, StreamBody, TransportClient};

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
    /// `address` is made only then.
    pub(crate) fn announce(
        &self,
        env: &EnvInner,
        client: &TransportClient,
        address: impl FnOnce() -> RpcAddress,
    ) {
        let mut announced = self.announced.lock();
        if !client.is_active() || announced.contains_key(&client.id()) {
            return;
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
    }

    /// The flow-control state of `client`'s connection (made on first use).
    fn inflow(&self, env: &EnvInner, client: &TransportClient) -> Option<Arc<Inflow>> {
        client.attachment(|| Inflow::new(env.settings().inbox_capacity))
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
    /// address when the sender is a client-mode env.
    fn announce_sender(
        &self,
        env: &EnvInner,
        client: &TransportClient,
        sender: Option<&RpcAddress>,
    ) {
        self.announce(env, client, || match sender {
            Some(address) => address.clone(),
            None => RpcAddress::from_socket_addr(client.remote_address()),
        });
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
        self.announce_sender(&env, client, sender.as_ref());
        let inbox = match env
            .dispatcher()
            .resolve(receiver, || endpoint_uri(env.address(), receiver))
        {
            Ok(inbox) => inbox,
            Err(err) => {
                if let Some(inflow) = self.inflow(&env, client) {
                    inflow.refund(client, receiver, message.len());
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
        let Some(inflow) = self.inflow(&env, client) else {
            reply.fail(RpcError::EnvStopped);
            return;
        };
        let charge = inflow.received(client, inbox.name(), message.len());
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
        self.announce_sender(&env, client, header.sender.as_ref());
        let RequestHeader {
            sender,
            receiver,
            message_type,
            reply_type: _,
            content_start,
        } = header;
        let inflow = self.inflow(&env, client);
        let resolved = env
            .dispatcher()
            .resolve(receiver, || endpoint_uri(env.address(), receiver));
        if resolved.is_err() {
            if let Some(inflow) = &inflow {
                inflow.refund(client, receiver, message.len());
            }
        }
        let posted = resolved.and_then(|inbox| {
            let inflow = inflow.ok_or(RpcError::EnvStopped)?;
            let charge = inflow.received(client, inbox.name(), message.len());
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
