//! Messages a server sends: sluice encodes them toward clients (as the server they see) and
//! decodes the few it must understand from real servers during login.
//!
//! Decoders are zero-copy views over a message body as returned by
//! [`crate::frame::split_message`]; they never panic and reject trailing bytes. Encoders append
//! whole messages, length included, to a `BytesMut`.
//! See <https://www.postgresql.org/docs/current/protocol-message-formats.html> and
//! <https://www.postgresql.org/docs/current/protocol-error-fields.html>.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use crate::codec::{put_cstr, BodyReader};
use crate::frame::write_message;
use crate::startup::{CancelKey, PROTOCOL_3_0};
use crate::ProtocolError;

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// An Authentication message ('R'): what the server asks of the client next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// A method sluice does not implement (Kerberos, GSSAPI, SSPI), by its code.
    Unsupported(i32),
}

/// Parses the body of an Authentication message.
pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest<'_>, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let request = match reader.i32()? {
        AUTH_OK => AuthRequest::Ok,
        AUTH_CLEARTEXT => AuthRequest::Cleartext,
        AUTH_MD5 => {
            let salt = reader.array()?;
            AuthRequest::Md5 { salt }
        }
        AUTH_SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let mechanism = reader.cstr()?;
                if mechanism.is_empty() {
                    break;
                }
                mechanisms.push(mechanism);
            }
            AuthRequest::Sasl { mechanisms }
        }
        AUTH_SASL_CONTINUE => return Ok(AuthRequest::SaslContinue(reader.rest())),
        AUTH_SASL_FINAL => return Ok(AuthRequest::SaslFinal(reader.rest())),
        code => return Ok(AuthRequest::Unsupported(code)),
    };
    reader.finish()?;
    Ok(request)
}

/// Parses a ParameterStatus body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut reader = BodyReader::new(body);
    let name = reader.cstr()?;
    let value = reader.cstr()?;
    reader.finish()?;
    Ok((name, value))
}

/// Parses a protocol 3.0 BackendKeyData body.
pub fn parse_backend_key_data(body: &[u8]) -> Result<CancelKey, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let pid = reader.i32()?;
    let secret = reader.i32()?;
    reader.finish()?;
    Ok(CancelKey { pid, secret })
}

/// The fields of an ErrorResponse or NoticeResponse that sluice logs and relays. Text that is
/// not UTF-8 (a server writing in another encoding) is shown lossily rather than dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// The non-localized severity (`V`) when sent, else the localized one (`S`).
    pub severity: Cow<'a, str>,
    /// SQLSTATE (`C`).
    pub code: Cow<'a, str>,
    /// Primary message (`M`).
    pub message: Cow<'a, str>,
}

/// Parses an ErrorResponse or NoticeResponse body. Missing fields are empty strings.
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields<'_>, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let mut localized_severity = None;
    let mut severity = None;
    let mut code = None;
    let mut message = None;
    loop {
        let [field] = reader.array()?;
        if field == 0 {
            break;
        }
        let value = Some(String::from_utf8_lossy(reader.cstr_bytes()?));
        match field {
            b'S' => localized_severity = value,
            b'V' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    reader.finish()?;
    Ok(ErrorFields {
        severity: severity.or(localized_severity).unwrap_or_default(),
        code: code.unwrap_or_default(),
        message: message.unwrap_or_default(),
    })
}

/// A NotificationResponse: the notifying backend's pid, the channel and the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Notification<'a> {
    pub pid: i32,
    pub channel: &'a str,
    pub payload: &'a str,
}

/// Parses the body of a NotificationResponse.
pub fn parse_notification(body: &[u8]) -> Result<Notification<'_>, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let pid = reader.i32()?;
    let channel = reader.cstr()?;
    let payload = reader.cstr()?;
    reader.finish()?;
    Ok(Notification {
        pid,
        channel,
        payload,
    })
}

/// Appends an ErrorResponse with severity (`S` and `V`), SQLSTATE (`C`) and message (`M`).
pub fn encode_error(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    encode_error_fields(buf, b'E', severity, code, message);
}

/// Appends a NoticeResponse; fields as in [`encode_error`].
pub fn encode_notice(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    encode_error_fields(buf, b'N', severity, code, message);
}

fn encode_error_fields(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    write_message(buf, tag, |body| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            body.put_u8(field);
            put_cstr(body, value.as_bytes());
        }
        body.put_u8(0);
    });
}

fn encode_auth(buf: &mut BytesMut, code: i32, write_rest: impl FnOnce(&mut BytesMut)) {
    write_message(buf, b'R', |body| {
        body.put_i32(code);
        write_rest(body);
    });
}

/// Appends AuthenticationOk.
pub fn encode_auth_ok(buf: &mut BytesMut) {
    encode_auth(buf, AUTH_OK, |_| {});
}

/// Appends AuthenticationCleartextPassword.
pub fn encode_auth_cleartext(buf: &mut BytesMut) {
    encode_auth(buf, AUTH_CLEARTEXT, |_| {});
}

/// Appends AuthenticationMD5Password with its 4-byte salt.
pub fn encode_auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    encode_auth(buf, AUTH_MD5, |body| body.put_slice(&salt));
}

/// Appends AuthenticationSASL offering `mechanisms` in order of preference.
pub fn encode_auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    encode_auth(buf, AUTH_SASL, |body| {
        for mechanism in mechanisms {
            put_cstr(body, mechanism.as_bytes());
        }
        body.put_u8(0);
    });
}

