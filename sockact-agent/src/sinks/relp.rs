//! The RELP sink (rsyslog's Reliable Event Logging Protocol): every event is a `syslog`
//! command the server acknowledges once it has taken it. Events not acknowledged when the
//! connection breaks are sent again on the next one, so a pipeline restart loses nothing (a
//! few may arrive twice; `seq` tells).
use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Backoff, Feed, Line, reconnect, stream};
use crate::config::SinkConfig;

/// Events sent and not yet acknowledged, at most.
const WINDOW: usize = 128;
/// How long the server may take to answer `open` and `close`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Transaction numbers go from 1 to this, then start again at 1.
const MAX_TXNR: u32 = 999_999_999;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelpError {
    #[error("malformed RELP frame: {0}")]
    Malformed(&'static str),
    #[error("the server refused the session: {0}")]
    Refused(String),
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the session")]
    ServerClose,
}

/// One RELP frame: `TXNR SP COMMAND SP DATALEN [SP DATA] LF`.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub txnr: u32,
    pub command: String,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn encode(txnr: u32, command: &str, data: &[u8]) -> Vec<u8> {
        let mut out = format!("{txnr} {command} {}", data.len()).into_bytes();
        if !data.is_empty() {
            out.push(b' ');
            out.extend_from_slice(data);
        }
        out.push(b'\n');
        out
    }

    /// Takes one whole frame from the front of `buf`; `None` until one has arrived.
    pub fn take(buf: &mut Vec<u8>) -> Result<Option<Frame>, RelpError> {
        let field = |from: usize| -> Result<Option<usize>, RelpError> {
            match buf[from..].iter().position(|&b| b == b' ' || b == b'\n') {
                Some(n) => Ok(Some(from + n)),
                None if buf.len() - from > 32 => Err(RelpError::Malformed("header too long")),
                None => Ok(None),
            }
        };
        let Some(end_txnr) = field(0)? else {
            return Ok(None);
        };
        let Some(end_command) = field(end_txnr + 1)? else {
            return Ok(None);
        };
        let Some(end_len) = field(end_command + 1)? else {
            return Ok(None);
        };
        let text = |a: usize, b: usize| std::str::from_utf8(&buf[a..b]).unwrap_or("");
        let txnr: u32 = text(0, end_txnr)
            .parse()
            .map_err(|_| RelpError::Malformed("transaction number"))?;
        let command = text(end_txnr + 1, end_command).to_owned();
        let len: usize = text(end_command + 1, end_len)
            .parse()
            .map_err(|_| RelpError::Malformed("data length"))?;
        if len > 128 * 1024 {
            return Err(RelpError::Malformed("data length too large"));
        }
        let (data_start, total) = if len == 0 {
            (end_len, end_len + 1)
        } else {
            (end_len + 1, end_len + 1 + len + 1)
        };
        if buf.len() < total {
            return Ok(None);
        }
        if buf[total - 1] != b'\n' {
            return Err(RelpError::Malformed("no trailer"));
        }
        let data = buf[data_start..data_start + len].to_vec();
        buf.drain(..total);
        Ok(Some(Frame {
            txnr,
            command,
            data,
        }))
    }

    /// A `rsp` frame's status code (`200 OK` -> 200).
    pub fn status(&self) -> Option<u16> {
        self.data.get(..3)?.iter().try_fold(0u16, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u16::from(b - b'0'))
        })
    }
}

/// The event as an RFC 5424 message: facility daemon, the event's kind as MSGID, the NDJSON
/// line as MSG.
pub fn syslog_message(line: &Line, pid: u32) -> Vec<u8> {
    // RFC 5424 allows microseconds at most.
    let ts = match line.ts.split_once('.') {
        Some((whole, frac)) => {
            let digits: String = frac
                .chars()
                .take_while(char::is_ascii_digit)
                .take(6)
                .collect();
            format!("{whole}.{digits}Z")
        }
        None => line.ts.clone(),
    };
    let host: String = line
        .host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let host = if host.is_empty() { "-".into() } else { host };
    let pri = 3 * 8 + u32::from(line.severity);
    let json = line.json.trim_end_matches('\n');
    format!(
        "<{pri}>1 {ts} {host} sockact-agent {pid} {} - {json}",
        line.kind
    )
    .into_bytes()
}

fn next_txnr(t: u32) -> u32 {
    if t >= MAX_TXNR { 1 } else { t + 1 }
}

const OFFERS: &str = "relp_version=0\nrelp_software=sockact\ncommands=syslog";

/// How long acknowledgements may keep us waiting before the connection counts as dead (a hung
/// server, a half-open connection); librelp's own default is 90 s.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections an event may be in flight on when they break, before it counts as lost: one
/// the server drops the session for (too large, say) must not block every later one.
const MAX_ATTEMPTS: u8 = 3;

