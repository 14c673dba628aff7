//! Socket plumbing: options through `socket2`, listening, connecting, and the [`Wire`]
//! abstraction the connection logic is written against.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::transport::TransportConf;

/// A byte stream a connection reads from (the holder of its read turn: its event loop,
/// or a caller waiting for its answer, see `read_turn`) and writes to (one writer
/// at a time, see `write_queue`). Implemented by `mio::net::TcpStream` and by in-memory
/// pipes in tests. The connection and its event loop share it through an `Arc`: the
/// descriptor closes when the last of them lets go, at once when the connection closes.
pub(crate) trait Wire: Send + Sync + 'static {
    /// A non-blocking read: `WouldBlock` when nothing is there, `Ok(0)` at end of stream.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// A non-blocking vectored write.
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Shuts both directions down, so the peer sees the close at once.
    fn shutdown(&self);
    /// The pending socket error (`SO_ERROR`), if any: why a connection that looks closed
    /// by the peer really ended (a keep-alive or user timeout, a reset).
    fn take_error(&self) -> Option<io::Error> {
        None
    }

    /// The socket's descriptor, for a poller (see `read_turn`); `None`: it has none, and
    /// only its event loop reads it.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// A non-blocking write of up to `count` bytes of `file` from `offset`, returning how
    /// many went out (`Ok(0)`: the file ends there). A TCP socket on Linux sends them
    /// from the page cache with `sendfile`; the default reads them into a buffer of at
    /// most 64 KiB and writes that (what the socket does not take is read again next time).
    fn send_file(&self, file: &File, offset: u64, count: usize) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; count.min(64 * 1024)];
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Ok(0);
        }
        self.write_vectored(&[IoSlice::new(&buf[..n])])
    }
}

impl Wire for mio::net::TcpStream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut &*self, buf)
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(&mut &*self, bufs)
    }

    fn shutdown(&self) {
        // NotConnected after the peer reset the connection is fine: it is closed already.
        let _ = Self::shutdown(self, Shutdown::Both);
    }

    fn take_error(&self) -> Option<io::Error> {
        Self::take_error(self).ok().flatten()
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    /// `sendfile(2)` through `rustix` (a safe wrapper): the bytes go from the page cache to
    /// the socket without passing through a user-space buffer.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn send_file(&self, file: &File, offset: u64, count: usize) -> io::Result<usize> {
        let mut offset = offset;
        rustix::fs::sendfile(self, file, Some(&mut offset), count).map_err(io::Error::from)
    }
}

/// `io::Read` over a [`Wire`], for `Read::take(..).read_to_end(..)`.
pub(crate) struct WireReader<'a>(pub(crate) &'a dyn Wire);

impl Read for WireReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// Options every connected socket gets: `TCP_NODELAY`, keep-alive with the configured
/// idle time, interval and count (`rpc.io.keepAlive*`), `TCP_USER_TIMEOUT`
/// (`rpc.io.tcpUserTimeout`, Linux), and the configured buffer sizes. Both detect a peer
/// that vanished (a host that lost power, a cut link) with any peer, Spark included: the
/// keep-alive while the connection is quiet, the user timeout while sent data waits for
/// its acknowledgement.
pub(crate) fn configure_stream(socket: SockRef<'_>, conf: &TransportConf) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    match conf.keep_alive_idle() {
        Some(idle) => {
            let keepalive = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(conf.keep_alive_interval());
            #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
            let keepalive = keepalive.with_retries(conf.keep_alive_count());
            socket.set_tcp_keepalive(&keepalive)?;
        }
        None => socket.set_keepalive(false)?,
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(timeout) = conf.tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    apply_buffers(&socket, conf)
}

fn apply_buffers(socket: &Socket, conf: &TransportConf) -> io::Result<()> {
    if let Some(size) = conf.receive_buffer() {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = conf.send_buffer() {
        socket.set_send_buffer_size(size)?;
    }
    Ok(())
}

/// Binds a non-blocking listener with `SO_REUSEADDR`, the configured buffers (set before
/// `listen`, so accepted sockets inherit them and window scaling matches) and backlog.
pub(crate) fn bind_listener(addr: SocketAddr, conf: &TransportConf) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    apply_buffers(&socket, conf)?;
    socket.bind(&addr.into())?;
    let backlog = conf
        .backlog()
        .map_or_else(os_max_backlog, |b| b.min(i32::MAX as u32) as i32);
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The kernel clamps the backlog to `net.core.somaxconn`; ask for exactly that.
fn os_max_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

/// How often a connect under way looks whether it is still wanted.
const CONNECT_CHECK: Duration = Duration::from_millis(50);

/// `EINPROGRESS`: a non-blocking connect is under way.
#[cfg(any(target_os = "linux", target_os = "android"))]
const EINPROGRESS: i32 = 115;
/// `EINPROGRESS`: a non-blocking connect is under way.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const EINPROGRESS: i32 = 36;

/// Connects to `addr` within `timeout` (none when `None`), blocking the calling thread,
/// and returns a configured, non-blocking stream. The connect is non-blocking underneath
/// and gives up as soon as `cancelled` says so (checked every 50 ms), so that a peer that
/// drops the handshake never holds up a shutdown.
pub(crate) fn connect(
    addr: SocketAddr,
    timeout: Option<Duration>,
    conf: &TransportConf,
    cancelled: &dyn Fn() -> bool,
) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    apply_buffers(&socket, conf)?;
    socket.set_nonblocking(true)?;
    let in_progress = match socket.connect(&addr.into()) {
        Ok(()) => false,
        Err(err) if err.raw_os_error() == Some(EINPROGRESS) || would_block(&err) => true,
        Err(err) => return Err(err),
    };
    let mut stream = mio::net::TcpStream::from_std(socket.into());
    if in_progress {
        wait_connected(&mut stream, timeout, cancelled)?;
    }
    configure_stream(SockRef::from(&stream), conf)?;
    Ok(stream)
}

