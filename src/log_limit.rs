//! Log lines a peer cannot flood: what a peer sends that is refused (a bad frame, an
//! answer to no request, a message for an unknown endpoint, a decode failure, a failed
//! authentication) is logged through [`peer_warn!`], which counts it for
//! [`EnvMetrics::frames_rejected`](crate::EnvMetrics::frames_rejected) and lets through
//! the first [`BURST`] lines per peer host and kind; after that, one line per
//! [`INTERVAL`] tells how many were suppressed.
//!
//! Peers are told apart by IP address (not port), so a peer that reconnects gets no new
//! allowance; once [`MAX_KEYS`] peer/kind pairs are known, the pairs quiet for an
//! [`INTERVAL`] with nothing suppressed are forgotten (at most once per interval), and
//! new peers that still find no room share one entry per kind. The lock is taken only on
//! these rare paths, never for accepted traffic.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::sync::Mutex;

/// Lines logged per peer host and kind before they are suppressed.
pub(crate) const BURST: u64 = 5;
/// Once suppressed, at most one line (a summary with the count) per this long.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// The most peer/kind pairs remembered.
pub(crate) const MAX_KEYS: usize = 4096;

/// The kinds of refused input, as they appear in `frames_rejected`.
pub(crate) mod kind {
    /// A frame that does not decode (bad header, too large, cut short by a close).
    pub(crate) const BAD_FRAME: &str = "bad_frame";
    /// A request or one-way envelope that does not decode.
    pub(crate) const BAD_REQUEST: &str = "bad_request";
    /// A control message (flow control) that does not decode.
    pub(crate) const BAD_CONTROL: &str = "bad_control";
    /// An answer to a request that is not outstanding.
    pub(crate) const UNKNOWN_REQUEST_ID: &str = "unknown_request_id";
    /// A stream answer or failure nobody asked for.
    pub(crate) const UNKNOWN_STREAM: &str = "unknown_stream";
    /// A message for an endpoint that is unknown or stopped.
    pub(crate) const UNKNOWN_ENDPOINT: &str = "unknown_endpoint";
    /// A message or ask whose content does not decode as the endpoint's type (or is of
    /// another type).
    pub(crate) const DECODE: &str = "decode";
    /// A peer that failed to authenticate, or broke the channel cipher.
    pub(crate) const AUTH: &str = "auth";
    /// A request larger than `rpc.message.maxSize`.
    pub(crate) const TOO_LARGE: &str = "too_large";
    /// A peer silent too long while frames wait, or too slow in the middle of a frame
    /// (`rpc.io.frameTimeout`, `rpc.io.connectionTimeout`).
    pub(crate) const STALLED: &str = "stalled";
    /// A stream request for a file that is not served (counted only: the file server
    /// logs why).
    pub(crate) const BAD_STREAM_REQUEST: &str = "bad_stream_request";
}

#[derive(Debug)]
struct Entry {
    /// Lines logged so far.
    logged: u64,
    /// Suppressed since the last line.
    suppressed: u64,
    /// When the last line was logged.
    last: Instant,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<(IpAddr, &'static str), Entry>,
    rejected: BTreeMap<&'static str, u64>,
    /// When quiet entries were last forgotten to make room.
    swept: Option<Instant>,
}

/// Counts refused input by kind and decides which of its log lines are written.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    state: Mutex<State>,
}

/// What [`LogLimit::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Suppress the line.
    Skip,
    /// Log it; `n` lines of this peer and kind were suppressed before it.
    Log(u64),
}

impl LogLimit {
    /// Counts one event of `kind` from `peer` and says whether to log it.
    pub(crate) fn admit(&self, peer: Option<SocketAddr>, kind: &'static str) -> Verdict {
        self.admit_at(peer, kind, Instant::now())
    }

    fn admit_at(&self, peer: Option<SocketAddr>, kind: &'static str, now: Instant) -> Verdict {
        let mut state = self.state.lock();
        *state.rejected.entry(kind).or_default() += 1;
        let mut ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
        if state.entries.len() >= MAX_KEYS && !state.entries.contains_key(&(ip, kind)) {
            // Full: forget the pairs quiet for an interval with nothing left to report,
            // once per interval (a sweep is a pass over MAX_KEYS entries).
            if state
                .swept
                .is_none_or(|swept| now.saturating_duration_since(swept) >= INTERVAL)
            {
                state.swept = Some(now);
                state.entries.retain(|_, e| {
                    e.suppressed > 0 || now.saturating_duration_since(e.last) < INTERVAL
                });
            }
            if state.entries.len() >= MAX_KEYS {
                ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            }
        }
        let entry = state.entries.entry((ip, kind)).or_insert(Entry {
            logged: 0,
            suppressed: 0,
            last: now,
        });
        if entry.logged < BURST || now.duration_since(entry.last) >= INTERVAL {
            entry.logged += 1;
            entry.last = now;
            Verdict::Log(std::mem::take(&mut entry.suppressed))
        } else {
            entry.suppressed += 1;
            Verdict::Skip
        }
    }

    /// The count of every kind so far.
    pub(crate) fn rejected(&self) -> BTreeMap<String, u64> {
        let state = self.state.lock();
        state
            .rejected
            .iter()
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect()
    }

    /// The count of one kind so far.
    pub(crate) fn count(&self, kind: &str) -> u64 {
        self.state.lock().rejected.get(kind).copied().unwrap_or(0)
    }
}

