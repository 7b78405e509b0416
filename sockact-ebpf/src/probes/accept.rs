//! accept/accept4: the listening fd and its socket (address, identity, queue), the new fd and
//! its peer, and how long the connection waited in the accept queue (when sk_data_ready saw it
//! queued). EAGAIN from non-blocking servers is not worth a record.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sockact_common::{AcceptRecord, RecordKind};

use crate::{
    filter::{any_port_selected, tgid_of, watched},
    kernel::{fill_header, fill_sock_info, fill_unix_addr, is_unix},
    maps::QUEUED,
    probes::{arg, listen::fd_port_selected, park, reserve, restarted, ret, take, wake_flags},
};

const EAGAIN: i64 = 11;

#[tracepoint]
pub fn syscalls_sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_enter_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let keep = watched(tgid_of(pid_tgid))?;
    if !keep && !any_port_selected() {
        return None;
    }
    let fd: i64 = arg(ctx, 0)?;
    let fd = fd as i32;
    if !(keep || fd_port_selected(fd)) {
        return None;
    }
    park(ctx, pid_tgid, RecordKind::Accept, 0, fd, 0);
    Some(())
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The cheap check first: most accepts on a host are nobody's business here.
    let keep = watched(tgid_of(pid_tgid))?;
    if !keep && !any_port_selected() {
        return None;
    }
    let result = ret(ctx)?;
    let listen_fd = match take(pid_tgid, RecordKind::Accept) {
        Some(pending) => pending.fd,
        // An accept that was already blocked when tracing started: its listener is known
        // only through the accepted socket's local side.
        None if result >= 0 && keep => -1,
        None => return None,
    };
    if restarted(result) || result == -EAGAIN {
        return None;
    }
    let mut entry = reserve::<AcceptRecord>()?;
    // SAFETY: the reserved slot is ours until submitted; every field is written below.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut rec.header,
        RecordKind::Accept,
        core::mem::size_of::<AcceptRecord>(),
        pid_tgid,
    );
    rec.listen_fd = listen_fd;
    rec._pad = 0;
    rec.ret = result;
    rec.unix.len = 0;
    rec.unix.ok = 0;
    rec.wait_ns = 0;
    let listener = fill_sock_info(&mut rec.listener, listen_fd);
    let conn = fill_sock_info(&mut rec.conn, result as i32);
    if !conn.is_null() {
        let key = conn as u64;
        if let Some(queued) = QUEUED.get_ptr(&key) {
            // SAFETY: points at a live map value.
            let queued = unsafe { *queued };
            if queued.listener == rec.listener.inode {
                rec.wait_ns = rec.header.ts_ns.saturating_sub(queued.ts);
            }
            let _ = QUEUED.remove(&key);
        }
    }
    // A unix connection carries its listener's name.
    if !listener.is_null() && is_unix(rec.listener.family) {
        fill_unix_addr(&mut rec.unix, listener);
    } else if listener.is_null() && !conn.is_null() && is_unix(rec.conn.family) {
        fill_unix_addr(&mut rec.unix, conn);
    }
    entry.submit(wake_flags());
    Some(())
}
