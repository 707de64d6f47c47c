//! Backend side: connections to Postgres nodes (connect, log in, health)
//! and the bb8 pools that hold them, one per (database, user, node); with
//! a fleet, the per-node budget gate all pools of a node share.

mod budget;
mod cancel;
mod connection;
mod error;
mod handoff;
mod login;
mod pool;
mod prepared;

pub use budget::{BudgetPermit, GateState, IdleConnections, NoPermit, NodeGate};
pub use cancel::{CancelTarget, send_cancel};
pub use connection::{ServerConn, ServerIoParts, ServerLink, ServerParams, ServerState};
pub use error::{CheckoutError, ClientReport, ServerError};
pub use handoff::Lease;
pub use login::{LoginParams, ServerSecret};
pub use pool::{CheckoutUnless, PoolKey, Pools, ServerEntry, ServerPool, Waiters};
pub use prepared::{PreparedOnServer, statement_name};
