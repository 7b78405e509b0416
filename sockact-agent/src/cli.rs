//! sockact-trace's command line (DESIGN.md, "sockact-trace"), validated once into a
//! [`TraceConfig`].
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{detect::Thresholds, output::Format};

/// Trace systemd socket-activated services with eBPF: who binds, listens and accepts, and
/// whether they use the sockets systemd passes them.
///
/// With no selector: every socket-activated process and systemd's listeners.
#[derive(Debug, Parser)]
#[command(name = "sockact-trace", version)]
pub struct Cli {
    /// Trace every process, not only socket-activated ones.
    #[arg(long)]
    pub all: bool,

    /// Trace this process and its children (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace a unit: `myapp`, `myapp.socket` or `myapp.service` name the service and every
    /// socket unit that triggers it (repeatable).
    #[arg(long = "unit", value_name = "NAME", value_parser = parse_unit)]
    pub units: Vec<String>,

    /// Talk to another systemd: its bus (`unix:path=/proc/PID/root/run/dbus/system_bus_socket`)
    /// or its private socket (`unix:path=/proc/PID/root/run/systemd/private`, peer-to-peer).
    /// Default: the system bus.
    #[arg(long, value_name = "ADDRESS", global = true)]
    pub systemd_bus: Option<String>,

    /// Trace whoever binds, listens, accepts or connects on this port (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Output format: text on a terminal, json (NDJSON v1) otherwise.
    #[arg(long, value_enum, global = true)]
    pub format: Option<Format>,

    /// Stop by itself after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// Change a rule threshold, e.g. `fds_ignored.after_ms=5000` (repeatable).
    #[arg(long = "set", value_name = "RULE.KEY=VALUE", global = true, value_parser = parse_set)]
    pub set: Vec<String>,

    /// Show the probes' own diagnostics (aya-log) on stderr.
    #[arg(long)]
    pub kernel_log: bool,

    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the detectors over a recorded NDJSON stream (no root needed).
    Replay {
        /// The recorded stream, or - for stdin.
        #[arg(value_name = "FILE|-")]
        file: String,
    },
    /// Prove socket activation on a live unit: listening, cold activation, warm requests,
    /// re-activation after a kill, a restart under client load, still listening; exit 1 when a
    /// check fails. It stops, kills and restarts the unit.
    Verify {
        /// The unit: `myapp`, `myapp.socket` or `myapp.service`.
        #[arg(long, value_name = "NAME")]
        unit: String,
        /// Do not ask before stopping anything.
        #[arg(long)]
        yes: bool,
        /// Send an HTTP GET for PATH on every connection and check its status.
        #[arg(long, value_name = "PATH")]
        http: Option<String>,
        /// Clients connecting during the restart.
        #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
        clients: u16,
    },
    /// Check unit files for socket-activation mistakes (no root needed); exit 1 on a warning
    /// or an error.
    Lint {
        /// Unit files, directories of them, or unit names looked up in systemd's search path
        /// (SYSTEMD_UNIT_PATH when set); none: every socket unit there.
        #[arg(value_name = "PATH|UNIT")]
        units: Vec<String>,
        /// Read units, drop-ins, aliases, masks and enablement inside this root only (as
        /// `systemd-analyze --root`), e.g. a container's or an image's.
        #[arg(long, value_name = "DIR")]
        root: Option<std::path::PathBuf>,
        /// Lint user units (a user manager's search path) instead of system units.
        #[arg(long)]
        user: bool,
        /// Also report what is often a deliberate choice: every interface listened on, a
        /// service running as root, a unix socket without SocketMode=.
        #[arg(long)]
        pedantic: bool,
    },
}

/// Parses the command line. A usage error is printed as clap words it, but plain and with
/// control characters in what the user typed escaped (a unit name holding ESC must not reach
/// the terminal raw), and exits 2; help and version print and exit 0.
pub fn parse_or_exit<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            for line in text.lines() {
                eprintln!("{}", crate::text::for_terminal(line));
            }
            std::process::exit(2);
        }
    }
}

pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("'{s}' must be a positive number of seconds"));
    }
    // The deadline is now + SECS on the monotonic clock: a duration it cannot hold is as
    // wrong as a negative one.
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| std::time::Instant::now().checked_add(*d).is_some())
        .ok_or_else(|| format!("'{s}' seconds is further than this machine's clock reaches"))
}

pub(crate) fn parse_unit(s: &str) -> Result<String, String> {
    crate::systemd::check_unit_name(s).map(|()| s.to_owned())
}

pub(crate) fn parse_set(s: &str) -> Result<String, String> {
    Thresholds::default()
        .apply(s)
        .map(|()| s.to_owned())
        // clap names the value already: keep only what is wrong with it.
        .map_err(|e| {
            let msg = e.to_string();
            msg.split_once(": ")
                .map_or(msg.clone(), |(_, why)| why.to_owned())
        })
}

/// What to trace and how to print it.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub all: bool,
    pub pids: Vec<u32>,
    pub units: Vec<String>,
    /// Units never shown (the agent's `exclude_units`).
    pub exclude_units: Vec<String>,
    pub systemd_bus: Option<String>,
    pub ports: Vec<u16>,
    pub format: Format,
    pub duration: Option<Duration>,
    pub kernel_log: bool,
    pub thresholds: Thresholds,
    /// Keep running when the kernel lets a core family of events (exec, bind, listen, accept)
    /// attach nowhere (the agent), instead of failing (`sockact-trace`).
    pub run_degraded: bool,
}

impl Cli {
    /// The thresholds with every `--set` applied (each was checked when parsed).
    pub fn thresholds(&self) -> Thresholds {
        let mut t = Thresholds::default();
        for s in &self.set {
            t.apply(s).expect("checked by the parser");
        }
        t
    }

    pub fn trace_config(&self) -> TraceConfig {
        TraceConfig {
            all: self.all,
            pids: self.pids.clone(),
            units: self.units.clone(),
            exclude_units: Vec::new(),
            systemd_bus: self.systemd_bus.clone(),
            ports: self.ports.clone(),
            format: self.format.unwrap_or_else(Format::default_for_stdout),
            duration: self.duration,
            kernel_log: self.kernel_log,
            thresholds: self.thresholds(),
            run_degraded: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_repeat_and_combine() {
        let cli = Cli::try_parse_from([
            "sockact-trace",
            "--pid",
            "1",
            "--pid",
            "2",
            "--port",
            "8080",
            "--format",
            "json",
            "--duration",
            "1.5",
        ])
        .unwrap();
        let c = cli.trace_config();
        assert_eq!(c.pids, [1, 2]);
        assert_eq!(c.ports, [8080]);
        assert_eq!(c.format, Format::Json);
        assert_eq!(c.duration, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn set_is_global_and_changes_a_threshold() {
        let cli = Cli::try_parse_from([
            "sockact-trace",
            "replay",
            "-",
            "--set",
            "fds_ignored.after_ms=500",
        ])
        .unwrap();
        assert_eq!(cli.thresholds().get("fds_ignored", "after_ms"), 500);
        assert_eq!(
            cli.trace_config().thresholds.get("cold_start", "warn_ms"),
            1000
        );
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for args in [
            &["sockact-trace", "--nope"][..],
            &["sockact-trace", "--duration", "-1"],
            &["sockact-trace", "--duration", "soon"],
            &["sockact-trace", "--duration", "1e30"],
            &["sockact-trace", "--unit", ""],
            &["sockact-trace", "--unit", "a/b"],
            &["sockact-trace", "--duration", "9.3e18"],
            &["sockact-trace", "--port", "0"],
            &["sockact-trace", "--format", "xml"],
            &["sockact-trace", "--set", "fds_ignored.after=1"],
            &["sockact-trace", "--set", "fds_ignored.after_ms"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
