//! `crash_loop` (research/failure-modes.md T2, T3): systemd restarts a service's main process
//! `restarts` times within `window_s` because of its Restart= setting: the process dies at
//! start, or exits cleanly when idle and Restart=always starts it again at once with no client
//! to serve (the pattern that restarted one service 380 times in two weeks). systemd's own count
//! of automatic restarts (NRestarts) tells a Restart= loop from restarts an operator or a deploy
//! asked for; the kernel's exits tell each death and its exit code. Without systemd's unit
//! events, a new main process within a second of the previous one's exit counts instead.
//!
//! Deaths whose cause another rule names (a double_bind, a listen_pid_mismatch, an
//! activation_failed) are that rule's story. One finding an episode; the episode ends when the
//! service stays up for `window_s`.
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
/// How many main exits of a service wait for systemd's count of its restarts.
const UNMATCHED_EXITS: usize = 64;
/// How long after reaching the threshold a loop is decided.
const SETTLE_NS: i128 = 1_000_000_000;
/// The rules whose findings name why a service dies.
const CAUSES: &[&str] = &["double_bind", "listen_pid_mismatch", "activation_failed"];

/// One automatic restart, and the exit it followed.
struct Death {
    at: i128,
    exit: Option<Event>,
    clean: bool,
    explained: bool,
}

