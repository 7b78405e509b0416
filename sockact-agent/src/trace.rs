//! The tracing session: check the host, load and attach, then read the ring buffer until the
//! duration is over, a signal arrives or stdout closes; report what attached and what was lost.
use std::{io, path::PathBuf, time::Duration};

use std::collections::HashSet;

use sockact_common::{FilterConfig, filter_flags, listener_watch, watch};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind},
    sync::mpsc,
    time::Instant,
};

use crate::{
    cli::TraceConfig,
    clock::Clock,
    correlate::{
        Attribution, opened_listener, proc_cgroup,
        queue::{QueueTracker, Timed},
        snapshot, sock_diag,
    },
    decode,
    detect::Thresholds,
    ebpf::{self, Counters, LoadOptions, Loaded},
    events::{Agent, Data, Event, Finding, Listener, Lost, SCHEMA_VERSION, Unit},
    features,
    offsets::{KernelBtf, OffsetError, VMLINUX_BTF},
    output::{Emit, Output},
    procfs,
    select::Selector,
    summary::Tally,
    system::{self, SystemError},
    systemd::{
        Catalog, classify,
        client::{Systemd, SystemdError, UnitChange, Watched},
        resolve::{ResolveError, Resolved, resolve, stem},
    },
};

/// How long connecting to systemd and reading its units may take.
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(10);

/// How often counters are checked, a quiet stream flushed and a closed stdout noticed.
const TICK: Duration = Duration::from_millis(100);
/// How often the ring buffer is drained. Records do not wake the reader one by one (the kernel
/// side wakes it only when the ring buffer fills up): this is their latency, at most.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Records read at a time before the runtime's other tasks get a turn.
const DRAIN_BUDGET: usize = 1024;

/// How often the kernel's loss counters are turned into `lost` events.
const LOST_EVERY: Duration = Duration::from_secs(1);
/// A ring buffer that never empties still has its losses told this often.
const LOST_LATEST: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    System(#[from] SystemError),
    #[error("resolving kernel offsets: {0}")]
    Offsets(#[from] OffsetError),
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error("reading the ring buffer: {0}")]
    Ring(io::Error),
    #[error("writing events: {0}")]
    Write(io::Error),
    #[error("{0}")]
    Systemd(String),
    /// A core family of events attached nowhere on this kernel.
    #[error("{0}")]
    Kernel(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl TraceError {
    /// DESIGN.md's exit codes: 2 for usage errors, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            TraceError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Why the session ended; every one of them is a normal stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Duration,
    Signal,
    StdoutClosed,
}

/// How the read loop ends: a normal stop, or a failure.
enum Halt {
    Stop(Stop),
    Fail(TraceError),
}

impl From<io::Error> for Halt {
    /// A write error: EPIPE means the reader went away (a normal stop), anything else fails.
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Halt::Stop(Stop::StdoutClosed)
        } else {
            Halt::Fail(TraceError::Write(e))
        }
    }
}

/// SIGINT and SIGTERM, installed before anything slow so that an early Ctrl-C still stops
/// cleanly.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Signals {
            term: tokio::signal::unix::signal(SignalKind::terminate())?,
            int: tokio::signal::unix::signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Counts of what could not be shown, already reported as `lost` events.
#[derive(Default)]
struct Reported {
    ring: u64,
    maps: u64,
    undecodable: u64,
}

struct Session {
    out: Box<dyn Emit>,
    clock: Clock,
    host: String,
    selector: Selector,
    attribution: Attribution,
    engine: crate::detect::Engine,
    queues: QueueTracker,
    /// `--port`: listeners on these ports have their queue watched too.
    ports: HashSet<u16>,
    /// Listeners seen closed, to stop watching in the kernel.
    closed: Vec<u64>,
    /// Listeners the kernel watches that nothing here follows, at the last look: another
    /// unit's under `--unit`, or one that closed unseen. Forgotten at the next look.
    unfollowed: HashSet<u64>,
    tally: Tally,
    /// The units asked for (`--unit`, the agent's `watch.units`), as last applied.
    units: Vec<String>,
    /// Every kernel record as it came, for fixtures (`SOCKACT_RECORD_RECORDS=DIR`).
    raw: Option<RawRecorder>,
    received: u64,
    undecodable: u64,
    reported: Reported,
    /// What a flooding unit or user may have kept.
    limiter: crate::limit::Limiter,
    lost_since: String,
}

impl Session {
    fn meta(&self, data: Data) -> Event {
        Event {
            v: SCHEMA_VERSION,
            seq: 0,
            ts: crate::clock::rfc3339(self.clock.now()),
            host: self.host.clone(),
            data,
            process: None,
        }
    }

    fn agent(&self, action: &str) -> Agent {
        Agent {
            action: action.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Agent::default()
        }
    }

