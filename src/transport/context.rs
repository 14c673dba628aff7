//! [`TransportContext`]: the configuration and handler that servers and client factories
//! share, and the event loops they run on.

use std::fmt;

use crate::error::RpcError;
use crate::sync::{Arc, Mutex, Weak};
use crate::transport::connection::Counters;
use crate::transport::event_loop::IoGroup;
use crate::transport::{
    AuthBootstrap, RpcHandler, TransportClientFactory, TransportConf, TransportServer,
};

/// Creates servers and client factories that share one [`RpcHandler`] and one set of
/// `rpc-io-N` event loops (`rpc.io.threads` of them, started on first use and stopped
/// when the last server and factory using them are closed).
///
/// ```
/// use std::sync::Arc;
/// use rpcenv::transport::{Responder, RpcHandler, TransportClient, TransportConf, TransportContext};
/// struct Echo;
/// impl RpcHandler for Echo {
///     fn receive(&self, _: &TransportClient, message: Vec<u8>, responder: Responder) {
///         responder.reply(message)
///     }
/// }
/// let ctx = TransportContext::new(TransportConf::default(), Arc::new(Echo));
/// let server = ctx.create_server("127.0.0.1", 0)?;
/// assert_ne!(server.port(), 0);
/// server.close();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[derive(Clone)]
pub struct TransportContext {
    inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) conf: TransportConf,
    handler: Arc<dyn RpcHandler>,
    io: Mutex<Weak<IoGroup>>,
    pub(crate) counters: Arc<Counters>,
}

impl ContextInner {
    /// The running event loops, or new ones.
    pub(crate) fn io_group(&self) -> Result<Arc<IoGroup>, RpcError> {
        let mut io = self.io.lock();
        if let Some(group) = io.upgrade() {
            return Ok(group);
        }
        let group = IoGroup::start(
            &self.conf,
            Arc::clone(&self.handler),
            Arc::clone(&self.counters),
        )?;
        *io = Arc::downgrade(&group);
        Ok(group)
    }
}

impl TransportContext {
    /// A context whose connections are served by `handler`.
    pub fn new(conf: TransportConf, handler: Arc<dyn RpcHandler>) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                conf,
                handler,
                io: Mutex::new(Weak::new()),
                counters: Arc::new(Counters::default()),
            }),
        }
    }

    /// Binds `host:port` and starts accepting (port 0: any free port; on a collision the
    /// next ports, up to `rpc.port.maxRetries` of them). Fails with [`RpcError::Bind`].
    pub fn create_server(&self, host: &str, port: u16) -> Result<TransportServer, RpcError> {
        let io = self.inner.io_group()?;
        TransportServer::bind(host, port, &self.inner.conf, io, None)
    }

    /// As [`create_server`](Self::create_server), for a server whose connections must
    /// authenticate with `bootstrap` before anything reaches the handler (Spark's
    /// `createServer(host, port, [AuthServerBootstrap])`).
    pub fn create_server_with_bootstrap(
        &self,
        host: &str,
        port: u16,
        bootstrap: &AuthBootstrap,
    ) -> Result<TransportServer, RpcError> {
        let io = self.inner.io_group()?;
        TransportServer::bind(host, port, &self.inner.conf, io, Some(bootstrap.clone()))
    }

    /// A client factory whose connections are served by this context's handler.
    pub fn create_client_factory(&self) -> TransportClientFactory {
        TransportClientFactory::new(Arc::clone(&self.inner), None)
    }

    /// As [`create_client_factory`](Self::create_client_factory), for a factory that
    /// authenticates each new connection with `bootstrap` before handing it out (Spark's
    /// `createClientFactory([AuthClientBootstrap])`); a failed handshake fails
    /// `create_client` with [`RpcError::Auth`].
    pub fn create_client_factory_with_bootstrap(
        &self,
        bootstrap: &AuthBootstrap,
    ) -> TransportClientFactory {
        TransportClientFactory::new(Arc::clone(&self.inner), Some(bootstrap.clone()))
    }

    /// The configuration.
    pub fn conf(&self) -> &TransportConf {
        &self.inner.conf
    }

    /// The counts the transport keeps (messages lost with their connections, connections
    /// refused).
    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }
}

impl fmt::Debug for TransportContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportContext")
            .field("conf", &self.inner.conf)
            .finish()
    }
}
