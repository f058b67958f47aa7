//! What a SQL statement does to the session that transaction pooling must follow: settings
//! (`SET`, `RESET`, `set_config(…, false)`), transaction control, the state that cannot move
//! between server connections (temporary tables, session advisory locks, `WITH HOLD`
//! cursors, SQL `PREPARE`, `LOAD`, `SET ROLE`), `LISTEN`/`UNLISTEN`, and the statements
//! that drop sluice's own records (`DISCARD ALL`, `DEALLOCATE ALL`).
//!
//! Pure: statement text in, [`Effect`]s out, through the lexer in `sluice_protocol::sql`.
//! Cheap on the hot path: [`may_have_effects`] looks at the first word and, for other
//! statements, searches the text once for the two names that matter anywhere
//! (`set_config`, `advisory`) before anything is lexed.
//!
//! Deliberately conservative where the text cannot tell: a setting whose value is an
//! expression is `Value::Unknown`, an advisory lock whose key is not a constant has no key,
//! and an advisory-lock function named inside a string (a `DO` block) still counts.

use sluice_protocol::sql::{self, Token};

/// A value a statement gives a setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// The value as PostgreSQL stores it (flattened like `SET` does).
    Known(String),
    /// `DEFAULT`: back to the session's default, as `RESET`.
    Default,
    /// An expression or a form sluice does not evaluate.
    Unknown,
}

/// Session state that ties a client to its server connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pin {
    TempTable,
    /// A session advisory lock; `key` is its arguments' text when they are constants.
    AdvisoryLock {
        key: Option<String>,
        shared: bool,
    },
    HoldCursor(String),
    PreparedStatement(String),
    Load,
    Role,
}

impl Pin {
    /// The `reason` label of `sluice_pinned_clients` and the word SHOW CLIENTS shows.
    pub fn reason(&self) -> &'static str {
        match self {
            Pin::TempTable => "temp_table",
            Pin::AdvisoryLock { .. } => "advisory_lock",
            Pin::HoldCursor(_) => "hold_cursor",
            Pin::PreparedStatement(_) => "prepared_statement",
            Pin::Load => "load",
            Pin::Role => "role",
        }
    }

    /// What the statement is called in errors and docs.
    pub fn feature(&self) -> &'static str {
        match self {
            Pin::TempTable => "temporary tables",
            Pin::AdvisoryLock { .. } => "session advisory locks",
            Pin::HoldCursor(_) => "WITH HOLD cursors",
            Pin::PreparedStatement(_) => "SQL-level PREPARE",
            Pin::Load => "LOAD",
            Pin::Role => "SET ROLE and SET SESSION AUTHORIZATION",
        }
    }

    /// Whether the state survives only if its transaction commits.
    pub fn is_transactional(&self) -> bool {
        matches!(self, Pin::TempTable | Pin::HoldCursor(_) | Pin::Role)
    }
}

/// State a statement gives up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unpin {
    AdvisoryUnlock { key: Option<String>, shared: bool },
    AdvisoryUnlockAll,
    CloseCursor(String),
    CloseAllCursors,
    Deallocate(String),
    DiscardTemp,
    ResetRole,
}

impl Unpin {
    /// Whether giving the state up is undone when the transaction rolls back.
    pub fn is_transactional(&self) -> bool {
        matches!(
            self,
            Unpin::CloseCursor(_) | Unpin::CloseAllCursors | Unpin::DiscardTemp | Unpin::ResetRole
        )
    }
}

/// What one statement does that sluice follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `DISCARD ALL`: everything session-level is gone.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`: every prepared statement is gone.
    DeallocateAll,
    /// `RESET ALL`.
    ResetAll,
    /// `RESET name`, `SET name TO DEFAULT`.
    Reset(String),
    /// `SET [SESSION] name …`, `set_config(name, value, false)`.
    Set {
        name: String,
        value: Value,
    },
    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    ReleaseSavepoint(String),
    RollbackToSavepoint(String),
    Pin(Pin),
    Unpin(Unpin),
    Listen(String),
    Unlisten(String),
    UnlistenAll,
    /// A statement that may change anything: a `set_config` of a name sluice cannot read.
    Unknown,
}

impl Effect {
    /// Whether the effect lasts only if its transaction commits (settings, temp tables,
    /// WITH HOLD cursors, roles); the others take hold at once.
    pub fn is_transactional(&self) -> bool {
        match self {
            Effect::ResetAll | Effect::Reset(_) | Effect::Set { .. } => true,
            Effect::Pin(pin) => pin.is_transactional(),
            Effect::Unpin(unpin) => unpin.is_transactional(),
            _ => false,
        }
    }
}