/// An event sent, not yet acknowledged, and on how many connections it was.
struct Pending {
    line: Arc<Line>,
    attempts: u8,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub async fn run(config: SinkConfig, mut feed: Feed) {
    let peer = stream::target(&config);
    let pid = std::process::id();
    let mut backoff = Backoff::default();
    // Sent on connections that broke before the server acknowledged them.
    let mut unacked: VecDeque<Pending> = VecDeque::new();
    let mut closed = false;
    loop {
        let Some(mut session) =
            reconnect(&mut feed, &mut backoff, &peer, || Session::open(&config)).await
        else {
            feed.abandon(unacked.len() as u64);
            return;
        };
        match session
            .pump(&mut feed, &mut unacked, &mut closed, pid)
            .await
        {
            Ok(()) => return,
            Err(e) => {
                feed.failed(&peer, &e);
                give_up_on_poison(&mut unacked, &feed);
            }
        }
    }
}

/// Events that were in flight on [`MAX_ATTEMPTS`] broken connections are lost.
fn give_up_on_poison(unacked: &mut VecDeque<Pending>, feed: &Feed) {
    let before = unacked.len();
    unacked.retain(|p| {
        let keep = p.attempts < MAX_ATTEMPTS;
        if !keep {
            tracing::warn!(
                "sink {}: event {} was in flight on {MAX_ATTEMPTS} connections that broke; dropped",
                feed.name,
                p.line.seq
            );
        }
        keep
    });
    feed.stats.drop_events((before - unacked.len()) as u64);
}

enum Step {
    Queued(Option<Arc<Line>>),
    Answer(Frame),
    GiveUp,
}

struct Session {
    reader: tokio::io::ReadHalf<std::pin::Pin<Box<dyn stream::Conn>>>,
    writer: tokio::io::WriteHalf<std::pin::Pin<Box<dyn stream::Conn>>>,
    buf: Vec<u8>,
    txnr: u32,
    /// Sent on this connection, waiting for the answer: transaction, event.
    inflight: VecDeque<(u32, Pending)>,
}

impl Session {
    async fn open(config: &SinkConfig) -> Result<Session, BoxError> {
        let conn = stream::connect(config).await?;
        let (reader, writer) = tokio::io::split(conn);
        let mut s = Session {
            reader,
            writer,
            buf: Vec::new(),
            txnr: 1,
            inflight: VecDeque::new(),
        };
        s.writer
            .write_all(&Frame::encode(1, "open", OFFERS.as_bytes()))
            .await?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, s.answer())
            .await
            .map_err(|_| RelpError::Timeout(ANSWER_TIMEOUT))??;
        if answer.command != "rsp" || answer.status() != Some(200) {
            let said = String::from_utf8_lossy(&answer.data).into_owned();
            return Err(RelpError::Refused(said).into());
        }
        s.txnr = 2;
        Ok(s)
    }

