//! The accept queues of watched listeners (systemd's, and those of `--port`), turned into
//! `queue` and `drop` events. Observations come from the kernel (a connection queued, with the
//! depth, maximum and drop counter read at that moment; an accept, with the depth it left) and
//! from sock_diag samples every 100 ms (depth, maximum, drop counter; a listener no longer
//! reported has closed).
//!
//! The rate is bounded without losing a peak: a listener gets at most one `queue` event per
//! [`PERIOD_NS`] of stream time, whose `peak` is the largest depth observed since the previous
//! one; a change after a quiet period is written at once, with the kernel's timestamp. `drop`
//! events follow the same rule, each carrying the growth of the listener's own drop counter
//! since the previous one, so that their counts add up to the counter's.
use std::collections::HashMap;

use super::sock_diag::DiagListener;
use crate::events::{Data, Dropped, Event, Listener, Queue, SocketId};

/// At most one queue (and one drop) event a listener in this much stream time.
pub const PERIOD_NS: i128 = 100_000_000;

/// What the kernel or sock_diag said of one listener's queue at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Unix nanoseconds.
    pub ts: i128,
    pub inode: u64,
    pub depth: u32,
    pub backlog: Option<u32>,
    /// The listener's drop counter, where it was read.
    pub drops: Option<u64>,
}

/// An event to write, with its time (Unix nanoseconds).
pub type Timed = (i128, Data);

struct Followed {
    addr: String,
    family: String,
    socket_unit: Option<String>,
    /// Whether sock_diag has reported it yet: a listener of another network namespace never
    /// is, and is not taken for closed.
    seen: bool,
    max: u32,
    /// Depth in the last queue event, and its stream time.
    depth: u32,
    reported_at: Option<i128>,
    /// Latest depth observed, the largest since the last queue event, and when.
    now: u32,
    peak: u32,
    observed_at: i128,
    /// The drop counter: its value when following began (None until first read), the largest
    /// read, the value the last drop event reported, and that event's stream time.
    drops_base: Option<u64>,
    drops: u64,
    drops_reported: u64,
    drops_reported_at: Option<i128>,
}

impl Followed {
    fn id(&self, inode: u64) -> SocketId {
        SocketId {
            inode: Some(inode),
            netns: None,
        }
    }

    fn queue_due(&self) -> bool {
        self.now != self.depth || self.peak != self.depth
    }

    fn queue_event(&mut self, inode: u64, at: i128) -> Timed {
        let ts = self.observed_at;
        let data = Data::Queue(Queue {
            listener: self.addr.clone(),
            depth: self.now,
            max: self.max,
            peak: self.peak.max(self.now),
            socket_unit: self.socket_unit.clone(),
            socket: self.id(inode),
        });
        self.depth = self.now;
        self.peak = self.now;
        self.reported_at = Some(at);
        (ts, data)
    }

    fn drop_event(&mut self, inode: u64, at: i128) -> Timed {
        let base = self.drops_base.unwrap_or(0);
        let data = Data::Drop(Dropped {
            listener: self.addr.clone(),
            count: self.drops - self.drops_reported,
            total: self.drops - base,
            reason: "accept_queue_full".into(),
            socket_unit: self.socket_unit.clone(),
            socket: self.id(inode),
        });
        self.drops_reported = self.drops;
        self.drops_reported_at = Some(at);
        (self.observed_at, data)
    }

    /// Events due at stream time `at`: every change once its period has passed, or at once
    /// when `force`.
    fn due(&mut self, inode: u64, at: i128, force: bool, out: &mut Vec<Timed>) {
        let passed = |last: Option<i128>| force || last.is_none_or(|t| at - t >= PERIOD_NS);
        if self.queue_due() && passed(self.reported_at) {
            out.push(self.queue_event(inode, at));
        }
        if self.drops > self.drops_reported && passed(self.drops_reported_at) {
            out.push(self.drop_event(inode, at));
        }
    }
}

/// Watched listeners by socket inode.
#[derive(Default)]
pub struct QueueTracker {
    listeners: HashMap<u64, Followed>,
}

impl QueueTracker {
    /// Follows the listeners whose queue the kernel watches: found by the snapshot, or listened
    /// on by systemd (or on a selected port, `port_selected`) during the trace.
    pub fn learn(&mut self, e: &Event, port_selected: impl Fn(u16) -> bool) {
        let (inode, addr, family, socket_unit, new) = match &e.data {
            Data::Listener(l) if l.action == "close" => {
                if let Some(inode) = l.inode {
                    self.listeners.remove(&inode);
                }
                return;
            }
            Data::Listener(l) => (
                l.inode,
                &l.addr,
                &l.family,
                l.socket_unit.clone(),
                l.action == "open",
            ),
            Data::Listen(l)
                if l.outcome.errno.is_none()
                    && (crate::detect::context::is_manager(e)
                        || l.endpoint.port.is_some_and(&port_selected)) =>
            {
                (
                    l.socket.inode,
                    &l.endpoint.addr,
                    &l.endpoint.family,
                    e.process.as_ref().and_then(|p| p.socket_unit.clone()),
                    true,
                )
            }
            _ => return,
        };
        let Some(inode) = inode.filter(|&i| i != 0) else {
            return;
        };
        self.listeners.entry(inode).or_insert(Followed {
            addr: addr.clone(),
            family: family.clone(),
            socket_unit,
            seen: false,
            max: 0,
            depth: 0,
            reported_at: None,
            now: 0,
            peak: 0,
            observed_at: 0,
            // A listener opened during the trace has dropped nothing yet.
            drops_base: new.then_some(0),
            drops: 0,
            drops_reported: 0,
            drops_reported_at: None,
        });
    }

