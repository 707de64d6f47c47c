//! Client side: the listener, the startup handshake and authentication, and
//! the per-client session that borrows server connections.

mod auth;
pub mod cancel;
pub mod credentials;
mod handshake;
mod listener;
mod login;
mod relay;
mod session;
mod tracker;

pub use listener::accept_loop;
