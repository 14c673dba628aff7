//! The `rpc-io-N` event loops: one `mio::Poll` each, reading, decoding and dispatching
//! frames and flushing queued writes for the connections they own, server and client
//! connections alike. Nothing here blocks: handlers are told not to, writes never wait
//! for a slow peer (they queue), and other threads reach a loop through its command
//! channel and its `Waker`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, trace, warn};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::conf::keys;
use crate::error::RpcError;
use crate::frame::FrameDecoder;
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex};
use crate::transport::connection::{self, Conn, Notify, ReadOutcome};
use crate::transport::socket::interrupted;
use crate::transport::{RpcHandler, TransportClient, TransportConf};

const WAKER: Token = Token(usize::MAX);

/// Bytes one connection may read per turn before the others get theirs.
const READ_BUDGET: usize = 1 << 20;

/// Size of each loop's read buffer, shared by all its connections.
const SCRATCH_SIZE: usize = 64 * 1024;

/// Connection ids, unique in the process; also the `mio::Token` of the connection.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(0);

/// Event loop ids, unique in the process.
static NEXT_LOOP_ID: AtomicUsize = AtomicUsize::new(0);

/// What other threads ask of a loop.
enum Command {
    /// Take charge of a new connection, already registered with this loop's poller.
    Register {
        client: TransportClient,
        origin: u64,
    },
    /// The connection was closed from another thread.
    Closed(u64),
    /// Write what a burst of sends queued on this connection.
    Flush(Arc<Conn>),
    /// Close every connection that came from this server or client factory.
    CloseOrigin(u64),
    /// Close everything and exit.
    Shutdown,
}

/// How other threads reach one event loop.
pub(crate) struct LoopHandle {
    id: usize,
    tx: Sender<Command>,
    waker: Waker,
    registry: Registry,
}

impl LoopHandle {
    /// Queues a command and wakes the loop; false if the loop is gone.
    fn send(&self, command: Command) -> bool {
        if self.tx.send(command).is_err() {
            return false;
        }
        if let Err(err) = self.waker.wake() {
            error!("cannot wake event loop {}: {err}", self.id);
        }
        true
    }
}

impl Notify for LoopHandle {
    fn closed(&self, conn_id: u64) {
        self.send(Command::Closed(conn_id));
    }

    fn flush(&self, conn: Arc<Conn>) {
        self.send(Command::Flush(conn));
    }
}

/// A set of event loops, shared by the server and the client factory of one
/// [`TransportContext`](super::TransportContext). Dropping the last reference shuts the
/// loops down (closing their connections) and joins their threads.
pub(crate) struct IoGroup {
    loops: Vec<Arc<LoopHandle>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
    max_frame: u64,
}

impl IoGroup {
    pub(crate) fn start(
        conf: &TransportConf,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<Arc<Self>, RpcError> {
        let mut group = Self {
            loops: Vec::new(),
            threads: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            max_frame: conf.max_message_size(),
        };
        // On an error below, dropping `group` stops the loops started so far.
        for index in 0..conf.io_threads() {
            let poll = Poll::new().map_err(|e| RpcError::io("cannot create a poller", e))?;
            let waker = Waker::new(poll.registry(), WAKER)
                .map_err(|e| RpcError::io("cannot create a waker", e))?;
            let registry = poll
                .registry()
                .try_clone()
                .map_err(|e| RpcError::io("cannot clone a poll registry", e))?;
            let (tx, rx) = crossbeam_channel::unbounded();
            let id = NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed);
            let event_loop = EventLoop {
                id,
                poll,
                rx,
                handler: Arc::clone(&handler),
                conns: HashMap::new(),
                scratch: vec![0; SCRATCH_SIZE].into_boxed_slice(),
                max_frame: conf.max_message_size(),
                idle_timeout: conf.connection_timeout(),
                read_again: Vec::new(),
                batch_spare: Vec::new(),
            };
            let thread = thread::Builder::new()
                .name(format!("rpc-io-{index}"))
                .spawn(move || event_loop.run())
                .map_err(|e| RpcError::io("cannot start an rpc-io thread", e))?;
            group.loops.push(Arc::new(LoopHandle {
                id,
                tx,
                waker,
                registry,
            }));
            group.threads.get_mut().push(thread);
        }
        Ok(Arc::new(group))
    }

