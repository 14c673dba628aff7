//! [`RpcEnv::metrics`](crate::RpcEnv::metrics): a snapshot of what an env is doing, and
//! the counters behind it.
//!
//! Every figure is counted where its event happens, by the thing it counts: a
//! connection counts its bytes and frames (relaxed atomics written by its event loop, or
//! fields of a lock the write path holds anyway), an inbox its depth, messages and
//! handler times, the env its timeouts, connects and rejected frames. No lock is taken on
//! the hot path for them; the snapshot takes the registries' locks (connections,
//! endpoints) to find what to read.

#[cfg(feature = "metrics")]
pub(crate) mod facade;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use crate::rpc::RpcAddress;
use crate::sync::atomic::{AtomicU64, Ordering};

/// What [`RpcEnv::metrics`](crate::RpcEnv::metrics) returns: the state of one env at
/// one instant. A plain value: take one now and one later and compare the counters
/// (which only grow while the env runs) to get rates.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcMetrics {
    /// When the snapshot was taken (wall clock).
    pub at: SystemTime,
    /// Env-wide figures.
    pub env: EnvMetrics,
    /// One entry per peer socket address with an open connection, by address.
    pub peers: Vec<PeerMetrics>,
    /// One entry per registered endpoint (the `endpoint-verifier` of a server env
    /// included), by name.
    pub endpoints: Vec<EndpointMetrics>,
}

/// Env-wide figures of an [`RpcMetrics`] snapshot. Counts (`u64`) are totals since the
/// env was built; the others are the state at the snapshot.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EnvMetrics {
    /// The env's name ([`RpcEnv::name`](crate::RpcEnv::name)).
    pub name: String,
    /// Its listen address; `None` in client mode.
    pub address: Option<RpcAddress>,
    /// Open connections, both ways, downloads' included.
    pub connections: usize,
    /// Bytes received on every connection, closed ones included (as read from the
    /// socket: encrypted bytes when encrypted).
    pub bytes_in: u64,
    /// Bytes written to every connection, closed ones included.
    pub bytes_out: u64,
    /// Whole frames received, closed connections included.
    pub frames_in: u64,
    /// Frames handed to connections for writing, closed connections included.
    pub frames_out: u64,
    /// Bytes waiting in the open connections' write queues now (frames held back by a
    /// peer's window included).
    pub bytes_queued: u64,
    /// Asks of this env waiting for their outcome now, local ones included.
    pub asks_in_flight: usize,
    /// Asks that failed with [`RpcError::Timeout`](crate::RpcError::Timeout), by the
    /// key that set the deadline (`rpc.askTimeout`, `rpc.lookupTimeout`, ...) or the
    /// method whose argument did (`ask_timeout`, `ask_sync_timeout`, ...).
    pub timeouts: BTreeMap<String, u64>,
    /// Outbound connections established (handshake included when authenticating).
    pub connects: u64,
    /// Outbound connection attempts that failed (refused, unreachable, timed out,
    /// authentication refused).
    pub connect_failures: u64,
    /// Inbound connections closed at accept because of `rpc.io.maxConnections`.
    pub connections_refused: u64,
    /// One-way messages accepted for sending and then lost: their connection closed
    /// before they were written, or their connect failed.
    pub one_way_dropped: u64,
    /// What peers sent that was refused, by kind (see the README, "Operating rpcenv");
    /// each also logs at `warn`, rate-limited per peer and kind.
    pub frames_rejected: BTreeMap<String, u64>,
    /// Failed authentications, both ways (also counted in `frames_rejected` as `auth`).
    pub auth_failures: u64,
    /// Answers (or failures the peer sent) that the thread waiting for them read from
    /// their connection itself, rather than being woken by the connection's event loop
    /// (see the crate docs, "Threads": an ask that is its connection's only one
    /// outstanding is answered one thread hand-off sooner). A wait that ended with a
    /// timeout, a close or a shutdown while the thread read is not counted.
    pub answers_read_by_callers: u64,
    /// Read turns taken by idle `rpc-dispatcher-N` threads on the connection they last
    /// answered a request on (see the crate docs, "Threads": the next request on it then
    /// reaches a dispatcher without a hand-off from the connection's event loop).
    pub dispatcher_read_turns: u64,
    /// Frame buffers of 1 MiB or more (a large message's encoded body, or a received
    /// one's) taken from the env's pool of reused buffers instead of allocated: each
    /// saves the page faults of a fresh buffer. The pool keeps at most 64 MiB of buffers
    /// given back once their frame was written, or once the last view of a received body
    /// (a `SharedBytes` the message kept, say) dropped.
    pub buffers_reused: u64,
}

