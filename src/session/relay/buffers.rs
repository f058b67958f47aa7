//! Moving bytes between the two connections: the client bytes on their way to the
//! server (passed through untouched, or reassembled after a rewrite), the server bytes on
//! their way to the client, and one poll that drives reads and writes on both.
//!
//! Moves bytes; what they mean is `translate`'s business.

use super::CLIENT_READ_CHUNK;
use crate::net::Stream;
use crate::server::ServerConn;
use bytes::{Buf, BytesMut};
use std::cell::RefCell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWrite};

/// Client bytes on their way to the server. Untouched messages are written straight
/// from `buf` (its first `direct` bytes); once a message had to be rewritten, output is
/// assembled in `assembled` until that drains, which keeps the order.
pub(super) struct ToServer {
    pub(super) buf: BytesMut,
    pub(super) direct: usize,
    pub(super) assembled: BytesMut,
    /// Bytes of the current message body not yet passed on.
    pub(super) body_left: usize,
    /// A whole message must be buffered before it can be passed on: its total size.
    pub(super) need_whole: usize,
}

impl ToServer {
    pub(super) fn pending(&self) -> usize {
        self.direct + self.assembled.len()
    }

    /// Passes on `len` untouched bytes at the translation point.
    pub(super) fn pass(&mut self, len: usize) {
        if self.assembled.is_empty() {
            self.direct += len;
        } else {
            self.assembled.extend_from_slice(&self.buf[..len]);
            self.buf.advance(len);
        }
    }

    /// Starts assembled output: what is already direct goes first.
    pub(super) fn assemble(&mut self) -> &mut BytesMut {
        if self.direct > 0 {
            self.assembled.extend_from_slice(&self.buf[..self.direct]);
            self.buf.advance(self.direct);
            self.direct = 0;
        }
        &mut self.assembled
    }

    /// The untranslated bytes.
    pub(super) fn untranslated(&self) -> &[u8] {
        &self.buf[self.direct..]
    }

    /// Replaces the next untranslated message (`len` bytes, all buffered) with
    /// `replacement`, which is then translated in its place. Copies the rest of the
    /// buffer: for the rare statement sluice rewrites whole.
    pub(super) fn replace_next(&mut self, len: usize, replacement: &[u8]) {
        let at = self.direct;
        let rest = self.buf.split_off(at + len);
        self.buf.truncate(at);
        self.buf.extend_from_slice(replacement);
        self.buf.extend_from_slice(&rest);
    }
}

/// Server bytes on their way to the client, straight from the server's read buffer.
#[derive(Default)]
pub(super) struct ToClient {
    pub(super) forwardable: usize,
    pub(super) body_left: usize,
}

/// What one poll of both connections achieved.
pub(super) enum Io {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    /// TLS records buffered for the client were sent.
    Flushed(std::io::Result<()>),
    /// TLS records buffered for the server were sent.
    ServerFlushed(std::io::Result<()>),
}

/// TLS streams buffer records; after a direction's output is written they still need a
/// flush. Plain TCP never sets these.
#[derive(Default)]
pub(super) struct Flush {
    pub(super) client: bool,
    pub(super) server: bool,
}

/// Both connections and the buffers between them, for one poll.
pub(super) struct Ends<'s> {
    pub(super) client: &'s mut Stream,
    pub(super) server: &'s mut ServerConn,
    pub(super) to_server: &'s mut ToServer,
    pub(super) to_client: &'s ToClient,
    pub(super) flush: &'s mut Flush,
    pub(super) read_client: bool,
    pub(super) read_server: bool,
}

impl Ends<'_> {
    /// Tries writes first (they free buffers and let the peers go on), then reads;
    /// ready with the first that made progress. Cancel-safe: nothing is lost when the
    /// caller drops the poll between calls.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Io> {
        let out = &mut *self.to_server;
        if out.pending() > 0 {
            let bytes = if out.assembled.is_empty() {
                &out.buf[..out.direct]
            } else {
                &out.assembled[..]
            };
            if let Poll::Ready(r) = Pin::new(&mut self.server.stream).poll_write(cx, bytes) {
                return Poll::Ready(Io::ServerWrote(r));
            }
        } else if self.flush.server {
            if let Poll::Ready(r) = Pin::new(&mut self.server.stream).poll_flush(cx) {
                self.flush.server = false;
                return Poll::Ready(Io::ServerFlushed(r));
            }
        }
        let forwardable = self.to_client.forwardable;
        if forwardable > 0 {
            let bytes = &self.server.read_buf[..forwardable];
            if let Poll::Ready(r) = Pin::new(&mut *self.client).poll_write(cx, bytes) {
                return Poll::Ready(Io::ClientWrote(r));
            }
        } else if self.flush.client {
            if let Poll::Ready(r) = Pin::new(&mut *self.client).poll_flush(cx) {
                self.flush.client = false;
                return Poll::Ready(Io::Flushed(r));
            }
        }
        if self.read_client {
            let read = self.client.read_buf(&mut self.to_server.buf);
            if let Poll::Ready(r) = pin!(read).poll(cx) {
                return Poll::Ready(Io::ClientRead(r));
            }
        }
        if self.read_server {
            let server = &mut *self.server;
            let read = server.stream.read_buf(&mut server.read_buf);
            if let Poll::Ready(r) = pin!(read).poll(cx) {
                return Poll::Ready(Io::ServerRead(r));
            }
        }
        Poll::Pending
    }
}

/// Makes room for one read of `chunk` bytes, reusing the buffer's allocation when it is
/// drained.
pub(super) fn reserve_for_read(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() < chunk.min(CLIENT_READ_CHUNK) / 4
        || buf.capacity() - buf.len() < chunk / 2
    {
        buf.reserve(chunk);
    }
}

/// Free client read buffers kept per worker thread, so that a client going idle can give
/// its buffer up (idle clients then hold none; PgBouncer does the same with its slab of
/// packet buffers) without a busy client allocating one per transaction. A cache of free
/// memory like the allocator's own: no state anything could observe.
const CACHED_READ_BUFFERS: usize = 64;

thread_local! {
    static FREE_READ_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A drained read buffer, empty, of at least `CLIENT_READ_CHUNK` bytes.
pub(super) fn take_read_buffer() -> BytesMut {
    FREE_READ_BUFFERS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(CLIENT_READ_CHUNK))
}

/// Gives an empty read buffer back; only ones of the usual size are kept.
pub(super) fn give_back_read_buffer(mut buf: BytesMut) {
    debug_assert!(buf.is_empty());
    buf.clear();
    // Reclaims the bytes already read past, which needs sole ownership: a buffer whose
    // allocation is still shared (a split-off message alive elsewhere) is not kept.
    if !buf.try_reclaim(CLIENT_READ_CHUNK) || buf.capacity() > 2 * CLIENT_READ_CHUNK {
        return;
    }
    FREE_READ_BUFFERS.with_borrow_mut(|free| {
        if free.len() < CACHED_READ_BUFFERS {
            free.push(buf);
        }
    });
}
