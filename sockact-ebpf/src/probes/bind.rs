//! bind(): the address as the caller passed it, the socket's SO_REUSEPORT and identity, and the
//! result. Kept for watched processes, systemd managers and selected ports.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sockact_common::{BindRecord, RecordKind};

use crate::{
    filter::{is_manager, tgid_of, user_addr_port_selected, watched},
    kernel::{fill_header, fill_sock_info, fill_user_addr},
    probes::{arg, park, reserve, restarted, ret, take, wake_flags},
};

#[tracepoint]
pub fn syscalls_sys_enter_bind(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_bind(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let keep = watched(tgid_of(pid_tgid))?;
    let ptr: u64 = arg(ctx, 1)?;
    if !(keep || is_manager() || user_addr_port_selected(ptr)) {
        return None;
    }
    let fd: i64 = arg(ctx, 0)?;
    let len: i64 = arg(ctx, 2)?;
    park(ctx, pid_tgid, RecordKind::Bind, ptr, fd as i32, len as i32);
    Some(())
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = take(pid_tgid, RecordKind::Bind)?;
    let result = ret(ctx)?;
    if restarted(result) {
        return None;
    }
    let mut entry = reserve::<BindRecord>()?;
    // SAFETY: the reserved slot is ours until submitted; every field is written below.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut rec.header,
        RecordKind::Bind,
        core::mem::size_of::<BindRecord>(),
        pid_tgid,
    );
    rec.fd = pending.fd;
    rec._pad = 0;
    rec.ret = result;
    fill_user_addr(&mut rec.addr, pending.ptr, pending.arg);
    let _ = fill_sock_info(&mut rec.sock, pending.fd);
    entry.submit(wake_flags());
    Some(())
}
