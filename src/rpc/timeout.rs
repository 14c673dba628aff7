//! Ask deadlines: the pure [`DeadlineQueue`] and the `rpc-timeout` thread that fires it.
//!
//! Every ask is registered here until it completes, so that it fails with
//! [`RpcError::Timeout`] when nobody waits for it, and so that a
//! shutdown can fail every pending ask at once with `EnvStopped`. Only the thread wrapper
//! reads the clock; the queue takes `now` as an argument.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::debug;

use crate::error::RpcError;
use crate::rpc::call::Call;
use crate::sync::{Arc, Condvar, Mutex, Weak};
use crate::threads::{join_until, spawn};

/// When an entry expires; `Never` sorts after every instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Deadline {
    /// At this instant.
    At(Instant),
    /// Not at all (a timeout too large to add to the clock).
    Never,
}

impl Deadline {
    /// `now + after`, or `Never` when that does not fit in an `Instant`.
    pub(crate) fn after(now: Instant, after: Duration) -> Self {
        now.checked_add(after).map_or(Self::Never, Self::At)
    }

    pub(crate) fn instant(self) -> Option<Instant> {
        match self {
            Self::At(at) => Some(at),
            Self::Never => None,
        }
    }
}

/// Entries ordered by deadline; ties broken by id, which is unique per entry.
#[derive(Debug)]
pub(crate) struct DeadlineQueue<V> {
    entries: BTreeMap<(Deadline, u64), V>,
}

impl<V> Default for DeadlineQueue<V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
        }
    }
}

impl<V> DeadlineQueue<V> {
    pub(crate) fn insert(&mut self, deadline: Deadline, id: u64, value: V) {
        self.entries.insert((deadline, id), value);
    }

    pub(crate) fn remove(&mut self, deadline: Deadline, id: u64) -> Option<V> {
        self.entries.remove(&(deadline, id))
    }

    /// The earliest finite deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .first_key_value()
            .and_then(|((deadline, _), _)| deadline.instant())
    }

    /// Removes and returns every entry whose deadline is at or before `now`.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<V> {
        let mut out = Vec::new();
        while let Some(entry) = self.entries.first_entry() {
            match entry.key().0 {
                Deadline::At(at) if at <= now => out.push(entry.remove()),
                _ => break,
            }
        }
        out
    }

    /// Removes and returns every entry.
    pub(crate) fn drain(&mut self) -> Vec<V> {
        std::mem::take(&mut self.entries).into_values().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The registry of pending asks and the `rpc-timeout` thread that fails them at their
/// deadlines.
pub(crate) struct Timeouts {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    queue: DeadlineQueue<Weak<Call>>,
    stopped: bool,
    /// When the thread will look at the queue again, if it is waiting.
    wakes_at: Option<Instant>,
}

/// The longest the thread sleeps without looking at the queue: registering a deadline
/// later than that never needs to wake it, which keeps asks from waking it one by one.
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl Timeouts {
    pub(crate) fn start() -> Result<Self, RpcError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: DeadlineQueue::default(),
                stopped: false,
                wakes_at: None,
            }),
            wake: Condvar::default(),
        });
        let runner = Arc::clone(&shared);
        let thread = spawn("rpc-timeout".into(), move || runner.run())?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Registers a pending call; `false` (and nothing registered) once stopped.
    pub(crate) fn register(&self, call: &Arc<Call>) -> bool {
        let deadline = call.deadline();
        let mut state = self.shared.state.lock();
        if state.stopped {
            return false;
        }
        let earlier = match (deadline.instant(), state.wakes_at) {
            (Some(new), Some(wakes_at)) => new < wakes_at,
            // Not waiting (it is firing deadlines and looks at the queue next), or a
            // deadline that never comes.
            _ => false,
        };
        state
            .queue
            .insert(deadline, call.id(), Arc::downgrade(call));
        drop(state);
        if earlier {
            self.shared.wake.notify_one();
        }
        true
    }

    /// How many calls wait for their outcome.
    pub(crate) fn pending(&self) -> usize {
        self.shared.state.lock().queue.len()
    }

    /// Forgets a call that completed.
    pub(crate) fn cancel(&self, deadline: Deadline, id: u64) {
        self.shared.state.lock().queue.remove(deadline, id);
    }

    /// Stops the thread and returns every call still pending, for the caller to fail.
    pub(crate) fn stop(&self) -> Vec<Arc<Call>> {
        let calls = {
            let mut state = self.shared.state.lock();
            state.stopped = true;
            state.queue.drain()
        };
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            join_until(vec![thread], None, "the timeouts");
        }
        calls
            .into_iter()
            .filter_map(|call| call.upgrade())
            .collect()
    }
}

impl Shared {
    fn run(&self) {
        let mut state = self.state.lock();
        loop {
            if state.stopped {
                break;
            }
            let now = Instant::now();
            let expired = state.queue.expired(now);
            if !expired.is_empty() {
                drop(state);
                for call in expired.iter().filter_map(Weak::upgrade) {
                    call.expire();
                }
                state = self.state.lock();
                continue;
            }
            let wait = state
                .queue
                .next_deadline()
                .map_or(MAX_SLEEP, |next| (next - now).min(MAX_SLEEP));
            state.wakes_at = Some(now + wait);
            state = self.wake.wait_timeout(state, wait);
            state.wakes_at = None;
        }
        debug!("rpc-timeout thread exits");
    }
}

impl Drop for Timeouts {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_returns_due_entries_in_deadline_order() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::default();
        q.insert(Deadline::At(t0 + Duration::from_millis(30)), 1, "c");
        q.insert(Deadline::At(t0 + Duration::from_millis(10)), 2, "a");
        q.insert(Deadline::At(t0 + Duration::from_millis(20)), 3, "b");
        q.insert(Deadline::Never, 4, "never");
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(q.expired(t0).is_empty());
        assert_eq!(q.expired(t0 + Duration::from_millis(20)), vec!["a", "b"]);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(30)));
        assert_eq!(q.expired(t0 + Duration::from_secs(3600)), vec!["c"]);
        assert_eq!(q.next_deadline(), None, "Never is not a deadline");
        assert_eq!(q.len(), 1);
        assert_eq!(q.drain(), vec!["never"]);
    }

    #[test]
    fn removed_entries_never_expire() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::default();
        let d = Deadline::At(t0);
        q.insert(d, 1, ());
        q.insert(d, 2, ());
        assert_eq!(q.remove(d, 1), Some(()));
        assert_eq!(q.remove(d, 1), None);
        assert_eq!(q.expired(t0).len(), 1);
    }

    #[test]
    fn a_huge_timeout_never_expires() {
        let now = Instant::now();
        assert_eq!(Deadline::after(now, Duration::MAX), Deadline::Never);
        assert!(Deadline::At(now) < Deadline::Never);
    }
}
