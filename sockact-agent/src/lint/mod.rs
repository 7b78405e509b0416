//! `sockact-trace lint [PATH|UNIT]...`: the socket-activation mistakes in unit files that
//! `systemd-analyze verify` does not catch (DESIGN.md's lint rules, research/failure-modes.md),
//! reported as findings whose evidence is the unit file lines, with file and line. No root, no
//! running systemd needed. One module per rule family; each reads the units and pushes findings.
mod exposure;
mod lifecycle;
pub mod load;
mod naming;
mod pairing;
mod proxy;
pub mod unit_file;

use std::io::Write;

use serde_json::{Value, json};

use crate::{
    clock::Clock,
    detect::figures,
    events::{Data, Event, Finding, SCHEMA_VERSION},
    output::{Format, Output},
    system,
    text::for_terminal,
};
use load::{LoadError, Scope, UnitSet};
use unit_file::{Entry, Header, UnitFile};

/// Rules whose findings on real units were mostly deliberate choices (on the units of 23
/// Debian packages, 47 of 48): reported with `--pedantic` only.
pub const PEDANTIC: &[&str] = &["listen_all_addresses", "runs_as_root", "unix_socket_mode"];

/// Every finding of every rule over a set of units, ordered by file and line.
pub fn lint(set: &UnitSet) -> Vec<Finding> {
    let mut out = Vec::new();
    pairing::check(set, &mut out);
    lifecycle::check(set, &mut out);
    naming::check(set, &mut out);
    proxy::check(set, &mut out);
    exposure::check(set, &mut out);
    out.sort_by_key(where_of);
    out
}

/// (file, line) of a finding's first evidence.
fn where_of(f: &Finding) -> (String, u64) {
    let first = f.evidence.first();
    (
        first
            .and_then(|e| e["file"].as_str())
            .unwrap_or_default()
            .to_owned(),
        first.and_then(|e| e["line"].as_u64()).unwrap_or(0),
    )
}

/// A unit file line as evidence.
pub fn cite(e: &Entry) -> Value {
    json!({ "file": e.file.display().to_string(), "line": e.line, "text": e.text })
}

/// A section header as evidence (where a missing setting belongs).
pub fn cite_header(h: &Header) -> Value {
    json!({
        "file": h.file.display().to_string(),
        "line": h.line,
        "text": format!("[{}]", h.section),
    })
}

/// The section a unit's evidence points at when a setting is missing: its header, else its
/// file's first line.
pub fn cite_section(unit: &UnitFile, section: &str) -> Value {
    match unit.header(section) {
        Some(h) => cite_header(h),
        None => json!({ "file": unit.path.display().to_string(), "line": 1, "text": "" }),
    }
}

/// A lint finding.
pub struct Found<'a> {
    pub rule: &'a str,
    pub severity: &'a str,
    pub unit: Option<String>,
    pub socket_unit: Option<String>,
    pub message: String,
    pub hint: String,
    pub evidence: Vec<Value>,
    pub figures: Value,
}

impl Found<'_> {
    pub fn push(self, out: &mut Vec<Finding>) {
        out.push(Finding {
            rule: self.rule.into(),
            severity: self.severity.into(),
            unit: self.unit,
            socket_unit: self.socket_unit,
            message: self.message,
            hint: self.hint,
            evidence: self.evidence,
            figures: figures(self.figures),
        });
    }
}

/// A finding as a compiler would print it: `file:line: severity rule: message`, the other
/// evidence lines below it, then the hint.
pub fn text(f: &Finding) -> String {
    let place = |e: &Value| {
        format!(
            "{}:{}",
            for_terminal(e["file"].as_str().unwrap_or("?")),
            e["line"].as_u64().unwrap_or(0)
        )
    };
    let mut s = match f.evidence.first() {
        Some(first) => format!("{}: ", place(first)),
        None => String::new(),
    };
    s.push_str(&format!(
        "{} {}: {}",
        f.severity,
        f.rule,
        for_terminal(&f.message)
    ));
    for e in f.evidence.iter().skip(1) {
        s.push_str(&format!(
            "\n    {}: {}",
            place(e),
            for_terminal(e["text"].as_str().unwrap_or_default())
        ));
    }
    s.push_str(&format!("\n    hint: {}", for_terminal(&f.hint)));
    s
}

