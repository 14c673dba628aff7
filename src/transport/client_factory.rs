//! [`TransportClientFactory`]: a pool of clients per peer, made by blocking connects.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::debug;

use crate::conf::keys;
use crate::error::RpcError;
use crate::log_limit::{kind, peer_warn};
use crate::metrics::bump;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{Arc, Condvar, Mutex};
use crate::transport::TransportClient;
use crate::transport::auth::{AuthBootstrap, Security, client_handshake};
use crate::transport::context::ContextInner;
use crate::transport::event_loop::{IoGroup, next_origin};
use crate::transport::socket::connect;

/// Makes and pools [`TransportClient`]s: `rpc.io.numConnectionsPerPeer` per remote
/// address, handed out in turn, each reused while active and replaced once closed.
///
/// [`create_client`](Self::create_client) blocks while it connects (up to
/// `rpc.io.connectionTimeout`); call it off any thread that must stay responsive.
/// [`close`](Self::close) never waits for a connect under way. The
/// connections live on the context's event loops, next to the server's, and are served
/// by the context's [`RpcHandler`](super::RpcHandler): a peer can send requests back on
/// them. [`close`](Self::close) (or drop) closes every client it made.
pub struct TransportClientFactory {
    ctx: Arc<ContextInner>,
    /// The handshake every new connection runs, on the connecting thread.
    auth: Option<AuthBootstrap>,
    pools: Mutex<HashMap<(String, u16), Arc<ClientPool>>>,
    io: Mutex<Option<Arc<IoGroup>>>,
    closed: AtomicBool,
    origin: u64,
}

struct ClientPool {
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
}

/// One pooled connection to a peer.
#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    /// A connect is under way; callers for the same slot wait for its outcome instead of
    /// opening connections of their own. The slot's lock is never held while connecting.
    Connecting(Arc<Connecting>),
    Ready(TransportClient),
}

/// The outcome of a connect under way, for the callers waiting on it.
#[derive(Default)]
struct Connecting {
    outcome: Mutex<Option<Result<TransportClient, RpcError>>>,
    done: Condvar,
}

impl Connecting {
    fn finish(&self, outcome: Result<TransportClient, RpcError>) {
        *self.outcome.lock() = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> Result<TransportClient, RpcError> {
        let mut outcome = self.outcome.lock();
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            outcome = self.done.wait_timeout(outcome, Duration::from_secs(3600));
        }
    }
}

impl TransportClientFactory {
    pub(crate) fn new(ctx: Arc<ContextInner>, auth: Option<AuthBootstrap>) -> Self {
        Self {
            ctx,
            auth,
            pools: Mutex::new(HashMap::new()),
            io: Mutex::new(None),
            closed: AtomicBool::new(false),
            origin: next_origin(),
        }
    }

    fn closed_error(peer: &str) -> RpcError {
        RpcError::connection(peer, "cannot be made: the client factory is closed")
    }

