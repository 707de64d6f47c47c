//! Client side: the listener, the startup handshake and authentication, and
//! the per-client session that borrows server connections.

mod auth;
pub mod buffer_budget;
pub mod cancel;
mod carried;
pub mod clock;
pub mod credentials;
mod effects;
mod error_names;
mod expect;
mod fleet_announce;
mod flow;
mod handshake;
mod hold;
mod hold_state;
mod idle;
mod input;
mod limits;
mod listener;
mod local;
mod login;
pub mod params;
pub mod prepared;
mod proxy_show;
mod readback;
pub mod registry;
mod relay;
mod route;
mod route_setting;
mod session;
mod shapes;
mod state;
mod stop_signal;
mod strings;
mod tx_modes;
mod tx_status;
pub mod unix_socket;

pub use listener::{Accept, accept_loop, bind};
