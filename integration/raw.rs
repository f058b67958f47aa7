//! A raw PostgreSQL wire client for the bad-input tests: it writes exactly the bytes a test
//! gives it and reads the server's typed messages back, so a test can send what no real
//! client would (garbage, absurd lengths, truncated messages) and check the answer.
//!
//! Only what those tests need: a startup packet, an md5 login (the one password scheme
//! small enough to do by hand), typed messages, and ErrorResponse fields.
//! See <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use std::net::SocketAddr;
use std::time::Duration;

use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a read may wait before the test fails: generous, since every answer a test
/// waits for is due at once.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the peer did after the last message a test read.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A typed message: type byte and body.
    Message(u8, Vec<u8>),
    /// The peer closed the connection (at a message boundary).
    Eof,
}

/// One raw client connection.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and logs in to an md5 tenant; returns once ReadyForQuery arrived.
    pub async fn login_md5(addr: SocketAddr, user: &str, password: &str, db: &str) -> RawConn {
        let mut conn = RawConn::connect(addr).await;
        conn.send(&startup_packet(user, db)).await;
        let (tag, body) = conn.expect_message().await;
        assert_eq!(
            (tag, body.get(..4)),
            (b'R', Some(&5u32.to_be_bytes()[..])),
            "expected AuthenticationMD5Password, got {:?}",
            describe(tag, &body)
        );
        let salt: [u8; 4] = body[4..8].try_into().expect("4-byte salt");
        let mut response = md5_response(user, password, salt).into_bytes();
        response.push(0);
        conn.send(&message(b'p', &response)).await;
        loop {
            match conn.expect_message().await {
                (b'Z', _) => return conn,
                (b'E', body) => panic!("md5 login failed: {:?}", error_fields(&body)),
                _ => {}
            }
        }
    }

    /// Writes `bytes`; a peer that already closed is not an error (the test reads next).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Closes the write side: the peer reads EOF.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// The next message or EOF, within `timeout`. Panics on a timeout, on a connection
    /// closed in the middle of a message, or on an I/O error other than a reset (which,
    /// after the peer closed with unread input, counts as EOF).
    pub async fn next_within(&mut self, timeout: Duration) -> Next {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(next) => next,
            Err(_) => panic!("nothing from the peer within {timeout:?}"),
        }
    }

    async fn next(&mut self) -> Next {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
                let total = 1 + len as usize;
                assert!(len >= 4, "message with length field {len}");
                if self.buf.len() >= total {
                    let rest = self.buf.split_off(total);
                    let whole = std::mem::replace(&mut self.buf, rest);
                    return Next::Message(whole[0], whole[5..].to_vec());
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading from the peer: {e}"),
            }
        }
        assert!(
            self.buf.is_empty(),
            "connection closed in the middle of a message: {:?}",
            self.buf
        );
        Next::Eof
    }

    /// The next message (within [`READ_TIMEOUT`]); panics on EOF.
    pub async fn expect_message(&mut self) -> (u8, Vec<u8>) {
        match self.next_within(READ_TIMEOUT).await {
            Next::Message(tag, body) => (tag, body),
            Next::Eof => panic!("connection closed where a message was expected"),
        }
    }

    /// Reads messages up to and including ReadyForQuery; returns their type bytes. Panics
    /// on an ErrorResponse or EOF.
    pub async fn read_until_ready(&mut self) -> Vec<u8> {
        let mut tags = Vec::new();
        loop {
            match self.expect_message().await {
                (b'E', body) => panic!("error: {:?}", error_fields(&body)),
                (tag, _) => {
                    tags.push(tag);
                    if tag == b'Z' {
                        return tags;
                    }
                }
            }
        }
    }

    /// Asserts that the next thing is an ErrorResponse with `sqlstate`, then EOF; returns
    /// the error's message text.
    pub async fn expect_error_then_eof(&mut self, sqlstate: &str) -> String {
        let (tag, body) = self.expect_message().await;
        assert_eq!(
            tag,
            b'E',
            "expected an ErrorResponse, got {:?}",
            describe(tag, &body)
        );
        let fields = error_fields(&body);
        assert_eq!(
            field(&fields, b'C'),
            sqlstate,
            "SQLSTATE of the error {fields:?}"
        );
        self.expect_eof().await;
        field(&fields, b'M').to_owned()
    }

    /// Asserts that the peer closes the connection (within [`READ_TIMEOUT`]) without
    /// sending anything more.
    pub async fn expect_eof(&mut self) {
        match self.next_within(READ_TIMEOUT).await {
            Next::Eof => {}
            Next::Message(tag, body) => {
                panic!("expected EOF, got {:?}", describe(tag, &body))
            }
        }
    }
}

/// A protocol 3.0 StartupMessage for `user` and `database`.
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", database)] {
        for s in [key, value] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A typed message: `tag`, a length field that is right for `body`, and `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A Query message for `sql`.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Parse (unnamed statement, no parameter types), Bind (unnamed portal, no parameters)
/// and Execute for `sql`: an extended-protocol query without its Sync.
pub fn parse_bind_execute(sql: &str) -> Vec<u8> {
    let mut parse = vec![0];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = message(b'P', &parse);
    // Portal "", statement "", no parameter formats, no parameters, no result formats.
    out.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    // Portal "", no row limit.
    out.extend(message(b'E', &[0, 0, 0, 0, 0]));
    out
}

/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`, what libpq answers to
/// AuthenticationMD5Password.
pub fn md5_response(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = md5_hex(&[password.as_bytes(), user.as_bytes()]);
    format!("md5{}", md5_hex(&[inner.as_bytes(), &salt]))
}

/// `"md5" + hex(md5(password + user))`, the form PostgreSQL stores for md5 passwords.
pub fn md5_stored(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fields of an ErrorResponse or NoticeResponse body: (code byte, value).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        fields.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    fields
}

/// The value of field `code` (`b'C'` SQLSTATE, `b'M'` message…), or "" when absent.
pub fn field(fields: &[(u8, String)], code: u8) -> &str {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

/// A message for assertion output: its type and, for errors, its fields.
fn describe(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => format!("'{}' {:?}", tag as char, error_fields(body)),
        _ => format!("'{}' ({} bytes)", tag.escape_ascii(), body.len()),
    }
}
