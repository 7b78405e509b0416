//! Kernel tests: the real programs, loaded by the real sockact-trace, seeing real syscalls.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use serde_json::Value;
use sockact_tests::{
    Trace, connect, flood, free_port, go, of, python, require_root, ss_drops, trace_bin,
    unprivileged, wait_ok,
};

const WAIT: Duration = Duration::from_secs(10);

/// Binds, listens with backlog 7, connects to itself, accepts, then execs /bin/true.
const SELF_CONNECT: &str = r#"
import os, socket, sys
port = int(sys.argv[1])
s = socket.socket()
s.bind(("127.0.0.1", port))
s.listen(7)
c = socket.create_connection(("127.0.0.1", port))
a, _ = s.accept()
os.execv("/bin/true", ["true", "done"])
"#;

#[test]
fn all_mode_sees_bind_listen_connect_accept_and_exec() {
    let port = free_port();
    let mut trace = Trace::start(&["--all"]);
    let child = python(SELF_CONNECT, &[&port.to_string()]);
    let pid = child.id();
    wait_ok(child, "the self-connecting script");
    trace.wait_for(WAIT, |v| v["kind"] == "exec" && v["pid"] == pid);
    let lines = trace.stop();

    let addr = format!("127.0.0.1:{port}");
    let bind = of(&lines, "bind", pid);
    let bind = bind
        .iter()
        .find(|v| v["addr"] == addr.as_str())
        .unwrap_or_else(|| panic!("no bind of {addr} by {pid}"));
    assert!(
        bind["comm"].as_str().unwrap().starts_with("python3"),
        "{bind}"
    );
    assert_eq!(bind["family"], "inet");
    assert_eq!(bind["port"], port);
    assert_eq!(bind["ret"], 0);
    assert!(bind.get("errno").is_none());
    assert!(bind["pid"].is_u64(), "pid is a number");

    let listen = of(&lines, "listen", pid);
    assert_eq!(listen.len(), 1, "{listen:?}");
    assert_eq!(listen[0]["backlog"], 7);
    assert_eq!(listen[0]["addr"], addr.as_str());
    assert!(listen[0]["comm"].as_str().unwrap().starts_with("python3"));

    let connect = of(&lines, "connect", pid);
    assert!(
        connect
            .iter()
            .any(|v| v["addr"] == addr.as_str() && v["ret"] == 0),
        "{connect:?}"
    );

    let accept = of(&lines, "accept", pid);
    assert_eq!(accept.len(), 1, "{accept:?}");
    assert_eq!(accept[0]["listener"], addr.as_str());
    assert_eq!(accept[0]["listen_fd"], listen[0]["fd"]);
    assert!(accept[0]["fd"].as_i64().unwrap() > 2);
    assert!(
        accept[0]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(accept[0]["inode"], listen[0]["inode"], "same listener");

    let exec: Vec<_> = of(&lines, "exec", pid)
        .into_iter()
        .filter(|v| v["filename"] == "/bin/true")
        .collect();
    assert_eq!(exec.len(), 1, "{exec:?}");
    assert_eq!(exec[0]["argv"][0], "true");
    assert_eq!(exec[0]["argv"][1], "done");
    assert_eq!(exec[0]["comm"], "true");
    assert!(exec[0].get("listen_fds").is_none());

    let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
    assert!(
        lines
            .iter()
            .all(|v| v["v"] == 1 && v["ts"].as_str().unwrap().ends_with('Z'))
    );
}

/// Ignores fd 3 and binds the port itself.
const DOUBLE_BIND: &str = r#"
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    print(e.errno)
"#;

/// Binds, listens and connects on its own port: unrelated to socket activation.
const UNRELATED: &str = r#"
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
for _ in range(20):
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    a, _ = s.accept()
    a.close(); c.close()
    time.sleep(0.01)
"#;

#[test]
fn socket_activated_service_binding_its_own_port_is_seen_with_its_listen_fds() {
    let port = free_port();
    let other = free_port();
    let mut trace = Trace::start(&[]);
    let activated = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--",
            "/usr/bin/python3",
            "-c",
            DOUBLE_BIND,
        ])
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let pid = activated.id();
    let unrelated = python(UNRELATED, &[&other.to_string()]);
    let unrelated_pid = unrelated.id();
    // systemd-socket-activate execs the service on the first connection.
    let _client = connect(port);
    let out = wait_ok(activated, "the activated service");
    assert_eq!(
        out.trim(),
        "98",
        "the service's own bind failed with EADDRINUSE"
    );
    wait_ok(unrelated, "the unrelated script");
    trace.wait_for(WAIT, |v| v["kind"] == "exit" && v["pid"] == pid);
    let lines = trace.stop();

    let exec = of(&lines, "exec", pid);
    let exec = exec
        .iter()
        .find(|v| v["filename"].as_str().unwrap_or("").contains("python3"))
        .unwrap_or_else(|| panic!("no exec of python3 by {pid}: {lines:?}"));
    assert_eq!(exec["listen_fds"], 1);
    assert_eq!(exec["listen_pid"], pid);

    let bind = of(&lines, "bind", pid);
    assert_eq!(bind.len(), 1, "{bind:?}");
    assert_eq!(bind[0]["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(bind[0]["ret"], -98);
    assert_eq!(bind[0]["errno"], "EADDRINUSE");

    let leaked: Vec<&Value> = lines
        .iter()
        .filter(|v| v["pid"] == unrelated_pid || v["port"] == other)
        .collect();
    assert!(leaked.is_empty(), "unrelated process traced: {leaked:?}");
}

#[test]
fn a_process_that_exits_right_after_exec_keeps_its_listen_fds() {
    let port = free_port();
    let mut trace = Trace::start(&[]);
    let activated = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--fdname=web",
            "--",
            "/bin/true",
        ])
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let pid = activated.id();
    let _client = connect(port);
    wait_ok(activated, "/bin/true under systemd-socket-activate");
    let exit = trace.wait_for(WAIT, |v| v["kind"] == "exit" && v["pid"] == pid);
    assert_eq!(exit["exit_code"], 0);
    let lines = trace.stop();
    let exec = of(&lines, "exec", pid);
    assert_eq!(exec.len(), 1, "{exec:?}");
    assert_eq!(exec[0]["filename"], "/bin/true");
    assert_eq!(exec[0]["listen_fds"], 1);
    assert_eq!(exec[0]["listen_pid"], pid);
    assert_eq!(exec[0]["listen_fdnames"], serde_json::json!(["web"]));
}

