//! `cold_start` (research/failure-modes.md R4): how long the first client of an activation
//! waited, from the moment its connection was queued on a listener of a service that was not
//! serving, to the first accept by the service's new main process. Every activation gets one
//! (info); one slower than `warn_ms` is a warning. A restart is `restart_gap`'s story. The
//! figure comes from kernel timestamps: the queue event of the connection, the accept.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_instance, is_main, time_of, unit_of, waited_for_start},
    evidence, figures, millis,
};
use crate::events::{Data, Event, Finding};

/// A new main process waiting for its first accept.
struct Activation {
    exec: Event,
    /// The queue event of the first connection that waited for it.
    queued: Option<Event>,
}

#[derive(Default)]
pub struct ColdStart {
    /// Listener -> depth in its latest queue event.
    depth: HashMap<String, u32>,
    /// Service -> the queue event that made one of its listeners non-empty while none of its
    /// processes accepted: the connection an activation serves first.
    queued: HashMap<String, Event>,
    /// Service -> its activation, until the first accept.
    pending: HashMap<String, Activation>,
    /// Services whose running process has accepted: a connection queued then is ordinary
    /// traffic, not the first of an activation.
    serving: HashSet<String>,
}

impl Rule for ColdStart {
    fn observe(&mut self, ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        match &e.data {
            Data::Queue(q) => {
                let was = self.depth.insert(q.listener.clone(), q.depth).unwrap_or(0);
                if was > 0 || q.peak.max(q.depth) == 0 {
                    return;
                }
                let Some((_, service)) = ctx.owner_of(e) else {
                    return;
                };
                if self.serving.contains(&service) {
                    return;
                }
                match self.pending.get_mut(&service) {
                    Some(a) => {
                        a.queued.get_or_insert_with(|| e.clone());
                    }
                    None => {
                        self.queued.entry(service).or_insert_with(|| e.clone());
                    }
                }
            }
            Data::Exec(_) if is_main(e) => {
                let Some(service) = unit_of(e).filter(|u| !is_instance(u)) else {
                    return;
                };
                // A restart is timed from the old process's exit: restart_gap.
                if ctx.restarted_by(service, e).is_some() {
                    self.pending.remove(service);
                    self.queued.remove(service);
                    return;
                }
                // A wrapper that execs the server (`sh -c '... exec app'`): the same start.
                let pid = e.process.as_ref().map(|p| p.pid);
                if self
                    .pending
                    .get(service)
                    .is_some_and(|a| a.exec.process.as_ref().map(|p| p.pid) == pid)
                {
                    return;
                }
                // What waits: the connection that made the queue non-empty, or, when the queue
                // never emptied (a busy listener whose process ended), the oldest waiting one.
                let queued = self
                    .queued
                    .remove(service)
                    .or_else(|| ctx.waiting_for(service).map(|(_, w)| w.first.clone()));
                self.serving.remove(service);
                self.pending.insert(
                    service.to_owned(),
                    Activation {
                        exec: e.clone(),
                        queued,
                    },
                );
            }
            Data::Accept(a) if a.outcome.errno.is_none() => {
                let Some(service) = unit_of(e).filter(|s| ctx.serves_own_socket(e, s)) else {
                    return;
                };
                // Served: what waited is not waiting any more.
                self.queued.remove(service);
                self.serving.insert(service.to_owned());
                if let Some(activation) = self.pending.remove(service) {
                    self.decide(ctx, service, activation, e, out);
                }
            }
            Data::Exit(_) => {
                let Some(service) = ctx.main_exit(e) else {
                    return;
                };
                self.serving.remove(&service);
                // The new process ended before it accepted (activation_failed's story): the
                // connection still waits for the next one.
                if let Some(a) = self.pending.remove(&service)
                    && let Some(q) = a.queued
                {
                    self.queued.insert(service, q);
                }
            }
            _ => {}
        }
    }
}

