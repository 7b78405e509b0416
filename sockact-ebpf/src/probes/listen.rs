//! listen(): the backlog as passed, the socket's address and identity, and the result. Kept for
//! watched processes, systemd managers and selected ports; the listeners of the latter two get
//! their accept queue watched (`LISTENERS`).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sockact_common::{ListenRecord, RecordKind, counter, listener_watch};

use crate::{
    filter::{is_manager, port_selected, tgid_of, watched},
    kernel::{
        fill_header, fill_sock_info, fill_unix_addr, is_unix, listen_addr_of_info, sock_local_port,
        sock_of_fd,
    },
    maps::{LISTEN_ADDRS, LISTENERS, count},
    probes::{arg, park, reserve, restarted, ret, take, wake_flags},
};

#[tracepoint]
pub fn syscalls_sys_enter_listen(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_listen(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let keep = watched(tgid_of(pid_tgid))?;
    let fd: i64 = arg(ctx, 0)?;
    let fd = fd as i32;
    if !(keep || is_manager() || fd_port_selected(fd)) {
        return None;
    }
    let backlog: i64 = arg(ctx, 1)?;
    park(ctx, pid_tgid, RecordKind::Listen, 0, fd, backlog as i32);
    Some(())
}

/// Whether the socket behind `fd` is bound to a port selected with `--port`.
#[inline(always)]
pub fn fd_port_selected(fd: i32) -> bool {
    if crate::maps::FILTER.load().ports == 0 {
        return false;
    }
    match sock_of_fd(fd) {
        Some((sk, _)) => port_selected(sock_local_port(sk)),
        None => false,
    }
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = take(pid_tgid, RecordKind::Listen)?;
    let result = ret(ctx)?;
    if restarted(result) {
        return None;
    }
    let mut entry = reserve::<ListenRecord>()?;
    // SAFETY: the reserved slot is ours until submitted; every field is written below.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut rec.header,
        RecordKind::Listen,
        core::mem::size_of::<ListenRecord>(),
        pid_tgid,
    );
    rec.fd = pending.fd;
    rec.backlog = pending.arg;
    rec.ret = result;
    rec.unix.len = 0;
    rec.unix.ok = 0;
    let sk = fill_sock_info(&mut rec.sock, pending.fd);
    if !sk.is_null() && is_unix(rec.sock.family) {
        fill_unix_addr(&mut rec.unix, sk);
    }
    let inode = rec.sock.inode;
    let key = listen_addr_of_info(&rec.sock);
    entry.submit(wake_flags());
    // After the record: a queue record of this listener never comes before its listen.
    if result == 0 && inode != 0 {
        let why = if is_manager() {
            listener_watch::MANAGER
        } else if fd_port_selected(pending.fd) {
            listener_watch::PORT
        } else {
            0
        };
        if why != 0 {
            if LISTENERS.insert(&inode, &why, 0).is_err() {
                count(counter::LISTENERS_FULL);
            } else if let Some(key) = key {
                let _ = LISTEN_ADDRS.insert(&key, &inode, 0);
            }
        }
    }
    Some(())
}