/// The connections to one peer socket address in an [`RpcMetrics`] snapshot: counts
/// over its open connections (a closed connection's counts stay in [`EnvMetrics`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerMetrics {
    /// The peer's socket address: the listen address of a server this env connected
    /// to, the ephemeral address of a peer that connected to this env.
    pub address: SocketAddr,
    /// Open connections with it.
    pub connections: usize,
    /// Of those, the ones the peer opened.
    pub inbound: usize,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes written to it.
    pub bytes_out: u64,
    /// Whole frames received from it.
    pub frames_in: u64,
    /// Frames handed over for it.
    pub frames_out: u64,
    /// Bytes waiting to be written to it now.
    pub bytes_queued: u64,
    /// Requests sent to it that wait for an answer now (asks and lookups).
    pub asks_in_flight: usize,
    /// How long ago bytes last arrived from it; `None` if none ever did.
    pub last_activity: Option<Duration>,
}

/// What kind of endpoint an [`EndpointMetrics`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointKind {
    /// An [`RpcEndpoint`](crate::RpcEndpoint) on the shared `rpc-dispatcher-N` pool
    /// ([`Threading::Shared`](crate::Threading::Shared)): one message at a time.
    Shared,
    /// An [`RpcEndpoint`](crate::RpcEndpoint) on a thread of its own
    /// ([`Threading::Dedicated`](crate::Threading::Dedicated)): one message at a time.
    Dedicated,
    /// A [`ConcurrentRpcEndpoint`](crate::ConcurrentRpcEndpoint) on the shared pool:
    /// several messages at once.
    Concurrent,
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Shared => "shared",
            Self::Dedicated => "dedicated",
            Self::Concurrent => "concurrent",
        })
    }
}

/// One endpoint in an [`RpcMetrics`] snapshot. Counts are totals since it was
/// registered.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointMetrics {
    /// Its name.
    pub name: String,
    /// Which kind of endpoint it is, and which threads run it.
    pub kind: EndpointKind,
    /// Messages and events waiting in its inbox now.
    pub inbox_depth: usize,
    /// The most that ever waited at once.
    pub inbox_high_water: usize,
    /// Messages, asks and events handled (`on_start`, `on_stop` and connection events
    /// included; a message that failed to decode too).
    pub messages_handled: u64,
    /// How long each of those took, decoding and taking it out of the inbox included.
    pub handler_time: HandlerTime,
    /// Panics of its code caught (its `Deserialize` included).
    pub panics: u64,
    /// Asks it answered with [`RpcCallContext::reply`](crate::RpcCallContext::reply).
    pub asks_answered: u64,
    /// Asks that failed there: `send_failure`, a message that did not decode, a panic.
    pub asks_failed: u64,
    /// Asks whose context it dropped without answering (the asker got
    /// [`RpcError::NoReply`](crate::RpcError::NoReply), or the reason it stopped).
    pub asks_dropped: u64,
}

/// How many buckets a [`HandlerTime`] has.
pub const HANDLER_TIME_BUCKETS: usize = 32;

/// A histogram of durations with fixed log2 buckets in microseconds: bucket 0 counts
/// durations under 1 µs, bucket `i` (1..=30) those from `2^(i-1)` µs to under `2^i` µs,
/// and bucket 31 everything from `2^30` µs (about 18 minutes) up.
#[derive(Clone, PartialEq, Eq)]
pub struct HandlerTime {
    /// The counts, by bucket.
    pub buckets: [u64; HANDLER_TIME_BUCKETS],
}