/// Execs /bin/true with `LISTEN_*` after `argv[1]` other variables.
const DEEP_ENV: &str = r#"
import os, sys
env = {f"FILLER_{i}": "x" * 40 for i in range(int(sys.argv[1]))}
env["LISTEN_PID"] = str(os.getpid())
env["LISTEN_FDS"] = "1"
env["LISTEN_FDNAMES"] = "deep"
os.execve("/bin/true", ["true"], env)
"#;

#[test]
fn listen_variables_are_found_anywhere_in_the_first_128_entries_only() {
    let mut trace = Trace::start(&[]);
    // Entries 125..=127: the last ones looked at. Entries 128..=130: past the bound.
    let near = python(DEEP_ENV, &["125"]);
    let near_pid = near.id();
    wait_ok(near, "exec with LISTEN_* at entries 125..=127");
    let far = python(DEEP_ENV, &["128"]);
    let far_pid = far.id();
    wait_ok(far, "exec with LISTEN_* at entries 128..=130");
    trace.wait_for(WAIT, |v| v["kind"] == "exit" && v["pid"] == near_pid);
    let lines = trace.stop();
    let exec = of(&lines, "exec", near_pid);
    assert_eq!(exec.len(), 1, "{exec:?}");
    assert_eq!(exec[0]["listen_fds"], 1);
    assert_eq!(exec[0]["listen_pid"], near_pid);
    assert_eq!(exec[0]["listen_fdnames"], serde_json::json!(["deep"]));
    // Not watched and not selected: past the bound, the exec is not one systemd passed fds to.
    assert!(
        of(&lines, "exec", far_pid).is_empty(),
        "LISTEN_* past entry 127 were read: {:?}",
        of(&lines, "exec", far_pid)
    );
}

/// Execs /bin/true through a link whose name carries a terminal escape and an invalid UTF-8
/// byte, with arguments that carry more of both, one longer than is kept and one that spells an
/// escape (`\xff` typed out), and a secret in its environment beside LISTEN_*. Waits for a line
/// on stdin first.
const HOSTILE: &str = r#"
import os, sys
link = os.path.join(sys.argv[1].encode(), b"\x1b[2Jx\xff")
os.symlink(b"/bin/true", link)
sys.stdin.readline()
env = {b"SECRET_TOKEN": b"hunter2-sockact", b"LISTEN_PID": str(os.getpid()).encode(), b"LISTEN_FDS": b"1"}
os.execve(link, [link, b"\x1b]0;title\x07", b"A" * 300, b"\xfe\xff", b"\\xff"], env)
"#;

