//! The findings engine: one module per rule behind one small trait. Rules take plain events,
//! do no I/O, and report one finding per episode; time comes from the events themselves (and,
//! live, from a clock tick), so a recorded stream replays to the same findings.
pub mod accept_before_ready;
pub mod accept_yes_storm;
pub mod activation_failed;
pub mod backlog_overflow;
pub mod cold_start;
pub mod context;
pub mod crash_loop;
pub mod double_bind;
pub mod fdnames_duplicate;
pub mod fds_ignored;
pub mod listen_pid_mismatch;
pub mod listener_lost;
pub mod restart_gap;
pub mod socket_inactive;
pub mod thresholds;

use context::Context;
pub use thresholds::Thresholds;

use crate::events::{Event, Finding};

/// How often, in stream time, the rules decide what is due: often enough to decide within 5 s
/// of the evidence, seldom enough that a busy stream does not pay for it on every event.
const TICK_NS: i128 = 100_000_000;

/// Evidence is complete event objects, at most this many.
pub const MAX_EVIDENCE: usize = 16;

/// Every runtime rule, by name, in the engine's order.
pub const RULES: &[&str] = &[
    "double_bind",
    "listen_pid_mismatch",
    "fds_ignored",
    "fdnames_duplicate",
    "activation_failed",
    "socket_inactive",
    "accept_before_ready",
    "cold_start",
    "restart_gap",
    "backlog_overflow",
    "crash_loop",
    "accept_yes_storm",
    "listener_lost",
];

pub trait Rule {
    /// Looks at one event; pushes what it concludes.
    fn observe(&mut self, ctx: &Context, event: &Event, out: &mut Vec<Finding>);
    /// Decides what is due at `ctx.now`: called after every event and on a live timer.
    fn tick(&mut self, _ctx: &Context, _out: &mut Vec<Finding>) {}
    /// Decides what is pending when the stream ends: by default what is due by then.
    fn flush(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.tick(ctx, out);
    }
}

/// Every rule, fed the same stream.
pub struct Engine {
    ctx: Context,
    /// Stream time of the last tick: rules tick at most every [`TICK_NS`] of it.
    ticked: i128,
    rules: Vec<Box<dyn Rule + Send>>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Thresholds::default())
    }
}

impl Engine {
    pub fn new(thresholds: Thresholds) -> Self {
        Engine {
            ctx: Context::new(thresholds),
            ticked: 0,
            rules: vec![
                Box::new(double_bind::DoubleBind::default()),
                Box::new(listen_pid_mismatch::ListenPidMismatch::default()),
                Box::new(fds_ignored::FdsIgnored::default()),
                Box::new(fdnames_duplicate::FdnamesDuplicate::default()),
                Box::new(activation_failed::ActivationFailed::default()),
                Box::new(socket_inactive::SocketInactive::default()),
                Box::new(accept_before_ready::AcceptBeforeReady::default()),
                Box::new(cold_start::ColdStart::default()),
                Box::new(restart_gap::RestartGap::default()),
                Box::new(backlog_overflow::BacklogOverflow::default()),
                // After the rules that name a cause: a crash loop they explain is theirs.
                Box::new(crash_loop::CrashLoop::default()),
                Box::new(accept_yes_storm::AcceptYesStorm::default()),
                Box::new(listener_lost::ListenerLost::default()),
            ],
        }
    }