impl Default for HandlerTime {
    fn default() -> Self {
        Self {
            buckets: [0; HANDLER_TIME_BUCKETS],
        }
    }
}

impl HandlerTime {
    /// The bucket a duration falls in.
    pub fn bucket_of(duration: Duration) -> usize {
        let micros = duration.as_micros();
        if micros == 0 {
            return 0;
        }
        let bits = (u128::BITS - micros.leading_zeros()) as usize;
        bits.min(HANDLER_TIME_BUCKETS - 1)
    }

    /// The upper bound of bucket `i` (exclusive); `Duration::MAX` for the last one.
    pub fn bucket_limit(i: usize) -> Duration {
        if i + 1 >= HANDLER_TIME_BUCKETS {
            Duration::MAX
        } else {
            Duration::from_micros(1 << i)
        }
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The approximate `p`-th percentile (`p` from 0 to 100): the upper bound of the
    /// bucket it falls in, so at most twice the true value; `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * count as f64)
            .ceil()
            .max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::bucket_limit(i));
            }
        }
        Some(Self::bucket_limit(HANDLER_TIME_BUCKETS - 1))
    }
}

impl fmt::Debug for HandlerTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (i, n) in self.buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
            map.entry(&format_args!("<{:?}", Self::bucket_limit(i)), n);
        }
        map.finish()
    }
}

impl RpcMetrics {
    /// One compact line for logs, its fields separated by spaces:
    ///
    /// | field | what |
    /// |---|---|
    /// | `conns=` | open connections |
    /// | `peers=` | peer socket addresses with open connections |
    /// | `in=` | bytes received (`B`, `kB`, `MB`, `GB`, powers of 1000) `/` frames received (`f`) |
    /// | `out=` | bytes written `/` frames handed over |
    /// | `queued=` | bytes waiting in write queues now |
    /// | `asks_in_flight=` | asks of this env waiting for their outcome |
    /// | `inbox=` | messages waiting in every inbox now |
    /// | `inbox_max=` | the largest high-water mark of an inbox |
    /// | `handled=` | messages handled by every endpoint |
    /// | `panics=` | panics caught in endpoint code |
    /// | `timeouts=` | asks timed out, every key |
    /// | `connect_failures=` | failed outbound connects |
    /// | `dropped=` | one-way messages lost |
    /// | `rejected=` | what peers sent that was refused, every kind |
    ///
    /// e.g. `conns=3 peers=2 in=12.1MB/3401f out=1.2MB/3399f queued=0B asks_in_flight=4
    /// inbox=0 inbox_max=17 handled=3401 panics=0 timeouts=2 connect_failures=0 dropped=0
    /// rejected=0`.
    pub fn status_line(&self) -> String {
        let env = &self.env;
        let inbox: usize = self.endpoints.iter().map(|e| e.inbox_depth).sum();
        let inbox_max = self
            .endpoints
            .iter()
            .map(|e| e.inbox_high_water)
            .max()
            .unwrap_or(0);
        let handled: u64 = self.endpoints.iter().map(|e| e.messages_handled).sum();
        let panics: u64 = self.endpoints.iter().map(|e| e.panics).sum();
        let mut line = String::new();
        let _ = write!(
            line,
            "conns={} peers={} in={}/{}f out={}/{}f queued={} asks_in_flight={} inbox={inbox} \
             inbox_max={inbox_max} handled={handled} panics={panics} timeouts={} \
             connect_failures={} dropped={} rejected={}",
            env.connections,
            self.peers.len(),
            Bytes(env.bytes_in),
            env.frames_in,
            Bytes(env.bytes_out),
            env.frames_out,
            Bytes(env.bytes_queued),
            env.asks_in_flight,
            env.timeouts.values().sum::<u64>(),
            env.connect_failures,
            env.one_way_dropped,
            env.frames_rejected.values().sum::<u64>(),
        );
        line
    }
}

/// Bytes with a decimal unit, one decimal.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        match n {
            0..1_000 => write!(f, "{n}B"),
            1_000..1_000_000 => write!(f, "{:.1}kB", n as f64 / 1e3),
            1_000_000..1_000_000_000 => write!(f, "{:.1}MB", n as f64 / 1e6),
            _ => write!(f, "{:.1}GB", n as f64 / 1e9),
        }
    }
}

