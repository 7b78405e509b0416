//! The kernel/user boundary of sockact: every record the eBPF programs write to the ring buffer,
//! every global the loader hands them, and the names of the maps they share.
//!
//! Records are `#[repr(C)]`, padding-free and fixed-size; each starts with a [`RecordHeader`] whose
//! `kind` says which record follows and whose `version` changes whenever a layout does. The size of
//! every record is asserted at compile time, so a field added on one side only fails the build.
#![no_std]

/// Bumped whenever any record layout changes.
pub const RECORD_VERSION: u16 = 3;

/// Names of the maps and globals, shared so that the loader and the programs cannot disagree.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const WATCHED: &str = "WATCHED";
    pub const PORTS: &str = "PORTS";
    pub const FILTER: &str = "FILTER";
    pub const OFFSETS: &str = "OFFSETS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const LISTEN_ADDRS: &str = "LISTEN_ADDRS";
}

/// What follows the header. Values are part of the wire format: never reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Exec = 1,
    Exit = 2,
    // 3 was Fork: the header carries ppid, so the fork probe only marks children.
    Bind = 4,
    Listen = 5,
    Accept = 6,
    Connect = 7,
    Shutdown = 8,
    Queue = 9,
}

impl RecordKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Exec,
            2 => Self::Exit,
            4 => Self::Bind,
            5 => Self::Listen,
            6 => Self::Accept,
            7 => Self::Connect,
            8 => Self::Shutdown,
            9 => Self::Queue,
            _ => return None,
        })
    }
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Records the filter let through (each one a ring-buffer reserve attempt).
    pub const SUBMITTED: u32 = 0;
    /// Of those, the ones that found the ring buffer full.
    pub const LOST: u32 = 1;
    /// Watch marks that could not be stored because the `WATCHED` map was full.
    pub const WATCH_FULL: u32 = 2;
    /// Syscalls whose arguments could not be parked between enter and exit (map full).
    pub const PENDING_FULL: u32 = 3;
    /// Listeners whose accept queue could not be watched because `LISTENERS` was full.
    pub const LISTENERS_FULL: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Why a process is in the `WATCHED` map (bits).
pub mod watch {
    /// It was exec'd with `LISTEN_FDS` in its environment.
    pub const LISTEN_FDS: u32 = 1;
    /// An ancestor was watched when it forked.
    pub const INHERITED: u32 = 2;
    /// Userspace put it there for `--pid` (it and its descendants).
    pub const SELECTED: u32 = 4;
    /// The start-up snapshot put it there: a process of a socket-activated unit, or one
    /// holding a systemd listener, that already ran.
    pub const SNAPSHOT: u32 = 8;
    /// Its LISTEN_* came from a service manager (it was forked by one, or descends from a
    /// process that was) or from root: it is a socket-activated service's process. Inherited
    /// at fork like the other bits.
    pub const TRUSTED: u32 = 16;
}

/// Why a listener is in the `LISTENERS` map (bits): its accept queue is watched.
pub mod listener_watch {
    /// A systemd manager listened on it (a socket unit's listener).
    pub const MANAGER: u32 = 1;
    /// Its port was selected with `--port`.
    pub const PORT: u32 = 2;
    /// The start-up snapshot found it among systemd's listeners.
    pub const SNAPSHOT: u32 = 4;
}

pub const COMM_LEN: usize = 16;

/// First in every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    pub kind: u32,
    pub version: u16,
    /// Size of the whole record in bytes.
    pub size: u16,
    /// CLOCK_BOOTTIME, nanoseconds.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Host TGID.
    pub pid: u32,
    /// Host thread id.
    pub tid: u32,
    /// TGID of the real parent (0 when it could not be read).
    pub ppid: u32,
    pub uid: u32,
    /// TGID in the process's own PID namespace (0 when it could not be read).
    pub ns_pid: u32,
    /// The process's `watch` bits when the record was written.
    pub watch: u32,
    pub comm: [u8; COMM_LEN],
}

/// Room for any sockaddr the programs copy: `sockaddr_un` is 110 bytes.
pub const SOCKADDR_MAX: usize = 112;

/// A socket address as bytes: from the caller's buffer (bind, connect) or, for unix sockets,
/// from the kernel's own copy. `len` is the length given (it may exceed the bytes kept).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockAddrRaw {
    pub len: u32,
    /// Non-zero when the bytes were read.
    pub ok: u32,
    pub bytes: [u8; SOCKADDR_MAX],
}

/// Bits of [`SockInfo::flags`].
pub mod sock_flags {
    /// The fd resolved to a socket and its fields were read.
    pub const VALID: u8 = 1;
    /// SO_REUSEPORT was set on the socket.
    pub const REUSEPORT: u8 = 2;
}

/// What the kernel's `struct sock` says about a socket, read through the caller's fd table.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockInfo {
    /// Socket inode number: with `netns`, the socket's identity.
    pub inode: u64,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    pub family: u16,
    /// TCP state (10 = LISTEN).
    pub state: u8,
    pub flags: u8,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// sk_max_ack_backlog.
    pub backlog: u32,
    /// sk_ack_backlog: connections waiting in the accept queue.
    pub depth: u32,
    pub _pad: u32,
    /// IPv4 in the first 4 bytes, or IPv6, network byte order.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