/// Appends AuthenticationSASLContinue carrying a server-first-message.
pub fn encode_auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    encode_auth(buf, AUTH_SASL_CONTINUE, |body| body.put_slice(data));
}

/// Appends AuthenticationSASLFinal carrying a server-final-message.
pub fn encode_auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    encode_auth(buf, AUTH_SASL_FINAL, |body| body.put_slice(data));
}

/// Appends ParameterStatus.
pub fn encode_parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    write_message(buf, b'S', |body| {
        put_cstr(body, name.as_bytes());
        put_cstr(body, value.as_bytes());
    });
}

/// Appends a protocol 3.0 BackendKeyData.
pub fn encode_backend_key_data(buf: &mut BytesMut, key: CancelKey) {
    write_message(buf, b'K', |body| {
        body.put_i32(key.pid);
        body.put_i32(key.secret);
    });
}

/// Appends ReadyForQuery with a transaction status: `b'I'` idle, `b'T'` in a transaction,
/// `b'E'` in a failed transaction.
pub fn encode_ready_for_query(buf: &mut BytesMut, status: u8) {
    write_message(buf, b'Z', |body| body.put_u8(status));
}

/// Appends NegotiateProtocolVersion: the newest 3.x minor version supported and the
/// `_pq_.` options not recognised.
///
/// The first field is written as the full version number `3 << 16 | newest_minor`, as
/// PostgreSQL sends it and libpq reads it: the documentation calls it the "minor version",
/// but libpq rejects a value below 3.0 as a downgrade to a pre-3.0 protocol. Only the low 16
/// bits of `newest_minor` are used, so passing a full version number works too.
pub fn encode_negotiate_protocol_version(
    buf: &mut BytesMut,
    newest_minor: u32,
    unsupported: &[&str],
) {
    let count = unsupported.len().min(i32::MAX as usize);
    write_message(buf, b'v', |body| {
        body.put_u32(PROTOCOL_3_0 | (newest_minor & 0xffff));
        body.put_i32(count as i32);
        for option in &unsupported[..count] {
            put_cstr(body, option.as_bytes());
        }
    });
}

/// Type OID of `text`, the type of every column sluice describes itself.
const TEXT_OID: i32 = 25;

/// Largest column count an Int16 field carries; PostgreSQL itself stops at 1,664 columns.
const MAX_COLUMNS: usize = i16::MAX as usize;

/// Appends a RowDescription of text-format `text` columns that belong to no table: table
/// OID 0, attribute number 0, type OID 25, type size -1, type modifier -1, format 0. Columns
/// past the 32,767 an Int16 count can carry are left out.
pub fn encode_row_description(buf: &mut BytesMut, columns: &[&str]) {
    let columns = &columns[..columns.len().min(MAX_COLUMNS)];
    write_message(buf, b'T', |body| {
        body.put_i16(columns.len() as i16);
        for name in columns {
            put_cstr(body, name.as_bytes());
            body.put_i32(0); // table OID
            body.put_i16(0); // attribute number
            body.put_i32(TEXT_OID);
            body.put_i16(-1); // type size: variable
            body.put_i32(-1); // type modifier: none
            body.put_i16(0); // format: text
        }
    });
}

/// Appends a DataRow of text values; `None` is NULL (length -1). Values past the 32,767 an
/// Int16 count can carry are left out, matching [`encode_row_description`].
///
/// # Panics
/// As [`write_message`]: if the row exceeds the protocol's 2 GiB length field.
pub fn encode_data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    let values = &values[..values.len().min(MAX_COLUMNS)];
    write_message(buf, b'D', |body| {
        body.put_i16(values.len() as i16);
        for value in values {
            match value {
                None => body.put_i32(-1),
                Some(text) => {
                    let len = i32::try_from(text.len())
                        .expect("column value exceeds the protocol's 2 GiB length field");
                    body.put_i32(len);
                    body.put_slice(text.as_bytes());
                }
            }
        }
    });
}

/// Decodes a DataRow ('D') from a server: each column's value, `None` for NULL. The column
/// count is checked against the body's length before the list is allocated.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut reader = BodyReader::new(body);
    let count = usize::try_from(reader.i16()?)
        .map_err(|_| ProtocolError::Malformed("negative DataRow column count"))?;
    // Every column takes at least its 4-byte length.
    if count > reader.remaining() / 4 {
        return Err(ProtocolError::Malformed(
            "DataRow column count exceeds its body",
        ));
    }
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        let value = match reader.i32()? {
            -1 => None,
            len => {
                let len = usize::try_from(len)
                    .map_err(|_| ProtocolError::Malformed("negative DataRow value length"))?;
                Some(reader.bytes(len)?)
            }
        };
        values.push(value);
    }
    reader.finish()?;
    Ok(values)
}

/// Appends CommandComplete with its command tag, e.g. `"SHOW"` or `"SELECT 3"`.
pub fn encode_command_complete(buf: &mut BytesMut, tag: &str) {
    write_message(buf, b'C', |body| put_cstr(body, tag.as_bytes()));
}

/// Appends EmptyQueryResponse, the reply to a Query whose string held no statement.
pub fn encode_empty_query_response(buf: &mut BytesMut) {
    write_message(buf, b'I', |_| {});
}

#[cfg(test)]
mod tests;
