//! The transaction status a ReadyForQuery reports: what the session's
//! phases, local answers and limits decide by, as a type rather than the
//! wire's `b'I'`/`b'T'`/`b'E'`.

use bytes::BytesMut;

use crate::protocol::backend;
use crate::protocol::frame;

/// Where the session stands between requests, as ReadyForQuery says it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TxStatus {
    /// Not in a transaction block (`I`).
    #[default]
    Idle = b'I',
    /// In a transaction block (`T`).
    InTransaction = b'T',
    /// In a failed transaction block (`E`): every command but the block's
    /// end is refused until it ends.
    Failed = b'E',
}

impl TxStatus {
    /// The status a ReadyForQuery's byte names. A byte Postgres never
    /// sends counts as a transaction block: not idle, not failed (as the
    /// proxy always read it).
    #[inline]
    pub fn from_byte(byte: u8) -> TxStatus {
        match byte {
            b'I' => TxStatus::Idle,
            b'E' => TxStatus::Failed,
            _ => TxStatus::InTransaction,
        }
    }

    /// The status of a complete ReadyForQuery frame.
    #[inline]
    pub fn of_ready(frame: &[u8]) -> TxStatus {
        TxStatus::from_byte(frame::ready_status(frame))
    }

    /// The wire byte.
    #[inline]
    pub fn byte(self) -> u8 {
        self as u8
    }

    #[inline]
    pub fn is_idle(self) -> bool {
        self == TxStatus::Idle
    }

    /// Inside a transaction block, failed or not.
    #[inline]
    pub fn in_transaction(self) -> bool {
        self != TxStatus::Idle
    }

    /// The status the proxy reports for a client holding no server: a
    /// BEGIN it acknowledged itself is an open transaction block.
    #[inline]
    pub fn of_deferred_begin(deferred: bool) -> TxStatus {
        if deferred {
            TxStatus::InTransaction
        } else {
            TxStatus::Idle
        }
    }

    /// Appends a ReadyForQuery with this status.
    #[inline]
    pub fn put_ready(self, out: &mut BytesMut) {
        backend::ready_for_query(out, self.byte());
    }
}

impl std::fmt::Display for TxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", char::from(self.byte()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_wire_bytes() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(TxStatus::from_byte(s.byte()), s);
        }
        assert_eq!(TxStatus::Idle.byte(), b'I');
        assert_eq!(TxStatus::InTransaction.byte(), b'T');
        assert_eq!(TxStatus::Failed.byte(), b'E');
        assert_eq!(std::mem::size_of::<TxStatus>(), 1);
    }

    #[test]
    fn reads_ready_for_query_frames() {
        let mut out = BytesMut::new();
        TxStatus::Failed.put_ready(&mut out);
        assert_eq!(&out[..], b"Z\0\0\0\x05E");
        assert_eq!(TxStatus::of_ready(&out), TxStatus::Failed);
        // Never sent by Postgres: read as an open block, as before.
        assert_eq!(TxStatus::from_byte(b'?'), TxStatus::InTransaction);
        assert!(TxStatus::InTransaction.in_transaction() && TxStatus::Failed.in_transaction());
        assert!(!TxStatus::Idle.in_transaction());
    }
}
