//! What several rules need to know, learned once from the stream: the time, the live processes
//! and how they were exec'd, systemd's listeners and the socket units that own them, which
//! service each socket unit starts, the last state of every unit, and the connections waiting
//! on a listener.
use std::collections::{BTreeSet, HashMap, HashSet};

use super::thresholds::Thresholds;
use crate::{
    clock::parse_rfc3339,
    events::{Data, Event, Finding, NumberOrString, Process, Unit},
};

/// A new main process that starts this soon after the previous one ended is that service's
/// restart (`systemctl restart`, or Restart= after RestartSec=, 100 ms by default); a later one
/// was started by a connection, a cold start.
pub const RESTART_WINDOW_NS: i128 = 1_000_000_000;

/// A connection accepted this soon after it was queued found its process ready (a blocking
/// accept or an event loop takes it within microseconds to a millisecond): it did not wait for
/// a start.
pub const READY_WAIT_NS: i128 = 5_000_000;

/// Whether a connection queued at `queued` and accepted at `accepted` waited for a process
/// started at `started`: it was queued before the start, or waited longer than a ready process
/// makes a connection wait.
pub fn waited_for_start(queued: i128, started: i128, accepted: i128) -> bool {
    queued <= started || accepted - queued >= READY_WAIT_NS
}

/// How many of a service's MainPID values are remembered: its exit may be read after systemd
/// already names the next one.
const MAIN_PIDS_KEPT: usize = 4;

/// One of systemd's listening sockets.
#[derive(Clone, Debug)]
pub struct Listening {
    pub socket_unit: Option<String>,
    pub inode: Option<u64>,
    /// The event that showed it: a `listener`, systemd's `listen`, or a unit's `resolved`.
    pub event: Event,
}

/// Connections waiting in a listener's accept queue that nobody has accepted since `since`.
#[derive(Clone, Debug)]
pub struct Waiting {
    /// When the queue became non-empty, or when the last accept on it happened.
    pub since: i128,
    pub depth: u32,
    pub socket_unit: Option<String>,
    pub inode: Option<u64>,
    /// The queue event that started the wait, and the latest one.
    pub first: Event,
    pub last: Event,
}

#[derive(Default)]
pub struct Context {
    pub thresholds: Thresholds,
    /// The time of the latest event or tick, Unix nanoseconds.
    pub now: i128,
    /// Live processes and the exec that made them what they are.
    execs: HashMap<u32, Event>,
    /// systemd's listeners by address.
    listeners: HashMap<String, Listening>,
    /// Socket unit -> the service it starts.
    triggers: HashMap<String, String>,
    /// The latest `unit` event of every unit.
    units: HashMap<String, Event>,
    /// Listener address -> connections waiting on it.
    waiting: HashMap<String, Waiting>,
    /// Service -> time of the last successful accept by one of its processes.
    last_accept: HashMap<String, i128>,
    /// Listener address -> time of the last accept on it (on systemd's socket, where the
    /// inodes tell).
    accepted_on: HashMap<String, i128>,
    /// Services seen not taking their fds, for a reason another rule names: a process bound
    /// an address systemd holds (double_bind) or got a LISTEN_PID not its own
    /// (listen_pid_mismatch). Until one of them accepts on a systemd listener.
    explained: HashSet<String>,
    /// Service -> the MainPIDs systemd named for it, newest last (PIDs in its namespace).
    main_pids: HashMap<String, Vec<u32>>,
    /// Service -> the exit of its latest main process.
    last_main_exit: HashMap<String, Event>,
    /// (unit, rule) -> when that rule last found an error about that unit.
    errors: HashMap<(String, String), i128>,
}

/// An event's time, Unix nanoseconds (0 when unreadable).
pub fn time_of(e: &Event) -> i128 {
    parse_rfc3339(&e.ts).unwrap_or(0)
}

/// systemd itself, or the helper it forks to bind a socket unit's address.
pub fn is_manager(e: &Event) -> bool {
    e.process
        .as_ref()
        .is_some_and(|p| p.comm == "systemd" || p.comm == "(sd-listen)")
}

/// A process's PID as it sees itself: LISTEN_PID is relative to its PID namespace.
pub fn own_pid(p: &Process) -> u32 {
    p.ns_pid.unwrap_or(p.pid)
}

