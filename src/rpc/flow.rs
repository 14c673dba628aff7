//! Flow control between envs: a window per endpoint on each connection, so that a flood
//! to one endpoint neither grows its inbox without bound nor holds up anything else on
//! the connection.
//!
//! # The protocol (the HTTP/2 way, with endpoints as streams)
//!
//! - Each side of a connection opens with a *hello* control message: "I speak flow
//!   control, and each of my endpoints lets you have `window` bytes in flight"
//!   (`rpc.dispatcher.inboxCapacity`). Until the hello arrives a sender assumes the
//!   protocol's initial window of 64 KiB, which every receiver accepts.
//! - A message (one-way or ask) costs its frame body plus a fixed 256 bytes of the window of
//!   its endpoint on that connection. The sender holds messages that find no window, in
//!   order, per endpoint, in its write queue (senders wait beyond `rpc.io.maxQueuedBytes`
//!   of them); messages to other endpoints and answers go on.
//! - When an endpoint takes a message out of its inbox, the receiver owes the sender that
//!   message's cost, and *grants* it back in a control message once half a window is owed.
//!
//! A receiver therefore never has to stop reading a peer that speaks flow control: what
//! arrives always fits, and answers (which need no window: an asker bounds them by its
//! own asks) always flow. That is what keeps two envs whose handlers ask each other while
//! both are flooded from stalling each other (the trap of one TCP stream carrying requests
//! and replies).
//!
//! A peer that does not speak it (a raw socket, a foreign client) gets the same windows
//! enforced the blunt way: once it has a window's worth waiting in an endpoint's inbox,
//! the connection stops being read until the endpoint catches up, and TCP slows the peer
//! down. A peer that said hello and still overruns a window is treated the same way.

use std::fmt;

use log::{debug, warn};

use crate::fnv::FnvMap;
use crate::rpc::envelope;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex};
use crate::transport::{FRAME_CHARGE, TransportClient};

/// What a message costs of its endpoint's window: its frame body and a fixed share.
pub(crate) fn charge(body_len: usize) -> usize {
    body_len + FRAME_CHARGE
}

/// The receiving side of one connection's flow control (see the module docs); kept with
/// the connection.
pub(crate) struct Inflow {
    /// The window each endpoint grants this connection (`rpc.dispatcher.inboxCapacity`).
    window: usize,
    /// The peer said hello: it keeps to the windows.
    speaks_flow_control: AtomicBool,
    /// Each endpoint's window, by name.
    windows: Mutex<FnvMap<Arc<str>, Arc<Window>>>,
    /// Endpoints whose backlog stopped the connection from being read; changed (and the
    /// reading paused or resumed) only under this lock.
    full: Mutex<usize>,
}

/// One endpoint's window on one connection. The counters change on every message without
/// a lock; pausing and resuming go through `Inflow::full`.
struct Window {
    endpoint: Arc<str>,
    /// Bytes received and not yet taken out of the inbox.
    waiting: AtomicUsize,
    /// Bytes taken out of the inbox and not yet granted back.
    owed: AtomicUsize,
    /// This endpoint's backlog stopped the connection from being read.
    paused: AtomicBool,
}

