//! `fdnames_duplicate` (research/failure-modes.md N2): LISTEN_FDNAMES carries one name for
//! several fds. FileDescriptorName= names every fd of its socket unit, so two Listen*= lines in
//! one socket unit share a name and an app that looks its sockets up by name finds only one.
use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::{Rule, context::Context, evidence};
use crate::events::{Data, Event, Finding};

#[derive(Default)]
pub struct FdnamesDuplicate {
    /// (unit or filename, names) already reported.
    reported: HashSet<(String, Vec<String>)>,
}

impl Rule for FdnamesDuplicate {
    fn observe(&mut self, _ctx: &Context, e: &Event, out: &mut Vec<Finding>) {
        let Data::Exec(x) = &e.data else { return };
        // Cut names are not the names: the last one is a fragment.
        let Some(names) = x
            .listen_fdnames
            .as_ref()
            .filter(|_| !x.listen_fdnames_truncated && x.listen_trusted)
        else {
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
    use serde_json::json;

    use crate::detect::testing::{problems, replay};

    #[test]
    fn the_recorded_two_address_socket_unit() {
        // Recorded on the test bed: tests/scenarios/fdnames, `sockact-trace --unit twice`.
        let found = replay(include_str!(
            "../../../tests/fixtures/fdnames_duplicate.ndjson"
        ));
        let found: Vec<_> = found
            .iter()
            .filter(|f| f.rule == "fdnames_duplicate")
            .collect();
        assert_eq!(found.len(), 1, "once per unit and names: {found:?}");
        let f = found[0];
        assert_eq!(f.unit.as_deref(), Some("twice.service"));
        assert_eq!(f.severity, "warning");
        assert_eq!(f.figures["names"], json!(["admin"]));
        assert_eq!(f.figures["fds"], 2);
    }

    #[test]
    fn names_the_kernel_record_cut_short_are_not_judged() {
        // The same recording, as it reads when LISTEN_FDNAMES was longer than the record
        // keeps: the names seen are not all the names, and a fragment may repeat a whole one.
        let cut: String = include_str!("../../../tests/fixtures/fdnames_duplicate.ndjson")
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if v["kind"] == "exec" && v.get("listen_fdnames").is_some() {
                    v["listen_fdnames_truncated"] = json!(true);
                }
                format!("{v}\n")
            })
            .collect();
        let found = replay(&cut);
        assert!(
            found.iter().all(|f| f.rule != "fdnames_duplicate"),
            "{found:?}"
        );
    }

    #[test]
    fn distinct_names_and_accept_yes_connections_never_fire() {
        // Recorded on the test bed: the healthy control (names echo and admin) and an
        // Accept=yes unit (LISTEN_FDNAMES=connection for every instance).
        for fixture in [
            include_str!("../../../tests/fixtures/healthy_echo.ndjson"),
            include_str!("../../../tests/fixtures/accept_yes.ndjson"),
        ] {
            let findings = problems(&replay(fixture));
            assert!(findings.is_empty(), "{findings:?}");
        }
    }
}
