//! The `metrics` feature: an `rpc-metrics` thread per env publishes
//! [`RpcEnv::metrics`](crate::RpcEnv::metrics) to the `metrics` crate's recorder every
//! `rpc.metrics.interval`, and once more when the env stops. Nothing is recorded on the
//! message path: the figures are the snapshot's, so the facade costs one snapshot per
//! interval whatever the traffic.
//!
//! Names carry the prefix `rpcenv_` and labels `env` (the env's name), `peer` or
//! `endpoint`; counters are published as absolute values (`_total`), states as gauges.
//!
//! **The `peer` label.** A peer this env connected to is labelled by its socket address
//! (`10.0.0.5:7077`: the port it listens on, which stays the same). A peer that connected
//! to this env is labelled by its IP alone (`10.0.0.7`): its port is an ephemeral one,
//! new on every connection, so a peer that reconnects would otherwise add a series each
//! time. The figures of one IP are the sums over its inbound connections: gauges
//! (`rpcenv_peer_connections`, `_bytes_queued`, `_asks_in_flight`) over the open ones,
//! 0 once none is open; counters over every inbound connection from that IP since the
//! env started, a closed connection counting with its figures at the last publication
//! before it closed (what it did after that shows only in the env's totals), so they
//! never decrease. `rpcenv_peer_last_activity_seconds` is that of its most recently
//! active open connection. The facade remembers the closed connections' counters of each
//! IP for the env's lifetime (a few dozen bytes per IP, as the recorder holds its
//! series). Handler times go to the histogram `rpcenv_endpoint_handler_seconds`
//! as the samples added to each log2 bucket since the last publication, each at the
//! bucket's middle (1.5 times its lower bound).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::debug;
use metrics::{Label, counter, gauge, histogram};

use crate::error::RpcError;
use crate::metrics::{HANDLER_TIME_BUCKETS, HandlerTime, PeerMetrics, RpcMetrics};
use crate::sync::Mutex;
use crate::threads::spawn;

/// The `rpc-metrics` thread of one env.
#[derive(Debug)]
pub(crate) struct Publisher {
    stop: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl Publisher {
    /// Starts the thread: every `interval`, `snapshot()` (`None` once the env is gone)
    /// is published.
    pub(crate) fn start(
        interval: Duration,
        snapshot: impl Fn() -> Option<RpcMetrics> + Send + 'static,
    ) -> Result<Self, RpcError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let thread = spawn("rpc-metrics".into(), move || run(&rx, interval, snapshot))?;
        Ok(Self {
            stop: Mutex::new(Some((tx, thread))),
        })
    }

    /// Publishes once more and stops the thread.
    pub(crate) fn stop(&self) {
        if let Some((tx, thread)) = self.stop.lock().take() {
            drop(tx);
            if thread.join().is_err() {
                debug!("the rpc-metrics thread panicked");
            }
        }
    }
}

fn run(rx: &Receiver<()>, interval: Duration, snapshot: impl Fn() -> Option<RpcMetrics>) {
    let mut state = State::default();
    loop {
        let last = match rx.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        };
        match snapshot() {
            Some(metrics) => state.publish(&metrics),
            None => return,
        }
        if last {
            return;
        }
    }
}

/// What earlier publications leave for the next: each endpoint's handler times (to
/// publish only what was added) and the counters of inbound connections (to keep those
/// of closed ones in their IP's sums).
#[derive(Debug, Default)]
pub(crate) struct State {
    handler_times: HashMap<String, HandlerTime>,
    /// Open inbound connections by peer socket address: their figures as last published.
    inbound_open: HashMap<SocketAddr, PeerFigures>,
    /// Per IP, the counters of its inbound connections that have closed.
    inbound_closed: HashMap<IpAddr, PeerFigures>,
}

/// The figures published under one `peer` label.
#[derive(Debug, Default, Clone)]
struct PeerFigures {
    connections: usize,
    bytes_in: u64,
    bytes_out: u64,
    frames_in: u64,
    frames_out: u64,
    bytes_queued: u64,
    asks_in_flight: usize,
    last_activity: Option<Duration>,
}

impl PeerFigures {
    fn of(p: &PeerMetrics) -> Self {
        Self {
            connections: p.connections,
            bytes_in: p.bytes_in,
            bytes_out: p.bytes_out,
            frames_in: p.frames_in,
            frames_out: p.frames_out,
            bytes_queued: p.bytes_queued,
            asks_in_flight: p.asks_in_flight,
            last_activity: p.last_activity,
        }
    }