    /// The drop counter of a listener when following began (the start-up snapshot's reading):
    /// what it dropped before is not the trace's.
    pub fn seed_drops(&mut self, inode: u64, drops: u64) {
        if let Some(f) = self.listeners.get_mut(&inode)
            && f.drops_base.is_none()
        {
            f.drops_base = Some(drops);
            f.drops = drops;
            f.drops_reported = drops;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Whether a listener is followed.
    pub fn follows(&self, inode: u64) -> bool {
        self.listeners.contains_key(&inode)
    }

    /// Takes one observation; returns what is due at once.
    pub fn observe(&mut self, o: Observation) -> Vec<Timed> {
        let mut out = Vec::new();
        let Some(f) = self.listeners.get_mut(&o.inode) else {
            return out;
        };
        // An observation older than the latest (a kernel record read after a sample) still
        // counts for the peak, not for the depth now.
        if o.ts >= f.observed_at {
            f.now = o.depth;
            f.observed_at = o.ts;
        }
        f.peak = f.peak.max(o.depth);
        if let Some(b) = o.backlog.filter(|&b| b > 0) {
            f.max = b;
        }
        if let Some(d) = o.drops {
            if f.drops_base.is_none() {
                f.drops_base = Some(d);
                f.drops_reported = d;
            }
            f.drops = f.drops.max(d);
        }
        f.due(o.inode, o.ts, false, &mut out);
        out
    }

    /// One sock_diag sample of every listener at `now`: observations, and `listener` close
    /// events for those that disappeared.
    pub fn sample(&mut self, diag: &[DiagListener], now: i128) -> Vec<Timed> {
        let by_inode: HashMap<u64, &DiagListener> = diag.iter().map(|d| (d.inode, d)).collect();
        let mut out = Vec::new();
        let mut closed = Vec::new();
        let inodes: Vec<u64> = self.listeners.keys().copied().collect();
        for inode in inodes {
            let Some(d) = by_inode.get(&inode) else {
                if self.listeners.get(&inode).is_some_and(|f| f.seen) {
                    closed.push(inode);
                }
                continue;
            };
            if let Some(f) = self.listeners.get_mut(&inode) {
                f.seen = true;
            }
            out.extend(self.observe(Observation {
                ts: now,
                inode,
                depth: d.queued,
                backlog: Some(d.backlog),
                drops: d.drops.map(u64::from),
            }));
        }
        for inode in closed {
            if let Some(mut f) = self.listeners.remove(&inode) {
                // What it did last, then its end.
                f.due(inode, now, true, &mut out);
                out.push((
                    now,
                    Data::Listener(Listener {
                        action: "close".into(),
                        addr: f.addr,
                        family: f.family,
                        backlog: None,
                        inode: Some(inode),
                        socket_unit: f.socket_unit,
                    }),
                ));
            }
        }
        out
    }

    /// The changes whose period has passed by `now` (a live timer calls this).
    pub fn due(&mut self, now: i128) -> Vec<Timed> {
        let mut out = Vec::new();
        for (&inode, f) in &mut self.listeners {
            f.due(inode, now, false, &mut out);
        }
        out
    }

    /// Every change not yet written, at the end of the trace.
    pub fn flush(&mut self, now: i128) -> Vec<Timed> {
        let mut out = Vec::new();
        for (&inode, f) in &mut self.listeners {
            f.due(inode, now, true, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::{correlate::sock_diag::tcp_listeners, events::SCHEMA_VERSION};

    const MS: i128 = 1_000_000;

    fn listener_event(addr: &str, inode: u64, action: &str) -> Event {
        Event {
            v: SCHEMA_VERSION,
            seq: 1,
            ts: String::new(),
            host: String::new(),
            data: Data::Listener(Listener {
                action: action.into(),
                addr: addr.into(),
                family: "inet".into(),
                backlog: None,
                inode: Some(inode),
                socket_unit: Some("echo.socket".into()),
            }),
            process: None,
        }
    }

    /// A real listener, and the tracker following it as the snapshot would.
    fn follow(l: &TcpListener) -> (QueueTracker, u64) {
        let addr = l.local_addr().unwrap().to_string();
        let d = tcp_listeners()
            .unwrap()
            .into_iter()
            .find(|d| d.addr == addr)
            .expect("sock_diag reports our listener");
        let mut q = QueueTracker::default();
        q.learn(&listener_event(&addr, d.inode, "existing"), |_| false);
        q.seed_drops(d.inode, u64::from(d.drops.unwrap_or(0)));
        (q, d.inode)
    }

    fn queue(d: &[Timed]) -> &Queue {
        match d {
            [(_, Data::Queue(q))] => q,
            _ => panic!("one queue event expected: {d:?}"),
        }
    }

    fn obs(ts: i128, depth: u32, drops: u64) -> Observation {
        Observation {
            ts,
            inode: 9,
            depth,
            backlog: Some(4),
            drops: Some(drops),
        }
    }

    fn opened() -> QueueTracker {
        let mut q = QueueTracker::default();
        q.learn(&listener_event("127.0.0.1:80", 9, "open"), |_| false);
        q
    }

    #[test]
    fn connections_waiting_on_a_real_listener_make_queue_events() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut q, _) = follow(&l);
        assert!(
            q.sample(&tcp_listeners().unwrap(), 0).is_empty(),
            "empty and unchanged"
        );
        let addr = l.local_addr().unwrap();
        let _a = TcpStream::connect(addr).unwrap();
        let _b = TcpStream::connect(addr).unwrap();
        let d = q.sample(&tcp_listeners().unwrap(), 200 * MS);
        let e = queue(&d);
        assert_eq!((e.depth, e.peak), (2, 2));
        assert!(e.max > 0);
        assert_eq!(e.socket_unit.as_deref(), Some("echo.socket"));
        assert!(
            q.sample(&tcp_listeners().unwrap(), 400 * MS).is_empty(),
            "unchanged"
        );
        drop(l.accept().unwrap());
        drop(l.accept().unwrap());
        let d = q.sample(&tcp_listeners().unwrap(), 600 * MS);
        let e = queue(&d);
        assert_eq!(
            (e.depth, e.peak),
            (0, 2),
            "the peak since the previous event"
        );
    }

    #[test]
    fn a_peak_shorter_than_the_period_is_reported_and_the_rate_is_bounded() {
        let mut q = opened();
        // After a quiet period: at once, with the observation's time.
        let first = q.observe(obs(1_000 * MS, 1, 0));
        assert_eq!(first[0].0, 1_000 * MS);
        assert_eq!(queue(&first).depth, 1);
        // A burst within the period: nothing more until it has passed.
        for (i, depth) in [2, 3, 5, 2, 0].into_iter().enumerate() {
            let at = 1_000 * MS + (i as i128 + 1) * 10 * MS;
            assert!(q.observe(obs(at, depth, 0)).is_empty());
        }
        assert!(q.due(1_080 * MS).is_empty(), "the period has not passed");
        let d = q.due(1_100 * MS);
        let e = queue(&d);
        assert_eq!(
            (e.depth, e.peak, e.max),
            (0, 5, 4),
            "the 50 ms peak is kept"
        );
        assert!(q.due(1_300 * MS).is_empty(), "nothing changed since");
    }

    #[test]
    fn drop_events_add_up_to_the_counter_growth() {
        let mut q = opened();
        let mut total = 0;
        let mut last_total = 0;
        let mut events = Vec::new();
        for (i, drops) in [0u64, 3, 3, 7, 12, 12, 20].into_iter().enumerate() {
            let at = (i as i128) * 40 * MS;
            events.extend(q.observe(obs(at, 5, drops)));
            events.extend(q.due(at));
        }
        events.extend(q.flush(1_000 * MS));
        for (_, d) in &events {
            if let Data::Drop(x) = d {
                total += x.count;
                last_total = x.total;
                assert_eq!(x.reason, "accept_queue_full");
            }
        }
        assert_eq!((total, last_total), (20, 20));
    }

    #[test]
    fn drops_before_following_began_are_not_counted() {
        let mut q = QueueTracker::default();
        q.learn(&listener_event("127.0.0.1:80", 9, "existing"), |_| false);
        q.seed_drops(9, 100);
        let d = q.observe(obs(0, 1, 104));
        let dropped: Vec<&Dropped> = d
            .iter()
            .filter_map(|(_, d)| match d {
                Data::Drop(x) => Some(x),
                _ => None,
            })
            .collect();
        assert_eq!((dropped[0].count, dropped[0].total), (4, 4));
    }

    #[test]
    fn a_listener_that_disappears_is_closed_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut q, _) = follow(&l);
        assert!(q.sample(&tcp_listeners().unwrap(), 0).is_empty());
        drop(l);
        let d = q.sample(&tcp_listeners().unwrap(), MS);
        assert!(
            matches!(&d[..], [(_, Data::Listener(x))] if x.action == "close"),
            "{d:?}"
        );
        assert!(q.sample(&tcp_listeners().unwrap(), 2 * MS).is_empty());
    }

    #[test]
    fn a_listener_never_reported_is_not_taken_for_closed() {
        // One in another network namespace: sock_diag here never sees it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut q, _) = follow(&l);
        assert!(q.sample(&[], 0).is_empty());
        assert!(!q.is_empty());
    }

    #[test]
    fn observations_of_listeners_not_followed_are_ignored() {
        let mut q = QueueTracker::default();
        assert!(q.observe(obs(0, 3, 1)).is_empty());
        assert!(!q.follows(9));
    }
}