/// `warn!` for a line a peer's input causes: counted in `$limit` (a [`LogLimit`]) as
/// `$kind` from `$peer` (an `Option<SocketAddr>` or a `SocketAddr`), and written only as
/// the limit allows, with a note of how many were suppressed before it.
macro_rules! peer_warn {
    ($limit:expr, $peer:expr, $kind:expr, $($arg:tt)+) => {{
        let peer: ::std::option::Option<::std::net::SocketAddr> = ::std::convert::Into::into($peer);
        if let $crate::log_limit::Verdict::Log(suppressed) = $limit.admit(peer, $kind) {
            if suppressed > 0 {
                ::log::warn!(
                    "{} ({suppressed} more such lines ({}) from {} suppressed)",
                    format_args!($($arg)+),
                    $kind,
                    $crate::log_limit::Host(peer),
                );
            } else {
                ::log::warn!($($arg)+);
            }
        }
    }};
}
pub(crate) use peer_warn;

/// A peer's host for the summary line.
#[derive(Debug)]
pub(crate) struct Host(pub(crate) Option<SocketAddr>);

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => write!(f, "{}", peer.ip()),
            None => f.write_str("this env"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, 1], port)))
    }

    #[test]
    fn a_burst_then_one_line_per_interval_with_the_count() {
        let limit = LogLimit::default();
        let t0 = Instant::now();
        let mut logged = Vec::new();
        for i in 0..1000u64 {
            // Every event from another port of the same host.
            let now = t0 + Duration::from_millis(i * 50);
            if let Verdict::Log(n) = limit.admit_at(peer(1000 + i as u16), kind::BAD_FRAME, now) {
                logged.push((i, n));
            }
        }
        // 5 at once; then 50 s of events at 20/s: one line per 10 s.
        assert_eq!(&logged[..5], &[(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]);
        assert_eq!(logged[5], (204, 199));
        assert_eq!(logged.len(), 5 + 4, "{logged:?}");
        assert_eq!(limit.count(kind::BAD_FRAME), 1000);
        assert_eq!(limit.rejected()["bad_frame"], 1000);
    }

    #[test]
    fn kinds_and_hosts_have_their_own_allowance() {
        let limit = LogLimit::default();
        let now = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(peer(1), kind::DECODE, now), Verdict::Log(0));
        }
        assert_eq!(limit.admit_at(peer(1), kind::DECODE, now), Verdict::Skip);
        assert_eq!(limit.admit_at(peer(1), kind::AUTH, now), Verdict::Log(0));
        let other = Some(SocketAddr::from(([10, 0, 0, 2], 1)));
        assert_eq!(limit.admit_at(other, kind::DECODE, now), Verdict::Log(0));
    }

    #[test]
    fn many_hosts_share_one_entry_once_full() {
        let limit = LogLimit::default();
        let now = Instant::now();
        let mut logged = 0;
        // From 1: host 0.0.0.0 is the shared entry.
        for i in 1..=(MAX_KEYS as u32 + 1000) {
            let host = SocketAddr::from((i.to_be_bytes(), 1));
            if limit.admit_at(Some(host), kind::BAD_FRAME, now) != Verdict::Skip {
                logged += 1;
            }
        }
        assert_eq!(logged, MAX_KEYS + BURST as usize);
        assert!(limit.state.lock().entries.len() <= MAX_KEYS + 1);
    }

    #[test]
    fn once_full_quiet_hosts_are_forgotten_to_make_room() {
        let limit = LogLimit::default();
        let t0 = Instant::now();
        let host = |i: u32| Some(SocketAddr::from(((i + 1).to_be_bytes(), 1)));
        for i in 0..MAX_KEYS as u32 {
            assert_eq!(
                limit.admit_at(host(i), kind::BAD_FRAME, t0),
                Verdict::Log(0)
            );
        }
        // One of them keeps being refused, and has a suppressed line to report.
        let noisy = host(0);
        for _ in 0..BURST {
            limit.admit_at(noisy, kind::BAD_FRAME, t0);
        }
        // Within the interval a new host shares the full table's entry ...
        let new = Some(SocketAddr::from(([192, 168, 0, 1], 1)));
        let soon = t0 + INTERVAL / 2;
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(new, kind::BAD_FRAME, soon), Verdict::Log(0));
        }
        assert_eq!(limit.admit_at(new, kind::BAD_FRAME, soon), Verdict::Skip);
        // ... and after it, the quiet ones are forgotten: the next new host has its own
        // allowance, and the noisy one still reports what it suppressed.
        let later = t0 + INTERVAL * 2;
        let newer = Some(SocketAddr::from(([192, 168, 0, 2], 1)));
        for _ in 0..BURST {
            assert_eq!(
                limit.admit_at(newer, kind::BAD_FRAME, later),
                Verdict::Log(0)
            );
        }
        assert_eq!(limit.admit_at(newer, kind::BAD_FRAME, later), Verdict::Skip);
        assert_eq!(
            limit.admit_at(noisy, kind::BAD_FRAME, later),
            Verdict::Log(1)
        );
        assert!(limit.state.lock().entries.len() < 10);
        assert_eq!(
            limit.count(kind::BAD_FRAME),
            (MAX_KEYS as u64) + 3 * BURST + 3
        );
    }
}
