//! [`RpcAddress`], the `host:port` of an rpc env, and the endpoint URIs built on it.
//!
//! An endpoint is named by `rpc://name@host:port` (Spark's `spark://name@host:port` is
//! accepted when parsing), or by `rpc-client://name` when its env runs in client mode and
//! so has no address of its own.
//!
//! IPv6 hosts are normalized as Spark does since SPARK-39468 and SPARK-42173: every
//! spelling of one address (`::0:1`, `0:0:0:0:0:0:0:1`, `[::1]`) is stored in the one
//! canonical compressed form (`::1`), so that two addresses of the same host compare equal
//! and hash alike. Unlike Spark, the stored host carries no brackets; they are added when
//! the address is formatted.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::RpcError;
use crate::sync::Arc;

/// The scheme of an endpoint URI that has an address.
const SCHEME: &str = "rpc://";
/// Spark's scheme, accepted when parsing.
const SPARK_SCHEME: &str = "spark://";
/// The scheme of an endpoint in a client-mode env, which has no address.
const CLIENT_SCHEME: &str = "rpc-client://";

/// The address of an rpc env: a host and a port.
///
/// A host that is an IPv6 address, with or without brackets, is stored in its canonical
/// compressed form without brackets (`"[0:0:0:0:0:0:0:1]"` becomes `"::1"`); any other
/// host is stored as given. This holds for every way of making an address: [`new`],
/// parsing, and deserialization, so a peer cannot send an address that compares unequal
/// to the same address spelled differently.
///
/// [`Display`](fmt::Display) writes `host:port`, bracketing a host that contains a colon
/// (`[::1]:7077`); [`FromStr`] parses the same text back. [`Debug`](fmt::Debug) writes the
/// `Display` text inside `RpcAddress(…)`, e.g. `RpcAddress([::1]:7077)`.
///
/// ```
/// use rpcenv::RpcAddress;
///
/// let a: RpcAddress = "127.0.0.1:7077".parse()?;
/// assert_eq!(a.host(), "127.0.0.1");
/// assert_eq!(a.port(), 7077);
///
/// let b = RpcAddress::new("[0:0:0:0:0:0:0:1]", 7077);
/// assert_eq!(b.host(), "::1");
/// assert_eq!(b.to_string(), "[::1]:7077");
/// assert_eq!(b, "[::1]:7077".parse()?);
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
///
/// [`new`]: RpcAddress::new
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "UncheckedAddress")]
pub struct RpcAddress {
    /// Shared, so that a copy (one per message from a peer) allocates nothing.
    host: Arc<str>,
    port: u16,
}

/// Serialized as `{ host: str, port: u16 }`, the fields its `Deserialize` reads back.
impl Serialize for RpcAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "RpcAddress")]
        struct Fields<'a> {
            host: &'a str,
            port: u16,
        }
        Fields {
            host: &self.host,
            port: self.port,
        }
        .serialize(serializer)
    }
}

/// The fields of an [`RpcAddress`] as they come off the wire, before normalization.
#[derive(Deserialize)]
struct UncheckedAddress {
    host: String,
    port: u16,
}

impl From<UncheckedAddress> for RpcAddress {
    fn from(raw: UncheckedAddress) -> Self {
        Self::new(raw.host, raw.port)
    }
}

impl RpcAddress {
    /// Makes an address, normalizing an IPv6 host (see the type's documentation).
    ///
    /// The host is not otherwise checked; use [`str::parse`] to check text from a user.
    ///
    /// ```
    /// use rpcenv::RpcAddress;
    ///
    /// assert_eq!(RpcAddress::new("example.com", 80).host(), "example.com");
    /// assert_eq!(RpcAddress::new("2600:0:0::", 80).host(), "2600::");
    /// ```
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: normalize_host(host.into()).into(),
            port,
        }
    }

    /// The host without brackets: `"127.0.0.1"`, `"::1"`, `"example.com"`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address of a socket; an IPv6 scope id and flow label are dropped.
    pub(crate) fn from_socket_addr(addr: SocketAddr) -> Self {
        Self::new(addr.ip().to_string(), addr.port())
    }
}

/// Returns the canonical compressed form of a host that is an IPv6 address (bracketed or
/// not), and any other host unchanged.
fn normalize_host(host: String) -> String {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    match bare.parse::<Ipv6Addr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host,
    }
}

impl fmt::Display for RpcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for RpcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpcAddress({self})")
    }
}

/// Lets APIs take an address by value or by reference.
impl AsRef<Self> for RpcAddress {
    fn as_ref(&self) -> &Self {
        self
    }
}

impl FromStr for RpcAddress {
    type Err = RpcError;