    /// Hands a connected stream to one of the loops (round robin) and returns its client.
    pub(crate) fn adopt(
        &self,
        mut stream: mio::net::TcpStream,
        peer: SocketAddr,
        origin: u64,
    ) -> Result<TransportClient, RpcError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        let handle = &self.loops[index];
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        // Registered before the loop knows the connection: events that arrive first are
        // dropped, and the loop reads and flushes once when it takes the connection over.
        handle
            .registry
            .register(
                &mut stream,
                Token(id as usize),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| RpcError::connection_io(peer, "cannot be registered with a poller", e))?;
        let notify: Arc<dyn Notify> = Arc::clone(handle) as Arc<dyn Notify>;
        let conn = Conn::new(
            id,
            handle.id,
            peer,
            self.max_frame,
            Box::new(stream),
            notify,
        );
        let client = TransportClient::new(conn);
        if !handle.send(Command::Register {
            client: client.clone(),
            origin,
        }) {
            client.close();
            return Err(RpcError::connection(
                peer,
                "cannot be served: the transport is shut down",
            ));
        }
        debug!(
            "connection {id} with {peer} given to event loop {}",
            handle.id
        );
        Ok(client)
    }

    /// Closes every connection that came from `origin` (a server or a client factory).
    pub(crate) fn close_origin(&self, origin: u64) {
        for handle in &self.loops {
            handle.send(Command::CloseOrigin(origin));
        }
    }
}

impl Drop for IoGroup {
    fn drop(&mut self) {
        for handle in &self.loops {
            handle.send(Command::Shutdown);
        }
        let current = thread::current().id();
        for thread in self.threads.get_mut().drain(..) {
            if thread.thread().id() == current {
                // The last reference went away on one of the loops itself: it exits on its
                // own once this returns, and cannot join itself.
                continue;
            }
            if thread.join().is_err() {
                error!("an rpc-io thread panicked");
            }
        }
    }
}

/// Hands out origin ids that tag connections with the server or factory they came from.
pub(crate) fn next_origin() -> u64 {
    static NEXT_ORIGIN: AtomicU64 = AtomicU64::new(0);
    NEXT_ORIGIN.fetch_add(1, Ordering::Relaxed)
}

struct Entry {
    client: TransportClient,
    decoder: FrameDecoder,
    origin: u64,
    /// The last time the connection read or wrote anything, or sent a new request.
    last_activity: Instant,
    /// The connection's request counter when last looked at.
    seen_sent: u64,
}

struct EventLoop {
    id: usize,
    poll: Poll,
    rx: Receiver<Command>,
    handler: Arc<dyn RpcHandler>,
    conns: HashMap<u64, Entry>,
    scratch: Box<[u8]>,
    max_frame: u64,
    idle_timeout: Option<Duration>,
    /// Connections whose read budget ran out: read again before sleeping.
    read_again: Vec<u64>,
    batch_spare: Vec<Arc<Conn>>,
}

