//! [`RpcConf`], the string-keyed configuration, and `Settings`, its typed and checked view.
//!
//! Values stay strings until the env is built (or [`RpcConf::validate`] is called); then
//! every `rpc.*` key is checked at once and turned into a `Settings`. Unknown `rpc.*` keys
//! are errors here and nowhere else. This module opens no sockets and starts no threads.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::RpcError;
use crate::transport::{
    AuthBootstrap, Cipher, DEFAULT_AUTH_TIMEOUT, EngineVersion, SPARK_RPC_APP_ID,
};

/// The names of the configuration keys, for code that reports them (e.g. `RpcError::Timeout`).
pub(crate) mod keys {
    /// Default deadline of `ask` / `ask_sync`.
    pub(crate) const ASK_TIMEOUT: &str = "rpc.askTimeout";
    /// Deadline of `setup_endpoint_ref*`.
    pub(crate) const LOOKUP_TIMEOUT: &str = "rpc.lookupTimeout";
    /// Bind retries on a port collision.
    pub(crate) const PORT_MAX_RETRIES: &str = "rpc.port.maxRetries";
    /// Largest frame accepted or sent.
    pub(crate) const MESSAGE_MAX_SIZE: &str = "rpc.message.maxSize";
    /// Worker event loops.
    pub(crate) const IO_THREADS: &str = "rpc.io.threads";
    /// Pooled clients per remote address.
    pub(crate) const IO_NUM_CONNECTIONS_PER_PEER: &str = "rpc.io.numConnectionsPerPeer";
    /// Connect timeout, and idle limit of a connection with calls outstanding.
    pub(crate) const IO_CONNECTION_TIMEOUT: &str = "rpc.io.connectionTimeout";
    /// Listen backlog.
    pub(crate) const IO_BACKLOG: &str = "rpc.io.backLog";
    /// `SO_RCVBUF`.
    pub(crate) const IO_RECEIVE_BUFFER: &str = "rpc.io.receiveBuffer";
    /// `SO_SNDBUF`.
    pub(crate) const IO_SEND_BUFFER: &str = "rpc.io.sendBuffer";
    /// Bytes of frames a connection queues to write before senders wait.
    pub(crate) const IO_MAX_QUEUED_BYTES: &str = "rpc.io.maxQueuedBytes";
    /// How long a send or ask waits for room in a full queue.
    pub(crate) const IO_SEND_TIMEOUT: &str = "rpc.io.sendTimeout";
    /// `TCP_KEEPIDLE`; 0 turns keep-alive off.
    pub(crate) const IO_KEEP_ALIVE_IDLE: &str = "rpc.io.keepAliveIdle";
    /// `TCP_KEEPINTVL`.
    pub(crate) const IO_KEEP_ALIVE_INTERVAL: &str = "rpc.io.keepAliveInterval";
    /// `TCP_KEEPCNT`.
    pub(crate) const IO_KEEP_ALIVE_COUNT: &str = "rpc.io.keepAliveCount";
    /// `TCP_USER_TIMEOUT`.
    pub(crate) const IO_TCP_USER_TIMEOUT: &str = "rpc.io.tcpUserTimeout";
    /// Limit on a connection silent since accept, or stalled in the middle of a frame.
    pub(crate) const IO_FRAME_TIMEOUT: &str = "rpc.io.frameTimeout";
    /// Inbound connections a server holds at once.
    pub(crate) const IO_MAX_CONNECTIONS: &str = "rpc.io.maxConnections";
    /// Shared message-loop threads.
    pub(crate) const DISPATCHER_NUM_THREADS: &str = "rpc.dispatcher.numThreads";
    /// How often the `metrics` feature publishes an env's figures to the `metrics` facade.
    pub(crate) const METRICS_INTERVAL: &str = "rpc.metrics.interval";
    /// Bytes of messages an endpoint's inbox holds from one sender.
    pub(crate) const DISPATCHER_INBOX_CAPACITY: &str = "rpc.dispatcher.inboxCapacity";
    /// Ceiling of the connect thread pool.
    pub(crate) const CONNECT_THREADS: &str = "rpc.connect.threads";
    /// Require the shared-secret handshake.
    pub(crate) const AUTHENTICATE: &str = "rpc.authenticate";
    /// The shared secret. Its value is never logged or `Debug`-printed.
    pub(crate) const AUTHENTICATE_SECRET: &str = "rpc.authenticate.secret";
    /// A file whose bytes, Base64-encoded, are the shared secret.
    pub(crate) const AUTHENTICATE_SECRET_FILE: &str = "rpc.authenticate.secret.file";
    /// An environment variable that holds the shared secret.
    pub(crate) const AUTHENTICATE_SECRET_ENV: &str = "rpc.authenticate.secret.env";
    /// The app id both sides of the handshake name.
    pub(crate) const AUTHENTICATE_APP_ID: &str = "rpc.authenticate.appId";
    /// How long a handshake may take (client: waiting for the answer; server: from accept).
    pub(crate) const AUTH_TIMEOUT: &str = "rpc.authenticate.timeout";
    /// Encrypt frames after the handshake.
    pub(crate) const IO_ENCRYPTION_ENABLED: &str = "rpc.io.encryption.enabled";
    /// The channel cipher.
    pub(crate) const IO_ENCRYPTION_CIPHER: &str = "rpc.io.encryption.cipher";
    /// How the channel key is derived from the handshake (1 or 2).
    pub(crate) const IO_ENCRYPTION_ENGINE_VERSION: &str = "rpc.io.encryption.authEngineVersion";
}

/// One row of the key table: a known key, its default and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyInfo {
    /// The key, e.g. `rpc.askTimeout`.
    pub(crate) key: &'static str,
    /// The default as a user would write it, or a phrase (`cores`, `OS default`, `none`).
    pub(crate) default: &'static str,
    /// What the key sets, with its unit and range.
    pub(crate) meaning: &'static str,
}

