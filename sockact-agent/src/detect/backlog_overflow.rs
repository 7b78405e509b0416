//! `backlog_overflow` (research/failure-modes.md Q1): a watched listener dropped connections
//! because its accept queue was full. The count is the listener's own drop counter (the `drop`
//! events), so an unrelated listener overflowing at the same time adds nothing. One finding an
//! episode: drops that stop for [`QUIET_NS`] end it, and a long overload is cut into episodes
//! of [`LONGEST_NS`] so that it is reported while it lasts. Every drop belongs to exactly one
//! episode: the findings of a listener add up to its total.
use std::collections::HashMap;

use serde_json::json;

use super::{
    Rule,
    context::{Context, time_of},
    evidence, figures,
};
use crate::events::{Data, Event, Finding};

/// Drops that stop for this long end an episode.
const QUIET_NS: i128 = 1_000_000_000;
/// An overload that lasts longer is reported in parts this long.
const LONGEST_NS: i128 = 4_000_000_000;
/// How many drop events are kept as evidence.
const KEEP_DROPS: usize = 8;

struct Episode {
    first: i128,
    last: i128,
    drops: u64,
    drop_events: Vec<Event>,
    /// The queue event with the highest peak, and the latest backlog seen.
    fullest: Option<Event>,
    peak: u32,
    backlog: Option<u32>,
}

#[derive(Default)]
pub struct BacklogOverflow {
    /// Listener -> its episode under way.
    episodes: HashMap<Key, Episode>,
    /// Listener -> its latest queue event (the queue that was full).
    queues: HashMap<Key, Event>,
}

