//! The session parameters a client asks for at login: the server's defaults, overridden by
//! the settings in its startup packet (`application_name`, `client_encoding`, `DateStyle`,
//! `TimeZone`, `search_path`, `options=-c name=value`, …). Together with the values the
//! server reports after the client's own `SET`s, they follow the client from one server
//! connection to the next (see `server::parameters` for how a connection is made to match).
//!
//! Limitation, as in every pooler that does not parse SQL: a `SET` of a parameter the
//! server does not report (e.g. `search_path` on versions that do not report it) is
//! invisible to sluice.

use crate::server::parameters::Parameters;
use sluice_protocol::startup::StartupMessage;

/// Why a startup packet's settings were refused.
#[derive(Debug, thiserror::Error)]
#[error("unsupported startup option \"{0}\": only -c name=value and --name=value are accepted")]
pub struct UnsupportedOption(String);

/// What a client wants: the server's defaults (`reported`), overridden by the settings
/// in its startup packet. Startup keys that are not settings (user, database,
/// replication, protocol options) are left out; `options` is unpacked.
pub fn desired(
    reported: &Parameters,
    startup: &StartupMessage,
) -> Result<Parameters, UnsupportedOption> {
    let mut desired = reported.clone();
    for (name, value) in &startup.params {
        match name.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                for (name, value) in parse_options(value)? {
                    desired.set(&name, &value);
                }
            }
            _ if name.starts_with("_pq_.") => {}
            _ => desired.set(name, value),
        }
    }
    Ok(desired)
}

/// Splits libpq's `options` (space-separated, backslash escapes a space) into
/// `-c name=value` / `--name=value` settings.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, UnsupportedOption> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words
                .next()
                .ok_or_else(|| UnsupportedOption(word.clone()))?
        } else if let Some(rest) = word.strip_prefix("-c").or_else(|| word.strip_prefix("--")) {
            rest.to_owned()
        } else {
            return Err(UnsupportedOption(word));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| UnsupportedOption(setting.clone()))?;
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Parameters {
        Parameters::of(pairs)
    }

    fn startup(pairs: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            protocol_minor: 0,
            params: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn startup_settings_override_defaults_and_options_are_unpacked() {
        let reported = params(&[("application_name", ""), ("TimeZone", "UTC")]);
        let wanted = desired(
            &reported,
            &startup(&[
                ("user", "u"),
                ("database", "d"),
                ("application_name", "app"),
                (
                    "options",
                    "-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB",
                ),
                ("_pq_.x", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(wanted.get("application_name"), Some("app"));
        assert_eq!(wanted.get("timezone"), Some("UTC"));
        assert_eq!(wanted.get("search_path"), Some("a,b"));
        assert_eq!(wanted.get("statement_timeout"), Some("5s"));
        assert_eq!(wanted.get("work_mem"), Some("4MB"));
        assert_eq!(wanted.get("user"), None);
        assert_eq!(wanted.get("_pq_.x"), None);
        assert!(desired(&reported, &startup(&[("options", "-e")])).is_err());
        assert!(desired(&reported, &startup(&[("options", "-c novalue")])).is_err());
    }

    #[test]
    fn escaped_spaces_stay_in_a_value() {
        let settings = parse_options(r"-c application_name=my\ app").unwrap();
        assert_eq!(settings, vec![("application_name".into(), "my app".into())]);
    }
}