pub const FILENAME_LEN: usize = 256;
pub const ARGV_MAX: usize = 8;
pub const ARG_LEN: usize = 64;
pub const LISTEN_VALUE_LEN: usize = 16;
pub const FDNAMES_LEN: usize = 256;
/// Room for the name of a process's cgroup: a unit name, Accept=yes instances' included
/// (`name@N-[local]:port-[remote]:port.service`).
pub const CGROUP_NAME_LEN: usize = 128;
/// How many environment entries the exec probe looks at for LISTEN_*.
pub const ENVP_MAX: u32 = 128;

/// Bits of [`ExecRecord::flags`].
pub mod exec_flags {
    pub const HAS_LISTEN_PID: u32 = 1;
    pub const HAS_LISTEN_FDS: u32 = 2;
    pub const HAS_LISTEN_FDNAMES: u32 = 4;
    /// More argv entries exist than were kept.
    pub const ARGV_TRUNCATED: u32 = 8;
    pub const EXECVEAT: u32 = 16;
    /// The environment had more entries than the probe looks at.
    pub const ENVP_TRUNCATED: u32 = 32;
    /// An argv entry, LISTEN_PID, LISTEN_FDS or LISTEN_FDNAMES filled its field: it may have
    /// been cut (a value of exactly the field's size less one looks the same).
    pub const ARG_CUT: u32 = 64;
    pub const LISTEN_PID_CUT: u32 = 128;
    pub const LISTEN_FDS_CUT: u32 = 256;
    pub const LISTEN_FDNAMES_CUT: u32 = 512;
    /// LISTEN_* set by neither a service manager nor root: any process can set them, so the
    /// process is not watched for them and its values prove nothing.
    pub const LISTEN_UNTRUSTED: u32 = 1024;
}