/// Every known key, in the order of DESIGN §4 (and of the table in the `RpcConf` docs).
pub(crate) const KEYS: &[KeyInfo] = &[
    KeyInfo {
        key: keys::ASK_TIMEOUT,
        default: "120s",
        meaning: "default deadline of ask / ask_sync (duration, > 0)",
    },
    KeyInfo {
        key: keys::LOOKUP_TIMEOUT,
        default: "120s",
        meaning: "deadline of setup_endpoint_ref* (duration, > 0)",
    },
    KeyInfo {
        key: keys::PORT_MAX_RETRIES,
        default: "16",
        meaning: "bind retries on a port collision (integer, 0 to 65535)",
    },
    KeyInfo {
        key: keys::MESSAGE_MAX_SIZE,
        default: "128m",
        meaning: "largest frame accepted or sent (size, 64 to 2147483647 bytes)",
    },
    KeyInfo {
        key: keys::IO_THREADS,
        default: "cores",
        meaning: "worker event loops, rpc-io-N threads (integer, 1 to 1024)",
    },
    KeyInfo {
        key: keys::IO_NUM_CONNECTIONS_PER_PEER,
        default: "1",
        meaning: "pooled clients per remote address (integer, 1 to 1024)",
    },
    KeyInfo {
        key: keys::IO_CONNECTION_TIMEOUT,
        default: "120s",
        meaning: "connect timeout, and idle limit of a connection with calls outstanding \
                  (duration; 0 disables)",
    },
    KeyInfo {
        key: keys::IO_BACKLOG,
        default: "OS default",
        meaning: "listen backlog (integer, 1 to 2147483647)",
    },
    KeyInfo {
        key: keys::IO_RECEIVE_BUFFER,
        default: "OS default",
        meaning: "socket receive buffer, SO_RCVBUF (size, 1 to 2147483647 bytes)",
    },
    KeyInfo {
        key: keys::IO_SEND_BUFFER,
        default: "OS default",
        meaning: "socket send buffer, SO_SNDBUF (size, 1 to 2147483647 bytes)",
    },
    KeyInfo {
        key: keys::IO_MAX_QUEUED_BYTES,
        default: "4m",
        meaning: "bytes of frames one connection queues to write, and again per endpoint \
                  of the peer whose window is used up (a message held there counts 256 \
                  bytes plus its body); senders wait beyond it (size, 1k to 2147483647 \
                  bytes)",
    },
    KeyInfo {
        key: keys::IO_SEND_TIMEOUT,
        default: "30s",
        meaning: "how long a send or ask waits for room in a full queue before \
                  QueueFull (duration; 0: never wait)",
    },
    KeyInfo {
        key: keys::IO_KEEP_ALIVE_IDLE,
        default: "5s",
        meaning: "TCP keep-alive: quiet time before the first probe, TCP_KEEPIDLE \
                  (whole seconds, 1s to 32767s; 0 turns keep-alive off)",
    },
    KeyInfo {
        key: keys::IO_KEEP_ALIVE_INTERVAL,
        default: "2s",
        meaning: "TCP keep-alive: time between probes, TCP_KEEPINTVL \
                  (whole seconds, 1s to 32767s)",
    },
    KeyInfo {
        key: keys::IO_KEEP_ALIVE_COUNT,
        default: "3",
        meaning: "TCP keep-alive: unanswered probes before the connection is dropped, \
                  TCP_KEEPCNT (integer, 1 to 127)",
    },
    KeyInfo {
        key: keys::IO_TCP_USER_TIMEOUT,
        default: "10s",
        meaning: "how long sent data may stay unacknowledged before the connection is \
                  dropped, TCP_USER_TIMEOUT (duration, 1ms to 4294967295ms; 0: the OS \
                  default)",
    },
    KeyInfo {
        key: keys::IO_FRAME_TIMEOUT,
        default: "30s",
        meaning: "an inbound connection that sends no whole frame this long after it \
                  connects, or any connection stalled this long in the middle of a frame, \
                  or whose frame has taken longer than this and came slower than 64 KiB/s, \
                  is closed (duration; 0 disables)",
    },
    KeyInfo {
        key: keys::IO_MAX_CONNECTIONS,
        default: "3/4 of the open-file limit",
        meaning: "inbound connections a server env holds at once; more are closed as \
                  they are accepted (integer, 1 to 1048576)",
    },
    KeyInfo {
        key: keys::DISPATCHER_NUM_THREADS,
        default: "max(2, cores)",
        meaning: "shared message-loop threads, rpc-dispatcher-N (integer, 1 to 1024)",
    },
    KeyInfo {
        key: keys::DISPATCHER_INBOX_CAPACITY,
        default: "4m",
        meaning: "bytes of messages an endpoint's inbox holds from one sender (a message \
                  counts 256 bytes plus its encoded size from a peer, its in-memory size \
                  from this env); the sender waits beyond it (size, 64k to 2147483647 \
                  bytes)",
    },
    KeyInfo {
        key: keys::METRICS_INTERVAL,
        default: "10s",
        meaning: "how often an env publishes its metrics to the metrics crate's recorder, \
                  with the cargo feature metrics; unused without it (duration, > 0)",
    },
    KeyInfo {
        key: keys::CONNECT_THREADS,
        default: "64",
        meaning: "ceiling of the rpc-connect-N connection pool (integer, 1 to 1024)",
    },
    KeyInfo {
        key: keys::AUTHENTICATE,
        default: "false",
        meaning: "require Spark's AuthEngine shared-secret handshake on every connection, \
                  both ways (boolean)",
    },
    KeyInfo {
        key: keys::AUTHENTICATE_SECRET,
        default: "none",
        meaning: "the shared secret (string; its UTF-8 bytes are the key material); give \
                  exactly one of this, .file and .env when rpc.authenticate is true",
    },
    KeyInfo {
        key: keys::AUTHENTICATE_SECRET_FILE,
        default: "none",
        meaning: "a file whose bytes, Base64-encoded, are the secret (as Spark's \
                  spark.authenticate.secret.file) (path)",
    },
    KeyInfo {
        key: keys::AUTHENTICATE_SECRET_ENV,
        default: "none",
        meaning: "the name of an environment variable that holds the secret (as Spark's \
                  _SPARK_AUTH_SECRET) (string)",
    },
    KeyInfo {
        key: keys::AUTHENTICATE_APP_ID,
        default: "sparkSaslUser",
        meaning: "the app id both sides name in the handshake (Spark's RpcEnv uses \
                  sparkSaslUser) (string)",
    },
    KeyInfo {
        key: keys::AUTH_TIMEOUT,
        default: "30s",
        meaning: "how long a handshake may take: a client waits this long for the answer, \
                  a server closes a connection not authenticated this long after accept \
                  (duration, > 0)",
    },
    KeyInfo {
        key: keys::IO_ENCRYPTION_ENABLED,
        default: "false",
        meaning: "encrypt every connection after the handshake (boolean; needs \
                  rpc.authenticate)",
    },
    KeyInfo {
        key: keys::IO_ENCRYPTION_CIPHER,
        default: "AES/GCM/NoPadding",
        meaning: "the channel cipher: AES/GCM/NoPadding (authenticated) or \
                  AES/CTR/NoPadding (Spark's default; no integrity)",
    },
    KeyInfo {
        key: keys::IO_ENCRYPTION_ENGINE_VERSION,
        default: "2",
        meaning: "how the channel key is derived: 2 (HKDF, AES-128) or 1 (the raw X25519 \
                  output, AES-256; Spark's default)",
    },
];

/// The most threads (or connections per peer) a key may ask for.
const MAX_THREADS: usize = 1024;
/// The largest value a signed 32-bit length or socket option can hold.
const I32_MAX: u64 = i32::MAX as u64;
/// The smallest `rpc.message.maxSize`: room for any frame header and a small body.
const MIN_MESSAGE_SIZE: u64 = 64;
/// The smallest `rpc.dispatcher.inboxCapacity`: the window every sender may use before the
/// receiving env has said how large its own is (see the flow control in `rpc`).
pub(crate) const MIN_INBOX_CAPACITY: u64 = 64 * 1024;
/// The most inbound connections `rpc.io.maxConnections` may allow.
const MAX_CONNECTIONS: u64 = 1 << 20;

