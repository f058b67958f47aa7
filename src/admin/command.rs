//! Admin-console commands: turns the text of one simple Query sent to the admin console into
//! a [`Command`], PgBouncer-style (`SHOW POOLS`, `PAUSE [db]`, `KILL db`, ...).
//!
//! Grammar: a keyword, then at most one argument, separated by ASCII whitespace; keywords are
//! case-insensitive; surrounding whitespace and one trailing `;` are allowed. A database name
//! is either a bare word (any run of characters other than whitespace, `;` and `"`, kept as
//! typed, as PgBouncer does) or a double-quoted name in which `""` stands for one `"`.
//! Only one command per query: anything after the first `;` is an error.
//!
//! Invariants: pure (no I/O, no shared state) and never panics. Tokenizing borrows from the
//! query and keeps at most three tokens, so a huge query costs one linear scan, and the
//! query text quoted back in an error is cut to [`EXCERPT_LEN`] bytes.
//!
//! See <https://www.pgbouncer.org/usage.html#admin-console>.

/// Longest piece of the query, in bytes, that an error message quotes back.
pub const EXCERPT_LEN: usize = 64;

/// One admin-console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW item`: a result set describing one part of the proxy.
    Show(Show),
    /// `PAUSE [db]`: stop handing out server connections, for one database or all of them.
    Pause(Option<String>),
    /// `RESUME [db]`: undo `PAUSE`.
    Resume(Option<String>),
    /// `RELOAD`: re-read the configuration.
    Reload,
    /// `KILL db`: drop every client and server connection of one database at once.
    Kill(String),
    /// `SHUTDOWN`: stop the proxy.
    Shutdown,
}

impl Command {
    /// The CommandComplete tag that answers this command.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Reload => "RELOAD",
            Command::Kill(_) => "KILL",
            Command::Shutdown => "SHUTDOWN",
        }
    }
}

/// What `SHOW` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Show {
    Pools,
    Stats,
    Clients,
    Servers,
    Databases,
    Tenants,
    Clusters,
    Config,
    Version,
    Help,
    Lists,
    Users,
    StatsTotals,
    StatsAverages,
    Mem,
}

impl Show {
    /// Every item, in the order `SHOW HELP` lists them.
    pub const ALL: [Show; 15] = [
        Show::Pools,
        Show::Stats,
        Show::Clients,
        Show::Servers,
        Show::Databases,
        Show::Tenants,
        Show::Clusters,
        Show::Config,
        Show::Version,
        Show::Help,
        Show::Lists,
        Show::Users,
        Show::StatsTotals,
        Show::StatsAverages,
        Show::Mem,
    ];

    /// The item as written after `SHOW`, upper case (`"POOLS"`, `"STATS_TOTALS"`).
    pub fn name(&self) -> &'static str {
        match self {
            Show::Pools => "POOLS",
            Show::Stats => "STATS",
            Show::Clients => "CLIENTS",
            Show::Servers => "SERVERS",
            Show::Databases => "DATABASES",
            Show::Tenants => "TENANTS",
            Show::Clusters => "CLUSTERS",
            Show::Config => "CONFIG",
            Show::Version => "VERSION",
            Show::Help => "HELP",
            Show::Lists => "LISTS",
            Show::Users => "USERS",
            Show::StatsTotals => "STATS_TOTALS",
            Show::StatsAverages => "STATS_AVERAGES",
            Show::Mem => "MEM",
        }
    }

    fn from_word(word: &str) -> Option<Show> {
        Show::ALL
            .into_iter()
            .find(|item| item.name().eq_ignore_ascii_case(word))
    }
}

