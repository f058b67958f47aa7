//! Session parameters (GUCs) as sets of values ([`Parameters`], copy-on-write and shared
//! between equal sets), what one server connection's session has ([`ServerParameters`]:
//! the values it reported at login and what it has now), and the SQL that makes it have
//! what a client wants (`sync`).
//!
//! Which values a client wants is the session's business (`session::parameters`); this
//! module only compares and sets. It depends on nothing in the crate but `locks`.
//!
//! See <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-ASYNC>.

use crate::locks::lock;
use bytes::BytesMut;
use sluice_protocol::backend::encode_parameter_status;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, Weak};

/// How many distinct parameter sets `RecentSets` remembers.
const RECENT_SETS: usize = 8;

/// Lowercased name → (name as first seen, value).
type ParameterMap = BTreeMap<String, (String, String)>;

/// Parameter values by name; names compare case-insensitively, as PostgreSQL's do.
///
/// Copies share one map until one of them changes. Most clients and server connections
/// of a tenant have equal sets, and every lease compares the client's with the server
/// connection's: once two equal sets were compared they share the map (`share`), and
/// later comparisons are a pointer compare.
#[derive(Clone, Debug, Default, Eq)]
pub struct Parameters {
    values: Arc<ParameterMap>,
}

impl PartialEq for Parameters {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.values, &other.values) || self.values == other.values
    }
}

impl Parameters {
    pub fn set(&mut self, name: &str, value: &str) {
        let key = lookup_key(name);
        match self.values.get(&*key) {
            Some((_, current)) if current == value => {}
            Some(_) => {
                let (_, current) = Arc::make_mut(&mut self.values)
                    .get_mut(&*key)
                    .expect("present above");
                value.clone_into(current);
            }
            None => {
                Arc::make_mut(&mut self.values)
                    .insert(key.into_owned(), (name.to_owned(), value.to_owned()));
            }
        }
    }

    /// Makes two equal sets share one map, the one at the lower address, so that every
    /// set meeting others converges on a single copy. Only for equal sets.
    fn share(&mut self, other: &mut Parameters) {
        debug_assert!(*self == *other);
        if Arc::as_ptr(&self.values) < Arc::as_ptr(&other.values) {
            other.values = self.values.clone();
        } else {
            self.values = other.values.clone();
        }
    }

    /// A set of these values, for tests.
    #[cfg(test)]
    pub fn of(pairs: &[(&str, &str)]) -> Self {
        let mut parameters = Parameters::default();
        for (name, value) in pairs {
            parameters.set(name, value);
        }
        parameters
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(&*lookup_key(name))
            .map(|(_, value)| value.as_str())
    }

    fn contains(&self, name: &str) -> bool {
        self.values.contains_key(&*lookup_key(name))
    }

    fn remove(&mut self, name: &str) {
        let key = lookup_key(name);
        if self.values.contains_key(&*key) {
            Arc::make_mut(&mut self.values).remove(&*key);
        }
    }

    /// Forgets what is known of `name`, so the next sync sets it whatever it is.
    pub fn forget(&mut self, name: &str) {
        self.remove(name);
    }

