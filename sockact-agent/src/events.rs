//! The user-facing event schema, NDJSON v1 (DESIGN.md, "NDJSON v1"). Every line is one
//! [`Event`]: the common fields, the process fields when a process caused it, and the fields of
//! its kind. Optional fields are left out rather than written as null.
use serde::{Deserialize, Serialize};

/// Schema version, the `v` of every line.
pub const SCHEMA_VERSION: u8 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub v: u8,
    /// 1 for the first line a sockact process writes, then +1 a line; set by the writer.
    pub seq: u64,
    /// RFC 3339, UTC, nanoseconds.
    pub ts: String,
    pub host: String,
    #[serde(flatten)]
    pub data: Data,
    #[serde(flatten, skip_serializing_if = "Option::is_none", default)]
    pub process: Option<Process>,
}

/// Who caused an event.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Process {
    /// Host TGID.
    pub pid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ppid: Option<u32>,
    /// The PID in the process's own namespace, only when it differs from `pid`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ns_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket_unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cgroup: Option<String>,
}

/// The kind of an event and its own fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Data {
    Exec(Exec),
    Exit(Exit),
    Bind(Bind),
    Listen(Listen),
    Accept(Accept),
    Connect(Connect),
    Shutdown(Shutdown),
    Listener(Listener),
    Queue(Queue),
    Drop(Dropped),
    Unit(Unit),
    Finding(Finding),
    Lost(Lost),
    Agent(Agent),
    Verify(Verify),
    Summary(Summary),
}

impl Data {
    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Data::Exec(_) => "exec",
            Data::Exit(_) => "exit",
            Data::Bind(_) => "bind",
            Data::Listen(_) => "listen",
            Data::Accept(_) => "accept",
            Data::Connect(_) => "connect",
            Data::Shutdown(_) => "shutdown",
            Data::Listener(_) => "listener",
            Data::Queue(_) => "queue",
            Data::Drop(_) => "drop",
            Data::Unit(_) => "unit",
            Data::Finding(_) => "finding",
            Data::Lost(_) => "lost",
            Data::Agent(_) => "agent",
            Data::Verify(_) => "verify",
            Data::Summary(_) => "summary",
        }
    }
}

/// A value from the environment that should be a number but may not be.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum NumberOrString {
    Number(u64),
    String(String),
}

impl NumberOrString {
    /// A number when the whole value is decimal digits, the text otherwise.
    pub fn parse(text: &str) -> Self {
        match text.parse::<u64>() {
            Ok(n) if !text.starts_with('+') => NumberOrString::Number(n),
            _ => NumberOrString::String(text.to_owned()),
        }
    }

    /// LISTEN_FDS as `sd_listen_fds` reads it (systemd's `safe_atoi`): leading blanks, a sign,
    /// a `0x`, `0o` or `0b` base, leading zeros, and nothing after the digits; a value outside
    /// 0..=i32::MAX, or any other text, is kept as the text.
    pub fn listen_fds(text: &str) -> Self {
        match parse_c_int(text).filter(|n| (0..=i64::from(i32::MAX)).contains(n)) {
            Some(n) => NumberOrString::Number(n as u64),
            None => NumberOrString::String(text.to_owned()),
        }
    }

    /// LISTEN_PID as `sd_listen_fds` reads it (systemd's `parse_pid`): the same number syntax
    /// without a minus, a PID above 0 that fits a pid_t.
    pub fn listen_pid(text: &str) -> Self {
        match parse_c_int(text).filter(|n| (1..=i64::from(i32::MAX)).contains(n)) {
            Some(n) if !text.trim_start().starts_with('-') => NumberOrString::Number(n as u64),
            _ => NumberOrString::String(text.to_owned()),
        }
    }
}

