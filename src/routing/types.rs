//! The classifier's vocabulary: what a statement is (route, reason,
//! transaction and session effects, tables) as the routing policy and the
//! session state machine consume it.

use super::fingerprint::Fingerprint;
use crate::cluster::Lsn;
use crate::protocol::ClientEncoding;
use std::sync::Arc;

/// A routing hint from a leading `/* pgsidecar:primary|replica */` or
/// `/* pgsidecar:min_lsn=0/16B3748 */` comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hint {
    Primary,
    Replica,
    /// A causal token: read only on a node that has replayed this WAL
    /// position (the primary otherwise).
    MinLsn(Lsn),
}

/// The proxy's own session parameters a client can `SHOW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyParam {
    /// `pgsidecar.route`.
    Route,
    /// `pgsidecar.min_lsn`: the session's causal token.
    MinLsn,
    /// `pgsidecar.last_write_lsn`: a WAL position at or past the commit of
    /// the client's last write (read only).
    LastWriteLsn,
}

impl ProxyParam {
    pub const ALL: [ProxyParam; 3] = [Self::Route, Self::MinLsn, Self::LastWriteLsn];

    /// The parameter's name, as `SHOW` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Route => "pgsidecar.route",
            Self::MinLsn => "pgsidecar.min_lsn",
            Self::LastWriteLsn => "pgsidecar.last_write_lsn",
        }
    }

    /// The parameter named `name` (lower-cased, as GUC names compare).
    pub fn named(name: &str) -> Option<ProxyParam> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Where a statement may run, judged from its text alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Safe on a replica: reads nothing it could change and changes nothing.
    Read,
    /// Needs the primary (or the session's pinned server).
    Write,
}

/// Why a statement got its route. [`Reason::as_str`] is the stable value of
/// the `routing_decisions_total{reason}` label, so variants are only added,
/// never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// SELECT/VALUES/TABLE/SHOW/EXPLAIN/COPY … TO STDOUT with nothing that writes.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY FROM, COPY TO a file.
    Write,
    /// CREATE/ALTER/DROP/GRANT/REVOKE/COMMENT and other catalog changes.
    Ddl,
    /// Commands that act on the server: VACUUM, ANALYZE, LOCK, CHECKPOINT,
    /// NOTIFY, DO, CALL, EXECUTE, cursors, … (all need the primary).
    Utility,
    /// A read whose WITH (at any depth) holds INSERT/UPDATE/DELETE/MERGE.
    WritingCte,
    /// FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    LockingClause,
    /// SELECT … INTO new_table.
    SelectInto,
    /// A read calling a function not on the read-only allow-list.
    WriteFunction,
    /// sqlparser could not parse it: primary, never a replica.
    ParseError,
    /// sqlparser parsed a statement kind this classifier does not know.
    UnknownStatement,
    /// Longer than the classifier's size limit; not parsed.
    TooLarge,
    /// Brackets nested deeper than the parser can be trusted with on a
    /// worker thread's stack; not parsed.
    TooDeep,
    /// Several statements in one string, at least one of them not a read.
    MultiStatementWrite,
    /// BEGIN/START, COMMIT/END, ROLLBACK, SAVEPOINT, RELEASE, SET TRANSACTION.
    TransactionControl,
    /// SET/RESET/DISCARD/PREPARE/DEALLOCATE/LISTEN/UNLISTEN: session state
    /// the proxy tracks itself.
    SessionState,
    /// `SET pgsidecar.route = …`, `SET pgsidecar.min_lsn = …` and `SHOW`
    /// of the proxy's own parameters: answered by the proxy.
    ProxySetting,
    /// Not produced by the classifier: for the policy, when a hint decided.
    Hint,
    /// Text the proxy could not read exactly: bytes invalid in the client's
    /// encoding (the server answers 22021), or an encoding it has no
    /// decoder for. Primary, never a replica.
    Encoding,
}

impl Reason {
    /// Stable snake_case label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Utility => "utility",
            Self::WritingCte => "writing_cte",
            Self::LockingClause => "locking_clause",
            Self::SelectInto => "select_into",
            Self::WriteFunction => "write_function",
            Self::ParseError => "parse_error",
            Self::UnknownStatement => "unknown_statement",
            Self::TooLarge => "too_large",
            Self::TooDeep => "too_deep",
            Self::MultiStatementWrite => "multi_statement_write",
            Self::TransactionControl => "transaction_control",
            Self::SessionState => "session_state",
            Self::ProxySetting => "proxy_setting",
            Self::Hint => "hint",
            Self::Encoding => "encoding",
        }
    }

    /// Every variant, e.g. to pre-register metric label values.
    pub const ALL: [Reason; 18] = [
        Self::Read,
        Self::Write,
        Self::Ddl,
        Self::Utility,
        Self::WritingCte,
        Self::LockingClause,
        Self::SelectInto,
        Self::WriteFunction,
        Self::ParseError,
        Self::UnknownStatement,
        Self::TooLarge,
        Self::TooDeep,
        Self::MultiStatementWrite,
        Self::TransactionControl,
        Self::SessionState,
        Self::ProxySetting,
        Self::Hint,
        Self::Encoding,
    ];
}

