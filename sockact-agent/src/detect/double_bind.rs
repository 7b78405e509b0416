//! `double_bind` (research/failure-modes.md B1, B3, B4): a process of a socket-activated service
//! binds an address its systemd listener holds, instead of using the passed fd. Three modes:
//! `in_use` (EADDRINUSE), `reuseport` (success with SO_REUSEPORT: a second listener that takes
//! a share of the connections), `unix_rebind` (a unix path unlinked and bound again: the
//! systemd socket is orphaned).
use std::collections::HashSet;

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_manager, listen_fds},
    evidence,
};
use crate::events::{Data, Event, Finding};

#[derive(Default)]
pub struct DoubleBind {
    /// (unit or pid, address, mode) already reported.
    reported: HashSet<(String, String, &'static str)>,
}

impl Rule for DoubleBind {
    fn observe(&mut self, ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        let Data::Bind(b) = &e.data else { return };
        let Some(p) = &e.process else { return };
        // A process whose LISTEN_PID is not its own could not take the fds:
        // listen_pid_mismatch tells that story.
        if is_manager(e) || ctx.mismatched(p.pid) {
            return;
        }
        let addr = &b.endpoint.addr;
        // systemd holds the address: it listened there, or the unit says so (attribution
        // matched the address to a socket unit).
        let owner = match ctx.listener(addr) {
            Some(l) => l.socket_unit.clone().or_else(|| p.socket_unit.clone()),
            None if p.socket_unit.is_some() => p.socket_unit.clone(),
            None => return,
        };
        // ... and the binder is a socket-activated service's process.
        // (A process that set LISTEN_* itself is no service's, whatever its cgroup.)
        let exec = ctx.exec_of(p.pid);
        let untrusted = exec.is_some_and(|x| matches!(&x.data, Data::Exec(x) if !x.listen_trusted));
        let activated = exec.and_then(listen_fds).is_some()
            || (!untrusted && p.unit.as_deref().is_some_and(|u| u.ends_with(".service")));
        if !activated {
            return;
        }
        // A bind that succeeds is a double bind only while systemd listens there: with its
        // socket unit stopped, the address is free for the service to take.
        let listening = ctx.listener(addr).is_some();
        let mode = match (&b.outcome.errno, b.endpoint.family.as_str()) {
            (Some(errno), _) if errno == "EADDRINUSE" => "in_use",
            (None, "unix") if listening => "unix_rebind",
            (None, _) if b.reuseport && listening => "reuseport",
            _ => return,
        };
        let who = p.unit.clone().unwrap_or_else(|| format!("pid {}", p.pid));
        if !self.reported.insert((who.clone(), addr.clone(), mode)) {
            return;
        }
        let socket = owner.clone().unwrap_or_else(|| "its socket unit".into());
        let (message, hint) = match mode {
            "in_use" => (
                format!(
                    "{who} binds {addr} itself and fails with EADDRINUSE: systemd already listens there for {socket} and passed that socket as fd 3."
                ),
                "Make the service use the socket systemd passes (sd_listen_fds, LISTEN_FDS/LISTEN_FDNAMES) instead of binding, or turn off its own listener option; do not add SO_REUSEADDR to hide it.",
            ),
            "reuseport" => (
                format!(
                    "{who} binds {addr} itself with SO_REUSEPORT: a second listener now splits connections with the one systemd holds for {socket}, which nobody accepts on."
                ),
                "Use the passed fd instead of binding; drop ReusePort=yes from the socket unit unless several passed sockets are meant to share the port.",
            ),
            _ => (
                format!(
                    "{who} unlinks {addr} and binds a new socket there: the socket systemd holds for {socket} is orphaned and connections made to it are never served."
                ),
                "Use the passed fd and never unlink the socket path (systemd.socket(5)); if the app needs a path option, point it at the passed socket.",
            ),
        };
        let mut proof: Vec<&Event> = Vec::new();
        if let Some(exec) = ctx.exec_of(p.pid) {
            proof.push(exec);
        }
        if let Some(l) = ctx.listener(addr) {
            proof.push(&l.event);
        }
        proof.push(e);
        let mut figures = serde_json::Map::new();
        figures.insert("addr".into(), json!(addr));
        figures.insert("mode".into(), json!(mode));
        out.push(Finding {
            rule: "double_bind".into(),
            severity: "error".into(),
            unit: p.unit.clone(),
            socket_unit: owner,
            message,
            hint: hint.into(),
            evidence: evidence(&proof),
            figures,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::testing::{of_rule, problems, replay, rules};

    #[test]
    fn a_service_binding_its_own_port_is_a_double_bind_in_use() {
        // Recorded on the test bed: tests/scenarios/demo, `sockact-trace --unit broken`.
        let findings = replay(include_str!(
            "../../../tests/fixtures/double_bind_in_use.ndjson"
        ));
        let first = &findings[0];
        assert_eq!(first.rule, "double_bind");
        assert_eq!(first.severity, "error");
        assert_eq!(first.figures["mode"], "in_use");
        assert_eq!(first.unit.as_deref(), Some("broken.service"));
        assert_eq!(first.socket_unit.as_deref(), Some("broken.socket"));
        assert!(first.evidence.len() >= 2 && first.evidence.len() <= 16);
        assert!(first.evidence.iter().any(|e| e["kind"] == "exec"));
        assert!(!first.hint.is_empty());
        // The service is restarted by socket activation again and again: one finding per
        // episode (unit, address, mode), not per bind, nor a crash_loop for its deaths.
        assert_eq!(of_rule(&findings, "double_bind").len(), 1, "{findings:?}");
        assert_eq!(
            rules(&findings),
            ["double_bind", "listener_lost"],
            "the port systemd closed after the start limit: {findings:?}"
        );
    }

    #[test]
    fn a_second_listener_and_a_rebound_unix_path() {
        // Recorded on the test bed: tests/scenarios/double-bind, no selector.
        let findings = replay(include_str!(
            "../../../tests/fixtures/double_bind_reuseport_unix.ndjson"
        ));
        let mut modes: Vec<(&str, &str)> = findings
            .iter()
            .map(|f| {
                (
                    f.figures["mode"].as_str().unwrap(),
                    f.unit.as_deref().unwrap(),
                )
            })
            .collect();
        modes.sort();
        assert_eq!(
            modes,
            [
                ("reuseport", "shared.service"),
                ("unix_rebind", "unixy.service")
            ]
        );
    }

    #[test]
    fn a_healthy_service_is_no_double_bind() {
        // Recorded on the test bed: tests/scenarios/healthy, `sockact-trace --unit echo`.
        let findings = problems(&replay(include_str!(
            "../../../tests/fixtures/healthy_echo.ndjson"
        )));
        assert!(findings.is_empty(), "{findings:?}");
    }
}
