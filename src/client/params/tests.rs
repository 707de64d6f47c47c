use super::*;

fn startup(pairs: &[(&str, &str)]) -> ClientParams {
    let v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ClientParams::from_startup(&v)
}

#[test]
fn startup_params_and_options_are_settings() {
    let p = startup(&[
        ("user", "app"),
        ("database", "db"),
        ("application_name", "psql"),
        (
            "options",
            "-c search_path=a,b --statement-timeout=5s -c x.y=hello\\ world",
        ),
    ]);
    let names: Vec<&str> = p.current().keys().map(|k| &**k).collect();
    assert_eq!(
        names,
        [
            "application_name",
            "search_path",
            "statement_timeout",
            "x.y"
        ]
    );
    assert_eq!(p.startup_raw("x.y"), Some("hello world"));
}

#[test]
fn sync_sets_what_differs_and_resets_what_the_client_lacks() {
    let client = startup(&[("application_name", "a")]);
    let mut server = ServerParamsState::default();
    let sync = server.sync_sql(&client).unwrap();
    assert_eq!(
        sync.sql,
        "SELECT pg_catalog.set_config('application_name', 'a', false);"
    );
    assert!(!sync.utf8_first);
    server.assume(&client);
    assert!(server.sync_sql(&client).is_none());

    let mut other = startup(&[]);
    other.apply(
        ParamChange::Set("search_path".into(), ParamValue::Sql("'x', public".into())),
        false,
    );
    other.apply(ParamChange::Reset("application_name".into()), false);
    let sql = server.sync_sql(&other).unwrap().sql;
    // A client that never set application_name has '', as on Postgres.
    assert_eq!(
        sql,
        "SELECT pg_catalog.set_config('application_name', '', false);\
         SET search_path TO 'x', public;"
    );
}

#[test]
fn transaction_changes_apply_at_commit_only() {
    let mut p = startup(&[]);
    let before = p.hash();
    p.apply(
        ParamChange::Set("timezone".into(), ParamValue::Sql("'UTC'".into())),
        true,
    );
    assert_eq!(p.hash(), before);
    p.end_transaction(false);
    assert_eq!(p.hash(), before);
    p.apply(
        ParamChange::Set("timezone".into(), ParamValue::Sql("'UTC'".into())),
        true,
    );
    p.end_transaction(true);
    assert_ne!(p.hash(), before);
}

#[test]
fn reset_returns_to_the_startup_value() {
    let mut p = startup(&[("application_name", "boot")]);
    let boot = p.hash();
    p.apply(
        ParamChange::Set("application_name".into(), ParamValue::Sql("'x'".into())),
        false,
    );
    p.apply(ParamChange::Reset("application_name".into()), false);
    assert_eq!(p.hash(), boot);
    p.apply(
        ParamChange::Set("work_mem".into(), ParamValue::Raw("1MB".into())),
        false,
    );
    p.apply(ParamChange::ResetAll, false);
    assert_eq!(p.hash(), boot);
}

#[test]
fn unknown_server_state_starts_from_reset_all_and_quotes_names() {
    let mut p = startup(&[]);
    p.apply(
        ParamChange::Set("My.Weird\"Name".into(), ParamValue::Raw("it's".into())),
        false,
    );
    let mut server = ServerParamsState::default();
    server.mark_unknown();
    assert_eq!(
        server.sync_sql(&p).unwrap().sql,
        "RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;\
         SELECT pg_catalog.set_config('My.Weird\"Name', 'it''s', false);\
         SELECT pg_catalog.set_config('application_name', '', false);"
    );
}

#[test]
fn a_client_without_settings_still_gets_an_empty_application_name() {
    // The proxy labels its fresh server connections; the client's '' replaces
    // the label once, and then the server matches.
    let client = startup(&[("user", "u")]);
    let mut server = ServerParamsState::default();
    assert_eq!(
        server.sync_sql(&client).unwrap().sql,
        "SELECT pg_catalog.set_config('application_name', '', false);"
    );
    server.assume(&client);
    assert!(server.sync_sql(&client).is_none());
}