/// String-keyed configuration of an `RpcEnv`, in the manner of Spark's `SparkConf`.
///
/// Keys and values are strings, and setting one never fails. When the env is built (or
/// earlier, with [`validate`](Self::validate)) every key that starts with `rpc.` (in any
/// letter case) is checked: an unknown `rpc.` key (usually a typo; the error suggests the
/// closest known key) or a value that does not parse or is out of range is an
/// [`RpcError::Config`] naming the key and quoting the value. Keys that do not start with `rpc.` belong to the application:
/// they are kept and ignored. That includes Spark's own names: `spark.rpc.askTimeout` is
/// not read, write `rpc.askTimeout`.
///
/// ```
/// use rpcenv::RpcConf;
/// let conf = RpcConf::new().set("rpc.askTimeout", "5s").set("rpc.io.threads", "2");
/// assert_eq!(conf.get("rpc.askTimeout"), Some("5s"));
/// assert!(conf.validate().is_ok());
/// assert!(RpcConf::new().set("rpc.askTimeout", "soon").validate().is_err());
/// ```
///
/// # Value forms
///
/// - **duration**: a whole number and a unit, `us`, `ms`, `s`, `m` (or `min`), `h` or `d`,
///   e.g. `500ms`, `5s`, `2m`, `1h`; a bare number is seconds. No fractions: write
///   `1500ms`, not `1.5s`.
/// - **size**: a whole number of bytes, or with a binary unit, `k` (1024), `m` (1024²),
///   `g` (1024³), `t`, `p`, each also with a `b` (`kb`, `mb`, …), e.g. `64k`, `128m`, `1g`;
///   a bare number (or `b`) is bytes.
/// - **integer**: a whole decimal number.
/// - **boolean**: `true` or `false`.
///
/// Units and booleans are case-insensitive and whitespace around a value is ignored;
/// keys are case-sensitive. Negative numbers are always rejected.
///
/// # Keys
///
/// | key | default | unit and range | meaning |
/// |---|---|---|---|
/// | `rpc.askTimeout` | `120s` | duration, > 0 | default deadline of `ask` and `ask_sync` |
/// | `rpc.lookupTimeout` | `120s` | duration, > 0 | deadline of `setup_endpoint_ref*` (connect and verify) |
/// | `rpc.port.maxRetries` | `16` | integer, 0 to 65535 | on a bind collision, how many following ports (port + 1, port + 2, …) to try; port 0 never needs a retry |
/// | `rpc.message.maxSize` | `128m` | size, 64 to 2147483647 bytes (2g − 1) | largest frame accepted or sent; the wire's body length is a signed 32-bit int |
/// | `rpc.io.threads` | cores | integer, 1 to 1024 | worker event loops (`rpc-io-N` threads) |
/// | `rpc.io.numConnectionsPerPeer` | `1` | integer, 1 to 1024 | pooled connections per remote address |
/// | `rpc.io.connectionTimeout` | `120s` | duration; `0` disables | connect timeout, and idle limit of a connection with calls outstanding |
/// | `rpc.io.backLog` | OS default | integer, 1 to 2147483647 | listen backlog |
/// | `rpc.io.receiveBuffer` | OS default | size, 1 to 2147483647 bytes | socket receive buffer (`SO_RCVBUF`) |
/// | `rpc.io.sendBuffer` | OS default | size, 1 to 2147483647 bytes | socket send buffer (`SO_SNDBUF`) |
/// | `rpc.io.maxQueuedBytes` | `4m` | size, 1k to 2147483647 bytes | per connection: bytes of frames queued to write, and the same again for each endpoint of the peer whose window is used up (a message held there counts 256 bytes plus its body); a send or ask waits for room beyond it. Also the bytes of a download (`open_channel`) held for its reader: beyond it the connection is not read until the reader catches up |
/// | `rpc.io.sendTimeout` | `30s` | duration; `0`: never wait | how long a send or ask waits for room in a full queue before it fails with `QueueFull` (an ask no longer than its own deadline) |
/// | `rpc.io.keepAliveIdle` | `5s` | whole seconds, 1s to 32767s; `0` turns keep-alive off | TCP keep-alive: quiet time before the first probe (`TCP_KEEPIDLE`) |
/// | `rpc.io.keepAliveInterval` | `2s` | whole seconds, 1s to 32767s | TCP keep-alive: time between probes (`TCP_KEEPINTVL`) |
/// | `rpc.io.keepAliveCount` | `3` | integer, 1 to 127 | TCP keep-alive: unanswered probes before the connection is dropped (`TCP_KEEPCNT`; Linux uses `rpc.io.tcpUserTimeout` instead when that is set) |
/// | `rpc.io.tcpUserTimeout` | `10s` | duration, 1ms to 4294967295ms; `0`: the OS default | how long sent data (or keep-alive probes) may stay unacknowledged before the connection is dropped (`TCP_USER_TIMEOUT`, Linux; ignored elsewhere). Linux also applies it to a peer whose receive window stays full: a peer that reads nothing this long while data waits for it is dropped as gone |
/// | `rpc.io.frameTimeout` | `30s` | duration; `0` disables | an inbound connection that sends no whole frame this long after it connects, or any connection stalled this long in the middle of a frame, or whose frame has taken longer than this and came slower than 64 KiB/s (not the body of a stream it asked for: a download only must not stall), is closed |
/// | `rpc.io.maxConnections` | 3/4 of the open-file limit | integer, 1 to 1048576 | inbound connections a server env holds at once; more are closed as they are accepted |
/// | `rpc.dispatcher.numThreads` | max(2, cores) | integer, 1 to 1024 | shared message-loop threads (`rpc-dispatcher-N`) |
/// | `rpc.dispatcher.inboxCapacity` | `4m` | size, 64k to 2147483647 bytes | bytes of messages an endpoint's inbox holds from one sender (one connection, or this env's own threads together); beyond it the sender waits. A message counts 256 bytes plus its encoded size when it comes from a peer, its in-memory size (`size_of`, not what it owns on the heap) when it comes from this env |
/// | `rpc.metrics.interval` | `10s` | duration, > 0 | with the cargo feature `metrics`: how often the env's `rpc-metrics` thread publishes [`RpcEnv::metrics`](crate::RpcEnv::metrics) to the `metrics` crate's recorder; unused without it |
/// | `rpc.connect.threads` | `64` | integer, 1 to 1024 | ceiling of the cached `rpc-connect-N` pool that makes connections |
/// | `rpc.authenticate` | `false` | boolean | require Spark's `AuthEngine` shared-secret handshake on every connection, both ways (see [`AuthBootstrap`]); needs a secret |
/// | `rpc.authenticate.secret` | none | string | the shared secret; its UTF-8 bytes are the key material (as Spark's `spark.authenticate.secret`). Give exactly one of this, `.file` and `.env` when `rpc.authenticate` is `true` |
/// | `rpc.authenticate.secret.file` | none | path | a file whose bytes, Base64-encoded, are the secret (as Spark's `spark.authenticate.secret.file`, so one file configures both); read at `build()`, at most 1 MiB |
/// | `rpc.authenticate.secret.env` | none | string | the name of an environment variable that holds the secret, used as it is (Spark's executors get theirs in `_SPARK_AUTH_SECRET`); read at `build()` |
/// | `rpc.authenticate.appId` | `sparkSaslUser` | string, not empty | the app id both sides name in the handshake; Spark's RpcEnv uses `sparkSaslUser` |
/// | `rpc.authenticate.timeout` | `30s` | duration, > 0 | how long a handshake may take: a client waits this long for the server's answer, and a server closes a connection that has not authenticated this long after it was accepted (with encryption: whose first frame after the handshake has not come by then) (Spark's `spark.network.auth.rpcTimeout`) |
/// | `rpc.io.encryption.enabled` | `false` | boolean; needs `rpc.authenticate` | encrypt every connection after the handshake (Spark's `spark.network.crypto.enabled`) |
/// | `rpc.io.encryption.cipher` | `AES/GCM/NoPadding` | `AES/GCM/NoPadding` or `AES/CTR/NoPadding` | the channel cipher: AES-GCM envelopes (authenticated) or an AES-CTR stream (Spark's default; no integrity). Not negotiated: both sides must agree |
/// | `rpc.io.encryption.authEngineVersion` | `2` | `1` or `2` | how the channel key is derived: 2 (HKDF, AES-128) or 1 (the raw X25519 output, AES-256; Spark's default). Not negotiated: both sides must agree |
///
/// "cores" is [`std::thread::available_parallelism`] (1 if unknown), at most 1024. "The
/// open-file limit" is the process's soft `RLIMIT_NOFILE` when the env is built (read from
/// `/proc/self/limits`; 4096 connections when it cannot be read).
///
/// # Dangers
///
/// - **`rpc.message.maxSize` is in bytes when bare**: `128` means 128 bytes, not 128 MiB as
///   in Spark's `spark.rpc.message.maxSize`; write `128m`. Both ends should agree: a frame
///   above the receiver's limit closes the connection, failing every call on it. A
///   connection may hold up to this much memory for one incoming frame, so a large limit
///   lets each peer make the process buffer that much.
/// - **Long timeouts**: a call to a peer that is alive but does not answer waits up to
///   `rpc.askTimeout` (or `rpc.lookupTimeout`). A connection that closes fails its calls at
///   once whatever the timeout.
/// - **`rpc.io.connectionTimeout` = `0`** disables the limit: a connect to an unreachable
///   host then waits for the operating system's own TCP timeout (often minutes), and a
///   peer that reads nothing while frames wait for it is never closed for it (TCP
///   keep-alive and `rpc.io.tcpUserTimeout` still close a peer that vanished).
/// - **Keep-alive and the user timeout** are what notice a host that vanished: turning
///   them off (`0`) makes such a peer show only at the asks' deadlines, minutes to hours
///   later. Set too tight on a slow or lossy network, they close healthy connections:
///   keep `rpc.io.tcpUserTimeout` well above the link's worst retransmission delay, and
///   above the longest a live peer may go without reading (Linux drops a peer whose full
///   receive window lasts that long: a Spark peer in a long GC pause, a transport
///   connection paused with `set_auto_read(false)`).
/// - **Flow control bounds memory per sender**: an inbox holds up to
///   `rpc.dispatcher.inboxCapacity` from each connection (and as much again from this
///   env's threads), so N busy peers may make an endpoint hold N times that. A large
///   `rpc.io.maxQueuedBytes` or `rpc.dispatcher.inboxCapacity` buys throughput on long,
///   fast links at the cost of memory; a small one makes senders wait sooner.
/// - **`rpc.io.sendTimeout` = `0`** makes every `send` and `ask` behave like `try_send`:
///   no waiting for room, `QueueFull` at once.
/// - **Thread counts are OS threads**, each with its own stack. An endpoint that blocks
///   in its handler holds a `rpc-dispatcher-N` thread; when all of them are blocked, every
///   endpoint on the shared pool stalls.
/// - **Socket buffers**: setting `rpc.io.receiveBuffer` or `rpc.io.sendBuffer` turns off the
///   OS's automatic sizing (Linux TCP autotuning) for that socket, and the OS may round or
///   clamp the value. Leave them unset unless a measurement says otherwise. The OS also
///   clamps `rpc.io.backLog` (Linux: `net.core.somaxconn`).
/// - **Security**: without `rpc.authenticate = true` traffic is plain, unauthenticated
///   TCP: bind to a trusted network only. With it, give both sides the same secret, and
///   turn on `rpc.io.encryption.enabled` for privacy and integrity (without it, frames
///   after the handshake can be read and changed on the path); AES-CTR (Spark's default cipher)
///   has no integrity check, AES-GCM (the default here) has. The cipher and engine
///   version are not negotiated: both sides (Spark included) must set the same. A
///   secret file is read at `build()`, as Spark takes it (the Base64 of its bytes). The
///   secret is never logged, and `Debug` prints the value of any key
///   whose name contains `secret` as `<redacted>`; [`get`](Self::get) and
///   [`iter`](Self::iter) do return it.
#[derive(Clone, Default)]
pub struct RpcConf {
    entries: BTreeMap<String, String>,
}