    /// Writes one line, counted for the summary.
    fn emit(&mut self, e: Event) -> Result<(), Halt> {
        self.tally.observe(&e);
        Ok(self.out.emit(e)?)
    }

    /// Reads every waiting record.
    fn drain(&mut self, loaded: &mut Loaded) -> Result<(), Halt> {
        while !self.drain_some(loaded)? {}
        Ok(())
    }

    /// Reads up to [`DRAIN_BUDGET`] records; true when none are left. A busy ring buffer is
    /// never empty: the other tasks of the runtime (network sinks, metrics, signals) get their
    /// turn between budgets.
    fn drain_some(&mut self, loaded: &mut Loaded) -> Result<bool, Halt> {
        for _ in 0..DRAIN_BUDGET {
            let Some(item) = loaded.ring.next() else {
                return Ok(true);
            };
            self.received += 1;
            if let Some(raw) = &mut self.raw {
                raw.keep(&item);
            }
            match decode::parse(&item) {
                Ok(record) => {
                    drop(item);
                    if let Some(mut event) = record.to_event(&self.clock, &self.host) {
                        // A process gone from /proc by now (an Accept=yes instance lives a few
                        // milliseconds) keeps the cgroup the kernel read at its exec.
                        let (pid, at_exec) = (record.header().pid, record.cgroup_name());
                        let lookup = |p: u32| {
                            proc_cgroup(p).or_else(|| at_exec.clone().filter(|_| p == pid))
                        };
                        self.attribution.enrich(&mut event, &lookup);
                        if self.selector.wants(&event, record.header().watch) {
                            let opened = opened_listener(&event, record.listen_backlog());
                            if self.limiter.admit(&event) {
                                self.publish(event)?;
                            } else {
                                self.observe(&event)?;
                            }
                            if let Some(listener) = opened {
                                let e = self.meta(listener);
                                self.publish(e)?;
                            }
                        }
                    }
                    if let Some(o) = record.queue_observation(&self.clock) {
                        let due = self.queues.observe(o);
                        self.publish_timed(due)?;
                    }
                }
                Err(e) => {
                    self.undecodable += 1;
                    if self.undecodable == 1 {
                        tracing::warn!("undecodable kernel record: {e}");
                    }
                }
            }
        }
        Ok(false)
    }

    /// Emits an event the detectors and the queue tracker see too.
    fn publish(&mut self, mut e: Event) -> Result<(), Halt> {
        // The number it is written with, so that evidence names the line.
        e.seq = self.out.lines_written() + 1;
        let findings = self.see(&e);
        self.emit(e)?;
        self.findings(findings)
    }

    /// An event the rate limit held back: not written (its seq stays 0), but the queue tracker
    /// and the detectors see it, so that a flood hides no listener and no restart from them.
    fn observe(&mut self, e: &Event) -> Result<(), Halt> {
        let findings = self.see(e);
        self.findings(findings)
    }

    fn see(&mut self, e: &Event) -> Vec<Finding> {
        let ports = &self.ports;
        self.queues.learn(e, |p| ports.contains(&p));
        self.engine.observe(e)
    }

    /// Queue and drop events (and closed listeners) with their own times; a closed listener is
    /// no longer watched in the kernel.
    fn publish_timed(&mut self, due: Vec<Timed>) -> Result<(), Halt> {
        for (ts, data) in due {
            if let Data::Listener(l) = &data
                && l.action == "close"
                && let Some(inode) = l.inode
            {
                self.closed.push(inode);
            }
            let mut e = self.meta(data);
            e.ts = crate::clock::rfc3339(ts);
            if self.selector.wants(&e, 0) {
                self.publish(e)?;
            }
        }
        Ok(())
    }

    /// Samples the accept queues of the watched listeners, writes what is due, and lets the
    /// detectors decide what is due now.
    fn tick(&mut self, loaded: &mut Loaded) -> Result<(), Halt> {
        let now = self.clock.now();
        self.sample_queues(now)?;
        let due = self.queues.due(now);
        self.publish_timed(due)?;
        for inode in self.closed.drain(..) {
            loaded.forget_listener(inode);
        }
        let findings = self.engine.tick(now);
        self.findings(findings)?;
        self.writer_reports()
    }

    fn sample_queues(&mut self, now: i128) -> Result<(), Halt> {
        if self.queues.is_empty() {
            return Ok(());
        }
        match sock_diag::listeners() {
            Ok(diag) => {
                let due = self.queues.sample(&diag, now);
                self.publish_timed(due)
            }
            Err(e) => {
                tracing::debug!("sock_diag: {e}");
                Ok(())
            }
        }
    }

    fn findings(&mut self, findings: Vec<Finding>) -> Result<(), Halt> {
        for f in findings {
            let e = self.meta(Data::Finding(f));
            self.emit(e)?;
        }
        Ok(())
    }

