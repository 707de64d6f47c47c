//! Running one EXPLAIN on a sampler connection: the transaction around
//! it, the variant for the statement's parameters and the server version
//! (see the module docs of `explain`), and the cleanup afterwards.

use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::statement::{quote_literal, scan};
use super::{ExplainError, ExplainRequest};
use crate::observe::explain::conn::Conn;

/// Name of the statement the PREPARE variant creates (and deallocates).
const PREPARED: &str = "pgsidecar_explain";
/// Longest wait for a table lock while planning, in milliseconds.
const LOCK_TIMEOUT_MS: u128 = 200;
/// First version with `EXPLAIN (GENERIC_PLAN)`.
const PG16: u32 = 160_000;

/// A plan the server returned.
#[derive(Debug)]
pub(crate) struct Explained {
    pub(crate) plan: Value,
    /// The generic plan rather than one for known values.
    pub(crate) generic: bool,
}

/// Explains `req` on `conn`. `Ok(None)`: the statement is not one
/// EXPLAIN takes (a COMMIT, a SET, DDL). On `Err` the connection's state
/// is unknown and the caller should discard it.
pub(crate) async fn explain(
    conn: &Conn,
    req: &ExplainRequest,
    statement_timeout: Duration,
) -> Result<Option<Explained>, ExplainError> {
    let facts = scan(&req.sql);
    if !facts.explainable {
        return Ok(None);
    }
    if facts.multiple {
        return Err(ExplainError::MultipleStatements);
    }
    let client = &conn.client;
    let begin = if req.is_write {
        "BEGIN"
    } else {
        "BEGIN READ ONLY"
    };
    let millis = statement_timeout.as_millis().max(1);
    // Planning takes table locks: never queue behind a migration's lock
    // (and so in front of everyone waiting for it) for long.
    let lock_millis = millis.min(LOCK_TIMEOUT_MS);
    client
        .batch_execute(&format!(
            "{begin}; SET LOCAL statement_timeout = {millis}; \
             SET LOCAL lock_timeout = {lock_millis}"
        ))
        .await?;
    let mut prepared = false;
    let result = plan(client, conn.version, req, facts.params, &mut prepared).await;
    let cleanup = if prepared {
        // Prepared statements outlive a rollback.
        format!("ROLLBACK; DEALLOCATE {PREPARED}")
    } else {
        "ROLLBACK".to_string()
    };
    client.batch_execute(&cleanup).await?;
    result.map(Some)
}

async fn plan(
    client: &Client,
    version: u32,
    req: &ExplainRequest,
    params: usize,
    prepared: &mut bool,
) -> Result<Explained, ExplainError> {
    let sql = req.sql.trim().trim_end_matches(';');
    if params == 0 {
        let rows = client
            .query(&format!("EXPLAIN (FORMAT JSON) {sql}"), &[])
            .await?;
        return first_plan(&rows, false);
    }
    if version >= PG16 {
        let statement = client
            .prepare(&format!("EXPLAIN (GENERIC_PLAN, FORMAT JSON) {sql}"))
            .await?;
        let nulls = vec![AnyNull; statement.params().len()];
        let args: Vec<&(dyn ToSql + Sync)> = nulls.iter().map(|n| n as _).collect();
        let rows = client.query(&statement, &args).await?;
        return first_plan(&rows, true);
    }
    client
        .execute(&format!("PREPARE {PREPARED} AS {sql}"), &[])
        .await?;
    *prepared = true;
    let values = req.params.as_ref().filter(|v| v.len() == params);
    let (args, generic) = match values {
        Some(values) => {
            let literals: Vec<String> = values
                .iter()
                .map(|v| {
                    v.as_deref()
                        .map_or_else(|| "NULL".to_string(), quote_literal)
                })
                .collect();
            (literals.join(", "), false)
        }
        None => {
            client
                .batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
                .await?;
            (vec!["NULL"; params].join(", "), true)
        }
    };
    let rows = client
        .query(
            &format!("EXPLAIN (FORMAT JSON) EXECUTE {PREPARED}({args})"),
            &[],
        )
        .await?;
    first_plan(&rows, generic)
}

fn first_plan(rows: &[tokio_postgres::Row], generic: bool) -> Result<Explained, ExplainError> {
    let plan: Value = rows.first().ok_or(ExplainError::NoPlan)?.try_get(0)?;
    Ok(Explained { plan, generic })
}

/// A NULL of whatever type the server expects (for the generic plan,
/// where values do not matter).
#[derive(Clone, Copy, Debug)]
struct AnyNull;

impl ToSql for AnyNull {
    fn to_sql(
        &self,
        _ty: &Type,
        _out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
