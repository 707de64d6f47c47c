//! Transaction effects, session pins and releases, literal-dependent session
//! changes (never served stale from the cache), and the tables touched.

use super::super::{PinReason, RouteSetting, SessionChange, TxEffect, Unpin};
use super::{classifier, classify};

#[test]
fn transaction_effects() {
    let cases = [
        (
            "begin",
            TxEffect::Begin {
                read_only: None,
                serializable: None,
            },
        ),
        (
            "BEGIN READ ONLY",
            TxEffect::Begin {
                read_only: Some(true),
                serializable: None,
            },
        ),
        (
            "start transaction isolation level serializable, read write",
            TxEffect::Begin {
                read_only: Some(false),
                serializable: Some(true),
            },
        ),
        (
            "begin transaction isolation level repeatable read read only",
            TxEffect::Begin {
                read_only: Some(true),
                serializable: Some(false),
            },
        ),
        ("commit", TxEffect::Commit),
        ("end", TxEffect::Commit),
        ("rollback", TxEffect::Rollback),
        ("abort", TxEffect::Rollback),
        ("savepoint a", TxEffect::Savepoint),
        ("release savepoint a", TxEffect::ReleaseSavepoint),
        ("rollback to savepoint a", TxEffect::RollbackToSavepoint),
        (
            "set transaction read only",
            TxEffect::SetTransaction {
                read_only: Some(true),
                serializable: None,
            },
        ),
        (
            "set transaction isolation level serializable",
            TxEffect::SetTransaction {
                read_only: None,
                serializable: Some(true),
            },
        ),
        (
            "set session characteristics as transaction read write",
            TxEffect::SetSessionCharacteristics {
                read_only: Some(false),
                serializable: None,
            },
        ),
        (
            "begin; insert into t values (1)",
            TxEffect::Begin {
                read_only: None,
                serializable: None,
            },
        ),
        ("insert into t values (1); commit", TxEffect::Commit),
        ("select 1", TxEffect::None),
    ];
    for (sql, want) in cases {
        assert_eq!(classify(sql).info.tx, want, "{sql:?}");
    }
}

#[test]
fn pins_and_releases() {
    use PinReason::*;
    let pins = [
        ("select pg_advisory_lock(1)", Some(AdvisoryLock)),
        (
            "select pg_try_advisory_lock_shared(1, 2)",
            Some(AdvisoryLock),
        ),
        ("select pg_advisory_xact_lock(1)", None),
        ("select pg_try_advisory_xact_lock(1)", None),
        ("listen ch", Some(Listen)),
        ("create temp table x (a int)", Some(TempObject)),
        ("create temporary table x as select 1", Some(TempObject)),
        ("create temp view v as select 1", Some(TempObject)),
        ("create temp sequence s", Some(TempObject)),
        ("select * into temp x from t", Some(TempObject)),
        ("create table x (a int)", None),
        ("declare c cursor with hold for select 1", Some(HoldCursor)),
        ("declare c cursor for select 1", None),
        ("prepare p as select 1", Some(SqlPrepare)),
        (
            "insert into t select pg_advisory_lock(1)",
            Some(AdvisoryLock),
        ),
    ];
    for (sql, want) in pins {
        assert_eq!(classify(sql).info.pin, want, "{sql:?}");
    }
    let unpins = [
        (
            "select pg_advisory_unlock_all()",
            Some(Unpin::AdvisoryUnlockAll),
        ),
        ("unlisten *", Some(Unpin::UnlistenAll)),
        ("unlisten ch", None),
        ("discard all", Some(Unpin::DiscardAll)),
        ("discard temp", None),
        ("deallocate all", Some(Unpin::DeallocateAll)),
        (
            "DEALLOCATE PREPARE MyStmt",
            Some(Unpin::Deallocate("mystmt".into())),
        ),
        (
            "deallocate \"MyStmt\"",
            Some(Unpin::Deallocate("MyStmt".into())),
        ),
    ];
    for (sql, want) in unpins {
        assert_eq!(classify(sql).info.unpin, want, "{sql:?}");
    }
}

