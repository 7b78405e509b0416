//! Reads of kernel structures through member offsets that the loader resolved from BTF, and the
//! record header every probe fills.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_uid_gid, bpf_probe_read_kernel,
    generated::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel as raw_read_kernel, bpf_probe_read_kernel_str as raw_read_kernel_str,
        bpf_probe_read_user as raw_read_user, bpf_probe_read_user_str as raw_read_user_str,
    },
};
use sockact_common::{
    ListenAddr, QueueRecord, RECORD_VERSION, RecordHeader, RecordKind, SOCKADDR_MAX, SockAddrRaw,
    SockInfo, queue_flags, sock_flags,
};

use crate::maps::WATCHED;

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// Sanity bound on a PID namespace nesting level.
const MAX_PID_LEVEL: u32 = 32;

#[inline(always)]
fn at(base: *const u8, off: u32) -> *const u8 {
    base.wrapping_add(off as usize)
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel(at(base, off) as *const T).ok() }
}

#[inline(always)]
unsafe fn read_ptr(base: *const u8, off: u32) -> Option<*const u8> {
    let p: *const u8 = unsafe { read(base, off)? };
    if p.is_null() { None } else { Some(p) }
}

/// One member offset, read from the table the loader set, by itself: `Global::load` would copy
/// the whole table (a load and a store per member) on every call, on paths that run for every
/// packet. Volatile, so that the compiler cannot fold in the table's value before loading.
macro_rules! off {
    ($field:ident) => {{
        let table =
            core::ptr::addr_of!($crate::maps::OFFSETS).cast::<sockact_common::KernelOffsets>();
        // SAFETY: `Global<T>` is repr(transparent) over `MaybeUninit<T>`, itself over `T`.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*table).$field)) };
        value
    }};
}
pub(crate) use off;

/// Whether the loader set the offsets (`Some(())`), so that `off!` reads mean something.
#[inline(always)]
pub fn offsets() -> Option<()> {
    let valid: u32 = off!(valid);
    if valid == 0 { None } else { Some(()) }
}

