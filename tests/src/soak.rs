//! The soak: watched load through sockact-agent for minutes. A socket-activated service on the
//! test bed's systemd, clients as fast as it answers, a restart every few seconds, and the agent
//! writing every event to a file and to a real rsyslog over RELP. Sampled over time: events,
//! findings, losses, the sinks' drops and the agent's memory.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{agent_bin, free_port, require_root, rsyslog::Rsyslog, testbed::Container};

pub struct Options {
    pub duration: Duration,
    /// Client threads, sharing `rate`.
    pub clients: usize,
    /// Connections a second, all clients together.
    pub rate: u32,
    pub restart_every: Duration,
    pub sample_every: Duration,
}

/// The agent and its work at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    /// Connections served so far.
    pub served: u64,
    pub events: u64,
    pub findings: u64,
    /// Events lost in the kernel or the agent (`sockact_lost_events_total`).
    pub lost: u64,
    /// Events a sink could not deliver.
    pub sink_dropped: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
    pub restarts: u64,
    /// Client connections that were refused or got no answer.
    pub failed: u64,
    /// Events rsyslog wrote from the RELP sink.
    pub relp_events: u64,
    /// Events the file sink wrote (the file and its rotations).
    pub file_events: u64,
    pub duration: Duration,
}

impl Report {
    pub fn last(&self) -> Sample {
        self.samples.last().cloned().unwrap_or_default()
    }

    /// RSS at the first sample a minute in (or the last one, for a shorter run).
    pub fn rss_after_first_minute(&self) -> u64 {
        self.samples
            .iter()
            .find(|s| s.at >= Duration::from_secs(60))
            .map_or(self.last().rss_kib, |s| s.rss_kib)
    }

    pub fn print(&self) {
        println!(
            "soak: {:>6} {:>9} {:>10} {:>9} {:>9} {:>5} {:>8}",
            "at s", "RSS MiB", "served", "events", "findings", "lost", "dropped"
        );
        for s in &self.samples {
            println!(
                "soak: {:>6.0} {:>9.1} {:>10} {:>9} {:>9} {:>5} {:>8}",
                s.at.as_secs_f64(),
                s.rss_kib as f64 / 1024.0,
                s.served,
                s.events,
                s.findings,
                s.lost,
                s.sink_dropped
            );
        }
        let last = self.last();
        let secs = self.duration.as_secs_f64().max(1.0);
        println!(
            "soak: {:.0} s, {} restarts, {:.0} connections/s ({} failed), {:.0} events/s, \
             {} findings, {} lost, {} dropped by sinks; file {} and RELP {} events; RSS {:.1} \
             MiB after a minute, {:.1} MiB at the end",
            secs,
            self.restarts,
            last.served as f64 / secs,
            self.failed,
            last.events as f64 / secs,
            last.findings,
            last.lost,
            last.sink_dropped,
            self.file_events,
            self.relp_events,
            self.rss_after_first_minute() as f64 / 1024.0,
            last.rss_kib as f64 / 1024.0,
        );
    }
}

pub fn run(opts: &Options) -> Report {
    require_root();
    let c = Container::boot("healthy", 2);
    let dir = std::env::temp_dir().join(format!("sockact-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a soak directory");
    let rsyslog = Rsyslog::start(&dir);
    let metrics = free_port();
    let file = dir.join("events.ndjson");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[sink]]\nkind = \"file\"\npath = \"{}\"\nmax_size_mb = 64\nkeep = 3\n\n\
             [[sink]]\nkind = \"relp\"\naddress = \"127.0.0.1:{}\"\nbuffer_events = 100000\n\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
            file.display(),
            rsyslog.relp
        ),
    )
    .expect("writing the agent's configuration");
    let mut agent = start_agent(&dir, &config, &c.bus_address());
    let pid = agent.id();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let port = c.port(1);
    let clients: Vec<_> = (0..opts.clients)
        .map(|_| {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            // Each client keeps its share of the rate on a schedule of its own.
            let every = Duration::from_secs_f64(opts.clients as f64 / f64::from(opts.rate));
            thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    next += every;
                    if let Some(ahead) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(ahead);
                    }
                    if ask(port) {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut report = Report::default();
    let (mut next_restart, mut next_sample) = (opts.restart_every, opts.sample_every);
    while started.elapsed() < opts.duration {
        thread::sleep(Duration::from_millis(50));
        let now = started.elapsed();
        if now >= next_restart {
            c.systemctl_ok(&["restart", "echo.service"]);
            report.restarts += 1;
            next_restart = now + opts.restart_every;
        }
        if now >= next_sample {
            report
                .samples
                .push(sample(pid, metrics, now, served.load(Ordering::Relaxed)));
            next_sample += opts.sample_every;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client thread");
    }
    // What the kernel and the agent still hold, delivered, before the last look.
    thread::sleep(Duration::from_secs(1));
    report.samples.push(sample(
        pid,
        metrics,
        started.elapsed(),
        served.load(Ordering::Relaxed),
    ));
    report.duration = started.elapsed();
    report.failed = failed.load(Ordering::Relaxed);

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = wait(&mut agent, Duration::from_secs(30));
    assert!(status.success(), "sockact-agent exited with {status}");
    report.file_events = lines_in(&dir, "events.ndjson");
    // RELP acknowledges what rsyslog wrote: all of it is there once the agent has exited.
    report.relp_events =
        std::fs::read_to_string(dir.join("relp.ndjson")).map_or(0, |t| t.lines().count() as u64);
    drop(rsyslog);
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// sockact-agent, waited for until it says READY=1.
fn start_agent(dir: &Path, config: &Path, bus: &str) -> Child {
    let notify = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&notify).expect("a notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a timeout");
    let child = Command::new(agent_bin())
        .arg("--config")
        .arg(config)
        .args(["--systemd-bus", bus])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting sockact-agent");
    let mut buf = [0u8; 64];
    let n = socket
        .recv(&mut buf)
        .expect("sockact-agent said READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    child
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for sockact-agent") {
            return status;
        }
        assert!(started.elapsed() < limit, "still running after {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// One connection: whether the service answered.
fn ask(port: u16) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok_and(|n| n > 0)
}

fn sample(pid: u32, metrics_port: u16, at: Duration, served: u64) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let text = metrics(metrics_port);
    Sample {
        at,
        rss_kib,
        served,
        events: sum(&text, "sockact_events_total"),
        findings: sum(&text, "sockact_findings_total"),
        lost: sum(&text, "sockact_lost_events_total"),
        sink_dropped: sum(&text, "sockact_sink_dropped_events_total"),
    }
}

/// The agent's Prometheus text.
fn metrics(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The sum of a metric over its labels.
fn sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// NDJSON lines in a file and its rotations.
fn lines_in(dir: &Path, name: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(name))
                .map(|e| std::fs::read_to_string(e.path()).map_or(0, |t| t.lines().count() as u64))
                .sum()
        })
        .unwrap_or(0)
}
