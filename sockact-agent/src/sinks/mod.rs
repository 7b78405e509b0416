//! The agent's sinks (DESIGN.md, "sockact-agent"): every event, numbered once, goes to each
//! sink through that sink's own bounded queue, so a slow or broken sink can neither block
//! another nor the kernel reader. What a sink could not take or knew it could not deliver is
//! counted and reported as one `lost` event (`sink:<name>`) once the outage is over. A write
//! that does not return within [`WRITE_DEADLINE`] makes the sink down.
mod file;
mod journald;
mod relp;
mod stdout;
mod stream;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    clock::Clock,
    config::{SinkConfig, SinkKind},
    events::{Data, Event, Lost},
    output::{Emit, stdout_closed},
    render,
};

/// One event, encoded once for every sink.
#[derive(Debug)]
pub struct Line {
    /// The NDJSON line, newline included.
    pub json: String,
    pub seq: u64,
    pub kind: &'static str,
    /// The event's time (RFC 3339), for a syslog header.
    pub ts: String,
    pub host: String,
    /// syslog severity: 3 for error findings, 4 for warnings and losses, 6 otherwise.
    pub severity: u8,
    pub rule: Option<String>,
    pub unit: Option<String>,
    pub socket_unit: Option<String>,
    /// The text format's line, for journald's MESSAGE: made only when a journald sink runs.
    pub text: Option<String>,
}

impl Line {
    /// The line of `e`, with its text line when `text`.
    pub fn encode(e: &Event, text: bool) -> serde_json::Result<Line> {
        let mut json = serde_json::to_string(e)?;
        json.push('\n');
        let (severity, rule, mut unit, mut socket_unit) = match &e.data {
            Data::Finding(f) => (
                match f.severity.as_str() {
                    "error" => 3,
                    "warning" => 4,
                    _ => 6,
                },
                Some(f.rule.clone()),
                f.unit.clone(),
                f.socket_unit.clone(),
            ),
            Data::Lost(_) => (4, None, None, None),
            Data::Unit(u) => (6, None, Some(u.unit.clone()), None),
            Data::Listener(l) => (6, None, None, l.socket_unit.clone()),
            Data::Queue(q) => (6, None, None, q.socket_unit.clone()),
            Data::Drop(d) => (4, None, None, d.socket_unit.clone()),
            _ => (6, None, None, None),
        };
        if let Some(p) = &e.process {
            unit = unit.or_else(|| p.unit.clone());
            socket_unit = socket_unit.or_else(|| p.socket_unit.clone());
        }
        Ok(Line {
            json,
            seq: e.seq,
            kind: e.data.kind(),
            ts: e.ts.clone(),
            host: e.host.clone(),
            severity,
            rule,
            unit,
            socket_unit,
            text: text.then(|| render::line(e, false)),
        })
    }
}

/// What a sink's task and the writer share.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events the sink did not deliver, known to be lost.
    pub dropped: AtomicU64,
    /// Failed writes and connects.
    pub errors: AtomicU64,
    /// Events delivered (written, or acknowledged for RELP).
    pub delivered: AtomicU64,
    /// Whether the last write or connect worked.
    pub healthy: AtomicBool,
    /// The reader went away for good (a closed stdout).
    pub closed: AtomicBool,
    /// Reopen the file at the next write (SIGHUP, after logrotate moved it).
    pub reopen: AtomicBool,
    /// When a failure was last said: a sink that flaps (a disk with a few bytes left takes
    /// one small batch and refuses the next) is not reported again and again.
    pub warned_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// When the write in progress began (milliseconds on [`since_start`]), 0 when none is: a
    /// write that does not return (a peer that accepts and never reads, a stuck stdout) makes
    /// the sink down after [`WRITE_DEADLINE`].
    pub writing_since: AtomicU64,
    /// Events in its queue, and in the write in progress: what is lost if it never finishes.
    pub queued: AtomicU64,
    pub in_hand: AtomicU64,
}

/// A write that has not returned after this long is a sink that is down.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Milliseconds since the first call (never 0), the clock of [`Stats::writing_since`].
fn since_start() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// A write in progress, from its start to its end (see [`Stats::writing_since`]).
pub struct Writing<'a>(&'a Stats);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.writing_since.store(0, Ordering::Relaxed);
        self.0.in_hand.store(0, Ordering::Relaxed);
    }
}

