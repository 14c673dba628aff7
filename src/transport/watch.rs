//! What a connection's event loop is told of: its interest in the socket.
//!
//! The loop's poller watches a connection's socket, edge-triggered, for:
//!
//! - **readable** bytes (and hang-ups, and on Linux TCP urgent data: a read stops short
//!   at the urgent mark with bytes left behind it, which raise no new readable edge, so
//!   a priority event has the socket read to its end, as a hang-up does; see
//!   [`READ_INTEREST`]), except while a caller holds the connection's
//!   read turn (see `read_turn`): that caller waits for the socket on its own poller, so
//!   the loop is not woken for bytes it would leave to the caller. The interest comes back
//!   when the caller gives the turn back, and the kernel then reports bytes that arrived
//!   meanwhile, as for a new registration;
//! - **writable** room only while the write queue is blocked (a `writev` left bytes the
//!   socket would not take), as Netty sets `OP_WRITE` only while a flush is incomplete.
//!   A socket is writable nearly always, so an interest in it would make the kernel
//!   report it on every change of registration.
//!
//! Adding an interest reports the socket's current state at once (`EPOLL_CTL_ADD` and
//! `EPOLL_CTL_MOD` look at it), so no edge is lost between "the queue is blocked" and
//! "the loop watches for room", nor between "the caller gave the turn back" and "the loop
//! watches for bytes". With no interest left the socket is deregistered (a `DEL`, then an
//! `ADD` when the turn is given back), rather than left registered for urgent data alone:
//! a socket wakes every epoll entry hooked on it that takes `EPOLLPRI` whenever bytes
//! arrive (the kernel's wake-up key for readable data includes it), so the loop would be
//! woken for each byte a caller reads, only to find no event to report (W1 on one CPU:
//! 4.0–5.5 context switches per round trip, against 2.3–3.1 with the socket deregistered).
//!
//! Any thread may change the interest (a sender whose write blocked, a caller taking or
//! giving back the turn), under the connection's watch lock, which is held only for that
//! one system call. It is changed only while the socket is open and held by the thread
//! making the change, so a closed descriptor's number, reused by another socket, is never
//! touched.

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use crate::sync::Mutex;
use crate::sync::atomic::{AtomicBool, Ordering};

/// The events a loop's poller watches a socket for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interest {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

impl Interest {
    /// What a connection starts with: readable bytes only.
    pub(crate) const READABLE: Self = Self {
        readable: true,
        writable: false,
    };

