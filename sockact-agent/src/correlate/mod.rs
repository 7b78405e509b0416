//! Who an event belongs to: the unit of the process (its cgroup), the socket unit of the
//! listener, from what systemd said (the catalog) and what /proc says. Pure but for the cgroup
//! lookup, which is handed in.
pub mod queue;
pub mod snapshot;
pub mod sock_diag;

use std::collections::HashMap;

use crate::{
    events::{Data, Event, Listener},
    systemd::{Catalog, unit_of_cgroup},
};

/// The cgroup of a process, as `/proc/PID/cgroup` says (None when it is gone).
pub type CgroupLookup<'a> = &'a dyn Fn(u32) -> Option<String>;

#[derive(Default)]
pub struct Attribution {
    pub catalog: Catalog,
    /// PID -> cgroup path (None: not in a unit), remembered from the first event of a
    /// process: a short-lived one may be gone from /proc when a later event of it is handled,
    /// and reading /proc for every event of a busy server would cost more than the rest.
    cgroups: HashMap<u32, Option<String>>,
}

impl Attribution {
    pub fn new(catalog: Catalog) -> Self {
        Attribution {
            catalog,
            cgroups: HashMap::new(),
        }
    }

    fn cgroup(&mut self, pid: u32, ppid: Option<u32>, lookup: CgroupLookup<'_>) -> Option<String> {
        if let Some(cg) = self.cgroups.get(&pid) {
            return cg.clone();
        }
        let found =
            lookup(pid).or_else(|| ppid.and_then(|pp| self.cgroups.get(&pp).cloned().flatten()));
        self.cgroups.insert(pid, found.clone());
        found
    }

    /// Fills `unit`, `socket_unit` and `cgroup` (DESIGN.md: listener events carry the socket
    /// unit owning the listener; process events carry it only when the service has exactly one).
    pub fn enrich(&mut self, e: &mut Event, lookup: CgroupLookup<'_>) {
        let Some(p) = e.process.as_ref() else { return };
        let (pid, ppid) = (p.pid, p.ppid);
        let cgroup = self.cgroup(pid, ppid, lookup);
        let unit = cgroup
            .as_deref()
            .and_then(unit_of_cgroup)
            .map(str::to_owned);
        let listener = match &e.data {
            Data::Bind(b) => Some(b.endpoint.addr.as_str()),
            Data::Listen(l) => Some(l.endpoint.addr.as_str()),
            Data::Accept(a) => a.listener.as_deref(),
            Data::Shutdown(s) => s.listener.as_deref(),
            _ => None,
        };
        let socket_unit = match listener {
            Some(addr) => self
                .catalog
                .socket_listening_on(addr)
                .map(|s| s.name.clone()),
            None => unit.as_deref().and_then(|u| {
                let sockets = self.catalog.sockets_of(u);
                (sockets.len() == 1).then(|| sockets[0].name.clone())
            }),
        };
        if matches!(e.data, Data::Exit(_)) {
            self.cgroups.remove(&pid);
        }
        let p = e.process.as_mut().expect("checked above");
        p.cgroup = cgroup;
        p.unit = unit;
        p.socket_unit = socket_unit;
    }
}

/// The `listener` open event of a successful listen() by systemd: a socket unit's listener
/// appeared. `backlog` is the kernel's effective one (Backlog= capped by somaxconn).
pub fn opened_listener(e: &Event, backlog: Option<u32>) -> Option<Data> {
    let Data::Listen(l) = &e.data else {
        return None;
    };
    if !crate::detect::context::is_manager(e) || l.outcome.errno.is_some() {
        return None;
    }
    Some(Data::Listener(Listener {
        action: "open".into(),
        addr: l.endpoint.addr.clone(),
        family: l.endpoint.family.clone(),
        backlog,
        inode: l.socket.inode,
        socket_unit: e.process.as_ref().and_then(|p| p.socket_unit.clone()),
    }))
}

/// The cgroup path in a `/proc/PID/cgroup` text that names a unit: the unified hierarchy's
/// (`0::`) when it does, else systemd's own v1 hierarchy's (`name=systemd`, hybrid hosts).
pub fn cgroup_from_proc(text: &str) -> Option<String> {
    let mut fallback = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let names_unit = unit_of_cgroup(path).is_some();
        if id == "0" && controllers.is_empty() && names_unit {
            return Some(path.to_owned());
        }
        if controllers == "name=systemd" && names_unit {
            fallback = Some(path.to_owned());
        }
    }
    fallback
}