    /// Keeps the catalog current with what the watcher saw.
    fn watched(&mut self, w: Watched) -> Result<(), Halt> {
        match w {
            Watched::Changed(c) => {
                let catalog = &mut self.attribution.catalog;
                // A service of a socket unit that appeared after the start.
                if !catalog.services.contains_key(&c.unit)
                    && catalog
                        .sockets
                        .values()
                        .any(|s| s.triggers.contains(&c.unit))
                {
                    catalog.services.insert(
                        c.unit.clone(),
                        crate::systemd::ServiceUnit {
                            name: c.unit.clone(),
                            ..Default::default()
                        },
                    );
                }
                self.unit_change(c)
            }
            Watched::NewSocket(mut s) => {
                // The states stay what the last change said, so that the change that follows
                // is classified against them (a new socket unit starts from nothing).
                let known = self.attribution.catalog.sockets.get(&s.name);
                s.active_state = known.map(|k| k.active_state.clone()).unwrap_or_default();
                s.sub_state = known.map(|k| k.sub_state.clone()).unwrap_or_default();
                // A socket unit seen for the first time, or whose settings changed (a
                // daemon-reload), is resolved again: the rules read its settings from that.
                let changed = known.is_none_or(|k| {
                    (
                        &k.listen,
                        k.accept,
                        &k.part_of,
                        k.max_connections,
                        k.backlog,
                    ) != (
                        &s.listen,
                        s.accept,
                        &s.part_of,
                        s.max_connections,
                        s.backlog,
                    )
                });
                let resolved = (changed && !s.condition_failed && !s.listen.is_empty())
                    .then(|| socket_resolved(&s));
                self.attribution.catalog.sockets.insert(s.name.clone(), s);
                if let Some(unit) = resolved {
                    let e = self.meta(Data::Unit(unit));
                    if self.selector.wants(&e, 0) {
                        self.publish(e)?;
                    }
                }
                Ok(())
            }
            // Units are kept: systemd unloads an inactive service and loads it again later, and
            // a daemon-reload removes and announces again every unit whose file changed, whose
            // state must not be forgotten.
            Watched::Removed(_) => Ok(()),
        }
    }

    /// Emits a `unit` event for a change of a unit sockact follows, and keeps the catalog
    /// current.
    fn unit_change(&mut self, c: UnitChange) -> Result<(), Halt> {
        let catalog = &mut self.attribution.catalog;
        let unit = if let Some(s) = catalog.services.get_mut(&c.unit) {
            let (prev_active, prev_sub) = (s.active_state.clone(), s.sub_state.clone());
            if let Some(v) = &c.invocation_id {
                s.invocation_id = v.clone();
            }
            let change = classify(
                &prev_active,
                c.active_state.as_deref(),
                &s.started_invocation,
                &s.invocation_id,
            );
            if change == "started" || change == "restarted" {
                s.started_invocation = s.invocation_id.clone();
            }
            apply_states(&mut s.active_state, &mut s.sub_state, &c);
            if let Some(v) = c.main_pid {
                s.main_pid = v;
            }
            if let Some(v) = c.n_restarts {
                s.n_restarts = v;
            }
            if let Some(v) = &c.result {
                s.result.clone_from(v);
            }
            if change == "state" && s.active_state == prev_active && s.sub_state == prev_sub {
                // Other properties changed: not worth a line.
                return Ok(());
            }
            service_event(s, change)
        } else if let Some(s) = catalog
            .sockets
            .get_mut(&c.unit)
            .filter(|s| !s.condition_failed)
        {
            let (prev_active, prev_sub) = (s.active_state.clone(), s.sub_state.clone());
            let change = classify(&prev_active, c.active_state.as_deref(), "", "");
            apply_states(&mut s.active_state, &mut s.sub_state, &c);
            if let Some(v) = &c.result {
                s.result.clone_from(v);
            }
            if change == "state" && s.active_state == prev_active && s.sub_state == prev_sub {
                return Ok(());
            }
            Unit {
                unit: s.name.clone(),
                change: change.into(),
                active_state: s.active_state.clone(),
                sub_state: s.sub_state.clone(),
                result: failure(&s.active_state, &s.result),
                ..Default::default()
            }
        } else {
            return Ok(());
        };
        let e = self.meta(Data::Unit(unit));
        if self.selector.wants(&e, 0) {
            self.publish(e)?;
        }
        Ok(())
    }

