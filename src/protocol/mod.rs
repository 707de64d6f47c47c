//! The Postgres wire protocol as far as the proxy needs it: framing, the
//! startup/SSL negotiation, the messages the proxy writes itself, errors
//! with SQLSTATEs, and the password/SCRAM exchanges.

pub mod backend;
pub mod encoding;
pub mod error;
pub mod frame;
pub mod md5;
pub mod scram;
pub mod startup;

pub use encoding::{ClientEncoding, SqlText};
pub use error::{ProtocolError, SqlState, WireError};
