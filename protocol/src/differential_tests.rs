//! Differential tests against pgwire's `messages` module, an implementation of the same
//! message formats written by other people: messages encoded by one side must decode to the
//! same fields on the other, in both directions, and the same arbitrary bodies must get the
//! same verdict (accepted or refused) from both decoders, except where a difference is
//! deliberate. Each deliberate difference is asserted by a check of its own reason, so an
//! unexplained disagreement fails.
//!
//! How pgwire's verdict is read: its body decoders take the whole buffer rather than the
//! declared length and index past the end of a short body (`Buf::get_*` panics), so a
//! message counts as accepted by pgwire only when its decoder returns it without panicking,
//! reads exactly the message, and the length field says so.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use bytes::{Bytes, BytesMut};
use pgwire::messages::cancel::CancelRequest as PgCancelRequest;
use pgwire::messages::data::DataRow as PgDataRow;
use pgwire::messages::extendedquery::{
    Bind as PgBind, Close as PgClose, Describe as PgDescribe, Execute as PgExecute,
    Parse as PgParse,
};
use pgwire::messages::response::{
    ErrorResponse as PgErrorResponse, NoticeResponse as PgNoticeResponse,
    ReadyForQuery as PgReadyForQuery, TransactionStatus,
};
use pgwire::messages::simplequery::Query as PgQuery;
use pgwire::messages::startup::{
    Authentication as PgAuthentication, BackendKeyData as PgBackendKeyData,
    GssEncRequest as PgGssEncRequest, ParameterStatus as PgParameterStatus, Password as PgPassword,
    SASLInitialResponse as PgSaslInitialResponse, SASLResponse as PgSaslResponse, SecretKey,
    SslRequest as PgSslRequest, Startup as PgStartup,
};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};

use crate::backend::{self, AuthRequest, ErrorFields};
use crate::extended::{self, Target};
use crate::frame::{backend_header, frontend_header, Header};
use crate::frontend;
use crate::startup::{self, CancelKey, InitialPacket};
use crate::test_support::{mutate, Rng};
use crate::ProtocolError;

// ---------------------------------------------------------------------------------------
// Driving pgwire.

thread_local! {
    /// Set while a pgwire decoder runs, whose panics on short input are expected.
    static PANIC_EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `decode`, turning a panic into `None` without printing it (the default hook still
/// reports every other panic, from this thread or another test's).
fn without_panicking<T>(decode: impl FnOnce() -> T) -> Option<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let default_hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !PANIC_EXPECTED.with(Cell::get) {
                default_hook(info);
            }
        }));
    });
    PANIC_EXPECTED.with(|expected| expected.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(decode));
    PANIC_EXPECTED.with(|expected| expected.set(false));
    result.ok()
}

/// pgwire's reading of one whole message, or `None` if it refuses it (see the module doc).
/// pgwire's body decoders read on past the declared length when the buffer holds more, so
/// the length field must also cover exactly the bytes it read.
fn pg_decode<M: Message>(message: &[u8]) -> Option<M> {
    let length_at = usize::from(M::message_type().is_some());
    let length_field = message.get(length_at..length_at + 4)?;
    let declared = i32::from_be_bytes(length_field.try_into().unwrap());
    if usize::try_from(declared).ok()? + length_at != message.len() {
        return None;
    }
    let mut buf = BytesMut::from(message);
    let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let decoded = without_panicking(|| M::decode(&mut buf, &ctx))?.ok()??;
    buf.is_empty().then_some(decoded)
}

fn pg_encode(message: &impl Message) -> BytesMut {
    let mut buf = BytesMut::new();
    message
        .encode(&mut buf)
        .expect("pgwire encodes the message");
    buf
}

/// A typed message around `body`, with a correct length field.
fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![tag];
    message.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// The body of the one message in `message`, after this crate's header check accepted it as
/// `tag` with exactly the message's length.
fn checked_body(
    message: &[u8],
    header_of: fn(&[u8]) -> Result<Option<Header>, ProtocolError>,
    tag: u8,
) -> &[u8] {
    let header = header_of(message)
        .expect("header accepted")
        .expect("header complete");
    assert_eq!((header.tag, header.message_len()), (tag, message.len()));
    &message[5..]
}

/// pgwire's name fields are `None` for the empty (unnamed) name.
fn pg_name(name: &[u8]) -> Option<String> {
    (!name.is_empty()).then(|| lossy(name))
}

fn lossy(text: &[u8]) -> String {
    String::from_utf8_lossy(text).into_owned()
}

// ---------------------------------------------------------------------------------------
// Random field values.

/// Letters, digits, punctuation and multi-byte characters; never NUL, which no protocol
/// String can carry.
fn random_text(rng: &mut Rng, max_len: usize) -> String {
    const POOL: &[&str] = &[
        "a", "b", "z", "A", "Q", "0", "7", " ", "_", "-", "=", ",", "$", "'", "\"", "é", "ß", "日",
        "🦀", "\n",
    ];
    (0..rng.below(max_len + 1))
        .map(|_| POOL[rng.below(POOL.len())])
        .collect()
}

fn random_bytes(rng: &mut Rng, max_len: usize) -> Vec<u8> {
    (0..rng.below(max_len + 1)).map(|_| rng.byte()).collect()
}

fn random_i32(rng: &mut Rng) -> i32 {
    rng.next() as i32
}

/// Column or parameter values: NULLs, empty values and text.
fn random_values(rng: &mut Rng) -> Vec<Option<String>> {
    (0..rng.below(6))
        .map(|_| (rng.below(4) != 0).then(|| random_text(rng, 12)))
        .collect()
}

/// The column part of a DataRow or the parameter part of a Bind after its count: each
/// value's Int32 length (-1 for NULL) and bytes. Written here, independently of both sides.
fn length_prefixed_values<V: AsRef<[u8]>>(values: &[Option<V>]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        match value {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(value) => {
                out.extend_from_slice(&(value.as_ref().len() as i32).to_be_bytes());
                out.extend_from_slice(value.as_ref());
            }
        }
    }
    out
}