    /// Applies new settings while the kernel keeps tracing. When a unit of the new list does
    /// not resolve, the running units stay (as at start, where it is an error); the rest
    /// applies. The stream says so with an `agent` `reload` event, and announces the units
    /// only when their list changed.
    fn reload(&mut self, reload: Reload) -> Result<(), Halt> {
        self.engine.set_thresholds(reload.thresholds);
        self.selector.exclude(&reload.exclude_units);
        let mut announce = Vec::new();
        if reload.units != self.units {
            let catalog = &self.attribution.catalog;
            let found: Result<Vec<Resolved>, ResolveError> = reload
                .units
                .iter()
                .map(|name| resolve(name, catalog, |_| false))
                .collect();
            match found {
                Ok(found) => {
                    self.selector.clear_units();
                    for r in &found {
                        announce.extend(select(r, catalog, &mut self.selector));
                    }
                    if found.is_empty() {
                        announce = every_unit(catalog);
                    }
                    self.units = reload.units;
                }
                Err(e) => tracing::error!("reload: unit {e}; keeping the running units"),
            }
        }
        tracing::info!("reloaded");
        let e = self.agent("reload");
        let e = self.meta(Data::Agent(e));
        self.emit(e)?;
        for unit in announce {
            let e = self.meta(Data::Unit(unit));
            if self.selector.wants(&e, 0) {
                self.publish(e)?;
            }
        }
        Ok(())
    }

    /// What the writer reports itself (a sink's losses), written like any event.
    fn writer_reports(&mut self) -> Result<(), Halt> {
        for data in self.out.due() {
            let e = self.meta(data);
            self.emit(e)?;
        }
        for lost in self.limiter.due() {
            self.held_back(lost)?;
        }
        Ok(())
    }

    /// What the rate limit held back, told as lost.
    fn held_back(&mut self, lost: Lost) -> Result<(), Halt> {
        tracing::warn!("{} events held back ({})", lost.count, lost.cause);
        let e = self.meta(Data::Lost(lost));
        self.emit(e)
    }

    /// Stops the kernel watching listeners nothing here follows. Only those found unfollowed
    /// at two looks in a row: a listen whose record is still in the ring buffer is followed by
    /// the next.
    fn prune_listeners(&mut self, loaded: &mut Loaded) {
        let unfollowed: HashSet<u64> = loaded
            .watched_listeners()
            .into_iter()
            .filter(|&inode| !self.queues.follows(inode))
            .collect();
        for &inode in unfollowed.intersection(&self.unfollowed) {
            loaded.forget_listener(inode);
        }
        self.unfollowed = unfollowed;
    }

    /// Turns the growth of every loss counter into a `lost` event: records that found the
    /// ring buffer full, syscalls and watch marks a full kernel map could not keep, records
    /// that could not be decoded.
    fn report_lost(&mut self, counters: &Counters) -> Result<(), Halt> {
        let now = crate::clock::rfc3339(self.clock.now());
        let since = std::mem::replace(&mut self.lost_since, now);
        let maps = counters.watch_full + counters.pending_full + counters.listeners_full;
        let growth = [
            (
                counters.lost.saturating_sub(self.reported.ring),
                "ring_buffer_full",
            ),
            (maps.saturating_sub(self.reported.maps), "kernel_map_full"),
            (
                self.undecodable.saturating_sub(self.reported.undecodable),
                "undecodable",
            ),
        ];
        self.reported = Reported {
            ring: counters.lost,
            maps,
            undecodable: self.undecodable,
        };
        for (count, cause) in growth {
            if count == 0 {
                continue;
            }
            tracing::warn!("{count} events lost ({cause})");
            let e = self.meta(Data::Lost(Lost {
                count,
                cause: cause.into(),
                since: since.clone(),
            }));
            self.emit(e)?;
        }
        Ok(())
    }
}

/// Takes the active and sub states a change carries.
fn apply_states(active: &mut String, sub: &mut String, c: &UnitChange) {
    if let Some(v) = &c.active_state {
        active.clone_from(v);
    }
    if let Some(v) = &c.sub_state {
        sub.clone_from(v);
    }
}

