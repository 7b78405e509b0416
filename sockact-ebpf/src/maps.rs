//! Every map and global the programs share, named as sockact-common's `names` says.
use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sockact_common::{ConnectRecord, ExecRecord, FilterConfig, KernelOffsets, ListenAddr, counter};

/// Records for userspace. Its size is set by the loader.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU counters, indexed by `sockact_common::counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Watched processes: TGID -> `sockact_common::watch` bits.
#[map(name = "WATCHED")]
pub static WATCHED: HashMap<u32, u32> = HashMap::with_max_entries(32768, 0);

/// Listeners whose accept queue is watched: socket inode -> `sockact_common::listener_watch`
/// bits. Filled here when systemd listens (or a selected port does), and by the loader with the
/// listeners that already existed; the loader removes closed ones.
#[map(name = "LISTENERS")]
pub static LISTENERS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// Watched TCP listeners by local address -> socket inode: how a connection's socket, cloned
/// from its listener, finds that listener on kernels without `sock:sk_data_ready`. Filled where
/// `LISTENERS` is, and emptied when the listener closes.
#[map(name = "LISTEN_ADDRS")]
pub static LISTEN_ADDRS: HashMap<ListenAddr, u64> = HashMap::with_max_entries(4096, 0);

/// When each connection on a watched listener was queued: child `struct sock` -> [`Queued`],
/// taken by the accept that returns it. LRU: a connection never accepted by a traced process
/// (systemd's own accepts for Accept=yes) ages out.
#[map]
pub static QUEUED: LruHashMap<u64, Queued> = LruHashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Queued {
    /// CLOCK_BOOTTIME ns.
    pub ts: u64,
    /// The listener's inode: an entry left by a connection nobody traced accepted, whose
    /// `struct sock` address was reused since, belongs to another listener and is not taken.
    pub listener: u64,
}

/// Non-blocking connects still in SYN_SENT: `struct sock` -> the record written when connect
/// returned EINPROGRESS, sent again with the outcome when the socket leaves SYN_SENT.
#[map]
pub static CONNECTING: LruHashMap<u64, ConnectRecord> = LruHashMap::with_max_entries(4096, 0);

/// A connect record is built here before it is sent and, for EINPROGRESS, parked.
#[map]
pub static CONNECT_SCRATCH: PerCpuArray<ConnectRecord> = PerCpuArray::with_max_entries(1, 0);

/// Ports selected with `--port`.
#[map(name = "PORTS")]
pub static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// An exec in flight: read at syscall entry (the caller's memory is gone after a successful
/// exec), emitted at exit only when it succeeded. Keyed by pid_tgid, so that threads exec'ing
/// at once cannot overwrite or drop each other's entry.
#[map]
pub static PENDING_EXEC: HashMap<u64, ExecRecord> = HashMap::with_max_entries(1024, 0);

/// The exec record is too large for the 512-byte stack: it is built here, then parked.
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecRecord> = PerCpuArray::with_max_entries(1, 0);

/// Arguments of a socket syscall in flight, keyed by pid_tgid, taken at its exit.
#[map]
pub static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// User pointer to a sockaddr (bind, connect); shutdown: the listener's port before the
    /// call.
    pub ptr: u64,
    pub fd: i32,
    /// backlog (listen), how (shutdown), addrlen (bind, connect).
    pub arg: i32,
    /// The RecordKind of the syscall that parked it: an exit takes only its own.
    pub call: u32,
    pub _pad: u32,
}

#[unsafe(no_mangle)]
pub static FILTER: Global<FilterConfig> = Global::new(FilterConfig {
    self_tgid: 0,
    all: 0,
    ports: 0,
    flags: 0,
});

#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    valid: 0,
    task_files: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_tgid: 0,
    task_thread_pid: 0,
    task_exit_code: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    file_inode: 0,
    inode_ino: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_state: 0,
    sk_num: 0,
    sk_dport: 0,
    sk_rcv_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_net: 0,
    net_ns_inum: 0,
    sk_reuseport_byte: 0,
    sk_reuseport_mask: 0,
    sk_ack_backlog: 0,
    sk_max_ack_backlog: 0,
    unix_addr: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    tp_fork_child_pid: 0,
    tp_exit_group_dead: 0,
    inode_mode: 0,
    sk_socket: 0,
    socket_alloc_inode: 0,
    sk_drops: 0,
    sk_err: 0,
    sk_accept_tail: 0,
    request_sock_sk: 0,
    sk_receive_queue_tail: 0,
    sk_receive_queue_len: 0,
    skb_sk: 0,
    tp_ready_skaddr: 0,
    tp_state_skaddr: 0,
    tp_state_old: 0,
    tp_state_new: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_name: 0,
    task_comm: 0,
});

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}
