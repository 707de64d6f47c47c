//! How this client's server reads string literals — its
//! `standard_conforming_strings` — as far as the proxy knows, so that
//! statements are lexed the way the server lexes them (for routing and for
//! the normalised text in /queries and the log).
//!
//! The server reports the setting (ParameterStatus) at login and whenever
//! it changes, before its ReadyForQuery; a client's startup value wins at
//! login, since the proxy applies it on every server. Between a statement
//! that may change it (SET, RESET, set_config, DISCARD ALL, or the end of
//! a transaction that changed it) being sent and the server finishing, the
//! setting is not known for sure: statements read then are classified
//! "unsure" ([`Classifier::classify_unsure`]). A change made where the
//! proxy cannot see it (inside a function) is known from the server's
//! report, so from the statements after it.
//!
//! [`Classifier::classify_unsure`]: crate::routing::Classifier::classify_unsure

use crate::protocol::frame::{self, be};
use crate::routing::{Classified, Classifier, Quoting, SessionChange, TxEffect, Unpin};

/// The setting's name, as servers report it.
const SETTING: &str = "standard_conforming_strings";

/// What the proxy knows of one client's string mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StringMode {
    /// The mode last reported (or given at login).
    known: Quoting,
    /// A statement that may change it was read and its server has not
    /// answered everything yet.
    changing: bool,
    /// It changed (or may have) inside the open transaction, whose end may
    /// undo that.
    touched: bool,
}

impl StringMode {
    /// At login: the client's startup value, else the server's report.
    pub fn at_login(value: Option<&str>) -> Self {
        StringMode {
            known: value.and_then(Quoting::from_setting).unwrap_or_default(),
            ..StringMode::default()
        }
    }

    /// How to read the next statement; `None` while not known for sure.
    pub fn reading(&self) -> Option<Quoting> {
        (!self.changing).then_some(self.known)
    }

    /// A statement was classified (it is about to be sent): note whether
    /// it may change the setting.
    #[inline]
    pub fn classified(&mut self, class: &Classified) {
        let info = &class.info;
        let changes = info.has_session_changes && class.session.iter().any(names_setting);
        let discards = matches!(info.unpin, Some(Unpin::DiscardAll));
        let ends = self.touched
            && matches!(
                info.tx,
                TxEffect::Commit | TxEffect::Rollback | TxEffect::RollbackToSavepoint
            );
        if changes || discards || ends {
            self.changing = true;
            self.touched = true;
        }
    }

    /// A server frame the relay inspected; `quiet` when the server owes
    /// nothing more. Returns true if the mode read from now on changed.
    ///
    /// Inlined for the frame it sees on every transaction (ReadyForQuery,
    /// which sets two flags): as a call it cost ~38 instructions.
    #[inline]
    pub fn server_frame(&mut self, tag: u8, body_frame: &[u8], quiet: bool) -> bool {
        let before = self.reading();
        match tag {
            be::PARAMETER_STATUS => self.parameter_status(body_frame),
            be::READY_FOR_QUERY => {
                if quiet {
                    self.changing = false;
                }
                if super::tx_status::TxStatus::of_ready(body_frame).is_idle() {
                    self.touched = false;
                }
            }
            _ => {}
        }
        self.reading() != before
    }

    /// A ParameterStatus: the server's `standard_conforming_strings`, if
    /// that is the one it reports.
    #[cold]
    fn parameter_status(&mut self, body_frame: &[u8]) {
        let body = frame::body(body_frame);
        if let Ok((name, rest)) = frame::cstr(body)
            && name == SETTING
            && let Ok((value, _)) = frame::cstr(rest)
            && let Some(quoting) = Quoting::from_setting(value)
        {
            self.known = quoting;
            self.touched = true;
        }
    }
}

/// Classifies `text` as read in mode `reading` (`None`: not known for
/// sure, so [`Classifier::classify_unsure`]).
pub fn classify(classifier: &Classifier, text: &str, reading: Option<Quoting>) -> Classified {
    match reading {
        Some(quoting) => classifier.classify_in(text, quoting),
        None => classifier.classify_unsure(text),
    }
}

fn names_setting(change: &SessionChange) -> bool {
    match change {
        SessionChange::Set { name, .. }
        | SessionChange::Reset { name, .. }
        | SessionChange::SetConfig { name, .. } => name == SETTING,
        SessionChange::Untracked { name } => name.as_deref().is_none_or(|n| n == SETTING),
        SessionChange::ResetAll => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend;
    use bytes::BytesMut;

    fn status(name: &str, value: &str) -> BytesMut {
        let mut out = BytesMut::new();
        backend::parameter_status(&mut out, name, value);
        out
    }

    fn ready(s: u8) -> BytesMut {
        let mut out = BytesMut::new();
        backend::ready_for_query(&mut out, s);
        out
    }

    #[test]
    fn the_mode_follows_the_server_and_is_unsure_while_a_change_is_on_its_way() {
        let c = Classifier::new(&[], 10_000, 100);
        let mut m = StringMode::at_login(Some("on"));
        assert_eq!(m.reading(), Some(Quoting::Standard));
        m.classified(&c.classify("select 1"));
        assert_eq!(m.reading(), Some(Quoting::Standard));
        m.classified(&c.classify("set standard_conforming_strings = off"));
        assert_eq!(m.reading(), None, "sent, not yet answered");
        let s = status("standard_conforming_strings", "off");
        assert!(!m.server_frame(b'S', &s, false));
        assert_eq!(m.reading(), None);
        assert!(m.server_frame(b'Z', &ready(b'I'), true));
        assert_eq!(m.reading(), Some(Quoting::Backslash));

        // Changed inside a transaction: its end may undo it.
        m.classified(&c.classify("begin"));
        m.classified(&c.classify("set local standard_conforming_strings = on"));
        m.server_frame(b'S', &status("standard_conforming_strings", "on"), false);
        m.server_frame(b'Z', &ready(b'T'), true);
        assert_eq!(m.reading(), Some(Quoting::Standard));
        m.classified(&c.classify("commit"));
        assert_eq!(m.reading(), None);
        m.server_frame(b'S', &status("standard_conforming_strings", "off"), false);
        m.server_frame(b'Z', &ready(b'I'), true);
        assert_eq!(m.reading(), Some(Quoting::Backslash));
        // A commit with no change in its transaction changes nothing.
        m.classified(&c.classify("commit"));
        assert_eq!(m.reading(), Some(Quoting::Backslash));
        // A change inside a function is known from the server's report.
        m.server_frame(b'S', &status("standard_conforming_strings", "on"), false);
        assert_eq!(m.reading(), Some(Quoting::Standard));
        assert_eq!(
            StringMode::at_login(Some("off")).reading(),
            Some(Quoting::Backslash)
        );
        assert_eq!(
            StringMode::at_login(None).reading(),
            Some(Quoting::Standard)
        );
    }
}
