//! Process lifetimes: a watched process's children inherit its mark at fork; a watched
//! process's exit is recorded with its exit code, and its mark dropped.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use aya_log_ebpf::warn;
use sockact_common::{ExitRecord, RecordKind, counter, watch};

use crate::{
    filter::{tgid_of, watched},
    kernel::{current_exit_code, fill_header, off, offsets},
    maps::{PENDING_EXEC, WATCHED, count},
    probes::{reserve, wake_flags},
};

#[tracepoint]
pub fn sched_sched_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

#[tracepoint]
pub fn sched_sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_fork(ctx: &TracePointContext) -> Option<()> {
    let tgid = tgid_of(bpf_get_current_pid_tgid());
    // SAFETY: points at a live map value.
    let bits = unsafe { *WATCHED.get_ptr(&tgid)? };
    offsets()?;
    // SAFETY: the offset comes from this tracepoint's format file.
    let child: i32 = unsafe { ctx.read_at(off!(tp_fork_child_pid) as usize).ok()? };
    if child <= 0 {
        return None;
    }
    // Children inherit why their parent is watched (a --pid selection follows them). Threads
    // get a mark too (the fork tracepoint cannot tell them apart); it is dropped when they exit.
    if WATCHED
        .insert(&(child as u32), &(bits | watch::INHERITED), 0)
        .is_err()
    {
        count(counter::WATCH_FULL);
        warn!(
            ctx,
            "watch map full: child {} of watched pid {} is not watched", child, tgid
        );
    }
    Some(())
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    let tid = pid_tgid as u32;
    // An exec's syscall exit never comes for a thread that dies in it.
    let _ = PENDING_EXEC.remove(&pid_tgid);
    if tid != tgid {
        let _ = WATCHED.remove(&tid);
    }
    let group_dead = match offsets() {
        Some(()) if off!(tp_exit_group_dead) != 0 => {
            // SAFETY: the offset comes from this tracepoint's format file.
            unsafe { ctx.read_at::<u8>(off!(tp_exit_group_dead) as usize).ok()? != 0 }
        }
        _ => tid == tgid,
    };
    if !group_dead {
        return None;
    }
    let keep = watched(tgid)?;
    let _ = WATCHED.remove(&tgid);
    if !keep {
        return None;
    }
    let mut entry = reserve::<ExitRecord>()?;
    // SAFETY: the reserved slot is ours until submitted; every field is written below.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(
        &mut rec.header,
        RecordKind::Exit,
        core::mem::size_of::<ExitRecord>(),
        pid_tgid,
    );
    rec.exit_code = current_exit_code();
    rec._pad = 0;
    entry.submit(wake_flags());
    Some(())
}
