//! `cargo xtask test`: installs what is missing, then runs the three tiers: pure logic (no root),
//! kernel tests (real programs, real syscalls) and end-to-end tests (root).
use std::process::Command;

use anyhow::bail;

use crate::{
    corpus, fuzz, rootfs, setup,
    util::{build_binaries, build_release, is_root, root, run_cmd},
    vm,
};

/// Seconds each fuzz target runs in the suite (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS: u64 = 20;

pub fn run(kernels: &[String], args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    let root = root();
    // The code as committed is formatted and lint-free (the workspace's lints, warnings as
    // errors), the eBPF crate included.
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "fmt",
        "--manifest-path",
        "sockact-ebpf/Cargo.toml",
        "--",
        "--check",
    ]))?;
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The binaries the privileged tests drive.
    build_binaries()?;
    if !kernels.is_empty() {
        build_release()?;
        return vm::test(kernels, args);
    }
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args([
                "test",
                "-p",
                "sockact-common",
                "-p",
                "sockact-agent",
                "-p",
                "xtask",
                "--",
            ])
            .args(args),
    )?;
    // Every parser of untrusted input, fuzzed briefly; every crash ever found runs first.
    fuzz::run(FUZZ_SECONDS, &[])?;
    if !is_root() {
        bail!(
            "the kernel and end-to-end tests need root (they load eBPF programs): run `cargo xtask test` as root"
        );
    }
    // The real-systemd test bed's root, built once and cached; and real Debian packages' units
    // installed into a copy of it, for lint.
    let rootfs = rootfs::ensure()?;
    let corpus = corpus::ensure()?;
    // One at a time: scenarios boot containers, and tracers see the whole machine.
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "-p", "sockact-tests", "--", "--test-threads=1"])
            .args(args)
            .env("SOCKACT_TRACE_BIN", root.join("target/debug/sockact-trace"))
            .env("SOCKACT_ROOTFS", rootfs)
            .env("SOCKACT_CORPUS", corpus),
    )?;
    // The same core cases and one scenario per rule on every kernel of the matrix.
    build_release()?;
    vm::test(&[], args)
}
