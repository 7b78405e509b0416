//! `sockact-agent`: the always-on daemon (DESIGN.md, "sockact-agent").
use sockact_agent::{
    agent::{self, AgentArgs},
    logging,
};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: AgentArgs = sockact_agent::cli::parse_or_exit();
    logging::init(args.verbose, args.kernel_log);
    if args.check_config {
        return match agent::check(&args) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sockact-agent: {e}");
                ExitCode::from(2)
            }
        };
    }
    // One thread for the session and the network sinks (stdout and files write from threads
    // of their own): no hand-offs between workers for every event.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sockact-agent: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(agent::run(args));
    // A write stuck in a blocking thread (a stdout nobody reads) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockact-agent: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
