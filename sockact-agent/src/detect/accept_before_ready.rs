//! `accept_before_ready` (research/failure-modes.md R1): a process of a socket-activated unit
//! accepted a connection, then its connects to a backend failed (ECONNREFUSED, ENOENT for a
//! unix path, ECONNRESET) within `window_ms` of that accept, and a later connect to the same
//! backend succeeded: the backend was not ready when the front end took the connection, the
//! socket-proxyd cold start. Seen from the proxy's side (the backend itself is usually not
//! watched); non-blocking connects count by their outcome (`async`), never by EINPROGRESS.
//!
//! The accept is the first of an activation (the first after a main process's exec): a
//! backend that goes away and comes back while the front end has long been serving is an
//! outage of the backend, not a readiness race of the start-up.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_instance, is_main, time_of, unit_of},
    evidence, figures,
};
use crate::events::{Connect, Data, Event, Finding};

/// How many failed connects are kept as evidence.
const KEEP_FAILED: usize = 8;
/// A backend that stays down this long is not a readiness race: forgotten.
const FORGET_NS: i128 = 120_000_000_000;

/// The errnos of a backend that is not listening yet.
const NOT_READY: &[&str] = &["ECONNREFUSED", "ENOENT", "ECONNRESET"];

struct Refused {
    accept: Event,
    failed: Vec<Event>,
    count: u64,
    errno: String,
    last: i128,
}

#[derive(Default)]
pub struct AcceptBeforeReady {
    /// Services started since their last accept.
    started: HashSet<String>,
    /// Service -> the first accept of its latest activation.
    accepts: HashMap<String, Event>,
    /// (service, backend) -> the connects refused since an accept.
    refused: HashMap<(String, String), Refused>,
}

/// Whether a unit's processes are socket-activated: it has a socket unit, or it is an
/// Accept=yes instance.
fn activated(ctx: &Context, unit: &str) -> bool {
    is_instance(unit) || !ctx.sockets_of(unit).is_empty()
}

/// A connect's final result: None while it is in progress.
fn outcome(c: &Connect) -> Option<Option<&str>> {
    match c.outcome.errno.as_deref() {
        Some("EINPROGRESS") => None,
        errno => Some(errno),
    }
}

