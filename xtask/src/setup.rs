//! `cargo xtask setup`: everything a fresh machine needs to build and test sockact, each step
//! checked first and done only when missing.
use std::{os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{Context, bail};

use crate::util::{cache_dir, is_root, output, run_cmd, stdout};

/// Debian packages the build and the tests use: python3 for test servers and clients,
/// systemd for systemd-socket-activate, iproute2 for ss, util-linux for setpriv and unshare,
/// debootstrap and systemd-container (systemd-nspawn) for the real-systemd test bed; rsyslog
/// with its RELP module and prometheus (promtool) for the agent's pipeline tests; g++ for
/// libFuzzer, which the fuzz targets build; qemu, cpio and kmod (depmod) for the kernel matrix's
/// virtual machines.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "cpio",
    "kmod",
    "g++",
    "rsyslog",
    "rsyslog-relp",
    "prometheus",
    "python3",
    "systemd",
    "iproute2",
    "util-linux",
    "debootstrap",
    "systemd-container",
];

pub fn run() -> anyhow::Result<()> {
    let mut report = Report::default();
    debian_packages(&mut report)?;
    nightly(&mut report)?;
    bpf_linker(&mut report)?;
    report.print();
    Ok(())
}

#[derive(Default)]
struct Report {
    installed: Vec<String>,
    present: Vec<String>,
}

impl Report {
    fn print(&self) {
        if self.installed.is_empty() {
            println!("setup: nothing to install");
        } else {
            println!("setup: installed {}", self.installed.join(", "));
        }
        println!("setup: already there: {}", self.present.join(", "));
    }
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn debian_packages(report: &mut Report) -> anyhow::Result<()> {
    install_packages(PACKAGES, report)
}

/// Debian's packages the benchmarks add: the load (nginx-light, wrk) and the peers measured
/// beside sockact (bpftrace; bpftool reads the kernel's per-program accounting).
const BENCH_PACKAGES: &[&str] = &["nginx-light", "wrk", "bpftrace", "bpftool"];

/// What `cargo xtask bench` needs beyond the tests.
pub fn bench_packages() -> anyhow::Result<()> {
    let mut report = Report::default();
    install_packages(BENCH_PACKAGES, &mut report)?;
    report.print();
    Ok(())
}

fn install_packages(packages: &[&str], report: &mut Report) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    for p in packages.iter().filter(|p| !missing.contains(p)) {
        report.present.push(format!("deb:{p}"));
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; run `cargo xtask setup` as root, or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    report
        .installed
        .extend(missing.iter().map(|p| format!("deb:{p}")));
    Ok(())
}

/// cargo-fuzz (libFuzzer through `cargo +nightly fuzz`), for `cargo xtask fuzz` and the tests.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    let nightly = format!("+{}", crate::util::pinned_nightly()?);
    let works = output(Command::new("cargo").args([nightly.as_str(), "fuzz", "--version"]))
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    println!("setup: building cargo-fuzz (about a minute)");
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--version", "^0.13", "--locked"]))
}

/// The nightly toolchain with rust-src (`-Z build-std=core` for bpfel-unknown-none), the one
/// sockact-ebpf/rust-toolchain.toml pins.
fn nightly(report: &mut Report) -> anyhow::Result<()> {
    let nightly = crate::util::pinned_nightly()?;
    let nightly = nightly.as_str();
    let toolchains = stdout(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(nightly)) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        report.installed.push(format!("rust:{nightly}"));
    } else {
        report.present.push(format!("rust:{nightly}"));
    }
    let components = stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        nightly,
    ]))?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        report.present.push("rust-src".into());
    } else {
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            nightly,
        ]))?;
        report.installed.push("rust-src".into());
    }
    Ok(())
}

/// The nightly's LLVM: its major version and the path of its shared library.
fn nightly_llvm() -> anyhow::Result<(String, std::path::PathBuf, String)> {
    let nightly = crate::util::pinned_nightly()?;
    let nightly = nightly.as_str();
    let vv = stdout(Command::new("rustc").args([format!("+{nightly}").as_str(), "-vV"]))?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let llvm = field("LLVM version:").context("rustc +nightly -vV prints no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default().to_owned();
    let commit = field("commit-hash:").unwrap_or_default();
    let sysroot =
        stdout(Command::new("rustc").args([format!("+{nightly}").as_str(), "--print", "sysroot"]))?;
    let lib = std::fs::read_dir(Path::new(&sysroot).join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {sysroot}/lib"))?;
    Ok((major, lib, commit))
}

/// bpf-linker built against the nightly's own LLVM (no system LLVM needed). A stamp records
/// which nightly it was built for; a new nightly rebuilds it.
fn bpf_linker(report: &mut Report) -> anyhow::Result<()> {
    let (major, libllvm, commit) = nightly_llvm()?;
    let stamp_path = cache_dir().join("bpf-linker.stamp");
    let stamp = format!("{commit} llvm-{major}");
    let works = output(Command::new("bpf-linker").arg("--version"))
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s.trim() == stamp) {
        report.present.push(format!("bpf-linker (LLVM {major})"));
        return Ok(());
    }
    // The prefix path is built into the binary: it must stay where it is.
    let prefix = cache_dir().join(format!("llvm-{major}"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let name = libllvm.file_name().context("libLLVM has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(name)] {
        let _ = std::fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    println!("setup: building bpf-linker against LLVM {major} (about a minute)");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                // The dependencies it was released with: a fresh machine builds what was tested.
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp_path, stamp)?;
    report.installed.push(format!("bpf-linker (LLVM {major})"));
    Ok(())
}
