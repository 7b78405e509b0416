//! shutdown() on a listening socket: a service that shuts its passed listener down takes the
//! port away from its socket unit. Other shutdowns are not recorded.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sockact_common::{RecordKind, ShutdownRecord};

use crate::{
    filter::{tgid_of, watched},
    kernel::{
        fill_header, fill_sock_info, fill_unix_addr, is_unix, sock_local_port, sock_of_fd,
        sock_state,
    },
    probes::{arg, park, reserve, restarted, ret, take, wake_flags},
};

const TCP_LISTEN: u8 = 10;

#[tracepoint]
pub fn syscalls_sys_enter_shutdown(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_shutdown(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched(tgid_of(pid_tgid))? {
        return None;
    }
    let fd: i64 = arg(ctx, 0)?;
    let fd = fd as i32;
    // The state must be read before the call: shutdown() takes a listener out of LISTEN.
    let (sk, _) = sock_of_fd(fd)?;
    if sock_state(sk) != TCP_LISTEN {
        return None;
    }
    let how: i64 = arg(ctx, 1)?;
    // Its port too: shutdown() of a listener whose port the kernel chose (bound to port 0)
    // gives that port back, and the socket reads port 0 after the call.
    let port = u64::from(sock_local_port(sk));
    park(ctx, pid_tgid, RecordKind::Shutdown, port, fd, how as i32);
    Some(())
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = take(pid_tgid, RecordKind::Shutdown)?;
    let result = ret(ctx)?;
    if restarted(result) {
        return None;
    }
    let mut entry = reserve::<ShutdownRecord>()?;
    // SAFETY: the reserved slot is ours until submitted; every field is written below.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut rec.header,
        RecordKind::Shutdown,
        core::mem::size_of::<ShutdownRecord>(),
        pid_tgid,
    );
    rec.fd = pending.fd;
    rec.how = pending.arg;
    rec.ret = result;
    rec.unix.len = 0;
    rec.unix.ok = 0;
    let sk = fill_sock_info(&mut rec.sock, pending.fd);
    if !sk.is_null() && is_unix(rec.sock.family) {
        fill_unix_addr(&mut rec.unix, sk);
    }
    if rec.sock.local_port == 0 {
        rec.sock.local_port = pending.ptr as u16;
    }
    entry.submit(wake_flags());
    Some(())
}
