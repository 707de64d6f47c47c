//! Prepared statements after an error in the middle of an extended-query
//! batch, at the protocol level (what pipelining drivers such as psycopg's
//! pipeline mode send): the server skips everything up to Sync, including
//! the Parse of a statement first used after the error and the proxy's
//! Close of a statement its per-server cache evicted to make room. The
//! client's next use of either statement must still work.

use crate::harness;
use crate::wire::{Raw, message};

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    message(b'P', &body)
}

/// Bind of `statement` to the unnamed portal with text parameters.
fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(statement.as_bytes());
    body.push(0);
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'B', &body)
}

fn execute() -> Vec<u8> {
    message(b'E', &[0, 0, 0, 0, 0])
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// Sends `parts` as one write and reads to ReadyForQuery: the DataRow
/// values and the SQLSTATE of an error, if any.
async fn batch(raw: &mut Raw, parts: &[Vec<u8>]) -> (Vec<String>, Option<String>) {
    raw.send(&parts.concat()).await;
    let (_, seen) = raw.until_ready().await;
    let mut values = Vec::new();
    let mut error = None;
    for (tag, body) in seen {
        match tag {
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
                values.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'E' => error = Some(crate::wire::parse_error(&body).code),
            _ => {}
        }
    }
    (values, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_skipped_after_an_error_in_a_batch_work_next_time() {
    let db = harness::fresh_db("drivers_protocol");
    // One server with room for one statement: preparing a second one
    // evicts (closes) the first.
    let proxy = harness::proxy(
        "[auth]\nclient_auth = \"trust\"\n[pool]\nsize = 1\nprepared_statements_cache = 1\n",
    )
    .await;
    let (mut raw, _, _) = Raw::login_trust(proxy.addr, "app", &db).await;

    let divide = parse("divide", "SELECT (10 / $1::int)::text");
    let (values, error) = batch(
        &mut raw,
        &[divide, bind("divide", &["2"]), execute(), sync()],
    )
    .await;
    assert_eq!((values, error), (vec!["5".to_string()], None));

    // Division by zero, then a new statement in the same batch: the server
    // skips its Parse, and the proxy's Close of "divide" that made room.
    let (values, error) = batch(
        &mut raw,
        &[
            bind("divide", &["0"]),
            execute(),
            parse("other", "SELECT 'other'::text"),
            bind("other", &[]),
            execute(),
            sync(),
        ],
    )
    .await;
    assert!(values.is_empty(), "{values:?}");
    assert_eq!(error.as_deref(), Some("22012"));

    // Both statements still work, in either order, several times.
    for _ in 0..3 {
        let (values, error) = batch(&mut raw, &[bind("other", &[]), execute(), sync()]).await;
        assert_eq!((values, error), (vec!["other".to_string()], None));
        let (values, error) = batch(&mut raw, &[bind("divide", &["5"]), execute(), sync()]).await;
        assert_eq!((values, error), (vec!["2".to_string()], None));
    }
}
