//! Project chores: `cargo xtask setup | test | demo`. Orchestration only; the build itself is
//! plain cargo (sockact-agent's build.rs builds the eBPF programs).
mod demo;
mod rootfs;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need (idempotent).
    Setup,
    /// Install what is missing, then run every test: pure logic, kernel and end to end.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Trace a sample socket-activated service live.
    Demo,
    /// Build (once) the Debian root with systemd that the end-to-end tests boot.
    Rootfs,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { args } => test::run(&args),
        Command::Demo => demo::run(),
        Command::Rootfs => rootfs::ensure().map(|_| ()),
    }
}
