//! `sockact-trace`: ad hoc tracing of socket-activated services (DESIGN.md, "sockact-trace").
use std::process::ExitCode;

use clap::Parser;
use sockact_agent::{cli::Cli, logging, trace};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.kernel_log);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sockact-trace: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(trace::run(cli.trace_config())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockact-trace: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