/// Transaction-control effect of a statement (for a multi-statement string:
/// of the last statement that has one, i.e. the state the string leaves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TxEffect {
    #[default]
    None,
    /// BEGIN / START TRANSACTION; `read_only` is `Some` when READ ONLY or
    /// READ WRITE was given, `serializable` when an ISOLATION LEVEL was
    /// (true for SERIALIZABLE, which a hot standby refuses).
    Begin {
        read_only: Option<bool>,
        serializable: Option<bool>,
    },
    /// COMMIT / END (also COMMIT AND CHAIN).
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    /// SAVEPOINT name.
    Savepoint,
    /// `RELEASE [SAVEPOINT] name`.
    ReleaseSavepoint,
    /// `ROLLBACK TO [SAVEPOINT] name`: the transaction stays open.
    RollbackToSavepoint,
    /// SET TRANSACTION …, for the current transaction.
    SetTransaction {
        read_only: Option<bool>,
        serializable: Option<bool>,
    },
    /// SET SESSION CHARACTERISTICS AS TRANSACTION …: the session default.
    SetSessionCharacteristics {
        read_only: Option<bool>,
        serializable: Option<bool>,
    },
}

/// State that cannot survive moving the client to another server: the
/// client must stay on its current server connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// pg_advisory_lock*, pg_try_advisory_lock* (session level, not _xact_).
    AdvisoryLock,
    /// LISTEN channel.
    Listen,
    /// CREATE TEMP TABLE/VIEW/SEQUENCE, SELECT INTO TEMP, CTAS TEMP.
    TempObject,
    /// DECLARE … WITH HOLD.
    HoldCursor,
    /// SQL-level PREPARE name AS ….
    SqlPrepare,
}

impl PinReason {
    /// Stable label for a pin metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdvisoryLock => "advisory_lock",
            Self::Listen => "listen",
            Self::TempObject => "temp_object",
            Self::HoldCursor => "hold_cursor",
            Self::SqlPrepare => "sql_prepare",
        }
    }
}

/// A statement that releases (some) pinned session state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Unpin {
    /// SELECT pg_advisory_unlock_all().
    AdvisoryUnlockAll,
    /// UNLISTEN *.
    UnlistenAll,
    /// DISCARD ALL: releases everything (locks, listens, temp objects,
    /// prepared statements) and resets every parameter like RESET ALL.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] name` (name as the server folds it).
    Deallocate(Arc<str>),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
}

/// `SET pgsidecar.route` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteSetting {
    Primary,
    Replica,
    Auto,
}

impl RouteSetting {
    /// The value as `SHOW pgsidecar.route` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::Auto => "auto",
        }
    }
}

/// A session-parameter effect whose value lives in literals, so it is
/// recomputed from each statement's own text and never taken from the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// SET [SESSION|LOCAL] name {=|TO} value, `SET TIME ZONE`, `SET ROLE`,
    /// `SET SESSION AUTHORIZATION`, `SET SCHEMA`, `SET NAMES`. `name` is
    /// lower-cased (GUC names are case-insensitive); `value` is SQL text to
    /// re-apply verbatim as `SET name TO value` (quotes kept, e.g.
    /// `'a', public`).
    Set {
        name: String,
        value: String,
        local: bool,
    },
    /// `set_config('name', 'value', is_local)` with literal arguments.
    /// `value` is the parameter's string form (no SQL quoting): re-apply it
    /// with `set_config`, not with `SET`, because for list parameters such as
    /// `search_path` the two syntaxes mean different things.
    SetConfig {
        name: String,
        value: String,
        local: bool,
    },
    /// RESET name, or SET name TO DEFAULT.
    Reset {
        name: String,
        local: bool,
    },
    /// RESET ALL (DISCARD ALL is reported as [`Unpin::DiscardAll`]).
    ResetAll,
    /// `SET [LOCAL] pgsidecar.route = …` / `RESET pgsidecar.route` (= auto):
    /// intercepted by the proxy, never forwarded. `setting` is `None` for an
    /// unknown value, which the proxy should reject with an error naming `value`.
    /// `local` (SET LOCAL) is refused too: a transaction is routed as a
    /// whole before its statements run, so a change for its rest alone has
    /// nothing left to route.
    Route {
        setting: Option<RouteSetting>,
        value: String,
        local: bool,
    },
    /// `SET [LOCAL] pgsidecar.min_lsn = '0/16B3748'`, `RESET
    /// pgsidecar.min_lsn` (`lsn` 0/0, which every node has replayed):
    /// intercepted by the proxy like `pgsidecar.route`. `lsn` is `None`
    /// for a value that is not an LSN, refused with an error naming `value`.
    MinLsn {
        lsn: Option<Lsn>,
        value: String,
        local: bool,
    },
    /// `SHOW pgsidecar.route|min_lsn|last_write_lsn`: answered by the proxy.
    Show(ProxyParam),
    /// `SAVEPOINT name`, `RELEASE [SAVEPOINT] name`, and a `ROLLBACK TO`
    /// whose savepoint the same string did not make: markers that let the
    /// client's changes pending in its open transaction block be undone
    /// the way the server undoes them. `name` is as Postgres compares it.
    Savepoint(String),
    ReleaseSavepoint(String),
    RollbackToSavepoint(String),
    /// The session changed in a way the text does not spell out (e.g.
    /// `set_config($1, $2, false)`, `SET SESSION CHARACTERISTICS …`): the
    /// proxy cannot re-apply it and should pin the client instead.
    Untracked {
        name: Option<String>,
    },
}

