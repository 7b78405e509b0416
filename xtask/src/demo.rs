//! `cargo xtask demo`: a real systemd (the test bed's container) with sample units, a healthy
//! service with two socket units and a broken one that binds its port itself, traced live by
//! sockact-trace while traffic runs; the container is powered off at the end.
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    thread::sleep,
    time::Duration,
};

use anyhow::{Context, bail};
use sockact_tests::testbed::Container;

use crate::{
    rootfs, setup,
    util::{build_binaries, is_root, root},
};

fn request(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return "connection refused".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(b"hello\n");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    if reply.is_empty() {
        "no answer".into()
    } else {
        reply.trim().to_owned()
    }
}

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo boots a container and loads eBPF programs: run `cargo xtask demo` as root");
    }
    setup::run()?;
    rootfs::ensure()?;
    let root = root();
    build_binaries()?;
    eprintln!("demo: booting systemd with echo.socket, echo-admin.socket and broken.socket");
    let c = Container::boot("demo", 3);
    let bus = format!("unix:path=/proc/{}/root/run/systemd/private", c.leader());
    eprintln!("demo: sockact-trace --systemd-bus {bus} (no selector: every socket-activated unit)");
    let mut trace = Command::new(root.join("target/debug/sockact-trace"))
        .args(["--systemd-bus", &bus, "--duration", "8", "--format", "text"])
        .spawn()
        .context("starting sockact-trace")?;
    sleep(Duration::from_millis(1500));
    eprintln!("demo: client -> echo       {}", request(c.port(1)));
    eprintln!("demo: client -> echo-admin {}", request(c.port(2)));
    eprintln!("demo: client -> broken     {}", request(c.port(3)));
    eprintln!("demo: systemctl restart echo.service");
    c.systemctl_ok(&["restart", "echo.service"]);
    sleep(Duration::from_millis(500));
    eprintln!("demo: client -> echo       {}", request(c.port(1)));
    let status = trace.wait()?;
    if !status.success() {
        bail!("sockact-trace failed: {status}");
    }
    eprintln!(
        "demo: broken.service got its socket as fd 3 (LISTEN_FDS=1) and bound the port itself: \
         the bind ... EADDRINUSE line above; echo.service served both of its sockets."
    );
    Ok(())
}
