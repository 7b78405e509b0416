//! Accept-queue sampling of systemd's listeners: the kernel's queue length as sock_diag reports
//! it, turned into `queue` events when it changes (at most one a listener per sample, so the
//! rate is bounded by the sampling period), each with the peak seen since the previous one.
//! A listener sock_diag stops reporting has been closed: a `listener` close event.
use std::collections::HashMap;

use super::sock_diag::DiagListener;
use crate::events::{Data, Event, Listener, Queue, SocketId};

struct Sampled {
    addr: String,
    family: String,
    socket_unit: Option<String>,
    /// Depth in the last queue event.
    depth: u32,
    /// Largest depth since the last queue event.
    peak: u32,
    /// Whether sock_diag has reported it yet: a listener of another network namespace never
    /// is, and is not taken for closed.
    seen: bool,
}

/// systemd's listeners by socket inode.
#[derive(Default)]
pub struct QueueSampler {
    listeners: HashMap<u64, Sampled>,
}

impl QueueSampler {
    /// Follows the listeners systemd holds: found by the snapshot, or listened on by systemd.
    pub fn learn(&mut self, e: &Event) {
        let (inode, addr, family, socket_unit) = match &e.data {
            Data::Listener(l) if l.action == "close" => {
                if let Some(inode) = l.inode {
                    self.listeners.remove(&inode);
                }
                return;
            }
            Data::Listener(l) => (l.inode, &l.addr, &l.family, l.socket_unit.clone()),
            Data::Listen(l)
                if crate::detect::context::is_manager(e) && l.outcome.errno.is_none() =>
            {
                (
                    l.socket.inode,
                    &l.endpoint.addr,
                    &l.endpoint.family,
                    e.process.as_ref().and_then(|p| p.socket_unit.clone()),
                )
            }
            _ => return,
        };
        let Some(inode) = inode.filter(|&i| i != 0) else {
            return;
        };
        self.listeners.entry(inode).or_insert(Sampled {
            addr: addr.clone(),
            family: family.clone(),
            socket_unit,
            depth: 0,
            peak: 0,
            seen: false,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// One sample of every listener: the events it makes.
    pub fn sample(&mut self, diag: &[DiagListener]) -> Vec<Data> {
        let by_inode: HashMap<u64, &DiagListener> = diag.iter().map(|d| (d.inode, d)).collect();
        let mut out = Vec::new();
        let mut closed = Vec::new();
        for (&inode, s) in &mut self.listeners {
            let Some(d) = by_inode.get(&inode) else {
                if s.seen {
                    closed.push(inode);
                }
                continue;
            };
            s.seen = true;
            s.peak = s.peak.max(d.queued);
            if d.queued == s.depth {
                continue;
            }
            out.push(Data::Queue(Queue {
                listener: s.addr.clone(),
                depth: d.queued,
                max: d.backlog,
                peak: s.peak,
                socket_unit: s.socket_unit.clone(),
                socket: SocketId {
                    inode: Some(inode),
                    netns: None,
                },
            }));
            s.depth = d.queued;
            s.peak = d.queued;
        }
        for inode in closed {
            if let Some(s) = self.listeners.remove(&inode) {
                out.push(Data::Listener(Listener {
                    action: "close".into(),
                    addr: s.addr,
                    family: s.family,
                    backlog: None,
                    inode: Some(inode),
                    socket_unit: s.socket_unit,
                }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::{correlate::sock_diag::tcp_listeners, events::SCHEMA_VERSION};

    /// A real listener, and the sampler following it as the snapshot would.
    fn follow(l: &TcpListener) -> QueueSampler {
        let addr = l.local_addr().unwrap().to_string();
        let inode = tcp_listeners()
            .unwrap()
            .into_iter()
            .find(|d| d.addr == addr)
            .expect("sock_diag reports our listener")
            .inode;
        let mut q = QueueSampler::default();
        q.learn(&Event {
            v: SCHEMA_VERSION,
            seq: 1,
            ts: String::new(),
            host: String::new(),
            data: Data::Listener(Listener {
                action: "existing".into(),
                addr,
                family: "inet".into(),
                backlog: None,
                inode: Some(inode),
                socket_unit: Some("echo.socket".into()),
            }),
            process: None,
        });
        q
    }

    fn queue(d: &[Data]) -> &Queue {
        match d {
            [Data::Queue(q)] => q,
            _ => panic!("one queue event expected: {d:?}"),
        }
    }

    #[test]
    fn connections_waiting_on_a_real_listener_make_queue_events() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut q = follow(&l);
        assert!(
            q.sample(&tcp_listeners().unwrap()).is_empty(),
            "empty and unchanged"
        );
        let addr = l.local_addr().unwrap();
        let _a = TcpStream::connect(addr).unwrap();
        let _b = TcpStream::connect(addr).unwrap();
        let d = q.sample(&tcp_listeners().unwrap());
        let e = queue(&d);
        assert_eq!((e.depth, e.peak), (2, 2));
        assert!(e.max > 0);
        assert_eq!(e.socket_unit.as_deref(), Some("echo.socket"));
        assert!(q.sample(&tcp_listeners().unwrap()).is_empty(), "unchanged");
        drop(l.accept().unwrap());
        drop(l.accept().unwrap());
        let d = q.sample(&tcp_listeners().unwrap());
        let e = queue(&d);
        assert_eq!(
            (e.depth, e.peak),
            (0, 2),
            "the peak since the previous event"
        );
    }

    #[test]
    fn a_listener_that_disappears_is_closed_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut q = follow(&l);
        assert!(q.sample(&tcp_listeners().unwrap()).is_empty());
        drop(l);
        let d = q.sample(&tcp_listeners().unwrap());
        assert!(
            matches!(&d[..], [Data::Listener(x)] if x.action == "close"),
            "{d:?}"
        );
        assert!(q.sample(&tcp_listeners().unwrap()).is_empty());
    }

    #[test]
    fn a_listener_never_reported_is_not_taken_for_closed() {
        // One in another network namespace: sock_diag here never sees it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut q = follow(&l);
        assert!(q.sample(&[]).is_empty());
        assert!(!q.is_empty());
    }
}
