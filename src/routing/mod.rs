//! Statement classification: is this SQL safe on a replica, what tables
//! does it touch, and what transaction or session state does it change.
//!
//! # How a statement is classified
//! 1. The lexer (`lexer`) makes one allocation-free pass: it skips
//!    comments, picks up a leading `/* pgsidecar:primary|replica */` hint and
//!    hashes the normalised text into a [`Fingerprint`].
//! 2. The fingerprint keys a bounded concurrent cache (`cache`) of
//!    `Arc<StatementInfo>`. A hit ends here: no allocation at all for the
//!    common case.
//! 3. On a miss the normalised text is built, each statement is parsed with
//!    sqlparser and the whole tree is walked (`classify`, `walker`); anything
//!    unparseable gets a conservative lexical classification (`fallback`)
//!    and always the primary.
//! 4. Effects that depend on literal values (SET values, `set_config`
//!    arguments, `SET pgsidecar.route`) are never cached: they are
//!    re-read from the text on every call (`session`), only for the
//!    statements whose cached info says they have such effects.
//!
//! # Table names
//! Relations are recorded as the server folds them (unquoted lower-cased,
//! quoted verbatim, no quotes) and joined with `.`: `Public.T` → `public.t`.
//! A qualified name is recorded *both* qualified and bare (`public.t` and
//! `t`), an unqualified one bare only. So a write to `public.t` and a read of
//! `t` (or the other way round) always share the name `t`; the price is that
//! same-named tables in different schemas also match, which only ever sends
//! a read to the primary needlessly. Views are not expanded: a read of a
//! view over `t` does not list `t`.
//!
//! # Limits
//! The size limit applies on a cache miss only: a statement over it is not
//! parsed (`too_large`, primary), and a cached shape is reused whatever the
//! size of its literals. So is a statement whose brackets nest deeper than
//! [`MAX_NESTING`] (`too_deep`): sqlparser recurses once per level with
//! frames big enough that a few dozen levels of parenthesised joins can
//! overflow a 2 MiB thread stack, and a proxy must not crash on any input.
//! Function calls hidden in operators, casts or
//! defaults of user types are not seen.

mod cache;
mod classify;
mod fallback;
mod fingerprint;
mod functions;
mod lexer;
mod normalize;
pub mod policy;
pub mod related;
mod session;
mod strings;
pub mod template;
mod types;
mod walker;

#[cfg(test)]
mod tests;

use cache::Cache;
pub use fingerprint::Fingerprint;
pub use lexer::Quoting;
pub use types::{
    Classified, Hint, PinReason, ProxyParam, Reason, Route, RouteSetting, SessionChange,
    StatementInfo, TxEffect, Unpin,
};

