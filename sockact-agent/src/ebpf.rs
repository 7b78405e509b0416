//! Loads the embedded eBPF object, hands it its globals, and attaches every program from one
//! table. What fails to attach is reported, and the rest keeps running.
use std::collections::HashSet;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{TracePoint, trace_point::TracePointLink},
};
use sockact_common::{FilterConfig, KernelOffsets, ListenAddr, counter, names};

use crate::{
    events::AttachFailure,
    features::{Family, Features, Kernel},
};

/// The object built by build.rs from sockact-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockact"));

/// Where a program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// On every kernel.
    Always,
    /// Where the kernel has the `bpf_loop` helper (5.17+).
    BpfLoop,
    /// Where it has not: the same work as a bounded loop.
    Bounded,
    /// Where the kernel has its tracepoint; where it has not, another mechanism stands in, so
    /// that it is not a failure (`sock:sk_data_ready`, 6.3+).
    IfPresent,
}

/// One program of the object and its tracepoint.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub category: &'static str,
    pub tracepoint: &'static str,
    /// The family it serves alone (None: several, see [`features`]).
    pub family: Option<Family>,
    pub variant: Variant,
}

const fn program(
    name: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    family: Option<Family>,
    variant: Variant,
) -> Program {
    Program {
        name,
        category,
        tracepoint,
        family,
        variant,
    }
}

use Variant::{Always, Bounded, BpfLoop, IfPresent};

const EXEC: Option<Family> = Some(Family::Exec);
const BIND: Option<Family> = Some(Family::Bind);
const LISTEN: Option<Family> = Some(Family::Listen);
const ACCEPT: Option<Family> = Some(Family::Accept);
const CONNECT: Option<Family> = Some(Family::Connect);
const SHUTDOWN: Option<Family> = Some(Family::Shutdown);
const LIFETIMES: Option<Family> = Some(Family::Lifetimes);
const QUEUE: Option<Family> = Some(Family::AcceptQueue);

/// Every program. Exits come first: a syscall's exit must be in place before its entry parks
/// anything for it.
pub const PROGRAMS: &[Program] = &[
    program(
        "syscalls_sys_exit_execve",
        "syscalls",
        "sys_exit_execve",
        EXEC,
        Always,
    ),
    program(
        "syscalls_sys_exit_execveat",
        "syscalls",
        "sys_exit_execveat",
        EXEC,
        Always,
    ),
    program(
        "syscalls_sys_exit_bind",
        "syscalls",
        "sys_exit_bind",
        BIND,
        Always,
    ),
    program(
        "syscalls_sys_exit_listen",
        "syscalls",
        "sys_exit_listen",
        LISTEN,
        Always,
    ),
    program(
        "syscalls_sys_exit_accept",
        "syscalls",
        "sys_exit_accept",
        ACCEPT,
        Always,
    ),
    program(
        "syscalls_sys_exit_accept4",
        "syscalls",
        "sys_exit_accept4",
        ACCEPT,
        Always,
    ),
    program(
        "syscalls_sys_exit_connect",
        "syscalls",
        "sys_exit_connect",
        CONNECT,
        Always,
    ),
    program(
        "syscalls_sys_exit_shutdown",
        "syscalls",
        "sys_exit_shutdown",
        SHUTDOWN,
        Always,
    ),
    // Connect outcomes, listeners closing, and the accept queue where sk_data_ready is missing.
    program(
        "sock_inet_sock_set_state",
        "sock",
        "inet_sock_set_state",
        None,
        Always,
    ),
    program(
        "sock_sk_data_ready",
        "sock",
        "sk_data_ready",
        QUEUE,
        IfPresent,
    ),
    program(
        "sched_sched_process_fork",
        "sched",
        "sched_process_fork",
        LIFETIMES,
        Always,
    ),
    program(
        "sched_sched_process_exit",
        "sched",
        "sched_process_exit",
        LIFETIMES,
        Always,
    ),
    program(
        "syscalls_sys_enter_execve",
        "syscalls",
        "sys_enter_execve",
        EXEC,
        BpfLoop,
    ),
    program(
        "syscalls_sys_enter_execveat",
        "syscalls",
        "sys_enter_execveat",
        EXEC,
        BpfLoop,
    ),
    program(
        "syscalls_sys_enter_execve_bounded",
        "syscalls",
        "sys_enter_execve",
        EXEC,
        Bounded,
    ),
    program(
        "syscalls_sys_enter_execveat_bounded",
        "syscalls",
        "sys_enter_execveat",
        EXEC,
        Bounded,
    ),
    program(
        "syscalls_sys_enter_bind",
        "syscalls",
        "sys_enter_bind",
        BIND,
        Always,
    ),
    program(
        "syscalls_sys_enter_listen",
        "syscalls",
        "sys_enter_listen",
        LISTEN,
        Always,
    ),
    program(
        "syscalls_sys_enter_accept",
        "syscalls",
        "sys_enter_accept",
        ACCEPT,
        Always,
    ),
    program(
        "syscalls_sys_enter_accept4",
        "syscalls",
        "sys_enter_accept4",
        ACCEPT,
        Always,
    ),
    program(
        "syscalls_sys_enter_connect",
        "syscalls",
        "sys_enter_connect",
        CONNECT,
        Always,
    ),
    program(
        "syscalls_sys_enter_shutdown",
        "syscalls",
        "sys_enter_shutdown",
        SHUTDOWN,
        Always,
    ),
];

