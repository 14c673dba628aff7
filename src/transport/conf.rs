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
    max_queued_bytes: usize,
    send_timeout: Duration,
    keep_alive_idle: Option<Duration>,
    keep_alive_interval: Duration,
    keep_alive_count: u32,
    tcp_user_timeout: Option<Duration>,
    frame_timeout: Option<Duration>,
    max_connections: usize,
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
            max_queued_bytes: settings.max_queued_bytes,
            send_timeout: settings.send_timeout,
            keep_alive_idle: settings.keep_alive_idle,
            keep_alive_interval: settings.keep_alive_interval,
            keep_alive_count: settings.keep_alive_count,
            tcp_user_timeout: settings.tcp_user_timeout,
            frame_timeout: settings.frame_timeout,
            max_connections: settings.max_connections,
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

    /// `rpc.io.connectionTimeout`: the connect timeout; how long a peer may stay silent
    /// while a request without a deadline of its own waits for its answer; how long a
    /// full write queue may go without the peer reading a byte; and how long a peer that
    /// closed its side may take to be answered. `None` when set to `0`.
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

    /// `rpc.io.maxQueuedBytes`: the bytes of frames one connection queues to write before
    /// senders wait for room.
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }

    /// `rpc.io.sendTimeout`: how long a send waits for room in a full write queue; zero
    /// means it fails at once.
    pub fn send_timeout(&self) -> Duration {
        self.send_timeout
    }

    /// `rpc.io.keepAliveIdle`: `TCP_KEEPIDLE`; `None` when keep-alive is off.
    pub fn keep_alive_idle(&self) -> Option<Duration> {
        self.keep_alive_idle
    }

    /// `rpc.io.keepAliveInterval`: `TCP_KEEPINTVL`.
    pub fn keep_alive_interval(&self) -> Duration {
        self.keep_alive_interval
    }

    /// `rpc.io.keepAliveCount`: `TCP_KEEPCNT`.
    pub fn keep_alive_count(&self) -> u32 {
        self.keep_alive_count
    }

    /// `rpc.io.tcpUserTimeout`: `TCP_USER_TIMEOUT` (Linux); `None` leaves the OS default.
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        self.tcp_user_timeout
    }

    /// `rpc.io.frameTimeout`: how long an inbound connection may go without sending a
    /// whole frame after it connects, or any connection may stall in the middle of a
    /// frame. `None` when set to `0`.
    pub fn frame_timeout(&self) -> Option<Duration> {
        self.frame_timeout
    }

    /// `rpc.io.maxConnections`: the inbound connections a server holds at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

impl Default for TransportConf {
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}
