//! What a socket exposes and to whom (research/failure-modes.md B4, L5, Q1): informational
//! findings that are often right and sometimes not meant: `listen_all_addresses`,
//! `reuseport`, `runs_as_root`, `unix_socket_mode`. On real units the first, third and fourth
//! were mostly deliberate (network daemons, public sockets, daemons that drop privileges
//! themselves): they are reported with `--pedantic` only (lint::PEDANTIC).
use serde_json::json;

use super::{Found, cite, cite_section, load::UnitSet, naming::LISTEN_KEYS};
use crate::events::Finding;

/// Whether a Listen*= value binds every interface: a bare port, or a wildcard address.
fn all_addresses(value: &str) -> bool {
    value.parse::<u16>().is_ok()
        || ["0.0.0.0:", "[::]:", "*:"].iter().any(|p| {
            value
                .strip_prefix(p)
                .is_some_and(|port| port.parse::<u16>().is_ok())
        })
}

pub fn check(set: &UnitSet, out: &mut Vec<Finding>) {
    for socket in set.linted("socket") {
        let service = set.service_of(socket);
        let listen = socket.lists("Socket", LISTEN_KEYS);
        for e in listen.iter().filter(|e| all_addresses(&e.value)) {
            Found {
                rule: "listen_all_addresses",
                severity: "info",
                unit: Some(service.clone()),
                socket_unit: Some(socket.name.clone()),
                message: format!(
                    "{} listens on every interface ({}), IPv4 and IPv6 alike.",
                    socket.name, e.text
                ),
                hint: "Name the address when the service is meant for one network (127.0.0.1:PORT for local clients); a bare port follows BindIPv6Only= too.".into(),
                evidence: vec![cite(e)],
                figures: json!({}),
            }
            .push(out);
        }
        if let Some(e) = socket
            .get("Socket", "ReusePort")
            .filter(|_| socket.flag("Socket", "ReusePort") == Some(true))
        {
            Found {
                rule: "reuseport",
                severity: "info",
                unit: Some(service.clone()),
                socket_unit: Some(socket.name.clone()),
                message: format!(
                    "{} sets SO_REUSEPORT: a service that binds the same address itself gets a second listener without an error, and connections are split between them.",
                    socket.name
                ),
                hint: "Keep ReusePort=yes only when several processes are meant to listen; make sure the service takes its fds and never binds the port itself.".into(),
                evidence: vec![cite(e)],
                figures: json!({}),
            }
            .push(out);
        }
        let mode = socket.get("Socket", "SocketMode");
        // Files systemd creates with SocketMode= (ListenSpecial= opens an existing file).
        let made = [
            "ListenStream",
            "ListenDatagram",
            "ListenSequentialPacket",
            "ListenFIFO",
            "ListenMessageQueue",
        ];
        for e in listen.iter().filter(|e| {
            e.value.starts_with('/') && mode.is_none() && made.contains(&e.key.as_str())
        }) {
            Found {
                rule: "unix_socket_mode",
                severity: "info",
                unit: Some(service.clone()),
                socket_unit: Some(socket.name.clone()),
                message: format!(
                    "{} creates {} with mode 0666: every local user can connect.",
                    socket.name, e.value
                ),
                hint: "Set SocketMode= (e.g. 0660) with SocketUser=/SocketGroup= to say who may connect.".into(),
                evidence: vec![cite(e)],
                figures: json!({}),
            }
            .push(out);
        }
    }
    // A user manager's services run as their user.
    let services = if set.is_user() {
        Vec::new()
    } else {
        set.services()
    };
    for service in services {
        let Some(socket) = set.socket_of(service) else {
            continue;
        };
        let user = service.get("Service", "User").is_some()
            || service.flag("Service", "DynamicUser") == Some(true);
        if user {
            continue;
        }
        Found {
            rule: "runs_as_root",
            severity: "info",
            unit: Some(service.name.clone()),
            socket_unit: Some(socket.name.clone()),
            message: format!(
                "{} runs as root, though systemd opens its socket for it: it needs no privilege to bind.",
                service.name
            ),
            hint: "Set User= (or DynamicUser=yes): with socket activation the service never binds, so a low port needs no root.".into(),
            evidence: vec![cite_section(service, "Service")],
            figures: json!({}),
        }
        .push(out);
    }
}
