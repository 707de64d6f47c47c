//! Integration tests against real PostgreSQL (one binary).

mod harness;
mod wire;

mod auth;
mod bad_input;
mod cli;
mod cluster_monitor;
mod cluster_smoke;
mod demo;
mod observe_budgets;
mod observe_dashboard;
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
