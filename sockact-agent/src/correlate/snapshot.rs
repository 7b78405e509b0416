//! The start-up snapshot: listeners that already exist (/proc/net: address, inode), the
//! processes of socket-activated units that already run (by cgroup), and the processes that
//! hold a systemd listener (by socket inode in their fd tables). A trace started after the
//! units are up marks those processes in the kernel's watch map and so sees them as well as one
//! started before.
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use super::cgroup_from_proc;
use crate::systemd::{Catalog, unit_of_cgroup};

/// A listening socket as /proc/net shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcListener {
    pub addr: String,
    pub family: &'static str,
    pub inode: u64,
}

const TCP_LISTEN: &str = "0A";
/// __SO_ACCEPTCON in /proc/net/unix's Flags column.
const SO_ACCEPTCON: u32 = 0x10000;

/// An address as /proc/net/tcp prints it: the IPv4 address as a host-order hex word.
fn tcp4_addr(hex: &str) -> Option<String> {
    let (ip, port) = hex.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(format!("{}:{port}", Ipv4Addr::from(ip.to_ne_bytes())))
}

/// An address as /proc/net/tcp6 prints it: four host-order hex words.
fn tcp6_addr(hex: &str) -> Option<String> {
    let (ip, port) = hex.split_once(':')?;
    if ip.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(format!("[{}]:{port}", Ipv6Addr::from(bytes)))
}

/// Listening sockets in a /proc/net/tcp or tcp6 table.
pub fn parse_tcp(table: &str, v6: bool) -> Vec<ProcListener> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != TCP_LISTEN {
                return None;
            }
            let addr = if v6 {
                tcp6_addr(f[1])?
            } else {
                tcp4_addr(f[1])?
            };
            Some(ProcListener {
                addr,
                family: if v6 { "inet6" } else { "inet" },
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// Listening sockets in /proc/net/unix (abstract names start with `@`).
pub fn parse_unix(table: &str) -> Vec<ProcListener> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            if flags & SO_ACCEPTCON == 0 {
                return None;
            }
            Some(ProcListener {
                addr: f[7..].join(" "),
                family: "unix",
                inode: f[6].parse().ok()?,
            })
        })
        .collect()
}

/// Every listening socket of this network namespace.
pub fn listeners() -> Vec<ProcListener> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut all = parse_tcp(&read("/proc/net/tcp"), false);
    all.extend(parse_tcp(&read("/proc/net/tcp6"), true));
    all.extend(parse_unix(&read("/proc/net/unix")));
    all
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose cgroup names a unit `wanted` accepts.
pub fn pids_of_units(wanted: impl Fn(&str) -> bool) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|t| cgroup_from_proc(&t))
                .is_some_and(|cg| unit_of_cgroup(&cg).is_some_and(&wanted))
        })
        .collect()
}

/// The processes holding one of `inodes` in their fd tables.
pub fn holders(inodes: &HashSet<u64>) -> Vec<u32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    pids()
        .into_iter()
        .filter(|pid| {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|t| {
                        t.to_str()
                            .and_then(|s| s.strip_prefix("socket:["))
                            .and_then(|s| s.strip_suffix(']'))
                            .and_then(|s| s.parse::<u64>().ok())
                    })
                    .is_some_and(|ino| inodes.contains(&ino))
            })
        })
        .collect()
}

/// The listeners of the catalog's socket units: socket unit name -> /proc listeners.
pub fn unit_listeners<'a>(
    catalog: &'a Catalog,
    listeners: &[ProcListener],
) -> Vec<(&'a str, u32, ProcListener)> {
    let by_addr: HashMap<&str, &ProcListener> =
        listeners.iter().map(|l| (l.addr.as_str(), l)).collect();
    let mut out = Vec::new();
    for s in catalog.sockets.values() {
        for (_, addr) in &s.listen {
            if let Some(l) = by_addr.get(addr.as_str()) {
                out.push((s.name.as_str(), s.backlog, (*l).clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as this machine's /proc/net shows them.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A5C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 41240 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0
";
    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 777 /run/echo.sock
0000000000000000: 00000002 00000000 00010000 0001 01 778 @abstract-name
0000000000000000: 00000003 00000000 00000000 0001 03 779 /run/connected.sock
";

    #[test]
    fn tcp_listeners() {
        let l = parse_tcp(TCP, false);
        assert_eq!(
            l,
            [ProcListener {
                addr: "127.0.0.1:8080".into(),
                family: "inet",
                inode: 41234
            }]
        );
        let l6 = parse_tcp(TCP6, true);
        assert_eq!(l6[0].addr, "[::1]:80");
        assert_eq!(l6[0].inode, 5555);
    }

    #[test]
    fn unix_listeners_only() {
        let l = parse_unix(UNIX);
        let addrs: Vec<&str> = l.iter().map(|l| l.addr.as_str()).collect();
        assert_eq!(addrs, ["/run/echo.sock", "@abstract-name"]);
    }

    #[test]
    fn this_machines_tables_parse() {
        let here = listeners();
        let ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ours.local_addr().unwrap().to_string();
        let again = listeners();
        assert!(
            again.iter().any(|l| l.addr == addr),
            "{addr} not in {again:?}"
        );
        assert!(!here.iter().any(|l| l.addr == addr));
    }
}
