//! `cargo xtask bench`: sockact measured side by side with its peers in one run (DESIGN.md and
//! TOOLCHAIN.md, "Measuring overhead here"): the in-kernel cost per request against the floor,
//! throughput on unrelated and on watched load in interleaved rounds, the agent's memory and
//! start-up, and the userspace pipeline (criterion). Prints a table, writes
//! `target/bench/latest.json`; a target not met is shown as such, never hidden.
mod kernel;
mod load;
mod report;
mod tracer;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    setup,
    util::{build_release, is_root, root, run_cmd},
};
use report::{Report, Target};
use tracer::{Kind, Tracer};

pub struct Options {
    /// Interleaved rounds of the throughput comparisons.
    pub rounds: usize,
    /// Seconds of load per run.
    pub seconds: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs: run `cargo xtask bench` as root");
    }
    setup::run()?;
    setup::bench_packages()?;
    let root = root();
    build_release()?;
    let agent = root.join("target/release/sockact-agent");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut report = Report::default();

    let probes = kernel_cost(&agent, &dir, opts, &mut report)?;
    unrelated(&agent, &probes, &dir, opts, &mut report)?;
    watched(&agent, &dir, opts, &mut report)?;
    pipeline(&root, &mut report)?;

    report.print();
    let path = dir.join("latest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)?;
    println!("bench: written to {}", path.display());
    Ok(())
}

/// The agent's program names, from its `attached` line (its stdout sink writes it a few
/// milliseconds after READY=1).
fn attached(output: &Path) -> anyhow::Result<Vec<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(output)?;
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["action"] == "attached");
        match found {
            Some(line) => break line,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            None => bail!("the agent wrote no attached line within 10 s"),
        }
    };
    Ok(line["attached"]
        .as_array()
        .context("attached")?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect())
}

/// 1. In-kernel cost under unrelated load: every sockact program's runs and run time from the
///    kernel's own accounting, next to the floor on the same tracepoints, in the same run.
///    Also the start-up and memory of both. Returns bpftrace's probe list.
fn kernel_cost(
    agent: &Path,
    dir: &Path,
    opts: &Options,
    report: &mut Report,
) -> anyhow::Result<String> {
    println!("bench: in-kernel cost, sockact and the floor under nginx + wrk");
    let nginx = load::Nginx::plain(dir)?;
    let before = kernel::programs()?;
    let a = Tracer::start(Kind::Agent, agent, "", dir)?;
    let agent_ids = kernel::new_ids(&before)?;
    let probes = tracer::probes(&attached(&a.output)?);
    let loaded = kernel::programs()?;
    let f = Tracer::start(Kind::Floor, agent, &probes, dir)?;
    let floor_ids = kernel::new_ids(&loaded)?;
    let (bt_rss, _) = f.pid().and_then(tracer::rss_kib).unwrap_or_default();

    let stats = kernel::StatsOn::new()?;
    let start = kernel::programs()?;
    let w = load::wrk(nginx.port, opts.seconds * 2)?;
    let end = kernel::programs()?;
    drop(stats);
    let (agent_rss, agent_peak) = a.pid().and_then(tracer::rss_kib).unwrap_or_default();
    report.note("agent_ready_ms", a.ready_after.as_secs_f64() * 1000.0);
    report.note("bpftrace_ready_ms", f.ready_after.as_secs_f64() * 1000.0);
    let (agent_ready, bt_ready) = (a.ready_after, f.ready_after);
    f.stop()?;
    a.stop()?;
    drop(nginx);

    let ours = kernel::delta(&start, &end, &agent_ids);
    let floor = kernel::delta(&start, &end, &floor_ids);
    let requests = w.requests.max(1) as f64;
    let per_request =
        |progs: &[kernel::Prog]| progs.iter().map(|p| p.ns).sum::<u64>() as f64 / requests;
    for p in &ours {
        report.program(&p.name, p, kernel::counterpart(p, &floor), requests);
    }
    let (ours_ns, floor_ns) = (per_request(&ours), per_request(&floor));
    let s = "kernel cost (unrelated load)";
    report.row(s, "requests", requests, "", None);
    report.row(s, "sockact ns per request", ours_ns, "ns", None);
    report.row(s, "floor ns per request", floor_ns, "ns", None);
    report.row(
        s,
        "sockact / floor",
        ours_ns / floor_ns,
        "x",
        Some(Target::AtMost(1.2)),
    );

    let s = "start-up and memory";
    report.row(
        s,
        "sockact-agent start to ready",
        agent_ready.as_secs_f64() * 1000.0,
        "ms",
        Some(Target::AtMost(100.0)),
    );
    report.row(
        s,
        "bpftrace start to ready (same probes)",
        bt_ready.as_secs_f64() * 1000.0,
        "ms",
        None,
    );
    report.row(
        s,
        "sockact-agent peak RSS",
        agent_peak as f64 / 1024.0,
        "MiB",
        None,
    );
    report.row(
        s,
        "sockact-agent RSS under unrelated load",
        agent_rss as f64 / 1024.0,
        "MiB",
        None,
    );
    report.row(
        s,
        "bpftrace RSS (same probes)",
        bt_rss as f64 / 1024.0,
        "MiB",
        None,
    );
    Ok(probes)
}

