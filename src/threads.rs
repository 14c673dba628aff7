//! Named threads and the one pool the crate builds from them.
//!
//! Every thread the crate starts goes through [`spawn`] (it has a name that shows in a
//! stack dump), every group of threads is joined with [`join_until`] (bounded by a
//! deadline, never joining the calling thread itself), and every caught panic is turned
//! into text by [`panic_message`]. [`Pool`] runs jobs on worker threads that take them from
//! one queue: with a fixed number of threads (the `rpc-dispatcher-N` loops, a dedicated
//! `rpc-endpoint-NAME` thread) or cached, started on demand up to a ceiling and ending
//! when idle (the `rpc-connect-N` threads). The `rpc-io-N` event loops are threads of
//! their own, started and joined the same way.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{debug, error, warn};
use mio::Waker;

use crate::error::RpcError;
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex};
use crate::transport::Awaited;

/// Starts a thread called `name`.
pub(crate) fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, RpcError> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|err| RpcError::io(format!("cannot start thread {name}"), err))
}

/// How long a thread told to exit may take to do so, past the deadline: a deadline
/// spent waiting for other threads (a busy dedicated endpoint) must not make idle ones,
/// which end in microseconds, look busy.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// Joins `threads`, waiting no later than `deadline` (`None`: as long as it takes), or
/// [`EXIT_GRACE`] from now if that is later. The calling thread, if it is one of them,
/// is skipped: it ends on its own once it returns. Threads still running then are left
/// behind, logged and returned by name; a thread that panicked is logged.
pub(crate) fn join_until(
    threads: Vec<JoinHandle<()>>,
    deadline: Option<Instant>,
    what: &str,
) -> Vec<String> {
    let deadline = deadline.map(|deadline| deadline.max(Instant::now() + EXIT_GRACE));
    let current = thread::current().id();
    let mut pending: Vec<_> = threads
        .into_iter()
        .filter(|t| t.thread().id() != current)
        .collect();
    loop {
        let (done, busy): (Vec<_>, Vec<_>) = pending.into_iter().partition(|t| t.is_finished());
        for thread in done {
            let name = thread.thread().name().unwrap_or("?").to_owned();
            if thread.join().is_err() {
                error!("thread {name} of {what} panicked");
            }
        }
        pending = busy;
        if pending.is_empty() {
            return Vec::new();
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let names: Vec<String> = pending
                .iter()
                .map(|t| t.thread().name().unwrap_or("?").to_owned())
                .collect();
            for name in &names {
                warn!("thread {name} of {what} is still busy at shutdown; left running");
            }
            return names;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// A job for a [`Pool`].
pub(crate) type Job = Box<dyn FnOnce() + Send>;

enum Task {
    Run(Job),
    /// One worker is to exit, after running what is queued.
    Exit,
}

/// How many workers a [`Pool`] has.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Workers {
    /// Exactly this many, started at once, running until the pool stops.
    Fixed(usize),
    /// Started when a job finds none idle, up to `max`; an idle one ends after `idle`.
    Cached { max: usize, idle: Duration },
}

/// Worker threads that run jobs from one queue, in the order they were queued.
///
/// A job that panics is logged and the worker goes on. [`stop`](Self::stop) lets every
/// worker finish what is queued (including jobs queued meanwhile by running jobs) and
/// exit.
pub(crate) struct Pool {
    /// Thread names are `{prefix}{index}`, or `prefix` alone for a pool of one.
    prefix: String,
    workers: Workers,
    tx: Sender<Task>,
    rx: Receiver<Task>,
    state: Arc<Mutex<PoolState>>,
    stopped: AtomicBool,
    /// How idle workers lead, for a fixed pool made by [`leading`](Self::leading).
    lead: Option<Arc<Leading>>,
}

/// What an idle worker of a fixed pool does instead of sleeping on the queue: reads a
/// connection until `awaited` (the pool has work) is done or the deadline passes; false,
/// having done nothing, if it could not (`transport::lead`).
pub(crate) type Lead = fn(&dyn Awaited, Instant) -> bool;

/// How long an idle worker leads before it sleeps on the queue instead: a connection
/// that is quiet this long is left to its event loop.
const LEAD_FOR: Duration = Duration::from_secs(10);

/// The ids that tell pools apart in [`LED`].
static POOL_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// On a worker that leads: its pool's id, and the first job its read queued on that
    /// pool, which the worker runs itself once it stops leading (no other is woken).
    static LED: RefCell<(u64, Option<Job>)> = const { RefCell::new((0, None)) };
}

/// The leader/follower state of a fixed pool (see [`Pool::leading`]).
struct Leading {
    id: u64,
    lead: Lead,
    /// Workers asleep on the queue: a job finds one of them without help. A worker still
    /// counts once it took a task, until it says otherwise; then it looks at the queue
    /// again, for jobs queued meanwhile that no sleeper is left for.
    sleepers: AtomicUsize,
    /// A worker leads now: the others sleep on the queue (one leader at a time, so that
    /// jobs from elsewhere find a sleeping follower, woken through the queue, rather than
    /// a leader that must give up its connection for them). Claimed by a worker only once
    /// it found a connection to read (see [`Awaited::claim`]), so that an idle worker with
    /// none does not keep one that has from leading.
    leader: AtomicBool,
    /// The pool stops: a leader stops leading (set before the leaders are woken, so one
    /// arming after that sees it; the queue alone does not tell, since a worker that
    /// exits may hold another's exit task for a moment).
    stopping: AtomicBool,
    /// The wakers of workers leading now, woken for a job when no worker sleeps.
    leaders: Mutex<Vec<Arc<Waker>>>,
}

impl Leading {
    /// Wakes one leader, if a job needs one: when no worker sleeps on the queue.
    fn wake_for_job(&self) {
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            return;
        }
        if let Some(waker) = self.leaders.lock().pop() {
            if let Err(err) = waker.wake() {
                error!("cannot wake a leading worker: {err:#}");
            }
        }
    }

    /// The pool stops: wakes every leader, and no worker leads again.
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for waker in self.leaders.lock().drain(..) {
            let _ = waker.wake();
        }
    }

    /// Keeps `job` for the calling worker to run next if it is leading for this pool and
    /// keeps none yet, and nothing older is queued; otherwise gives it back.
    fn keep(&self, job: Job, rx: &Receiver<Task>) -> Option<Job> {
        let mut job = Some(job);
        // A thread whose locals are gone queues it as any other thread would.
        let _ = LED.try_with(|led| {
            let mut led = led.borrow_mut();
            if led.0 == self.id && led.1.is_none() && rx.is_empty() {
                led.1 = job.take();
            }
        });
        job
    }

    /// Leads until the pool has work (or [`LEAD_FOR`] passes): whether it led, and the
    /// job the worker's read kept for it.
    fn run_lead(&self, rx: &Receiver<Task>) -> (bool, Option<Job>) {
        if self.leader.load(Ordering::Acquire) {
            return (false, None);
        }
        LED.with(|led| led.borrow_mut().0 = self.id);
        let work = PoolWork {
            leading: self,
            rx,
            armed: RefCell::new(None),
            claimed: Cell::new(false),
        };
        let led = (self.lead)(&work, Instant::now() + LEAD_FOR);
        let kept = LED.with(|led| {
            let mut led = led.borrow_mut();
            led.0 = 0;
            led.1.take()
        });
        if work.claimed.get() {
            self.leader.store(false, Ordering::Release);
        }
        (led, kept)
    }
}