    /// Adds the counters of `other` (bytes and frames, both ways).
    fn add_counters(&mut self, other: &Self) {
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.frames_in += other.frames_in;
        self.frames_out += other.frames_out;
    }

    /// Adds all of `other`: counters and gauges summed, the most recent activity kept.
    fn add(&mut self, other: &Self) {
        self.add_counters(other);
        self.connections += other.connections;
        self.bytes_queued += other.bytes_queued;
        self.asks_in_flight += other.asks_in_flight;
        self.last_activity = match (self.last_activity, other.last_activity) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl State {
    /// Publishes `m` to the current recorder.
    pub(crate) fn publish(&mut self, m: &RpcMetrics) {
        let e = &m.env;
        let env = || vec![Label::new("env", e.name.clone())];
        gauge!("rpcenv_connections", env()).set(e.connections as f64);
        counter!("rpcenv_bytes_received_total", env()).absolute(e.bytes_in);
        counter!("rpcenv_bytes_sent_total", env()).absolute(e.bytes_out);
        counter!("rpcenv_frames_received_total", env()).absolute(e.frames_in);
        counter!("rpcenv_frames_sent_total", env()).absolute(e.frames_out);
        gauge!("rpcenv_bytes_queued", env()).set(e.bytes_queued as f64);
        gauge!("rpcenv_asks_in_flight", env()).set(e.asks_in_flight as f64);
        gauge!("rpcenv_peers", env()).set(m.peers.len() as f64);
        for (key, n) in &e.timeouts {
            let mut labels = env();
            labels.push(Label::new("key", key.clone()));
            counter!("rpcenv_timeouts_total", labels).absolute(*n);
        }
        counter!("rpcenv_connects_total", env()).absolute(e.connects);
        counter!("rpcenv_connect_failures_total", env()).absolute(e.connect_failures);
        counter!("rpcenv_connections_refused_total", env()).absolute(e.connections_refused);
        counter!("rpcenv_one_way_dropped_total", env()).absolute(e.one_way_dropped);
        for (kind, n) in &e.frames_rejected {
            let mut labels = env();
            labels.push(Label::new("kind", kind.clone()));
            counter!("rpcenv_frames_rejected_total", labels).absolute(*n);
        }
        counter!("rpcenv_auth_failures_total", env()).absolute(e.auth_failures);
        counter!("rpcenv_answers_read_by_callers_total", env()).absolute(e.answers_read_by_callers);
        counter!("rpcenv_dispatcher_read_turns_total", env()).absolute(e.dispatcher_read_turns);
        counter!("rpcenv_buffers_reused_total", env()).absolute(e.buffers_reused);
        for (label, f) in self.peer_figures(m) {
            let peer = || {
                let mut labels = env();
                labels.push(Label::new("peer", label.clone()));
                labels
            };
            gauge!("rpcenv_peer_connections", peer()).set(f.connections as f64);
            counter!("rpcenv_peer_bytes_received_total", peer()).absolute(f.bytes_in);
            counter!("rpcenv_peer_bytes_sent_total", peer()).absolute(f.bytes_out);
            counter!("rpcenv_peer_frames_received_total", peer()).absolute(f.frames_in);
            counter!("rpcenv_peer_frames_sent_total", peer()).absolute(f.frames_out);
            gauge!("rpcenv_peer_bytes_queued", peer()).set(f.bytes_queued as f64);
            gauge!("rpcenv_peer_asks_in_flight", peer()).set(f.asks_in_flight as f64);
            if let Some(ago) = f.last_activity {
                gauge!("rpcenv_peer_last_activity_seconds", peer()).set(ago.as_secs_f64());
            }
        }
        for ep in &m.endpoints {
            let endpoint = || {
                let mut labels = env();
                labels.push(Label::new("endpoint", ep.name.clone()));
                labels
            };
            gauge!("rpcenv_endpoint_inbox_depth", endpoint()).set(ep.inbox_depth as f64);
            gauge!("rpcenv_endpoint_inbox_high_water", endpoint()).set(ep.inbox_high_water as f64);
            counter!("rpcenv_endpoint_messages_handled_total", endpoint())
                .absolute(ep.messages_handled);
            counter!("rpcenv_endpoint_panics_total", endpoint()).absolute(ep.panics);
            counter!("rpcenv_endpoint_asks_answered_total", endpoint()).absolute(ep.asks_answered);
            counter!("rpcenv_endpoint_asks_failed_total", endpoint()).absolute(ep.asks_failed);
            counter!("rpcenv_endpoint_asks_dropped_total", endpoint()).absolute(ep.asks_dropped);
            let seen = self.handler_times.entry(ep.name.clone()).or_default();
            let histogram = histogram!("rpcenv_endpoint_handler_seconds", endpoint());
            for i in 0..HANDLER_TIME_BUCKETS {
                // An endpoint registered again under the name starts from zero.
                let added = ep.handler_time.buckets[i].saturating_sub(seen.buckets[i]);
                if added > 0 {
                    histogram.record_many(bucket_middle(i), added as usize);
                }
            }
            *seen = ep.handler_time.clone();
        }
    }

    /// The figures of `m`'s peers by `peer` label: an outbound peer under its socket
    /// address, inbound ones summed under their IP, with the counters of the IP's closed
    /// inbound connections (see the module docs). Remembers the open inbound connections
    /// for the next call.
    fn peer_figures(&mut self, m: &RpcMetrics) -> BTreeMap<String, PeerFigures> {
        let mut by_label: BTreeMap<String, PeerFigures> = BTreeMap::new();
        let mut inbound_open = HashMap::new();
        for p in &m.peers {
            let figures = PeerFigures::of(p);
            let label = if p.inbound > 0 {
                inbound_open.insert(p.address, figures.clone());
                p.address.ip().to_string()
            } else {
                p.address.to_string()
            };
            by_label.entry(label).or_default().add(&figures);
        }
        for (address, figures) in self.inbound_open.drain() {
            if !inbound_open.contains_key(&address) {
                let closed = self.inbound_closed.entry(address.ip()).or_default();
                closed.add_counters(&figures);
            }
        }
        self.inbound_open = inbound_open;
        for (ip, closed) in &self.inbound_closed {
            let figures = by_label.entry(ip.to_string()).or_default();
            figures.add_counters(closed);
        }
        by_label
    }
}

/// The middle of bucket `i`, in seconds.
fn bucket_middle(i: usize) -> f64 {
    if i == 0 {
        0.5e-6
    } else {
        1.5e-6 * (1u64 << (i - 1)) as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::RpcEnv;
    use crate::conf::RpcConf;

    /// A metric's name, labels and value.
    type Value = (String, Vec<(String, String)>, DebugValue);

    fn find<'a>(
        values: &'a [Value],
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'a DebugValue> {
        values
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
    }

    fn values(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<Value> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (key.name().to_owned(), labels, value)
            })
            .collect()
    }

