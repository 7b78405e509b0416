//! `fds_ignored` (research/failure-modes.md B2, P4, N3): fds were passed, a connection waits on
//! a passed listener for `after_ms`, and no process of the service accepts on it: it closed the
//! fd, listens elsewhere, or never looked. The wait counts from the later of the connection's
//! arrival and the service's exec, so systemd's own start-up time is not held against it.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_instance, is_manager, time_of, unit_of},
    evidence, figures, millis,
};
use crate::events::{Data, Event, Finding};

/// How many of a service's own binds and listens are kept as evidence.
const KEEP_OWN: usize = 4;

#[derive(Default)]
pub struct FdsIgnored {
    /// Service -> its latest binds and listens: where it serves instead.
    own: HashMap<String, Vec<Event>>,
    /// (listener, pid of the activated process) already reported.
    reported: HashSet<(String, u32)>,
}

impl Rule for FdsIgnored {
    fn observe(&mut self, _ctx: &Context, e: &Event, _out: &mut Vec<Finding>) {
        if !matches!(e.data, Data::Bind(_) | Data::Listen(_)) || is_manager(e) {
            return;
        }
        if let Some(unit) = unit_of(e).filter(|u| !is_instance(u)) {
            let own = self.own.entry(unit.to_owned()).or_default();
            if own.len() == KEEP_OWN {
                own.remove(0);
            }
            own.push(e.clone());
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        // An episode ends with its process.
        self.reported.retain(|(_, pid)| ctx.exec_of(*pid).is_some());
        let after_ms = ctx.thresholds.get("fds_ignored", "after_ms");
        for (addr, w) in ctx.waiting() {
            let Some(socket_unit) = ctx.socket_unit_of_listener(addr, w) else {
                continue;
            };
            let Some(service) = ctx.service_of(&socket_unit) else {
                continue;
            };
            let activated = ctx.activated(&service);
            let Some(first) = activated.first() else {
                // Nothing took the fds: activation_failed's case.
                continue;
            };
            // The service binds systemd's address itself, or cannot take the fds for its
            // LISTEN_PID: double_bind and listen_pid_mismatch tell that story.
            if ctx.explained(&service) {
                continue;
            }
            // A service that accepted on it since it started serves it, if slowly: a busy
            // service is the accept queue's story, not this one.
            if ctx
                .last_accept_on(addr)
                .is_some_and(|t| t >= time_of(first))
            {
                continue;
            }
            let from = w.since.max(time_of(first));
            let waited = millis(from, ctx.now);
            if waited < after_ms {
                continue;
            }
            let pid = first.process.as_ref().map_or(0, |p| p.pid);
            if !self.reported.insert((addr.clone(), pid)) {
                continue;
            }
            let own = self.own.get(&service).map(Vec::as_slice).unwrap_or(&[]);
            let elsewhere: Vec<&str> = own
                .iter()
                .filter_map(|e| match &e.data {
                    Data::Listen(l) if l.outcome.errno.is_none() => Some(l.endpoint.addr.as_str()),
                    _ => None,
                })
                .collect();
            let message = match elsewhere.last() {
                Some(other) => format!(
                    "{service} listens on {other} itself while {} connection(s) wait {waited} ms on {addr}, the socket systemd passed it for {socket_unit}.",
                    w.depth
                ),
                None => format!(
                    "{} connection(s) wait {waited} ms on {addr}, passed to {service} by {socket_unit}, and no process of {service} accepts on it.",
                    w.depth
                ),
            };
            let mut proof: Vec<&Event> = vec![*first];
            if let Some(l) = ctx.listener(addr) {
                proof.push(&l.event);
            }
            proof.push(&w.first);
            proof.extend(own.iter());
            proof.push(&w.last);
            out.push(Finding {
                rule: "fds_ignored".into(),
                severity: "error".into(),
                unit: Some(service.clone()),
                socket_unit: Some(socket_unit),
                message,
                hint: "Serve the passed listener: take fds 3.. with sd_listen_fds()/LISTEN_FDS (by LISTEN_FDNAMES name when there are several), do not close fd 3, and drop the app's own listen address option under socket activation.".into(),
                evidence: evidence(&proof),
                figures: figures(json!({
                    "listener": addr,
                    "queued": w.depth,
                    "waited_ms": waited,
                })),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::testing::{problems, replay, rules};

    #[test]
    fn a_service_that_closes_fd_3_and_serves_elsewhere() {
        // Recorded on the test bed: tests/scenarios/fds-ignored, no selector: with a busy
        // service (slow.service) whose second client waits 4 s, which must not fire.
        let findings = problems(&replay(include_str!(
            "../../../tests/fixtures/fds_ignored.ndjson"
        )));
        assert_eq!(rules(&findings), ["fds_ignored"], "{findings:?}");
        let f = &findings[0];
        assert_eq!(f.severity, "error");
        assert_eq!(f.unit.as_deref(), Some("ignorer.service"));
        assert!(f.figures["waited_ms"].as_u64().unwrap() >= 3000);
        assert!(f.figures["queued"].as_u64().unwrap() >= 1);
        assert!(f.message.contains("listens on"), "{}", f.message);
        assert!(f.evidence.iter().any(|e| e["kind"] == "queue"));
        assert!(f.evidence.iter().any(|e| e["kind"] == "listen"));
        assert_eq!(findings.len(), 1, "one per episode");
    }

    #[test]
    fn a_longer_threshold_waits_longer() {
        let mut t = crate::detect::Thresholds::default();
        t.apply("fds_ignored.after_ms=60000").unwrap();
        let findings = crate::detect::testing::replay_with(
            include_str!("../../../tests/fixtures/fds_ignored.ndjson"),
            t,
        );
        let findings = problems(&findings);
        assert!(
            findings.is_empty(),
            "the recorded wait was shorter: {findings:?}"
        );
    }

    #[test]
    fn a_served_queue_is_not_ignored() {
        // Recorded on the test bed: tests/scenarios/healthy with clients, no selector.
        let findings = replay(include_str!("../../../tests/fixtures/healthy_all.ndjson"));
        assert!(findings.is_empty(), "{findings:?}");
    }
}
