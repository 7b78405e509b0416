//! `activation_failed` (research/failure-modes.md L6, T4, N3): connections are queued on a
//! listener and its service never starts, or starts and exits without accepting. One finding a
//! failing streak: systemd starts the service again and again while the connection waits, and
//! the streak ends when a process of the service accepts.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_main, time_of, unit_of},
    evidence, figures,
};
use crate::events::{Data, Event, Finding};

/// How long after an unserved exit a queued connection still counts: the queue is sampled.
const QUEUE_LAG_MS: i128 = 1000;
/// systemd's word that a service failed comes over D-Bus, the exit that made it fail (and a
/// bind that explains it) through the ring buffer, which is read a few milliseconds later: the
/// failure waits this long in stream time before it is judged.
const FAILED_SETTLE_NS: i128 = 500_000_000;

/// A process that was passed fds and exited without any process of its service accepting.
struct Unserved {
    exec: Event,
    exit: Event,
}

#[derive(Default)]
pub struct ActivationFailed {
    /// Service -> its last unserved exit, waiting for proof that connections were queued.
    unserved: HashMap<String, Unserved>,
    /// Services reported in their current failing streak.
    reported: HashSet<String>,
    /// Services whose failing streak another rule explains (double_bind, listen_pid_mismatch).
    explained: HashSet<String>,
    /// Service -> systemd's word that it failed, until [`FAILED_SETTLE_NS`] has passed.
    failed: HashMap<String, Event>,
}

/// Whether an exit is how a stop or restart ends a process, not a failure.
fn stopped(exit: &Event) -> bool {
    match &exit.data {
        Data::Exit(x) => match &x.signal {
            Some(sig) => matches!(sig.as_str(), "SIGTERM" | "SIGINT" | "SIGHUP" | "SIGKILL"),
            None => x.exit_code == Some(0),
        },
        _ => false,
    }
}

impl ActivationFailed {
    fn decide(
        &mut self,
        ctx: &Context,
        service: &str,
        failed: Option<&Event>,
        out: &mut Vec<Finding>,
    ) {
        if self.reported.contains(service) {
            return;
        }
        let Some((addr, w)) = ctx.waiting_for(service) else {
            return;
        };
        let unserved = self.unserved.get(service);
        if failed.is_none() && unserved.is_none() {
            return;
        }
        // The connection must have waited while it failed, not arrived later.
        if let Some(u) = unserved
            && failed.is_none()
            && w.since > time_of(&u.exit) + QUEUE_LAG_MS * 1_000_000
        {
            return;
        }
        // The cause is known and reported by its own rule.
        if ctx.explained(service) || self.explained.contains(service) {
            return;
        }
        // Served since that process started: not a failed activation.
        let started = unserved.map_or(i128::MIN, |u| time_of(&u.exec));
        if ctx.last_accept_on(addr).is_some_and(|t| t >= started) {
            return;
        }
        self.reported.insert(service.to_owned());
        let socket_unit = ctx.socket_unit_of_listener(addr, w);
        let mut figs = json!({ "listener": addr, "queued": w.depth });
        let mut proof: Vec<&Event> = Vec::new();
        if let Some(l) = ctx.listener(addr) {
            proof.push(&l.event);
        }
        proof.push(&w.first);
        let what = match unserved {
            Some(u) => {
                proof.push(&u.exec);
                proof.push(&u.exit);
                match &u.exit.data {
                    Data::Exit(x) if x.signal.is_some() => {
                        let sig = x.signal.clone().unwrap_or_default();
                        figs["signal"] = json!(sig);
                        format!("was killed by {sig}")
                    }
                    Data::Exit(x) => {
                        let code = x.exit_code.unwrap_or(0);
                        figs["exit_code"] = json!(code);
                        format!("exited with code {code}")
                    }
                    _ => "exited".into(),
                }
            }
            None => "never started".into(),
        };
        if let Some(f) = failed {
            proof.push(f);
        }
        proof.push(&w.last);
        out.push(Finding {
            rule: "activation_failed".into(),
            severity: "error".into(),
            unit: Some(service.to_owned()),
            socket_unit,
            message: format!(
                "{} connection(s) wait on {addr} and {service} {what} without accepting one.",
                w.depth
            ),
            hint: format!(
                "Read why it stopped (journalctl -u {service}); fix the start-up error, and make sure the service accepts on the passed fd before anything that can fail slowly."
            ),
            evidence: evidence(&proof),
            figures: figures(figs),
        });
    }
}

