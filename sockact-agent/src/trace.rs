//! The tracing session: check the host, load and attach, then read the ring buffer until the
//! duration is over, a signal arrives or stdout closes; report what attached and what was lost.
use std::{io, path::PathBuf, time::Duration};

use sockact_common::FilterConfig;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
    time::Instant,
};

use crate::{
    cli::TraceConfig,
    clock::Clock,
    decode,
    ebpf::{self, Counters, LoadOptions, Loaded},
    events::{Agent, Data, Event, Lost, SCHEMA_VERSION},
    offsets::{KernelBtf, OffsetError, VMLINUX_BTF},
    output::{Output, stdout_closed},
    select::Selector,
    system::{self, SystemError},
};

/// How often counters are checked, a quiet stream flushed and a closed stdout noticed.
const TICK: Duration = Duration::from_millis(100);
/// How often the kernel's lost counter is turned into `lost` events.
const LOST_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    System(#[from] SystemError),
    #[error("resolving kernel offsets: {0}")]
    Offsets(#[from] OffsetError),
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl TraceError {
    /// DESIGN.md's exit codes: every failure here is a runtime failure.
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// Why the session ended; every one of them is a normal stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Duration,
    Signal,
    StdoutClosed,
}

struct Session {
    out: Output<io::Stdout>,
    clock: Clock,
    host: String,
    selector: Selector,
    received: u64,
    decode_errors: u64,
    lost_reported: u64,
    lost_since: String,
}

impl Session {
    fn meta(&self, data: Data) -> Event {
        Event {
            v: SCHEMA_VERSION,
            seq: 0,
            ts: Clock::now_rfc3339(),
            host: self.host.clone(),
            data,
            process: None,
        }
    }

    fn agent(&self, action: &str) -> Agent {
        Agent {
            action: action.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attached: None,
            failed: None,
            submitted: None,
            lost: None,
        }
    }

    fn emit(&mut self, e: Event) -> Result<(), Stop> {
        self.out.emit(e).map_err(|_| Stop::StdoutClosed)
    }

    fn drain(&mut self, loaded: &mut Loaded) -> Result<(), Stop> {
        while let Some(item) = loaded.ring.next() {
            self.received += 1;
            match decode::parse(&item) {
                Ok(record) => {
                    let event = record.to_event(&self.clock, &self.host);
                    drop(item);
                    if self.selector.wants(&event) {
                        self.emit(event)?;
                    }
                }
                Err(e) => {
                    self.decode_errors += 1;
                    if self.decode_errors == 1 {
                        tracing::warn!("undecodable kernel record: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns the growth of the kernel's lost counter into a `lost` event.
    fn report_lost(&mut self, counters: &Counters) -> Result<(), Stop> {
        if counters.lost > self.lost_reported {
            let now = Clock::now_rfc3339();
            let lost = Lost {
                count: counters.lost - self.lost_reported,
                cause: "ring_buffer_full".into(),
                since: std::mem::replace(&mut self.lost_since, now),
            };
            self.lost_reported = counters.lost;
            tracing::warn!("{} events lost: the ring buffer was full", lost.count);
            let e = self.meta(Data::Lost(lost));
            self.emit(e)?;
        } else {
            self.lost_since = Clock::now_rfc3339();
        }
        Ok(())
    }
}

/// Runs one tracing session to its end.
pub async fn run(config: TraceConfig) -> Result<Stop, TraceError> {
    system::check_privileges()?;
    // SOCKACT_BTF: a kernel's BTF kept elsewhere (e.g. a BTFhub file for a kernel without it).
    let btf_path = std::env::var_os("SOCKACT_BTF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(VMLINUX_BTF));
    system::check_btf(&btf_path)?;
    let tracefs = system::ensure_tracefs()?;
    let offsets = KernelBtf::open(&btf_path)?.kernel_offsets(&tracefs)?;
    system::raise_memlock();

    let mut session = Session {
        out: Output::stdout(config.format),
        clock: Clock::new(),
        host: system::hostname(),
        selector: Selector::new(&config.pids, &config.ports),
        received: 0,
        decode_errors: 0,
        lost_reported: 0,
        lost_since: Clock::now_rfc3339(),
    };
    let start = session.agent("start");
    let start = session.meta(Data::Agent(start));
    if session.emit(start).is_err() {
        return Ok(Stop::StdoutClosed);
    }

    let loaded = ebpf::load(&LoadOptions {
        filter: FilterConfig {
            self_tgid: std::process::id(),
            all: config.all as u32,
            ports: !config.ports.is_empty() as u32,
            _pad: 0,
        },
        offsets,
        kernel_log: config.kernel_log,
        pids: config.pids.clone(),
        ports: config.ports.clone(),
    })?;
    let mut attached = session.agent("attached");
    attached.attached = Some(loaded.attached.clone());
    attached.failed = Some(loaded.failed.clone());
    let attached = session.meta(Data::Agent(attached));
    if session.emit(attached).is_err() {
        return Ok(Stop::StdoutClosed);
    }
    if session.out.flush().is_err() {
        return Ok(Stop::StdoutClosed);
    }

    // SAFETY: `Loaded` owns the ring buffer map, whose fd stays open and the same for as long
    // as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(loaded, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let stop = read_loop(&mut session, &mut ring, config.duration).await;
    let loaded = ring.get_mut();

    // Records reserved by programs still running are committed within microseconds.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if stop != Stop::StdoutClosed {
        let _ = finish(&mut session, loaded);
    }
    Ok(stop)
}

async fn read_loop(
    session: &mut Session,
    ring: &mut AsyncFd<Loaded>,
    duration: Option<Duration>,
) -> Stop {
    let deadline = duration.map(|d| Instant::now() + d);
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate()).ok();
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt()).ok();
    let mut tick = tokio::time::interval(TICK);
    let mut last_lost_check = Instant::now();
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let term = async {
            match sigterm.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let int = async {
            match sigint.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { return Stop::Signal };
                if let Err(stop) = session.drain(guard.get_inner_mut()) {
                    return stop;
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if let Err(stop) = session.drain(ring.get_mut()) {
                    return stop;
                }
                if last_lost_check.elapsed() >= LOST_EVERY {
                    last_lost_check = Instant::now();
                    let counters = ring.get_ref().counters();
                    if let Err(stop) = session.report_lost(&counters) {
                        return stop;
                    }
                }
                if session.out.flush().is_err() || stdout_closed() {
                    return Stop::StdoutClosed;
                }
            }
            _ = until_deadline => return Stop::Duration,
            _ = term => return Stop::Signal,
            _ = int => return Stop::Signal,
        }
    }
}

/// Drains what is left, reports the last losses and the `agent` stop with the kernel's counts.
fn finish(session: &mut Session, loaded: &mut Loaded) -> Result<(), Stop> {
    session.drain(loaded)?;
    let counters = loaded.counters();
    session.report_lost(&counters)?;
    if counters.watch_full > 0 || counters.pending_full > 0 {
        tracing::warn!(
            "kernel maps were full: {} watch marks and {} syscalls not tracked",
            counters.watch_full,
            counters.pending_full
        );
    }
    let mut stop = session.agent("stop");
    stop.submitted = Some(counters.submitted);
    stop.lost = Some(counters.lost);
    tracing::debug!(
        received = session.received,
        submitted = counters.submitted,
        lost = counters.lost,
        "stopped"
    );
    let e = session.meta(Data::Agent(stop));
    session.emit(e)?;
    session.out.flush().map_err(|_| Stop::StdoutClosed)
}