/// Connects to systemd and reads its socket units. Without `--unit` an unreachable systemd is
/// not an error: unit names then come from cgroups only.
async fn connect_systemd(config: &TraceConfig) -> Result<Option<(Systemd, Catalog)>, TraceError> {
    let attempt = async {
        let client = Systemd::connect(config.systemd_bus.as_deref()).await?;
        let catalog = client.catalog().await?;
        Ok::<_, SystemdError>((client, catalog))
    };
    let failure = match tokio::time::timeout(SYSTEMD_TIMEOUT, attempt).await {
        Ok(Ok(found)) => return Ok(Some(found)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("systemd did not answer within {SYSTEMD_TIMEOUT:?}"),
    };
    if config.units.is_empty() {
        // A bus asked for by name is worth a warning; the default one may simply not exist.
        if config.systemd_bus.is_some() {
            tracing::warn!("{failure}: unit names come from cgroups only");
        } else {
            tracing::info!("{failure}: unit names come from cgroups only");
        }
        return Ok(None);
    }
    Err(TraceError::Systemd(format!(
        "--unit needs systemd: {failure}; is systemd running here? For another systemd (a \
         container), pass --systemd-bus unix:path=/proc/PID/root/run/dbus/system_bus_socket"
    )))
}

/// Resolves every `--unit` into the unit events that open the stream.
async fn resolve_units(
    config: &TraceConfig,
    client: &Systemd,
    catalog: &Catalog,
    selector: &mut Selector,
) -> Result<Vec<Unit>, TraceError> {
    let mut resolved = Vec::new();
    for name in &config.units {
        let r = match resolve(name, catalog, |_| false) {
            Ok(r) => r,
            Err(ResolveError::Unknown { .. }) => {
                let service = format!("{}.service", stem(name));
                let known = client
                    .load(&service)
                    .await
                    .map_err(|e| TraceError::Systemd(e.to_string()))?
                    .is_some();
                let err = resolve(name, catalog, |s| known && s == service)
                    .expect_err("resolved only with what systemd said");
                return Err(TraceError::Usage(format!("--unit {err}")));
            }
            Err(e) => return Err(TraceError::Usage(format!("--unit {e}"))),
        };
        resolved.extend(select(&r, catalog, selector));
    }
    Ok(resolved)
}

/// Selects a resolved unit; its `resolved` unit events.
fn select(r: &Resolved, catalog: &Catalog, selector: &mut Selector) -> Vec<Unit> {
    selector.add_unit(&r.service, &r.sockets);
    let mut units: Vec<Unit> = catalog
        .services
        .get(&r.service)
        .map(service_resolved)
        .into_iter()
        .collect();
    units.extend(
        r.sockets
            .iter()
            .map(|name| socket_resolved(&catalog.sockets[name])),
    );
    units
}

/// With no selector, every socket unit and the service it starts, as they are when the trace
/// starts. Socket units whose condition failed, or with no address (not found, masked), are not
/// meant to listen and are left out.
fn every_unit(catalog: &Catalog) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut services = HashSet::new();
    let listening = |s: &&crate::systemd::SocketUnit| !s.condition_failed && !s.listen.is_empty();
    for s in catalog.sockets.values().filter(listening) {
        for t in &s.triggers {
            if services.insert(t.clone()) {
                units.extend(catalog.services.get(t).map(service_resolved));
            }
        }
        units.push(socket_resolved(s));
    }
    units
}

fn service_resolved(s: &crate::systemd::ServiceUnit) -> Unit {
    service_event(s, "resolved")
}

/// A service as it is now, for a `unit` event of `change`.
fn service_event(s: &crate::systemd::ServiceUnit, change: &str) -> Unit {
    Unit {
        unit: s.name.clone(),
        change: change.into(),
        active_state: s.active_state.clone(),
        sub_state: s.sub_state.clone(),
        main_pid: Some(s.main_pid),
        n_restarts: Some(s.n_restarts),
        invocation_id: (!s.invocation_id.is_empty()).then(|| s.invocation_id.clone()),
        result: failure(&s.active_state, &s.result),
        ..Default::default()
    }
}

/// systemd's Result of a unit that failed (None while it has not).
fn failure(active_state: &str, result: &str) -> Option<String> {
    (active_state == "failed" && !result.is_empty()).then(|| result.to_owned())
}

fn socket_resolved(s: &crate::systemd::SocketUnit) -> Unit {
    Unit {
        unit: s.name.clone(),
        change: "resolved".into(),
        active_state: s.active_state.clone(),
        sub_state: s.sub_state.clone(),
        listen: Some(s.listen.iter().map(|(_, a)| a.clone()).collect()),
        accept: Some(s.accept),
        backlog: Some(s.backlog),
        fd_names: Some(vec![s.fd_name.clone()]),
        triggers: Some(s.triggers.clone()),
        result: failure(&s.active_state, &s.result),
        part_of: (!s.part_of.is_empty()).then(|| s.part_of.clone()),
        max_connections: s.accept.then_some(s.max_connections),
        ..Default::default()
    }
}

/// A listener that already existed, with its drop counter when the trace started.
struct Existing {
    listener: Listener,
    drops: Option<u32>,
}

/// Marks the processes of socket-activated units that already run, and those holding a
/// systemd listener, in the kernel's watch map; returns the listeners that already exist.
fn snapshot(catalog: &Catalog, loaded: &mut Loaded) -> Result<Vec<Existing>, TraceError> {
    let activated = |unit: &str| !catalog.sockets_of(unit).is_empty();
    let mut pids: HashSet<u32> = snapshot::pids_of_units(activated).into_iter().collect();
    let listeners = snapshot::unit_listeners(catalog, &snapshot::listeners());
    let inodes: HashSet<u64> = listeners.iter().map(|(_, _, l)| l.inode).collect();
    // systemd itself holds them all: marking it would watch every process it starts.
    pids.extend(
        snapshot::holders(&inodes)
            .into_iter()
            .filter(|&pid| !is_manager(pid)),
    );
    let pids: Vec<u32> = pids.into_iter().collect();
    loaded.watch(&pids, watch::SNAPSHOT)?;
    tracing::debug!(
        "snapshot: {} processes of socket-activated units",
        pids.len()
    );
    // The kernel's own figures: the effective backlog (systemd's Backlog= capped by
    // net.core.somaxconn) and, for TCP, the drop counter.
    let diag: std::collections::HashMap<u64, sock_diag::DiagListener> = match sock_diag::listeners()
    {
        Ok(all) => all.into_iter().map(|d| (d.inode, d)).collect(),
        Err(e) => {
            tracing::warn!("sock_diag: {e}: listener backlogs unknown");
            Default::default()
        }
    };
    Ok(listeners
        .into_iter()
        .map(|(unit, _, l)| Existing {
            drops: diag.get(&l.inode).and_then(|d| d.drops),
            listener: Listener {
                action: "existing".into(),
                backlog: diag.get(&l.inode).map(|d| d.backlog),
                addr: l.addr,
                family: l.family.into(),
                inode: Some(l.inode),
                socket_unit: Some(unit.to_owned()),
            },
        })
        .collect())
}

