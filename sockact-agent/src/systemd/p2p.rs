//! systemd's private socket (`/run/systemd/private`): a peer-to-peer D-Bus connection with no
//! bus daemon. systemd stamps every message it sends there with the sender
//! `org.freedesktop.systemd1`, a well-known name where a peer-to-peer peer would have none or a
//! unique one, and zbus refuses such messages. This socket rewrites that sender to the unique
//! name `:org.freedesktop.systemd` (same length, so no offset moves) as bytes arrive; nothing
//! else in the stream changes.
use std::io;

use std::os::fd::OwnedFd;

use zbus::connection::socket::{BoxedSplit, ReadHalf, Split, WriteHalf};

/// The sender field's string as it appears on the wire: length 24 (little-endian), the name, NUL.
const SENDER: &[u8; 29] = b"\x18\x00\x00\x00org.freedesktop.systemd1\x00";
const UNIQUE: &[u8; 29] = b"\x18\x00\x00\x00:org.freedesktop.systemd\x00";

/// Whether an address names systemd's private socket (connect peer-to-peer).
pub fn is_private_socket(address: &str) -> bool {
    address
        .trim_end_matches('/')
        .ends_with("/run/systemd/private")
}

/// The socket path of a `unix:path=...` address.
pub fn unix_path(address: &str) -> Option<&str> {
    address
        .strip_prefix("unix:")?
        .split(',')
        .find_map(|kv| kv.strip_prefix("path="))
}

/// Rewrites every occurrence of systemd's well-known sender in `buf`.
pub fn rewrite_sender(buf: &mut [u8]) {
    let mut i = 0;
    while i + SENDER.len() <= buf.len() {
        if &buf[i..i + SENDER.len()] == SENDER {
            buf[i..i + SENDER.len()].copy_from_slice(UNIQUE);
            i += SENDER.len();
        } else {
            i += 1;
        }
    }
}

#[derive(Debug)]
struct Rewriting(tokio::net::unix::OwnedReadHalf);

#[async_trait::async_trait]
impl ReadHalf for Rewriting {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let (n, fds) = self.0.recvmsg(buf).await?;
        rewrite_sender(&mut buf[..n]);
        Ok((n, fds))
    }

    fn can_pass_unix_fd(&self) -> bool {
        self.0.can_pass_unix_fd()
    }

    async fn peer_credentials(&mut self) -> io::Result<zbus::fdo::ConnectionCredentials> {
        self.0.peer_credentials().await
    }
}

/// The PID whose root a `/proc/PID/root/...` path goes through.
pub fn proc_root_pid(path: &str) -> Option<u32> {
    path.strip_prefix("/proc/")?
        .split_once("/root/")?
        .0
        .parse()
        .ok()
}

/// Connects to a unix socket from inside the PID namespace of `pid`. systemd refuses private
/// connections from a peer whose PID it cannot see (SO_PEERCRED gives pid 0 across PID
/// namespaces), so a child forked into that namespace connects and hands the fd back.
fn connect_in_pidns(path: &str, pid: u32) -> io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};

    let target = std::fs::File::open(format!("/proc/{pid}/ns/pid"))?;
    let own = std::fs::File::open("/proc/self/ns/pid")?;
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair()?;
    // Everything the child needs is prepared before fork: it only makes syscalls.
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain syscalls; setns(CLONE_NEWPID) only changes the namespace of this thread's
    // future children, and is undone right after the fork.
    unsafe {
        if libc::setns(target.as_raw_fd(), libc::CLONE_NEWPID) != 0 {
            return Err(io::Error::last_os_error());
        }
        let child = libc::fork();
        if child == 0 {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let ok = fd >= 0
                && libc::connect(
                    fd,
                    &addr as *const _ as *const libc::sockaddr,
                    size_of::<libc::sockaddr_un>() as libc::socklen_t,
                ) == 0
                && send_fd(theirs.as_raw_fd(), fd);
            libc::_exit(if ok { 0 } else { 1 });
        }
        let restored = libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID);
        if child < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        if restored != 0 {
            return Err(io::Error::last_os_error());
        }
        drop(theirs);
        match recv_fd(ours.as_raw_fd()) {
            Some(fd) => Ok(OwnedFd::from_raw_fd(fd)),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("connecting to {path} from the PID namespace of {pid} failed"),
            )),
        }
    }
}

