//! The one bridge from kernel records (sockact-common) to user-facing events (events.rs).
//! Record bytes come from the kernel and are checked (kind, version, size) before use.
use sockact_common::{
    AcceptRecord, BindRecord, ConnectRecord, ExecRecord, ExitRecord, ListenRecord, QueueRecord,
    RECORD_VERSION, RecordHeader, RecordKind, ShutdownRecord, SockAddrRaw, SockInfo, connect_flags,
    exec_flags, queue_flags, sock_flags,
};

use crate::{
    addr::{self, Address},
    clock::Clock,
    correlate::queue::Observation,
    errno,
    events::{
        Accept, Bind, Connect, Data, Endpoint, Event, Exec, Exit, Listen, NumberOrString, Outcome,
        Process, SCHEMA_VERSION, Shutdown, SocketId,
    },
    text::{from_cstr, from_process_cstr},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    TooShort(usize),
    #[error(
        "record version {found}, expected {RECORD_VERSION}: the eBPF object and the agent differ"
    )]
    Version { found: u16 },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {found} bytes, expected {expected}")]
    Size {
        kind: RecordKind,
        expected: usize,
        found: usize,
    },
}

/// A record as the kernel wrote it.
#[derive(Clone, Copy)]
#[expect(
    clippy::large_enum_variant,
    reason = "decoded one at a time and turned into an event at once, never stored"
)]
pub enum Record {
    Exec(ExecRecord),
    Exit(ExitRecord),
    Bind(BindRecord),
    Listen(ListenRecord),
    Accept(AcceptRecord),
    Connect(ConnectRecord),
    Shutdown(ShutdownRecord),
    Queue(QueueRecord),
}

fn read<T: Copy>(bytes: &[u8], kind: RecordKind) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            kind,
            expected,
            found: bytes.len(),
        });
    }
    // SAFETY: the length is checked above; every record type is plain old data (repr(C),
    // integers and byte arrays, valid for any bit pattern); read_unaligned copes with any
    // alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Records as written by a session with `SOCKACT_RECORD_RECORDS` set: each a little-endian
/// u32 length and the record's bytes. Used by the benchmarks and the fuzzers' seeds; stops at
/// the first incomplete entry.
pub fn recorded(mut bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let record = bytes.get(4..4 + len)?;
        bytes = &bytes[4 + len..];
        Some(record)
    })
}

/// Checks and copies one ring-buffer record.
pub fn parse(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < size_of::<RecordHeader>() {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    // SAFETY: as in `read`.
    let header: RecordHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
    if header.version != RECORD_VERSION {
        return Err(DecodeError::Version {
            found: header.version,
        });
    }
    let kind = RecordKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        RecordKind::Exec => Record::Exec(read(bytes, kind)?),
        RecordKind::Exit => Record::Exit(read(bytes, kind)?),
        RecordKind::Bind => Record::Bind(read(bytes, kind)?),
        RecordKind::Listen => Record::Listen(read(bytes, kind)?),
        RecordKind::Accept => Record::Accept(read(bytes, kind)?),
        RecordKind::Connect => Record::Connect(read(bytes, kind)?),
        RecordKind::Shutdown => Record::Shutdown(read(bytes, kind)?),
        RecordKind::Queue => Record::Queue(read(bytes, kind)?),
    })
}

impl Record {
    pub fn header(&self) -> &RecordHeader {
        match self {
            Record::Exec(r) => &r.header,
            Record::Exit(r) => &r.header,
            Record::Bind(r) => &r.header,
            Record::Listen(r) => &r.header,
            Record::Accept(r) => &r.header,
            Record::Connect(r) => &r.header,
            Record::Shutdown(r) => &r.header,
            Record::Queue(r) => &r.header,
        }
    }

    /// The name of the process's cgroup as the kernel read it at exec (cgroup v2): its unit,
    /// when /proc no longer has the process.
    pub fn cgroup_name(&self) -> Option<String> {
        match self {
            Record::Exec(r) => Some(from_cstr(&r.cgroup)).filter(|n| !n.is_empty()),
            _ => None,
        }
    }

    /// The effective backlog (sk_max_ack_backlog) of a socket that listen() succeeded on.
    pub fn listen_backlog(&self) -> Option<u32> {
        match self {
            Record::Listen(r) if r.ret == 0 && valid(&r.sock) => Some(r.sock.backlog),
            _ => None,
        }
    }

