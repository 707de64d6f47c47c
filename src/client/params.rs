//! Session parameters per client: what the client set at startup and with
//! SET/RESET/set_config, and the SQL that makes a pooled server match it
//! before the client's first message runs there. Values are kept in the form
//! they must be re-applied in: SQL text from a SET statement, or a raw
//! string (startup packet, set_config) re-applied with set_config, since for
//! list parameters such as search_path the two mean different things.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::protocol::ClientEncoding;

/// A parameter value as it must be re-applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParamValue {
    /// SQL text after `SET name TO`.
    Sql(Box<str>),
    /// A raw string for `set_config(name, value, false)`.
    Raw(Box<str>),
}

/// A change requested by a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamChange {
    Set(Box<str>, ParamValue),
    Reset(Box<str>),
    ResetAll,
    /// Savepoint markers (see [`SessionChange::Savepoint`]): they only
    /// shape the changes pending in a transaction block.
    ///
    /// [`SessionChange::Savepoint`]: crate::routing::SessionChange::Savepoint
    Savepoint(Box<str>),
    ReleaseSavepoint(Box<str>),
    RollbackToSavepoint(Box<str>),
    /// A custom setting was set or reset (even locally, even in a block
    /// that rolls back): it stays defined in the session.
    Define(Box<str>),
}

/// Settings by name, in the form they must be re-applied in.
pub type Settings = BTreeMap<Box<str>, ParamValue>;

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Parameters of one client.
#[derive(Clone, Debug)]
pub struct ClientParams {
    /// Shared with every client that sent the same (`shared_startup`).
    startup: Arc<Settings>,
    /// `None` while the settings are the startup ones (most clients never
    /// change them): a copy per idle client would be ~400 bytes each.
    changed: Option<BTreeMap<Box<str>, ParamValue>>,
    /// Changes made inside the open transaction block: they take effect at
    /// COMMIT and vanish at ROLLBACK, as on the server.
    pending: Vec<ParamChange>,
    /// Custom settings (`my.var`) this client has defined. Postgres keeps
    /// a custom setting defined in a session once anything set or reset
    /// it: `current_setting('my.var', true)` is then '' rather than NULL.
    /// Servers are matched to clients on this too (see
    /// [`ServerParamsState::fits`]).
    defined: BTreeSet<Box<str>>,
    hash: u64,
    /// `default_transaction_isolation` is serializable (kept with the
    /// hash: routing asks for every request).
    serializable: bool,
    /// The encoding of the text the client sends, from `client_encoding`
    /// as the client set it, else the server's default.
    encoding: ClientEncoding,
    default_encoding: ClientEncoding,
}

impl Default for ClientParams {
    fn default() -> Self {
        ClientParams::from_startup(&[])
    }
}

fn hash_of(params: &BTreeMap<Box<str>, ParamValue>, defined: &BTreeSet<Box<str>>) -> u64 {
    let mut h = DefaultHasher::new();
    params.hash(&mut h);
    defined.hash(&mut h);
    h.finish()
}

/// A custom setting's name (`my.var`): one Postgres makes a placeholder
/// for. The proxy's own `pgsidecar.*` never reaches a server as a client's.
pub fn is_custom(name: &str) -> bool {
    name.contains('.') && !name.starts_with("pgsidecar.")
}

