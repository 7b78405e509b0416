//! Load: nginx (Debian's nginx-light, one worker, loopback) serving a fixed reply, plain or
//! taking its socket from socket activation, driven by wrk with `Connection: close` so that
//! every request is a new connection (accept, close and the rest).
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A running nginx.
pub struct Nginx {
    child: Child,
    pub port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn config(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let d = dir.display();
    let text = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
         \x20 uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         \x20 server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
    );
    let path = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `cmd` (which ends in `nginx -c`) with nginx's configuration and prefix, quiet.
fn spawn(cmd: &mut Command, conf: &Path, dir: &Path) -> std::io::Result<std::process::Child> {
    cmd.arg(conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

impl Nginx {
    /// nginx binding its own port: load sockact does not watch.
    pub fn plain(dir: &Path) -> anyhow::Result<Nginx> {
        let port = free_port()?;
        let conf = config(dir, port)?;
        let child = spawn(Command::new("nginx").arg("-c"), &conf, dir)
            .context("nginx (package nginx-light)")?;
        let n = Nginx { child, port };
        n.wait_listening()?;
        Ok(n)
    }

    /// nginx taking its socket from socket activation (systemd-socket-activate passes fd 3,
    /// nginx takes it through its NGINX variable): every accept is watched.
    pub fn activated(dir: &Path) -> anyhow::Result<Nginx> {
        let port = free_port()?;
        let conf = config(dir, port)?;
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "-E",
            "NGINX=3;",
            "--",
            "nginx",
            "-c",
        ]);
        let child =
            spawn(&mut cmd, &conf, dir).context("systemd-socket-activate (package systemd)")?;
        let n = Nginx { child, port };
        n.wait_listening()?;
        // The first connection activates it.
        n.get()?;
        Ok(n)
    }

    fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx does not listen on {}", self.port);
            }
            sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// One request, until it is answered.
    fn get(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("nginx on {} does not answer", self.port);
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // nginx's master stops its worker on SIGTERM.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// What one wrk run did.
#[derive(Clone, Copy, Debug)]
pub struct Wrk {
    pub requests: u64,
    pub per_second: f64,
}

/// `N requests in Xs` and `Requests/sec: R` from wrk's report.
pub fn parse(report: &str) -> Option<Wrk> {
    let requests = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())?;
    let per_second = report
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|r| r.trim().parse().ok())?;
    Some(Wrk {
        requests,
        per_second,
    })
}

/// `wrk -t1 -c50` for `seconds`, every request a new connection.
pub fn wrk(port: u16, seconds: u64) -> anyhow::Result<Wrk> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c50",
            &format!("-d{seconds}s"),
            "-H",
            "Connection: close",
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("wrk (package wrk)")?;
    let report = String::from_utf8_lossy(&out.stdout);
    parse(&report).with_context(|| format!("reading wrk's report: {report}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let report = "Running 3s test @ http://127.0.0.1:18080/\n  1 threads and 50 connections\n\
                      \x20 63280 requests in 3.00s, 8.75MB read\nRequests/sec:  21073.99\n";
        let w = parse(report).unwrap();
        assert_eq!(w.requests, 63280);
        assert!((w.per_second - 21073.99).abs() < 1e-9);
    }
}
