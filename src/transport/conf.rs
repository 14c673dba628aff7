//! [`TransportConf`]: the transport's read-only view of the configuration.

use std::time::Duration;

use crate::RpcConf;
use crate::conf::Settings;
use crate::error::RpcError;

/// The settings the transport layer uses, taken from an [`RpcConf`] and read-only after.
///
/// `TransportConf::default()` holds the defaults of every key (see [`RpcConf`] for the
/// table); [`TransportConf::from_conf`] applies an `RpcConf` and checks it.
///
/// ```
/// use rpcenv::RpcConf;
/// use rpcenv::transport::TransportConf;
/// let conf = TransportConf::from_conf(&RpcConf::new().set("rpc.message.maxSize", "1m"))?;
/// assert_eq!(conf.max_message_size(), 1 << 20);
/// assert_eq!(TransportConf::default().max_message_size(), 128 << 20);
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TransportConf {
    max_message_size: u64,
    io_threads: usize,
    num_connections_per_peer: usize,
    connection_timeout: Option<Duration>,
    backlog: Option<u32>,
    receive_buffer: Option<usize>,
    send_buffer: Option<usize>,
    port_max_retries: u32,
}

impl TransportConf {
    /// Checks `conf` and takes the transport's keys from it.
    pub fn from_conf(conf: &RpcConf) -> Result<Self, RpcError> {
        Ok(Self::from_settings(&conf.settings()?))
    }

    pub(crate) fn from_settings(settings: &Settings) -> Self {
        Self {
            max_message_size: settings.max_message_size,
            io_threads: settings.io_threads,
            num_connections_per_peer: settings.num_connections_per_peer,
            connection_timeout: settings.connection_timeout,
            backlog: settings.backlog,
            receive_buffer: settings.receive_buffer,
            send_buffer: settings.send_buffer,
            port_max_retries: settings.port_max_retries,
        }
    }

    /// `rpc.message.maxSize`: the largest frame, header included, that is sent or accepted.
    pub fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    /// `rpc.io.threads`: the number of `rpc-io-N` event loops.
    pub fn io_threads(&self) -> usize {
        self.io_threads
    }

    /// `rpc.io.numConnectionsPerPeer`: pooled clients per remote address.
    pub fn num_connections_per_peer(&self) -> usize {
        self.num_connections_per_peer
    }

    /// `rpc.io.connectionTimeout`: the connect timeout, and how long a connection with
    /// requests outstanding may stay quiet before it is closed. `None` when set to `0`.
    pub fn connection_timeout(&self) -> Option<Duration> {
        self.connection_timeout
    }

    /// `rpc.io.backLog`: the listen backlog; `None` means the OS maximum.
    pub fn backlog(&self) -> Option<u32> {
        self.backlog
    }

    /// `rpc.io.receiveBuffer`: `SO_RCVBUF` in bytes; `None` leaves the OS default.
    pub fn receive_buffer(&self) -> Option<usize> {
        self.receive_buffer
    }

    /// `rpc.io.sendBuffer`: `SO_SNDBUF` in bytes; `None` leaves the OS default.
    pub fn send_buffer(&self) -> Option<usize> {
        self.send_buffer
    }

    /// `rpc.port.maxRetries`: how many more ports to try after a bind collision.
    pub fn port_max_retries(&self) -> u32 {
        self.port_max_retries
    }
}

impl Default for TransportConf {
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}
