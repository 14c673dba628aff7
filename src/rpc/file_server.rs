//! [`FileServer`]: the files, jars and directories an env serves as streams (Spark's
//! `NettyStreamManager`, the `RpcEnvFileServer` of `NettyRpcEnv`), and the parsing of the
//! URIs [`RpcEnv::open_channel`](crate::RpcEnv::open_channel) downloads.
//!
//! A stream id is the decoded path of a file's URI: `/files/<name>`, `/jars/<name>`, or
//! `/<base>/<relative path>` for a directory added under `<base>`. Every id comes from the
//! network and is treated as hostile: see [`FileServer`] for what is refused.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use log::debug;

use crate::error::RpcError;
use crate::log_limit::{LogLimit, kind, peer_warn};
use crate::rpc::address::RpcAddress;
use crate::sync::{Arc, Mutex};
use crate::transport::StreamBody;

/// The files, jars and directories an env serves (Spark's `RpcEnvFileServer`); see
/// [`RpcEnv::file_server`](crate::RpcEnv::file_server). A handle: clones share the tables.
///
/// Each `add_*` returns the URI to give to another env's
/// [`open_channel`](crate::RpcEnv::open_channel), in Spark's shape with this crate's
/// scheme: `rpc://host:port/files/<name>`, `rpc://host:port/jars/<name>`, or
/// `rpc://host:port/<base>` for a directory (append `/<relative path>`); names are
/// percent-encoded (a space is `%20`).
///
/// What a peer can download, and nothing else: a regular file added with
/// [`add_file`](Self::add_file) or [`add_jar`](Self::add_jar) (by its name), or a regular
/// file inside a directory added with [`add_directory`](Self::add_directory), whose real
/// path (symbolic links resolved) is inside that directory. Paths with empty, `.` or `..`
/// segments, NUL bytes, anything outside what was added, directories, and symbolic links
/// leading out of a served directory are all answered "not found" (Spark's
/// `StreamFailure("Stream '<id>' was not found.")`); a directory base that was never added
/// is Spark's `"Invalid stream URI: <base> not found."`.
///
/// The tables are read on the event loops when a peer asks, and written by the caller of
/// `add_*` / `remove_*` (a short lock, no I/O under it).
#[derive(Clone)]
pub struct FileServer {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` in client mode: nothing can be served.
    address: Option<RpcAddress>,
    tables: Mutex<Tables>,
    /// The limiter of the refusals [`FileServer::open_stream`] logs (one pseudo-peer).
    log_limit: LogLimit,
}

#[derive(Default)]
struct Tables {
    /// File name → canonical path.
    files: HashMap<String, PathBuf>,
    /// Jar name → canonical path.
    jars: HashMap<String, PathBuf>,
    /// Base (one URI segment, no slashes) → canonical directory.
    dirs: HashMap<String, PathBuf>,
}

/// Which flat table.
#[derive(Clone, Copy)]
enum Flat {
    Files,
    Jars,
}

impl Flat {
    fn segment(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Jars => "jars",
        }
    }
}

impl FileServer {
    pub(crate) fn new(address: Option<RpcAddress>) -> Self {
        Self {
            inner: Arc::new(Inner {
                address,
                tables: Mutex::new(Tables::default()),
                log_limit: LogLimit::default(),
            }),
        }
    }

    /// Serves `path` under its file name and returns its URI,
    /// `rpc://host:port/files/<encoded name>` (Spark's `addFile`). Adding the same name
    /// again with the same file is fine and returns the same URI.
    ///
    /// Fails with [`RpcError::FileServer`] if the file cannot be resolved (it must exist
    /// and be a regular file: not a directory, FIFO or device),
    /// its name is not UTF-8, the name was already added with a different path
    /// (`File NAME was already registered with a different path (old path = …, new path =
    /// …)`), or the env is in client mode (it serves nothing).
    pub fn add_file(&self, path: impl AsRef<Path>) -> Result<String, RpcError> {
        self.add_flat(Flat::Files, path.as_ref())
    }

    /// As [`add_file`](Self::add_file), for a jar: `rpc://host:port/jars/<encoded name>`
    /// (Spark's `addJar`).
    pub fn add_jar(&self, path: impl AsRef<Path>) -> Result<String, RpcError> {
        self.add_flat(Flat::Jars, path.as_ref())
    }