impl EventLoop {
    // The loop thread is where the clock is read: once per turn, passed down as `now`.
    fn run(mut self) {
        debug!("event loop {} started", self.id);
        let mut events = Events::with_capacity(256);
        let tick = self.idle_timeout.map(tick_interval);
        let mut next_tick = tick.map(|tick| Instant::now() + tick);
        loop {
            let timeout = if self.read_again.is_empty() {
                next_tick.map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if interrupted(&err) {
                    continue;
                }
                error!(
                    "event loop {} cannot poll: {err}; closing its connections",
                    self.id
                );
                break;
            }
            let now = Instant::now();
            connection::begin_batch(self.id, std::mem::take(&mut self.batch_spare));
            let again = std::mem::take(&mut self.read_again);
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let id = event.token().0 as u64;
                trace!(
                    "loop {}: connection {id} readable={} writable={}",
                    self.id,
                    event.is_readable(),
                    event.is_writable()
                );
                if event.is_writable() {
                    if let Some(entry) = self.conns.get_mut(&id) {
                        entry.last_activity = now;
                        entry.client.conn().flush();
                    }
                }
                let hang_up = event.is_read_closed() || event.is_error();
                if event.is_readable() || hang_up {
                    self.read(id, now, hang_up);
                }
            }
            for id in again {
                self.read(id, now, false);
            }
            let shutdown = self.handle_commands(now);
            let flush = connection::end_batch();
            for conn in &flush {
                conn.flush();
            }
            self.batch_spare = flush;
            if shutdown {
                break;
            }
            if let (Some(at), Some(tick)) = (next_tick, tick) {
                if now >= at {
                    self.close_idle(now);
                    next_tick = Some(now + tick);
                }
            }
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.remove(id, "the transport shut down");
        }
        debug!("event loop {} stopped", self.id);
    }

    /// Reads what connection `id` has; `drain`: to the end, not stopping at a short read.
    fn read(&mut self, id: u64, now: Instant, drain: bool) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        entry.last_activity = now;
        let conn = Arc::clone(entry.client.conn());
        let outcome = conn.read_ready(
            &entry.client,
            &mut entry.decoder,
            &mut self.scratch,
            READ_BUDGET,
            &*self.handler,
            drain,
        );
        match outcome {
            ReadOutcome::Drained => {}
            ReadOutcome::Budget => self.read_again.push(id),
            ReadOutcome::Closed => self.remove(id, "closed"),
        }
    }

    /// Forgets a connection, closing it if it is not closed yet, and reports it inactive.
    fn remove(&mut self, id: u64, reason: &str) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        let conn = entry.client.conn();
        conn.close(reason);
        let peer = conn.peer();
        connection::guard(peer, "channel_inactive", || {
            self.handler.channel_inactive(&entry.client)
        });
    }

    /// Runs the queued commands; true when the loop must exit.
    fn handle_commands(&mut self, now: Instant) -> bool {
        let mut shutdown = false;
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Register { client, origin } => {
                    let id = client.id();
                    let peer = client.remote_address();
                    self.conns.insert(
                        id,
                        Entry {
                            client: client.clone(),
                            decoder: FrameDecoder::new(self.max_frame),
                            origin,
                            last_activity: now,
                            seen_sent: 0,
                        },
                    );
                    connection::guard(peer, "channel_active", || {
                        self.handler.channel_active(&client)
                    });
                    // Events that came before the loop knew the connection were dropped.
                    client.conn().flush();
                    self.read(id, now, true);
                }
                Command::Closed(id) => self.remove(id, "closed"),
                Command::Flush(conn) => conn.flush(),
                Command::CloseOrigin(origin) => {
                    let ids: Vec<u64> = self
                        .conns
                        .iter()
                        .filter(|(_, entry)| entry.origin == origin)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        self.remove(id, "its server or client factory was closed");
                    }
                }
                Command::Shutdown => shutdown = true,
            }
        }
        shutdown
    }

    /// Closes the connections that have had requests outstanding and no traffic for
    /// `rpc.io.connectionTimeout`.
    fn close_idle(&mut self, now: Instant) {
        let Some(timeout) = self.idle_timeout else {
            return;
        };
        let mut dead = Vec::new();
        for (id, entry) in &mut self.conns {
            let (outstanding, sent) = entry.client.conn().request_stats();
            if sent != entry.seen_sent {
                entry.seen_sent = sent;
                entry.last_activity = now;
            } else if outstanding > 0 && now.duration_since(entry.last_activity) >= timeout {
                dead.push((*id, outstanding));
            }
        }
        for (id, outstanding) in dead {
            let peer = self.conns[&id].client.remote_address();
            let reason = format!(
                "quiet for {timeout:?} with {outstanding} requests outstanding ({})",
                keys::IO_CONNECTION_TIMEOUT
            );
            warn!("closing the connection to {peer}: {reason}");
            self.remove(id, &reason);
        }
    }
}

/// How often a loop looks for quiet connections: a quarter of the timeout, between 10 ms
/// and 1 s, so a dead connection is noticed at most that much after the timeout.
fn tick_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