    /// What the record says of a watched listener's accept queue: a connection queued (a
    /// queue record), or one taken (an accept, with the depth it left).
    pub fn queue_observation(&self, clock: &Clock) -> Option<Observation> {
        match self {
            Record::Queue(r) => Some(Observation {
                ts: clock.unix_ns_from_boot_ns(r.header.ts_ns),
                inode: r.inode,
                depth: r.depth,
                backlog: Some(r.backlog),
                drops: (r.flags & queue_flags::DROPS_UNREAD == 0).then(|| u64::from(r.drops)),
            }),
            Record::Accept(r) if r.ret >= 0 && valid(&r.listener) && r.listener.inode != 0 => {
                Some(Observation {
                    ts: clock.unix_ns_from_boot_ns(r.header.ts_ns),
                    inode: r.listener.inode,
                    depth: r.listener.depth,
                    backlog: Some(r.listener.backlog),
                    drops: None,
                })
            }
            _ => None,
        }
    }

    /// The user-facing event (its `seq` is set by the writer); None for a queue record, which
    /// is an observation only ([`Record::queue_observation`]).
    pub fn to_event(&self, clock: &Clock, host: &str) -> Option<Event> {
        let h = self.header();
        let data = match self {
            Record::Queue(_) => return None,
            Record::Exec(r) => Data::Exec(exec(r)),
            Record::Exit(r) => Data::Exit(exit(r.exit_code)),
            Record::Bind(r) => Data::Bind(bind(r)),
            Record::Listen(r) => Data::Listen(listen(r)),
            Record::Accept(r) => Data::Accept(accept(r)),
            Record::Connect(r) => Data::Connect(connect(r)),
            Record::Shutdown(r) => Data::Shutdown(shutdown(r)),
        };
        Some(Event {
            v: SCHEMA_VERSION,
            seq: 0,
            ts: clock.rfc3339_from_boot_ns(h.ts_ns),
            host: host.to_owned(),
            data,
            process: Some(process(h)),
        })
    }
}

fn process(h: &RecordHeader) -> Process {
    Process {
        pid: h.pid,
        comm: from_process_cstr(&h.comm),
        ppid: (h.ppid != 0).then_some(h.ppid),
        ns_pid: (h.ns_pid != 0 && h.ns_pid != h.pid).then_some(h.ns_pid),
        uid: Some(h.uid),
        unit: None,
        socket_unit: None,
        cgroup: None,
    }
}

fn exec(r: &ExecRecord) -> Exec {
    let argc = (r.argc as usize).min(r.argv.len());
    let has = |bit| r.flags & bit != 0;
    // A value cut to its field is kept as text: never a number it was not.
    let value = |bit, cut, field: &[u8], parse: fn(&str) -> NumberOrString| {
        has(bit).then(|| {
            let text = from_cstr(field);
            if has(cut) {
                NumberOrString::String(text)
            } else {
                parse(&text)
            }
        })
    };
    Exec {
        filename: from_process_cstr(&r.filename),
        argv: r.argv[..argc]
            .iter()
            .map(|a| from_process_cstr(a))
            .collect(),
        listen_pid: value(
            exec_flags::HAS_LISTEN_PID,
            exec_flags::LISTEN_PID_CUT,
            &r.listen_pid,
            NumberOrString::listen_pid,
        ),
        listen_fds: value(
            exec_flags::HAS_LISTEN_FDS,
            exec_flags::LISTEN_FDS_CUT,
            &r.listen_fds,
            NumberOrString::listen_fds,
        ),
        listen_fdnames: has(exec_flags::HAS_LISTEN_FDNAMES)
            .then(|| split_fdnames(&from_cstr(&r.listen_fdnames))),
        argv_truncated: has(exec_flags::ARGV_TRUNCATED) || has(exec_flags::ARG_CUT),
        listen_fdnames_truncated: has(exec_flags::HAS_LISTEN_FDNAMES)
            && has(exec_flags::LISTEN_FDNAMES_CUT),
        listen_trusted: !has(exec_flags::LISTEN_UNTRUSTED),
    }
}

/// LISTEN_FDNAMES is colon-separated; an empty value names no fd.
pub fn split_fdnames(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    value.split(':').map(str::to_owned).collect()
}

