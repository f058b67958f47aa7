//! The SQL lexer on arbitrary bytes: never panics, is linear, every token and statement
//! lies inside the text and in order, and splitting into statements neither loses nor
//! invents a token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::sql::{first_word, may_have_several_statements, statements, tokens, Token};

fn bytes<'a>(token: &Token<'a>) -> Option<&'a [u8]> {
    match token {
        Token::Word(b) | Token::QuotedIdent(b) | Token::String(b) | Token::Other(b) => Some(b),
        Token::Punct(_) => None,
    }
}

fuzz_target!(|text: &[u8]| {
    let range = text.as_ptr_range();
    let mut last = text.as_ptr();
    let mut count = 0usize;
    for token in tokens(text) {
        count += 1;
        assert!(count <= text.len(), "more tokens than bytes");
        if let Some(b) = bytes(&token) {
            if !b.is_empty() {
                assert!(range.contains(&b.as_ptr()), "a token outside the text");
                assert!(b.as_ptr() >= last, "tokens out of order");
                last = b.as_ptr();
            }
        }
    }
    let mut in_statements = 0usize;
    let mut previous_end = text.as_ptr();
    for statement in statements(text) {
        assert!(!statement.is_empty());
        assert!(range.contains(&statement.as_ptr()));
        assert!(statement.as_ptr() >= previous_end, "statements overlap");
        previous_end = statement.as_ptr_range().end;
        in_statements += tokens(statement).count();
    }
    let semicolons = tokens(text).filter(|t| *t == Token::Punct(b';')).count();
    // A statement lexed alone gives the tokens it had in the whole text.
    assert_eq!(in_statements + semicolons, count, "statements lost or gained tokens");
    if let Some(word) = first_word(text) {
        assert!(tokens(text).next() == Some(Token::Word(word)));
    }
    if statements(text).count() > 1 {
        assert!(may_have_several_statements(text), "the cheap test missed a second statement");
    }
});
