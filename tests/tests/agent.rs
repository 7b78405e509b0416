//! sockact-agent as operators run it: sd_notify readiness, a closed stdout, real rsyslog over
//! TCP and RELP through a pipeline restart, the test bed's journald, Prometheus metrics checked
//! by promtool, SIGHUP, and its own hardened unit.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, sleep},
    time::{Duration, Instant},
};

use serde_json::Value;
use sockact_tests::{
    Trace, agent_bin, free_port, require_root, rsyslog::Rsyslog, testbed::Container,
};

const WAIT: Duration = Duration::from_secs(15);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockact-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Connects (retrying while nothing listens yet) and reads the one-line answer.
fn ask(port: u16) -> String {
    let s = sockact_tests::connect(port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("an answer");
    line.trim().to_owned()
}

/// Clients asking `port` every 10 ms until stopped: a steady stream of accept events.
fn traffic(port: u16) -> (Arc<AtomicBool>, thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = thread::spawn(move || {
        let mut served = 0;
        while !flag.load(Ordering::Relaxed) {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() {
                    served += 1;
                }
            }
            sleep(Duration::from_millis(10));
        }
        served
    });
    (stop, handle)
}

/// The attachments a process holds: BPF links, or perf events where the kernel attaches
/// programs to them directly.
fn links_of(pid: u32) -> usize {
    let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let count = |kind: &str| targets.iter().filter(|t| *t == kind).count();
    match count("anon_inode:bpf_link") {
        0 => count("anon_inode:[perf_event]"),
        n => n,
    }
}

fn spawn_agent(args: &[&str]) -> Child {
    require_root();
    Command::new(agent_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sockact-agent")
}

/// sockact-agent with a configuration file, against the test bed's systemd.
fn agent_on(c: &Container, config: &Path) -> Trace {
    Trace::agent(&[
        "--config",
        config.to_str().unwrap(),
        "--systemd-bus",
        &c.bus_address(),
    ])
}

/// Reads stdout lines until one matches; fails the test when none comes within a minute.
fn read_until(
    out: &mut BufReader<std::process::ChildStdout>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + sockact_tests::scaled(Duration::from_secs(60));
    loop {
        if !out.buffer().contains(&b'\n') {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fd = libc::pollfd {
                fd: out.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut fd, 1, left.as_millis() as i32) };
            assert!(
                ready > 0,
                "no matching line on the agent's stdout within a minute"
            );
        }
        let mut line = String::new();
        let n = out
            .read_line(&mut line)
            .expect("reading the agent's stdout");
        assert!(n > 0, "stdout ended before the line looked for");
        let v: Value = serde_json::from_str(&line).expect("an NDJSON line");
        if pred(&v) {
            return v;
        }
    }
}

/// Everything a child wrote on stderr (once it has ended).
fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    stderr
}

fn wait_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(started.elapsed() < limit, "still running after {limit:?}");
        sleep(Duration::from_millis(5));
    }
}

