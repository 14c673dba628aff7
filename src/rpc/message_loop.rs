//! Message loops: the threads that run endpoint code.
//!
//! The shared loop has `rpc.dispatcher.numThreads` threads (`rpc-dispatcher-N`) that take
//! scheduled inboxes from one queue; a dedicated loop has one thread (`rpc-endpoint-NAME`)
//! for one endpoint. Endpoint code runs under `catch_unwind`: a panic goes to the
//! endpoint's `on_error`, and the thread goes on. Messages from peers are decoded here,
//! not on the I/O threads.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, error, warn};

use crate::codec;
use crate::error::RpcError;
use crate::rpc::call::{RpcCallContext, downcast_or_decode};
use crate::rpc::endpoint::{EndpointContext, RpcEndpoint};
use crate::rpc::endpoint_ref::decode_scope;
use crate::rpc::env::EnvInner;
use crate::rpc::inbox::{Handler, Inbox, InboxMessage, Payload, Turn};
use crate::sync::{Arc, Mutex};

enum Job {
    Run(Arc<Inbox>),
    Exit,
}

thread_local! {
    /// The id of the env whose message loop runs on this thread (0: none).
    static LOOP_ENV: Cell<u64> = const { Cell::new(0) };
}

/// Whether the current thread is a message-loop thread of any env.
pub(crate) fn on_a_loop() -> bool {
    LOOP_ENV.with(Cell::get) != 0
}

/// Whether the current thread is a message-loop thread of the env `env_id`.
pub(crate) fn on_loop_of(env_id: u64) -> bool {
    LOOP_ENV.with(Cell::get) == env_id
}

/// A pool of threads draining scheduled inboxes.
pub(crate) struct MessageLoop {
    name: String,
    tx: Sender<Job>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl MessageLoop {
    /// The shared loop: `threads` threads named `rpc-dispatcher-N`.
    pub(crate) fn shared(env_id: u64, threads: usize) -> Result<Arc<Self>, RpcError> {
        let names = (0..threads)
            .map(|i| format!("rpc-dispatcher-{i}"))
            .collect();
        Self::start("shared".into(), env_id, names, false)
    }

    /// A dedicated loop for the endpoint `name`: one thread, `rpc-endpoint-NAME`, that
    /// exits once the endpoint has stopped.
    pub(crate) fn dedicated(env_id: u64, name: &str) -> Result<Arc<Self>, RpcError> {
        Self::start(
            format!("endpoint {name}"),
            env_id,
            vec![format!("rpc-endpoint-{name}")],
            true,
        )
    }

    fn start(
        name: String,
        env_id: u64,
        thread_names: Vec<String>,
        dedicated: bool,
    ) -> Result<Arc<Self>, RpcError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let this = Arc::new(Self {
            name,
            tx,
            threads: Mutex::new(Vec::new()),
        });
        for thread_name in thread_names {
            let rx = rx.clone();
            let tx = this.tx.clone();
            let thread = thread::Builder::new()
                .name(thread_name)
                .spawn(move || run(&rx, &tx, env_id, dedicated))
                .map_err(|e| RpcError::io("cannot start a message-loop thread", e));
            match thread {
                Ok(thread) => this.threads.lock().push(thread),
                Err(err) => {
                    this.stop(Instant::now() + Duration::from_secs(1));
                    return Err(err);
                }
            }
        }
        Ok(this)
    }

    pub(crate) fn schedule(&self, inbox: Arc<Inbox>) {
        if self.tx.send(Job::Run(inbox)).is_err() {
            // Only after stop: the env is shutting down and the inbox's messages are
            // failed by the dispatcher.
            debug!("message loop {} is stopped; inbox not run", self.name);
        }
    }

    /// Whether every thread has exited.
    pub(crate) fn is_done(&self) -> bool {
        self.threads.lock().iter().all(JoinHandle::is_finished)
    }

    /// Tells the threads to exit once the queue before the request is drained, and joins
    /// them until `deadline`; threads still busy then are left running (and logged).
    pub(crate) fn stop(&self, deadline: Instant) {
        let mut threads = std::mem::take(&mut *self.threads.lock());
        for _ in 0..threads.len() {
            let _ = self.tx.send(Job::Exit);
        }
        let current = thread::current().id();
        threads.retain(|t| t.thread().id() != current);
        join_until(threads, deadline, &self.name);
    }
}