impl ClientParams {
    /// From the StartupMessage: every parameter except user/database, plus
    /// the `-c name=value` settings inside `options`.
    ///
    /// A client that gives no `application_name` has `''`, as on a direct
    /// connection (the proxy's own server connections are labelled
    /// `pgsidecar` until a client's settings are applied to them).
    pub fn from_startup(params: &[(String, String)]) -> Self {
        let mut startup: BTreeMap<Box<str>, ParamValue> = BTreeMap::new();
        for (k, v) in params {
            if k == "options" {
                for (name, value) in parse_options(v) {
                    startup.insert(name.to_lowercase().into(), ParamValue::Raw(value.into()));
                }
            } else if !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
                startup.insert(k.to_lowercase().into(), ParamValue::Raw(v.as_str().into()));
            }
        }
        startup
            .entry("application_name".into())
            .or_insert_with(|| ParamValue::Raw("".into()));
        let defined = startup.keys().filter(|n| is_custom(n)).cloned().collect();
        let mut p = ClientParams {
            changed: None,
            startup: shared_startup::share(startup),
            pending: Vec::new(),
            defined,
            hash: 0,
            serializable: false,
            encoding: ClientEncoding::default(),
            default_encoding: ClientEncoding::default(),
        };
        p.rehash();
        p
    }

    /// The server's `client_encoding` for a session that does not set one
    /// (the database's encoding), as the server reported it at login.
    pub fn set_default_encoding(&mut self, name: &str) {
        self.default_encoding = ClientEncoding::from_name(name).unwrap_or_default();
        self.rehash();
    }

    /// The encoding of the text the client sends now.
    #[inline]
    pub fn encoding(&self) -> ClientEncoding {
        self.encoding
    }

    /// Identifies the current settings; equal hashes mean nothing to sync.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    #[inline]
    pub fn current(&self) -> &BTreeMap<Box<str>, ParamValue> {
        self.changed.as_ref().unwrap_or(&self.startup)
    }

    /// The current settings, to change (copied from the startup ones on
    /// the first change).
    fn current_mut(&mut self) -> &mut BTreeMap<Box<str>, ParamValue> {
        let startup = &self.startup;
        self.changed.get_or_insert_with(|| Settings::clone(startup))
    }

    /// A startup value given as a raw string (for ParameterStatus at login).
    pub fn startup_raw(&self, name: &str) -> Option<&str> {
        match self.startup.get(name) {
            Some(ParamValue::Raw(v)) => Some(v),
            _ => None,
        }
    }

    /// A statement that set or reset custom setting `name` (even SET
    /// LOCAL, even in a block that rolls back) completed: the session has
    /// it defined from now on.
    pub fn define(&mut self, name: &str) {
        if is_custom(name) && !self.defined.contains(name) {
            self.defined.insert(name.into());
            self.rehash();
        }
    }

    /// Replaces the current settings with what the server reported
    /// (after code the proxy could not see into changed them).
    pub fn adopt(&mut self, current: BTreeMap<Box<str>, ParamValue>) {
        self.defined
            .extend(current.keys().filter(|n| is_custom(n)).cloned());
        self.changed = (current != *self.startup).then_some(current);
        self.rehash();
    }

    /// Applies a change that ran successfully, now or at COMMIT.
    pub fn apply(&mut self, change: ParamChange, in_transaction: bool) {
        if let ParamChange::Define(name) = &change {
            self.define(name);
            return;
        }
        if in_transaction {
            self.pend(change);
            return;
        }
        match change {
            ParamChange::Set(name, value) => {
                self.current_mut().insert(name, value);
            }
            ParamChange::Reset(name) => match self.startup.get(&name).cloned() {
                Some(v) => {
                    self.current_mut().insert(name, v);
                }
                None => {
                    self.current_mut().remove(&name);
                }
            },
            ParamChange::ResetAll => self.changed = None,
            // Outside a block the string that made them resolved them.
            ParamChange::Savepoint(_)
            | ParamChange::ReleaseSavepoint(_)
            | ParamChange::RollbackToSavepoint(_)
            | ParamChange::Define(_) => return,
        }
        self.rehash();
    }

    /// A change inside the open block: kept for COMMIT, or, for a
    /// savepoint marker, applied to what is kept.
    fn pend(&mut self, change: ParamChange) {
        let made = |pending: &[ParamChange], name: &str| {
            pending
                .iter()
                .rposition(|c| matches!(c, ParamChange::Savepoint(n) if **n == *name))
        };
        match change {
            ParamChange::RollbackToSavepoint(name) => {
                // The savepoint stays; what followed it is undone.
                if let Some(i) = made(&self.pending, &name) {
                    self.pending.truncate(i + 1);
                }
            }
            ParamChange::ReleaseSavepoint(name) => {
                // It and later savepoints go; their changes stay.
                if let Some(i) = made(&self.pending, &name) {
                    let kept = self.pending.split_off(i);
                    self.pending.extend(
                        kept.into_iter()
                            .filter(|c| !matches!(c, ParamChange::Savepoint(_))),
                    );
                }
            }
            change => self.pending.push(change),
        }
    }

    /// The transaction block ended: keep (COMMIT) or drop its changes.
    pub fn end_transaction(&mut self, committed: bool) {
        let pending = std::mem::take(&mut self.pending);
        if committed {
            for change in pending {
                self.apply(change, false);
            }
        }
    }

    /// Transactions of this session are SERIALIZABLE unless they say
    /// otherwise.
    pub fn serializable_by_default(&self) -> bool {
        self.serializable
    }

    fn rehash(&mut self) {
        self.hash = hash_of(self.current(), &self.defined);
        self.serializable = self
            .current()
            .get("default_transaction_isolation")
            .is_some_and(|v| {
                let (ParamValue::Sql(text) | ParamValue::Raw(text)) = v;
                text.trim_matches(|c: char| c == '\'' || c.is_whitespace())
                    .eq_ignore_ascii_case("serializable")
            });
        // Quotes and case do not matter to the name lookup: `'latin1'`
        // from a SET is read like `LATIN1` from the startup packet.
        self.encoding = match self.current().get("client_encoding") {
            Some(ParamValue::Sql(v) | ParamValue::Raw(v)) => ClientEncoding::from_name(v),
            None => None,
        }
        .unwrap_or(self.default_encoding);
    }
}

/// What the proxy has set on one server connection.
#[derive(Clone, Debug)]
pub struct ServerParamsState {
    params: BTreeMap<Box<str>, ParamValue>,
    /// Custom settings defined on it (no RESET or DISCARD undefines one).
    defined: BTreeSet<Box<str>>,
    hash: u64,
    /// A sync failed half-way: the server's settings are not known.
    unknown: bool,
}

impl Default for ServerParamsState {
    fn default() -> Self {
        ServerParamsState {
            params: BTreeMap::new(),
            defined: BTreeSet::new(),
            hash: hash_of(&BTreeMap::new(), &BTreeSet::new()),
            unknown: false,
        }
    }
}