#[test]
fn ready_is_notified_only_once_every_program_is_attached() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    require_root();
    let mut child = Command::new(agent_bin())
        .args(["--no-metrics", "--duration", "60"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sockact-agent");
    let mut buf = [0u8; 256];
    let n = systemd.recv(&mut buf).expect("a notification within 60 s");
    // At this moment, every program is attached: the kernel holds a link for each.
    let links = links_of(child.id());
    assert_eq!(&buf[..n], b"READY=1");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let attached = read_until(&mut out, |v| v["action"] == "attached");
    assert_eq!(attached["failed"], serde_json::json!([]));
    let programs = attached["attached"].as_array().unwrap().len();
    assert!(programs >= 20, "{attached}");
    assert_eq!(
        links, programs,
        "READY=1 came with {links} of {programs} attached"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = systemd.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let (status, _) = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_closed_stdout_ends_the_agent_within_a_second_with_no_events_flowing() {
    let mut child = spawn_agent(&["--no-metrics"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut out, |v| v["action"] == "attached");
    // Nothing more to write: only the closed pipe can tell it to stop.
    sleep(Duration::from_millis(500));
    drop(out);
    let (status, took) = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let stderr = stderr_of(&mut child);
    assert!(!stderr.contains("panic"), "{stderr}");

    // The pipeline an operator types.
    let started = Instant::now();
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; {} --no-metrics | head -1",
                agent_bin().display()
            ),
        ])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panic"), "{stderr}");
    let first: Value = serde_json::from_slice(&out.stdout).expect("one NDJSON line");
    assert_eq!(
        (first["kind"].as_str(), first["action"].as_str()),
        (Some("agent"), Some("start"))
    );
    assert_eq!(first["seq"], 1);
    assert!(took < Duration::from_secs(5), "the pipeline took {took:?}");
}

#[test]
fn on_a_kernel_that_refuses_bind_the_agent_runs_on_and_says_so_in_its_stream_and_metrics() {
    require_root();
    let port = free_port();
    let mut child = Command::new(agent_bin())
        .args(["--duration", "60", "--metrics-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env(
            "SOCKACT_REFUSE_PROGRAMS",
            "syscalls_sys_enter_bind,syscalls_sys_exit_bind",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sockact-agent");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let attached = read_until(&mut out, |v| v["action"] == "attached");
    assert_eq!(attached["features"]["bind"], Value::Null, "{attached}");
    assert_eq!(attached["features"]["listen"], "syscalls", "{attached}");
    let unavailable = attached["unavailable_rules"].as_array().unwrap();
    assert!(
        unavailable.contains(&Value::from("double_bind")),
        "{attached}"
    );
    let metrics = get(&format!("http://127.0.0.1:{port}/metrics"));
    assert!(
        metrics.contains("sockact_kernel_feature{family=\"bind\",mechanism=\"none\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sockact_kernel_feature{family=\"listen\",mechanism=\"syscalls\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sockact_rule_unavailable{rule=\"double_bind\"} 1"),
        "{metrics}"
    );
    // Still running, still tracing.
    assert!(child.try_wait().unwrap().is_none(), "the agent went on");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (status, _) = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let stderr = stderr_of(&mut child);
    assert!(stderr.contains("running without them"), "{stderr}");
}

fn seqs(events: &[Value]) -> BTreeSet<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

fn lost_to(events: &[Value], cause: &str) -> u64 {
    events
        .iter()
        .filter(|e| e["kind"] == "lost" && e["cause"] == cause)
        .map(|e| e["count"].as_u64().unwrap())
        .sum()
}

fn get(url: &str) -> String {
    let addr = url.strip_prefix("http://").unwrap();
    let (host, path) = addr.split_once('/').unwrap();
    let mut s = TcpStream::connect(host).expect("the metrics endpoint listens");
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// `series value` lines whose series starts with `prefix`.
fn samples<'a>(metrics: &'a str, prefix: &str) -> Vec<&'a str> {
    metrics.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn rsyslog_receives_the_stream_over_tcp_and_relp_and_a_pipeline_restart_loses_nothing_over_relp() {
    let c = Container::boot("demo", 3);
    let dir = temp_dir("rsyslog");
    let mut rsyslog = Rsyslog::start(&dir);
    let metrics_port = free_port();
    let config = format!(
        r#"[[sink]]
kind = "stdout"

[[sink]]
kind = "tcp"
address = "127.0.0.1:{}"
buffer_events = 32

[[sink]]
kind = "relp"
address = "127.0.0.1:{}"

[metrics]
listen = "127.0.0.1:{metrics_port}"
"#,
        rsyslog.tcp, rsyslog.relp
    );
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut agent = agent_on(&c, &config_path);

    // The scenario: broken.service binds its own port when activated; echo serves.
    let _waiting = TcpStream::connect(("127.0.0.1", c.port(3))).unwrap();
    let finding = |v: &Value| v["rule"] == "double_bind" && v["unit"] == "broken.service";
    agent.wait_for(WAIT, finding);
    assert_eq!(ask(c.port(1)), "echo");
    agent.wait_for(WAIT, |v| {
        v["kind"] == "queue" && v["listener"] == format!("127.0.0.1:{}", c.port(1))
    });

    // Prometheus, during the scenario.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let m = get(&url);
        if !samples(&m, "sockact_findings_total{rule=\"double_bind\"").is_empty() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no double_bind in the metrics:\n{m}"
        );
        sleep(Duration::from_millis(200));
    };
    let found = samples(
        &metrics,
        "sockact_findings_total{rule=\"double_bind\",severity=\"error\",unit=\"broken.service\"}",
    );
    assert_eq!(found.len(), 1, "{metrics}");
    let backlog = format!(
        "sockact_accept_queue_backlog{{listener=\"127.0.0.1:{}\",socket_unit=\"echo.socket\"}}",
        c.port(1)
    );
    assert!(!samples(&metrics, &backlog).is_empty(), "{metrics}");
    assert!(
        !samples(&metrics, "sockact_accept_queue_depth{").is_empty(),
        "{metrics}"
    );
    assert!(
        !samples(&metrics, "sockact_events_total{kind=\"accept\"}").is_empty(),
        "{metrics}"
    );
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus)");
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Mid-stream, the pipeline hangs (RELP's window fills with unacknowledged events), dies,
    // and comes back.
    let (stop, clients) = traffic(c.port(1));
    sleep(Duration::from_secs(2));
    rsyslog.pause();
    sleep(Duration::from_millis(1500));
    rsyslog.kill9();
    sleep(Duration::from_secs(3));
    rsyslog.restart();
    sleep(Duration::from_secs(3));
    // Both sinks work again: the TCP sink reported what it dropped.
    agent.wait_for(WAIT, |v| v["kind"] == "lost" && v["cause"] == "sink:tcp");
    stop.store(true, Ordering::Relaxed);
    let served = clients.join().unwrap();
    assert!(served > 50, "only {served} clients served");
    let started = Instant::now();
    let lines = agent.stop_with(libc::SIGTERM);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        started.elapsed()
    );

    // stdout, never blocked by the others: every line, in order, nothing lost anywhere but TCP.
    let written: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let last = *written.last().unwrap();
    assert_eq!(
        written,
        (1..=last).collect::<Vec<_>>(),
        "stdout is complete"
    );
    assert_eq!(lost_to(&lines, "ring_buffer_full"), 0);
    assert_eq!(lost_to(&lines, "sink:relp"), 0);
    assert_eq!(lost_to(&lines, "sink:stdout"), 0);

    // RELP: after the restart nothing is missing, the window in flight at the kill included
    // (a few may have arrived twice).
    let relp = rsyslog.events("relp.ndjson");
    let missing: Vec<u64> = (1..=last).filter(|s| !seqs(&relp).contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} seqs missing over RELP: {missing:?}",
        missing.len()
    );
    assert!(
        relp.iter().any(finding),
        "the finding reached rsyslog over RELP"
    );

    // TCP: what it knew it could not deliver is reported, and is indeed missing; lines the
    // dead rsyslog had received but not written are lost unknowingly, so at least as many.
    let tcp = rsyslog.events("tcp.ndjson");
    let reported = lost_to(&lines, "sink:tcp");
    let missing = (1..=last).filter(|s| !seqs(&tcp).contains(s)).count() as u64;
    assert!(reported > 0, "the outage overflowed a 32-event buffer");
    assert!(
        missing >= reported,
        "{missing} missing, {reported} reported lost"
    );
    assert!(
        tcp.iter().any(finding),
        "the finding reached rsyslog over TCP"
    );
    assert!(
        tcp.iter()
            .any(|v| v["kind"] == "lost" && v["cause"] == "sink:tcp"),
        "the loss report itself went through once TCP worked again"
    );
    eprintln!(
        "rsyslog: {last} events; RELP {} lines for {} seqs; TCP {reported} reported lost, {missing} missing",
        relp.len(),
        seqs(&relp).len()
    );
}