/// Reads a process's cgroup from /proc.
pub fn proc_cgroup(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|t| cgroup_from_proc(&t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{Accept, Exec, Outcome, Process, SocketId},
        systemd::SocketUnit,
    };

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        for (name, addr) in [
            ("echo.socket", "127.0.0.1:7"),
            ("echo-admin.socket", "127.0.0.1:8"),
        ] {
            c.sockets.insert(
                name.into(),
                SocketUnit {
                    name: name.into(),
                    listen: vec![("Stream".into(), addr.into())],
                    triggers: vec!["echo.service".into()],
                    ..Default::default()
                },
            );
        }
        c.sockets.insert(
            "solo.socket".into(),
            SocketUnit {
                name: "solo.socket".into(),
                triggers: vec!["solo.service".into()],
                ..Default::default()
            },
        );
        c
    }

    fn event(pid: u32, data: Data) -> Event {
        Event {
            v: 1,
            seq: 0,
            ts: String::new(),
            host: String::new(),
            data,
            process: Some(Process {
                pid,
                comm: "x".into(),
                ..Default::default()
            }),
        }
    }

    fn accept_on(listener: &str) -> Data {
        Data::Accept(Accept {
            listen_fd: 3,
            fd: Some(4),
            addr: None,
            listener: Some(listener.into()),
            wait_us: None,
            outcome: Outcome {
                ret: 4,
                errno: None,
            },
            socket: SocketId {
                inode: None,
                netns: None,
            },
        })
    }

    fn exec() -> Data {
        Data::Exec(Exec {
            filename: "/x".into(),
            argv: vec![],
            listen_pid: None,
            listen_fds: None,
            listen_fdnames: None,
            argv_truncated: false,
            listen_fdnames_truncated: false,
            listen_trusted: true,
        })
    }

    #[test]
    fn accepts_carry_the_socket_unit_of_their_listener() {
        let mut a = Attribution::new(catalog());
        let lookup = |_| Some("/machine/system.slice/echo.service".to_owned());
        let mut e = event(10, accept_on("127.0.0.1:8"));
        a.enrich(&mut e, &lookup);
        let p = e.process.unwrap();
        assert_eq!(p.unit.as_deref(), Some("echo.service"));
        assert_eq!(p.socket_unit.as_deref(), Some("echo-admin.socket"));
        assert_eq!(
            p.cgroup.as_deref(),
            Some("/machine/system.slice/echo.service")
        );
    }

    #[test]
    fn process_events_carry_a_socket_unit_only_when_there_is_one() {
        let mut a = Attribution::new(catalog());
        let mut two = event(10, exec());
        a.enrich(&mut two, &|_| Some("/system.slice/echo.service".into()));
        assert_eq!(two.process.unwrap().socket_unit, None);
        let mut one = event(11, exec());
        a.enrich(&mut one, &|_| Some("/system.slice/solo.service".into()));
        assert_eq!(
            one.process.unwrap().socket_unit.as_deref(),
            Some("solo.socket")
        );
    }

    #[test]
    fn a_process_gone_from_proc_keeps_its_unit_or_takes_its_parents() {
        let mut a = Attribution::new(catalog());
        let mut first = event(20, exec());
        a.enrich(&mut first, &|_| Some("/system.slice/solo.service".into()));
        let mut later = event(20, accept_on("127.0.0.1:9"));
        a.enrich(&mut later, &|_| None);
        assert_eq!(later.process.unwrap().unit.as_deref(), Some("solo.service"));
        let mut child = event(21, exec());
        child.process.as_mut().unwrap().ppid = Some(20);
        a.enrich(&mut child, &|_| None);
        assert_eq!(child.process.unwrap().unit.as_deref(), Some("solo.service"));
    }

    #[test]
    fn cgroup_files_of_unified_and_hybrid_hosts() {
        let unified = "0::/system.slice/echo.service\n";
        assert_eq!(
            cgroup_from_proc(unified).as_deref(),
            Some("/system.slice/echo.service")
        );
        let hybrid = "9:name=systemd:/m/system.slice/echo.service\n4:memory:/x\n0::/\n";
        assert_eq!(
            cgroup_from_proc(hybrid).as_deref(),
            Some("/m/system.slice/echo.service")
        );
        assert_eq!(cgroup_from_proc("0::/\n"), None);
    }
}
