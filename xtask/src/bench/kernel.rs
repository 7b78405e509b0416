//! The kernel's own accounting of BPF programs (kernel.bpf_stats_enabled): how often each ran
//! and for how long, read with bpftool.
use std::{collections::BTreeMap, process::Command};

use anyhow::Context;

/// Turns the accounting on for as long as it lives, then back to what it was.
pub struct StatsOn {
    before: String,
}

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsOn {
    pub fn new() -> anyhow::Result<StatsOn> {
        let before = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL}"))?
            .trim()
            .to_owned();
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing {SYSCTL}"))?;
        Ok(StatsOn { before })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.before);
    }
}

/// One program's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prog {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// Every loaded program by id.
pub fn programs() -> anyhow::Result<BTreeMap<u32, Prog>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("bpftool (package bpftool)")?;
    parse(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse(json: &str) -> anyhow::Result<BTreeMap<u32, Prog>> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).context("bpftool's JSON")?;
    Ok(list
        .iter()
        .filter_map(|p| {
            Some((
                u32::try_from(p["id"].as_u64()?).ok()?,
                Prog {
                    name: p["name"].as_str().unwrap_or("?").to_owned(),
                    runs: p["run_cnt"].as_u64().unwrap_or(0),
                    ns: p["run_time_ns"].as_u64().unwrap_or(0),
                },
            ))
        })
        .collect())
}

/// What `ids` did between two readings.
pub fn delta(before: &BTreeMap<u32, Prog>, after: &BTreeMap<u32, Prog>, ids: &[u32]) -> Vec<Prog> {
    ids.iter()
        .filter_map(|id| {
            let a = after.get(id)?;
            let b = before.get(id).cloned().unwrap_or_default();
            Some(Prog {
                name: a.name.clone(),
                runs: a.runs - b.runs.min(a.runs),
                ns: a.ns - b.ns.min(a.ns),
            })
        })
        .collect()
}

/// The floor's program on the same tracepoint as `ours`. bpftrace names a program after its
/// tracepoint cut to 15 characters, so `sys_enter_accept` and `sys_enter_accept4` look alike:
/// of those, the one that ran as often.
pub fn counterpart<'a>(ours: &Prog, floor: &'a [Prog]) -> Option<&'a Prog> {
    let tracepoint = ours
        .name
        .split_once('_')
        .map_or(ours.name.as_str(), |(_, t)| t);
    let short: String = tracepoint.chars().take(15).collect();
    floor
        .iter()
        .filter(|f| f.name == short)
        .min_by_key(|f| f.runs.abs_diff(ours.runs))
}

/// Programs loaded since `before`.
pub fn new_ids(before: &BTreeMap<u32, Prog>) -> anyhow::Result<Vec<u32>> {
    Ok(programs()?
        .into_keys()
        .filter(|id| !before.contains_key(id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two programs as bpftool printed them under nginx load: sockact's and the floor's on
    /// the same tracepoint.
    const SHOWN: &str = r#"[{"id": 21986, "type": "tracepoint", "name": "sock_sk_data_ready", "tag": "a396860c439ff023", "gpl_compatible": true, "run_time_ns": 56147187, "run_cnt": 356250, "loaded_at": 1795784162, "uid": 0, "bytes_xlated": 4192, "jited": true, "bytes_jited": 2468, "bytes_memlock": 8192, "map_ids": [15614, 15605, 15613, 15607, 15608], "btf_id": 8338},
{"id": 22011, "type": "tracepoint", "name": "sk_data_ready", "tag": "72dd49fb6e5ada7b", "gpl_compatible": true, "run_time_ns": 36797533, "run_cnt": 356250, "loaded_at": 1795784163, "uid": 0, "bytes_xlated": 352, "jited": true, "bytes_jited": 209, "bytes_memlock": 4096, "map_ids": [15616, 15615]}]"#;

    #[test]
    fn reads_bpftool_and_subtracts() {
        let after = parse(SHOWN).unwrap();
        assert_eq!(after[&21986].name, "sock_sk_data_ready");
        let mut before = after.clone();
        before.get_mut(&21986).unwrap().runs -= 1000;
        before.get_mut(&21986).unwrap().ns -= 150_000;
        before.remove(&22011);
        let d = delta(&before, &after, &[21986, 22011]);
        assert_eq!((d[0].runs, d[0].ns), (1000, 150_000));
        assert_eq!(
            (d[1].runs, d[1].ns),
            (356_250, 36_797_533),
            "loaded since: all of it"
        );
    }

    #[test]
    fn counterpart_is_the_same_tracepoint_that_ran_as_often() {
        let prog = |name: &str, runs| Prog {
            name: name.into(),
            runs,
            ns: 0,
        };
        let floor = [
            prog("sys_enter_accep", 0),
            prog("sys_enter_accep", 5000),
            prog("sk_data_ready", 9000),
        ];
        let ours = prog("syscalls_sys_enter_accept4", 5002);
        assert_eq!(counterpart(&ours, &floor), Some(&floor[1]));
        let ours = prog("sock_sk_data_ready", 9000);
        assert_eq!(counterpart(&ours, &floor), Some(&floor[2]));
        assert_eq!(counterpart(&prog("sched_x", 1), &floor), None);
    }
}
