//! `crash_loop` (research/failure-modes.md T2, T3): a service's main process starts and dies
//! `restarts` times within `window_s`. A death is a failing exit (a code other than 0, a signal
//! other than a stop's), or a clean exit that systemd restarted with no connection queued in
//! between: Restart=always fighting a service that exits when idle (the pattern that restarted
//! one service 380 times in two weeks). Deaths whose cause another rule already reported (a
//! double_bind, an activation_failed, ...) are that rule's story. One finding an episode; the
//! episode ends when the service stays up for `window_s`.
use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_instance, is_main, time_of, unit_of},
    evidence, figures,
};
use crate::events::{Data, Event, Finding};

/// How many exits are kept as evidence.
const KEEP_EXITS: usize = 8;
/// How long after reaching the threshold a loop is decided.
const SETTLE_NS: i128 = 1_000_000_000;

struct Death {
    exit: Event,
    clean: bool,
}

#[derive(Default)]
pub struct CrashLoop {
    /// Service -> its deaths within the window, oldest first.
    deaths: HashMap<String, VecDeque<Death>>,
    /// Service -> a clean exit, until its restart shows whether traffic started it.
    clean: HashMap<String, Event>,
    /// Services with a connection queued since their last main exit.
    traffic: HashSet<String>,
    /// Service -> its latest main exec.
    starts: HashMap<String, Event>,
    /// Services reported in their current episode.
    reported: HashSet<String>,
    /// Service -> when it reached the threshold, until decided.
    pending: HashMap<String, i128>,
}

/// Whether an exit is a failure: a code other than 0, or a signal that no stop sends.
fn failing(exit: &Event) -> bool {
    match &exit.data {
        Data::Exit(x) => match &x.signal {
            Some(sig) => !matches!(sig.as_str(), "SIGTERM" | "SIGINT" | "SIGHUP" | "SIGPIPE"),
            None => x.exit_code.is_some_and(|c| c != 0),
        },
        _ => false,
    }
}

fn clean(exit: &Event) -> bool {
    matches!(&exit.data, Data::Exit(x) if x.signal.is_none() && x.exit_code == Some(0))
}

impl Rule for CrashLoop {
    fn observe(&mut self, ctx: &Context, e: &Event, _out: &mut Vec<Finding>) {
        match &e.data {
            Data::Exit(_) => {
                let Some(service) = ctx.main_exit(e) else {
                    return;
                };
                self.traffic.remove(&service);
                self.clean.remove(&service);
                if failing(e) {
                    self.died(ctx, &service, e, false);
                } else if clean(e) {
                    self.clean.insert(service, e.clone());
                }
            }
            Data::Queue(q) if q.peak.max(q.depth) > 0 => {
                if let Some((_, service)) = ctx.owner_of(e) {
                    self.traffic.insert(service);
                }
            }
            Data::Exec(_) if is_main(e) => {
                let Some(service) = unit_of(e).filter(|u| !is_instance(u)) else {
                    return;
                };
                let service = service.to_owned();
                // A clean exit restarted at once, with no connection to serve: not traffic's
                // doing, Restart='s.
                if let Some(exit) = self.clean.remove(&service)
                    && ctx.restarted_by(&service, e).is_some()
                    && !self.traffic.contains(&service)
                {
                    self.died(ctx, &service, &exit, true);
                }
                self.starts.insert(service, e.clone());
            }
            _ => {}
        }
    }

    fn flush(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.decide_due(ctx, out, true);
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.decide_due(ctx, out, false);
        let window = window_ns(ctx);
        for deaths in self.deaths.values_mut() {
            while deaths
                .front()
                .is_some_and(|d| ctx.now - time_of(&d.exit) > window)
            {
                deaths.pop_front();
            }
        }
        self.deaths.retain(|_, d| !d.is_empty());
        // Up for a whole window: the episode is over.
        let deaths = &self.deaths;
        self.reported.retain(|s| deaths.contains_key(s));
    }
}

