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

    /// True when nothing has arrived and the connection is still open, checked without
    /// waiting. Plain TCP is peeked at, consuming nothing. Under TLS, plaintext rustls has
    /// already decrypted is invisible to the socket, so the stream itself is polled once:
    /// a byte read means the connection had leftovers and is not reused anyway.
    pub fn is_idle_and_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Stream::Plain(tcp) => tcp.poll_peek(&mut cx, &mut probe).is_pending(),
            Stream::ClientTls(_) | Stream::ServerTls(_) => {
                Pin::new(self).poll_read(&mut cx, &mut probe).is_pending()
            }
            Stream::Closed => false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A TLS client connection to an in-process TLS server, and the server's end.
    async fn tls_pair() -> (Stream, tokio_rustls::server::TlsStream<TcpStream>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(key.cert.der().to_vec());
        let private = PrivateKeyDer::try_from(key.key_pair.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let name = ServerName::try_from("localhost").unwrap();
        let client = connector.connect(name, tcp).await.unwrap();
        (Stream::ServerTls(Box::new(client)), server.await.unwrap())
    }

    #[tokio::test]
    async fn plaintext_rustls_holds_is_a_leftover() {
        let (mut client, mut server) = tls_pair().await;
        // A first message read whole (with the session tickets TLS 1.3 sends after the
        // handshake): nothing is left anywhere.
        server.write_all(b"hello").await.unwrap();
        server.flush().await.unwrap();
        let mut hello = [0u8; 5];
        client.read_exact(&mut hello).await.unwrap();
        assert!(client.is_idle_and_open(), "everything sent was read");
        // Two messages in one write; the client reads only the first byte, so the rest
        // waits decrypted inside rustls with nothing left on the socket.
        server.write_all(b"Z....N....").await.unwrap();
        server.flush().await.unwrap();
        let mut first = [0u8; 1];
        client.read_exact(&mut first).await.unwrap();
        assert!(
            client
                .tcp()
                .unwrap()
                .poll_peek(
                    &mut Context::from_waker(Waker::noop()),
                    &mut ReadBuf::new(&mut [0u8; 1])
                )
                .is_pending(),
            "the socket itself is drained"
        );
        assert!(!client.is_idle_and_open(), "the buffered plaintext is seen");
    }

    #[tokio::test]
    async fn a_closed_tls_connection_is_not_idle() {
        let (mut client, mut server) = tls_pair().await;
        server.shutdown().await.unwrap();
        drop(server);
        // Wait until the close has arrived.
        let tcp = client.tcp().unwrap();
        tcp.readable().await.unwrap();
        assert!(!client.is_idle_and_open());
    }
}