    /// Serves the files under `dir` at `rpc://host:port/<base>/<relative path>` and returns
    /// `rpc://host:port/<base>` (Spark's `addDirectory`). `base_uri` is normalised first
    /// (`/dir1/./` and `/dir2/../dir2/` are `/dir1` and `/dir2`) and must then be one
    /// segment.
    ///
    /// Fails with [`RpcError::FileServer`] for `/files` and `/jars` ("Directory URI cannot
    /// be /files nor /jars."), an empty or multi-segment base, a base already added (`URI
    /// '/BASE' already registered.`), a `dir` that is not a directory, or a client-mode
    /// env.
    pub fn add_directory(&self, base_uri: &str, dir: impl AsRef<Path>) -> Result<String, RpcError> {
        let address = self.address()?;
        let base = normalize_base(base_uri)?;
        if base == "files" || base == "jars" {
            return Err(error("Directory URI cannot be /files nor /jars."));
        }
        let dir = dir.as_ref();
        let canonical = dir
            .canonicalize()
            .map_err(|err| error(format!("cannot resolve {}: {err:#}", dir.display())))?;
        if !canonical.is_dir() {
            return Err(error(format!("{} is not a directory", dir.display())));
        }
        let mut tables = self.inner.tables.lock();
        match tables.dirs.entry(base.clone()) {
            Entry::Occupied(_) => Err(error(format!("URI '/{base}' already registered."))),
            Entry::Vacant(slot) => {
                debug!("serving {} at /{base}", canonical.display());
                slot.insert(canonical);
                Ok(format!("rpc://{address}/{}", encode(&base)))
            }
        }
    }

    /// Stops serving the file added under `name` (a file name, or the URI
    /// [`add_file`](Self::add_file) returned). Returns whether it was served. Downloads
    /// already under way finish.
    pub fn remove_file(&self, name: &str) -> bool {
        self.remove_flat(Flat::Files, name)
    }

    /// As [`remove_file`](Self::remove_file), for a jar.
    pub fn remove_jar(&self, name: &str) -> bool {
        self.remove_flat(Flat::Jars, name)
    }

    fn address(&self) -> Result<&RpcAddress, RpcError> {
        self.inner
            .address
            .as_ref()
            .ok_or_else(|| error("a client-mode env serves no files (it has no address)"))
    }

