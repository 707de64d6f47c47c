//! Helpers for the end-to-end observability tests: `/metrics` of a running
//! proxy parsed into series, counter deltas between two scrapes, and a
//! proxy in front of the shared primary *and* its replica.

use std::collections::BTreeMap;
use std::time::Duration;

use pgsidecar::proxy::Proxy;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness;
use crate::observe_support::get;

/// One scrape of `/metrics`: every sample with its labels.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses Prometheus text (as pgsidecar writes it: no escaped quotes
    /// or commas inside label values).
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not a sample: {line}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value: {line}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => {
                        let inner = rest.strip_suffix('}').expect("closing brace");
                        let labels = inner
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .map(|pair| {
                                let (k, v) = pair.split_once('=').expect("label=value");
                                (k.to_string(), v.trim_matches('"').to_string())
                            })
                            .collect();
                        (name.to_string(), labels)
                    }
                    None => (series.to_string(), BTreeMap::new()),
                };
                (name, labels, value)
            })
            .collect();
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// The sample `name` with exactly these labels, if exported.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Like [`get`](Self::get), panicking (with the scrape) if absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", self.text))
    }

    /// Every sample of `name`: (labels, value).
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }

    /// Sum of every sample of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.series(name).iter().map(|(_, v)| v).sum()
    }
}

/// GETs and parses the proxy's `/metrics`.
pub async fn scrape(proxy: &Proxy) -> Scrape {
    let (status, body) = get(proxy.http_addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

/// A scrape taken once no client is mid-request. A driver may hand a
/// result (or an error) to its caller before the proxy has seen the
/// server's ReadyForQuery, and a transaction is counted at that
/// ReadyForQuery: a scrape taken at once may miss the last one.
pub async fn settled(proxy: &Proxy) -> Scrape {
    harness::eventually(
        "every client of the proxy idle",
        Duration::from_secs(10),
        || async {
            let s = scrape(proxy).await;
            let active = s.get("pgsidecar_client_connections", &[("state", "active")]);
            (active.unwrap_or(0.0) == 0.0).then_some(s)
        },
    )
    .await
}

/// How much every counter series moved between two scrapes: only the
/// series that changed, as `name{k="v",..}` → delta.
pub fn deltas(before: &Scrape, after: &Scrape) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, labels, value) in &after.samples {
        let old = before
            .samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map_or(0.0, |s| s.2);
        if *value != old {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            out.insert(format!("{name}{{{}}}", labels.join(",")), value - old);
        }
    }
    out
}

/// The shared cluster's replica, `host:port`.
pub fn replica_addr() -> String {
    harness::cluster().replica(0).addr()
}

/// The shared cluster's primary, `host:port`.
pub fn primary_addr() -> String {
    harness::cluster().primary().addr()
}

/// A proxy in front of the shared primary and its replica, with
/// `extra_toml` merged over that (see `harness::proxy_config`).
pub async fn proxy_with_replica(extra_toml: &str) -> Proxy {
    harness::proxy(&format!(
        "[cluster]\nreplicas = [\"{}\"]\n{extra_toml}",
        replica_addr()
    ))
    .await
}

/// Waits until `/metrics` shows the replica up with a known lag (so reads
/// may go there), and returns that scrape.
pub async fn replica_known(proxy: &Proxy) -> Scrape {
    let replica = replica_addr();
    harness::eventually(
        "the monitor to report the replica up with a known lag",
        Duration::from_secs(15),
        || async {
            let s = scrape(proxy).await;
            let up = s.get(
                "pgsidecar_node_up",
                &[("node", &replica), ("role", "replica")],
            );
            let lag = s.get("pgsidecar_replica_lag_seconds", &[("node", &replica)]);
            (up == Some(1.0) && lag.is_some()).then_some(s)
        },
    )
    .await
}

/// Reads the JSON log (`log_format = "json"`) of a `pgsidecar run` child
/// until it says where it listens; returns the client port. The rest of
/// its output is drained in the background.
pub async fn listening_port(child: &mut tokio::process::Child) -> u16 {
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if v["fields"]["message"] == "pgsidecar listening" {
                let addr = v["fields"]["addr"].as_str().unwrap().to_string();
                return addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("pgsidecar run exited without saying where it listens");
    })
    .await
    .expect("pgsidecar run logged its address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    port
}