/// Joins `threads`, waiting no later than `deadline`; logs the ones left behind.
pub(crate) fn join_until(threads: Vec<JoinHandle<()>>, deadline: Instant, what: &str) {
    let mut pending = threads;
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
            return;
        }
        if Instant::now() >= deadline {
            for thread in &pending {
                warn!(
                    "thread {} of {what} is still busy at shutdown; left running",
                    thread.thread().name().unwrap_or("?")
                );
            }
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn run(rx: &Receiver<Job>, tx: &Sender<Job>, env_id: u64, dedicated: bool) {
    LOOP_ENV.with(|e| e.set(env_id));
    // Whether the thread is done: a dedicated loop's endpoint finished.
    let turn = |inbox: Arc<Inbox>| match catch_unwind(AssertUnwindSafe(|| inbox.process())) {
        Ok(Turn::Finished) => dedicated,
        Ok(_) => false,
        Err(_) => {
            error!(
                "inbox of endpoint {} panicked outside endpoint code",
                inbox.name()
            );
            false
        }
    };
    while let Ok(Job::Run(inbox)) = rx.recv() {
        if turn(inbox) {
            return;
        }
    }
    // Told to exit: first run what is still scheduled (an inbox whose turn ended while
    // the stop was requested comes back behind the request, with its on_stop to run).
    while let Ok(job) = rx.try_recv() {
        match job {
            Job::Run(inbox) => {
                if turn(inbox) {
                    return;
                }
            }
            Job::Exit => {
                // Another thread's: leave it for that thread.
                let _ = tx.send(Job::Exit);
                return;
            }
        }
    }
}

impl fmt::Debug for MessageLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageLoop")
            .field("name", &self.name)
            .field("threads", &self.threads.lock().len())
            .finish()
    }
}

/// An endpoint with its context, behind the [`Handler`] the inbox calls.
pub(crate) struct Typed<E: RpcEndpoint> {
    endpoint: E,
    ctx: EndpointContext<E::Message>,
    env: Arc<EnvInner>,
    name: Arc<str>,
}

impl<E: RpcEndpoint> Typed<E> {
    pub(crate) fn new(
        endpoint: E,
        ctx: EndpointContext<E::Message>,
        env: Arc<EnvInner>,
        name: Arc<str>,
    ) -> Self {
        Self {
            endpoint,
            ctx,
            env,
            name,
        }
    }

    fn decode(&self, payload: Payload) -> Result<E::Message, RpcError> {
        let what = format_args!("message for endpoint {}", self.name);
        match payload {
            Payload::Local(content) => downcast_or_decode(content, &self.env, what),
            Payload::Remote {
                body,
                start,
                client,
            } => decode_scope(&self.env, Some(&client), || {
                codec::decode::<E::Message>(&body[start..], what)
            }),
        }
    }

    /// Runs endpoint code; a panic goes to `on_error`.
    fn guard(&mut self, f: impl FnOnce(&mut E, &EndpointContext<E::Message>)) {
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut self.endpoint, &self.ctx)));
        let Err(payload) = outcome else {
            return;
        };
        let message = panic_message(payload.as_ref());
        RpcCallContext::answer_panicked(&message);
        let error = RpcError::EndpointPanicked {
            endpoint: self.name.to_string(),
            message,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.endpoint.on_error(error, &self.ctx)
        }));
        if let Err(payload) = outcome {
            let message = panic_message(payload.as_ref());
            RpcCallContext::answer_panicked(&message);
            error!(
                "on_error of endpoint {} panicked ({message}); ignored",
                self.name
            );
        }
    }
}

impl<E: RpcEndpoint> Handler for Typed<E> {
    fn handle(&mut self, msg: InboxMessage) {
        match msg {
            InboxMessage::OnStart => {
                self.ctx.set_sender(None);
                debug!("endpoint {} starts", self.name);
                self.guard(|e, ctx| e.on_start(ctx));
            }
            InboxMessage::OnStop => {
                self.ctx.set_sender(None);
                debug!("endpoint {} stops", self.name);
                self.guard(|e, ctx| e.on_stop(ctx));
            }
            InboxMessage::OneWay { sender, payload } => {
                self.ctx.set_sender(sender);
                match self.decode(payload) {
                    Ok(msg) => self.guard(|e, ctx| e.receive(msg, ctx)),
                    Err(err) => {
                        warn!("one-way message for endpoint {} dropped: {err}", self.name);
                        self.guard(|e, ctx| e.on_error(err, ctx));
                    }
                }
            }
            InboxMessage::Ask { payload, reply } => {
                self.ctx.set_sender(reply.sender_address());
                match self.decode(payload) {
                    Ok(msg) => self.guard(|e, _| e.receive_and_reply(msg, reply)),
                    Err(err) => {
                        warn!("ask for endpoint {} failed: {err}", self.name);
                        reply.fail(err);
                    }
                }
            }
            InboxMessage::Connected(remote) => {
                self.ctx.set_sender(None);
                self.guard(|e, ctx| e.on_connected(&remote, ctx));
            }
            InboxMessage::Disconnected(remote) => {
                self.ctx.set_sender(None);
                self.guard(|e, ctx| e.on_disconnected(&remote, ctx));
            }
            InboxMessage::NetworkError(error, remote) => {
                self.ctx.set_sender(None);
                self.guard(|e, ctx| e.on_network_error(&error, &remote, ctx));
            }
        }
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
