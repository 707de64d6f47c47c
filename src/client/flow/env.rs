//! What the flow needs from outside the client and the server it holds:
//! a narrow set of parts instead of all of `Shared`, so that the flow can
//! be driven in unit tests without Postgres. `SessionFlow` is generic over
//! it (static dispatch: no virtual call on the hot path); sessions use
//! [`HeldEnv`], the shared state and the held server's pool.

use std::sync::Arc;
use std::time::Instant;

use crate::client::fleet_announce::{self, Announced};
use crate::client::prepared::StatementRegistry;
use crate::client::proxy_show;
use crate::client::state::ClientState;
use crate::client::tx_status::TxStatus;
use crate::cluster::Role;
use crate::config::NodeAddr;
use crate::observe::QueryEvent;
use crate::proxy::Shared;
use crate::routing::policy::ClientRouting;
use crate::routing::{Classified, Classifier, ProxyParam};
use crate::server::ServerPool;

/// The parts of the proxy a held session's flow uses.
pub trait FlowEnv {
    fn classifier(&self) -> &Classifier;
    /// Proxy-wide statement names.
    fn statements(&self) -> &StatementRegistry;
    /// The observer wants statements' original text (for EXPLAIN).
    fn wants_sql(&self) -> bool;
    /// A finished statement, for metrics, digests, the slow-query log.
    fn record(&self, event: &QueryEvent<'_>);
    /// A client transaction ended (`transactions_total`).
    fn transaction(&self);
    /// A transaction that wrote `tables` committed at `now`: recorded for
    /// read-your-writes, and announced to the fleet if there is one.
    fn committed(
        &self,
        tables: &[Arc<str>],
        now: Instant,
        routing: &mut ClientRouting,
    ) -> Option<Announced>;
    /// The answer to a `SHOW` of the proxy's own parameter.
    fn show(&self, param: ProxyParam, client: &ClientState, status: TxStatus)
    -> proxy_show::Answer;
    /// The statement a server runs in place of such a `SHOW` prepared by
    /// the extended protocol (see `proxy_show::stand_in`).
    fn show_stand_in(&self, class: &Classified, client: &ClientState, role: Role)
    -> Option<String>;
    /// The held server's pool prepared statement `id` successfully.
    fn statement_ok(&self, id: u64);
    /// The held server's node, for the observer.
    fn node_addr(&self) -> &NodeAddr;
    /// The user the held server is logged in as.
    fn server_user(&self) -> &str;
}

/// The flow's parts in a running proxy.
pub struct HeldEnv<'a> {
    pub shared: &'a Shared,
    pub pool: &'a ServerPool,
}

impl FlowEnv for HeldEnv<'_> {
    #[inline]
    fn classifier(&self) -> &Classifier {
        &self.shared.classifier
    }

    #[inline]
    fn statements(&self) -> &StatementRegistry {
        &self.shared.statements
    }

    #[inline]
    fn wants_sql(&self) -> bool {
        self.shared.observer.wants_sql()
    }

    #[inline]
    fn record(&self, event: &QueryEvent<'_>) {
        self.shared.observer.record(event);
    }

    #[inline]
    fn transaction(&self) {
        self.shared.observer.metrics().transaction();
    }

    fn committed(
        &self,
        tables: &[Arc<str>],
        now: Instant,
        routing: &mut ClientRouting,
    ) -> Option<Announced> {
        let config = self.shared.config.load();
        let horizon = crate::routing::policy::horizon(&config.routing);
        self.shared
            .write_log
            .record(tables, now, now.checked_sub(horizon));
        fleet_announce::committed(self.shared, routing, tables)
    }

    fn show(
        &self,
        param: ProxyParam,
        client: &ClientState,
        status: TxStatus,
    ) -> proxy_show::Answer {
        proxy_show::answer(param, client, self.shared, status)
    }

    fn show_stand_in(
        &self,
        class: &Classified,
        client: &ClientState,
        role: Role,
    ) -> Option<String> {
        proxy_show::stand_in(class, client, self.shared, role)
    }

    #[inline]
    fn statement_ok(&self, id: u64) {
        self.pool.mark_statement_ok(id);
    }

    #[inline]
    fn node_addr(&self) -> &NodeAddr {
        &self.pool.key.node
    }

    #[inline]
    fn server_user(&self) -> &str {
        &self.pool.key.user
    }
}
