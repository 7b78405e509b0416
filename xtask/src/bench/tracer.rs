//! The tracers measured side by side: sockact-agent, and bpftrace on exactly the tracepoints
//! sockact attaches (the floor: a never-true one-lookup predicate; counting in a map; printing
//! each event). Each is started, timed until it is ready, sampled and stopped the same way.
use std::{
    fs::File,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No tracer at all.
    None,
    Agent,
    /// bpftrace, each probe `/@never[pid]/`: one map lookup, never true.
    Floor,
    /// bpftrace counting every event in a map.
    Count,
    /// bpftrace printing every event.
    Print,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::None => "no tracer",
            Kind::Agent => "sockact-agent",
            Kind::Floor => "bpftrace never-true",
            Kind::Count => "bpftrace count",
            Kind::Print => "bpftrace print",
        }
    }
}

/// A running tracer.
pub struct Tracer {
    pub kind: Kind,
    child: Option<Child>,
    /// Where its stdout goes.
    pub output: PathBuf,
    /// From start to ready (every program attached; bpftrace's BEGIN).
    pub ready_after: Duration,
    /// The agent's notify socket, kept until it stops (it says STOPPING=1 there).
    _notify: Option<UnixDatagram>,
}

/// bpftrace's probe list for the tracepoints sockact attached, from the agent's program
/// names (`syscalls_sys_enter_bind` is `tracepoint:syscalls:sys_enter_bind`).
pub fn probes(attached: &[String]) -> String {
    attached
        .iter()
        .filter_map(|p| p.split_once('_'))
        .map(|(category, name)| format!("tracepoint:{category}:{name}"))
        .collect::<Vec<_>>()
        .join(",\n")
}

fn script(kind: Kind, probes: &str) -> String {
    let action = match kind {
        Kind::Floor => "/@never[pid]/ { @hits = count(); }",
        Kind::Count => "{ @events[probe] = count(); }",
        _ => "{ printf(\"%s %d %s\\n\", probe, pid, comm); }",
    };
    format!("BEGIN {{ @never[0] = 0; printf(\"ready\\n\"); }}\n{probes}\n{action}\n")
}

impl Tracer {
    pub fn start(kind: Kind, agent: &Path, probes: &str, dir: &Path) -> anyhow::Result<Tracer> {
        let output = dir.join(format!("{}.out", kind.name().replace(' ', "-")));
        let started = Instant::now();
        let mut notify = None;
        let child = match kind {
            Kind::None => None,
            Kind::Agent => {
                let (child, socket) = start_agent(agent, &output, dir)?;
                notify = Some(socket);
                Some(child)
            }
            _ => {
                let path = dir.join(format!("{}.bt", kind.name().replace(' ', "-")));
                std::fs::write(&path, script(kind, probes))?;
                let child = Command::new("bpftrace")
                    .arg(&path)
                    .stdout(File::create(&output)?)
                    .stderr(Stdio::null())
                    .spawn()
                    .context("bpftrace (package bpftrace)")?;
                wait_for_line(&output, "ready", started)?;
                Some(child)
            }
        };
        Ok(Tracer {
            kind,
            child,
            output,
            ready_after: started.elapsed(),
            _notify: notify,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops it (SIGTERM for the agent: it drains and reports; SIGINT for bpftrace, again
    /// every half second, as bpftrace may miss one sent while it attaches or prints).
    pub fn stop(mut self) -> anyhow::Result<PathBuf> {
        if let Some(mut child) = self.child.take() {
            let signal = if self.kind == Kind::Agent {
                libc::SIGTERM
            } else {
                libc::SIGINT
            };
            let started = Instant::now();
            let status = loop {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(child.id() as i32, signal) };
                let asked = Instant::now();
                // The agent drains after one SIGTERM: it is not asked twice.
                let patience = if self.kind == Kind::Agent {
                    20_000
                } else {
                    500
                };
                while asked.elapsed() < Duration::from_millis(patience) {
                    if child.try_wait()?.is_some() {
                        break;
                    }
                    sleep(Duration::from_millis(5));
                }
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(20) {
                    child.kill()?;
                    bail!("{} did not stop within 20 s: killed", self.kind.name());
                }
            };
            if self.kind == Kind::Agent && !status.success() {
                bail!("sockact-agent exited with {status}");
            }
        }
        Ok(self.output.clone())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// sockact-agent with its stdout sink to a file, timed until READY=1 (every program attached).
fn start_agent(agent: &Path, output: &Path, dir: &Path) -> anyhow::Result<(Child, UnixDatagram)> {
    let notify = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let socket = UnixDatagram::bind(&notify)?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let child = Command::new(agent)
        .arg("--no-metrics")
        .env("NOTIFY_SOCKET", &notify)
        .stdout(File::create(output)?)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let mut buf = [0u8; 64];
    let n = socket
        .recv(&mut buf)
        .context("sockact-agent did not say READY=1 within 30 s")?;
    if &buf[..n] != b"READY=1" {
        bail!(
            "sockact-agent said {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    Ok((child, socket))
}

fn wait_for_line(path: &Path, line: &str, started: Instant) -> anyhow::Result<()> {
    while !std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l == line)) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no {line:?} in {} within 60 s", path.display());
        }
        sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// A process's resident memory now and at its peak, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A process's user + system CPU time so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): utime is the 14th field overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_the_agents_program_names() {
        let p = probes(&[
            "syscalls_sys_enter_bind".into(),
            "sock_sk_data_ready".into(),
        ]);
        assert_eq!(
            p,
            "tracepoint:syscalls:sys_enter_bind,\ntracepoint:sock:sk_data_ready"
        );
        assert!(script(Kind::Floor, &p).contains("/@never[pid]/"));
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let (rss, peak) = rss_kib(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
        assert!(cpu_time(std::process::id()).is_some());
    }
}