/// Reads `count` length-prefixed values that must fill `data` exactly: the test's own reading
/// of the DataRow layout, used on the column bytes pgwire leaves undecoded.
fn read_values(data: &[u8], count: i16) -> Option<Vec<Option<&[u8]>>> {
    let mut rest = data;
    let mut values = Vec::new();
    for _ in 0..usize::try_from(count).ok()? {
        let (len, after) = rest.split_first_chunk::<4>()?;
        rest = after;
        match i32::from_be_bytes(*len) {
            -1 => values.push(None),
            len => {
                let len = usize::try_from(len).ok()?;
                let (value, after) = rest.split_at_checked(len)?;
                values.push(Some(value));
                rest = after;
            }
        }
    }
    rest.is_empty().then_some(values)
}

// ---------------------------------------------------------------------------------------
// Encoded by one side, decoded by the other.

#[test]
fn extended_query_messages_agree_both_ways() {
    let mut rng = Rng(0xd1ff_0001_2345_6789);
    for _ in 0..300 {
        let statement = random_text(&mut rng, 10);
        let portal = random_text(&mut rng, 10);
        let query = random_text(&mut rng, 40);
        let type_oids: Vec<u32> = (0..rng.below(4)).map(|_| rng.next() as u32).collect();
        let mut parse_rest = query.as_bytes().to_vec();
        parse_rest.push(0);
        parse_rest.extend_from_slice(&(type_oids.len() as u16).to_be_bytes());
        for oid in &type_oids {
            parse_rest.extend_from_slice(&oid.to_be_bytes());
        }

        // Parse, sluice to pgwire: also the text-only form sluice originates.
        let mut buf = BytesMut::new();
        extended::encode_parse(&mut buf, statement.as_bytes(), &parse_rest);
        let parse: PgParse = pg_decode(&buf).expect("pgwire reads sluice's Parse");
        assert_eq!(parse.name, pg_name(statement.as_bytes()));
        assert_eq!(
            (parse.query.as_str(), &parse.type_oids),
            (query.as_str(), &type_oids)
        );
        buf.clear();
        extended::encode_parse_query(&mut buf, statement.as_bytes(), &query);
        let parse: PgParse = pg_decode(&buf).expect("pgwire reads sluice's Parse");
        assert_eq!((parse.query, parse.type_oids), (query.clone(), vec![]));

        // Parse, pgwire to sluice.
        let pg_parse = PgParse::new(pg_name(statement.as_bytes()), query.clone(), type_oids);
        let encoded = pg_encode(&pg_parse);
        let parse = extended::parse_parse(checked_body(&encoded, frontend_header, b'P')).unwrap();
        assert_eq!(
            (parse.statement, parse.rest),
            (statement.as_bytes(), &parse_rest[..])
        );

        // Bind, sluice to pgwire.
        let values = random_values(&mut rng);
        let params: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        buf.clear();
        extended::encode_bind_text(&mut buf, portal.as_bytes(), statement.as_bytes(), &params);
        let bind: PgBind = pg_decode(&buf).expect("pgwire reads sluice's Bind");
        assert_eq!(bind.portal_name, pg_name(portal.as_bytes()));
        assert_eq!(bind.statement_name, pg_name(statement.as_bytes()));
        let pg_values: Vec<Option<&[u8]>> = bind.parameters.iter().map(Option::as_deref).collect();
        let expected: Vec<Option<&[u8]>> = params.iter().map(|p| p.map(str::as_bytes)).collect();
        assert_eq!(pg_values, expected);
        assert!(bind.parameter_format_codes.is_empty());
        assert!(bind.result_column_format_codes.is_empty());

        // Bind, pgwire to sluice, with binary formats and non-UTF-8 values.
        let formats: Vec<i16> = (0..rng.below(3)).map(|_| rng.below(2) as i16).collect();
        let raw: Vec<Option<Bytes>> = (0..rng.below(4))
            .map(|_| (rng.below(3) != 0).then(|| Bytes::from(random_bytes(&mut rng, 8))))
            .collect();
        let pg_bind = PgBind::new(
            pg_name(portal.as_bytes()),
            pg_name(statement.as_bytes()),
            formats.clone(),
            raw.clone(),
            formats.clone(),
        );
        let encoded = pg_encode(&pg_bind);
        let bind = extended::parse_bind(checked_body(&encoded, frontend_header, b'B')).unwrap();
        assert_eq!(
            (bind.portal, bind.statement),
            (portal.as_bytes(), statement.as_bytes())
        );
        let mut expected_rest = (formats.len() as u16).to_be_bytes().to_vec();
        formats
            .iter()
            .for_each(|f| expected_rest.extend(f.to_be_bytes()));
        expected_rest.extend((raw.len() as u16).to_be_bytes());
        expected_rest.extend(length_prefixed_values(&raw));
        expected_rest.extend((formats.len() as u16).to_be_bytes());
        formats
            .iter()
            .for_each(|f| expected_rest.extend(f.to_be_bytes()));
        assert_eq!(bind.rest, expected_rest);

        // Describe and Close, both ways.
        let kind = [b'S', b'P'][rng.below(2)];
        let name = if kind == b'S' { &statement } else { &portal };
        for tag in [b'D', b'C'] {
            buf.clear();
            extended::encode_target(&mut buf, tag, kind, name.as_bytes());
            let (pg_kind, pg_target_name, encoded) = if tag == b'D' {
                let describe: PgDescribe = pg_decode(&buf).expect("pgwire reads Describe");
                let again = PgDescribe::new(kind, pg_name(name.as_bytes()));
                (describe.target_type, describe.name, pg_encode(&again))
            } else {
                let close: PgClose = pg_decode(&buf).expect("pgwire reads Close");
                let again = PgClose::new(kind, pg_name(name.as_bytes()));
                (close.target_type, close.name, pg_encode(&again))
            };
            assert_eq!((pg_kind, pg_target_name), (kind, pg_name(name.as_bytes())));
            let target = extended::parse_target(checked_body(&encoded, frontend_header, tag));
            let expected = Target {
                kind,
                name: name.as_bytes(),
            };
            assert_eq!(target, Ok(expected));
        }

        // Execute, sluice to pgwire (sluice has no Execute decoder: it forwards them).
        let max_rows = random_i32(&mut rng);
        buf.clear();
        extended::encode_execute(&mut buf, portal.as_bytes(), max_rows);
        let execute: PgExecute = pg_decode(&buf).expect("pgwire reads Execute");
        assert_eq!(
            (execute.name, execute.max_rows),
            (pg_name(portal.as_bytes()), max_rows)
        );

        // Query: sluice only encodes Queries (the relay forwards clients' untouched), so the
        // other direction checks its framing and the body's one String.
        buf.clear();
        frontend::encode_query(&mut buf, &query);
        let pg_query: PgQuery = pg_decode(&buf).expect("pgwire reads Query");
        assert_eq!(pg_query.query, query);
        let encoded = pg_encode(&PgQuery::new(query.clone()));
        let body = checked_body(&encoded, frontend_header, b'Q');
        assert_eq!(body, [query.as_bytes(), b"\0"].concat());
    }
}

