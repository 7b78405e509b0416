//! `restart_gap` (research/failure-modes.md Q2, Q3): a restart under traffic, timed by the
//! kernel from the exit of the old main process to the first accept by the new one, with how
//! deep the accept queue grew meanwhile and what it dropped. The socket holds connections across
//! a restart only as far as its backlog: info when nothing was lost, a warning when the gap is
//! longer than `warn_ms` or connections were dropped. A restart nobody waited through is not a
//! finding: there is nothing to time it by.
use std::collections::HashMap;

use serde_json::json;

use super::{
    Rule,
    context::{
        Context, RESTART_WINDOW_NS, is_instance, is_main, time_of, unit_of, waited_for_start,
    },
    evidence, figures, millis,
};
use crate::events::{Data, Event, Finding};

/// How many drop events are kept as evidence.
const KEEP_DROPS: usize = 4;

/// How long after the first accept the queue and drop events still count: they are written
/// at most every 100 ms, so the last ones of the gap may follow the accept.
const SETTLE_NS: i128 = 300_000_000;

/// One restart, from the exit of the old main process.
struct Gap {
    exit: Event,
    exec: Option<Event>,
    /// The first accept by the new process: the end of the gap.
    accepted: Option<Event>,
    /// The first queue event with a connection waiting, and the one with the highest peak.
    first_queued: Option<Event>,
    deepest: Option<Event>,
    peak_depth: u32,
    backlog: Option<u32>,
    drops: u64,
    drop_events: Vec<Event>,
}

#[derive(Default)]
pub struct RestartGap {
    /// Service -> the restart under way.
    gaps: HashMap<String, Gap>,
}

