//! [`TransportServer`]: the `rpc-boss` thread, which accepts connections and hands each
//! to an event loop, and the port-retry rule of [`start_service_on_port`].

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::SockRef;

use crate::conf::keys;
use crate::error::RpcError;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex};
use crate::threads::{join_until, spawn};
use crate::transport::TransportConf;
use crate::transport::auth::{AuthBootstrap, Security};
use crate::transport::event_loop::{IoGroup, next_origin};
use crate::transport::socket::{bind_listener, configure_stream, interrupted, would_block};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// How long the boss waits before accepting again after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket and its `rpc-boss` thread. Accepted connections are served by the
/// [`TransportContext`](super::TransportContext)'s event loops with its handler.
///
/// [`close`](Self::close) (or drop) stops accepting, joins the boss thread and closes
/// every connection this server accepted.
pub struct TransportServer {
    address: SocketAddr,
    running: Mutex<Option<Running>>,
}

struct Running {
    boss: JoinHandle<()>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    io: Arc<IoGroup>,
    origin: u64,
}

impl TransportServer {
    /// Binds `host:port` (port 0: any free port; on a collision, the next ports up to
    /// `rpc.port.maxRetries`) and starts accepting; with `auth`, every connection must
    /// authenticate first.
    pub(crate) fn bind(
        host: &str,
        port: u16,
        conf: &TransportConf,
        io: Arc<IoGroup>,
        auth: Option<AuthBootstrap>,
    ) -> Result<Self, RpcError> {
        let base = resolve(host, port)?;
        let (listener, address) =
            start_service_on_port(host, port, conf.port_max_retries(), |p| {
                let mut addr = base;
                addr.set_port(p);
                let listener = bind_listener(addr, conf)?;
                let local = listener.local_addr()?;
                Ok((listener, local))
            })?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new().map_err(|e| RpcError::io("cannot create a poller", e))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| RpcError::io("cannot register the listener", e))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER)
                .map_err(|e| RpcError::io("cannot create a waker", e))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let origin = next_origin();
        let boss = Boss {
            poll,
            listener,
            stop: Arc::clone(&stop),
            io: Arc::clone(&io),
            conf: conf.clone(),
            origin,
            auth,
            inbound: Arc::new(AtomicUsize::new(0)),
            refused: Refused::default(),
        };
        let boss = spawn("rpc-boss".into(), move || boss.run())?;
        info!("transport server listening on {address}");
        Ok(Self {
            address,
            running: Mutex::new(Some(Running {
                boss,
                waker,
                stop,
                io,
                origin,
            })),
        })
    }

    /// The port the server is bound to.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The address the server is bound to.
    pub fn local_address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, joins the `rpc-boss` thread and closes every connection this
    /// server accepted. Idempotent.
    pub fn close(&self) {
        let Some(running) = self.running.lock().take() else {
            return;
        };
        running.stop.store(true, Ordering::Release);
        let _ = running.waker.wake();
        join_until(vec![running.boss], None, "the transport server");
        running.io.close_origin(running.origin);
        debug!("transport server on {} closed", self.address);
    }
}

impl Drop for TransportServer {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for TransportServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportServer")
            .field("address", &self.address)
            .field("running", &self.running.lock().is_some())
            .finish()
    }
}

struct Boss {
    poll: Poll,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    io: Arc<IoGroup>,
    conf: TransportConf,
    origin: u64,
    /// The handshake every connection must pass first.
    auth: Option<AuthBootstrap>,
    /// Inbound connections held now (for `rpc.io.maxConnections`).
    inbound: Arc<AtomicUsize>,
    refused: Refused,
}

/// Connections refused for `rpc.io.maxConnections`, logged one line per refusal but at
/// most once a second (then with the count of those not logged).
#[derive(Default)]
struct Refused {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Refused {
    fn log(&mut self, peer: SocketAddr, held: usize, max: usize) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        let more = std::mem::take(&mut self.unlogged);
        let also = if more > 0 {
            format!(" ({more} more refused since the last line)")
        } else {
            String::new()
        };
        warn!(
            "refused the connection from {peer}: {held} connections held, the most {} = \
             {max} allows{also}",
            keys::IO_MAX_CONNECTIONS
        );
        self.last_logged = Some(now);
    }
}