    fn add_flat(&self, table: Flat, path: &Path) -> Result<String, RpcError> {
        let address = self.address()?;
        let canonical = path
            .canonicalize()
            .map_err(|err| error(format!("cannot resolve {}: {err:#}", path.display())))?;
        if !canonical.is_file() {
            // A directory, a FIFO or a device would only ever be answered "not found".
            return Err(error(format!("{} is not a regular file", path.display())));
        }
        let name = canonical
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| error(format!("{} has no UTF-8 file name", path.display())))?
            .to_owned();
        let mut tables = self.inner.tables.lock();
        let map = match table {
            Flat::Files => &mut tables.files,
            Flat::Jars => &mut tables.jars,
        };
        match map.entry(name.clone()) {
            Entry::Occupied(old) if *old.get() != canonical => {
                let kind = match table {
                    Flat::Files => "File",
                    Flat::Jars => "Jar",
                };
                return Err(error(format!(
                    "{kind} {name} was already registered with a different path (old path = \
                     {}, new path = {})",
                    old.get().display(),
                    canonical.display()
                )));
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                debug!(
                    "serving {} as /{}/{name}",
                    canonical.display(),
                    table.segment()
                );
                slot.insert(canonical);
            }
        }
        Ok(format!(
            "rpc://{address}/{}/{}",
            table.segment(),
            encode(&name)
        ))
    }

    fn remove_flat(&self, table: Flat, name: &str) -> bool {
        // A URI this server returned: `/files/<name>` (or `/jars/<name>`); a URI of the
        // other table, or of a directory, names nothing here.
        let name = match parse_uri(name) {
            Ok(parsed) => match parsed
                .stream_id
                .strip_prefix('/')
                .and_then(|id| id.split_once('/'))
            {
                Some((kind, name)) if kind == table.segment() => name.to_owned(),
                _ => return false,
            },
            Err(_) => name.to_owned(),
        };
        let mut tables = self.inner.tables.lock();
        let map = match table {
            Flat::Files => &mut tables.files,
            Flat::Jars => &mut tables.jars,
        };
        map.remove(&name).is_some()
    }

    /// What this server answers to a `StreamRequest` for `stream_id` (Spark's
    /// `NettyStreamManager.openStream`), in the shape of
    /// [`RpcHandler::open_stream`](crate::transport::RpcHandler::open_stream), so that a
    /// transport-level handler can serve an env's files too: the file (opened now),
    /// `Ok(None)` when there is no such file (see the type's docs), `Err` with Spark's
    /// text for a directory base that was never added.
    ///
    /// A request refused for leading outside what is served logs a `warn` line,
    /// rate-limited as the env's other peer-caused warnings are (a few lines per peer and
    /// kind, then one line per 10 s saying how many were suppressed). This method does not
    /// know the peer: its refusals are limited as if they all came from one peer (named
    /// "this env" in the summary line), apart from the env's, and are not counted in
    /// [`RpcEnv::metrics`](crate::RpcEnv::metrics). The env's own handler limits them per
    /// peer IP and counts them as `bad_stream_request`.
    pub fn open_stream(&self, stream_id: &str) -> Result<Option<StreamBody>, String> {
        self.open_stream_from(stream_id, None, &self.inner.log_limit)
    }

    /// [`open_stream`](Self::open_stream) for `peer`: every request not served is counted
    /// in `limit` as `bad_stream_request`, and a refusal's line is rate-limited there for
    /// that peer.
    pub(crate) fn open_stream_from(
        &self,
        stream_id: &str,
        peer: Option<SocketAddr>,
        limit: &LogLimit,
    ) -> Result<Option<StreamBody>, String> {
        let not_served = match self.find(stream_id) {
            Ok(body) => return Ok(Some(body)),
            Err(not_served) => not_served,
        };
        if let NotServed::Refused(why) = &not_served {
            peer_warn!(
                limit,
                peer,
                kind::BAD_STREAM_REQUEST,
                "refused stream {stream_id:?}: {why}"
            );
        } else {
            let _ = limit.admit(peer, kind::BAD_STREAM_REQUEST);
        }
        match not_served {
            NotServed::Invalid(text) => Err(text),
            NotServed::NotFound | NotServed::Refused(_) => Ok(None),
        }
    }

    /// The file `stream_id` names, opened, or why it is not served.
    fn find(&self, stream_id: &str) -> Result<StreamBody, NotServed> {
        let (path, root) = self.resolve(stream_id)?;
        let file = open_without_blocking(&path).map_err(|err| {
            debug!(
                "stream {stream_id}: cannot open {}: {err:#}",
                path.display()
            );
            NotServed::NotFound
        })?;
        if let Some(root) = root {
            // A directory's file: where the descriptor really points, after the open (a
            // link swapped in between the check and the open is caught here).
            if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", fd_of(&file))) {
                if !opened.starts_with(&root) {
                    let why = format!("it was opened outside {}", root.display());
                    return Err(NotServed::Refused(why));
                }
            }
        }
        StreamBody::file(file).map_err(|err| {
            debug!("stream {stream_id}: {}: {err:#}", path.display());
            NotServed::NotFound
        })
    }

    /// The real path of the file `stream_id` names, if it names one that is served, and
    /// the directory it must stay in (for a directory's file).
    fn resolve(&self, stream_id: &str) -> Result<(PathBuf, Option<PathBuf>), NotServed> {
        if stream_id.contains('\0') {
            return Err(NotServed::NotFound);
        }
        let Some((kind, name)) = stream_id
            .strip_prefix('/')
            .unwrap_or(stream_id)
            .split_once('/')
        else {
            return Err(NotServed::NotFound);
        };
        let tables = self.inner.tables.lock();
        let flat =
            |path: Option<&PathBuf>| path.map(|p| (p.clone(), None)).ok_or(NotServed::NotFound);
        let dir = match kind {
            "files" => return flat(tables.files.get(name)),
            "jars" => return flat(tables.jars.get(name)),
            base => match tables.dirs.get(base) {
                Some(dir) => dir.clone(),
                // Spark's `require` text.
                None => {
                    return Err(NotServed::Invalid(format!(
                        "Invalid stream URI: {base} not found."
                    )));
                }
            },
        };
        drop(tables);
        // Only plain segments: no empty, `.` or `..` ones, nothing absolute.
        let relative = Path::new(name);
        let plain = !name.is_empty()
            && name.split('/').all(|segment| !segment.is_empty())
            && relative
                .components()
                .all(|component| matches!(component, Component::Normal(_)));
        if !plain {
            return Err(NotServed::Refused("not a plain relative path".into()));
        }
        let Ok(real) = dir.join(relative).canonicalize() else {
            return Err(NotServed::NotFound);
        };
        if !real.starts_with(&dir) {
            let why = format!("it leads out of {}", dir.display());
            return Err(NotServed::Refused(why));
        }
        Ok((real, Some(dir)))
    }
}

/// Why a stream is not served.
enum NotServed {
    /// Answered "not found"; logged at `debug` at most.
    NotFound,
    /// Answered "not found": a path that leads outside what is served, which a peer
    /// probing for files asks for. Logged at `warn`, rate-limited per peer.
    Refused(String),
    /// Answered with this text (Spark's, for a directory base that was never added).
    Invalid(String),
}