/// Why a query is not an admin command. The texts are meant for the admin client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Nothing but whitespace and at most one `;`; answered with EmptyQueryResponse.
    #[error("empty query")]
    Empty,
    /// The first word is no admin command (this includes `SET`, which is not supported).
    #[error("unknown command: {0}")]
    Unknown(String),
    /// `SHOW` of something that is not a [`Show`] item.
    #[error("unknown SHOW item: {0} (see SHOW HELP)")]
    UnknownShow(String),
    /// A required argument is missing; the text is the command's usage, e.g. `"KILL db"`.
    #[error("missing argument, usage: {0}")]
    MissingArgument(&'static str),
    /// More arguments than the command takes; the text is the command, e.g. `"RELOAD"`.
    #[error("too many arguments for {0}")]
    TooManyArguments(String),
    /// Not tokenizable, or more than one command in the query.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
}

const ONE_COMMAND: &str = "only one command per query";

/// Parses the text of a simple Query sent to the admin console.
pub fn parse(sql: &str) -> Result<Command, CommandError> {
    // The keyword, its argument, and one more token to notice a surplus; `count` goes on.
    let mut kept: [Option<Text<'_>>; 3] = [None; 3];
    let mut count = 0usize;
    let mut ended = false;
    for token in Tokens::new(sql) {
        match token? {
            _ if ended => return Err(CommandError::Syntax(ONE_COMMAND)),
            Token::Semicolon => ended = true,
            Token::Text(text) => {
                if let Some(slot) = kept.get_mut(count) {
                    *slot = Some(text);
                }
                count += 1;
            }
        }
    }
    let [keyword, argument, _] = kept;
    let keyword = match keyword {
        None => return Err(CommandError::Empty),
        Some(Text::Bare(word)) => word,
        Some(Text::Quoted(raw)) => return Err(CommandError::Unknown(excerpt(raw))),
    };
    let arguments = count - 1;
    let is = |name: &str| keyword.eq_ignore_ascii_case(name);
    let at_most = |max: usize, name: &str| {
        if arguments > max {
            Err(CommandError::TooManyArguments(name.to_owned()))
        } else {
            Ok(())
        }
    };
    if is("SHOW") {
        at_most(1, "SHOW")?;
        return match argument {
            None => Err(CommandError::MissingArgument("SHOW item")),
            Some(Text::Bare(word)) => Show::from_word(word)
                .map(Command::Show)
                .ok_or_else(|| CommandError::UnknownShow(excerpt(word))),
            Some(Text::Quoted(raw)) => Err(CommandError::UnknownShow(excerpt(raw))),
        };
    }
    if is("PAUSE") {
        at_most(1, "PAUSE")?;
        return Ok(Command::Pause(argument.map(Text::name)));
    }
    if is("RESUME") {
        at_most(1, "RESUME")?;
        return Ok(Command::Resume(argument.map(Text::name)));
    }
    if is("KILL") {
        at_most(1, "KILL")?;
        let database = argument.ok_or(CommandError::MissingArgument("KILL db"))?;
        return Ok(Command::Kill(database.name()));
    }
    if is("RELOAD") {
        at_most(0, "RELOAD")?;
        return Ok(Command::Reload);
    }
    if is("SHUTDOWN") {
        at_most(0, "SHUTDOWN")?;
        return Ok(Command::Shutdown);
    }
    Err(CommandError::Unknown(excerpt(keyword)))
}

/// `text` cut to at most [`EXCERPT_LEN`] bytes on a character boundary, `…` marking a cut.
fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_LEN {
        return text.to_owned();
    }
    let mut end = EXCERPT_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One token of a query, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Semicolon,
    Text(Text<'a>),
}

/// A keyword or argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text<'a> {
    /// A run of characters other than whitespace, `;` and `"`.
    Bare(&'a str),
    /// A double-quoted name between its quotes, `""` still doubled; never empty.
    Quoted(&'a str),
}

impl Text<'_> {
    /// The name this text stands for.
    fn name(self) -> String {
        match self {
            Text::Bare(word) => word.to_owned(),
            Text::Quoted(raw) => raw.replace("\"\"", "\""),
        }
    }
}

fn is_space(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// Splits a query into tokens; after an error it yields nothing more.
struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Tokens<'a> {
    fn new(sql: &'a str) -> Self {
        Self { rest: sql }
    }

    fn fail(&mut self, reason: &'static str) -> Option<Result<Token<'a>, CommandError>> {
        self.rest = "";
        Some(Err(CommandError::Syntax(reason)))
    }

    /// A token must end at whitespace, `;` or the end of the query.
    fn at_token_end(&self) -> bool {
        self.rest
            .chars()
            .next()
            .is_none_or(|c| is_space(c) || c == ';')
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Result<Token<'a>, CommandError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rest = self.rest.trim_start_matches(is_space);
        if let Some(rest) = self.rest.strip_prefix(';') {
            self.rest = rest;
            return Some(Ok(Token::Semicolon));
        }
        if let Some(quoted) = self.rest.strip_prefix('"') {
            // The closing quote is the first `"` not doubled.
            let mut from = 0;
            let close = loop {
                let Some(at) = quoted[from..].find('"').map(|at| from + at) else {
                    return self.fail("unterminated quoted name");
                };
                if quoted[at + 1..].starts_with('"') {
                    from = at + 2;
                } else {
                    break at;
                }
            };
            let raw = &quoted[..close];
            self.rest = &quoted[close + 1..];
            if raw.is_empty() {
                return self.fail("zero-length quoted name");
            }
            if !self.at_token_end() {
                return self.fail("a quoted name must be followed by a space or `;`");
            }
            return Some(Ok(Token::Text(Text::Quoted(raw))));
        }
        if self.rest.is_empty() {
            return None;
        }
        let end = self
            .rest
            .find(|c: char| is_space(c) || c == ';' || c == '"')
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        if !self.at_token_end() {
            return self.fail("unexpected `\"` inside a name");
        }
        Some(Ok(Token::Text(Text::Bare(word))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    fn syntax(sql: &str) -> &'static str {
        match parse(sql) {
            Err(CommandError::Syntax(reason)) => reason,
            other => panic!("{sql:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn every_show_item_parses_by_its_name() {
        for item in Show::ALL {
            let name = item.name();
            assert_eq!(parse(&format!("SHOW {name}")), Ok(Command::Show(item)));
            let lower = name.to_ascii_lowercase();
            assert_eq!(parse(&format!("show {lower};")), Ok(Command::Show(item)));
        }
    }

    #[test]
    fn show_names_are_distinct_and_upper_case() {
        let mut names: Vec<_> = Show::ALL.iter().map(Show::name).collect();
        assert!(names.iter().all(|name| *name == name.to_ascii_uppercase()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Show::ALL.len());
        assert_eq!(Show::StatsTotals.name(), "STATS_TOTALS");
        assert_eq!(Show::StatsAverages.name(), "STATS_AVERAGES");
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(parse("ShOw PoOlS"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert_eq!(parse("Shutdown"), Ok(Command::Shutdown));
        assert_eq!(parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(parse("rEsUmE"), Ok(Command::Resume(None)));
    }

    #[test]
    fn whitespace_and_one_trailing_semicolon_are_tolerated() {
        for sql in [
            "SHOW POOLS",
            "SHOW POOLS;",
            "  SHOW POOLS  ",
            "\tSHOW\n\r POOLS ; \n",
            "SHOW   POOLS;",
            "SHOW POOLS ;",
            "\x0cSHOW POOLS",
        ] {
            assert_eq!(parse(sql), Ok(Command::Show(Show::Pools)), "{sql:?}");
        }
    }

    #[test]
    fn pause_and_resume_take_an_optional_database() {
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(parse("PAUSE;"), Ok(Command::Pause(None)));
        assert_eq!(parse("PAUSE app"), Ok(Command::Pause(db("app"))));
        assert_eq!(parse("pause app ;"), Ok(Command::Pause(db("app"))));
        assert_eq!(parse("RESUME"), Ok(Command::Resume(None)));
        assert_eq!(parse("resume app;"), Ok(Command::Resume(db("app"))));
    }

    #[test]
    fn bare_database_names_keep_their_case_and_punctuation() {
        assert_eq!(parse("PAUSE MyDb"), Ok(Command::Pause(db("MyDb"))));
        assert_eq!(parse("KILL my-db.v2"), Ok(Command::Kill("my-db.v2".into())));
        assert_eq!(parse("resume dé"), Ok(Command::Resume(db("dé"))));
    }

    #[test]
    fn quoted_database_names() {
        assert_eq!(parse(r#"PAUSE "my-db""#), Ok(Command::Pause(db("my-db"))));
        assert_eq!(parse(r#"KILL "My DB";"#), Ok(Command::Kill("My DB".into())));
        assert_eq!(parse(r#"RESUME "a;b""#), Ok(Command::Resume(db("a;b"))));
        assert_eq!(
            parse(r#"PAUSE "say ""hi""""#),
            Ok(Command::Pause(db(r#"say "hi""#)))
        );
        assert_eq!(parse(r#"KILL """""#), Ok(Command::Kill("\"".into())));
        assert_eq!(parse(r#"KILL "x" ;"#), Ok(Command::Kill("x".into())));
    }

    #[test]
    fn kill_requires_a_database() {
        assert_eq!(parse("KILL"), Err(CommandError::MissingArgument("KILL db")));
        assert_eq!(
            parse("kill ;"),
            Err(CommandError::MissingArgument("KILL db"))
        );
        assert_eq!(parse("KILL app"), Ok(Command::Kill("app".into())));
    }

    #[test]
    fn show_requires_a_known_item() {
        assert_eq!(
            parse("SHOW"),
            Err(CommandError::MissingArgument("SHOW item"))
        );
        assert_eq!(
            parse("SHOW fds"),
            Err(CommandError::UnknownShow("fds".into()))
        );
        assert_eq!(
            parse("SHOW STATS TOTALS"),
            Err(CommandError::TooManyArguments("SHOW".into()))
        );
        assert_eq!(
            parse(r#"SHOW "POOLS""#),
            Err(CommandError::UnknownShow("POOLS".into()))
        );
        assert_eq!(
            parse("SHOW pools_x"),
            Err(CommandError::UnknownShow("pools_x".into()))
        );
    }

    #[test]
    fn surplus_arguments_are_refused() {
        let too_many = |command: &str| Err(CommandError::TooManyArguments(command.into()));
        assert_eq!(parse("RELOAD now"), too_many("RELOAD"));
        assert_eq!(parse("SHUTDOWN;"), Ok(Command::Shutdown));
        assert_eq!(parse("SHUTDOWN immediate"), too_many("SHUTDOWN"));
        assert_eq!(parse("PAUSE a b"), too_many("PAUSE"));
        assert_eq!(parse("RESUME a b c d"), too_many("RESUME"));
        assert_eq!(parse(r#"KILL "a" "b""#), too_many("KILL"));
    }

    #[test]
    fn empty_queries() {
        for sql in ["", "   ", "\n\t", ";", "  ;  "] {
            assert_eq!(parse(sql), Err(CommandError::Empty), "{sql:?}");
        }
    }

    #[test]
    fn only_one_command_per_query() {
        for sql in [
            "SHOW POOLS; SHOW STATS",
            "SHOW POOLS;;",
            "SHOW POOLS ; ;",
            "; SHOW POOLS",
            ";;",
            "PAUSE a; RESUME a;",
            "RELOAD;x",
        ] {
            assert_eq!(syntax(sql), ONE_COMMAND, "{sql:?}");
        }
    }

    #[test]
    fn set_and_other_commands_are_unknown() {
        assert_eq!(
            parse("SET server_reset_query = ''"),
            Err(CommandError::Unknown("SET".into()))
        );
        assert_eq!(parse("set x=1;"), Err(CommandError::Unknown("set".into())));
        assert_eq!(
            parse("SELECT 1"),
            Err(CommandError::Unknown("SELECT".into()))
        );
        assert_eq!(
            parse("SUSPEND"),
            Err(CommandError::Unknown("SUSPEND".into()))
        );
        assert_eq!(
            parse(r#""SHOW" POOLS"#),
            Err(CommandError::Unknown("SHOW".into()))
        );
        assert_eq!(
            parse("SHOWPOOLS"),
            Err(CommandError::Unknown("SHOWPOOLS".into()))
        );
    }

    #[test]
    fn malformed_quotes_are_syntax_errors() {
        assert_eq!(syntax(r#"PAUSE "my-db"#), "unterminated quoted name");
        assert_eq!(syntax(r#"PAUSE "a"" "#), "unterminated quoted name");
        assert_eq!(syntax(r#"PAUSE """#), "zero-length quoted name");
        assert_eq!(
            syntax(r#"PAUSE "a"b"#),
            "a quoted name must be followed by a space or `;`"
        );
        assert_eq!(syntax(r#"PAUSE a"b""#), "unexpected `\"` inside a name");
        assert_eq!(syntax(r#"SHOW POOLS""#), "unexpected `\"` inside a name");
        assert_eq!(syntax("\""), "unterminated quoted name");
    }

    #[test]
    fn tags_name_the_command() {
        let cases = [
            ("SHOW POOLS", "SHOW"),
            ("SHOW HELP", "SHOW"),
            ("PAUSE", "PAUSE"),
            ("PAUSE app", "PAUSE"),
            ("RESUME", "RESUME"),
            ("RELOAD", "RELOAD"),
            ("KILL app", "KILL"),
            ("SHUTDOWN", "SHUTDOWN"),
        ];
        for (sql, tag) in cases {
            assert_eq!(parse(sql).unwrap().tag(), tag, "{sql:?}");
        }
    }

    #[test]
    fn error_messages_read_well() {
        let message = |sql: &str| parse(sql).unwrap_err().to_string();
        assert_eq!(message("SET a = 1"), "unknown command: SET");
        assert_eq!(
            message("show fds"),
            "unknown SHOW item: fds (see SHOW HELP)"
        );
        assert_eq!(message("KILL"), "missing argument, usage: KILL db");
        assert_eq!(message("RELOAD x"), "too many arguments for RELOAD");
        assert_eq!(
            message("SHOW POOLS; SHOW STATS"),
            "syntax error: only one command per query"
        );
        assert_eq!(message(" ; "), "empty query");
    }

    #[test]
    fn quoted_text_in_errors_is_bounded() {
        let long = "x".repeat(10_000);
        let Err(CommandError::Unknown(text)) = parse(&long) else {
            panic!("expected Unknown");
        };
        assert_eq!(text, format!("{}…", "x".repeat(EXCERPT_LEN)));
        // Cut on a character boundary: 'é' is 2 bytes, so 64 bytes fall inside the 33rd.
        let accented = format!("x{}", "é".repeat(100));
        let Err(CommandError::UnknownShow(text)) = parse(&format!("SHOW {accented}")) else {
            panic!("expected UnknownShow");
        };
        assert_eq!(text, format!("x{}…", "é".repeat(31)));
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt(&"y".repeat(EXCERPT_LEN)), "y".repeat(EXCERPT_LEN));
    }

    #[test]
    fn long_queries_are_scanned_without_keeping_tokens() {
        let many = format!("PAUSE {}", "a ".repeat(100_000));
        assert_eq!(
            parse(&many),
            Err(CommandError::TooManyArguments("PAUSE".into()))
        );
        let tail = format!("PAUSE a b {}; SHOW POOLS", "c ".repeat(100_000));
        assert_eq!(syntax(&tail), ONE_COMMAND);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // Every prefix of some awkward inputs, cut at every character boundary.
        let inputs = [
            r#"  PAUSE "my ""quoted"" db" ; "#,
            "KILL dé;\u{0}\u{feff} x",
            r#"SHOW "";;" a"b "#,
            "\u{a0}SHOW\u{2003}POOLS",
        ];
        for input in inputs {
            for (end, _) in input.char_indices().chain([(input.len(), ' ')]) {
                let _ = parse(&input[..end]);
            }
        }
        // Non-ASCII whitespace is part of a word, not a separator.
        assert_eq!(
            parse("\u{a0}SHOW POOLS"),
            Err(CommandError::Unknown("\u{a0}SHOW".into()))
        );
    }
}
