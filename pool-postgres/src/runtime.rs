//! What the manager needs from a runtime beyond [`pool_core::Runtime`]: sockets.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// A runtime that can open the sockets tokio-postgres talks over. The manager spawns each
/// connection's background task with [`pool_core::Runtime::spawn`] and uses the runtime's
/// timers, so nothing of tokio runs unless the runtime is tokio.
///
/// Implemented for `pool_tokio::Tokio`, `pool_async_std::AsyncStd` and `pool_smol::Smol`
/// behind the features of the same names; implement it to run on another executor.
pub trait PgRuntime: pool_core::Runtime {
    /// Opens a TCP connection to `host` (a name or an address) and `port`, with `TCP_NODELAY`
    /// set (a pool's queries are small request/response exchanges) and `options` applied
    /// ([`TcpOptions::apply`]).
    fn connect_tcp(
        &self,
        host: &str,
        port: u16,
        options: &TcpOptions,
    ) -> impl Future<Output = io::Result<Stream>> + Send;

    /// Opens a Unix-domain socket connection to `path` (the socket file itself, such as
    /// `/var/run/postgresql/.s.PGSQL.5432`).
    #[cfg(unix)]
    fn connect_unix(
        &self,
        path: &std::path::Path,
    ) -> impl Future<Output = io::Result<Stream>> + Send;
}

/// TCP options of a connection, as libpq's `keepalives`, `keepalives_idle`,
/// `keepalives_interval`, `keepalives_retries` and `tcp_user_timeout` set them
/// ([`TcpOptions::from_config`]).
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
    /// Idle time before the first probe (`keepalives_idle`, 2 hours by default as in
    /// tokio-postgres).
    pub idle: Duration,
    /// Time between probes (`keepalives_interval`).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (`keepalives_retries`).
    pub retries: Option<u32>,
}

impl TcpOptions {
    /// The options a tokio-postgres `Config` asks for: keepalive when `keepalives` is on
    /// (tokio-postgres's default), with its idle time, interval and retries, and
    /// `tcp_user_timeout`.
    pub fn from_config(config: &tokio_postgres::Config) -> Self {
        Self {
            keepalive: config.get_keepalives().then(|| Keepalive {
                idle: config.get_keepalives_idle(),
                interval: config.get_keepalives_interval(),
                retries: config.get_keepalives_retries(),
            }),
            user_timeout: config.get_tcp_user_timeout().copied(),
        }
    }

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
impl PgRuntime for pool_tokio::Tokio {
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
impl PgRuntime for pool_async_std::AsyncStd {
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
impl PgRuntime for pool_smol::Smol {
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{Keepalive, TcpOptions};
    use std::time::Duration;

    #[test]
    fn tcp_options_are_read_from_the_config_and_reach_the_socket() {
        let parse = |s: &str| -> tokio_postgres::Config { s.parse().expect("a valid config") };
        let secs = Duration::from_secs;
        // tokio-postgres reads every one of these in seconds (libpq: tcp_user_timeout in ms).
        let options = TcpOptions::from_config(&parse(
            "host=h keepalives_idle=30 keepalives_interval=5 keepalives_retries=4 tcp_user_timeout=7",
        ));
        assert_eq!(
            options,
            TcpOptions {
                keepalive: Some(Keepalive {
                    idle: secs(30),
                    interval: Some(secs(5)),
                    retries: Some(4),
                }),
                user_timeout: Some(secs(7)),
            }
        );
        // tokio-postgres's defaults: keepalive on after two idle hours, the system's interval
        // and retries, no user timeout.
        assert_eq!(
            TcpOptions::from_config(&parse("host=h")),
            TcpOptions {
                keepalive: Some(Keepalive {
                    idle: secs(2 * 60 * 60),
                    interval: None,
                    retries: None,
                }),
                user_timeout: None,
            }
        );
        assert_eq!(
            TcpOptions::from_config(&parse("host=h keepalives=0 keepalives_idle=30")),
            TcpOptions::default()
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a local port");
        let socket =
            std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connects");
        options.apply(&socket).expect("the options apply");
        let read = socket2::SockRef::from(&socket);
        assert!(read.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(read.tcp_keepalive_time().expect("TCP_KEEPIDLE"), secs(30));
        assert_eq!(
            read.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            secs(5)
        );
        assert_eq!(read.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 4);
        assert_eq!(
            read.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(secs(7))
        );
        // Off: nothing is set.
        let other =
            std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connects");
        TcpOptions::default()
            .apply(&other)
            .expect("nothing to apply");
        assert!(!socket2::SockRef::from(&other)
            .keepalive()
            .expect("SO_KEEPALIVE"));
    }
}