/// Everything the cache remembers about one statement shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementInfo {
    pub fingerprint: Fingerprint,
    /// Literal-free text for logs and digests (capped; ends in `…` if cut).
    pub normalized: Arc<str>,
    pub route: Route,
    pub reason: Reason,
    /// Relations read, in canonical form (see the module docs, "Table
    /// names"); a
    /// relation that is also written appears only in `tables_written`.
    pub tables_read: Box<[Arc<str>]>,
    pub tables_written: Box<[Arc<str>]>,
    pub tx: TxEffect,
    pub pin: Option<PinReason>,
    pub unpin: Option<Unpin>,
    /// Non-empty statements in the string (0 for an empty query).
    pub statement_count: usize,
    /// Whether the statement has literal-dependent session effects that
    /// [`super::Classified::session`] recomputes from the text each time.
    pub has_session_changes: bool,
    /// It runs code that may change the session where its text does not
    /// say: DO, CALL, EXECUTE, a function that is not a known built-in,
    /// or anything the parser could not read. The proxy then reads the
    /// session's settings back from the server before another client may
    /// use it.
    pub opaque: bool,
}

/// The result of [`super::Classifier::classify`].
#[derive(Debug)]
pub struct Classified {
    /// From a comment before the first token; found on every call.
    pub hint: Option<Hint>,
    /// Shared, cached by fingerprint.
    pub info: Arc<StatementInfo>,
    /// Session effects computed from this very text (empty and
    /// allocation-free unless `info.has_session_changes`).
    pub session: Vec<SessionChange>,
}

/// Cloned once or twice per request (carried from the idle path to the
/// relay, kept for a Bind of the unnamed statement): nearly every
/// statement has no session effects, whose empty list is made, not
/// cloned.
impl Clone for Classified {
    #[inline]
    fn clone(&self) -> Self {
        Classified {
            hint: self.hint,
            info: self.info.clone(),
            session: if self.session.is_empty() {
                Vec::new()
            } else {
                self.session.clone()
            },
        }
    }
}

impl Classified {
    /// The classification of a lossy rendering of a statement sent in
    /// `encoding` (see [`crate::protocol::SqlText::exact`]): what it reads
    /// or writes is not known for sure, so it goes to the primary (a hint
    /// cannot send it to a replica), and nothing is decided on it without
    /// the server: no deferred BEGIN, no `SET pgsidecar.route` answered by
    /// the proxy. Copies the shared info: only for such statements.
    ///
    /// From a UTF-8 client such text is invalid and the server refuses it
    /// (22021), whatever the database's encoding: it has no effects. In
    /// another encoding (SQL_ASCII too: a SQL_ASCII database takes any
    /// bytes from a SQL_ASCII client)
    /// the server may accept what the proxy cannot read (no decoder), so
    /// session changes read from it, whose values may be mangled, are
    /// untracked; and in an encoding with ASCII bytes inside multibyte
    /// characters even its token structure may be wrong (a `SET` hidden in
    /// what looked like a literal): any statement is taken to change the
    /// session then.
    pub fn unreadable(self, encoding: ClientEncoding) -> Classified {
        let mut info = StatementInfo::clone(&self.info);
        info.route = Route::Write;
        info.reason = Reason::Encoding;
        info.tx = TxEffect::None;
        let mut session = self.session;
        if encoding == ClientEncoding::Utf8 {
            session.clear();
            info.pin = None;
            info.unpin = None;
        } else if !encoding.ascii_safe() || info.has_session_changes {
            session.push(SessionChange::Untracked { name: None });
        }
        Classified {
            hint: None,
            info: Arc::new(info),
            session,
        }
    }
}
