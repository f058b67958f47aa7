//! Unit tests of the statement classifier.

use super::*;

fn effects(text: &str) -> Vec<(u32, Effect)> {
    let mut found = Vec::new();
    effects_of(text.as_bytes(), |i, e| found.push((i, e)));
    found
}

fn set(name: &str, value: &str) -> Effect {
    Effect::Set {
        name: name.into(),
        value: Value::Known(value.into()),
    }
}

fn one(text: &str) -> Vec<Effect> {
    effects(text).into_iter().map(|(_, e)| e).collect()
}

#[test]
fn set_statements_and_their_values() {
    assert_eq!(one("SET search_path TO s1"), [set("search_path", "s1")]);
    assert_eq!(
        one("set Search_Path = S1, public"),
        [set("search_path", "s1, public")]
    );
    assert_eq!(
        one("SET search_path TO 'My Schema', \"Other\", x"),
        [set("search_path", "\"My Schema\", \"Other\", x")]
    );
    assert_eq!(
        one("SET SESSION statement_timeout = '100ms'"),
        [set("statement_timeout", "100ms")]
    );
    assert_eq!(one("set work_mem to 4096"), [set("work_mem", "4096")]);
    assert_eq!(
        one("set extra_float_digits = -3"),
        [set("extra_float_digits", "-3")]
    );
    assert_eq!(
        one("SET myapp.tenant = 'a''b'"),
        [set("myapp.tenant", "a'b")]
    );
    assert_eq!(
        one(r"SET application_name = E'x\ty'"),
        [set("application_name", "x\ty")]
    );
    assert_eq!(
        one("SET application_name = $$x$$"),
        [set("application_name", "x")]
    );
    assert_eq!(one("SET TIME ZONE 'UTC'"), [set("timezone", "UTC")]);
    assert_eq!(
        one("SET TIME ZONE LOCAL"),
        [Effect::Reset("timezone".into())]
    );
    assert_eq!(
        one("SET statement_timeout TO DEFAULT"),
        [Effect::Reset("statement_timeout".into())]
    );
    assert_eq!(one("SET SCHEMA 'x'"), [set("search_path", "x")]);
    assert_eq!(one("SET LOCAL statement_timeout = 1"), []);
    assert_eq!(one("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), []);
    assert_eq!(one("SET work_mem FROM CURRENT"), []);
    assert_eq!(
        one("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE"),
        [Effect::Set {
            name: "timezone".into(),
            value: Value::Unknown
        }]
    );
}

#[test]
fn set_config_calls_in_a_select() {
    assert_eq!(
        one("SELECT set_config('search_path', 's1', false)"),
        [set("search_path", "s1")]
    );
    assert_eq!(
        one("select pg_catalog.set_config('a.b', '1', false), set_config('c.d', $1, false)"),
        [
            set("a.b", "1"),
            Effect::Set {
                name: "c.d".into(),
                value: Value::Unknown
            }
        ]
    );
    assert_eq!(one("SELECT set_config('a.b', '1', true)"), []);
    assert_eq!(one("SELECT set_config($1, $2, false)"), [Effect::Unknown]);
}

#[test]
fn resets_transactions_and_savepoints() {
    assert_eq!(one("RESET ALL"), [Effect::ResetAll]);
    assert_eq!(
        one("reset Search_Path"),
        [Effect::Reset("search_path".into())]
    );
    assert_eq!(one("RESET ROLE"), [Effect::Unpin(Unpin::ResetRole)]);
    assert_eq!(one("BEGIN"), [Effect::Begin]);
    assert_eq!(one("begin isolation level serializable"), [Effect::Begin]);
    assert_eq!(one("START TRANSACTION"), [Effect::Begin]);
    assert_eq!(one("COMMIT"), [Effect::Commit]);
    assert_eq!(one("END"), [Effect::Commit]);
    assert_eq!(one("ROLLBACK"), [Effect::Rollback]);
    assert_eq!(one("ABORT"), [Effect::Rollback]);
    assert_eq!(one("ROLLBACK PREPARED 'x'"), []);
    assert_eq!(one("COMMIT PREPARED 'x'"), []);
    assert_eq!(one("SAVEPOINT a"), [Effect::Savepoint("a".into())]);
    assert_eq!(
        one("ROLLBACK TO SAVEPOINT a"),
        [Effect::RollbackToSavepoint("a".into())]
    );
    assert_eq!(
        one("rollback to a"),
        [Effect::RollbackToSavepoint("a".into())]
    );
    assert_eq!(
        one("RELEASE SAVEPOINT a"),
        [Effect::ReleaseSavepoint("a".into())]
    );
}

#[test]
fn state_that_cannot_move_between_connections() {
    assert_eq!(
        one("CREATE TEMP TABLE t (x int)"),
        [Effect::Pin(Pin::TempTable)]
    );
    assert_eq!(
        one("create global temporary table t as select 1"),
        [Effect::Pin(Pin::TempTable)]
    );
    assert_eq!(one("CREATE TABLE t (x int)"), []);
    assert_eq!(one("SELECT 1 INTO TEMP t"), [Effect::Pin(Pin::TempTable)]);
    assert_eq!(
        one("SELECT pg_advisory_lock(42)"),
        [Effect::Pin(Pin::AdvisoryLock {
            key: Some("42".into()),
            shared: false
        })]
    );
    assert_eq!(
        one("select pg_try_advisory_lock_shared(1, 2)"),
        [Effect::Pin(Pin::AdvisoryLock {
            key: Some("1,2".into()),
            shared: true
        })]
    );
    assert_eq!(
        one("SELECT pg_advisory_lock(id) FROM jobs"),
        [Effect::Pin(Pin::AdvisoryLock {
            key: None,
            shared: false
        })]
    );
    assert_eq!(one("SELECT pg_advisory_xact_lock(1)"), []);
    assert_eq!(
        one("DO $$BEGIN PERFORM pg_advisory_lock(7); END$$"),
        [Effect::Pin(Pin::AdvisoryLock {
            key: None,
            shared: false
        })]
    );
    assert_eq!(
        one("SELECT pg_advisory_unlock(42)"),
        [Effect::Unpin(Unpin::AdvisoryUnlock {
            key: Some("42".into()),
            shared: false
        })]
    );
    assert_eq!(
        one("select pg_advisory_unlock_all()"),
        [Effect::Unpin(Unpin::AdvisoryUnlockAll)]
    );
    assert_eq!(
        one("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        [Effect::Pin(Pin::HoldCursor("c".into()))]
    );
    assert_eq!(one("DECLARE c CURSOR FOR SELECT 1"), []);
    assert_eq!(
        one("CLOSE c"),
        [Effect::Unpin(Unpin::CloseCursor("c".into()))]
    );
    assert_eq!(one("CLOSE ALL"), [Effect::Unpin(Unpin::CloseAllCursors)]);
    assert_eq!(
        one("PREPARE p (int) AS SELECT $1"),
        [Effect::Pin(Pin::PreparedStatement("p".into()))]
    );
    assert_eq!(one("PREPARE TRANSACTION 'x'"), []);
    assert_eq!(
        one("DEALLOCATE p"),
        [Effect::Unpin(Unpin::Deallocate("p".into()))]
    );
    assert_eq!(one("DEALLOCATE PREPARE ALL"), [Effect::DeallocateAll]);
    assert_eq!(one("LOAD 'auto_explain'"), [Effect::Pin(Pin::Load)]);
    assert_eq!(one("SET ROLE admin"), [Effect::Pin(Pin::Role)]);
    assert_eq!(
        one("SET SESSION AUTHORIZATION bob"),
        [Effect::Pin(Pin::Role)]
    );
    assert_eq!(
        one("SET SESSION AUTHORIZATION DEFAULT"),
        [Effect::Unpin(Unpin::ResetRole)]
    );
    assert_eq!(one("SET LOCAL ROLE admin"), []);
    assert_eq!(one("DISCARD TEMP"), [Effect::Unpin(Unpin::DiscardTemp)]);
    assert_eq!(one("DISCARD ALL"), [Effect::DiscardAll]);
}

#[test]
fn listen_and_unlisten() {
    assert_eq!(one("LISTEN ch1"), [Effect::Listen("ch1".into())]);
    assert_eq!(one("listen \"Ch 2\""), [Effect::Listen("Ch 2".into())]);
    assert_eq!(one("UNLISTEN ch1"), [Effect::Unlisten("ch1".into())]);
    assert_eq!(one("UNLISTEN *"), [Effect::UnlistenAll]);
}

#[test]
fn client_library_resets_are_recognised_statement_by_statement() {
    // asyncpg's pool release.
    assert_eq!(
        effects("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"),
        [
            (0, Effect::Unpin(Unpin::AdvisoryUnlockAll)),
            (1, Effect::Unpin(Unpin::CloseAllCursors)),
            (2, Effect::UnlistenAll),
            (3, Effect::ResetAll)
        ]
    );
}

#[test]
fn ordinary_queries_cost_only_the_cheap_test() {
    for text in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
        "INSERT INTO t VALUES (1)",
    ] {
        assert!(!may_have_effects(text.as_bytes()), "{text}");
        assert_eq!(effects(text), []);
    }
    // Words inside strings or identifiers do not count.
    assert_eq!(one("SELECT 'set search_path to x'"), []);
    assert_eq!(one("SELECT set_config_x FROM t"), []);
}
