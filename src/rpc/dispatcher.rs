//! [`Dispatcher`]: the name → endpoint registry, and the routing of every message to an
//! inbox.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};

use crate::error::RpcError;
use crate::metrics::{EndpointKind, EndpointMetrics, EndpointStats};
use crate::rpc::concurrent::ConcurrentRpcEndpoint;
use crate::rpc::endpoint::{EndpointContext, RpcEndpoint, Threading};
use crate::rpc::endpoint_ref::{RefInner, RpcEndpointRef};
use crate::rpc::env::{EnvInner, RpcEnv};
use crate::rpc::inbox::{Endpoint, Inbox, InboxMessage};
use crate::rpc::message_loop::{Hosted, MessageLoop};
use crate::rpc::types::{self, TypeLabel};
use crate::rpc::verifier::Verdict;
use crate::sync::{Arc, Mutex, RwLock, RwLockWriteGuard, Weak};
use crate::threads::panic_message;
use crate::transport::Admission;

/// Runs `read`, the endpoint method `method` of the endpoint to be registered as `name`
/// (read once, before it is registered, outside the registry's lock); a panic in it is an
/// [`RpcError::EndpointPanicked`] naming the endpoint, the method and the panic's message.
fn read_endpoint<T>(name: &str, method: &str, read: impl FnOnce() -> T) -> Result<T, RpcError> {
    catch_unwind(AssertUnwindSafe(read)).map_err(|payload| RpcError::EndpointPanicked {
        endpoint: name.to_owned(),
        message: format!("in {method}: {}", panic_message(payload.as_ref())),
    })
}

/// How many names of stopped endpoints are remembered, so that calls to them fail with
/// `EndpointStopped` rather than `EndpointNotFound`.
const REMEMBERED_STOPPED: usize = 1024;

struct Registry {
    endpoints: HashMap<String, Arc<Inbox>>,
    stopped: bool,
}

/// Routes messages to the inboxes of the endpoints registered in one env.
pub(crate) struct Dispatcher {
    env_id: u64,
    registry: RwLock<Registry>,
    recently_stopped: Mutex<VecDeque<String>>,
    shared: Arc<MessageLoop>,
    /// How many threads `shared` has.
    shared_threads: usize,
    dedicated: Mutex<Vec<Arc<MessageLoop>>>,
}

impl Dispatcher {
    pub(crate) fn new(env_id: u64, threads: usize) -> Result<Self, RpcError> {
        Ok(Self {
            env_id,
            registry: RwLock::new(Registry {
                endpoints: HashMap::new(),
                stopped: false,
            }),
            recently_stopped: Mutex::new(VecDeque::new()),
            shared: MessageLoop::shared(env_id, threads)?,
            shared_threads: threads,
            dedicated: Mutex::new(Vec::new()),
        })
    }

    /// The registry, write-locked, if `name` may be registered now: the env runs and no
    /// endpoint has that name.
    fn claim(&self, name: String) -> Result<(RwLockWriteGuard<'_, Registry>, String), RpcError> {
        let registry = self.registry.write();
        if registry.stopped {
            return Err(RpcError::EnvStopped);
        }
        if registry.endpoints.contains_key(&name) {
            return Err(RpcError::EndpointExists { name });
        }
        Ok((registry, name))
    }