/// The outcome a leading worker waits for: a job for it.
struct PoolWork<'a> {
    leading: &'a Leading,
    rx: &'a Receiver<Task>,
    /// The waker it registered as a leader's.
    armed: RefCell<Option<Arc<Waker>>>,
    /// It is the pool's leader (see [`Awaited::claim`]).
    claimed: Cell<bool>,
}

impl Awaited for PoolWork<'_> {
    fn is_done(&self) -> bool {
        !self.rx.is_empty()
            || self.leading.stopping.load(Ordering::SeqCst)
            || LED.with(|led| led.borrow().1.is_some())
    }

    fn answered(&self) -> bool {
        false
    }

    fn arm(&self, waker: Option<&Arc<Waker>>) -> bool {
        let mut leaders = self.leading.leaders.lock();
        if let Some(old) = self.armed.borrow_mut().take() {
            leaders.retain(|w| !Arc::ptr_eq(w, &old));
        }
        let Some(waker) = waker else {
            return true;
        };
        if self.is_done() {
            return false;
        }
        leaders.push(Arc::clone(waker));
        *self.armed.borrow_mut() = Some(Arc::clone(waker));
        true
    }

    /// The worker found a connection to lead: it leads if no other worker does.
    fn claim(&self) -> bool {
        if self.claimed.get() {
            return true;
        }
        let claimed = !self.leading.leader.swap(true, Ordering::AcqRel);
        self.claimed.set(claimed);
        claimed
    }
}