#[test]
fn journald_gets_structured_fields_and_sighup_adds_a_sink_without_losing_events() {
    let c = Container::boot("demo", 3);
    let dir = temp_dir("journald");
    let socket = format!("/proc/{}/root/run/systemd/journal/socket", c.leader());
    let config_path = dir.join("agent.toml");
    let write_config = |extra: &str| {
        let config = format!(
            "[[sink]]\nkind = \"stdout\"\n\n[[sink]]\nkind = \"journald\"\npath = \"{socket}\"\n{extra}\n[metrics]\nenabled = false\n"
        );
        std::fs::write(&config_path, config).unwrap();
    };
    write_config("");
    let mut agent = agent_on(&c, &config_path);
    let _waiting = TcpStream::connect(("127.0.0.1", c.port(3))).unwrap();
    let finding = agent.wait_for(WAIT, |v| v["rule"] == "double_bind");
    assert_eq!(ask(c.port(1)), "echo");

    // SIGHUP with a broken file: said, and the running configuration kept.
    std::fs::write(&config_path, "[[sink]]\nkind = 42\n").unwrap();
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while !agent.stderr().contains("keeping the running configuration") {
        assert!(
            Instant::now() < deadline,
            "a bad reload is not reported: {}",
            agent.stderr()
        );
        sleep(Duration::from_millis(50));
    }
    assert!(
        agent.stderr().contains("line 2: kind:"),
        "{}",
        agent.stderr()
    );

    // SIGHUP: a file sink more, the running ones keep going.
    let file = dir.join("events.ndjson");
    write_config(&format!(
        "\n[[sink]]\nkind = \"file\"\npath = \"{}\"\n",
        file.display()
    ));
    agent.signal(libc::SIGHUP);
    let (stop, clients) = traffic(c.port(1));
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) < 5 {
        assert!(
            Instant::now() < deadline,
            "the file sink added by SIGHUP wrote nothing"
        );
        sleep(Duration::from_millis(100));
    }
    // SIGHUP: echo excluded, while its clients keep coming.
    write_config(&format!(
        "\n[[sink]]\nkind = \"file\"\npath = \"{}\"\n\n[watch]\nexclude_units = [\"echo\"]\n",
        file.display()
    ));
    let reloads = |t: &mut Trace| {
        t.lines()
            .iter()
            .filter(|v| v["kind"] == "agent" && v["action"] == "reload")
            .count()
    };
    let before = reloads(&mut agent);
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while reloads(&mut agent) == before {
        assert!(Instant::now() < deadline, "no reload event");
        sleep(Duration::from_millis(50));
    }
    // Still tracing what is not excluded: a socket activation outside the container.
    let port = free_port();
    let mut activated = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}"), "/bin/true"])
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let activated_pid = activated.id();
    let _ = sockact_tests::connect(port);
    let _ = activated.wait();
    agent.wait_for(WAIT, |v| v["kind"] == "exec" && v["pid"] == activated_pid);
    sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let served = clients.join().unwrap();
    assert!(served > 20, "{served}");
    let lines = agent.stop_with(libc::SIGTERM);
    let written: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let last = *written.last().unwrap();
    assert_eq!(
        written,
        (1..=last).collect::<Vec<_>>(),
        "nothing lost across the reloads"
    );
    let excluded_at = lines
        .iter()
        .rfind(|v| v["kind"] == "agent" && v["action"] == "reload")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let about_echo = |v: &Value| {
        [&v["unit"], &v["socket_unit"]]
            .iter()
            .any(|u| u.as_str().is_some_and(|u| u.starts_with("echo.")))
    };
    assert!(
        lines.iter().any(|v| v["seq"].as_u64() < Some(excluded_at)
            && v["kind"] == "accept"
            && about_echo(v)),
        "echo's accepts before"
    );
    let after: Vec<&Value> = lines
        .iter()
        .filter(|v| v["seq"].as_u64() > Some(excluded_at) && about_echo(v))
        .collect();
    assert!(after.is_empty(), "echo after its exclusion: {after:?}");
    assert!(
        lines.iter().any(|v| v["seq"].as_u64() > Some(excluded_at)
            && v["kind"] == "exec"
            && v["pid"] == activated_pid
            && v["listen_fds"] == 1),
        "tracing goes on for what is not excluded"
    );
    let in_file: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = in_file[0]["seq"].as_u64().unwrap();
    assert_eq!(
        seqs(&in_file),
        (first..=last).collect::<BTreeSet<_>>(),
        "from the reload on, the file has every event"
    );

    // The test bed's journal, read inside the container.
    let out = c.exec(&[
        "journalctl",
        "--no-pager",
        "-o",
        "json",
        "SYSLOG_IDENTIFIER=sockact-agent",
    ]);
    let entries: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rule = entries
        .iter()
        .find(|e| e["SOCKACT_RULE"] == "double_bind")
        .unwrap_or_else(|| panic!("no double_bind in the journal: {} entries", entries.len()));
    assert_eq!(rule["SOCKACT_KIND"], "finding");
    assert_eq!(rule["SOCKACT_UNIT"], "broken.service");
    assert_eq!(rule["SOCKACT_SOCKET_UNIT"], "broken.socket");
    assert_eq!(rule["PRIORITY"], "3");
    assert_eq!(rule["SOCKACT_SEQ"], finding["seq"].to_string());
    let event: Value = serde_json::from_str(rule["SOCKACT_EVENT"].as_str().unwrap()).unwrap();
    assert_eq!(event, finding);
    let accept = entries
        .iter()
        .find(|e| e["SOCKACT_KIND"] == "accept" && e["SOCKACT_UNIT"] == "echo.service")
        .expect("echo's accepts in the journal");
    assert!(
        accept["MESSAGE"].as_str().unwrap().contains("accept"),
        "{accept}"
    );
    let kinds: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| e["SOCKACT_KIND"].as_str())
        .collect();
    assert!(
        kinds.contains("summary") && kinds.contains("agent"),
        "{kinds:?}"
    );
}