impl Program {
    /// Whether this kernel gets this program.
    pub fn applies(&self, kernel: &Kernel) -> bool {
        match self.variant {
            Always => true,
            BpfLoop => kernel.bpf_loop,
            Bounded => !kernel.bpf_loop,
            IfPresent => kernel.has_tracepoint(self.category, self.tracepoint),
        }
    }
}

/// The mechanism in use for each family, from the programs that attached: a family works when
/// every program of it that this kernel gets attached.
pub fn features(kernel: &Kernel, attached: &HashSet<&str>) -> Features {
    let works = |family: Family| {
        PROGRAMS
            .iter()
            .filter(|p| p.family == Some(family) && p.applies(kernel))
            .all(|p| attached.contains(p.name))
    };
    let mut out = Features::new();
    for family in Family::ALL {
        let mechanism = match family {
            Family::Exec => works(family).then_some(if kernel.bpf_loop {
                "bpf_loop"
            } else {
                "bounded_loop"
            }),
            Family::Lifetimes => works(family).then_some("sched"),
            Family::AcceptQueue if kernel.queue_via_set_state() => attached
                .contains("sock_inet_sock_set_state")
                .then_some("inet_sock_set_state"),
            Family::AcceptQueue => works(family).then_some("sk_data_ready"),
            _ => works(family).then_some("syscalls"),
        };
        out.insert(family, mechanism.map(str::to_owned));
    }
    out
}

/// Ring buffer size: a burst of about 16,000 bind-sized records.
pub const RING_BYTES: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no map {0}")]
    NoMap(&'static str),
    #[error("opening map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no program could be attached")]
    NothingAttached,
    /// The caller's `give_up` said so (the reader of the stream went away).
    #[error("loading was abandoned")]
    GaveUp,
}

/// What the loader needs to know.
pub struct LoadOptions {
    /// What the kernel has: which programs it gets.
    pub kernel: Kernel,
    pub filter: FilterConfig,
    pub offsets: KernelOffsets,
    pub kernel_log: bool,
    /// Ports to keep whoever uses them (`--port`).
    pub ports: Vec<u16>,
}

/// The loaded programs and the maps userspace reads.
pub struct Loaded {
    /// None once detached.
    ebpf: Option<Ebpf>,
    /// Owned here so that detaching closes them all at once (see [`Loaded::detach`]).
    links: Vec<TracePointLink>,
    pub ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    pub attached: Vec<String>,
    pub failed: Vec<AttachFailure>,
    /// The mechanism in use for each family of events.
    pub features: Features,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The kernel's per-CPU counters, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub submitted: u64,
    pub lost: u64,
    pub watch_full: u64,
    pub pending_full: u64,
    pub listeners_full: u64,
}