fn set(name: &str, value: &str, local: bool) -> SessionChange {
    SessionChange::Set {
        name: name.into(),
        value: value.into(),
        local,
    }
}

#[test]
fn session_changes() {
    let reset = |name: &str| SessionChange::Reset {
        name: name.into(),
        local: false,
    };
    let cases: Vec<(&str, Vec<SessionChange>)> = vec![
        (
            "set search_path = 'a', public",
            vec![set("search_path", "'a', public", false)],
        ),
        (
            "SET Search_Path TO \"My Schema\" , public",
            vec![set("search_path", "\"My Schema\", public", false)],
        ),
        (
            "set session statement_timeout = 5000",
            vec![set("statement_timeout", "5000", false)],
        ),
        (
            "set local lock_timeout to '1s'",
            vec![set("lock_timeout", "'1s'", true)],
        ),
        (
            "set time zone 'Europe/Paris'",
            vec![set("timezone", "'Europe/Paris'", false)],
        ),
        ("set time zone local", vec![reset("timezone")]),
        (
            "set application_name to default",
            vec![reset("application_name")],
        ),
        ("set role admin", vec![set("role", "admin", false)]),
        (
            "set session authorization bob",
            vec![set("session_authorization", "bob", false)],
        ),
        (
            "set names 'UTF8'",
            vec![set("client_encoding", "'UTF8'", false)],
        ),
        ("set my.var = -5 /* c */", vec![set("my.var", "-5", false)]),
        ("reset work_mem", vec![reset("work_mem")]),
        ("reset all", vec![SessionChange::ResetAll]),
        ("set transaction read only", vec![]),
        (
            "select set_config('search_path', 'a, public', false)",
            vec![SessionChange::SetConfig {
                name: "search_path".into(),
                value: "a, public".into(),
                local: false,
            }],
        ),
        (
            "select pg_catalog.set_config('App.X', 'it''s', true)",
            vec![SessionChange::SetConfig {
                name: "app.x".into(),
                value: "it's".into(),
                local: true,
            }],
        ),
        (
            "select set_config($1, $2, false)",
            vec![SessionChange::Untracked { name: None }],
        ),
        (
            "set a = 1; set b = 2",
            vec![set("a", "1", false), set("b", "2", false)],
        ),
        ("select 1", vec![]),
        // What a ROLLBACK in the same string undoes is not reported.
        ("begin; set a = 1; rollback", vec![]),
        ("set a = 1; abort", vec![]),
        (
            "begin; set a = 1; commit; set b = 2; rollback work",
            vec![set("a", "1", false)],
        ),
        (
            "set a = 1; rollback and chain; set b = 2",
            vec![set("b", "2", false)],
        ),
        (
            "begin; set a = 1; savepoint s; set b = 2; rollback to savepoint S; set c = 3; commit",
            vec![
                set("a", "1", false),
                SessionChange::Savepoint("s".into()),
                set("c", "3", false),
            ],
        ),
        (
            "set a = 1; savepoint \"S\"; set b = 2; release \"S\"; rollback transaction to s",
            // A savepoint made before the string: pending changes go too.
            vec![SessionChange::RollbackToSavepoint("s".into())],
        ),
        (
            "savepoint s; set a = 1; rollback to s; set b = 2; rollback to s",
            vec![SessionChange::Savepoint("s".into())],
        ),
        (
            "savepoint s; set a = 1; release savepoint s",
            vec![
                SessionChange::Savepoint("s".into()),
                set("a", "1", false),
                SessionChange::ReleaseSavepoint("s".into()),
            ],
        ),
        (
            "set a = 1; rollback prepared 'x'",
            vec![set("a", "1", false)],
        ),
        ("set a = 1; end; rollback", vec![set("a", "1", false)]),
    ];
    let c = classifier();
    for (sql, want) in cases {
        let got = c.classify(sql);
        assert_eq!(got.session, want, "{sql:?}");
        assert!(want.is_empty() || got.info.has_session_changes, "{sql:?}");
    }
}

