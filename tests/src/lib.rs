//! Helpers for the privileged tests: run the real `sockact-trace`, make real syscalls, read its
//! NDJSON stream. A test that cannot run (not root, binary missing) fails with the reason.
use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod rsyslog;
pub mod soak;
pub mod testbed;

/// The sockact-trace binary under test.
pub fn trace_bin() -> PathBuf {
    let path = std::env::var_os("SOCKACT_TRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sockact-trace")
        });
    assert!(
        path.exists(),
        "{} does not exist: run the privileged tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// The sockact-agent binary under test, beside sockact-trace.
pub fn agent_bin() -> PathBuf {
    let path = trace_bin().with_file_name("sockact-agent");
    assert!(
        path.exists(),
        "{} does not exist: run the privileged tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// Fails the test, with the reason, when it cannot load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and needs root: run `cargo xtask test` as root"
    );
}

/// How many times slower than the machine the suite was written on the tests run
/// (`SOCKACT_TEST_SLOWDOWN`, 1 by default): the kernel matrix's emulated CPU is. Waits scale by
/// it, never what the tests assert.
pub fn slowdown() -> u32 {
    std::env::var("SOCKACT_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// A wait, scaled by [`slowdown`].
pub fn scaled(d: Duration) -> Duration {
    d * slowdown()
}

/// Thresholds the test bed sets for every trace (`SOCKACT_TEST_SET`, comma-separated
/// `RULE.KEY=VALUE`): on an emulated CPU a healthy python service takes more than a second to
/// start, which `cold_start.warn_ms` rightly calls slow. A test about a threshold sets its own
/// after these, which wins.
pub fn bed_thresholds() -> Vec<String> {
    std::env::var("SOCKACT_TEST_SET")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .flat_map(|s| ["--set".to_owned(), s.to_owned()])
        .collect()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A running `sockact-trace --format json`, its stdout parsed line by line.
pub struct Trace {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Trace {
    /// Starts the tracer and waits until every program is attached.
    pub fn start(args: &[&str]) -> Trace {
        let mut cmd = Command::new(trace_bin());
        let duration = scaled(Duration::from_secs(60)).as_secs().to_string();
        cmd.args(["--format", "json", "--duration", &duration])
            .args(bed_thresholds())
            .args(args);
        Trace::launch(cmd)
    }

    /// Starts sockact-agent (its stdout sink) and waits until every program is attached.
    pub fn agent(args: &[&str]) -> Trace {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["--duration", "120"]).args(args);
        Trace::launch(cmd)
    }

    /// Starts `cmd`, a sockact program writing NDJSON to stdout.
    pub fn launch(cmd: Command) -> Trace {
        let (trace, attached) = Trace::launch_degraded(cmd);
        assert_eq!(
            attached["failed"],
            serde_json::json!([]),
            "every program loads and attaches"
        );
        trace
    }

    /// Starts `cmd` like [`Trace::launch`], where some programs may fail to attach; returns
    /// its `attached` line too.
    pub fn launch_degraded(mut cmd: Command) -> (Trace, Value) {
        require_root();
        let program = std::path::Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting a sockact program");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("{program}: {line}");
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut trace = Trace {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
        };
        let attached = trace.wait_for(Duration::from_secs(30), |v| {
            v["kind"] == "agent" && v["action"] == "attached"
        });
        (trace, attached)
    }

    fn pump(&mut self, timeout: Duration) -> bool {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                self.seen.push(v);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for a line matching `pred` and returns it; fails the test after `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.pump(Duration::from_millis(50)) {
                let last = self.seen.last().expect("just pushed");
                if pred(last) {
                    return last.clone();
                }
            }
        }
        panic!(
            "no matching line within {timeout:?}; saw {} lines:\n{}",
            self.seen.len(),
            self.dump()
        );
    }

    /// Stops the tracer with SIGINT and returns every line it wrote: `agent` stop, then the
    /// `summary` last.
    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGINT)
    }

    /// Waits for the process to end; kills it and fails the test after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for sockact-trace") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "still running {limit:?} after the signal:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (SIGHUP to the agent).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Every line read so far, and what is waiting now.
    pub fn lines(&mut self) -> &[Value] {
        while self.pump(Duration::from_millis(10)) {}
        &self.seen
    }

    /// Stops it with `signal` (SIGINT, SIGTERM) and returns every line it wrote: `agent`
    /// stop, then the `summary` last.
    pub fn stop_with(mut self, signal: i32) -> Vec<Value> {
        self.signal(signal);
        let status = self.wait_exit(scaled(Duration::from_secs(30)));
        while self.pump(Duration::from_millis(500)) {}
        assert!(status.success(), "sockact-trace exited with {status}");
        let n = self.seen.len();
        let last = self.seen.last().cloned().unwrap_or_default();
        assert_eq!(last["kind"], "summary", "the last line is the summary");
        let stop = &self.seen[n.saturating_sub(2)];
        assert!(
            stop["kind"] == "agent" && stop["action"] == "stop",
            "the agent stop event comes before the summary: {stop}"
        );
        std::mem::take(&mut self.seen)
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of one kind from one process.
pub fn of<'a>(lines: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["kind"] == kind && v["pid"] == pid)
        .collect()
}

/// Runs a Python program given as text, with arguments; returns the child.
pub fn python(code: &str, args: &[&str]) -> Child {
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting python3 (cargo xtask setup installs it)")
}

/// Waits for a child and fails the test when it did not succeed.
pub fn wait_ok(mut child: Child, what: &str) -> String {
    let status = child.wait().expect("waiting for a child");
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut out);
    }
    assert!(status.success(), "{what} failed: {status}; output: {out}");
    out
}

/// Tells a child started with [`python`] to go on: one line on its stdin.
pub fn go(child: &Child) {
    use std::io::Write;
    let mut w: &std::process::ChildStdin = child.stdin.as_ref().expect("piped stdin");
    w.write_all(b"go\n").expect("writing to the child's stdin");
}

/// Connects to a local port, retrying while nothing listens yet (a socket-activation helper
/// that is still starting); fails the test after 10 s.
pub fn connect(port: u16) -> std::net::TcpStream {
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("connecting to 127.0.0.1:{port}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// With SOCKACT_RECORD=DIR, writes a stream to DIR/NAME.ndjson: how the pure-logic fixtures
/// under tests/fixtures are recorded from real runs.
pub fn record(name: &str, lines: &[Value]) {
    if let Some(dir) = std::env::var_os("SOCKACT_RECORD") {
        let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
        let path = PathBuf::from(dir).join(format!("{name}.ndjson"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Runs sockact-trace as nobody with no capabilities at all.
pub fn unprivileged(args: &[&str]) -> std::process::Output {
    require_root();
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(trace_bin())
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

/// A TCP listener's own drop counter, as `ss -tlnm` shows it (`d<N>` in its skmem): every
/// connection it refused at a full accept queue.
pub fn ss_drops(port: u16) -> u64 {
    let out = Command::new("ss")
        .args(["-tlnmH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split([',', '(', ')'])
        .find_map(|f| f.trim().strip_prefix('d').and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no drop counter in `ss -tlnm` for port {port}: {text}"))
}

/// The kernel's count of connections refused at a full accept queue, every listener of this
/// network namespace together (`nstat`'s TcpExtListenOverflows).
pub fn listen_overflows() -> u64 {
    let out = Command::new("nstat")
        .args(["-asz", "TcpExtListenOverflows"])
        .output()
        .expect("nstat (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("TcpExtListenOverflows")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no TcpExtListenOverflows from nstat: {text}"))
}

/// A Python program: a listener on 127.0.0.1:PORT with BACKLOG, and COUNT non-blocking connects
/// to it from the same process, EVERY seconds apart (arguments in that order), the clients
/// held in `clients`; then `then`. A way to fill an accept queue and overflow it.
pub fn flood(then: &str) -> String {
    format!(
        r#"
import socket, sys, time
port, backlog, count, every = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket()
s.bind(("127.0.0.1", port))
s.listen(backlog)
clients = []
for _ in range(count):
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    clients.append(c)
    time.sleep(every)
{then}
"#
    )
}