/// LISTEN_FDS of an exec, when it is a positive number that a service manager or root set
/// (anyone can set LISTEN_*: untrusted values make no socket-activated service).
pub fn listen_fds(e: &Event) -> Option<u64> {
    match &e.data {
        Data::Exec(x) if !x.listen_trusted => None,
        Data::Exec(x) => match x.listen_fds {
            Some(NumberOrString::Number(n)) if n > 0 => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// What an exec with passed fds activated.
#[derive(Debug, PartialEq, Eq)]
pub enum Activated<'a> {
    /// A service (Accept=no).
    Service(&'a str),
    /// An Accept=yes instance of this socket unit.
    Instance(String),
}

/// The activation an event is, if it is one: an exec that received fds from systemd.
pub fn activated(e: &Event) -> Option<Activated<'_>> {
    listen_fds(e)?;
    let unit = unit_of(e)?;
    Some(match crate::systemd::template_socket_of(unit) {
        Some(socket) => Activated::Instance(socket),
        None => Activated::Service(unit),
    })
}

/// LISTEN_PID of an exec when it is a number.
pub fn listen_pid(e: &Event) -> Option<u64> {
    match &e.data {
        Data::Exec(x) => match x.listen_pid {
            Some(NumberOrString::Number(n)) => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// The unit of the process that caused an event.
pub fn unit_of(e: &Event) -> Option<&str> {
    e.process.as_ref().and_then(|p| p.unit.as_deref())
}

/// Whether an Accept=yes instance (`name@...service`) ran it: such instances get a connection,
/// not a listener.
pub fn is_instance(unit: &str) -> bool {
    crate::systemd::template_socket_of(unit).is_some()
}

impl Context {
    pub fn new(thresholds: Thresholds) -> Self {
        Context {
            thresholds,
            ..Default::default()
        }
    }

    /// Takes in what an event says, before the rules see it.
    pub fn learn(&mut self, e: &Event) {
        let t = time_of(e);
        self.now = self.now.max(t);
        match &e.data {
            Data::Exec(_) => {
                if let Some(p) = &e.process {
                    self.execs.insert(p.pid, e.clone());
                }
                if is_mismatched(e)
                    && let Some(unit) = unit_of(e)
                {
                    self.explained.insert(unit.to_owned());
                }
            }
            Data::Bind(b) if !is_manager(e) => {
                // An address systemd holds: from its listeners, or attribution matched it to a
                // socket unit's Listen= (a clash on some other port explains nothing).
                let systemds = self.listeners.contains_key(&b.endpoint.addr)
                    || e.process.as_ref().is_some_and(|p| p.socket_unit.is_some());
                if systemds && let Some(unit) = unit_of(e) {
                    self.explained.insert(unit.to_owned());
                }
            }
            Data::Listener(l) if l.action != "close" => {
                self.listeners.insert(
                    l.addr.clone(),
                    Listening {
                        socket_unit: l.socket_unit.clone(),
                        inode: l.inode,
                        event: e.clone(),
                    },
                );
            }
            Data::Listener(l) => {
                // A close seen late (sampled) after the address was listened on again is the
                // old socket's: the new one stays.
                let same =
                    |known: Option<u64>| known.is_none() || l.inode.is_none() || known == l.inode;
                if self.listeners.get(&l.addr).is_some_and(|k| same(k.inode)) {
                    self.listeners.remove(&l.addr);
                }
                if self.waiting.get(&l.addr).is_some_and(|w| same(w.inode)) {
                    self.waiting.remove(&l.addr);
                }
            }
            Data::Listen(l) if is_manager(e) && l.outcome.errno.is_none() => {
                let socket_unit = e.process.as_ref().and_then(|p| p.socket_unit.clone());
                self.listeners.insert(
                    l.endpoint.addr.clone(),
                    Listening {
                        socket_unit,
                        inode: l.socket.inode,
                        event: e.clone(),
                    },
                );
            }
            Data::Unit(u) => self.learn_unit(u, e),
            Data::Exit(_) => {
                if let Some(service) = self.main_exit(e) {
                    self.last_main_exit.insert(service, e.clone());
                }
            }
            Data::Queue(q) => {
                if q.depth == 0 {
                    self.waiting.remove(&q.listener);
                } else {
                    let w = self.waiting.entry(q.listener.clone()).or_insert(Waiting {
                        since: t,
                        depth: q.depth,
                        socket_unit: q.socket_unit.clone(),
                        inode: q.socket.inode,
                        first: e.clone(),
                        last: e.clone(),
                    });
                    w.depth = q.depth;
                    w.last = e.clone();
                }
            }
            Data::Accept(a) if a.outcome.errno.is_none() => {
                let on_systemds = self.on_systemds_listener(e);
                // Accept=yes instances are one a connection: keyed by name, they would pile up.
                if let Some(unit) = unit_of(e).filter(|u| !is_instance(u)) {
                    self.last_accept.insert(unit.to_owned(), t);
                    if on_systemds {
                        self.explained.remove(unit);
                    }
                }
                if let Some(addr) = a.listener.as_ref().filter(|_| on_systemds) {
                    self.accepted_on.insert(addr.clone(), t);
                }
                if let Some(addr) = &a.listener
                    && let Some(w) = self.waiting.get_mut(addr)
                    && (w.inode.is_none() || a.socket.inode.is_none() || w.inode == a.socket.inode)
                {
                    w.since = t;
                }
            }
            _ => {}
        }
    }

    /// Forgets what ended with an event, after the rules saw it.
    pub fn forget(&mut self, e: &Event) {
        if let (Data::Exit(_), Some(p)) = (&e.data, &e.process)
            && let Some(exec) = self.execs.remove(&p.pid)
            && is_main(&exec)
            && let Some(unit) = unit_of(&exec)
        {
            // The activation is over: what explained it ends with it.
            self.explained.remove(unit);
        }
    }

    /// Whether an accept took a connection from one of systemd's listeners (where the inodes
    /// tell; a listener not known to be systemd's counts, so that a trace started late still
    /// sees its service serve).
    pub fn on_systemds_listener(&self, e: &Event) -> bool {
        let Data::Accept(a) = &e.data else {
            return false;
        };
        match a.listener.as_deref().and_then(|l| self.listeners.get(l)) {
            Some(l) => l.inode.is_none() || a.socket.inode.is_none() || l.inode == a.socket.inode,
            None => a.listener.is_some(),
        }
    }

    /// Whether an accept served one of `service`'s own socket units: its listener is a systemd
    /// listener (where the inodes tell) whose socket unit starts `service`.
    pub fn serves_own_socket(&self, e: &Event, service: &str) -> bool {
        let Data::Accept(a) = &e.data else {
            return false;
        };
        let Some(l) = a.listener.as_deref().and_then(|l| self.listeners.get(l)) else {
            return false;
        };
        let same = l.inode.is_none() || a.socket.inode.is_none() || l.inode == a.socket.inode;
        same && l
            .socket_unit
            .as_deref()
            .and_then(|s| self.service_of(s))
            .is_some_and(|s| s == service)
    }

    fn learn_unit(&mut self, u: &Unit, e: &Event) {
        if let Some(pid) = u.main_pid.filter(|&p| p != 0) {
            let pids = self.main_pids.entry(u.unit.clone()).or_default();
            if pids.last() != Some(&pid) {
                if pids.len() == MAIN_PIDS_KEPT {
                    pids.remove(0);
                }
                pids.push(pid);
            }
        }
        if let Some(t) = u.triggers.as_ref().and_then(|t| t.first()) {
            self.triggers.insert(u.unit.clone(), t.clone());
        }
        // A socket unit that is not listening holds no address: its service may bind it.
        let listening = u.active_state == "active";
        for addr in u.listen.iter().flatten() {
            if listening {
                self.listeners
                    .entry(addr.clone())
                    .or_insert_with(|| Listening {
                        socket_unit: Some(u.unit.clone()),
                        inode: None,
                        event: e.clone(),
                    });
            }
        }
        if u.unit.ends_with(".socket") && matches!(u.active_state.as_str(), "inactive" | "failed") {
            self.listeners
                .retain(|_, l| l.socket_unit.as_deref() != Some(u.unit.as_str()));
            self.waiting
                .retain(|_, w| w.socket_unit.as_deref() != Some(u.unit.as_str()));
        }
        // A change carries the states; what `resolved` said of the unit is kept from it (a
        // new `resolved` replaces it whole).
        let mut latest = e.clone();
        if let (Some(Data::Unit(prev)), Data::Unit(now)) =
            (self.units.get(&u.unit).map(|p| &p.data), &mut latest.data)
            && now.change != "resolved"
        {
            keep(&mut now.triggers, &prev.triggers);
            keep(&mut now.listen, &prev.listen);
            keep(&mut now.accept, &prev.accept);
            keep(&mut now.part_of, &prev.part_of);
            keep(&mut now.max_connections, &prev.max_connections);
        }
        self.units.insert(u.unit.clone(), latest);
    }

    /// The service whose main process ended with this exit: a process exec'd with its fds and
    /// its own LISTEN_PID, or one systemd named as the service's MainPID (a process that
    /// started before the trace, whose exec was not seen).
    pub fn main_exit(&self, e: &Event) -> Option<String> {
        let (Data::Exit(_), Some(p)) = (&e.data, &e.process) else {
            return None;
        };
        // Accept=yes instances live for one connection: no restart to time, and keyed by
        // their names they would pile up.
        if let Some(exec) = self.execs.get(&p.pid) {
            return is_main(exec)
                .then(|| unit_of(exec).filter(|u| !is_instance(u)).map(str::to_owned))
                .flatten();
        }
        let unit = unit_of(e).filter(|u| !is_instance(u))?;
        self.main_pids
            .get(unit)
            .is_some_and(|pids| pids.contains(&own_pid(p)))
            .then(|| unit.to_owned())
    }

    /// The exit of the main process that `exec` (a new main process of `service`) restarts:
    /// the previous one ended at most [`RESTART_WINDOW_NS`] before.
    pub fn restarted_by(&self, service: &str, exec: &Event) -> Option<&Event> {
        let exit = self.last_main_exit.get(service)?;
        let gap = time_of(exec) - time_of(exit);
        (0..=RESTART_WINDOW_NS).contains(&gap).then_some(exit)
    }

    /// Takes note of what the rules found: a later rule can tell a symptom from its cause.
    pub fn note(&mut self, findings: &[Finding]) {
        for f in findings.iter().filter(|f| f.severity == "error") {
            if let Some(unit) = &f.unit {
                self.errors.insert((unit.clone(), f.rule.clone()), self.now);
            }
        }
    }

    /// Whether `rule` found an error about `unit` at or after `since`.
    pub fn reported_by(&self, unit: &str, since: i128, rule: &str) -> bool {
        self.errors
            .get(&(unit.to_owned(), rule.to_owned()))
            .is_some_and(|&t| t >= since)
    }

    /// The exec of a live process.
    pub fn exec_of(&self, pid: u32) -> Option<&Event> {
        self.execs.get(&pid)
    }

    /// Live processes of `service` exec'd with LISTEN_FDS, oldest first.
    pub fn activated(&self, service: &str) -> Vec<&Event> {
        let mut found: Vec<&Event> = self
            .execs
            .values()
            .filter(|e| unit_of(e) == Some(service) && listen_fds(e).is_some())
            .collect();
        found.sort_by_key(|e| time_of(e));
        found
    }

    /// Whether a process was exec'd with fds and a LISTEN_PID that is not its own: it cannot
    /// take them the way sd_listen_fds does.
    pub fn mismatched(&self, pid: u32) -> bool {
        self.execs.get(&pid).is_some_and(is_mismatched)
    }

    pub fn listener(&self, addr: &str) -> Option<&Listening> {
        self.listeners.get(addr)
    }

    /// The service a socket unit starts: what systemd said, else the socket's own name (the
    /// template, `name@.service`, for an Accept=yes socket).
    pub fn service_of(&self, socket_unit: &str) -> Option<String> {
        if let Some(s) = self.triggers.get(socket_unit) {
            return Some(s.clone());
        }
        let stem = socket_unit.strip_suffix(".socket")?;
        let accept = self
            .units
            .get(socket_unit)
            .is_some_and(|e| matches!(&e.data, Data::Unit(u) if u.accept == Some(true)));
        Some(if accept {
            format!("{stem}@.service")
        } else {
            format!("{stem}.service")
        })
    }

    /// The socket units known to start `service`.
    pub fn sockets_of(&self, service: &str) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .listeners
            .values()
            .filter_map(|l| l.socket_unit.clone())
            .chain(
                self.units
                    .keys()
                    .filter(|u| u.ends_with(".socket"))
                    .cloned(),
            )
            .filter(|s| self.service_of(s).as_deref() == Some(service))
            .collect();
        names.extend(
            self.triggers
                .iter()
                .filter(|(_, t)| t.as_str() == service)
                .map(|(s, _)| s.clone()),
        );
        names
    }

    /// The latest `unit` event of a unit.
    pub fn unit(&self, name: &str) -> Option<&Event> {
        self.units.get(name)
    }

    /// Every unit's latest event.
    pub fn units(&self) -> impl Iterator<Item = &Event> {
        self.units.values()
    }

    /// Listeners with connections waiting, by address.
    pub fn waiting(&self) -> impl Iterator<Item = (&String, &Waiting)> {
        self.waiting.iter()
    }

    /// Waiting connections on a listener of one of `service`'s socket units.
    pub fn waiting_for(&self, service: &str) -> Option<(&String, &Waiting)> {
        let mut found: Vec<(&String, &Waiting)> = self
            .waiting
            .iter()
            .filter(|(addr, w)| {
                self.socket_unit_of_listener(addr, w)
                    .as_deref()
                    .and_then(|s| self.service_of(s))
                    .as_deref()
                    == Some(service)
            })
            .collect();
        found.sort_by_key(|(_, w)| w.since);
        found.into_iter().next()
    }

    /// The socket unit that owns a listener: the one an event names, else the one known to
    /// hold the address.
    pub fn socket_unit_at(&self, addr: &str, named: Option<&String>) -> Option<String> {
        named
            .cloned()
            .or_else(|| self.listeners.get(addr).and_then(|l| l.socket_unit.clone()))
    }

    /// The socket unit and the service of a queue or drop event's listener.
    pub fn owner_of(&self, e: &Event) -> Option<(String, String)> {
        let (addr, named) = match &e.data {
            Data::Queue(q) => (&q.listener, q.socket_unit.as_ref()),
            Data::Drop(d) => (&d.listener, d.socket_unit.as_ref()),
            _ => return None,
        };
        let socket_unit = self.socket_unit_at(addr, named)?;
        let service = self.service_of(&socket_unit)?;
        Some((socket_unit, service))
    }

    /// The socket unit that owns a waiting listener.
    pub fn socket_unit_of_listener(&self, addr: &str, w: &Waiting) -> Option<String> {
        w.socket_unit
            .clone()
            .or_else(|| self.listeners.get(addr).and_then(|l| l.socket_unit.clone()))
    }

    /// Whether `service` is known not to take its fds for a reason another rule reports.
    pub fn explained(&self, service: &str) -> bool {
        self.explained.contains(service)
    }

    /// When a connection was last accepted on a listener.
    pub fn last_accept_on(&self, addr: &str) -> Option<i128> {
        self.accepted_on.get(addr).copied()
    }

    /// When a process of `service` last accepted a connection.
    pub fn last_accept(&self, service: &str) -> Option<i128> {
        self.last_accept.get(service).copied()
    }
}

/// Keeps an earlier value where a later event has none.
fn keep<T: Clone>(now: &mut Option<T>, prev: &Option<T>) {
    if now.is_none() {
        now.clone_from(prev);
    }
}

/// Whether an exec made a service's main process: fds passed, LISTEN_PID its own.
pub fn is_main(exec: &Event) -> bool {
    listen_fds(exec).is_some() && !is_mismatched(exec)
}

/// Whether an exec passed fds with a LISTEN_PID that is not the process's own.
pub fn is_mismatched(exec: &Event) -> bool {
    let (Some(p), Some(pid)) = (&exec.process, listen_pid(exec)) else {
        return false;
    };
    listen_fds(exec).is_some() && pid != own_pid(p) as u64
}
