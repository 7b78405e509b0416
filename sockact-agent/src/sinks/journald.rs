//! The journald sink: each event one datagram in journald's native protocol, with structured
//! fields (`SOCKACT_KIND=`, `SOCKACT_RULE=`, `SOCKACT_UNIT=`, ...) beside a readable MESSAGE,
//! so that `journalctl SOCKACT_RULE=double_bind` finds the findings.
use std::{
    io::Write,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use tokio::net::UnixDatagram;

use super::{Feed, Line};
use crate::config::SinkConfig;

/// journald's socket for the native protocol.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// Appends `KEY=value`, or the binary-safe form for a value holding a newline.
fn field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// One event as a journald entry.
pub fn entry(line: &Line) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.json.len() * 2 + 256);
    field(
        &mut out,
        "MESSAGE",
        line.text.as_deref().unwrap_or_default(),
    );
    field(&mut out, "PRIORITY", &line.severity.to_string());
    field(&mut out, "SYSLOG_IDENTIFIER", "sockact-agent");
    field(&mut out, "SOCKACT_KIND", line.kind);
    field(&mut out, "SOCKACT_SEQ", &line.seq.to_string());
    let optional = [
        ("SOCKACT_RULE", &line.rule),
        ("SOCKACT_UNIT", &line.unit),
        ("SOCKACT_SOCKET_UNIT", &line.socket_unit),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            field(&mut out, key, v);
        }
    }
    field(&mut out, "SOCKACT_EVENT", line.json.trim_end_matches('\n'));
    out
}

pub async fn run(config: SinkConfig, mut feed: Feed) {
    let path = config
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let socket = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            feed.failed("creating a datagram socket", &e);
            feed.abandon(0);
            return;
        }
    };
    while let Some(line) = feed.rx.recv().await {
        feed.stats.taken(1);
        let entry = entry(&line);
        let sent = match socket.send_to(&entry, &path).await {
            // Larger than a datagram may be: journald takes it in a sealed memfd instead.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                send_memfd(socket.as_raw_fd(), &path, &entry)
            }
            other => other.map(drop),
        };
        match sent {
            Ok(()) => feed.delivered(1),
            Err(e) => {
                feed.stats.drop_events(1);
                feed.failed(&format!("sending to {}", path.display()), &e);
            }
        }
    }
}

/// Sends `payload` the way sd_journal_sendv does when it is too large for a datagram: written
/// to a memfd, sealed, and passed with SCM_RIGHTS in an otherwise empty datagram.
fn send_memfd(socket: RawFd, path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let path = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid C string and flags; the fd returned is owned below.
    let fd = unsafe {
        libc::memfd_create(
            c"sockact-journal".as_ptr(),
            libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(payload)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Room for one fd, aligned for cmsghdr.
    #[repr(C, align(8))]
    struct Control([u8; 32]);
    let mut control = Control([0; 32]);
    let fd_len = std::mem::size_of::<libc::c_int>() as u32;
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call, and
    // the control buffer is large enough for CMSG_SPACE(one fd) (24 bytes on 64-bit).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&raw mut addr).cast();
        msg.msg_namelen = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as u32;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(fd_len) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as usize;
        std::ptr::write_unaligned(
            libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
            file.as_raw_fd(),
        );
        if libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an entry back the way journald does.
    fn parse(mut b: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !b.is_empty() {
            let end = b.iter().position(|&c| c == b'\n' || c == b'=').unwrap();
            let key = String::from_utf8(b[..end].to_vec()).unwrap();
            if b[end] == b'=' {
                let nl = b[end..].iter().position(|&c| c == b'\n').unwrap() + end;
                fields.push((key, String::from_utf8(b[end + 1..nl].to_vec()).unwrap()));
                b = &b[nl + 1..];
            } else {
                let len = u64::from_le_bytes(b[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = &b[end + 9..end + 9 + len];
                assert_eq!(b[end + 9 + len], b'\n');
                fields.push((key, String::from_utf8(value.to_vec()).unwrap()));
                b = &b[end + 10 + len..];
            }
        }
        fields
    }

    /// Receives one datagram and the fd passed with it, if any.
    fn receive(socket: &std::os::unix::net::UnixDatagram) -> (Vec<u8>, Option<OwnedFd>) {
        let mut data = vec![0u8; 256 * 1024];
        #[repr(C, align(8))]
        struct Control([u8; 64]);
        let mut control = Control([0; 64]);
        // SAFETY: every pointer given to recvmsg points into buffers that outlive the call.
        unsafe {
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = control.0.len();
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
            assert!(n >= 0, "{}", std::io::Error::last_os_error());
            data.truncate(n as usize);
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            let fd = (!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS).then(|| {
                OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()))
            });
            (data, fd)
        }
    }

    #[test]
    fn an_entry_too_large_for_a_datagram_goes_in_a_sealed_memfd() {
        let dir = std::env::temp_dir().join(format!("sockact-journald-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let journald = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let mut payload = Vec::new();
        field(&mut payload, "MESSAGE", &"x".repeat(400 * 1024));
        let err = sender.send_to(&payload, &path).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EMSGSIZE),
            "too large for a datagram"
        );
        send_memfd(sender.as_raw_fd(), &path, &payload).unwrap();
        let (data, fd) = receive(&journald);
        assert!(data.is_empty(), "the entry travels in the fd only");
        let fd = fd.expect("an fd passed with SCM_RIGHTS");
        // SAFETY: fcntl on an fd we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_ne!(
            seals & libc::F_SEAL_WRITE,
            0,
            "sealed, as journald requires"
        );
        let mut got = Vec::new();
        let mut file = std::fs::File::from(fd);
        // The sender's offset, shared: journald reads it with mmap.
        std::io::Seek::rewind(&mut file).unwrap();
        std::io::Read::read_to_end(&mut file, &mut got).unwrap();
        assert_eq!(got, payload);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_carries_the_structured_fields_and_survives_newlines() {
        let text = include_str!("../../../tests/fixtures/restart_gap.ndjson");
        let recorded = text
            .lines()
            .find(|l| l.contains("\"severity\":\"error\""))
            .unwrap();
        let finding: crate::events::Event = serde_json::from_str(recorded).unwrap();
        // What the fields must say, from the recorded line itself, not from the encoder.
        let want: serde_json::Value = serde_json::from_str(recorded).unwrap();
        let line = Line::encode(&finding, true).unwrap();
        let fields = parse(&entry(&line));
        let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1.as_str());
        assert_eq!(get("SOCKACT_KIND"), Some("finding"));
        assert_eq!(get("PRIORITY"), Some("3"), "an error is syslog's 3");
        assert_eq!(get("SOCKACT_RULE"), want["rule"].as_str());
        assert_eq!(get("SOCKACT_UNIT"), want["unit"].as_str());
        assert!(
            want["rule"].is_string() && want["unit"].is_string(),
            "{want}"
        );
        let back: crate::events::Event =
            serde_json::from_str(get("SOCKACT_EVENT").unwrap()).unwrap();
        assert_eq!(back, finding);
        // The summary's text is a table over several lines.
        let summary: crate::events::Event =
            serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let line = Line::encode(&summary, true).unwrap();
        assert!(line.text.as_ref().unwrap().contains('\n'));
        let fields = parse(&entry(&line));
        assert_eq!(
            fields[0],
            ("MESSAGE".to_owned(), line.text.clone().unwrap())
        );
    }
}