    /// Parses `host:port` or `[ipv6]:port`.
    ///
    /// The host must be a bracketed IPv6 address or a non-empty name of ASCII letters,
    /// digits, `-`, `.` and `_` (which covers IPv4 addresses); the port must be decimal
    /// digits that fit a `u16`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_host_port(s, s)
    }
}

/// Makes the error for `input`, which could not be parsed because of `reason`.
fn invalid(input: &str, reason: impl Into<String>) -> RpcError {
    RpcError::InvalidAddress {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Parses `text` as `host:port` or `[ipv6]:port`; errors name `input`, the whole text the
/// caller was given (an endpoint URI contains `text`).
fn parse_host_port(text: &str, input: &str) -> Result<RpcAddress, RpcError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(invalid(input, "missing ']' after the IPv6 host"));
        };
        let ip = v6
            .parse::<Ipv6Addr>()
            .map_err(|_| invalid(input, format!("{v6:?} is not an IPv6 address")))?;
        let Some(port) = after.strip_prefix(':') else {
            if after.is_empty() {
                return Err(invalid(input, "missing port"));
            }
            return Err(invalid(
                input,
                format!("unexpected {after:?} after the IPv6 host"),
            ));
        };
        (ip.to_string(), port)
    } else {
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(invalid(input, "missing port"));
        };
        if host.is_empty() {
            return Err(invalid(input, "empty host"));
        }
        if host.contains(':') {
            return Err(invalid(input, "an IPv6 host must be in brackets"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(invalid(
                input,
                format!("host {host:?} has a character other than letters, digits, '-', '.', '_'"),
            ));
        }
        (host.to_owned(), port)
    };
    if port.is_empty() {
        return Err(invalid(input, "missing port"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(input, format!("port {port:?} is not a number")));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| invalid(input, format!("port {port} is out of range (0 to 65535)")))?;
    Ok(RpcAddress {
        host: host.into(),
        port,
    })
}

/// The URI of the endpoint `name` in the env at `address`: `rpc://name@host:port`, or
/// `rpc-client://name` for an env in client mode (`None`), which has no address.
pub(crate) fn endpoint_uri(address: Option<&RpcAddress>, name: &str) -> String {
    match address {
        Some(address) => format!("{SCHEME}{name}@{address}"),
        None => format!("{CLIENT_SCHEME}{name}"),
    }
}

/// Parses `rpc://name@host:port` (or `spark://name@host:port`) into the env's address and
/// the endpoint's name.
///
/// The name must be non-empty and free of `/`, `?`, `#`, `:` and `@`; nothing may follow
/// the port (no path, query or fragment). A client-mode URI (`rpc-client://name`) has no
/// address and is an error.
pub(crate) fn parse_endpoint_uri(uri: &str) -> Result<(RpcAddress, String), RpcError> {
    if uri.starts_with(CLIENT_SCHEME) {
        return Err(invalid(
            uri,
            "client-mode endpoints have no address to connect to",
        ));
    }
    let Some(rest) = uri
        .strip_prefix(SCHEME)
        .or_else(|| uri.strip_prefix(SPARK_SCHEME))
    else {
        return Err(invalid(uri, "the scheme must be rpc:// or spark://"));
    };
    let Some((name, host_port)) = rest.split_once('@') else {
        return Err(invalid(
            uri,
            "missing endpoint name (expected rpc://name@host:port)",
        ));
    };
    if name.is_empty() {
        return Err(invalid(uri, "empty endpoint name"));
    }
    if name.contains(['/', '?', '#', ':']) {
        return Err(invalid(
            uri,
            format!("endpoint name {name:?} contains '/', '?', '#' or ':'"),
        ));
    }
    if host_port.contains('@') {
        return Err(invalid(uri, "more than one '@'"));
    }
    for (c, what) in [('/', "a path"), ('?', "a query"), ('#', "a fragment")] {
        if host_port.contains(c) {
            return Err(invalid(
                uri,
                format!("{what} is not allowed after host:port"),
            ));
        }
    }
    let address = parse_host_port(host_port, uri)?;
    Ok((address, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, SocketAddrV6};

    use super::*;
    use crate::codec;

    fn parse(s: &str) -> RpcAddress {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn parse_err(s: &str) -> String {
        match s.parse::<RpcAddress>() {
            Ok(a) => panic!("{s:?} should not parse, got {a:?}"),
            Err(e) => {
                assert!(
                    matches!(&e, RpcError::InvalidAddress { input, .. } if input == s),
                    "{e:?}"
                );
                e.to_string()
            }
        }
    }

    #[test]
    fn spark_rpc_address_suite_host_port() {
        let a = RpcAddress::new("1.2.3.4", 1234);
        assert_eq!(a.host(), "1.2.3.4");
        assert_eq!(a.port(), 1234);
        assert_eq!(a.to_string(), "1.2.3.4:1234");
        assert_eq!(format!("{a:?}"), "RpcAddress(1.2.3.4:1234)");
    }

    #[test]
    fn spark_rpc_address_suite_ipv6_host_port() {
        let a = RpcAddress::new("::1", 1234);
        assert_eq!(a.host(), "::1");
        assert_eq!(a.port(), 1234);
        assert_eq!(a.to_string(), "[::1]:1234");
        assert_eq!(format!("{a:?}"), "RpcAddress([::1]:1234)");
        assert_eq!(RpcAddress::new("[::1]", 1234), a);
    }

    #[test]
    fn spark_rpc_address_suite_spark_42173_consistent_sparse_mapping() {
        for spelling in [
            "::0:1",
            "[::0:1]",
            "0:0:0:0:0:0:0:1",
            "[0:0:0:0:0:0:0:1]",
            "::1",
        ] {
            let a = RpcAddress::new(spelling, 1234);
            assert_eq!(a.host(), "::1", "{spelling}");
            assert_eq!(a.to_string(), "[::1]:1234", "{spelling}");
        }
        let set: HashSet<RpcAddress> = ["::0:1", "[::1]", "0:0:0:0:0:0:0:1"]
            .into_iter()
            .map(|h| RpcAddress::new(h, 1))
            .collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn spark_rpc_address_suite_spark_42173_trailing_zeros() {
        for spelling in ["2600::", "[2600::]", "2600:0:0:0:0:0:0:0", "[2600::0]"] {
            let a = RpcAddress::new(spelling, 1234);
            assert_eq!(a.host(), "2600::", "{spelling}");
            assert_eq!(a.to_string(), "[2600::]:1234", "{spelling}");
        }
    }

    #[test]
    fn spark_rpc_address_suite_other_hosts_stored_as_given() {
        assert_eq!(RpcAddress::new("Example.COM", 1).host(), "Example.COM");
        assert_eq!(RpcAddress::new("[not-v6]", 1).host(), "[not-v6]");
        assert_eq!(RpcAddress::new("127.0.0.1", 1).host(), "127.0.0.1");
    }

    #[test]
    fn spark_rpc_address_suite_from_socket_addr() {
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 7077));
        assert_eq!(
            RpcAddress::from_socket_addr(v4),
            RpcAddress::new("127.0.0.1", 7077)
        );
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7077, 3, 4));
        let a = RpcAddress::from_socket_addr(v6);
        assert_eq!(a.host(), "::1");
        assert_eq!(a.to_string(), "[::1]:7077");
    }

    #[test]
    fn spark_rpc_address_suite_parse_round_trips() {
        for (text, host, port) in [
            ("1.2.3.4:1234", "1.2.3.4", 1234),
            ("[::1]:1234", "::1", 1234),
            ("[2600::]:0", "2600::", 0),
            ("example.com:65535", "example.com", 65535),
            ("my_host-1.local:80", "my_host-1.local", 80),
        ] {
            let a = parse(text);
            assert_eq!((a.host(), a.port()), (host, port), "{text}");
            assert_eq!(a.to_string(), text);
            assert_eq!(parse(&a.to_string()), a);
        }
        // Non-canonical IPv6 text parses to the canonical form.
        assert_eq!(parse("[::0:1]:5").to_string(), "[::1]:5");
        assert_eq!(parse("[0:0:0:0:0:0:0:1]:5"), RpcAddress::new("::1", 5));
    }

    #[test]
    fn spark_rpc_address_suite_parse_errors() {
        for (text, needle) in [
            ("1.2.3.4", "missing port"),
            ("1.2.3.4:", "missing port"),
            ("[::1]", "missing port"),
            ("[::1]:", "missing port"),
            ("1.2.3.4:70000", "out of range"),
            ("1.2.3.4:-1", "not a number"),
            ("1.2.3.4:+80", "not a number"),
            ("1.2.3.4:12a", "not a number"),
            (":1234", "empty host"),
            ("1.2. 3.4:1234", "character"),
            (" 1.2.3.4:1234", "character"),
            ("::1:1234", "brackets"),
            ("[::1:1234", "']'"),
            ("[nope]:1234", "not an IPv6 address"),
            ("[::1]x:1234", "unexpected"),
            ("h@st:1", "character"),
            ("host/x:1", "character"),
            ("garbage", "missing port"),
            ("", "missing port"),
            ("%%%:%%%", "character"),
        ] {
            let message = parse_err(text);
            assert!(message.contains(needle), "{text:?}: {message}");
            assert!(
                message.contains(&format!("{text:?}")),
                "{text:?}: {message}"
            );
        }
    }

    #[test]
    fn netty_rpc_address_suite_to_string() {
        let a = RpcAddress::new("localhost", 12345);
        assert_eq!(endpoint_uri(Some(&a), "test"), "rpc://test@localhost:12345");
        let v6 = RpcAddress::new("::1", 5);
        assert_eq!(endpoint_uri(Some(&v6), "test"), "rpc://test@[::1]:5");
    }

    #[test]
    fn netty_rpc_address_suite_to_string_for_client_mode() {
        assert_eq!(endpoint_uri(None, "test"), "rpc-client://test");
    }

    #[test]
    fn netty_rpc_address_suite_parse_endpoint_uri() {
        let (a, name) = parse_endpoint_uri("rpc://test@localhost:12345").expect("rpc://");
        assert_eq!(
            (a, name.as_str()),
            (RpcAddress::new("localhost", 12345), "test")
        );

        let (a, name) = parse_endpoint_uri("spark://Master@1.2.3.4:7077").expect("spark://");
        assert_eq!(
            (a, name.as_str()),
            (RpcAddress::new("1.2.3.4", 7077), "Master")
        );

        let (a, name) = parse_endpoint_uri("rpc://a@[::1]:5").expect("IPv6");
        assert_eq!((a.host(), a.port(), name.as_str()), ("::1", 5, "a"));

        let (a, _) = parse_endpoint_uri("rpc://a@[::0:1]:5").expect("IPv6");
        assert_eq!(a.host(), "::1");

        for (address, name) in [
            (RpcAddress::new("localhost", 1), "echo"),
            (RpcAddress::new("::1", 2), "endpoint-verifier"),
        ] {
            let uri = endpoint_uri(Some(&address), name);
            assert_eq!(
                parse_endpoint_uri(&uri).expect(&uri),
                (address, name.to_owned())
            );
        }
    }

    #[test]
    fn netty_rpc_address_suite_parse_endpoint_uri_errors() {
        for (uri, needle) in [
            ("http://a@h:1", "scheme"),
            ("invalid://1.2.3.4:1234", "scheme"),
            ("rpc:/a@h:1", "scheme"),
            ("rpc://h:1", "missing endpoint name"),
            ("rpc://@h:1", "empty endpoint name"),
            ("rpc://a/b@h:1", "endpoint name"),
            ("rpc://a:b@h:1", "endpoint name"),
            ("rpc://a@h:1/x", "path"),
            ("rpc://a@h:1?x=1", "query"),
            ("rpc://a@h:1#x", "fragment"),
            ("rpc://a@h:1@x", "more than one '@'"),
            ("rpc://a@h", "missing port"),
            ("rpc://a@h:70000", "out of range"),
            ("spark://a@1.2. 3.4:1234", "character"),
            ("rpc-client://test", "client-mode"),
            ("", "scheme"),
        ] {
            let err = parse_endpoint_uri(uri).expect_err(uri);
            assert!(
                matches!(&err, RpcError::InvalidAddress { input, .. } if input == uri),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(message.contains(needle), "{uri:?}: {message}");
            assert!(message.contains(&format!("{uri:?}")), "{uri:?}: {message}");
        }
    }

    #[test]
    fn serde_round_trip() {
        for a in [
            RpcAddress::new("127.0.0.1", 7077),
            RpcAddress::new("::1", 1),
            RpcAddress::new("example.com", 65535),
        ] {
            let bytes = codec::encode(&a, "address").expect("encode");
            let back: RpcAddress = codec::decode(&bytes, "address").expect("decode");
            assert_eq!(back, a);
        }
    }

    #[test]
    fn serialized_as_a_host_string_and_a_port() {
        // The layout peers of earlier versions wrote and read: a struct of a `String`
        // host and a `u16` port.
        #[derive(Serialize)]
        struct Owned {
            host: String,
            port: u16,
        }
        for (host, port) in [("127.0.0.1", 7077), ("::1", 1), ("example.com", 65535)] {
            let ours = codec::encode(&RpcAddress::new(host, port), "address").expect("encode");
            let owned = Owned {
                host: host.to_owned(),
                port,
            };
            assert_eq!(ours, codec::encode(&owned, "address").expect("encode"));
        }
    }

    #[test]
    fn serde_normalizes_a_deserialized_host() {
        // Same field layout as RpcAddress, but nothing normalizes the host.
        #[derive(Serialize)]
        struct Unnormalized<'a> {
            host: &'a str,
            port: u16,
        }
        for host in ["[::0:1]", "::0:1", "0:0:0:0:0:0:0:1", "[::1]"] {
            let bytes = codec::encode(&Unnormalized { host, port: 9 }, "address").expect("encode");
            let a: RpcAddress = codec::decode(&bytes, "address").expect("decode");
            assert_eq!(a.host(), "::1", "{host}");
            assert_eq!(a, RpcAddress::new("::1", 9));
        }
    }
}
