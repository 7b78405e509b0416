//! The real-unit corpus: Debian packages that ship socket units, installed into a copy of the
//! test root the way apt installs them (their maintainer scripts enable what Debian enables;
//! nothing is started), built once and cached. The suite lints every socket unit of it with
//! `lint --root`: units others wrote, which prove what ours cannot.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{
    rootfs,
    util::{cache_dir, cached, is_root, run_cmd},
};

/// Packages with system socket units of every shape Debian ships: Accept=yes instances (ssh,
/// saned, tang), datagram and netlink listeners (rpcbind, systemd's own), forking daemons
/// (gpsd), services Debian runs standalone with a socket that is opt-in (dovecot, libvirt's
/// tcp/tls), FIFO and sequential-packet listeners; and user units (pipewire, gpg-agent, the
/// session bus, podman, mpd). Changing this list rebuilds the corpus.
pub const PACKAGES: &[&str] = &[
    "openssh-server",
    "cups-daemon",
    "uuid-runtime",
    "avahi-daemon",
    "sane-utils",
    "pcscd",
    "rpcbind",
    "gpsd",
    "tang",
    "cockpit-ws",
    "dovecot-core",
    "mpd",
    "docker.io",
    "podman",
    "libvirt-daemon-system",
    "lvm2",
    "open-iscsi",
    "multipath-tools",
    "systemd-journal-remote",
    "knot-resolver",
    "dbus-user-session",
    "pipewire",
    "gpg-agent",
];

pub fn dir() -> PathBuf {
    cache_dir().join("corpus-bookworm")
}

/// Its packages and the root it copies: a new test root makes a new corpus.
fn stamp() -> String {
    format!("{} + {}", rootfs::stamp(), PACKAGES.join(" "))
}

/// Builds the corpus unless the cached one matches; returns its path.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let dir = dir();
    if cached("corpus", &dir, ".sockact-corpus", &stamp()) {
        return Ok(dir);
    }
    if !is_root() {
        bail!(
            "building the unit corpus needs root (apt in a chroot): run `cargo xtask test` as root"
        );
    }
    let base = rootfs::ensure()?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "corpus: installing {} Debian packages with socket units (a few minutes)",
        PACKAGES.len()
    );
    run_cmd(Command::new("cp").arg("-a").arg(&base).arg(&tmp))?;
    let result = install(&tmp);
    let _ = std::fs::remove_file(tmp.join("usr/sbin/policy-rc.d"));
    result?;
    // The packages' files stay; apt's downloads and lists go.
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let _ = std::fs::remove_dir_all(tmp.join(cache));
    }
    std::fs::write(tmp.join(".sockact-corpus"), stamp())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    println!("corpus: ready at {}", dir.display());
    Ok(dir)
}

/// apt-get install in the root, as a package install on a host: maintainer scripts run and
/// enable units, policy-rc.d keeps every service from starting.
fn install(root: &Path) -> anyhow::Result<()> {
    let policy = root.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .context("the chroot's name resolution")?;
    // The registry serves a snapshot whose Release files are past their date.
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(root)
            .args([
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "-q",
                "-y",
            ])
            .args([
                "-o",
                "Acquire::Check-Valid-Until=false",
                "-o",
                "Acquire::Check-Date=false",
            ])
            .args(args);
        cmd
    };
    run_cmd(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "--no-install-recommends"]);
    install.args(PACKAGES);
    run_cmd(&mut install).context("installing the corpus packages")
}