/// CMSG_SPACE(sizeof(int)) as u64 words: cmsghdr needs 8-byte alignment, which a byte array
/// on the stack does not promise.
const CMSG_WORDS_FD: usize = 3;

/// One byte of data and room for one fd: the message both SCM_RIGHTS helpers use. The caller
/// keeps `byte`, `iov` and `control` alive while `msg` is in use.
fn one_fd_message(
    byte: &mut [u8; 1],
    iov: &mut libc::iovec,
    control: &mut [u64; CMSG_WORDS_FD],
) -> libc::msghdr {
    iov.iov_base = byte.as_mut_ptr() as *mut libc::c_void;
    iov.iov_len = 1;
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = size_of_val(control);
    msg
}

/// Sends one fd over a unix socket (SCM_RIGHTS); async-signal-safe.
unsafe fn send_fd(sock: i32, fd: i32) -> bool {
    let (mut byte, mut control) = ([0u8; 1], [0u64; CMSG_WORDS_FD]);
    let mut iov = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let msg = one_fd_message(&mut byte, &mut iov, &mut control);
    // SAFETY: the control buffer has room for one cmsg with one fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fd);
        libc::sendmsg(sock, &msg, 0) == 1
    }
}

/// Receives one fd sent with [`send_fd`].
unsafe fn recv_fd(sock: i32) -> Option<i32> {
    let (mut byte, mut control) = ([0u8; 1], [0u64; CMSG_WORDS_FD]);
    let mut iov = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut msg = one_fd_message(&mut byte, &mut iov, &mut control);
    // SAFETY: the kernel fills at most the buffers given; the cmsg is checked before use.
    unsafe {
        if libc::recvmsg(sock, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) != 1 {
            return None;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return None;
        }
        Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32))
    }
}

/// A peer-to-peer connection to systemd's private socket at `path`.
pub async fn connect(path: &str) -> zbus::Result<zbus::Connection> {
    let stream = match proc_root_pid(path) {
        Some(pid) => {
            let fd = connect_in_pidns(path, pid)?;
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(std)?
        }
        None => tokio::net::UnixStream::connect(path).await?,
    };
    let (read, write) = stream.into_split();
    let split: BoxedSplit = Split::new(
        Box::new(Rewriting(read)) as Box<dyn ReadHalf>,
        Box::new(write) as Box<dyn WriteHalf>,
    );
    zbus::connection::Builder::socket(split).p2p().build().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sender_string_changes() {
        let mut buf = b"ab\x18\x00\x00\x00org.freedesktop.systemd1\x00cd".to_vec();
        let before = buf.len();
        rewrite_sender(&mut buf);
        assert_eq!(buf.len(), before);
        assert_eq!(&buf[..2], b"ab");
        assert_eq!(&buf[6..30], b":org.freedesktop.systemd");
        assert_eq!(&buf[31..], b"cd");
        // The name without its wire length in front is data, not a sender: untouched.
        let mut other = b"org.freedesktop.systemd1".to_vec();
        rewrite_sender(&mut other);
        assert_eq!(other, b"org.freedesktop.systemd1");
    }

    #[test]
    fn private_socket_addresses() {
        assert!(is_private_socket(
            "unix:path=/proc/42/root/run/systemd/private"
        ));
        assert!(!is_private_socket("unix:path=/run/dbus/system_bus_socket"));
        assert_eq!(
            unix_path("unix:path=/run/systemd/private"),
            Some("/run/systemd/private")
        );
        assert_eq!(unix_path("tcp:host=x"), None);
        assert_eq!(proc_root_pid("/proc/42/root/run/systemd/private"), Some(42));
        assert_eq!(proc_root_pid("/run/systemd/private"), None);
    }
}