impl Inflow {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            window,
            speaks_flow_control: AtomicBool::new(false),
            windows: Mutex::new(FnvMap::default()),
            full: Mutex::new(0),
        }
    }

    /// The hello arrived: the peer keeps to the windows.
    pub(crate) fn peer_said_hello(&self) {
        self.speaks_flow_control.store(true, Ordering::Release);
    }

    /// A message of `body_len` bytes for `endpoint` arrived on `client`'s connection;
    /// returns what it charged, given back when the message leaves the inbox. Called on
    /// the connection's event loop.
    pub(crate) fn received(
        self: &Arc<Self>,
        client: &TransportClient,
        endpoint: &Arc<str>,
        body_len: usize,
    ) -> Charge {
        let bytes = charge(body_len);
        // Counted under the table's lock, which a window is forgotten under only once
        // nothing of it is in flight.
        let (window, before) = {
            let mut windows = self.windows.lock();
            let window = match windows.get(endpoint) {
                Some(window) => Arc::clone(window),
                None => {
                    let window = Arc::new(Window {
                        endpoint: Arc::clone(endpoint),
                        waiting: AtomicUsize::new(0),
                        owed: AtomicUsize::new(0),
                        paused: AtomicBool::new(false),
                    });
                    windows.insert(Arc::clone(endpoint), Arc::clone(&window));
                    window
                }
            };
            let before = window.waiting.fetch_add(bytes, Ordering::AcqRel);
            (window, before)
        };
        // A peer that keeps to the windows may fill one exactly, which is no reason to stop
        // reading it; only a message sent with no window left is an overrun.
        let overran = if self.speaks_flow_control.load(Ordering::Acquire) {
            before >= self.window
        } else {
            before + bytes >= self.window
        };
        if overran && !window.paused.load(Ordering::Acquire) {
            self.pause_for(client, &window);
        }
        Charge {
            inflow: Arc::clone(self),
            client: client.clone(),
            window,
            bytes,
        }
    }

    /// A message of `body_len` bytes for `endpoint` arrived and was refused before it
    /// reached an inbox (no such endpoint, or it stopped): its cost goes back to the sender
    /// at once, so that the endpoint's window does not shrink for good.
    pub(crate) fn refund(&self, client: &TransportClient, endpoint: &str, body_len: usize) {
        if !self.speaks_flow_control.load(Ordering::Acquire) {
            return;
        }
        match envelope::encode_grant(endpoint, charge(body_len)) {
            Ok(body) => {
                if let Err(err) = client.send_control(body) {
                    debug!(
                        "window grant to {} not sent: {err:#}",
                        client.remote_address()
                    );
                }
            }
            Err(err) => debug!("cannot encode a window grant: {err:#}"),
        }
    }

    /// Stops reading the connection while `window`'s endpoint holds a window's worth.
    fn pause_for(&self, client: &TransportClient, window: &Window) {
        let mut full = self.full.lock();
        // Looked at again under the lock: the endpoint may have caught up meanwhile.
        if window.paused.load(Ordering::Acquire)
            || window.waiting.load(Ordering::Acquire) < self.window
        {
            return;
        }
        window.paused.store(true, Ordering::Release);
        if self.speaks_flow_control.load(Ordering::Acquire) {
            warn!(
                "{} overran the window of endpoint {}; reading from it pauses until the \
                 endpoint catches up",
                client.remote_address(),
                window.endpoint
            );
        }
        *full += 1;
        if *full == 1 {
            debug!(
                "endpoint {} holds a window's worth from {}; not reading it",
                window.endpoint,
                client.remote_address()
            );
            client.set_auto_read(false);
        }
    }

    /// Reads the connection again once no endpoint holds a window's worth from it.
    fn resume_for(&self, client: &TransportClient, window: &Window) {
        let mut full = self.full.lock();
        if !window.paused.load(Ordering::Acquire)
            || window.waiting.load(Ordering::Acquire) >= self.window
        {
            return;
        }
        window.paused.store(false, Ordering::Release);
        *full -= 1;
        if *full == 0 {
            debug!("reading from {} again", client.remote_address());
            client.set_auto_read(true);
        }
    }

    /// A message charged `bytes` left the inbox of `window`'s endpoint.
    fn consumed(&self, client: &TransportClient, window: &Window, bytes: usize) {
        let waiting = window.waiting.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        if self.speaks_flow_control.load(Ordering::Acquire) {
            let owed = window.owed.fetch_add(bytes, Ordering::AcqRel) + bytes;
            if owed >= self.window / 2 {
                let grant = window.owed.swap(0, Ordering::AcqRel);
                if grant > 0 {
                    match envelope::encode_grant(&window.endpoint, grant) {
                        Ok(body) => {
                            if let Err(err) = client.send_control(body) {
                                debug!(
                                    "window grant to {} not sent: {err:#}",
                                    client.remote_address()
                                );
                            }
                        }
                        Err(err) => warn!("cannot encode a window grant: {err:#}"),
                    }
                }
            }
        }
        if waiting < self.window && window.paused.load(Ordering::Acquire) {
            self.resume_for(client, window);
        }
        if waiting == 0 && window.owed.load(Ordering::Acquire) == 0 {
            // Nothing of this endpoint is in flight: forget it, so that the table holds
            // only the endpoints in use (a message that raced this in starts a new one).
            let mut windows = self.windows.lock();
            if window.waiting.load(Ordering::Acquire) == 0
                && window.owed.load(Ordering::Acquire) == 0
                && !window.paused.load(Ordering::Acquire)
            {
                windows.remove(&window.endpoint);
            }
        }
    }
}

impl fmt::Debug for Inflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflow")
            .field("window", &self.window)
            .field(
                "speaks_flow_control",
                &self.speaks_flow_control.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// A message's share of its endpoint's window, given back (and granted to the sender)
/// when it is dropped: when the message leaves the inbox to be handled, or is failed.
pub(crate) struct Charge {
    inflow: Arc<Inflow>,
    client: TransportClient,
    window: Arc<Window>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.inflow.consumed(&self.client, &self.window, self.bytes);
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge")
            .field("endpoint", &self.window.endpoint)
            .field("bytes", &self.bytes)
            .finish()
    }
}
