//! A connection that is plain TCP or TLS over TCP, on either side of the proxy. The relay
//! and the login code work with `Stream` through `AsyncRead`/`AsyncWrite`, so TLS costs
//! only the encryption.
//!
//! Knows sockets and TLS sessions, not what is sent over them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    /// A client that negotiated TLS with sluice.
    ClientTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A server connection sluice opened with TLS.
    ServerTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Handed to a TLS handshake that did not complete: every operation fails.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(tcp) => Some(tcp),
            Stream::ClientTls(tls) => Some(tls.get_ref().0),
            Stream::ServerTls(tls) => Some(tls.get_ref().0),
            Stream::Closed => None,
        }
    }

    /// The socket of a plain connection, where (unlike under TLS) no decrypted bytes can
    /// wait above the socket, so its readiness is the stream's.
    pub fn as_plain(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(tcp) => Some(tcp),
            _ => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::ClientTls(_) | Stream::ServerTls(_))
    }

    /// True when nothing has arrived on the socket and it is still open, checked without
    /// waiting and without consuming anything (a peek at the TCP socket).
    pub fn is_idle_and_open(&self) -> bool {
        let Some(tcp) = self.tcp() else {
            return false;
        };
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(tcp.poll_peek(&mut cx, &mut probe), Poll::Pending)
    }

    /// The first byte the client will send, without consuming it.
    pub async fn peek_first_byte(&self) -> io::Result<Option<u8>> {
        let tcp = self.tcp().ok_or_else(closed)?;
        let mut byte = [0u8; 1];
        Ok((tcp.peek(&mut byte).await? == 1).then_some(byte[0]))
    }

    /// Runs the server side of a TLS handshake on a plain client connection.
    pub async fn accept_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Closed) else {
            return Err(io::Error::other("TLS was already negotiated"));
        };
        *self = Stream::ClientTls(Box::new(acceptor.accept(tcp).await?));
        Ok(())
    }

    /// The ALPN protocol the client chose, for TLS connections.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Stream::ClientTls(tls) => tls.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}
