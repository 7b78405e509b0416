//! sockact-agent (DESIGN.md, "sockact-agent"): the tracing session of sockact-trace, always on,
//! writing to the configured sinks and feeding the metrics; SIGHUP reloads, SIGTERM flushes.
mod args;
mod notify;

use std::{sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

pub use args::AgentArgs;
pub use notify::notify;

use crate::{
    cli::TraceConfig,
    config::{AgentConfig, ConfigError},
    metrics::{self, http::BindError},
    output::Format,
    sinks::{SinkControl, Sinks},
    trace::{self, Hooks, Reload, Stop, TraceError},
};

/// How long the sinks may take to deliver what they hold at exit.
const FLUSH_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Metrics(#[from] BindError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("handling SIGHUP: {0}")]
    Signal(std::io::Error),
}

impl AgentError {
    /// 2 for a configuration the user must fix, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_) => 2,
            AgentError::Metrics(_) | AgentError::Signal(_) => 1,
            AgentError::Trace(e) => e.exit_code(),
        }
    }
}

/// `--check-config`: the configuration in one line, or what is wrong with it.
pub fn check(args: &AgentArgs) -> Result<String, ConfigError> {
    let c = args.load()?;
    let sinks: Vec<String> = c
        .sinks
        .iter()
        .map(|s| format!("{} ({})", s.name, s.kind.name()))
        .collect();
    let units = if c.units.is_empty() {
        "every socket-activated unit".to_owned()
    } else {
        c.units.join(", ")
    };
    Ok(format!(
        "configuration ok: watching {units}{}; sinks: {}; metrics: {}",
        if c.exclude_units.is_empty() {
            String::new()
        } else {
            format!(" except {}", c.exclude_units.join(", "))
        },
        sinks.join(", "),
        c.metrics.as_deref().unwrap_or("off"),
    ))
}

fn trace_config(args: &AgentArgs, c: &AgentConfig) -> TraceConfig {
    TraceConfig {
        all: c.all_processes,
        pids: Vec::new(),
        units: c.units.clone(),
        exclude_units: c.exclude_units.clone(),
        systemd_bus: args.systemd_bus.clone(),
        ports: Vec::new(),
        format: Format::Json,
        duration: args.duration,
        kernel_log: args.kernel_log,
        thresholds: c.thresholds.clone(),
        run_degraded: true,
    }
}

/// Runs the agent until SIGTERM/SIGINT, the duration, or a closed stdout sink.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    // First: SIGHUP's default action would end the agent.
    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
    let config = args.load()?;
    let (mut sinks, sink_control, tasks) = Sinks::start(&config.sinks);
    if let Some(listen) = &config.metrics {
        let shared = metrics::Shared::default();
        let observed = shared.clone();
        sinks.observe(move |e| observed.lock().expect("not poisoned").observe(e));
        let bound = metrics::http::serve(listen, shared, sinks.stats()).await?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let trace = trace_config(&args, &config);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let args = Arc::new(args);
    let reloader = {
        let args = args.clone();
        tokio::spawn(async move {
            let started = config;
            while hup.recv().await.is_some() {
                // Whatever the file says now: logrotate's postrotate sends this.
                if sink_control.send(SinkControl::Reopen).await.is_err() {
                    break;
                }
                let next = match args.load() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("reload: {e}; keeping the running configuration");
                        continue;
                    }
                };
                if next.metrics != started.metrics || next.all_processes != started.all_processes {
                    tracing::warn!(
                        "reload: metrics and watch.all_processes change at the next start"
                    );
                }
                let reload = Reload {
                    thresholds: next.thresholds.clone(),
                    units: next.units.clone(),
                    exclude_units: next.exclude_units.clone(),
                };
                if reload_tx.send(reload).await.is_err()
                    || sink_control
                        .send(SinkControl::Configure(next.sinks))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        })
    };
    let hooks = Hooks {
        ready: Some(Box::new(|| notify("READY=1"))),
        reload: Some(reload_rx),
    };
    let result = trace::run_with(trace, Box::new(sinks), hooks).await;
    notify("STOPPING=1");
    reloader.abort();
    let patience = match result {
        Ok(Stop::StdoutClosed) => {
            // A closed stdout ends it within a second, whatever the other sinks hold.
            tracing::info!("stdout was closed: stopping");
            Duration::from_millis(500)
        }
        _ => FLUSH_PATIENCE,
    };
    tasks.finish(patience).await;
    result?;
    Ok(())
}