/// The unit's capability set, as `CapabilityBoundingSet=` names it.
fn unit_capabilities(unit: &str) -> Vec<String> {
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let bounding = line("CapabilityBoundingSet=");
    assert_eq!(bounding, line("AmbientCapabilities="), "ambient = bounding");
    bounding
}

#[test]
fn the_shipped_unit_passes_systemd_analyze_and_its_capabilities_suffice() {
    let unit_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/sockact-agent.service"
    );
    let unit = std::fs::read_to_string(unit_path).unwrap();
    for setting in [
        "Type=notify",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(setting), "{setting} missing");
    }

    // Installed the way an operator does, into the test bed's root.
    let c = Container::boot("healthy", 2);
    let root = c.root().to_owned();
    let out = Command::new("cargo")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["xtask", "install", "--debug", "--no-reload", "--root"])
        .arg(&root)
        .output()
        .expect("cargo xtask install");
    assert!(
        out.status.success(),
        "cargo xtask install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for installed in [
        "usr/local/bin/sockact-agent",
        "usr/local/bin/sockact-trace",
        "etc/systemd/system/sockact-agent.service",
        "etc/sockact/agent.toml",
    ] {
        assert!(root.join(installed).exists(), "{installed} not installed");
    }
    let verify = c.exec(&[
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/sockact-agent.service",
    ]);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let check = c.exec(&["/usr/local/bin/sockact-agent", "--check-config"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let security = c.exec(&[
        "systemd-analyze",
        "security",
        "--offline=true",
        "--no-pager",
        "/etc/systemd/system/sockact-agent.service",
    ]);
    let report = String::from_utf8_lossy(&security.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no rating: {report}{}",
                String::from_utf8_lossy(&security.stderr)
            )
        });
    let exposure: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{overall}"));
    eprintln!("systemd-analyze security: {overall}");
    assert!(exposure < 5.0, "{overall}\n{report}");

    // Its syscall filter takes from CAP_SYS_PTRACE all but reading /proc: a process under the
    // unit's filter can neither trace nor touch another's memory.
    let filters: Vec<String> = unit
        .lines()
        .filter(|l| l.starts_with("SystemCallFilter=") || l.starts_with("SystemCallErrorNumber="))
        .map(|l| format!("--property={l}"))
        .collect();
    assert!(filters.len() >= 2, "{unit}");
    let probe = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); \
                 r = libc.ptrace(0, 0, 0, 0); print('ptrace', r, ctypes.get_errno()); \
                 r = libc.syscall(310, os.getpid(), 0, 0, 0, 0, 0); \
                 print('process_vm_readv', r, ctypes.get_errno())";
    let run = |props: &[String]| {
        let mut args = vec!["systemd-run", "--wait", "--pipe", "--quiet"];
        args.extend(props.iter().map(String::as_str));
        args.extend(["/usr/bin/python3", "-c", probe]);
        let out = c.exec(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let free = run(&[]);
    assert!(
        free.contains("ptrace 0 0") && free.contains("process_vm_readv 0 0"),
        "without the filter both work: {free}"
    );
    let filtered = run(&filters);
    assert!(
        filtered.contains("ptrace -1 1") && filtered.contains("process_vm_readv -1 1"),
        "the unit's filter denies them (EPERM): {filtered}"
    );

    // Exactly the unit's capabilities, bounding and ambient: every program attaches and
    // systemd's listeners are found; without any one of them, something is missing.
    let caps = unit_capabilities(&unit);
    let (enough, why) = run_with_capabilities(&c, &caps);
    assert!(enough, "{caps:?}: {why}");
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let (enough, why) = run_with_capabilities(&c, &fewer);
        assert!(!enough, "{dropped} is not needed: {why}");
        eprintln!("without {dropped}: {why}");
    }
}

