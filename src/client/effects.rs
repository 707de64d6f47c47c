//! What statements do to the session beyond their results: session
//! parameters (applied once the server confirms them, at COMMIT inside a
//! transaction block), pins (state that ties the client to its server),
//! and their releases. Effects wait under a token until the request that
//! carries them completes.

use std::sync::Arc;

use crate::cluster::Lsn;
use crate::routing::{PinReason, RouteSetting, SessionChange, StatementInfo, Unpin};

use super::clock::Tick;
use super::expect::Token;
use super::params::{ParamChange, ParamValue};

/// Why a client may not leave its server, as a small set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    bits: u8,
    /// SQL-level prepared statements outstanding (released one by one).
    sql_prepared: u32,
}

impl Pins {
    fn bit(reason: PinReason) -> u8 {
        match reason {
            PinReason::AdvisoryLock => 1,
            PinReason::Listen => 2,
            PinReason::TempObject => 4,
            PinReason::HoldCursor => 8,
            PinReason::SqlPrepare => 16,
        }
    }

    pub fn add(&mut self, reason: PinReason) {
        self.bits |= Self::bit(reason);
        if reason == PinReason::SqlPrepare {
            self.sql_prepared += 1;
        }
    }

    fn clear(&mut self, reason: PinReason) {
        self.bits &= !Self::bit(reason);
        if reason == PinReason::SqlPrepare {
            self.sql_prepared = 0;
        }
    }

    /// A session change the proxy cannot replay on another server.
    pub fn add_untracked(&mut self) {
        self.bits |= 32;
    }

    pub fn is_pinned(&self) -> bool {
        self.bits != 0
    }

    /// Applies a release that ran successfully. `ours` says a DEALLOCATE
    /// named one of the proxy's protocol-level statements (not a pin).
    pub fn release(&mut self, unpin: &Unpin) {
        match unpin {
            Unpin::AdvisoryUnlockAll => self.clear(PinReason::AdvisoryLock),
            Unpin::UnlistenAll => self.clear(PinReason::Listen),
            Unpin::DiscardAll => *self = Pins::default(),
            Unpin::DeallocateAll => self.clear(PinReason::SqlPrepare),
            Unpin::Deallocate(_) => {
                self.sql_prepared = self.sql_prepared.saturating_sub(1);
                if self.sql_prepared == 0 {
                    self.clear(PinReason::SqlPrepare);
                }
            }
        }
    }
}

/// The parameter changes a statement asks for, in the proxy's terms.
/// Local (transaction-scoped) changes are dropped: they end with the
/// transaction. Returns `None` when a change cannot be tracked (e.g.
/// `set_config($1, $2, false)`): the caller pins instead.
pub fn param_changes(changes: &[SessionChange]) -> Option<Vec<ParamChange>> {
    let mut out = Vec::new();
    for c in changes {
        // A custom setting set or reset, even locally, stays defined.
        if let SessionChange::Set { name, .. }
        | SessionChange::SetConfig { name, .. }
        | SessionChange::Reset { name, .. } = c
            && super::params::is_custom(name)
        {
            out.push(ParamChange::Define(name.as_str().into()));
        }
        match c {
            SessionChange::Set { name, value, local } if !local => out.push(ParamChange::Set(
                name.as_str().into(),
                ParamValue::Sql(value.as_str().into()),
            )),
            SessionChange::SetConfig { name, value, local } if !local => out.push(
                ParamChange::Set(name.as_str().into(), ParamValue::Raw(value.as_str().into())),
            ),
            SessionChange::Reset { name, local } if !local => {
                out.push(ParamChange::Reset(name.as_str().into()))
            }
            SessionChange::ResetAll => out.push(ParamChange::ResetAll),
            SessionChange::Savepoint(name) => {
                out.push(ParamChange::Savepoint(name.as_str().into()))
            }
            SessionChange::ReleaseSavepoint(name) => {
                out.push(ParamChange::ReleaseSavepoint(name.as_str().into()))
            }
            SessionChange::RollbackToSavepoint(name) => {
                out.push(ParamChange::RollbackToSavepoint(name.as_str().into()))
            }
            SessionChange::Untracked { .. } => return None,
            _ => {}
        }
    }
    Some(out)
}

