//! `sockact-trace`: ad hoc tracing of socket-activated services (DESIGN.md, "sockact-trace").
use std::process::ExitCode;

use sockact_agent::{
    cli::{Cli, Command},
    lint, logging,
    output::Format,
    replay, trace, verify,
};

fn main() -> ExitCode {
    let cli: Cli = sockact_agent::cli::parse_or_exit();
    logging::init(cli.verbose, cli.kernel_log);
    if let Some(Command::Lint {
        units,
        root,
        user,
        pedantic,
    }) = &cli.command
    {
        let format = cli.format.unwrap_or_else(Format::default_for_stdout);
        let scope = lint::load::Scope {
            root: root.clone(),
            user: *user,
        };
        return match lint::run(units, &scope, *pedantic, format) {
            Ok(problems) => ExitCode::from(u8::from(problems)),
            Err(e) => {
                eprintln!("sockact-trace: lint: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Replay { file }) = &cli.command {
        let format = cli.format.unwrap_or_else(Format::default_for_stdout);
        return match replay::run(file, format, cli.thresholds()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sockact-trace: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
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
    if let Some(Command::Verify {
        unit,
        yes,
        http,
        clients,
    }) = &cli.command
    {
        let config = verify::VerifyConfig {
            unit: unit.clone(),
            systemd_bus: cli.systemd_bus.clone(),
            format: cli.format.unwrap_or_else(Format::default_for_stdout),
            yes: *yes,
            http: http.clone(),
            clients: usize::from(*clients),
        };
        return match runtime.block_on(verify::run(config)) {
            Ok(ok) => ExitCode::from(u8::from(!ok)),
            Err(e) => {
                eprintln!("sockact-trace: verify: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        };
    }
    match runtime.block_on(trace::run(cli.trace_config())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockact-trace: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
