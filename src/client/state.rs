//! What the proxy remembers about one client between servers: its prepared
//! statements, session parameters, routing state, pins and a BEGIN it has
//! acknowledged but not yet sent anywhere.

use bytes::Bytes;

use super::effects::Pins;
use super::params::{ClientParams, ParamValue};
use super::prepared::ClientStatements;
use super::strings::StringMode;
use crate::routing::policy::ClientRouting;
use std::ops::Range;

use crate::routing::{Classified, Classifier, Quoting, template};

/// Per-client state that outlives any one server.
#[derive(Default)]
pub struct ClientState {
    pub statements: ClientStatements,
    pub params: ClientParams,
    pub routing: ClientRouting,
    pub pins: Pins,
    /// A lone `BEGIN` answered by the proxy: the transaction is routed by
    /// its first real statement (so `SET TRANSACTION READ ONLY` can still
    /// send it to a replica), and the BEGIN is sent ahead of it.
    pub deferred_begin: Option<Bytes>,
    /// A request ending in Flush failed before reaching a server: its
    /// remaining messages are skipped up to Sync, as a server would.
    pub skip_to_sync: bool,
    /// The last statement text classified, so that the idle path, routing
    /// and the relay classify each request once.
    pub memo: ClassMemo,
}

/// Texts longer than this are not remembered (every idle client keeps one).
const MEMO_MAX: usize = 1024;

/// Remembers the last classification of this client, and reads each text
/// the way this client's server reads strings ([`StringMode`]).
#[derive(Default)]
pub struct ClassMemo {
    /// The session's `standard_conforming_strings` as far as known.
    pub strings: StringMode,
    /// How `class` was read (`None`: unsure).
    read_as: Option<Quoting>,
    text: String,
    class: Option<Classified>,
    /// `text` is the text `class` is for (false after a text too long to
    /// keep).
    keyed: bool,
    /// Byte ranges of `text`'s numeric literals, and a spare list.
    numbers: Vec<Range<usize>>,
    spare: Vec<Range<usize>>,
}

impl ClassMemo {
    /// Classifies `text`, reusing the last result when it is the same text.
    pub fn classify(&mut self, classifier: &Classifier, text: &str) -> Classified {
        self.classify_ref(classifier, text).clone()
    }

    /// Like [`classify`](Self::classify), borrowed: a clone bumps the
    /// reference count of the cached entry, which every client running
    /// the same statement shares (from every worker thread). Also reuses
    /// the last result for the same statement with other integers in it
    /// (see [`template`]), unless its values matter (a `SET`).
    pub fn classify_ref(&mut self, classifier: &Classifier, text: &str) -> &Classified {
        let reading = self.strings.reading();
        let same_reading = reading.is_some() && self.read_as == reading;
        if same_reading && self.keyed && self.class.is_some() && self.text == text {
            return self.noted(classifier, text);
        }
        let valueless = self
            .class
            .as_ref()
            .is_some_and(|c| !c.info.has_session_changes);
        if same_reading
            && self.keyed
            && valueless
            && !self.numbers.is_empty()
            && text.len() <= MEMO_MAX
            && template::same_shape(&self.text, &self.numbers, text, &mut self.spare)
        {
            self.text.clear();
            self.text.push_str(text);
            std::mem::swap(&mut self.numbers, &mut self.spare);
            return self.noted(classifier, text);
        }
        self.text.clear();
        self.keyed = text.len() <= MEMO_MAX;
        if self.keyed {
            self.text.push_str(text);
        }
        self.read_as = reading;
        let class = match reading {
            Some(quoting) => {
                classifier.classify_noting_numbers_in(text, quoting, &mut self.numbers)
            }
            None => {
                self.numbers.clear();
                classifier.classify_unsure(text)
            }
        };
        if self.numbers.capacity() > MEMO_NUMBERS {
            self.numbers = Vec::new();
        }
        self.class = Some(class);
        self.noted(classifier, text)
    }

    /// The remembered classification, after telling [`StringMode`] about
    /// it (a statement that may change the string mode makes the next
    /// ones unsure until the server answers).
    fn noted(&mut self, classifier: &Classifier, text: &str) -> &Classified {
        let read_as = self.read_as;
        let class = self.class.get_or_insert_with(|| match read_as {
            Some(quoting) => classifier.classify_in(text, quoting),
            None => classifier.classify_unsure(text),
        });
        self.strings.classified(class);
        class
    }

    /// The string mode for other classifications of this client (named
    /// prepared statements); `None` while not known for sure.
    pub fn reading(&self) -> Option<Quoting> {
        self.strings.reading()
    }

    /// A server frame the relay inspected ([`StringMode::server_frame`]).
    pub fn server_frame(&mut self, tag: u8, frame: &[u8], quiet: bool) {
        self.strings.server_frame(tag, frame, quiet);
    }
}

/// Literal positions kept between requests are at most this many.
const MEMO_NUMBERS: usize = 64;

impl ClientState {
    pub fn new(params: ClientParams) -> Self {
        ClientState {
            params,
            ..ClientState::default()
        }
    }

    /// `default_transaction_read_only` is on for this session.
    pub fn read_only_by_default(&self) -> bool {
        let Some(v) = self.params.current().get("default_transaction_read_only") else {
            return false;
        };
        let text = match v {
            ParamValue::Sql(t) | ParamValue::Raw(t) => t,
        };
        matches!(
            text.trim_matches('\'').to_ascii_lowercase().as_str(),
            "on" | "true" | "yes" | "1" | "t"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_memo_reuses_a_classification_for_other_integers_only() {
        // No cache: a classification that is not reused is a new Arc.
        let classifier = Classifier::new(&[], 10_000, 0);
        let mut memo = ClassMemo::default();
        let first = memo.classify(&classifier, "select * from t where id = 1");
        let same = memo.classify(&classifier, "select * from t where id = 22");
        assert!(Arc::ptr_eq(&first.info, &same.info));
        let again = memo.classify(&classifier, "select * from t where id = 333");
        assert!(Arc::ptr_eq(&first.info, &again.info));
        let other = memo.classify(&classifier, "select * from u where id = 333");
        assert!(!Arc::ptr_eq(&first.info, &other.info));

        // A SET's values are what it does: never taken from the last one.
        let set = memo.classify(&classifier, "set statement_timeout = 5000");
        assert!(format!("{:?}", set.session).contains("5000"));
        let set = memo.classify(&classifier, "set statement_timeout = 6000");
        assert!(
            format!("{:?}", set.session).contains("6000"),
            "{:?}",
            set.session
        );
    }
}