impl RpcConf {
    /// An empty configuration: every key has its default.
    ///
    /// ```
    /// use rpcenv::RpcConf;
    /// let conf = RpcConf::new();
    /// assert_eq!(conf.iter().count(), 0);
    /// assert!(conf.validate().is_ok());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the configuration with `key` set to `value` (replacing any earlier value),
    /// for chaining. Nothing is checked until [`validate`](Self::validate) or build time.
    ///
    /// ```
    /// use rpcenv::RpcConf;
    /// let conf = RpcConf::new().set("rpc.askTimeout", "5s").set("rpc.askTimeout", "10s");
    /// assert_eq!(conf.get("rpc.askTimeout"), Some("10s"));
    /// ```
    #[must_use = "set returns the changed configuration; use insert to change one in place"]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value` in place (replacing any earlier value).
    ///
    /// ```
    /// use rpcenv::RpcConf;
    /// let mut conf = RpcConf::new();
    /// conf.insert("rpc.io.threads", "4").insert("rpc.connect.threads", "8");
    /// assert_eq!(conf.get("rpc.io.threads"), Some("4"));
    /// ```
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.entries.insert(key.into(), value.into());
        self
    }

    /// The value set for `key`, if any (defaults are not filled in).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Removes `key`, returning its value if it was set; the key goes back to its default.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }

    /// Every key that was set and its value, sorted by key. This includes the value of
    /// `rpc.authenticate.secret`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// Checks every key and value now, as building an env will: `Ok(())`, or the first
    /// error in key order, an [`RpcError::Config`] that names the key.
    ///
    /// ```
    /// use rpcenv::{RpcConf, RpcError};
    /// let err = RpcConf::new().set("rpc.askTimout", "5s").validate().unwrap_err();
    /// assert!(matches!(&err, RpcError::Config { key, .. } if key == "rpc.askTimout"));
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid configuration rpc.askTimout: unknown key; did you mean rpc.askTimeout?"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), RpcError> {
        self.settings().map(drop)
    }

    /// Parses and checks every `rpc.*` entry into the typed view used by the env.
    pub(crate) fn settings(&self) -> Result<Settings, RpcError> {
        let mut settings = Settings::default();
        let mut security = SecurityKeys::default();
        for (key, value) in &self.entries {
            if !is_rpc_key(key) {
                continue;
            }
            let value = value.as_str();
            match key.as_str() {
                keys::ASK_TIMEOUT => settings.ask_timeout = positive_duration(key, value)?,
                keys::LOOKUP_TIMEOUT => settings.lookup_timeout = positive_duration(key, value)?,
                keys::PORT_MAX_RETRIES => {
                    settings.port_max_retries = integer(key, value, 0, u64::from(u16::MAX))?;
                }
                keys::MESSAGE_MAX_SIZE => {
                    settings.max_message_size = size(key, value, MIN_MESSAGE_SIZE, I32_MAX)?;
                }
                keys::IO_THREADS => settings.io_threads = thread_count(key, value)?,
                keys::IO_NUM_CONNECTIONS_PER_PEER => {
                    settings.num_connections_per_peer = thread_count(key, value)?;
                }
                keys::IO_CONNECTION_TIMEOUT => {
                    let timeout = duration(key, value)?;
                    settings.connection_timeout = (!timeout.is_zero()).then_some(timeout);
                }
                keys::IO_BACKLOG => settings.backlog = Some(integer(key, value, 1, I32_MAX)?),
                keys::IO_RECEIVE_BUFFER => {
                    settings.receive_buffer = Some(size(key, value, 1, I32_MAX)?);
                }
                keys::IO_SEND_BUFFER => settings.send_buffer = Some(size(key, value, 1, I32_MAX)?),
                keys::IO_MAX_QUEUED_BYTES => {
                    settings.max_queued_bytes = size(key, value, 1024, I32_MAX)?;
                }
                keys::IO_SEND_TIMEOUT => settings.send_timeout = duration(key, value)?,
                keys::IO_KEEP_ALIVE_IDLE => {
                    let idle = whole_seconds(key, value, true)?;
                    settings.keep_alive_idle = (!idle.is_zero()).then_some(idle);
                }
                keys::IO_KEEP_ALIVE_INTERVAL => {
                    settings.keep_alive_interval = whole_seconds(key, value, false)?;
                }
                keys::IO_KEEP_ALIVE_COUNT => {
                    settings.keep_alive_count = integer(key, value, 1, 127)?
                }
                keys::IO_TCP_USER_TIMEOUT => {
                    let timeout = duration(key, value)?;
                    if timeout.as_millis() > u128::from(u32::MAX)
                        || timeout.subsec_nanos() % 1_000_000 != 0
                    {
                        return Err(RpcError::config(
                            key,
                            format!(
                                "{value:?} is out of range (expected whole milliseconds, \
                                     at most 4294967295ms)"
                            ),
                        ));
                    }
                    settings.tcp_user_timeout = (!timeout.is_zero()).then_some(timeout);
                }
                keys::IO_FRAME_TIMEOUT => {
                    let timeout = duration(key, value)?;
                    settings.frame_timeout = (!timeout.is_zero()).then_some(timeout);
                }
                keys::IO_MAX_CONNECTIONS => {
                    settings.max_connections = integer(key, value, 1, MAX_CONNECTIONS)?;
                }
                keys::DISPATCHER_NUM_THREADS => {
                    settings.dispatcher_threads = thread_count(key, value)?;
                }
                keys::DISPATCHER_INBOX_CAPACITY => {
                    settings.inbox_capacity = size(key, value, MIN_INBOX_CAPACITY, I32_MAX)?;
                }
                keys::CONNECT_THREADS => settings.connect_threads = thread_count(key, value)?,
                keys::METRICS_INTERVAL => {
                    settings.metrics_interval = positive_duration(key, value)?;
                }
                keys::AUTHENTICATE => security.authenticate = boolean(key, value)?,
                keys::AUTHENTICATE_SECRET
                | keys::AUTHENTICATE_SECRET_FILE
                | keys::AUTHENTICATE_SECRET_ENV => {
                    security.secrets.push((keys_name(key), value));
                }
                keys::AUTHENTICATE_APP_ID => {
                    if value.is_empty() {
                        return Err(RpcError::config(key, "the app id is empty"));
                    }
                    security.app_id = value.to_owned();
                }
                keys::AUTH_TIMEOUT => security.timeout = positive_duration(key, value)?,
                keys::IO_ENCRYPTION_ENABLED => security.encrypt = boolean(key, value)?,
                keys::IO_ENCRYPTION_CIPHER => {
                    security.cipher = Cipher::parse(value.trim()).ok_or_else(|| {
                        RpcError::config(
                            key,
                            format!(
                                "{value:?} is not a cipher (expected AES/GCM/NoPadding or \
                                 AES/CTR/NoPadding)"
                            ),
                        )
                    })?;
                }
                keys::IO_ENCRYPTION_ENGINE_VERSION => {
                    security.version = EngineVersion::parse(value.trim()).ok_or_else(|| {
                        RpcError::config(
                            key,
                            format!("{value:?} is not an engine version (expected 1 or 2)"),
                        )
                    })?;
                }
                _ => return Err(unknown_key(key)),
            }
        }
        settings.auth = security.bootstrap()?;
        Ok(settings)
    }
}

impl fmt::Debug for RpcConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// The entries as a map, with secret values replaced.
        struct Entries<'a>(&'a BTreeMap<String, String>);

        impl fmt::Debug for Entries<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut map = f.debug_map();
                for (key, value) in self.0 {
                    if is_secret_key(key) {
                        map.entry(key, &format_args!("<redacted>"));
                    } else {
                        map.entry(key, value);
                    }
                }
                map.finish()
            }
        }

        f.debug_struct("RpcConf")
            .field("entries", &Entries(&self.entries))
            .finish()
    }
}

/// The typed, validated view of a [`RpcConf`], produced at build time.
///
/// Durations can be as long as `u64::MAX` seconds: turn one into a deadline with
/// `Instant::checked_add` (no deadline on overflow), never with `+`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `rpc.askTimeout`: default deadline of `ask` / `ask_sync`; > 0.
    pub(crate) ask_timeout: Duration,
    /// `rpc.lookupTimeout`: deadline of `setup_endpoint_ref*`; > 0.
    pub(crate) lookup_timeout: Duration,
    /// `rpc.port.maxRetries`: how many ports after the first to try on a collision.
    pub(crate) port_max_retries: u32,
    /// `rpc.message.maxSize` in bytes, 64 ..= `i32::MAX`.
    pub(crate) max_message_size: u64,
    /// `rpc.io.threads`: worker event loops, 1 ..= 1024.
    pub(crate) io_threads: usize,
    /// `rpc.io.numConnectionsPerPeer`: pooled clients per remote address, 1 ..= 1024.
    pub(crate) num_connections_per_peer: usize,
    /// `rpc.io.connectionTimeout`; `None` when set to zero (disabled).
    pub(crate) connection_timeout: Option<Duration>,
    /// `rpc.io.backLog`; `None` = the OS default. At most `i32::MAX`.
    pub(crate) backlog: Option<u32>,
    /// `rpc.io.receiveBuffer` in bytes; `None` = the OS default. At most `i32::MAX`.
    pub(crate) receive_buffer: Option<usize>,
    /// `rpc.io.sendBuffer` in bytes; `None` = the OS default. At most `i32::MAX`.
    pub(crate) send_buffer: Option<usize>,
    /// `rpc.io.maxQueuedBytes`: 1024 ..= `i32::MAX`.
    pub(crate) max_queued_bytes: usize,
    /// `rpc.io.sendTimeout`; zero: never wait.
    pub(crate) send_timeout: Duration,
    /// `rpc.io.keepAliveIdle` in whole seconds; `None`: keep-alive off.
    pub(crate) keep_alive_idle: Option<Duration>,
    /// `rpc.io.keepAliveInterval` in whole seconds, >= 1.
    pub(crate) keep_alive_interval: Duration,
    /// `rpc.io.keepAliveCount`: 1 ..= 127.
    pub(crate) keep_alive_count: u32,
    /// `rpc.io.tcpUserTimeout` in whole milliseconds; `None`: the OS default.
    pub(crate) tcp_user_timeout: Option<Duration>,
    /// `rpc.io.frameTimeout`; `None` when set to zero (disabled).
    pub(crate) frame_timeout: Option<Duration>,
    /// `rpc.io.maxConnections`: 1 ..= 1048576.
    pub(crate) max_connections: usize,
    /// `rpc.dispatcher.numThreads`: shared message-loop threads, 1 ..= 1024.
    pub(crate) dispatcher_threads: usize,
    /// `rpc.dispatcher.inboxCapacity` in bytes, 64 KiB ..= `i32::MAX`.
    pub(crate) inbox_capacity: usize,
    /// `rpc.connect.threads`: ceiling of the connect pool, 1 ..= 1024.
    pub(crate) connect_threads: usize,
    /// `rpc.metrics.interval`: how often the `metrics` feature publishes; > 0.
    pub(crate) metrics_interval: Duration,
    /// The handshake every connection runs (`rpc.authenticate` and the keys with it);
    /// `None` when authentication is off.
    pub(crate) auth: Option<AuthBootstrap>,
}

/// The security keys as they are read, checked together once all are known.
struct SecurityKeys<'a> {
    authenticate: bool,
    /// Each secret key given, with its value.
    secrets: Vec<(&'static str, &'a str)>,
    app_id: String,
    timeout: Duration,
    encrypt: bool,
    cipher: Cipher,
    version: EngineVersion,
}

impl Default for SecurityKeys<'_> {
    fn default() -> Self {
        Self {
            authenticate: false,
            secrets: Vec::new(),
            app_id: SPARK_RPC_APP_ID.to_owned(),
            timeout: DEFAULT_AUTH_TIMEOUT,
            encrypt: false,
            cipher: Cipher::AesGcm,
            version: EngineVersion::V2,
        }
    }
}

