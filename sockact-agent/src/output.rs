//! stdout: data only. NDJSON or text lines, each numbered with `seq`; line-buffered on a
//! terminal, buffered into a pipe but flushed whenever the stream goes quiet.
use std::io::{self, IsTerminal, Write};

use crate::{events::Event, render};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// text on a terminal, json otherwise.
    pub fn default_for_stdout() -> Self {
        if io::stdout().is_terminal() {
            Format::Text
        } else {
            Format::Json
        }
    }
}

pub struct Output<W: Write> {
    format: Format,
    out: io::BufWriter<W>,
    seq: u64,
    color: bool,
    line_buffered: bool,
    dirty: bool,
}

impl Output<io::Stdout> {
    pub fn stdout(format: Format) -> Self {
        let terminal = io::stdout().is_terminal();
        Output::new(io::stdout(), format, terminal, terminal)
    }
}

impl<W: Write> Output<W> {
    pub fn new(out: W, format: Format, color: bool, line_buffered: bool) -> Self {
        Output {
            format,
            out: io::BufWriter::with_capacity(64 * 1024, out),
            seq: 0,
            color,
            line_buffered,
            dirty: false,
        }
    }

    /// Numbers and writes one event. An error means stdout is gone (EPIPE): a normal stop.
    pub fn emit(&mut self, mut event: Event) -> io::Result<()> {
        self.seq += 1;
        event.seq = self.seq;
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, &event)?;
                self.out.write_all(b"\n")?;
            }
            Format::Text => {
                let line = render::line(&event, self.color);
                self.out.write_all(line.as_bytes())?;
                self.out.write_all(b"\n")?;
            }
        }
        self.dirty = true;
        if self.line_buffered {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out what is buffered; called when the stream goes quiet.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.dirty {
            self.out.flush()?;
            self.dirty = false;
        }
        Ok(())
    }

    pub fn lines_written(&self) -> u64 {
        self.seq
    }

    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush()?;
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// Where the lines of a tracing session go: stdout (sockact-trace), or the agent's sinks.
pub trait Emit: Send {
    /// Numbers and writes one event. An error ends the session (EPIPE: a normal stop).
    fn emit(&mut self, event: Event) -> io::Result<()>;
    /// Writes out what is buffered; called when the stream goes quiet.
    fn flush(&mut self) -> io::Result<()>;
    /// Lines written so far (the next one is numbered one more).
    fn lines_written(&self) -> u64;
    /// Whether the reader went away (a closed stdout): the session stops.
    fn closed(&self) -> bool {
        false
    }
    /// What the writer has to report itself, due now (a sink's `lost` count once it works
    /// again); the session writes it like any event.
    fn due(&mut self) -> Vec<crate::events::Data> {
        Vec::new()
    }
}

impl Emit for Output<io::Stdout> {
    fn emit(&mut self, event: Event) -> io::Result<()> {
        Output::emit(self, event)
    }

    fn flush(&mut self) -> io::Result<()> {
        Output::flush(self)
    }

    fn lines_written(&self) -> u64 {
        Output::lines_written(self)
    }

    fn closed(&self) -> bool {
        stdout_closed()
    }
}

/// Whether the reader of stdout has gone away (a pipe whose read end is closed), checked
/// without writing so that a quiet stream notices too.
pub fn stdout_closed() -> bool {
    let mut pfd = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Agent, Data};

    fn agent(action: &str) -> Event {
        Event {
            v: 1,
            seq: 0,
            ts: "2026-11-23T09:00:00.000000000Z".into(),
            host: "h".into(),
            data: Data::Agent(Agent {
                action: action.into(),
                version: "0".into(),
                ..Agent::default()
            }),
            process: None,
        }
    }

    #[test]
    fn seq_starts_at_one_and_counts_every_line() {
        let mut out = Output::new(Vec::new(), Format::Json, false, false);
        out.emit(agent("start")).unwrap();
        out.emit(agent("stop")).unwrap();
        let bytes = out.into_inner().unwrap();
        let lines: Vec<serde_json::Value> = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[1]["seq"], 2);
        assert_eq!(lines[1]["kind"], "agent");
        assert_eq!(lines[1]["action"], "stop");
    }
}
