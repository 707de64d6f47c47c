//! `[budgets]`: service levels checked once a second — the p95 of all
//! query durations over the recent window, and the busiest pool's usage —
//! each logging exactly one warning when crossed and one line when it
//! recovers (not one per check), and exported as
//! `pgsidecar_budget_exceeded{budget}` (0/1) with the checked value in
//! `pgsidecar_budget_value{budget}`.

use std::time::Duration;

use crate::config::BudgetsConfig;
use crate::observe::metrics::Metrics;

/// `budget` label of `[budgets] p95_query_time`.
pub const BUDGET_P95_QUERY_TIME: &str = "p95_query_time";
/// `budget` label of `[budgets] pool_usage`.
pub const BUDGET_POOL_USAGE: &str = "pool_usage";

/// A change of a budget's state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Transition {
    Crossed {
        value: f64,
        limit: f64,
    },
    Recovered {
        value: Option<f64>,
        limit: Option<f64>,
    },
}

/// One budget's state.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    exceeded: bool,
}

impl Budget {
    /// Checks `value` against `limit` (`None`: no budget configured, or
    /// nothing measured — neither counts as exceeded).
    pub(crate) fn check(&mut self, value: Option<f64>, limit: Option<f64>) -> Option<Transition> {
        let now_exceeded = matches!((value, limit), (Some(v), Some(l)) if v > l);
        let change = match (self.exceeded, now_exceeded) {
            (false, true) => Some(Transition::Crossed {
                value: value.unwrap_or_default(),
                limit: limit.unwrap_or_default(),
            }),
            (true, false) => Some(Transition::Recovered { value, limit }),
            _ => None,
        };
        self.exceeded = now_exceeded;
        change
    }

    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded
    }
}

/// Both budgets, owned by the background timer.
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    p95: Budget,
    pool: Budget,
}

impl Budgets {
    /// Checks both budgets against the latest measurements, logs
    /// transitions and sets the gauges.
    pub(crate) fn evaluate(
        &mut self,
        config: &BudgetsConfig,
        p95: Option<Duration>,
        pool_usage: Option<f64>,
        metrics: &Metrics,
    ) {
        let p95 = p95.map(|d| d.as_secs_f64());
        let limit = config.p95_query_time.map(|d| d.as_secs_f64());
        let change = self.p95.check(p95, limit);
        report(
            BUDGET_P95_QUERY_TIME,
            change,
            &self.p95,
            p95,
            metrics,
            seconds,
        );
        let change = self.pool.check(pool_usage, config.pool_usage);
        report(
            BUDGET_POOL_USAGE,
            change,
            &self.pool,
            pool_usage,
            metrics,
            ratio,
        );
    }
}

fn report(
    name: &'static str,
    change: Option<Transition>,
    budget: &Budget,
    value: Option<f64>,
    metrics: &Metrics,
    show: fn(f64) -> String,
) {
    let scraped = &metrics.scraped;
    scraped
        .budget_exceeded
        .with_label_values(&[name])
        .set(i64::from(budget.exceeded()));
    scraped
        .budget_value
        .with_label_values(&[name])
        .set(value.unwrap_or(0.0));
    match change {
        Some(Transition::Crossed { value, limit }) => tracing::warn!(
            target: "budget",
            budget = name,
            value,
            limit,
            "budget exceeded: {name} is {} (budget {})",
            show(value),
            show(limit)
        ),
        Some(Transition::Recovered { value, limit }) => tracing::warn!(
            target: "budget",
            budget = name,
            value,
            limit,
            "budget recovered: {name} is {} (budget {})",
            value.map_or_else(|| "not measured".into(), show),
            limit.map_or_else(|| "removed".into(), show)
        ),
        None => {}
    }
}

fn seconds(s: f64) -> String {
    format!("{:.1}ms", s * 1000.0)
}

fn ratio(r: f64) -> String {
    format!("{:.0}%", r * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transition_per_crossing_and_recovery() {
        let mut b = Budget::default();
        let limit = Some(0.1);
        assert_eq!(b.check(Some(0.05), limit), None);
        assert!(matches!(
            b.check(Some(0.2), limit),
            Some(Transition::Crossed { .. })
        ));
        assert_eq!(
            b.check(Some(0.3), limit),
            None,
            "still exceeded: no new line"
        );
        assert!(b.exceeded());
        assert!(matches!(
            b.check(Some(0.1), limit),
            Some(Transition::Recovered { .. })
        ));
        assert_eq!(b.check(Some(0.01), limit), None);
        assert!(!b.exceeded());
    }

    #[test]
    fn nothing_measured_or_no_budget_is_not_exceeded() {
        let mut b = Budget::default();
        assert_eq!(b.check(None, Some(0.1)), None);
        assert_eq!(b.check(Some(9.0), None), None);
        b.check(Some(9.0), Some(0.1));
        assert!(b.exceeded());
        // The window emptied (no queries): recovered.
        assert!(matches!(
            b.check(None, Some(0.1)),
            Some(Transition::Recovered { value: None, .. })
        ));
    }
}