#[test]
fn session_values_never_come_from_the_cache() {
    let c = classifier();
    for value in ["'a'", "'b', public", "c"] {
        let got = c.classify(&format!("set search_path = {value}"));
        assert_eq!(got.session, vec![set("search_path", value, false)]);
    }
    for (arg, local) in [("false", false), ("true", true), ("false", false)] {
        let got = c.classify(&format!("select set_config('x.y', 'v', {arg})"));
        assert_eq!(
            got.session,
            vec![SessionChange::SetConfig {
                name: "x.y".into(),
                value: "v".into(),
                local
            }]
        );
    }
}

#[test]
fn proxy_route_setting() {
    let route = |setting, value: &str| SessionChange::Route {
        setting,
        value: value.into(),
        local: false,
    };
    let c = classifier();
    let cases = [
        (
            "set pgsidecar.route = 'primary'",
            route(Some(RouteSetting::Primary), "'primary'"),
        ),
        (
            "SET pgsidecar.route TO 'Replica'",
            route(Some(RouteSetting::Replica), "'Replica'"),
        ),
        (
            "set pgsidecar.route = auto",
            route(Some(RouteSetting::Auto), "auto"),
        ),
        (
            "set pgsidecar.route to default",
            route(Some(RouteSetting::Auto), "default"),
        ),
        (
            "reset pgsidecar.route",
            route(Some(RouteSetting::Auto), "DEFAULT"),
        ),
        (
            "set pgsidecar.route = 'sideways'",
            route(None, "'sideways'"),
        ),
        (
            "set local pgsidecar.route = 'replica'",
            SessionChange::Route {
                setting: Some(RouteSetting::Replica),
                value: "'replica'".into(),
                local: true,
            },
        ),
    ];
    for (sql, want) in cases {
        let got = c.classify(sql);
        assert_eq!(got.info.reason.as_str(), "proxy_setting", "{sql:?}");
        assert_eq!(got.session, vec![want], "{sql:?}");
    }
}

fn to_vec(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn tables(sql: &str) -> (Vec<String>, Vec<String>) {
    let info = classify(sql).info;
    let names = |v: &[std::sync::Arc<str>]| v.iter().map(|s| s.to_string()).collect();
    (names(&info.tables_read), names(&info.tables_written))
}

#[test]
fn tables_read_and_written() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("select * from t join u on t.a = u.a", &["t", "u"], &[]),
        ("select * from Public.\"MyT\"", &["MyT", "public.MyT"], &[]),
        ("with x as (select * from t) select * from x", &["t"], &[]),
        ("select * from generate_series(1, 3)", &[], &[]),
        (
            "select (select max(a) from s.u) from t",
            &["s.u", "t", "u"],
            &[],
        ),
        ("insert into t select * from u", &["u"], &["t"]),
        (
            "update t set a = u.a from u where t.id = u.id",
            &["u"],
            &["t"],
        ),
        (
            "delete from s.t using u where t.id = u.id",
            &["u"],
            &["s.t", "t"],
        ),
        (
            "with d as (delete from a returning *) select * from d join b on true",
            &["b"],
            &["a"],
        ),
        (
            "merge into t using s on t.id = s.id when matched then delete",
            &["s"],
            &["t"],
        ),
        ("truncate a, b", &[], &["a", "b"]),
        ("copy t to stdout", &["t"], &[]),
        ("copy t from stdin", &[], &["t"]),
        ("select * into t2 from t", &["t"], &["t2"]),
        ("create table t2 as select * from t", &["t"], &["t2"]),
        ("alter table t add column b int", &[], &["t"]),
        ("drop table t, s.u", &[], &["s.u", "t", "u"]),
        ("refresh materialized view mv", &[], &["mv"]),
        ("table t", &["t"], &[]),
        ("explain delete from t", &["t"], &[]),
        ("select 1; insert into w values (1)", &[], &["w"]),
    ];
    for &(sql, read, written) in cases {
        let (r, w) = tables(sql);
        assert_eq!((r, w), (to_vec(read), to_vec(written)), "{sql:?}");
    }
}