/// 2. Throughput on load sockact does not watch: no tracer, the agent, the floor, bpftrace
///    counting and printing, in interleaved rounds; medians, ratios and spread.
fn unrelated(
    agent: &Path,
    probes: &str,
    dir: &Path,
    opts: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    // The floor runs too: what any tracer on these tracepoints costs this load at the least.
    let kinds = [
        Kind::None,
        Kind::Agent,
        Kind::Floor,
        Kind::Count,
        Kind::Print,
    ];
    println!(
        "bench: unrelated load, {} interleaved rounds of {} x {} s",
        opts.rounds,
        kinds.len(),
        opts.seconds
    );
    let nginx = load::Nginx::plain(dir)?;
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for round in 0..opts.rounds {
        for (i, &kind) in kinds.iter().enumerate() {
            let t = Tracer::start(kind, agent, probes, dir)?;
            let w = load::wrk(nginx.port, opts.seconds)?;
            t.stop()?;
            rps[i].push(w.per_second);
        }
        println!("bench: round {} of {}", round + 1, opts.rounds);
    }
    let _ = std::fs::remove_file(dir.join("bpftrace-print.out"));
    let base = median(&rps[0]);
    let s = "unrelated load (nginx, wrk -c50, Connection: close)";
    for (i, kind) in kinds.iter().enumerate() {
        let m = median(&rps[i]);
        report.row(
            s,
            &format!("{} req/s (median)", kind.name()),
            m,
            "req/s",
            None,
        );
        if i > 0 {
            let target = (*kind == Kind::Agent).then_some(Target::AtLeast(0.99));
            report.row(
                s,
                &format!("{} / no tracer", kind.name()),
                m / base,
                "x",
                target,
            );
        }
        let (lo, hi) = rps[i]
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        report.row(
            s,
            &format!("{} spread (max/min)", kind.name()),
            hi / lo,
            "x",
            None,
        );
    }
    report.rounds("unrelated", &kinds.map(Kind::name), &rps);
    Ok(())
}