    /// Registers `endpoint` as `name`; its `on_start` is queued first. Fails with
    /// [`RpcError::EndpointPanicked`] if its `threading()` panics (nothing is registered).
    pub(crate) fn register<E: RpcEndpoint>(
        &self,
        env: &Arc<EnvInner>,
        name: String,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message>, RpcError> {
        let threading = read_endpoint(&name, "threading()", || endpoint.threading())?;
        let (registry, name) = self.claim(name)?;
        let runner = match threading {
            Threading::Shared => Arc::clone(&self.shared),
            Threading::Dedicated => {
                let runner = MessageLoop::dedicated(self.env_id, &name)?;
                let mut dedicated = self.dedicated.lock();
                dedicated.retain(|l| !l.is_done());
                dedicated.push(Arc::clone(&runner));
                runner
            }
        };
        let kind = match threading {
            Threading::Shared => EndpointKind::Shared,
            Threading::Dedicated => EndpointKind::Dedicated,
        };
        self.insert::<E::Message>(env, registry, name, runner, kind, |ctx, name, stats| {
            let hosted = Hosted::new(endpoint, ctx, Arc::clone(env), name, stats);
            Endpoint::Exclusive(Box::new(hosted))
        })
    }

    /// Registers the concurrent `endpoint` as `name` on the shared loop; its `on_start`
    /// is queued first. Fails with [`RpcError::EndpointPanicked`] if its
    /// `max_concurrent()` panics (nothing is registered).
    pub(crate) fn register_concurrent<E: ConcurrentRpcEndpoint>(
        &self,
        env: &Arc<EnvInner>,
        name: String,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message>, RpcError> {
        let limit = read_endpoint(&name, "max_concurrent()", || endpoint.max_concurrent())?
            .clamp(1, self.shared_threads.max(1));
        let (registry, name) = self.claim(name)?;
        let runner = Arc::clone(&self.shared);
        let kind = EndpointKind::Concurrent;
        self.insert::<E::Message>(env, registry, name, runner, kind, |ctx, name, stats| {
            let handler = Hosted::new(endpoint, ctx, Arc::clone(env), name, stats);
            Endpoint::Concurrent {
                handler: Box::new(handler),
                limit,
            }
        })
    }

    /// Makes the inbox of a new endpoint `name` (not registered: checked under
    /// `registry`), registers it and schedules its `on_start`.
    fn insert<M: Send + 'static>(
        &self,
        env: &Arc<EnvInner>,
        mut registry: RwLockWriteGuard<'_, Registry>,
        name: String,
        runner: Arc<MessageLoop>,
        kind: EndpointKind,
        endpoint: impl FnOnce(EndpointContext<M>, Arc<str>, Arc<EndpointStats>) -> Endpoint,
    ) -> Result<RpcEndpointRef<M>, RpcError> {
        let name: Arc<str> = name.into();
        let inner = Arc::new(RefInner::new(
            env,
            Arc::clone(&name),
            env.address().cloned(),
            env.id(),
            None,
        ));
        let self_ref = RpcEndpointRef::from_inner(Arc::clone(&inner));
        let ctx = EndpointContext::new(self_ref.clone(), RpcEnv::internal(Arc::clone(env)));
        let message_type = (types::fingerprint::<M>(), std::any::type_name::<M>());
        let stats = Arc::new(EndpointStats::default());
        let inbox = Arc::new(Inbox::new(
            Arc::clone(&name),
            message_type,
            endpoint(ctx, Arc::clone(&name), Arc::clone(&stats)),
            runner,
            env.settings().inbox_capacity,
            (stats, kind),
        ));
        let _ = inner.inbox.set(Arc::downgrade(&inbox));
        registry
            .endpoints
            .insert(name.to_string(), Arc::clone(&inbox));
        drop(registry);
        self.recently_stopped.lock().retain(|n| **n != *name);
        inbox.schedule_start();
        debug!("endpoint {name} registered");
        Ok(self_ref)
    }

    /// The inbox of the endpoint `name`, if registered.
    pub(crate) fn inbox(&self, name: &str) -> Option<Arc<Inbox>> {
        self.registry.read().endpoints.get(name).cloned()
    }

    /// The figures of every registered endpoint, by name.
    pub(crate) fn metrics(&self) -> Vec<EndpointMetrics> {
        let inboxes: Vec<Arc<Inbox>> = self.registry.read().endpoints.values().cloned().collect();
        let mut metrics: Vec<EndpointMetrics> = inboxes.iter().map(|i| i.metrics()).collect();
        metrics.sort_by(|a, b| a.name.cmp(&b.name));
        metrics
    }

    /// Whether an endpoint called `name` is registered and takes messages of the type
    /// whose fingerprint is `message_type` (the verifier's question).
    pub(crate) fn verify(&self, name: &str, message_type: u64) -> Verdict {
        match self.registry.read().endpoints.get(name) {
            None => Verdict::Missing,
            Some(inbox) => match inbox.message_type() {
                (fingerprint, _) if fingerprint == message_type => Verdict::Exists,
                (_, takes) => Verdict::OtherType {
                    takes: TypeLabel(takes).to_string(),
                },
            },
        }
    }

    /// Posts `msg` from a thread of this env to the endpoint `target` names, charging
    /// `charge` bytes of its inbox and waiting for room as `admission` says. On failure an
    /// ask is failed through its context, and the error is returned as well.
    pub(crate) fn post(
        &self,
        target: &RefInner,
        msg: InboxMessage,
        charge: usize,
        admission: Admission,
    ) -> Result<(), RpcError> {
        let cached = target
            .inbox
            .get()
            .and_then(Weak::upgrade)
            .filter(|inbox| !inbox.is_stopped());
        let inbox = match cached {
            Some(inbox) => inbox,
            None => match self.resolve(&target.name, || target.uri()) {
                Ok(inbox) => inbox,
                Err(error) => return fail(msg, error),
            },
        };
        inbox.post_local(msg, charge, admission)
    }

    /// The inbox of the endpoint called `name`, or why there is none: the env stopped,
    /// the endpoint stopped, or it is unknown (`uri` names it then).
    pub(crate) fn resolve(
        &self,
        name: &str,
        uri: impl FnOnce() -> String,
    ) -> Result<Arc<Inbox>, RpcError> {
        let registry = self.registry.read();
        if registry.stopped {
            return Err(RpcError::EnvStopped);
        }
        if let Some(inbox) = registry.endpoints.get(name) {
            return Ok(Arc::clone(inbox));
        }
        drop(registry);
        if self.recently_stopped.lock().iter().any(|n| n == name) {
            return Err(RpcError::EndpointStopped {
                name: name.to_owned(),
            });
        }
        Err(RpcError::EndpointNotFound { uri: uri() })
    }

    /// Posts an event to every endpoint (dropped once the env is stopping).
    pub(crate) fn post_to_all(&self, event: impl Fn() -> InboxMessage) {
        let registry = self.registry.read();
        if registry.stopped {
            return;
        }
        for inbox in registry.endpoints.values() {
            if inbox.post(event()).is_err() {
                debug!("event for stopped endpoint {} dropped", inbox.name());
            }
        }
    }

    /// Stops the endpoint `name`: its `on_stop` runs after the messages already queued,
    /// and the name is free again at once. `false` if no such endpoint is registered.
    pub(crate) fn stop_endpoint(&self, name: &str) -> bool {
        let Some(inbox) = self.registry.write().endpoints.remove(name) else {
            return false;
        };
        let mut stopped = self.recently_stopped.lock();
        if stopped.len() >= REMEMBERED_STOPPED {
            stopped.pop_front();
        }
        stopped.push_back(name.to_owned());
        drop(stopped);
        inbox.stop(RpcError::EndpointStopped {
            name: name.to_owned(),
        });
        true
    }

    /// Stops every endpoint and the message loops, waiting no later than `deadline`.
    pub(crate) fn stop(&self, deadline: Instant) {
        let inboxes: Vec<Arc<Inbox>> = {
            let mut registry = self.registry.write();
            registry.stopped = true;
            registry.endpoints.drain().map(|(_, inbox)| inbox).collect()
        };
        for inbox in &inboxes {
            inbox.stop(RpcError::EnvStopped);
        }
        // Wait for each on_stop; a loop thread calling shutdown cannot wait for itself.
        let on_loop = crate::rpc::message_loop::on_loop_of(self.env_id);
        if !on_loop {
            while inboxes.iter().any(|i| !i.is_finished()) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
        }
        for inbox in inboxes.iter().filter(|i| !i.is_finished()) {
            warn!(
                "endpoint {} did not stop in time ({} messages left); abandoned",
                inbox.name(),
                inbox.len()
            );
        }
        let dedicated = std::mem::take(&mut *self.dedicated.lock());
        for runner in dedicated {
            runner.stop(deadline);
        }
        self.shared.stop(deadline);
    }
}

/// Fails `msg` (an ask through its context) and returns the error.
fn fail(msg: InboxMessage, error: RpcError) -> Result<(), RpcError> {
    debug!("{msg:?} not delivered: {error:#}");
    msg.fail(error.clone());
    Err(error)
}
