//! sockact-agent's command line (DESIGN.md, "sockact-agent"): the config file, and overrides
//! applied on top of it (again at every reload).
use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    cli::{parse_secs, parse_set},
    config::{self, AgentConfig, ConfigError},
};

/// Trace every systemd socket-activated unit, always on: events and findings go to the
/// configured sinks (stdout, files, TCP, unix sockets, RELP, journald), metrics to Prometheus.
///
/// SIGHUP reloads the configuration; SIGTERM flushes every sink and exits.
#[derive(Debug, Parser)]
#[command(name = "sockact-agent", version)]
pub struct AgentArgs {
    /// The configuration file (TOML). Default: /etc/sockact/agent.toml, defaults when missing.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Check the configuration, print it in one line, and exit (2 when it is wrong).
    #[arg(long)]
    pub check_config: bool,

    /// Watch only this unit (repeatable; replaces the config's `watch.units`).
    #[arg(long = "unit", value_name = "NAME", value_parser = crate::cli::parse_unit)]
    pub units: Vec<String>,

    /// Never show this unit (repeatable; added to `watch.exclude_units`).
    #[arg(long = "exclude-unit", value_name = "NAME", value_parser = crate::cli::parse_unit)]
    pub exclude_units: Vec<String>,

    /// Trace every process, not only socket-activated ones (`watch.all_processes`).
    #[arg(long)]
    pub all: bool,

    /// Talk to another systemd (see sockact-trace --help). Default: the system bus.
    #[arg(long, value_name = "ADDRESS")]
    pub systemd_bus: Option<String>,

    /// Change a rule threshold, e.g. `fds_ignored.after_ms=5000` (repeatable; over the
    /// config's `[rules]`).
    #[arg(long = "set", value_name = "RULE.KEY=VALUE", value_parser = parse_set)]
    pub set: Vec<String>,

    /// No Prometheus metrics (`metrics.enabled = false`).
    #[arg(long)]
    pub no_metrics: bool,

    /// Serve metrics on this address (`metrics.listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Stop by itself after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// Show the probes' own diagnostics (aya-log) on stderr.
    #[arg(long)]
    pub kernel_log: bool,

    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl AgentArgs {
    /// The config file and whether it must exist.
    fn source(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(config::DEFAULT_PATH), false),
        }
    }

    /// Reads the config file and applies the overrides.
    pub fn load(&self) -> Result<AgentConfig, ConfigError> {
        let (path, required) = self.source();
        let mut c = AgentConfig::load(&path, required)?;
        self.apply(&mut c);
        Ok(c)
    }

    fn apply(&self, c: &mut AgentConfig) {
        if !self.units.is_empty() {
            c.units.clone_from(&self.units);
        }
        c.exclude_units.extend(self.exclude_units.iter().cloned());
        c.all_processes |= self.all;
        for s in &self.set {
            c.thresholds.apply(s).expect("checked by the parser");
        }
        if let Some(listen) = self.metrics_listen {
            c.metrics = Some(listen.to_string());
        }
        if self.no_metrics {
            c.metrics = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_go_over_the_file() {
        let args = AgentArgs::parse_from([
            "sockact-agent",
            "--unit",
            "web",
            "--exclude-unit",
            "noisy",
            "--set",
            "cold_start.warn_ms=50",
            "--metrics-listen",
            "127.0.0.1:9999",
        ]);
        let mut c = AgentConfig::parse(
            "[watch]\nunits = [\"db\"]\nexclude_units = [\"x\"]\n",
            "a.toml",
        )
        .unwrap();
        args.apply(&mut c);
        assert_eq!(c.units, ["web"]);
        assert_eq!(c.exclude_units, ["x", "noisy"]);
        assert_eq!(c.thresholds.get("cold_start", "warn_ms"), 50);
        assert_eq!(c.metrics.as_deref(), Some("127.0.0.1:9999"));
        let args = AgentArgs::parse_from(["sockact-agent", "--no-metrics"]);
        args.apply(&mut c);
        assert_eq!(c.metrics, None);
    }

    #[test]
    fn a_bad_threshold_is_a_usage_error() {
        let e = AgentArgs::try_parse_from(["sockact-agent", "--set", "nope.x=1"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
