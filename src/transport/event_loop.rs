//! The `rpc-io-N` event loops: one `mio::Poll` each, owning the connections handed to it,
//! server and client connections alike. A loop reads and decodes their frames, hands them
//! on, writes what their write queues hold when woken or when a socket turns writable,
//! and closes connections whose peer went silent or stalled. Nothing here blocks: handlers
//! are told not to, a sender that finds no room never waits on a loop, and other threads
//! reach a loop through its command channel and its `Waker`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, trace};
use mio::unix::SourceFd;
use mio::{Events, Poll, Registry, Token, Waker};

use crate::auth::Decryptor;
use crate::conf::keys;
use crate::error::RpcError;
use crate::log_limit::{kind, peer_warn};
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex};
use crate::threads::{join_until, spawn};
use crate::transport::auth::{AuthBootstrap, Security};
use crate::transport::connection::{
    CloseReason, Conn, Counters, Notify, Wake, guard, mark_event_loop,
};
use crate::transport::reader::{MIN_FRAME_RATE, ReadOutcome, Reader};
use crate::transport::socket::{Wire, interrupted};
use crate::transport::watch::{self, Rewatch};
use crate::transport::write_queue::Flushed;
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
    Register(Box<Registration>),
    /// The connection was closed from another thread.
    Closed(u64),
    /// Something to do for a connection (see [`Wake`]).
    Wake(Arc<Conn>, Wake),
    /// Close every connection that came from this server or client factory.
    CloseOrigin(u64),
    /// Close everything and exit.
    Shutdown,
}

/// A new connection for a loop.
struct Registration {
    client: TransportClient,
    wire: Arc<dyn Wire>,
    origin: u64,
    /// The server's count of inbound connections, for `rpc.io.maxConnections`.
    inbound: Option<Arc<AtomicUsize>>,
    /// The incoming half of the channel cipher of a connection the connecting side
    /// authenticated.
    decryptor: Option<Box<Decryptor>>,
    /// The handshake a server's connection waits for.
    auth: Option<AuthBootstrap>,
}

/// How other threads reach one event loop.
pub(crate) struct LoopHandle {
    id: usize,
    tx: Sender<Command>,
    waker: Waker,
    registry: Registry,
    /// The loop is (about to be) blocked in `poll`: a command must wake it. While it is
    /// awake it runs every queued command before it blocks again, so no wake is needed.
    sleeping: Arc<AtomicBool>,
}

impl LoopHandle {
    /// Queues a command and wakes the loop if it sleeps; false if the loop is gone.
    fn send(&self, command: Command) -> bool {
        if self.tx.send(command).is_err() {
            return false;
        }
        // Pairs with the loop's store before it looks at its queue one last time.
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Err(err) = self.waker.wake() {
                error!("cannot wake event loop {}: {err:#}", self.id);
            }
        }
        true
    }
}

impl Rewatch for LoopHandle {
    fn rewatch(
        &self,
        conn_id: u64,
        fd: RawFd,
        from: watch::Interest,
        to: watch::Interest,
    ) -> io::Result<()> {
        let token = Token(conn_id as usize);
        let source = &mut SourceFd(&fd);
        match (from.to_mio(), to.to_mio()) {
            (_, None) => match self.registry.deregister(source) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                done => done,
            },
            (None, Some(interest)) => self.registry.register(source, token, interest),
            (Some(_), Some(interest)) => self.registry.reregister(source, token, interest),
        }
    }
}

impl Notify for LoopHandle {
    fn closed(&self, conn_id: u64) {
        self.send(Command::Closed(conn_id));
    }

    fn wake(&self, conn: Arc<Conn>, why: Wake) {
        self.send(Command::Wake(conn, why));
    }
}

/// A set of event loops, shared by the servers and client factories of one
/// [`TransportContext`](super::TransportContext). Dropping the last reference shuts the
/// loops down (closing their connections) and joins their threads.
pub(crate) struct IoGroup {
    loops: Vec<Arc<LoopHandle>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
    conf: TransportConf,
    counters: Arc<Counters>,
}

