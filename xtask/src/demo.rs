//! `cargo xtask demo`: a sample service under systemd-socket-activate, traced live. One instance
//! takes the socket systemd-socket-activate passes it; another ignores it and binds the port
//! itself, the double-bind every operator of socket activation meets once.
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    setup,
    util::{is_root, root, run_cmd},
};

const GOOD_PORT: u16 = 18080;
const BAD_PORT: u16 = 18081;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn activate(port: u16, script: &str) -> anyhow::Result<Killed> {
    let dir = root().join("demo");
    let child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--fdname=web",
            "--",
            "/usr/bin/python3",
        ])
        .arg(dir.join(script))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("starting systemd-socket-activate (package systemd)")?;
    Ok(Killed(child))
}

fn request(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return "connection refused".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(b"hello\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    if reply.is_empty() {
        "no reply".into()
    } else {
        reply.trim().to_owned()
    }
}

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs: run `sudo -E cargo xtask demo`");
    }
    setup::run()?;
    let root = root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "sockact-agent",
        "--bins",
    ]))?;
    eprintln!(
        "demo: tracing every socket-activated process for 6 seconds (sockact-trace, no selector)"
    );
    let mut trace = Command::new(root.join("target/debug/sockact-trace"))
        .args(["--duration", "6", "--format", "text"])
        .spawn()
        .context("starting sockact-trace")?;
    sleep(Duration::from_millis(1500));
    let _good = activate(GOOD_PORT, "good_server.py")?;
    let _bad = activate(BAD_PORT, "bad_server.py")?;
    sleep(Duration::from_millis(300));
    eprintln!("demo: client -> {GOOD_PORT}: {}", request(GOOD_PORT));
    eprintln!("demo: client -> {BAD_PORT}: {}", request(BAD_PORT));
    let status = trace.wait()?;
    if !status.success() {
        bail!("sockact-trace failed: {status}");
    }
    eprintln!(
        "demo: the service on {BAD_PORT} got its socket in fd 3 (LISTEN_FDS=1) and bound the \
         port itself: bind ... EADDRINUSE above."
    );
    Ok(())
}