/// A wait() status: `(code << 8)` for an exit, the signal number in the low 7 bits otherwise.
pub fn exit(status: u32) -> Exit {
    let signal = status & 0x7f;
    if signal == 0 {
        Exit {
            exit_code: Some(((status >> 8) & 0xff) as i32),
            signal: None,
        }
    } else {
        Exit {
            exit_code: None,
            signal: Some(errno::signal_name(signal)),
        }
    }
}

fn outcome(ret: i64) -> Outcome {
    Outcome {
        ret,
        // Saturating: a corrupt record may hold i64::MIN.
        errno: (ret < 0).then(|| errno::name(ret.saturating_neg())),
    }
}

fn endpoint(a: Option<Address>) -> Endpoint {
    match a {
        Some(a) => Endpoint {
            addr: a.text,
            family: a.family,
            port: a.port,
        },
        None => Endpoint {
            addr: String::new(),
            family: String::new(),
            port: None,
        },
    }
}

fn user_addr(raw: &SockAddrRaw) -> Option<Address> {
    if raw.ok == 0 {
        return None;
    }
    addr::decode_sockaddr(&raw.bytes, raw.len as usize)
}

fn valid(s: &SockInfo) -> bool {
    s.flags & sock_flags::VALID != 0
}

fn socket_id(s: &SockInfo) -> SocketId {
    SocketId {
        inode: (valid(s) && s.inode != 0).then_some(s.inode),
        netns: (valid(s) && s.netns != 0).then_some(s.netns),
    }
}

/// The local address of a socket: from its `struct sock` for inet, from the kernel's copy of
/// its name for unix.
fn local_addr(s: &SockInfo, unix: &SockAddrRaw) -> Option<Address> {
    if !valid(s) {
        return None;
    }
    if s.family == addr::AF_UNIX {
        return user_addr(unix).or_else(|| {
            Some(Address {
                text: String::new(),
                family: addr::family_name(addr::AF_UNIX),
                port: None,
            })
        });
    }
    addr::from_sock(s.family, &s.local_addr, s.local_port)
}

fn bind(r: &BindRecord) -> Bind {
    Bind {
        fd: r.fd,
        endpoint: endpoint(user_addr(&r.addr)),
        reuseport: valid(&r.sock) && r.sock.flags & sock_flags::REUSEPORT != 0,
        outcome: outcome(r.ret),
        socket: socket_id(&r.sock),
    }
}

fn listen(r: &ListenRecord) -> Listen {
    Listen {
        fd: r.fd,
        endpoint: endpoint(local_addr(&r.sock, &r.unix)),
        backlog: r.backlog,
        outcome: outcome(r.ret),
        socket: socket_id(&r.sock),
    }
}

fn accept(r: &AcceptRecord) -> Accept {
    let ok = r.ret >= 0;
    let peer = if ok && valid(&r.conn) {
        addr::from_sock(r.conn.family, &r.conn.remote_addr, r.conn.remote_port)
    } else {
        None
    };
    // An accept already blocked when tracing started has no listening fd: the accepted
    // socket's local side names its listener.
    let listener = local_addr(&r.listener, &r.unix).or_else(|| local_addr(&r.conn, &r.unix));
    Accept {
        listen_fd: r.listen_fd,
        fd: ok.then_some(r.ret),
        addr: peer.map(|a| a.text),
        listener: listener.map(|a| a.text),
        wait_us: (ok && r.wait_ns > 0).then_some(r.wait_ns / 1000),
        outcome: outcome(r.ret),
        socket: socket_id(&r.listener),
    }
}

fn connect(r: &ConnectRecord) -> Connect {
    Connect {
        fd: r.fd,
        endpoint: endpoint(user_addr(&r.addr)),
        outcome: outcome(r.ret),
        completed: r.flags & connect_flags::ASYNC != 0,
    }
}

