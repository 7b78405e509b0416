//! The kernel's view during `verify`: a `sockact-trace --unit NAME --format json` of its own
//! (the same binary), read line by line. Every figure of the verdict comes from it: which
//! connection was accepted and how long it waited, queue depths, drops, findings.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("starting the trace ({0}): {1}")]
    Spawn(String, #[source] std::io::Error),
    #[error("the trace stopped before its programs were attached: {0}")]
    NotAttached(String),
}

/// The trace, running.
pub struct Stream {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Stream {
    /// Starts tracing `unit` (through `bus` when given) and waits until every program is
    /// attached.
    pub fn start(unit: &str, bus: Option<&str>) -> Result<Stream, StreamError> {
        let exe = std::env::current_exe()
            .map_err(|e| StreamError::Spawn("finding this program".into(), e))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["--unit", unit, "--format", "json"]);
        if let Some(bus) = bus {
            cmd.args(["--systemd-bus", bus]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| StreamError::Spawn(exe.display().to_string(), e))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        lines.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = stderr.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().unwrap_or_else(|e| e.into_inner());
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let mut stream = Stream {
            child,
            lines,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if stream
                .first(|v| v["kind"] == "agent" && v["action"] == "attached")
                .is_some()
            {
                return Ok(stream);
            }
            let exited = stream.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                let why = stream.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                let _ = stream.child.kill();
                return Err(StreamError::NotAttached(
                    why.lines().next().unwrap_or("no word from it").to_owned(),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many lines so far: a mark to look after.
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The first line matching `pred`.
    pub fn first(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|v| pred(v))
            .cloned()
    }

    /// Waits up to `timeout` for a line after `mark` matching `pred`.
    pub fn wait(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(v) = lines.iter().skip(mark).find(|v| pred(v)) {
                    return Some(v.clone());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The accept that took the connection from `peer` (the client's own address).
    pub fn accept_of(&self, mark: usize, peer: &str, timeout: Duration) -> Option<Value> {
        self.wait(mark, timeout, |v| {
            v["kind"] == "accept" && v["addr"] == peer && v["ret"].as_i64() >= Some(0)
        })
    }

    /// Stops the trace (SIGINT: it drains and decides what is pending) and returns every line.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader has the last lines once the pipe closed.
        thread::sleep(Duration::from_millis(100));
        self.lines()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
