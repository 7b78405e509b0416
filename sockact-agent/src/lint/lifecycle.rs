//! How a socket unit and its service start, stop and restart (research/failure-modes.md L3,
//! L4, T2, T3): `partof_on_socket`, `restart_always_activated`, `self_stop_hack`,
//! `socket_not_enabled`, `no_start_limit`.
use serde_json::json;

use super::{Found, cite, cite_section, load::UnitSet, proxy, unit_file::UnitFile};
use crate::events::Finding;

pub fn check(set: &UnitSet, out: &mut Vec<Finding>) {
    for socket in set.linted("socket") {
        partof_on_socket(set, socket, out);
        socket_not_enabled(set, socket, out);
    }
    let backends: Vec<String> = set
        .services()
        .iter()
        .filter(|s| proxy::backend_of(s).is_some())
        .flat_map(|s| proxy::ordered_after(s))
        .collect();
    for service in set.services() {
        let socket = set.socket_of(service);
        let activated = socket.is_some();
        let backend = backends.contains(&service.name);
        // A service started at boot as well (journald, udevd) is no on-demand service: its
        // Restart=always keeps a daemon up, it fights no idle exit.
        if (activated || backend) && !set.enabled(&service.name) {
            restart_always(service, socket, backend, out);
        }
        if activated {
            self_stop(service, socket, out);
        }
        no_start_limit(service, socket, out);
    }
}

fn partof_on_socket(set: &UnitSet, socket: &UnitFile, out: &mut Vec<Finding>) {
    let service = set.service_of(socket);
    for key in ["PartOf", "BindsTo"] {
        for e in socket.list("Unit", key) {
            if !e.value.split_whitespace().any(|u| u == service) {
                continue;
            }
            Found {
                rule: "partof_on_socket",
                severity: "warning",
                unit: Some(service.clone()),
                socket_unit: Some(socket.name.clone()),
                message: format!(
                    "{} is {key}={service}: stopping or restarting the service closes the port, and connections are refused until the socket starts again.",
                    socket.name
                ),
                hint: format!(
                    "Remove {key}={service} from {}: the socket must outlive its service to hold connections across restarts (a service that needs its socket uses Requires=/After= on it instead).",
                    socket.name
                ),
                evidence: vec![cite(e)],
                figures: json!({}),
            }
            .push(out);
        }
    }
}

/// The service is enabled, its socket is not, and the service cannot do without it. Not when
/// another enabled socket starts the same service (libvirtd's opt-in tcp/tls sockets), when the
/// service pulls its socket in itself, or when the two are alternatives: a service with an
/// [Install] of its own that names its socket nowhere runs standalone by design (Debian's
/// ssh.service and dovecot.service, each with a disabled socket for whoever prefers it).
fn socket_not_enabled(set: &UnitSet, socket: &UnitFile, out: &mut Vec<Finding>) {
    let service = set.service_of(socket);
    if !set.enabled(&service) || set.enabled(&socket.name) {
        return;
    }
    let started_otherwise = set
        .all()
        .filter(|u| u.kind() == "socket" && u.name != socket.name)
        .any(|other| set.service_of(other) == service && set.enabled(&other.name));
    if started_otherwise {
        return;
    }
    let Some(svc) = set.get(&service) else { return };
    let names_socket = |keys: &[&str], section: &str| {
        keys.iter()
            .any(|k| svc.words(section, k).contains(&socket.name))
    };
    if names_socket(&["Requires", "Wants", "BindsTo", "Requisite"], "Unit")
        || names_socket(&["Sockets"], "Service")
    {
        // Starting the service starts its socket.
        return;
    }
    let needs_socket = names_socket(&["Also"], "Install")
        || svc
            .get("Service", "StandardInput")
            .is_some_and(|e| e.value.starts_with("socket"))
        || svc.list("Install", "WantedBy").is_empty()
            && svc.list("Install", "RequiredBy").is_empty();
    if !needs_socket {
        return;
    }
    let mut evidence = Vec::new();
    if let Some(link) = set.enabling_link(&service) {
        evidence.push(json!({
            "file": link.display().to_string(),
            "line": 0,
            "text": format!("{service} is enabled"),
        }));
    }
    evidence.push(match socket.get("Install", "WantedBy") {
        Some(e) => cite(e),
        None => cite_section(socket, "Socket"),
    });
    Found {
        rule: "socket_not_enabled",
        severity: "warning",
        unit: Some(service.clone()),
        socket_unit: Some(socket.name.clone()),
        message: format!(
            "{service} is enabled but {} is not: at boot the service starts without its socket, gets no fds, and systemd then refuses to start the socket (\"already active\").",
            socket.name
        ),
        hint: format!(
            "`systemctl enable {}` and `systemctl disable {service}`: the socket starts the service on the first connection.",
            socket.name
        ),
        evidence,
        figures: json!({}),
    }
    .push(out);
}