/// A number as systemd's integer parsing takes it: leading whitespace, `+` or `-`, then
/// decimal, or `0x`/`0o`/`0b` and that base; nothing else may follow.
fn parse_c_int(text: &str) -> Option<i64> {
    let s = text.trim_start_matches([' ', '\t', '\n', '\r']);
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = match s.get(..2) {
        Some("0x" | "0X") => (16, &s[2..]),
        Some("0o" | "0O") => (8, &s[2..]),
        Some("0b" | "0B") => (2, &s[2..]),
        _ => (10, s),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = i64::from_str_radix(digits, radix).ok()?;
    Some(if neg { -n } else { n })
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Exec {
    pub filename: String,
    /// The first entries only.
    pub argv: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listen_pid: Option<NumberOrString>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listen_fds: Option<NumberOrString>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listen_fdnames: Option<Vec<String>>,
    /// More argv than was kept, or an entry cut to its field.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub argv_truncated: bool,
    /// LISTEN_FDNAMES was longer than the kernel record keeps: the names are not all there.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub listen_fdnames_truncated: bool,
    /// Whether a service manager or root set the LISTEN_* values (written only when not: any
    /// process can set them, and such values prove nothing).
    #[serde(skip_serializing_if = "is_true", default = "yes")]
    pub listen_trusted: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Exit {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signal: Option<String>,
}

/// `family` and `port` of an address, shared by the kinds that carry one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub addr: String,
    pub family: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<u16>,
}

/// `ret` and, for a failed call, `errno`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub ret: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub errno: Option<String>,
}

/// A listener's kernel identity: socket inode and network namespace inode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SocketId {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub netns: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bind {
    pub fd: i32,
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub reuseport: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(flatten)]
    pub socket: SocketId,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Listen {
    pub fd: i32,
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// As passed to listen().
    pub backlog: i32,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(flatten)]
    pub socket: SocketId,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Accept {
    pub listen_fd: i32,
    /// The new fd; absent when the call failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fd: Option<i64>,
    /// The peer.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub addr: Option<String>,
    /// The listener's local address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listener: Option<String>,
    /// Time the connection spent in the accept queue.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wait_us: Option<u64>,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(flatten)]
    pub socket: SocketId,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Connect {
    pub fd: i32,
    #[serde(flatten)]
    pub endpoint: Endpoint,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The outcome of an earlier connect on this fd that returned EINPROGRESS, seen when the
    /// connection was set up or refused.
    #[serde(rename = "async", skip_serializing_if = "std::ops::Not::not", default)]
    pub completed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Shutdown {
    pub fd: i32,
    /// `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
    pub how: String,
    /// The listening socket's address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listener: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(flatten)]
    pub socket: SocketId,
}

/// A listening socket systemd holds for a socket unit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Listener {
    /// `open`, `close` or `existing` (found by the start-up snapshot).
    pub action: String,
    pub addr: String,
    pub family: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backlog: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inode: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket_unit: Option<String>,
}

/// The accept queue of one of systemd's listeners: connections waiting for an accept.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Queue {
    /// The listener's address.
    pub listener: String,
    pub depth: u32,
    /// The queue's maximum (the effective backlog).
    pub max: u32,
    /// The largest depth since the previous queue event of this listener.
    pub peak: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket_unit: Option<String>,
    #[serde(flatten)]
    pub socket: SocketId,
}

/// Connections a watched listener dropped because its accept queue was full, from the
/// listener's own drop counter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Dropped {
    /// The listener's address.
    pub listener: String,
    /// Since the previous drop event of this listener.
    pub count: u64,
    /// Since the trace started (or the listener opened).
    pub total: u64,
    /// `accept_queue_full`.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket_unit: Option<String>,
    #[serde(flatten)]
    pub socket: SocketId,
}

/// A unit: resolved for `--unit`, or one of its changes as systemd reports them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Unit {
    pub unit: String,
    /// `resolved`, `started`, `stopped`, `restarted` or `state`.
    pub change: String,
    pub active_state: String,
    pub sub_state: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub main_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n_restarts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub invocation_id: Option<String>,
    /// `resolved` socket units: their Listen addresses.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listen: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accept: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backlog: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fd_names: Option<Vec<String>>,
    /// Socket units: the service they start (systemd's Triggers).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub triggers: Option<Vec<String>>,
    /// Why a failed unit failed, as systemd says (`trigger-limit-hit`, `exit-code`, ...).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<String>,
    /// `resolved` socket units: the units they are PartOf= or BindsTo=.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub part_of: Option<Vec<String>>,
    /// `resolved` Accept=yes socket units: MaxConnections=.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_connections: Option<u32>,
}

