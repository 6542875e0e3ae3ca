//! Sockets for the pool's managers on any runtime: a [`NetRuntime`] opens TCP and
//! Unix-domain connections with the runtime's own IO, and hands them over as a [`Stream`]
//! seen through tokio's IO traits (which tokio-postgres and the redis crate both speak),
//! with the [`TcpOptions`] (keepalive, `TCP_USER_TIMEOUT`) applied.
//!
//! Implemented for `pool_tokio::Tokio`, `pool_async_std::AsyncStd` and `pool_smol::Smol`
//! behind the features of the same names. `pool-postgres` and `pool-redis` build on it (see
//! `ARCHITECTURE.md`, "Layout"); implement [`NetRuntime`] to run them on another executor.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// A runtime that can open the sockets a manager's driver talks over. The managers spawn
/// each connection's background task with [`pool_core::Runtime::spawn`] and use the
/// runtime's timers, so nothing of tokio runs unless the runtime is tokio.
pub trait NetRuntime: pool_core::Runtime {
    /// Opens a TCP connection to `host` (a name or an address) and `port`, with `TCP_NODELAY`
    /// set (a pool's exchanges are small requests and replies) and `options` applied
    /// ([`TcpOptions::apply`]).
    fn connect_tcp(
        &self,
        host: &str,
        port: u16,
        options: &TcpOptions,
    ) -> impl Future<Output = io::Result<Stream>> + Send;

    /// Opens a Unix-domain socket connection to `path` (the socket file itself).
    #[cfg(unix)]
    fn connect_unix(
        &self,
        path: &std::path::Path,
    ) -> impl Future<Output = io::Result<Stream>> + Send;
}

/// TCP options of a connection: keepalive and `TCP_USER_TIMEOUT` (libpq's `keepalives`,
/// `keepalives_idle`, `keepalives_interval`, `keepalives_retries` and `tcp_user_timeout`).
/// The default sets nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TcpOptions {
    /// TCP keepalive, or `None` to leave it off.
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT` (Linux and Android only; ignored elsewhere): how long sent data may
    /// stay unacknowledged before the kernel closes the connection.
    pub user_timeout: Option<Duration>,
}

/// TCP keepalive probes: after `idle` without traffic, a probe every `interval`; the
/// connection is closed after `retries` unanswered probes. `None` keeps the operating
/// system's default; `interval` and `retries` are applied where the platform can set them
/// (Linux, the BSDs, macOS, Windows for `interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Idle time before the first probe (libpq's `keepalives_idle`).
    pub idle: Duration,
    /// Time between probes (`keepalives_interval`).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (`keepalives_retries`).
    pub retries: Option<u32>,
}

impl Keepalive {
    /// Probes after `idle` without traffic, at the system's interval and retries.
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            interval: None,
            retries: None,
        }
    }
}

impl TcpOptions {
    /// Applies the options to a connected TCP socket of any runtime (tokio, async-std and
    /// smol sockets all qualify).
    #[cfg(unix)]
    pub fn apply<S: std::os::fd::AsFd>(&self, socket: &S) -> io::Result<()> {
        self.apply_to(socket2::SockRef::from(socket))
    }

    /// Applies the options to a connected TCP socket of any runtime (tokio, async-std and
    /// smol sockets all qualify).
    #[cfg(windows)]
    pub fn apply<S: std::os::windows::io::AsSocket>(&self, socket: &S) -> io::Result<()> {
        self.apply_to(socket2::SockRef::from(socket))
    }

    fn apply_to(&self, socket: socket2::SockRef<'_>) -> io::Result<()> {
        if let Some(keepalive) = &self.keepalive {
            let params = socket2::TcpKeepalive::new().with_time(keepalive.idle);
            #[cfg(any(
                target_os = "linux",
                target_os = "android",
                target_os = "freebsd",
                target_os = "netbsd",
                target_os = "macos",
                target_os = "ios",
                target_os = "windows"
            ))]
            let params = match keepalive.interval {
                Some(interval) => params.with_interval(interval),
                None => params,
            };
            #[cfg(any(
                target_os = "linux",
                target_os = "android",
                target_os = "freebsd",
                target_os = "netbsd",
                target_os = "macos",
                target_os = "ios"
            ))]
            let params = match keepalive.retries {
                Some(retries) => params.with_retries(retries),
                None => params,
            };
            socket.set_tcp_keepalive(&params)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A connected socket of any runtime, seen through tokio's IO traits (which tokio-postgres
/// uses); futures-io sockets (async-std, smol) are bridged with `tokio-util`'s compat layer.
pub struct Stream {
    inner: Pin<Box<dyn Io>>,
}

impl Stream {
    /// Wraps a socket that implements tokio's `AsyncRead` and `AsyncWrite`.
    pub fn new<S>(socket: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self {
            inner: Box::pin(socket),
        }
    }

    /// Wraps a socket that implements the `futures-io` traits (async-std, smol, async-io).
    pub fn from_futures_io<S>(socket: S) -> Self
    where
        S: futures_io::AsyncRead + futures_io::AsyncWrite + Send + 'static,
    {
        Self::new(socket.compat())
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_shutdown(cx)
    }
}

#[cfg(feature = "tokio")]
impl NetRuntime for pool_tokio::Tokio {
    async fn connect_tcp(&self, host: &str, port: u16, options: &TcpOptions) -> io::Result<Stream> {
        let socket = tokio::net::TcpStream::connect((host, port)).await?;
        socket.set_nodelay(true)?;
        options.apply(&socket)?;
        Ok(Stream::new(socket))
    }

    #[cfg(unix)]
    async fn connect_unix(&self, path: &std::path::Path) -> io::Result<Stream> {
        Ok(Stream::new(tokio::net::UnixStream::connect(path).await?))
    }
}

#[cfg(feature = "async-std")]
impl NetRuntime for pool_async_std::AsyncStd {
    async fn connect_tcp(&self, host: &str, port: u16, options: &TcpOptions) -> io::Result<Stream> {
        let socket = async_std::net::TcpStream::connect((host, port)).await?;
        socket.set_nodelay(true)?;
        options.apply(&socket)?;
        Ok(Stream::from_futures_io(socket))
    }

    #[cfg(unix)]
    async fn connect_unix(&self, path: &std::path::Path) -> io::Result<Stream> {
        let socket = async_std::os::unix::net::UnixStream::connect(path).await?;
        Ok(Stream::from_futures_io(socket))
    }
}

#[cfg(feature = "smol")]
impl NetRuntime for pool_smol::Smol {
    async fn connect_tcp(&self, host: &str, port: u16, options: &TcpOptions) -> io::Result<Stream> {
        let socket = smol::net::TcpStream::connect((host, port)).await?;
        socket.set_nodelay(true)?;
        options.apply(&socket)?;
        Ok(Stream::from_futures_io(socket))
    }

    #[cfg(unix)]
    async fn connect_unix(&self, path: &std::path::Path) -> io::Result<Stream> {
        let socket = smol::net::unix::UnixStream::connect(path).await?;
        Ok(Stream::from_futures_io(socket))
    }
}
