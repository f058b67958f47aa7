//! Just enough SQL lexing for a pooler: split a query string into its statements and read
//! the first words of each, knowing PostgreSQL's quoting (`'…'`, `E'…'` with backslash
//! escapes, `"…"`, `$tag$…$tag$`), comments (`--` and nested `/* */`) and multi-statement
//! strings. No allocation, no regular expressions, linear in the text; never panics, and
//! unterminated quotes or comments run to the end of the text as PostgreSQL's would.
//!
//! Not a parser: what the statements mean is the caller's business. Assumes
//! `standard_conforming_strings = on` (PostgreSQL's default since 9.1): a backslash in a
//! plain `'…'` string is an ordinary character.
//!
//! See <https://www.postgresql.org/docs/current/sql-syntax-lexical.html>.

/// One token of SQL text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// A keyword or unquoted identifier, as written (compare case-insensitively).
    Word(&'a [u8]),
    /// A double-quoted identifier, without its quotes (`""` still doubled).
    QuotedIdent(&'a [u8]),
    /// A string constant with its prefix and quotes, as written: `'a''b'`, `E'\n'`,
    /// `$$x$$`, `U&'…'`, `B'01'`.
    String(&'a [u8]),
    /// A number, a positional parameter (`$1`) or an operator: one or more characters.
    Other(&'a [u8]),
    /// One punctuation character: `( ) , ; [ ] . :` and the like.
    Punct(u8),
}

impl Token<'_> {
    /// True when this is the keyword or unquoted identifier `word` (ASCII, lowercase).
    pub fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(word.as_bytes()))
    }
}

/// The tokens of `text`, comments and whitespace skipped.
pub fn tokens(text: &[u8]) -> Tokens<'_> {
    Tokens { text, at: 0 }
}

/// An iterator over the tokens of SQL text.
#[derive(Clone)]
pub struct Tokens<'a> {
    text: &'a [u8],
    at: usize,
}

/// Whitespace, and NUL: a query string ends at a NUL for PostgreSQL, and a trailing one is
/// no statement.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0)
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_continue(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Characters PostgreSQL's lexer reads as operators.
fn is_operator(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

impl<'a> Tokens<'a> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.text.get(self.at + ahead).copied()
    }

    /// Skips whitespace and comments.
    fn skip_blank(&mut self) {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(b), _) if is_space(b) => self.at += 1,
                (Some(b'-'), Some(b'-')) => {
                    self.at += 2;
                    while self.peek(0).is_some_and(|b| b != b'\n') {
                        self.at += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.at += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.peek(0), self.peek(1)) {
                            (None, _) => return,
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.at += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.at += 2;
                            }
                            _ => self.at += 1,
                        }
                    }
                }
                _ => return,
            }
        }
    }

    /// Past a quoted run that started at `self.at` with `quote`, where a doubled quote
    /// stands for itself and, with `backslash`, a backslash escapes the next character.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) {
        self.at += 1;
        while let Some(b) = self.peek(0) {
            self.at += 1;
            if backslash && b == b'\\' {
                self.at = (self.at + 1).min(self.text.len());
            } else if b == quote {
                if self.peek(0) == Some(quote) {
                    self.at += 1;
                } else {
                    return;
                }
            }
        }
    }

    /// A dollar-quote tag starting at `self.at` (`$` or `$name$`): its length, if it is one.
    fn dollar_tag_len(&self) -> Option<usize> {
        let rest = &self.text[self.at..];
        let mut len = 1;
        if rest.get(1).is_some_and(|&b| is_ident_start(b)) {
            len += 1;
            while rest
                .get(len)
                .is_some_and(|&b| is_ident_continue(b) && b != b'$')
            {
                len += 1;
            }
        }
        (rest.get(len) == Some(&b'$')).then_some(len + 1)
    }

    fn skip_dollar_quoted(&mut self, tag_len: usize) {
        let tag = &self.text[self.at..self.at + tag_len];
        self.at += tag_len;
        let body = &self.text[self.at..];
        match body.windows(tag_len).position(|w| w == tag) {
            Some(end) => self.at += end + tag_len,
            None => self.at = self.text.len(),
        }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.next_spanned().map(|(_, token)| token)
    }
}