/// sluice's reading of ErrorResponse fields, from pgwire's list: the last of each kind wins,
/// and the severity is the non-localized `V` when present.
fn expected_error_fields(fields: &[(u8, String)]) -> ErrorFields<'static> {
    let last = |wanted: u8| {
        fields
            .iter()
            .rev()
            .find(|(kind, _)| *kind == wanted)
            .map(|(_, value)| value.clone())
    };
    ErrorFields {
        severity: last(b'V').or_else(|| last(b'S')).unwrap_or_default().into(),
        code: last(b'C').unwrap_or_default().into(),
        message: last(b'M').unwrap_or_default().into(),
    }
}

#[test]
fn backend_messages_agree_both_ways() {
    let mut rng = Rng(0xd1ff_0002_2345_6789);
    let mut buf = BytesMut::new();
    for _ in 0..300 {
        // ParameterStatus.
        let (name, value) = (random_text(&mut rng, 12), random_text(&mut rng, 20));
        buf.clear();
        backend::encode_parameter_status(&mut buf, &name, &value);
        let status: PgParameterStatus = pg_decode(&buf).expect("pgwire reads ParameterStatus");
        assert_eq!((&status.name, &status.value), (&name, &value));
        let encoded = pg_encode(&PgParameterStatus::new(name.clone(), value.clone()));
        let body = checked_body(&encoded, backend_header, b'S');
        assert_eq!(
            backend::parse_parameter_status(body),
            Ok((name.as_str(), value.as_str()))
        );

        // BackendKeyData.
        let key = CancelKey {
            pid: random_i32(&mut rng),
            secret: random_i32(&mut rng),
        };
        buf.clear();
        backend::encode_backend_key_data(&mut buf, key);
        let key_data: PgBackendKeyData = pg_decode(&buf).expect("pgwire reads BackendKeyData");
        assert_eq!(key_data.pid, key.pid);
        assert_eq!(key_data.secret_key, SecretKey::I32(key.secret));
        let encoded = pg_encode(&PgBackendKeyData::new(key.pid, SecretKey::I32(key.secret)));
        let body = checked_body(&encoded, backend_header, b'K');
        assert_eq!(backend::parse_backend_key_data(body), Ok(key));

        // ErrorResponse and NoticeResponse, sluice to pgwire: severity twice, code, message.
        let severity = ["ERROR", "FATAL", "WARNING", "NOTICE"][rng.below(4)];
        let (code, message) = (random_text(&mut rng, 5), random_text(&mut rng, 30));
        let written = vec![
            (b'S', severity.to_owned()),
            (b'V', severity.to_owned()),
            (b'C', code.clone()),
            (b'M', message.clone()),
        ];
        buf.clear();
        backend::encode_error(&mut buf, severity, &code, &message);
        let error: PgErrorResponse = pg_decode(&buf).expect("pgwire reads ErrorResponse");
        assert_eq!(error.fields, written);
        buf.clear();
        backend::encode_notice(&mut buf, severity, &code, &message);
        let notice: PgNoticeResponse = pg_decode(&buf).expect("pgwire reads NoticeResponse");
        assert_eq!(notice.fields, written);

        // ErrorResponse and NoticeResponse, pgwire to sluice: any fields in any order, some
        // missing, some repeated, localized severity only.
        let fields: Vec<(u8, String)> = (0..rng.below(7))
            .map(|_| {
                let kind = b"SVCMDHPFLR"[rng.below(10)];
                (kind, random_text(&mut rng, 10))
            })
            .collect();
        let expected = expected_error_fields(&fields);
        let encoded = pg_encode(&PgErrorResponse::new(fields.clone()));
        let body = checked_body(&encoded, backend_header, b'E');
        assert_eq!(backend::parse_error_fields(body), Ok(expected.clone()));
        let encoded = pg_encode(&PgNoticeResponse::new(fields));
        let body = checked_body(&encoded, backend_header, b'N');
        assert_eq!(backend::parse_error_fields(body), Ok(expected));

        // DataRow: pgwire keeps the columns as raw bytes, read here with `read_values`.
        let values = random_values(&mut rng);
        let texts: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        buf.clear();
        backend::encode_data_row(&mut buf, &texts);
        let row: PgDataRow = pg_decode(&buf).expect("pgwire reads DataRow");
        assert_eq!(usize::try_from(row.field_count), Ok(values.len()));
        assert_eq!(&row.data[..], length_prefixed_values(&values));
        let raw: Vec<Option<Vec<u8>>> = (0..rng.below(5))
            .map(|_| (rng.below(4) != 0).then(|| random_bytes(&mut rng, 10)))
            .collect();
        let data = BytesMut::from(&length_prefixed_values(&raw)[..]);
        let encoded = pg_encode(&PgDataRow::new(data, raw.len() as i16));
        let body = checked_body(&encoded, backend_header, b'D');
        let expected: Vec<Option<&[u8]>> = raw.iter().map(Option::as_deref).collect();
        assert_eq!(backend::parse_data_row(body), Ok(expected));
    }

    // ReadyForQuery: sluice only encodes it; the other direction checks framing and status.
    for (status, pg_status) in [
        (b'I', TransactionStatus::Idle),
        (b'T', TransactionStatus::Transaction),
        (b'E', TransactionStatus::Error),
    ] {
        buf.clear();
        backend::encode_ready_for_query(&mut buf, status);
        let ready: PgReadyForQuery = pg_decode(&buf).expect("pgwire reads ReadyForQuery");
        assert_eq!(ready.status, pg_status);
        let encoded = pg_encode(&PgReadyForQuery::new(pg_status));
        assert_eq!(checked_body(&encoded, backend_header, b'Z'), [status]);
    }
}

