//! `cargo xtask soak`: the soak of the test suite (tests/src/soak.rs), for as long as asked.
use std::time::Duration;

use anyhow::bail;
use sockact_tests::soak::{self, Options};

use crate::{
    rootfs, setup,
    util::{build_binaries, is_root},
};

pub fn run(minutes: f64, clients: usize, rate: u32) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the soak loads eBPF programs and boots a container: run `cargo xtask soak` as root");
    }
    setup::run()?;
    build_binaries()?;
    let rootfs = rootfs::ensure()?;
    // SAFETY: single-threaded here; the test bed reads these.
    unsafe {
        std::env::set_var("SOCKACT_ROOTFS", &rootfs);
        std::env::set_var(
            "SOCKACT_TRACE_BIN",
            crate::util::root().join("target/debug/sockact-trace"),
        );
    }
    let report = soak::run(&Options {
        duration: Duration::from_secs_f64(minutes * 60.0),
        clients,
        rate,
        restart_every: Duration::from_secs(3),
        sample_every: Duration::from_secs(30),
    });
    report.print();
    let last = report.last();
    if last.lost > 0 || last.sink_dropped > 0 {
        bail!(
            "{} events lost, {} dropped by sinks",
            last.lost,
            last.sink_dropped
        );
    }
    Ok(())
}