impl SecurityKeys<'_> {
    /// The bootstrap the keys ask for, or why they do not fit together.
    fn bootstrap(self) -> Result<Option<AuthBootstrap>, RpcError> {
        if !self.authenticate {
            if self.encrypt {
                return Err(RpcError::config(
                    keys::IO_ENCRYPTION_ENABLED,
                    "encryption needs authentication: set rpc.authenticate=true and a secret \
                     (the channel key comes from the handshake)",
                ));
            }
            return Ok(None);
        }
        let (key, value) = match self.secrets.as_slice() {
            [one] => *one,
            [] => {
                return Err(RpcError::config(
                    keys::AUTHENTICATE_SECRET,
                    "rpc.authenticate is true but no secret is given: set \
                     rpc.authenticate.secret, rpc.authenticate.secret.file or \
                     rpc.authenticate.secret.env",
                ));
            }
            [(first, _), (second, _), ..] => {
                return Err(RpcError::config(
                    *second,
                    format!("give the secret once: {first} is set too"),
                ));
            }
        };
        let secret = Zeroizing::new(match key {
            keys::AUTHENTICATE_SECRET => value.to_owned(),
            keys::AUTHENTICATE_SECRET_FILE => {
                let bytes = read_secret_file(value).map_err(|reason| {
                    RpcError::config(
                        key,
                        format!("cannot read the secret file {value:?}: {reason}"),
                    )
                })?;
                base64::engine::general_purpose::STANDARD.encode(&*bytes)
            }
            _ => std::env::var(value).map_err(|err| {
                // `VarError`'s own text would show a value that is not UTF-8.
                let why = match err {
                    std::env::VarError::NotPresent => "it is not set",
                    std::env::VarError::NotUnicode(_) => "its value is not UTF-8",
                };
                RpcError::config(
                    key,
                    format!(
                        "cannot take the secret from the environment variable {value:?}: {why}"
                    ),
                )
            })?,
        });
        if secret.is_empty() {
            return Err(RpcError::config(key, "the secret is empty"));
        }
        let bootstrap = AuthBootstrap::new(&self.app_id, &secret)
            .with_encryption(self.encrypt.then_some(self.cipher))
            .with_engine_version(self.version)
            .with_timeout(self.timeout);
        Ok(Some(bootstrap))
    }
}

/// The most bytes a secret file may hold: far more than any secret, and a bound on what
/// a wrong path (`/dev/zero`, a log file) makes `build()` read.
const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// The bytes of a secret file (wiped when dropped), or why not.
fn read_secret_file(path: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|err| err.to_string())?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| err.to_string())?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "it holds more than {MAX_SECRET_FILE} bytes, more than any secret"
        ));
    }
    Ok(bytes)
}

/// `key` as the constant of its name (the keys are matched against the constants).
fn keys_name(key: &str) -> &'static str {
    [
        keys::AUTHENTICATE_SECRET,
        keys::AUTHENTICATE_SECRET_FILE,
        keys::AUTHENTICATE_SECRET_ENV,
    ]
    .into_iter()
    .find(|name| *name == key)
    .unwrap_or(keys::AUTHENTICATE_SECRET)
}

impl Default for Settings {
    fn default() -> Self {
        let cores = available_cores();
        Self {
            ask_timeout: Duration::from_secs(120),
            lookup_timeout: Duration::from_secs(120),
            port_max_retries: 16,
            max_message_size: 128 * 1024 * 1024,
            io_threads: cores,
            num_connections_per_peer: 1,
            connection_timeout: Some(Duration::from_secs(120)),
            backlog: None,
            receive_buffer: None,
            send_buffer: None,
            max_queued_bytes: 4 << 20,
            send_timeout: Duration::from_secs(30),
            keep_alive_idle: Some(Duration::from_secs(5)),
            keep_alive_interval: Duration::from_secs(2),
            keep_alive_count: 3,
            tcp_user_timeout: Some(Duration::from_secs(10)),
            frame_timeout: Some(Duration::from_secs(30)),
            max_connections: default_max_connections(),
            dispatcher_threads: cores.max(2),
            inbox_capacity: 4 << 20,
            connect_threads: 64,
            metrics_interval: Duration::from_secs(10),
            auth: None,
        }
    }
}

/// The number of cores, 1 if unknown, at most [`MAX_THREADS`] so that the defaults pass
/// their own range checks.
fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_THREADS)
}

/// The default of `rpc.io.maxConnections`: three quarters of the soft open-file limit, so
/// that a flood of connections leaves descriptors for everything else; 4096 when the
/// limit cannot be read.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|soft| soft.parse::<u64>().ok());
    match soft {
        Some(limit) => (limit / 4 * 3).clamp(16, MAX_CONNECTIONS) as usize,
        None => 4096,
    }
}

/// Whether the configuration claims `key` (it starts with `rpc.`, in any case and after
/// any leading whitespace, so that `RPC.askTimeout` is reported rather than ignored).
fn is_rpc_key(key: &str) -> bool {
    key.trim_start()
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("rpc."))
}

/// Whether `Debug` must hide the value of `key`.
fn is_secret_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("secret")
}

/// The error for an unknown `rpc.*` key, suggesting the closest known one.
fn unknown_key(key: &str) -> RpcError {
    match closest_key(key) {
        Some(known) => RpcError::config(key, format!("unknown key; did you mean {known}?")),
        None => RpcError::config(
            key,
            "unknown key (the rpc.* keys are listed in the documentation of RpcConf)",
        ),
    }
}

/// The known key nearest to `key` (ignoring case), if it is within edit distance 3.
fn closest_key(key: &str) -> Option<&'static str> {
    const MAX_DISTANCE: usize = 3;
    let key = key.trim().to_ascii_lowercase();
    let len = key.chars().count();
    let mut best: Option<(usize, &'static str)> = None;
    for info in KEYS {
        let known = info.key.to_ascii_lowercase();
        // The distance is at least the difference in length: skip hopeless candidates.
        if known.chars().count().abs_diff(len) > MAX_DISTANCE {
            continue;
        }
        let distance = edit_distance(&key, &known);
        if distance <= MAX_DISTANCE && best.is_none_or(|(least, _)| distance < least) {
            best = Some((distance, info.key));
        }
    }
    best.map(|(_, known)| known)
}

/// Levenshtein distance between `a` and `b`, counted in chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// What is wrong with a value that should start with a whole number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberProblem {
    Empty,
    NotANumber,
    Negative,
    Fraction,
    TooLarge,
}

/// Splits `text` (trimmed, lower-cased) into its leading whole number and the rest (the unit).
fn split_number(text: &str) -> Result<(u64, String), NumberProblem> {
    let text = text.trim().to_ascii_lowercase();
    if text.is_empty() {
        return Err(NumberProblem::Empty);
    }
    let starts_with_digit = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(end);
    if digits.is_empty() {
        return Err(match text.strip_prefix('-') {
            Some(rest) if starts_with_digit(rest) => NumberProblem::Negative,
            _ => NumberProblem::NotANumber,
        });
    }
    if unit.strip_prefix('.').is_some_and(starts_with_digit) {
        return Err(NumberProblem::Fraction);
    }
    // Only ASCII digits are left, so the parse can fail only by overflowing.
    let number = digits.parse().map_err(|_| NumberProblem::TooLarge)?;
    Ok((number, unit.to_owned()))
}

/// The expected form of a duration, as quoted in errors.
const DURATION_FORM: &str = "expected e.g. 500ms, 5s, 2m, 1h; a bare number is seconds";
/// The expected form of a size, as quoted in errors.
const SIZE_FORM: &str = "expected a number of bytes, or e.g. 64k, 128m, 1g (k = 1024)";

/// The message for a value that is not a `what` (`"duration"`, `"size"`).
fn not_a(text: &str, what: &str, problem: NumberProblem, form: &str) -> String {
    let detail = match problem {
        NumberProblem::NotANumber => "",
        NumberProblem::Empty => ": the value is empty",
        NumberProblem::Negative => ": it is negative",
        NumberProblem::Fraction => ": fractions are not supported, use a smaller unit",
        NumberProblem::TooLarge => ": the number is too large",
    };
    format!("{text:?} is not a {what}{detail} ({form})")
}

/// Parses a duration: a whole number and a unit (`us`, `ms`, `s`, `m`/`min`, `h`, `d`,
/// any case), or a bare number of seconds; whitespace around it is ignored. The error
/// quotes `text` and says what form was expected.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        split_number(text).map_err(|problem| not_a(text, "duration", problem, DURATION_FORM))?;
    let seconds_per_unit: u64 = match unit.as_str() {
        "us" => return Ok(Duration::from_micros(number)),
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => {
            return Err(format!(
                "{text:?} is not a duration: unknown unit {unit:?} ({DURATION_FORM}; \
                 units: us, ms, s, m, min, h, d)"
            ));
        }
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| not_a(text, "duration", NumberProblem::TooLarge, DURATION_FORM))
}