/// What a detector concluded, with the events that prove it (DESIGN.md, "Findings").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    pub rule: String,
    /// `info`, `warning` or `error`.
    pub severity: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub socket_unit: Option<String>,
    /// One sentence, plain words.
    pub message: String,
    /// What to change in the unit or the app.
    pub hint: String,
    /// Complete event objects, at most 16.
    pub evidence: Vec<serde_json::Value>,
    /// The rule's figures.
    #[serde(flatten)]
    pub figures: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Lost {
    pub count: u64,
    /// `ring_buffer_full`, `kernel_map_full`, `undecodable`, `sink:<name>`, or
    /// `rate_limit:<unit>` / `rate_limit:uid <N>`.
    pub cause: String,
    /// Start of the interval the count covers (RFC 3339).
    pub since: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Agent {
    /// `start`, `attached` or `stop`.
    pub action: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attached: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failed: Option<Vec<AttachFailure>>,
    /// On attached: the running kernel's release.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kernel: Option<String>,
    /// On attached: each family's mechanism in use, null where this kernel gave none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub features: Option<crate::features::Features>,
    /// On attached: the rules that cannot work with those features.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unavailable_rules: Option<Vec<String>>,
    /// On stop: records the kernel filter let through.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub submitted: Option<u64>,
    /// On stop: of those, the ones that found the ring buffer full.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lost: Option<u64>,
    /// On stop: the records read from the ring buffer; received + lost = submitted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub received: Option<u64>,
}

/// The verdict of `sockact-trace verify` on one unit (DESIGN.md, "sockact-trace verify").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Verify {
    pub unit: String,
    pub checks: Vec<Check>,
    /// Every check passed.
    pub ok: bool,
}

/// One check of the verification matrix.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub figures: serde_json::Map<String, serde_json::Value>,
    /// What was seen, in plain words.
    pub message: String,
}

/// The last line of a trace (DESIGN.md, "summary").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Summary {
    pub duration_s: f64,
    /// Lines by kind, this one excluded.
    pub events: std::collections::BTreeMap<String, u64>,
    /// Events that could not be shown (every `lost` count).
    pub lost: u64,
    /// One row a socket unit.
    pub units: Vec<UnitSummary>,
}

/// One socket unit and the service it starts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct UnitSummary {
    /// The service.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<String>,
    pub socket_unit: String,
    /// Listening addresses.
    pub listeners: u64,
    /// Execs of the service with LISTEN_FDS.
    pub activations: u64,
    /// Connections accepted on the socket unit's listeners.
    pub accepts: u64,
    pub cold_start_ms: Vec<f64>,
    pub restart_gap_ms: Vec<f64>,
    /// Time connections spent in the accept queue, where the kernel told it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accept_wait_ms: Option<Percentiles>,
    pub peak_depth: u32,
    /// The kernel's effective backlog (the largest of the listeners').
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backlog: Option<u32>,
    pub drops: u64,
    pub findings: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttachFailure {
    pub program: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: Data) -> Event {
        Event {
            v: SCHEMA_VERSION,
            seq: 7,
            ts: "2026-11-23T09:00:00.000000001Z".into(),
            host: "h".into(),
            data,
            process: Some(Process {
                pid: 42,
                comm: "python3".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn bind_line_has_the_documented_fields_and_no_nulls() {
        let e = event(Data::Bind(Bind {
            fd: 3,
            endpoint: Endpoint {
                addr: "127.0.0.1:8080".into(),
                family: "inet".into(),
                port: Some(8080),
            },
            reuseport: false,
            outcome: Outcome {
                ret: -98,
                errno: Some("EADDRINUSE".into()),
            },
            socket: SocketId {
                inode: None,
                netns: None,
            },
        }));
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["kind"], "bind");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["addr"], "127.0.0.1:8080");
        assert_eq!(v["port"], 8080);
        assert_eq!(v["ret"], -98);
        assert_eq!(v["errno"], "EADDRINUSE");
        assert!(v.get("inode").is_none());
        assert!(v.get("ppid").is_none());
        assert!(!serde_json::to_string(&e).unwrap().contains("null"));
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = event(Data::Exec(Exec {
            filename: "/bin/true".into(),
            argv: vec!["true".into()],
            listen_pid: Some(NumberOrString::parse("12")),
            listen_fds: Some(NumberOrString::parse("1")),
            listen_fdnames: Some(vec!["web".into()]),
            argv_truncated: false,
            listen_fdnames_truncated: false,
            listen_trusted: true,
        }));
        let line = serde_json::to_string(&e).unwrap();
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["listen_pid"], 12);
    }

    #[test]
    fn a_non_numeric_listen_pid_is_kept_as_a_string() {
        assert_eq!(
            NumberOrString::parse("12a"),
            NumberOrString::String("12a".into())
        );
        assert_eq!(
            NumberOrString::parse("+5"),
            NumberOrString::String("+5".into())
        );
        assert_eq!(NumberOrString::parse("0"), NumberOrString::Number(0));
    }
}
