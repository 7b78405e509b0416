//! sock_diag (NETLINK_SOCK_DIAG): TCP and unix listeners as the kernel keeps them, with what /proc/net
//! does not show: the accept queue's current length and maximum, and the listener's drop
//! counter (`sk_drops`: every connection refused at a full accept queue).
use std::{io, net::Ipv4Addr, net::Ipv6Addr};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN: u32 = 10;
const INET_DIAG_SKMEMINFO: u16 = 7;
const SK_MEMINFO_DROPS: usize = 8;
const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;

/// A TCP listener as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagListener {
    pub addr: String,
    pub inode: u64,
    /// Connections waiting in the accept queue.
    pub queued: u32,
    /// The accept queue's maximum (the effective backlog).
    pub backlog: u32,
    pub drops: Option<u32>,
}

fn request(family: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    b.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    b.push(1 << (INET_DIAG_SKMEMINFO - 1)); // idiag_ext
    b.push(0);
    b.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    b.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: any
    b
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses one inet_diag_msg and its attributes.
pub fn parse_msg(m: &[u8]) -> Option<DiagListener> {
    if m.len() < MSG_LEN {
        return None;
    }
    let family = m[0];
    let port = u16::from_be_bytes([m[4], m[5]]);
    let addr = if family == libc::AF_INET as u8 {
        format!("{}:{port}", Ipv4Addr::new(m[8], m[9], m[10], m[11]))
    } else {
        let ip: [u8; 16] = m[8..24].try_into().ok()?;
        format!("[{}]:{port}", Ipv6Addr::from(ip))
    };
    let queued = u32_at(m, 56)?;
    let backlog = u32_at(m, 60)?;
    let inode = u32_at(m, 68)? as u64;
    let mut drops = None;
    let mut at = MSG_LEN;
    while at + 4 <= m.len() {
        let len = u16_at(m, at)? as usize;
        let kind = u16_at(m, at + 2)?;
        if len < 4 || at + len > m.len() {
            break;
        }
        if kind == INET_DIAG_SKMEMINFO {
            drops = u32_at(m, at + 4 + SK_MEMINFO_DROPS * 4);
        }
        at += (len + 3) & !3;
    }
    Some(DiagListener {
        addr,
        inode,
        queued,
        backlog,
        drops,
    })
}

/// Walks a netlink reply buffer of TCP listeners; returns whether the dump is done.
pub fn parse_reply(buf: &[u8], out: &mut Vec<DiagListener>) -> io::Result<bool> {
    parse_with(buf, out, parse_msg)
}

/// Walks a netlink reply buffer with a parser for one message; returns whether the dump is
/// done.
fn parse_with(
    buf: &[u8],
    out: &mut Vec<DiagListener>,
    parse: fn(&[u8]) -> Option<DiagListener>,
) -> io::Result<bool> {
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, at).unwrap_or(0) as usize;
        let kind = u16_at(buf, at + 4).unwrap_or(0);
        if len < NLMSG_HDR || at + len > buf.len() {
            break;
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(buf, at + NLMSG_HDR).unwrap_or(0) as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => {
                if let Some(l) = parse(&buf[at + NLMSG_HDR..at + len]) {
                    out.push(l);
                }
            }
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// Every TCP listener (IPv4 and IPv6) of this network namespace.
pub fn tcp_listeners() -> io::Result<Vec<DiagListener>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        dump(&request(family as u8), &mut out, parse_msg)?;
    }
    Ok(out)
}

/// Every listening unix stream socket of this network namespace, with its queue: for a unix
/// listener the kernel reports pending connections and the backlog as its queues.
pub fn unix_listeners() -> io::Result<Vec<DiagListener>> {
    let mut out = Vec::new();
    dump(&unix_request(), &mut out, parse_unix_msg)?;
    Ok(out)
}

/// Listeners of every family sockact follows.
pub fn listeners() -> io::Result<Vec<DiagListener>> {
    let mut all = tcp_listeners()?;
    all.extend(unix_listeners()?);
    Ok(all)
}

const UNIX_REQ_LEN: usize = 24;
const UNIX_MSG_LEN: usize = 16;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_RQLEN: u16 = 4;

fn unix_request() -> Vec<u8> {
    let mut b = Vec::with_capacity(NLMSG_HDR + UNIX_REQ_LEN);
    b.extend_from_slice(&((NLMSG_HDR + UNIX_REQ_LEN) as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid
    b.push(libc::AF_UNIX as u8);
    b.push(0); // protocol
    b.extend_from_slice(&[0, 0]); // pad
    b.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    b.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN).to_ne_bytes());
    b.extend_from_slice(&[0xff; 8]); // no cookie
    b
}

/// Parses one unix_diag_msg: its name (path, or `@name` when abstract) and queue lengths.
pub fn parse_unix_msg(m: &[u8]) -> Option<DiagListener> {
    if m.len() < UNIX_MSG_LEN {
        return None;
    }
    let inode = u32_at(m, 4)? as u64;
    let (mut addr, mut queued, mut backlog) = (None, 0, 0);
    let mut at = UNIX_MSG_LEN;
    while at + 4 <= m.len() {
        let len = u16_at(m, at)? as usize;
        let kind = u16_at(m, at + 2)?;
        if len < 4 || at + len > m.len() {
            break;
        }
        let body = &m[at + 4..at + len];
        match kind {
            UNIX_DIAG_NAME => {
                addr = Some(match body.split_first() {
                    Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
                    _ => String::from_utf8_lossy(body)
                        .trim_end_matches('\0')
                        .to_owned(),
                });
            }
            UNIX_DIAG_RQLEN => {
                queued = u32_at(body, 0)?;
                backlog = u32_at(body, 4)?;
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Some(DiagListener {
        addr: addr?,
        inode,
        queued,
        backlog,
        drops: None,
    })
}

/// Sends one dump request and collects what it answers.
fn dump(
    req: &[u8],
    out: &mut Vec<DiagListener>,
    parse: fn(&[u8]) -> Option<DiagListener>,
) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor owned here and closed below.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            if libc::send(fd, req.as_ptr().cast(), req.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                if n == 0 || parse_with(&buf[..n as usize], out, parse)? {
                    return Ok(());
                }
            }
        })();
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_with_its_backlog() {
        // std's TcpListener listens with backlog 128 (capped by net.core.somaxconn).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let found = tcp_listeners().expect("sock_diag answers");
        let ours = found
            .iter()
            .find(|d| d.addr == addr)
            .unwrap_or_else(|| panic!("{addr} not in {found:?}"));
        assert_eq!(ours.queued, 0);
        assert!(ours.backlog > 0 && ours.backlog <= 128, "{ours:?}");
        assert!(ours.inode > 0);
        assert_eq!(ours.drops, Some(0));
    }

    #[test]
    fn a_unix_listener_with_its_waiting_connections() {
        let dir = std::env::temp_dir().join(format!("sockact-diag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let _a = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _b = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let found = unix_listeners().expect("sock_diag answers for unix sockets");
        let name = path.to_string_lossy();
        let ours = found
            .iter()
            .find(|d| d.addr == name)
            .unwrap_or_else(|| panic!("{name} not in {found:?}"));
        assert_eq!(ours.queued, 2);
        assert!(ours.backlog > 0);
        assert!(ours.inode > 0);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_messages_are_skipped() {
        assert_eq!(parse_msg(&[0u8; 10]), None);
        let mut out = Vec::new();
        assert!(!parse_reply(&[1, 2, 3], &mut out).unwrap());
        assert!(out.is_empty());
    }
}