/// aya's loader reads and parses the kernel's BTF as it is made, tens of milliseconds that
/// sockact does not need (no CO-RE): it is made on a thread of its own while the session
/// starts (offsets, systemd), and taken by [`load`].
pub struct LoaderInTheMaking(std::thread::JoinHandle<EbpfLoader<'static>>);

pub fn make_loader() -> LoaderInTheMaking {
    LoaderInTheMaking(std::thread::spawn(EbpfLoader::new))
}

/// Loads and attaches every program; `give_up` is asked before each one, so that a stream
/// whose reader went away does not wait for the verifier.
pub fn load(
    making: LoaderInTheMaking,
    opts: &LoadOptions,
    give_up: &dyn Fn() -> bool,
) -> Result<Loaded, EbpfError> {
    let mut loader = making.0.join().unwrap_or_else(|_| EbpfLoader::new());
    // The programs read kernel structs at offsets computed here (OFFSETS), never through CO-RE
    // relocations: the kernel's BTF need not be parsed a second time.
    loader
        .btf(None)
        .override_global(names::FILTER, &opts.filter, true)
        .override_global(names::OFFSETS, &opts.offsets, true)
        .map_max_entries(names::EVENTS, RING_BYTES);
    // Off unless asked for: a disabled log statement costs one load and a branch.
    let off: u8 = 0;
    if !opts.kernel_log {
        loader.override_global(aya_log::LEVEL, &off, false);
    }
    let mut ebpf = loader.load(OBJECT).map_err(EbpfError::Load)?;

    if opts.kernel_log {
        crate::kernel_log::start(&mut ebpf);
    }

    let mut ports: BpfHashMap<_, u16, u8> = BpfHashMap::try_from(
        ebpf.map_mut(names::PORTS)
            .ok_or(EbpfError::NoMap(names::PORTS))?,
    )
    .map_err(|source| EbpfError::Map {
        name: names::PORTS,
        source,
    })?;
    for port in &opts.ports {
        ports.insert(port, 1, 0).map_err(|source| EbpfError::Map {
            name: names::PORTS,
            source,
        })?;
    }

    let ring = RingBuf::try_from(
        ebpf.take_map(names::EVENTS)
            .ok_or(EbpfError::NoMap(names::EVENTS))?,
    )
    .map_err(|source| EbpfError::Map {
        name: names::EVENTS,
        source,
    })?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map(names::COUNTERS)
            .ok_or(EbpfError::NoMap(names::COUNTERS))?,
    )
    .map_err(|source| EbpfError::Map {
        name: names::COUNTERS,
        source,
    })?;

    let (links, attached, failed) = attach_all(&mut ebpf, &opts.kernel, give_up)?;
    if attached.is_empty() {
        return Err(EbpfError::NothingAttached);
    }
    let names: HashSet<&str> = attached.iter().map(String::as_str).collect();
    let features = features(&opts.kernel, &names);
    Ok(Loaded {
        ebpf: Some(ebpf),
        links,
        ring,
        counters,
        attached,
        failed,
        features,
    })
}

type Attached = (Vec<TracePointLink>, Vec<String>, Vec<AttachFailure>);

/// Programs to refuse as if the kernel had: a switch for tests of degraded kernels, honoured by
/// debug builds only.
const REFUSE_ENV: &str = "SOCKACT_REFUSE_PROGRAMS";

fn refused_for_tests() -> Vec<String> {
    if !cfg!(debug_assertions) {
        return Vec::new();
    }
    std::env::var(REFUSE_ENV)
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default()
}

fn attach_all(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    give_up: &dyn Fn() -> bool,
) -> Result<Attached, EbpfError> {
    let mut links = Vec::new();
    let mut attached = Vec::new();
    let mut failed = Vec::new();
    let mut seen = HashSet::new();
    let refused = refused_for_tests();
    for p in PROGRAMS {
        let name = p.name;
        seen.insert(name);
        if !p.applies(kernel) {
            continue;
        }
        if give_up() {
            detach_all(links);
            return Err(EbpfError::GaveUp);
        }
        let result = if refused.iter().any(|r| r == name) {
            Err(format!("refused by {REFUSE_ENV} (a test switch)"))
        } else {
            attach_one(ebpf, name, p.category, p.tracepoint)
        };
        match result {
            Ok(link) => {
                links.push(link);
                attached.push(name.to_owned());
            }
            Err(error) => {
                // Said by the caller: once, and only where it is not the whole story.
                failed.push(AttachFailure {
                    program: name.to_owned(),
                    error,
                });
            }
        }
    }
    for (name, _) in ebpf.programs() {
        debug_assert!(
            seen.contains(name),
            "program {name} is missing from PROGRAMS"
        );
    }
    Ok((links, attached, failed))
}

/// Each tracepoint detach waits for an RCU grace period (tens of milliseconds); one after
/// another they take over a second, from several threads a good part of them overlap.
fn detach_all(links: Vec<TracePointLink>) {
    std::thread::scope(|s| {
        for link in links {
            // Without a thread to have, the closure and its link are dropped here and now.
            if let Err(e) = std::thread::Builder::new().spawn_scoped(s, move || drop(link)) {
                tracing::debug!("detaching without a thread: {e}");
            }
        }
    });
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &str,
    category: &str,
    tracepoint: &str,
) -> Result<TracePointLink, String> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| "not in the eBPF object".to_owned())?;
    let tp: &mut TracePoint = program.try_into().map_err(|e| format!("{e}"))?;
    tp.load().map_err(|e| {
        // The verifier's whole log, for whoever runs with -vv.
        tracing::debug!("{name}: {e:#?}");
        error_chain(&e)
    })?;
    let id = tp
        .attach(category, tracepoint)
        .map_err(|e| error_chain(&e))?;
    tp.take_link(id).map_err(|e| error_chain(&e))
}

