//! Running commands and finding the workspace.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command with inherited output; fails with the command line when it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its output, whether or not it succeeded.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("starting {cmd:?}"))
}

/// stdout of a command that must succeed, trimmed.
pub fn stdout(cmd: &mut Command) -> anyhow::Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// ~/.cache/sockact: what setup builds once and keeps.
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/sockact")
}

/// Whether `dir` holds a build made from `stamp` (its file `stamp_file` says so); says so when
/// it does.
pub fn cached(what: &str, dir: &Path, stamp_file: &str, stamp: &str) -> bool {
    let fresh = std::fs::read_to_string(dir.join(stamp_file)).is_ok_and(|s| s.trim() == stamp);
    if fresh {
        println!("{what}: cached at {}", dir.display());
    }
    fresh
}

/// Builds the binaries the demo and the privileged tests run.
/// The release binaries (sockact-agent, sockact-trace).
pub fn build_release() -> anyhow::Result<()> {
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "sockact-agent",
        "--bins",
    ]))
}

pub fn build_binaries() -> anyhow::Result<()> {
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "build",
        "-p",
        "sockact-agent",
        "--bins",
    ]))
}

/// The nightly toolchain sockact-ebpf/rust-toolchain.toml pins (`nightly-YYYY-MM-DD`).
pub fn pinned_nightly() -> anyhow::Result<String> {
    let path = root().join("sockact-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .map(str::to_owned)
        .with_context(|| format!("no channel in {}", path.display()))
}
