//! Socket addresses from kernel bytes: a caller's sockaddr, or the fields of a `struct sock`,
//! rendered as DESIGN.md's strings (`127.0.0.1:8080`, `[::1]:8080`, `/run/x.sock`, `@abstract`).
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::text::escape_invalid;

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A decoded address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub text: String,
    /// `inet`, `inet6`, `unix`, or `af<N>` for anything else.
    pub family: String,
    pub port: Option<u16>,
}

/// Name of an address family as DESIGN.md spells it.
pub fn family_name(family: u16) -> String {
    match family {
        AF_INET => "inet".into(),
        AF_INET6 => "inet6".into(),
        AF_UNIX => "unix".into(),
        other => format!("af{other}"),
    }
}

fn inet(ip: Ipv4Addr, port: u16) -> Address {
    Address {
        text: format!("{ip}:{port}"),
        family: family_name(AF_INET),
        port: Some(port),
    }
}

fn inet6(ip: Ipv6Addr, port: u16) -> Address {
    Address {
        text: format!("[{ip}]:{port}"),
        family: family_name(AF_INET6),
        port: Some(port),
    }
}

/// Decodes a sockaddr. `len` is the length the caller gave (the kernel's addrlen); `bytes` what
/// was copied, possibly less. Returns None when too little is there to say anything.
pub fn decode_sockaddr(bytes: &[u8], len: usize) -> Option<Address> {
    let avail = &bytes[..len.min(bytes.len())];
    if avail.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([avail[0], avail[1]]);
    match family {
        AF_INET if avail.len() >= 8 => {
            let port = u16::from_be_bytes([avail[2], avail[3]]);
            Some(inet(
                Ipv4Addr::new(avail[4], avail[5], avail[6], avail[7]),
                port,
            ))
        }
        AF_INET6 if avail.len() >= 24 => {
            let port = u16::from_be_bytes([avail[2], avail[3]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&avail[8..24]);
            Some(inet6(Ipv6Addr::from(ip), port))
        }
        AF_UNIX => Some(Address {
            text: unix_path(&avail[2..]),
            family: family_name(AF_UNIX),
            port: None,
        }),
        AF_INET | AF_INET6 => None,
        other => Some(Address {
            text: String::new(),
            family: family_name(other),
            port: None,
        }),
    }
}

/// A unix socket path: a leading NUL makes it abstract (`@name`, the rest taken as is up to the
/// length); otherwise it ends at the first NUL. An unnamed (autobound or unbound) socket is "".
pub fn unix_path(path: &[u8]) -> String {
    match path.first() {
        None => String::new(),
        Some(0) => format!("@{}", escape_invalid(&path[1..])),
        Some(_) => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            escape_invalid(&path[..end])
        }
    }
}

/// An inet address from the fields of a `struct sock` (address bytes in network order, port in
/// host order).
pub fn from_sock(family: u16, addr: &[u8; 16], port: u16) -> Option<Address> {
    match family {
        AF_INET => Some(inet(
            Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]),
            port,
        )),
        AF_INET6 => Some(inet6(Ipv6Addr::from(*addr), port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        b[2..4].copy_from_slice(&port.to_be_bytes());
        b[4..8].copy_from_slice(&ip);
        b
    }

    #[test]
    fn ipv4() {
        let a = decode_sockaddr(&sockaddr_in([127, 0, 0, 1], 8080), 16).unwrap();
        assert_eq!(a.text, "127.0.0.1:8080");
        assert_eq!(a.family, "inet");
        assert_eq!(a.port, Some(8080));
    }

    #[test]
    fn ipv6() {
        let mut b = vec![0u8; 28];
        b[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        b[2..4].copy_from_slice(&443u16.to_be_bytes());
        b[23] = 1;
        let a = decode_sockaddr(&b, 28).unwrap();
        assert_eq!(a.text, "[::1]:443");
        assert_eq!(a.family, "inet6");
    }

    #[test]
    fn unix_path_and_abstract_name() {
        let mut b = AF_UNIX.to_ne_bytes().to_vec();
        b.extend_from_slice(b"/run/x.sock\0garbage");
        assert_eq!(decode_sockaddr(&b, b.len()).unwrap().text, "/run/x.sock");
        let mut b = AF_UNIX.to_ne_bytes().to_vec();
        b.extend_from_slice(b"\0demo");
        let a = decode_sockaddr(&b, b.len()).unwrap();
        assert_eq!(a.text, "@demo");
        assert_eq!(a.family, "unix");
        assert_eq!(a.port, None);
    }

    #[test]
    fn truncated_addresses_say_nothing_rather_than_something_wrong() {
        let b = sockaddr_in([10, 0, 0, 1], 80);
        assert_eq!(decode_sockaddr(&b, 6), None);
        assert_eq!(decode_sockaddr(&b[..1], 16), None);
        let mut v6 = vec![0u8; 12];
        v6[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        assert_eq!(decode_sockaddr(&v6, 28), None);
    }

    #[test]
    fn oversized_length_is_clamped_to_what_was_copied() {
        let b = sockaddr_in([1, 2, 3, 4], 5);
        assert_eq!(decode_sockaddr(&b, 4096).unwrap().text, "1.2.3.4:5");
    }

    #[test]
    fn non_utf8_bytes_in_unix_paths_are_escaped_exactly() {
        let mut b = AF_UNIX.to_ne_bytes().to_vec();
        b.extend_from_slice(b"/tmp/\xffx\0");
        assert_eq!(decode_sockaddr(&b, b.len()).unwrap().text, "/tmp/\\xffx");
    }

    #[test]
    fn unnamed_unix_socket_is_empty() {
        let b = AF_UNIX.to_ne_bytes().to_vec();
        assert_eq!(decode_sockaddr(&b, 2).unwrap().text, "");
    }

    #[test]
    fn sock_fields() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(from_sock(AF_INET, &a, 80).unwrap().text, "127.0.0.1:80");
        assert_eq!(from_sock(AF_UNIX, &a, 0), None);
    }
}