impl IoGroup {
    pub(crate) fn start(
        conf: &TransportConf,
        handler: Arc<dyn RpcHandler>,
        counters: Arc<Counters>,
    ) -> Result<Arc<Self>, RpcError> {
        let mut group = Self {
            loops: Vec::new(),
            threads: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            conf: conf.clone(),
            counters,
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
            let sleeping = Arc::new(AtomicBool::new(false));
            let event_loop = EventLoop {
                id,
                poll,
                rx,
                sleeping: Arc::clone(&sleeping),
                handler: Arc::clone(&handler),
                conns: HashMap::new(),
                scratch: vec![0; SCRATCH_SIZE].into_boxed_slice(),
                conf: conf.clone(),
                read_again: Vec::new(),
                flush_again: Vec::new(),
            };
            let thread = spawn(format!("rpc-io-{index}"), move || event_loop.run())?;
            group.loops.push(Arc::new(LoopHandle {
                id,
                tx,
                waker,
                registry,
                sleeping,
            }));
            group.threads.get_mut().push(thread);
        }
        Ok(Arc::new(group))
    }

    /// Hands a connected stream to one of the loops (round robin) and returns its client.
    /// `inbound`: the accepting server's connection count, kept for
    /// `rpc.io.maxConnections` until the connection is gone.
    pub(crate) fn adopt(
        &self,
        mut stream: mio::net::TcpStream,
        peer: SocketAddr,
        origin: u64,
        inbound: Option<Arc<AtomicUsize>>,
        security: Security,
    ) -> Result<TransportClient, RpcError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        let handle = &self.loops[index];
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        // Registered before the loop knows the connection: events that arrive first are
        // dropped, and the loop reads and flushes once when it takes the connection over.
        handle
            .registry
            .register(&mut stream, Token(id as usize), watch::READ_INTEREST)
            .map_err(|e| RpcError::connection_io(peer, "cannot be registered with a poller", e))?;
        let wire: Arc<dyn Wire> = Arc::new(stream);
        let notify: Arc<dyn Notify> = Arc::clone(handle) as Arc<dyn Notify>;
        let conn = Conn::new(
            id,
            handle.id,
            peer,
            inbound.is_some(),
            Arc::clone(&wire),
            &self.conf,
            notify,
            Arc::clone(&self.counters),
        );
        let (decryptor, auth) = match security {
            Security::Plain => (None, None),
            Security::Encrypted(encryptor, decryptor) => {
                conn.start_encryption(*encryptor);
                (Some(decryptor), None)
            }
            Security::AwaitAuth(bootstrap) => (None, Some(bootstrap)),
        };
        let client = TransportClient::new(conn);
        if let Some(count) = &inbound {
            count.fetch_add(1, Ordering::AcqRel);
        }
        let registration = Registration {
            client: client.clone(),
            wire,
            origin,
            inbound: inbound.clone(),
            decryptor,
            auth,
        };
        if !handle.send(Command::Register(Box::new(registration))) {
            if let Some(count) = &inbound {
                count.fetch_sub(1, Ordering::AcqRel);
            }
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

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

impl Drop for IoGroup {
    fn drop(&mut self) {
        for handle in &self.loops {
            handle.send(Command::Shutdown);
        }
        // The last reference may go away on one of the loops itself, which then exits on
        // its own once this returns.
        join_until(
            std::mem::take(self.threads.get_mut()),
            None,
            "the event loops",
        );
    }
}

impl fmt::Debug for IoGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoGroup")
            .field("loops", &self.loops.len())
            .finish()
    }
}

/// Hands out origin ids that tag connections with the server or factory they came from.
pub(crate) fn next_origin() -> u64 {
    static NEXT_ORIGIN: AtomicU64 = AtomicU64::new(0);
    NEXT_ORIGIN.fetch_add(1, Ordering::Relaxed)
}

/// A connection as its loop holds it.
struct Entry {
    client: TransportClient,
    origin: u64,
    inbound: Option<Arc<AtomicUsize>>,
    /// When the peer ended its side (the connection then only writes what it owes).
    ended_at: Option<Instant>,
    /// Why the reader refused the peer's request, to report when the connection closes.
    refusal: Option<RpcError>,
}

struct EventLoop {
    id: usize,
    poll: Poll,
    rx: Receiver<Command>,
    sleeping: Arc<AtomicBool>,
    handler: Arc<dyn RpcHandler>,
    conns: HashMap<u64, Entry>,
    scratch: Box<[u8]>,
    conf: TransportConf,
    /// Connections whose read budget ran out: read again before sleeping.
    read_again: Vec<u64>,
    /// Connections with more to write after their turn: write again before sleeping.
    flush_again: Vec<u64>,
}

