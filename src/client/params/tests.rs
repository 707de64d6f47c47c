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
    let sql = server.sync_sql(&client).unwrap();
    assert_eq!(
        sql,
        "SELECT pg_catalog.set_config('application_name', 'a', false);"
    );
    server.assume(&client);
    assert_eq!(server.sync_sql(&client), None);

    let mut other = startup(&[]);
    other.apply(
        ParamChange::Set("search_path".into(), ParamValue::Sql("'x', public".into())),
        false,
    );
    let sql = server.sync_sql(&other).unwrap();
    assert_eq!(
        sql,
        "RESET application_name;SET search_path TO 'x', public;"
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
        server.sync_sql(&p).unwrap(),
        "RESET ALL;SELECT pg_catalog.set_config('My.Weird\"Name', 'it''s', false);"
    );
}

#[test]
fn a_fresh_server_matches_a_client_without_settings() {
    assert_eq!(
        ServerParamsState::default().sync_sql(&startup(&[("user", "u")])),
        None
    );
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
    let sql = ServerParamsState::default().sync_sql(&client).unwrap();
    assert_eq!(
        sql,
        r"SELECT pg_catalog.set_config('application_name', E'a\\''b', false);"
    );
}
