//! Query cancellation as the client side names it: where a cancel goes and
//! how it is sent live with the server connection (`server::cancel`),
//! which every layer may use; re-exported here for callers that say
//! `client::cancel`.

pub use crate::server::{CancelTarget, send_cancel};
