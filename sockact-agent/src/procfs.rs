//! What /proc says about processes: whether a PID is a process, and its descendants.
use std::collections::{HashMap, HashSet};

/// Whether `pid` names a live process (a thread group leader, not a thread).
pub fn is_process(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| field(&s, "Tgid:"))
        == Some(pid)
}

fn field(status: &str, name: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// PID -> parent PID for every process.
pub fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(ppid) = field(&status, "PPid:")
        {
            map.insert(pid, ppid);
        }
    }
    map
}

/// `roots` and every process below them.
pub fn descendants(roots: &[u32], parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        if seen.insert(pid)
            && let Some(kids) = children.get(&pid)
        {
            stack.extend(kids);
        }
    }
    let mut all: Vec<u32> = seen.into_iter().collect();
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_of_a_tree() {
        let parents: HashMap<u32, u32> = [(10, 1), (11, 10), (12, 11), (20, 1), (13, 10)]
            .into_iter()
            .collect();
        assert_eq!(descendants(&[10], &parents), [10, 11, 12, 13]);
        assert_eq!(descendants(&[20], &parents), [20]);
        assert_eq!(descendants(&[99], &parents), [99]);
    }

    #[test]
    fn this_process_is_a_process() {
        assert!(is_process(std::process::id()));
        assert!(!is_process(u32::MAX));
    }
}
