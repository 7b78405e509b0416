//! `sockact-trace verify --unit NAME`: proves, on a live unit, what socket activation promises,
//! with the kernel as witness (DESIGN.md, "sockact-trace verify"). The matrix, in order:
//! 1. `listening`: every address of its socket units listens before any connection;
//! 2. `cold_activation`: with the service stopped, a first connection is served;
//! 3. `warm_requests`: connections to a running service are served (accept wait, connect time);
//! 4. `kill_reactivation`: after its main process is killed, a connection is served again;
//! 5. `restart_under_load`: a restart while clients connect refuses and resets nothing and drops
//!    nothing at the accept queue (with the restart gap, the peak depth and the waits);
//! 6. `still_listening`: every address listens at the end.
//!
//! It stops, kills and restarts the service through systemd's D-Bus API, connects as a client,
//! and reads the kernel's events from a trace of the unit it runs beside (the same binary).
pub mod clients;
pub mod stream;

use std::{
    io::{BufRead, IsTerminal, Write},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    clock::Clock,
    correlate::sock_diag,
    detect::figures,
    events::{Check, Data, Event, SCHEMA_VERSION, Verify},
    output::{Format, Output},
    summary::percentiles,
    system::{self, SystemError},
    systemd::{
        client::{Systemd, SystemdError},
        resolve::{ResolveError, resolve},
    },
};
use clients::{Load, Options, Outcome, Probe, Target, probe};
use stream::{Stream, StreamError};

