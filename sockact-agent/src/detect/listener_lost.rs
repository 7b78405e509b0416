//! `listener_lost` (research/failure-modes.md L3, T1, T2, H2): systemd's listener closed or
//! broken while its socket unit should listen, so that clients are refused until someone
//! restarts the socket:
//! - `shutdown`: a process of the service called shutdown() on the passed listener (systemd
//!   then sees POLLHUP and fails the socket);
//! - systemd failed the socket unit: its Result says why (`trigger-limit-hit` after too many
//!   activations, `service-start-limit-hit` after the service's crash loop, ...);
//! - `stopped-with-service`: the socket unit is PartOf=/BindsTo= its service, and stopping the
//!   service stopped the socket too.
//!
//! A socket unit stopped on its own (`systemctl stop x.socket`) is an operator's choice, not a
//! finding. One finding until the socket listens again. It is reported even when another rule
//! found what made systemd give up: the closed port needs its own remedy.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_manager, time_of},
    evidence, figures,
};
use crate::events::{Data, Event, Finding, Unit};

/// A socket unit and its service stopping this close together were one stop.
const TOGETHER_NS: i128 = 2_000_000_000;

#[derive(Default)]
pub struct ListenerLost {
    /// Socket units reported, until they listen again.
    reported: HashSet<String>,
    /// Socket unit -> its latest listener close.
    closes: HashMap<String, Event>,
    /// Socket unit -> its stop (inactive, not failed), until its service's stop is seen.
    stopped: HashMap<String, Event>,
    /// Service -> its latest stop.
    service_stops: HashMap<String, Event>,
}

