//! The real-systemd test bed: the cached Debian root (`cargo xtask rootfs`) booted with
//! systemd-nspawn on an overlay of its own, with one scenario's units installed from
//! `tests/scenarios/<name>/`. The container shares the host's network namespace, so clients
//! run on the host; it is shut down when the [`Container`] is dropped, even after a failure.
//!
//! Inside the kernel matrix's virtual machines (`cargo xtask test --kernel`), where that root is
//! the machine itself and its systemd is PID 1, `SOCKACT_TESTBED=pid1` makes the same scenarios
//! run on that systemd: their units installed, started, then stopped and removed again.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::{free_port, require_root};

/// The cached root built by `cargo xtask rootfs`.
pub fn rootfs() -> PathBuf {
    let dir = std::env::var_os("SOCKACT_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/sockact/rootfs-bookworm")
        });
    assert!(
        dir.join(".sockact-rootfs").exists(),
        "no test root at {}: run `cargo xtask rootfs` (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// Programs several scenarios share, installed in every container at /opt/sockact/apps
/// (`@APPS@` in a unit).
const APPS: &str = "apps";

/// Where the scenarios are: `SOCKACT_SCENARIOS` (the kernel matrix's VMs carry them), else
/// this crate's own `scenarios/`.
fn scenario_dir(name: &str) -> PathBuf {
    std::env::var_os("SOCKACT_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios"))
        .join(name)
}

/// Where a scenario's systemd runs.
enum Bed {
    /// A container of its own, booted by systemd-nspawn on an overlay of the cached root.
    Nspawn {
        nspawn: Child,
        work: PathBuf,
        merged: PathBuf,
    },
    /// The machine's own systemd (PID 1): the scenario's units, to stop and remove at the end.
    Pid1 { units: Vec<String> },
}

/// Whether scenarios run on this machine's own systemd (see the module's doc).
pub fn on_pid1() -> bool {
    std::env::var_os("SOCKACT_TESTBED").is_some_and(|v| v == "pid1")
}

/// A booted container running one scenario.
pub struct Container {
    bed: Bed,
    leader: u32,
    /// `@PORT1@`... as substituted in the scenario's units.
    pub ports: BTreeMap<String, u16>,
    pub name: String,
}