/// Parameters PostgreSQL stores as lists of identifiers (GUC_LIST_QUOTE): `SET` quotes
/// their elements where an identifier would need it.
const LIST_QUOTED: [&str; 2] = ["search_path", "temp_tablespaces"];

/// First words of statements with effects (a SELECT has them only with the names searched
/// for anywhere, or `INTO TEMP`).
const FIRST_WORDS: [&str; 19] = [
    "set",
    "reset",
    "discard",
    "deallocate",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "prepare",
    "declare",
    "close",
    "load",
    "create",
    "listen",
    "unlisten",
];

/// The cheap test before lexing: could `text` (one or more statements) have effects?
pub fn may_have_effects(text: &[u8]) -> bool {
    if contains_ignore_case(text, b"advisory") || contains_ignore_case(text, b"set_config") {
        return true;
    }
    if sql::may_have_several_statements(text) {
        return true;
    }
    sql::first_word(text).is_some_and(|word| {
        FIRST_WORDS
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
            || (word.eq_ignore_ascii_case(b"select") && contains_ignore_case(text, b"temp"))
    })
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// The effects of each statement of `text` (a simple query, or a Parse's text), with the
/// statement's index among those the server runs.
pub fn effects_of(text: &[u8], mut found: impl FnMut(u32, Effect)) {
    if !may_have_effects(text) {
        return;
    }
    for (index, statement) in (0u32..).zip(sql::statements(text)) {
        classify(statement, &mut |effect| found(index, effect));
    }
}

/// The effects of one statement.
pub fn classify(statement: &[u8], found: &mut dyn FnMut(Effect)) {
    let tokens: Vec<Token<'_>> = sql::tokens(statement).collect();
    let Some(first) = tokens.first() else {
        return;
    };
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| t.is_word(w));
    advisory_calls(statement, &tokens, found);
    if first.is_word("select") || first.is_word("values") {
        set_config_calls(&tokens, found);
        if tokens.windows(2).any(|pair| {
            pair[0].is_word("into") && (pair[1].is_word("temp") || pair[1].is_word("temporary"))
        }) {
            found(Effect::Pin(Pin::TempTable));
        }
        return;
    }
    if first.is_word("set") {
        return set_statement(&tokens[1..], found);
    }
    if first.is_word("reset") {
        return match tokens.get(1) {
            Some(t) if t.is_word("all") => found(Effect::ResetAll),
            Some(t) if t.is_word("role") => found(Effect::Unpin(Unpin::ResetRole)),
            Some(t) if t.is_word("session") && word(2, "authorization") => {
                found(Effect::Unpin(Unpin::ResetRole))
            }
            Some(t) => {
                if let Some(name) = parameter_name(&tokens[1..]) {
                    found(Effect::Reset(name))
                } else if !t.is_word("time") {
                    found(Effect::Unknown)
                } else {
                    found(Effect::Reset("timezone".into()))
                }
            }
            None => {}
        };
    }
    if first.is_word("discard") {
        match tokens.get(1) {
            Some(t) if t.is_word("all") => found(Effect::DiscardAll),
            Some(t) if t.is_word("temp") || t.is_word("temporary") => {
                found(Effect::Unpin(Unpin::DiscardTemp))
            }
            _ => {}
        }
        return;
    }
    if first.is_word("deallocate") {
        let at = if word(1, "prepare") { 2 } else { 1 };
        match tokens.get(at) {
            Some(t) if t.is_word("all") => found(Effect::DeallocateAll),
            Some(t) => {
                if let Some(name) = identifier(t) {
                    found(Effect::Unpin(Unpin::Deallocate(name)))
                }
            }
            None => {}
        }
        return;
    }
    if first.is_word("begin") || first.is_word("start") {
        // START TRANSACTION; BEGIN [WORK | TRANSACTION] (not a BEGIN ATOMIC body).
        if first.is_word("begin") || word(1, "transaction") {
            found(Effect::Begin);
        }
        return;
    }
    if first.is_word("commit") || first.is_word("end") {
        if !word(1, "prepared") {
            found(Effect::Commit);
        }
        return;
    }
    if first.is_word("rollback") || first.is_word("abort") {
        let to = tokens.iter().position(|t| t.is_word("to"));
        match to {
            Some(at) => {
                let at = if word(at + 1, "savepoint") {
                    at + 2
                } else {
                    at + 1
                };
                if let Some(name) = tokens.get(at).and_then(identifier) {
                    found(Effect::RollbackToSavepoint(name));
                }
            }
            None if !word(1, "prepared") => found(Effect::Rollback),
            None => {}
        }
        return;
    }
    if first.is_word("savepoint") {
        if let Some(name) = tokens.get(1).and_then(identifier) {
            found(Effect::Savepoint(name));
        }
        return;
    }
    if first.is_word("release") {
        let at = if word(1, "savepoint") { 2 } else { 1 };
        if let Some(name) = tokens.get(at).and_then(identifier) {
            found(Effect::ReleaseSavepoint(name));
        }
        return;
    }
    if first.is_word("prepare") {
        // PREPARE name [(types)] AS …; not PREPARE TRANSACTION.
        if !word(1, "transaction") {
            if let Some(name) = tokens.get(1).and_then(identifier) {
                found(Effect::Pin(Pin::PreparedStatement(name)));
            }
        }
        return;
    }
    if first.is_word("declare") {
        let hold = tokens
            .windows(2)
            .any(|pair| pair[0].is_word("with") && pair[1].is_word("hold"));
        if hold {
            if let Some(name) = tokens.get(1).and_then(identifier) {
                found(Effect::Pin(Pin::HoldCursor(name)));
            }
        }
        return;
    }
    if first.is_word("close") {
        match tokens.get(1) {
            Some(t) if t.is_word("all") => found(Effect::Unpin(Unpin::CloseAllCursors)),
            Some(t) => {
                if let Some(name) = identifier(t) {
                    found(Effect::Unpin(Unpin::CloseCursor(name)))
                }
            }
            None => {}
        }
        return;
    }
    if first.is_word("load") {
        found(Effect::Pin(Pin::Load));
        return;
    }
    if first.is_word("create") {
        // CREATE [GLOBAL | LOCAL] {TEMP | TEMPORARY} …, CREATE … AS SELECT … INTO TEMP.
        let temp = tokens
            .iter()
            .take(4)
            .any(|t| t.is_word("temp") || t.is_word("temporary"));
        if temp {
            found(Effect::Pin(Pin::TempTable));
        }
        return;
    }
    if first.is_word("listen") {
        if let Some(channel) = tokens.get(1).and_then(identifier) {
            found(Effect::Listen(channel));
        }
        return;
    }
    if first.is_word("unlisten") {
        match tokens.get(1) {
            Some(Token::Other(b"*")) => found(Effect::UnlistenAll),
            Some(t) => {
                if let Some(channel) = identifier(t) {
                    found(Effect::Unlisten(channel))
                }
            }
            None => {}
        }
    }
}

