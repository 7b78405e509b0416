//! What the running kernel lets sockact see, probed before loading and never inferred from the
//! version (distribution kernels backport): a helper by the kernel's own list of them in BTF, a
//! tracepoint by its format file. From what then attached: the mechanism in use for each family
//! of events (the `attached` event's `features`), and the rules that cannot work without them
//! (`unavailable_rules`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::offsets::KernelBtf;

/// A family of kernel events, as the `features` object names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Exec,
    Bind,
    Listen,
    Accept,
    Connect,
    Shutdown,
    Lifetimes,
    AcceptQueue,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Exec,
        Family::Bind,
        Family::Listen,
        Family::Accept,
        Family::Connect,
        Family::Shutdown,
        Family::Lifetimes,
        Family::AcceptQueue,
    ];

    /// Without these there is nothing to correlate: `sockact-trace` refuses to run.
    pub const CORE: [Family; 4] = [Family::Exec, Family::Bind, Family::Listen, Family::Accept];

    pub fn name(self) -> &'static str {
        match self {
            Family::Exec => "exec",
            Family::Bind => "bind",
            Family::Listen => "listen",
            Family::Accept => "accept",
            Family::Connect => "connect",
            Family::Shutdown => "shutdown",
            Family::Lifetimes => "lifetimes",
            Family::AcceptQueue => "accept_queue",
        }
    }
}

/// The `features` object: each family's mechanism in use, None where the kernel gave none.
pub type Features = BTreeMap<Family, Option<String>>;

/// What was probed of the running kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    /// The `bpf_loop` helper (`BPF_FUNC_loop` in the kernel's `enum bpf_func_id`).
    pub bpf_loop: bool,
    tracefs: PathBuf,
}

impl Kernel {
    pub fn probe(btf: &KernelBtf, tracefs: &Path) -> Kernel {
        Kernel {
            release: release(),
            bpf_loop: btf.has_enum_value("bpf_func_id", "BPF_FUNC_loop"),
            tracefs: tracefs.to_owned(),
        }
    }

    /// A kernel as a test describes it.
    pub fn described(release: &str, bpf_loop: bool, tracefs: &Path) -> Kernel {
        Kernel {
            release: release.to_owned(),
            bpf_loop,
            tracefs: tracefs.to_owned(),
        }
    }

    /// Whether the kernel has the tracepoint `category:name`.
    pub fn has_tracepoint(&self, category: &str, name: &str) -> bool {
        self.tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format")
            .exists()
    }

    /// Connections arriving in accept queues: `sock:sk_data_ready` (6.3+) sees the listener
    /// itself; older kernels show the connection's socket cloned from it.
    pub fn queue_via_set_state(&self) -> bool {
        !self.has_tracepoint("sock", "sk_data_ready")
    }
}

/// The running kernel's release.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// What each runtime rule reads from the kernel (beyond systemd's own view over D-Bus). A
/// process is watched when its exec carried LISTEN_FDS, which nearly every rule needs.
pub const RULE_NEEDS: &[(&str, &[Family])] = &[
    ("double_bind", &[Family::Exec, Family::Bind]),
    ("listen_pid_mismatch", &[Family::Exec, Family::Accept]),
    (
        "fds_ignored",
        &[
            Family::Exec,
            Family::Bind,
            Family::Listen,
            Family::Accept,
            Family::AcceptQueue,
        ],
    ),
    ("fdnames_duplicate", &[Family::Exec]),
    (
        "activation_failed",
        &[
            Family::Exec,
            Family::Accept,
            Family::Lifetimes,
            Family::AcceptQueue,
        ],
    ),
    ("socket_inactive", &[Family::Exec]),
    (
        "accept_before_ready",
        &[Family::Exec, Family::Accept, Family::Connect],
    ),
    (
        "cold_start",
        &[Family::Exec, Family::Accept, Family::AcceptQueue],
    ),
    (
        "restart_gap",
        &[
            Family::Exec,
            Family::Accept,
            Family::Lifetimes,
            Family::AcceptQueue,
        ],
    ),
    ("backlog_overflow", &[Family::AcceptQueue]),
    ("crash_loop", &[Family::Exec, Family::Lifetimes]),
    ("accept_yes_storm", &[Family::Exec, Family::Lifetimes]),
    ("listener_lost", &[Family::Shutdown]),
];

/// The rules that cannot work with these features, in the table's order.
pub fn unavailable_rules(features: &Features) -> Vec<String> {
    let has = |f: &Family| features.get(f).is_some_and(Option::is_some);
    RULE_NEEDS
        .iter()
        .filter(|(_, needs)| !needs.iter().all(has))
        .map(|(rule, _)| (*rule).to_owned())
        .collect()
}

/// The core families missing: with any, `sockact-trace` has nothing to correlate.
pub fn missing_core(features: &Features) -> Vec<Family> {
    Family::CORE
        .into_iter()
        .filter(|f| features.get(f).is_none_or(Option::is_none))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mechanism: &str) -> Features {
        Family::ALL
            .into_iter()
            .map(|f| (f, Some(mechanism.to_owned())))
            .collect()
    }

    #[test]
    fn every_engine_rule_says_what_it_needs() {
        let mut named: Vec<&str> = RULE_NEEDS.iter().map(|(r, _)| *r).collect();
        named.sort();
        let mut engine: Vec<&str> = crate::detect::RULES.to_vec();
        engine.sort();
        assert_eq!(named, engine);
    }

    #[test]
    fn a_missing_family_makes_its_rules_unavailable_and_core_ones_are_named() {
        let full = all("syscalls");
        assert!(unavailable_rules(&full).is_empty());
        assert!(missing_core(&full).is_empty());
        let mut no_queue = full.clone();
        no_queue.insert(Family::AcceptQueue, None);
        assert_eq!(
            unavailable_rules(&no_queue),
            [
                "fds_ignored",
                "activation_failed",
                "cold_start",
                "restart_gap",
                "backlog_overflow"
            ]
        );
        assert!(missing_core(&no_queue).is_empty());
        let mut no_bind = full;
        no_bind.insert(Family::Bind, None);
        assert_eq!(missing_core(&no_bind), [Family::Bind]);
        assert_eq!(unavailable_rules(&no_bind), ["double_bind", "fds_ignored"]);
    }

    #[test]
    fn features_serialise_as_the_design_names_them() {
        let mut f = all("syscalls");
        f.insert(Family::AcceptQueue, Some("sk_data_ready".into()));
        f.insert(Family::Exec, None);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["accept_queue"], "sk_data_ready");
        assert_eq!(json["exec"], serde_json::Value::Null);
        assert_eq!(json.as_object().unwrap().len(), 8);
    }
}
