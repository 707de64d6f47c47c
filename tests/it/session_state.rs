//! Session state a client changes by means the proxy cannot read in the
//! statement's text (a DO block, CALL, a user-defined function calling
//! `set_config`, `SET ROLE` run by dynamic SQL, a temporary table made in a
//! function) stays with that client: the next client of the same server
//! connection never sees it, and the client keeps it on its next server.
//! Also custom settings (placeholders) another client defined.

use tokio_postgres::Client;

use crate::harness::{self, APP};

/// Transaction pooling, reads routed to the replica: the setting changes
/// below are all made on the primary, which is where a leak would show.
fn config(pool_size: u32) -> String {
    format!(
        "{}[routing]\nread_your_writes = \"off\"\nmax_replica_lag = \"30s\"\n\
         [pool]\nsize = {pool_size}\n",
        harness::shared_replica_toml()
    )
}

/// A role `app` may `SET ROLE` to (cluster-wide, made once).
const OTHER_ROLE: &str = "session_state_other";

/// A fresh database with schema `s1`, a `t_shadow` table in both `s1` and
/// `public`, functions and a procedure that change `search_path` in ways
/// the proxy cannot see, and a function whose SET clause the server undoes.
fn database(prefix: &str) -> String {
    static ROLE: std::sync::Once = std::sync::Once::new();
    ROLE.call_once(|| {
        harness::cluster()
            .primary()
            .psql_in(
                "postgres",
                &[
                    &format!("create role {OTHER_ROLE} nologin"),
                    &format!("grant {OTHER_ROLE} to app"),
                ],
            )
            .unwrap();
    });
    let db = harness::fresh_db(prefix);
    harness::cluster()
        .primary()
        .psql_in(
            &db,
            &[
                "create schema s1",
                "grant all on schema s1 to app",
                "create table public.t_shadow (n int)",
                "create table s1.t_shadow (n int)",
                "grant all on public.t_shadow, s1.t_shadow to app",
                "create function set_path(p text) returns void language plpgsql \
                 as $$ begin perform set_config('search_path', p, false); end $$",
                "create procedure set_path_proc(p text) language plpgsql \
                 as $$ begin perform set_config('search_path', p, false); end $$",
                "create function path_inside() returns text language plpgsql \
                 set search_path = s1 as $$ begin return current_setting('search_path'); end $$",
            ],
        )
        .unwrap();
    db
}