#[derive(Default)]
struct PoolState {
    threads: Vec<JoinHandle<()>>,
    /// Workers alive.
    alive: usize,
    /// Workers waiting for a job.
    idle: usize,
    /// Jobs queued and not yet taken.
    queued: usize,
    next_index: usize,
    stopped: bool,
}

impl Pool {
    /// A pool whose threads are named after `prefix`; fixed pools start their threads now.
    pub(crate) fn new(prefix: impl Into<String>, workers: Workers) -> Result<Arc<Self>, RpcError> {
        Self::build(prefix.into(), workers, None)
    }

    /// A fixed pool of `count` threads whose idle workers `lead` before they sleep on the
    /// queue (the leader/follower pattern): a worker that answered a request on a
    /// connection reads that connection itself while it has nothing to do, and runs the
    /// first job its read queues on the pool, so the next request reaches a worker
    /// without a hand-off from the connection's event loop. One worker leads at a time;
    /// the others sleep on the queue, and a job queued while none sleeps wakes the
    /// leader; [`stop`](Self::stop) wakes it too.
    pub(crate) fn leading(
        prefix: impl Into<String>,
        count: usize,
        lead: Lead,
    ) -> Result<Arc<Self>, RpcError> {
        let leading = Leading {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            lead,
            sleepers: AtomicUsize::new(0),
            leader: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            leaders: Mutex::new(Vec::new()),
        };
        Self::build(
            prefix.into(),
            Workers::Fixed(count),
            Some(Arc::new(leading)),
        )
    }

