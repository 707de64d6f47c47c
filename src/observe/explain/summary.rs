//! The one-line summary of an `EXPLAIN (FORMAT JSON)` plan that the log
//! and `/queries` show: the top node, its total cost, and every
//! sequential scan with its relation and estimated rows — the things an
//! operator looks for first in a slow query's plan.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Why a plan could not be summarised.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("EXPLAIN output has no \"Plan\" object (got: {found})")]
    NoPlan { found: String },
}

/// A sequential scan in a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeqScan {
    /// `Relation Name` (an unqualified table name).
    pub relation: String,
    /// The planner's estimate of rows it returns (`Plan Rows`).
    pub rows: f64,
    /// A parallel sequential scan.
    pub parallel: bool,
}

/// Summary of one plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanSummary {
    /// `Node Type` of the top plan node, e.g. `Seq Scan`, `Hash Join`.
    pub top_node: String,
    /// `Total Cost` of the top node (planner units).
    pub total_cost: f64,
    /// Every sequential scan, in plan order.
    pub seq_scans: Vec<SeqScan>,
}

impl PlanSummary {
    /// Summarises `EXPLAIN (FORMAT JSON)` output: `[{"Plan": {...}}]`
    /// (a bare `{"Plan": ...}` object is accepted too).
    pub fn from_json(explain: &Value) -> Result<PlanSummary, PlanError> {
        let root = match explain {
            Value::Array(items) => items.first(),
            other => Some(other),
        };
        let plan = root
            .and_then(|r| r.get("Plan"))
            .filter(|p| p.is_object())
            .ok_or_else(|| PlanError::NoPlan {
                found: abbreviate(&explain.to_string()),
            })?;
        let mut seq_scans = Vec::new();
        collect_seq_scans(plan, &mut seq_scans);
        Ok(PlanSummary {
            top_node: text(plan, "Node Type").unwrap_or("?").to_string(),
            total_cost: number(plan, "Total Cost"),
            seq_scans,
        })
    }
}

/// `Seq Scan, cost 123.45; seq scans: big (≈1500000 rows)`.
impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, cost {:.2}", self.top_node, self.total_cost)?;
        if self.seq_scans.is_empty() {
            return f.write_str("; no seq scans");
        }
        f.write_str("; seq scans:")?;
        for (i, s) in self.seq_scans.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let parallel = if s.parallel { "parallel " } else { "" };
            write!(f, "{sep}{parallel}{} (≈{} rows)", s.relation, s.rows)?;
        }
        Ok(())
    }
}

/// Depth-first over `Plans` (children include InitPlans and SubPlans).
fn collect_seq_scans(node: &Value, out: &mut Vec<SeqScan>) {
    if text(node, "Node Type") == Some("Seq Scan") {
        out.push(SeqScan {
            relation: text(node, "Relation Name").unwrap_or("?").to_string(),
            rows: number(node, "Plan Rows"),
            parallel: node.get("Parallel Aware").and_then(Value::as_bool) == Some(true),
        });
    }
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        for child in children {
            collect_seq_scans(child, out);
        }
    }
}

fn text<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node.get(key).and_then(Value::as_str)
}

fn number(node: &Value, key: &str) -> f64 {
    node.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn abbreviate(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}
