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

/// A peer-to-peer connection to systemd's private socket at `path`.
pub async fn connect(path: &str) -> zbus::Result<zbus::Connection> {
    let stream = tokio::net::UnixStream::connect(path).await?;
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
    }
}
