//! Diagnostics go to stderr through `tracing`; stdout is data only.
use tracing_subscriber::EnvFilter;

/// Warnings and errors by default; `-v` info, `-vv` debug; `--kernel-log` adds the probes'
/// own messages.
pub fn init(verbose: u8, kernel_log: bool) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let mut filter = EnvFilter::new(level);
    if kernel_log {
        filter = filter.add_directive("sockact::kernel=trace".parse().expect("valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
}