/// Runs `sql` on the primary (reads would otherwise go to the replica,
/// and the primary's connections are where a leak would show) and returns
/// the first column of its first row.
async fn one(client: &Client, sql: &str) -> Option<String> {
    let sql = format!("/* pgsidecar:primary */ {sql}");
    harness::scalar(client, &sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {}", harness::error_text(&e)))
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {}", harness::error_text(&e)));
}

/// Rows in `s1.t_shadow` and `public.t_shadow`, read on the primary.
async fn shadow_counts(db: &str) -> (i64, i64) {
    let su = harness::connect(
        &harness::cluster()
            .primary()
            .conn_string_as("postgres", None, db),
    )
    .await
    .unwrap();
    let row = su
        .query_one(
            "select (select count(*) from s1.t_shadow), (select count(*) from public.t_shadow)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

const DEFAULT_PATH: &str = "\"$user\", public";

/// The reproduction and its variants: whatever way a client sets
/// `search_path` where the proxy cannot see it, its own inserts go to `s1`
/// and the next clients' (same server: the pool has one) to `public`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_set_by_opaque_code_stays_with_its_client() {
    let db = database("opaque_path");
    let proxy = harness::proxy(&config(1)).await;
    let forms = [
        "do $$ begin perform set_config('search_path', 's1', false); end $$",
        "select set_path('s1')",
        "call set_path_proc('s1')",
        "begin; select set_path('s1'); commit",
    ];
    for (i, form) in forms.iter().enumerate() {
        let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        exec(&a, form).await;
        assert_eq!(
            one(&a, "show search_path").await.as_deref(),
            Some("s1"),
            "{form}"
        );
        exec(&a, "insert into t_shadow values (1)").await;
        drop(a);
        for _ in 0..3 {
            let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
            assert_eq!(
                one(&b, "show search_path").await.as_deref(),
                Some(DEFAULT_PATH),
                "after {form}"
            );
            exec(&b, "insert into t_shadow values (2)").await;
        }
        assert_eq!(
            shadow_counts(&db).await,
            (i as i64 + 1, 3 * (i as i64 + 1)),
            "after {form}"
        );
    }
    // By the extended protocol (tokio-postgres prepares, then executes).
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    a.query("select set_path($1)", &[&"s1"]).await.unwrap();
    assert_eq!(one(&a, "show search_path").await.as_deref(), Some("s1"));
    drop(a);
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    assert_eq!(
        one(&b, "show search_path").await.as_deref(),
        Some(DEFAULT_PATH)
    );

    // A function's own SET clause is undone by the server when it returns:
    // nothing changes for the caller or anyone else.
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    assert_eq!(one(&a, "select path_inside()").await.as_deref(), Some("s1"));
    assert_eq!(
        one(&a, "show search_path").await.as_deref(),
        Some(DEFAULT_PATH)
    );
    exec(&a, "set search_path = s1, public").await;
    assert_eq!(one(&a, "select path_inside()").await.as_deref(), Some("s1"));
    assert_eq!(
        one(&a, "show search_path").await.as_deref(),
        Some("s1, public")
    );
    drop(a);
    assert_eq!(
        one(&b, "show search_path").await.as_deref(),
        Some(DEFAULT_PATH)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_set_in_a_do_block_reaches_no_other_client() {
    let db = database("opaque_lock_timeout");
    let proxy = harness::proxy(&config(1)).await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(
        &a,
        "do $$ begin perform set_config('lock_timeout', '1234', false); end $$",
    )
    .await;
    assert_eq!(
        one(&a, "show lock_timeout").await.as_deref(),
        Some("1234ms")
    );
    drop(a);
    for _ in 0..3 {
        let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        assert_eq!(one(&b, "show lock_timeout").await.as_deref(), Some("0"));
    }
}

/// The client's next server (another connection: the first is busy in
/// another client's transaction) gets what its DO block set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_what_its_opaque_code_set_on_its_next_server() {
    let db = database("opaque_keeps");
    let proxy = harness::proxy(&config(2)).await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let first = one(&a, "select pg_backend_pid()::text, set_path('s1')")
        .await
        .unwrap();
    exec(
        &a,
        "do $$ begin perform set_config('statement_timeout', '4321', false); end $$",
    )
    .await;
    assert_eq!(
        one(&a, "select pg_backend_pid()::text").await.unwrap(),
        first,
        "idle, A gets its server back"
    );
    // Another client takes that server (the pool hands out the most
    // recently returned) and keeps it busy.
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(&b, "begin").await;
    let held = one(&b, "select pg_backend_pid()::text").await.unwrap();
    assert_eq!(held, first, "the other client holds the server A used");
    assert_eq!(
        one(&b, "show search_path").await.as_deref(),
        Some(DEFAULT_PATH)
    );
    assert_eq!(
        one(&b, "show statement_timeout").await.as_deref(),
        Some("0")
    );

    let now = one(&a, "select pg_backend_pid()::text").await.unwrap();
    assert_ne!(now, first, "A is on another server");
    assert_eq!(one(&a, "show search_path").await.as_deref(), Some("s1"));
    assert_eq!(
        one(&a, "show statement_timeout").await.as_deref(),
        Some("4321ms")
    );
    exec(&b, "commit").await;
}

/// `SET ROLE` by dynamic SQL: the next client runs as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_set_inside_a_do_block_reaches_no_other_client() {
    let db = database("opaque_role");
    let proxy = harness::proxy(&config(1)).await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(
        &a,
        &format!("do $$ begin execute 'set role {OTHER_ROLE}'; end $$"),
    )
    .await;
    assert_eq!(
        one(&a, "select current_user::text").await.as_deref(),
        Some(OTHER_ROLE)
    );
    drop(a);
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    assert_eq!(
        one(&b, "select current_user::text").await.as_deref(),
        Some("app")
    );
}

/// A custom setting made inside a DO block (the usual multi-tenant pattern
/// hidden in a function) never reaches the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_setting_made_inside_a_do_block_reaches_no_other_client() {
    let db = database("opaque_custom");
    let proxy = harness::proxy(&config(1)).await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(
        &a,
        "do $$ begin perform set_config('app.tenant', '42', false); end $$",
    )
    .await;
    drop(a);
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    let seen = one(&b, "select current_setting('app.tenant', true)").await;
    assert_ne!(seen.as_deref(), Some("42"));
}

/// A temporary table made inside a DO block ties its client to that
/// server, as one made by a plain CREATE TEMP TABLE does; other clients
/// never see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_table_made_inside_a_do_block_keeps_its_client_on_its_server() {
    let db = database("opaque_temp");
    let proxy = harness::proxy(&config(2)).await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(
        &a,
        "do $$ begin create temp table tt (n int); insert into tt values (5); end $$",
    )
    .await;
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(&b, "begin").await;
    assert_eq!(
        one(&b, "select to_regclass('pg_temp.tt') is null")
            .await
            .as_deref(),
        Some("t")
    );
    assert_eq!(
        one(&a, "select n::text from tt").await.as_deref(),
        Some("5")
    );
    exec(&b, "commit").await;
}

/// Postgres keeps a custom setting (placeholder) defined once a session
/// has set it: `current_setting(name, true)` is then '' after RESET, and
/// NULL in a session that never set it. Through the proxy each client sees
/// what its own direct connection would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_settings_are_defined_only_for_the_clients_that_set_them() {
    let db = database("placeholder");
    let proxy = harness::proxy(&config(2)).await;
    let a = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(&a, "set my.var = 'x'").await;
    exec(&a, "reset my.var").await;
    let probe = "select coalesce(current_setting('my.var', true), '<null>')";
    assert_eq!(one(&a, probe).await.as_deref(), Some(""));
    for _ in 0..3 {
        let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
        assert_eq!(one(&b, probe).await.as_deref(), Some("<null>"));
    }
    // A keeps its own view on another server.
    let b = harness::connect_proxy(&proxy, APP, &db).await.unwrap();
    exec(&b, "begin").await;
    one(&b, "select 1").await;
    assert_eq!(one(&a, probe).await.as_deref(), Some(""));
    exec(&b, "commit").await;
}