    /// A client connected to `host:port`: a pooled one if it is still active, otherwise
    /// a new connection (callers racing for the same pooled connection share one connect).
    /// Fails with [`RpcError::Connection`] naming the peer when the connect fails or times
    /// out, or after [`close`](Self::close).
    pub fn create_client(&self, host: &str, port: u16) -> Result<TransportClient, RpcError> {
        let peer = format!("{host}:{port}");
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error(&peer));
        }
        let pool = {
            let mut pools = self.pools.lock();
            let slots = self.ctx.conf.num_connections_per_peer();
            Arc::clone(pools.entry((host.to_owned(), port)).or_insert_with(|| {
                Arc::new(ClientPool {
                    slots: (0..slots).map(|_| Mutex::new(Slot::Empty)).collect(),
                    next: AtomicUsize::new(0),
                })
            }))
        };
        let index = pool.next.fetch_add(1, Ordering::Relaxed) % pool.slots.len();
        let slot = &pool.slots[index];
        let connecting = {
            let mut slot = slot.lock();
            match &*slot {
                Slot::Ready(client) if client.is_active() => return Ok(client.clone()),
                Slot::Connecting(connecting) => {
                    let connecting = Arc::clone(connecting);
                    drop(slot);
                    return connecting.wait();
                }
                Slot::Ready(_) => {
                    debug!("pooled connection to {peer} is closed; opening a new one");
                }
                Slot::Empty => {}
            }
            let connecting = Arc::new(Connecting::default());
            *slot = Slot::Connecting(Arc::clone(&connecting));
            connecting
        };
        let mut outcome = self.connect(host, port, &peer);
        let counters = &self.ctx.counters;
        match &outcome {
            Ok(_) => bump(&counters.connects),
            Err(_) => bump(&counters.connect_failures),
        }
        if self.closed.load(Ordering::Acquire) {
            // close() ran while this connect was under way and may have missed it.
            if let Ok(client) = &outcome {
                client.close();
            }
            outcome = Err(Self::closed_error(&peer));
        }
        *slot.lock() = match &outcome {
            Ok(client) => Slot::Ready(client.clone()),
            Err(_) => Slot::Empty,
        };
        connecting.finish(outcome.clone());
        outcome
    }

    fn connect(&self, host: &str, port: u16, peer: &str) -> Result<TransportClient, RpcError> {
        let started = Instant::now();
        let conf = &self.ctx.conf;
        let timeout = conf.connection_timeout();
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| {
                RpcError::connection_io(peer, "cannot be made: cannot resolve the host", e)
            })?
            .collect();
        let mut last_error = io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{host} resolves to no address"),
        );
        for addr in addrs {
            let cancelled = || self.closed.load(Ordering::Acquire);
            match connect(addr, timeout, conf, &cancelled) {
                Ok(mut stream) => {
                    let security = match &self.auth {
                        Some(auth) => client_handshake(&mut stream, peer, auth, &cancelled)
                            .inspect_err(|err| {
                                let limit = &self.ctx.counters.log_limit;
                                peer_warn!(limit, addr, kind::AUTH, "{err:#}");
                            })?,
                        None => Security::Plain,
                    };
                    let io = self.io()?;
                    let client = io.adopt(stream, addr, self.origin, None, security)?;
                    debug!(
                        "connected to {peer} ({addr}) in {:?} as connection {}",
                        started.elapsed(),
                        client.id()
                    );
                    return Ok(client);
                }
                Err(err) => {
                    debug!("cannot connect to {addr}: {err:#}");
                    last_error = err;
                }
            }
        }
        let reason = match (last_error.kind(), timeout) {
            (io::ErrorKind::TimedOut, Some(timeout)) => {
                format!(
                    "failed: no answer within {timeout:?} ({})",
                    keys::IO_CONNECTION_TIMEOUT
                )
            }
            _ => "failed: no env listens there, or it cannot be reached".to_owned(),
        };
        // Returned to the caller, who decides whether and how to log it (a worker
        // retrying its registration says so once): logged here only for debugging.
        debug!("connection to {peer} {reason}: {last_error}");
        Err(RpcError::connection_io(peer, reason, last_error))
    }

    /// The event loops, started on first use.
    fn io(&self) -> Result<Arc<IoGroup>, RpcError> {
        let mut io = self.io.lock();
        if let Some(group) = io.as_ref() {
            return Ok(Arc::clone(group));
        }
        let group = self.ctx.io_group()?;
        *io = Some(Arc::clone(&group));
        Ok(group)
    }

    /// Closes every client this factory made; later `create_client` calls fail.
    /// Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let pools = std::mem::take(&mut *self.pools.lock());
        for pool in pools.values() {
            for slot in &pool.slots {
                // A connect under way finds the factory closed when it ends, and closes
                // what it made; nothing here waits for it.
                if let Slot::Ready(client) = std::mem::take(&mut *slot.lock()) {
                    client.close();
                }
            }
        }
        if let Some(io) = self.io.lock().take() {
            io.close_origin(self.origin);
        }
        debug!("client factory closed");
    }
}

impl Drop for TransportClientFactory {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for TransportClientFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportClientFactory")
            .field("peers", &self.pools.lock().len())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}
