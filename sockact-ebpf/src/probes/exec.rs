//! execve/execveat: filename, the first argv entries, and LISTEN_PID / LISTEN_FDS /
//! LISTEN_FDNAMES from the environment. No other variable is ever read: environments hold
//! secrets. Read at entry (the caller's memory is gone after a successful exec), emitted at exit
//! only when the exec succeeded; a process exec'd with LISTEN_FDS is marked watched.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_loop, bpf_probe_read_user,
        generated::bpf_probe_read_kernel as raw_read_kernel,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::{debug, warn};
use sockact_common::{ARGV_MAX, ENVP_MAX, ExecRecord, RecordKind, counter, exec_flags, watch};

use crate::{
    filter::{tgid_of, watched},
    kernel::{fill_header, parent_is_manager, read_cgroup_name, read_user_str},
    maps::{EXEC_SCRATCH, PENDING_EXEC, WATCHED, count},
    probes::{arg, reserve, ret, wake_flags},
};

#[tracepoint]
pub fn syscalls_sys_enter_execve(ctx: TracePointContext) -> u32 {
    let _ = try_enter::<0, true>(&ctx, 0);
    0
}

#[tracepoint]
pub fn syscalls_sys_enter_execveat(ctx: TracePointContext) -> u32 {
    // execveat(dirfd, filename, argv, envp, flags): everything one argument later.
    let _ = try_enter::<1, true>(&ctx, exec_flags::EXECVEAT);
    0
}

/// The same, for kernels without `bpf_loop` (before 5.17): the environment scanned by a
/// bounded loop, which the verifier walks entry by entry.
#[tracepoint]
pub fn syscalls_sys_enter_execve_bounded(ctx: TracePointContext) -> u32 {
    let _ = try_enter::<0, false>(&ctx, 0);
    0
}

#[tracepoint]
pub fn syscalls_sys_enter_execveat_bounded(ctx: TracePointContext) -> u32 {
    let _ = try_enter::<1, false>(&ctx, exec_flags::EXECVEAT);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_execve(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[tracepoint]
pub fn syscalls_sys_exit_execveat(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

/// "LISTEN_" as the low 7 bytes of a little-endian u64.
const LISTEN_PREFIX: u64 = u64::from_le_bytes(*b"LISTEN_\0");
const PREFIX_MASK: u64 = 0x00ff_ffff_ffff_ffff;

/// `SHIFT`: where the arguments start (execveat has a dirfd first). A constant, as the
/// verifier takes only constant offsets into the context. `LOOP`: the environment is scanned
/// with `bpf_loop`.
fn try_enter<const SHIFT: usize, const LOOP: bool>(
    ctx: &TracePointContext,
    flags: u32,
) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    let keep = watched(tgid)?;
    let slot = EXEC_SCRATCH.get_ptr_mut(0)?;
    {
        // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
        let rec = unsafe { &mut *slot };
        rec.flags = flags;
        rec.argc = 0;
        rec.filename[0] = 0;
        rec.listen_pid[0] = 0;
        rec.listen_fds[0] = 0;
        rec.listen_fdnames[0] = 0;
    }
    // The environment scan writes the slot itself: no reference to it lives across the call.
    let envp: u64 = arg(ctx, 2 + SHIFT)?;
    if LOOP {
        scan_env(envp);
    } else {
        scan_env_bounded(envp);
    }
    // SAFETY: as above.
    let rec = unsafe { &mut *slot };
    if !keep && rec.flags & exec_flags::HAS_LISTEN_FDS == 0 {
        return None;
    }

    let filename: u64 = arg(ctx, SHIFT)?;
    let _ = read_user_str(filename, &mut rec.filename);
    let argv: u64 = arg(ctx, 1 + SHIFT)?;
    read_argv(argv, rec);
    if PENDING_EXEC.insert(&pid_tgid, rec, 0).is_err() {
        count(counter::PENDING_FULL);
        warn!(
            ctx,
            "pending exec map full: exec of pid {} not recorded", tgid
        );
    }
    Some(())
}

fn read_argv(argv: u64, rec: &mut ExecRecord) {
    if argv == 0 {
        return;
    }
    for i in 0..ARGV_MAX {
        // SAFETY: user pointer reads through the fault-tolerant helper.
        let Ok(p) = (unsafe { bpf_probe_read_user((argv as *const u64).wrapping_add(i)) }) else {
            return;
        };
        if p == 0 {
            return;
        }
        let slot = &mut rec.argv[i];
        slot[0] = 0;
        if read_user_str(p, slot) == Some(true) {
            rec.flags |= exec_flags::ARG_CUT;
        }
        rec.argc = i as u32 + 1;
    }
    // SAFETY: as above.
    if let Ok(next) = unsafe { bpf_probe_read_user((argv as *const u64).wrapping_add(ARGV_MAX)) } {
        if next != 0 {
            rec.flags |= exec_flags::ARGV_TRUNCATED;
        }
    }
}

/// Looks at the first `ENVP_MAX` entries for the three LISTEN_* variables only. One entry per
/// bpf_loop step: the verifier checks the step once instead of walking all `ENVP_MAX`
/// iterations (which cost over 100 ms of start-up per exec program).
fn scan_env(envp: u64) {
    if envp == 0 {
        return;
    }
    let mut scan = EnvScan { envp };
    let step: unsafe extern "C" fn(u64, *mut EnvScan) -> i64 = env_entry;
    // SAFETY: the callback and its context follow bpf_loop's contract: a static function, and
    // a pointer to this frame's stack that outlives the call. The function reaches the
    // instruction as a function reference (transmuted, never through an integer).
    unsafe {
        bpf_loop(
            ENVP_MAX + 1,
            core::mem::transmute::<unsafe extern "C" fn(u64, *mut EnvScan) -> i64, *mut c_void>(
                step,
            ),
            (&mut scan as *mut EnvScan).cast(),
            0,
        );
    }
}

/// The same scan as a bounded loop. The step stays a function of its own: a kernel without
/// `bpf_loop` also cannot take it by reference (BPF_PSEUDO_FUNC came in 5.13), only as a call.
fn scan_env_bounded(envp: u64) {
    if envp == 0 {
        return;
    }
    let mut scan = EnvScan { envp };
    for i in 0..=ENVP_MAX as u64 {
        // SAFETY: the context is this frame's, as bpf_loop would pass it.
        if unsafe { env_entry(i, &mut scan) } != 0 {
            return;
        }
    }
}

#[repr(C)]
struct EnvScan {
    envp: u64,
}

/// bpf_loop's step: entry `i` of the environment; 1 ends the loop.
#[inline(never)]
unsafe extern "C" fn env_entry(i: u64, scan: *mut EnvScan) -> i64 {
    // SAFETY: bpf_loop passes back the context given to it, on the caller's stack.
    let envp = unsafe { (*scan).envp };
    let Some(rec) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of the program.
    let rec = unsafe { &mut *rec };
    // SAFETY: user pointer reads through the fault-tolerant helper.
    let Ok(p) = (unsafe { bpf_probe_read_user((envp as *const u64).wrapping_add(i as usize)) })
    else {
        return 1;
    };
    if p == 0 {
        return 1;
    }
    if i == ENVP_MAX as u64 {
        // One entry past the last one looked at: there was more.
        rec.flags |= exec_flags::ENVP_TRUNCATED;
        return 1;
    }
    let mut head = [0u8; 16];
    if read_user_str(p, &mut head).is_none() {
        return 0;
    }
    let word = u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]);
    if word & PREFIX_MASK != LISTEN_PREFIX {
        return 0;
    }
    let (read, has, cut) =
        if head[7] == b'P' && head[8] == b'I' && head[9] == b'D' && head[10] == b'=' {
            (
                read_user_str(p + 11, &mut rec.listen_pid),
                exec_flags::HAS_LISTEN_PID,
                exec_flags::LISTEN_PID_CUT,
            )
        } else if head[7] == b'F' && head[8] == b'D' && head[9] == b'S' && head[10] == b'=' {
            (
                read_user_str(p + 11, &mut rec.listen_fds),
                exec_flags::HAS_LISTEN_FDS,
                exec_flags::LISTEN_FDS_CUT,
            )
        } else if head[7] == b'F'
            && head[8] == b'D'
            && head[9] == b'N'
            && head[10] == b'A'
            && head[11] == b'M'
            && head[12] == b'E'
            && head[13] == b'S'
            && head[14] == b'='
        {
            (
                read_user_str(p + 15, &mut rec.listen_fdnames),
                exec_flags::HAS_LISTEN_FDNAMES,
                exec_flags::LISTEN_FDNAMES_CUT,
            )
        } else {
            return 0;
        };
    match read {
        Some(true) => rec.flags |= has | cut,
        Some(false) => rec.flags |= has,
        None => {}
    }
    0
}