#[test]
fn startup_packets_agree_both_ways() {
    let mut rng = Rng(0xd1ff_0003_2345_6789);
    let mut buf = BytesMut::new();
    for _ in 0..300 {
        // Unique names, a non-empty user (sluice requires one), values of any text.
        let mut params = BTreeMap::new();
        params.insert("user".to_owned(), format!("u{}", random_text(&mut rng, 8)));
        for _ in 0..rng.below(5) {
            let name = [
                "database",
                "options",
                "application_name",
                "_pq_.x",
                "DateStyle",
            ][rng.below(5)];
            params.insert(name.to_owned(), random_text(&mut rng, 12));
        }
        if rng.below(4) == 0 {
            params.insert(random_text(&mut rng, 6) + "x", random_text(&mut rng, 6));
        }

        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        buf.clear();
        startup::encode_startup(&mut buf, &pairs);
        let pg_startup: PgStartup = pg_decode(&buf).expect("pgwire reads StartupMessage");
        assert_eq!(
            (
                pg_startup.protocol_number_major,
                pg_startup.protocol_number_minor
            ),
            (3, 0)
        );
        assert_eq!(pg_startup.parameters, params);

        let mut pg_startup = PgStartup::new();
        pg_startup.protocol_number_minor = [0, 2][rng.below(2)];
        pg_startup.parameters = params.clone();
        let encoded = pg_encode(&pg_startup);
        let Ok(Some((InitialPacket::Startup(ours), used))) =
            startup::parse_initial_packet(&encoded)
        else {
            panic!("sluice refused pgwire's StartupMessage {params:?}");
        };
        assert_eq!(used, encoded.len());
        assert_eq!(ours.protocol_minor, pg_startup.protocol_number_minor);
        assert_eq!(ours.params, Vec::from_iter(params));

        let key = CancelKey {
            pid: random_i32(&mut rng),
            secret: random_i32(&mut rng),
        };
        buf.clear();
        startup::encode_cancel_request(&mut buf, key);
        let cancel: PgCancelRequest = pg_decode(&buf).expect("pgwire reads CancelRequest");
        assert_eq!(
            (cancel.pid, cancel.secret_key),
            (key.pid, SecretKey::I32(key.secret))
        );
        let encoded = pg_encode(&PgCancelRequest::new(key.pid, SecretKey::I32(key.secret)));
        assert_eq!(
            startup::parse_initial_packet(&encoded),
            Ok(Some((InitialPacket::Cancel(key), 16)))
        );
    }

    buf.clear();
    startup::encode_ssl_request(&mut buf);
    assert!(pg_decode::<PgSslRequest>(&buf).is_some());
    let encoded = pg_encode(&PgSslRequest::new());
    assert_eq!(
        startup::parse_initial_packet(&encoded),
        Ok(Some((InitialPacket::SslRequest, 8)))
    );
    let encoded = pg_encode(&PgGssEncRequest::new());
    assert_eq!(
        startup::parse_initial_packet(&encoded),
        Ok(Some((InitialPacket::GssEncRequest, 8)))
    );
}

fn encoded(encode: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    buf
}

/// The pgwire counterpart of each request sluice's server side sends.
fn pg_auth_request(request: &AuthRequest<'_>) -> PgAuthentication {
    match request {
        AuthRequest::Ok => PgAuthentication::Ok,
        AuthRequest::Cleartext => PgAuthentication::CleartextPassword,
        AuthRequest::Md5 { salt } => PgAuthentication::MD5Password(salt.to_vec()),
        AuthRequest::Sasl { mechanisms } => {
            PgAuthentication::SASL(mechanisms.iter().map(|m| m.to_string()).collect())
        }
        AuthRequest::SaslContinue(data) => PgAuthentication::SASLContinue(data.to_vec().into()),
        AuthRequest::SaslFinal(data) => PgAuthentication::SASLFinal(data.to_vec().into()),
        AuthRequest::Unsupported(2) => PgAuthentication::KerberosV5,
        AuthRequest::Unsupported(code) => panic!("pgwire has no request with code {code}"),
    }
}

#[test]
fn authentication_agrees_both_ways() {
    let mut rng = Rng(0xd1ff_0004_2345_6789);
    let mut buf = BytesMut::new();
    for _ in 0..300 {
        let salt: [u8; 4] = rng.next().to_le_bytes()[..4].try_into().unwrap();
        let mechanisms: Vec<String> = (0..rng.below(3))
            .map(|_| format!("M{}", random_text(&mut rng, 12)))
            .collect();
        let mechanism_refs: Vec<&str> = mechanisms.iter().map(String::as_str).collect();
        let sasl_data = random_bytes(&mut rng, 40);
        let cases = [
            (AuthRequest::Ok, encoded(backend::encode_auth_ok)),
            (
                AuthRequest::Cleartext,
                encoded(backend::encode_auth_cleartext),
            ),
            (
                AuthRequest::Md5 { salt },
                encoded(|buf| backend::encode_auth_md5(buf, salt)),
            ),
            (
                AuthRequest::Sasl {
                    mechanisms: mechanism_refs.clone(),
                },
                encoded(|buf| backend::encode_auth_sasl(buf, &mechanism_refs)),
            ),
            (
                AuthRequest::SaslContinue(&sasl_data),
                encoded(|buf| backend::encode_auth_sasl_continue(buf, &sasl_data)),
            ),
            (
                AuthRequest::SaslFinal(&sasl_data),
                encoded(|buf| backend::encode_auth_sasl_final(buf, &sasl_data)),
            ),
        ];
        for (request, encoded) in cases {
            let expected = pg_auth_request(&request);
            let theirs: PgAuthentication = pg_decode(&encoded).expect("pgwire reads the request");
            assert_eq!(theirs, expected);
            let encoded = pg_encode(&expected);
            let body = checked_body(&encoded, backend_header, b'R');
            assert_eq!(backend::parse_auth_request(body), Ok(request));
        }
        let encoded = pg_encode(&PgAuthentication::KerberosV5);
        let body = checked_body(&encoded, backend_header, b'R');
        assert_eq!(
            backend::parse_auth_request(body),
            Ok(AuthRequest::Unsupported(2))
        );

        // The client's answers: password, SASLInitialResponse, SASLResponse.
        let password = random_text(&mut rng, 20);
        buf.clear();
        frontend::encode_password(&mut buf, password.as_bytes());
        let theirs: PgPassword = pg_decode(&buf).expect("pgwire reads PasswordMessage");
        assert_eq!(theirs.password, password);
        let encoded = pg_encode(&PgPassword::new(password.clone()));
        let body = checked_body(&encoded, frontend_header, b'p');
        assert_eq!(frontend::parse_password(body), Ok(password.as_bytes()));

        let mechanism = "SCRAM-SHA-256";
        buf.clear();
        frontend::encode_sasl_initial_response(&mut buf, mechanism, &sasl_data);
        let theirs: PgSaslInitialResponse = pg_decode(&buf).expect("pgwire reads it");
        assert_eq!(theirs.auth_method, mechanism);
        assert_eq!(theirs.data.as_deref(), Some(&sasl_data[..]));
        let initial =
            PgSaslInitialResponse::new(mechanism.to_owned(), Some(sasl_data.to_vec().into()));
        let encoded = pg_encode(&initial);
        let body = checked_body(&encoded, frontend_header, b'p');
        assert_eq!(
            frontend::parse_sasl_initial_response(body),
            Ok((mechanism, &sasl_data[..]))
        );

        buf.clear();
        frontend::encode_sasl_response(&mut buf, &sasl_data);
        let theirs: PgSaslResponse = pg_decode(&buf).expect("pgwire reads SASLResponse");
        assert_eq!(&theirs.data[..], &sasl_data[..]);
    }
}