    /// The next frame from the server.
    async fn answer(&mut self) -> Result<Frame, BoxError> {
        loop {
            if let Some(f) = Frame::take(&mut self.buf)? {
                if f.command == "serverclose" {
                    return Err(RelpError::ServerClose.into());
                }
                return Ok(f);
            }
            let mut chunk = [0u8; 4096];
            let n = self.reader.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next answer, while events are in flight: one that does not come in
    /// [`ACK_TIMEOUT`] means the connection is dead.
    async fn acknowledgement(&mut self) -> Result<Frame, BoxError> {
        if self.inflight.is_empty() {
            return self.answer().await;
        }
        tokio::time::timeout(ACK_TIMEOUT, self.answer())
            .await
            .map_err(|_| RelpError::Timeout(ACK_TIMEOUT))?
    }

    async fn send(&mut self, mut pending: Pending, pid: u32) -> std::io::Result<()> {
        let txnr = self.txnr;
        self.txnr = next_txnr(txnr);
        let frame = Frame::encode(txnr, "syslog", &syslog_message(&pending.line, pid));
        pending.attempts += 1;
        self.inflight.push_back((txnr, pending));
        self.writer.write_all(&frame).await
    }

    /// Sends what was not acknowledged before, then the queue, until the queue is closed and
    /// everything is acknowledged (Ok) or the connection breaks (Err: what it did not
    /// acknowledge is back in `unacked`, in order).
    async fn pump(
        &mut self,
        feed: &mut Feed,
        unacked: &mut VecDeque<Pending>,
        closed: &mut bool,
        pid: u32,
    ) -> Result<(), BoxError> {
        let result = self.pump_inner(feed, unacked, closed, pid).await;
        if result.is_err() {
            for (_, pending) in self.inflight.drain(..).rev() {
                unacked.push_front(pending);
            }
        }
        result
    }

    async fn pump_inner(
        &mut self,
        feed: &mut Feed,
        unacked: &mut VecDeque<Pending>,
        closed: &mut bool,
        pid: u32,
    ) -> Result<(), BoxError> {
        while let Some(pending) = unacked.pop_front() {
            self.send(pending, pid).await?;
            while self.inflight.len() >= WINDOW {
                let step = tokio::select! {
                    answer = self.acknowledgement() => Step::Answer(answer?),
                    _ = feed.give_up.wait_for(|g| *g) => Step::GiveUp,
                };
                match step {
                    Step::Answer(f) => self.settle(f, feed),
                    _ => {
                        self.abandon(feed, unacked);
                        return Ok(());
                    }
                }
            }
        }
        loop {
            if *closed && self.inflight.is_empty() {
                let txnr = self.txnr;
                self.writer
                    .write_all(&Frame::encode(txnr, "close", b""))
                    .await?;
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, self.answer()).await;
                return Ok(());
            }
            let room = self.inflight.len() < WINDOW && !*closed;
            let step = tokio::select! {
                next = feed.rx.recv(), if room => Step::Queued(next),
                answer = self.acknowledgement() => Step::Answer(answer?),
                _ = feed.give_up.wait_for(|g| *g), if *closed => Step::GiveUp,
            };
            match step {
                Step::Queued(Some(line)) => {
                    feed.stats.taken(1);
                    self.send(Pending { line, attempts: 0 }, pid).await?
                }
                Step::Queued(None) => *closed = true,
                Step::Answer(f) => self.settle(f, feed),
                Step::GiveUp => {
                    self.abandon(feed, unacked);
                    return Ok(());
                }
            }
        }
    }

    /// Giving up at exit: what is not acknowledged is lost.
    fn abandon(&mut self, feed: &mut Feed, unacked: &mut VecDeque<Pending>) {
        let n = self.inflight.len() + unacked.len();
        self.inflight.clear();
        unacked.clear();
        feed.abandon(n as u64);
    }

    /// Settles the event an answer acknowledges.
    fn settle(&mut self, f: Frame, feed: &Feed) {
        if f.command != "rsp" {
            return;
        }
        let Some(i) = self.inflight.iter().position(|(t, _)| *t == f.txnr) else {
            return;
        };
        let (_, pending) = self.inflight.remove(i).expect("found");
        if f.status() == Some(200) {
            feed.delivered(1);
        } else {
            feed.stats.drop_events(1);
            tracing::warn!(
                "sink {}: the server refused event {}: {}",
                feed.name,
                pending.line.seq,
                String::from_utf8_lossy(&f.data)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let mut wire = Frame::encode(1, "rsp", b"200 OK\nrelp_version=0");
        wire.extend(Frame::encode(2, "rsp", b"200 OK"));
        wire.extend(b"0 serverclose 0\n");
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(5) {
            buf.extend_from_slice(chunk);
            while let Some(f) = Frame::take(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert!(buf.is_empty());
        let got: Vec<(u32, &str, Option<u16>)> = frames
            .iter()
            .map(|f| (f.txnr, f.command.as_str(), f.status()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "rsp", Some(200)),
                (2, "rsp", Some(200)),
                (0, "serverclose", None)
            ]
        );
        assert_eq!(Frame::encode(7, "close", b""), b"7 close 0\n");
    }

    #[test]
    fn malformed_frames_are_errors_not_waits() {
        let mut buf = b"x rsp 2 ok\n".to_vec();
        assert_eq!(
            Frame::take(&mut buf),
            Err(RelpError::Malformed("transaction number"))
        );
        let mut buf = b"1 rsp 2 okX".to_vec();
        assert_eq!(
            Frame::take(&mut buf),
            Err(RelpError::Malformed("no trailer"))
        );
        let mut buf = vec![b'1'; 40];
        assert!(Frame::take(&mut buf).is_err());
    }

    #[test]
    fn transaction_numbers_wrap_to_one() {
        assert_eq!(next_txnr(1), 2);
        assert_eq!(next_txnr(MAX_TXNR), 1);
    }

    #[test]
    fn an_event_becomes_an_rfc5424_message() {
        let e: crate::events::Event = serde_json::from_str(
            include_str!("../../../tests/fixtures/restart_gap.ndjson")
                .lines()
                .find(|l| l.contains("\"severity\":\"error\""))
                .expect("an error finding"),
        )
        .unwrap();
        let line = Line::encode(&e, false).unwrap();
        let msg = String::from_utf8(syslog_message(&line, 42)).unwrap();
        let (header, json) = msg.split_once(" - {").unwrap();
        let fields: Vec<&str> = header.split(' ').collect();
        assert_eq!(fields[0], "<27>1", "daemon.err: {header}");
        let frac = fields[1].split_once('.').unwrap().1;
        assert_eq!(frac.len(), 7, "six digits and Z: {header}");
        assert_eq!(&fields[3..], ["sockact-agent", "42", "finding"]);
        let back: crate::events::Event = serde_json::from_str(&format!("{{{json}")).unwrap();
        assert_eq!(back, e);
    }
}
