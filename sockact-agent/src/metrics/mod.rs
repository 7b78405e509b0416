//! Prometheus metrics (DESIGN.md, "sockact-agent"), built from the event stream itself so that
//! they never disagree with it, and served in the text exposition format by [`http`].
pub mod http;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Mutex, atomic::Ordering},
};

use crate::{
    detect::context::{Activated, activated},
    events::{Data, Event},
    sinks::SinkStats,
};

/// Histogram buckets in seconds, from a fast cold start to a stuck restart.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or below each bucket's bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (c, le) in self.counts.iter_mut().zip(BUCKETS) {
            if v <= *le {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// A listener's accept queue as last seen.
#[derive(Debug, Default, Clone)]
struct QueueState {
    depth: u32,
    max: u32,
    peak: u32,
}

/// Labels: name, value.
type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
pub struct Metrics {
    events: BTreeMap<String, u64>,
    findings: BTreeMap<(String, String, String), u64>,
    lost: BTreeMap<String, u64>,
    activations: BTreeMap<String, u64>,
    cold_start: BTreeMap<String, Histogram>,
    restart_gap: BTreeMap<String, Histogram>,
    /// (listener, socket unit) -> queue.
    queues: BTreeMap<(String, String), QueueState>,
    drops: BTreeMap<(String, String), u64>,
    /// From the `attached` event: each family's mechanism (None: the kernel gave none), and
    /// the rules that cannot work here.
    features: crate::features::Features,
    unavailable_rules: Vec<String>,
}

/// A figure of a finding in milliseconds, as seconds.
fn seconds(f: &crate::events::Finding, key: &str) -> Option<f64> {
    f.figures.get(key)?.as_f64().map(|ms| ms / 1000.0)
}

impl Metrics {
    pub fn observe(&mut self, e: &Event) {
        *self.events.entry(e.data.kind().to_owned()).or_default() += 1;
        match &e.data {
            Data::Finding(f) => {
                let unit = f
                    .unit
                    .clone()
                    .or_else(|| f.socket_unit.clone())
                    .unwrap_or_default();
                let key = (f.rule.clone(), f.severity.clone(), unit.clone());
                *self.findings.entry(key).or_default() += 1;
                match f.rule.as_str() {
                    "cold_start" => {
                        if let Some(s) = seconds(f, "duration_ms") {
                            self.cold_start.entry(unit).or_default().observe(s);
                        }
                    }
                    "restart_gap" => {
                        if let Some(s) = seconds(f, "gap_ms") {
                            self.restart_gap.entry(unit).or_default().observe(s);
                        }
                    }
                    _ => {}
                }
            }
            Data::Lost(l) => *self.lost.entry(l.cause.clone()).or_default() += l.count,
            Data::Exec(_) => {
                // An Accept=yes instance counts for its socket unit.
                let unit = match activated(e) {
                    Some(Activated::Service(u)) => Some(u.to_owned()),
                    Some(Activated::Instance(socket)) => Some(socket),
                    None => None,
                };
                if let Some(unit) = unit {
                    *self.activations.entry(unit).or_default() += 1;
                }
            }
            Data::Queue(q) => {
                let key = (
                    q.listener.clone(),
                    q.socket_unit.clone().unwrap_or_default(),
                );
                self.queues.insert(
                    key,
                    QueueState {
                        depth: q.depth,
                        max: q.max,
                        peak: q.peak,
                    },
                );
            }
            Data::Drop(d) => {
                let key = (
                    d.listener.clone(),
                    d.socket_unit.clone().unwrap_or_default(),
                );
                *self.drops.entry(key).or_default() += d.count;
            }
            Data::Listener(l) if l.action == "close" => {
                let unit = l.socket_unit.clone().unwrap_or_default();
                self.queues.remove(&(l.addr.clone(), unit));
            }
            Data::Agent(a) if a.action == "attached" => {
                self.features = a.features.clone().unwrap_or_default();
                self.unavailable_rules = a.unavailable_rules.clone().unwrap_or_default();
            }
            _ => {}
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, sinks: &SinkStats) -> String {
        let mut out = String::new();
        let info = [("version", env!("CARGO_PKG_VERSION").to_owned())];
        family(
            &mut out,
            "sockact_agent_info",
            "gauge",
            "The agent's version.",
            [(info.to_vec(), 1.0)],
        );
        family(
            &mut out,
            "sockact_kernel_feature",
            "gauge",
            "1 where this kernel lets a family of events be traced, with the mechanism in use; \
             0 where it does not (the rules needing it are in sockact_rule_unavailable).",
            self.features.iter().map(|(f, m)| {
                let labels = vec![
                    ("family", f.name().to_owned()),
                    ("mechanism", m.clone().unwrap_or_else(|| "none".into())),
                ];
                (labels, if m.is_some() { 1.0 } else { 0.0 })
            }),
        );
        family(
            &mut out,
            "sockact_rule_unavailable",
            "gauge",
            "Rules that cannot work on this kernel (what they need could not attach).",
            self.unavailable_rules
                .iter()
                .map(|r| (vec![("rule", r.clone())], 1.0)),
        );
        let counter = |out: &mut String, name, help, rows: Vec<(Labels, f64)>| {
            family(out, name, "counter", help, rows)
        };
        counter(
            &mut out,
            "sockact_events_total",
            "Events written, by kind.",
            self.events
                .iter()
                .map(|(k, n)| (vec![("kind", k.clone())], *n as f64))
                .collect(),
        );
        counter(
            &mut out,
            "sockact_findings_total",
            "Findings, by rule, severity and unit.",
            self.findings
                .iter()
                .map(|((rule, sev, unit), n)| {
                    (
                        vec![
                            ("rule", rule.clone()),
                            ("severity", sev.clone()),
                            ("unit", unit.clone()),
                        ],
                        *n as f64,
                    )
                })
                .collect(),
        );
        counter(
            &mut out,
            "sockact_lost_events_total",
            "Events lost, by cause (ring_buffer_full, kernel_map_full, undecodable, sink:NAME, rate_limit:UNIT, rate_limit:uid N).",
            self.lost
                .iter()
                .map(|(c, n)| (vec![("cause", c.clone())], *n as f64))
                .collect(),
        );
        counter(
            &mut out,
            "sockact_activations_total",
            "Starts that received sockets from systemd, by service (by socket unit for Accept=yes).",
            self.activations
                .iter()
                .map(|(u, n)| (vec![("unit", u.clone())], *n as f64))
                .collect(),
        );
        let sinks = sinks.lock().expect("not poisoned").clone();
        let per_sink =
            |out: &mut String, name, kind, help, read: &dyn Fn(&crate::sinks::Stats) -> f64| {
                let rows: Vec<(Labels, f64)> = sinks
                    .iter()
                    .map(|(n, s)| (vec![("sink", n.clone())], read(s)))
                    .collect();
                family(out, name, kind, help, rows);
            };
        per_sink(
            &mut out,
            "sockact_sink_delivered_events_total",
            "counter",
            "Events a sink delivered.",
            &|s| s.delivered.load(Ordering::Relaxed) as f64,
        );
        per_sink(
            &mut out,
            "sockact_sink_dropped_events_total",
            "counter",
            "Events a sink had to drop (buffer full, write failed).",
            &|s| s.dropped.load(Ordering::Relaxed) as f64,
        );
        per_sink(
            &mut out,
            "sockact_sink_errors_total",
            "counter",
            "Failed writes and connects of a sink.",
            &|s| s.errors.load(Ordering::Relaxed) as f64,
        );
        per_sink(
            &mut out,
            "sockact_sink_up",
            "gauge",
            "Whether a sink's last write or connect worked.",
            &|s| f64::from(u8::from(s.healthy.load(Ordering::Relaxed))),
        );
        histograms(
            &mut out,
            "sockact_cold_start_seconds",
            "First queued connection to first accept, per activation.",
            &self.cold_start,
        );
        histograms(
            &mut out,
            "sockact_restart_gap_seconds",
            "Exit of the old main process to the first accept by the new one.",
            &self.restart_gap,
        );
        let listener = |(addr, unit): &(String, String)| {
            vec![("listener", addr.clone()), ("socket_unit", unit.clone())]
        };
        let queue = |out: &mut String, name, help, read: &dyn Fn(&QueueState) -> u32| {
            let rows: Vec<(Labels, f64)> = self
                .queues
                .iter()
                .map(|(k, q)| (listener(k), f64::from(read(q))))
                .collect();
            family(out, name, "gauge", help, rows);
        };
        queue(
            &mut out,
            "sockact_accept_queue_depth",
            "Connections waiting in a listener's accept queue.",
            &|q| q.depth,
        );
        queue(
            &mut out,
            "sockact_accept_queue_backlog",
            "A listener's accept queue maximum (its effective backlog).",
            &|q| q.max,
        );
        queue(
            &mut out,
            "sockact_accept_queue_peak",
            "The largest depth reported by the last queue event.",
            &|q| q.peak,
        );
        counter(
            &mut out,
            "sockact_accept_queue_drops_total",
            "Connections a listener dropped at a full accept queue.",
            self.drops
                .iter()
                .map(|(k, n)| (listener(k), *n as f64))
                .collect(),
        );
        out
    }
}

/// `name{a="x",b="y"}`, values escaped.
fn series(name: &str, labels: &[(&str, String)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{} {v}", series(name, &labels));
    }
}

fn histograms(out: &mut String, name: &str, help: &str, by_unit: &BTreeMap<String, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (unit, h) in by_unit {
        let unit_label = || vec![("unit", unit.clone())];
        for (le, c) in BUCKETS.iter().zip(&h.counts) {
            let mut l = unit_label();
            l.push(("le", le.to_string()));
            let _ = writeln!(out, "{} {c}", series(&format!("{name}_bucket"), &l));
        }
        let mut l = unit_label();
        l.push(("le", "+Inf".into()));
        let _ = writeln!(out, "{} {}", series(&format!("{name}_bucket"), &l), h.count);
        let _ = writeln!(
            out,
            "{} {}",
            series(&format!("{name}_sum"), &unit_label()),
            h.sum
        );
        let _ = writeln!(
            out,
            "{} {}",
            series(&format!("{name}_count"), &unit_label()),
            h.count
        );
    }
}

/// Metrics shared between the event stream and the HTTP server.
pub type Shared = std::sync::Arc<Mutex<Metrics>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(fixture: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in fixture.lines() {
            m.observe(&serde_json::from_str(line).expect("a v1 event"));
        }
        m
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_restart_under_load_shows_its_gap_queue_and_drops() {
        let m = replayed(include_str!("../../../tests/fixtures/restart_gap.ndjson"));
        let text = m.render(&SinkStats::default());
        let overflow = text
            .lines()
            .find(|l| l.starts_with("sockact_findings_total{rule=\"backlog_overflow\""))
            .expect("the overflow finding");
        assert!(overflow.ends_with(" 1"), "{overflow}");
        let gaps = text
            .lines()
            .find(|l| l.starts_with("sockact_restart_gap_seconds_count{"))
            .expect("a restart gap");
        assert!(gaps.ends_with(" 1"), "{gaps}");
        let drops: f64 = text
            .lines()
            .filter(|l| l.starts_with("sockact_accept_queue_drops_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        assert!(drops > 0.0, "{text}");
        assert!(
            text.contains("sockact_accept_queue_backlog{listener="),
            "{text}"
        );
        assert_eq!(
            value(&text, "sockact_events_total{kind=\"drop\"}"),
            Some(11.0)
        );
    }

    #[test]
    fn every_sample_belongs_to_a_declared_family_and_labels_are_escaped() {
        let m = replayed(include_str!("../../../tests/fixtures/healthy_all.ndjson"));
        let text = m.render(&SinkStats::default());
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_owned());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = declared.last().expect("a TYPE line first");
                assert!(name.starts_with(family.as_str()), "{name} under {family}");
            }
        }
        assert_eq!(
            series("x", &[("a", "q\"\\\n".into())]),
            "x{a=\"q\\\"\\\\\\n\"}"
        );
    }
}