impl Rule for AcceptBeforeReady {
    fn observe(&mut self, ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        match &e.data {
            Data::Exec(_) if is_main(e) => {
                if let Some(unit) = unit_of(e) {
                    self.started.insert(unit.to_owned());
                }
            }
            Data::Accept(a) if a.outcome.errno.is_none() => {
                if let Some(unit) = unit_of(e).filter(|u| activated(ctx, u))
                    && self.started.remove(unit)
                {
                    self.accepts.insert(unit.to_owned(), e.clone());
                }
            }
            Data::Connect(c) => {
                let Some(unit) = unit_of(e) else { return };
                let Some(result) = outcome(c) else { return };
                let key = (unit.to_owned(), c.endpoint.addr.clone());
                match result {
                    None => {
                        if let Some(r) = self.refused.remove(&key) {
                            report(&key, r, e, out);
                        }
                    }
                    Some(errno) if NOT_READY.contains(&errno) => {
                        let Some(accept) = self.accepts.get(unit) else {
                            return;
                        };
                        let window =
                            i128::from(ctx.thresholds.get("accept_before_ready", "window_ms"))
                                * 1_000_000;
                        let t = time_of(e);
                        if t - time_of(accept) > window {
                            return;
                        }
                        let r = self.refused.entry(key).or_insert_with(|| Refused {
                            accept: accept.clone(),
                            failed: Vec::new(),
                            count: 0,
                            errno: errno.to_owned(),
                            last: t,
                        });
                        r.count += 1;
                        r.last = t;
                        if r.failed.len() < KEEP_FAILED {
                            r.failed.push(e.clone());
                        }
                    }
                    Some(_) => {}
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, _out: &mut Vec<Finding>) {
        self.refused.retain(|_, r| ctx.now - r.last <= FORGET_NS);
        // Instances come and go with their connections.
        self.accepts
            .retain(|u, a| !is_instance(u) || ctx.now - time_of(a) <= FORGET_NS);
        self.started
            .retain(|u| !is_instance(u) || !ctx.activated(u).is_empty());
    }
}

fn report(
    (service, backend): &(String, String),
    r: Refused,
    success: &Event,
    out: &mut Vec<Finding>,
) {
    let socket_unit = r
        .accept
        .process
        .as_ref()
        .and_then(|p| p.socket_unit.clone());
    let mut proof: Vec<&Event> = vec![&r.accept];
    proof.extend(r.failed.iter());
    proof.push(success);
    out.push(Finding {
        rule: "accept_before_ready".into(),
        severity: "error".into(),
        unit: Some(service.clone()),
        socket_unit,
        message: format!(
            "{service} accepted a connection while its backend {backend} was not ready: {} connect(s) failed with {} before one succeeded.",
            r.count, r.errno
        ),
        hint: format!(
            "Start the proxy only once {backend} listens: make the backend Type=notify (or socket-activated itself) and order the proxy After=/Requires= it, or add an ExecStartPre= to the proxy that waits until {backend} accepts connections."
        ),
        evidence: evidence(&proof),
        figures: figures(json!({
            "backend": backend,
            "refused": r.count,
            "errno": r.errno,
        })),
    });
}

#[cfg(test)]
mod tests {
    use crate::detect::{
        Thresholds,
        testing::{of_rule, replay, replay_with},
    };

    const PROXY: &str = include_str!("../../../tests/fixtures/accept_before_ready.ndjson");

    #[test]
    fn a_proxy_without_a_cold_start_guard() {
        // Recorded on the test bed: tests/scenarios/proxy, no selector: systemd-socket-proxyd
        // in front of a backend that listens a second after it starts, retried by its client;
        // and the same with an ExecStartPre= guard, which must not fire.
        let findings = replay(PROXY);
        let found = of_rule(&findings, "accept_before_ready");
        assert_eq!(found.len(), 1, "{findings:?}");
        let f = &found[0];
        assert_eq!(f.unit.as_deref(), Some("proxy.service"));
        assert_eq!(f.socket_unit.as_deref(), Some("proxy.socket"));
        assert_eq!(f.figures["errno"], "ECONNREFUSED");
        assert!(f.figures["refused"].as_u64().unwrap() >= 1);
        assert_eq!(f.evidence[0]["kind"], "accept");
        let refusals = f
            .evidence
            .iter()
            .filter(|e| e["kind"] == "connect" && e["async"] == true && e["ret"] == -111)
            .count();
        assert!(refusals >= 1, "{f:?}");
        let last = f.evidence.last().unwrap();
        assert_eq!(
            (&last["kind"], &last["ret"]),
            (&"connect".into(), &0.into())
        );
        assert_eq!(last["addr"], f.figures["backend"]);
    }

    #[test]
    fn refusals_long_after_the_accept_are_not_this_race() {
        let mut t = Thresholds::default();
        t.apply("accept_before_ready.window_ms=0").unwrap();
        let findings = replay_with(PROXY, t);
        assert!(
            of_rule(&findings, "accept_before_ready").is_empty(),
            "{findings:?}"
        );
    }

    #[test]
    fn services_whose_connects_succeed_never_fire() {
        for fixture in [
            include_str!("../../../tests/fixtures/healthy_echo.ndjson"),
            include_str!("../../../tests/fixtures/listen_pid_mismatch.ndjson"),
            include_str!("../../../tests/fixtures/restart_gap.ndjson"),
        ] {
            let findings = replay(fixture);
            assert!(
                of_rule(&findings, "accept_before_ready").is_empty(),
                "{findings:?}"
            );
        }
    }
}