// ---------------------------------------------------------------------------------------
// The same arbitrary bytes, both decoders.

/// How the two decoders judged one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Verdict {
    BothAccepted,
    BothRefused,
    /// Allowed only where the module's comments say why sluice is more lenient.
    OnlySluiceAccepted,
    /// Allowed only where the module's comments say why sluice is stricter.
    OnlyPgwireAccepted,
}

fn verdict<S, P>(ours: &Option<S>, theirs: &Option<P>) -> Verdict {
    match (ours.is_some(), theirs.is_some()) {
        (true, true) => Verdict::BothAccepted,
        (false, false) => Verdict::BothRefused,
        (true, false) => Verdict::OnlySluiceAccepted,
        (false, true) => Verdict::OnlyPgwireAccepted,
    }
}

fn nul_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == 0).count()
}

/// pgwire reads a String whose terminator is missing at the end of the body as absent
/// (its `get_cstring` returns `None` without consuming anything), so it accepts a body that
/// stops short of its last String; sluice refuses an unterminated String, as PostgreSQL's
/// `pq_getmsgstring` does. This is behind most "only pgwire accepted" verdicts below.
fn ends_before_its_strings(body: &[u8], strings: usize) -> bool {
    nul_count(body) < strings
}

/// Whether `tail` is a parameter type list: Int16 count, then that many Int32 OIDs.
fn is_type_list(tail: &[u8]) -> bool {
    tail.split_first_chunk::<2>()
        .is_some_and(|(count, oids)| oids.len() == 4 * usize::from(u16::from_be_bytes(*count)))
}

/// Whether `tail` is the part of a Bind after its names, as PostgreSQL lays it out: format
/// codes, parameter values (length -1 for NULL), result format codes, and nothing after.
fn is_bind_tail(tail: &[u8]) -> bool {
    fn skip_formats(rest: &[u8]) -> Option<&[u8]> {
        let (count, rest) = rest.split_first_chunk::<2>()?;
        rest.get(2 * usize::from(u16::from_be_bytes(*count))..)
    }
    fn skip_values(rest: &[u8]) -> Option<&[u8]> {
        let (count, mut rest) = rest.split_first_chunk::<2>()?;
        for _ in 0..u16::from_be_bytes(*count) {
            let (len, after) = rest.split_first_chunk::<4>()?;
            rest = match i32::from_be_bytes(*len) {
                -1 => after,
                len => after.get(usize::try_from(len).ok()?..)?,
            };
        }
        Some(rest)
    }
    skip_formats(tail)
        .and_then(skip_values)
        .and_then(skip_formats)
        .is_some_and(<[u8]>::is_empty)
}

fn compare_parse(body: &[u8]) -> Verdict {
    let ours = extended::parse_parse(body).ok();
    let theirs: Option<PgParse> = pg_decode(&framed(b'P', body));
    let verdict = verdict(&ours, &theirs);
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => {
            assert_eq!(theirs.name, pg_name(ours.statement));
            let nul = ours.rest.iter().position(|&b| b == 0).unwrap();
            assert_eq!(theirs.query, lossy(&ours.rest[..nul]));
            let oids: Vec<u32> = ours.rest[nul + 3..]
                .chunks(4)
                .map(|oid| u32::from_be_bytes(oid.try_into().unwrap()))
                .collect();
            assert_eq!(theirs.type_oids, oids);
        }
        // sluice forwards the query and its parameter types untouched (the server checks
        // them); pgwire decodes the type list, so only pgwire refuses a bad one.
        (Some(ours), None) => {
            let nul = ours.rest.iter().position(|&b| b == 0).unwrap();
            assert!(!is_type_list(&ours.rest[nul + 1..]), "{body:?}");
        }
        (None, Some(_)) => assert!(ends_before_its_strings(body, 2), "{body:?}"),
        (None, None) => {}
    }
    verdict
}

fn compare_bind(body: &[u8]) -> Verdict {
    let ours = extended::parse_bind(body).ok();
    let theirs: Option<PgBind> = pg_decode(&framed(b'B', body));
    let verdict = verdict(&ours, &theirs);
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => {
            assert_eq!(theirs.portal_name, pg_name(ours.portal));
            assert_eq!(theirs.statement_name, pg_name(ours.statement));
        }
        // As for Parse: sluice leaves formats and values to the server.
        (Some(ours), None) => assert!(!is_bind_tail(ours.rest), "{body:?}"),
        (None, Some(_)) => assert!(ends_before_its_strings(body, 2), "{body:?}"),
        (None, None) => {}
    }
    verdict
}

