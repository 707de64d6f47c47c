//! Integration tests against real PostgreSQL (one binary).

mod harness;
mod wire;

mod admin_console;
mod auth;
mod bad_input;
mod cli;
mod cluster_monitor;
mod cluster_smoke;
mod demo;
mod drivers_external;
mod drivers_isolation;
mod drivers_pgbench;
mod drivers_pinning;
mod drivers_protocol;
mod drivers_sqlx;
mod drivers_tokio_postgres;
mod observe_budgets;
mod observe_dashboard;
mod observe_e2e;
mod observe_e2e_budgets;
mod observe_e2e_logs;
mod observe_e2e_support;
mod observe_explain;
mod observe_http;
mod observe_slow;
mod observe_support;
mod packaging;
mod pooling;
mod proxy_core;
mod routing_hints;
mod routing_read_your_writes;
mod routing_replicas;
mod routing_smoke;
mod routing_transactions;
mod routing_writes;