impl Rule for ListenerLost {
    fn observe(&mut self, ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        match &e.data {
            Data::Shutdown(s)
                if s.outcome.errno.is_none()
                    && !is_manager(e)
                    && matches!(s.how.as_str(), "SHUT_RD" | "SHUT_RDWR") =>
            {
                // A listener the service got from systemd.
                let Some(addr) = s.listener.as_deref() else {
                    return;
                };
                let Some(l) = ctx.listener(addr) else { return };
                let Some(socket) = l.socket_unit.clone() else {
                    return;
                };
                let mut proof: Vec<&Event> = vec![&l.event];
                if let Some(exec) = e.process.as_ref().and_then(|p| ctx.exec_of(p.pid)) {
                    proof.push(exec);
                }
                proof.push(e);
                self.report(ctx, &socket, "shutdown", Some(addr), &proof, out);
            }
            Data::Listener(l) if l.action == "close" => {
                if let Some(socket) = &l.socket_unit {
                    self.closes.insert(socket.clone(), e.clone());
                }
            }
            Data::Listener(l) if l.action == "open" => {
                if let Some(socket) = &l.socket_unit {
                    self.listening(socket);
                }
            }
            Data::Unit(u) if u.unit.ends_with(".socket") => self.socket_changed(ctx, u, e, out),
            Data::Unit(u) if matches!(u.active_state.as_str(), "inactive" | "failed") => {
                self.service_stops.insert(u.unit.clone(), e.clone());
                let socket = self
                    .stopped
                    .iter()
                    .find(|(s, _)| part_of(ctx, s).contains(&u.unit))
                    .map(|(s, _)| s.clone());
                if let Some(socket) = socket {
                    self.stopped_with(ctx, &socket, e, out);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, _out: &mut Vec<Finding>) {
        let now = ctx.now;
        self.stopped.retain(|_, e| now - time_of(e) <= TOGETHER_NS);
        self.service_stops
            .retain(|_, e| now - time_of(e) <= TOGETHER_NS);
    }
}

/// What a socket unit is PartOf= or BindsTo=, as resolved.
fn part_of(ctx: &Context, socket: &str) -> Vec<String> {
    match ctx.unit(socket).map(|e| &e.data) {
        Some(Data::Unit(u)) => u.part_of.clone().unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl ListenerLost {
    fn listening(&mut self, socket: &str) {
        self.reported.remove(socket);
        self.closes.remove(socket);
        self.stopped.remove(socket);
    }

    fn socket_changed(&mut self, ctx: &Context, u: &Unit, e: &Event, out: &mut Vec<Finding>) {
        match u.active_state.as_str() {
            // Started again (flapping between listening and running is no new start).
            "active" if u.change != "state" => self.listening(&u.unit),
            "failed" => {
                let cause = u.result.clone().unwrap_or_else(|| "failed".into());
                let close = self.closes.get(&u.unit).cloned();
                let mut proof: Vec<&Event> = Vec::new();
                proof.extend(close.as_ref());
                proof.push(e);
                let socket = u.unit.clone();
                self.report(ctx, &socket, &cause, None, &proof, out);
            }
            "inactive" if u.change == "stopped" => {
                self.stopped.insert(u.unit.clone(), e.clone());
                // Its service may have stopped first.
                let stop = part_of(ctx, &u.unit)
                    .iter()
                    .find_map(|s| self.service_stops.get(s))
                    .filter(|s| (time_of(s) - time_of(e)).abs() <= TOGETHER_NS)
                    .cloned();
                if let Some(stop) = stop {
                    self.stopped_with(ctx, &u.unit.clone(), &stop, out);
                }
            }
            _ => {}
        }
    }

    /// A socket unit stopped with the service it is PartOf=/BindsTo=.
    fn stopped_with(
        &mut self,
        ctx: &Context,
        socket: &str,
        service_stop: &Event,
        out: &mut Vec<Finding>,
    ) {
        let Some(stop) = self.stopped.remove(socket) else {
            return;
        };
        let close = self.closes.get(socket).cloned();
        let mut proof: Vec<&Event> = vec![service_stop, &stop];
        proof.extend(close.as_ref());
        self.report(ctx, socket, "stopped-with-service", None, &proof, out);
    }

    fn report(
        &mut self,
        ctx: &Context,
        socket: &str,
        cause: &str,
        addr: Option<&str>,
        proof: &[&Event],
        out: &mut Vec<Finding>,
    ) {
        if !self.reported.insert(socket.to_owned()) {
            return;
        }
        // The listener: the one shut down, the one seen closing, else the socket unit's
        // address when it has exactly one.
        let listener = addr
            .map(str::to_owned)
            .or_else(|| {
                self.closes.get(socket).and_then(|c| match &c.data {
                    Data::Listener(l) => Some(l.addr.clone()),
                    _ => None,
                })
            })
            .or_else(|| match ctx.unit(socket).map(|e| &e.data) {
                Some(Data::Unit(Unit {
                    listen: Some(listen),
                    ..
                })) if listen.len() == 1 => Some(listen[0].clone()),
                _ => None,
            });
        let service = ctx.service_of(socket);
        let serve = service.as_deref().unwrap_or("its service");
        let at = listener.as_deref().unwrap_or("its address");
        let (why, hint) = match cause {
            "shutdown" => (
                format!("{serve} called shutdown() on the listener systemd passed it"),
                format!(
                    "Never shut down a passed listener: close your copy (or just exit) and leave the socket to systemd; then `systemctl restart {socket}`."
                ),
            ),
            "stopped-with-service" => (
                format!("{socket} is PartOf=/BindsTo= {serve}, so stopping the service closed it"),
                format!(
                    "Drop PartOf=/BindsTo= {serve} from {socket}: the socket must outlive its service to hold connections across restarts; `systemctl start {socket}` now."
                ),
            ),
            "trigger-limit-hit" => (
                "systemd stopped it after too many activations in a short time (trigger-limit-hit)"
                    .to_owned(),
                format!(
                    "Find what triggers it so often (a crash loop, a connection storm); raise TriggerLimitIntervalSec=/TriggerLimitBurst= (or PollLimit=) only knowingly; `systemctl reset-failed {socket}` and restart it."
                ),
            ),
            "service-start-limit-hit" => (
                format!(
                    "{serve} failed to start too often and systemd gave up on the socket too (service-start-limit-hit)"
                ),
                format!(
                    "Fix why {serve} dies at start, then `systemctl reset-failed {serve} {socket}` and `systemctl start {socket}`."
                ),
            ),
            other => (
                format!("systemd failed it ({other})"),
                format!(
                    "Read why (journalctl -u {socket}), then `systemctl reset-failed {socket}` and restart it."
                ),
            ),
        };
        out.push(Finding {
            rule: "listener_lost".into(),
            severity: "error".into(),
            unit: service.clone(),
            socket_unit: Some(socket.to_owned()),
            message: format!(
                "{socket} no longer listens on {at}: {why}; clients are refused until it is restarted."
            ),
            hint,
            evidence: evidence(proof),
            figures: figures(match &listener {
                Some(l) => json!({ "listener": l, "cause": cause }),
                None => json!({ "cause": cause }),
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::testing::{of_rule, replay};

    fn causes(fixture: &str) -> Vec<(String, String)> {
        let mut c: Vec<(String, String)> = of_rule(&replay(fixture), "listener_lost")
            .iter()
            .map(|f| {
                (
                    f.socket_unit.clone().unwrap_or_default(),
                    f.figures["cause"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        c.sort();
        c
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn part_of_its_service_and_shut_down_by_it() {
        // Recorded on the test bed: tests/scenarios/listener-lost, no selector: bound.socket
        // is PartOf=bound.service, which was stopped; shut.service shut its listener down.
        let fixture = include_str!("../../../tests/fixtures/listener_lost.ndjson");
        assert_eq!(
            causes(fixture),
            pairs(&[
                ("bound.socket", "stopped-with-service"),
                ("shut.socket", "shutdown"),
            ])
        );
        let findings = of_rule(&replay(fixture), "listener_lost");
        let shut = findings
            .iter()
            .find(|f| f.figures["cause"] == "shutdown")
            .unwrap();
        assert!(shut.evidence.iter().any(|e| e["kind"] == "shutdown"));
        let bound = findings
            .iter()
            .find(|f| f.figures["cause"] == "stopped-with-service")
            .unwrap();
        assert!(bound.figures["listener"].is_string(), "{bound:?}");
        let units: Vec<&str> = bound
            .evidence
            .iter()
            .filter(|e| e["kind"] == "unit")
            .filter_map(|e| e["unit"].as_str())
            .collect();
        assert_eq!(units, ["bound.service", "bound.socket"], "{bound:?}");
    }

    #[test]
    fn systemd_giving_up_after_limits() {
        // An Accept=yes burst past the trigger limit, and services that died at start until
        // their start limit.
        assert_eq!(
            causes(include_str!(
                "../../../tests/fixtures/listener_lost_trigger_limit.ndjson"
            )),
            pairs(&[("storm.socket", "trigger-limit-hit")])
        );
        assert_eq!(
            causes(include_str!(
                "../../../tests/fixtures/activation_failed.ndjson"
            )),
            pairs(&[("crasher.socket", "service-start-limit-hit")])
        );
    }

    #[test]
    fn stops_restarts_and_an_operator_stopping_a_socket_are_not_losses() {
        for fixture in [
            include_str!("../../../tests/fixtures/restart_gap.ndjson"),
            include_str!("../../../tests/fixtures/healthy_echo.ndjson"),
            include_str!("../../../tests/fixtures/idle_restart.ndjson"),
            // `systemctl stop lonely.socket` by hand.
            include_str!("../../../tests/fixtures/socket_inactive.ndjson"),
            include_str!("../../../tests/fixtures/crash_loop.ndjson"),
        ] {
            let findings = replay(fixture);
            assert!(
                of_rule(&findings, "listener_lost").is_empty(),
                "{findings:?}"
            );
        }
    }
}
