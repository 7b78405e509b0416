//! Whether a socket unit starts a service at all (research/failure-modes.md L6):
//! `accept_yes_not_template`, `template_without_accept`, `no_matching_service`. systemd finds
//! a socket's service by name unless Service= says: `NAME.service`, or the template
//! `NAME@.service` for Accept=yes; a mismatch fails every activation ("failed to queue service
//! startup job: Invalid argument", "Unit has no Listen setting").
use serde_json::json;

use super::{Found, cite, cite_section, load::UnitSet};
use crate::events::Finding;

pub fn check(set: &UnitSet, out: &mut Vec<Finding>) {
    for socket in set.linted("socket") {
        if socket.get("Socket", "Service").is_some() {
            continue;
        }
        let stem = socket.stem();
        let plain = format!("{stem}.service");
        let template = format!("{stem}@.service");
        let accept = socket.get("Socket", "Accept");
        let accept_yes = socket.flag("Socket", "Accept") == Some(true);
        let at_accept = || match accept {
            Some(e) => cite(e),
            None => cite_section(socket, "Socket"),
        };
        match (accept_yes, set.get(&plain), set.get(&template)) {
            (true, Some(service), None) => Found {
                rule: "accept_yes_not_template",
                severity: "error",
                unit: Some(plain.clone()),
                socket_unit: Some(socket.name.clone()),
                message: format!(
                    "{} has Accept=yes, which starts one instance of {template} a connection, but only {plain} exists.",
                    socket.name
                ),
                hint: format!(
                    "Either rename the service to {template} (one process per connection, the connection as fd 3 or stdin), or drop Accept=yes to pass the listening socket to {plain}."
                ),
                evidence: vec![at_accept(), cite_section(service, "Service")],
                figures: json!({}),
            }
            .push(out),
            (false, None, Some(service)) => Found {
                rule: "template_without_accept",
                severity: "error",
                unit: Some(template.clone()),
                socket_unit: Some(socket.name.clone()),
                message: format!(
                    "{} passes its listening socket to {plain} (Accept=no), but only the template {template} exists.",
                    socket.name
                ),
                hint: format!(
                    "Set Accept=yes for one instance of {template} a connection, or add Service= naming an instance ({stem}@something.service) or rename the service to {plain}."
                ),
                evidence: vec![at_accept(), cite_section(service, "Service")],
                figures: json!({}),
            }
            .push(out),
            (_, None, None) if !inert(set, socket, if accept_yes { &template } else { &plain }) => Found {
                rule: "no_matching_service",
                severity: "error",
                unit: None,
                socket_unit: Some(socket.name.clone()),
                message: format!(
                    "{} has no Service= and {}: nothing can be activated.",
                    socket.name,
                    if set.is_masked(if accept_yes { &template } else { &plain }) {
                        format!("{} is masked", if accept_yes { &template } else { &plain })
                    } else {
                        format!("there is no {}", if accept_yes { &template } else { &plain })
                    }
                ),
                hint: format!(
                    "Add the service unit ({}), or name the one to start with Service= in [Socket].",
                    if accept_yes { &template } else { &plain }
                ),
                evidence: vec![cite_section(socket, "Socket")],
                figures: json!({}),
            }
            .push(out),
            _ => {}
        }
    }
}

/// A socket whose missing service harms nothing: nothing starts it (not enabled, no unit read
/// needs it) and either its service was masked on purpose, or it is an installed static socket
/// (no [Install]) that only a unit which needs it would start, bringing its service along
/// (systemd's syslog.socket and a syslog daemon).
fn inert(set: &UnitSet, socket: &super::unit_file::UnitFile, service: &str) -> bool {
    let needed = set.all().any(|u| {
        ["Requires", "Wants", "BindsTo", "Requisite"]
            .iter()
            .any(|k| u.words("Unit", k).contains(&socket.name))
            || u.words("Service", "Sockets").contains(&socket.name)
    });
    if needed || set.enabled(&socket.name) {
        return false;
    }
    set.is_masked(service) || set.installed(socket) && socket.header("Install").is_none()
}