fn compare_target(tag: u8, body: &[u8]) -> Verdict {
    let ours = extended::parse_target(body).ok();
    let message = framed(tag, body);
    let theirs = if tag == b'D' {
        pg_decode::<PgDescribe>(&message).map(|d| (d.target_type, d.name))
    } else {
        pg_decode::<PgClose>(&message).map(|c| (c.target_type, c.name))
    };
    let verdict = verdict(&ours, &theirs);
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => assert_eq!(theirs, (ours.kind, pg_name(ours.name))),
        (Some(_), None) => panic!("only sluice accepted {body:?}"),
        // sluice refuses a target other than 'S' or 'P' as PostgreSQL does; pgwire leaves
        // that to its caller.
        (None, Some((kind, _))) => assert!(
            !matches!(kind, b'S' | b'P') || ends_before_its_strings(body, 1),
            "{body:?}"
        ),
        (None, None) => {}
    }
    verdict
}

fn compare_parameter_status(body: &[u8]) -> Verdict {
    let ours = backend::parse_parameter_status(body).ok();
    let theirs: Option<PgParameterStatus> = pg_decode(&framed(b'S', body));
    let verdict = verdict(&ours, &theirs);
    match (ours, theirs) {
        (Some((name, value)), Some(theirs)) => {
            assert_eq!((theirs.name.as_str(), theirs.value.as_str()), (name, value))
        }
        (Some(_), None) => panic!("only sluice accepted {body:?}"),
        // sluice hands the name and value on as &str, so it refuses text that is not UTF-8;
        // pgwire replaces such bytes.
        (None, Some(_)) => assert!(
            ends_before_its_strings(body, 2) || std::str::from_utf8(body).is_err(),
            "{body:?}"
        ),
        (None, None) => {}
    }
    verdict
}

fn compare_backend_key_data(body: &[u8]) -> Verdict {
    let ours = backend::parse_backend_key_data(body).ok();
    let theirs: Option<PgBackendKeyData> = pg_decode(&framed(b'K', body));
    let verdict = verdict(&ours, &theirs);
    if let (Some(ours), Some(theirs)) = (&ours, &theirs) {
        assert_eq!(
            (theirs.pid, &theirs.secret_key),
            (ours.pid, &SecretKey::I32(ours.secret))
        );
    }
    assert!(
        matches!(verdict, Verdict::BothAccepted | Verdict::BothRefused),
        "{body:?}"
    );
    verdict
}

fn compare_error_fields(tag: u8, body: &[u8]) -> Verdict {
    let ours = backend::parse_error_fields(body).ok();
    let message = framed(tag, body);
    let theirs = if tag == b'E' {
        pg_decode::<PgErrorResponse>(&message).map(|e| e.fields)
    } else {
        pg_decode::<PgNoticeResponse>(&message).map(|n| n.fields)
    };
    let verdict = verdict(&ours, &theirs);
    if let (Some(ours), Some(theirs)) = (&ours, &theirs) {
        assert_eq!(ours, &expected_error_fields(theirs));
    }
    assert!(
        matches!(verdict, Verdict::BothAccepted | Verdict::BothRefused),
        "{body:?}"
    );
    verdict
}

fn compare_data_row(body: &[u8]) -> Verdict {
    let ours = backend::parse_data_row(body).ok();
    let theirs: Option<PgDataRow> = pg_decode(&framed(b'D', body));
    let verdict = verdict(&ours, &theirs);
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => {
            assert_eq!(read_values(&theirs.data, theirs.field_count), Some(ours))
        }
        (Some(_), None) => panic!("only sluice accepted {body:?}"),
        // pgwire keeps the columns as raw bytes; they must fail the test's own reading.
        (None, Some(theirs)) => {
            assert_eq!(
                read_values(&theirs.data, theirs.field_count),
                None,
                "{body:?}"
            )
        }
        (None, None) => {}
    }
    verdict
}

fn compare_auth_request(body: &[u8]) -> Verdict {
    let ours = backend::parse_auth_request(body).ok();
    let theirs: Option<PgAuthentication> = pg_decode(&framed(b'R', body));
    let verdict = verdict(&ours, &theirs);
    let code = body
        .first_chunk::<4>()
        .map(|code| i32::from_be_bytes(*code));
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => assert_eq!(theirs, pg_auth_request(&ours)),
        // sluice reads every other method as Unsupported(code), without its payload, so the
        // caller can name the method it refuses; pgwire errors on codes it does not know.
        (Some(ours), None) => assert!(
            matches!(ours, AuthRequest::Unsupported(_)),
            "only sluice accepted {body:?}"
        ),
        // SASL: sluice returns the mechanisms as &str, so they must be UTF-8, and it requires
        // the list's closing empty String.
        (None, Some(_)) => {
            let mechanisms = &body[4..];
            let closed = mechanisms == b"\0" || mechanisms.ends_with(b"\0\0");
            assert_eq!(code, Some(10), "{body:?}");
            assert!(
                !closed || std::str::from_utf8(mechanisms).is_err(),
                "{body:?}"
            );
        }
        (None, None) => {}
    }
    verdict
}

fn compare_password(body: &[u8]) -> Verdict {
    let ours = frontend::parse_password(body).ok();
    let theirs: Option<PgPassword> = pg_decode(&framed(b'p', body));
    let verdict = verdict(&ours, &theirs);
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => assert_eq!(theirs.password, lossy(ours)),
        (Some(_), None) => panic!("only sluice accepted {body:?}"),
        (None, Some(_)) => assert!(ends_before_its_strings(body, 1), "{body:?}"),
        (None, None) => {}
    }
    verdict
}

fn compare_sasl_initial_response(body: &[u8]) -> Verdict {
    let ours = frontend::parse_sasl_initial_response(body).ok();
    let theirs: Option<PgSaslInitialResponse> = pg_decode(&framed(b'p', body));
    let verdict = verdict(&ours, &theirs);
    match (ours, theirs) {
        (Some((mechanism, data)), Some(theirs)) => {
            assert_eq!(theirs.auth_method, mechanism);
            assert_eq!(theirs.data.as_deref(), Some(data));
        }
        (Some(_), None) => panic!("only sluice accepted {body:?}"),
        // sluice requires the initial response (SCRAM always has one) and a UTF-8
        // mechanism name; pgwire allows length -1 and replaces bad bytes.
        (None, Some(theirs)) => {
            let mechanism = body.split(|&b| b == 0).next().unwrap();
            assert!(
                theirs.data.is_none()
                    || std::str::from_utf8(mechanism).is_err()
                    || ends_before_its_strings(body, 1),
                "{body:?}"
            )
        }
        (None, None) => {}
    }
    verdict
}

