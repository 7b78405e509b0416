//! The closing summary: every line written counted by kind, and one row a socket unit with what
//! its listeners and its service did. Pure: it sees the events as they are written.
use std::collections::{BTreeMap, BTreeSet};

use crate::{
    detect::context::{Activated, Context, activated, time_of},
    events::{Data, Event, Percentiles, Summary, UnitSummary},
};

/// Accept waits kept per socket unit.
const MAX_WAIT_SAMPLES: usize = 100_000;

#[derive(Default)]
struct Row {
    listeners: BTreeSet<String>,
    accepts: u64,
    accept_wait_us: Vec<u64>,
    peak_depth: u32,
    backlog: Option<u32>,
    drops: u64,
    cold_start_ms: Vec<f64>,
    restart_gap_ms: Vec<f64>,
    findings: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Tally {
    ctx: Context,
    first: Option<i128>,
    last: i128,
    events: BTreeMap<String, u64>,
    lost: u64,
    /// Socket unit -> its row.
    rows: BTreeMap<String, Row>,
    /// Service -> activations.
    activations: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts one line written.
    pub fn observe(&mut self, e: &Event) {
        *self.events.entry(e.data.kind().to_owned()).or_default() += 1;
        let t = time_of(e);
        if t > 0 && self.first.is_none() {
            self.first = Some(t);
        }
        self.last = self.last.max(t);
        self.ctx.learn(e);
        match &e.data {
            Data::Lost(l) => self.lost = self.lost.saturating_add(l.count),
            Data::Listener(l) if l.action != "close" => {
                if let Some(s) = &l.socket_unit {
                    let row = self.rows.entry(s.clone()).or_default();
                    row.listeners.insert(l.addr.clone());
                    row.backlog = row.backlog.max(l.backlog);
                }
            }
            Data::Unit(u) if u.unit.ends_with(".socket") => {
                let row = self.rows.entry(u.unit.clone()).or_default();
                row.listeners.extend(u.listen.iter().flatten().cloned());
            }
            Data::Queue(q) => {
                if let Some(s) = &q.socket_unit {
                    let row = self.rows.entry(s.clone()).or_default();
                    row.peak_depth = row.peak_depth.max(q.peak).max(q.depth);
                    row.backlog = row.backlog.or(Some(q.max));
                }
            }
            Data::Drop(d) => {
                if let Some(s) = &d.socket_unit {
                    self.rows.entry(s.clone()).or_default().drops += d.count;
                }
            }
            Data::Accept(a) if a.outcome.errno.is_none() => {
                if let Some(s) = e.process.as_ref().and_then(|p| p.socket_unit.clone()) {
                    let row = self.rows.entry(s).or_default();
                    row.accepts += 1;
                    // Enough for the percentiles; a trace of weeks must not grow with them.
                    if row.accept_wait_us.len() < MAX_WAIT_SAMPLES {
                        row.accept_wait_us.extend(a.wait_us);
                    }
                }
            }
            Data::Exec(_) => {
                // Accept=yes instances count for the service their socket unit is named after.
                let service = match activated(e) {
                    Some(Activated::Instance(socket)) => self.ctx.service_of(&socket),
                    Some(Activated::Service(u)) => Some(u.to_owned()),
                    None => None,
                };
                if let Some(u) = service {
                    *self.activations.entry(u).or_default() += 1;
                }
            }
            Data::Finding(f) => {
                let sockets: Vec<String> = match (&f.socket_unit, &f.unit) {
                    (Some(s), _) => vec![s.clone()],
                    (None, Some(u)) => self.ctx.sockets_of(u).into_iter().collect(),
                    (None, None) => Vec::new(),
                };
                // The activation and restart figures, from the kernel-timed findings.
                let figure = |key: &str| f.figures.get(key).and_then(serde_json::Value::as_f64);
                let timing = match f.rule.as_str() {
                    "cold_start" => figure("duration_ms").map(|ms| (true, ms)),
                    "restart_gap" => figure("gap_ms").map(|ms| (false, ms)),
                    _ => None,
                };
                for s in sockets {
                    let row = self.rows.entry(s).or_default();
                    *row.findings.entry(f.rule.clone()).or_default() += 1;
                    match timing {
                        Some((true, ms)) => row.cold_start_ms.push(ms),
                        Some((false, ms)) => row.restart_gap_ms.push(ms),
                        None => {}
                    }
                }
            }
            _ => {}
        }
        self.ctx.forget(e);
    }

    /// The summary at `now` (Unix nanoseconds; 0 for the time of the last event).
    pub fn summary(&self, now: i128) -> Summary {
        let end = now.max(self.last);
        let duration_ns = self.first.map_or(0, |f| (end - f).max(0));
        let units = self
            .rows
            .iter()
            .map(|(socket, row)| {
                let unit = self.ctx.service_of(socket);
                let activations = unit
                    .as_deref()
                    .and_then(|u| self.activations.get(u))
                    .copied()
                    .unwrap_or(0);
                UnitSummary {
                    unit,
                    socket_unit: socket.clone(),
                    listeners: row.listeners.len() as u64,
                    activations,
                    accepts: row.accepts,
                    cold_start_ms: row.cold_start_ms.clone(),
                    restart_gap_ms: row.restart_gap_ms.clone(),
                    accept_wait_ms: percentiles(&row.accept_wait_us),
                    peak_depth: row.peak_depth,
                    backlog: row.backlog,
                    drops: row.drops,
                    findings: row.findings.clone(),
                }
            })
            .collect();
        Summary {
            duration_s: duration_ns as f64 / 1e9,
            events: self.events.clone(),
            lost: self.lost,
            units,
        }
    }
}

/// p50/p95/p99/max in milliseconds of microsecond samples (nearest rank).
pub fn percentiles(us: &[u64]) -> Option<Percentiles> {
    if us.is_empty() {
        return None;
    }
    let mut v = us.to_vec();
    v.sort_unstable();
    let rank = |p: f64| {
        let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[i.clamp(1, v.len()) - 1] as f64 / 1000.0
    };
    Some(Percentiles {
        p50: rank(50.0),
        p95: rank(95.0),
        p99: rank(99.0),
        max: *v.last().unwrap_or(&0) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(fixture: &str) -> (Tally, i128) {
        let mut t = Tally::default();
        let mut last = 0;
        for line in fixture.lines().filter(|l| !l.trim().is_empty()) {
            let e: Event = serde_json::from_str(line).expect("a v1 event");
            last = last.max(time_of(&e));
            t.observe(&e);
        }
        (t, last)
    }

    #[test]
    fn a_healthy_two_socket_service() {
        // Recorded on the test bed: tests/scenarios/healthy, `sockact-trace --unit echo`.
        let (t, last) = tally(include_str!("../../tests/fixtures/healthy_echo.ndjson"));
        let s = t.summary(last);
        assert!(s.duration_s > 0.0);
        assert_eq!(s.events["agent"], 3);
        let row = |name: &str| {
            s.units
                .iter()
                .find(|u| u.socket_unit == name)
                .unwrap_or_else(|| panic!("no row {name}: {s:?}"))
        };
        let echo = row("echo.socket");
        assert_eq!(echo.unit.as_deref(), Some("echo.service"));
        assert_eq!(echo.listeners, 1);
        assert!(echo.accepts >= 1, "{echo:?}");
        assert!(echo.activations >= 1, "{echo:?}");
        // Information, not problems: how long the activation took (and the restart, when a
        // client waited through it).
        assert_eq!(echo.findings.get("cold_start"), Some(&1), "{echo:?}");
        assert_eq!(echo.cold_start_ms.len(), 1, "{echo:?}");
        assert_eq!(
            echo.restart_gap_ms.len() as u64,
            echo.findings.get("restart_gap").copied().unwrap_or(0),
            "{echo:?}"
        );
        assert!(echo.accept_wait_ms.is_some(), "{echo:?}");
        assert_eq!(row("echo-admin.socket").backlog, Some(16));
    }

    #[test]
    fn findings_are_counted_on_their_socket_unit() {
        // Recorded on the test bed: tests/scenarios/demo, `sockact-trace --unit broken`.
        let (t, last) = tally(include_str!(
            "../../tests/fixtures/double_bind_in_use.ndjson"
        ));
        let s = t.summary(last);
        let broken = s
            .units
            .iter()
            .find(|u| u.socket_unit == "broken.socket")
            .unwrap();
        assert_eq!(broken.findings["double_bind"], 1);
    }

    #[test]
    fn accept_yes_instances_are_activations_of_their_socket_unit() {
        // Recorded on the test bed: tests/scenarios/accept-yes, two connections.
        let (t, last) = tally(include_str!("../../tests/fixtures/accept_yes.ndjson"));
        let s = t.summary(last);
        let hello = s
            .units
            .iter()
            .find(|u| u.socket_unit == "hello.socket")
            .unwrap();
        assert!(hello.activations >= 2, "{hello:?}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let p = percentiles(&(1..=100).map(|i| i * 1000).collect::<Vec<_>>()).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(percentiles(&[]), None);
    }
}
