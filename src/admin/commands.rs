//! The console's commands. Each reads live state (registry, pools, cluster
//! view, observer) and answers with a table or a command tag.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::table::{Reply, Table, cell};
use crate::client::registry::ClientActivity;
use crate::protocol::{SqlState, WireError};
use crate::proxy::Shared;

/// Runs one console command.
pub async fn execute(sql: &str, shared: &Shared) -> Result<Reply, WireError> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(match words.as_slice() {
        ["SHOW", "POOLS"] => Reply::Rows(pools(shared)),
        ["SHOW", "CLIENTS"] => Reply::Rows(clients(shared)),
        ["SHOW", "SERVERS"] => Reply::Rows(servers(shared)),
        ["SHOW", "STATS"] => Reply::Rows(stats(shared)),
        ["SHOW", "NODES"] => Reply::Rows(nodes(shared)),
        ["SHOW", "QUERIES"] => Reply::Rows(queries(shared)),
        ["SHOW", "CONFIG"] => Reply::Rows(config(shared)),
        ["SHOW", "FLEET"] => Reply::Rows(fleet(shared)?),
        ["SHOW", "HELP"] | ["HELP"] => Reply::Rows(help()),
        ["RELOAD"] => {
            let result = shared.reload_from_file();
            shared.observer.metrics().config_reload(result.is_ok());
            let kept = result.map_err(|e| {
                WireError::error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!("reload refused: {e}"),
                )
            })?;
            Reply::Warned("RELOAD", kept)
        }
        ["PAUSE"] => {
            shared.paused.set(true);
            // Wait until no client holds a server (new work is held back).
            while shared
                .clients
                .all()
                .iter()
                .any(|c| c.activity() == ClientActivity::Active)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Reply::Done("PAUSE")
        }
        ["RESUME"] => {
            shared.paused.set(false);
            Reply::Done("RESUME")
        }
        _ => {
            return Err(WireError::error(
                SqlState::SYNTAX_ERROR,
                format!("unknown pgsidecar console command: \"{}\"", sql.trim()),
            )
            .with_hint("SHOW HELP lists the commands"));
        }
    })
}

fn help() -> Table {
    let mut t = Table::new(&["command", "description"]);
    for (c, d) in [
        (
            "SHOW POOLS",
            "server pools: clients and servers per (database, user, node)",
        ),
        ("SHOW CLIENTS", "connected clients"),
        ("SHOW SERVERS", "open server connections"),
        ("SHOW STATS", "totals of queries and transactions"),
        (
            "SHOW NODES",
            "primary and replicas: role, health, replication lag",
        ),
        (
            "SHOW QUERIES",
            "query fingerprints by total time, with their last plan",
        ),
        (
            "SHOW CONFIG",
            "the running configuration (passwords masked)",
        ),
        (
            "SHOW FLEET",
            "fleet members per node: share of the budget, open connections, last seen",
        ),
        ("RELOAD", "re-read the config file"),
        (
            "PAUSE",
            "hold new transactions and wait until no server is in use",
        ),
        ("RESUME", "let held transactions run"),
    ] {
        t.row(vec![cell(c), cell(d)]);
    }
    t
}

fn pools(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "database",
        "user",
        "node",
        "role",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "pool_size",
    ]);
    let config = shared.config.load();
    let cluster = shared.cluster();
    let roles: HashMap<String, &'static str> = cluster
        .status()
        .into_iter()
        .map(|n| (n.addr.to_string(), n.role.as_str()))
        .collect();
    let clients = shared.clients.all();
    for pool in shared.pools.all() {
        let key = &pool.key;
        let node = key.node.to_string();
        let mine = clients
            .iter()
            .filter(|c| c.info.database == key.database && c.info.user == key.user);
        let (mut active, mut waiting) = (0, 0);
        for c in mine {
            match (c.activity(), c.server()) {
                (ClientActivity::Active, Some(link)) if *link.node == *node => active += 1,
                (ClientActivity::Waiting, _) => waiting += 1,
                _ => {}
            }
        }
        let (open, idle) = pool.state();
        t.row(vec![
            cell(&key.database),
            cell(&key.user),
            cell(&node),
            cell(roles.get(&node).copied().unwrap_or("unknown")),
            cell(active),
            cell(waiting),
            cell(open.saturating_sub(idle)),
            cell(idle),
            cell(0),
            cell(0),
            cell(0),
            cell(0),
            cell(0),
            cell(config.proxy.pool_mode),
            cell(pool.size),
        ]);
    }
    t
}