impl Rule for RestartGap {
    fn observe(&mut self, ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        match &e.data {
            Data::Exit(_) => {
                if let Some(service) = ctx.main_exit(e) {
                    // A restart whose end is still settling is decided before the next one.
                    if let Some(g) = self.gaps.remove(&service) {
                        decide(ctx, &service, g, out);
                    }
                    self.gaps.insert(
                        service,
                        Gap {
                            exit: e.clone(),
                            exec: None,
                            accepted: None,
                            first_queued: None,
                            deepest: None,
                            peak_depth: 0,
                            backlog: None,
                            drops: 0,
                            drop_events: Vec::new(),
                        },
                    );
                }
            }
            Data::Exec(_) if is_main(e) => {
                let Some(service) = unit_of(e).filter(|u| !is_instance(u)) else {
                    return;
                };
                match ctx.restarted_by(service, e) {
                    Some(_) => {
                        // The first exec: a wrapper's exec of the server is the same start.
                        if let Some(g) = self.gaps.get_mut(service) {
                            g.exec.get_or_insert_with(|| e.clone());
                        }
                    }
                    // Started by a connection long after: a cold start, not a restart.
                    None => {
                        self.gaps.remove(service);
                    }
                }
            }
            Data::Queue(q) => {
                let Some(g) = ctx.owner_of(e).and_then(|(_, s)| self.gaps.get_mut(&s)) else {
                    return;
                };
                let peak = q.peak.max(q.depth);
                g.backlog = Some(q.max);
                if peak > 0 && g.first_queued.is_none() {
                    g.first_queued = Some(e.clone());
                }
                if peak > g.peak_depth {
                    g.peak_depth = peak;
                    g.deepest = Some(e.clone());
                }
            }
            Data::Drop(d) => {
                let Some(g) = ctx.owner_of(e).and_then(|(_, s)| self.gaps.get_mut(&s)) else {
                    return;
                };
                g.drops += d.count;
                if g.drop_events.len() < KEEP_DROPS {
                    g.drop_events.push(e.clone());
                }
            }
            Data::Accept(a) if a.outcome.errno.is_none() => {
                let Some(g) = unit_of(e)
                    .filter(|s| ctx.serves_own_socket(e, s))
                    .and_then(|s| self.gaps.get_mut(s))
                else {
                    return;
                };
                let started = g.exec.as_ref().is_some_and(|x| time_of(x) <= time_of(e));
                if started && g.accepted.is_none() {
                    g.accepted = Some(e.clone());
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.decide_due(ctx, out, false);
    }

    fn flush(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.decide_due(ctx, out, true);
    }
}

impl RestartGap {
    /// Decides the gaps whose first accept has settled (every one when `all`), and forgets
    /// exits that no new main process followed within the window: stops, not restarts.
    fn decide_due(&mut self, ctx: &Context, out: &mut Vec<Finding>, all: bool) {
        let due: Vec<String> = self
            .gaps
            .iter()
            .filter(|(_, g)| {
                g.accepted
                    .as_ref()
                    .is_some_and(|a| all || ctx.now - time_of(a) >= SETTLE_NS)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for service in due {
            if let Some(g) = self.gaps.remove(&service) {
                decide(ctx, &service, g, out);
            }
        }
        self.gaps
            .retain(|_, g| g.exec.is_some() || ctx.now - time_of(&g.exit) <= RESTART_WINDOW_NS);
    }
}

fn decide(ctx: &Context, service: &str, g: Gap, out: &mut Vec<Finding>) {
    let (Some(accept), Some(exec)) = (g.accepted.as_ref(), g.exec.as_ref()) else {
        return;
    };
    // Nobody waited through it: the first connection served came when the new process was
    // ready (however late after the restart), or none was seen queued at all. The first accept
    // takes the oldest connection: when it was queued says whether anyone waited.
    let accepted = time_of(accept);
    let queued = match &accept.data {
        Data::Accept(a) if a.wait_us.is_some() => {
            a.wait_us.map(|w| accepted - i128::from(w) * 1000)
        }
        _ => g.first_queued.as_ref().map(time_of),
    };
    if !queued.is_some_and(|q| waited_for_start(q, time_of(exec), accepted)) {
        return;
    }
    let gap_ms = millis(time_of(&g.exit), time_of(accept));
    let warn_ms = ctx.thresholds.get("restart_gap", "warn_ms");
    let warn = gap_ms > warn_ms || g.drops > 0;
    let socket_unit = g
        .deepest
        .as_ref()
        .and_then(|d| ctx.owner_of(d))
        .map(|(s, _)| s);
    let backlog = g.backlog.map_or("?".into(), |b| b.to_string());
    let mut message = format!(
        "{service} did not accept for {gap_ms} ms across its restart: the accept queue grew to {} of {backlog}",
        g.peak_depth
    );
    if g.drops > 0 {
        message.push_str(&format!(
            " and {} connection(s) were dropped when it was full.",
            g.drops
        ));
    } else {
        message.push('.');
    }
    let hint = if warn {
        format!(
            "Shorten the restart (accept on the passed fd before slow initialisation) and size the socket's Backlog= (capped by net.core.somaxconn) for the connections that arrive during {gap_ms} ms; reload instead of restarting where the service supports it."
        )
    } else {
        "No action needed: the socket held every connection across the restart; it becomes a warning above restart_gap.warn_ms or when connections are dropped.".to_owned()
    };
    let mut proof: Vec<&Event> = vec![&g.exit];
    proof.extend(g.exec.as_ref());
    proof.extend(g.first_queued.as_ref());
    proof.extend(g.deepest.as_ref());
    proof.extend(g.drop_events.iter());
    proof.push(accept);
    out.push(Finding {
        rule: "restart_gap".into(),
        severity: if warn { "warning" } else { "info" }.into(),
        unit: Some(service.to_owned()),
        socket_unit,
        message,
        hint,
        evidence: evidence(&proof),
        figures: figures(json!({
            "gap_ms": gap_ms,
            "peak_depth": g.peak_depth,
            "backlog": g.backlog,
            "drops": g.drops,
        })),
    });
}

#[cfg(test)]
mod tests {
    use crate::detect::{
        Thresholds,
        testing::{of_rule, replay, replay_with},
    };

    const RESTART: &str = include_str!("../../../tests/fixtures/restart_gap.ndjson");

    #[test]
    fn a_restart_under_load_with_a_full_backlog() {
        // Recorded on the test bed: tests/scenarios/slow-start (Backlog=4, two seconds before
        // the first accept), `systemctl restart` under 12 clients, `sockact-trace --unit lazy`
        // started while the old process ran.
        let findings = replay(RESTART);
        let found = of_rule(&findings, "restart_gap");
        assert_eq!(found.len(), 1, "{findings:?}");
        let f = &found[0];
        assert_eq!(f.severity, "warning");
        assert!(f.figures["gap_ms"].as_u64().unwrap() >= 2000, "{f:?}");
        assert_eq!(f.figures["backlog"], 4);
        assert_eq!(
            f.figures["peak_depth"], 5,
            "the kernel's full: one past the backlog"
        );
        assert!(f.figures["drops"].as_u64().unwrap() > 0);
        assert_eq!(f.evidence[0]["kind"], "exit", "{f:?}");
        assert_eq!(f.evidence[0]["signal"], "SIGTERM");
        assert_eq!(f.evidence.last().unwrap()["kind"], "accept");
    }

    #[test]
    fn drops_make_it_a_warning_whatever_the_threshold() {
        let mut t = Thresholds::default();
        t.apply("restart_gap.warn_ms=60000").unwrap();
        let findings = replay_with(RESTART, t);
        assert_eq!(of_rule(&findings, "restart_gap")[0].severity, "warning");
    }

    #[test]
    fn a_quick_restart_that_lost_nothing_is_at_most_information() {
        // Recorded on the test bed: tests/scenarios/healthy, a client every 25 ms through a
        // restart of about 30 ms: whether one of them waited for the new process depends on
        // the milliseconds; if one did, it is information, never a warning.
        let findings = replay(include_str!("../../../tests/fixtures/healthy_echo.ndjson"));
        for f in of_rule(&findings, "restart_gap") {
            assert_eq!(f.severity, "info", "{f:?}");
            assert_eq!(f.figures["drops"], 0);
            assert!(f.figures["gap_ms"].as_u64().unwrap() < 1000);
        }
        // The same restart, under a threshold below its gap: a warning, figures unchanged.
        let mut t = Thresholds::default();
        t.apply("restart_gap.warn_ms=0").unwrap();
        let strict = replay_with(RESTART, t);
        assert_eq!(of_rule(&strict, "restart_gap")[0].severity, "warning");
    }

    #[test]
    fn a_cold_start_is_not_a_restart() {
        let findings = replay(include_str!("../../../tests/fixtures/cold_start.ndjson"));
        assert!(of_rule(&findings, "restart_gap").is_empty(), "{findings:?}");
        let crashing = replay(include_str!(
            "../../../tests/fixtures/activation_failed.ndjson"
        ));
        assert!(
            of_rule(&crashing, "restart_gap").is_empty(),
            "restarts that never accept have no gap to time: {crashing:?}"
        );
    }
}
