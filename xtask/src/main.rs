//! Project chores: `cargo xtask setup | test | demo | bench | fuzz | soak | install`. Orchestration only; the build itself is
//! plain cargo (sockact-agent's build.rs builds the eBPF programs).
mod bench;
mod corpus;
mod demo;
mod fuzz;
mod install;
mod rootfs;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

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
    /// Install what is missing, then run every test: pure logic, kernel and end to end on this
    /// machine's kernel, then the kernel matrix (Debian's 5.10, 6.1 and 6.12 under qemu).
    Test {
        /// Only the kernel matrix, on this kernel (5.10, 6.1, 6.12); repeatable.
        #[arg(long, value_name = "SERIES")]
        kernel: Vec<String>,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Boot one kernel of the matrix under qemu with the test root and a root shell on this
    /// terminal, for debugging.
    Vm {
        #[arg(long, value_name = "SERIES")]
        kernel: String,
        /// Run this shell command in the VM instead (sockact's binaries on its PATH), print its
        /// output, power off.
        #[arg(long, value_name = "COMMAND")]
        run: Option<String>,
    },
    /// Trace a sample socket-activated service live.
    Demo,
    /// Build (once) the Debian root with systemd that the end-to-end tests boot.
    Rootfs,
    /// Build (once) the root with real Debian packages' socket units that the suite lints.
    Corpus,
    /// Measure sockact beside its peers: in-kernel cost against the floor, throughput on
    /// unrelated and watched load, memory, start-up and the userspace pipeline.
    Bench {
        /// Interleaved rounds of the throughput comparisons.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Seconds of load per run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Fuzz every parser of untrusted input (cargo fuzz, libFuzzer) for a bounded time each,
    /// from seeds taken from recorded data; every crash ever found runs first.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (record, exec_env, sockaddr, replay, unit_file, agent_config).
        targets: Vec<String>,
    },
    /// Drive watched load (a socket-activated service, restarts every 3 s) through
    /// sockact-agent with a file and a RELP sink; report events, findings, losses and RSS.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Client threads.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Connections a second, all clients together.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
    },
    /// Install the binaries, sockact-agent's unit and its example configuration (kept when
    /// one exists), then reload systemd.
    Install {
        /// Install under this directory instead of / (a staging root, an image).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: std::path::PathBuf,
        /// Where the binaries go, as the running system sees it.
        #[arg(long, value_name = "DIR", default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Install the debug build.
        #[arg(long)]
        debug: bool,
        /// Do not run `systemctl daemon-reload`.
        #[arg(long)]
        no_reload: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { kernel, args } => test::run(&kernel, &args),
        Command::Vm { kernel, run } => {
            setup::run()?;
            util::build_release()?;
            match run {
                Some(command) => vm::run_command(&kernel, &command),
                None => vm::shell(&kernel),
            }
        }
        Command::Demo => demo::run(),
        Command::Rootfs => rootfs::ensure().map(|_| ()),
        Command::Corpus => corpus::ensure().map(|_| ()),
        Command::Bench { rounds, seconds } => bench::run(&bench::Options { rounds, seconds }),
        Command::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
        Command::Soak {
            minutes,
            clients,
            rate,
        } => soak::run(minutes, clients, rate),
        Command::Install {
            root,
            prefix,
            debug,
            no_reload,
        } => install::run(&install::Options {
            dest: root,
            prefix,
            debug,
            no_reload,
        }),
    }
}