    /// `name` goes back to its value in `startup`, or else in `defaults`, or is dropped.
    pub fn restore(&mut self, name: &str, startup: &Parameters, defaults: &Parameters) {
        match startup.get(name).or_else(|| defaults.get(name)) {
            Some(value) => self.set(name, value),
            None => self.remove(name),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values
            .values()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// ParameterStatus messages for the parameters `reported` lists, with these values.
    pub fn encode_status(&self, reported: &Parameters, buf: &mut BytesMut) {
        for (key, (name, default)) in reported.values.iter() {
            let value = self.values.get(key).map_or(default, |(_, value)| value);
            encode_parameter_status(buf, name, value);
        }
    }
}

/// The map key of `name`: lowercased, borrowed when it already is (most names are).
fn lookup_key(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The parameter sets clients logged in with lately, so that clients asking for the same
/// settings (typically every client of an application) share one map instead of holding
/// a copy each for as long as they stay connected.
#[derive(Default)]
pub struct RecentSets {
    sets: Mutex<Vec<Weak<ParameterMap>>>,
}

impl RecentSets {
    /// Makes `params` share the map of an equal set seen lately, or remembers it.
    pub fn share(&self, params: &mut Parameters) {
        let mut sets = lock(&self.sets);
        sets.retain(|set| set.strong_count() > 0);
        if let Some(equal) = sets
            .iter()
            .filter_map(Weak::upgrade)
            .find(|set| **set == *params.values)
        {
            params.values = equal;
            return;
        }
        if sets.len() == RECENT_SETS {
            sets.remove(0);
        }
        sets.push(Arc::downgrade(&params.values));
    }
}

/// A value no setting can have (PostgreSQL values are C strings): what sluice records for a
/// setting whose value on the server is unknown, so that it never matches a wanted one.
const DIRTY: &str = "\0unknown";

/// Parameters a server reports that describe it and that no session can set (trying
/// fails with 55P02): a failover or an upgrade changes them, a SET never does.
const READ_ONLY: [&str; 6] = [
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
    "is_superuser",
    "session_authorization",
];

/// True unless `name` is one of the read-only parameters a server reports.
pub fn is_settable(name: &str) -> bool {
    !READ_ONLY.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// What [`ServerParameters::sync`] found to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sync {
    /// SQL that sets the settings that differ, if any do.
    pub sql: Option<String>,
    /// Read-only parameters whose value the client must now be told.
    pub report: Vec<(String, String)>,
}

/// What a server connection's session has: the values it reported at login, and what
/// it has now as far as sluice knows (reported changes plus what sluice set).
pub struct ServerParameters {
    pub login: Arc<Parameters>,
    pub current: Parameters,
}

impl ServerParameters {
    pub fn new(login: Parameters) -> Self {
        ServerParameters {
            current: login.clone(),
            login: Arc::new(login),
        }
    }

    /// After `DISCARD ALL` every setting is back to its default.
    pub fn reset_to_login(&mut self) {
        self.current = (*self.login).clone();
    }

    /// What the session has for `name` is unknown: the next sync sets it, or resets it if
    /// the client does not want it.
    pub fn dirty(&mut self, name: &str) {
        if is_settable(name) {
            self.current.set(name, DIRTY);
        }
    }

    /// What the session has is unknown for every setting sluice knows of (a statement it
    /// could not read may have changed anything).
    pub fn dirty_all(&mut self) {
        let names: Vec<String> = self
            .current
            .iter()
            .map(|(name, _)| name)
            .filter(|name| is_settable(name))
            .map(str::to_owned)
            .collect();
        for name in names {
            self.current.set(&name, DIRTY);
        }
    }

    /// What makes this session's settings what `desired` asks for: SQL for the settings
    /// that differ (recorded as if it succeeded), and the server-describing values
    /// (read-only, see [`is_settable`]) that differ from what the client was told, which
    /// `desired` takes over and the client must be sent as ParameterStatus.
    pub fn sync(&mut self, desired: &mut Parameters) -> Sync {
        if self.current == *desired {
            // The common case on every lease: nothing to compare name by name, and from
            // now on not even the maps.
            self.current.share(desired);
            return Sync::default();
        }
        let mut set = Vec::new();
        let mut report = Vec::new();
        for (name, value) in desired.iter() {
            match self.current.get(name) {
                Some(current) if current == value => {}
                Some(current) if !is_settable(name) => {
                    report.push((name.to_owned(), current.to_owned()));
                }
                _ if is_settable(name) => set.push((name.to_owned(), value.to_owned())),
                _ => {}
            }
        }
        for (name, value) in &report {
            desired.set(name, value);
        }
        // Settings an earlier client had sluice make, which this client did not ask for.
        let reset: Vec<String> = self
            .current
            .iter()
            .map(|(name, _)| name)
            .filter(|name| !self.login.contains(name) && !desired.contains(name))
            .filter(|name| is_settable(name))
            .map(str::to_owned)
            .collect();
        let mut sql = String::new();
        if !set.is_empty() {
            sql.push_str("SELECT ");
            for (i, (name, value)) in set.iter().enumerate() {
                let separator = if i == 0 { "" } else { ", " };
                let _ = write!(
                    sql,
                    "{separator}pg_catalog.set_config({}, {}, false)",
                    literal(name),
                    literal(value)
                );
                self.current.set(name, value);
            }
            sql.push(';');
        }
        for name in reset {
            let _ = write!(sql, "RESET {};", identifier(&name));
            self.current.remove(&name);
        }
        Sync {
            sql: (!sql.is_empty()).then_some(sql),
            report,
        }
    }
}

/// A dollar-quoted SQL literal whose tag does not occur in `value`.
fn literal(value: &str) -> String {
    let mut tag = String::from("$s$");
    while value.contains(&tag) {
        tag.insert(2, 'x');
    }
    format!("{tag}{value}{tag}")
}

fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Parameters {
        Parameters::of(pairs)
    }

    #[test]
    fn sync_sets_differences_and_resets_what_an_earlier_client_set() {
        let login = params(&[("application_name", ""), ("TimeZone", "UTC")]);
        let mut server = ServerParameters::new(login.clone());
        let mut first = login.clone();
        first.set("application_name", "it's");
        first.set("search_path", "s_a");
        let sql = server.sync(&mut first).sql.unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config($s$application_name$s$, $s$it's$s$, false), \
             pg_catalog.set_config($s$search_path$s$, $s$s_a$s$, false);"
        );
        assert_eq!(server.sync(&mut first), Sync::default(), "already in sync");
        let mut second = login.clone();
        let sql = server.sync(&mut second).sql.unwrap();
        assert!(
            sql.contains("set_config($s$application_name$s$, $s$$s$, false)"),
            "{sql}"
        );
        assert!(sql.ends_with("RESET \"search_path\";"), "{sql}");
        assert_eq!(server.sync(&mut second), Sync::default());
    }

    #[test]
    fn equal_sets_compared_once_share_their_map_and_part_on_change() {
        let login = params(&[("application_name", ""), ("TimeZone", "UTC")]);
        let mut server = ServerParameters::new(login.clone());
        let mut client = params(&[("TimeZone", "UTC"), ("application_name", "")]);
        assert!(!Arc::ptr_eq(&server.current.values, &client.values));
        assert_eq!(server.sync(&mut client), Sync::default());
        assert!(Arc::ptr_eq(&server.current.values, &client.values));
        client.set("application_name", "app");
        assert_eq!(server.current.get("application_name"), Some(""));
        assert_eq!(client.get("application_name"), Some("app"));
    }

    #[test]
    fn clients_asking_for_the_same_settings_share_one_map() {
        let recent = RecentSets::default();
        let mut first = params(&[("application_name", "app")]);
        let mut second = params(&[("application_name", "app")]);
        let mut other = params(&[("application_name", "other")]);
        recent.share(&mut first);
        recent.share(&mut second);
        recent.share(&mut other);
        assert!(Arc::ptr_eq(&first.values, &second.values));
        assert!(!Arc::ptr_eq(&first.values, &other.values));
        drop((first, second));
        let mut third = params(&[("application_name", "app")]);
        recent.share(&mut third);
        assert_eq!(third.get("application_name"), Some("app"));
    }

    #[test]
    fn read_only_parameters_are_reported_to_the_client_never_set() {
        // The client was greeted by a standby; its connection now is to the promoted one.
        let mut client = params(&[("in_hot_standby", "on"), ("TimeZone", "UTC")]);
        let login = params(&[("in_hot_standby", "off"), ("TimeZone", "UTC")]);
        let mut server = ServerParameters::new(login);
        let sync = server.sync(&mut client);
        assert_eq!(sync.sql, None, "nothing a session could set differs");
        assert_eq!(
            sync.report,
            [("in_hot_standby".to_owned(), "off".to_owned())]
        );
        assert_eq!(client.get("in_hot_standby"), Some("off"));
        assert_eq!(server.sync(&mut client), Sync::default());
        assert!(!is_settable("Server_Version") && is_settable("search_path"));
    }

    #[test]
    fn literals_never_close_early() {
        assert_eq!(literal("a$s$b"), "$sx$a$s$b$sx$");
    }
}
