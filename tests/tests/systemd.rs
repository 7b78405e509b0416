//! End to end on a real systemd: the test bed boots a Debian root with systemd-nspawn, the
//! scenario's units are up before the trace starts, clients connect from the host.
use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    time::Duration,
};

use sockact_tests::{Trace, of, testbed::Container};

const WAIT: Duration = Duration::from_secs(15);

/// Connects and reads the one-line answer.
fn ask(port: u16) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the socket unit");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("an answer");
    line.trim().to_owned()
}

#[test]
fn healthy_activation_is_seen_with_namespace_aware_pids() {
    let c = Container::boot("healthy", 2);
    let mut trace = Trace::start(&[]);
    assert_eq!(ask(c.port(1)), "echo");
    assert_eq!(ask(c.port(2)), "admin");
    let pid = c.main_pid("echo.service");
    assert_ne!(pid, 0, "echo.service runs: {}", c.journal("echo.service"));
    trace.wait_for(WAIT, |v| {
        v["kind"] == "accept"
            && v["pid"] == pid
            && v["listener"] == format!("127.0.0.1:{}", c.port(2))
    });
    let lines = trace.stop();

    let exec = of(&lines, "exec", pid);
    let exec = exec
        .iter()
        .find(|v| v["listen_fds"] == 2)
        .unwrap_or_else(|| panic!("no exec with listen_fds 2 by {pid}: {lines:?}"));
    let ns_pid = exec["ns_pid"]
        .as_u64()
        .expect("a process in the container has an ns_pid");
    assert_ne!(ns_pid, pid as u64);
    assert_eq!(
        exec["listen_pid"], ns_pid,
        "LISTEN_PID is the container's PID"
    );
    let mut names: Vec<&str> = exec["listen_fdnames"]
        .as_array()
        .expect("listen_fdnames")
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["admin", "echo"], "one name per socket unit");

    let accepts = of(&lines, "accept", pid);
    for port in [c.port(1), c.port(2)] {
        assert!(
            accepts
                .iter()
                .any(|v| v["listener"] == format!("127.0.0.1:{port}")),
            "no accept on {port}: {accepts:?}"
        );
    }
}