/// 3. Watched load: nginx taking its socket from socket activation, every accept watched.
fn watched(agent: &Path, dir: &Path, opts: &Options, report: &mut Report) -> anyhow::Result<()> {
    let rounds = opts.rounds.div_ceil(2).max(1);
    println!("bench: watched load, {rounds} interleaved rounds");
    let kinds = [Kind::None, Kind::Agent];
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for _ in 0..rounds {
        for (i, &kind) in kinds.iter().enumerate() {
            // The tracer first: it must see nginx's exec with LISTEN_FDS.
            let t = Tracer::start(kind, agent, "", dir)?;
            let nginx = load::Nginx::activated(dir)?;
            let w = load::wrk(nginx.port, opts.seconds)?;
            drop(nginx);
            t.stop()?;
            rps[i].push(w.per_second);
        }
    }
    let ratio = median(&rps[1]) / median(&rps[0]);

    // One more run with the kernel's accounting on, for the per-event figures.
    let before = kernel::programs()?;
    let t = Tracer::start(Kind::Agent, agent, "", dir)?;
    let ids = kernel::new_ids(&before)?;
    let pid = t.pid().context("the agent runs")?;
    let nginx = load::Nginx::activated(dir)?;
    let stats = kernel::StatsOn::new()?;
    let start = kernel::programs()?;
    let cpu_start = tracer::cpu_time(pid).unwrap_or_default();
    let w = load::wrk(nginx.port, opts.seconds)?;
    let cpu = tracer::cpu_time(pid)
        .unwrap_or_default()
        .saturating_sub(cpu_start);
    let end = kernel::programs()?;
    drop(stats);
    // Settled after the load: what the agent keeps.
    std::thread::sleep(Duration::from_secs(1));
    let (steady, peak) = tracer::rss_kib(pid).unwrap_or_default();
    drop(nginx);
    let output = t.stop()?;
    let stream = Stream::read(&output)?;
    let kernel_ns: u64 = kernel::delta(&start, &end, &ids).iter().map(|p| p.ns).sum();

    let s = "watched load (socket-activated nginx, every accept watched)";
    report.row(
        s,
        "no tracer req/s (median)",
        median(&rps[0]),
        "req/s",
        None,
    );
    report.row(
        s,
        "sockact-agent req/s (median)",
        median(&rps[1]),
        "req/s",
        None,
    );
    report.row(
        s,
        "sockact-agent / no tracer",
        ratio,
        "x",
        Some(Target::AtLeast(0.95)),
    );
    report.row(s, "requests (measured run)", w.requests as f64, "", None);
    report.row(s, "events", stream.events as f64, "", None);
    report.row(
        s,
        "events per second",
        stream.events as f64 / opts.seconds as f64,
        "events/s",
        None,
    );
    let per_event = stream.events.max(1) as f64;
    report.row(
        s,
        "kernel ns per event",
        kernel_ns as f64 / per_event,
        "ns",
        None,
    );
    report.row(
        s,
        "agent CPU per event",
        cpu.as_nanos() as f64 / per_event / 1000.0,
        "us",
        None,
    );
    report.row(
        s,
        "lost events",
        stream.lost as f64,
        "",
        Some(Target::AtMost(0.0)),
    );
    let s = "start-up and memory";
    report.row(
        s,
        "sockact-agent peak RSS (watched load)",
        peak as f64 / 1024.0,
        "MiB",
        None,
    );
    report.row(
        s,
        "sockact-agent steady RSS (watched load)",
        steady as f64 / 1024.0,
        "MiB",
        Some(Target::AtMost(32.0)),
    );
    report.rounds("watched", &kinds.map(Kind::name), &rps);
    Ok(())
}

/// What an agent's stream held.
struct Stream {
    events: u64,
    lost: u64,
}

impl Stream {
    fn read(path: &PathBuf) -> anyhow::Result<Stream> {
        let text = std::fs::read_to_string(path)?;
        let mut s = Stream { events: 0, lost: 0 };
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            match v["kind"].as_str() {
                Some("lost") => s.lost += v["count"].as_u64().unwrap_or(0),
                Some("agent" | "summary") => {}
                _ => s.events += 1,
            }
        }
        Ok(s)
    }
}

/// 4. The userspace pipeline: criterion on recorded kernel records, built first, then run
///    pinned to one core.
fn pipeline(root: &Path, report: &mut Report) -> anyhow::Result<()> {
    println!("bench: userspace pipeline (criterion, one core)");
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "bench",
            "-p",
            "sockact-agent",
            "--bench",
            "pipeline",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cargo bench --no-run")?;
    if !out.status.success() {
        bail!("building the pipeline benchmark failed");
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| m["target"]["name"] == "pipeline" && m["executable"].is_string())
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo named no pipeline benchmark executable")?;
    run_cmd(
        Command::new("taskset")
            .current_dir(root)
            .env("CARGO_TARGET_DIR", root.join("target"))
            .args(["-c", "0"])
            .arg(exe)
            .arg("--bench"),
    )?;
    let s = "userspace pipeline (one core, recorded kernel events)";
    let criterion = root.join("target/criterion/pipeline");
    let stream: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(criterion.join("stream.json"))?)?;
    let lines_per_record = stream["events"].as_f64().context("stream.json events")?
        / stream["records"].as_f64().context("stream.json records")?;
    for (name, label, target) in [
        (
            "decode_correlate_detect_serialize",
            "decode, correlate, detect, serialize: kernel events/s",
            Some(Target::AtLeast(1_000_000.0)),
        ),
        ("decode", "decode only: kernel events/s", None),
    ] {
        let path = criterion.join(name).join("new");
        let estimates: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("estimates.json"))?)?;
        let benchmark: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join("benchmark.json"))?)?;
        let ns = estimates["mean"]["point_estimate"]
            .as_f64()
            .context("criterion's mean")?;
        let elements = benchmark["throughput"]["Elements"]
            .as_f64()
            .context("criterion's throughput")?;
        report.row(s, label, elements / (ns / 1e9), "per s", target);
        if name == "decode_correlate_detect_serialize" {
            report.row(
                s,
                "NDJSON lines written/s (queue records are observations)",
                elements * lines_per_record / (ns / 1e9),
                "per s",
                None,
            );
        }
    }
    Ok(())
}
