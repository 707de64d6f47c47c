//! What the proxy remembers about one client between servers: its prepared
//! statements, session parameters, routing state, pins and a BEGIN it has
//! acknowledged but not yet sent anywhere.

use bytes::Bytes;

use super::effects::Pins;
use super::params::{ClientParams, ParamValue};
use super::prepared::ClientStatements;
use crate::routing::policy::ClientRouting;
use crate::routing::{Classified, Classifier};

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

/// Remembers the last classification of this client.
#[derive(Default)]
pub struct ClassMemo {
    text: String,
    class: Option<Classified>,
    /// `text` is the text `class` is for (false after a text too long to
    /// keep).
    keyed: bool,
}

impl ClassMemo {
    /// Classifies `text`, reusing the last result when it is the same text.
    pub fn classify(&mut self, classifier: &Classifier, text: &str) -> Classified {
        self.classify_ref(classifier, text).clone()
    }

    /// Like [`classify`](Self::classify), borrowed: a clone bumps the
    /// reference count of the cached entry, which every client running
    /// the same statement shares (from every worker thread).
    pub fn classify_ref(&mut self, classifier: &Classifier, text: &str) -> &Classified {
        let hit = self.keyed && self.text == text;
        if !hit {
            self.text.clear();
            self.keyed = text.len() <= MEMO_MAX;
            if self.keyed {
                self.text.push_str(text);
            }
        }
        if !hit || self.class.is_none() {
            self.class = Some(classifier.classify(text));
        }
        // Set just above when missing.
        self.class.get_or_insert_with(|| classifier.classify(text))
    }
}

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