/// The startup-phase packet in `packet`, read the way pgwire's frontend decoder picks the
/// type: by the code after the length field.
fn pg_initial_packet(packet: &[u8]) -> Option<InitialPacket> {
    if PgSslRequest::is_ssl_request_packet(packet) {
        return pg_decode::<PgSslRequest>(packet).map(|_| InitialPacket::SslRequest);
    }
    if PgGssEncRequest::is_gss_enc_request_packet(packet) {
        return pg_decode::<PgGssEncRequest>(packet).map(|_| InitialPacket::GssEncRequest);
    }
    if PgCancelRequest::is_cancel_request_packet(packet) {
        let cancel = pg_decode::<PgCancelRequest>(packet)?;
        let secret = cancel.secret_key.as_i32()?;
        return Some(InitialPacket::Cancel(CancelKey {
            pid: cancel.pid,
            secret,
        }));
    }
    let startup = pg_decode::<PgStartup>(packet)?;
    Some(InitialPacket::Startup(startup::StartupMessage {
        protocol_minor: startup.protocol_number_minor,
        params: startup.parameters.into_iter().collect(),
    }))
}

/// Whether `region`, read as name/value String pairs, reaches the empty name that ends the
/// list: the test's own walk of the startup parameter layout.
fn reaches_list_terminator(mut region: &[u8]) -> bool {
    let nul_in = |bytes: &[u8]| bytes.iter().position(|&b| b == 0);
    loop {
        let Some(name_len) = nul_in(region) else {
            return false;
        };
        if name_len == 0 {
            return true;
        }
        let value = &region[name_len + 1..];
        let Some(value_len) = nul_in(value) else {
            return false;
        };
        region = &value[value_len + 1..];
    }
}

fn compare_initial_packet(packet: &[u8]) -> Verdict {
    // A packet counts as accepted when it is read whole: a shorter length field leaves the
    // rest for a next packet, which pgwire's verdict (see `pg_decode`) does not allow either.
    let ours = match startup::parse_initial_packet(packet) {
        Ok(Some((ours, used))) if used == packet.len() => Ok(ours),
        Ok(_) => Err(None),
        Err(refused) => Err(Some(refused)),
    };
    let theirs = pg_initial_packet(packet);
    let verdict = verdict(&ours.as_ref().ok(), &theirs);
    match (ours, theirs) {
        (Ok(InitialPacket::Startup(ours)), Some(InitialPacket::Startup(mut theirs))) => {
            // pgwire keeps the parameters in a map; sluice keeps the client's order.
            let mut in_order = ours.params.clone();
            in_order.sort();
            theirs.params.sort();
            assert_eq!(
                (ours.protocol_minor, in_order),
                (theirs.protocol_minor, theirs.params)
            );
        }
        (Ok(ours), Some(theirs)) => assert_eq!(ours, theirs),
        (Ok(_), None) => panic!("only sluice accepted {packet:?}"),
        // Whole-packet checks sluice makes and pgwire leaves to its caller: startup
        // parameters must be UTF-8, unique and name a user, and end the packet; an SSLRequest
        // or GSSENCRequest must be exactly 8 bytes (pgwire skips 8 bytes whatever the length
        // field says). An unterminated parameter list is the missing-String case again.
        (Err(refused), Some(theirs)) => {
            let deliberate = match (&refused, &theirs) {
                (Some(ProtocolError::Malformed(why)), InitialPacket::Startup(_)) => {
                    why.contains("UTF-8")
                        || why.contains("repeats")
                        || why.contains("\"user\"")
                        || why.contains("after the startup parameters")
                        || (why.contains("not NUL-terminated")
                            && !reaches_list_terminator(&packet[8..]))
                }
                (Some(ProtocolError::BadLength { .. }), InitialPacket::SslRequest)
                | (Some(ProtocolError::BadLength { .. }), InitialPacket::GssEncRequest) => true,
                _ => false,
            };
            assert!(
                deliberate,
                "sluice refused {packet:?} ({refused:?}), pgwire read {theirs:?}"
            );
        }
        (Err(_), None) => {}
    }
    verdict
}

/// A body made to hit the decoders' edges: few distinct bytes, so NULs, 'S'/'P' kinds,
/// -1 lengths and small counts are common.
fn edgy_bytes(rng: &mut Rng) -> Vec<u8> {
    const ALPHABET: &[u8] = &[
        0, 0, 0, 1, 2, 4, 5, 10, 11, 12, b'S', b'P', b'a', 0xc3, 0xff,
    ];
    (0..rng.below(24))
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

/// Valid bodies of every compared type, for mutation.
fn seed_bodies() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let mut push = |encode: &dyn Fn(&mut BytesMut), untyped: bool| {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        seeds.push(buf[if untyped { 0 } else { 5 }..].to_vec());
    };
    push(
        &|b| extended::encode_parse(b, b"s1", b"SELECT $1\0\0\x01\0\0\0\x17"),
        false,
    );
    push(
        &|b| extended::encode_bind_text(b, b"p", b"s1", &[Some("1"), None]),
        false,
    );
    push(&|b| extended::encode_target(b, b'D', b'S', b"s1"), false);
    push(
        &|b| backend::encode_parameter_status(b, "TimeZone", "UTC"),
        false,
    );
    push(
        &|b| backend::encode_backend_key_data(b, CancelKey { pid: 7, secret: 9 }),
        false,
    );
    push(
        &|b| backend::encode_error(b, "ERROR", "42P01", "no such table"),
        false,
    );
    push(
        &|b| backend::encode_data_row(b, &[Some("1"), None, Some("")]),
        false,
    );
    push(&|b| backend::encode_auth_md5(b, *b"salt"), false);
    push(
        &|b| backend::encode_auth_sasl(b, &["SCRAM-SHA-256", "X"]),
        false,
    );
    push(
        &|b| backend::encode_auth_sasl_continue(b, b"r=abc,s=c2FsdA==,i=1"),
        false,
    );
    push(&|b| frontend::encode_password(b, b"md5abc"), false);
    push(
        &|b| frontend::encode_sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=a"),
        false,
    );
    push(
        &|b| startup::encode_startup(b, &[("user", "u"), ("database", "d")]),
        true,
    );
    push(
        &|b| startup::encode_cancel_request(b, CancelKey { pid: 1, secret: 2 }),
        true,
    );
    push(&|b| startup::encode_ssl_request(b), true);
    seeds
}

