//! `listen_pid_mismatch` (research/failure-modes.md P1, P2, P3): LISTEN_PID names a process
//! that never serves the fds, while another process of the service got them: a shell or a
//! launcher that forks the server instead of exec'ing it, a daemon that forks after exec, a
//! PID namespace in between. The server sees a LISTEN_PID that is not its own, ignores the fds
//! as sd_listen_fds() must, and binds by itself or serves nothing.
//!
//! A parent that takes the fds and forks workers that inherit LISTEN_* is fine: someone serves
//! the fds. So the rule fires only while no process of the service has accepted since the
//! mismatched exec, and only on proof that the fds are not taken: the mismatched process binds
//! an address systemd holds, or a connection waits `fds_ignored.after_ms` unserved.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Rule,
    context::{
        Context, is_instance, is_main, is_mismatched, listen_pid, own_pid, time_of, unit_of,
    },
    evidence, figures, millis,
};
use crate::events::{Data, Event, Finding};

/// How many execs of a service are kept to find the one LISTEN_PID names.
const KEEP_EXECS: usize = 16;

#[derive(Default)]
pub struct ListenPidMismatch {
    /// Service -> its latest execs.
    execs: HashMap<String, Vec<Event>>,
    /// Service -> the latest exec whose LISTEN_PID was not the process's own, unserved so far.
    mismatched: HashMap<String, Event>,
    /// Services reported since they last served a connection.
    reported: HashSet<String>,
}

impl ListenPidMismatch {
    fn report(&mut self, ctx: &Context, service: &str, trigger: &Event, out: &mut Vec<Finding>) {
        let Some(exec) = self.mismatched.get(service) else {
            return;
        };
        if ctx.last_accept(service).is_some_and(|t| t >= time_of(exec))
            || !self.reported.insert(service.to_owned())
        {
            return;
        }
        let (Some(p), Some(named)) = (&exec.process, listen_pid(exec)) else {
            return;
        };
        let expected = own_pid(p);
        // The process LISTEN_PID names, as its own namespace numbers it.
        let named_exec = self.execs.get(service).and_then(|execs| {
            execs.iter().rev().find(|e| {
                e.process
                    .as_ref()
                    .is_some_and(|q| own_pid(q) as u64 == named)
            })
        });
        let named_what = named_exec.and_then(|e| e.process.as_ref()).map_or_else(
            || format!("process {named}"),
            |q| format!("{} ({named})", q.comm),
        );
        let how = match &trigger.data {
            Data::Bind(b) => format!("binds {} itself", b.endpoint.addr),
            _ => "serves nothing while connections wait".into(),
        };
        let mut proof: Vec<&Event> = Vec::new();
        proof.extend(named_exec);
        proof.push(exec);
        proof.push(trigger);
        out.push(Finding {
            rule: "listen_pid_mismatch".into(),
            severity: "error".into(),
            unit: Some(service.to_owned()),
            socket_unit: trigger
                .process
                .as_ref()
                .and_then(|t| t.socket_unit.clone())
                .or_else(|| p.socket_unit.clone())
                .or_else(|| {
                    let sockets = ctx.sockets_of(service);
                    (sockets.len() == 1).then(|| sockets.into_iter().next()).flatten()
                }),
            message: format!(
                "{} ({expected}) got the fds with LISTEN_PID={named}, which names {named_what}, so it ignores them and {how}.",
                p.comm
            ),
            hint: "Let the server keep the PID systemd started: exec it (ExecStart=/bin/sh -c 'exec server', `exec` at the end of a wrapper script, no daemonizing fork), or have the launcher set LISTEN_PID to the child's PID in its own PID namespace before it execs.".into(),
            evidence: evidence(&proof),
            figures: figures(json!({ "listen_pid": named, "expected_pid": expected })),
        });
    }
}

impl Rule for ListenPidMismatch {
    fn observe(&mut self, ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        // Accept=yes instances get a connection, not listeners: nothing to mismatch.
        let Some(service) = unit_of(e).filter(|u| !is_instance(u)).map(str::to_owned) else {
            return;
        };
        match &e.data {
            Data::Exec(_) => {
                let execs = self.execs.entry(service.clone()).or_default();
                if execs.len() == KEEP_EXECS {
                    execs.remove(0);
                }
                execs.push(e.clone());
                if is_mismatched(e) {
                    self.mismatched.insert(service, e.clone());
                }
            }
            Data::Accept(a) if a.outcome.errno.is_none() && ctx.on_systemds_listener(e) => {
                self.reported.remove(&service);
                self.mismatched.remove(&service);
            }
            Data::Exit(_) => {
                let Some(p) = &e.process else { return };
                // The mismatched process is gone (a helper that inherited LISTEN_*), or the
                // activation is over.
                let gone = self
                    .mismatched
                    .get(&service)
                    .and_then(|x| x.process.as_ref())
                    .is_some_and(|x| x.pid == p.pid);
                if gone || ctx.exec_of(p.pid).is_some_and(is_main) {
                    self.mismatched.remove(&service);
                }
            }
            Data::Bind(b) => {
                let Some(p) = &e.process else { return };
                if !ctx.mismatched(p.pid) {
                    return;
                }
                let systemds = ctx.listener(&b.endpoint.addr).is_some()
                    || b.outcome.errno.as_deref() == Some("EADDRINUSE");
                if systemds {
                    self.report(ctx, &service, e, out);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        let after_ms = ctx.thresholds.get("fds_ignored", "after_ms");
        let due: Vec<(String, Event)> = self
            .mismatched
            .iter()
            .filter(|(service, _)| !self.reported.contains(*service))
            .filter_map(|(service, exec)| {
                let (_, w) = ctx.waiting_for(service)?;
                let waited = millis(w.since.max(time_of(exec)), ctx.now);
                (waited >= after_ms).then(|| (service.clone(), w.last.clone()))
            })
            .collect();
        for (service, queue) in due {
            self.report(ctx, &service, &queue, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::testing::{of_rule, problems, replay, rules};

    #[test]
    fn wrappers_that_fork_the_server_and_workers_that_serve() {
        // Recorded on the test bed: tests/scenarios/wrappers, no selector: a shell wrapper and
        // a launcher fork the server; a parent forks workers that inherit the fds and serve.
        let findings = problems(&replay(include_str!(
            "../../../tests/fixtures/listen_pid_mismatch.ndjson"
        )));
        // The wrapped servers die again and again until systemd gives up their sockets.
        assert_eq!(
            rules(&findings),
            ["listen_pid_mismatch", "listener_lost"],
            "{findings:?}"
        );
        let findings = of_rule(&findings, "listen_pid_mismatch");
        let mut units: Vec<&str> = findings.iter().filter_map(|f| f.unit.as_deref()).collect();
        units.sort();
        assert_eq!(
            units,
            ["launcher.service", "shwrap.service"],
            "{findings:?}"
        );
        for f in &findings {
            assert_ne!(f.figures["listen_pid"], f.figures["expected_pid"]);
            assert!(f.evidence.iter().any(|e| e["kind"] == "bind"));
            assert!(
                f.evidence.iter().filter(|e| e["kind"] == "exec").count() == 2,
                "{f:?}"
            );
        }
    }
}