fn shutdown(r: &ShutdownRecord) -> Shutdown {
    Shutdown {
        fd: r.fd,
        how: match r.how {
            0 => "SHUT_RD".into(),
            1 => "SHUT_WR".into(),
            2 => "SHUT_RDWR".into(),
            other => other.to_string(),
        },
        listener: local_addr(&r.sock, &r.unix).map(|a| a.text),
        outcome: outcome(r.ret),
        socket: socket_id(&r.sock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_value_of_i64_min_is_no_overflow() {
        // Found by the `record` fuzz target (fuzz/regressions/record/crash-4d83ae...).
        let o = outcome(i64::MIN);
        assert_eq!(o.ret, i64::MIN);
        assert!(o.errno.is_some());
    }

    #[test]
    fn every_recorded_record_decodes_and_the_families_read_back() {
        let clock = Clock::new();
        let mut binds = Vec::new();
        for bytes in [
            &include_bytes!("../../tests/fixtures/records/every_family.bin")[..],
            &include_bytes!("../../tests/fixtures/records/restart_under_load.bin")[..],
        ] {
            for r in recorded(bytes) {
                let record = parse(r).expect("a recorded record decodes");
                if let Some(e) = record.to_event(&clock, "h")
                    && let crate::events::Data::Bind(b) = e.data
                {
                    binds.push(b.endpoint.addr);
                }
            }
        }
        // Recorded from binds on 127.0.0.1, ::1, a unix path and an abstract name carrying
        // a terminal escape.
        assert!(
            binds.iter().any(|a| a.starts_with("127.0.0.1:")),
            "{binds:?}"
        );
        assert!(binds.iter().any(|a| a.starts_with("[::1]:")), "{binds:?}");
        assert!(binds.iter().any(|a| a == "/tmp/rec/sock"), "{binds:?}");
        assert!(
            binds.iter().any(|a| a == "@sockact-abstract\u{1b}[31m"),
            "{binds:?}"
        );
    }

    fn header(kind: RecordKind, size: usize) -> RecordHeader {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        RecordHeader {
            kind: kind as u32,
            version: RECORD_VERSION,
            size: size as u16,
            ts_ns: 1_000,
            cgroup_id: 1,
            pid: 100,
            tid: 100,
            ppid: 1,
            uid: 0,
            ns_pid: 100,
            watch: 0,
            comm,
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test records are plain old data.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()).to_vec() }
    }

    fn exec_record() -> ExecRecord {
        // SAFETY: all-zero is a valid record.
        let mut r: ExecRecord = unsafe { std::mem::zeroed() };
        r.header = header(RecordKind::Exec, size_of::<ExecRecord>());
        r.filename[..9].copy_from_slice(b"/bin/true");
        r.argv[0][..4].copy_from_slice(b"true");
        r.argc = 1;
        r
    }

    #[test]
    fn exec_with_listen_variables() {
        let mut r = exec_record();
        r.flags = exec_flags::HAS_LISTEN_PID
            | exec_flags::HAS_LISTEN_FDS
            | exec_flags::HAS_LISTEN_FDNAMES;
        r.listen_pid[..3].copy_from_slice(b"100");
        r.listen_fds[..1].copy_from_slice(b"2");
        r.listen_fdnames[..9].copy_from_slice(b"web:admin");
        let rec = parse(&bytes_of(&r)).unwrap();
        let e = rec.to_event(&Clock::fixed(0), "h").unwrap();
        let Data::Exec(x) = &e.data else { panic!() };
        assert_eq!(x.filename, "/bin/true");
        assert_eq!(x.argv, ["true"]);
        assert_eq!(x.listen_pid, Some(NumberOrString::Number(100)));
        assert_eq!(x.listen_fds, Some(NumberOrString::Number(2)));
        assert_eq!(
            x.listen_fdnames.as_deref(),
            Some(&["web".into(), "admin".into()][..])
        );
        let p = e.process.unwrap();
        assert_eq!(
            (p.pid, p.comm.as_str(), p.ppid, p.ns_pid),
            (100, "python3", Some(1), None)
        );
    }

    #[test]
    fn exec_without_listen_variables_has_none_of_them() {
        let rec = parse(&bytes_of(&exec_record())).unwrap();
        let Data::Exec(x) = rec.to_event(&Clock::fixed(0), "h").unwrap().data else {
            panic!()
        };
        assert_eq!(x.listen_pid, None);
        assert_eq!(x.listen_fds, None);
        assert_eq!(x.listen_fdnames, None);
    }

    #[test]
    fn oversized_and_non_utf8_values_are_kept_and_escaped() {
        let mut r = exec_record();
        r.flags = exec_flags::HAS_LISTEN_PID | exec_flags::HAS_LISTEN_FDNAMES;
        // The kernel's string copy fills the buffer and ends it with a NUL when the value is
        // longer; a value with no NUL at all must not run past the field.
        r.listen_pid = [b'9'; 16];
        r.listen_fdnames = [b'a'; 256];
        r.listen_fdnames[3] = 0xff;
        r.argv[0] = [b'x'; 64];
        let rec = parse(&bytes_of(&r)).unwrap();
        let Data::Exec(x) = rec.to_event(&Clock::fixed(0), "h").unwrap().data else {
            panic!()
        };
        assert_eq!(
            x.listen_pid,
            Some(NumberOrString::String("9".repeat(16))),
            "a value filling the field is read to its end, not past it, and no PID"
        );
        let names = x.listen_fdnames.unwrap();
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with("aaa\\xffa"));
        assert_eq!(x.argv[0].len(), 64);
    }

    fn exec_of(r: &ExecRecord) -> Exec {
        let rec = parse(&bytes_of(r)).unwrap();
        let Data::Exec(x) = rec.to_event(&Clock::fixed(0), "h").unwrap().data else {
            panic!()
        };
        x
    }

    #[test]
    fn listen_values_are_read_as_sd_listen_fds_reads_them_and_cut_ones_are_not_numbers() {
        let mut r = exec_record();
        r.flags = exec_flags::HAS_LISTEN_PID | exec_flags::HAS_LISTEN_FDS;
        let set = |field: &mut [u8; 16], v: &str| {
            *field = [0; 16];
            field[..v.len()].copy_from_slice(v.as_bytes());
        };
        for (fds, want) in [
            ("000000000000001", NumberOrString::Number(1)),
            ("0x10", NumberOrString::Number(16)),
            (" +2", NumberOrString::Number(2)),
            ("2 ", NumberOrString::String("2 ".into())),
            ("-1", NumberOrString::String("-1".into())),
            ("99999999999", NumberOrString::String("99999999999".into())),
        ] {
            set(&mut r.listen_fds, fds);
            set(&mut r.listen_pid, "0042");
            let x = exec_of(&r);
            assert_eq!(x.listen_fds, Some(want), "LISTEN_FDS={fds}");
            assert_eq!(x.listen_pid, Some(NumberOrString::Number(42)));
        }
        set(&mut r.listen_pid, "0");
        assert_eq!(
            exec_of(&r).listen_pid,
            Some(NumberOrString::String("0".into())),
            "no process is 0"
        );
        // LISTEN_FDS=00000000000000001 is longer than the field: the kernel keeps 15 zeros and
        // says it filled the field. That is not 0 fds.
        set(&mut r.listen_fds, "000000000000000");
        r.flags |= exec_flags::LISTEN_FDS_CUT;
        assert_eq!(
            exec_of(&r).listen_fds,
            Some(NumberOrString::String("000000000000000".into()))
        );
    }

    #[test]
    fn listen_values_nobody_trusted_say_so() {
        let mut r = exec_record();
        r.flags = exec_flags::HAS_LISTEN_FDS;
        r.listen_fds[0] = b'1';
        let json = serde_json::to_value(exec_of(&r)).unwrap();
        assert!(
            json.get("listen_trusted").is_none(),
            "trusted is the rule: {json}"
        );
        r.flags |= exec_flags::LISTEN_UNTRUSTED;
        let x = exec_of(&r);
        assert!(!x.listen_trusted);
        let json = serde_json::to_value(&x).unwrap();
        assert_eq!(json["listen_trusted"], false);
        assert_eq!(json["listen_fds"], 1, "the values it saw, still parsed");
    }

    #[test]
    fn cut_argv_and_fdnames_say_so() {
        let mut r = exec_record();
        let x = exec_of(&r);
        assert!(!x.argv_truncated && !x.listen_fdnames_truncated);
        let json = serde_json::to_value(&x).unwrap();
        assert!(json.get("argv_truncated").is_none(), "{json}");
        r.flags =
            exec_flags::ARG_CUT | exec_flags::HAS_LISTEN_FDNAMES | exec_flags::LISTEN_FDNAMES_CUT;
        let x = exec_of(&r);
        assert!(x.argv_truncated && x.listen_fdnames_truncated);
        r.flags = exec_flags::ARGV_TRUNCATED;
        assert!(exec_of(&r).argv_truncated, "more entries than kept");
        let json = serde_json::to_value(exec_of(&r)).unwrap();
        assert_eq!(json["argv_truncated"], true);
    }

    #[test]
    fn empty_fdnames_names_nothing() {
        assert!(split_fdnames("").is_empty());
        assert_eq!(split_fdnames("a::b"), ["a", "", "b"]);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(parse(&[0u8; 8]).err(), Some(DecodeError::TooShort(8)));
        let mut r = exec_record();
        r.header.version = RECORD_VERSION + 1;
        assert!(matches!(
            parse(&bytes_of(&r)),
            Err(DecodeError::Version { .. })
        ));
        let mut r = exec_record();
        r.header.kind = 99;
        assert_eq!(
            parse(&bytes_of(&r)).err(),
            Some(DecodeError::UnknownKind(99))
        );
        let r = exec_record();
        let b = bytes_of(&r);
        assert!(matches!(parse(&b[..200]), Err(DecodeError::Size { .. })));
    }

    #[test]
    fn exit_status() {
        assert_eq!(exit(3 << 8).exit_code, Some(3));
        assert_eq!(exit(0).exit_code, Some(0));
        assert_eq!(exit(9).signal.as_deref(), Some("SIGKILL"));
        assert_eq!(exit(0x80 | 11).signal.as_deref(), Some("SIGSEGV"));
    }

    #[test]
    fn a_queue_record_is_an_observation_not_an_event() {
        // SAFETY: all-zero is a valid record.
        let mut r: QueueRecord = unsafe { std::mem::zeroed() };
        r.header = header(RecordKind::Queue, size_of::<QueueRecord>());
        r.inode = 77;
        r.depth = 5;
        r.backlog = 4;
        r.drops = 12;
        let rec = parse(&bytes_of(&r)).unwrap();
        assert!(rec.to_event(&Clock::fixed(0), "h").is_none());
        let o = rec.queue_observation(&Clock::fixed(10)).unwrap();
        assert_eq!(
            (o.ts, o.inode, o.depth, o.backlog, o.drops),
            (1_010, 77, 5, Some(4), Some(12))
        );
        // Written from the connection's socket (kernels without sk_data_ready): the listener's
        // drop counter was not read, and is not taken for zero.
        r.flags = queue_flags::DROPS_UNREAD;
        r.drops = 0;
        let o = parse(&bytes_of(&r))
            .unwrap()
            .queue_observation(&Clock::fixed(10))
            .unwrap();
        assert_eq!((o.depth, o.drops), (5, None));
    }

    #[test]
    fn an_async_connect_outcome_and_an_accept_wait() {
        // SAFETY: all-zero is a valid record.
        let mut c: ConnectRecord = unsafe { std::mem::zeroed() };
        c.header = header(RecordKind::Connect, size_of::<ConnectRecord>());
        c.ret = -111;
        c.flags = connect_flags::ASYNC;
        let Data::Connect(x) = parse(&bytes_of(&c))
            .unwrap()
            .to_event(&Clock::fixed(0), "h")
            .unwrap()
            .data
        else {
            panic!()
        };
        assert!(x.completed);
        assert_eq!(x.outcome.errno.as_deref(), Some("ECONNREFUSED"));
        let line = serde_json::to_value(&x).unwrap();
        assert_eq!(line["async"], true);

        // SAFETY: all-zero is a valid record.
        let mut a: AcceptRecord = unsafe { std::mem::zeroed() };
        a.header = header(RecordKind::Accept, size_of::<AcceptRecord>());
        a.ret = 5;
        a.wait_ns = 2_500_000;
        let Data::Accept(x) = parse(&bytes_of(&a))
            .unwrap()
            .to_event(&Clock::fixed(0), "h")
            .unwrap()
            .data
        else {
            panic!()
        };
        assert_eq!(x.wait_us, Some(2_500));
    }

    #[test]
    fn failed_bind_carries_errno() {
        // SAFETY: all-zero is a valid record.
        let mut r: BindRecord = unsafe { std::mem::zeroed() };
        r.header = header(RecordKind::Bind, size_of::<BindRecord>());
        r.fd = 3;
        r.ret = -98;
        r.addr.ok = 1;
        r.addr.len = 16;
        r.addr.bytes[..2].copy_from_slice(&addr::AF_INET.to_ne_bytes());
        r.addr.bytes[2..4].copy_from_slice(&8080u16.to_be_bytes());
        r.addr.bytes[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let Data::Bind(b) = parse(&bytes_of(&r))
            .unwrap()
            .to_event(&Clock::fixed(0), "h")
            .unwrap()
            .data
        else {
            panic!()
        };
        assert_eq!(b.endpoint.addr, "127.0.0.1:8080");
        assert_eq!(b.outcome.errno.as_deref(), Some("EADDRINUSE"));
        assert!(!b.reuseport);
        assert_eq!(b.socket.inode, None);
    }
}
