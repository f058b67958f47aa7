//! A raw PostgreSQL wire client for tests that need exact bytes: bad input (garbage,
//! absurd lengths, truncated messages) and exact protocol sequences (extended-protocol
//! batches, pipelining, CopyFail, FunctionCall, CancelRequest). It writes exactly the
//! bytes a test gives it and reads the server's typed messages back.
//!
//! Only what those tests need: a startup packet, an md5 login (the one password scheme
//! small enough to do by hand), frontend message builders, DataRow and ErrorResponse
//! fields. See <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

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
        RawConn::login_md5_with(addr, user, password, db, &[])
            .await
            .0
    }

    /// [`RawConn::login_md5`] with `extra` startup parameters (`application_name`,
    /// `options`…); also returns what the greeting carried.
    pub async fn login_md5_with(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> (RawConn, Greeting) {
        let mut conn = RawConn::connect(addr).await;
        conn.send(&startup_packet_with(user, db, extra)).await;
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
        let mut greeting = Greeting::default();
        loop {
            match conn.expect_message().await {
                (b'Z', _) => return (conn, greeting),
                (b'E', body) => panic!("md5 login failed: {:?}", error_fields(&body)),
                (b'S', body) => {
                    let mut parts = body.split(|&b| b == 0).map(String::from_utf8_lossy);
                    let name = parts.next().unwrap_or_default().into_owned();
                    let value = parts.next().unwrap_or_default().into_owned();
                    greeting.parameters.push((name, value));
                }
                (b'K', body) => {
                    let int =
                        |at: usize| i32::from_be_bytes(body[at..at + 4].try_into().expect("4"));
                    greeting.key = Some((int(0), int(4)));
                }
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

    /// Like [`RawConn::next_within`], but `None` when nothing arrived within `timeout`.
    pub async fn try_next_within(&mut self, timeout: Duration) -> Option<Next> {
        tokio::time::timeout(timeout, self.next()).await.ok()
    }

    /// Every message up to and including ReadyForQuery, errors included (within
    /// [`READ_TIMEOUT`] each). Panics on EOF.
    pub async fn messages_until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut messages = Vec::new();
        loop {
            let (tag, body) = self.expect_message().await;
            messages.push((tag, body));
            if tag == b'Z' {
                return messages;
            }
        }
    }

    /// Reads up to and including ReadyForQuery without keeping the messages, so a huge
    /// result costs no memory here; `progress` is called with the bytes read so far about
    /// every 10 MB. Panics on an ErrorResponse, EOF, or a read stalled for
    /// [`READ_TIMEOUT`].
    pub async fn drain_until_ready(&mut self, mut progress: impl FnMut(u64)) -> Drained {
        const REPORT_EVERY: u64 = 10 * 1024 * 1024;
        let mut drained = Drained::default();
        let mut next_report = REPORT_EVERY;
        let mut pos = 0;
        let mut skip = 0;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            loop {
                if skip > 0 {
                    let n = skip.min(self.buf.len() - pos);
                    pos += n;
                    skip -= n;
                    if skip > 0 {
                        break;
                    }
                }
                let rest = &self.buf[pos..];
                if rest.len() < 5 {
                    break;
                }
                let tag = rest[0];
                let len = u32::from_be_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
                assert!(len >= 4, "message with length field {len}");
                match tag {
                    b'E' | b'Z' => {
                        if rest.len() < 1 + len {
                            break;
                        }
                        if tag == b'E' {
                            panic!("error: {:?}", error_fields(&rest[5..1 + len]));
                        }
                        drained.status = rest[5];
                        self.buf.drain(..pos + 1 + len);
                        return drained;
                    }
                    _ => {
                        drained.rows += u64::from(tag == b'D');
                        drained.bytes += 1 + len as u64;
                        pos += 5;
                        skip = len - 4;
                    }
                }
            }
            self.buf.drain(..pos);
            pos = 0;
            if drained.bytes >= next_report {
                progress(drained.bytes);
                next_report = drained.bytes + REPORT_EVERY;
            }
            let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(0)) => panic!("connection closed in the middle of a result"),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => panic!("reading from the peer: {e}"),
                Err(_) => panic!("nothing from the peer within {READ_TIMEOUT:?}"),
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

/// What the server said between AuthenticationOk and the first ReadyForQuery.
#[derive(Debug, Default)]
pub struct Greeting {
    /// ParameterStatus messages, in order: (name, value).
    pub parameters: Vec<(String, String)>,
    /// BackendKeyData: (pid, secret).
    pub key: Option<(i32, i32)>,
}

impl Greeting {
    /// The value of ParameterStatus `name`, if the greeting carried it.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`RawConn::drain_until_ready`] read.
#[derive(Debug, Default)]
pub struct Drained {
    /// DataRow messages.
    pub rows: u64,
    /// Bytes of every message before ReadyForQuery.
    pub bytes: u64,
    /// The ReadyForQuery status byte.
    pub status: u8,
}

/// A protocol 3.0 StartupMessage for `user` and `database`.
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    startup_packet_with(user, database, &[])
}

/// A StartupMessage with `extra` parameters after `user` and `database`.
pub fn startup_packet_with(user: &str, database: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    let params = [("user", user), ("database", database)];
    for &(key, value) in params.iter().chain(extra) {
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

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Parse: statement `name` (`""` is the unnamed one) for `sql`, with parameter type OIDs
/// (0 or none: the server infers them).
pub fn parse(name: &str, sql: &str, param_types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&(param_types.len() as u16).to_be_bytes());
    for oid in param_types {
        body.extend_from_slice(&oid.to_be_bytes());
    }
    message(b'P', &body)
}

/// Bind: portal `portal` to statement `statement`, parameters in text format (`None` is
/// NULL), results in text format.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, statement);
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for param in params {
        match param {
            Some(value) => {
                body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                body.extend_from_slice(value.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'B', &body)
}

/// Execute: portal `portal`, all rows.
pub fn execute(portal: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    body.extend_from_slice(&0u32.to_be_bytes());
    message(b'E', &body)
}

/// Describe of prepared statement `name`.
pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name);
    message(b'D', &body)
}

/// Describe of portal `name`.
pub fn describe_portal(name: &str) -> Vec<u8> {
    let mut body = vec![b'P'];
    cstr(&mut body, name);
    message(b'D', &body)
}

/// CopyData carrying `data`.
pub fn copy_data(data: &[u8]) -> Vec<u8> {
    message(b'd', data)
}

/// CopyDone.
pub fn copy_done() -> Vec<u8> {
    message(b'c', b"")
}

/// Close of prepared statement `name`.
pub fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name);
    message(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

pub fn flush() -> Vec<u8> {
    message(b'H', b"")
}

/// CopyFail with `reason`.
pub fn copy_fail(reason: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, reason);
    message(b'f', &body)
}

/// FunctionCall of function `oid` with binary arguments and a binary result.
pub fn function_call(oid: u32, args: &[&[u8]]) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for arg in args {
        body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
        body.extend_from_slice(arg);
    }
    body.extend_from_slice(&1u16.to_be_bytes());
    message(b'F', &body)
}

/// A CancelRequest packet for BackendKeyData (`pid`, `secret`).
pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut packet = 16u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret.to_be_bytes());
    packet
}

/// The columns of a DataRow body as text (`None` for NULL).
pub fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let count = u16::from_be_bytes(body[..2].try_into().expect("2 bytes"));
    let mut rest = &body[2..];
    (0..count)
        .map(|_| {
            let len = i32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            rest = &rest[4..];
            (len >= 0).then(|| {
                let (value, tail) = rest.split_at(len as usize);
                rest = tail;
                String::from_utf8_lossy(value).into_owned()
            })
        })
        .collect()
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
pub fn describe(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => format!("'{}' {:?}", tag as char, error_fields(body)),
        _ => format!("'{}' ({} bytes)", tag.escape_ascii(), body.len()),
    }
}