#[test]
fn the_client_encoding_is_tracked_from_startup_set_and_reset() {
    let mut p = startup(&[("client_encoding", "latin1")]);
    assert_eq!(p.encoding(), ClientEncoding::Latin1);
    p.apply(
        ParamChange::Set("client_encoding".into(), ParamValue::Sql("'SJIS'".into())),
        false,
    );
    assert_eq!(p.encoding(), ClientEncoding::Sjis);
    p.apply(ParamChange::Reset("client_encoding".into()), false);
    assert_eq!(p.encoding(), ClientEncoding::Latin1);
    // In a block: from COMMIT on.
    p.apply(
        ParamChange::Set("client_encoding".into(), ParamValue::Raw("EUC_JP".into())),
        true,
    );
    assert_eq!(p.encoding(), ClientEncoding::Latin1);
    p.end_transaction(true);
    assert_eq!(p.encoding(), ClientEncoding::EucJp);
    // No setting: the server's default, as reported at login.
    let mut q = startup(&[]);
    assert_eq!(q.encoding(), ClientEncoding::Utf8);
    q.set_default_encoding("SQL_ASCII");
    assert_eq!(q.encoding(), ClientEncoding::SqlAscii);
}

#[test]
fn non_ascii_values_are_sent_to_a_server_reading_utf8() {
    // The server may read another encoding when the sync arrives (it last
    // served a LATIN1 client): UTF8 first, the client's encoding last.
    let mut p = startup(&[("client_encoding", "LATIN1")]);
    p.apply(
        ParamChange::Set("my.v".into(), ParamValue::Sql("'café'".into())),
        false,
    );
    let sync = ServerParamsState::default().sync_sql(&p).unwrap();
    assert!(sync.utf8_first);
    assert!(
        sync.sql.ends_with(
            "SET my.v TO 'café';\
             SELECT pg_catalog.set_config('client_encoding', 'LATIN1', false);"
        ),
        "{}",
        sync.sql
    );
    // A client with no encoding of its own gets the server's default back.
    let mut q = startup(&[]);
    q.apply(
        ParamChange::Set("my.v".into(), ParamValue::Raw("é".into())),
        false,
    );
    let sync = ServerParamsState::default().sync_sql(&q).unwrap();
    assert!(sync.utf8_first && sync.sql.ends_with("RESET client_encoding;"));
}

#[test]
fn savepoints_shape_what_commit_keeps() {
    let set = |name: &str, v: &str| ParamChange::Set(name.into(), ParamValue::Sql(v.into()));
    let sp = |n: &str| ParamChange::Savepoint(n.into());
    let mut p = startup(&[]);
    let mut expected = startup(&[]);
    expected.apply(set("a", "1"), false);
    expected.apply(set("d", "4"), false);
    // a; SAVEPOINT s; b; SAVEPOINT t; c; ROLLBACK TO s; RELEASE s; d; COMMIT
    for change in [
        set("a", "1"),
        sp("s"),
        set("b", "2"),
        sp("t"),
        set("c", "3"),
        ParamChange::RollbackToSavepoint("s".into()),
        ParamChange::ReleaseSavepoint("s".into()),
        set("d", "4"),
        // Released: rolling back to it fails on the server, and changes nothing.
        ParamChange::RollbackToSavepoint("s".into()),
    ] {
        p.apply(change, true);
    }
    p.end_transaction(true);
    assert_eq!(p.current(), expected.current());
    // Markers outside a block change nothing.
    p.apply(sp("x"), false);
    assert_eq!(p.current(), expected.current());
}

#[test]
fn replayed_values_mean_the_same_in_either_string_mode() {
    // Raw values (startup, set_config) with a backslash or a quote.
    let client = startup(&[("application_name", r"a\'b")]);
    let sync = ServerParamsState::default().sync_sql(&client).unwrap();
    assert!(!sync.utf8_first);
    assert_eq!(
        sync.sql,
        r"SELECT pg_catalog.set_config('application_name', E'a\\''b', false);"
    );
}
