//! The whole-tree walk over one parsed statement (sqlparser's `Visitor`):
//! collects everything that turns a read into a write wherever it hides —
//! writing CTEs at any depth, locking clauses, SELECT INTO, function calls —
//! plus session pins and the relations read and written.

use super::functions::FunctionPolicy;
use super::types::{PinReason, Unpin};
use sqlparser::ast::{
    Expr, FromTable, Ident, ObjectName, ObjectNamePart, ObjectType, Query, Select, Statement,
    TableFactor, TableObject, TableWithJoins, Visit, Visitor,
};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

/// Facts gathered from one statement tree.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// INSERT/UPDATE/DELETE/MERGE nested below the top statement.
    pub nested_write: bool,
    pub locking: bool,
    pub select_into: bool,
    /// A call to a function not on the allow-list.
    pub write_function: bool,
    /// A call to a function that is not a known built-in (user code).
    pub opaque_call: bool,
    pub set_config: bool,
    pub pin: Option<PinReason>,
    pub unpin: Option<Unpin>,
    /// Relations in FROM/JOIN positions (canonical names).
    pub read: BTreeSet<String>,
    /// Targets of INSERT/UPDATE/DELETE/MERGE/TRUNCATE/SELECT INTO.
    pub written: BTreeSet<String>,
    /// Every relation name the tree mentions (used for DDL targets).
    pub mentioned: BTreeSet<String>,
    /// Names that look like relations but are not: WITH names and
    /// functions called in FROM.
    pub not_relations: BTreeSet<String>,
}

/// Walks `stmt` (the whole tree) and returns its facts.
pub(crate) fn walk(stmt: &Statement, functions: &FunctionPolicy) -> Facts {
    let mut walker = Walker {
        functions,
        depth: 0,
        facts: Facts::default(),
    };
    // Our visitor never breaks, so the result carries nothing.
    let _ = stmt.visit(&mut walker);
    let mut facts = walker.facts;
    let skip = std::mem::take(&mut facts.not_relations);
    for set in [&mut facts.read, &mut facts.written, &mut facts.mentioned] {
        set.retain(|name| !skip.contains(name));
    }
    facts.not_relations = skip;
    facts
}

struct Walker<'a> {
    functions: &'a FunctionPolicy,
    depth: usize,
    facts: Facts,
}

/// An identifier as the server folds it: unquoted lower-cased.
pub(crate) fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// Name parts folded; `None` for names built from function calls.
pub(crate) fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => fold(ident),
            ObjectNamePart::Function(f) => fold(&f.name),
        })
        .collect()
}

/// Canonical relation name: folded parts joined with `.` (`public.t`, `t`,
/// `"My T"` → `My T`). The module docs ("Table names") say how qualified names
/// are matched.
pub(crate) fn relation(name: &ObjectName) -> String {
    name_parts(name).join(".")
}

fn table_with_joins_targets(tables: &[TableWithJoins], out: &mut BTreeSet<String>) {
    for t in tables {
        if let TableFactor::Table { name, .. } = &t.relation {
            out.insert(relation(name));
        }
    }
}

impl Walker<'_> {
    fn write_targets(&mut self, stmt: &Statement) {
        let out = &mut self.facts.written;
        match stmt {
            Statement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    out.insert(relation(name));
                }
            }
            Statement::Update(update) => {
                table_with_joins_targets(std::slice::from_ref(&update.table), out)
            }
            Statement::Delete(delete) => {
                for name in &delete.tables {
                    out.insert(relation(name));
                }
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                table_with_joins_targets(from, out);
            }
            Statement::Merge(merge) => {
                if let TableFactor::Table { name, .. } = &merge.table {
                    out.insert(relation(name));
                }
            }
            Statement::Truncate(truncate) => {
                for target in &truncate.table_names {
                    out.insert(relation(&target.name));
                }
            }
            // Both change what a later read of the relation returns.
            Statement::RefreshMaterializedView(refresh) => {
                out.insert(relation(&refresh.name));
            }
            Statement::Drop {
                object_type:
                    ObjectType::Table
                    | ObjectType::View
                    | ObjectType::MaterializedView
                    | ObjectType::ForeignTable,
                names,
                ..
            } => {
                for name in names {
                    out.insert(relation(name));
                }
            }
            _ => {}
        }
    }

    fn call(&mut self, name: &ObjectName) {
        let effect = self.functions.effect(&name_parts(name));
        let facts = &mut self.facts;
        facts.write_function |= !effect.read_only;
        facts.opaque_call |= effect.opaque;
        facts.set_config |= effect.set_config;
        facts.pin = facts.pin.or(effect.pin);
        if effect.unpin.is_some() {
            facts.unpin = effect.unpin;
        }
    }
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > 1
            && matches!(
                stmt,
                Statement::Insert(_)
                    | Statement::Update(_)
                    | Statement::Delete(_)
                    | Statement::Merge(_)
            )
        {
            self.facts.nested_write = true;
        }
        self.write_targets(stmt);
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _stmt: &Statement) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.facts.not_relations.insert(fold(&cte.alias.name));
            }
        }
        if !query.locks.is_empty() {
            self.facts.locking = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.facts.select_into = true;
            if into.temporary {
                self.facts.pin = self.facts.pin.or(Some(PinReason::TempObject));
            }
            for target in &into.targets {
                match target {
                    Expr::Identifier(ident) => {
                        self.facts.written.insert(fold(ident));
                    }
                    Expr::CompoundIdentifier(parts) => {
                        let parts: Vec<String> = parts.iter().map(fold).collect();
                        self.facts.written.insert(parts.join("."));
                    }
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        self.facts.mentioned.insert(relation(name));
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM f(args)` is a function call, not a relation.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.facts.not_relations.insert(relation(name));
                self.call(name);
            }
            TableFactor::Table { name, .. } => {
                self.facts.read.insert(relation(name));
            }
            TableFactor::Function { name, .. } => self.call(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.call(&f.name);
        }
        ControlFlow::Continue(())
    }
}
