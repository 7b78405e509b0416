//! `proxyd_without_ready_guard` (research/failure-modes.md R1): systemd-socket-proxyd accepts
//! the first connection and forwards it at once; a backend that is not listening yet refuses
//! it (the first request after a cold start fails, the next succeeds). The proxy needs a
//! readiness wait: an ExecStartPre= that polls the backend's port, or a backend of
//! Type=notify (or socket-activated itself) that it is ordered after.
use serde_json::json;

use super::{Found, cite, load::UnitSet, unit_file::UnitFile};
use crate::events::Finding;

/// The backend address of a systemd-socket-proxyd service, with the ExecStart= line.
pub fn backend_of(service: &UnitFile) -> Option<(String, &super::unit_file::Entry)> {
    let exec = service
        .list("Service", "ExecStart")
        .into_iter()
        .find(|e| e.value.contains("systemd-socket-proxyd"))?;
    let backend = exec
        .value
        .split_whitespace()
        .skip_while(|w| !w.contains("systemd-socket-proxyd"))
        .skip(1)
        .find(|w| !w.starts_with('-'))?;
    Some((backend.to_owned(), exec))
}

/// The units a service is ordered after and pulls in: its backends, for a proxy.
pub fn ordered_after(service: &UnitFile) -> Vec<String> {
    let after = service.words("Unit", "After");
    ["Requires", "Wants", "BindsTo"]
        .iter()
        .flat_map(|k| service.words("Unit", k))
        .filter(|u| after.contains(u))
        .collect()
}

/// The port (or path) of a backend address, as a guard would name it.
fn port_of(backend: &str) -> &str {
    backend.rsplit_once(':').map_or(backend, |(_, p)| p)
}

pub fn check(set: &UnitSet, out: &mut Vec<Finding>) {
    for service in set.services() {
        let Some((backend, exec)) = backend_of(service) else {
            continue;
        };
        // A wait in ExecStartPre= that names the backend.
        let polls = service
            .list("Service", "ExecStartPre")
            .iter()
            .any(|e| e.value.contains(port_of(&backend)));
        // A backend that says when it is ready, or whose socket listens before it runs.
        let ready_backend = ordered_after(service).iter().any(|b| {
            set.get(b).is_some_and(|unit| {
                unit.get("Service", "Type")
                    .is_some_and(|t| t.value.starts_with("notify"))
                    || set.socket_of(unit).is_some()
            })
        });
        if polls || ready_backend {
            continue;
        }
        let mut evidence = vec![cite(exec)];
        evidence.extend(service.list("Unit", "After").iter().map(|e| cite(e)));
        Found {
            rule: "proxyd_without_ready_guard",
            severity: "warning",
            unit: Some(service.name.clone()),
            socket_unit: set.socket_of(service).map(|s| s.name.clone()),
            message: format!(
                "{} forwards to {backend} with systemd-socket-proxyd and nothing waits for {backend} to listen: the first connections after a cold start are refused.",
                service.name
            ),
            hint: format!(
                "Add ExecStartPre= that polls {backend} until it accepts (e.g. a loop on `ss -tln` or a connect attempt), or make the backend Type=notify and order the proxy After=/Requires= it; a fixed sleep is not a readiness wait."
            ),
            evidence,
            figures: json!({ "backend": backend }),
        }
        .push(out);
    }
}