    /// New thresholds, from the next event on (the agent's reload).
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.ctx.thresholds = thresholds;
    }

    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        let mut out = Vec::new();
        self.ctx.learn(event);
        for rule in &mut self.rules {
            let before = out.len();
            rule.observe(&self.ctx, event, &mut out);
            self.ctx.note(&out[before..]);
        }
        self.ctx.forget(event);
        if self.ctx.now - self.ticked >= TICK_NS {
            self.ticked = self.ctx.now;
            self.tick_rules(&mut out);
        }
        out
    }

    /// Every rule decides what is due, each seeing what the ones before found.
    fn tick_rules(&mut self, out: &mut Vec<Finding>) {
        for rule in &mut self.rules {
            let before = out.len();
            rule.tick(&self.ctx, out);
            self.ctx.note(&out[before..]);
        }
    }

    /// Decides what is due at `now_ns` (Unix nanoseconds) with no new event.
    pub fn tick(&mut self, now_ns: i128) -> Vec<Finding> {
        let mut out = Vec::new();
        self.ctx.now = self.ctx.now.max(now_ns);
        self.ticked = self.ctx.now;
        self.tick_rules(&mut out);
        out
    }

    /// Decides what is pending when the stream ends, at the time of its last event: a wait
    /// that has not yet lasted its threshold is not a finding, an episode still going on is.
    pub fn flush(&mut self) -> Vec<Finding> {
        let mut out = Vec::new();
        self.ticked = self.ctx.now;
        for rule in &mut self.rules {
            let before = out.len();
            rule.flush(&self.ctx, &mut out);
            self.ctx.note(&out[before..]);
        }
        out
    }
}

/// Events as evidence: complete objects, at most [`MAX_EVIDENCE`], each once.
pub fn evidence(events: &[&Event]) -> Vec<serde_json::Value> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert((e.ts.clone(), e.seq, e.data.kind())))
        .take(MAX_EVIDENCE)
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect()
}