#[inline(always)]
fn current_task() -> *const u8 {
    // SAFETY: plain helper call.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// Reads `n` bytes (a constant at each call) of kernel memory into the start of `dst`; the
/// helper zeroes them when the read fails.
#[inline(always)]
unsafe fn read_into<const N: usize>(dst: &mut [u8; N], n: u32, src: *const u8) {
    let n = if n as usize > N { N as u32 } else { n };
    // SAFETY: fault-tolerant kernel read of at most the destination's size.
    unsafe { raw_read_kernel(dst.as_mut_ptr() as *mut c_void, n, src as *const c_void) };
}

/// Fills a header in place; `size` is the whole record's.
#[inline(always)]
pub fn fill_header(h: &mut RecordHeader, kind: RecordKind, size: usize, pid_tgid: u64) {
    // Looked up with a key on the stack, before the record holds the same value: kernels
    // before 6.x refuse a map key in ring-buffer memory.
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: points at a live map value.
    let watch = WATCHED.get_ptr(&tgid).map(|b| unsafe { *b }).unwrap_or(0);
    h.kind = kind as u32;
    h.version = RECORD_VERSION;
    h.size = size as u16;
    // SAFETY: plain helper calls.
    unsafe {
        h.ts_ns = bpf_ktime_get_boot_ns();
        h.cgroup_id = bpf_get_current_cgroup_id();
    }
    h.pid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.uid = bpf_get_current_uid_gid() as u32;
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    h.ppid = 0;
    h.ns_pid = 0;
    h.watch = watch;
    if let Some(()) = offsets() {
        let task = current_task();
        // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets.
        unsafe {
            if let Some(parent) = read_ptr(task, off!(task_real_parent)) {
                h.ppid = read::<u32>(parent, off!(task_tgid)).unwrap_or(0);
            }
            if let Some(leader) = read_ptr(task, off!(task_group_leader)) {
                h.ns_pid = ns_pid_of(leader).unwrap_or(0);
            }
        }
    }
}

/// Fills a header for a record written outside any process's syscall (softirq): the time and
/// the kind only, every process field zero.
#[inline(always)]
pub fn fill_bare_header(h: &mut RecordHeader, kind: RecordKind, size: usize, ts_ns: u64) {
    h.kind = kind as u32;
    h.version = RECORD_VERSION;
    h.size = size as u16;
    h.ts_ns = ts_ns;
    h.cgroup_id = 0;
    h.pid = 0;
    h.tid = 0;
    h.ppid = 0;
    h.uid = 0;
    h.ns_pid = 0;
    h.watch = 0;
    h.comm = [0; 16];
}

/// CLOCK_BOOTTIME, the clock of every record.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The task's PID as its own PID namespace sees it.
#[inline(always)]
unsafe fn ns_pid_of(task: *const u8) -> Option<u32> {
    unsafe {
        let pid = read_ptr(task, off!(task_thread_pid))?;
        let level: u32 = read(pid, off!(pid_level))?;
        if level > MAX_PID_LEVEL {
            return None;
        }
        read(
            pid,
            off!(pid_numbers) + level * off!(upid_size) + off!(upid_nr),
        )
    }
}

/// Copies the name of the current task's cgroup (default hierarchy) into `dst`, NUL-terminated;
/// empty when it cannot be read.
#[inline(always)]
pub fn read_cgroup_name<const N: usize>(dst: &mut [u8; N]) {
    dst[0] = 0;
    let Some(()) = offsets() else { return };
    if off!(task_cgroups) == 0 {
        return;
    }
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets; the string copy is bounded
    // by the destination's constant size.
    unsafe {
        let Some(css_set) = read_ptr(current_task(), off!(task_cgroups)) else {
            return;
        };
        let Some(cgroup) = read_ptr(css_set, off!(css_set_dfl_cgrp)) else {
            return;
        };
        let Some(kn) = read_ptr(cgroup, off!(cgroup_kn)) else {
            return;
        };
        let Some(name) = read_ptr(kn, off!(kernfs_node_name)) else {
            return;
        };
        raw_read_kernel_str(
            dst.as_mut_ptr() as *mut c_void,
            N as u32,
            name as *const c_void,
        );
    }
}

/// Whether the current task's real parent is a service manager: PID 1 of a namespace or a
/// `systemd --user`, both named "systemd" (the children systemd forks rename themselves before
/// they exec, their parent keeps its name).
#[inline(always)]
pub fn parent_is_manager() -> bool {
    let Some(()) = offsets() else { return false };
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets.
    unsafe {
        let Some(parent) = read_ptr(current_task(), off!(task_real_parent)) else {
            return false;
        };
        let head: u64 = read(parent, off!(task_comm)).unwrap_or(0);
        head == u64::from_le_bytes(*b"systemd\0")
    }
}

/// The current task's exit_code (as wait() reports it).
#[inline(always)]
pub fn current_exit_code() -> u32 {
    match offsets() {
        // SAFETY: fault-tolerant kernel read.
        Some(()) => unsafe { read::<u32>(current_task(), off!(task_exit_code)).unwrap_or(0) },
        None => 0,
    }
}

/// The `struct sock` behind one of the current process's fds, with its socket inode number.
#[inline(always)]
pub fn sock_of_fd(fd: i32) -> Option<(*const u8, u64)> {
    offsets()?;
    if fd < 0 {
        return None;
    }
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets; the fd index is checked
    // against the table's size.
    unsafe {
        let files = read_ptr(current_task(), off!(task_files))?;
        let fdt = read_ptr(files, off!(files_fdt))?;
        let max_fds: u32 = read(fdt, off!(fdt_max_fds))?;
        if fd as u32 >= max_fds {
            return None;
        }
        let fd_array = read_ptr(fdt, off!(fdt_fd))?;
        let file = read_ptr(fd_array, fd as u32 * 8)?;
        let inode = read_ptr(file, off!(file_inode))?;
        let mode: u16 = read(inode, off!(inode_mode))?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let ino: u64 = read(inode, off!(inode_ino))?;
        let socket = read_ptr(file, off!(file_private_data))?;
        let sk = read_ptr(socket, off!(socket_sk))?;
        Some((sk, ino))
    }
}

/// The TCP state of a socket (10 = LISTEN).
#[inline(always)]
pub fn sock_state(sk: *const u8) -> u8 {
    match offsets() {
        // SAFETY: fault-tolerant kernel read.
        Some(()) => unsafe { read(sk, off!(sk_state)).unwrap_or(0) },
        None => 0,
    }
}

/// The local port of a socket, host byte order.
#[inline(always)]
pub fn sock_local_port(sk: *const u8) -> u16 {
    match offsets() {
        // SAFETY: fault-tolerant kernel read.
        Some(()) => unsafe { read(sk, off!(sk_num)).unwrap_or(0) },
        None => 0,
    }
}

/// The inode number of a socket's `struct socket` (the number /proc and sock_diag show),
/// through the socket it is attached to.
#[inline(always)]
pub fn sock_inode(sk: *const u8) -> Option<u64> {
    offsets()?;
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets; `struct socket` sits in a
    // `struct socket_alloc` followed by its inode.
    unsafe {
        let socket = read_ptr(sk, off!(sk_socket))?;
        read(socket, off!(socket_alloc_inode) + off!(inode_ino))
    }
}

/// A listener's error code as the kernel set it (`sk_err`, a positive errno).
#[inline(always)]
pub fn sock_err(sk: *const u8) -> i32 {
    match offsets() {
        // SAFETY: fault-tolerant kernel read.
        Some(()) => unsafe { read(sk, off!(sk_err)).unwrap_or(0) },
        None => 0,
    }
}

/// Fills a queue record from a listener that just queued a connection, and returns the child
/// socket it queued (null when it could not be read): the newest request of a TCP accept
/// queue, the newest skb's socket for a unix listener.
#[inline(always)]
pub fn fill_queue(rec: &mut QueueRecord, sk: *const u8, family: u16) -> *const u8 {
    rec.depth = 0;
    rec.backlog = 0;
    rec.drops = 0;
    rec.family = family;
    rec.flags = 0;
    let Some(()) = offsets() else {
        return core::ptr::null();
    };
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets.
    unsafe {
        rec.backlog = read(sk, off!(sk_max_ack_backlog)).unwrap_or(0);
        rec.drops = read(sk, off!(sk_drops)).unwrap_or(0);
        // The newest entry of the queue, then the socket it holds.
        let (depth_at, tail_at, child_at) = if family == AF_UNIX {
            (
                off!(sk_receive_queue_len),
                off!(sk_receive_queue_tail),
                off!(skb_sk),
            )
        } else {
            (
                off!(sk_ack_backlog),
                off!(sk_accept_tail),
                off!(request_sock_sk),
            )
        };
        rec.depth = read(sk, depth_at).unwrap_or(0);
        let Some(tail) = read_ptr(sk, tail_at) else {
            return core::ptr::null();
        };
        match read_ptr(tail, child_at) {
            Some(child) => child,
            None => core::ptr::null(),
        }
    }
}

/// Fills a queue record from a connection's socket just cloned from its listener
/// (`sock:inet_sock_set_state`, LISTEN -> SYN_RECV): until the clone is given its own, it holds
/// its listener's counters, the depth before this connection joins the queue included. The
/// listener's drop counter is not among them (the clone's is reset).
#[inline(always)]
pub fn fill_queue_from_clone(rec: &mut QueueRecord, child: *const u8, family: u16) {
    rec.family = family;
    rec.flags = queue_flags::DROPS_UNREAD;
    rec.drops = 0;
    rec.depth = 0;
    rec.backlog = 0;
    let Some(()) = offsets() else { return };
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets.
    unsafe {
        rec.backlog = read(child, off!(sk_max_ack_backlog)).unwrap_or(0);
        let before: u32 = read(child, off!(sk_ack_backlog)).unwrap_or(0);
        rec.depth = before.saturating_add(1);
    }
}

/// A TCP socket's local address as `LISTEN_ADDRS` keys it.
#[inline(always)]
pub fn listen_addr_of(sk: *const u8) -> Option<ListenAddr> {
    offsets()?;
    let mut key = ListenAddr::default();
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets.
    unsafe {
        key.family = read(sk, off!(sk_family))?;
        key.port = read(sk, off!(sk_num))?;
        let net = read_ptr(sk, off!(sk_net))?;
        key.netns = read(net, off!(net_ns_inum))?;
        if key.family == AF_INET {
            read_into(&mut key.addr, 4, at(sk, off!(sk_rcv_saddr)));
        } else if key.family == AF_INET6 {
            read_into(&mut key.addr, 16, at(sk, off!(sk_v6_rcv_saddr)));
        } else {
            return None;
        }
    }
    Some(key)
}

/// `LISTEN_ADDRS`'s key for a listener whose socket info was just read.
#[inline(always)]
pub fn listen_addr_of_info(info: &SockInfo) -> Option<ListenAddr> {
    if info.family != AF_INET && info.family != AF_INET6 {
        return None;
    }
    Some(ListenAddr {
        netns: info.netns,
        port: info.local_port,
        family: info.family,
        addr: info.local_addr,
    })
}

/// The family of a socket.
#[inline(always)]
pub fn sock_family(sk: *const u8) -> u16 {
    match offsets() {
        // SAFETY: fault-tolerant kernel read.
        Some(()) => unsafe { read(sk, off!(sk_family)).unwrap_or(0) },
        None => 0,
    }
}

/// Fills `info` from the socket behind `fd`; returns its `struct sock`, null when the fd did
/// not resolve (a plain pointer, not an Option of a tuple: LLVM leaves the payload of a None
/// undefined, and the verifier rejects reading an undefined register).
#[inline(always)]
pub fn fill_sock_info(info: &mut SockInfo, fd: i32) -> *const u8 {
    info.flags = 0;
    info.family = 0;
    info.inode = 0;
    info.netns = 0;
    info.state = 0;
    info.local_port = 0;
    info.remote_port = 0;
    info.backlog = 0;
    info.depth = 0;
    info._pad = 0;
    info.local_addr = [0; 16];
    info.remote_addr = [0; 16];
    let Some(()) = offsets() else {
        return core::ptr::null();
    };
    let Some((sk, ino)) = sock_of_fd(fd) else {
        return core::ptr::null();
    };
    info.inode = ino;
    // SAFETY: fault-tolerant kernel reads at BTF-resolved offsets.
    unsafe {
        let Some(family) = read::<u16>(sk, off!(sk_family)) else {
            return core::ptr::null();
        };
        info.family = family;
        info.flags = sock_flags::VALID;
        info.state = read(sk, off!(sk_state)).unwrap_or(0);
        info.local_port = read(sk, off!(sk_num)).unwrap_or(0);
        info.remote_port = u16::from_be(read(sk, off!(sk_dport)).unwrap_or(0));
        info.backlog = read(sk, off!(sk_max_ack_backlog)).unwrap_or(0);
        // A unix listener's waiting connections are its receive queue.
        let depth_at = if family == AF_UNIX {
            off!(sk_receive_queue_len)
        } else {
            off!(sk_ack_backlog)
        };
        info.depth = read(sk, depth_at).unwrap_or(0);
        let reuse: u8 = read(sk, off!(sk_reuseport_byte)).unwrap_or(0);
        if reuse & off!(sk_reuseport_mask) as u8 != 0 {
            info.flags |= sock_flags::REUSEPORT;
        }
        if let Some(net) = read_ptr(sk, off!(sk_net)) {
            info.netns = read(net, off!(net_ns_inum)).unwrap_or(0);
        }
        if family == AF_INET {
            let local: [u8; 4] = read(sk, off!(sk_rcv_saddr)).unwrap_or([0; 4]);
            let remote: [u8; 4] = read(sk, off!(sk_daddr)).unwrap_or([0; 4]);
            info.local_addr[..4].copy_from_slice(&local);
            info.remote_addr[..4].copy_from_slice(&remote);
        } else if family == AF_INET6 {
            info.local_addr = read(sk, off!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
            info.remote_addr = read(sk, off!(sk_v6_daddr)).unwrap_or([0; 16]);
        }
        sk
    }
}

/// Copies a unix socket's own address (the kernel's `unix_address`) into `raw`.
#[inline(always)]
pub fn fill_unix_addr(raw: &mut SockAddrRaw, sk: *const u8) {
    raw.len = 0;
    raw.ok = 0;
    let Some(()) = offsets() else { return };
    // SAFETY: fault-tolerant kernel reads; the copy size is clamped to the buffer.
    unsafe {
        let Some(addr) = read_ptr(sk, off!(unix_addr)) else {
            return;
        };
        let Some(len) = read::<i32>(addr, off!(unix_address_len)) else {
            return;
        };
        let n = clamp_len(len as u32);
        raw.len = len as u32;
        if raw_read_kernel(
            raw.bytes.as_mut_ptr() as *mut c_void,
            n,
            at(addr, off!(unix_address_name)) as *const c_void,
        ) == 0
        {
            raw.ok = 1;
        }
    }
}

/// Copies a caller's sockaddr into `raw`.
#[inline(always)]
pub fn fill_user_addr(raw: &mut SockAddrRaw, ptr: u64, len: i32) {
    raw.len = len as u32;
    raw.ok = 0;
    if ptr == 0 || len <= 0 {
        return;
    }
    let n = clamp_len(len as u32);
    // SAFETY: fault-tolerant user read; the size is clamped to the buffer.
    if unsafe {
        raw_read_user(
            raw.bytes.as_mut_ptr() as *mut c_void,
            n,
            ptr as *const c_void,
        )
    } == 0
    {
        raw.ok = 1;
    }
}

/// A copy size the verifier can bound: 1..=SOCKADDR_MAX.
#[inline(always)]
fn clamp_len(len: u32) -> u32 {
    let n = if len > SOCKADDR_MAX as u32 {
        SOCKADDR_MAX as u32
    } else {
        len
    };
    if n == 0 { 1 } else { n }
}

/// Whether a family is AF_UNIX.
#[inline(always)]
pub fn is_unix(family: u16) -> bool {
    family == AF_UNIX
}

/// Copies a NUL-terminated user string into `dst` (always NUL-terminated, cut to fit). None
/// when the read failed; else whether the string filled `dst`, so that it may have been cut
/// (the helper cannot tell a string of exactly N - 1 bytes from a longer one).
#[inline(always)]
pub fn read_user_str<const N: usize>(src: u64, dst: &mut [u8; N]) -> Option<bool> {
    // SAFETY: fault-tolerant user read bounded by the destination's constant size.
    let n = unsafe {
        raw_read_user_str(
            dst.as_mut_ptr() as *mut c_void,
            N as u32,
            src as *const c_void,
        )
    };
    (n > 0).then_some(n as usize >= N)
}