fn clients(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "application_name",
        "remote_pid",
        "server",
        "server_id",
        "pinned",
    ]);
    for c in shared.clients.all() {
        let link = c.server();
        t.row(vec![
            cell("C"),
            cell(&c.info.user),
            cell(&c.info.database),
            cell(c.activity().as_str()),
            Some(c.info.addr.host_and_port().0),
            Some(c.info.addr.host_and_port().1.to_string()),
            cell(timestamp(c.info.connected_at)),
            cell(&c.info.application_name),
            cell(c.pid),
            link.as_ref().map(|l| l.node.to_string()),
            link.as_ref().map(|l| l.server_id.to_string()),
            cell(c.is_pinned()),
        ]);
    }
    t
}

fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "server_id",
        "remote_pid",
        "link",
    ]);
    let links: HashMap<u64, i32> = shared
        .clients
        .all()
        .iter()
        .filter_map(|c| c.server().map(|l| (l.server_id, c.pid)))
        .collect();
    for pool in shared.pools.all() {
        for s in pool.servers() {
            let link = links.get(&s.id);
            t.row(vec![
                cell("S"),
                cell(&pool.key.user),
                cell(&pool.key.database),
                cell(if link.is_some() { "active" } else { "idle" }),
                cell(&pool.key.node.host),
                cell(pool.key.node.port),
                cell(timestamp(s.opened_at)),
                cell(s.id),
                cell(s.backend_pid),
                link.map(|pid| pid.to_string()),
            ]);
        }
    }
    t
}

fn stats(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "database",
        "total_xact_count",
        "total_query_count",
        "total_query_time",
        "avg_query_time",
        "total_errors",
        "primary_query_count",
        "replica_query_count",
    ]);
    // From the counters, not the digests: those forget fingerprints (and
    // are not kept with observability.enabled = false).
    let families = shared.observer.metrics().registry().gather();
    let samples = |name: &'static str| {
        families
            .iter()
            .filter(move |f| f.name() == name)
            .flat_map(|f| f.get_metric())
    };
    let label_is = |m: &prometheus::proto::Metric, name: &str, value: &str| {
        m.get_label()
            .iter()
            .any(|l| l.name() == name && l.value() == value)
    };
    let queries = |role: &str| -> u64 {
        samples("pgsidecar_queries_total")
            .filter(|m| label_is(m, "role", role))
            .map(|m| m.get_counter().value() as u64)
            .sum()
    };
    let (primary, replica) = (queries("primary"), queries("replica"));
    let calls = primary + replica;
    let seconds: f64 = samples("pgsidecar_query_duration_seconds")
        .map(|m| m.get_histogram().sample_sum())
        .sum();
    let micros = (seconds * 1e6) as u64;
    let errors: u64 = samples("pgsidecar_errors_total")
        .filter(|m| label_is(m, "kind", "query"))
        .map(|m| m.get_counter().value() as u64)
        .sum();
    let transactions: u64 = samples("pgsidecar_transactions_total")
        .map(|m| m.get_counter().value() as u64)
        .sum();
    t.row(vec![
        cell("*"),
        cell(transactions),
        cell(calls),
        cell(micros),
        cell(micros.checked_div(calls).unwrap_or(0)),
        cell(errors),
        cell(primary),
        cell(replica),
    ]);
    t
}

