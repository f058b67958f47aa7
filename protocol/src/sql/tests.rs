//! Unit tests of the SQL lexer: quoting, comments, dollar quotes, statement splitting.

use super::*;

fn words(text: &str) -> Vec<String> {
    tokens(text.as_bytes())
        .map(|t| match t {
            Token::Word(w) => String::from_utf8_lossy(w).to_lowercase(),
            Token::QuotedIdent(q) => format!("\"{}\"", String::from_utf8_lossy(q)),
            Token::String(s) => format!("str:{}", String::from_utf8_lossy(s)),
            Token::Other(o) => format!("other:{}", String::from_utf8_lossy(o)),
            Token::Punct(p) => format!("punct:{}", char::from(p)),
        })
        .collect()
}

fn split(text: &str) -> Vec<String> {
    statements(text.as_bytes())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[test]
fn words_strings_and_operators() {
    assert_eq!(
        words("SET search_path TO 'a;b', \"My;Schema\""),
        [
            "set",
            "search_path",
            "to",
            "str:'a;b'",
            "punct:,",
            "\"My;Schema\""
        ]
    );
    assert_eq!(
        words("select 1+2>=$1::int"),
        [
            "select", "other:1", "other:+", "other:2", "other:>=", "other:$1", "punct::",
            "punct::", "int"
        ]
    );
}

#[test]
fn comments_are_skipped_and_nest() {
    assert_eq!(
        words("/* a /* b; */ c; */ DISCARD -- ; all\n ALL"),
        ["discard", "all"]
    );
    assert_eq!(words("1--2"), ["other:1"]);
    assert_eq!(words("a*/*x*/b"), ["a", "other:*", "b"]);
}

#[test]
fn quoting_rules() {
    assert_eq!(words("'it''s'"), ["str:'it''s'"]);
    assert_eq!(words(r"E'a\'b' x"), [r"str:E'a\'b'", "x"]);
    // A backslash is ordinary in a standard string.
    assert_eq!(words(r"'a\' x"), [r"str:'a\'", "x"]);
    assert_eq!(words("$$a;'b$$ c"), ["str:$$a;'b$$", "c"]);
    assert_eq!(words("$fn$ $$ ; $fn$ d"), ["str:$fn$ $$ ; $fn$", "d"]);
    // `$` continues an identifier: no dollar quote here.
    assert_eq!(words("a$$b"), ["a$$b"]);
    assert_eq!(words("U&'\\0041' U&\"x\""), ["str:U&'\\0041'", "\"x\""]);
    assert_eq!(
        words("x'1f' b'01' n'n'"),
        ["str:x'1f'", "str:b'01'", "str:n'n'"]
    );
    assert_eq!(words("\"a\"\"b\""), ["\"a\"\"b\""]);
}

#[test]
fn unterminated_quotes_and_comments_run_to_the_end() {
    assert_eq!(split("select 'a; discard all"), ["select 'a; discard all"]);
    assert_eq!(
        split("select $x$ ; discard all"),
        ["select $x$ ; discard all"]
    );
    assert_eq!(split("select 1 /* ; discard all"), ["select 1"]);
    assert_eq!(words("\"unterminated"), ["\"unterminated\""]);
    // Found by the fuzz target: an unterminated U&"…" right at the end.
    assert_eq!(words("$\0\0\0&U&\""), ["other:$", "other:&", "\"\""]);
    assert_eq!(words("U&\"ab"), ["\"ab\""]);
}

#[test]
fn statements_are_split_outside_quotes_and_empty_ones_dropped() {
    assert_eq!(
        split("SELECT ';'; ;; /* only a comment */ ; DISCARD ALL;  -- tail"),
        ["SELECT ';'", "DISCARD ALL"]
    );
    assert_eq!(split("   "), Vec::<String>::new());
    assert_eq!(split("select 1"), ["select 1"]);
    assert_eq!(split("a;b"), ["a", "b"]);
    // Found by the fuzz target: a NUL is no statement.
    assert_eq!(split("\u{1};\0"), ["\u{1}"]);
}

#[test]
fn the_cheap_tests() {
    assert_eq!(first_word(b"  /* hi */ Discard all"), Some(&b"Discard"[..]));
    assert_eq!(first_word(b"(select 1)"), None);
    assert!(!may_have_several_statements(b"select 1;  \n\0"));
    assert!(!may_have_several_statements(b"select 1"));
    assert!(may_have_several_statements(b"select 1; discard all"));
    assert!(may_have_several_statements(b"select ';x'"));
}

#[test]
fn arbitrary_bytes_never_panic_and_tokens_stay_inside_the_text() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let alphabet = b"ab$'\"/*-;\\E U&\n1x";
    for _ in 0..20_000 {
        let len = (state >> 58) as usize;
        let text: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                alphabet[(state % alphabet.len() as u64) as usize]
            })
            .collect();
        for token in tokens(&text) {
            let bytes = match token {
                Token::Word(b) | Token::QuotedIdent(b) | Token::String(b) | Token::Other(b) => b,
                Token::Punct(_) => continue,
            };
            let range = text.as_ptr_range();
            assert!(bytes.is_empty() || range.contains(&bytes.as_ptr()));
        }
        let total: usize = statements(&text).map(<[u8]>::len).sum();
        assert!(total <= text.len());
    }
}
