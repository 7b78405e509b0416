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

/// Restart= that systemd's start limit never stops: the limit switched off
/// (`StartLimitIntervalSec=0` or `StartLimitBurst=0`), or restarts spaced so far apart that no
/// burst of them fits in its interval (`RestartSec=` x burst >= interval: with the defaults, 5
/// starts in 10 s, a `RestartSec=` of 2 s or more). Such a service is restarted without end and
/// never fails, and neither does its socket.
fn no_start_limit(service: &UnitFile, socket: Option<&UnitFile>, out: &mut Vec<Finding>) {
    let Some(restart) = service
        .get("Service", "Restart")
        .filter(|e| e.value != "no")
    else {
        return;
    };
    // [Service] holds the old spellings, still read.
    let setting = |new: &str, old: &str| {
        service
            .get("Unit", new)
            .or_else(|| service.get("Service", old))
    };
    let interval = setting("StartLimitIntervalSec", "StartLimitInterval");
    let burst = setting("StartLimitBurst", "StartLimitBurst");
    let restart_sec = service.get("Service", "RestartSec");
    let interval_us = interval.map_or(Some(10_000_000), |e| time_span_us(&e.value));
    let burst_n = burst.map_or(Some(5), |e| e.value.trim().parse::<u64>().ok());
    let restart_us = restart_sec.map_or(Some(100_000), |e| time_span_us(&e.value));
    let (Some(interval_us), Some(burst_n), Some(restart_us)) = (interval_us, burst_n, restart_us)
    else {
        return;
    };
    let (why, mut evidence) = if interval_us == 0 || burst_n == 0 {
        let off = [interval, burst]
            .into_iter()
            .flatten()
            .find(|e| e.value.trim().trim_end_matches('s') == "0")
            .map_or_else(|| cite(restart), cite);
        ("its start limit switched off".to_owned(), vec![off])
    } else if restart_us.saturating_mul(burst_n) >= interval_us {
        let cited: Vec<_> = [restart_sec, interval, burst]
            .into_iter()
            .flatten()
            .map(cite)
            .collect();
        (
            format!(
                "restarts {} apart: {burst_n} of them never fit in the start limit's {}",
                show_us(restart_us),
                show_us(interval_us)
            ),
            cited,
        )
    } else {
        return;
    };
    evidence.insert(0, cite(restart));
    evidence.dedup();
    Found {
        rule: "no_start_limit",
        severity: "info",
        unit: Some(service.name.clone()),
        socket_unit: socket.map(|s| s.name.clone()),
        message: format!(
            "{} has Restart={} and {why}, so a service that cannot start is restarted without end and never fails.",
            service.name, restart.value
        ),
        hint: "Keep a start limit the restarts can reach: StartLimitIntervalSec= longer than StartLimitBurst= x RestartSec= (systemd's default is 5 starts in 10 s), so that a crash loop stops, and is seen.".into(),
        evidence,
        figures: json!({ "restart_sec_ms": restart_us / 1000, "interval_ms": interval_us / 1000, "burst": burst_n }),
    }
    .push(out);
}

/// A systemd time span (systemd.time(7)) in microseconds: `2`, `500ms`, `1min 30s`, `5 s`;
/// none for `infinity` or what does not parse.
fn time_span_us(value: &str) -> Option<u64> {
    let value = value.trim();
    if value == "infinity" || value.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = value;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale: f64 = match &rest[..unit_len] {
            "us" | "usec" => 1.0,
            "ms" | "msec" => 1e3,
            "" | "s" | "sec" | "second" | "seconds" => 1e6,
            "m" | "min" | "minute" | "minutes" => 60e6,
            "h" | "hr" | "hour" | "hours" => 3600e6,
            "d" | "day" | "days" => 86400e6,
            _ => return None,
        };
        total = total.saturating_add((number * scale) as u64);
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn show_us(us: u64) -> String {
    if us.is_multiple_of(1_000_000) {
        format!("{} s", us / 1_000_000)
    } else {
        format!("{} ms", us / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spans_read_as_systemd_reads_them() {
        assert_eq!(time_span_us("2"), Some(2_000_000));
        assert_eq!(time_span_us("500ms"), Some(500_000));
        assert_eq!(time_span_us("1min 30s"), Some(90_000_000));
        assert_eq!(time_span_us("0"), Some(0));
        assert_eq!(time_span_us("infinity"), None);
        assert_eq!(time_span_us("soon"), None);
    }

    fn limit_findings(service: &str) -> Vec<Finding> {
        let set = UnitSet::from_texts(&[("x.service", service)]);
        let mut out = Vec::new();
        no_start_limit(set.get("x.service").unwrap(), None, &mut out);
        out
    }

    #[test]
    fn a_start_limit_the_restarts_never_reach_or_one_switched_off() {
        let restart = "[Service]\nExecStart=/bin/x\nRestart=on-failure\n";
        assert!(
            limit_findings(restart).is_empty(),
            "the defaults stop a crash loop"
        );
        assert_eq!(limit_findings(&format!("{restart}RestartSec=2\n")).len(), 1);
        assert!(limit_findings(&format!("{restart}RestartSec=1\n")).is_empty());
        let off = format!("[Unit]\nStartLimitIntervalSec=0\n{restart}");
        assert_eq!(limit_findings(&off).len(), 1);
        // A longer interval that the spaced restarts do reach.
        let wide =
            format!("[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=3\n{restart}RestartSec=2\n");
        assert!(limit_findings(&wide).is_empty());
        // infinity is the strictest interval, not none.
        let never = format!("[Unit]\nStartLimitIntervalSec=infinity\n{restart}");
        assert!(limit_findings(&never).is_empty());
    }
}
