//! What the manager needs from a runtime beyond [`pool_core::Runtime`]: sockets.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// A runtime that can open the sockets the redis crate talks over. The manager spawns each
/// connection's driver (the redis crate's multiplexer task) with
/// [`pool_core::Runtime::spawn`], so nothing of tokio runs unless the runtime is tokio.
///
/// Implemented for `pool_tokio::Tokio`, `pool_async_std::AsyncStd` and `pool_smol::Smol`
/// behind the features of the same names; implement it to run on another executor.
pub trait RedisRuntime: pool_core::Runtime {
    /// Opens a TCP connection to `host` (a name or an address) and `port`, with
    /// `TCP_NODELAY` set (a pool's commands are small request/response exchanges).
    fn connect_tcp(&self, host: &str, port: u16)
        -> impl Future<Output = io::Result<Stream>> + Send;

    /// Opens a Unix-domain socket connection to `path`.
    #[cfg(unix)]
    fn connect_unix(
        &self,
        path: &std::path::Path,
    ) -> impl Future<Output = io::Result<Stream>> + Send;
}

trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A connected socket of any runtime, seen through tokio's IO traits (which the redis crate
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
impl RedisRuntime for pool_tokio::Tokio {
    async fn connect_tcp(&self, host: &str, port: u16) -> io::Result<Stream> {
        let socket = tokio::net::TcpStream::connect((host, port)).await?;
        socket.set_nodelay(true)?;
        Ok(Stream::new(socket))
    }

    #[cfg(unix)]
    async fn connect_unix(&self, path: &std::path::Path) -> io::Result<Stream> {
        Ok(Stream::new(tokio::net::UnixStream::connect(path).await?))
    }
}

#[cfg(feature = "async-std")]
impl RedisRuntime for pool_async_std::AsyncStd {
    async fn connect_tcp(&self, host: &str, port: u16) -> io::Result<Stream> {
        let socket = async_std::net::TcpStream::connect((host, port)).await?;
        socket.set_nodelay(true)?;
        Ok(Stream::from_futures_io(socket))
    }

    #[cfg(unix)]
    async fn connect_unix(&self, path: &std::path::Path) -> io::Result<Stream> {
        let socket = async_std::os::unix::net::UnixStream::connect(path).await?;
        Ok(Stream::from_futures_io(socket))
    }
}

#[cfg(feature = "smol")]
impl RedisRuntime for pool_smol::Smol {
    async fn connect_tcp(&self, host: &str, port: u16) -> io::Result<Stream> {
        let socket = smol::net::TcpStream::connect((host, port)).await?;
        socket.set_nodelay(true)?;
        Ok(Stream::from_futures_io(socket))
    }

    #[cfg(unix)]
    async fn connect_unix(&self, path: &std::path::Path) -> io::Result<Stream> {
        let socket = smol::net::unix::UnixStream::connect(path).await?;
        Ok(Stream::from_futures_io(socket))
    }
}
