//! The modes a client asked for its transaction (READ ONLY / READ WRITE,
//! the isolation level), from its BEGIN and the SET TRANSACTIONs the proxy
//! answered while it deferred that BEGIN: together with the session's
//! defaults they decide where the transaction may run. A SERIALIZABLE one
//! never runs on a replica, which refuses it ("cannot use serializable mode
//! in a hot standby"), even when it is read only.

use bytes::{Bytes, BytesMut};

use crate::protocol::{ClientEncoding, frame};
use crate::routing::{Classifier, TxEffect};

/// Transaction modes; `None` where the statements said nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    pub read_only: Option<bool>,
    /// `Some(true)` for ISOLATION LEVEL SERIALIZABLE, `Some(false)` for
    /// another level.
    pub serializable: Option<bool>,
}

impl Modes {
    /// The modes a BEGIN or SET TRANSACTION gives.
    pub fn of(tx: TxEffect) -> Option<Modes> {
        match tx {
            TxEffect::Begin {
                read_only,
                serializable,
            }
            | TxEffect::SetTransaction {
                read_only,
                serializable,
            } => Some(Modes {
                read_only,
                serializable,
            }),
            _ => None,
        }
    }

    /// These modes changed by a later statement of the same transaction.
    pub fn then(self, later: Modes) -> Modes {
        Modes {
            read_only: later.read_only.or(self.read_only),
            serializable: later.serializable.or(self.serializable),
        }
    }
}

/// A SET TRANSACTION the proxy may answer itself while it holds back the
/// transaction's BEGIN: one that only sets the access mode or isolation
/// level, which decide where the transaction runs (`SET TRANSACTION
/// SNAPSHOT`, which can fail, goes to a server).
pub fn deferrable_set_transaction(tx: TxEffect) -> bool {
    matches!(
        tx,
        TxEffect::SetTransaction { read_only, serializable }
            if read_only.is_some() || serializable.is_some()
    )
}

/// The deferred BEGIN with `frame` (a Query) appended.
pub fn append(deferred: &Bytes, frame: &[u8]) -> Bytes {
    let mut all = BytesMut::with_capacity(deferred.len() + frame.len());
    all.extend_from_slice(deferred);
    all.extend_from_slice(frame);
    all.freeze()
}

/// The Query frames of a deferred BEGIN (the BEGIN, then any SET
/// TRANSACTIONs answered since).
pub fn frames(deferred: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = deferred;
    std::iter::from_fn(move || {
        let (_, f) = frame::complete(rest).ok().flatten()?;
        rest = &rest[f.len()..];
        Some(f)
    })
}

/// The modes of a deferred BEGIN and its SET TRANSACTIONs (text in the
/// client's `encoding`).
pub fn deferred(deferred: &[u8], encoding: ClientEncoding, classifier: &Classifier) -> Modes {
    frames(deferred)
        .filter_map(|f| frame::query_bytes(f).ok())
        .filter_map(|sql| Modes::of(classifier.classify(&encoding.decode(sql).text).info.tx))
        .fold(Modes::default(), Modes::then)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Bytes {
        let mut b = BytesMut::new();
        frame::put_query(&mut b, sql);
        b.freeze()
    }

    #[test]
    fn later_statements_override_what_they_name() {
        let classifier = Classifier::new(&[], 100, 0);
        let begin = query("begin read only");
        let both = append(
            &begin,
            &query("set transaction isolation level serializable"),
        );
        assert_eq!(frames(&both).count(), 2);
        assert_eq!(
            deferred(&both, ClientEncoding::Utf8, &classifier),
            Modes {
                read_only: Some(true),
                serializable: Some(true)
            }
        );
        let again = append(
            &both,
            &query("set transaction isolation level repeatable read"),
        );
        assert_eq!(
            deferred(&again, ClientEncoding::Utf8, &classifier).serializable,
            Some(false)
        );
        assert_eq!(
            deferred(&again, ClientEncoding::Utf8, &classifier).read_only,
            Some(true)
        );
    }

    #[test]
    fn only_mode_changes_are_deferred() {
        let classifier = Classifier::new(&[], 100, 0);
        let tx = |sql: &str| classifier.classify(sql).info.tx;
        assert!(deferrable_set_transaction(tx("set transaction read only")));
        assert!(deferrable_set_transaction(tx(
            "set transaction isolation level serializable"
        )));
        assert!(!deferrable_set_transaction(tx(
            "set transaction snapshot '00000003-0000001B-1'"
        )));
        assert!(!deferrable_set_transaction(tx("begin")));
    }
}