fn restart_always(
    service: &UnitFile,
    socket: Option<&UnitFile>,
    backend: bool,
    out: &mut Vec<Finding>,
) {
    let Some(e) = service
        .get("Service", "Restart")
        .filter(|e| e.value == "always")
    else {
        return;
    };
    let mut evidence = vec![cite(e)];
    evidence.extend(socket.map(|s| cite_section(s, "Socket")));
    let what = if backend {
        "the backend of a socket-activated proxy"
    } else {
        "socket-activated"
    };
    Found {
        rule: "restart_always_activated",
        severity: "warning",
        unit: Some(service.name.clone()),
        socket_unit: socket.map(|s| s.name.clone()),
        message: format!(
            "{} is {what} and Restart=always: when it exits because it is idle, systemd starts it again at once, and a crash is retried without end.",
            service.name
        ),
        hint: "Use Restart=on-failure: the socket starts the service again when a client connects; keep StartLimitIntervalSec=/StartLimitBurst= as a guard rail.".into(),
        evidence,
        figures: json!({}),
    }
    .push(out);
}

fn self_stop(service: &UnitFile, socket: Option<&UnitFile>, out: &mut Vec<Finding>) {
    let own = [
        service.name.as_str(),
        service.stem(),
        "%n",
        "%N",
        "%p.service",
    ];
    for e in service.list("Service", "ExecStop") {
        let stops_itself = e.value.contains("systemctl")
            && (e.value.contains(" stop ") || e.value.contains(" kill "))
            && e.value
                .split_whitespace()
                .any(|w| own.contains(&w.trim_matches(['"', '\''])));
        if stops_itself {
            push_self_stop(
                service,
                socket,
                e,
                "ExecStop= stops its own unit: a stop job inside a stop job".into(),
                out,
            );
        }
    }
    let oneshot = service
        .get("Service", "Type")
        .is_some_and(|t| t.value == "oneshot");
    if let Some(e) = service
        .get("Service", "TimeoutStartSec")
        .filter(|_| oneshot)
    {
        push_self_stop(
            service,
            socket,
            e,
            "a Type=oneshot service never finishes starting while it serves, so TimeoutStartSec= kills it as an idle timeout, counted as a failure".into(),
            out,
        );
    }
}

fn push_self_stop(
    service: &UnitFile,
    socket: Option<&UnitFile>,
    e: &super::unit_file::Entry,
    why: String,
    out: &mut Vec<Finding>,
) {
    Found {
        rule: "self_stop_hack",
        severity: "warning",
        unit: Some(service.name.clone()),
        socket_unit: socket.map(|s| s.name.clone()),
        message: format!("{}: {why}.", service.name),
        hint: "Let the service exit by itself when it is idle (exit 0 after its idle time) and leave stopping to systemd; the socket starts it again on the next connection.".into(),
        evidence: vec![cite(e)],
        figures: json!({}),
    }
    .push(out);
}

/// Restart= with the start limit switched off: systemd's default (5 starts in 10 s) is a guard
/// rail every unit has, so only a unit that removes it (`StartLimitIntervalSec=0`,
/// `StartLimitBurst=0`, or `infinity`) restarts a crash without end.
fn no_start_limit(service: &UnitFile, socket: Option<&UnitFile>, out: &mut Vec<Finding>) {
    let Some(restart) = service
        .get("Service", "Restart")
        .filter(|e| e.value != "no")
    else {
        return;
    };
    let off = |v: &str| matches!(v.trim(), "0" | "0s" | "infinity");
    let Some(limit) = [
        service.get("Unit", "StartLimitIntervalSec"),
        service.get("Unit", "StartLimitBurst"),
        service.get("Service", "StartLimitInterval"),
    ]
    .into_iter()
    .flatten()
    .find(|e| off(&e.value)) else {
        return;
    };
    Found {
        rule: "no_start_limit",
        severity: "info",
        unit: Some(service.name.clone()),
        socket_unit: socket.map(|s| s.name.clone()),
        message: format!(
            "{} has Restart={} and {}: systemd's start limit is off, so a service that cannot start is restarted without end and never fails.",
            service.name, restart.value, limit.text
        ),
        hint: "Keep a start limit (systemd's default is 5 starts in 10 s; StartLimitIntervalSec= and StartLimitBurst= in [Unit] set one that fits), so that a crash loop stops, and is seen.".into(),
        evidence: vec![cite(restart), cite(limit)],
        figures: json!({}),
    }
    .push(out);
}