impl Container {
    /// Boots `tests/scenarios/<name>/` with `ports` fresh ports (`@PORT1@`..`@PORTn@`), and
    /// waits until systemd reports the system up.
    pub fn boot(name: &str, ports: usize) -> Container {
        require_root();
        let ports: BTreeMap<String, u16> = (1..=ports)
            .map(|i| (format!("@PORT{i}@"), free_port()))
            .collect();
        if on_pid1() {
            return Container::on_pid1(name, ports);
        }
        let lower = rootfs();
        static BOOTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BOOTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{name}-{}-{n}", std::process::id());
        let work = std::env::temp_dir().join(format!("sockact-{id}"));
        let _ = fs::remove_dir_all(&work);
        let (upper, ovl_work, merged) = (work.join("upper"), work.join("work"), work.join("root"));
        for d in [&upper, &ovl_work, &merged] {
            fs::create_dir_all(d).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            ovl_work.display()
        );
        run_ok(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&merged),
            "mounting the scenario's overlay",
        );
        install(&scenario_dir(name), &merged, &ports, name);
        install(&scenario_dir(APPS), &merged, &ports, APPS);
        let log = fs::File::create(work.join("console.log")).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&merged)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--quiet",
                "--console=passive",
            ])
            .arg(format!("--machine=sockact-{id}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn (package systemd-container)");
        let mut c = Container {
            leader: 0,
            bed: Bed::Nspawn {
                nspawn,
                work,
                merged,
            },
            ports,
            name: name.to_owned(),
        };
        c.leader = c.find_leader();
        c.wait_running();
        c
    }

    /// The scenario on this machine's own systemd: its units installed and their sockets
    /// started, as a boot would have.
    fn on_pid1(name: &str, ports: BTreeMap<String, u16>) -> Container {
        let root = Path::new("/");
        let mut units = install(&scenario_dir(name), root, &ports, name);
        units.extend(install(&scenario_dir(APPS), root, &ports, APPS));
        let c = Container {
            bed: Bed::Pid1 { units },
            leader: 1,
            ports,
            name: name.to_owned(),
        };
        c.systemctl_ok(&["daemon-reload"]);
        let Bed::Pid1 { units } = &c.bed else {
            unreachable!()
        };
        let sockets: Vec<&str> = units
            .iter()
            .map(String::as_str)
            .filter(|u| u.ends_with(".socket"))
            .collect();
        if !sockets.is_empty() {
            let mut args = vec!["start"];
            args.extend(sockets);
            c.systemctl_ok(&args);
        }
        c
    }

    fn find_leader(&mut self) -> u32 {
        let Bed::Nspawn { nspawn, .. } = &mut self.bed else {
            return 1;
        };
        let parent = nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = nspawn.try_wait() {
                panic!("systemd-nspawn exited early ({status}): {}", self.console());
            }
            if let Some(pid) = child_named(parent, "systemd") {
                return pid;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("no systemd in the container after 20 s: {}", self.console());
    }

    fn wait_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let out = self.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return;
            }
            sleep(Duration::from_millis(200));
        }
        let failed = self.systemctl(&["--failed", "--no-legend"]);
        panic!(
            "the container's systemd did not come up in 60 s; failed units: {}\n{}",
            String::from_utf8_lossy(&failed.stdout),
            self.console()
        );
    }

    /// The container's root directory on the host (its overlay), to put files in.
    pub fn root(&self) -> &Path {
        match &self.bed {
            Bed::Nspawn { merged, .. } => merged,
            Bed::Pid1 { .. } => Path::new("/"),
        }
    }

    /// The container's PID 1, as the host sees it.
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// The container's system bus, reachable from the host.
    pub fn bus_address(&self) -> String {
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            self.leader
        )
    }

    /// Runs a command inside the container.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a"])
            .args(args)
            .output()
            .expect("nsenter (util-linux)")
    }

    /// `systemctl ARGS` inside the container.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// `systemctl ARGS`, failing the test when it fails.
    pub fn systemctl_ok(&self, args: &[&str]) {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn port(&self, n: usize) -> u16 {
        self.ports[&format!("@PORT{n}@")]
    }

    /// The host PID of a unit's main process (0 when none).
    pub fn main_pid(&self, unit: &str) -> u32 {
        let out = self.systemctl(&["show", "-P", "MainPID", unit]);
        let ns_pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if ns_pid == 0 {
            return 0;
        }
        host_pid_of(self.leader, ns_pid).unwrap_or(0)
    }

    /// What the container's console and journal say, for failure messages.
    pub fn console(&self) -> String {
        match &self.bed {
            Bed::Nspawn { work, .. } => {
                fs::read_to_string(work.join("console.log")).unwrap_or_default()
            }
            Bed::Pid1 { .. } => String::new(),
        }
    }

    /// The journal of a unit, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-n", "50", "-u", unit]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        match &mut self.bed {
            Bed::Nspawn {
                nspawn,
                work,
                merged,
            } => {
                // SIGTERM makes nspawn power the container off; give it a few seconds, then
                // kill.
                // SAFETY: plain kill(2) on our own child.
                unsafe { libc::kill(nspawn.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = nspawn.try_wait() {
                        break;
                    }
                    sleep(Duration::from_millis(50));
                }
                let _ = nspawn.kill();
                let _ = nspawn.wait();
                let _ = Command::new("umount").arg("-l").arg(&*merged).status();
                let _ = fs::remove_dir_all(&*work);
            }
            Bed::Pid1 { units } => {
                // Sockets first, so that nothing is activated again while services stop;
                // template instances by pattern.
                let units = std::mem::take(units);
                let names: Vec<String> = units.iter().map(|u| u.replace("@.", "@*.")).collect();
                for batch in [
                    names
                        .iter()
                        .filter(|u| u.ends_with(".socket"))
                        .collect::<Vec<_>>(),
                    names.iter().filter(|u| !u.ends_with(".socket")).collect(),
                ] {
                    let mut args = vec!["stop"];
                    args.extend(batch.iter().map(|u| u.as_str()));
                    let _ = self.systemctl(&args);
                }
                let dir = Path::new("/etc/systemd/system");
                for unit in &units {
                    let _ = fs::remove_file(dir.join(unit));
                    let _ = fs::remove_file(dir.join("sockets.target.wants").join(unit));
                }
                let _ = fs::remove_dir_all(Path::new("/opt/sockact").join(&self.name));
                let _ = self.systemctl(&["daemon-reload"]);
                let _ = self.systemctl(&["reset-failed"]);
            }
        }
    }
}

/// Copies a scenario into the root: units to /etc/systemd/system (sockets enabled), every
/// other file to /opt/sockact/<name>/; `@PORTn@`, `@APP@` and `@APPS@` substituted. Returns
/// the names of the units it installed.
fn install(src: &Path, root: &Path, ports: &BTreeMap<String, u16>, name: &str) -> Vec<String> {
    let mut installed = Vec::new();
    let units = root.join("etc/systemd/system");
    let wants = units.join("sockets.target.wants");
    let app = root.join("opt/sockact").join(name);
    fs::create_dir_all(&wants).unwrap();
    fs::create_dir_all(&app).unwrap();
    let entries = fs::read_dir(src).unwrap_or_else(|e| panic!("scenario {}: {e}", src.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let mut text = fs::read_to_string(&path).unwrap();
        for (k, v) in ports {
            text = text.replace(k, &v.to_string());
        }
        text = text.replace("@APP@", &format!("/opt/sockact/{name}"));
        text = text.replace("@APPS@", &format!("/opt/sockact/{APPS}"));
        let is_unit = [".socket", ".service", ".target"]
            .iter()
            .any(|s| file.ends_with(s));
        let dest = if is_unit {
            units.join(&file)
        } else {
            app.join(&file)
        };
        fs::write(&dest, text).unwrap();
        if file.ends_with(".socket") {
            let _ = std::os::unix::fs::symlink(format!("../{file}"), wants.join(&file));
        }
        if is_unit {
            installed.push(file);
        }
    }
    installed
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A direct child of `parent` whose comm is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let name = &stat[stat.find('(').map_or(0, |i| i + 1)..close];
        let ppid: u32 = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == parent && name == comm {
            return Some(pid);
        }
    }
    None
}

/// The host PID of the process that is `ns_pid` in the PID namespace of `leader`.
pub fn host_pid_of(leader: u32, ns_pid: u32) -> Option<u32> {
    let ns = fs::read_link(format!("/proc/{leader}/ns/pid")).ok()?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let nspid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse::<u32>().ok());
        if nspid == Some(ns_pid) {
            return Some(pid);
        }
    }
    None
}