/// An error and its sources on one line. A verifier log is long: its first line and the
/// verifier's verdict, the last line before its statistics.
fn error_chain(e: &dyn std::error::Error) -> String {
    let first = |s: String| {
        let head = s.lines().next().unwrap_or_default().to_owned();
        let verdict = s
            .lines()
            .collect::<Vec<_>>()
            .into_iter()
            .skip(1)
            .rev()
            .find(|l| {
                let l = l.trim();
                !l.is_empty()
                    && !l.starts_with("processed ")
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
            });
        match verdict {
            Some(v) => format!("{head} ... {}", v.trim()),
            None => head,
        }
    };
    let mut text = first(e.to_string());
    let mut source = e.source();
    while let Some(s) = source {
        let msg = first(s.to_string());
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = s.source();
    }
    text
}

impl Loaded {
    /// Detaches and unloads every program; the ring buffer and the counters stay readable, so
    /// that what was submitted can be drained to the last record.
    pub fn detach(&mut self) {
        detach_all(std::mem::take(&mut self.links));
        self.ebpf.take();
    }

    /// Lets this process end now, without waiting for the detach (most of a second, see
    /// [`detach_all`]): a child process shares the programs' fds and detaches them as it exits,
    /// while this one only drops its references. For a reader that went away, whom nothing
    /// more is owed.
    pub fn detach_in_background(mut self) {
        // The child must drop its references last: it waits until this process closes the
        // pipe, after its own references are gone.
        let mut pipe = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array it is given.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            self.detach();
            return;
        }
        // Everything but the programs' own fds, for the child to close at once: it must not
        // keep stdout, stderr, listening sockets or connections open while it detaches.
        let others: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|fds| {
                fds.flatten()
                    .filter_map(|fd| {
                        let n: i32 = fd.file_name().to_str()?.parse().ok()?;
                        let target = std::fs::read_link(fd.path()).ok()?;
                        let target = target.to_string_lossy();
                        let bpf = target.starts_with("anon_inode:bpf")
                            || target.starts_with("anon_inode:[perf_event]");
                        (!bpf && n != pipe[0]).then_some(n)
                    })
                    .collect()
            })
            .unwrap_or_default();
        // SAFETY: the child calls only close, read and _exit, which are async-signal-safe, and
        // touches no memory but `others` and `byte`, so forking a multi-threaded process is
        // sound.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: see above; `byte` outlives the read.
            unsafe {
                for &fd in &others {
                    libc::close(fd);
                }
                libc::read(pipe[0], (&raw mut byte).cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: our own fds, closed once.
        unsafe { libc::close(pipe[0]) };
        if pid < 0 {
            // SAFETY: our own fd, closed once.
            unsafe { libc::close(pipe[1]) };
            self.detach();
            return;
        }
        drop(std::mem::take(&mut self.links));
        self.ebpf.take();
        // SAFETY: our own fd, closed once. The child wakes and detaches while this process
        // goes on.
        unsafe { libc::close(pipe[1]) };
    }

    /// Marks more processes as watched (`--pid` and their existing descendants, the
    /// start-up snapshot).
    pub fn watch(&mut self, pids: &[u32], bits: u32) -> Result<(), EbpfError> {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(());
        };
        let mut watched: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
            ebpf.map_mut(names::WATCHED)
                .ok_or(EbpfError::NoMap(names::WATCHED))?,
        )
        .map_err(|source| EbpfError::Map {
            name: names::WATCHED,
            source,
        })?;
        for pid in pids {
            let old = watched.get(pid, 0).unwrap_or(0);
            watched
                .insert(pid, old | bits, 0)
                .map_err(|source| EbpfError::Map {
                    name: names::WATCHED,
                    source,
                })?;
        }
        Ok(())
    }

    /// Watches the accept queue of more listeners (the start-up snapshot's), by socket inode,
    /// with the local address of the TCP ones (see `LISTEN_ADDRS`).
    pub fn watch_listeners(
        &mut self,
        listeners: &[(u64, Option<ListenAddr>)],
        bits: u32,
    ) -> Result<(), EbpfError> {
        let Some(mut map) = self.listeners()? else {
            return Ok(());
        };
        for (inode, _) in listeners {
            map.insert(inode, bits, 0)
                .map_err(|source| EbpfError::Map {
                    name: names::LISTENERS,
                    source,
                })?;
        }
        let Some(mut addrs) = self.listen_addrs()? else {
            return Ok(());
        };
        for (inode, addr) in listeners {
            if let Some(addr) = addr {
                addrs
                    .insert(addr, inode, 0)
                    .map_err(|source| EbpfError::Map {
                        name: names::LISTEN_ADDRS,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// The listeners whose queue the kernel watches.
    pub fn watched_listeners(&mut self) -> Vec<u64> {
        match self.listeners() {
            Ok(Some(map)) => map.keys().filter_map(Result::ok).collect(),
            _ => Vec::new(),
        }
    }

    /// Stops watching a listener that closed.
    pub fn forget_listener(&mut self, inode: u64) {
        if let Ok(Some(mut map)) = self.listeners() {
            let _ = map.remove(&inode);
        }
        if let Ok(Some(mut addrs)) = self.listen_addrs() {
            let keys: Vec<ListenAddr> = addrs
                .iter()
                .filter_map(Result::ok)
                .filter(|&(_, v)| v == inode)
                .map(|(k, _)| k)
                .collect();
            for k in keys {
                let _ = addrs.remove(&k);
            }
        }
    }

    fn listen_addrs(
        &mut self,
    ) -> Result<Option<BpfHashMap<&mut MapData, ListenAddr, u64>>, EbpfError> {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(None);
        };
        let map = ebpf
            .map_mut(names::LISTEN_ADDRS)
            .ok_or(EbpfError::NoMap(names::LISTEN_ADDRS))?;
        BpfHashMap::try_from(map)
            .map(Some)
            .map_err(|source| EbpfError::Map {
                name: names::LISTEN_ADDRS,
                source,
            })
    }

    fn listeners(&mut self) -> Result<Option<BpfHashMap<&mut MapData, u64, u32>>, EbpfError> {
        let Some(ebpf) = self.ebpf.as_mut() else {
            return Ok(None);
        };
        let map = ebpf
            .map_mut(names::LISTENERS)
            .ok_or(EbpfError::NoMap(names::LISTENERS))?;
        BpfHashMap::try_from(map)
            .map(Some)
            .map_err(|source| EbpfError::Map {
                name: names::LISTENERS,
                source,
            })
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Counters {
            submitted: sum(counter::SUBMITTED),
            lost: sum(counter::LOST),
            watch_full: sum(counter::WATCH_FULL),
            pending_full: sum(counter::PENDING_FULL),
            listeners_full: sum(counter::LISTENERS_FULL),
        }
    }
}

/// `LISTEN_ADDRS`'s key for a TCP listener at `addr` (`127.0.0.1:80`, `[::]:80`) in the
/// network namespace `netns`; None for any other address.
pub fn listen_addr(addr: &str, netns: u32) -> Option<ListenAddr> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut key = ListenAddr {
        netns,
        port: sa.port(),
        ..ListenAddr::default()
    };
    match sa.ip() {
        std::net::IpAddr::V4(ip) => {
            key.family = libc::AF_INET as u16;
            key.addr[..4].copy_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            key.family = libc::AF_INET6 as u16;
            key.addr = ip.octets();
        }
    }
    Some(key)
}

impl std::os::fd::AsRawFd for Loaded {
    /// The ring buffer's fd: readable when records are waiting.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error(
        "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: {0}"
    )]
    struct Rejected(&'static str);

    #[test]
    fn a_verifier_rejection_shows_its_verdict_on_the_line() {
        // The shape of a real log: the first instruction, then the verdict, then statistics.
        let log = "0: R1=ctx() R10=fp0\n; let envp = arg(ctx, 2 + shift)?;\n\
                   12: (79) r1 = *(u64 *)(r6 +0)\n\
                   dereference of modified ctx ptr R6 off=24 disallowed\n\
                   verification time 2933 usec\nstack depth 104\n\
                   processed 27 insns (limit 1000000) max_states_per_insn 0\n";
        assert_eq!(
            error_chain(&Rejected(log)),
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier \
             output: 0: R1=ctx() R10=fp0 ... dereference of modified ctx ptr R6 off=24 disallowed"
        );
    }

    use object::{Object, ObjectSection, ObjectSymbol};

    #[test]
    fn the_table_holds_every_program_of_the_object() {
        let obj = object::File::parse(OBJECT).unwrap();
        let section = obj.section_by_name("tracepoint").unwrap().index();
        let mut in_object: Vec<&str> = obj
            .symbols()
            .filter(|s| s.section_index() == Some(section) && s.is_global())
            .map(|s| s.name().unwrap())
            .collect();
        in_object.sort();
        let mut in_table: Vec<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        in_table.sort();
        assert_eq!(in_object, in_table);
    }

    #[test]
    fn no_program_calls_a_memory_builtin() {
        // The BPF backend turns a memset or memcpy it does not expand into a call to a global
        // function, which kernels before 6.x refuse: the whole program fails to load there.
        let obj = object::File::parse(OBJECT).unwrap();
        let builtins = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];
        let mut calls = Vec::new();
        for section in obj.sections() {
            for (at, reloc) in section.relocations() {
                if let object::RelocationTarget::Symbol(i) = reloc.target() {
                    let name = obj.symbol_by_index(i).unwrap().name().unwrap_or_default();
                    if builtins.contains(&name) {
                        calls.push(format!("{}+{at:#x}: {name}", section.name().unwrap()));
                    }
                }
            }
        }
        assert!(calls.is_empty(), "calls to memory builtins: {calls:?}");
    }

    fn kernel(bpf_loop: bool, sk_data_ready: bool) -> (Kernel, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "sockact-features-{}-{bpf_loop}-{sk_data_ready}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let ready = dir.join("events/sock/sk_data_ready");
        std::fs::create_dir_all(dir.join("events/sock")).unwrap();
        if sk_data_ready {
            std::fs::create_dir_all(&ready).unwrap();
            std::fs::write(ready.join("format"), "name: sk_data_ready\n").unwrap();
        }
        (Kernel::described("test", bpf_loop, &dir), dir)
    }

    fn applicable(k: &Kernel) -> HashSet<&'static str> {
        PROGRAMS
            .iter()
            .filter(|p| p.applies(k))
            .map(|p| p.name)
            .collect()
    }

    #[test]
    fn each_kernel_gets_one_variant_and_names_its_mechanisms() {
        let (new, dir) = kernel(true, true);
        let got = applicable(&new);
        assert!(got.contains("syscalls_sys_enter_execve"));
        assert!(!got.contains("syscalls_sys_enter_execve_bounded"));
        assert!(got.contains("sock_sk_data_ready"));
        let f = features(&new, &got);
        assert_eq!(f[&Family::Exec].as_deref(), Some("bpf_loop"));
        assert_eq!(f[&Family::AcceptQueue].as_deref(), Some("sk_data_ready"));
        assert_eq!(f[&Family::Bind].as_deref(), Some("syscalls"));
        assert_eq!(f[&Family::Lifetimes].as_deref(), Some("sched"));
        let _ = std::fs::remove_dir_all(dir);

        let (old, dir) = kernel(false, false);
        let got = applicable(&old);
        assert!(got.contains("syscalls_sys_enter_execveat_bounded"));
        assert!(!got.contains("syscalls_sys_enter_execveat"));
        assert!(!got.contains("sock_sk_data_ready"));
        let f = features(&old, &got);
        assert_eq!(f[&Family::Exec].as_deref(), Some("bounded_loop"));
        assert_eq!(
            f[&Family::AcceptQueue].as_deref(),
            Some("inet_sock_set_state")
        );
        // One program of a family missing: the family is, and so is what stands in for one.
        let mut partial = got.clone();
        partial.remove("syscalls_sys_exit_bind");
        partial.remove("sock_inet_sock_set_state");
        let f = features(&old, &partial);
        assert_eq!(f[&Family::Bind], None);
        assert_eq!(f[&Family::AcceptQueue], None);
        assert_eq!(f[&Family::Listen].as_deref(), Some("syscalls"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn listen_addrs_are_keyed_as_the_kernel_holds_them() {
        let k = listen_addr("127.0.0.1:8080", 7).unwrap();
        assert_eq!((k.netns, k.port, k.family), (7, 8080, libc::AF_INET as u16));
        assert_eq!(k.addr, [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let k = listen_addr("[::]:443", 7).unwrap();
        assert_eq!(
            (k.port, k.family, k.addr),
            (443, libc::AF_INET6 as u16, [0; 16])
        );
        assert_eq!(listen_addr("/run/x.sock", 7), None);
        assert_eq!(listen_addr("@abstract", 7), None);
    }
}
