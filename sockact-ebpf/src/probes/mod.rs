//! One file per probe family. Every hook is a thin `#[tracepoint]` that calls a `try_` function.
pub mod accept;
pub mod bind;
pub mod connect;
pub mod exec;
pub mod listen;
pub mod queue;
pub mod sched;
pub mod shutdown;
pub mod state;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::ring_buf::RingBufEntry,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use sockact_common::{RecordKind, counter};

use crate::maps::{EVENTS, PENDING, Pending, count};

/// Offset of the first argument of a `syscalls:sys_enter_*` tracepoint; each is 8 bytes.
pub const ARG0: usize = 16;
/// Offset of `ret` in a `syscalls:sys_exit_*` tracepoint.
pub const RET: usize = 16;

/// The n-th syscall argument: a direct load from the context (the offsets are fixed), no
/// helper call.
#[inline(always)]
pub fn arg<T: Copy>(ctx: &TracePointContext, n: usize) -> Option<T> {
    Some(load(ctx, ARG0 + 8 * n))
}

/// A syscall's return value, at its exit.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> Option<i64> {
    Some(load(ctx, RET))
}

/// A field of a tracepoint's record at `off` (from its format file). Where `off` is `usual`,
/// the offset on every kernel seen so far, the field is loaded directly, as the verifier
/// accepts only constant offsets into the context; it folds the comparison away, OFFSETS being
/// frozen. Any other layout is read through the helper.
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, off: u32, usual: usize) -> Option<T> {
    if off as usize == usual {
        Some(load(ctx, usual))
    } else {
        // SAFETY: the offset comes from the tracepoint's format file.
        unsafe { ctx.read_at::<T>(off as usize).ok() }
    }
}

/// A load at a constant offset into a tracepoint's record, aligned to its size.
#[inline(always)]
fn load<T: Copy>(ctx: &TracePointContext, at: usize) -> T {
    // SAFETY: tracepoint programs may read their record directly, at constant aligned offsets
    // below its size, which the verifier checks at load.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(at).cast::<T>()) }
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

/// Bytes waiting in the ring buffer past which a record wakes the reader at once. Below it the
/// reader drains on its own timer (every few milliseconds): a wake-up for every record of a
/// busy server costs the agent more than handling the record does.
const WAKE_AT: u64 = 512 * 1024;

/// The flags to submit a record with: a wake-up only when the ring buffer fills up.
#[inline(always)]
pub fn wake_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKE_AT {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
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