fn is_manager(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    matches!(comm.trim(), "systemd" | "(sd-listen)")
}

/// Checks `--pid`: each must be a live process.
fn check_pids(pids: &[u32]) -> Result<(), TraceError> {
    match pids.iter().find(|&&p| !procfs::is_process(p)) {
        Some(p) => Err(TraceError::Usage(format!(
            "--pid {p}: no such process (a thread id is not a process either)"
        ))),
        None => Ok(()),
    }
}

/// Writes every kernel record to `DIR/records-PID.bin` (see [`decode::recorded`]): the
/// benchmarks' and fuzzers' inputs come from real runs.
struct RawRecorder {
    out: io::BufWriter<std::fs::File>,
}

impl RawRecorder {
    fn from_env() -> Option<RawRecorder> {
        let dir = PathBuf::from(std::env::var_os("SOCKACT_RECORD_RECORDS")?);
        let path = dir.join(format!("records-{}.bin", std::process::id()));
        match std::fs::File::create(&path) {
            Ok(f) => Some(RawRecorder {
                out: io::BufWriter::new(f),
            }),
            Err(e) => {
                tracing::warn!("not recording records to {}: {e}", path.display());
                None
            }
        }
    }

    fn keep(&mut self, record: &[u8]) {
        use std::io::Write;
        let len = (record.len() as u32).to_le_bytes();
        if let Err(e) = self
            .out
            .write_all(&len)
            .and_then(|()| self.out.write_all(record))
        {
            tracing::warn!("recording records: {e}");
        }
    }
}

/// What an embedding program (the agent) adds to a session.
#[derive(Default)]
pub struct Hooks {
    /// Called once every program is attached (the agent's READY=1).
    pub ready: Option<Box<dyn FnOnce() + Send>>,
    /// New settings to apply while tracing (the agent's SIGHUP).
    pub reload: Option<mpsc::Receiver<Reload>>,
}

/// Settings a running session takes without stopping: the kernel keeps tracing, no event is
/// lost.
#[derive(Clone, Debug)]
pub struct Reload {
    pub thresholds: Thresholds,
    pub units: Vec<String>,
    pub exclude_units: Vec<String>,
}

/// Runs one tracing session to its end, writing to stdout.
pub async fn run(config: TraceConfig) -> Result<Stop, TraceError> {
    let out = Box::new(Output::stdout(config.format));
    run_with(config, out, Hooks::default()).await
}