/// Runs the agent with exactly `caps` (bounding, inheritable, ambient) against the test bed;
/// whether it attached every program and found echo.socket's listener, and what it lacked.
fn run_with_capabilities(c: &Container, caps: &[String]) -> (bool, String) {
    let names: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let set = format!("-all,{}", names.join(","));
    require_root();
    let out = Command::new("setpriv")
        .args([
            &format!("--bounding-set={set}"),
            &format!("--inh-caps={set}"),
            &format!("--ambient-caps={set}"),
        ])
        .arg(agent_bin())
        .args(["--no-metrics", "--duration", "2", "--systemd-bus"])
        .arg(c.bus_address())
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return (false, format!("exit {:?}: {stderr}", out.status.code()));
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let Some(attached) = lines.iter().find(|v| v["action"] == "attached") else {
        return (false, format!("not attached: {stderr}"));
    };
    if attached["failed"] != serde_json::json!([]) {
        return (false, format!("failed to attach: {}", attached["failed"]));
    }
    if !lines
        .iter()
        .any(|v| v["kind"] == "unit" && v["unit"] == "echo.socket")
    {
        return (false, format!("systemd's units not read: {stderr}"));
    }
    if !lines
        .iter()
        .any(|v| v["kind"] == "listener" && v["socket_unit"] == "echo.socket")
    {
        return (false, format!("systemd's listeners not found: {stderr}"));
    }
    (true, String::new())
}