/// Waits for a non-blocking connect to end: connected, refused, timed out, or cancelled.
fn wait_connected(
    stream: &mut mio::net::TcpStream,
    timeout: Option<Duration>,
    cancelled: &dyn Fn() -> bool,
) -> io::Result<()> {
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    let mut poll = mio::Poll::new()?;
    poll.registry()
        .register(stream, mio::Token(0), mio::Interest::WRITABLE)?;
    let mut events = mio::Events::with_capacity(1);
    let outcome = loop {
        if cancelled() {
            break Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the connect was given up: the client factory is closed",
            ));
        }
        let wait = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(CONNECT_CHECK),
                _ => break Err(io::ErrorKind::TimedOut.into()),
            },
            None => CONNECT_CHECK,
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(err) if interrupted(&err) => continue,
            Err(err) => break Err(err),
        }
        if events.is_empty() {
            continue;
        }
        if let Some(err) = stream.take_error()? {
            break Err(err);
        }
        match stream.peer_addr() {
            Ok(_) => break Ok(()),
            // Woken before the handshake ended: wait on.
            Err(err) if err.kind() == io::ErrorKind::NotConnected => {}
            Err(err) => break Err(err),
        }
    };
    // The loop that takes the stream over registers it with its own poller.
    let _ = poll.registry().deregister(stream);
    outcome
}

/// True for the errors that mean "nothing to do right now".
pub(crate) fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// True for the errors a syscall should simply be retried after.
pub(crate) fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RpcConf;

    fn conf_of(pairs: &[(&str, &str)]) -> TransportConf {
        conf(pairs)
    }

    fn conf(pairs: &[(&str, &str)]) -> TransportConf {
        let mut conf = RpcConf::new();
        for (key, value) in pairs {
            conf.insert(*key, *value);
        }
        TransportConf::from_conf(&conf).unwrap()
    }

    #[test]
    fn listeners_and_connections_get_the_configured_options() {
        let conf = conf(&[
            ("rpc.io.receiveBuffer", "256k"),
            ("rpc.io.sendBuffer", "128k"),
            ("rpc.io.keepAliveIdle", "7s"),
            ("rpc.io.keepAliveInterval", "3s"),
            ("rpc.io.keepAliveCount", "4"),
            ("rpc.io.tcpUserTimeout", "1500ms"),
        ]);
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), &conf).unwrap();
        let listening = SockRef::from(&listener);
        assert!(listening.reuse_address().unwrap());
        // Linux doubles the value it is given; other systems may round it.
        assert!(listening.recv_buffer_size().unwrap() >= 256 * 1024);

        let addr = listener.local_addr().unwrap();
        let client = connect(addr, Some(Duration::from_secs(5)), &conf, &|| false).unwrap();
        let socket = SockRef::from(&client);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(socket.recv_buffer_size().unwrap() >= 256 * 1024);
        assert!(socket.send_buffer_size().unwrap() >= 128 * 1024);
        assert!(socket.nonblocking().unwrap());

        // An accepted connection is configured by the server the same way.
        let mut accepted = None;
        for _ in 0..5_000 {
            match listener.accept() {
                Ok((stream, _)) => {
                    accepted = Some(stream);
                    break;
                }
                Err(err) if would_block(&err) => std::thread::sleep(Duration::from_millis(1)),
                Err(err) => panic!("accept: {err}"),
            }
        }
        let accepted = accepted.expect("the connection is accepted within 5 s");
        configure_stream(SockRef::from(&accepted), &conf).unwrap();
        assert!(SockRef::from(&accepted).tcp_nodelay().unwrap());
        assert_eq!(
            SockRef::from(&accepted).tcp_keepalive_time().unwrap(),
            Duration::from_secs(7)
        );

        // The defaults: keep-alive after 5 s, probes every 2 s, a 10 s user timeout; a
        // keep-alive idle time of 0 turns keep-alive off.
        let defaults = connect(
            addr,
            Some(Duration::from_secs(5)),
            &TransportConf::default(),
            &|| false,
        )
        .unwrap();
        let socket = SockRef::from(&defaults);
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(5));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(10))
        );
        let off = connect(
            addr,
            Some(Duration::from_secs(5)),
            &conf_of(&[
                ("rpc.io.keepAliveIdle", "0"),
                ("rpc.io.tcpUserTimeout", "0"),
            ]),
            &|| false,
        )
        .unwrap();
        assert!(!SockRef::from(&off).keepalive().unwrap());
        assert_eq!(SockRef::from(&off).tcp_user_timeout().unwrap(), None);
    }

    /// A listener with a full accept queue drops further handshakes: a connect to it
    /// hangs, and is given up as soon as it is no longer wanted.
    #[test]
    fn a_hanging_connect_is_given_up_once_cancelled() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        // Fill the accept queue (never accepted).
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(stream) =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            {
                held.push(stream);
            }
        }
        let hangs = connect(
            addr,
            Some(Duration::from_millis(300)),
            &TransportConf::default(),
            &|| false,
        );
        assert_eq!(
            hangs.unwrap_err().kind(),
            io::ErrorKind::TimedOut,
            "the connect hangs"
        );
        let started = Instant::now();
        let cancel_at = started + Duration::from_millis(100);
        let err = connect(
            addr,
            Some(Duration::from_secs(60)),
            &TransportConf::default(),
            &|| Instant::now() >= cancel_at,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted, "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn connecting_to_a_closed_port_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(
            addr,
            Some(Duration::from_secs(5)),
            &TransportConf::default(),
            &|| false,
        );
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
    }
}