/// How long after a failure was said another one is not.
const QUIET: Duration = Duration::from_secs(60);

impl Stats {
    fn drop_events(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks a write of `lines` events as in progress until the guard is dropped.
    pub fn writing(&self, lines: u64) -> Writing<'_> {
        self.writing_since.store(since_start(), Ordering::Relaxed);
        self.in_hand.store(lines, Ordering::Relaxed);
        Writing(self)
    }

    /// `n` events were taken from the queue.
    pub fn taken(&self, n: u64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    /// Whether a write has been in progress for longer than [`WRITE_DEADLINE`].
    fn stalled(&self) -> bool {
        let since = self.writing_since.load(Ordering::Relaxed);
        since != 0 && since_start() - since > WRITE_DEADLINE.as_millis() as u64
    }
}

/// What becomes of events while a sink is failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// They wait in its buffer until it reconnects (TCP, unix, RELP).
    Wait,
    /// Each one it cannot write is dropped and counted (stdout, file, journald).
    Drop,
}

/// How the task of a sink receives events, and learns that the agent is stopping (then it
/// delivers what it can until it is told to give up).
pub struct Feed {
    pub rx: mpsc::Receiver<Arc<Line>>,
    pub stats: Arc<Stats>,
    pub name: String,
    outage: Outage,
    give_up: watch::Receiver<bool>,
}

impl Feed {
    /// A write or connect failed: counted, and logged at the first failure of an outage.
    pub fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if self.stats.healthy.swap(false, Ordering::Relaxed) {
            let mut warned = self
                .stats
                .warned_at
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if warned.is_some_and(|at| at.elapsed() < QUIET) {
                return;
            }
            *warned = Some(std::time::Instant::now());
            let then = match self.outage {
                Outage::Wait => "events wait in its buffer until it reconnects",
                Outage::Drop => "what cannot be written is dropped and counted",
            };
            tracing::warn!("sink {}: {what}: {e}; {then}", self.name);
        }
    }

    /// It works (again).
    pub fn working(&self) {
        if !self.stats.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("sink {}: working again", self.name);
        }
    }

    /// `n` events were delivered.
    pub fn delivered(&self, n: u64) {
        self.working();
        self.stats.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the agent gave up waiting for this sink.
    pub fn giving_up(&self) -> bool {
        *self.give_up.borrow()
    }

    /// Waits `d`, or less when the agent gives up waiting.
    pub async fn pause(&mut self, d: Duration) {
        let _ = tokio::time::timeout(d, self.give_up.wait_for(|g| *g)).await;
    }

    /// Gives up on what is still queued: counted and logged.
    pub fn abandon(&mut self, in_hand: u64) {
        let mut n = in_hand;
        while self.rx.try_recv().is_ok() {
            self.stats.taken(1);
            n += 1;
        }
        if n > 0 {
            self.stats.drop_events(n);
            tracing::warn!("sink {}: {n} events not delivered at exit", self.name);
        }
    }
}

/// Most bytes written at once.
const BATCH_BYTES: usize = 64 * 1024;

/// The next events to write: waits for one, then takes what else is queued, up to 64 KiB.
/// `None` once the queue is closed and empty. Cancel-safe.
pub async fn batch(rx: &mut mpsc::Receiver<Arc<Line>>, stats: &Stats) -> Option<(Vec<u8>, u64)> {
    let first = rx.recv().await?;
    Some(more(first, rx, stats))
}

/// The same, for a sink writing from a thread of its own (blocking writes: stdout, files).
/// Woken by the first line, it lingers a moment for more: a thread woken for every line of a
/// busy stream costs more in switches than the writing does.
pub fn batch_blocking(rx: &mut mpsc::Receiver<Arc<Line>>, stats: &Stats) -> Option<(Vec<u8>, u64)> {
    let first = rx.blocking_recv()?;
    std::thread::sleep(LINGER);
    Some(more(first, rx, stats))
}

/// How long a blocking sink waits for more lines once one came.
const LINGER: Duration = Duration::from_millis(5);

