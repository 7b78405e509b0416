//! `socket_inactive` (research/failure-modes.md L2, L4): a service that has a socket unit runs
//! while that socket unit is not listening: started alone, its socket stopped or never
//! enabled, or the socket refused to start because the service already ran ("Socket service
//! X already active, refusing"). Unit states come from systemd's `unit` events; the state must
//! last [`SETTLE_MS`] so that a stop or restart of both units is not mistaken for it. Socket
//! units skipped by a failed condition are not followed at all, so they never count.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_instance, listen_fds, time_of, unit_of},
    evidence, figures, millis,
};
use crate::events::{Data, Event, Finding};

/// How long the state must last to be a finding.
pub const SETTLE_MS: u64 = 2000;

fn state(e: &Event) -> &str {
    match &e.data {
        Data::Unit(u) => u.active_state.as_str(),
        _ => "",
    }
}

#[derive(Default)]
pub struct SocketInactive {
    /// (service, socket unit) -> since when the service runs without its socket listening.
    since: HashMap<(String, String), i128>,
    /// Service -> its latest exec without LISTEN_FDS: started without the socket's fds.
    bare_exec: HashMap<String, Event>,
    /// (service, socket unit) reported in the current episode.
    reported: HashSet<(String, String)>,
}

impl Rule for SocketInactive {
    fn observe(&mut self, _ctx: &Context, e: &Event, _out: &mut Vec<Finding>) {
        if let (Data::Exec(_), Some(unit)) = (&e.data, unit_of(e).filter(|u| !is_instance(u))) {
            if listen_fds(e).is_none() {
                self.bare_exec.insert(unit.to_owned(), e.clone());
            } else {
                self.bare_exec.remove(unit);
            }
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        let mut now_pairs = HashSet::new();
        for service_event in ctx.units() {
            let Data::Unit(service) = &service_event.data else {
                continue;
            };
            if !service.unit.ends_with(".service")
                || is_instance(&service.unit)
                || !matches!(service.active_state.as_str(), "active" | "reloading")
            {
                continue;
            }
            for socket in ctx.sockets_of(&service.unit) {
                let Some(socket_event) = ctx.unit(&socket) else {
                    continue;
                };
                if !matches!(state(socket_event), "inactive" | "failed") {
                    continue;
                }
                let key = (service.unit.clone(), socket.clone());
                now_pairs.insert(key.clone());
                let since = *self
                    .since
                    .entry(key.clone())
                    .or_insert_with(|| time_of(service_event).max(time_of(socket_event)));
                if millis(since, ctx.now) < SETTLE_MS || !self.reported.insert(key) {
                    continue;
                }
                let mut proof: Vec<&Event> = vec![socket_event, service_event];
                let bare = self.bare_exec.get(&service.unit);
                proof.extend(bare);
                let how = if bare.is_some() {
                    " and was started without its fds (no LISTEN_FDS)"
                } else {
                    ""
                };
                out.push(Finding {
                    rule: "socket_inactive".into(),
                    severity: "warning".into(),
                    unit: Some(service.unit.clone()),
                    socket_unit: Some(socket.clone()),
                    message: format!(
                        "{} runs while {socket} is {}{how}: connections are not queued by systemd, and the socket cannot start while the service runs.",
                        service.unit,
                        state(socket_event)
                    ),
                    hint: format!(
                        "Enable and start the socket, not the service (systemctl enable --now {socket}; systemctl stop {} first), and give the service Requires={socket} After={socket} if it must not run without it.",
                        service.unit
                    ),
                    evidence: evidence(&proof),
                    figures: figures(json!({ "socket_unit": socket })),
                });
            }
        }
        // An episode ends when the state does.
        self.since.retain(|k, _| now_pairs.contains(k));
        self.reported.retain(|k| now_pairs.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::testing::{replay, rules};

    #[test]
    fn a_service_started_while_its_socket_is_stopped() {
        // Recorded on the test bed: tests/scenarios/socket-inactive, `sockact-trace --unit lonely`.
        let findings = replay(include_str!(
            "../../../tests/fixtures/socket_inactive.ndjson"
        ));
        assert_eq!(rules(&findings), ["socket_inactive"], "{findings:?}");
        let f = &findings[0];
        assert_eq!(f.unit.as_deref(), Some("lonely.service"));
        assert_eq!(f.figures["socket_unit"], "lonely.socket");
        assert_eq!(findings.len(), 1, "{findings:?}");
    }
}
