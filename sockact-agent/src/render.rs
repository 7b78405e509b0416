//! The text format: one aligned line per event, colour only on a terminal, every string from
//! the kernel made safe for a terminal.
use std::fmt::Write as _;

use crate::{
    events::{Data, Event, NumberOrString, Summary, Verify},
    text::for_terminal,
};

fn colour(kind: &str) -> &'static str {
    match kind {
        "exec" | "exit" => "\x1b[36m",
        "bind" | "listen" => "\x1b[33m",
        "accept" | "connect" => "\x1b[32m",
        "shutdown" | "lost" => "\x1b[31m",
        "unit" | "listener" => "\x1b[35m",
        "finding" => "\x1b[1;31m",
        _ => "\x1b[2m",
    }
}

fn num_or_string(v: &NumberOrString) -> String {
    match v {
        NumberOrString::Number(n) => n.to_string(),
        NumberOrString::String(s) => format!("{:?}", s),
    }
}

fn result(ret: i64, errno: &Option<String>) -> String {
    match errno {
        Some(e) => format!(" {e}"),
        None => format!(" ret={ret}"),
    }
}

/// `HH:MM:SS.ffffff kind pid comm details`, without the newline.
pub fn line(e: &Event, color: bool) -> String {
    match &e.data {
        Data::Summary(s) => return table(s),
        Data::Verify(v) => return verdict(v),
        _ => {}
    }
    let time = e.ts.get(11..26).unwrap_or(&e.ts);
    let kind = e.data.kind();
    let (pid, comm) = match &e.process {
        Some(p) => (p.pid.to_string(), for_terminal(&p.comm).into_owned()),
        None => (String::new(), String::new()),
    };
    let mut out = String::new();
    if color {
        let _ = write!(
            out,
            "{time} {}{kind:<8}\x1b[0m {pid:>7} {comm:<15} ",
            colour(kind)
        );
    } else {
        let _ = write!(out, "{time} {kind:<8} {pid:>7} {comm:<15} ");
    }
    out.push_str(&for_terminal(&details(&e.data)));
    if let Some(unit) = e.process.as_ref().and_then(|p| p.unit.as_ref()) {
        let _ = write!(out, " unit={}", for_terminal(unit));
    }
    out.trim_end().to_owned()
}

fn details(d: &Data) -> String {
    match d {
        Data::Exec(x) => {
            let mut s = format!("{} {:?}", x.filename, x.argv);
            if let Some(v) = &x.listen_pid {
                let _ = write!(s, " LISTEN_PID={}", num_or_string(v));
            }
            if let Some(v) = &x.listen_fds {
                let _ = write!(s, " LISTEN_FDS={}", num_or_string(v));
            }
            if let Some(v) = &x.listen_fdnames {
                let _ = write!(s, " LISTEN_FDNAMES={}", v.join(":"));
            }
            s
        }
        Data::Exit(x) => match (&x.exit_code, &x.signal) {
            (_, Some(sig)) => format!("killed by {sig}"),
            (Some(code), None) => format!("exit code {code}"),
            (None, None) => String::new(),
        },
        Data::Bind(x) => format!(
            "{} fd={}{}{}",
            x.endpoint.addr,
            x.fd,
            if x.reuseport { " SO_REUSEPORT" } else { "" },
            result(x.outcome.ret, &x.outcome.errno)
        ),
        Data::Listen(x) => format!(
            "{} fd={} backlog={}{}",
            x.endpoint.addr,
            x.fd,
            x.backlog,
            result(x.outcome.ret, &x.outcome.errno)
        ),
        Data::Accept(x) => format!(
            "{} <- {} listen_fd={}{}{}",
            x.listener.as_deref().unwrap_or("?"),
            x.addr.as_deref().unwrap_or("?"),
            x.listen_fd,
            x.wait_us.map_or_else(String::new, |w| format!(
                " waited={:.1}ms",
                w as f64 / 1000.0
            )),
            result(x.outcome.ret, &x.outcome.errno)
        ),
        Data::Connect(x) => format!(
            "-> {} fd={}{}{}",
            x.endpoint.addr,
            x.fd,
            if x.completed { " (completed)" } else { "" },
            result(x.outcome.ret, &x.outcome.errno)
        ),
        Data::Shutdown(x) => format!(
            "{} fd={} {}{}",
            x.listener.as_deref().unwrap_or("?"),
            x.fd,
            x.how,
            result(x.outcome.ret, &x.outcome.errno)
        ),
        Data::Listener(x) => format!(
            "{} {} backlog={} socket_unit={}",
            x.action,
            x.addr,
            x.backlog.map_or("?".into(), |b| b.to_string()),
            x.socket_unit.as_deref().unwrap_or("?")
        ),
        Data::Queue(x) => format!(
            "{} depth={}/{} peak={} socket_unit={}",
            x.listener,
            x.depth,
            x.max,
            x.peak,
            x.socket_unit.as_deref().unwrap_or("?")
        ),
        Data::Drop(x) => format!(
            "{} dropped={} total={} {} socket_unit={}",
            x.listener,
            x.count,
            x.total,
            x.reason,
            x.socket_unit.as_deref().unwrap_or("?")
        ),
        Data::Unit(x) => {
            let mut s = format!("{} {} {}/{}", x.unit, x.change, x.active_state, x.sub_state);
            if let Some(pid) = x.main_pid.filter(|&p| p != 0) {
                let _ = write!(s, " main_pid={pid}");
            }
            if let Some(listen) = &x.listen {
                let _ = write!(s, " listen={}", listen.join(","));
            }
            if let Some(names) = &x.fd_names {
                let _ = write!(s, " fd_names={}", names.join(":"));
            }
            s
        }
        Data::Finding(x) => format!(
            "{} {} {}: {} hint: {}",
            x.severity.to_uppercase(),
            x.rule,
            x.unit.as_deref().unwrap_or("?"),
            x.message,
            x.hint
        ),
        Data::Lost(x) => format!("{} events lost ({})", x.count, x.cause),
        Data::Summary(_) | Data::Verify(_) => String::new(),
        Data::Agent(x) => {
            let mut s = format!("{} {}", x.action, x.version);
            if let Some(a) = &x.attached {
                let _ = write!(s, " attached={}", a.len());
            }
            if let Some(f) = &x.failed {
                for f in f {
                    let _ = write!(s, " failed:{}({})", f.program, f.error);
                }
            }
            if let Some(k) = &x.kernel {
                let _ = write!(s, " kernel={k}");
            }
            if let Some(features) = &x.features {
                let list: Vec<String> = features
                    .iter()
                    .map(|(f, m)| format!("{}={}", f.name(), m.as_deref().unwrap_or("none")))
                    .collect();
                let _ = write!(s, " {}", list.join(" "));
            }
            if let Some(rules) = x.unavailable_rules.as_ref().filter(|r| !r.is_empty()) {
                let _ = write!(s, " unavailable_rules={}", rules.join(","));
            }
            if let (Some(sub), Some(lost)) = (x.submitted, x.lost) {
                let _ = write!(s, " submitted={sub} lost={lost}");
            }
            s
        }
    }
}