impl Boss {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let mut backoff = None;
        while !self.stop.load(Ordering::Acquire) {
            if let Err(err) = self.poll.poll(&mut events, backoff) {
                if interrupted(&err) {
                    continue;
                }
                warn!("rpc-boss cannot poll: {err:#}; no longer accepting");
                return;
            }
            // After a backoff the listener is tried again even without a new event: the
            // connections that were waiting raised no new edge.
            backoff = self.accept_all();
        }
    }

    /// Accepts until the listener would block. Returns a backoff when it had to stop
    /// early (out of file descriptors).
    fn accept_all(&mut self) -> Option<Duration> {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let held = self.inbound.load(Ordering::Acquire);
                    let max = self.conf.max_connections();
                    if held >= max {
                        // Closed at once: the peer sees its connection end; the ones held
                        // keep working.
                        drop(stream);
                        self.io
                            .counters()
                            .connections_refused
                            .fetch_add(1, Ordering::Relaxed);
                        self.refused.log(peer, held, max);
                        continue;
                    }
                    if let Err(err) = configure_stream(SockRef::from(&stream), &self.conf) {
                        warn!("cannot set socket options on the connection from {peer}: {err:#}");
                    }
                    let security = match &self.auth {
                        Some(auth) => Security::AwaitAuth(auth.clone()),
                        None => Security::Plain,
                    };
                    match self.io.adopt(
                        stream,
                        peer,
                        self.origin,
                        Some(Arc::clone(&self.inbound)),
                        security,
                    ) {
                        Ok(_) => debug!("accepted a connection from {peer}"),
                        Err(err) => warn!("dropped the connection from {peer}: {err:#}"),
                    }
                }
                Err(err) if would_block(&err) => return None,
                Err(err) if interrupted(&err) => {}
                Err(err) if is_transient_accept_error(&err) => {
                    // ECONNABORTED and the like: that one connection is gone, go on.
                    debug!("accept failed: {err:#}");
                }
                Err(err) => {
                    warn!("accept failed: {err:#}; retrying in {ACCEPT_BACKOFF:?}");
                    return Some(ACCEPT_BACKOFF);
                }
            }
        }
    }
}

fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, RpcError> {
    let resolved = (host, port).to_socket_addrs().and_then(|mut addrs| {
        addrs.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{host} resolves to no address"),
            )
        })
    });
    resolved.map_err(|err| RpcError::Bind {
        host: host.to_owned(),
        start_port: port,
        retries: 0,
        source: Some(Arc::new(err)),
    })
}

/// Starts a service on `start_port`, or on the ports after it when that one is taken.
///
/// Port 0 asks the OS for any free port. Otherwise each bind collision (`AddrInUse`)
/// moves on to the next port, `max_retries` times at most, wrapping from 65535 back to
/// 1024; any other error ends the attempts at once. The final error names the host, the
/// start port, the retries and the key `rpc.port.maxRetries`.
pub(crate) fn start_service_on_port<T>(
    host: &str,
    start_port: u16,
    max_retries: u32,
    mut start: impl FnMut(u16) -> io::Result<T>,
) -> Result<T, RpcError> {
    let mut attempt = 0;
    loop {
        let port = port_for_attempt(start_port, attempt);
        match start(port) {
            Ok(service) => return Ok(service),
            Err(err) if err.kind() == io::ErrorKind::AddrInUse && attempt < max_retries => {
                let next = port_for_attempt(start_port, attempt + 1);
                warn!("cannot bind {host}:{port} ({err:#}); trying port {next}");
                attempt += 1;
            }
            Err(err) => {
                return Err(RpcError::Bind {
                    host: host.to_owned(),
                    start_port,
                    retries: attempt,
                    source: Some(Arc::new(err)),
                });
            }
        }
    }
}

/// The port of the `attempt`-th try: `start + attempt`, wrapping past 65535 to 1024 (the
/// unprivileged ports), or 0 every time for "any free port".
fn port_for_attempt(start: u16, attempt: u32) -> u16 {
    if start == 0 {
        return 0;
    }
    let start = u32::from(start);
    let port = if start >= 1024 {
        (start - 1024 + attempt) % (65536 - 1024) + 1024
    } else {
        let port = start + attempt;
        if port <= 65535 {
            port
        } else {
            (port - 65536) % (65536 - 1024) + 1024
        }
    };
    port as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_wrap_to_unprivileged_range() {
        assert_eq!(port_for_attempt(0, 5), 0);
        assert_eq!(port_for_attempt(7077, 0), 7077);
        assert_eq!(port_for_attempt(7077, 3), 7080);
        assert_eq!(port_for_attempt(65535, 1), 1024);
        assert_eq!(port_for_attempt(65534, 3), 1025);
        assert_eq!(port_for_attempt(80, 1), 81);
    }

    #[test]
    fn collisions_are_retried_up_to_max_retries() {
        let mut tried = Vec::new();
        let err = start_service_on_port("127.0.0.1", 7077, 3, |port| {
            tried.push(port);
            Err::<(), _>(io::Error::from(io::ErrorKind::AddrInUse))
        })
        .unwrap_err();
        assert_eq!(tried, [7077, 7078, 7079, 7080]);
        let text = err.to_string();
        for needle in ["127.0.0.1", "7077", "3 more", "rpc.port.maxRetries"] {
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn a_free_port_after_collisions_is_used() {
        let port = start_service_on_port("h", 7077, 16, |port| {
            if port < 7080 {
                Err(io::Error::from(io::ErrorKind::AddrInUse))
            } else {
                Ok(port)
            }
        })
        .unwrap();
        assert_eq!(port, 7080);
    }

    #[test]
    fn other_errors_are_not_retried() {
        let mut calls = 0;
        let err = start_service_on_port("h", 7077, 16, |_| {
            calls += 1;
            Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied))
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, RpcError::Bind { retries: 0, .. }));
    }
}