impl Rule for BacklogOverflow {
    fn observe(&mut self, _ctx: &Context, e: &Event, _out: &mut Vec<Finding>) {
        match &e.data {
            Data::Queue(q) => {
                let key = Key::of(&q.listener, q.socket.inode);
                if let Some(ep) = self.episodes.get_mut(&key) {
                    ep.note_queue(e, q.peak.max(q.depth), q.max);
                }
                self.queues.insert(key, e.clone());
            }
            Data::Drop(d) if d.count > 0 => {
                let t = time_of(e);
                let ep = self
                    .episodes
                    .entry(Key::of(&d.listener, d.socket.inode))
                    .or_insert_with(|| Episode {
                        first: t,
                        last: t,
                        drops: 0,
                        drop_events: Vec::new(),
                        fullest: None,
                        peak: 0,
                        backlog: None,
                    });
                if ep.fullest.is_none()
                    && let Some(q) = self.queues.get(&Key::of(&d.listener, d.socket.inode))
                    && let Data::Queue(x) = &q.data
                {
                    ep.note_queue(q, x.peak.max(x.depth), x.max);
                }
                ep.last = ep.last.max(t);
                ep.drops += d.count;
                if ep.drop_events.len() < KEEP_DROPS {
                    ep.drop_events.push(e.clone());
                } else if let Some(last) = ep.drop_events.last_mut() {
                    // The latest, with the listener's total so far.
                    *last = e.clone();
                }
            }
            Data::Listener(l) if l.action == "close" => {
                self.queues.remove(&Key::of(&l.addr, l.inode));
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.report(ctx, out, false);
    }

    fn flush(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.report(ctx, out, true);
    }
}

/// A listener: its inode where known (two network namespaces can hold the same address),
/// and its address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    inode: Option<u64>,
    addr: String,
}

impl Key {
    fn of(addr: &str, inode: Option<u64>) -> Self {
        Key {
            inode,
            addr: addr.to_owned(),
        }
    }
}

impl Episode {
    fn note_queue(&mut self, e: &Event, peak: u32, max: u32) {
        self.backlog = Some(max);
        if peak >= self.peak {
            self.peak = peak;
            self.fullest = Some(e.clone());
        }
    }
}

impl BacklogOverflow {
    /// Reports the episodes that ended (every one when `all`).
    fn report(&mut self, ctx: &Context, out: &mut Vec<Finding>, all: bool) {
        let done: Vec<Key> = self
            .episodes
            .iter()
            .filter(|(_, ep)| {
                all || ctx.now - ep.last >= QUIET_NS || ctx.now - ep.first >= LONGEST_NS
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in done {
            let Some(ep) = self.episodes.remove(&key) else {
                continue;
            };
            let addr = key.addr;
            let named = ep.drop_events.first().and_then(|e| match &e.data {
                Data::Drop(d) => d.socket_unit.clone(),
                _ => None,
            });
            let socket_unit = ctx.socket_unit_at(&addr, named.as_ref());
            let unit = socket_unit.as_deref().and_then(|s| ctx.service_of(s));
            let backlog = ep.backlog.map_or("?".into(), |b| b.to_string());
            let mut proof: Vec<&Event> = Vec::new();
            if let Some(l) = ctx.listener(&addr) {
                proof.push(&l.event);
            }
            proof.extend(ep.fullest.as_ref());
            proof.extend(ep.drop_events.iter());
            let serve = unit.as_deref().unwrap_or("the service");
            out.push(Finding {
                rule: "backlog_overflow".into(),
                severity: "error".into(),
                unit: unit.clone(),
                socket_unit,
                message: format!(
                    "{addr} dropped {} connection(s) because its accept queue was full ({} waiting, backlog {backlog}): clients saw their connects time out and retry.",
                    ep.drops, ep.peak
                ),
                hint: format!(
                    "Raise Backlog= in the socket unit (the kernel caps it at net.core.somaxconn) and make {serve} accept sooner: shorter restarts and start-ups, more accepting workers."
                ),
                evidence: evidence(&proof),
                figures: figures(json!({
                    "listener": addr,
                    "drops": ep.drops,
                    "backlog": ep.backlog,
                })),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        detect::{
            Engine,
            testing::{of_rule, replay},
        },
        events::{Data, Event},
    };

    const RESTART: &str = include_str!("../../../tests/fixtures/restart_gap.ndjson");

    fn events(fixture: &str) -> Vec<Event> {
        fixture
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn the_findings_add_up_to_the_listeners_own_counter() {
        // Recorded on the test bed: a restart under load with Backlog=4 (tests/scenarios/
        // slow-start), whose drops equalled `ss -tlnm`'s d<N> and nstat's ListenOverflows.
        let findings = replay(RESTART);
        let found = of_rule(&findings, "backlog_overflow");
        assert!(!found.is_empty(), "{findings:?}");
        let reported: u64 = found
            .iter()
            .map(|f| f.figures["drops"].as_u64().unwrap())
            .sum();
        let stream = events(RESTART);
        let last_total = stream
            .iter()
            .rev()
            .find_map(|e| match &e.data {
                Data::Drop(d) => Some(d.total),
                _ => None,
            })
            .unwrap();
        assert_eq!(reported, last_total);
        let f = &found[0];
        assert_eq!(f.severity, "error");
        assert_eq!(f.unit.as_deref(), Some("lazy.service"));
        assert_eq!(f.figures["backlog"], 4);
        assert!(f.evidence.iter().any(|e| e["kind"] == "drop"));
        assert!(
            f.evidence
                .iter()
                .any(|e| e["kind"] == "queue" && e["peak"] == 5)
        );
    }

    #[test]
    fn an_overflow_still_going_on_when_the_trace_ends_is_reported() {
        // The same stream cut right after its first drop event.
        let stream = events(RESTART);
        let cut = stream
            .iter()
            .position(|e| matches!(e.data, Data::Drop(_)))
            .unwrap();
        let Data::Drop(first) = &stream[cut].data else {
            unreachable!()
        };
        let mut engine = Engine::default();
        let mut findings = Vec::new();
        for e in &stream[..=cut] {
            findings.extend(engine.observe(e));
        }
        assert!(
            of_rule(&findings, "backlog_overflow").is_empty(),
            "not before it ends"
        );
        findings.extend(engine.flush());
        let found = of_rule(&findings, "backlog_overflow");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].figures["drops"], first.count);
    }

    #[test]
    fn queues_that_never_overflow_never_fire() {
        for fixture in [
            include_str!("../../../tests/fixtures/healthy_echo.ndjson"),
            include_str!("../../../tests/fixtures/cold_start.ndjson"),
            include_str!("../../../tests/fixtures/fds_ignored.ndjson"),
        ] {
            let findings = replay(fixture);
            assert!(
                of_rule(&findings, "backlog_overflow").is_empty(),
                "{findings:?}"
            );
        }
    }
}
