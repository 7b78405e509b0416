//! Userspace selectors (`--pid`, `--port`): the kernel keeps a superset (every watched process,
//! selected pids and their children, selected ports); this narrows it to what was asked for.
use std::collections::HashSet;

use crate::events::{Data, Event};

#[derive(Debug, Default)]
pub struct Selector {
    pids: HashSet<u32>,
    ports: HashSet<u16>,
    /// `--unit`: the services, and the socket units that trigger them.
    services: HashSet<String>,
    sockets: HashSet<String>,
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
