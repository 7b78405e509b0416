//! `--kernel-log`: aya-log diagnostics from the probes, forwarded to stderr through `tracing`.
//! Never part of the event stream.
use aya::Ebpf;
use tokio::io::{Interest, unix::AsyncFd};

struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "sockact::kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

/// Starts forwarding; a failure is logged and tracing goes on without kernel logs.
pub fn start(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("kernel logs unavailable: {e}");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer map; the fd stays open while the AsyncFd holds it.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("kernel logs unavailable: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
