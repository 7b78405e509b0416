//! Userspace selectors (`--pid`, `--port`): the kernel keeps a superset (every watched process,
//! selected pids and their children, selected ports); this narrows it to what was asked for.
use std::collections::HashSet;

use crate::{
    events::{Data, Event},
    systemd::resolve::stem,
};

#[derive(Debug, Default)]
pub struct Selector {
    pids: HashSet<u32>,
    ports: HashSet<u16>,
    /// `--unit`: the services, and the socket units that trigger them.
    services: HashSet<String>,
    sockets: HashSet<String>,
    /// Units never shown, as named (`noisy`, `noisy.service`, `noisy.socket`).
    excluded: HashSet<String>,
}

impl Selector {
    pub fn new(pids: &[u32], ports: &[u16]) -> Self {
        Selector {
            pids: pids.iter().copied().collect(),
            ports: ports.iter().copied().collect(),
            ..Default::default()
        }
    }

    /// Adds a resolved `--unit`.
    pub fn add_unit(&mut self, service: &str, sockets: &[String]) {
        self.services.insert(service.to_owned());
        self.sockets.extend(sockets.iter().cloned());
    }

    /// Units never to show, whatever else selects them.
    pub fn exclude(&mut self, units: &[String]) {
        self.excluded = units.iter().cloned().collect();
    }

    /// Forgets every `--unit` (before the agent's reload adds the new list).
    pub fn clear_units(&mut self) {
        self.services.clear();
        self.sockets.clear();
    }

    fn is_excluded(&self, unit: &str) -> bool {
        if self.excluded.is_empty() {
            return false;
        }
        let named = |u: &str| self.excluded.contains(u) || self.excluded.contains(stem(u));
        // An Accept=yes instance goes with its socket unit.
        named(unit) || crate::systemd::template_socket_of(unit).is_some_and(|s| named(&s))
    }

    /// Whether the event is about an excluded unit.
    fn excludes(&self, e: &Event) -> bool {
        if self.excluded.is_empty() {
            return false;
        }
        let about = match &e.data {
            Data::Unit(u) => Some(u.unit.as_str()),
            Data::Listener(l) => l.socket_unit.as_deref(),
            Data::Queue(q) => q.socket_unit.as_deref(),
            Data::Drop(d) => d.socket_unit.as_deref(),
            Data::Finding(f) => f.unit.as_deref().or(f.socket_unit.as_deref()),
            _ => None,
        };
        about.is_some_and(|u| self.is_excluded(u))
            || e.process.as_ref().is_some_and(|p| {
                p.unit.as_deref().is_some_and(|u| self.is_excluded(u))
                    || p.socket_unit
                        .as_deref()
                        .is_some_and(|u| self.is_excluded(u))
            })
    }

    fn wants_unit(&self, unit: &str) -> bool {
        if self.services.contains(unit) || self.sockets.contains(unit) {
            return true;
        }
        // An Accept=yes instance belongs to its socket unit.
        crate::systemd::template_socket_of(unit).is_some_and(|s| self.sockets.contains(&s))
    }

    /// No selector: everything the kernel kept is wanted.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.ports.is_empty() && self.services.is_empty()
    }

    /// Whether to show an event; `watch` is the process's watch bits from the kernel, where
    /// a `--pid` selection follows every descendant.
    pub fn wants(&self, e: &Event, watch: u32) -> bool {
        if self.excludes(e) {
            return false;
        }
        if self.is_empty() {
            return true;
        }
        if !self.pids.is_empty() {
            if watch & sockact_common::watch::SELECTED != 0 {
                return true;
            }
            if e.process
                .as_ref()
                .is_some_and(|p| self.pids.contains(&p.pid))
            {
                return true;
            }
        }
        if !self.services.is_empty() {
            match &e.data {
                Data::Unit(u) if self.wants_unit(&u.unit) => return true,
                Data::Listener(l)
                    if l.socket_unit.as_deref().is_some_and(|s| self.wants_unit(s)) =>
                {
                    return true;
                }
                Data::Queue(q) if q.socket_unit.as_deref().is_some_and(|s| self.wants_unit(s)) => {
                    return true;
                }
                Data::Drop(d) if d.socket_unit.as_deref().is_some_and(|s| self.wants_unit(s)) => {
                    return true;
                }
                _ => {}
            }
            if let Some(p) = &e.process
                && (p.unit.as_deref().is_some_and(|u| self.wants_unit(u))
                    || p.socket_unit
                        .as_deref()
                        .is_some_and(|s| self.sockets.contains(s)))
            {
                return true;
            }
        }
        match event_port(&e.data) {
            Some(port) => self.ports.contains(&port),
            None => matches!(e.data, Data::Lost(_) | Data::Agent(_)),
        }
    }
}

/// The local or remote port an event is about.
fn event_port(d: &Data) -> Option<u16> {
    let port_of = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
    match d {
        Data::Bind(b) => b.endpoint.port,
        Data::Listen(l) => l.endpoint.port,
        Data::Connect(c) => c.endpoint.port,
        Data::Accept(a) => a.listener.as_deref().and_then(port_of),
        Data::Shutdown(s) => s.listener.as_deref().and_then(port_of),
        Data::Queue(q) => port_of(&q.listener),
        Data::Drop(d) => port_of(&d.listener),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Vec<Event> {
        include_str!("../../tests/fixtures/healthy_all.ndjson")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a v1 event"))
            .collect()
    }

    fn units_of(e: &Event) -> Vec<&str> {
        let mut u = Vec::new();
        match &e.data {
            Data::Unit(x) => u.push(x.unit.as_str()),
            Data::Listener(l) => u.extend(l.socket_unit.as_deref()),
            Data::Queue(q) => u.extend(q.socket_unit.as_deref()),
            _ => {}
        }
        if let Some(p) = &e.process {
            u.extend(p.unit.as_deref());
            u.extend(p.socket_unit.as_deref());
        }
        u
    }

    #[test]
    fn excluded_units_are_never_shown_the_rest_is() {
        let events = recorded();
        let mut s = Selector::default();
        s.exclude(&["echo".into(), "dbus.socket".into()]);
        let shown: Vec<&Event> = events.iter().filter(|e| s.wants(e, 0)).collect();
        let about = |name: &str| shown.iter().any(|e| units_of(e).contains(&name));
        assert!(!about("echo.service") && !about("echo.socket") && !about("dbus.socket"));
        // echo-admin.socket is not echo.socket: shown, except what its echo.service did.
        assert!(
            about("echo-admin.socket") && about("dbus.service") && about("systemd-journald.socket")
        );
        assert!(
            shown.iter().all(|e| !matches!(e.data, Data::Accept(_))),
            "every accept was echo.service's"
        );
        s.exclude(&[]);
        assert_eq!(
            events.iter().filter(|e| s.wants(e, 0)).count(),
            events.len()
        );
    }

    #[test]
    fn an_excluded_unit_wins_over_a_selected_one() {
        let events = recorded();
        let mut s = Selector::default();
        s.add_unit(
            "echo.service",
            &["echo.socket".into(), "echo-admin.socket".into()],
        );
        let selected = events.iter().filter(|e| s.wants(e, 0)).count();
        s.exclude(&["echo-admin.socket".into()]);
        let fewer = events.iter().filter(|e| s.wants(e, 0)).count();
        assert!(fewer < selected, "{fewer} < {selected}");
        s.clear_units();
        assert!(s.is_empty());
    }
}
