//! [`RpcError`], the one error type of the crate.

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

use crate::conf::keys;
use crate::sync::Arc;

/// Everything that can go wrong in rpcenv.
///
/// Each variant carries the facts a caller needs (the key, the peer, the sizes, the
/// types). Its `Display` is one lower-case sentence that says what happened, to what,
/// and where it helps what to change. It describes this level only: the OS error behind
/// a `Connection`, `Bind` or `Io` error is its [`Error::source`] (also
/// [`io_error`](Self::io_error)), never repeated in its text, so an error-chain printer
/// (`anyhow`'s `{:#}`, a loop over `source()`) shows each text once. The alternate form,
/// `format!("{err:#}")`, appends the OS error: one line with everything, as the crate's
/// own log lines print errors. Faults of a peer (`Decode`, `FrameTooLarge`, `Auth`) are
/// kept apart from mistakes of the caller (`Config`).
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
    /// A reference is typed with another message type than its endpoint takes: found at
    /// lookup ([`RpcEnv::setup_endpoint_ref`](crate::RpcEnv::setup_endpoint_ref)), or
    /// when a message of another type reaches the endpoint (e.g. a reference that came
    /// inside a message, to a name that another endpoint has taken since). Types are
    /// compared by name without module paths (see the crate docs, "Checked types").
    MessageType {
        /// The endpoint: its URI at lookup, else its name.
        endpoint: String,
        /// The type of the messages the endpoint takes, e.g. `"KvMsg"`.
        takes: Box<str>,
        /// The type the reference sends, e.g. `"CounterMsg"`; `None` when the receiver
        /// of a one-way message reports it (the sender's type is not on the wire).
        sent: Option<Box<str>>,
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
    /// A frame is larger than `rpc.message.maxSize`: this side's (a message or ask it
    /// would send, an answer it refused), the receiver's (a request it answered with its
    /// sizes before closing) or the replier's (an answer it could not send); `max` is the
    /// limit that was exceeded, whoever's it is.
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
    /// [`RpcEndpoint::on_error`](crate::RpcEndpoint::on_error). Also returned by
    /// [`RpcEnv::setup_endpoint`](crate::RpcEnv::setup_endpoint) and
    /// [`setup_concurrent_endpoint`](crate::RpcEnv::setup_concurrent_endpoint) when the
    /// endpoint's `threading()` or `max_concurrent()` panics (the message then starts with
    /// `in threading():`), and the endpoint is not registered.
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

    /// The error an `RpcFailure` answer tells: a refusal of a request above the peer's
    /// `rpc.message.maxSize` (the text of a [`FrameTooLarge`](Self::FrameTooLarge)) is
    /// that again, with its sizes; anything else is [`Remote`](Self::Remote).
    pub(crate) fn from_failure(text: String) -> Self {
        // An answer the replier could not send for its own limit comes with this prefix
        // (see `Conn::respond`); it is the same fault, with the replier's sizes.
        let parsed = text
            .strip_prefix(RESPONSE_NOT_SENT)
            .unwrap_or(&text)
            .strip_prefix("frame of ")
            .and_then(|rest| rest.split_once(" bytes exceeds "))
            .and_then(|(size, rest)| {
                let max = rest
                    .strip_prefix(keys::MESSAGE_MAX_SIZE)?
                    .strip_prefix(" (")?
                    .strip_suffix(" bytes)")?;
                Some((size.parse().ok()?, max.parse().ok()?))
            });
        match parsed {
            Some((size, max)) => Self::FrameTooLarge { size, max },
            None => Self::Remote { message: text },
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// What a replier puts before the reason when it could not send its answer: the text of
/// the failure frame it sends instead.
pub(crate) const RESPONSE_NOT_SENT: &str = "the response could not be sent: ";

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { what, after, key } => {
                write!(f, "{what} timed out after {after:?} (set by {key})")
            }
            Self::EndpointNotFound { uri } => write!(
                f,
                "cannot find endpoint: {uri} (no endpoint of that name is registered there)"
            ),
            Self::EnvStopped => {
                f.write_str("rpc env already stopped: it was shut down and makes no more calls")
            }
            Self::EndpointStopped { name } => {
                write!(f, "endpoint {name} is stopped and takes no more messages")
            }
            Self::MessageType {
                endpoint,
                takes,
                sent: Some(sent),
            } => write!(
                f,
                "endpoint {endpoint} takes messages of type {takes}, not {sent}: \
                 reach it through an RpcEndpointRef<{takes}>"
            ),
            Self::MessageType {
                endpoint,
                takes,
                sent: None,
            } => write!(
                f,
                "endpoint {endpoint} takes messages of type {takes} and was sent one of \
                 another type: its sender holds a reference typed with another message type"
            ),
            Self::EndpointExists { name } => write!(
                f,
                "there is already an endpoint called {name} in this env: stop it first, or \
                 choose another name"
            ),
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
                // The OS error is the source; the alternate form tells it too.
                match source {
                    Some(err) if f.alternate() => write!(f, ": {err}"),
                    _ => Ok(()),
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
                    Some(err) if f.alternate() => write!(f, ": {err}"),
                    _ => Ok(()),
                }
            }
            Self::InvalidAddress { input, reason } => {
                write!(f, "invalid address {input:?}: {reason}")
            }
            Self::EndpointPanicked { endpoint, message } => {
                write!(f, "endpoint {endpoint} panicked: {message}")
            }
            Self::FileServer { reason } => write!(f, "file server: {reason}"),
            Self::Io { context, source } if f.alternate() => write!(f, "{context}: {source}"),
            Self::Io { context, .. } => f.write_str(context),
        }
    }
}