    fn build(
        prefix: String,
        workers: Workers,
        lead: Option<Arc<Leading>>,
    ) -> Result<Arc<Self>, RpcError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = Arc::new(Self {
            prefix,
            workers,
            tx,
            rx,
            state: Arc::new(Mutex::new(PoolState::default())),
            stopped: AtomicBool::new(false),
            lead,
        });
        if let Workers::Fixed(count) = workers {
            let mut state = pool.state.lock();
            for _ in 0..count {
                if let Err(err) = pool.start_worker(&mut state) {
                    drop(state);
                    pool.stop(Some(Instant::now() + Duration::from_secs(1)));
                    return Err(err);
                }
            }
        }
        Ok(pool)
    }

    fn start_worker(&self, state: &mut PoolState) -> Result<(), RpcError> {
        let name = match self.workers {
            Workers::Fixed(1) => self.prefix.clone(),
            _ => format!("{}{}", self.prefix, state.next_index),
        };
        let rx = self.rx.clone();
        let tx = self.tx.clone();
        let shared = Arc::clone(&self.state);
        let thread = match self.workers {
            Workers::Fixed(_) => {
                let lead = self.lead.clone();
                spawn(name, move || work_fixed(&rx, &tx, &shared, lead.as_deref()))?
            }
            Workers::Cached { idle, .. } => spawn(name, move || work(&rx, &tx, &shared, idle))?,
        };
        state.next_index += 1;
        state.alive += 1;
        state.threads.retain(|t| !t.is_finished());
        state.threads.push(thread);
        Ok(())
    }

    /// Queues `job`. Fails with `EnvStopped` once the pool is stopped.
    pub(crate) fn execute(&self, job: Job) -> Result<(), RpcError> {
        if let Workers::Fixed(_) = self.workers {
            // The hot path of the message loops: no bookkeeping, only the queue (whose
            // sender stays open until the workers are gone; `stop` queues the exits).
            if self.stopped.load(Ordering::Acquire) {
                return Err(RpcError::EnvStopped);
            }
            let Some(lead) = &self.lead else {
                return self
                    .tx
                    .send(Task::Run(job))
                    .map_err(|_| RpcError::EnvStopped);
            };
            let Some(job) = lead.keep(job, &self.rx) else {
                return Ok(());
            };
            self.tx
                .send(Task::Run(job))
                .map_err(|_| RpcError::EnvStopped)?;
            lead.wake_for_job();
            return Ok(());
        }
        let mut state = self.state.lock();
        if state.stopped {
            return Err(RpcError::EnvStopped);
        }
        state.queued += 1;
        if let Workers::Cached { max, .. } = self.workers {
            if state.queued > state.idle && state.alive < max {
                if let Err(err) = self.start_worker(&mut state) {
                    if state.alive == 0 {
                        state.queued -= 1;
                        return Err(err);
                    }
                    // A worker that is alive takes the job later.
                    warn!("{err:#}; the job waits for a busy {} thread", self.prefix);
                }
            }
        }
        // Sent under the state lock, so an idle worker deciding to exit sees it queued.
        self.tx
            .send(Task::Run(job))
            .map_err(|_| RpcError::EnvStopped)
    }

    /// How many workers are alive.
    pub(crate) fn threads(&self) -> usize {
        self.state.lock().alive
    }

    /// Whether every worker has exited.
    pub(crate) fn is_done(&self) -> bool {
        let state = self.state.lock();
        state.alive == 0 || state.threads.iter().all(JoinHandle::is_finished)
    }

    /// Refuses new jobs, lets every worker run what is queued and exit, and joins them
    /// until `deadline` (`None`: do not wait at all). A worker busy past the deadline is
    /// left to finish on its own (logged, and named in the list returned); idle workers
    /// get a moment to exit even when the deadline has passed.
    pub(crate) fn stop(&self, deadline: Option<Instant>) -> Vec<String> {
        let threads = {
            let mut state = self.state.lock();
            self.stopped.store(true, Ordering::Release);
            if !state.stopped {
                state.stopped = true;
                for _ in 0..state.alive {
                    let _ = self.tx.send(Task::Exit);
                }
                if let Some(lead) = &self.lead {
                    lead.stop();
                }
            }
            std::mem::take(&mut state.threads)
        };
        match deadline {
            Some(deadline) => join_until(threads, Some(deadline), &self.prefix),
            None => Vec::new(),
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("prefix", &self.prefix)
            .field("workers", &self.workers)
            .field("alive", &self.threads())
            .finish()
    }
}

/// Runs a job; a panic is logged and the worker goes on.
fn run(job: Job) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        error!(
            "a job on {} panicked: {}",
            thread::current().name().unwrap_or("?"),
            panic_message(payload.as_ref())
        );
    }
}

