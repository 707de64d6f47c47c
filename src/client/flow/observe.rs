//! Query observation: what a statement about to run does (its `Effect`,
//! with an `Observed` start time), what its answers say (rows, an error's
//! SQLSTATE), and the finished statement handed to the observer.

use std::sync::Arc;

use super::{FlowEnv, SessionFlow};
use crate::client::effects::{self, Changes, Effect, Observed, SqlText};
use crate::client::route_setting;
use crate::observe::QueryEvent;
use crate::protocol::frame::{self, be};
use crate::routing::{Route, SessionChange, StatementInfo};

impl<E: FlowEnv> SessionFlow<'_, E> {
    /// Notes what a statement about to run does: writes (for
    /// read-your-writes) and pins. Returns its effects for completion.
    pub(super) fn effects_of(
        &mut self,
        info: &Arc<StatementInfo>,
        session: &[SessionChange],
        sql: SqlText,
    ) -> Effect {
        if info.route == Route::Write {
            self.hold.wrote = true;
            self.hold
                .tables_written
                .extend(info.tables_written.iter().cloned());
        }
        if let Some(pin) = info.pin {
            self.client.pins.add(pin);
        }
        if info.opaque {
            self.client.readback.opaque_ran();
        }
        // Nearly every statement changes nothing: no call for it.
        let changes = if session.is_empty() && info.unpin.is_none() {
            None
        } else {
            self.changes_of(info, session)
        };
        Effect {
            changes,
            observed: Some(Observed {
                info: info.clone(),
                sql,
                start: self.hold.clock.now(),
                rows: 0,
                error: None,
            }),
        }
    }

    /// What a statement with session changes or a release changes once
    /// it completes.
    #[cold]
    fn changes_of(
        &mut self,
        info: &StatementInfo,
        session: &[SessionChange],
    ) -> Option<Box<Changes>> {
        let params = if session.is_empty() {
            Vec::new()
        } else {
            match effects::param_changes(session) {
                Some(c) => c,
                None => {
                    // A change the proxy cannot replay elsewhere: stay here.
                    self.client.pins.add_untracked();
                    Vec::new()
                }
            }
        };
        Changes {
            params,
            route: route_setting::after(session),
            min_lsn: route_setting::min_lsn_after(session),
            unpin: info.unpin.clone(),
        }
        .boxed()
    }

    /// The text to hand the observer: the original only if EXPLAIN may
    /// use it (copied into the client's text buffer, not allocated).
    pub(super) fn sql_for_observer(&mut self, raw: &[u8], info: &StatementInfo) -> SqlText {
        if self.env.wants_sql() {
            let client = &mut *self.client;
            let text = client.memo.text_of(client.params.encoding(), raw);
            client.texts.hold(&text, &self.hold.pending)
        } else {
            SqlText::Shared(info.normalized.clone())
        }
    }

    /// What a CommandComplete or ErrorResponse says about the statement
    /// at the head of the queue: its rows, its error, and whether a
    /// transaction block committed.
    #[inline]
    pub(super) fn note_outcome(&mut self, tag: u8, frame: &[u8]) {
        match tag {
            be::COMMAND_COMPLETE => {
                let tag_text = frame::body(frame);
                // Nearly every tag is neither: one byte tells.
                let first = tag_text.first().copied();
                if first == Some(b'C') && tag_text.starts_with(b"COMMIT\0") {
                    self.hold.last_was_commit = true;
                    // Committed, even if `COMMIT AND CHAIN` goes on in a
                    // new block that may roll back.
                    self.client.params.end_transaction(true);
                    self.client.routing.end_transaction(true);
                } else if first == Some(b'R') && tag_text.starts_with(b"ROLLBACK\0") {
                    self.hold.last_was_commit = false;
                }
                if let Some(o) = self.head_observed() {
                    o.rows += rows_of(tag_text);
                }
            }
            be::ERROR_RESPONSE => {
                if let Some(o) = self.head_observed() {
                    let (_, code, _) = crate::protocol::error::parse_error_fields(frame);
                    o.error = Some(code.unwrap_or("XX000").into());
                }
            }
            _ => {}
        }
    }

    /// The observation of the statement at the head of the queue, if it
    /// is being observed.
    #[inline]
    fn head_observed(&mut self) -> Option<&mut Observed> {
        let token = self.expect.head_statement_token();
        self.hold
            .pending
            .get_mut(token)
            .and_then(|e| e.observed.as_mut())
    }

    /// Tells the observer about a finished statement.
    pub(super) fn observe(&mut self, o: Observed) {
        let duration = self.hold.clock.now().saturating_duration_since(o.start);
        self.env.record(&QueryEvent {
            fingerprint: o.info.fingerprint.low64(),
            normalized: &o.info.normalized,
            sql: self.client.texts.get(&o.sql),
            params: None,
            is_write: o.info.route == Route::Write,
            role: self.hold.role,
            node: self.hold.node,
            node_addr: self.env.node_addr(),
            duration,
            rows: o.rows,
            error: o.error.as_deref(),
            user: &self.who.user,
            database: &self.who.database,
            application_name: &self.who.application_name,
        });
    }
}

/// The row count at the end of a CommandComplete tag ("SELECT 5",
/// "INSERT 0 1", "UPDATE 3"); 0 for tags without one.
#[inline]
fn rows_of(tag: &[u8]) -> u64 {
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    let digits = tag.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == tag.len() {
        return 0;
    }
    // Read digit by digit: through `str::parse` it cost a UTF-8 check
    // and a call per statement. Too large for a u64: 0, as before.
    tag[tag.len() - digits..]
        .iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::rows_of;

    #[test]
    fn row_counts_are_read_from_command_tags() {
        assert_eq!(rows_of(b"SELECT 5\0"), 5);
        assert_eq!(rows_of(b"INSERT 0 1\0"), 1);
        assert_eq!(rows_of(b"UPDATE 1234567\0"), 1_234_567);
        assert_eq!(rows_of(b"COPY 007"), 7);
        assert_eq!(rows_of(b"BEGIN\0"), 0);
        // All digits is no tag; past u64 is no count.
        assert_eq!(rows_of(b"123\0"), 0);
        assert_eq!(rows_of(b"SELECT 18446744073709551615\0"), u64::MAX);
        assert_eq!(rows_of(b"SELECT 18446744073709551616\0"), 0);
        assert_eq!(rows_of(b""), 0);
    }
}
