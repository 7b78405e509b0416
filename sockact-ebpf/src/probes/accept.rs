//! accept/accept4: the listening fd and its socket (address, identity, queue), the new fd and
//! its peer. EAGAIN from non-blocking servers is not worth a record.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sockact_common::{AcceptRecord, RecordKind};

use crate::{
    filter::{tgid_of, watched},
    kernel::{fill_header, fill_sock_info, fill_unix_addr, is_unix},
    maps::Pending,
    probes::{arg, listen::fd_port_selected, park, reserve, ret, take},
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
    let fd: i64 = arg(ctx, 0)?;
    let fd = fd as i32;
    if !(keep || fd_port_selected(fd)) {
        return None;
    }
    park(ctx, pid_tgid, Pending { ptr: 0, fd, arg: 0 });
    Some(())
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = take(pid_tgid)?;
    let result = ret(ctx)?;
    if result == -EAGAIN {
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
    rec.listen_fd = pending.fd;
    rec._pad = 0;
    rec.ret = result;
    rec.unix.len = 0;
    rec.unix.ok = 0;
    if let Some((sk, family)) = fill_sock_info(&mut rec.listener, pending.fd) {
        if is_unix(family) {
            fill_unix_addr(&mut rec.unix, sk);
        }
    }
    let _ = fill_sock_info(&mut rec.conn, result as i32);
    entry.submit(0);
    Some(())
}
