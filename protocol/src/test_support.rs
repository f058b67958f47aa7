//! Helpers shared by the unit tests of several modules.

/// The body of the single typed message in `message`, after checking its length field.
pub(crate) fn frame_body(message: &[u8]) -> &[u8] {
    let len = i32::from_be_bytes(message[1..5].try_into().unwrap());
    assert_eq!(
        usize::try_from(len).unwrap(),
        message.len() - 1,
        "length field"
    );
    &message[5..]
}

/// Every strict prefix of `body` must be refused by `parse` (and none may panic).
pub(crate) fn assert_truncations_rejected<'a, T: std::fmt::Debug, E>(
    body: &'a [u8],
    parse: impl Fn(&'a [u8]) -> Result<T, E>,
) {
    for end in 0..body.len() {
        if let Ok(parsed) = parse(&body[..end]) {
            panic!("prefix of {end} bytes parsed as {parsed:?}");
        }
    }
}