impl<'a> Tokens<'a> {
    /// The next token and where it starts.
    fn next_spanned(&mut self) -> Option<(usize, Token<'a>)> {
        self.skip_blank();
        let start = self.at;
        let first = self.peek(0)?;
        let second = self.peek(1);
        let token = match first {
            b'\'' => {
                self.skip_quoted(b'\'', false);
                Token::String(&self.text[start..self.at])
            }
            b'E' | b'e' if second == Some(b'\'') => {
                self.at += 1;
                self.skip_quoted(b'\'', true);
                Token::String(&self.text[start..self.at])
            }
            b'B' | b'b' | b'X' | b'x' | b'N' | b'n' if second == Some(b'\'') => {
                self.at += 1;
                self.skip_quoted(b'\'', false);
                Token::String(&self.text[start..self.at])
            }
            b'U' | b'u' if second == Some(b'&') && matches!(self.peek(2), Some(b'\'' | b'"')) => {
                let quote = self.peek(2).expect("matched above");
                self.at += 2;
                self.skip_quoted(quote, false);
                if quote == b'"' {
                    Token::QuotedIdent(quoted_name(&self.text[start + 3..self.at]))
                } else {
                    Token::String(&self.text[start..self.at])
                }
            }
            b'"' => {
                self.skip_quoted(b'"', false);
                Token::QuotedIdent(quoted_name(&self.text[start + 1..self.at]))
            }
            b'$' => match self.dollar_tag_len() {
                Some(tag_len) => {
                    self.skip_dollar_quoted(tag_len);
                    Token::String(&self.text[start..self.at])
                }
                None => {
                    // A positional parameter ($1) or a lone $.
                    self.at += 1;
                    while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                        self.at += 1;
                    }
                    Token::Other(&self.text[start..self.at])
                }
            },
            b if is_ident_start(b) => {
                while self.peek(0).is_some_and(is_ident_continue) {
                    self.at += 1;
                }
                Token::Word(&self.text[start..self.at])
            }
            b if b.is_ascii_digit() => {
                while self
                    .peek(0)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.')
                {
                    self.at += 1;
                }
                Token::Other(&self.text[start..self.at])
            }
            b if is_operator(b) => {
                // An operator ends where a comment starts.
                self.at += 1;
                while self.peek(0).is_some_and(is_operator)
                    && !matches!(
                        (self.peek(0), self.peek(1)),
                        (Some(b'-'), Some(b'-')) | (Some(b'/'), Some(b'*'))
                    )
                {
                    self.at += 1;
                }
                Token::Other(&self.text[start..self.at])
            }
            b => {
                self.at += 1;
                Token::Punct(b)
            }
        };
        Some((start, token))
    }
}

/// A quoted identifier's name: what follows its opening quote, less the closing one (an
/// unterminated name runs to the end).
fn quoted_name(after_quote: &[u8]) -> &[u8] {
    after_quote.strip_suffix(b"\"").unwrap_or(after_quote)
}

/// The statements of a query string, split at the semicolons outside quotes and comments;
/// statements with no token (empty, or only comments) are left out, as PostgreSQL leaves
/// them out. Each is the text from its first token up to (not including) its semicolon.
pub fn statements(text: &[u8]) -> Statements<'_> {
    Statements {
        tokens: tokens(text),
    }
}

/// An iterator over the statements of a query string.
pub struct Statements<'a> {
    tokens: Tokens<'a>,
}

impl<'a> Iterator for Statements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let mut span: Option<(usize, usize)> = None;
            let ended = loop {
                match self.tokens.next_spanned() {
                    None => break true,
                    Some((_, Token::Punct(b';'))) => break false,
                    Some((start, _)) => {
                        let first = span.map_or(start, |(first, _)| first);
                        span = Some((first, self.tokens.at));
                    }
                }
            };
            if let Some((start, end)) = span {
                return Some(&self.tokens.text[start..end]);
            }
            if ended {
                return None;
            }
        }
    }
}

/// The first word of `text` (skipping blanks and comments), if it starts with one: the
/// cheap test a pooler runs on every query before lexing it whole.
pub fn first_word(text: &[u8]) -> Option<&[u8]> {
    match tokens(text).next()? {
        Token::Word(word) => Some(word),
        _ => None,
    }
}

/// True when `text` may hold more than one statement: it has a semicolon with something
/// other than blanks after it. Cheap (one scan for `;`); a `;` inside a string or comment
/// also answers true, and the caller then splits with [`statements`].
pub fn may_have_several_statements(text: &[u8]) -> bool {
    match text.iter().position(|&b| b == b';') {
        Some(at) => text[at + 1..].iter().any(|&b| !is_space(b) && b != b';'),
        None => false,
    }
}

#[cfg(test)]
mod tests;
