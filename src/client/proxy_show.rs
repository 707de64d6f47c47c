//! `SHOW` of the proxy's own parameters (`pgsidecar.route`,
//! `pgsidecar.min_lsn`, `pgsidecar.last_write_lsn`), answered by the proxy:
//! no server knows them.
//!
//! `pgsidecar.last_write_lsn` is a WAL position at or past the commit of
//! the client's last write — a causal token another session can wait for
//! with `pgsidecar.min_lsn`. The proxy never sees a commit's LSN in the
//! protocol, and asking the primary after every write would cost every
//! write a round trip; so it is found only when asked, from what is
//! already known: the position the fleet announced the write at, or else
//! the first primary sample the monitor took after the commit. Right after
//! a write that sample may not exist yet: the monitor is asked to take one
//! at once and the answer waits for it (one round trip to the primary).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::relay::Later;
use super::state::ClientState;
use super::tx_status::TxStatus;
use crate::cluster::{Lsn, Role};
use crate::protocol::backend;
use crate::protocol::{SqlState, WireError};
use crate::proxy::Shared;
use crate::routing::{Classified, ProxyParam, Reason, SessionChange};

/// The parameter a statement that is nothing but a `SHOW` of one of the
/// proxy's own parameters asks for.
pub fn lone_show(class: &Classified) -> Option<ProxyParam> {
    if class.info.statement_count != 1 || class.info.reason != Reason::ProxySetting {
        return None;
    }
    match class.session.as_slice() {
        [SessionChange::Show(param)] => Some(*param),
        _ => None,
    }
}

/// The answer to `SHOW param`, ending with ReadyForQuery(`status`): now,
/// or once the last write's position is known.
pub enum Answer {
    Now(BytesMut),
    Later(Later),
}

/// How long a `SHOW pgsidecar.last_write_lsn` waits for the primary
/// sample that covers the write, at least (see [`answer`]).
const MIN_WAIT: Duration = Duration::from_secs(1);

pub fn answer(
    param: ProxyParam,
    client: &ClientState,
    shared: &Shared,
    status: TxStatus,
) -> Answer {
    let value = match param {
        ProxyParam::Route => Ok(client.routing.route_shown().as_str().to_string()),
        ProxyParam::MinLsn => Ok(client.routing.min_lsn_shown().to_string()),
        ProxyParam::LastWriteLsn => match last_write_lsn(client, shared) {
            Known::Now(lsn) => Ok(lsn.to_string()),
            Known::After(t) => {
                let cluster = shared.cluster().clone();
                let interval = shared.config.load().routing.lag_check_interval;
                let limit = MIN_WAIT.max(interval.saturating_mul(2));
                return Answer::Later(Box::pin(async move {
                    let lsn = cluster.lsn_after_soon(t, limit).await;
                    reply(param, lsn.map(|l| l.to_string()).ok_or(limit), status).freeze()
                }));
            }
        },
    };
    Answer::Now(reply(param, value, status))
}

enum Known {
    Now(Lsn),
    /// The first primary sample sent after this instant.
    After(Instant),
}

fn last_write_lsn(client: &ClientState, shared: &Shared) -> Known {
    let Some((t, ticket)) = client.routing.last_write() else {
        // No write yet: every node has replayed everything it depends on.
        return Known::Now(Lsn::default());
    };
    let announced = ticket.and_then(|ticket| shared.fleet.as_ref()?.writes().lsn_of(ticket));
    match announced.or_else(|| shared.cluster().lsn_after(t)) {
        Some(lsn) => Known::Now(lsn),
        None => Known::After(t),
    }
}

/// RowDescription, DataRow and CommandComplete of a one-value `SHOW` (or
/// the error: the primary did not answer within `waited`), then
/// ReadyForQuery.
fn reply(param: ProxyParam, value: Result<String, Duration>, status: TxStatus) -> BytesMut {
    let mut out = BytesMut::new();
    match value {
        Ok(value) => {
            backend::row_description(&mut out, &[param.name()]);
            backend::data_row(&mut out, &[Some(&value)]);
            backend::command_complete(&mut out, "SHOW");
        }
        Err(waited) => out.extend_from_slice(
            &WireError::error(
                SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "the WAL position of the last write is not known: the primary has not answered within {}",
                    humantime::format_duration(waited)
                ),
            )
            .with_hint("retry once the primary answers")
            .to_bytes(),
        ),
    }
    status.put_ready(&mut out);
    out
}

/// By the extended protocol the server must answer every message in
/// order, so an unnamed `SHOW` of a proxy parameter is prepared on the
/// server as a stand-in that returns the value as the proxy knows it now:
/// `SELECT '<value>'::text AS "<name>"`. A last write whose position is not
/// known yet is asked of the primary itself, whose insert position is past
/// it (the client's reads stay on the primary until the monitor has
/// sampled past its write, so that is where it is held); on a replica the
/// stand-in raises the 55000 of a position not known.
pub fn stand_in(
    class: &Classified,
    client: &ClientState,
    shared: &Shared,
    role: Role,
) -> Option<String> {
    let param = lone_show(class)?;
    let value = match param {
        ProxyParam::Route => client.routing.route_shown().as_str().to_string(),
        ProxyParam::MinLsn => client.routing.min_lsn_shown().to_string(),
        ProxyParam::LastWriteLsn => match last_write_lsn(client, shared) {
            Known::Now(lsn) => lsn.to_string(),
            Known::After(_) if role == Role::Primary => {
                return Some(format!(
                    "SELECT pg_current_wal_insert_lsn()::text AS \"{}\"",
                    param.name()
                ));
            }
            Known::After(_) => {
                return Some(
                    "DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '55000', \
                     MESSAGE = 'the WAL position of the last write is not known yet', \
                     HINT = 'run SHOW pgsidecar.last_write_lsn by the simple protocol, or retry'; END$$"
                        .into(),
                );
            }
        },
    };
    // Values are LSNs and route names: nothing to quote.
    Some(format!("SELECT '{value}'::text AS \"{}\"", param.name()))
}

/// An answer as a [`Later`] whatever it is, for the relay.
pub fn later(answer: Answer) -> Later {
    match answer {
        Answer::Now(b) => {
            let b: Bytes = b.freeze();
            Box::pin(std::future::ready(b))
        }
        Answer::Later(l) => l,
    }
}
