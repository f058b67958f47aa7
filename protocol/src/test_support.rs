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

/// xorshift64: a deterministic pseudo-random source, so a failing random test reproduces.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform enough below `n` for tests; `n` must not be 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// One to four random edits: overwrite, insert or delete a byte, or truncate.
pub(crate) fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(4) {
            0 if at < bytes.len() => bytes[at] = rng.byte(),
            1 => bytes.insert(at, rng.byte()),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}