/// `n` loopback connections made and accepted by this process: events under `--all`.
fn loopback(n: usize) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let _c = TcpStream::connect(addr).unwrap();
        let _a = listener.accept().unwrap();
    }
}

/// A tmpfs of `size`, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        let path = dir.join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount (package mount)");
        assert!(status.success(), "mounting a {size} tmpfs: {status}");
        SmallDisk(path)
    }

    /// Takes every free byte with a filler file.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_drops_and_counts_once_then_the_file_sink_recovers_by_itself() {
    require_root();
    let dir = temp_dir("disk-full");
    let disk = SmallDisk::mount(&dir, "512k");
    let file = disk.0.join("events.ndjson");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[[sink]]\nkind = \"stdout\"\n\n[[sink]]\nkind = \"file\"\npath = \"{}\"\n\n[metrics]\nenabled = false\n",
            file.display()
        ),
    )
    .unwrap();
    let mut agent = Trace::agent(&["--config", config.to_str().unwrap(), "--all"]);
    loopback(20);
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) < 20 {
        assert!(Instant::now() < deadline, "the file sink wrote nothing");
        sleep(Duration::from_millis(50));
    }

    // The disk fills up: events keep coming, the file sink drops and counts them.
    disk.fill();
    let full = "No space left on device";
    let deadline = Instant::now() + WAIT;
    while !agent.stderr().contains(full) {
        loopback(50);
        assert!(
            Instant::now() < deadline,
            "a full disk is not reported: {}",
            agent.stderr()
        );
        sleep(Duration::from_millis(100));
    }
    loopback(200);
    sleep(Duration::from_millis(300));

    // Room again: the sink recovers by itself and says how many it lost.
    disk.free();
    let deadline = Instant::now() + WAIT;
    while !agent
        .lines()
        .iter()
        .any(|v| v["kind"] == "lost" && v["cause"].as_str().is_some_and(|c| c.starts_with("sink:")))
    {
        loopback(10);
        assert!(Instant::now() < deadline, "the file sink did not recover");
        sleep(Duration::from_millis(100));
    }
    loopback(20);
    sleep(Duration::from_millis(300));
    let stderr = agent.stderr();
    let lines = agent.stop_with(libc::SIGTERM);

    assert_eq!(stderr.matches(full).count(), 1, "reported once: {stderr}");
    // Back by itself: what it lost meanwhile is said once it writes again.
    assert!(stderr.contains("events lost"), "{stderr}");
    let streamed = seqs(&lines);
    let last = *streamed.last().unwrap();
    assert_eq!(streamed, (1..=last).collect(), "stdout lost nothing");
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a broken line {l:?}: {e}")))
        .collect();
    let kept = seqs(&kept);
    assert!(kept.is_subset(&streamed));
    let missing = streamed.len() as u64 - kept.len() as u64;
    let lost: u64 = lines
        .iter()
        .filter(|v| {
            v["kind"] == "lost" && v["cause"].as_str().is_some_and(|c| c.starts_with("sink:"))
        })
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert!(lost > 0);
    assert_eq!(
        missing, lost,
        "what the file lacks is exactly what was counted lost"
    );
}
