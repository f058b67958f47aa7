//! What the `backend_stream` and `frontend_stream` targets share: splitting an arbitrary byte
//! stream into messages with a header decoder, the way the relay does, once with the whole
//! stream buffered and once as it arrives in chunks, and checking that both agree.

use bytes::{Buf, BytesMut};
use sluice_protocol::frame::{split_message, Header, HEADER_LEN, MAX_MESSAGE_LEN};
use sluice_protocol::ProtocolError;

/// `frontend_header` or `backend_header`.
pub type HeaderDecoder = fn(&[u8]) -> Result<Option<Header>, ProtocolError>;

/// How a stream ended: on a refused header, or with this many bytes of an incomplete message.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Refused(ProtocolError),
    Incomplete(usize),
}

/// `data[0]` picks the chunk size of the second pass; the rest is the stream. `body_bounds`
/// is the target's own reading of the protocol: the (min, max) body length of a type, which
/// every accepted header must respect.
pub fn check_stream(data: &[u8], header_of: HeaderDecoder, body_bounds: fn(u8) -> (usize, usize)) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let (messages, end) = split_whole(stream, header_of, body_bounds);
    assert_eq!(
        split_in_chunks(stream, usize::from(chunk) + 1, header_of),
        (messages, end)
    );
}

/// Splits `stream` with everything buffered, cross-checking each message with
/// `split_message`, which frames the same way without looking at the type byte.
fn split_whole(
    stream: &[u8],
    header_of: HeaderDecoder,
    body_bounds: fn(u8) -> (usize, usize),
) -> (Vec<(u8, Vec<u8>)>, End) {
    let mut messages = Vec::new();
    let mut rest = stream;
    let mut unchecked = BytesMut::from(stream);
    let end = loop {
        let header = match header_of(rest) {
            Ok(Some(header)) => header,
            Ok(None) => {
                assert!(rest.len() < HEADER_LEN);
                break End::Incomplete(rest.len());
            }
            Err(refused) => break End::Refused(refused),
        };
        let (min, max) = body_bounds(header.tag);
        assert!((min..=max.min(MAX_MESSAGE_LEN)).contains(&header.body_len));
        let split = split_message(&mut unchecked, MAX_MESSAGE_LEN).expect("header was accepted");
        let Some(message) = rest.get(..header.message_len()) else {
            assert_eq!(split, None);
            break End::Incomplete(rest.len());
        };
        let (tag, body) = split.expect("whole message is buffered");
        assert_eq!((tag, &body[..]), (header.tag, &message[HEADER_LEN..]));
        messages.push((tag, body.to_vec()));
        // Every accepted message is at least a header long, so the loop always advances.
        rest = &rest[header.message_len()..];
        assert_eq!(unchecked.len(), rest.len());
    };
    (messages, end)
}

/// Splits `stream` as the relay sees it: appended `chunk` bytes at a time, taking every
/// complete message off the front after each append, until a header is refused.
fn split_in_chunks(
    stream: &[u8],
    chunk: usize,
    header_of: HeaderDecoder,
) -> (Vec<(u8, Vec<u8>)>, End) {
    let mut messages = Vec::new();
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match header_of(&buf) {
                Ok(Some(header)) if buf.len() >= header.message_len() => {
                    let mut message = buf.split_to(header.message_len());
                    message.advance(HEADER_LEN);
                    messages.push((header.tag, message.to_vec()));
                }
                Ok(_) => break,
                Err(refused) => return (messages, End::Refused(refused)),
            }
        }
    }
    (messages, End::Incomplete(buf.len()))
}
