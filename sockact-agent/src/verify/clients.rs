//! The clients `verify` sends: one connection to a listener (a probe), and many at once in a
//! loop (the load during a restart). A probe connects, optionally sends an HTTP request, then
//! reads until the service answers, closes, or a short hold passes: "served" is decided by the
//! kernel's accept event, not by the protocol, so any service can be verified.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    os::unix::net::UnixStream,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Where a probe connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    /// A listener's address as sockact writes it: `127.0.0.1:80`, `[::1]:80`, a wildcard or a
    /// bare port (reached on loopback), `/run/x.sock` (under `root`, a container's root seen
    /// from the host), `@name` (abstract). None for what a client cannot reach.
    pub fn of(addr: &str, root: Option<&str>) -> Option<Target> {
        if let Some(path) = addr.strip_prefix('/') {
            let full = match root {
                Some(r) => PathBuf::from(r).join(path),
                None => PathBuf::from(addr),
            };
            return Some(Target::Unix(full));
        }
        if addr.starts_with('@') {
            return None;
        }
        let local = if let Ok(port) = addr.parse::<u16>() {
            format!("127.0.0.1:{port}")
        } else if let Some(port) = addr
            .strip_prefix("0.0.0.0:")
            .or_else(|| addr.strip_prefix("*:"))
        {
            format!("127.0.0.1:{port}")
        } else if let Some(port) = addr.strip_prefix("[::]:") {
            format!("[::1]:{port}")
        } else {
            addr.to_owned()
        };
        local.to_socket_addrs().ok()?.next().map(Target::Tcp)
    }
}

/// What became of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected; the service answered, closed, or said nothing within the hold.
    Connected,
    /// Refused: nothing listened.
    Refused,
    /// Reset by the other end.
    Reset,
    /// The connect itself did not finish in time (a full queue drops SYNs).
    TimedOut,
    /// An HTTP status.
    Http(u16),
    Failed(String),
}

/// One probe's record.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The client's own address (`127.0.0.1:PORT`): the accept event's peer.
    pub local: Option<String>,
    pub started: Instant,
    /// How long connect() took.
    pub connect: Option<Duration>,
    pub outcome: Outcome,
}

/// How a probe behaves.
#[derive(Clone, Debug)]
pub struct Options {
    pub connect_timeout: Duration,
    /// How long to wait for the service to answer or close.
    pub hold: Duration,
    /// `--http PATH`: send a GET and read the status.
    pub http: Option<String>,
}

fn outcome_of(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Outcome::Reset
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        _ => Outcome::Failed(e.to_string()),
    }
}

/// What a connection does once connected: HTTP or a plain read.
fn converse(mut s: impl Read + Write, host: &str, opts: &Options) -> Outcome {
    if let Some(path) = &opts.http {
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        if let Err(e) = s.write_all(req.as_bytes()) {
            return outcome_of(&e);
        }
    }
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) if opts.http.is_some() => {
            let head = String::from_utf8_lossy(&buf[..n]);
            head.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .map_or(Outcome::Failed("no HTTP status".into()), Outcome::Http)
        }
        Ok(_) => Outcome::Connected,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            if opts.http.is_some() {
                Outcome::TimedOut
            } else {
                Outcome::Connected
            }
        }
        Err(e) => outcome_of(&e),
    }
}

/// One connection to `target`.
pub fn probe(target: &Target, opts: &Options) -> Probe {
    let started = Instant::now();
    match target {
        Target::Tcp(addr) => match TcpStream::connect_timeout(addr, opts.connect_timeout) {
            Ok(s) => {
                let connect = started.elapsed();
                let local = s.local_addr().ok().map(|a| a.to_string());
                let _ = s.set_read_timeout(Some(opts.hold));
                let _ = s.set_write_timeout(Some(opts.hold));
                Probe {
                    local,
                    started,
                    connect: Some(connect),
                    outcome: converse(s, &addr.to_string(), opts),
                }
            }
            Err(e) => Probe {
                local: None,
                started,
                connect: None,
                outcome: outcome_of(&e),
            },
        },
        Target::Unix(path) => match UnixStream::connect(path) {
            Ok(s) => {
                let connect = started.elapsed();
                let _ = s.set_read_timeout(Some(opts.hold));
                let _ = s.set_write_timeout(Some(opts.hold));
                Probe {
                    local: None,
                    started,
                    connect: Some(connect),
                    outcome: converse(s, "localhost", opts),
                }
            }
            Err(e) => Probe {
                local: None,
                started,
                connect: None,
                outcome: outcome_of(&e),
            },
        },
    }
}

/// Clients connecting in a loop, each to the targets in turn, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(targets: &[Target], clients: usize, opts: &Options) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|i| {
                let (stop, probes, opts) = (stop.clone(), probes.clone(), opts.clone());
                let targets = targets.to_vec();
                thread::spawn(move || {
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) && !targets.is_empty() {
                        let p = probe(&targets[n % targets.len()], &opts);
                        n += 1;
                        let pause = !matches!(p.outcome, Outcome::Connected | Outcome::Http(_));
                        probes.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                        // A refused connect returns at once: do not spin on it.
                        thread::sleep(Duration::from_millis(if pause { 50 } else { 10 }));
                    }
                })
            })
            .collect();
        Load {
            stop,
            probes,
            threads,
        }
    }

    /// Stops the clients, waits for the connections under way, returns every probe.
    pub fn stop(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *probes)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn opts() -> Options {
        Options {
            connect_timeout: Duration::from_secs(2),
            hold: Duration::from_millis(200),
            http: None,
        }
    }

    #[test]
    fn addresses_become_targets() {
        assert_eq!(
            Target::of("8080", None),
            Some(Target::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            Target::of("[::]:80", None),
            Some(Target::Tcp("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            Target::of("/run/x.sock", Some("/proc/7/root")),
            Some(Target::Unix("/proc/7/root/run/x.sock".into()))
        );
        assert_eq!(Target::of("@abstract", None), None);
    }

    #[test]
    fn a_probe_tells_connected_from_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let p = probe(&Target::Tcp(addr), &opts());
        assert_eq!(
            p.outcome,
            Outcome::Connected,
            "nothing said within the hold"
        );
        assert!(p.local.as_deref().unwrap().starts_with("127.0.0.1:"));
        drop(l);
        let p = probe(&Target::Tcp(addr), &opts());
        assert_eq!(p.outcome, Outcome::Refused);
    }

    #[test]
    fn an_http_probe_reads_the_status() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
            c.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\n")
                .unwrap();
        });
        let mut o = opts();
        o.http = Some("/health".into());
        let p = probe(&Target::Tcp(addr), &o);
        server.join().unwrap();
        assert_eq!(p.outcome, Outcome::Http(503));
    }
}
