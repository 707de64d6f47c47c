//! Registering metric families in the observer's own registry, remembering
//! each family's name, help and type so that `/metrics` can describe a
//! family before it has any sample (Prometheus' text format allows that;
//! the `prometheus` crate leaves such families out).

use std::collections::HashSet;

use prometheus::core::Collector;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Every metric name starts with this.
const PREFIX: &str = "pgsidecar";

/// Latency buckets (seconds), 100 µs to 10 s, roughly 1-2.5-5 per decade.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A family as `/metrics` describes it.
#[derive(Clone, Debug)]
pub(crate) struct FamilyInfo {
    pub(crate) name: String,
    pub(crate) help: &'static str,
    pub(crate) kind: &'static str,
}

/// A registry plus the list of what was registered in it.
pub(crate) struct Families {
    pub(crate) registry: Registry,
    pub(crate) infos: Vec<FamilyInfo>,
}

impl Families {
    pub(crate) fn new() -> Families {
        Families {
            registry: Registry::new_custom(Some(PREFIX.to_string()), None)
                .expect("a static, valid prefix"),
            infos: Vec::new(),
        }
    }

    fn add<C: Collector + Clone + 'static>(
        &mut self,
        c: C,
        name: &str,
        help: &'static str,
        kind: &'static str,
    ) -> C {
        // Names and labels are static and distinct (checked by the unit
        // tests), so registration cannot fail at run time.
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique and valid");
        self.infos.push(FamilyInfo {
            name: format!("{PREFIX}_{name}"),
            help,
            kind,
        });
        c
    }

    pub(crate) fn counter(&mut self, name: &str, help: &'static str) -> IntCounter {
        let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid counter");
        self.add(c, name, help, "counter")
    }

    pub(crate) fn counter_vec(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[&str],
    ) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
        self.add(c, name, help, "counter")
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &'static str) -> IntGauge {
        let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid gauge");
        self.add(g, name, help, "gauge")
    }

    pub(crate) fn gauge_vec(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[&str],
    ) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
        self.add(g, name, help, "gauge")
    }

    pub(crate) fn float_gauge_vec(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[&str],
    ) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
        self.add(g, name, help, "gauge")
    }

    pub(crate) fn histogram(&mut self, name: &str, help: &'static str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        let h = Histogram::with_opts(opts).expect("valid histogram");
        self.add(h, name, help, "histogram")
    }

    pub(crate) fn histogram_vec(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[&str],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        let h = HistogramVec::new(opts, labels).expect("valid histogram");
        self.add(h, name, help, "histogram")
    }
}

/// Appends `# HELP`/`# TYPE` for every family in `infos` that `text` (the
/// encoder's output) does not mention, so every metric is always listed.
pub(crate) fn describe_missing(text: &mut String, infos: &[FamilyInfo]) {
    let present: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<&FamilyInfo> = infos
        .iter()
        .filter(|f| !present.contains(f.name.as_str()))
        .collect();
    for f in missing {
        text.push_str(&format!(
            "# HELP {} {}\n# TYPE {} {}\n",
            f.name, f.help, f.name, f.kind
        ));
    }
}
