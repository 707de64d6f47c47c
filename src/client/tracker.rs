//! Protocol position of a server connection while a client uses it: how
//! many ReadyForQuery messages are still owed, whether an extended-query
//! batch is open, COPY IN state, and the last transaction status. This is
//! what decides when a server can go back to the pool.

use crate::protocol::frame::{be, fe};

/// Counts requests and responses on one server connection.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Query/Sync/FunctionCall messages sent whose ReadyForQuery has not
    /// arrived yet.
    outstanding: u32,
    /// Extended-query messages sent since the last Sync: the server is in
    /// the middle of a batch and must not change hands.
    batch_open: bool,
    /// Syncs sent since the last command that could start COPY IN; the
    /// server ignores Syncs that arrive during COPY IN, so they owe nothing.
    syncs_since_command: u32,
    copy_in: bool,
    status: u8,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            outstanding: 0,
            batch_open: false,
            syncs_since_command: 0,
            copy_in: false,
            status: b'I',
        }
    }
}

impl Tracker {
    /// Notes a client message about to be sent to the server.
    pub fn sent(&mut self, tag: u8) {
        match tag {
            fe::QUERY | fe::FUNCTION_CALL => {
                self.outstanding += 1;
                self.batch_open = false;
                self.syncs_since_command = 0;
            }
            fe::SYNC => {
                self.outstanding += 1;
                self.batch_open = false;
                self.syncs_since_command += 1;
            }
            fe::EXECUTE => {
                self.batch_open = true;
                self.syncs_since_command = 0;
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::FLUSH => self.batch_open = true,
            fe::COPY_DONE | fe::COPY_FAIL if self.copy_in => {
                self.copy_in = false;
                self.outstanding = self.outstanding.saturating_sub(self.syncs_since_command);
                self.syncs_since_command = 0;
            }
            _ => {}
        }
    }

    /// Notes a server message. Returns true when it was a ReadyForQuery
    /// that leaves nothing outstanding.
    pub fn received(&mut self, tag: u8, status: u8) -> bool {
        match tag {
            be::READY_FOR_QUERY => {
                self.outstanding = self.outstanding.saturating_sub(1);
                self.status = status;
                self.copy_in = false;
                self.is_quiet()
            }
            be::COPY_IN_RESPONSE => {
                self.copy_in = true;
                false
            }
            _ => false,
        }
    }

    /// Nothing in flight: every request answered and no batch open.
    pub fn is_quiet(&self) -> bool {
        self.outstanding == 0 && !self.batch_open
    }

    /// Quiet and outside a transaction block: safe to hand to another client.
    pub fn is_reusable(&self) -> bool {
        self.is_quiet() && self.status == b'I'
    }

    /// Last transaction status from ReadyForQuery ('I', 'T' or 'E').
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Requests sent and not answered yet.
    #[allow(dead_code)] // not read anywhere yet
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_query_round_trip() {
        let mut t = Tracker::default();
        t.sent(fe::QUERY);
        assert!(!t.is_quiet());
        assert!(t.received(be::READY_FOR_QUERY, b'I'));
        assert!(t.is_reusable());
    }

    #[test]
    fn pipelined_queries_need_every_ready() {
        let mut t = Tracker::default();
        t.sent(fe::QUERY);
        t.sent(fe::QUERY);
        assert!(!t.received(be::READY_FOR_QUERY, b'I'));
        assert!(t.received(be::READY_FOR_QUERY, b'I'));
    }

    #[test]
    fn open_batch_holds_the_server() {
        let mut t = Tracker::default();
        t.sent(fe::PARSE);
        t.sent(fe::FLUSH);
        assert!(!t.is_quiet());
        t.sent(fe::SYNC);
        assert!(t.received(be::READY_FOR_QUERY, b'I'));
    }

    #[test]
    fn transaction_block_is_not_reusable() {
        let mut t = Tracker::default();
        t.sent(fe::QUERY);
        assert!(t.received(be::READY_FOR_QUERY, b'T'));
        assert!(!t.is_reusable());
    }

    #[test]
    fn extended_copy_in_ignores_the_sync_sent_during_copy() {
        // libpq: Parse Bind Execute Sync, CopyData…, CopyDone, Sync
        let mut t = Tracker::default();
        for tag in [fe::PARSE, fe::BIND, fe::EXECUTE, fe::SYNC] {
            t.sent(tag);
        }
        t.received(be::COPY_IN_RESPONSE, 0);
        t.sent(fe::COPY_DATA);
        t.sent(fe::COPY_DONE);
        t.sent(fe::SYNC);
        assert!(t.received(be::READY_FOR_QUERY, b'I'));
        assert!(t.is_reusable());
    }

    #[test]
    fn simple_copy_in() {
        let mut t = Tracker::default();
        t.sent(fe::QUERY);
        t.received(be::COPY_IN_RESPONSE, 0);
        t.sent(fe::COPY_DATA);
        t.sent(fe::COPY_DONE);
        assert!(t.received(be::READY_FOR_QUERY, b'I'));
    }
}