use classify::StmtClass;
use functions::FunctionPolicy;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Normalised text kept per statement shape, in bytes (longer text is cut
/// and ends with `…`; the fingerprint still covers all of it). With the
/// cache's byte budget this bounds what many large distinct statements can
/// make the classifier hold.
pub const MAX_NORMALIZED_TEXT: usize = 64 * 1024;

/// Bytes of normalised text and table names the classification cache
/// holds at most (besides its bound in entries).
pub const CACHE_TEXT_BUDGET: usize = 16 * 1024 * 1024;

/// What a statement that the two string modes read differently shows,
/// while the session's mode is not known for sure.
pub const UNSURE_TEXT: &str =
    "<not shown: standard_conforming_strings was changing, the text could not be read for sure>";

/// The fingerprint all such statements share.
const UNSURE_FINGERPRINT: Fingerprint = Fingerprint(0x5ec0_11f1_de17_0017_5ec0_11f1_de17_0017);

/// Bracket depth above which a statement is not parsed (`too_deep`).
/// Generated SQL nests a handful of levels; 64 leaves room for hand-written
/// monsters while keeping sqlparser's recursion and the tree walk shallow.
pub const MAX_NESTING: usize = 64;

/// Stack sqlparser must have left before it recurses, else it continues on
/// a freshly allocated stack (its `recursive-protection`). The crate's
/// 128 KiB default is less than one nesting level of some of its debug-build
/// frames (about 140 KiB for a parenthesised join), which is enough to
/// overflow a 2 MiB test or worker thread.
const PARSER_RED_ZONE: usize = 1 << 20;

/// Classifies SQL text; cheap to share (`Arc<Classifier>`) across tasks.
#[derive(Debug)]
pub struct Classifier {
    /// Tells this classifier from any other in the process (see
    /// [`id`](Self::id)).
    id: u64,
    cache: Cache,
    functions: FunctionPolicy,
    max_query_len: usize,
}

impl Classifier {
    /// `extra_read_only_functions`: `routing.read_only_functions` from the
    /// config (bare or schema-qualified names, case-insensitive; they cannot
    /// re-allow the functions the allow-list denies, e.g. `nextval`).
    /// `max_query_len`: bytes; longer statements are not parsed and go to
    /// the primary. `cache_capacity`: statement shapes kept (0 = no cache).
    pub fn new(
        extra_read_only_functions: &[String],
        max_query_len: usize,
        cache_capacity: usize,
    ) -> Self {
        static RED_ZONE: std::sync::Once = std::sync::Once::new();
        RED_ZONE.call_once(|| {
            recursive::set_minimum_stack_size(
                recursive::get_minimum_stack_size().max(PARSER_RED_ZONE),
            )
        });
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache: Cache::new(cache_capacity, CACHE_TEXT_BUDGET),
            functions: FunctionPolicy::new(extra_read_only_functions),
            max_query_len,
        }
    }

    /// Unique among the classifiers of this process, never reused: what
    /// a classification kept outside it (`client/shapes.rs`, per thread)
    /// is checked against, since another classifier (other
    /// `read_only_functions`, another proxy in the same process) may
    /// decide otherwise.
    #[inline]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Classifies one simple-Query string or one Parse statement text (which
    /// may contain `$1` parameters). Never panics; allocation-free on a
    /// cache hit for statements without session effects.
    pub fn classify(&self, sql: &str) -> Classified {
        self.classify_in(sql, Quoting::Standard)
    }

    /// [`classify`](Self::classify) for a session whose server reads
    /// strings in `quoting` mode (`standard_conforming_strings`). Shapes
    /// are cached across modes: text read the right way has the same
    /// normalised form, and so the same classification, in either.
    pub fn classify_in(&self, sql: &str, quoting: Quoting) -> Classified {
        self.classify_fingerprinted(sql, quoting, normalize::fingerprint(sql, quoting))
    }

    /// Like [`classify`](Self::classify), also listing the byte ranges of
    /// the numeric literals in `numbers`, for [`template::same_shape`].
    pub fn classify_noting_numbers(
        &self,
        sql: &str,
        numbers: &mut Vec<std::ops::Range<usize>>,
    ) -> Classified {
        self.classify_noting_numbers_in(sql, Quoting::Standard, numbers)
    }

    /// [`classify_noting_numbers`](Self::classify_noting_numbers) in
    /// `quoting` mode (see [`classify_in`](Self::classify_in)).
    pub fn classify_noting_numbers_in(
        &self,
        sql: &str,
        quoting: Quoting,
        numbers: &mut Vec<std::ops::Range<usize>>,
    ) -> Classified {
        self.classify_fingerprinted(
            sql,
            quoting,
            normalize::fingerprint_noting_numbers(sql, quoting, numbers),
        )
    }

    /// For when the session's string mode is not known for sure (a change
    /// of `standard_conforming_strings` is on its way to the server): if
    /// both modes read `sql` alike, that classification; if not, one that
    /// shows no text, runs on the primary, and whose session changes are
    /// untracked (the proxy cannot know which the server will make).
    pub fn classify_unsure(&self, sql: &str) -> Classified {
        let standard = self.classify_in(sql, Quoting::Standard);
        if !sql.contains('\\') {
            return standard;
        }
        let backslash = self.classify_in(sql, Quoting::Backslash);
        if standard.info.fingerprint == backslash.info.fingerprint {
            return standard;
        }
        let (a, b) = (&standard.info, &backslash.info);
        let untracked = !standard.session.is_empty() || !backslash.session.is_empty();
        Classified {
            hint: standard.hint.or(backslash.hint),
            info: Arc::new(StatementInfo {
                fingerprint: UNSURE_FINGERPRINT,
                normalized: Arc::from(UNSURE_TEXT),
                route: Route::Write,
                reason: Reason::ParseError,
                tables_read: Box::default(),
                tables_written: Box::default(),
                tx: if a.tx == b.tx { a.tx } else { TxEffect::None },
                pin: a.pin.or(b.pin),
                unpin: None,
                statement_count: a.statement_count.max(b.statement_count),
                has_session_changes: untracked,
                // Unsure what the server reads: it may run anything.
                opaque: true,
            }),
            session: if untracked {
                vec![SessionChange::Untracked { name: None }]
            } else {
                Vec::new()
            },
        }
    }

    fn classify_fingerprinted(
        &self,
        sql: &str,
        quoting: Quoting,
        (fp, hint): (Fingerprint, Option<Hint>),
    ) -> Classified {
        let info = match self.cache.get(fp) {
            Some(info) => info,
            None => self.cache.insert(Arc::new(self.analyze(sql, quoting))),
        };
        let session = if info.has_session_changes {
            session::extract(sql, quoting)
        } else {
            Vec::new()
        };
        Classified {
            hint,
            info,
            session,
        }
    }

    /// Fingerprint and hint only (no cache, no parse): e.g. for digests of
    /// statements the proxy does not route.
    pub fn fingerprint(sql: &str) -> (Fingerprint, Option<Hint>) {
        normalize::fingerprint(sql, Quoting::Standard)
    }

    /// Number of statement shapes currently cached.
    pub fn cached_statements(&self) -> usize {
        self.cache.len()
    }

    /// The cache-miss path: full classification of `sql`.
    fn analyze(&self, sql: &str, quoting: Quoting) -> StatementInfo {
        let normalized = normalize::normalize(sql, quoting, MAX_NORMALIZED_TEXT);
        let too_large = sql.len() > self.max_query_len;
        let too_deep = normalized.max_depth > MAX_NESTING;
        let unparsed = too_large || too_deep;
        let parts: Vec<StmtClass> = normalized
            .spans
            .iter()
            .map(|span| {
                let text = strings::for_parser(sql.get(span.clone()).unwrap_or(""), quoting);
                if unparsed {
                    fallback::classify(&text)
                } else {
                    classify::classify_statement(&text, &self.functions)
                }
            })
            .collect();
        let mut info = combine(parts);
        if unparsed || normalized.unterminated {
            info.route = Route::Write;
            info.opaque = true;
            info.reason = if too_large {
                Reason::TooLarge
            } else if too_deep {
                Reason::TooDeep
            } else {
                Reason::ParseError
            };
        }
        StatementInfo {
            fingerprint: normalized.fingerprint,
            normalized: Arc::from(normalized.text),
            ..info
        }
    }
}