impl Rule for ActivationFailed {
    fn observe(&mut self, ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        match &e.data {
            Data::Accept(a) if a.outcome.errno.is_none() && ctx.on_systemds_listener(e) => {
                if let Some(unit) = unit_of(e) {
                    self.reported.remove(unit);
                    self.unserved.remove(unit);
                    self.explained.remove(unit);
                    self.failed.remove(unit);
                }
            }
            Data::Exit(_) => {
                let (Some(p), Some(service)) = (&e.process, unit_of(e)) else {
                    return;
                };
                // The process systemd started with the fds (LISTEN_PID its own).
                let Some(exec) = ctx.exec_of(p.pid).filter(|x| is_main(x)) else {
                    return;
                };
                if ctx.explained(service) {
                    self.explained.insert(service.to_owned());
                    return;
                }
                // A stop or restart ends a process with SIGTERM, or a clean exit: a failure
                // only when a connection waited through its whole life.
                if stopped(e)
                    && ctx
                        .waiting_for(service)
                        .is_none_or(|(_, w)| w.since > time_of(exec))
                {
                    return;
                }
                let service = service.to_owned();
                self.unserved.insert(
                    service.clone(),
                    Unserved {
                        exec: exec.clone(),
                        exit: e.clone(),
                    },
                );
                self.decide(ctx, &service, None, out);
            }
            Data::Queue(q) if q.depth > 0 => {
                let services: Vec<String> = self.unserved.keys().cloned().collect();
                for s in services {
                    self.decide(ctx, &s, None, out);
                }
            }
            Data::Unit(u) if u.unit.ends_with(".service") && u.active_state == "failed" => {
                self.failed
                    .entry(u.unit.clone())
                    .or_insert_with(|| e.clone());
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.settle(ctx, out, false);
        // An unserved exit with no queued connection in sight is forgotten.
        self.unserved
            .retain(|_, u| ctx.now - time_of(&u.exit) <= QUEUE_LAG_MS * 1_000_000);
    }

    fn flush(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.settle(ctx, out, true);
    }
}

impl ActivationFailed {
    /// Judges the failures that have settled (every one when `all`: the stream ended).
    fn settle(&mut self, ctx: &Context, out: &mut Vec<Finding>, all: bool) {
        let due: Vec<String> = self
            .failed
            .iter()
            .filter(|(_, e)| all || ctx.now - time_of(e) >= FAILED_SETTLE_NS)
            .map(|(s, _)| s.clone())
            .collect();
        for service in due {
            if let Some(e) = self.failed.remove(&service) {
                self.decide(ctx, &service, Some(&e), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::detect::testing::{of_rule, replay, rules};

    /// A recorded stream as its two channels can deliver it: a service's `failed` change from
    /// D-Bus read before the kernel's records of the process whose exit made it fail (the ring
    /// buffer is drained a few milliseconds later), every record of that process after its
    /// exec. Seen so in a run of the suite.
    fn dbus_first(fixture: &str, service: &str) -> String {
        let mut lines: Vec<&str> = fixture.lines().filter(|l| !l.trim().is_empty()).collect();
        let parse = |l: &str| serde_json::from_str::<Value>(l).unwrap();
        let mut i = 0;
        while i < lines.len() {
            let v = parse(lines[i]);
            if v["kind"] == "unit" && v["unit"] == service && v["active_state"] == "failed" {
                let of = |j: usize| parse(lines[j]);
                if let Some(x) = (0..i)
                    .rev()
                    .find(|&j| of(j)["kind"] == "exit" && of(j)["unit"] == service)
                {
                    let pid = of(x)["pid"].clone();
                    let first = (0..=x)
                        .rev()
                        .take_while(|&j| !(of(j)["kind"] == "exec" && of(j)["pid"] == pid))
                        .filter(|&j| of(j)["pid"] == pid)
                        .last()
                        .unwrap_or(x);
                    let line = lines.remove(i);
                    lines.insert(first, line);
                }
            }
            i += 1;
        }
        lines.join("\n")
    }

    #[test]
    fn systemds_word_of_a_failure_ahead_of_the_exit_still_gets_the_exit() {
        let fixture = include_str!("../../../tests/fixtures/activation_failed.ndjson");
        let reordered = dbus_first(fixture, "crasher.service");
        assert_ne!(reordered, fixture.trim_end(), "the stream was reordered");
        let findings = replay(&reordered);
        let findings = of_rule(&findings, "activation_failed");
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].figures["exit_code"], 1, "{:?}", findings[0]);
    }

    #[test]
    fn systemds_word_of_a_failure_ahead_of_the_bind_that_explains_it_is_no_activation_failure() {
        let fixture = include_str!("../../../tests/fixtures/double_bind_in_use.ndjson");
        let reordered = dbus_first(fixture, "broken.service");
        assert_ne!(reordered, fixture.trim_end(), "the stream was reordered");
        let findings = replay(&reordered);
        assert!(rules(&findings).contains(&"double_bind"), "{findings:?}");
        assert!(
            of_rule(&findings, "activation_failed").is_empty(),
            "the double bind explains it: {findings:?}"
        );
    }

    #[test]
    fn a_service_that_exits_1_while_a_client_waits() {
        // Recorded on the test bed: tests/scenarios/activation-failed, `sockact-trace --unit crasher`.
        let findings = replay(include_str!(
            "../../../tests/fixtures/activation_failed.ndjson"
        ));
        // And the socket systemd gave up on after the service's start limit.
        assert_eq!(
            rules(&findings),
            ["activation_failed", "listener_lost"],
            "{findings:?}"
        );
        let findings = of_rule(&findings, "activation_failed");
        let f = &findings[0];
        assert_eq!(f.unit.as_deref(), Some("crasher.service"));
        assert_eq!(f.figures["exit_code"], 1);
        assert!(f.evidence.iter().any(|e| e["kind"] == "exit"));
        assert!(f.evidence.iter().any(|e| e["kind"] == "queue"));
        assert_eq!(findings.len(), 1, "one per failing streak");
    }
}