    #[test]
    fn metrics_are_published_to_the_facade_by_the_metrics_thread() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // The only recorder of this test binary.
        metrics::set_global_recorder(recorder).expect("no recorder yet");
        let conf = RpcConf::new().set("rpc.metrics.interval", "50ms");
        let env = RpcEnv::builder("facade-test")
            .bind_address("127.0.0.1")
            .port(0)
            .conf(conf)
            .build()
            .unwrap();
        let verifier = [("env", "facade-test"), ("endpoint", "endpoint-verifier")];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = values(&snapshotter);
            let handled = find(&v, "rpcenv_endpoint_messages_handled_total", &verifier);
            if handled == Some(&DebugValue::Counter(1)) {
                let Some(DebugValue::Histogram(times)) =
                    find(&v, "rpcenv_endpoint_handler_seconds", &verifier)
                else {
                    panic!("no handler times: {v:?}");
                };
                assert_eq!(times.len(), 1, "on_start");
                assert_eq!(
                    find(&v, "rpcenv_connections", &[("env", "facade-test")]),
                    Some(&DebugValue::Gauge(0.0.into()))
                );
                assert_eq!(
                    find(
                        &v,
                        "rpcenv_answers_read_by_callers_total",
                        &[("env", "facade-test")]
                    ),
                    Some(&DebugValue::Counter(0))
                );
                break;
            }
            assert!(Instant::now() < deadline, "not published in 20 s: {v:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        env.shutdown();
    }