/// Opens `path` for reading without waiting: a FIFO opened for reading blocks until a
/// writer comes (on the event loop, forever), so it is opened with `O_NONBLOCK` and then
/// refused for not being a regular file. The flag changes nothing for a regular file.
fn open_without_blocking(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    options.open(path)
}

/// The descriptor number of `file`, for `/proc/self/fd`.
fn fd_of(file: &File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

impl fmt::Debug for FileServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables = self.inner.tables.lock();
        f.debug_struct("FileServer")
            .field("address", &self.inner.address)
            .field("files", &tables.files.len())
            .field("jars", &tables.jars.len())
            .field("dirs", &tables.dirs.len())
            .finish()
    }
}

fn error(reason: impl Into<String>) -> RpcError {
    RpcError::FileServer {
        reason: reason.into(),
    }
}

/// Spark's `validateDirectoryUri`: the normalised path of `base_uri` without its slashes,
/// which must be one segment.
fn normalize_base(base_uri: &str) -> Result<String, RpcError> {
    let mut segments: Vec<&str> = Vec::new();
    for segment in base_uri.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(error(format!(
                        "directory URI {base_uri:?} leads above the root"
                    )));
                }
            }
            other => segments.push(other),
        }
    }
    match segments.as_slice() {
        [one] if !one.contains(['\0', '%', '?', '#']) => Ok((*one).to_owned()),
        [] => Err(error(format!("directory URI {base_uri:?} is empty"))),
        _ => Err(error(format!(
            "directory URI {base_uri:?} must be one segment such as /dir"
        ))),
    }
}

/// Percent-encodes a file name for a URI path (as Spark's `encodeFileNameToURIRawPath`:
/// a space becomes `%20`); `/` is encoded too, so a name is one segment.
pub(crate) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@' => out.push(byte as char),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// A parsed download URI: `rpc://host:port/path` (or `spark://`).
#[derive(Debug)]
pub(crate) struct ChannelUri {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The decoded path: the stream id.
    pub(crate) stream_id: String,
}

/// Parses `uri` as Spark's `openChannel` does: host, port > 0 and a path are required;
/// the path is percent-decoded into the stream id.
pub(crate) fn parse_uri(uri: &str) -> Result<ChannelUri, RpcError> {
    let invalid = |reason: &str| RpcError::InvalidAddress {
        input: uri.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = uri
        .strip_prefix("rpc://")
        .or_else(|| uri.strip_prefix("spark://"))
        .ok_or_else(|| invalid("the scheme must be rpc:// (or spark://)"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| invalid("Port must be defined."))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid("Host name must be defined."));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| invalid("Port must be defined."))?;
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.len() <= 1 {
        return Err(invalid("Path must be defined."));
    }
    let stream_id =
        decode(path).ok_or_else(|| invalid("the path is not valid percent-encoded UTF-8"))?;
    Ok(ChannelUri {
        host: host.to_owned(),
        port,
        stream_id,
    })
}

/// Percent-decodes `text`; `None` for a bad escape or bytes that are not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text.get(at + 1..at + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_and_decoded() {
        assert_eq!(encode("a b.txt"), "a%20b.txt");
        assert_eq!(encode("x/y"), "x%2Fy");
        assert_eq!(
            decode("/files/a%20b.txt").as_deref(),
            Some("/files/a b.txt")
        );
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%ff"), None);
    }

    #[test]
    fn bases_are_normalised_as_spark_does() {
        assert_eq!(normalize_base("/dir1").unwrap(), "dir1");
        assert_eq!(normalize_base("/dir1/././").unwrap(), "dir1");
        assert_eq!(normalize_base("/dir2/../dir2/").unwrap(), "dir2");
        assert_eq!(normalize_base("dir3/").unwrap(), "dir3");
        assert!(normalize_base("/").is_err());
        assert!(normalize_base("/a/b").is_err());
        assert!(normalize_base("/../x").is_err());
    }

    #[test]
    fn download_uris_need_host_port_and_path() {
        let parsed = parse_uri("rpc://127.0.0.1:7077/files/a%20b").unwrap();
        assert_eq!(parsed.host, "127.0.0.1");
        assert_eq!(parsed.port, 7077);
        assert_eq!(parsed.stream_id, "/files/a b");
        assert_eq!(
            parse_uri("spark://h:1/jars/x.jar").unwrap().stream_id,
            "/jars/x.jar"
        );
        for bad in [
            "http://h:1/files/x",
            "rpc://h/files/x",
            "rpc://:1/files/x",
            "rpc://h:0/files/x",
            "rpc://h:1",
            "rpc://h:1/",
            "rpc://h:1/files/%2",
        ] {
            assert!(
                matches!(parse_uri(bad), Err(RpcError::InvalidAddress { .. })),
                "{bad}"
            );
        }
    }
}
