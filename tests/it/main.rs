//! Integration tests against real PostgreSQL (one binary).

mod harness;
mod wire;

mod auth;
mod bad_input;
mod cli;
mod cluster_smoke;
mod cluster_monitor;
mod pooling;
mod proxy_core;