fn try_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = tgid_of(pid_tgid);
    let pending = PENDING_EXEC.get_ptr(&pid_tgid)?;
    let ok = ret(ctx)? == 0;
    // Kept (written at all) when it was watched before, or when this exec makes it watched.
    let mut keep = watched(tgid).unwrap_or(false);
    let mut untrusted = false;
    if ok {
        // SAFETY: `pending` points at a live map value.
        let flags = unsafe { (*pending).flags };
        if flags & exec_flags::HAS_LISTEN_FDS != 0 {
            // SAFETY: points at a live map value.
            let bits = WATCHED.get_ptr(&tgid).map(|b| unsafe { *b }).unwrap_or(0);
            // Anyone can set LISTEN_*: only a service manager's, root's or what a trusted
            // process passed on makes a socket-activated service.
            let trusted = bits & (watch::TRUSTED | watch::SNAPSHOT) != 0
                || bpf_get_current_uid_gid() as u32 == 0
                || parent_is_manager();
            if !trusted {
                untrusted = true;
            } else if WATCHED
                .insert(&tgid, &(bits | watch::LISTEN_FDS | watch::TRUSTED), 0)
                .is_err()
            {
                count(counter::WATCH_FULL);
                warn!(
                    ctx,
                    "watch map full: pid {} exec'd with LISTEN_FDS is not watched", tgid
                );
            } else {
                keep = true;
                if bits == 0 {
                    debug!(ctx, "watching pid {}: exec'd with LISTEN_FDS", tgid);
                }
            }
        }
    }
    if ok && keep {
        if let Some(mut entry) = reserve::<ExecRecord>() {
            let out = entry.as_mut_ptr();
            // SAFETY: copies one whole record from the map value into the reserved slot.
            let copied = unsafe {
                raw_read_kernel(
                    out as *mut c_void,
                    core::mem::size_of::<ExecRecord>() as u32,
                    pending as *const c_void,
                )
            };
            if copied == 0 {
                // SAFETY: the slot now holds an initialised record.
                let rec = unsafe { &mut *out };
                if untrusted {
                    rec.flags |= exec_flags::LISTEN_UNTRUSTED;
                }
                fill_header(
                    &mut rec.header,
                    RecordKind::Exec,
                    core::mem::size_of::<ExecRecord>(),
                    pid_tgid,
                );
                read_cgroup_name(&mut rec.cgroup);
                entry.submit(wake_flags());
            } else {
                // Counted as submitted when reserved: count it as lost so the books balance.
                entry.discard(0);
                count(counter::LOST);
            }
        }
    }
    let _ = PENDING_EXEC.remove(&pid_tgid);
    Some(())
}
