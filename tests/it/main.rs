//! Integration tests against real PostgreSQL (one binary).

mod harness;
mod private;
mod wire;

mod auth;
mod bad_input;
mod cli;
mod cluster_monitor;
mod cluster_smoke;
mod demo;
mod failures;
mod fuzz_corpus;
mod lexer_props;
mod limits;
mod observe_budgets;
mod observe_dashboard;
mod observe_explain;
mod observe_http;
mod observe_slow;
mod observe_support;
mod packaging;
mod pooling;
mod proxy_core;
mod reload;
mod routing_smoke;
mod running;
mod security;
mod shutdown;
mod tls;
