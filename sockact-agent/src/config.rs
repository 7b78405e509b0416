//! sockact-agent's configuration (DESIGN.md, "sockact-agent"): TOML, every key known (an unknown
//! key is an error), every error naming the key and its line. `packaging/agent.toml` documents
//! every key.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::detect::{Thresholds, thresholds::DEFAULTS};

/// Where the agent looks when no `--config` is given; a missing default file means defaults.
pub const DEFAULT_PATH: &str = "/etc/sockact/agent.toml";
/// Prometheus metrics, by default.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";
/// Events a sink may hold before it drops, by default.
pub const DEFAULT_BUFFER: usize = 10_000;
/// An event in a buffer takes about 570 bytes: this many are about 110 MiB, for one sink
/// whose peer stopped reading (the shipped unit's MemoryMax= bounds the whole agent).
pub const MAX_BUFFER: usize = 200_000;

/// What a configuration error shows comes from the file: control characters in it (NUL, ESC,
/// newlines) are written escaped, so that an error stays one harmless line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read {}: {}", shown(.path), shown(.why))]
    Read { path: String, why: String },
    #[error("{}: line {line}: {}: {}", shown(.path), shown(.key), shown(.why))]
    Key {
        path: String,
        line: usize,
        key: String,
        why: String,
    },
    #[error("{}: {}", shown(.path), shown(.why))]
    Other { path: String, why: String },
}

fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    crate::text::for_terminal(s)
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Stdout,
    File,
    Tcp,
    Unix,
    Relp,
    Journald,
}

impl SinkKind {
    pub const NAMES: [&str; 6] = ["stdout", "file", "tcp", "unix", "relp", "journald"];

    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Stdout => "stdout",
            SinkKind::File => "file",
            SinkKind::Tcp => "tcp",
            SinkKind::Unix => "unix",
            SinkKind::Relp => "relp",
            SinkKind::Journald => "journald",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default)]
    units: Vec<Spanned<String>>,
    #[serde(default)]
    exclude_units: Vec<Spanned<String>>,
    #[serde(default)]
    all_processes: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: Spanned<SinkKind>,
    name: Option<String>,
    path: Option<Spanned<PathBuf>>,
    address: Option<Spanned<String>>,
    max_size_mb: Option<Spanned<u64>>,
    keep: Option<Spanned<u32>>,
    buffer_events: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "yes")]
    enabled: bool,
    listen: Option<Spanned<String>>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            enabled: true,
            listen: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Largest file before rotation, in MiB, and most old files kept.
const MAX_SIZE_MB: u64 = 1024 * 1024;
const MAX_KEEP: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    watch: RawWatch,
    #[serde(default)]
    sink: Vec<Spanned<RawSink>>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    rules: BTreeMap<String, Spanned<BTreeMap<String, Spanned<u64>>>>,
}

/// One sink, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    pub kind: SinkKind,
    /// As it appears in `lost` causes (`sink:<name>`) and metrics: `name`, else the kind (with
    /// a number when there are several).
    pub name: String,
    pub path: Option<PathBuf>,
    pub address: Option<String>,
    pub max_size_mb: u64,
    pub keep: u32,
    pub buffer_events: usize,
}

/// The configuration, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub units: Vec<String>,
    pub exclude_units: Vec<String>,
    pub all_processes: bool,
    pub sinks: Vec<SinkConfig>,
    pub metrics: Option<String>,
    pub thresholds: Thresholds,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            units: Vec::new(),
            exclude_units: Vec::new(),
            all_processes: false,
            sinks: vec![SinkConfig {
                kind: SinkKind::Stdout,
                name: "stdout".into(),
                path: None,
                address: None,
                max_size_mb: 100,
                keep: 5,
                buffer_events: DEFAULT_BUFFER,
            }],
            metrics: Some(DEFAULT_METRICS.into()),
            thresholds: Thresholds::default(),
        }
    }
}

/// The 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key written on a line (`kind = 42` -> `kind`), for an error that points there.
fn key_on(text: &str, line: usize) -> String {
    let l = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    match l.split_once('=') {
        Some((k, _)) => k.trim().trim_matches('"').to_owned(),
        None => l.trim().trim_matches(['[', ']']).to_owned(),
    }
}

/// Serde names a field or variant in backquotes: `unknown field `fo``.
fn quoted(msg: &str) -> Option<&str> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    Some(&msg[start..end])
}