#[test]
fn proxy_min_lsn_and_show() {
    use crate::cluster::Lsn;
    use crate::routing::ProxyParam;
    let c = classifier();
    let lsn = |s: &str| s.parse::<Lsn>().unwrap();
    let min = |l: Option<Lsn>, value: &str, local| SessionChange::MinLsn {
        lsn: l,
        value: value.into(),
        local,
    };
    let cases = [
        (
            "set pgsidecar.min_lsn = '0/16B3748'",
            min(Some(lsn("0/16B3748")), "'0/16B3748'", false),
        ),
        (
            "SET pgsidecar.min_lsn TO '16/b374d848'",
            min(Some(lsn("16/B374D848")), "'16/b374d848'", false),
        ),
        (
            "set pgsidecar.min_lsn = 'yesterday'",
            min(None, "'yesterday'", false),
        ),
        ("set pgsidecar.min_lsn = ''", min(Some(Lsn(0)), "''", false)),
        (
            "set pgsidecar.min_lsn to default",
            min(Some(Lsn(0)), "default", false),
        ),
        (
            "reset pgsidecar.min_lsn",
            min(Some(Lsn(0)), "DEFAULT", false),
        ),
        (
            "set local pgsidecar.min_lsn = '0/1'",
            min(Some(Lsn(1)), "'0/1'", true),
        ),
        (
            "show pgsidecar.route",
            SessionChange::Show(ProxyParam::Route),
        ),
        (
            "SHOW pgsidecar.last_write_lsn",
            SessionChange::Show(ProxyParam::LastWriteLsn),
        ),
        (
            "show PGSIDECAR.MIN_LSN",
            SessionChange::Show(ProxyParam::MinLsn),
        ),
    ];
    for (sql, want) in cases {
        let got = c.classify(sql);
        assert_eq!(got.info.reason.as_str(), "proxy_setting", "{sql:?}");
        assert_eq!(got.session, vec![want], "{sql:?}");
    }
    // Other SHOWs are plain reads the server answers.
    let other = c.classify("show search_path");
    assert_eq!(other.info.reason.as_str(), "read");
    assert!(other.session.is_empty());
    let other = c.classify("show pgsidecar.other");
    assert_eq!(other.info.reason.as_str(), "read");
}

/// Opaque: code that may change the session where the text does not say.
/// Built-ins the allow-list knows are not, so plain reads and writes cost
/// the proxy nothing more.
#[test]
fn opaque_statements_are_those_running_user_code() {
    for sql in [
        "select now()",
        "select count(*), max(id) from t where id = 1",
        "select to_char(now(), 'YYYY'), json_build_object('a', 1)",
        "select pg_catalog.now()",
        "insert into t values (1)",
        "update t set v = lower(v) where id = $1",
        "set search_path = x",
        "select set_config('a.b', 'c', false)",
        "select nextval('s')",
        "select pg_advisory_lock(1)",
        "begin",
        "commit",
        "explain select my_func()",
        "",
    ] {
        assert!(!classify(sql).info.opaque, "{sql:?} is not opaque");
    }
    for sql in [
        "do $$ begin perform set_config('search_path', 's1', false); end $$",
        "DO LANGUAGE plpgsql $$ begin end $$",
        "call set_path_proc('s1')",
        "select my_func()",
        "select app.safe_fn()",
        "select audit_read()",
        "select * from my_srf(1)",
        "insert into t values (f())",
        "select 1; select f()",
        "execute stmt(1)",
        "explain analyze select my_func()",
        "select from where",
    ] {
        assert!(classify(sql).info.opaque, "{sql:?} is opaque");
    }
}