impl RpcError {
    /// The OS error behind a `Connection`, `Bind` or `Io` error, if there is one: also
    /// its [`Error::source`].
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Connection {
                source: Some(err), ..
            }
            | Self::Bind {
                source: Some(err), ..
            } => Some(err),
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The source of a `Connection`, `Bind` or `Io` error is the OS error behind it, which
/// its `Display` does not repeat (the alternate form `{:#}` appends it).
impl Error for RpcError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.io_error().map(|err| err as &(dyn Error + 'static))
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

    /// The variant's name; a match without a wildcard, so that a new variant fails to
    /// compile here until the table below renders it.
    fn variant(err: &RpcError) -> &'static str {
        match err {
            RpcError::Timeout { .. } => "Timeout",
            RpcError::EndpointNotFound { .. } => "EndpointNotFound",
            RpcError::EnvStopped => "EnvStopped",
            RpcError::EndpointStopped { .. } => "EndpointStopped",
            RpcError::MessageType { .. } => "MessageType",
            RpcError::EndpointExists { .. } => "EndpointExists",
            RpcError::Remote { .. } => "Remote",
            RpcError::NoReply { .. } => "NoReply",
            RpcError::Connection { .. } => "Connection",
            RpcError::Decode { .. } => "Decode",
            RpcError::Encode { .. } => "Encode",
            RpcError::FrameTooLarge { .. } => "FrameTooLarge",
            RpcError::QueueFull { .. } => "QueueFull",
            RpcError::Auth { .. } => "Auth",
            RpcError::Config { .. } => "Config",
            RpcError::Bind { .. } => "Bind",
            RpcError::InvalidAddress { .. } => "InvalidAddress",
            RpcError::EndpointPanicked { .. } => "EndpointPanicked",
            RpcError::FileServer { .. } => "FileServer",
            RpcError::Io { .. } => "Io",
        }
    }

    /// Every variant as a user gets it, and the sentence it renders.
    #[test]
    fn every_variant_renders_as_a_sentence() {
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused");
        let table: Vec<(RpcError, &str)> = vec![
            (
                RpcError::Timeout {
                    what: "ask of endpoint kv at 127.0.0.1:7077".into(),
                    after: Duration::from_millis(200),
                    key: keys::ASK_TIMEOUT,
                },
                "ask of endpoint kv at 127.0.0.1:7077 timed out after 200ms (set by \
                 rpc.askTimeout)",
            ),
            (
                RpcError::EndpointNotFound {
                    uri: "rpc://kv@127.0.0.1:7077".into(),
                },
                "cannot find endpoint: rpc://kv@127.0.0.1:7077 (no endpoint of that name is \
                 registered there)",
            ),
            (
                RpcError::EnvStopped,
                "rpc env already stopped: it was shut down and makes no more calls",
            ),
            (
                RpcError::EndpointStopped { name: "kv".into() },
                "endpoint kv is stopped and takes no more messages",
            ),
            (
                RpcError::MessageType {
                    endpoint: "rpc://kv@127.0.0.1:7077".into(),
                    takes: "KvMsg".into(),
                    sent: Some("CounterMsg".into()),
                },
                "endpoint rpc://kv@127.0.0.1:7077 takes messages of type KvMsg, not \
                 CounterMsg: reach it through an RpcEndpointRef<KvMsg>",
            ),
            (
                RpcError::MessageType {
                    endpoint: "kv".into(),
                    takes: "KvMsg".into(),
                    sent: None,
                },
                "endpoint kv takes messages of type KvMsg and was sent one of another type: \
                 its sender holds a reference typed with another message type",
            ),
            (
                RpcError::EndpointExists { name: "kv".into() },
                "there is already an endpoint called kv in this env: stop it first, or \
                 choose another name",
            ),
            (
                RpcError::Remote {
                    message: "no such key".into(),
                },
                "remote failure: no such key",
            ),
            (
                RpcError::NoReply {
                    endpoint: "kv".into(),
                },
                "endpoint kv dropped the call without replying",
            ),
            (
                RpcError::connection("127.0.0.1:7077", "closed with the request outstanding"),
                "connection to 127.0.0.1:7077 closed with the request outstanding",
            ),
            (
                RpcError::connection_io("127.0.0.1:7077", "cannot be made", refused()),
                "connection to 127.0.0.1:7077 cannot be made",
            ),
            (
                RpcError::decode(
                    "the reply of endpoint kv at 127.0.0.1:7077 as bool",
                    "the endpoint replied with Option<String>, the ask expected bool",
                ),
                "cannot decode the reply of endpoint kv at 127.0.0.1:7077 as bool: the \
                 endpoint replied with Option<String>, the ask expected bool",
            ),
            (
                RpcError::Encode {
                    what: "the reply of endpoint kv (a Unserializable)".into(),
                    reason: "not serializable".into(),
                },
                "cannot encode the reply of endpoint kv (a Unserializable): not serializable",
            ),
            (
                RpcError::FrameTooLarge {
                    size: 102_466,
                    max: 65_536,
                },
                "frame of 102466 bytes exceeds rpc.message.maxSize (65536 bytes)",
            ),
            (
                RpcError::QueueFull {
                    queue: "inbox of endpoint kv".into(),
                    queued: 4_194_400,
                    limit: 4_194_304,
                    key: keys::DISPATCHER_INBOX_CAPACITY,
                    waited: false,
                },
                "inbox of endpoint kv is full: 4194400 bytes queued, the limit is 4194304 \
                 bytes (rpc.dispatcher.inboxCapacity)",
            ),
            (
                RpcError::QueueFull {
                    queue: "write queue to 127.0.0.1:7077".into(),
                    queued: 4_194_400,
                    limit: 4_194_304,
                    key: keys::IO_MAX_QUEUED_BYTES,
                    waited: true,
                },
                "write queue to 127.0.0.1:7077 is full: 4194400 bytes queued, the limit is \
                 4194304 bytes (rpc.io.maxQueuedBytes); no room came within \
                 rpc.io.sendTimeout or the call's deadline",
            ),
            (
                RpcError::Auth {
                    peer: "127.0.0.1:7077".into(),
                    reason: "the peer's proof of the secret is wrong".into(),
                },
                "authentication with 127.0.0.1:7077 failed: the peer's proof of the secret is \
                 wrong",
            ),
            (
                RpcError::config(keys::ASK_TIMEOUT, "\"soon\" is not a duration"),
                "invalid configuration rpc.askTimeout: \"soon\" is not a duration",
            ),
            (
                RpcError::Bind {
                    host: "127.0.0.1".into(),
                    start_port: 7077,
                    retries: 16,
                    source: Some(Arc::new(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "Address in use",
                    ))),
                },
                "cannot bind 127.0.0.1: tried port 7077 and 16 more (rpc.port.maxRetries)",
            ),
            (
                RpcError::InvalidAddress {
                    input: "kv@nowhere".into(),
                    reason: "no port".into(),
                },
                "invalid address \"kv@nowhere\": no port",
            ),
            (
                RpcError::EndpointPanicked {
                    endpoint: "kv".into(),
                    message: "index out of bounds".into(),
                },
                "endpoint kv panicked: index out of bounds",
            ),
            (
                RpcError::FileServer {
                    reason: "File a.txt was already registered with a different path".into(),
                },
                "file server: File a.txt was already registered with a different path",
            ),
            (
                RpcError::io(
                    "cannot start thread rpc-timeout",
                    io::Error::new(io::ErrorKind::OutOfMemory, "out of memory"),
                ),
                "cannot start thread rpc-timeout",
            ),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (err, expected) in &table {
            seen.insert(variant(err));
            assert_eq!(err.to_string(), *expected, "{}", variant(err));
            // One line, lower case (but for a type or a name it starts with).
            assert!(!expected.contains('\n'));
            // No text twice: the text does not repeat its source's; the alternate form
            // appends it once.
            let alternate = format!("{err:#}");
            match err.source() {
                Some(source) => {
                    let os = source.to_string();
                    assert!(!expected.contains(&os), "{expected}");
                    assert_eq!(alternate, format!("{expected}: {os}"));
                }
                None => assert_eq!(alternate, *expected),
            }
        }
        assert_eq!(seen.len(), 20, "every variant is in the table: {seen:?}");
    }

    #[test]
    fn frame_too_large_survives_the_wire_as_its_text() {
        let err = RpcError::FrameTooLarge {
            size: 102_466,
            max: 65_536,
        };
        assert!(matches!(
            RpcError::from_failure(err.to_string()),
            RpcError::FrameTooLarge {
                size: 102_466,
                max: 65_536
            }
        ));
        for other in [
            "frame of many bytes exceeds rpc.message.maxSize (1 bytes)",
            "frame of 1 bytes exceeds rpc.message.maxSize (2 bytes) and more",
            "boom",
        ] {
            assert!(matches!(
                RpcError::from_failure(other.into()),
                RpcError::Remote { message } if message == other
            ));
        }
    }

    #[test]
    fn io_errors_are_reachable_through_source_and_io_error() {
        let err = RpcError::connection_io(
            "127.0.0.1:1",
            "failed to connect",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        let os = err.io_error().expect("the OS error");
        assert_eq!(os.kind(), io::ErrorKind::ConnectionRefused);
        let source = err.source().expect("source");
        assert!(source.downcast_ref::<io::Error>().is_some());
        assert!(
            err.to_string()
                .starts_with("connection to 127.0.0.1:1 failed to connect")
        );
    }
}
