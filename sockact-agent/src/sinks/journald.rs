//! The journald sink: each event one datagram in journald's native protocol, with structured
//! fields (`SOCKACT_KIND=`, `SOCKACT_RULE=`, `SOCKACT_UNIT=`, ...) beside a readable MESSAGE,
//! so that `journalctl SOCKACT_RULE=double_bind` finds the findings.
use std::{path::PathBuf, sync::atomic::Ordering};

use tokio::net::UnixDatagram;

use super::{Feed, Line};
use crate::config::SinkConfig;

/// journald's socket for the native protocol.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// Appends `KEY=value`, or the binary-safe form for a value holding a newline.
fn field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// One event as a journald entry.
pub fn entry(line: &Line) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.json.len() * 2 + 256);
    field(&mut out, "MESSAGE", &line.text);
    field(&mut out, "PRIORITY", &line.severity.to_string());
    field(&mut out, "SYSLOG_IDENTIFIER", "sockact-agent");
    field(&mut out, "SOCKACT_KIND", line.kind);
    field(&mut out, "SOCKACT_SEQ", &line.seq.to_string());
    let optional = [
        ("SOCKACT_RULE", &line.rule),
        ("SOCKACT_UNIT", &line.unit),
        ("SOCKACT_SOCKET_UNIT", &line.socket_unit),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            field(&mut out, key, v);
        }
    }
    field(&mut out, "SOCKACT_EVENT", line.json.trim_end_matches('\n'));
    out
}

pub async fn run(config: SinkConfig, mut feed: Feed) {
    let path = config
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let socket = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            feed.stats
                .failed(&feed.name, "creating a datagram socket", &e);
            feed.abandon(0);
            return;
        }
    };
    while let Some(line) = feed.rx.recv().await {
        match socket.send_to(&entry(&line), &path).await {
            Ok(_) => {
                feed.stats.working(&feed.name);
                feed.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                feed.stats
                    .failed(&feed.name, &format!("sending to {}", path.display()), &e);
                feed.stats.drop_events(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads an entry back the way journald does.
    fn parse(mut b: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while !b.is_empty() {
            let end = b.iter().position(|&c| c == b'\n' || c == b'=').unwrap();
            let key = String::from_utf8(b[..end].to_vec()).unwrap();
            if b[end] == b'=' {
                let nl = b[end..].iter().position(|&c| c == b'\n').unwrap() + end;
                fields.push((key, String::from_utf8(b[end + 1..nl].to_vec()).unwrap()));
                b = &b[nl + 1..];
            } else {
                let len = u64::from_le_bytes(b[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = &b[end + 9..end + 9 + len];
                assert_eq!(b[end + 9 + len], b'\n');
                fields.push((key, String::from_utf8(value.to_vec()).unwrap()));
                b = &b[end + 10 + len..];
            }
        }
        fields
    }

    #[test]
    fn an_entry_carries_the_structured_fields_and_survives_newlines() {
        let text = include_str!("../../../tests/fixtures/restart_gap.ndjson");
        let finding: crate::events::Event = serde_json::from_str(
            text.lines()
                .find(|l| l.contains("\"severity\":\"error\""))
                .unwrap(),
        )
        .unwrap();
        let line = Line::encode(&finding).unwrap();
        let fields = parse(&entry(&line));
        let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1.as_str());
        assert_eq!(get("SOCKACT_KIND"), Some("finding"));
        assert_eq!(get("PRIORITY"), Some("3"));
        assert_eq!(get("SOCKACT_RULE"), line.rule.as_deref());
        assert_eq!(get("SOCKACT_UNIT"), line.unit.as_deref());
        let back: crate::events::Event =
            serde_json::from_str(get("SOCKACT_EVENT").unwrap()).unwrap();
        assert_eq!(back, finding);
        // The summary's text is a table over several lines.
        let summary: crate::events::Event =
            serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let line = Line::encode(&summary).unwrap();
        assert!(line.text.contains('\n'));
        let fields = parse(&entry(&line));
        assert_eq!(fields[0], ("MESSAGE".to_owned(), line.text.clone()));
    }
}
