//! Postgres wire-protocol pieces; this build holds only the password-authentication crypto.

pub mod md5;
pub mod scram;
