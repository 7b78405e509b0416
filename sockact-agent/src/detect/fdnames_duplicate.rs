//! `fdnames_duplicate` (research/failure-modes.md N2): LISTEN_FDNAMES carries one name for
//! several fds. FileDescriptorName= names every fd of its socket unit, so two Listen*= lines in
//! one socket unit share a name and an app that looks its sockets up by name finds only one.
use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::{Rule, evidence};
use crate::events::{Data, Event, Finding};

#[derive(Default)]
pub struct FdnamesDuplicate {
    /// (unit or filename, names) already reported.
    reported: HashSet<(String, Vec<String>)>,
}

impl Rule for FdnamesDuplicate {
    fn observe(&mut self, e: &Event, out: &mut Vec<Finding>) {
        let Data::Exec(x) = &e.data else { return };
        let Some(names) = &x.listen_fdnames else {
            return;
        };
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for n in names {
            *count.entry(n.as_str()).or_default() += 1;
        }
        let shared: Vec<String> = count
            .iter()
            .filter(|&(_, &c)| c > 1)
            .map(|(n, _)| (*n).to_owned())
            .collect();
        if shared.is_empty() {
            return;
        }
        let p = e.process.as_ref();
        let who = p
            .and_then(|p| p.unit.clone())
            .unwrap_or_else(|| x.filename.clone());
        if !self.reported.insert((who.clone(), names.clone())) {
            return;
        }
        let mut figures = serde_json::Map::new();
        figures.insert("names".into(), json!(shared));
        figures.insert("fds".into(), json!(names.len()));
        out.push(Finding {
            rule: "fdnames_duplicate".into(),
            severity: "warning".into(),
            unit: p.and_then(|p| p.unit.clone()),
            socket_unit: p.and_then(|p| p.socket_unit.clone()),
            message: format!(
                "{who} gets {} fds named {}: an app that looks its sockets up by name finds only one of them.",
                names.len(),
                x.listen_fdnames.as_ref().map(|n| n.join(":")).unwrap_or_default()
            ),
            hint: "Give each address its own socket unit with its own FileDescriptorName= and Service= pointing at the service (FileDescriptorName= names every fd of its unit).".into(),
            evidence: evidence(&[e]),
            figures,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Exec, NumberOrString, Process};

    fn exec(names: &[&str]) -> Event {
        Event {
            v: 1,
            seq: 1,
            ts: String::new(),
            host: String::new(),
            data: Data::Exec(Exec {
                filename: "/usr/bin/python3".into(),
                argv: vec![],
                listen_pid: Some(NumberOrString::Number(7)),
                listen_fds: Some(NumberOrString::Number(names.len() as u64)),
                listen_fdnames: Some(names.iter().map(|s| s.to_string()).collect()),
            }),
            process: Some(Process {
                pid: 7,
                comm: "python3".into(),
                unit: Some("x.service".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn must_not_fire_on_distinct_names_or_one_accepted_connection() {
        let mut r = FdnamesDuplicate::default();
        let mut out = Vec::new();
        r.observe(&exec(&["web", "admin"]), &mut out);
        r.observe(&exec(&["connection"]), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_recorded_two_address_socket_unit() {
        // Recorded on the test bed: tests/scenarios/fdnames, `sockact-trace --unit twice`.
        let mut engine = crate::detect::Engine::default();
        let mut found = Vec::new();
        let fixture = include_str!("../../../tests/fixtures/fdnames_duplicate.ndjson");
        for line in fixture.lines() {
            let e: Event = serde_json::from_str(line).unwrap();
            found.extend(engine.observe(&e));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule, "fdnames_duplicate");
        assert_eq!(found[0].unit.as_deref(), Some("twice.service"));
    }

    #[test]
    fn fires_once_per_unit_and_names() {
        let mut r = FdnamesDuplicate::default();
        let mut out = Vec::new();
        r.observe(&exec(&["admin", "admin"]), &mut out);
        r.observe(&exec(&["admin", "admin"]), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].figures["names"], json!(["admin"]));
        assert_eq!(out[0].figures["fds"], 2);
        assert_eq!(out[0].severity, "warning");
    }
}