fn nodes(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "node",
        "role",
        "healthy",
        "lag_seconds",
        "lag_bytes",
        "replay_lsn",
        "outstanding",
        "last_error",
    ]);
    for n in shared.cluster().status() {
        t.row(vec![
            cell(&n.addr),
            cell(n.role.as_str()),
            cell(n.healthy),
            n.lag_seconds.map(|s| format!("{s:.3}")),
            n.lag_bytes.map(|b| b.to_string()),
            n.replay_lsn.map(|l| l.to_string()),
            cell(n.outstanding),
            n.last_error.clone(),
        ]);
    }
    t
}

fn queries(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "fingerprint",
        "calls",
        "errors",
        "rows",
        "total_ms",
        "mean_ms",
        "p95_ms",
        "primary",
        "replica",
        "query",
        "plan",
    ]);
    let mut digests = shared.observer.digests();
    digests.sort_by_key(|d| std::cmp::Reverse(d.total));
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    for d in digests.into_iter().take(50) {
        let plan = d.plan.as_ref().map(|p| {
            let scans: Vec<String> = p
                .summary
                .seq_scans
                .iter()
                .map(|s| format!("Seq Scan on {} (~{} rows)", s.relation, s.rows))
                .collect();
            format!(
                "{} cost={:.2} {}",
                p.summary.top_node,
                p.summary.total_cost,
                scans.join(", ")
            )
        });
        t.row(vec![
            cell(format!("{:016x}", d.fingerprint)),
            cell(d.calls),
            cell(d.errors),
            cell(d.rows),
            cell(ms(d.total)),
            cell(ms(d.mean)),
            cell(ms(d.p95)),
            cell(d.primary),
            cell(d.replica),
            cell(&d.query),
            plan,
        ]);
    }
    t
}

fn fleet(shared: &Shared) -> Result<Table, WireError> {
    let Some(fleet) = &shared.fleet else {
        return Err(WireError::error(
            SqlState::FEATURE_NOT_SUPPORTED,
            "this pgsidecar is not a fleet member: [fleet] is not configured",
        )
        .with_hint("add [fleet] name = \"...\" to the config of every sidecar of the deployment and restart them"));
    };
    let mut t = Table::new(&[
        "fleet",
        "node",
        "budget",
        "member",
        "self",
        "present",
        "share",
        "open",
        "wanting",
        "last_seen",
        "backend_pid",
    ]);
    let identity = fleet.identity();
    for node in fleet.nodes() {
        if !node.connected && node.members.is_empty() {
            t.row(vec![
                cell(&identity.fleet),
                cell(&node.node),
                cell(node.budget),
                cell(&identity.instance),
                cell(true),
                cell(false),
                cell(node.gate.limit),
                cell(node.gate.open),
                cell(node.gate.waiting > 0),
                None,
                None,
            ]);
        }
        for m in &node.members {
            t.row(vec![
                cell(&identity.fleet),
                cell(&node.node),
                cell(node.budget),
                cell(&m.instance),
                cell(m.is_self),
                cell(m.present),
                cell(m.share),
                m.open.map(|o| o.to_string()),
                cell(m.wanting),
                cell(timestamp(m.last_seen)),
                cell(m.pid),
            ]);
        }
    }
    Ok(t)
}

fn config(shared: &Shared) -> Table {
    let mut t = Table::new(&["key", "value"]);
    let config = shared.config.load();
    let text = toml::to_string(&**config).unwrap_or_default();
    if let Ok(table) = text.parse::<toml::Table>() {
        flatten("", &toml::Value::Table(table), &mut t);
    }
    t
}

fn flatten(prefix: &str, value: &toml::Value, t: &mut Table) {
    match value {
        toml::Value::Table(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, t);
            }
        }
        toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
        {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, t);
            }
        }
        toml::Value::String(s) => t.row(vec![cell(prefix), cell(s)]),
        other => t.row(vec![cell(prefix), cell(other)]),
    }
}

fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}