    /// The same events as `mio`'s, or `None` (no interest at all) to deregister.
    pub(crate) fn to_mio(self) -> Option<mio::Interest> {
        match (self.readable, self.writable) {
            (true, true) => Some(READ_INTEREST.add(mio::Interest::WRITABLE)),
            (true, false) => Some(READ_INTEREST),
            (false, true) => Some(mio::Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

/// What a thread that reads a socket watches it for: readable bytes and hang-ups, and on
/// Linux TCP urgent data too. A read stops short at an urgent mark, before bytes that
/// are in already (and raise no new edge); the priority event that comes with the urgent
/// data has the socket read to its end (see [`read_to_end`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const READ_INTEREST: mio::Interest =
    mio::Interest::READABLE.add(mio::Interest::PRIORITY);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const READ_INTEREST: mio::Interest = mio::Interest::READABLE;

/// Whether `event` asks for the socket to be read to its end rather than until a short
/// read: a hang-up or an error (which raise no new edge once a read leaves them), or
/// urgent data (a read stops short at its mark, see [`READ_INTEREST`]).
pub(crate) fn read_to_end(event: &mio::event::Event) -> bool {
    event.is_read_closed() || event.is_error() || event.is_priority()
}

/// A change of a socket's registration with its loop's poller, from `from` to `to`.
pub(crate) trait Rewatch {
    /// Registers, re-registers or deregisters `fd` (the token `conn_id`) with the loop's
    /// poller.
    fn rewatch(&self, conn_id: u64, fd: RawFd, from: Interest, to: Interest) -> io::Result<()>;
}

/// One connection's interest as its loop's poller has it (see the module docs).
pub(crate) struct Watch {
    current: Mutex<Interest>,
    /// A caller holds the read turn: readable bytes are its to wait for.
    caller: AtomicBool,
    /// `current.writable`, read without the lock by senders after each write.
    writable: AtomicBool,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            current: Mutex::new(Interest::READABLE),
            caller: AtomicBool::new(false),
            writable: AtomicBool::new(false),
        }
    }
}

impl Watch {
    /// Whether the poller watches for room (to compare with the write queue's state
    /// without taking the lock).
    pub(crate) fn watches_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// A caller takes (`true`) or gives back the read turn.
    pub(crate) fn set_caller(&self, reading: bool) {
        self.caller.store(reading, Ordering::Release);
    }

    /// Brings the poller's interest in `fd` to what the connection needs now: readable
    /// unless a caller holds the turn, writable while `blocked()` says the write queue is
    /// blocked (asked under the lock, so that the last change made is the one that looked
    /// last). `fd` must stay the connection's socket for the duration of the call.
    pub(crate) fn sync(
        &self,
        conn_id: u64,
        fd: RawFd,
        blocked: impl FnOnce() -> bool,
        poller: &dyn Rewatch,
    ) -> io::Result<()> {
        let mut current = self.current.lock();
        let want = Interest {
            readable: !self.caller.load(Ordering::Acquire),
            writable: blocked(),
        };
        if want == *current {
            return Ok(());
        }
        poller.rewatch(conn_id, fd, *current, want)?;
        *current = want;
        self.writable.store(want.writable, Ordering::Release);
        Ok(())
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("current", &*self.current.lock())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the changes asked for.
    #[derive(Default)]
    struct Recorder {
        changes: Mutex<Vec<(Interest, Interest)>>,
    }

    impl Rewatch for Recorder {
        fn rewatch(&self, _id: u64, _fd: RawFd, from: Interest, to: Interest) -> io::Result<()> {
            self.changes.lock().push((from, to));
            Ok(())
        }
    }

    const NONE: Interest = Interest {
        readable: false,
        writable: false,
    };
    const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };
    const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };

    #[test]
    fn a_caller_turn_takes_readable_away_and_gives_it_back() {
        let watch = Watch::default();
        let poller = Recorder::default();
        watch.sync(1, 3, || false, &poller).unwrap();
        assert!(poller.changes.lock().is_empty(), "nothing changed");
        watch.set_caller(true);
        watch.sync(1, 3, || false, &poller).unwrap();
        watch.set_caller(false);
        watch.sync(1, 3, || false, &poller).unwrap();
        assert_eq!(
            *poller.changes.lock(),
            vec![(Interest::READABLE, NONE), (NONE, Interest::READABLE)]
        );
    }

    #[test]
    fn writable_is_watched_only_while_blocked() {
        let watch = Watch::default();
        let poller = Recorder::default();
        watch.sync(1, 3, || true, &poller).unwrap();
        assert!(watch.watches_writable());
        watch.set_caller(true);
        watch.sync(1, 3, || true, &poller).unwrap();
        watch.sync(1, 3, || false, &poller).unwrap();
        assert!(!watch.watches_writable());
        assert_eq!(
            *poller.changes.lock(),
            vec![
                (Interest::READABLE, BOTH),
                (BOTH, WRITABLE),
                (WRITABLE, NONE)
            ]
        );
    }

    #[test]
    fn a_failed_change_leaves_the_recorded_interest() {
        struct Failing;
        impl Rewatch for Failing {
            fn rewatch(&self, _: u64, _: RawFd, _: Interest, _: Interest) -> io::Result<()> {
                Err(io::Error::other("no room"))
            }
        }
        let watch = Watch::default();
        assert!(watch.sync(1, 3, || true, &Failing).is_err());
        assert!(!watch.watches_writable());
        assert_eq!(*watch.current.lock(), Interest::READABLE);
    }

    /// No interest deregisters: a registration kept for urgent data alone would wake the
    /// loop whenever bytes arrive (see the module docs).
    #[test]
    fn no_interest_deregisters() {
        assert_eq!(NONE.to_mio(), None);
        assert_eq!(
            Interest::READABLE.to_mio(),
            Some(READ_INTEREST),
            "a reading loop watches for urgent data too"
        );
    }
}
