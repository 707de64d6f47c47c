//! Integration tests against real PostgreSQL (one binary).