/// A file sink's path must name a file the agent can create or append to: not empty, not a
/// directory, in a directory that exists (the agent creates no directories: the shipped unit's
/// LogsDirectory= makes /var/log/sockact).
fn check_file_path(path: &Path) -> Result<(), String> {
    let shown = path.display().to_string().escape_debug().to_string();
    if path.as_os_str().is_empty() {
        return Err("a file sink needs a file name".into());
    }
    if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
        return Err(format!("{shown} is a directory: name a file in it"));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        let dir = dir.display().to_string().escape_debug().to_string();
        return Err(format!(
            "{dir} does not exist: create it first (for /var/log/sockact the shipped unit's \
             LogsDirectory= does)"
        ));
    }
    Ok(())
}

impl AgentConfig {
    /// Reads `path`; `required` says whether a missing file is an error (`--config`) or means
    /// the defaults (the default path).
    pub fn load(path: &Path, required: bool) -> Result<AgentConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => AgentConfig::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(AgentConfig::default())
            }
            Err(e) => Err(ConfigError::Read {
                path: path.display().to_string(),
                why: e.to_string(),
            }),
        }
    }

    /// Parses and checks a configuration's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<AgentConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            match e.span() {
                Some(span) => {
                    let line = line_at(text, span.start);
                    let key = if message.starts_with("unknown field") {
                        quoted(&message).map_or_else(|| key_on(text, line), str::to_owned)
                    } else {
                        key_on(text, line)
                    };
                    let why = if key == "kind" && !message.contains("expected one of") {
                        format!("{message}; one of {}", SinkKind::NAMES.join(", "))
                    } else {
                        message
                    };
                    ConfigError::Key {
                        path: path.into(),
                        line,
                        key,
                        why,
                    }
                }
                None => ConfigError::Other {
                    path: path.into(),
                    why: message,
                },
            }
        })?;
        let key_err = |span: std::ops::Range<usize>, key: &str, why: String| ConfigError::Key {
            path: path.into(),
            line: line_at(text, span.start),
            key: key.into(),
            why,
        };
        let mut sinks = Vec::new();
        let count = |k: SinkKind| {
            raw.sink
                .iter()
                .filter(|s| *s.get_ref().kind.get_ref() == k)
                .count()
        };
        for (i, spanned) in raw.sink.iter().enumerate() {
            let s = spanned.get_ref();
            let kind = *s.kind.get_ref();
            let need = |field: &str, present: bool| {
                if present {
                    Ok(())
                } else {
                    Err(key_err(
                        s.kind.span(),
                        field,
                        format!("a {} sink needs {field}", kind.name()),
                    ))
                }
            };
            match kind {
                SinkKind::File | SinkKind::Unix => need("path", s.path.is_some())?,
                SinkKind::Tcp | SinkKind::Relp => need("address", s.address.is_some())?,
                SinkKind::Stdout | SinkKind::Journald => {}
            }
            if let (SinkKind::File, Some(p)) = (kind, &s.path) {
                check_file_path(p.get_ref()).map_err(|why| key_err(p.span(), "path", why))?;
            }
            if let Some(a) = &s.address {
                let has_port = a.get_ref().rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty()
                        && !host.chars().any(|c| c.is_control() || c.is_whitespace())
                        && port.parse::<u16>().is_ok()
                });
                if !has_port {
                    return Err(key_err(
                        a.span(),
                        "address",
                        format!("{:?} is not host:port", a.get_ref()),
                    ));
                }
            }
            let within =
                |v: &Option<Spanned<u64>>, key: &str, min: u64, max: u64, default: u64| match v {
                    None => Ok(default),
                    Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
                    Some(v) => Err(key_err(
                        v.span(),
                        key,
                        format!("{} is out of range: {min} to {max}", v.get_ref()),
                    )),
                };
            let widen = |v: &Option<Spanned<usize>>| {
                v.as_ref()
                    .map(|v| Spanned::new(v.span(), *v.get_ref() as u64))
            };
            let widen32 = |v: &Option<Spanned<u32>>| {
                v.as_ref()
                    .map(|v| Spanned::new(v.span(), u64::from(*v.get_ref())))
            };
            let max_size_mb = within(&s.max_size_mb, "max_size_mb", 1, MAX_SIZE_MB, 100)?;
            let keep = within(&widen32(&s.keep), "keep", 0, u64::from(MAX_KEEP), 5)? as u32;
            let buffer = within(
                &widen(&s.buffer_events),
                "buffer_events",
                1,
                MAX_BUFFER as u64,
                DEFAULT_BUFFER as u64,
            )? as usize;
            let name = s.name.clone().unwrap_or_else(|| {
                if count(kind) > 1 {
                    format!("{}{}", kind.name(), i + 1)
                } else {
                    kind.name().to_owned()
                }
            });
            sinks.push(SinkConfig {
                kind,
                name,
                path: s.path.as_ref().map(|p| p.get_ref().clone()),
                address: s.address.as_ref().map(|a| a.get_ref().clone()),
                max_size_mb,
                keep,
                buffer_events: buffer,
            });
        }
        let mut names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Other {
                path: path.into(),
                why: format!("two sinks are named {}: give each its own name", w[0]),
            });
        }
        if sinks.is_empty() {
            sinks = AgentConfig::default().sinks;
        }
        let mut thresholds = Thresholds::default();
        for (rule, keys) in &raw.rules {
            if !DEFAULTS.iter().any(|d| d.0 == rule) {
                let mut known: Vec<&str> = DEFAULTS.iter().map(|d| d.0).collect();
                known.dedup();
                return Err(key_err(
                    keys.span(),
                    &format!("rules.{rule}"),
                    format!("no rule with thresholds; known: {}", known.join(", ")),
                ));
            }
            for (key, value) in keys.get_ref() {
                thresholds.set(rule, key, *value.get_ref()).map_err(|e| {
                    key_err(
                        value.span(),
                        &format!("rules.{rule}.{key}"),
                        e.to_string().replace("--set ", ""),
                    )
                })?;
            }
        }
        if let Some(listen) = &raw.metrics.listen
            && listen.get_ref().parse::<std::net::SocketAddr>().is_err()
        {
            return Err(key_err(
                listen.span(),
                "listen",
                format!(
                    "{:?} is not an address:port, e.g. 127.0.0.1:9464",
                    listen.get_ref()
                ),
            ));
        }
        let metrics = raw.metrics.enabled.then(|| {
            raw.metrics
                .listen
                .as_ref()
                .map_or_else(|| DEFAULT_METRICS.to_owned(), |l| l.get_ref().clone())
        });
        for (list, key) in [
            (&raw.watch.units, "units"),
            (&raw.watch.exclude_units, "exclude_units"),
        ] {
            for unit in list {
                crate::systemd::check_unit_name(unit.get_ref())
                    .map_err(|why| key_err(unit.span(), key, why))?;
            }
        }
        let names = |list: Vec<Spanned<String>>| list.into_iter().map(|u| u.into_inner()).collect();
        Ok(AgentConfig {
            units: names(raw.watch.units),
            exclude_units: names(raw.watch.exclude_units),
            all_processes: raw.watch.all_processes,
            sinks,
            metrics,
            thresholds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        AgentConfig::parse(text, "agent.toml").unwrap_err()
    }

    #[test]
    fn defaults_are_one_stdout_sink_and_metrics_on_loopback() {
        let c = AgentConfig::parse("", "agent.toml").unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.metrics.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(c.sinks[0].kind, SinkKind::Stdout);
    }

    #[test]
    fn every_section_and_key() {
        let c = AgentConfig::parse(
            r#"
[watch]
units = ["web", "db.socket"]
exclude_units = ["noisy"]
all_processes = false

[[sink]]
kind = "file"
path = "/tmp/events.ndjson"
max_size_mb = 10
keep = 3

[[sink]]
kind = "relp"
name = "central"
address = "logs.example:2514"
buffer_events = 50000

[metrics]
enabled = false

[rules.fds_ignored]
after_ms = 5000
"#,
            "agent.toml",
        )
        .unwrap();
        assert_eq!(c.units, ["web", "db.socket"]);
        assert_eq!(c.exclude_units, ["noisy"]);
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.sinks[0].name, "file");
        assert_eq!(c.sinks[0].max_size_mb, 10);
        assert_eq!(c.sinks[1].name, "central");
        assert_eq!(c.sinks[1].buffer_events, 50_000);
        assert_eq!(c.metrics, None);
        assert_eq!(c.thresholds.get("fds_ignored", "after_ms"), 5000);
    }

    #[test]
    fn a_bad_kind_names_kind_and_its_line() {
        let e = err("[[sink]]\nkind = 42\n");
        let ConfigError::Key { line, key, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!((*line, key.as_str()), (2, "kind"), "{e}");
        assert!(
            e.to_string().starts_with("agent.toml: line 2: kind: "),
            "{e}"
        );
        let e = err("[[sink]]\nkind = \"syslog\"\n");
        assert!(e.to_string().contains("line 2: kind:"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_them() {
        let e = err("[watch]\nunits = []\nfoo = 1\n");
        assert!(e.to_string().contains("line 3: foo:"), "{e}");
        let e = err("[nope]\n");
        assert!(e.to_string().contains("line 1: nope:"), "{e}");
        let e = err("[rules.fds_ignored]\nafter = 5\n");
        assert!(
            e.to_string().contains("line 2: rules.fds_ignored.after:"),
            "{e}"
        );
        assert!(e.to_string().contains("known: fds_ignored.after_ms"), "{e}");
    }

    #[test]
    fn sinks_need_where_to_write() {
        let e = err("[[sink]]\nkind = \"file\"\n");
        assert!(
            e.to_string()
                .contains("line 2: path: a file sink needs path"),
            "{e}"
        );
        let e = err("[[sink]]\nkind = \"tcp\"\n");
        assert!(e.to_string().contains("address"), "{e}");
        let e = err(
            "[[sink]]\nkind = \"tcp\"\naddress = \"a:1\"\n[[sink]]\nkind = \"tcp\"\naddress = \"b:1\"\nname = \"tcp1\"\n",
        );
        assert!(e.to_string().contains("two sinks are named tcp1"), "{e}");
    }

    #[test]
    fn values_out_of_range_name_their_key_and_line() {
        let cases = [
            (
                "[[sink]]\nkind = \"file\"\npath = \"/x\"\nmax_size_mb = 0\n",
                "line 4: max_size_mb:",
            ),
            (
                "[[sink]]\nkind = \"file\"\npath = \"/x\"\nkeep = 100000\n",
                "line 4: keep:",
            ),
            (
                "[[sink]]\nkind = \"stdout\"\n\nbuffer_events = 0\n",
                "line 4: buffer_events:",
            ),
            (
                "[[sink]]\nkind = \"tcp\"\naddress = \"logs.example\"\n",
                "line 3: address:",
            ),
            ("[metrics]\nlisten = \"localhost\"\n", "line 2: listen:"),
            ("[rules.nosuch]\n", "line 1: rules.nosuch:"),
            (
                "[[sink]]\nkind = \"file\"\npath = \"\"\n",
                "line 3: path: a file sink needs a file name",
            ),
            (
                "[[sink]]\nkind = \"file\"\npath = \"/tmp\"\n",
                "line 3: path: /tmp is a directory",
            ),
            (
                "[[sink]]\nkind = \"file\"\npath = \"/nonexistent/x/events\"\n",
                "line 3: path: /nonexistent/x does not exist",
            ),
            (
                "[[sink]]\nkind = \"tcp\"\naddress = \"a:1\"\nbuffer_events = 100000000\n",
                "line 4: buffer_events: 100000000 is out of range: 1 to 200000",
            ),
            (
                "[watch]\nunits = [\"ok\", \"\"]\n",
                "line 2: units: a unit name cannot be empty",
            ),
            (
                "[watch]\n\nexclude_units = [\"a/b\"]\n",
                "line 3: exclude_units: \"a/b\" holds '/'",
            ),
            (
                "[watch]\nunits = [\"x\\u001b[2J\"]\n",
                "line 2: units: \"x\\u{1b}[2J\" holds '\\u{1b}'",
            ),
        ];
        for (text, want) in cases {
            let e = err(text).to_string();
            assert!(e.contains(want), "{want} in {e}");
        }
    }

    #[test]
    fn errors_name_each_rule_once_and_show_control_characters_escaped() {
        let e = err("[rules.nosuch]\n").to_string();
        assert_eq!(e.matches("crash_loop").count(), 1, "{e}");
        for text in [
            "[watch]\nfo\u{1b}[2Jo = 1\n",
            "[watch]\nunits = [\"a\\u0000b\"]\n",
            "[[sink]]\nkind = \"tcp\"\naddress = \"a\\nb:1\"\n",
        ] {
            let e = err(text).to_string();
            assert!(!e.chars().any(|c| c.is_control()), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn a_missing_default_file_means_defaults_a_missing_given_file_is_an_error() {
        let missing = Path::new("/nonexistent/agent.toml");
        assert_eq!(
            AgentConfig::load(missing, false).unwrap(),
            AgentConfig::default()
        );
        assert!(matches!(
            AgentConfig::load(missing, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