/// Runs one tracing session to its end, writing to `out`.
pub async fn run_with(
    config: TraceConfig,
    out: Box<dyn Emit>,
    mut hooks: Hooks,
) -> Result<Stop, TraceError> {
    let making = ebpf::make_loader();
    let mut signals = Signals::install()?;
    check_pids(&config.pids)?;
    system::check_privileges()?;
    // SOCKACT_BTF: a kernel's BTF kept elsewhere (e.g. a BTFhub file for a kernel without it).
    let btf_path = std::env::var_os("SOCKACT_BTF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(VMLINUX_BTF));
    system::check_btf(&btf_path)?;
    let tracefs = system::ensure_tracefs()?;
    let btf = KernelBtf::open(&btf_path)?;
    let offsets = btf.kernel_offsets(&tracefs)?;
    let kernel = features::Kernel::probe(&btf, &tracefs);
    drop(btf);
    system::raise_memlock();

    let mut selector = Selector::new(&config.pids, &config.ports);
    selector.exclude(&config.exclude_units);
    let systemd = connect_systemd(&config).await?;
    let mut resolved = Vec::new();
    if let Some((client, catalog)) = &systemd {
        resolved = resolve_units(&config, client, catalog, &mut selector).await?;
        if selector.is_empty() {
            resolved = every_unit(catalog);
        }
    }
    let (client, catalog) = match systemd {
        Some((client, catalog)) => (Some(client), catalog),
        None => (None, Catalog::default()),
    };

    let mut session = Session {
        out,
        clock: Clock::new(),
        host: system::hostname(),
        selector,
        attribution: Attribution::new(catalog),
        engine: crate::detect::Engine::new(config.thresholds.clone()),
        queues: QueueTracker::default(),
        ports: config.ports.iter().copied().collect(),
        closed: Vec::new(),
        unfollowed: HashSet::new(),
        tally: Tally::default(),
        units: config.units.clone(),
        raw: RawRecorder::from_env(),
        received: 0,
        undecodable: 0,
        reported: Reported::default(),
        limiter: crate::limit::Limiter::default(),
        lost_since: Clock::now_rfc3339(),
    };
    let start = session.agent("start");
    let start = session.meta(Data::Agent(start));
    if let Err(halt) = session.emit(start) {
        return finish_early(halt);
    }
    for unit in resolved {
        let e = session.meta(Data::Unit(unit));
        if let Err(halt) = session.publish(e) {
            return finish_early(halt);
        }
    }

    // Out before the verifier's wait: a reader may need no more (`| head -1`).
    if let Err(e) = session.out.flush() {
        return finish_early(e.into());
    }
    let queue_flag = if kernel.queue_via_set_state() {
        filter_flags::QUEUE_VIA_SET_STATE
    } else {
        0
    };
    let loaded = ebpf::load(
        making,
        &LoadOptions {
            kernel: kernel.clone(),
            filter: FilterConfig {
                self_tgid: std::process::id(),
                all: config.all as u32,
                ports: !config.ports.is_empty() as u32,
                flags: queue_flag,
            },
            offsets,
            kernel_log: config.kernel_log,
            ports: config.ports.clone(),
        },
        &|| session.out.closed(),
    );
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(ebpf::EbpfError::GaveUp) => return Ok(Stop::StdoutClosed),
        Err(e) => return Err(e.into()),
    };
    if !config.pids.is_empty() {
        let selected = procfs::descendants(&config.pids, &procfs::parents());
        loaded.watch(&selected, watch::SELECTED)?;
    }
    let existing = snapshot(&session.attribution.catalog, &mut loaded)?;
    let (changes_tx, mut changes) = mpsc::channel(256);
    if let Some(client) = client {
        tokio::spawn(crate::systemd::follow::follow(client, changes_tx));
    }
    let mut attached = session.agent("attached");
    attached.attached = Some(loaded.attached.clone());
    attached.failed = Some(loaded.failed.clone());
    attached.kernel = Some(kernel.release.clone());
    attached.features = Some(loaded.features.clone());
    attached.unavailable_rules = Some(features::unavailable_rules(&loaded.features));
    let attached = session.meta(Data::Agent(attached));
    if let Err(halt) = session.emit(attached) {
        return finish_early(halt);
    }
    let missing = features::missing_core(&loaded.features);
    if !missing.is_empty() && !config.run_degraded {
        let _ = session.out.flush();
        return Err(TraceError::Kernel(core_missing(&missing, &loaded.failed)));
    }
    for f in &loaded.failed {
        tracing::warn!("{} not attached: {}", f.program, f.error);
    }
    if !missing.is_empty() {
        tracing::error!(
            "{}; running without them",
            core_missing(&missing, &loaded.failed)
        );
    }
    let netns = system::own_netns();
    let mut watched = Vec::new();
    for Existing { listener, drops } in existing {
        let inode = listener.inode;
        let listener_addr = listener.addr.clone();
        let e = session.meta(Data::Listener(listener));
        if !session.selector.wants(&e, 0) {
            continue;
        }
        if let Err(halt) = session.publish(e) {
            return finish_early(halt);
        }
        if let Some(inode) = inode {
            watched.push((inode, ebpf::listen_addr(&listener_addr, netns)));
            if let Some(d) = drops {
                session.queues.seed_drops(inode, u64::from(d));
            }
        }
    }
    // Their queues from now on; what was queued before shows in the first sample.
    loaded.watch_listeners(&watched, listener_watch::SNAPSHOT)?;
    if let Err(e) = session.out.flush() {
        return finish_early(e.into());
    }
    if let Some(ready) = hooks.ready.take() {
        ready();
    }

    // SAFETY: `Loaded` owns the ring buffer map, whose fd stays open and the same for as long
    // as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(loaded, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let halt = read_loop(
        &mut session,
        &mut ring,
        &mut signals,
        &mut changes,
        &mut hooks.reload,
        config.duration,
    )
    .await;
    if let Halt::Stop(Stop::StdoutClosed) = halt {
        ring.into_inner().detach_in_background();
        return Ok(Stop::StdoutClosed);
    }
    let loaded = ring.get_mut();
    match halt {
        Halt::Fail(e) => Err(e),
        Halt::Stop(stop) => match finish(&mut session, loaded).await {
            Ok(()) => Ok(stop),
            Err(halt) => finish_early(halt),
        },
    }
}

