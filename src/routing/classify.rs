//! Classification of one statement on a cache miss: parse it with
//! sqlparser (PostgreSqlDialect), decide by statement kind, then let the
//! whole-tree walk escalate reads that hide writes. Whatever cannot be
//! parsed goes to the lexical fallback, and always to the primary.

use super::fallback;
use super::functions::FunctionPolicy;
use super::types::{PinReason, ProxyParam, Reason, Route, TxEffect, Unpin};
use super::walker::{self, Facts};
use sqlparser::ast::{
    CopySource, CopyTarget, DiscardObject, Reset, Set, SetExpr, Statement, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// What one statement is, before statements of a string are combined.
#[derive(Debug, Clone)]
pub(crate) struct StmtClass {
    pub route: Route,
    pub reason: Reason,
    pub tx: TxEffect,
    pub pin: Option<PinReason>,
    pub unpin: Option<Unpin>,
    /// Has literal-dependent session effects (SET, RESET, set_config).
    pub session: bool,
    /// Runs code whose effects on the session the text does not show.
    pub opaque: bool,
    pub read: BTreeSet<String>,
    pub written: BTreeSet<String>,
}

impl StmtClass {
    pub(crate) fn new(route: Route, reason: Reason) -> Self {
        Self {
            route,
            reason,
            tx: TxEffect::None,
            pin: None,
            unpin: None,
            session: false,
            opaque: false,
            read: BTreeSet::new(),
            written: BTreeSet::new(),
        }
    }

    fn write(reason: Reason) -> Self {
        Self::new(Route::Write, reason)
    }
}

/// Classifies the text of one statement (no top-level `;`).
pub(crate) fn classify_statement(text: &str, functions: &FunctionPolicy) -> StmtClass {
    let parsed = catch_unwind(AssertUnwindSafe(|| parse(text)));
    match parsed {
        Ok(Ok(stmts)) if !stmts.is_empty() => {
            let mut parts = stmts.iter().map(|s| classify_ast(s, functions));
            let first = parts
                .next()
                .unwrap_or_else(|| StmtClass::write(Reason::ParseError));
            // The parser found more than one statement where the lexer saw
            // one: be conservative and treat it as one combined write.
            parts.fold(first, |mut acc, part| {
                acc.route = Route::Write;
                acc.reason = Reason::MultiStatementWrite;
                acc.opaque |= part.opaque;
                acc.read.extend(part.read);
                acc.written.extend(part.written);
                acc
            })
        }
        _ => fallback::classify(text),
    }
}

/// Parses one statement. `TABLE name …` (which sqlparser lacks) is parsed
/// as the `SELECT * FROM name …` it is shorthand for.
fn parse(text: &str) -> Result<Vec<Statement>, sqlparser::parser::ParserError> {
    let dialect = PostgreSqlDialect {};
    let bytes = text.as_bytes();
    if bytes.len() > 5
        && bytes[..5].eq_ignore_ascii_case(b"table")
        && bytes[5].is_ascii_whitespace()
    {
        let rest = text.get(5..).unwrap_or("");
        return Parser::parse_sql(&dialect, &format!("SELECT * FROM{rest}"));
    }
    Parser::parse_sql(&dialect, text)
}

/// `Some(true)` for ISOLATION LEVEL SERIALIZABLE, `Some(false)` for
/// another level, `None` when none is given (the last one counts).
fn serializable_mode(modes: &[TransactionMode]) -> Option<bool> {
    modes.iter().rev().find_map(|m| match m {
        TransactionMode::IsolationLevel(level) => {
            Some(*level == TransactionIsolationLevel::Serializable)
        }
        _ => None,
    })
}

fn read_only_mode(modes: &[TransactionMode]) -> Option<bool> {
    modes.iter().rev().find_map(|m| match m {
        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => Some(true),
        TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => Some(false),
        _ => None,
    })
}

/// A read unless the tree hides a write; the order is the reason's priority.
fn read_or_escalate(facts: &Facts) -> StmtClass {
    let reason = if facts.nested_write {
        Reason::WritingCte
    } else if facts.select_into {
        Reason::SelectInto
    } else if facts.locking {
        Reason::LockingClause
    } else if facts.write_function {
        Reason::WriteFunction
    } else {
        return StmtClass::new(Route::Read, Reason::Read);
    };
    StmtClass::write(reason)
}

fn classify_ast(stmt: &Statement, functions: &FunctionPolicy) -> StmtClass {
    let facts = walker::walk(stmt, functions);
    if let Statement::Explain {
        analyze,
        options,
        statement,
        ..
    } = stmt
    {
        // Any ANALYZE option counts, whatever its value: the value may be a
        // literal (`ANALYZE 0`), and the cached route must not depend on
        // literals. Without ANALYZE nothing runs, so it is a read even for
        // a write (the server skips the read-only check for plain EXPLAIN).
        let analyze = *analyze
            || options
                .iter()
                .flatten()
                .any(|o| o.name.value.eq_ignore_ascii_case("analyze"));
        if analyze {
            return classify_ast(statement, functions);
        }
        // Plain EXPLAIN runs nothing.
        let mut class = StmtClass::new(Route::Read, Reason::Read);
        class.read.extend(facts.read.union(&facts.written).cloned());
        return class;
    }
    let mut class = by_kind(stmt, &facts);
    class.pin = class.pin.or(facts.pin);
    class.unpin = class.unpin.or(facts.unpin.clone());
    class.session |= facts.set_config;
    // A procedure, a prepared statement's body, or a user function may
    // change the session where the text does not say.
    class.opaque |=
        facts.opaque_call || matches!(stmt, Statement::Call(_) | Statement::Execute { .. });
    if class.reason == Reason::Ddl {
        class
            .written
            .extend(facts.mentioned.difference(&facts.read).cloned());
    }
    class.written.extend(facts.written.iter().cloned());
    class.read.extend(facts.read.iter().cloned());
    if let Statement::Copy {
        source: CopySource::Table { table_name, .. },
        to,
        ..
    } = stmt
    {
        let target = if *to {
            &mut class.read
        } else {
            &mut class.written
        };
        target.insert(walker::relation(table_name));
    }
    class
}

fn is_write_body(body: &SetExpr) -> bool {
    matches!(
        body,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
    )
}

fn by_kind(stmt: &Statement, facts: &Facts) -> StmtClass {
    use Statement as S;
    match stmt {
        // `WITH … INSERT/UPDATE/DELETE/MERGE` parses as a query around a write.
        S::Query(q) if is_write_body(&q.body) => StmtClass::write(Reason::Write),
        S::Query(_) => read_or_escalate(facts),
        S::ShowVariable { variable } => {
            let mut class = StmtClass::new(Route::Read, Reason::Read);
            let name: Vec<String> = variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect();
            if ProxyParam::named(&name.join(".")).is_some() {
                // Answered by the proxy, the name read from the text again.
                class.reason = Reason::ProxySetting;
                class.session = true;
            }
            class
        }
        // `COPY (INSERT … RETURNING …) TO STDOUT` is a write.
        S::Copy {
            source: CopySource::Query(q),
            ..
        } if is_write_body(&q.body) => StmtClass::write(Reason::Write),
        S::Copy {
            to: true,
            target: CopyTarget::Stdout,
            ..
        } => read_or_escalate(facts),
        S::Copy { .. } | S::Insert(_) | S::Update(_) | S::Delete(_) | S::Merge(_) => {
            StmtClass::write(Reason::Write)
        }
        S::Truncate(_) => StmtClass::write(Reason::Write),
        S::StartTransaction { modes, .. } => tx(TxEffect::Begin {
            read_only: read_only_mode(modes),
            serializable: serializable_mode(modes),
        }),
        S::Commit { .. } => tx(TxEffect::Commit),
        S::Rollback {
            savepoint: None, ..
        } => tx(TxEffect::Rollback),
        // Savepoints matter to the SETs pending in the block: the session
        // effects (read from the text) carry their names.
        S::Rollback {
            savepoint: Some(_), ..
        } => savepoint(TxEffect::RollbackToSavepoint),
        S::Savepoint { .. } => savepoint(TxEffect::Savepoint),
        S::ReleaseSavepoint { .. } => savepoint(TxEffect::ReleaseSavepoint),
        S::Set(Set::SetTransaction {
            modes,
            session: false,
            ..
        }) => tx(TxEffect::SetTransaction {
            read_only: read_only_mode(modes),
            serializable: serializable_mode(modes),
        }),
        S::Set(Set::SetTransaction {
            modes,
            session: true,
            ..
        }) => {
            let mut class = session(TxEffect::SetSessionCharacteristics {
                read_only: read_only_mode(modes),
                serializable: serializable_mode(modes),
            });
            class.session = true;
            class
        }
        S::Set(set) => {
            let mut class = session(TxEffect::None);
            class.session = true;
            if is_proxy_setting(set) {
                class.reason = Reason::ProxySetting;
            }
            class
        }
        S::Reset(reset) => {
            let mut class = session(TxEffect::None);
            class.session = true;
            if let Reset::ConfigurationParameter(name) = &reset.reset
                && is_proxy_name(&walker::relation(name))
            {
                class.reason = Reason::ProxySetting;
            }
            class
        }
        S::Discard { object_type } => {
            let mut class = session(TxEffect::None);
            if matches!(object_type, DiscardObject::ALL) {
                class.unpin = Some(Unpin::DiscardAll);
            }
            class
        }
        S::Deallocate { name, .. } => {
            let mut class = session(TxEffect::None);
            class.unpin = Some(
                if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                    Unpin::DeallocateAll
                } else {
                    Unpin::Deallocate(Arc::from(walker::fold(name)))
                },
            );
            class
        }
        S::Prepare { .. } => pinned(Reason::SessionState, PinReason::SqlPrepare),
        S::LISTEN { .. } => pinned(Reason::SessionState, PinReason::Listen),
        S::UNLISTEN { channel } => {
            let mut class = session(TxEffect::None);
            if channel.value == "*" {
                class.unpin = Some(Unpin::UnlistenAll);
            }
            class
        }
        S::Declare { stmts, .. } => {
            let mut class = StmtClass::write(Reason::Utility);
            if stmts.iter().any(|d| d.hold == Some(true)) {
                class.pin = Some(PinReason::HoldCursor);
            }
            class
        }
        S::CreateTable(t) if t.temporary => pinned(Reason::Ddl, PinReason::TempObject),
        S::CreateView(v) if v.temporary => pinned(Reason::Ddl, PinReason::TempObject),
        S::CreateSequence {
            temporary: true, ..
        } => pinned(Reason::Ddl, PinReason::TempObject),
        s if is_ddl(s) => StmtClass::write(Reason::Ddl),
        s if is_utility(s) => StmtClass::write(Reason::Utility),
        _ => StmtClass::write(Reason::UnknownStatement),
    }
}

