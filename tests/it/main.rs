//! Integration tests against real PostgreSQL (one binary).

mod harness;

mod cluster_smoke;

mod cluster_monitor;