/// Parses a size in bytes: a whole number, or one with a binary unit (`b`, `k`/`kb`,
/// `m`/`mb`, `g`/`gb`, `t`/`tb`, `p`/`pb`, any case; `k` = 1024); whitespace around it is
/// ignored. The error quotes `text` and says what form was expected.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) =
        split_number(text).map_err(|problem| not_a(text, "size", problem, SIZE_FORM))?;
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        "t" | "tb" => 40,
        "p" | "pb" => 50,
        _ => {
            return Err(format!(
                "{text:?} is not a size: unknown unit {unit:?} ({SIZE_FORM}; \
                 units: b, k, kb, m, mb, g, gb, t, tb, p, pb)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| not_a(text, "size", NumberProblem::TooLarge, SIZE_FORM))
}

/// A duration value of `key`.
fn duration(key: &str, value: &str) -> Result<Duration, RpcError> {
    parse_duration(value).map_err(|reason| RpcError::config(key, reason))
}

/// A duration value of `key` that must not be zero.
fn positive_duration(key: &str, value: &str) -> Result<Duration, RpcError> {
    let parsed = duration(key, value)?;
    if parsed.is_zero() {
        return Err(RpcError::config(
            key,
            format!("{value:?} is out of range (expected a duration greater than zero)"),
        ));
    }
    Ok(parsed)
}

/// An integer value of `key` in `min ..= max`.
fn integer<T: TryFrom<u64>>(key: &str, value: &str, min: u64, max: u64) -> Result<T, RpcError> {
    let form = format!("expected a whole number from {min} to {max}");
    let out_of_range = || RpcError::config(key, format!("{value:?} is out of range ({form})"));
    let number = match split_number(value) {
        Ok((number, unit)) if unit.is_empty() => number,
        Err(NumberProblem::Negative | NumberProblem::TooLarge) => return Err(out_of_range()),
        _ => {
            return Err(RpcError::config(
                key,
                format!("{value:?} is not an integer ({form})"),
            ));
        }
    };
    if !(min..=max).contains(&number) {
        return Err(out_of_range());
    }
    T::try_from(number).map_err(|_| out_of_range())
}

/// A thread (or connection) count of `key`, in `1 ..= MAX_THREADS`.
fn thread_count(key: &str, value: &str) -> Result<usize, RpcError> {
    integer(key, value, 1, MAX_THREADS as u64)
}

/// A size value of `key` in `min ..= max` bytes.
fn size<T: TryFrom<u64>>(key: &str, value: &str, min: u64, max: u64) -> Result<T, RpcError> {
    let bytes = parse_size(value).map_err(|reason| RpcError::config(key, reason))?;
    let out_of_range = || {
        RpcError::config(
            key,
            format!("{value:?} is out of range (expected a size from {min} to {max} bytes)"),
        )
    };
    if !(min..=max).contains(&bytes) {
        return Err(out_of_range());
    }
    T::try_from(bytes).map_err(|_| out_of_range())
}

/// A duration of `key` in whole seconds from 1s to 32767s (the range of the TCP
/// keep-alive options), or zero when `zero_ok`.
fn whole_seconds(key: &str, value: &str, zero_ok: bool) -> Result<Duration, RpcError> {
    let parsed = duration(key, value)?;
    if parsed.is_zero() && zero_ok {
        return Ok(parsed);
    }
    if parsed.subsec_nanos() != 0 || !(1..=32_767).contains(&parsed.as_secs()) {
        return Err(RpcError::config(
            key,
            format!(
                "{value:?} is out of range (expected whole seconds from 1s to 32767s{}: \
                 TCP keep-alive counts seconds)",
                if zero_ok { ", or 0 to turn it off" } else { "" }
            ),
        ));
    }
    Ok(parsed)
}

/// A boolean value of `key`: `true` or `false`, any case.
fn boolean(key: &str, value: &str) -> Result<bool, RpcError> {
    let trimmed = value.trim();
    if trimmed.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if trimmed.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(RpcError::config(
            key,
            format!("{value:?} is not a boolean (expected true or false)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-do-not-print";

    /// The settings of a configuration with one entry.
    fn with(key: &str, value: &str) -> Result<Settings, RpcError> {
        RpcConf::new().set(key, value).settings()
    }

    /// The `(key, reason)` of a configuration error; panics on anything else.
    fn config_error(result: Result<Settings, RpcError>) -> (String, String) {
        match result {
            Err(RpcError::Config { key, reason }) => (key, reason),
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_of_every_key() {
        let cores = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(1024);
        let settings = RpcConf::new().settings().unwrap();
        assert_eq!(settings.ask_timeout, Duration::from_secs(120));
        assert_eq!(settings.lookup_timeout, Duration::from_secs(120));
        assert_eq!(settings.port_max_retries, 16);
        assert_eq!(settings.max_message_size, 134_217_728);
        assert_eq!(settings.io_threads, cores);
        assert_eq!(settings.num_connections_per_peer, 1);
        assert_eq!(settings.connection_timeout, Some(Duration::from_secs(120)));
        assert_eq!(settings.backlog, None);
        assert_eq!(settings.receive_buffer, None);
        assert_eq!(settings.send_buffer, None);
        assert_eq!(settings.dispatcher_threads, cores.max(2));
        assert_eq!(settings.connect_threads, 64);
        assert_eq!(settings.max_queued_bytes, 4 << 20);
        assert_eq!(settings.send_timeout, Duration::from_secs(30));
        assert_eq!(settings.keep_alive_idle, Some(Duration::from_secs(5)));
        assert_eq!(settings.keep_alive_interval, Duration::from_secs(2));
        assert_eq!(settings.keep_alive_count, 3);
        assert_eq!(settings.tcp_user_timeout, Some(Duration::from_secs(10)));
        assert_eq!(settings.frame_timeout, Some(Duration::from_secs(30)));
        assert!(settings.max_connections >= 16);
        assert_eq!(settings.inbox_capacity, 4 << 20);
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn defaults_written_out_give_the_default_settings() {
        let conf = RpcConf::new()
            .set(keys::ASK_TIMEOUT, "120s")
            .set(keys::LOOKUP_TIMEOUT, "120s")
            .set(keys::PORT_MAX_RETRIES, "16")
            .set(keys::MESSAGE_MAX_SIZE, "128m")
            .set(keys::IO_NUM_CONNECTIONS_PER_PEER, "1")
            .set(keys::IO_CONNECTION_TIMEOUT, "120s")
            .set(keys::CONNECT_THREADS, "64")
            .set(keys::IO_MAX_QUEUED_BYTES, "4m")
            .set(keys::IO_SEND_TIMEOUT, "30s")
            .set(keys::IO_KEEP_ALIVE_IDLE, "5s")
            .set(keys::IO_KEEP_ALIVE_INTERVAL, "2s")
            .set(keys::IO_KEEP_ALIVE_COUNT, "3")
            .set(keys::IO_TCP_USER_TIMEOUT, "10s")
            .set(keys::IO_FRAME_TIMEOUT, "30s")
            .set(keys::DISPATCHER_INBOX_CAPACITY, "4m")
            .set(keys::AUTHENTICATE, "false")
            .set(keys::IO_ENCRYPTION_ENABLED, "false");
        assert_eq!(conf.settings().unwrap(), Settings::default());
    }

    #[test]
    fn every_key_is_parsed_into_its_field() {
        let settings = RpcConf::new()
            .set(keys::ASK_TIMEOUT, "5s")
            .set(keys::LOOKUP_TIMEOUT, "250ms")
            .set(keys::PORT_MAX_RETRIES, "3")
            .set(keys::MESSAGE_MAX_SIZE, "1m")
            .set(keys::IO_THREADS, "3")
            .set(keys::IO_NUM_CONNECTIONS_PER_PEER, "2")
            .set(keys::IO_CONNECTION_TIMEOUT, "30s")
            .set(keys::IO_BACKLOG, "128")
            .set(keys::IO_RECEIVE_BUFFER, "64k")
            .set(keys::IO_SEND_BUFFER, "32k")
            .set(keys::DISPATCHER_NUM_THREADS, "5")
            .set(keys::CONNECT_THREADS, "7")
            .set(keys::IO_MAX_QUEUED_BYTES, "64k")
            .set(keys::IO_SEND_TIMEOUT, "0")
            .set(keys::IO_KEEP_ALIVE_IDLE, "1s")
            .set(keys::IO_KEEP_ALIVE_INTERVAL, "1")
            .set(keys::IO_KEEP_ALIVE_COUNT, "2")
            .set(keys::IO_TCP_USER_TIMEOUT, "1500ms")
            .set(keys::IO_FRAME_TIMEOUT, "2s")
            .set(keys::IO_MAX_CONNECTIONS, "100")
            .set(keys::DISPATCHER_INBOX_CAPACITY, "1m")
            .set(keys::AUTHENTICATE, "False")
            .set(keys::AUTHENTICATE_SECRET, SECRET)
            .set(keys::IO_ENCRYPTION_ENABLED, " FALSE ")
            .settings()
            .unwrap();
        assert_eq!(
            settings,
            Settings {
                ask_timeout: Duration::from_secs(5),
                lookup_timeout: Duration::from_millis(250),
                port_max_retries: 3,
                max_message_size: 1 << 20,
                io_threads: 3,
                num_connections_per_peer: 2,
                connection_timeout: Some(Duration::from_secs(30)),
                backlog: Some(128),
                receive_buffer: Some(65_536),
                send_buffer: Some(32_768),
                max_queued_bytes: 65_536,
                send_timeout: Duration::ZERO,
                keep_alive_idle: Some(Duration::from_secs(1)),
                keep_alive_interval: Duration::from_secs(1),
                keep_alive_count: 2,
                tcp_user_timeout: Some(Duration::from_millis(1500)),
                frame_timeout: Some(Duration::from_secs(2)),
                max_connections: 100,
                dispatcher_threads: 5,
                inbox_capacity: 1 << 20,
                connect_threads: 7,
                metrics_interval: Duration::from_secs(10),
                auth: None,
            }
        );
    }

    #[test]
    fn duration_forms() {
        let cases: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("7", Duration::from_secs(7)),
            ("250us", Duration::from_micros(250)),
            ("3min", Duration::from_secs(180)),
            ("2d", Duration::from_secs(2 * 86_400)),
            ("0", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("007s", Duration::from_secs(7)),
            ("  5s\t", Duration::from_secs(5)),
            ("5S", Duration::from_secs(5)),
            ("500MS", Duration::from_millis(500)),
            ("3Min", Duration::from_secs(180)),
            ("1H", Duration::from_secs(3600)),
            ("18446744073709551615", Duration::from_secs(u64::MAX)),
            ("18446744073709551615ms", Duration::from_millis(u64::MAX)),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_the_expected_form() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("   ", "is empty"),
            ("abc", "is not a duration (expected"),
            ("soon", "is not a duration (expected"),
            ("s", "is not a duration (expected"),
            ("+5s", "is not a duration (expected"),
            ("-5s", "negative"),
            ("-1", "negative"),
            ("1.5s", "fractions"),
            ("0.5", "fractions"),
            ("5x", "unknown unit \"x\""),
            ("5sec", "unknown unit \"sec\""),
            ("5 s", "unknown unit \" s\""),
            ("5s5", "unknown unit \"s5\""),
            ("99999999999999999999", "too large"),
            ("18446744073709551615m", "too large"),
            ("18446744073709551615d", "too large"),
        ];
        for &(text, needle) in cases {
            let err = parse_duration(text).expect_err(text);
            assert!(
                err.contains(needle),
                "{text:?}: {err:?} should contain {needle:?}"
            );
            assert!(
                err.starts_with(&format!("{text:?} is not a duration")),
                "{err:?}"
            );
            assert!(
                err.contains("500ms, 5s, 2m, 1h; a bare number is seconds"),
                "{err:?}"
            );
        }
    }

    #[test]
    fn size_forms() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("100", 100),
            ("100b", 100),
            ("64k", 65_536),
            ("64kb", 65_536),
            ("128m", 134_217_728),
            ("128mb", 134_217_728),
            ("1g", 1 << 30),
            ("1gb", 1 << 30),
            ("2t", 2 << 40),
            ("2tb", 2 << 40),
            ("1p", 1 << 50),
            ("1pb", 1 << 50),
            ("128M", 134_217_728),
            ("1GB", 1 << 30),
            (" 64K ", 65_536),
            ("18446744073709551615", u64::MAX),
            ("16383p", 16_383 << 50),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_size(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_expected_form() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("big", "is not a size (expected"),
            ("k", "is not a size (expected"),
            ("-1k", "negative"),
            ("1.5g", "fractions"),
            ("5x", "unknown unit \"x\""),
            ("5kib", "unknown unit \"kib\""),
            ("99999999999999999999", "too large"),
            ("16384p", "too large"),
            ("18446744073709551615k", "too large"),
        ];
        for &(text, needle) in cases {
            let err = parse_size(text).expect_err(text);
            assert!(
                err.contains(needle),
                "{text:?}: {err:?} should contain {needle:?}"
            );
            assert!(
                err.starts_with(&format!("{text:?} is not a size")),
                "{err:?}"
            );
            assert!(err.contains("64k, 128m, 1g"), "{err:?}");
        }
    }

    #[test]
    fn a_bad_value_error_names_the_key_and_quotes_the_value() {
        let err = with(keys::ASK_TIMEOUT, "abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration rpc.askTimeout: \"abc\" is not a duration \
             (expected e.g. 500ms, 5s, 2m, 1h; a bare number is seconds)"
        );
        let err = with(keys::IO_THREADS, "many").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration rpc.io.threads: \"many\" is not an integer \
             (expected a whole number from 1 to 1024)"
        );
        let err = with(keys::MESSAGE_MAX_SIZE, "2g").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration rpc.message.maxSize: \"2g\" is out of range \
             (expected a size from 64 to 2147483647 bytes)"
        );
        let err = with(keys::AUTHENTICATE, "yes").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration rpc.authenticate: \"yes\" is not a boolean \
             (expected true or false)"
        );
    }

    #[test]
    fn unknown_rpc_key_is_named_and_the_closest_key_suggested() {
        let cases: &[(&str, &str)] = &[
            ("rpc.askTimout", "rpc.askTimeout"),
            ("rpc.asktimeout", "rpc.askTimeout"),
            ("rpc.io.backlog", "rpc.io.backLog"),
            ("rpc.io.thread", "rpc.io.threads"),
            (
                "rpc.io.numconnectionsperpeer",
                "rpc.io.numConnectionsPerPeer",
            ),
            ("rpc.authenticate.secrt", "rpc.authenticate.secret"),
            ("rpc.io.encryption.enable", "rpc.io.encryption.enabled"),
            ("RPC.askTimeout", "rpc.askTimeout"),
            (" rpc.askTimeout", "rpc.askTimeout"),
        ];
        for &(key, suggestion) in cases {
            let (named, reason) = config_error(with(key, "5s"));
            assert_eq!(named, key);
            assert_eq!(reason, format!("unknown key; did you mean {suggestion}?"));
        }
    }

    #[test]
    fn unknown_rpc_key_far_from_any_known_key_has_no_suggestion() {
        for key in ["rpc.frobnicate", "rpc.", "rpc.askTimeoutSeconds"] {
            let (named, reason) = config_error(with(key, "1"));
            assert_eq!(named, key);
            assert!(reason.starts_with("unknown key"), "{reason}");
            assert!(!reason.contains("did you mean"), "{reason}");
        }
    }

    #[test]
    fn unknown_key_error_never_quotes_the_value() {
        let (_, reason) = config_error(with("rpc.authenticate.secrt", SECRET));
        assert!(!reason.contains(SECRET));
    }

    #[test]
    fn keys_not_starting_with_rpc_are_ignored() {
        let conf = RpcConf::new()
            .set("spark.rpc.askTimeout", "not a duration")
            .set("myapp.threads", "-1")
            .set("rpcx.askTimeout", "?")
            .set("", "");
        assert_eq!(conf.settings().unwrap(), Settings::default());
        assert_eq!(conf.get("myapp.threads"), Some("-1"));
    }

    #[test]
    fn range_checks() {
        // (key, accepted values, rejected values)
        let cases: &[(&str, &[&str], &[&str])] = &[
            (keys::ASK_TIMEOUT, &["1us", "1"], &["0", "0s", "0ms"]),
            (keys::LOOKUP_TIMEOUT, &["1ms", "1d"], &["0", "0min"]),
            (
                keys::PORT_MAX_RETRIES,
                &["0", "65535"],
                &["65536", "-1", "1k", "4294967296"],
            ),
            (
                keys::MESSAGE_MAX_SIZE,
                &["64", "2147483647", "1g"],
                &["63", "0", "2g", "1t"],
            ),
            (
                keys::IO_THREADS,
                &["1", "1024"],
                &["0", "1025", "-2", "1.5"],
            ),
            (
                keys::IO_NUM_CONNECTIONS_PER_PEER,
                &["1", "1024"],
                &["0", "1025"],
            ),
            (
                keys::IO_CONNECTION_TIMEOUT,
                &["0", "1ms", "1h"],
                &["-1s", "x"],
            ),
            (keys::IO_BACKLOG, &["1", "2147483647"], &["0", "2147483648"]),
            (
                keys::IO_RECEIVE_BUFFER,
                &["1", "2147483647", "1m"],
                &["0", "2g"],
            ),
            (
                keys::IO_SEND_BUFFER,
                &["1", "2147483647", "4k"],
                &["0", "2g"],
            ),
            (keys::DISPATCHER_NUM_THREADS, &["1", "1024"], &["0", "1025"]),
            (keys::CONNECT_THREADS, &["1", "1024"], &["0", "1025"]),
            (
                keys::IO_MAX_QUEUED_BYTES,
                &["1k", "2147483647"],
                &["1023", "0", "2g"],
            ),
            (keys::IO_SEND_TIMEOUT, &["0", "1ms", "1h"], &["-1s", "soon"]),
            (
                keys::IO_KEEP_ALIVE_IDLE,
                &["0", "1s", "32767s"],
                &["500ms", "1500ms", "32768s", "x"],
            ),
            (
                keys::IO_KEEP_ALIVE_INTERVAL,
                &["1s", "32767"],
                &["0", "999ms", "32768s"],
            ),
            (keys::IO_KEEP_ALIVE_COUNT, &["1", "127"], &["0", "128"]),
            (
                keys::IO_TCP_USER_TIMEOUT,
                &["0", "1ms", "4294967295ms"],
                &["4294967296ms", "1500us"],
            ),
            (keys::IO_FRAME_TIMEOUT, &["0", "1ms", "1h"], &["x"]),
            (
                keys::IO_MAX_CONNECTIONS,
                &["1", "1048576"],
                &["0", "1048577"],
            ),
            (
                keys::DISPATCHER_INBOX_CAPACITY,
                &["64k", "2147483647"],
                &["65535", "0", "2g"],
            ),
            (
                keys::AUTHENTICATE,
                &["false", "FALSE", " false "],
                &["1", "no", ""],
            ),
            (
                keys::IO_ENCRYPTION_ENABLED,
                &["false", "False"],
                &["0", "yes"],
            ),
            (
                keys::IO_ENCRYPTION_CIPHER,
                &[
                    "AES/GCM/NoPadding",
                    "AES/CTR/NoPadding",
                    "aes/ctr/nopadding",
                ],
                &["AES/CBC/PKCS5Padding", "GCM", ""],
            ),
            (
                keys::IO_ENCRYPTION_ENGINE_VERSION,
                &["1", "2", " 2 "],
                &["0", "3", "v2"],
            ),
            (keys::AUTH_TIMEOUT, &["1ms", "30s"], &["0", "x"]),
            (keys::AUTHENTICATE_SECRET, &["", "anything"], &[]),
        ];
        for &(key, good, bad) in cases {
            for value in good {
                assert!(
                    with(key, value).is_ok(),
                    "{key}={value:?} should be accepted"
                );
            }
            for value in bad {
                let (named, reason) = config_error(with(key, value));
                assert_eq!(named, key);
                assert!(reason.contains(&format!("{value:?}")) || reason.contains("implemented"));
            }
        }
    }

    #[test]
    fn boundary_values_land_in_the_settings() {
        assert_eq!(
            with(keys::PORT_MAX_RETRIES, "65535")
                .unwrap()
                .port_max_retries,
            65_535
        );
        assert_eq!(
            with(keys::MESSAGE_MAX_SIZE, "2147483647")
                .unwrap()
                .max_message_size,
            I32_MAX
        );
        assert_eq!(
            with(keys::IO_BACKLOG, "2147483647").unwrap().backlog,
            Some(i32::MAX as u32)
        );
        assert_eq!(with(keys::IO_THREADS, "1024").unwrap().io_threads, 1024);
    }

    #[test]
    fn connection_timeout_zero_means_disabled() {
        for zero in ["0", "0s", "0ms", "0us", " 0 "] {
            assert_eq!(
                with(keys::IO_CONNECTION_TIMEOUT, zero)
                    .unwrap()
                    .connection_timeout,
                None
            );
        }
        assert_eq!(
            with(keys::IO_CONNECTION_TIMEOUT, "5s")
                .unwrap()
                .connection_timeout,
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn security_keys_make_the_bootstrap_of_the_handshake() {
        let settings = RpcConf::new()
            .set(keys::AUTHENTICATE, "true")
            .set(keys::AUTHENTICATE_SECRET, SECRET)
            .settings()
            .unwrap();
        let auth = settings.auth.expect("authentication is on");
        assert_eq!(auth.app_id(), SPARK_RPC_APP_ID);
        assert_eq!(auth.encryption(), None, "encryption is off by default");
        assert_eq!(auth.engine_version(), EngineVersion::V2);
        assert_eq!(auth.timeout(), DEFAULT_AUTH_TIMEOUT);
        assert!(!format!("{auth:?}").contains(SECRET));

        let auth = RpcConf::new()
            .set(keys::AUTHENTICATE, "true")
            .set(keys::AUTHENTICATE_SECRET, SECRET)
            .set(keys::AUTHENTICATE_APP_ID, "my-app")
            .set(keys::AUTH_TIMEOUT, "5s")
            .set(keys::IO_ENCRYPTION_ENABLED, "true")
            .set(keys::IO_ENCRYPTION_CIPHER, "AES/CTR/NoPadding")
            .set(keys::IO_ENCRYPTION_ENGINE_VERSION, "1")
            .settings()
            .unwrap()
            .auth
            .expect("authentication is on");
        assert_eq!(auth.app_id(), "my-app");
        assert_eq!(auth.encryption(), Some(Cipher::AesCtr));
        assert_eq!(auth.engine_version(), EngineVersion::V1);
        assert_eq!(auth.timeout(), Duration::from_secs(5));

        let gcm = RpcConf::new()
            .set(keys::AUTHENTICATE, "true")
            .set(keys::AUTHENTICATE_SECRET, SECRET)
            .set(keys::IO_ENCRYPTION_ENABLED, "true")
            .settings()
            .unwrap()
            .auth
            .expect("authentication is on");
        assert_eq!(gcm.encryption(), Some(Cipher::AesGcm), "GCM by default");
    }

    #[test]
    fn security_keys_that_do_not_fit_together_are_config_errors() {
        let (key, reason) = config_error(with(keys::AUTHENTICATE, "true"));
        assert_eq!(key, keys::AUTHENTICATE_SECRET);
        assert!(reason.contains("no secret"), "{reason}");

        let (key, reason) = config_error(with(keys::IO_ENCRYPTION_ENABLED, "true"));
        assert_eq!(key, keys::IO_ENCRYPTION_ENABLED);
        assert!(reason.contains("rpc.authenticate=true"), "{reason}");

        let (key, reason) = config_error(
            RpcConf::new()
                .set(keys::AUTHENTICATE, "true")
                .set(keys::AUTHENTICATE_SECRET, SECRET)
                .set(keys::AUTHENTICATE_SECRET_ENV, "PATH")
                .settings(),
        );
        assert!(key.starts_with(keys::AUTHENTICATE_SECRET), "{key}");
        assert!(reason.contains("once"), "{reason}");
        assert!(!reason.contains(SECRET));

        let (key, reason) = config_error(
            RpcConf::new()
                .set(keys::AUTHENTICATE, "true")
                .set(keys::AUTHENTICATE_SECRET, "")
                .settings(),
        );
        assert_eq!(key, keys::AUTHENTICATE_SECRET);
        assert!(reason.contains("empty"), "{reason}");

        let (key, _) = config_error(with(keys::AUTHENTICATE_APP_ID, ""));
        assert_eq!(key, keys::AUTHENTICATE_APP_ID);
        assert!(
            RpcConf::new()
                .set(keys::AUTHENTICATE, "true")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_secret_alone_is_accepted_and_ignored() {
        let conf = RpcConf::new().set(keys::AUTHENTICATE_SECRET, SECRET);
        assert_eq!(conf.settings().unwrap(), Settings::default());
        assert!(!format!("{:?}", conf.settings().unwrap()).contains(SECRET));
    }

    #[test]
    fn the_secret_never_appears_in_debug_output() {
        let conf = RpcConf::new()
            .set(keys::ASK_TIMEOUT, "5s")
            .set(keys::AUTHENTICATE_SECRET, SECRET)
            .set("myapp.Secret.token", SECRET);
        for text in [format!("{conf:?}"), format!("{conf:#?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
            assert!(text.contains("rpc.authenticate.secret"), "{text}");
            assert!(text.contains("\"rpc.askTimeout\": \"5s\""), "{text}");
        }
        assert_eq!(
            format!(
                "{:?}",
                RpcConf::new().set(keys::AUTHENTICATE_SECRET, SECRET)
            ),
            "RpcConf { entries: {\"rpc.authenticate.secret\": <redacted>} }"
        );
    }

    #[test]
    fn set_insert_get_remove_iter() {
        let mut conf = RpcConf::new().set("rpc.askTimeout", "5s").set("b", "2");
        conf.insert("a", "1").insert("rpc.askTimeout", "6s");
        assert_eq!(conf.get("rpc.askTimeout"), Some("6s"));
        assert_eq!(conf.get("missing"), None);
        let all: Vec<_> = conf.iter().collect();
        assert_eq!(all, [("a", "1"), ("b", "2"), ("rpc.askTimeout", "6s")]);
        assert_eq!(conf.remove("a"), Some("1".to_owned()));
        assert_eq!(conf.remove("a"), None);
        assert_eq!(conf.iter().count(), 2);
        let copy = conf.clone();
        assert_eq!(copy.get("b"), Some("2"));
    }

    #[test]
    fn validate_reports_the_first_error_in_key_order() {
        let conf = RpcConf::new()
            .set(keys::IO_THREADS, "0")
            .set(keys::ASK_TIMEOUT, "x");
        let err = conf.validate().unwrap_err();
        assert!(matches!(err, RpcError::Config { ref key, .. } if key == keys::ASK_TIMEOUT));
        assert!(RpcConf::new().set(keys::IO_THREADS, "2").validate().is_ok());
    }

    #[test]
    fn keys_are_unique_and_all_known() {
        for (i, info) in KEYS.iter().enumerate() {
            assert!(info.key.starts_with("rpc."), "{}", info.key);
            assert!(
                KEYS[..i].iter().all(|other| other.key != info.key),
                "{}",
                info.key
            );
            assert!(
                !info.default.is_empty() && !info.meaning.is_empty(),
                "{}",
                info.key
            );
            // Every key in the table is accepted by `settings` (with a harmless value).
            let value = match info.key {
                keys::AUTHENTICATE | keys::IO_ENCRYPTION_ENABLED => "false",
                keys::IO_ENCRYPTION_CIPHER => "AES/GCM/NoPadding",
                keys::AUTHENTICATE_APP_ID | keys::AUTHENTICATE_SECRET_ENV => "x",
                keys::MESSAGE_MAX_SIZE
                | keys::IO_MAX_QUEUED_BYTES
                | keys::DISPATCHER_INBOX_CAPACITY => "1m",
                _ => "1",
            };
            assert!(with(info.key, value).is_ok(), "{}", info.key);
        }
        assert_eq!(KEYS.len(), 31);
    }

    #[test]
    fn doc_table_matches_keys() {
        let source = include_str!("conf.rs");
        let rows: Vec<(String, String)> = source
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("/// | `rpc."))
            .map(|row| {
                let cells: Vec<&str> = row.split(" | ").collect();
                let key = format!("rpc.{}", cells[0].trim_end_matches('`'));
                (key, cells[1].trim_matches('`').to_owned())
            })
            .collect();
        let table: Vec<(String, String)> = KEYS
            .iter()
            .map(|info| (info.key.to_owned(), info.default.to_owned()))
            .collect();
        assert_eq!(rows, table);
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("rpc.asktimeout", "rpc.asktimout"), 1);
        assert_eq!(edit_distance("flaw", "lawn"), 2);
    }
}
