//! The kernel matrix: Debian's own cloud kernels booted under qemu (TCG: this machine's CPU has
//! no VMX) with the test root as an initramfs and its systemd as PID 1, running the suite's core
//! kernel cases and one end-to-end scenario per rule on that systemd. `cargo xtask test` runs
//! every kernel of [`kernels::MATRIX`], `--kernel 6.1` one; `cargo xtask vm --kernel 6.1` boots
//! one with a root shell on the terminal.
pub mod initramfs;
pub mod kernels;
mod suite;

use std::{
    fs,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    rootfs,
    util::{cache_dir, root, run_cmd},
    vm::{initramfs::Payload, kernels::Kernel},
};

/// Where the payload lives inside the VM.
const OPT: &str = "/opt/sockact-vm";
/// The driver's last line: `sockact-vm: result N`, N the number of failed test binaries.
const RESULT: &str = "sockact-vm: result ";
/// VMs booted at once: one host core each.
const PARALLEL_VMS: usize = 2;
/// A boot that runs longer than this is stopped and failed.
const BOOT_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The test binaries of sockact-tests, built for the VM: (target name, executable).
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = Command::new("cargo")
        .current_dir(root())
        .args([
            "test",
            "-p",
            "sockact-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

/// What a boot is for.
enum Purpose {
    /// Run the driver and power off; the matrix's own tests, or only those matching these
    /// filters.
    Tests(Vec<String>),
    /// A root shell on the serial console.
    Shell,
    /// One shell command, its output copied here, then power off.
    Run(String),
}

/// The payload: sockact's binaries, the test binaries, the scenarios where the tests look for
/// them, and the driver (or the shell's autologin).
fn payload(purpose: &Purpose, series: &str) -> anyhow::Result<Payload> {
    let root = root();
    let opt = PathBuf::from(OPT);
    let mut p = Payload {
        files: Vec::new(),
        trees: Vec::new(),
        texts: Vec::new(),
        links: Vec::new(),
    };
    // Release builds: one emulated CPU runs the tracers beside the services they watch, and a
    // debug build's own CPU time would show in every figure.
    for bin in ["sockact-trace", "sockact-agent"] {
        p.files.push((
            opt.join("bin").join(bin),
            root.join("target/release").join(bin),
        ));
    }
    // Not where the checkout is: a checkout under /tmp would be emptied by the VM's boot.
    p.trees
        .push((opt.join("scenarios"), root.join("tests/scenarios")));
    let system = PathBuf::from("/etc/systemd/system");
    match purpose {
        Purpose::Tests(filters) => {
            let binaries = test_binaries()?;
            for (name, exe) in &binaries {
                p.files.push((opt.join("bin").join(name), exe.clone()));
            }
            p.texts
                .push((opt.join("run"), suite::driver(OPT, series, filters), 0o755));
            driver_unit(&mut p);
        }
        Purpose::Run(command) => {
            p.texts.push((
                opt.join("run"),
                format!(
                    "#!/bin/sh\nexec >/dev/ttyS1 2>&1\nstty -F /dev/ttyS1 -opost 2>/dev/null\n\
                     export SOCKACT_TESTBED=pid1 SOCKACT_SCENARIOS={OPT}/scenarios \
                     PATH={OPT}/bin:$PATH HOME=/root\n\
                     ( {command} )\necho \"{RESULT}$?\"\n"
                ),
                0o755,
            ));
            driver_unit(&mut p);
        }
        Purpose::Shell => {
            p.texts.push((
                system.join("serial-getty@ttyS0.service.d/autologin.conf"),
                "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear \
                 --keep-baud 115200 %I $TERM\n"
                    .into(),
                0o644,
            ));
            p.links.push((
                system.join("getty.target.wants/serial-getty@ttyS0.service"),
                PathBuf::from("/lib/systemd/system/serial-getty@.service"),
            ));
        }
    }
    Ok(p)
}

/// The oneshot unit that runs the driver once the sockets are up, then powers off.
fn driver_unit(p: &mut Payload) {
    let system = PathBuf::from("/etc/systemd/system");
    p.texts.push((
        system.join("sockact-vm.service"),
        format!(
            "[Unit]\nDescription=sockact kernel matrix driver\n\
             After=sockets.target basic.target\n\n\
             [Service]\nType=oneshot\nExecStart={OPT}/run\n\
             ExecStopPost=/bin/systemctl --no-block poweroff\n\
             TimeoutStartSec=infinity\n"
        ),
        0o644,
    ));
    p.links.push((
        system.join("multi-user.target.wants/sockact-vm.service"),
        PathBuf::from("../sockact-vm.service"),
    ));
}

/// Everything one boot needs, in `work`.
fn prepare(series: kernels::Series, purpose: &Purpose, work: &Path) -> anyhow::Result<Kernel> {
    let kernel = kernels::ensure(series)?;
    let rootfs = rootfs::ensure()?;
    let base = initramfs::root_archive(&rootfs)?;
    let modules = initramfs::modules_archive(&kernel)?;
    fs::create_dir_all(work)?;
    let extra = work.join("payload.cpio");
    initramfs::payload_archive(&payload(purpose, series.name)?, &extra)?;
    initramfs::concatenate(&[&base, &modules, &extra], &work.join("initrd"))?;
    let _ = fs::remove_file(&extra);
    Ok(kernel)
}

fn qemu(kernel: &Kernel, work: &Path, console: &str, driver: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // TCG, one CPU: KVM needs VMX, which this machine's CPU lacks; two CPUs under TCG were seen
    // to panic in the kernel's text patching.
    cmd.args([
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-m",
        "3G",
        "-nodefaults",
        "-no-reboot",
    ])
    .args(["-display", "none"])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(work.join("initrd"))
    .args([
        "-append",
        "console=ttyS0 rdinit=/lib/systemd/systemd panic=-1 systemd.show_status=0",
    ])
    .args(["-serial", console, "-serial", driver]);
    cmd
}

/// Boots each kernel and runs the matrix's tests in it; fails when any of them failed.
pub fn test(names: &[String], filters: &[String]) -> anyhow::Result<()> {
    let series: Vec<kernels::Series> = if names.is_empty() {
        kernels::MATRIX.to_vec()
    } else {
        names
            .iter()
            .map(|n| kernels::series(n))
            .collect::<anyhow::Result<_>>()?
    };
    // Prepared one after another (they share the cached archives), booted two at a time: each
    // VM is one emulated CPU, one host core.
    let mut ready = Vec::new();
    for s in series {
        let work = cache_dir().join("vm").join(format!("run-{}", s.name));
        let _ = fs::remove_dir_all(&work);
        let kernel = prepare(s, &Purpose::Tests(filters.to_vec()), &work)?;
        ready.push((s, kernel, work));
    }
    let queue = std::sync::Mutex::new(ready);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_VMS {
            scope.spawn(|| {
                loop {
                    let Some((s, kernel, work)) = queue.lock().expect("not poisoned").pop() else {
                        return;
                    };
                    let started = Instant::now();
                    println!("vm {}: booting {} under qemu (TCG)", s.name, kernel.release);
                    let ok = boot_and_follow(&kernel, &work, s.name).unwrap_or_else(|e| {
                        println!("vm {}: {e:#}", s.name);
                        false
                    });
                    println!(
                        "vm {}: {} in {:.0} s",
                        s.name,
                        if ok { "passed" } else { "FAILED" },
                        started.elapsed().as_secs_f64()
                    );
                    if !ok {
                        failed
                            .lock()
                            .expect("not poisoned")
                            .push(format!("{} ({})", s.name, kernel.release));
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().expect("not poisoned");
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Boots, copies what the driver writes to our stdout as it comes, and returns whether every
/// test passed.
fn boot_and_follow(kernel: &Kernel, work: &Path, name: &str) -> anyhow::Result<bool> {
    let console = work.join("console.log");
    let driver = work.join("driver.log");
    fs::write(&driver, "")?;
    let mut child: Child = qemu(
        kernel,
        work,
        &format!("file:{}", console.display()),
        &format!("file:{}", driver.display()),
    )
    .stdin(Stdio::null())
    .spawn()
    .context("qemu-system-x86_64 (package qemu-system-x86; cargo xtask setup installs it)")?;
    let mut reader = BufReader::new(fs::File::open(&driver)?);
    let mut pos = 0u64;
    let mut result = None;
    let started = Instant::now();
    let mut partial = String::new();
    loop {
        let exited = child.try_wait()?.is_some();
        reader.seek(SeekFrom::Start(pos))?;
        let mut buf = String::new();
        while reader.read_line(&mut buf)? > 0 {
            pos += buf.len() as u64;
            partial.push_str(&buf);
            buf.clear();
            if !partial.ends_with('\n') {
                continue;
            }
            let line = partial.trim_end_matches(['\r', '\n']).to_owned();
            partial.clear();
            println!("vm {name}| {line}");
            if let Some(n) = line.strip_prefix(RESULT) {
                result = n.trim().parse::<u32>().ok();
            }
        }
        if exited {
            break;
        }
        if started.elapsed() > BOOT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            println!("vm {name}: stopped after {BOOT_LIMIT:?}");
            break;
        }
        sleep(Duration::from_millis(200));
    }
    match result {
        Some(0) => Ok(true),
        Some(n) => {
            println!("vm {name}: {n} test binaries failed");
            Ok(false)
        }
        None => {
            let tail: Vec<String> = fs::read_to_string(&console)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(40)
                .map(str::to_owned)
                .collect();
            println!(
                "vm {name}: the driver gave no result; the console's last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            Ok(false)
        }
    }
}

/// `cargo xtask vm --kernel K --run CMD`: CMD in the VM (sockact's binaries on its PATH), its
/// output here; fails when CMD does.
pub fn run_command(name: &str, command: &str) -> anyhow::Result<()> {
    let s = kernels::series(name)?;
    let work = cache_dir().join("vm").join(format!("cmd-{}", s.name));
    let _ = fs::remove_dir_all(&work);
    let kernel = prepare(s, &Purpose::Run(command.to_owned()), &work)?;
    if !boot_and_follow(&kernel, &work, s.name)? {
        bail!("`{command}` failed on {}", kernel.release);
    }
    Ok(())
}

/// `cargo xtask vm --kernel K`: a root shell on the terminal (Ctrl-A X quits qemu).
pub fn shell(name: &str) -> anyhow::Result<()> {
    let s = kernels::series(name)?;
    let work = cache_dir().join("vm").join(format!("shell-{}", s.name));
    let _ = fs::remove_dir_all(&work);
    let kernel = prepare(s, &Purpose::Shell, &work)?;
    println!(
        "vm {}: booting {} with a root shell on this terminal; Ctrl-A X quits",
        s.name, kernel.release
    );
    let driver = work.join("driver.log");
    run_cmd(&mut qemu(
        &kernel,
        &work,
        "mon:stdio",
        &format!("file:{}", driver.display()),
    ))
}
