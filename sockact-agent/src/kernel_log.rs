//! `--kernel-log`: aya-log diagnostics from the probes, forwarded to stderr through `tracing`.
//! Never part of the event stream.
use std::time::Duration;

use aya::Ebpf;

struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let args = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "sockact::kernel", "{args}"),
            log::Level::Warn => tracing::warn!(target: "sockact::kernel", "{args}"),
            log::Level::Info => tracing::info!(target: "sockact::kernel", "{args}"),
            log::Level::Debug => tracing::debug!(target: "sockact::kernel", "{args}"),
            log::Level::Trace => tracing::trace!(target: "sockact::kernel", "{args}"),
        }
    }

    fn flush(&self) {}
}

/// Starts forwarding; a failure is logged and tracing goes on without kernel logs.
pub fn start(ebpf: &mut Ebpf) {
    let mut logger = match aya_log::EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("kernel logs unavailable: {e}");
            return;
        }
    };
    // Diagnostics need no low latency: a periodic read keeps this independent of the event path.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            logger.flush();
        }
    });
}