/// One line saying which core families could not attach, and why.
fn core_missing(missing: &[features::Family], failed: &[crate::events::AttachFailure]) -> String {
    let names: Vec<&str> = missing.iter().map(|f| f.name()).collect();
    let why: Vec<String> = failed
        .iter()
        .filter(|f| {
            ebpf::PROGRAMS
                .iter()
                .any(|p| p.name == f.program && p.family.is_some_and(|fam| missing.contains(&fam)))
        })
        .map(|f| format!("{}: {}", f.program, f.error))
        .collect();
    format!(
        "this kernel gave no {} events ({}): without exec, bind, listen and accept there is \
         nothing to correlate (-vv shows the verifier's log)",
        names.join(", "),
        why.join("; ")
    )
}

fn finish_early(halt: Halt) -> Result<Stop, TraceError> {
    match halt {
        Halt::Stop(stop) => Ok(stop),
        Halt::Fail(e) => Err(e),
    }
}

/// The next settings to apply; never, without a reload channel.
async fn next_reload(reload: &mut Option<mpsc::Receiver<Reload>>) -> Option<Reload> {
    match reload {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn read_loop(
    session: &mut Session,
    ring: &mut AsyncFd<Loaded>,
    signals: &mut Signals,
    changes: &mut mpsc::Receiver<Watched>,
    reload: &mut Option<mpsc::Receiver<Reload>>,
    duration: Option<Duration>,
) -> Halt {
    let deadline = duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_lost_check = Instant::now();
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let step: Result<(), Halt> = tokio::select! {
            guard = ring.readable_mut() => match guard {
                Ok(mut guard) => match session.drain_some(guard.get_inner_mut()) {
                    // Readiness stays while records are left: the next turn reads on.
                    Ok(true) => {
                        guard.clear_ready();
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(halt) => Err(halt),
                },
                Err(e) => Err(Halt::Fail(TraceError::Ring(e))),
            },
            _ = drain.tick() => session.drain_some(ring.get_mut()).map(|_| ()),
            _ = tick.tick() => {
                let loaded = ring.get_mut();
                let drained = session.drain_some(loaded);
                let r = drained.and_then(|empty| session.tick(loaded).map(|()| empty));
                // Losses are told where their gap is: once the records written before them
                // are read (the ring buffer found empty), not ahead of them; under a load
                // that never lets it empty, after LOST_LATEST at the latest.
                let due = last_lost_check.elapsed() >= LOST_EVERY
                    && (matches!(r, Ok(true)) || last_lost_check.elapsed() >= LOST_LATEST);
                let mut r = r.map(|_| ());
                if r.is_ok() && due {
                    last_lost_check = Instant::now();
                    let counters = ring.get_ref().counters();
                    r = session.report_lost(&counters);
                    session.prune_listeners(ring.get_mut());
                }
                r.and_then(|()| Ok(session.out.flush()?)).and_then(|()| {
                    if session.out.closed() { Err(Halt::Stop(Stop::StdoutClosed)) } else { Ok(()) }
                })
            }
            Some(watched) = changes.recv() => session.watched(watched),
            Some(reload) = next_reload(reload) => session.reload(reload),
            _ = until_deadline => Err(Halt::Stop(Stop::Duration)),
            _ = signals.recv() => Err(Halt::Stop(Stop::Signal)),
        };
        if let Err(halt) = step {
            return halt;
        }
        tokio::task::yield_now().await;
    }
}

/// Detaches the programs, drains every record they submitted, reports the last losses and
/// the `agent` stop with the kernel's counts: received + lost = submitted.
async fn finish(session: &mut Session, loaded: &mut Loaded) -> Result<(), Halt> {
    loaded.detach();
    // A program that was running when it was detached commits its record within microseconds.
    tokio::time::sleep(Duration::from_millis(20)).await;
    session.drain(loaded)?;
    // The queues' last state and the drop counters' last growth, before the rules decide.
    let now = session.clock.now();
    session.sample_queues(now)?;
    let last = session.queues.flush(now);
    session.publish_timed(last)?;
    let counters = loaded.counters();
    session.report_lost(&counters)?;
    session.writer_reports()?;
    for lost in session.limiter.flush() {
        session.held_back(lost)?;
    }
    let pending = session.engine.flush();
    session.findings(pending)?;
    let mut stop = session.agent("stop");
    stop.submitted = Some(counters.submitted);
    stop.lost = Some(counters.lost);
    stop.received = Some(session.received);
    tracing::debug!(
        received = session.received,
        submitted = counters.submitted,
        lost = counters.lost,
        "stopped"
    );
    let e = session.meta(Data::Agent(stop));
    session.emit(e)?;
    let now = session.clock.now();
    let summary = session.tally.summary(now);
    let e = session.meta(Data::Summary(summary));
    session.out.emit(e)?;
    Ok(session.out.flush()?)
}