/// A successful execve/execveat. Strings are NUL-terminated as the kernel's string copy leaves
/// them; a string that fills its buffer was cut.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub flags: u32,
    /// argv entries kept (at most [`ARGV_MAX`]).
    pub argc: u32,
    pub filename: [u8; FILENAME_LEN],
    pub argv: [[u8; ARG_LEN]; ARGV_MAX],
    /// The values only, without `NAME=`.
    pub listen_pid: [u8; LISTEN_VALUE_LEN],
    pub listen_fds: [u8; LISTEN_VALUE_LEN],
    pub listen_fdnames: [u8; FDNAMES_LEN],
    /// The last component of the process's cgroup (cgroup v2), read in the kernel at exec: the
    /// unit of a process too short-lived to be found in /proc afterwards.
    pub cgroup: [u8; CGROUP_NAME_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: RecordHeader,
    /// The task's exit_code as wait() reports it: (code << 8) | signal.
    pub exit_code: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BindRecord {
    pub header: RecordHeader,
    pub fd: i32,
    pub _pad: u32,
    pub ret: i64,
    /// The address as the caller passed it.
    pub addr: SockAddrRaw,
    pub sock: SockInfo,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenRecord {
    pub header: RecordHeader,
    pub fd: i32,
    /// As passed to listen().
    pub backlog: i32,
    pub ret: i64,
    pub sock: SockInfo,
    /// The local address when the socket is a unix socket.
    pub unix: SockAddrRaw,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AcceptRecord {
    pub header: RecordHeader,
    pub listen_fd: i32,
    pub _pad: u32,
    /// The new fd, or a negative errno.
    pub ret: i64,
    /// How long the connection waited in the accept queue, nanoseconds; 0 when unknown (it
    /// was queued before the trace, or on a listener that is not watched).
    pub wait_ns: u64,
    pub listener: SockInfo,
    /// The accepted socket: its remote end is the peer.
    pub conn: SockInfo,
    /// The listener's address when it is a unix socket.
    pub unix: SockAddrRaw,
}

/// Bits of [`ConnectRecord::flags`].
pub mod connect_flags {
    /// The outcome of a non-blocking connect that returned EINPROGRESS, seen when the socket
    /// left SYN_SENT; the header's process is the one that called connect.
    pub const ASYNC: u32 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectRecord {
    pub header: RecordHeader,
    pub fd: i32,
    pub flags: u32,
    pub ret: i64,
    pub addr: SockAddrRaw,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShutdownRecord {
    pub header: RecordHeader,
    pub fd: i32,
    pub how: i32,
    pub ret: i64,
    /// Read before the call: the socket was listening.
    pub sock: SockInfo,
    pub unix: SockAddrRaw,
}

/// Bits of [`QueueRecord::flags`].
pub mod queue_flags {
    /// `drops` was not read: the record was written from the connection's own socket
    /// (`sock:inet_sock_set_state`, kernels without `sock:sk_data_ready`), which does not carry
    /// its listener's drop counter; sock_diag's samples do.
    pub const DROPS_UNREAD: u16 = 1;
}

/// A connection queued on a watched listener (`sock:sk_data_ready`, or on kernels without it
/// the connection's socket cloned from its listener in `sock:inet_sock_set_state`). Written in
/// softirq context: the header's process fields are zero, only `ts_ns` counts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QueueRecord {
    pub header: RecordHeader,
    /// The listener's socket inode.
    pub inode: u64,
    /// Connections waiting in its accept queue, this one included.
    pub depth: u32,
    /// sk_max_ack_backlog: the queue is full when `depth` exceeds it.
    pub backlog: u32,
    /// sk_drops: connections the listener dropped since it was created.
    pub drops: u32,
    pub family: u16,
    /// [`queue_flags`]; zero in records of version 3 written before the flags existed.
    pub flags: u16,
}

/// A TCP listener's local address as the kernel holds it, the key of `LISTEN_ADDRS` (-> its
/// socket inode): a connection's socket, cloned from its listener, carries the same until it
/// is given its own, which is how the listener is found on kernels without
/// `sock:sk_data_ready`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    /// Inode number of the listener's network namespace.
    pub netns: u32,
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    /// IPv4 in the first 4 bytes (the rest zero), or IPv6; network byte order.
    pub addr: [u8; 16],
}

/// Bits of [`FilterConfig::flags`].
pub mod filter_flags {
    /// The kernel has no `sock:sk_data_ready`: connections arriving in watched listeners'
    /// queues are seen in `sock:inet_sock_set_state` instead.
    pub const QUEUE_VIA_SET_STATE: u32 = 1;
}

/// Settings the loader hands the programs as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FilterConfig {
    /// The agent's own TGID: never traced.
    pub self_tgid: u32,
    /// Non-zero: every process (`--all`).
    pub all: u32,
    /// Non-zero: the `PORTS` map holds selected ports.
    pub ports: u32,
    /// [`filter_flags`].
    pub flags: u32,
}

/// Offsets of kernel structure members, resolved from BTF at start-up (aya's Rust eBPF has no
/// CO-RE relocations). A zero `valid` means the programs must not walk kernel structures.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub valid: u32,
    pub task_files: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_tgid: u32,
    pub task_thread_pid: u32,
    pub task_exit_code: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_nr: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_net: u32,
    pub net_ns_inum: u32,
    /// Byte holding the skc_reuseport bit, and its mask.
    pub sk_reuseport_byte: u32,
    pub sk_reuseport_mask: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    pub unix_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// Tracepoint field offsets, from the format files.
    pub tp_fork_child_pid: u32,
    pub tp_exit_group_dead: u32,
    pub inode_mode: u32,
    /// struct sock -> its struct socket, and where a socket's inode sits after it
    /// (`struct socket_alloc`).
    pub sk_socket: u32,
    pub socket_alloc_inode: u32,
    pub sk_drops: u32,
    pub sk_err: u32,
    /// From a TCP listener's struct sock to its accept queue's newest request
    /// (`icsk_accept_queue.rskq_accept_tail`), and from that request to the child socket.
    pub sk_accept_tail: u32,
    pub request_sock_sk: u32,
    /// A unix listener's queue of connections: its newest skb, its length, and the skb's
    /// socket (the one accept() returns).
    pub sk_receive_queue_tail: u32,
    pub sk_receive_queue_len: u32,
    pub skb_sk: u32,
    /// Tracepoint field offsets of `sock:sk_data_ready` and `sock:inet_sock_set_state`.
    pub tp_ready_skaddr: u32,
    pub tp_state_skaddr: u32,
    pub tp_state_old: u32,
    pub tp_state_new: u32,
    /// task_struct -> css_set -> default-hierarchy cgroup -> its kernfs node -> its name.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_name: u32,
    /// task_struct.comm: a parent's name, to tell a service manager ("systemd").
    pub task_comm: u32,
}

const _: () = {
    assert!(core::mem::size_of::<RecordHeader>() == 64);
    assert!(core::mem::size_of::<SockAddrRaw>() == 120);
    assert!(core::mem::size_of::<SockInfo>() == 64);
    assert!(core::mem::size_of::<ExecRecord>() == 1256);
    assert!(core::mem::size_of::<ExitRecord>() == 72);
    assert!(core::mem::size_of::<BindRecord>() == 264);
    assert!(core::mem::size_of::<ListenRecord>() == 264);
    assert!(core::mem::size_of::<AcceptRecord>() == 336);
    assert!(core::mem::size_of::<ConnectRecord>() == 200);
    assert!(core::mem::size_of::<ShutdownRecord>() == 264);
    assert!(core::mem::size_of::<QueueRecord>() == 88);
    assert!(core::mem::size_of::<FilterConfig>() == 16);
    assert!(core::mem::size_of::<ListenAddr>() == 24);
    assert!(core::mem::size_of::<KernelOffsets>() == 56 * 4);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type here is #[repr(C)], padding-free (asserted above), and valid for any
    // bit pattern.
    unsafe impl aya::Pod for FilterConfig {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for ListenAddr {}
}