impl ColdStart {
    fn decide(
        &self,
        ctx: &Context,
        service: &str,
        activation: Activation,
        accept: &Event,
        out: &mut Vec<Finding>,
    ) {
        let Some(queued) = activation.queued else {
            // Nobody waited for this start.
            return;
        };
        let Data::Queue(q) = &queued.data else {
            return;
        };
        // A connection that came when the process was ready did not wait for its start.
        if !waited_for_start(time_of(&queued), time_of(&activation.exec), time_of(accept)) {
            return;
        }
        let duration_ms = millis(time_of(&queued), time_of(accept));
        let warn_ms = ctx.thresholds.get("cold_start", "warn_ms");
        let slow = duration_ms > warn_ms;
        let socket_unit = ctx.socket_unit_at(&q.listener, q.socket_unit.as_ref());
        let starting = millis(time_of(&queued), time_of(&activation.exec));
        let message = format!(
            "The first connection to {} waited {duration_ms} ms for {service} to accept it: {starting} ms until it was started, {} ms from its start to its first accept.",
            q.listener,
            duration_ms.saturating_sub(starting)
        );
        let hint = if slow {
            format!(
                "Clients wait for {service}'s whole start-up on every activation: accept on the passed fd before slow initialisation (or initialise in the background), or keep it running and let the socket only hold connections across restarts; raise cold_start.warn_ms if this is expected."
            )
        } else {
            "No action needed: this is how long an activation takes; it becomes a warning above cold_start.warn_ms.".to_owned()
        };
        let proof: Vec<&Event> = match ctx.listener(&q.listener) {
            Some(l) => vec![&l.event, &queued, &activation.exec, accept],
            None => vec![&queued, &activation.exec, accept],
        };
        out.push(Finding {
            rule: "cold_start".into(),
            severity: if slow { "warning" } else { "info" }.into(),
            unit: Some(service.to_owned()),
            socket_unit,
            message,
            hint,
            evidence: evidence(&proof),
            figures: figures(json!({
                "duration_ms": duration_ms,
                "listener": q.listener,
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

    const COLD: &str = include_str!("../../../tests/fixtures/cold_start.ndjson");

    #[test]
    fn a_two_second_start_is_a_cold_start_warning() {
        // Recorded on the test bed: tests/scenarios/slow-start, `sockact-trace --unit lazy`,
        // one client that activates the service.
        let findings = replay(COLD);
        let found = of_rule(&findings, "cold_start");
        assert_eq!(found.len(), 1, "one per activation: {findings:?}");
        let f = &found[0];
        assert_eq!(f.severity, "warning");
        assert_eq!(f.unit.as_deref(), Some("lazy.service"));
        assert_eq!(f.socket_unit.as_deref(), Some("lazy.socket"));
        let ms = f.figures["duration_ms"].as_u64().unwrap();
        assert!((2000..3000).contains(&ms), "{f:?}");
        let kinds: Vec<&str> = f
            .evidence
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        assert_eq!(kinds, ["listener", "queue", "exec", "accept"], "{f:?}");
    }

    #[test]
    fn below_the_threshold_it_is_information() {
        let mut t = Thresholds::default();
        t.apply("cold_start.warn_ms=5000").unwrap();
        let findings = replay_with(COLD, t);
        let found = of_rule(&findings, "cold_start");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, "info");
        // A fast activation (the healthy control) is information with the default threshold.
        let healthy = replay(include_str!("../../../tests/fixtures/healthy_echo.ndjson"));
        let f = of_rule(&healthy, "cold_start");
        assert_eq!(f.len(), 1, "{healthy:?}");
        assert_eq!(f[0].severity, "info");
        assert!(f[0].figures["duration_ms"].as_u64().unwrap() < 1000);
    }

    #[test]
    fn a_restart_and_a_start_nobody_waited_for_are_not_cold_starts() {
        // A restart under load: restart_gap's, timed from the exit.
        let restart = replay(include_str!("../../../tests/fixtures/restart_gap.ndjson"));
        assert!(of_rule(&restart, "cold_start").is_empty(), "{restart:?}");
        // Activated before the trace started: no activation to time.
        let late = replay(include_str!("../../../tests/fixtures/healthy_all.ndjson"));
        assert!(of_rule(&late, "cold_start").is_empty(), "{late:?}");
        // A service that never accepts on its socket has no first accept.
        let never = replay(include_str!(
            "../../../tests/fixtures/double_bind_in_use.ndjson"
        ));
        assert!(of_rule(&never, "cold_start").is_empty(), "{never:?}");
    }
}