/// The counters of one endpoint, shared by its inbox, its handler and the call contexts
/// of its asks.
#[derive(Debug)]
pub(crate) struct EndpointStats {
    pub(crate) handled: AtomicU64,
    buckets: [AtomicU64; HANDLER_TIME_BUCKETS],
    pub(crate) panics: AtomicU64,
    pub(crate) asks_answered: AtomicU64,
    pub(crate) asks_failed: AtomicU64,
    pub(crate) asks_dropped: AtomicU64,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            handled: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            panics: AtomicU64::new(0),
            asks_answered: AtomicU64::new(0),
            asks_failed: AtomicU64::new(0),
            asks_dropped: AtomicU64::new(0),
        }
    }
}

impl EndpointStats {
    /// One message handled in `took`.
    pub(crate) fn handled(&self, took: Duration) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.buckets[HandlerTime::bucket_of(took)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handler_time(&self) -> HandlerTime {
        HandlerTime {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Milliseconds from the first stamp in this process to `now`, plus one (0: never), for
/// "last activity" stamps kept in an atomic.
pub(crate) fn stamp_at(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

/// How long ago a [`stamp_at`] stamp was; `None` for 0 (never).
pub(crate) fn since_stamp(stamp: u64) -> Option<Duration> {
    if stamp == 0 {
        return None;
    }
    let now = epoch().elapsed().as_millis() as u64 + 1;
    Some(Duration::from_millis(now.saturating_sub(stamp)))
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_time_buckets_are_log2_microseconds() {
        assert_eq!(HandlerTime::bucket_of(Duration::ZERO), 0);
        assert_eq!(HandlerTime::bucket_of(Duration::from_nanos(999)), 0);
        assert_eq!(HandlerTime::bucket_of(Duration::from_micros(1)), 1);
        assert_eq!(HandlerTime::bucket_of(Duration::from_micros(3)), 2);
        assert_eq!(HandlerTime::bucket_of(Duration::from_micros(4)), 3);
        assert_eq!(HandlerTime::bucket_of(Duration::from_millis(1)), 10);
        assert_eq!(HandlerTime::bucket_of(Duration::from_secs(1 << 40)), 31);
        for i in 0..HANDLER_TIME_BUCKETS - 1 {
            let limit = HandlerTime::bucket_limit(i);
            assert_eq!(HandlerTime::bucket_of(limit), i + 1, "bucket {i}");
            assert_eq!(HandlerTime::bucket_of(limit - Duration::from_nanos(1)), i);
        }
    }

    #[test]
    fn percentiles_are_bucket_upper_bounds() {
        let mut h = HandlerTime::default();
        assert_eq!(h.percentile(50.0), None);
        h.buckets[HandlerTime::bucket_of(Duration::from_micros(10))] = 90;
        h.buckets[HandlerTime::bucket_of(Duration::from_millis(5))] = 10;
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(50.0), Some(Duration::from_micros(16)));
        assert_eq!(h.percentile(90.0), Some(Duration::from_micros(16)));
        assert_eq!(h.percentile(91.0), Some(Duration::from_micros(8192)));
        assert_eq!(h.percentile(100.0), Some(Duration::from_micros(8192)));
        assert_eq!(h.percentile(0.0), Some(Duration::from_micros(16)));
    }

    #[test]
    fn bytes_are_shown_with_decimal_units() {
        assert_eq!(Bytes(0).to_string(), "0B");
        assert_eq!(Bytes(999).to_string(), "999B");
        assert_eq!(Bytes(12_100_000).to_string(), "12.1MB");
        assert_eq!(Bytes(1_500).to_string(), "1.5kB");
        assert_eq!(Bytes(3_000_000_000).to_string(), "3.0GB");
    }

    #[test]
    fn stamps_tell_how_long_ago() {
        assert_eq!(since_stamp(0), None);
        let stamp = stamp_at(Instant::now());
        assert!(since_stamp(stamp).unwrap() < Duration::from_secs(60));
    }
}
