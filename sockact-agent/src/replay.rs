//! `sockact-trace replay FILE|-`: the detectors over a recorded NDJSON stream, no root needed.
use std::io::{self, BufRead};

use crate::{
    clock::Clock,
    detect::{Engine, Thresholds},
    events::{Data, Event, Finding, SCHEMA_VERSION},
    output::{Format, Output},
    summary::Tally,
    system,
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl ReplayError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ReplayError::Open { .. } => 2,
            ReplayError::Read { .. } => 1,
        }
    }
}

/// Runs the detectors over `input` and writes every finding; the tally sees the recorded events
/// (not the findings and summary recorded with them) and the new findings. Returns how many
/// lines were not v1 events (reported on stderr, never silently skipped).
pub fn replay(
    input: impl BufRead,
    path: &str,
    engine: &mut Engine,
    tally: &mut Tally,
    mut emit: impl FnMut(Finding) -> io::Result<()>,
) -> Result<u64, ReplayError> {
    let mut bad = 0u64;
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|source| ReplayError::Read {
            path: path.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                bad += 1;
                if bad == 1 {
                    tracing::warn!("{path}:{}: not a sockact v1 event: {e}", n + 1);
                }
                continue;
            }
        };
        if matches!(event.data, Data::Finding(_) | Data::Summary(_)) {
            continue;
        }
        tally.observe(&event);
        for f in engine.observe(&event) {
            if emit(f).is_err() {
                return Ok(bad);
            }
        }
    }
    for f in engine.flush() {
        if emit(f).is_err() {
            break;
        }
    }
    Ok(bad)
}

/// The `replay` subcommand.
pub fn run(path: &str, format: Format, thresholds: Thresholds) -> Result<(), ReplayError> {
    let input: Box<dyn BufRead> = if path == "-" {
        Box::new(io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).map_err(|source| ReplayError::Open {
            path: path.into(),
            source,
        })?;
        Box::new(io::BufReader::new(file))
    };
    let mut out = Output::stdout(format);
    let host = system::hostname();
    let line = |data| Event {
        v: SCHEMA_VERSION,
        seq: 0,
        ts: Clock::now_rfc3339(),
        host: host.clone(),
        data,
        process: None,
    };
    let mut tally = Tally::default();
    let mut found = Vec::new();
    let bad = replay(input, path, &mut Engine::new(thresholds), &mut tally, |f| {
        found.push(f.clone());
        out.emit(line(Data::Finding(f)))
    })?;
    if bad > 0 {
        tracing::warn!("{bad} lines of {path} were not sockact v1 events");
    }
    for f in found {
        // Counted without a time: the stream's own times make the duration.
        tally.observe(&Event {
            ts: String::new(),
            ..line(Data::Finding(f))
        });
    }
    let _ = out.emit(line(Data::Summary(tally.summary(0))));
    let _ = out.flush();
    Ok(())
}