/// The rest of a `SET` statement, after `SET`.
fn set_statement(tokens: &[Token<'_>], found: &mut dyn FnMut(Effect)) {
    let Some(first) = tokens.first() else {
        return;
    };
    if first.is_word("local") {
        // Lasts until the end of the transaction: nothing to follow.
        return;
    }
    let tokens = if first.is_word("session") {
        &tokens[1..]
    } else {
        tokens
    };
    let word = |i: usize, w: &str| tokens.get(i).is_some_and(|t| t.is_word(w));
    if word(0, "role") {
        let none = word(1, "none");
        found(Effect::Pin(Pin::Role));
        if none {
            found(Effect::Unpin(Unpin::ResetRole));
        }
        return;
    }
    if word(0, "authorization") {
        // SET SESSION AUTHORIZATION …
        if word(1, "default") {
            found(Effect::Unpin(Unpin::ResetRole));
        } else {
            found(Effect::Pin(Pin::Role));
        }
        return;
    }
    if word(0, "characteristics") {
        for name in [
            "default_transaction_isolation",
            "default_transaction_read_only",
            "default_transaction_deferrable",
        ] {
            found(Effect::Set {
                name: name.into(),
                value: Value::Unknown,
            });
        }
        return;
    }
    // SET TRANSACTION and SET CONSTRAINTS last for the transaction.
    if word(0, "transaction") || word(0, "constraints") {
        return;
    }
    let (name, rest) = if word(0, "time") && word(1, "zone") {
        ("timezone".to_owned(), &tokens[2..])
    } else if word(0, "schema") {
        ("search_path".to_owned(), &tokens[1..])
    } else if word(0, "names") {
        ("client_encoding".to_owned(), &tokens[1..])
    } else if word(0, "xml") && word(1, "option") {
        ("xmloption".to_owned(), &tokens[2..])
    } else {
        let Some(name_len) = parameter_name_len(tokens) else {
            return found(Effect::Unknown);
        };
        let name = parameter_name(tokens).expect("measured above");
        let rest = &tokens[name_len..];
        match rest.first() {
            Some(t) if t.is_word("to") => (name, &rest[1..]),
            Some(Token::Other(b"=")) => (name, &rest[1..]),
            // SET name FROM CURRENT keeps the value it has.
            Some(t) if t.is_word("from") => return,
            _ => return found(Effect::Unknown),
        }
    };
    let value = match rest {
        [t] if t.is_word("default") => Value::Default,
        [t] if name == "timezone" && t.is_word("local") => Value::Default,
        _ => flatten(rest, LIST_QUOTED.contains(&name.as_str())),
    };
    found(match value {
        Value::Default => Effect::Reset(name),
        value => Effect::Set { name, value },
    });
}

/// The length in tokens of a (possibly dotted: `myapp.setting`) parameter name.
fn parameter_name_len(tokens: &[Token<'_>]) -> Option<usize> {
    let mut len = 0;
    loop {
        identifier(tokens.get(len)?)?;
        len += 1;
        if tokens.get(len) != Some(&Token::Punct(b'.')) {
            return Some(len);
        }
        len += 1;
    }
}

/// A parameter name as PostgreSQL folds it (dotted parts joined with `.`).
fn parameter_name(tokens: &[Token<'_>]) -> Option<String> {
    let len = parameter_name_len(tokens)?;
    let parts: Option<Vec<String>> = tokens[..len]
        .iter()
        .filter(|t| **t != Token::Punct(b'.'))
        .map(identifier)
        .collect();
    Some(parts?.join("."))
}

/// An identifier's name: an unquoted word folded to lowercase, a quoted one as written.
fn identifier(token: &Token<'_>) -> Option<String> {
    match token {
        Token::Word(word) => Some(String::from_utf8_lossy(word).to_ascii_lowercase()),
        Token::QuotedIdent(name) => Some(String::from_utf8_lossy(name).replace("\"\"", "\"")),
        _ => None,
    }
}

/// A `SET` value list flattened as PostgreSQL stores it: elements joined with `", "`; an
/// unquoted word folded to lowercase, a string or quoted identifier as written (for list
/// parameters, quoted where an identifier would need it), a number as written.
fn flatten(tokens: &[Token<'_>], list_quoted: bool) -> Value {
    let is_number = |t: Option<&Token<'_>>| matches!(t, Some(Token::Other(n)) if n.first().is_some_and(u8::is_ascii_digit));
    let mut out = String::new();
    let mut at = 0;
    loop {
        let (text, used) = match tokens.get(at) {
            Some(Token::Other(sign @ (b"-" | b"+"))) if is_number(tokens.get(at + 1)) => {
                let Some(Token::Other(number)) = tokens.get(at + 1) else {
                    unreachable!("checked above")
                };
                let sign = if *sign == b"-" { "-" } else { "" };
                (format!("{sign}{}", String::from_utf8_lossy(number)), 2)
            }
            Some(Token::Other(number)) if is_number(tokens.get(at)) => {
                (String::from_utf8_lossy(number).into_owned(), 1)
            }
            Some(token @ (Token::Word(_) | Token::QuotedIdent(_))) => {
                (identifier(token).expect("an identifier"), 1)
            }
            Some(Token::String(literal)) => match string_value(literal) {
                Some(value) => (value, 1),
                None => return Value::Unknown,
            },
            _ => return Value::Unknown,
        };
        if list_quoted && needs_quotes(&text) {
            out.push('"');
            out.push_str(&text.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&text);
        }
        at += used;
        match tokens.get(at) {
            None => return Value::Known(out),
            Some(Token::Punct(b',')) => {
                out.push_str(", ");
                at += 1;
            }
            Some(_) => return Value::Unknown,
        }
    }
}

/// Whether PostgreSQL's `quote_identifier` would quote `name` (leaving keywords aside:
/// a quoted plain word means the same in a list setting).
fn needs_quotes(name: &str) -> bool {
    let mut bytes = name.bytes();
    !matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        || !bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// The value of a string constant: `'…'` with `''`, `E'…'` with the common backslash
/// escapes, `$tag$…$tag$`; `None` for forms sluice does not evaluate (`U&'…'`, `B'…'`, …).
fn string_value(literal: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(literal).ok()?;
    if let Some(body) = text.strip_prefix('\'') {
        return Some(body.strip_suffix('\'')?.replace("''", "'"));
    }
    if let Some(body) = text.strip_prefix("E'").or_else(|| text.strip_prefix("e'")) {
        let body = body.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(match chars.next()? {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    c @ ('\\' | '\'' | '"') => c,
                    _ => return None,
                }),
                '\'' => {
                    // '' inside an E'' string.
                    chars.next()?;
                    out.push('\'');
                }
                c => out.push(c),
            }
        }
        return Some(out);
    }
    if let Some(after) = text.strip_prefix('$') {
        let tag_end = after.find('$')? + 2;
        let tag = &text[..tag_end];
        return Some(text[tag_end..].strip_suffix(tag)?.to_owned());
    }
    None
}

/// `set_config(name, value, is_local)` calls in a SELECT: a setting when the name and
/// `is_local = false` are constants (the value may be `Unknown`), else `Unknown`.
fn set_config_calls(tokens: &[Token<'_>], found: &mut dyn FnMut(Effect)) {
    let mut at = 0;
    while let Some(offset) = tokens[at..].iter().position(|t| t.is_word("set_config")) {
        at += offset + 1;
        if tokens.get(at) != Some(&Token::Punct(b'(')) {
            continue;
        }
        let args = arguments(&tokens[at + 1..]);
        let effect = match args.as_slice() {
            [[Token::String(name)], value, [is_local]] if is_local.is_word("false") => {
                match string_value(name) {
                    Some(name) => Effect::Set {
                        name: name.to_ascii_lowercase(),
                        value: match value {
                            [Token::String(value)] => {
                                string_value(value).map_or(Value::Unknown, Value::Known)
                            }
                            _ => Value::Unknown,
                        },
                    },
                    None => Effect::Unknown,
                }
            }
            // is_local = true: transaction-local, nothing to follow.
            [_, _, [is_local]] if is_local.is_word("true") => continue,
            _ => Effect::Unknown,
        };
        found(effect);
    }
}

/// The comma-separated arguments of a call whose `(` was just passed, each as its tokens.
fn arguments<'t, 'a>(tokens: &'t [Token<'a>]) -> Vec<&'t [Token<'a>]> {
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct(b'(') | Token::Punct(b'[') => depth += 1,
            Token::Punct(b')') | Token::Punct(b']') if depth > 0 => depth -= 1,
            Token::Punct(b')') => {
                args.push(&tokens[start..i]);
                return args;
            }
            Token::Punct(b',') if depth == 0 => {
                args.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    args
}

/// Session advisory lock calls anywhere in the statement; one named only inside a string
/// (a DO block, a function body run now) counts as a lock with no key.
fn advisory_calls(statement: &[u8], tokens: &[Token<'_>], found: &mut dyn FnMut(Effect)) {
    if !contains_ignore_case(statement, b"advisory") {
        return;
    }
    for (i, token) in tokens.iter().enumerate() {
        let Token::Word(word) = token else {
            if let Token::String(text) = token {
                if contains_ignore_case(text, b"pg_advisory_lock")
                    || contains_ignore_case(text, b"pg_try_advisory_lock")
                {
                    found(Effect::Pin(Pin::AdvisoryLock {
                        key: None,
                        shared: false,
                    }));
                }
            }
            continue;
        };
        let name = String::from_utf8_lossy(word).to_ascii_lowercase();
        let key = || {
            if tokens.get(i + 1) != Some(&Token::Punct(b'(')) {
                return None;
            }
            let args = arguments(&tokens[i + 2..]);
            let constant = args.iter().all(|arg| {
                arg.iter()
                    .all(|t| matches!(t, Token::Other(o) if o.first().is_some_and(|b| b.is_ascii_digit() || *b == b'-')))
            });
            constant.then(|| {
                args.iter()
                    .map(|arg| {
                        arg.iter()
                            .map(|t| match t {
                                Token::Other(o) => String::from_utf8_lossy(o).into_owned(),
                                _ => String::new(),
                            })
                            .collect::<String>()
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
        };
        let effect = match name.as_str() {
            "pg_advisory_lock" | "pg_try_advisory_lock" => Effect::Pin(Pin::AdvisoryLock {
                key: key(),
                shared: false,
            }),
            "pg_advisory_lock_shared" | "pg_try_advisory_lock_shared" => {
                Effect::Pin(Pin::AdvisoryLock {
                    key: key(),
                    shared: true,
                })
            }
            "pg_advisory_unlock" => Effect::Unpin(Unpin::AdvisoryUnlock {
                key: key(),
                shared: false,
            }),
            "pg_advisory_unlock_shared" => Effect::Unpin(Unpin::AdvisoryUnlock {
                key: key(),
                shared: true,
            }),
            "pg_advisory_unlock_all" => Effect::Unpin(Unpin::AdvisoryUnlockAll),
            _ => continue,
        };
        found(effect);
    }
}

#[cfg(test)]
mod tests;