#[derive(Default)]
pub struct CrashLoop {
    /// Service -> its restarts within the window, oldest first.
    deaths: HashMap<String, VecDeque<Death>>,
    /// Service -> its main exits no restart was counted for yet, oldest first, and whether a
    /// cause was known for each then.
    exits: HashMap<String, VecDeque<(Event, bool)>>,
    /// Service -> its latest main exit, and whether a cause was known for it then.
    latest_exit: HashMap<String, (Event, bool)>,
    /// Service -> systemd's count of its automatic restarts, as last seen.
    n_restarts: HashMap<String, u32>,
    /// Service -> its latest main exec.
    starts: HashMap<String, Event>,
    /// Services reported in their current episode.
    reported: HashSet<String>,
    /// Service -> when it reached the threshold, until decided.
    pending: HashMap<String, i128>,
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
                // What explained the process is forgotten once it ended: decide it now.
                let since = time_of(e) - window_ns(ctx);
                let explained = ctx.explained(&service)
                    || CAUSES.iter().any(|r| ctx.reported_by(&service, since, r));
                let exits = self.exits.entry(service.clone()).or_default();
                if exits.len() == UNMATCHED_EXITS {
                    exits.pop_front();
                }
                exits.push_back((e.clone(), explained));
                self.latest_exit.insert(service, (e.clone(), explained));
            }
            Data::Unit(u) if u.unit.ends_with(".service") && !is_instance(&u.unit) => {
                let Some(n) = u.n_restarts else { return };
                let before = self.n_restarts.insert(u.unit.clone(), n);
                // systemd restarted it by itself: once per count it went up. It sends a unit's
                // properties once per turn of its loop, so one change may count several.
                let restarts = before.map_or(0, |b| n.saturating_sub(b));
                self.died(ctx, &u.unit, restarts as usize, time_of(e));
            }
            Data::Exec(_) if is_main(e) => {
                let Some(service) = unit_of(e).filter(|u| !is_instance(u)) else {
                    return;
                };
                // No word from systemd on this service: a restart is a new main process
                // within a second of the previous one's exit.
                if ctx.unit(service).is_none() && ctx.restarted_by(service, e).is_some() {
                    self.died(ctx, service, 1, time_of(e));
                }
                self.starts.insert(service.to_owned(), e.clone());
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
            while deaths.front().is_some_and(|d| ctx.now - d.at > window) {
                deaths.pop_front();
            }
        }
        self.deaths.retain(|_, d| !d.is_empty());
        // Exits older than the window explain no restart: forgotten, so that services that
        // came and went (transient units, instances) leave nothing behind.
        let now = ctx.now;
        for exits in self.exits.values_mut() {
            exits.retain(|(e, _)| now - time_of(e) <= window);
        }
        self.exits.retain(|_, x| !x.is_empty());
        self.latest_exit
            .retain(|_, (e, _)| now - time_of(e) <= window);
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
    /// `count` automatic restarts of `service` counted at `at`: each after one of its latest
    /// main exits within the window that no restart was counted for, oldest first (the latest
    /// exit within the window once those run out, when systemd's word came before the
    /// kernel's). Older exits had no restart: an exit of an hour ago explains nothing now.
    fn died(&mut self, ctx: &Context, service: &str, count: usize, at: i128) {
        if count == 0 {
            return;
        }
        let window = window_ns(ctx);
        let recent = |(e, _): &(Event, bool)| at - time_of(e) <= window;
        let mut unmatched = self.exits.remove(service).unwrap_or_default();
        unmatched.retain(recent);
        let first = unmatched.len().saturating_sub(count);
        let mut matched = unmatched.drain(first..);
        let latest = self.latest_exit.get(service).filter(|x| recent(x));
        let deaths = self.deaths.entry(service.to_owned()).or_default();
        for _ in 0..count {
            let (exit, explained) = match matched.next().as_ref().or(latest) {
                Some((e, explained)) => (Some(e.clone()), *explained),
                None => (None, false),
            };
            deaths.push_back(Death {
                at,
                clean: exit.as_ref().is_some_and(clean),
                exit,
                explained,
            });
        }
        while deaths.front().is_some_and(|d| at - d.at > window) {
            deaths.pop_front();
        }
        let unexplained = deaths.iter().filter(|d| !d.explained).count() as u64;
        let restarts = ctx.thresholds.get("crash_loop", "restarts");
        if unexplained >= restarts && !self.reported.contains(service) {
            self.pending.entry(service.to_owned()).or_insert(at);
        }
    }

    /// Decides the loops that reached the threshold at least [`SETTLE_NS`] ago (every one when
    /// `all`).
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
        let Some(all) = self.deaths.get(service) else {
            return;
        };
        let deaths: Vec<&Death> = all.iter().filter(|d| !d.explained).collect();
        let restarts = ctx.thresholds.get("crash_loop", "restarts");
        if (deaths.len() as u64) < restarts {
            return;
        }
        self.reported.insert(service.to_owned());
        let n = deaths.len();
        let clean_exits = deaths.iter().filter(|d| d.clean).count();
        let exits: Vec<&Event> = deaths.iter().filter_map(|d| d.exit.as_ref()).collect();
        // The span of the deaths, by the kernel's exit times where known.
        let span = match (exits.first(), exits.last()) {
            (Some(a), Some(b)) => time_of(b) - time_of(a),
            _ => deaths[n - 1].at - deaths[0].at,
        };
        let seconds = span as f64 / 1e9;
        let window_s = ctx.thresholds.get("crash_loop", "window_s");
        // The first exits and the latest (evidence keeps each event once).
        let mut proof: Vec<&Event> = exits.iter().take(KEEP_EXITS).copied().collect();
        proof.extend(exits.last());
        proof.extend(self.starts.get(service));
        proof.extend(ctx.unit(service));
        let (message, hint) = if clean_exits * 2 >= n {
            (
                format!(
                    "{service} was restarted {n} times in {seconds:.1} s by its Restart= setting, {clean_exits} of them after a clean exit with no client waiting: Restart= is fighting its idle exit."
                ),
                "A service that exits when idle must not be restarted by systemd: use Restart=on-failure (or Restart=no) and let its socket start it when a client connects.".to_owned(),
            )
        } else {
            (
                format!(
                    "{service} died and was restarted by its Restart= setting {n} times in {seconds:.1} s."
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
        assert!(
            dying
                .evidence
                .iter()
                .filter(|e| e["kind"] == "exit" && e["exit_code"] == 1)
                .count()
                >= 5,
            "{dying:?}"
        );
        let idler = of("idler.service");
        assert_eq!(
            idler.figures["clean_exits"], idler.figures["restarts"],
            "every exit clean and restarted by Restart=: {idler:?}"
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
    fn restarts_systemd_counted_in_one_signal_each_keep_their_own_exit() {
        // The same recording as systemd sends it when its loop is busy: the service's property
        // changes coalesced, NRestarts going up by three at a time.
        let coalesced: String = LOOPS
            .lines()
            .filter(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                v["kind"] != "unit"
                    || v["unit"] != "dying.service"
                    || v["change"] == "resolved"
                    || v["n_restarts"].as_u64().is_some_and(|n| n % 3 == 0)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(coalesced.len() < LOOPS.len());
        let findings = of_rule(&replay(&coalesced), "crash_loop");
        let dying = findings
            .iter()
            .find(|f| f.unit.as_deref() == Some("dying.service"))
            .unwrap_or_else(|| panic!("no crash_loop for dying.service: {findings:?}"));
        assert!(
            dying.figures["restarts"].as_u64().unwrap() >= 5,
            "{dying:?}"
        );
        let exits = dying
            .evidence
            .iter()
            .filter(|e| e["kind"] == "exit" && e["exit_code"] == 1)
            .count();
        assert!(exits >= 5, "one exit per restart: {dying:?}");
    }

    #[test]
    fn more_restarts_than_the_threshold_are_needed() {
        let mut t = Thresholds::default();
        t.apply("crash_loop.restarts=1000").unwrap();
        assert!(of_rule(&replay_with(LOOPS, t), "crash_loop").is_empty());
    }

    #[test]
    fn restarts_systemd_did_not_make_by_itself_are_no_crash_loop() {
        // Services that die again and again as the waiting connection starts them again: no
        // Restart=, and the cause is another rule's (double_bind, activation_failed,
        // listen_pid_mismatch). A restart under load, an idle restart and clients through a
        // restart: asked for, not automatic.
        for fixture in [
            include_str!("../../../tests/fixtures/double_bind_in_use.ndjson"),
            include_str!("../../../tests/fixtures/activation_failed.ndjson"),
            include_str!("../../../tests/fixtures/listen_pid_mismatch.ndjson"),
            include_str!("../../../tests/fixtures/restart_gap.ndjson"),
            include_str!("../../../tests/fixtures/idle_restart.ndjson"),
            include_str!("../../../tests/fixtures/healthy_echo.ndjson"),
        ] {
            let findings = replay(fixture);
            assert!(of_rule(&findings, "crash_loop").is_empty(), "{findings:?}");
        }
    }
}