/// A fixed pool's worker: runs jobs until told to exit, then runs what is still queued.
/// With `lead`, an idle worker leads before it sleeps on the queue (see [`Pool::leading`]).
fn work_fixed(
    rx: &Receiver<Task>,
    tx: &Sender<Task>,
    state: &Mutex<PoolState>,
    lead: Option<&Leading>,
) {
    let Some(lead) = lead else {
        while let Ok(Task::Run(job)) = rx.recv() {
            run(job);
        }
        return drain(rx, tx, state, false);
    };
    crate::transport::may_lead();
    loop {
        let task = match rx.try_recv() {
            Ok(task) => task,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let (led, kept) = lead.run_lead(rx);
                if let Some(job) = kept {
                    run(job);
                }
                if led {
                    continue;
                }
                lead.sleepers.fetch_add(1, Ordering::SeqCst);
                let task = rx.recv();
                lead.sleepers.fetch_sub(1, Ordering::SeqCst);
                // A job queued after the one this worker took, while it still counted as
                // asleep, woke nobody: that is for the leader, unless another sleeps.
                if !rx.is_empty() {
                    lead.wake_for_job();
                }
                match task {
                    Ok(task) => task,
                    Err(_) => break,
                }
            }
        };
        match task {
            Task::Run(job) => run(job),
            Task::Exit => break,
        }
    }
    drain(rx, tx, state, false);
}

/// Runs what is still queued after an exit was asked for (a job queued again by a job
/// that ran while the stop was requested comes after the request), then ends the worker.
fn drain(rx: &Receiver<Task>, tx: &Sender<Task>, state: &Mutex<PoolState>, counted: bool) {
    while let Ok(task) = rx.try_recv() {
        match task {
            Task::Run(job) => {
                if counted {
                    state.lock().queued -= 1;
                }
                run(job);
            }
            Task::Exit => {
                // Another worker's: leave it for that one.
                let _ = tx.send(Task::Exit);
                break;
            }
        }
    }
    state.lock().alive -= 1;
}

