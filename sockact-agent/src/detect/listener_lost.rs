//! `listener_lost` (research/failure-modes.md L3, T1, T2, H2): systemd's listener closed or
//! broken while its socket unit should listen, so that clients are refused until someone
//! restarts the socket:
//! - `shutdown`: a process of the service called shutdown() on the passed listener (systemd
//!   then sees POLLHUP and fails the socket);
//! - systemd failed the socket unit: its Result says why (`trigger-limit-hit` after too many
//!   activations, `service-start-limit-hit` after the service's crash loop, ...);
//! - `stopped-with-service`: the socket unit is PartOf=/BindsTo= its service, and stopping the
//!   service stopped the socket too (and it was still down [`TOGETHER_NS`] later: a restart
//!   of the service restarts such a socket);
//! - `closed-while-active`: systemd closed the listener and the socket unit still says active
//!   (a `daemon-reload` after its Listen*= changed: "no open socket file descriptor left").
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
/// A listener closed this long ago with no stop, failure or new listener of its socket unit
/// was closed behind the unit's back.
const CLOSE_SETTLE_NS: i128 = 3_000_000_000;

#[derive(Default)]
pub struct ListenerLost {
    /// Socket units reported, until they listen again.
    reported: HashSet<String>,
    /// Socket unit -> its latest listener close, until the unit's own news explains it.
    closes: HashMap<String, Event>,
    /// Listener address -> the inode listening there now: a close of another inode is an old
    /// socket's, seen late.
    current: HashMap<String, u64>,
    /// Socket unit -> its stop (inactive, not failed), until its service's stop is seen.
    stopped: HashMap<String, Event>,
    /// Service -> its latest stop.
    service_stops: HashMap<String, Event>,
    /// Socket unit -> (its service's stop, its own stop): stopped together, reported if it is
    /// still down [`TOGETHER_NS`] later.
    together: HashMap<String, (Event, Event)>,
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
                // Its own listener on the same address (SO_REUSEPORT) is not systemd's.
                if l.inode.is_some() && s.socket.inode.is_some() && l.inode != s.socket.inode {
                    return;
                }
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
                let stale = l
                    .inode
                    .zip(self.current.get(&l.addr))
                    .is_some_and(|(closed, now)| closed != *now);
                if let Some(socket) = l.socket_unit.as_ref().filter(|_| !stale) {
                    self.closes.insert(socket.clone(), e.clone());
                }
            }
            Data::Listener(l) => {
                if let Some(inode) = l.inode {
                    self.current.insert(l.addr.clone(), inode);
                }
                if let (Some(socket), "open") = (&l.socket_unit, l.action.as_str()) {
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
                    self.stopped_with(&socket, e);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.decide(ctx, out, false);
    }

    fn flush(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.decide(ctx, out, true);
    }
}

impl ListenerLost {
    /// Decides the stops and closes whose settling time has passed (every one when `all`: the
    /// trace ends, what is known now is all there is).
    fn decide(&mut self, ctx: &Context, out: &mut Vec<Finding>, all: bool) {
        let now = ctx.now;
        self.stopped.retain(|_, e| now - time_of(e) <= TOGETHER_NS);
        self.service_stops
            .retain(|_, e| now - time_of(e) <= TOGETHER_NS);
        // Stopped with its service, and still down.
        let settled: Vec<String> = self
            .together
            .iter()
            .filter(|(_, (_, stop))| all || now - time_of(stop) >= TOGETHER_NS)
            .map(|(s, _)| s.clone())
            .collect();
        for socket in settled {
            let Some((service_stop, stop)) = self.together.remove(&socket) else {
                continue;
            };
            if active(ctx, &socket) {
                continue;
            }
            let close = self.closes.remove(&socket);
            let mut proof: Vec<&Event> = vec![&service_stop, &stop];
            proof.extend(close.as_ref());
            self.report(ctx, &socket, "stopped-with-service", None, &proof, out);
        }
        // Closed with no word from systemd, the unit still active.
        let unexplained: Vec<String> = self
            .closes
            .iter()
            .filter(|(_, c)| all || now - time_of(c) >= CLOSE_SETTLE_NS)
            .map(|(s, _)| s.clone())
            .collect();
        for socket in unexplained {
            let Some(close) = self.closes.remove(&socket) else {
                continue;
            };
            if !active(ctx, &socket) {
                continue;
            }
            let mut proof: Vec<&Event> = Vec::new();
            proof.extend(ctx.unit(&socket));
            proof.push(&close);
            let addr = match &close.data {
                Data::Listener(l) => Some(l.addr.clone()),
                _ => None,
            };
            self.report(
                ctx,
                &socket,
                "closed-while-active",
                addr.as_deref(),
                &proof,
                out,
            );
        }
    }
}

/// Whether systemd says a unit is active now.
fn active(ctx: &Context, unit: &str) -> bool {
    matches!(ctx.unit(unit).map(|e| &e.data), Some(Data::Unit(u)) if u.active_state == "active")
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
        self.together.remove(socket);
    }

    fn socket_changed(&mut self, ctx: &Context, u: &Unit, e: &Event, out: &mut Vec<Finding>) {
        match u.active_state.as_str() {
            // Started again (flapping between listening and running is no new start, and a
            // socket unit resolved again after a daemon-reload has not listened again).
            "active" if matches!(u.change.as_str(), "started" | "restarted") => {
                self.listening(&u.unit)
            }
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
                // Stopped: its listener's close is explained, whatever the stop was.
                self.closes.remove(&u.unit);
                self.stopped.insert(u.unit.clone(), e.clone());
                // Its service may have stopped first.
                let stop = part_of(ctx, &u.unit)
                    .iter()
                    .find_map(|s| self.service_stops.get(s))
                    .filter(|s| (time_of(s) - time_of(e)).abs() <= TOGETHER_NS)
                    .cloned();
                if let Some(stop) = stop {
                    self.stopped_with(&u.unit.clone(), &stop);
                }
            }
            _ => {}
        }
    }

    /// A socket unit stopped with the service it is PartOf=/BindsTo=: decided once it has
    /// stayed down a while.
    fn stopped_with(&mut self, socket: &str, service_stop: &Event) {
        if let Some(stop) = self.stopped.remove(socket) {
            self.together
                .insert(socket.to_owned(), (service_stop.clone(), stop));
        }
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
        // is PartOf=bound.service, which was stopped; shut.service shut its listener down;
        // moved.socket's address changed in its file and systemd was reloaded.
        let fixture = include_str!("../../../tests/fixtures/listener_lost.ndjson");
        assert_eq!(
            causes(fixture),
            pairs(&[
                ("bound.socket", "stopped-with-service"),
                ("moved.socket", "closed-while-active"),
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