fn more(first: Arc<Line>, rx: &mut mpsc::Receiver<Arc<Line>>, stats: &Stats) -> (Vec<u8>, u64) {
    let mut bytes = Vec::with_capacity(BATCH_BYTES + first.json.len());
    bytes.extend_from_slice(first.json.as_bytes());
    let mut lines = 1;
    while bytes.len() < BATCH_BYTES {
        match rx.try_recv() {
            Ok(line) => {
                bytes.extend_from_slice(line.json.as_bytes());
                lines += 1;
            }
            Err(_) => break,
        }
    }
    stats.taken(lines);
    (bytes, lines)
}

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects, again and again with [`Backoff`], until it works; `None` once the agent gives up
/// waiting at exit.
pub async fn reconnect<T, E, F>(
    feed: &mut Feed,
    backoff: &mut Backoff,
    peer: &str,
    mut connect: impl FnMut() -> F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    loop {
        if feed.giving_up() {
            return None;
        }
        match connect().await {
            Ok(c) => {
                feed.working();
                backoff.reset();
                return Some(c);
            }
            Err(e) => {
                feed.failed(&format!("connecting to {peer}"), &e);
                let wait = backoff.wait();
                feed.pause(wait).await;
            }
        }
    }
}

/// Reconnection delays: 100 ms doubling to 5 s, back to 100 ms once connected.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub fn wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }
}

struct Sink {
    config: SinkConfig,
    tx: mpsc::Sender<Arc<Line>>,
    stats: Arc<Stats>,
    /// Of `stats.dropped`, what `lost` events told already.
    reported: u64,
    /// `stats.dropped` when last looked at: an outage is told once it is over.
    seen: u64,
    lost_since: String,
}

/// What SIGHUP asks of the sinks.
#[derive(Debug)]
pub enum SinkControl {
    /// Files are reopened (after logrotate moved them), whatever the configuration says.
    Reopen,
    /// New settings: unchanged sinks keep running, the others are replaced.
    Configure(Vec<SinkConfig>),
}

pub type SinksControl = mpsc::Sender<SinkControl>;

/// A sink's task, by the sink's name, with its counters.
type NamedTask = (String, JoinHandle<()>, Arc<Stats>);

/// The sinks' tasks, to wait for at exit.
#[derive(Clone)]
pub struct SinkTasks {
    tasks: Arc<Mutex<Vec<NamedTask>>>,
    give_up: Arc<watch::Sender<bool>>,
}

impl SinkTasks {
    /// Waits until every sink delivered what it holds (its queue is closed once the writer is
    /// dropped), at most `patience`; then the sinks give up and say what they did not deliver.
    pub async fn finish(self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("not poisoned"));
        let mut late = Vec::new();
        // The deadline is shared: every sink has the same `patience`, not one after another.
        for (name, mut task, stats) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                late.push((name, task, stats));
            }
        }
        if late.is_empty() {
            return;
        }
        let _ = self.give_up.send(true);
        let last = Instant::now() + Duration::from_secs(1);
        for (name, task, stats) in late {
            if tokio::time::timeout_at(last, task).await.is_err() {
                // Stuck in a write: what it holds and what waits behind it are lost.
                let lost =
                    stats.queued.load(Ordering::Relaxed) + stats.in_hand.load(Ordering::Relaxed);
                stats.drop_events(lost);
                tracing::warn!("sink {name}: still busy at exit: {lost} events not delivered");
            }
        }
    }
}

/// Every configured sink: the writer side (see [`Emit`]).
pub struct Sinks {
    sinks: Vec<Sink>,
    seq: u64,
    tasks: SinkTasks,
    control: mpsc::Receiver<SinkControl>,
    observers: Vec<Observer>,
    /// Every sink's name and counters, as the metrics read them.
    shared: SinkStats,
    /// Whether a journald sink runs (and lines carry their text line).
    text_lines: bool,
}

/// Sees every event as it is written (the metrics).
type Observer = Box<dyn FnMut(&Event) + Send>;

/// Every running sink's name and counters.
pub type SinkStats = Arc<Mutex<Vec<(String, Arc<Stats>)>>>;