/// A request's effects, waiting for its completion. Nearly every
/// statement has only its observation: what it changes in the session (a
/// SET, a DISCARD, the proxy's own settings) is rare and boxed, which
/// keeps an effect small enough to move without a call to `memcpy` (one
/// is added, taken and applied per statement).
#[derive(Debug, Default)]
pub struct Effect {
    /// `None` when the statement changes nothing (never an empty box).
    pub changes: Option<Box<Changes>>,
    /// What the observer is told when it completes.
    pub observed: Option<Observed>,
}

/// What a statement changes in the session once it completes.
#[derive(Debug, Default)]
pub struct Changes {
    pub params: Vec<ParamChange>,
    /// `pgsidecar.route` once it has run (the proxy's own setting, which
    /// the server only stands in for).
    pub route: Option<RouteSetting>,
    /// `pgsidecar.min_lsn` once it has run, likewise.
    pub min_lsn: Option<Lsn>,
    pub unpin: Option<Unpin>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
            && self.route.is_none()
            && self.min_lsn.is_none()
            && self.unpin.is_none()
    }

    /// Boxed, or `None` when there is nothing to change.
    pub fn boxed(self) -> Option<Box<Changes>> {
        (!self.is_empty()).then(|| Box::new(self))
    }
}

impl Effect {
    pub fn is_empty(&self) -> bool {
        self.changes.as_ref().is_none_or(|c| c.is_empty()) && self.observed.is_none()
    }
}

/// A client statement being timed for metrics, digests and the slow log.
#[derive(Debug)]
pub struct Observed {
    pub info: Arc<StatementInfo>,
    /// The text to EXPLAIN (the original, or the normalised text when
    /// EXPLAIN is off and nothing needs the original).
    pub sql: SqlText,
    pub start: Tick,
    pub rows: u64,
    /// SQLSTATE of the error that ended it, if any.
    pub error: Option<Box<str>>,
}

/// Where an observed statement's text is.
#[derive(Debug)]
pub enum SqlText {
    /// Shared: a prepared statement's, or the normalised text.
    Shared(Arc<str>),
    /// Copied into the client's [`Texts`] at these bytes: a simple
    /// query's text would otherwise be allocated and freed for every
    /// query, in case it turns out slow.
    Held(std::ops::Range<usize>),
}

/// The texts of a client's [`SqlText::Held`] observations. Kept by the
/// client, not the hold, whose size every transaction moves.
#[derive(Default)]
pub struct Texts(String);

/// Bytes of text kept at most (every client keeps its buffer): a text
/// that would not fit gets its own copy.
const KEPT_TEXTS: usize = 1024;

impl Texts {
    /// Copies `text` for an observation about to be added to `pending`.
    /// Emptied first when no effect waits there: each observation is
    /// reported as soon as its effect is taken.
    pub fn hold(&mut self, text: &str, pending: &Pending) -> SqlText {
        if pending.waiting.is_empty() {
            self.0.clear();
        }
        if self.0.len() + text.len() > KEPT_TEXTS {
            return SqlText::Shared(Arc::from(text));
        }
        let start = self.0.len();
        self.0.push_str(text);
        SqlText::Held(start..self.0.len())
    }

    /// The text `sql` stands for.
    pub fn get<'a>(&'a self, sql: &'a SqlText) -> &'a str {
        match sql {
            SqlText::Shared(text) => text,
            SqlText::Held(at) => self.0.get(at.clone()).unwrap_or_default(),
        }
    }
}

/// Effects by token for one hold.
#[derive(Default)]
pub struct Pending {
    next: u64,
    waiting: Vec<(u64, Effect)>,
}

impl Pending {
    /// Empty, keeping the list's capacity for the next hold. Nearly
    /// always empty already (each effect is taken when its request
    /// completes): then no call to drop an empty slice.
    #[inline]
    pub fn clear(&mut self) {
        if !self.waiting.is_empty() {
            self.waiting.clear();
        }
    }

    /// Stores an effect; returns the token to put on its request.
    #[inline]
    pub fn add(&mut self, effect: Effect) -> Token {
        if effect.is_empty() {
            return Token::None;
        }
        self.next += 1;
        self.waiting.push((self.next, effect));
        Token::Effect(self.next)
    }

