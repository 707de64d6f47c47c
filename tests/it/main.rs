//! Integration tests against real PostgreSQL (one binary).

mod harness;
mod wire;

mod auth;
mod bad_input;
mod cluster_smoke;
mod proxy_core;