/// A rule's figures from a JSON object.
pub fn figures(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Milliseconds between two Unix-nanosecond times.
pub fn millis(from: i128, to: i128) -> u64 {
    u64::try_from((to - from).max(0) / 1_000_000).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub mod testing {
    use super::Engine;
    use crate::events::{Event, Finding};

    /// The findings of a recorded stream, flushed at its end.
    pub fn replay(fixture: &str) -> Vec<Finding> {
        replay_with(fixture, super::Thresholds::default())
    }

    /// The same, with other thresholds.
    pub fn replay_with(fixture: &str, thresholds: super::Thresholds) -> Vec<Finding> {
        let mut engine = Engine::new(thresholds);
        let mut findings = Vec::new();
        for line in fixture.lines().filter(|l| !l.trim().is_empty()) {
            let e: Event = serde_json::from_str(line).expect("a v1 event");
            findings.extend(engine.observe(&e));
        }
        findings.extend(engine.flush());
        findings
    }

    /// (rule, unit) of every finding, sorted, each once.
    pub fn pairs(findings: &[Finding]) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = findings
            .iter()
            .map(|f| (f.rule.clone(), f.unit.clone().unwrap_or_default()))
            .collect();
        p.sort();
        p.dedup();
        p
    }

    /// Every stream recorded on the test bed replays to exactly the findings of its scenario:
    /// no rule fires on another rule's scenario or on the healthy control.
    #[test]
    fn each_recorded_scenario_has_exactly_its_findings() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (
                "healthy_echo",
                include_str!("../../../tests/fixtures/healthy_echo.ndjson"),
                // Information: the activation and the restart, timed (in this recording a
                // client waited through the restart; whether one does is a matter of ms).
                &[
                    ("cold_start", "echo.service"),
                    ("restart_gap", "echo.service"),
                ],
            ),
            (
                "idle_restart",
                include_str!("../../../tests/fixtures/idle_restart.ndjson"),
                // Restarted with no client, a client much later: nobody waited for a start.
                &[],
            ),
            (
                "healthy_all",
                include_str!("../../../tests/fixtures/healthy_all.ndjson"),
                &[],
            ),
            (
                "accept_yes",
                include_str!("../../../tests/fixtures/accept_yes.ndjson"),
                &[],
            ),
            (
                "double_bind_in_use",
                include_str!("../../../tests/fixtures/double_bind_in_use.ndjson"),
                // Then systemd gives up after the start limit and closes the port; the deaths
                // are the double bind's, no crash_loop of their own.
                &[
                    ("double_bind", "broken.service"),
                    ("listener_lost", "broken.service"),
                ],
            ),
            (
                "double_bind_reuseport_unix",
                include_str!("../../../tests/fixtures/double_bind_reuseport_unix.ndjson"),
                &[
                    ("double_bind", "shared.service"),
                    ("double_bind", "unixy.service"),
                ],
            ),
            (
                "fdnames_duplicate",
                include_str!("../../../tests/fixtures/fdnames_duplicate.ndjson"),
                &[
                    ("cold_start", "twice.service"),
                    ("fdnames_duplicate", "twice.service"),
                    ("fds_ignored", "twice.service"),
                ],
            ),
            (
                "fds_ignored",
                include_str!("../../../tests/fixtures/fds_ignored.ndjson"),
                &[
                    ("cold_start", "slow.service"),
                    ("fds_ignored", "ignorer.service"),
                ],
            ),
            (
                "listen_pid_mismatch",
                include_str!("../../../tests/fixtures/listen_pid_mismatch.ndjson"),
                &[
                    ("cold_start", "workers.service"),
                    ("listen_pid_mismatch", "launcher.service"),
                    ("listen_pid_mismatch", "shwrap.service"),
                    ("listener_lost", "launcher.service"),
                    ("listener_lost", "shwrap.service"),
                ],
            ),
            (
                "activation_failed",
                include_str!("../../../tests/fixtures/activation_failed.ndjson"),
                &[
                    ("activation_failed", "crasher.service"),
                    ("listener_lost", "crasher.service"),
                ],
            ),
            (
                "socket_inactive",
                include_str!("../../../tests/fixtures/socket_inactive.ndjson"),
                &[("socket_inactive", "lonely.service")],
            ),
            (
                "accept_before_ready",
                include_str!("../../../tests/fixtures/accept_before_ready.ndjson"),
                // The guarded proxy: its first client waited for the guard, nothing failed.
                &[
                    ("accept_before_ready", "proxy.service"),
                    ("cold_start", "guarded.service"),
                    ("cold_start", "proxy.service"),
                ],
            ),
            (
                "crash_loop",
                include_str!("../../../tests/fixtures/crash_loop.ndjson"),
                &[
                    ("crash_loop", "dying.service"),
                    ("crash_loop", "idler.service"),
                ],
            ),
            (
                "accept_yes_storm",
                include_str!("../../../tests/fixtures/accept_yes_storm.ndjson"),
                &[("accept_yes_storm", "storm@.service")],
            ),
            (
                "listener_lost",
                include_str!("../../../tests/fixtures/listener_lost.ndjson"),
                &[
                    ("cold_start", "bound.service"),
                    ("listener_lost", "bound.service"),
                    ("listener_lost", "moved.service"),
                    ("listener_lost", "shut.service"),
                ],
            ),
            (
                "listener_lost_trigger_limit",
                include_str!("../../../tests/fixtures/listener_lost_trigger_limit.ndjson"),
                &[
                    ("accept_yes_storm", "storm@.service"),
                    ("listener_lost", "storm@.service"),
                ],
            ),
            (
                "cold_start",
                include_str!("../../../tests/fixtures/cold_start.ndjson"),
                &[("cold_start", "lazy.service")],
            ),
            (
                "restart_gap",
                include_str!("../../../tests/fixtures/restart_gap.ndjson"),
                // A restart: timed from the exit, never also a cold start.
                &[
                    ("backlog_overflow", "lazy.service"),
                    ("restart_gap", "lazy.service"),
                ],
            ),
        ];
        for (name, fixture, want) in cases {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(r, u)| ((*r).to_owned(), (*u).to_owned()))
                .collect();
            assert_eq!(pairs(&replay(fixture)), want, "{name}");
        }
    }

    /// The warnings and errors: what an operator must act on (info findings describe).
    pub fn problems(findings: &[Finding]) -> Vec<Finding> {
        findings
            .iter()
            .filter(|f| f.severity != "info")
            .cloned()
            .collect()
    }

    /// The findings of one rule.
    pub fn of_rule(findings: &[Finding], rule: &str) -> Vec<Finding> {
        findings
            .iter()
            .filter(|f| f.rule == rule)
            .cloned()
            .collect()
    }

    /// The rules that fired, sorted, each once.
    pub fn rules(findings: &[Finding]) -> Vec<&str> {
        let mut r: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
        r.sort();
        r.dedup();
        r
    }
}