/// The one name of a set, if it has exactly one.
fn only(names: std::collections::BTreeSet<String>) -> Option<String> {
    let mut it = names.into_iter();
    match (it.next(), it.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

fn window_ns(ctx: &Context) -> i128 {
    i128::from(ctx.thresholds.get("crash_loop", "window_s")) * 1_000_000_000
}

impl CrashLoop {
    fn died(&mut self, ctx: &Context, service: &str, exit: &Event, clean: bool) {
        let window = window_ns(ctx);
        let deaths = self.deaths.entry(service.to_owned()).or_default();
        deaths.push_back(Death {
            exit: exit.clone(),
            clean,
        });
        let now = time_of(exit);
        while deaths
            .front()
            .is_some_and(|d| now - time_of(&d.exit) > window)
        {
            deaths.pop_front();
        }
        let restarts = ctx.thresholds.get("crash_loop", "restarts");
        if (deaths.len() as u64) >= restarts && !self.reported.contains(service) {
            self.pending.entry(service.to_owned()).or_insert(now);
        }
    }

    /// Decides the loops that reached the threshold at least [`SETTLE_NS`] ago (every one when
    /// `all`): long enough for the rule that names their cause to have spoken.
    fn decide_due(&mut self, ctx: &Context, out: &mut Vec<Finding>, all: bool) {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, at)| all || ctx.now - **at >= SETTLE_NS)
            .map(|(s, _)| s.clone())
            .collect();
        for service in due {
            self.pending.remove(&service);
            self.decide(ctx, &service, out);
        }
    }

    fn decide(&mut self, ctx: &Context, service: &str, out: &mut Vec<Finding>) {
        let window = window_ns(ctx);
        let Some(deaths) = self.deaths.get(service).filter(|d| !d.is_empty()) else {
            return;
        };
        let first = time_of(&deaths[0].exit);
        let now = time_of(&deaths[deaths.len() - 1].exit);
        // The deaths have a cause reported within the window (it binds systemd's address, it
        // exits while connections wait, ...): that finding tells it.
        if ctx
            .reported_cause(service, now - window, "crash_loop")
            .is_some()
        {
            return;
        }
        self.reported.insert(service.to_owned());
        let n = deaths.len();
        let clean_exits = deaths.iter().filter(|d| d.clean).count();
        let seconds = (now - first) as f64 / 1e9;
        let window_s = ctx.thresholds.get("crash_loop", "window_s");
        let mut proof: Vec<&Event> = deaths.iter().take(KEEP_EXITS).map(|d| &d.exit).collect();
        if n > KEEP_EXITS {
            proof.push(&deaths[n - 1].exit);
        }
        proof.extend(self.starts.get(service));
        let (message, hint) = if clean_exits * 2 >= n {
            (
                format!(
                    "{service} exited {n} times in {seconds:.1} s, {clean_exits} of them cleanly, and was started again each time with no connection waiting: Restart= is fighting its idle exit."
                ),
                "A service that exits when idle must not be restarted by systemd: use Restart=on-failure (or Restart=no) and let its socket start it when a client connects.".to_owned(),
            )
        } else {
            (
                format!(
                    "{service} died {n} times in {seconds:.1} s and systemd started it again each time."
                ),
                format!(
                    "Read why it dies (journalctl -u {service}) and fix that; after StartLimitBurst= starts within StartLimitIntervalSec= systemd gives up and fails its socket (service-start-limit-hit), and the port refuses until `systemctl reset-failed` and a restart of the socket."
                ),
            )
        };
        out.push(Finding {
            rule: "crash_loop".into(),
            severity: "error".into(),
            unit: Some(service.to_owned()),
            socket_unit: only(ctx.sockets_of(service)),
            message,
            hint,
            evidence: evidence(&proof),
            figures: figures(json!({
                "restarts": n,
                "window_s": window_s,
                "clean_exits": clean_exits,
            })),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::{
        Thresholds,
        testing::{of_rule, replay, replay_with},
    };

    const LOOPS: &str = include_str!("../../../tests/fixtures/crash_loop.ndjson");

    #[test]
    fn a_service_dying_at_start_and_one_fighting_its_idle_exit() {
        // Recorded on the test bed: tests/scenarios/crash-loop, no selector: two Restart=always
        // services started with no client, one exits 1 at start, one exits 0 after an idle
        // second.
        let findings = of_rule(&replay(LOOPS), "crash_loop");
        assert_eq!(
            findings.len(),
            2,
            "one per service and episode: {findings:?}"
        );
        let of = |unit: &str| {
            findings
                .iter()
                .find(|f| f.unit.as_deref() == Some(unit))
                .unwrap_or_else(|| panic!("no crash_loop for {unit}: {findings:?}"))
        };
        let dying = of("dying.service");
        assert_eq!(dying.severity, "error");
        assert_eq!(dying.figures["clean_exits"], 0);
        assert!(dying.figures["restarts"].as_u64().unwrap() >= 5);
        assert_eq!(dying.socket_unit.as_deref(), Some("dying.socket"));
        let idler = of("idler.service");
        assert_eq!(
            idler.figures["clean_exits"], idler.figures["restarts"],
            "every exit clean and restarted with no client: {idler:?}"
        );
        assert!(idler.hint.contains("Restart=on-failure"), "{idler:?}");
        assert!(
            idler
                .evidence
                .iter()
                .any(|e| e["kind"] == "exit" && e["exit_code"] == 0)
        );
    }

    #[test]
    fn more_restarts_than_the_threshold_are_needed() {
        let mut t = Thresholds::default();
        t.apply("crash_loop.restarts=1000").unwrap();
        assert!(of_rule(&replay_with(LOOPS, t), "crash_loop").is_empty());
    }

    #[test]
    fn deaths_another_rule_explains_and_restarts_with_traffic_are_not_crash_loops() {
        // A service that binds systemd's address and dies, started again and again by the
        // waiting connection: the double bind is the cause. The same for a service that exits
        // while connections wait, and for wrapped servers that cannot take their fds.
        for fixture in [
            include_str!("../../../tests/fixtures/double_bind_in_use.ndjson"),
            include_str!("../../../tests/fixtures/activation_failed.ndjson"),
            include_str!("../../../tests/fixtures/listen_pid_mismatch.ndjson"),
            // A restart under load, an idle restart, clients through a restart.
            include_str!("../../../tests/fixtures/restart_gap.ndjson"),
            include_str!("../../../tests/fixtures/idle_restart.ndjson"),
            include_str!("../../../tests/fixtures/healthy_echo.ndjson"),
        ] {
            let findings = replay(fixture);
            assert!(of_rule(&findings, "crash_loop").is_empty(), "{findings:?}");
        }
    }
}