impl Sinks {
    /// Starts a task for every sink; must run inside the tokio runtime.
    pub fn start(configs: &[SinkConfig]) -> (Sinks, SinksControl, SinkTasks) {
        let (give_up, _) = watch::channel(false);
        let tasks = SinkTasks {
            tasks: Arc::default(),
            give_up: Arc::new(give_up),
        };
        let (control_tx, control) = mpsc::channel(4);
        let mut sinks = Sinks {
            sinks: Vec::new(),
            seq: 0,
            tasks: tasks.clone(),
            control,
            observers: Vec::new(),
            shared: SinkStats::default(),
            text_lines: false,
        };
        for c in configs {
            let sink = sinks.spawn(c.clone());
            sinks.sinks.push(sink);
        }
        sinks.share();
        (sinks, control_tx, tasks)
    }

    /// Also shows every event to `f` (the metrics).
    pub fn observe(&mut self, f: impl FnMut(&Event) + Send + 'static) {
        self.observers.push(Box::new(f));
    }

    /// Every sink's name and counters, kept current across reloads.
    pub fn stats(&self) -> SinkStats {
        self.shared.clone()
    }

    /// Publishes the running sinks to the metrics and notes what their lines need; after
    /// every change of the set.
    fn share(&mut self) {
        self.text_lines = self
            .sinks
            .iter()
            .any(|s| s.config.kind == SinkKind::Journald);
        *self.shared.lock().expect("not poisoned") = self
            .sinks
            .iter()
            .map(|s| (s.config.name.clone(), s.stats.clone()))
            .collect();
    }

    fn spawn(&self, config: SinkConfig) -> Sink {
        let (tx, rx) = mpsc::channel(config.buffer_events);
        let stats = Arc::new(Stats {
            healthy: AtomicBool::new(true),
            ..Default::default()
        });
        let feed = Feed {
            rx,
            stats: stats.clone(),
            name: config.name.clone(),
            outage: match config.kind {
                SinkKind::Tcp | SinkKind::Unix | SinkKind::Relp => Outage::Wait,
                SinkKind::Stdout | SinkKind::File | SinkKind::Journald => Outage::Drop,
            },
            give_up: self.tasks.give_up.subscribe(),
        };
        let task = match config.kind {
            // Blocking writes, each sink on a thread of its own: a stuck stdout blocks nothing
            // else, and no write goes through a thread pool hand-off.
            SinkKind::Stdout => tokio::task::spawn_blocking(move || stdout::run(feed)),
            SinkKind::File => {
                let config = config.clone();
                tokio::task::spawn_blocking(move || file::run(config, feed))
            }
            SinkKind::Tcp | SinkKind::Unix => tokio::spawn(stream::run(config.clone(), feed)),
            SinkKind::Relp => tokio::spawn(relp::run(config.clone(), feed)),
            SinkKind::Journald => tokio::spawn(journald::run(config.clone(), feed)),
        };
        self.tasks.tasks.lock().expect("not poisoned").push((
            config.name.clone(),
            task,
            stats.clone(),
        ));
        Sink {
            config,
            tx,
            stats,
            reported: 0,
            seen: 0,
            lost_since: Clock::now_rfc3339(),
        }
    }

    /// Applies new sink settings: a sink whose settings did not change keeps its queue and
    /// connection; a removed sink delivers what it holds and stops.
    fn reconfigure(&mut self, configs: Vec<SinkConfig>) {
        let mut old = std::mem::take(&mut self.sinks);
        for c in configs {
            match old.iter().position(|s| s.config == c) {
                Some(i) => self.sinks.push(old.remove(i)),
                None => {
                    tracing::info!("sink {}: started", c.name);
                    let sink = self.spawn(c);
                    self.sinks.push(sink);
                }
            }
        }
        for gone in old {
            tracing::info!("sink {}: removed", gone.config.name);
        }
        self.share();
    }
}