#[test]
fn hostile_names_are_exact_in_json_and_harmless_in_text_and_secrets_never_read() {
    let dir = std::env::temp_dir().join(format!("sockact-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut json = Trace::start(&[]);
    let text_out = dir.join("text.out");
    let mut text = Command::new(trace_bin())
        .args(["--format", "text", "--duration", "60"])
        .stdout(std::fs::File::create(&text_out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a text-mode sockact-trace");
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&text_out).is_ok_and(|t| t.contains("attached")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the text tracer never attached"
        );
        sleep(Duration::from_millis(20));
    }
    let hostile = python(HOSTILE, &[dir.to_str().unwrap()]);
    let pid = hostile.id();
    go(&hostile);
    wait_ok(hostile, "/bin/true through a hostile name");
    json.wait_for(WAIT, |v| v["kind"] == "exit" && v["pid"] == pid);
    sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(text.id() as i32, libc::SIGINT) };
    let status = text.wait().unwrap();
    let mut text_err = String::new();
    use std::io::Read;
    text.stderr
        .take()
        .unwrap()
        .read_to_string(&mut text_err)
        .unwrap();
    assert!(status.success(), "{status}: {text_err}");
    let json_err = json.stderr();
    let lines = json.stop();

    // JSON: exact, with invalid bytes as \xNN.
    let exec = of(&lines, "exec", pid);
    assert_eq!(exec.len(), 1, "{lines:?}");
    let exec = exec[0];
    assert_eq!(exec["comm"], "\u{1b}[2Jx\\xff");
    assert!(
        exec["filename"]
            .as_str()
            .unwrap()
            .ends_with("/\u{1b}[2Jx\\xff"),
        "{exec}"
    );
    let argv: Vec<&str> = exec["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(argv[1], "\u{1b}]0;title\u{7}");
    // ARG_LEN (64) bytes with the NUL.
    assert_eq!(argv[2], "A".repeat(63), "cut to what is kept");
    assert_eq!(argv[3], "\\xfe\\xff");
    // The four characters \xff, as a process wrote them: their backslash escaped, so they are
    // never the byte 0xff.
    assert_eq!(argv[4], "\\x5cxff");
    assert_eq!(exec["listen_fds"], 1);

    // Text: the same, with no control character left to act on a terminal.
    let shown = std::fs::read(&text_out).unwrap();
    assert!(
        !shown.iter().any(|&b| b == 0x1b || b == 0x07),
        "a control character reached the terminal"
    );
    let shown = String::from_utf8(shown).expect("text output is UTF-8");
    // Shown escaped (the escape's own spelling may differ between fields), never acted on.
    assert!(shown.contains("[2Jx\\xff"), "{shown}");
    assert!(shown.contains("]0;title"), "{shown}");

    // The environment beyond LISTEN_* is never read: the secret is nowhere.
    let everything = format!("{lines:?}{shown}{json_err}{text_err}");
    assert!(!everything.contains("hunter2"), "the secret leaked");
    assert!(
        !everything.contains("SECRET_TOKEN"),
        "the secret's name leaked"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// 10,000 loopback connections, each accepted and closed.
const LOAD: &str = r#"
import socket, sys
n = int(sys.argv[1])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
addr = s.getsockname()
for _ in range(n):
    c = socket.create_connection(addr)
    a, _ = s.accept()
    a.close(); c.close()
"#;

fn submitted_under_load(args: &[&str], connections: u32) -> u64 {
    let trace = Trace::start(args);
    wait_ok(python(LOAD, &[&connections.to_string()]), "the load script");
    let lines = trace.stop();
    let stop = &lines[lines.len() - 2];
    let submitted = stop["submitted"].as_u64().expect("submitted is a number");
    let lost = stop["lost"].as_u64().expect("lost is a number");
    // With no userspace selector every record received is a line: the books must balance.
    let kernel = [
        "exec", "exit", "bind", "listen", "accept", "connect", "shutdown",
    ];
    let received = lines
        .iter()
        .filter(|v| kernel.iter().any(|k| v["kind"] == *k))
        .count() as u64;
    assert_eq!(received + lost, submitted, "received + lost = submitted");
    submitted
}

#[test]
fn unrelated_load_is_dropped_in_the_kernel() {
    let filtered = submitted_under_load(&[], 10_000);
    assert!(
        filtered < 100,
        "{filtered} records submitted for unrelated load"
    );
    // The same load with --all: the counter counts, and the filter is what keeps it low.
    let all = submitted_under_load(&["--all"], 10_000);
    // At least a connect and an accept per connection.
    assert!(all >= 20_000, "--all submitted only {all}");
}

/// Addresses of every family, SO_REUSEPORT, and shutdown() of a listener.
const FAMILIES: &str = r#"
import os, socket, sys, tempfile
port = int(sys.argv[1])
d = tempfile.mkdtemp()
u = socket.socket(socket.AF_UNIX)
u.bind(os.path.join(d, "x.sock"))
u.listen(3)
a = socket.socket(socket.AF_UNIX)
a.bind("\0sockact-test-%d" % os.getpid())
v6 = socket.socket(socket.AF_INET6)
v6.bind(("::1", port))
r = socket.socket()
r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
r.bind(("127.0.0.1", port))
r.listen(5)
r.shutdown(socket.SHUT_RDWR)
z = socket.socket()
z.bind(("127.0.0.1", 0))
z.listen(2)
z.shutdown(socket.SHUT_RD)
print(d, z.getsockname()[1])
"#;

#[test]
fn a_tracepoint_missing_at_start_is_reported_once_and_the_rest_works() {
    // A private mount namespace where the sock tracepoints' directory is empty.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /sys/kernel/tracing/events/sock && exec \"$0\" \"$@\"",
    ])
    .arg(trace_bin())
    .args(["--format", "json", "--duration", "60", "--all"]);
    let (mut trace, attached) = Trace::launch_degraded(cmd);
    let failed: Vec<&str> = attached["failed"]
        .as_array()
        .expect("a failed list")
        .iter()
        .map(|f| f["program"].as_str().expect("a program name"))
        .collect();
    // sk_data_ready is not there, so it is not tried: set_state is what would stand in for
    // it, and that fails.
    assert_eq!(failed, ["sock_inet_sock_set_state"], "{attached}");
    assert_eq!(
        attached["features"]["accept_queue"],
        Value::Null,
        "{attached}"
    );
    assert!(
        attached["unavailable_rules"]
            .as_array()
            .unwrap()
            .contains(&Value::from("backlog_overflow")),
        "{attached}"
    );
    for f in attached["failed"].as_array().unwrap() {
        let error = f["error"].as_str().unwrap();
        assert!(error.contains("No such file or directory"), "{error}");
    }
    // Everything else works: a connection is still seen on both sides.
    let port = free_port();
    let server = python(SELF_CONNECT, &[&port.to_string()]);
    let pid = server.id();
    wait_ok(server, "a self-connecting python");
    trace.wait_for(WAIT, |v| v["kind"] == "accept" && v["pid"] == pid);
    let stderr = trace.stderr();
    let lines = trace.stop();
    assert_eq!(of(&lines, "connect", pid).len(), 1);
    for program in failed {
        assert_eq!(
            stderr.matches(&format!("{program} not attached")).count(),
            1,
            "said once: {stderr}"
        );
    }
}

#[test]
fn a_ring_buffer_overflow_is_counted_exactly() {
    let mut trace = Trace::start(&["--all"]);
    // A reader that stalls while a burst goes on: the ring buffer (4 MiB) fills up.
    trace.signal(libc::SIGSTOP);
    let burst = python(LOAD, &["30000"]);
    let burst_pid = burst.id();
    wait_ok(burst, "a burst of 30,000 loopback connections");
    trace.signal(libc::SIGCONT);
    // Told while tracing, not only at the end.
    trace.wait_for(Duration::from_secs(30), |v| {
        v["kind"] == "lost" && v["cause"] == "ring_buffer_full"
    });
    let lines = trace.stop();
    // And where the gap is: after every record the burst wrote before the ring buffer was
    // full, which were all waiting in it when tracing resumed.
    let first_lost = lines
        .iter()
        .find(|v| v["kind"] == "lost" && v["cause"] == "ring_buffer_full")
        .map(|v| v["seq"].as_u64().unwrap())
        .unwrap();
    let last_of_burst = lines
        .iter()
        .filter(|v| v["pid"] == burst_pid)
        .map(|v| v["seq"].as_u64().unwrap())
        .max()
        .expect("events of the burst");
    assert!(
        first_lost > last_of_burst,
        "the loss is told at seq {first_lost}, ahead of the burst's records up to {last_of_burst}"
    );
    let stop = lines
        .iter()
        .find(|v| v["kind"] == "agent" && v["action"] == "stop")
        .expect("an agent stop line");
    let count = |key: &str| {
        stop[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} on the stop: {stop}"))
    };
    let (submitted, received, lost) = (count("submitted"), count("received"), count("lost"));
    assert!(
        lost > 0,
        "the burst did not overflow the ring buffer: {stop}"
    );
    let reported: u64 = lines
        .iter()
        .filter(|v| v["kind"] == "lost" && v["cause"] == "ring_buffer_full")
        .map(|v| v["count"].as_u64().expect("a lost count"))
        .sum();
    assert_eq!(
        reported, lost,
        "the stream's ring_buffer_full losses against the kernel's"
    );
    assert_eq!(received + lost, submitted, "{stop}");
}

#[test]
fn addresses_of_every_family_reuseport_and_listener_shutdown() {
    let port = free_port();
    let mut trace = Trace::start(&["--all"]);
    let child = python(FAMILIES, &[&port.to_string()]);
    let pid = child.id();
    let out = wait_ok(child, "the address script");
    let (dir, chosen) = out.trim().split_once(' ').expect("a directory and a port");
    trace.wait_for(WAIT, |v| {
        v["kind"] == "shutdown" && v["pid"] == pid && v["how"] == "SHUT_RD"
    });
    let lines = trace.stop();
    let binds = of(&lines, "bind", pid);
    let find = |addr: &str| {
        binds
            .iter()
            .find(|v| v["addr"] == addr)
            .unwrap_or_else(|| panic!("no bind of {addr}: {binds:?}"))
    };
    let path = format!("{dir}/x.sock");
    assert_eq!(find(&path)["family"], "unix");
    assert!(find(&path).get("port").is_none());
    let abstract_name = format!("@sockact-test-{pid}");
    assert_eq!(find(&abstract_name)["family"], "unix");
    let v6 = find(&format!("[::1]:{port}"));
    assert_eq!(v6["family"], "inet6");
    assert_eq!(v6["reuseport"], false);
    let reuse = find(&format!("127.0.0.1:{port}"));
    assert_eq!(reuse["reuseport"], true);

    let listens = of(&lines, "listen", pid);
    assert!(
        listens
            .iter()
            .any(|v| v["addr"] == path.as_str() && v["backlog"] == 3),
        "unix listener address: {listens:?}"
    );
    let shutdown = of(&lines, "shutdown", pid);
    assert_eq!(shutdown.len(), 2, "{shutdown:?}");
    assert_eq!(shutdown[0]["how"], "SHUT_RDWR");
    assert_eq!(shutdown[0]["listener"], format!("127.0.0.1:{port}"));
    // A port the kernel chose, which shutdown() gives back: the listener it was.
    assert_eq!(shutdown[1]["listener"], format!("127.0.0.1:{chosen}"));
}

/// Waits for a line on stdin (so the tracer can start with its pid), then binds.
const LATE_BIND: &str = r#"
import socket, sys
sys.stdin.readline()
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
"#;

#[test]
fn pid_and_port_selectors_narrow_to_what_was_asked() {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    // The selected process is a shell whose python child exists before the trace starts:
    // `--pid` covers the process and its descendants.
    let selected = Command::new("sh")
        .args([
            "-c",
            "/usr/bin/python3 -c \"$1\" \"$2\"; true",
            "sh",
            LATE_BIND,
        ])
        .arg(p1.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh");
    let other = python(LATE_BIND, &[&p2.to_string()]);
    let by_port = python(LATE_BIND, &[&p3.to_string()]);
    let (sel_pid, other_pid, port_pid) = (selected.id(), other.id(), by_port.id());
    let sel_arg = sel_pid.to_string();
    let port_arg = p3.to_string();
    sleep(Duration::from_millis(300));
    let mut trace = Trace::start(&["--pid", &sel_arg, "--port", &port_arg]);
    for child in [&selected, &other, &by_port] {
        go(child);
    }
    wait_ok(selected, "selected");
    wait_ok(other, "other");
    wait_ok(by_port, "by port");
    let p1_listen = trace.wait_for(WAIT, |v| v["kind"] == "listen" && v["port"] == p1);
    trace.wait_for(WAIT, |v| v["kind"] == "listen" && v["pid"] == port_pid);
    let lines = trace.stop();
    assert_eq!(
        p1_listen["ppid"], sel_pid,
        "the child of the selected shell"
    );
    assert!(of(&lines, "bind", port_pid).iter().any(|v| v["port"] == p3));
    assert!(
        lines.iter().all(|v| v["pid"] != other_pid),
        "the unselected process showed up"
    );
}

#[test]
fn a_pid_that_is_no_process_is_a_usage_error() {
    let out = Command::new(trace_bin())
        .args(["--pid", "4194304", "--duration", "1"])
        .output()
        .expect("running sockact-trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--pid 4194304: no such process"),
        "{stderr}"
    );
}

/// A socket-activated server: accepts forever on fd 3, answering "hi".
const SERVER: &str = r#"
import socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(b"hi\n")
    c.close()
"#;

#[test]
fn an_accept_already_blocked_when_tracing_starts_is_seen() {
    let port = free_port();
    let server = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--",
            "/usr/bin/python3",
            "-c",
            SERVER,
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate");
    let pid = server.id();
    let server = KillOnDrop(server);
    // The first connection activates it; it then blocks in accept() before the trace starts.
    drop(connect(port));
    sleep(Duration::from_millis(500));
    let pid_arg = pid.to_string();
    let mut trace = Trace::start(&["--pid", &pid_arg]);
    let client = connect(port);
    let accept = trace.wait_for(WAIT, |v| v["kind"] == "accept" && v["pid"] == pid);
    drop(client);
    drop(trace.stop());
    drop(server);
    assert_eq!(
        accept["listen_fd"], -1,
        "the listening fd of a call begun earlier is unknown"
    );
    assert_eq!(accept["listener"], format!("127.0.0.1:{port}"));
    assert!(accept["fd"].as_i64().unwrap() > 3);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn without_privileges_it_says_so_in_one_line_and_exits_1() {
    let out = unprivileged(&["--duration", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

/// What the running kernel offers, as the tests see it for themselves.
fn has_tracepoint(category: &str, name: &str) -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| std::path::Path::new(&format!("{t}/events/{category}/{name}/format")).exists())
}

#[test]
fn every_program_attaches_or_its_tracepoint_does_not_exist() {
    let mut trace = Trace::start(&["--all"]);
    let attached = trace.wait_for(WAIT, |v| v["kind"] == "agent" && v["action"] == "attached");
    // The matrix's record of what each kernel gave.
    eprintln!(
        "kernel {} features {} unavailable_rules {}",
        attached["kernel"], attached["features"], attached["unavailable_rules"]
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(attached["kernel"], release.trim());
    // Trace::start saw an empty `failed`: nothing was refused, by the verifier or otherwise.
    let features = attached["features"].as_object().expect("a features object");
    for family in [
        "exec",
        "bind",
        "listen",
        "accept",
        "connect",
        "shutdown",
        "lifetimes",
        "accept_queue",
    ] {
        assert!(
            features.get(family).is_some_and(|m| m.is_string()),
            "{family} has no mechanism: {attached}"
        );
    }
    let queue = if has_tracepoint("sock", "sk_data_ready") {
        "sk_data_ready"
    } else {
        "inet_sock_set_state"
    };
    assert_eq!(features["accept_queue"], queue, "{attached}");
    assert!(
        ["bpf_loop", "bounded_loop"].contains(&features["exec"].as_str().unwrap()),
        "{attached}"
    );
    assert_eq!(attached["unavailable_rules"], serde_json::json!([]));
    // And the programs work: an exec with LISTEN_FDS, a bind, a listen and an accept.
    let port = free_port();
    let child = python(SELF_CONNECT, &[&port.to_string()]);
    let pid = child.id();
    wait_ok(child, "the self-connecting script");
    trace.wait_for(WAIT, |v| v["kind"] == "exec" && v["pid"] == pid);
    let lines = trace.stop();
    for kind in ["bind", "listen", "connect", "accept", "exec"] {
        assert!(!of(&lines, kind, pid).is_empty(), "no {kind} from {pid}");
    }
}

#[test]
fn listen_variables_an_unprivileged_process_sets_itself_are_not_trusted() {
    require_root();
    let port = free_port();
    let plain = Trace::start(&[]);
    let mut all = Trace::start(&["--all"]);
    // Anyone can set LISTEN_*: here nobody, not root, and no service manager forked it.
    let script = format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=db:db exec python3 -c \
         'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", {port})); s.listen()'"
    );
    let child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .expect("setpriv (util-linux)");
    let pid = child.id();
    wait_ok(child, "the self-declared service");
    all.wait_for(WAIT, |v| v["kind"] == "listen" && v["pid"] == pid);
    let (plain, all) = (plain.stop(), all.stop());
    // Not watched for it: nothing of it without --all.
    assert!(
        plain.iter().all(|v| v["pid"] != pid),
        "{:?}",
        plain.iter().filter(|v| v["pid"] == pid).collect::<Vec<_>>()
    );
    // With --all its exec is there, with what it claimed, and says that nobody vouched for it.
    let exec = of(&all, "exec", pid)
        .into_iter()
        .find(|v| v["listen_fds"] == 1)
        .unwrap_or_else(|| panic!("no exec of {pid}"));
    assert_eq!(exec["listen_trusted"], false, "{exec}");
    assert_eq!(exec["listen_fdnames"], serde_json::json!(["db", "db"]));
    assert!(
        all.iter()
            .all(|v| v["kind"] != "finding" || v["pid"] != pid),
        "no finding of it"
    );
    assert!(
        all.iter().all(|v| v["rule"] != "fdnames_duplicate"),
        "its forged names prove nothing"
    );
}

/// bind and listen refused, as a kernel might refuse them.
const REFUSE_BIND_AND_LISTEN: &str = "syscalls_sys_enter_bind,syscalls_sys_exit_bind,\
                                      syscalls_sys_enter_listen,syscalls_sys_exit_listen";

#[test]
fn a_kernel_that_refuses_bind_and_listen_is_a_one_line_failure() {
    require_root();
    let out = Command::new(trace_bin())
        .args(["--format", "json", "--duration", "5"])
        .env("SOCKACT_REFUSE_PROGRAMS", REFUSE_BIND_AND_LISTEN)
        .output()
        .expect("running sockact-trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("no bind, listen events"), "{stderr}");
    assert!(stderr.contains("syscalls_sys_exit_bind"), "{stderr}");
    // What the kernel allowed is in the stream too.
    let attached = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "agent" && v["action"] == "attached")
        .expect("an attached event");
    assert_eq!(attached["features"]["bind"], Value::Null);
    assert_eq!(attached["features"]["listen"], Value::Null);
    assert_eq!(attached["features"]["accept"], "syscalls");
    let unavailable = attached["unavailable_rules"].as_array().unwrap();
    assert!(
        unavailable.contains(&Value::from("double_bind")),
        "{attached}"
    );
    assert!(
        !unavailable.contains(&Value::from("crash_loop")),
        "{attached}"
    );
}

#[test]
fn without_btf_it_says_so_in_one_line_and_exits_1() {
    require_root();
    let out = Command::new(trace_bin())
        .args(["--duration", "1"])
        .env("SOCKACT_BTF", "/nonexistent/vmlinux")
        .output()
        .expect("running sockact-trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no BTF at /nonexistent/vmlinux"),
        "{stderr}"
    );
}

#[test]
fn tracefs_is_mounted_when_missing() {
    require_root();
    // A private mount namespace without tracefs: what a fresh machine looks like.
    let script = format!(
        "umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; \
         test -d /sys/kernel/tracing/events && {{ echo still mounted; exit 3; }}; \
         {} --all --format json --duration 1 && test -d /sys/kernel/tracing/events",
        trace_bin().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let attached: Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["action"] == "attached")
        .expect("an agent attached line");
    assert_eq!(attached["failed"], serde_json::json!([]), "{attached}");
    assert!(
        out.stderr.is_empty(),
        "mounting tracefs is not worth a message"
    );
}

#[test]
fn a_closed_stdout_ends_it_quietly_and_quickly() {
    require_root();
    let mut child = Command::new(trace_bin())
        .args(["--format", "json", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sockact-trace");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    use std::io::Read;
    stdout.read_exact(&mut first).expect("a first line");
    drop(stdout);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running 5 s after stdout closed"
        );
        sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn kernel_log_goes_to_stderr_never_to_the_stream() {
    let port = free_port();
    let trace = Trace::start(&["--kernel-log"]);
    let activated = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}"), "--", "/bin/true"])
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate");
    let pid = activated.id();
    let _client = connect(port);
    wait_ok(activated, "/bin/true under systemd-socket-activate");
    sleep(Duration::from_millis(300));
    let stderr = trace.stderr();
    let lines = trace.stop();
    let needle = format!("watching pid {pid}: exec'd with LISTEN_FDS");
    assert!(stderr.contains(&needle), "stderr: {stderr}");
    assert!(
        lines
            .iter()
            .all(|v| !v.to_string().contains("watching pid")),
        "kernel log leaked into the stream"
    );
    assert!(!stderr.contains('\x1b'), "no colour codes into a pipe");
}

/// After five non-blocking connects, 30 ms apart, to a listener with backlog 2 (three fit, the
/// queue is full only past its backlog; the SYNs of the other two are dropped and sent again
/// later by the kernel): says so, then accepts three when told.
const ACCEPT_THREE_WHEN_TOLD: &str = r#"
time.sleep(0.4)
print("queued", flush=True)
sys.stdin.readline()
for _ in range(3):
    a, _ = s.accept()
    a.close()
print("accepted", flush=True)
sys.stdin.readline()
"#;

#[test]
fn a_watched_listeners_queue_its_drops_and_each_accepts_wait() {
    let port = free_port();
    let arg = port.to_string();
    let mut trace = Trace::start(&["--port", &arg]);
    let mut server = python(&flood(ACCEPT_THREE_WHEN_TOLD), &[&arg, "2", "5", "0.03"]);
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "queued");
    let queued = trace.wait_for(WAIT, |v| v["kind"] == "queue" && v["peak"] == 3);
    assert_eq!(queued["max"], 2, "{queued}");
    assert_eq!(queued["listener"], format!("127.0.0.1:{port}"));
    let dropped = trace.wait_for(WAIT, |v| {
        v["kind"] == "drop" && v["total"].as_u64() >= Some(2)
    });
    let drops_before_accepting = ss_drops(port);
    go(&server);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "accepted");
    let pid = server.id();
    trace.wait_for(WAIT, |v| v["kind"] == "accept" && v["pid"] == pid);
    sleep(Duration::from_millis(300));
    let drops_now = ss_drops(port);
    let lines = trace.stop();
    go(&server);
    let _ = server.wait();

    assert_eq!(dropped["reason"], "accept_queue_full");
    assert!(drops_before_accepting >= 2, "{drops_before_accepting}");
    let drops: Vec<&Value> = lines.iter().filter(|v| v["kind"] == "drop").collect();
    let total: u64 = drops.iter().map(|v| v["count"].as_u64().unwrap()).sum();
    let last_total = drops.last().map(|v| v["total"].as_u64().unwrap());
    assert_eq!(Some(total), last_total, "counts add up to the total");
    assert_eq!(
        total, drops_now,
        "the listener's own counter (ss -tlnm d<N>)"
    );
    // The queue rose one connection at a time, each seen by the kernel as it was queued.
    let peaks: Vec<u64> = lines
        .iter()
        .filter(|v| v["kind"] == "queue")
        .map(|v| v["peak"].as_u64().unwrap())
        .collect();
    assert_eq!(peaks.first(), Some(&1), "{peaks:?}");
    assert!(peaks.contains(&3), "{peaks:?}");
    // Each connection waited from its connect until the listener took it: the first one
    // about 0.55 s (four more connects 30 ms apart, then 0.4 s).
    let accepts = of(&lines, "accept", pid);
    assert_eq!(accepts.len(), 3, "{lines:?}");
    let waits: Vec<u64> = accepts
        .iter()
        .map(|v| {
            v["wait_us"]
                .as_u64()
                .expect("a wait for a queued connection")
        })
        .collect();
    assert!(waits[0] >= 500_000 && waits[0] < 5_000_000, "{waits:?}");
    assert!(
        waits[0] > waits[1] && waits[1] > waits[2],
        "oldest first: {waits:?}"
    );
}

/// Non-blocking connects from a watched process: one to a port nobody listens on, one that
/// succeeds; each returns EINPROGRESS, and the outcome comes later.
const ASYNC_CONNECT: &str = r#"
import select, socket, sys
for port in (int(sys.argv[1]), int(sys.argv[2])):
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    select.select([], [c], [], 5)
    print(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
"#;

#[test]
fn a_non_blocking_connect_reports_its_outcome() {
    let (closed, open) = (free_port(), free_port());
    let listener = std::net::TcpListener::bind(("127.0.0.1", open)).unwrap();
    let mut trace = Trace::start(&["--port", &closed.to_string(), "--port", &open.to_string()]);
    let child = python(ASYNC_CONNECT, &[&closed.to_string(), &open.to_string()]);
    let pid = child.id();
    let out = wait_ok(child, "the connecting script");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["111", "0"]);
    trace.wait_for(WAIT, |v| {
        v["kind"] == "connect" && v["port"] == open && v["async"] == true
    });
    let lines = trace.stop();
    drop(listener);
    let connects = of(&lines, "connect", pid);
    let outcome = |port: u16| {
        let mine: Vec<&&Value> = connects.iter().filter(|v| v["port"] == port).collect();
        assert_eq!(mine.len(), 2, "the call and its outcome: {mine:?}");
        assert_eq!(mine[0]["errno"], "EINPROGRESS");
        assert!(mine[0].get("async").is_none());
        assert_eq!(mine[1]["async"], true);
        assert_eq!(mine[1]["fd"], mine[0]["fd"]);
        assert_eq!(
            mine[1]["comm"], mine[0]["comm"],
            "the caller, not softirq's task"
        );
        (*mine[1]).clone()
    };
    let refused = outcome(closed);
    assert_eq!(refused["ret"], -111);
    assert_eq!(refused["errno"], "ECONNREFUSED");
    let connected = outcome(open);
    assert_eq!(connected["ret"], 0);
    assert!(connected.get("errno").is_none());
}