/// Folds the statements of one string into one answer: a write if any part
/// is; the last transaction effect and release, the first pin.
fn combine(parts: Vec<StmtClass>) -> StatementInfo {
    let count = parts.len();
    let mut route = Route::Read;
    let mut reason = Reason::Read;
    let mut tx = TxEffect::None;
    let (mut pin, mut unpin) = (None, None);
    let mut has_session_changes = false;
    let mut opaque = false;
    let mut parse_error = false;
    let (mut read, mut written) = (BTreeSet::new(), BTreeSet::new());
    for part in parts {
        if part.route == Route::Write && route == Route::Read {
            route = Route::Write;
            reason = part.reason;
        } else if count == 1 && part.reason == Reason::ProxySetting {
            // A lone `SHOW pgsidecar.…`: a read the proxy answers.
            reason = part.reason;
        }
        parse_error |= part.reason == Reason::ParseError;
        if part.tx != TxEffect::None {
            tx = part.tx;
        }
        pin = pin.or(part.pin);
        if part.unpin.is_some() {
            unpin = part.unpin;
        }
        has_session_changes |= part.session;
        opaque |= part.opaque;
        read.extend(part.read);
        written.extend(part.written);
    }
    if count > 1 && route == Route::Write {
        reason = if parse_error {
            Reason::ParseError
        } else {
            Reason::MultiStatementWrite
        };
    }
    let written = canonical(written);
    let read: Vec<Arc<str>> = canonical(read)
        .into_iter()
        .filter(|name| !written.contains(name))
        .collect();
    StatementInfo {
        fingerprint: Fingerprint(0),
        normalized: Arc::from(""),
        route,
        reason,
        tables_read: read.into_boxed_slice(),
        tables_written: written.into_boxed_slice(),
        tx,
        pin,
        unpin,
        statement_count: count,
        has_session_changes,
        opaque,
    }
}

/// Adds the bare name of every qualified name (see "Table names" above).
fn canonical(names: BTreeSet<String>) -> Vec<Arc<str>> {
    let mut all = BTreeSet::new();
    for name in names {
        if let Some((_, bare)) = name.rsplit_once('.') {
            all.insert(bare.to_string());
        }
        all.insert(name);
    }
    all.into_iter().map(Arc::from).collect()
}