impl ServerParamsState {
    pub fn matches(&self, client: &ClientParams) -> bool {
        !self.unknown && self.hash == client.hash
    }

    /// Whether the server can be made to look like the client's own
    /// session: it has no custom setting defined that the client never
    /// defined (that client would see '' where its own session has none).
    pub fn fits(&self, client: &ClientParams) -> bool {
        self.defined.is_empty() || self.defined.is_subset(&client.defined)
    }

    /// Records that the server now has the client's settings.
    pub fn assume(&mut self, client: &ClientParams) {
        if !self.matches(client) {
            self.params = client.current().clone();
            self.defined.extend(client.defined.iter().cloned());
            self.hash = hash_of(&self.params, &self.defined);
            self.unknown = false;
        }
    }

    pub fn mark_unknown(&mut self) {
        self.unknown = true;
    }

    /// The server ran DISCARD ALL / RESET ALL itself: its settings are its
    /// defaults, its custom settings still defined.
    pub fn reset(&mut self) {
        let defined = std::mem::take(&mut self.defined);
        *self = ServerParamsState::default();
        self.hash = hash_of(&self.params, &defined);
        self.defined = defined;
    }

    /// SQL that turns this server's settings into the client's, or `None`
    /// if they already match.
    ///
    /// A server converts a whole Query message from its `client_encoding`
    /// of the moment before running any of it, and the proxy writes the
    /// values as UTF-8. So text that is not ASCII must reach a server that
    /// reads UTF-8: then [`Sync::utf8_first`] asks for `SET client_encoding`
    /// to UTF8 in a message of its own first, and the SQL ends by setting
    /// the client's encoding again.
    pub fn sync_sql(&self, client: &ClientParams) -> Option<Sync> {
        if self.matches(client) {
            return None;
        }
        let mut sql = String::new();
        let base = if self.unknown {
            // RESET ALL leaves the role and the session user alone.
            sql.push_str("RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;");
            &BTreeMap::new()
        } else {
            &self.params
        };
        for name in base.keys() {
            if !client.current().contains_key(name) {
                push_reset(&mut sql, name);
            }
        }
        // Defined in the client's session, reset since: RESET defines it
        // here too.
        for name in client.defined.difference(&self.defined) {
            if !client.current().contains_key(name) && !base.contains_key(name) {
                sql.push_str("RESET ");
                push_name(&mut sql, name);
                sql.push(';');
            }
        }
        for (name, value) in client.current() {
            if base.get(name) != Some(value) {
                push_set(&mut sql, name, value);
            }
        }
        let utf8_first = !sql.is_ascii();
        if utf8_first {
            match client.current().get_key_value("client_encoding") {
                Some((name, value)) => push_set(&mut sql, name, value),
                None => push_reset(&mut sql, "client_encoding"),
            }
        }
        Some(Sync { sql, utf8_first })
    }
}

/// The statements that bring a server's settings up to date.
#[derive(Debug)]
pub struct Sync {
    pub sql: String,
    /// Send [`UTF8_FIRST`] before `sql` (see [`ServerParamsState::sync_sql`]).
    pub utf8_first: bool,
}

/// Makes a server read the proxy's UTF-8 text, in a message of its own.
pub const UTF8_FIRST: &str = "SET client_encoding TO 'UTF8'";

fn push_reset(sql: &mut String, name: &str) {
    sql.push_str("RESET ");
    push_name(sql, name);
    sql.push(';');
}

fn push_set(sql: &mut String, name: &str, value: &ParamValue) {
    match value {
        ParamValue::Sql(text) => {
            sql.push_str("SET ");
            push_name(sql, name);
            sql.push_str(" TO ");
            sql.push_str(text);
            sql.push(';');
        }
        ParamValue::Raw(text) => {
            sql.push_str("SELECT pg_catalog.set_config(");
            push_literal(sql, name);
            sql.push_str(", ");
            push_literal(sql, text);
            sql.push_str(", false);");
        }
    }
}

/// Appends a parameter name, quoting each dotted part that needs it.
fn push_name(sql: &mut String, name: &str) {
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            sql.push('.');
        }
        let plain = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !part.as_bytes()[0].is_ascii_digit();
        if plain {
            sql.push_str(part);
        } else {
            sql.push('"');
            sql.push_str(&part.replace('"', "\"\""));
            sql.push('"');
        }
    }
}

/// `text` as a string literal that means the same whatever
/// `standard_conforming_strings` the server has: with a backslash, an
/// `E'…'` literal with the backslashes doubled.
fn push_literal(sql: &mut String, text: &str) {
    if text.contains('\\') {
        sql.push('E');
    }
    sql.push('\'');
    sql.push_str(&text.replace('\\', "\\\\").replace('\'', "''"));
    sql.push('\'');
}

/// Parses the `options` startup parameter: `-c name=value`, `--name=value`,
/// separated by spaces, backslash escaping the next character.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let setting = if w == "-c" {
            iter.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("-c").map(str::to_string)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

mod shared_startup;
#[cfg(test)]
mod tests;