impl EventLoop {
    // The loop thread is where the clock is read: once per turn, passed down as `now`.
    fn run(mut self) {
        mark_event_loop(self.id);
        debug!("event loop {} started", self.id);
        let mut events = Events::with_capacity(256);
        let tick = tick_interval(&self.conf);
        let mut next_tick = tick.map(|tick| Instant::now() + tick);
        loop {
            let mut timeout = if self.read_again.is_empty() && self.flush_again.is_empty() {
                next_tick.map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            // Senders wake the loop only when it sleeps: say so, then look at the queue
            // once more, so that a command sent in between is not left waiting.
            self.sleeping.store(true, Ordering::SeqCst);
            if !self.rx.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.sleeping.store(false, Ordering::SeqCst);
            if let Err(err) = polled {
                if interrupted(&err) {
                    continue;
                }
                error!(
                    "event loop {} cannot poll: {err:#}; closing its connections",
                    self.id
                );
                break;
            }
            let now = Instant::now();
            for id in std::mem::take(&mut self.flush_again) {
                self.flush(id, now);
            }
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
                    self.flush(id, now);
                }
                let to_end = watch::read_to_end(event);
                if event.is_readable() || to_end {
                    self.read(id, now, to_end);
                }
            }
            for id in std::mem::take(&mut self.read_again) {
                self.read(id, now, false);
            }
            if self.handle_commands(now) {
                break;
            }
            if let (Some(at), Some(tick)) = (next_tick, tick) {
                if now >= at {
                    self.check_timers(now);
                    next_tick = Some(now + tick);
                }
            }
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.remove(id, CloseReason::new("the transport shut down"));
        }
        debug!("event loop {} stopped", self.id);
    }

    /// Writes what connection `id` has queued.
    fn flush(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.conns.get(&id) else {
            return;
        };
        let conn = Arc::clone(entry.client.conn());
        let flushed = conn.writes().flush();
        conn.rewatch_after_write();
        match flushed {
            Flushed::Done | Flushed::Blocked => {}
            Flushed::Again => self.flush_again.push(id),
            Flushed::Failed(err) => {
                conn.fail_write(err);
                self.remove(id, CloseReason::failure("write failed"));
                return;
            }
        }
        if conn.after_flush() {
            // The peer read its answers: its requests are read again.
            self.read(id, now, true);
        }
        self.finish_if_done(id);
    }

    /// Reads what connection `id` has; `drain`: to the end, not stopping at a short read.
    /// Nothing, when a caller holds the read turn (it wakes the loop when it gives the
    /// turn back); what the caller's last read came to, if it handed that over.
    fn read(&mut self, id: u64, now: Instant, drain: bool) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        if entry.ended_at.is_some() {
            return;
        }
        let conn = Arc::clone(entry.client.conn());
        let client = &entry.client;
        let scratch = &mut self.scratch;
        let read = conn.read_turn().on_loop(&conn, |reader, handler| {
            reader.read_ready(&conn, client, scratch, READ_BUDGET, handler, drain, now)
        });
        let Some((outcome, refusal)) = read else {
            return;
        };
        match outcome {
            ReadOutcome::Drained | ReadOutcome::Paused => {}
            ReadOutcome::Budget => self.read_again.push(id),
            ReadOutcome::Ended => {
                entry.ended_at = Some(now);
                if conn.peer_closed() {
                    self.remove(id, CloseReason::new("closed by the peer"));
                } else {
                    debug!(
                        "{} closed its side; {} answers still owed",
                        conn.peer(),
                        conn.owed()
                    );
                }
            }
            ReadOutcome::Closed => self.remove(id, CloseReason::new("closed")),
            ReadOutcome::Refused => {
                // Nothing more is read; the failure answer goes out, then the connection
                // closes (at the latest when the handshake's time is up).
                entry.ended_at = Some(now);
                entry.refusal = refusal;
                if conn.peer_closed() {
                    let reason = self.refusal_reason(id);
                    self.remove(id, reason);
                }
            }
        }
    }

    /// Closes a connection whose peer ended its side once it owes nothing more.
    fn finish_if_done(&mut self, id: u64) {
        let done = self
            .conns
            .get(&id)
            .is_some_and(|entry| entry.ended_at.is_some() && entry.client.conn().is_finished());
        if done {
            let reason = self.refusal_reason(id);
            self.remove(id, reason);
        }
    }

    /// Why a connection whose reading ended closes: the refusal of its peer's request
    /// (reported as that failure), a failed handshake, or the peer's end of stream.
    fn refusal_reason(&mut self, id: u64) -> CloseReason {
        let Some(entry) = self.conns.get_mut(&id) else {
            return CloseReason::new("closed by the peer");
        };
        let awaiting_auth = entry
            .client
            .conn()
            .read_turn()
            .with_reader(|reader| reader.awaiting_auth().is_some())
            .unwrap_or(false);
        match entry.refusal.take() {
            Some(err) => CloseReason::fault(err),
            None if awaiting_auth => CloseReason::new("refused: it failed to authenticate"),
            None => CloseReason::new("closed by the peer"),
        }
    }

    /// Forgets a connection, closing it if it is not closed yet, and reports it to the
    /// handler: failed (`exception_caught`, when it failed), then inactive.
    fn remove(&mut self, id: u64, reason: CloseReason) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        let conn = entry.client.conn();
        conn.close_with(reason);
        let Some(mut reader) = conn.read_turn().take_reader() else {
            return;
        };
        let error = conn.failure().unwrap_or_else(|| conn.closed_error());
        reader.fail_stream(conn.peer(), error);
        if let Some(count) = &entry.inbound {
            count.fetch_sub(1, Ordering::AcqRel);
        }
        // The handler hears of a connection only once it was active (authenticated, when
        // the peer had to).
        let active = reader.is_active();
        // The reader's socket handle goes with it: the descriptor closes now (or when a
        // caller that held the read turn lets go of it).
        drop(reader);
        if !active {
            return;
        }
        if let Some(error) = conn.failure() {
            guard(conn.peer(), "exception_caught", || {
                self.handler.exception_caught(&error, &entry.client)
            });
        }
        let peer = conn.peer();
        guard(peer, "channel_inactive", || {
            self.handler.channel_inactive(&entry.client)
        });
    }

    /// Runs the queued commands; true when the loop must exit.
    fn handle_commands(&mut self, now: Instant) -> bool {
        let mut shutdown = false;
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Register(registration) => self.register(*registration, now),
                Command::Closed(id) => self.remove(id, CloseReason::new("closed")),
                Command::Wake(conn, Wake::Flush) => self.flush(conn.id(), now),
                Command::Wake(conn, Wake::Resume) => self.read(conn.id(), now, true),
                Command::Wake(conn, Wake::Check) => self.finish_if_done(conn.id()),
                Command::CloseOrigin(origin) => {
                    let ids: Vec<u64> = self
                        .conns
                        .iter()
                        .filter(|(_, entry)| entry.origin == origin)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        self.remove(
                            id,
                            CloseReason::new("its server or client factory was closed"),
                        );
                    }
                }
                Command::Shutdown => shutdown = true,
            }
        }
        shutdown
    }

    fn register(&mut self, registration: Registration, now: Instant) {
        let Registration {
            client,
            wire,
            origin,
            inbound,
            decryptor,
            auth,
        } = registration;
        let id = client.id();
        let peer = client.remote_address();
        if !client.conn().is_open() {
            // Closed before the loop took it over.
            if let Some(count) = &inbound {
                count.fetch_sub(1, Ordering::AcqRel);
            }
            if auth.is_none() {
                guard(peer, "channel_inactive", || {
                    self.handler.channel_inactive(&client)
                });
            }
            return;
        }
        let max_frame = client.conn().max_frame();
        let mut reader = Box::new(Reader::new(wire, max_frame, now, decryptor, auth));
        // A peer that must authenticate first is active once it did.
        reader.activate(&client, &*self.handler);
        client
            .conn()
            .read_turn()
            .install(reader, Arc::clone(&self.handler));
        self.conns.insert(
            id,
            Entry {
                client,
                origin,
                inbound,
                ended_at: None,
                refusal: None,
            },
        );
        // Events that came before the loop knew the connection were dropped.
        self.flush(id, now);
        self.read(id, now, true);
    }

    /// Closes the connections whose peer went silent or stalled (see the rules in
    /// [`TransportConf`]'s keys `rpc.io.connectionTimeout` and `rpc.io.frameTimeout`).
    fn check_timers(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (id, entry) in &self.conns {
            entry.client.conn().check_answer_backlog();
            let conn = entry.client.conn();
            let overdue = conn
                .read_turn()
                .with_reader(|reader| self.overdue(entry, reader, now));
            if let Some(reason) = overdue.flatten() {
                expired.push((*id, reason));
            }
        }
        for (id, reason) in expired {
            let client = &self.conns[&id].client;
            let peer = client.remote_address();
            peer_warn!(
                client.conn().env_counters().log_limit,
                peer,
                kind::STALLED,
                "closing the connection with {peer}: {reason}"
            );
            self.remove(id, CloseReason::failure(reason));
        }
    }

    /// Why connection `entry` must close now, if it must.
    fn overdue(&self, entry: &Entry, reader: &Reader, now: Instant) -> Option<String> {
        let conn = entry.client.conn();
        if let Some(timeout) = reader.awaiting_auth() {
            if now.saturating_duration_since(reader.since()) >= timeout {
                return Some(format!(
                    "it did not authenticate within {timeout:?} of connecting ({})",
                    keys::AUTH_TIMEOUT
                ));
            }
        }
        if let Some(timeout) = self.conf.connection_timeout() {
            if let Some(ended) = entry.ended_at {
                if now.saturating_duration_since(ended) >= timeout {
                    return Some(format!(
                        "the peer closed its side {timeout:?} ago and {} answers are still \
                         owed ({})",
                        conn.owed(),
                        keys::IO_CONNECTION_TIMEOUT
                    ));
                }
                return None;
            }
            let (streams, streams_since) = conn.streams_outstanding();
            let open_ended = conn.requests().open_ended() + streams;
            // A connection this side stopped reading (a stream's reader is full) is not
            // silent: its silence counts from when it is read again.
            if open_ended > 0 && !conn.is_paused() {
                let waiting = match (conn.requests().waiting_since(), streams_since) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let since =
                    waiting.map_or_else(|| reader.last_read(), |w| w.max(reader.last_read()));
                if now.saturating_duration_since(since) >= timeout {
                    return Some(format!(
                        "the peer was silent for {timeout:?} with {open_ended} requests \
                         outstanding ({})",
                        keys::IO_CONNECTION_TIMEOUT
                    ));
                }
            }
            if let Some(stalled) = conn.writes().stalled_for(now) {
                if stalled >= timeout {
                    let (ready, _) = conn.writes().queued();
                    return Some(format!(
                        "the peer read nothing for {timeout:?} with {ready} bytes queued \
                         ({})",
                        keys::IO_CONNECTION_TIMEOUT
                    ));
                }
            }
        }
        if let Some(timeout) = self.conf.frame_timeout() {
            if conn.is_inbound()
                && reader.frames() == 0
                && now.saturating_duration_since(reader.since()) >= timeout
            {
                return Some(format!(
                    "it sent no whole frame within {timeout:?} of connecting ({})",
                    keys::IO_FRAME_TIMEOUT
                ));
            }
            if reader.in_frame() && !conn.is_paused() {
                if now.saturating_duration_since(reader.last_read()) >= timeout {
                    return Some(format!(
                        "it stalled for {timeout:?} in the middle of a frame ({})",
                        keys::IO_FRAME_TIMEOUT
                    ));
                }
                if reader.frame_too_slow(timeout, now) {
                    return Some(format!(
                        "it sent a frame slower than {} KiB/s for longer than {timeout:?} ({})",
                        MIN_FRAME_RATE / 1024,
                        keys::IO_FRAME_TIMEOUT
                    ));
                }
            }
        }
        None
    }
}

