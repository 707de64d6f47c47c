//! Integration tests against real PostgreSQL (one binary).

mod harness;
mod wire;

mod auth;
mod bad_input;
mod cli;
mod cluster_monitor;
mod cluster_smoke;
mod demo;
mod packaging;
mod pooling;
mod proxy_core;