/// The `lint` subcommand: writes the findings; returns whether a warning or an error was among
/// them (exit 1).
pub fn run(
    args: &[String],
    scope: &Scope,
    pedantic: bool,
    format: Format,
) -> Result<bool, LoadError> {
    let set = UnitSet::load_in(args, scope)?;
    let mut findings = lint(&set);
    if !pedantic {
        findings.retain(|f| !PEDANTIC.contains(&f.rule.as_str()));
    }
    let problems = findings.iter().any(|f| f.severity != "info");
    match format {
        Format::Text => {
            let mut stdout = std::io::stdout().lock();
            for f in &findings {
                if writeln!(stdout, "{}", text(f)).is_err() {
                    break;
                }
            }
        }
        Format::Json => {
            let mut out = Output::stdout(format);
            let host = system::hostname();
            for f in findings {
                let e = Event {
                    v: SCHEMA_VERSION,
                    seq: 0,
                    ts: Clock::now_rfc3339(),
                    host: host.clone(),
                    data: Data::Finding(f),
                    process: None,
                };
                if out.emit(e).is_err() {
                    break;
                }
            }
            let _ = out.flush();
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixtures(dir: &str) -> String {
        format!("{}/../tests/lint/{dir}", env!("CARGO_MANIFEST_DIR"))
    }

    fn load(args: &[String]) -> Vec<Finding> {
        lint(&UnitSet::load(args).expect("the fixtures load"))
    }

    /// The line of a fixture file holding `needle`.
    fn line_of(file: &str, needle: &str) -> u64 {
        let text = std::fs::read_to_string(file).unwrap();
        text.lines()
            .position(|l| !l.starts_with('#') && l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {file}")) as u64
            + 1
    }

    #[test]
    fn every_rule_fires_on_its_bad_unit_at_its_line() {
        let bad = fixtures("bad");
        let installed = fixtures("installed");
        let findings = load(&[bad.clone(), installed.clone()]);
        // (rule, severity, file, the text of the line its evidence starts at)
        let expected: &[(&str, &str, String, &str)] = &[
            (
                "accept_yes_not_template",
                "error",
                format!("{bad}/ayt.socket"),
                "Accept=yes",
            ),
            (
                "template_without_accept",
                "error",
                format!("{bad}/twa.socket"),
                "[Socket]",
            ),
            (
                "no_matching_service",
                "error",
                format!("{bad}/orphan.socket"),
                "[Socket]",
            ),
            (
                "partof_on_socket",
                "warning",
                format!("{bad}/partof.socket"),
                "PartOf=",
            ),
            (
                "fdname_shared",
                "warning",
                format!("{bad}/names.socket"),
                "ListenStream=127.0.0.1:9005",
            ),
            (
                "proxyd_without_ready_guard",
                "warning",
                format!("{bad}/unguarded.service"),
                "systemd-socket-proxyd",
            ),
            (
                "restart_always_activated",
                "warning",
                format!("{bad}/always.service"),
                "Restart=always",
            ),
            (
                "self_stop_hack",
                "warning",
                format!("{bad}/selfstop.service"),
                "ExecStop=",
            ),
            (
                "socket_not_enabled",
                "warning",
                format!("{installed}/multi-user.target.wants/lonely.service"),
                "",
            ),
            (
                "no_start_limit",
                "info",
                format!("{bad}/nolimit.service"),
                "Restart=on-failure",
            ),
            (
                "listen_all_addresses",
                "info",
                format!("{bad}/allif.socket"),
                "ListenStream=9012",
            ),
            (
                "reuseport",
                "info",
                format!("{bad}/reuse.socket.d/reuseport.conf"),
                "ReusePort=yes",
            ),
            (
                "runs_as_root",
                "info",
                format!("{bad}/rooty.service"),
                "[Service]",
            ),
            (
                "unix_socket_mode",
                "info",
                format!("{bad}/unixy.socket"),
                "ListenStream=/run",
            ),
        ];
        let mut rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
        rules.sort();
        let mut want: Vec<&str> = expected.iter().map(|e| e.0).collect();
        want.sort();
        assert_eq!(rules, want, "each rule once: {findings:#?}");
        for (rule, severity, file, needle) in expected {
            let f = findings.iter().find(|f| f.rule == *rule).unwrap();
            assert_eq!(f.severity, *severity, "{rule}");
            assert!(!f.hint.is_empty(), "{rule}");
            let first = &f.evidence[0];
            assert_eq!(first["file"], file.as_str(), "{rule}: {f:?}");
            // A link enabling a unit has no line.
            let line = if needle.is_empty() {
                0
            } else {
                line_of(file, needle)
            };
            assert_eq!(first["line"], line, "{rule}: {f:?}");
            assert!(Path::new(file).exists());
        }
    }

    #[test]
    fn a_correct_set_has_no_finding_at_all() {
        // Including the three-unit socket-proxyd pattern with its cold-start guard, an
        // Accept=yes pair, a unix socket with its mode, and a second socket naming a service.
        let findings = load(&[fixtures("good")]);
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn a_socket_given_alone_is_checked_with_the_units_it_names() {
        let bad = fixtures("bad");
        for (file, rule) in [
            ("ayt.socket", "accept_yes_not_template"),
            ("unguarded.socket", "proxyd_without_ready_guard"),
            ("always.socket", "restart_always_activated"),
            ("rooty.socket", "runs_as_root"),
        ] {
            let findings = load(&[format!("{bad}/{file}")]);
            let rules: Vec<&str> = findings.iter().map(|f| f.rule.as_str()).collect();
            assert_eq!(rules, [rule], "{file}: {findings:#?}");
        }
    }

    #[test]
    fn lint_says_before_deploying_what_the_traces_show_on_the_test_bed() {
        let scenarios = format!("{}/../tests/scenarios", env!("CARGO_MANIFEST_DIR"));
        let problems = |dir: &str| {
            let mut p: Vec<(String, String)> = load(&[format!("{scenarios}/{dir}")])
                .into_iter()
                .filter(|f| f.severity != "info")
                .map(|f| (f.rule, f.unit.unwrap_or_default()))
                .collect();
            p.sort();
            p
        };
        let pair = |r: &str, u: &str| (r.to_owned(), u.to_owned());
        // The unguarded proxy that accept_before_ready catches; its guarded twin passes.
        assert_eq!(
            problems("proxy"),
            [pair("proxyd_without_ready_guard", "proxy.service")]
        );
        // The socket that listener_lost sees closed with its service.
        assert_eq!(
            problems("listener-lost"),
            [pair("partof_on_socket", "bound.service")]
        );
        // The Restart=always loops that crash_loop reports.
        assert_eq!(
            problems("crash-loop"),
            [
                pair("restart_always_activated", "dying.service"),
                pair("restart_always_activated", "idler.service"),
            ]
        );
        // The Accept=yes pair and the healthy control: correct as written.
        assert_eq!(problems("accept-storm"), []);
        assert_eq!(problems("healthy"), []);
    }

    #[test]
    fn what_is_not_there_is_an_error_naming_it() {
        let err = UnitSet::load(&["no-such-unit-anywhere".into()]).unwrap_err();
        assert!(err.to_string().contains("no-such-unit-anywhere"), "{err}");
        assert!(UnitSet::load(&["/no/such/file.socket".into()]).is_err());
    }

    #[test]
    fn text_says_file_and_line_first() {
        let findings = load(&[format!("{}/partof.socket", fixtures("bad"))]);
        let t = text(&findings[0]);
        assert!(
            t.starts_with(&format!(
                "{}/partof.socket:3: warning partof_on_socket: ",
                fixtures("bad")
            )),
            "{t}"
        );
        assert!(t.contains("\n    hint: "), "{t}");
    }
}
