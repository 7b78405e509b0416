//! One file per probe family. Every hook is a thin `#[tracepoint]` that calls a `try_` function.
pub mod accept;
pub mod bind;
pub mod connect;
pub mod exec;
pub mod listen;
pub mod queue;
pub mod sched;
pub mod shutdown;

use aya_ebpf::{maps::ring_buf::RingBufEntry, programs::TracePointContext};
use aya_log_ebpf::warn;
use sockact_common::{RecordKind, counter};

use crate::maps::{EVENTS, PENDING, Pending, count};

/// Offset of the first argument of a `syscalls:sys_enter_*` tracepoint; each is 8 bytes.
pub const ARG0: usize = 16;
/// Offset of `ret` in a `syscalls:sys_exit_*` tracepoint.
pub const RET: usize = 16;

/// The n-th syscall argument.
#[inline(always)]
pub fn arg<T>(ctx: &TracePointContext, n: usize) -> Option<T> {
    // SAFETY: the offsets are those of the syscall tracepoints' fixed layout.
    unsafe { ctx.read_at::<T>(ARG0 + 8 * n).ok() }
}

/// A syscall's return value, at its exit.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> Option<i64> {
    // SAFETY: as above.
    unsafe { ctx.read_at::<i64>(RET).ok() }
}

/// Reserves a record, counting the attempt and, when the ring buffer is full, the loss.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    count(counter::SUBMITTED);
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(counter::LOST);
    }
    entry
}

/// Parks a syscall's arguments until its exit.
#[inline(always)]
pub fn park(ctx: &TracePointContext, pid_tgid: u64, call: RecordKind, ptr: u64, fd: i32, arg: i32) {
    let pending = Pending {
        ptr,
        fd,
        arg,
        call: call as u32,
        _pad: 0,
    };
    if PENDING.insert(&pid_tgid, &pending, 0).is_err() {
        count(counter::PENDING_FULL);
        warn!(
            ctx,
            "pending syscall map full: a syscall of pid {} is not recorded",
            (pid_tgid >> 32) as u32
        );
    }
}

/// Takes the parked arguments of the syscall now returning; an entry another syscall left
/// (its exit was not attached yet, or failed to attach) is dropped, never misread.
#[inline(always)]
pub fn take(pid_tgid: u64, call: RecordKind) -> Option<Pending> {
    let p = PENDING.get_ptr(&pid_tgid)?;
    // SAFETY: the value is copied out before the entry is removed.
    let pending = unsafe { *p };
    let _ = PENDING.remove(&pid_tgid);
    (pending.call == call as u32).then_some(pending)
}

/// The kernel-internal ERESTART* codes: the call is restarted after a signal without the
/// application ever seeing them, so they are not results worth a record.
#[inline(always)]
pub fn restarted(ret: i64) -> bool {
    (-516..=-512).contains(&ret)
}