fn savepoint(effect: TxEffect) -> StmtClass {
    let mut class = tx(effect);
    class.session = true;
    class
}

fn tx(effect: TxEffect) -> StmtClass {
    let mut class = StmtClass::write(Reason::TransactionControl);
    class.tx = effect;
    class
}

fn session(effect: TxEffect) -> StmtClass {
    let mut class = StmtClass::write(Reason::SessionState);
    class.tx = effect;
    class
}

fn pinned(reason: Reason, pin: PinReason) -> StmtClass {
    let mut class = StmtClass::write(reason);
    class.pin = Some(pin);
    class
}

fn is_proxy_setting(set: &Set) -> bool {
    match set {
        Set::SingleAssignment { variable, .. } => is_proxy_name(&walker::relation(variable)),
        _ => false,
    }
}

/// The proxy's own settings a client may change.
fn is_proxy_name(name: &str) -> bool {
    matches!(name, "pgsidecar.route" | "pgsidecar.min_lsn")
}

fn is_ddl(stmt: &Statement) -> bool {
    use Statement as S;
    matches!(
        stmt,
        S::CreateView(_)
            | S::CreateTable(_)
            | S::CreateVirtualTable { .. }
            | S::CreateIndex(_)
            | S::CreateRole(_)
            | S::CreateSecret { .. }
            | S::CreateServer(_)
            | S::CreateForeignTable(_)
            | S::CreateForeignDataWrapper(_)
            | S::CreateUserMapping(_)
            | S::CreatePolicy(_)
            | S::CreateRule(_)
            | S::CreateConnector(_)
            | S::CreateOperator(_)
            | S::CreateOperatorFamily(_)
            | S::CreateOperatorClass(_)
            | S::CreateTextSearch(_)
            | S::CreateAggregate(_)
            | S::AlterTable(_)
            | S::AlterSchema(_)
            | S::AlterIndex { .. }
            | S::AlterView(_)
            | S::AlterFunction(_)
            | S::AlterType(_)
            | S::AlterCollation(_)
            | S::AlterOperator(_)
            | S::AlterOperatorFamily(_)
            | S::AlterOperatorClass(_)
            | S::AlterTextSearch(_)
            | S::AlterRole { .. }
            | S::AlterPolicy(_)
            | S::AlterTrigger(_)
            | S::AlterConnector { .. }
            | S::Drop { .. }
            | S::DropFunction(_)
            | S::DropDomain(_)
            | S::DropProcedure { .. }
            | S::DropSecret { .. }
            | S::DropPolicy(_)
            | S::DropRule(_)
            | S::DropConnector { .. }
            | S::CreateExtension(_)
            | S::CreateCollation(_)
            | S::DropExtension(_)
            | S::DropOperator(_)
            | S::DropOperatorFamily(_)
            | S::DropOperatorClass(_)
            | S::Comment { .. }
            | S::CreateSchema { .. }
            | S::CreateDatabase { .. }
            | S::CreateFunction(_)
            | S::CreateTrigger(_)
            | S::DropTrigger(_)
            | S::CreateProcedure { .. }
            | S::CreateSequence { .. }
            | S::CreateDomain(_)
            | S::CreateType { .. }
            | S::Grant(_)
            | S::GrantRole(_)
            | S::Revoke(_)
            | S::RevokeRole(_)
            | S::AlterDefaultPrivileges(_)
            | S::RenameTable(_)
            | S::CreateUser(_)
            | S::AlterUser(_)
    )
}

fn is_utility(stmt: &Statement) -> bool {
    use Statement as S;
    matches!(
        stmt,
        S::Analyze(_)
            | S::Vacuum(_)
            | S::Lock(_)
            | S::NOTIFY { .. }
            | S::Call(_)
            | S::Execute { .. }
            | S::Fetch { .. }
            | S::Close { .. }
            | S::RefreshMaterializedView(_)
    )
}