/// The verdict of `verify` as a table: one row a check.
fn verdict(v: &Verify) -> String {
    let mut rows = vec![[
        "CHECK".to_owned(),
        "RESULT".into(),
        "FIGURES".into(),
        "WHAT WAS SEEN".into(),
    ]];
    for c in &v.checks {
        let figures: Vec<String> = c
            .figures
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        rows.push([
            c.name.clone(),
            if c.ok { "ok" } else { "FAILED" }.into(),
            figures.join(" "),
            c.message.clone(),
        ]);
    }
    let mut widths = [0usize; 3];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            for_terminal(&r[0]),
            r[1],
            for_terminal(&r[2]),
            for_terminal(&r[3]),
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    let _ = write!(
        out,
        "{}: {}",
        for_terminal(&v.unit),
        if v.ok {
            "every check passed"
        } else {
            "a check FAILED"
        }
    );
    out
}

/// The longest of some durations in milliseconds, or `-`.
fn longest(ms: &[f64]) -> String {
    ms.iter()
        .copied()
        .reduce(f64::max)
        .map_or("-".into(), |m| format!("{m:.0}"))
}

/// The closing summary as an aligned table, one row a socket unit.
fn table(s: &Summary) -> String {
    let mut rows = vec![[
        "SOCKET UNIT".to_owned(),
        "SERVICE".into(),
        "LISTENERS".into(),
        "ACTIVATIONS".into(),
        "ACCEPTS".into(),
        "PEAK/BACKLOG".into(),
        "WAIT P95 MS".into(),
        "COLD MS".into(),
        "GAP MS".into(),
        "DROPS".into(),
        "FINDINGS".into(),
    ]];
    for u in &s.units {
        let findings: Vec<String> = u.findings.iter().map(|(r, n)| format!("{r}={n}")).collect();
        rows.push([
            for_terminal(&u.socket_unit).into_owned(),
            u.unit
                .as_deref()
                .map_or_else(|| "-".into(), |n| for_terminal(n).into_owned()),
            u.listeners.to_string(),
            u.activations.to_string(),
            u.accepts.to_string(),
            format!(
                "{}/{}",
                u.peak_depth,
                u.backlog.map_or("?".into(), |b| b.to_string())
            ),
            u.accept_wait_ms
                .as_ref()
                .map_or("-".into(), |p| format!("{:.1}", p.p95)),
            longest(&u.cold_start_ms),
            longest(&u.restart_gap_ms),
            u.drops.to_string(),
            if findings.is_empty() {
                "-".into()
            } else {
                findings.join(",")
            },
        ]);
    }
    let mut widths = [0usize; 11];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (w, c) in widths.iter().zip(r) {
            let _ = write!(line, "{c:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let events: u64 = s.events.values().sum();
    let _ = write!(
        out,
        "{:.1} s, {events} events, {} lost",
        s.duration_s, s.lost
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Exec, Process};

    #[test]
    fn hostile_comm_and_argv_cannot_reach_the_terminal_raw() {
        let e = Event {
            v: 1,
            seq: 1,
            ts: "2026-11-23T09:00:00.123456789Z".into(),
            host: "h".into(),
            data: Data::Exec(Exec {
                filename: "/tmp/\x1b]0;owned\x07".into(),
                argv: vec!["a\x1b[2Jb".into()],
                listen_pid: None,
                listen_fds: Some(NumberOrString::Number(1)),
                listen_fdnames: None,
                argv_truncated: false,
                listen_fdnames_truncated: false,
                listen_trusted: true,
            }),
            process: Some(Process {
                pid: 7,
                comm: "x\x1b[31m".into(),
                ..Default::default()
            }),
        };
        let plain = line(&e, false);
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(plain.starts_with("09:00:00.123456 exec"), "{plain}");
        assert!(plain.contains("LISTEN_FDS=1"));
        let coloured = line(&e, true);
        assert_eq!(
            coloured.matches('\x1b').count(),
            2,
            "only our own colour codes"
        );
    }
}
