//! Integration tests against real PostgreSQL (one binary).

mod harness;
mod wire;

mod auth;
mod bad_input;
mod cli;
mod cluster_monitor;
mod cluster_smoke;
mod drivers_external;
mod drivers_isolation;
mod drivers_pgbench;
mod drivers_pinning;
mod drivers_protocol;
mod drivers_sqlx;
mod drivers_tokio_postgres;
mod pooling;
mod proxy_core;
mod routing_smoke;