impl Emit for Sinks {
    fn emit(&mut self, mut event: Event) -> std::io::Result<()> {
        self.seq += 1;
        event.seq = self.seq;
        for o in &mut self.observers {
            o(&event);
        }
        let text = self.text_lines;
        let line = Arc::new(Line::encode(&event, text)?);
        let lost_of = match &event.data {
            Data::Lost(l) => l.cause.strip_prefix("sink:"),
            _ => None,
        };
        for s in &self.sinks {
            // Counted before it can be taken, so that the count never goes below zero.
            s.stats.queued.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = s.tx.try_send(line.clone()) {
                s.stats.taken(1);
                // A sink's own loss notice that it cannot take is not one more loss to tell:
                // counting it would feed a notice a tick, forever.
                if lost_of == Some(s.config.name.as_str()) {
                    continue;
                }
                if s.stats.dropped.load(Ordering::Relaxed) == s.reported {
                    match e {
                        mpsc::error::TrySendError::Full(_) => tracing::warn!(
                            "sink {}: its buffer of {} events is full; dropping until it drains",
                            s.config.name,
                            s.config.buffer_events
                        ),
                        mpsc::error::TrySendError::Closed(_) => {
                            tracing::warn!("sink {}: stopped; dropping", s.config.name)
                        }
                    }
                }
                s.stats.drop_events(1);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Each sink's task writes out whenever its queue is empty.
        Ok(())
    }

    fn lines_written(&self) -> u64 {
        self.seq
    }

    fn closed(&self) -> bool {
        self.sinks.iter().any(|s| {
            s.config.kind == SinkKind::Stdout
                && (s.stats.closed.load(Ordering::Relaxed) || stdout_closed())
        })
    }

    fn due(&mut self) -> Vec<Data> {
        while let Ok(control) = self.control.try_recv() {
            match control {
                SinkControl::Reopen => {
                    for s in &self.sinks {
                        s.stats.reopen.store(true, Ordering::Relaxed);
                    }
                }
                SinkControl::Configure(configs) => self.reconfigure(configs),
            }
        }
        let mut out = Vec::new();
        for s in &mut self.sinks {
            if s.stats.stalled() && s.stats.healthy.swap(false, Ordering::Relaxed) {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "sink {}: a write has not returned in {} s: down until it does",
                    s.config.name,
                    WRITE_DEADLINE.as_secs()
                );
            }
            let dropped = s.stats.dropped.load(Ordering::Relaxed);
            // Told once an outage is over, with all it cost: the sink works, its queue has
            // room again, and nothing more was dropped since the last look.
            let over =
                s.stats.healthy.load(Ordering::Relaxed) && s.tx.capacity() > 0 && dropped == s.seen;
            s.seen = dropped;
            if dropped > s.reported && over {
                let count = dropped - s.reported;
                tracing::warn!("sink {}: {count} events lost", s.config.name);
                s.reported = dropped;
                let now = Clock::now_rfc3339();
                out.push(Data::Lost(Lost {
                    count,
                    cause: format!("sink:{}", s.config.name),
                    since: std::mem::replace(&mut s.lost_since, now),
                }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Vec<Event> {
        include_str!("../../../tests/fixtures/restart_gap.ndjson")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a v1 event"))
            .collect()
    }

    #[test]
    fn a_line_is_the_event_as_ndjson_with_what_syslog_and_journald_need() {
        let events = recorded();
        let finding = events
            .iter()
            .find(|e| matches!(&e.data, Data::Finding(f) if f.severity == "error"))
            .expect("the recording has an error finding");
        let line = Line::encode(finding, true).unwrap();
        assert!(line.json.ends_with('\n') && !line.json[..line.json.len() - 1].contains('\n'));
        let back: Event = serde_json::from_str(&line.json).unwrap();
        assert_eq!(&back, finding);
        assert_eq!((line.kind, line.severity), ("finding", 3));
        assert!(line.rule.is_some() && line.unit.is_some(), "{line:?}");
        let accept = events
            .iter()
            .find(|e| matches!(e.data, Data::Accept(_)))
            .expect("an accept");
        let line = Line::encode(accept, true).unwrap();
        assert_eq!(
            (line.kind, line.severity, line.rule.as_deref()),
            ("accept", 6, None)
        );
        assert!(
            line.unit.is_some() && line.socket_unit.is_some(),
            "{line:?}"
        );
    }

    #[test]
    fn backoff_doubles_to_five_seconds_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.wait(), Duration::from_millis(100));
    }
}
