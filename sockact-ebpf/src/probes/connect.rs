//! connect(): the destination as the caller passed it, and the result (EINPROGRESS included).
//! Kept for watched processes and selected ports. A non-blocking TCP connect that returned
//! EINPROGRESS is parked, and its outcome sent when the socket leaves SYN_SENT
//! (`sock:inet_sock_set_state`, state.rs): ECONNREFUSED from a backend that is not listening yet
//! reaches the caller only through SO_ERROR, never as connect()'s own result.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use sockact_common::{ConnectRecord, RecordKind, connect_flags};

use crate::{
    filter::{any_port_selected, tgid_of, user_addr_port_selected, watched},
    kernel::{fill_header, fill_user_addr, now_ns, sock_err, sock_of_fd, sock_state},
    maps::{CONNECT_SCRATCH, CONNECTING},
    probes::{arg, park, reserve, restarted, ret, take, wake_flags},
};

const EINPROGRESS: i64 = 115;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

#[tracepoint]
pub fn syscalls_sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let keep = watched(tgid_of(pid_tgid))?;
    if !keep && !any_port_selected() {
        return None;
    }
    let ptr: u64 = arg(ctx, 1)?;
    if !(keep || user_addr_port_selected(ptr)) {
        return None;
    }
    let fd: i64 = arg(ctx, 0)?;
    let len: i64 = arg(ctx, 2)?;
    park(
        ctx,
        pid_tgid,
        RecordKind::Connect,
        ptr,
        fd as i32,
        len as i32,
    );
    Some(())
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = take(pid_tgid, RecordKind::Connect)?;
    let result = ret(ctx)?;
    if restarted(result) {
        return None;
    }
    // Built once, in a scratch slot: sent as the call's result, and, for EINPROGRESS, parked
    // for its outcome.
    let rec = CONNECT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, ours while the program runs.
    let rec = unsafe { &mut *rec };
    fill_header(
        &mut rec.header,
        RecordKind::Connect,
        core::mem::size_of::<ConnectRecord>(),
        pid_tgid,
    );
    rec.fd = pending.fd;
    rec.flags = 0;
    rec.ret = result;
    fill_user_addr(&mut rec.addr, pending.ptr, pending.arg);
    send(rec, result, 0);
    if result != -EINPROGRESS {
        return Some(());
    }
    let (sk, _) = sock_of_fd(pending.fd)?;
    let key = sk as u64;
    // Parked first, then the state read: a transition in between finds the entry.
    let _ = CONNECTING.insert(&key, &*rec, 0);
    let state = sock_state(sk) as i32;
    if state == TCP_SYN_SENT {
        // Parked: the outcome comes with the state change (a change already under way may
        // have missed the entry: its outcome is then lost, a window of a few instructions).
        return Some(());
    }
    // Over loopback the answer is often handled before connect() returns. Still parked means
    // nobody has told the outcome yet.
    if CONNECTING.remove(&key).is_ok()
        && let Some(err) = outcome(state, sk)
    {
        send(rec, -(err as i64), connect_flags::ASYNC);
    }
    Some(())
}

/// Writes a copy of `rec` with its result and flags, stamped now for an outcome.
#[inline(always)]
fn send(rec: &ConnectRecord, result: i64, flags: u32) {
    let Some(mut entry) = reserve::<ConnectRecord>() else {
        return;
    };
    let size = core::mem::size_of::<ConnectRecord>() as u32;
    // SAFETY: copies a whole record of the same type into the reserved slot.
    let copied = unsafe {
        bpf_probe_read_kernel(
            entry.as_mut_ptr() as *mut c_void,
            size,
            rec as *const ConnectRecord as *const c_void,
        )
    };
    // SAFETY: the reserved slot is ours until submitted.
    let out = unsafe { &mut *entry.as_mut_ptr() };
    if copied != 0 {
        // Never happens for map or scratch memory; the record still says what it can.
        out.header = rec.header;
        out.fd = rec.fd;
        out.addr.len = 0;
        out.addr.ok = 0;
    }
    out.ret = result;
    out.flags = flags;
    if flags & connect_flags::ASYNC != 0 {
        out.header.ts_ns = now_ns();
    }
    entry.submit(wake_flags());
}

/// A parked non-blocking connect's socket left SYN_SENT for `new` (`sock:inet_sock_set_state`):
/// its outcome is sent.
#[inline(always)]
pub fn left_syn_sent(sk: u64, new: i32) -> Option<()> {
    let parked = CONNECTING.get_ptr(&sk)?;
    if let Some(err) = outcome(new, sk as *const u8) {
        // SAFETY: a live map value; it is copied before the entry is removed.
        send(unsafe { &*parked }, -(err as i64), connect_flags::ASYNC);
    }
    let _ = CONNECTING.remove(&sk);
    Some(())
}

/// The errno a connect ended with when its socket left SYN_SENT for `state` (0: connected,
/// whatever happened since, e.g. CLOSE_WAIT when the peer already closed); None when there is
/// nothing to tell: closed by its owner before it connected.
#[inline(always)]
fn outcome(state: i32, sk: *const u8) -> Option<i32> {
    match state {
        TCP_SYN_SENT => None,
        TCP_CLOSE => Some(sock_err(sk)).filter(|&e| e > 0),
        _ => Some(0),
    }
}