/// How many connections make the warm phase.
const WARM: usize = 30;
/// How long a unit may take to stop, start or restart.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an accept may take to show after a connection (a cold start included).
const SERVED_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct VerifyConfig {
    pub unit: String,
    pub systemd_bus: Option<String>,
    pub format: Format,
    /// Do not ask before stopping anything.
    pub yes: bool,
    /// `--http PATH`: an HTTP GET on every connection, its status checked.
    pub http: Option<String>,
    /// Clients during the restart.
    pub clients: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    System(#[from] SystemError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("not verified: stopping {0} was declined")]
    Declined(String),
    #[error("writing the verdict: {0}")]
    Write(#[from] std::io::Error),
}

impl VerifyError {
    pub fn exit_code(&self) -> i32 {
        match self {
            VerifyError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// The unit under verification: its service, and the addresses of its socket units.
struct Subject {
    service: String,
    sockets: Vec<String>,
    /// (socket unit, address as systemd prints it, where a client connects)
    listeners: Vec<(String, String, Option<Target>)>,
}

impl Subject {
    fn targets(&self) -> Vec<Target> {
        self.listeners
            .iter()
            .filter_map(|(_, _, t)| t.clone())
            .collect()
    }
}

/// `/proc/PID/root` of a container whose systemd is reached through `/proc/PID/root/...`: where
/// its unix sockets are seen from here.
fn container_root(bus: Option<&str>) -> Option<String> {
    let path = bus?.strip_prefix("unix:path=")?;
    let rest = path.strip_prefix("/proc/")?;
    let (pid, tail) = rest.split_once('/')?;
    tail.starts_with("root/")
        .then(|| format!("/proc/{pid}/root"))
}

/// A check; figures that could not be measured are left out, not written as null.
fn check(name: &str, ok: bool, figs: Value, message: String) -> Check {
    let mut figures = figures(figs);
    figures.retain(|_, v| !v.is_null());
    Check {
        name: name.into(),
        ok,
        figures,
        message,
    }
}

/// Milliseconds, one decimal.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Asks on a terminal before anything is stopped.
fn confirm(unit: &str) -> bool {
    eprint!(
        "verify stops, kills and restarts {unit} and connects to it as a client; continue? [y/N] "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// Runs the matrix; returns whether every check passed.
pub async fn run(config: VerifyConfig) -> Result<bool, VerifyError> {
    system::check_privileges()?;
    let bus = config.systemd_bus.clone();
    let client = Systemd::connect(bus.as_deref()).await?;
    let catalog = client.catalog().await?;
    let resolved = match resolve(&config.unit, &catalog, |_| false) {
        Ok(r) => r,
        Err(e @ ResolveError::Unknown { .. }) | Err(e @ ResolveError::NotActivated { .. }) => {
            return Err(VerifyError::Usage(format!("--unit {e}")));
        }
    };
    let root = container_root(bus.as_deref());
    let listeners = resolved
        .sockets
        .iter()
        .filter_map(|s| catalog.sockets.get(s))
        .flat_map(|s| {
            s.listen
                .iter()
                .map(|(_, a)| (s.name.clone(), a.clone(), Target::of(a, root.as_deref())))
        })
        .collect();
    let subject = Subject {
        service: resolved.service.clone(),
        sockets: resolved.sockets.clone(),
        listeners,
    };
    if std::io::stdin().is_terminal() && !config.yes && !confirm(&subject.service) {
        return Err(VerifyError::Declined(subject.service));
    }
    let opts = Options {
        connect_timeout: Duration::from_secs(10),
        hold: Duration::from_millis(300),
        http: config.http.clone(),
    };
    let unit = config.unit.clone();
    let stream = tokio::task::spawn_blocking(move || Stream::start(&unit, bus.as_deref()))
        .await
        .map_err(|e| VerifyError::Usage(format!("the trace task failed: {e}")))??;
    let mut checks = vec![listening(&stream, &subject, &client).await?];
    checks.push(cold_activation(&stream, &subject, &client, &opts).await?);
    let (warm, warm_p95) = warm_requests(&stream, &subject, &opts).await;
    checks.push(warm);
    checks.push(kill_reactivation(&stream, &subject, &client, &opts).await?);
    checks.push(
        restart_under_load(&stream, &subject, &client, &opts, config.clients, warm_p95).await?,
    );
    checks.push(still_listening(&subject, &client).await?);
    drop(tokio::task::spawn_blocking(move || stream.stop()).await);
    let ok = checks.iter().all(|c| c.ok);
    let verdict = Verify {
        unit: subject.service,
        checks,
        ok,
    };
    let mut out = Output::stdout(config.format);
    out.emit(Event {
        v: SCHEMA_VERSION,
        seq: 0,
        ts: Clock::now_rfc3339(),
        host: system::hostname(),
        data: Data::Verify(verdict),
        process: None,
    })?;
    out.flush()?;
    Ok(ok)
}

/// A probe, off the async runtime.
async fn probe_async(target: Target, opts: &Options) -> Probe {
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || probe(&target, &opts))
        .await
        .unwrap_or_else(|e| Probe {
            local: None,
            started: Instant::now(),
            connect: None,
            outcome: Outcome::Failed(e.to_string()),
        })
}

/// Waits for the accept of a probe's connection; the accept event when it was served.
async fn served(stream: &Stream, mark: usize, p: &Probe, timeout: Duration) -> Option<Value> {
    let local = p.local.clone()?;
    if !matches!(p.outcome, Outcome::Connected | Outcome::Http(_)) {
        return None;
    }
    // The stream reads on its own threads: poll it without blocking the runtime.
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(a) = stream.accept_of(mark, &local, Duration::ZERO) {
            return Some(a);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn listening(stream: &Stream, s: &Subject, client: &Systemd) -> Result<Check, VerifyError> {
    let mut missing = Vec::new();
    for socket in &s.sockets {
        let (active, _) = client.state(socket).await?;
        if active != "active" {
            missing.push(format!("{socket} is {active}"));
        }
    }
    for (socket, addr, _) in &s.listeners {
        let seen = stream
            .first(|v| v["kind"] == "listener" && v["addr"] == addr.as_str())
            .is_some();
        if !seen {
            missing.push(format!("nothing listens on {addr} ({socket})"));
        }
    }
    let ok = missing.is_empty() && !s.listeners.is_empty();
    Ok(check(
        "listening",
        ok,
        json!({ "listeners": s.listeners.len() }),
        if ok {
            format!(
                "{} listen{} before any connection.",
                s.listeners
                    .iter()
                    .map(|(_, a, _)| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.listeners.len() == 1 { "s" } else { "" }
            )
        } else {
            missing.join("; ")
        },
    ))
}

async fn cold_activation(
    stream: &Stream,
    s: &Subject,
    client: &Systemd,
    opts: &Options,
) -> Result<Check, VerifyError> {
    client.job("StopUnit", &s.service).await?;
    let (stopped, state) = client
        .wait_state(&s.service, &["inactive", "failed"], JOB_TIMEOUT)
        .await?;
    let Some(target) = s.targets().into_iter().next() else {
        return Ok(check(
            "cold_activation",
            false,
            json!({}),
            "no address a client can reach".into(),
        ));
    };
    let mark = stream.mark();
    let p = probe_async(target, opts).await;
    let accept = served(stream, mark, &p, SERVED_TIMEOUT).await;
    let exec = stream.wait(mark, Duration::ZERO, |v| {
        v["kind"] == "exec" && v["unit"] == s.service.as_str()
    });
    let cold = stream
        .wait(mark, Duration::from_secs(2), |v| {
            v["rule"] == "cold_start" && v["unit"] == s.service.as_str()
        })
        .and_then(|f| f["duration_ms"].as_f64());
    let ok = stopped && accept.is_some() && http_ok(&p);
    let message = match (&accept, stopped) {
        (_, false) => format!("{} did not stop (still {state})", s.service),
        (Some(_), true) => format!(
            "stopped, then the first connection was served{}",
            cold.map_or(String::new(), |c| format!(" after {c:.0} ms"))
        ),
        (None, true) => format!(
            "stopped, then the first connection was not served ({:?})",
            p.outcome
        ),
    };
    Ok(check(
        "cold_activation",
        ok,
        json!({
            "cold_start_ms": cold,
            "activated": exec.is_some(),
            "connect_ms": p.connect.map(ms),
        }),
        message,
    ))
}

fn http_ok(p: &Probe) -> bool {
    match p.outcome {
        Outcome::Http(code) => code < 400,
        _ => true,
    }
}

/// Returns the check and the accept wait p95 (ms) of the warm phase.
async fn warm_requests(stream: &Stream, s: &Subject, opts: &Options) -> (Check, Option<f64>) {
    let targets = s.targets();
    let mut waits = Vec::new();
    let mut connects = Vec::new();
    let mut unserved = 0;
    for i in 0..WARM {
        let Some(target) = targets.get(i % targets.len().max(1)).cloned() else {
            break;
        };
        let mark = stream.mark();
        let p = probe_async(target, opts).await;
        connects.extend(p.connect.map(|d| d.as_micros() as u64));
        match served(stream, mark, &p, Duration::from_secs(5)).await {
            Some(a) if http_ok(&p) => waits.extend(a["wait_us"].as_u64()),
            _ => unserved += 1,
        }
    }
    let wait = percentiles(&waits);
    let connect = percentiles(&connects);
    let ok = unserved == 0 && !targets.is_empty();
    (
        check(
            "warm_requests",
            ok,
            json!({
                "requests": WARM,
                "unserved": unserved,
                "accept_wait_p50_ms": wait.as_ref().map(|p| p.p50),
                "accept_wait_p95_ms": wait.as_ref().map(|p| p.p95),
                "connect_p50_ms": connect.as_ref().map(|p| p.p50),
                "connect_p95_ms": connect.as_ref().map(|p| p.p95),
            }),
            if ok {
                format!("{WARM} connections served")
            } else {
                format!("{unserved} of {WARM} connections not served")
            },
        ),
        wait.map(|p| p.p95),
    )
}

async fn kill_reactivation(
    stream: &Stream,
    s: &Subject,
    client: &Systemd,
    opts: &Options,
) -> Result<Check, VerifyError> {
    let mark = stream.mark();
    let killed = client.kill_main(&s.service, libc::SIGKILL).await.is_ok();
    let exit = stream.wait(mark, Duration::from_secs(10), |v| {
        v["kind"] == "exit" && v["unit"] == s.service.as_str() && v["signal"] == "SIGKILL"
    });
    // systemd notices the death and restarts it (Restart=) or leaves it to the socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Some(target) = s.targets().into_iter().next() else {
        return Ok(check(
            "kill_reactivation",
            false,
            json!({}),
            "no address a client can reach".into(),
        ));
    };
    let after = stream.mark();
    let p = probe_async(target, opts).await;
    let accept = served(stream, after, &p, SERVED_TIMEOUT).await;
    let old = exit.as_ref().and_then(|e| e["pid"].as_u64());
    let new = accept.as_ref().and_then(|a| a["pid"].as_u64());
    let ok = killed && accept.is_some() && new != old && http_ok(&p);
    Ok(check(
        "kill_reactivation",
        ok,
        json!({ "killed_pid": old, "serving_pid": new }),
        match (killed, &accept) {
            (false, _) => format!("{} had no main process to kill", s.service),
            (true, Some(_)) => {
                "killed with SIGKILL, then a connection was served by a new process".into()
            }
            (true, None) => format!(
                "killed with SIGKILL, then a connection was not served ({:?})",
                p.outcome
            ),
        },
    ))
}

async fn restart_under_load(
    stream: &Stream,
    s: &Subject,
    client: &Systemd,
    opts: &Options,
    clients: usize,
    warm_p95: Option<f64>,
) -> Result<Check, VerifyError> {
    let targets = s.targets();
    let load = Load::start(&targets, clients, opts);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = stream.mark();
    let restart_at = Instant::now();
    client.job("RestartUnit", &s.service).await?;
    let (restarted, state) = client
        .wait_state(&s.service, &["active"], JOB_TIMEOUT)
        .await?;
    // Load until a connection made after the restart is served, then a second more.
    if let Some(target) = targets.first().cloned() {
        let after = stream.mark();
        let p = probe_async(target, opts).await;
        served(stream, after, &p, SERVED_TIMEOUT).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probes = tokio::task::spawn_blocking(move || load.stop())
        .await
        .unwrap_or_default();
    // The findings of the restart are decided a moment after its first accept.
    let gap = stream.wait(mark, Duration::from_secs(3), |v| {
        v["rule"] == "restart_gap" && v["unit"] == s.service.as_str()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during: Vec<&Probe> = probes.iter().filter(|p| p.started >= restart_at).collect();
    let refused = during
        .iter()
        .filter(|p| p.outcome == Outcome::Refused)
        .count();
    let reset = during
        .iter()
        .filter(|p| p.outcome == Outcome::Reset)
        .count();
    let timed_out = during
        .iter()
        .filter(|p| p.outcome == Outcome::TimedOut)
        .count();
    let bad_http = during.iter().filter(|p| !http_ok(p)).count();
    let ours = |a: &Value| {
        a["addr"]
            .as_str()
            .is_some_and(|peer| during.iter().any(|p| p.local.as_deref() == Some(peer)))
    };
    let lines = stream.lines();
    let after: Vec<&Value> = lines.iter().skip(mark).collect();
    let waits: Vec<u64> = after
        .iter()
        .filter(|v| v["kind"] == "accept" && ours(v))
        .filter_map(|v| v["wait_us"].as_u64())
        .collect();
    let addrs: Vec<&str> = s.listeners.iter().map(|(_, a, _)| a.as_str()).collect();
    let mine = |v: &&&Value| v["listener"].as_str().is_some_and(|l| addrs.contains(&l));
    let drops: u64 = after
        .iter()
        .filter(|v| v["kind"] == "drop")
        .filter(mine)
        .filter_map(|v| v["count"].as_u64())
        .sum();
    let peak = after
        .iter()
        .filter(|v| v["kind"] == "queue")
        .filter(mine)
        .filter_map(|v| v["peak"].as_u64().max(v["depth"].as_u64()))
        .max()
        .unwrap_or(0);
    let during_p95 = percentiles(&waits).map(|p| p.p95);
    let gap_ms = gap.as_ref().and_then(|g| g["gap_ms"].as_u64());
    let ok = restarted && refused == 0 && reset == 0 && drops == 0 && bad_http == 0;
    let mut problems = Vec::new();
    if !restarted {
        problems.push(format!("{} did not come back (still {state})", s.service));
    }
    if refused > 0 {
        problems.push(format!("{refused} connection(s) refused"));
    }
    if reset > 0 {
        problems.push(format!("{reset} reset"));
    }
    if drops > 0 {
        problems.push(format!(
            "{drops} dropped at the full accept queue (peak {peak})"
        ));
    }
    if bad_http > 0 {
        problems.push(format!("{bad_http} HTTP error(s)"));
    }
    Ok(check(
        "restart_under_load",
        ok,
        json!({
            "clients": clients,
            "connections": during.len(),
            "refused": refused,
            "reset": reset,
            "timed_out": timed_out,
            "accept_wait_p95_before_ms": warm_p95,
            "accept_wait_p95_during_ms": during_p95,
            "peak_depth": peak,
            "drops": drops,
            "restart_gap_ms": gap_ms,
        }),
        if ok {
            format!(
                "restarted under {clients} clients: nothing refused, reset or dropped{}",
                gap_ms.map_or(String::new(), |g| format!(", {g} ms without an accept"))
            )
        } else {
            problems.join("; ")
        },
    ))
}

async fn still_listening(s: &Subject, client: &Systemd) -> Result<Check, VerifyError> {
    let mut missing = Vec::new();
    for socket in &s.sockets {
        let (active, _) = client.state(socket).await?;
        if active != "active" {
            missing.push(format!("{socket} is {active}"));
        }
    }
    let now: Vec<String> = sock_diag::listeners()
        .map(|l| l.into_iter().map(|d| d.addr).collect())
        .unwrap_or_default();
    let mut listening = 0;
    for (socket, addr, _) in &s.listeners {
        if now.iter().any(|a| a == addr) {
            listening += 1;
        } else {
            missing.push(format!("nothing listens on {addr} ({socket})"));
        }
    }
    let ok = missing.is_empty();
    Ok(check(
        "still_listening",
        ok,
        json!({ "listening": listening, "listeners": s.listeners.len() }),
        if ok {
            "every address still listens".into()
        } else {
            format!(
                "{}: clients are refused until the socket is started again",
                missing.join("; ")
            )
        },
    ))
}