    /// A snapshot of the env `local` with `peers` and no endpoints.
    fn local_snapshot(peers: Vec<PeerMetrics>) -> RpcMetrics {
        RpcMetrics {
            at: std::time::SystemTime::now(),
            env: crate::metrics::EnvMetrics {
                name: "local".into(),
                ..Default::default()
            },
            peers,
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn handler_times_are_published_as_what_was_added() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut snapshot = local_snapshot(Vec::new());
        let mut endpoint = crate::metrics::EndpointMetrics {
            name: "e".into(),
            kind: crate::EndpointKind::Shared,
            inbox_depth: 3,
            inbox_high_water: 7,
            messages_handled: 5,
            handler_time: HandlerTime::default(),
            panics: 0,
            asks_answered: 0,
            asks_failed: 0,
            asks_dropped: 0,
        };
        endpoint.handler_time.buckets[0] = 2;
        endpoint.handler_time.buckets[11] = 3;
        snapshot.endpoints.push(endpoint);
        snapshot.env.frames_rejected.insert("bad_frame".into(), 4);
        let mut state = State::default();
        metrics::with_local_recorder(&recorder, || state.publish(&snapshot));
        snapshot.endpoints[0].handler_time.buckets[11] = 4;
        metrics::with_local_recorder(&recorder, || state.publish(&snapshot));
        let v = values(&snapshotter);
        let labels = [("env", "local"), ("endpoint", "e")];
        let Some(DebugValue::Histogram(times)) =
            find(&v, "rpcenv_endpoint_handler_seconds", &labels)
        else {
            panic!("{v:?}");
        };
        let mut times: Vec<f64> = times.iter().map(|t| t.into_inner()).collect();
        times.sort_by(f64::total_cmp);
        assert_eq!(times.len(), 6, "2 + 3, then 1 more");
        assert_eq!(times[0], 0.5e-6);
        assert!((times[5] - 1.536e-3).abs() < 1e-9, "{times:?}");
        assert_eq!(
            find(&v, "rpcenv_endpoint_inbox_high_water", &labels),
            Some(&DebugValue::Gauge(7.0.into()))
        );
        assert_eq!(
            find(&v, "rpcenv_frames_rejected_total", &[("kind", "bad_frame")]),
            Some(&DebugValue::Counter(4))
        );
    }

    fn peer(address: &str, inbound: usize, bytes_in: u64) -> PeerMetrics {
        PeerMetrics {
            address: address.parse().unwrap(),
            connections: 1,
            inbound,
            bytes_in,
            bytes_out: 1,
            frames_in: 1,
            frames_out: 1,
            bytes_queued: 0,
            asks_in_flight: 0,
            last_activity: None,
        }
    }

    #[test]
    fn inbound_peers_are_one_series_per_ip_and_outbound_ones_keep_their_port() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut snapshot = local_snapshot(vec![
            peer("127.0.0.1:50001", 1, 10),
            peer("127.0.0.1:50002", 1, 20),
            peer("127.0.0.1:7077", 0, 5),
        ]);
        let mut state = State::default();
        metrics::with_local_recorder(&recorder, || state.publish(&snapshot));
        fn series<'a>(v: &'a [Value], name: &str) -> Vec<(String, &'a DebugValue)> {
            let mut found: Vec<(String, &DebugValue)> = v
                .iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, l, value)| {
                    let peer = l.iter().find(|(k, _)| k == "peer").unwrap();
                    (peer.1.clone(), value)
                })
                .collect();
            found.sort_by(|a, b| a.0.cmp(&b.0));
            found
        }
        let v = values(&snapshotter);
        assert_eq!(
            series(&v, "rpcenv_peer_bytes_received_total"),
            [
                ("127.0.0.1".into(), &DebugValue::Counter(30)),
                ("127.0.0.1:7077".into(), &DebugValue::Counter(5)),
            ]
        );
        assert_eq!(
            series(&v, "rpcenv_peer_connections"),
            [
                ("127.0.0.1".into(), &DebugValue::Gauge(2.0.into())),
                ("127.0.0.1:7077".into(), &DebugValue::Gauge(1.0.into())),
            ]
        );
        // One inbound connection closes and the peer reconnects from a new port: still
        // one series, whose counter keeps what the closed connection had counted.
        snapshot.peers[0] = peer("127.0.0.1:50003", 1, 4);
        snapshot.peers[1].bytes_in = 25;
        metrics::with_local_recorder(&recorder, || state.publish(&snapshot));
        let v = values(&snapshotter);
        assert_eq!(
            series(&v, "rpcenv_peer_bytes_received_total"),
            [
                ("127.0.0.1".into(), &DebugValue::Counter(10 + 25 + 4)),
                ("127.0.0.1:7077".into(), &DebugValue::Counter(5)),
            ]
        );
        // Every inbound connection closes: the gauges go to 0, the counter stays.
        snapshot.peers.clear();
        metrics::with_local_recorder(&recorder, || state.publish(&snapshot));
        let v = values(&snapshotter);
        let inbound = [("env", "local"), ("peer", "127.0.0.1")];
        assert_eq!(
            find(&v, "rpcenv_peer_bytes_received_total", &inbound),
            Some(&DebugValue::Counter(39))
        );
        assert_eq!(
            find(&v, "rpcenv_peer_connections", &inbound),
            Some(&DebugValue::Gauge(0.0.into()))
        );
    }
}