    /// The effect waiting under `token`.
    pub fn get_mut(&mut self, token: Token) -> Option<&mut Effect> {
        let Token::Effect(token) = token else {
            return None;
        };
        self.waiting
            .iter_mut()
            .find(|(t, _)| *t == token)
            .map(|(_, e)| e)
    }

    /// Takes the effect for a completed (or failed) request.
    #[inline]
    pub fn take(&mut self, token: Token) -> Option<Effect> {
        let Token::Effect(token) = token else {
            return None;
        };
        let i = self.waiting.iter().position(|(t, _)| *t == token)?;
        Some(self.waiting.swap_remove(i).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting_effect() -> Effect {
        Effect {
            changes: Changes {
                min_lsn: Some(Lsn(1)),
                ..Changes::default()
            }
            .boxed(),
            ..Effect::default()
        }
    }

    #[test]
    fn observed_texts_are_kept_while_their_effects_wait() {
        let mut texts = Texts::default();
        let mut pending = Pending::default();
        let a = texts.hold("select 1", &pending);
        let token = pending.add(waiting_effect());
        // Pipelined: the first still waits, both texts are there.
        let b = texts.hold("select 2", &pending);
        pending.add(waiting_effect());
        assert_eq!(texts.get(&a), "select 1");
        assert_eq!(texts.get(&b), "select 2");
        assert!(matches!(a, SqlText::Held(_)), "copied, not allocated");
        pending.take(token);
        pending.clear();
        // Nothing waits: the next text starts the buffer again.
        let c = texts.hold("select 3", &pending);
        assert_eq!(texts.get(&c), "select 3");
        assert_eq!(texts.0.len(), "select 3".len());
        // One that would not fit gets its own copy.
        let long = "x".repeat(KEPT_TEXTS + 1);
        let d = texts.hold(&long, &pending);
        assert!(matches!(d, SqlText::Shared(_)));
        assert_eq!(texts.get(&d), long);
        assert_eq!(texts.get(&SqlText::Shared("select ?".into())), "select ?");
    }

    #[test]
    fn pins_and_releases() {
        let mut p = Pins::default();
        assert!(!p.is_pinned());
        p.add(PinReason::AdvisoryLock);
        p.add(PinReason::Listen);
        p.release(&Unpin::AdvisoryUnlockAll);
        assert!(p.is_pinned());
        p.release(&Unpin::UnlistenAll);
        assert!(!p.is_pinned());
        p.add(PinReason::SqlPrepare);
        p.add(PinReason::SqlPrepare);
        p.release(&Unpin::Deallocate("a".into()));
        assert!(p.is_pinned());
        p.release(&Unpin::Deallocate("b".into()));
        assert!(!p.is_pinned());
        p.add(PinReason::TempObject);
        p.release(&Unpin::DiscardAll);
        assert!(!p.is_pinned());
    }

    #[test]
    fn local_changes_are_not_tracked_and_untracked_ones_say_so() {
        let local = SessionChange::Set {
            name: "x".into(),
            value: "1".into(),
            local: true,
        };
        assert_eq!(param_changes(&[local]), Some(vec![]));
        let custom = SessionChange::Set {
            name: "my.var".into(),
            value: "1".into(),
            local: true,
        };
        assert_eq!(
            param_changes(&[custom]),
            Some(vec![ParamChange::Define("my.var".into())])
        );
        let untracked = SessionChange::Untracked { name: None };
        assert_eq!(param_changes(&[untracked]), None);
    }

    #[test]
    fn an_effect_moves_in_a_few_words() {
        // Added, taken and applied for every statement: with its changes
        // inline it was moved by a memcpy call each time.
        assert!(std::mem::size_of::<Effect>() <= 80);
    }

    #[test]
    fn tokens_find_their_effects() {
        let mut p = Pending::default();
        assert_eq!(p.add(Effect::default()), Token::None);
        let empty = Effect {
            changes: Changes::default().boxed(),
            ..Effect::default()
        };
        assert!(empty.changes.is_none(), "nothing to change: no box");
        assert_eq!(p.add(empty), Token::None);
        let t = p.add(Effect {
            changes: Changes {
                params: vec![ParamChange::ResetAll],
                ..Changes::default()
            }
            .boxed(),
            ..Effect::default()
        });
        assert!(p.take(t).is_some());
        assert!(p.take(t).is_none());
    }
}
