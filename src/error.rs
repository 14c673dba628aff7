//! [`RpcError`], the one error type of the crate.

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

use crate::conf::keys;
use crate::sync::Arc;

/// Everything that can go wrong in rpcenv.
///
/// Each variant carries the facts a caller needs (the key, the peer, the sizes); its
/// `Display` describes this level only, and a wrapped OS error is reachable through
/// [`Error::source`]. Faults of a peer (`Decode`, `FrameTooLarge`, `Auth`) are kept apart
/// from mistakes of the caller (`Config`).
///
/// ```
/// use rpcenv::RpcError;
/// let err = RpcError::FrameTooLarge { size: 3_000_000_000, max: 134_217_728 };
/// assert_eq!(
///     err.to_string(),
///     "frame of 3000000000 bytes exceeds rpc.message.maxSize (134217728 bytes)"
/// );
/// ```
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum RpcError {
    /// A deadline passed before the answer came.
    Timeout {
        /// What timed out, e.g. `"rpc 7 to 127.0.0.1:7077"`.
        what: String,
        /// The duration that ran out.
        after: Duration,
        /// The configuration key that set the duration, or a phrase naming the argument
        /// that did (`"the timeout given to send_rpc_sync"`).
        key: &'static str,
    },
    /// The remote env has no endpoint of that name.
    EndpointNotFound {
        /// The endpoint's URI, `rpc://name@host:port`.
        uri: String,
    },
    /// The env was shut down.
    EnvStopped,
    /// The endpoint was stopped.
    EndpointStopped {
        /// The endpoint's name.
        name: String,
    },
    /// An endpoint of that name is already registered in this env.
    EndpointExists {
        /// The endpoint's name.
        name: String,
    },
    /// The remote side answered with a failure.
    Remote {
        /// The remote's message (for a Spark peer, its exception text).
        message: String,
    },
    /// The endpoint dropped the call context without replying.
    NoReply {
        /// The endpoint's name.
        endpoint: String,
    },
    /// A connection could not be made, or closed while the call was outstanding.
    Connection {
        /// The remote address, `host:port`.
        peer: String,
        /// What happened, e.g. `"closed with the request outstanding"`.
        reason: String,
        /// The OS error behind it, if there was one.
        source: Option<Arc<io::Error>>,
    },
    /// Bytes could not be decoded.
    Decode {
        /// What was being decoded, e.g. `"frame"`.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A value could not be encoded.
    Encode {
        /// What was being encoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A frame is larger than `rpc.message.maxSize`.
    FrameTooLarge {
        /// The frame's size in bytes (claimed by a peer, or of a frame about to be sent).
        size: u64,
        /// The configured maximum in bytes.
        max: u64,
    },
    /// A queue had no room for a message: the write queue of a connection whose peer does
    /// not read fast enough (`rpc.io.maxQueuedBytes`), or an endpoint's inbox
    /// (`rpc.dispatcher.inboxCapacity`), for as long as the sender could wait
    /// (`rpc.io.sendTimeout`, an ask's own deadline, or not at all for `try_send`).
    QueueFull {
        /// Which queue, e.g. `"write queue to 127.0.0.1:7077"`, `"inbox of endpoint echo"`.
        queue: String,
        /// Bytes queued when the sender gave up.
        queued: u64,
        /// The queue's limit in bytes.
        limit: u64,
        /// The configuration key that sets the limit.
        key: &'static str,
        /// Whether the sender waited for room (rather than failing at once).
        waited: bool,
    },
    /// The authentication handshake with a peer failed, or a frame of an encrypted
    /// connection could not be decrypted (a wrong key, a tampered or truncated stream, or
    /// two sides whose cipher or engine version differ).
    Auth {
        /// The peer, `host:port`.
        peer: String,
        /// Why it failed; never the secret or key material.
        reason: String,
    },
    /// A configuration key or value is wrong.
    Config {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No port could be bound.
    Bind {
        /// The address that was bound, e.g. `"127.0.0.1"`.
        host: String,
        /// The first port tried.
        start_port: u16,
        /// How many more ports were tried after the first.
        retries: u32,
        /// The error of the last attempt.
        source: Option<Arc<io::Error>>,
    },
    /// An address or endpoint URI could not be parsed.
    InvalidAddress {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Endpoint code panicked; the endpoint keeps running. Given to
    /// [`RpcEndpoint::on_error`](crate::RpcEndpoint::on_error).
    EndpointPanicked {
        /// The endpoint's name.
        endpoint: String,
        /// The panic's message, when it was a string.
        message: String,
    },
    /// The file server refused to add or serve something (see
    /// [`FileServer`](crate::FileServer)).
    FileServer {
        /// What is wrong, e.g. "File a.txt was already registered with a different path".
        reason: String,
    },
    /// An operating-system call failed outside any connection (creating a poller,
    /// spawning a thread).
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: Arc<io::Error>,
    },
}

impl RpcError {
    pub(crate) fn connection(peer: impl fmt::Display, reason: impl Into<String>) -> Self {
        Self::Connection {
            peer: peer.to_string(),
            reason: reason.into(),
            source: None,
        }
    }

    pub(crate) fn connection_io(
        peer: impl fmt::Display,
        reason: impl Into<String>,
        source: io::Error,
    ) -> Self {
        Self::Connection {
            peer: peer.to_string(),
            reason: reason.into(),
            source: Some(Arc::new(source)),
        }
    }

    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn decode(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Decode {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { what, after, key } => {
                write!(f, "{what} timed out after {after:?} (set by {key})")
            }
            Self::EndpointNotFound { uri } => write!(f, "cannot find endpoint: {uri}"),
            Self::EnvStopped => f.write_str("rpc env already stopped"),
            Self::EndpointStopped { name } => write!(f, "endpoint {name} is stopped"),
            Self::EndpointExists { name } => {
                write!(f, "there is already an endpoint called {name}")
            }
            Self::Remote { message } => write!(f, "remote failure: {message}"),
            Self::NoReply { endpoint } => {
                write!(f, "endpoint {endpoint} dropped the call without replying")
            }
            Self::Connection {
                peer,
                reason,
                source,
            } => {
                write!(f, "connection to {peer} {reason}")?;
                // The OS error is part of the one-line story here: callers print errors
                // with `{}`, and "failed to connect" alone does not say why.
                match source {
                    Some(err) => write!(f, ": {err}"),
                    None => Ok(()),
                }
            }
            Self::Decode { what, reason } => write!(f, "cannot decode {what}: {reason}"),
            Self::Encode { what, reason } => write!(f, "cannot encode {what}: {reason}"),
            Self::FrameTooLarge { size, max } => write!(
                f,
                "frame of {size} bytes exceeds {} ({max} bytes)",
                keys::MESSAGE_MAX_SIZE
            ),
            Self::QueueFull {
                queue,
                queued,
                limit,
                key,
                waited,
            } => {
                write!(
                    f,
                    "{queue} is full: {queued} bytes queued, the limit is {limit} bytes ({key})"
                )?;
                if *waited {
                    write!(
                        f,
                        "; no room came within {} or the call's deadline",
                        keys::IO_SEND_TIMEOUT
                    )?;
                }
                Ok(())
            }
            Self::Auth { peer, reason } => write!(f, "authentication with {peer} failed: {reason}"),
            Self::Config { key, reason } => write!(f, "invalid configuration {key}: {reason}"),
            Self::Bind {
                host,
                start_port,
                retries,
                source,
            } => {
                write!(
                    f,
                    "cannot bind {host}: tried port {start_port} and {retries} more ({})",
                    keys::PORT_MAX_RETRIES
                )?;
                match source {
                    Some(err) => write!(f, ": {err}"),
                    None => Ok(()),
                }
            }
            Self::InvalidAddress { input, reason } => {
                write!(f, "invalid address {input:?}: {reason}")
            }
            Self::EndpointPanicked { endpoint, message } => {
                write!(f, "endpoint {endpoint} panicked: {message}")
            }
            Self::FileServer { reason } => write!(f, "file server: {reason}"),
            Self::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl Error for RpcError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Connection {
                source: Some(err), ..
            }
            | Self::Bind {
                source: Some(err), ..
            } => Some(&**err),
            Self::Io { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_size_of() {
        assert!(size_of::<RpcError>() <= 64);
    }

    #[test]
    fn messages_name_what_design_requires() {
        let cases: Vec<(RpcError, &[&str])> = vec![
            (
                RpcError::Timeout {
                    what: "ask".into(),
                    after: Duration::from_millis(200),
                    key: "rpc.askTimeout",
                },
                &["200ms", "rpc.askTimeout"],
            ),
            (
                RpcError::EndpointNotFound {
                    uri: "rpc://echo@127.0.0.1:7077".into(),
                },
                &["rpc://echo@127.0.0.1:7077"],
            ),
            (
                RpcError::EndpointStopped {
                    name: "echo".into(),
                },
                &["echo"],
            ),
            (
                RpcError::Remote {
                    message: "boom".into(),
                },
                &["boom"],
            ),
            (
                RpcError::NoReply {
                    endpoint: "echo".into(),
                },
                &["echo"],
            ),
            (
                RpcError::connection("10.0.0.1:7077", "closed"),
                &["10.0.0.1:7077"],
            ),
            (
                RpcError::decode("frame", "unknown message type 42"),
                &["frame", "42"],
            ),
            (
                RpcError::FrameTooLarge {
                    size: 300,
                    max: 100,
                },
                &["300", "100"],
            ),
            (
                RpcError::config("rpc.askTimeout", "bad"),
                &["rpc.askTimeout"],
            ),
            (
                RpcError::QueueFull {
                    queue: "write queue to 10.0.0.1:7077".into(),
                    queued: 4_194_400,
                    limit: 4_194_304,
                    key: keys::IO_MAX_QUEUED_BYTES,
                    waited: true,
                },
                &[
                    "10.0.0.1:7077",
                    "4194400",
                    "4194304",
                    "rpc.io.maxQueuedBytes",
                    "rpc.io.sendTimeout",
                ],
            ),
            (
                RpcError::Bind {
                    host: "0.0.0.0".into(),
                    start_port: 7077,
                    retries: 16,
                    source: None,
                },
                &["7077", "16", "rpc.port.maxRetries"],
            ),
        ];
        for (err, needles) in cases {
            let text = err.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{text:?} should contain {needle:?}");
            }
        }
    }

    #[test]
    fn io_errors_are_reachable_through_source() {
        let err = RpcError::connection_io(
            "127.0.0.1:1",
            "failed to connect",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        let source = err.source().expect("source");
        assert!(source.downcast_ref::<io::Error>().is_some());
        assert!(
            err.to_string()
                .starts_with("connection to 127.0.0.1:1 failed to connect")
        );
    }
}
