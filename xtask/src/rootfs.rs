//! `cargo xtask rootfs`: a Debian root with systemd for the end-to-end test bed, built once with
//! debootstrap and cached. systemd-nspawn boots it (PID 1 in its own PID namespace); each
//! scenario runs on an overlay of it, so the cached root is never written.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

use crate::util::{cache_dir, cached, is_root, run_cmd};

const SUITE: &str = "bookworm";
/// systemd and its bus (dbus: the system bus the agent talks to), python3 for the scenarios'
/// servers, iproute2 for ss, procps for the /bin/kill that units' ExecReload= call (as on any
/// full Debian), kmod so that the kernel matrix's VMs load sock_diag's modules on demand as a
/// real host does. Changing this list rebuilds the root.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,python3,iproute2,procps,kmod";

pub fn dir() -> PathBuf {
    cache_dir().join(format!("rootfs-{SUITE}"))
}

/// What the root is built from: a change rebuilds it, and what is built on it.
pub fn stamp() -> String {
    format!("{SUITE} {PACKAGES}")
}

/// The mirror the host's apt uses, so the root comes from the same registry.
pub fn mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("URIs:"))
                .map(|u| u.trim().to_owned())
                .find(|u| u.ends_with("/debian"))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// Builds the root unless the cached one matches; returns its path.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let dir = dir();
    if cached("rootfs", &dir, ".sockact-rootfs", &stamp()) {
        return Ok(dir);
    }
    if !is_root() {
        bail!("building the test root needs root (debootstrap): run `cargo xtask rootfs` as root");
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    println!("rootfs: building a {SUITE} root with debootstrap (about two minutes)");
    run_cmd(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
            .arg(&tmp)
            .arg(mirror()),
    )
    .context("debootstrap (cargo xtask setup installs it)")?;
    // Quiet, fast boots: no consoles to spawn, a fixed machine id, a hostname.
    std::fs::write(tmp.join("etc/hostname"), "sockact-testbed\n")?;
    for unit in [
        "getty@tty1.service",
        "console-getty.service",
        "systemd-networkd.service",
    ] {
        let link = tmp.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)?;
    }
    std::fs::write(tmp.join(".sockact-rootfs"), stamp())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    println!("rootfs: ready at {}", dir.display());
    Ok(dir)
}