/// A startup-phase packet: a length field that is usually right, a code that is usually one
/// of the defined ones, then bytes.
fn random_initial_packet(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(2) == 0 {
        let seed = &seeds[rng.below(seeds.len())];
        return mutate(rng, seed);
    }
    let code: u32 = match rng.below(6) {
        0 => 80_877_103,
        1 => 80_877_104,
        2 => 80_877_102,
        3 => 3 << 16 | 2,
        4 => rng.next() as u32,
        _ => 3 << 16,
    };
    let rest = if rng.below(2) == 0 {
        edgy_bytes(rng)
    } else {
        let mut params = b"user\0u\0".to_vec();
        params.extend(edgy_bytes(rng));
        params
    };
    let mut len = (8 + rest.len()) as i32;
    if rng.below(8) == 0 {
        len += rng.below(5) as i32 - 2;
    }
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend(code.to_be_bytes());
    packet.extend(rest);
    packet
}

#[test]
fn random_bodies_get_the_same_verdict() {
    let mut rng = Rng(0xd1ff_0005_2345_6789);
    let seeds = seed_bodies();
    let mut tally: HashMap<&str, HashMap<Verdict, usize>> = HashMap::new();
    for round in 0..25_000 {
        let body = match round % 3 {
            0 => edgy_bytes(&mut rng),
            1 => random_bytes(&mut rng, 24),
            _ => {
                let seed = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, seed)
            }
        };
        let verdicts = [
            ("Parse", compare_parse(&body)),
            ("Bind", compare_bind(&body)),
            ("Describe", compare_target(b'D', &body)),
            ("Close", compare_target(b'C', &body)),
            ("ParameterStatus", compare_parameter_status(&body)),
            ("BackendKeyData", compare_backend_key_data(&body)),
            ("ErrorResponse", compare_error_fields(b'E', &body)),
            ("NoticeResponse", compare_error_fields(b'N', &body)),
            ("DataRow", compare_data_row(&body)),
            ("Authentication", compare_auth_request(&body)),
            ("PasswordMessage", compare_password(&body)),
            ("SASLInitialResponse", compare_sasl_initial_response(&body)),
            (
                "startup packet",
                compare_initial_packet(&random_initial_packet(&mut rng, &seeds)),
            ),
        ];
        for (message, verdict) in verdicts {
            *tally
                .entry(message)
                .or_default()
                .entry(verdict)
                .or_default() += 1;
        }
    }
    // Each type must have been accepted and refused by both, or the inputs missed it.
    for (message, verdicts) in &tally {
        for needed in [Verdict::BothAccepted, Verdict::BothRefused] {
            assert!(
                verdicts.get(&needed).is_some_and(|&n| n >= 20),
                "{message}: too few {needed:?} in {verdicts:?}"
            );
        }
    }
}

/// Crafted cases at the edges where the two differ on purpose or nearly do.
#[test]
fn crafted_edges() {
    // pgwire writes an embedded NUL as it is, which cuts the String short; sluice refuses
    // the result rather than read the rest of the name as the value.
    let encoded = pg_encode(&PgParameterStatus::new("a\0b".into(), "c".into()));
    let body = checked_body(&encoded, backend_header, b'S');
    assert!(backend::parse_parameter_status(body).is_err());
    // sluice cuts at the NUL instead (see put_cstr), so pgwire reads a well-formed message.
    let mut buf = BytesMut::new();
    backend::encode_parameter_status(&mut buf, "a\0b", "c");
    let status: PgParameterStatus = pg_decode(&buf).unwrap();
    assert_eq!((status.name.as_str(), status.value.as_str()), ("a", "c"));

    // Startup packets at the size limit: PostgreSQL and sluice apply MAX_STARTUP_PACKET_LENGTH
    // (10,000) to the bytes after the length field, pgwire to the length field's value, so a
    // packet of 10,001 to 10,004 bytes is accepted only by sluice.
    for packet_len in [10_000, 10_004, 10_005] {
        let padding = "x".repeat(packet_len - 8 - "user\0u\0options\0\0\0".len());
        let mut buf = BytesMut::new();
        startup::encode_startup(&mut buf, &[("user", "u"), ("options", &padding)]);
        assert_eq!(buf.len(), packet_len);
        let ours = startup::parse_initial_packet(&buf);
        let theirs = pg_decode::<PgStartup>(&buf);
        assert_eq!(ours.is_ok(), packet_len <= 10_004, "{packet_len}");
        assert_eq!(theirs.is_some(), packet_len <= 10_000, "{packet_len}");
    }

    // A Bind with no format codes, one NULL and one empty value, as both read it.
    let body = b"\0s\0\0\0\0\x02\xff\xff\xff\xff\0\0\0\0\0\0";
    assert_eq!(compare_bind(body), Verdict::BothAccepted);
    let bind: PgBind = pg_decode(&framed(b'B', body)).unwrap();
    assert_eq!(bind.parameters, vec![None, Some(Bytes::new())]);

    // Only pgwire: a Describe whose name String is missing, a target kind other than S/P.
    assert_eq!(compare_target(b'D', b"S"), Verdict::OnlyPgwireAccepted);
    assert_eq!(compare_target(b'C', b"X\0"), Verdict::OnlyPgwireAccepted);
    // Only sluice: an authentication method pgwire does not know.
    assert_eq!(
        compare_auth_request(b"\0\0\0\x07"),
        Verdict::OnlySluiceAccepted
    );
    // Only pgwire, which does not read the columns: a DataRow value running past the body,
    // and a negative length other than NULL's -1.
    assert_eq!(
        compare_data_row(b"\0\x01\0\0\0\x05abc"),
        Verdict::OnlyPgwireAccepted
    );
    assert_eq!(
        compare_data_row(b"\0\x01\xff\xff\xff\xfe"),
        Verdict::OnlyPgwireAccepted
    );
}
