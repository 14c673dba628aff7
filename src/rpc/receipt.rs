//! [`Receipt`]: how a one-way sender learns what became of a message it cares about.

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::RpcError;
use crate::sync::{Arc, Condvar, Mutex};
use crate::transport;

#[derive(Default)]
struct Slot {
    outcome: Mutex<Option<Result<(), RpcError>>>,
    done: Condvar,
}

/// The outcome of one message sent with
/// [`RpcEndpointRef::send_with_receipt`](crate::RpcEndpointRef::send_with_receipt).
///
/// It resolves `Ok(())` once the message was handed to the operating system in full (for
/// a remote endpoint: written to the connection's socket; for an endpoint of the same env:
/// put in its inbox), or with the error that means it never will be: the connection
/// closed or could not be made ([`RpcError::Connection`] naming the peer), the env or the
/// endpoint stopped. A message waits no longer than the connection it waits on, which
/// closes once its peer reads nothing for `rpc.io.connectionTimeout` or vanishes
/// (keep-alive, `rpc.io.tcpUserTimeout`); but a message to a live endpoint that takes no
/// messages waits for its window as long as that lasts: bound the wait with
/// [`wait_timeout`](Self::wait_timeout).
///
/// `Ok` does not mean the peer's endpoint handled the message (TCP cannot tell that);
/// ask when you need to know.
///
/// ```
/// use rpcenv::{EndpointContext, RpcEndpoint, RpcEnv};
/// struct Sink;
/// impl RpcEndpoint for Sink {
///     type Message = u32;
///     fn receive(&mut self, _n: u32, _ctx: &EndpointContext<u32>) {}
/// }
/// let server = RpcEnv::builder("server").bind_address("127.0.0.1").port(0).build()?;
/// server.setup_endpoint("sink", Sink)?;
/// let client = RpcEnv::builder("client").client_mode(true).build()?;
/// let sink = client.setup_endpoint_ref::<u32>(&server.address().unwrap(), "sink")?;
/// let receipt = sink.send_with_receipt(7)?;
/// receipt.wait()?; // written to the socket
/// # client.shutdown();
/// # server.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[must_use = "a receipt tells whether the message went out; drop it if that does not matter"]
pub struct Receipt {
    slot: Arc<Slot>,
}

impl Receipt {
    /// A receipt, and the callback the transport (or the inbox) resolves it with.
    pub(crate) fn new() -> (Self, transport::Receipt) {
        let slot = Arc::new(Slot::default());
        let resolver = Arc::clone(&slot);
        let callback: transport::Receipt = Box::new(move |outcome| {
            let mut stored = resolver.outcome.lock();
            if stored.is_none() {
                *stored = Some(outcome);
                resolver.done.notify_all();
            }
        });
        (Self { slot }, callback)
    }

    /// Blocks until the outcome is known.
    pub fn wait(self) -> Result<(), RpcError> {
        let mut outcome = self.slot.outcome.lock();
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            outcome = self
                .slot
                .done
                .wait_timeout(outcome, Duration::from_secs(3600));
        }
    }

    /// The outcome if it is known within `timeout`; `None` otherwise (the message may
    /// still go out later).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<(), RpcError>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut outcome = self.slot.outcome.lock();
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return Some(outcome.clone());
            }
            let wait = match deadline {
                Some(deadline) => deadline.checked_duration_since(Instant::now())?,
                None => Duration::from_secs(3600),
            };
            if wait.is_zero() {
                return None;
            }
            outcome = self.slot.done.wait_timeout(outcome, wait);
        }
    }

    /// The outcome if it is known, without blocking.
    pub fn try_wait(&self) -> Option<Result<(), RpcError>> {
        self.slot.outcome.lock().clone()
    }

    /// Whether the outcome is known.
    pub fn is_done(&self) -> bool {
        self.slot.outcome.lock().is_some()
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("outcome", &*self.slot.outcome.lock())
            .finish()
    }
}
