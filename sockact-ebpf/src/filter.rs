//! The in-kernel watch filter: decides, before anything is reserved or parked, whether a
//! syscall is worth a record.
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_probe_read_user};

use crate::maps::{FILTER, PORTS, WATCHED};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The TGID half of bpf_get_current_pid_tgid().
#[inline(always)]
pub fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

/// Kept unless it is the agent itself: `--all`, or a watched process.
#[inline(always)]
pub fn watched(tgid: u32) -> Option<bool> {
    let cfg = FILTER.load();
    if tgid == cfg.self_tgid {
        return None;
    }
    Some(cfg.all != 0 || WATCHED.get_ptr(&tgid).is_some())
}

/// Whether `--port` selected any port: only then is an unwatched process's syscall worth
/// reading its arguments for.
#[inline(always)]
pub fn any_port_selected() -> bool {
    FILTER.load().ports != 0
}

/// A systemd manager binding or listening for a socket unit: PID 1 of a namespace or
/// `systemd --user` (comm "systemd"), or its `(sd-listen)` helper.
#[inline(always)]
pub fn is_manager() -> bool {
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    let head = u64::from_le_bytes([
        comm[0], comm[1], comm[2], comm[3], comm[4], comm[5], comm[6], comm[7],
    ]);
    if head == u64::from_le_bytes(*b"systemd\0") {
        return true;
    }
    head == u64::from_le_bytes(*b"(sd-list")
        && comm[8] == b'e'
        && comm[9] == b'n'
        && comm[10] == b')'
        && comm[11] == 0
}

/// Whether `--port` selected this port (host byte order).
#[inline(always)]
pub fn port_selected(port: u16) -> bool {
    FILTER.load().ports != 0 && PORTS.get_ptr(&port).is_some()
}

/// The port of a caller's inet sockaddr, read only when ports are selected at all.
#[inline(always)]
pub fn user_addr_port_selected(ptr: u64) -> bool {
    if FILTER.load().ports == 0 || ptr == 0 {
        return false;
    }
    // SAFETY: a user pointer read through the fault-tolerant helper.
    let Ok(head) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 4]) }) else {
        return false;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    if family != AF_INET && family != AF_INET6 {
        return false;
    }
    port_selected(u16::from_be_bytes([head[2], head[3]]))
}