/// A cached pool's worker: runs jobs until told to exit (then runs what is still queued),
/// or until idle for `idle`.
fn work(rx: &Receiver<Task>, tx: &Sender<Task>, state: &Mutex<PoolState>, idle: Duration) {
    loop {
        state.lock().idle += 1;
        let task = rx.recv_timeout(idle);
        match task {
            Ok(Task::Run(job)) => {
                {
                    let mut state = state.lock();
                    state.idle -= 1;
                    state.queued -= 1;
                }
                run(job);
            }
            Ok(Task::Exit) => {
                state.lock().idle -= 1;
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut state = state.lock();
                state.idle -= 1;
                if state.queued > 0 {
                    continue;
                }
                state.alive -= 1;
                debug!("idle {} exits", thread::current().name().unwrap_or("?"));
                return;
            }
            Err(RecvTimeoutError::Disconnected) => {
                state.lock().idle -= 1;
                break;
            }
        }
    }
    drain(rx, tx, state, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::atomic::AtomicUsize;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_cached_pool_grows_to_its_ceiling_and_idle_workers_exit() {
        let pool = Pool::new(
            "rpc-connect-",
            Workers::Cached {
                max: 3,
                idle: Duration::from_millis(100),
            },
        )
        .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        for _ in 0..5 {
            let tx = tx.clone();
            let release_rx = release_rx.clone();
            pool.execute(Box::new(move || {
                tx.send(thread::current().name().map(str::to_owned))
                    .unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
            }))
            .unwrap();
        }
        // Three run at once (the ceiling); the other two wait for a free worker.
        for _ in 0..3 {
            let name = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            assert!(name.starts_with("rpc-connect-"), "{name}");
        }
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        assert_eq!(pool.threads(), 3);
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        wait_for("idle workers exit", || pool.threads() == 0);
        // A new job after that starts a worker again.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        pool.execute(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        wait_for("the job runs", || ran.load(Ordering::SeqCst) == 1);
        pool.stop(Some(Instant::now() + Duration::from_secs(5)));
        assert!(pool.execute(Box::new(|| {})).is_err());
    }

    #[test]
    fn a_fixed_pool_runs_what_is_queued_before_it_stops_and_survives_panics() {
        let pool = Pool::new("rpc-test-", Workers::Fixed(2)).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        pool.execute(Box::new(|| panic!("a job panics"))).unwrap();
        for _ in 0..100 {
            let ran = Arc::clone(&ran);
            pool.execute(Box::new(move || {
                thread::sleep(Duration::from_micros(100));
                ran.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
        }
        pool.stop(Some(Instant::now() + Duration::from_secs(10)));
        assert_eq!(ran.load(Ordering::SeqCst), 100);
        assert!(pool.is_done());
    }

    #[test]
    fn join_until_skips_the_calling_thread_and_gives_up_at_the_deadline() {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let busy = spawn("rpc-test-busy".into(), move || {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        let started = Instant::now();
        join_until(
            vec![busy],
            Some(Instant::now() + Duration::from_millis(50)),
            "a test",
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(tx);
        let me = spawn("rpc-test-self".into(), || {}).unwrap();
        join_until(vec![me], None, "a test");
    }

    /// A shutdown whose deadline was spent on a busy thread elsewhere (a dedicated
    /// endpoint) names only the thread that really is busy, not idle workers that were
    /// just told to exit.
    #[test]
    fn a_stop_past_its_deadline_names_only_the_busy_workers() {
        let idle = Pool::new("rpc-test-idle-", Workers::Fixed(3)).unwrap();
        let left = idle.stop(Some(Instant::now()));
        assert!(left.is_empty(), "idle workers reported busy: {left:?}");

        let pool = Pool::new("rpc-test-busy-", Workers::Fixed(3)).unwrap();
        let (started_tx, started_rx) = crossbeam_channel::bounded::<String>(1);
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        pool.execute(Box::new(move || {
            let _ = started_tx.send(thread::current().name().unwrap_or("?").to_owned());
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
        }))
        .unwrap();
        let busy = started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let left = pool.stop(Some(Instant::now() - Duration::from_millis(1)));
        assert_eq!(left, vec![busy]);
        drop(release_tx);
        wait_for("the busy worker exits", || pool.is_done());
    }

    /// A lead like `transport::lead`'s, with no connection: waits on a poller of its own
    /// until the pool has work or the deadline passes.
    fn lead_on_nothing(awaited: &dyn Awaited, until: Instant) -> bool {
        let Ok(mut poll) = mio::Poll::new() else {
            return false;
        };
        let Ok(waker) = Waker::new(poll.registry(), mio::Token(0)).map(Arc::new) else {
            return false;
        };
        if !awaited.claim() {
            return false;
        }
        let mut events = mio::Events::with_capacity(2);
        while !awaited.is_done() && Instant::now() < until {
            if !awaited.arm(Some(&waker)) {
                break;
            }
            let _ = poll.poll(
                &mut events,
                Some(until.saturating_duration_since(Instant::now())),
            );
            awaited.arm(None);
        }
        awaited.is_done()
    }

    #[test]
    fn a_leading_pool_runs_jobs_and_stops_while_a_worker_leads() {
        let pool = Pool::leading("rpc-test-lead-", 2, lead_on_nothing).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        for round in 1..=3 {
            // Idle in between: one worker leads, the other sleeps on the queue.
            thread::sleep(Duration::from_millis(20));
            for _ in 0..10 {
                let ran = Arc::clone(&ran);
                pool.execute(Box::new(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                }))
                .unwrap();
            }
            wait_for("the jobs run", || ran.load(Ordering::SeqCst) == 10 * round);
        }
        thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        let busy = pool.stop(Some(Instant::now() + Duration::from_secs(20)));
        assert!(busy.is_empty(), "{busy:?}");
        assert!(pool.is_done());
        // LEAD_FOR is 10 s: a leader not woken by the stop would hold it that long.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    /// Two jobs queued at once while one worker leads and the other sleeps on the queue:
    /// the sleeper takes the first, and the second wakes the leader rather than waiting
    /// for the first to end (the sleeper still counted itself asleep when the second was
    /// queued).
    #[test]
    fn a_second_job_behind_the_one_a_sleeper_took_wakes_the_leader() {
        let pool = Pool::leading("rpc-test-behind-", 2, lead_on_nothing).unwrap();
        for round in 0..10 {
            // Idle: one worker leads, the other sleeps on the queue.
            thread::sleep(Duration::from_millis(20));
            let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
            let (ran_tx, ran_rx) = crossbeam_channel::bounded::<()>(1);
            pool.execute(Box::new(move || {
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
            }))
            .unwrap();
            pool.execute(Box::new(move || {
                let _ = ran_tx.send(());
            }))
            .unwrap();
            let ran = ran_rx.recv_timeout(Duration::from_secs(2));
            let _ = release_tx.send(());
            assert!(
                ran.is_ok(),
                "round {round}: the second job waited for the first"
            );
        }
        let busy = pool.stop(Some(Instant::now() + Duration::from_secs(20)));
        assert!(busy.is_empty(), "{busy:?}");
    }

    thread_local! {
        /// The worker has a connection to lead (see `lead_if_it_has_a_peer`).
        static HAS_PEER: Cell<bool> = const { Cell::new(false) };
    }

    /// Turns taken by `lead_if_it_has_a_peer`.
    static PEER_TURNS: AtomicUsize = AtomicUsize::new(0);

    /// A lead like `transport::lead`'s: a worker with no connection to lead finds that
    /// out (slowly here, to widen the moment), and gives up; one with a connection leads
    /// it, as `lead_on_nothing` does.
    fn lead_if_it_has_a_peer(awaited: &dyn Awaited, until: Instant) -> bool {
        if !HAS_PEER.with(|peer| peer.replace(false)) {
            thread::sleep(Duration::from_millis(300));
            return false;
        }
        PEER_TURNS.fetch_add(1, Ordering::SeqCst);
        lead_on_nothing(awaited, until)
    }

    /// A worker that has a connection to lead is not kept from it by an idle worker that
    /// has none and is finding that out: only a worker about to read a connection counts
    /// as the pool's leader.
    #[test]
    fn a_worker_with_nothing_to_lead_does_not_keep_one_with_a_peer_from_leading() {
        let pool = Pool::leading("rpc-test-peer-", 2, lead_if_it_has_a_peer).unwrap();
        thread::sleep(Duration::from_millis(50));
        let (ran_tx, ran_rx) = crossbeam_channel::bounded::<()>(2);
        // Two jobs at once: each worker runs one, then goes idle at about the same time;
        // only the first job's worker has a connection to lead after it.
        let first = ran_tx.clone();
        pool.execute(Box::new(move || {
            HAS_PEER.with(|peer| peer.set(true));
            thread::sleep(Duration::from_millis(20));
            let _ = first.send(());
        }))
        .unwrap();
        pool.execute(Box::new(move || {
            let _ = ran_tx.send(());
        }))
        .unwrap();
        for _ in 0..2 {
            ran_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        wait_for("the worker with a peer leads", || {
            PEER_TURNS.load(Ordering::SeqCst) == 1
        });
        let busy = pool.stop(Some(Instant::now() + Duration::from_secs(20)));
        assert!(busy.is_empty(), "{busy:?}");
    }

    #[test]
    fn a_stopping_pool_is_work_for_its_leader_even_with_an_empty_queue() {
        // A worker that exits may hold another's exit task for a moment: the queue is
        // empty then, and the leader must still see the stop.
        let leading = Leading {
            id: 0,
            lead: lead_on_nothing,
            sleepers: AtomicUsize::new(0),
            leader: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            leaders: Mutex::new(Vec::new()),
        };
        let (_tx, rx) = crossbeam_channel::unbounded::<Task>();
        let work = PoolWork {
            leading: &leading,
            rx: &rx,
            armed: RefCell::new(None),
            claimed: Cell::new(false),
        };
        assert!(!work.is_done());
        leading.stop();
        assert!(work.is_done());
    }

    #[test]
    fn panic_messages() {
        let literal = std::panic::catch_unwind(|| panic!("literal")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "literal");
        let formatted = std::panic::catch_unwind(|| panic!("n={}", 3)).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "n=3");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "a panic without a message");
    }
}