/// How often a loop looks at its timers: a quarter of the shortest timeout, between 10 ms
/// and 1 s, so a connection is closed at most that much after its timeout; every second
/// when no timeout is set (a handshake's timeout comes with each connection).
fn tick_interval(conf: &TransportConf) -> Option<Duration> {
    let shortest = match (conf.connection_timeout(), conf.frame_timeout()) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(Duration::from_secs(4)),
    };
    Some((shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
}

#[cfg(test)]
mod entry_tests {
    use super::{Entry, Reader};
    use crate::transport::read_turn::ReadTurn;

    /// The per-connection slot of a loop's map, and the read turn in the `Conn`, are
    /// what every idle connection costs beyond the rest of its `Conn` (the map keeps up
    /// to twice as many slots as entries): the reader, over 500 bytes, lives behind a
    /// box in the turn, so neither holds it inline.
    #[test]
    fn an_idle_connection_holds_no_reader_inline() {
        let entry = size_of::<Entry>();
        let turn = size_of::<ReadTurn>();
        let reader = size_of::<Reader>();
        assert!(reader > 256, "the reader is {reader} bytes");
        assert!(
            entry <= 128,
            "a connection's map slot is {entry} bytes (the reader alone is {reader})"
        );
        assert!(
            turn <= 64,
            "a connection's read turn is {turn} bytes (the reader alone is {reader})"
        );
    }
}
