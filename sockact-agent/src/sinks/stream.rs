//! The TCP and unix stream sinks: NDJSON over a connection, reconnected with backoff. The
//! peer closing is noticed at once (a read ends), not at the next write, so fewer lines go
//! into a dead connection unknowingly.
use std::pin::Pin;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use super::{Backoff, CONNECT_TIMEOUT, Feed, WRITE_DEADLINE, batch, reconnect};
use crate::config::{SinkConfig, SinkKind};

pub trait Conn: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Conn for T {}

/// The sink's peer, as said in messages.
pub fn target(config: &SinkConfig) -> String {
    match config.kind {
        SinkKind::Unix => config
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        _ => config.address.clone().unwrap_or_default(),
    }
}

/// Connects to a TCP address or a unix socket path, within [`CONNECT_TIMEOUT`].
pub async fn connect(config: &SinkConfig) -> std::io::Result<Pin<Box<dyn Conn>>> {
    let attempt = async {
        Ok::<Pin<Box<dyn Conn>>, std::io::Error>(match config.kind {
            SinkKind::Unix => Box::pin(UnixStream::connect(target(config)).await?),
            _ => {
                let s = TcpStream::connect(target(config)).await?;
                s.set_nodelay(true)?;
                Box::pin(s)
            }
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

enum Step {
    Batch(Option<(Vec<u8>, u64)>),
    Read(std::io::Result<usize>),
}

pub async fn run(config: SinkConfig, mut feed: Feed) {
    let peer = target(&config);
    let mut backoff = Backoff::default();
    loop {
        let Some(mut conn) = reconnect(&mut feed, &mut backoff, &peer, || connect(&config)).await
        else {
            feed.abandon(0);
            return;
        };
        let mut scratch = [0u8; 256];
        loop {
            let step = tokio::select! {
                next = batch(&mut feed.rx, &feed.stats) => Step::Batch(next),
                read = conn.read(&mut scratch) => Step::Read(read),
            };
            match step {
                Step::Batch(None) => {
                    let _ = conn.shutdown().await;
                    return;
                }
                Step::Batch(Some((bytes, lines))) => {
                    let writing = feed.stats.writing(lines);
                    let written = tokio::time::timeout(WRITE_DEADLINE, conn.write_all(&bytes))
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                    drop(writing);
                    match written {
                        Ok(()) => feed.delivered(lines),
                        Err(e) => {
                            // Part of it may have arrived; none of it is known to have. A peer
                            // that takes nothing for WRITE_DEADLINE is given up on: connected
                            // again, it may read again.
                            feed.stats.drop_events(lines);
                            feed.failed(&format!("writing to {peer}"), &e);
                            break;
                        }
                    }
                }
                Step::Read(Ok(0)) => {
                    feed.failed(&peer, &"the peer closed the connection");
                    break;
                }
                Step::Read(Err(e)) => {
                    feed.failed(&peer, &e);
                    break;
                }
                // What a log receiver says back is of no interest.
                Step::Read(Ok(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sinks::{Line, Sinks, WRITE_DEADLINE};
    use crate::{config::AgentConfig, output::Emit};
    use tokio::io::AsyncBufReadExt;

    /// A log receiver that accepts and never reads.
    async fn never_reading_peer() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        addr
    }

    fn restart_gap() -> Vec<crate::events::Event> {
        include_str!("../../../tests/fixtures/restart_gap.ndjson")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `rounds` of the recording: far more than socket buffers and a sink's queue hold.
    async fn burst(sinks: &mut Sinks, events: &[crate::events::Event], rounds: u64) {
        for _ in 0..rounds {
            for e in events {
                sinks.emit(e.clone()).unwrap();
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_exit_what_a_stuck_sink_holds_is_counted_lost() {
        use std::sync::atomic::Ordering;
        let addr = never_reading_peer().await;
        let config = AgentConfig::parse(
            &format!("[[sink]]\nkind = \"tcp\"\naddress = \"{addr}\"\nbuffer_events = 5000\n"),
            "t.toml",
        )
        .unwrap();
        let events = restart_gap();
        let (mut sinks, _control, tasks) = Sinks::start(&config.sinks);
        let stats = sinks.stats().lock().unwrap()[0].1.clone();
        burst(&mut sinks, &events, 400).await;
        // Until the write is stuck with a full queue behind it.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let written = sinks.lines_written();
        drop(sinks);
        tasks.finish(std::time::Duration::from_millis(500)).await;
        let delivered = stats.delivered.load(Ordering::Relaxed);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        assert!(
            delivered < written,
            "the peer took only part: {delivered} of {written}"
        );
        assert_eq!(
            delivered + dropped,
            written,
            "every event delivered or counted lost"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_never_reads_is_a_sink_down_within_its_deadline_told_of_once() {
        use std::sync::atomic::Ordering;
        const ROUNDS: u64 = 400;
        let addr = never_reading_peer().await;
        let dir = std::env::temp_dir().join(format!("sockact-stall-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("events.ndjson");
        let config = AgentConfig::parse(
            &format!(
                "[[sink]]\nkind = \"tcp\"\naddress = \"{addr}\"\nbuffer_events = 1000\n\n\
                 [[sink]]\nkind = \"file\"\npath = \"{}\"\n",
                file.display()
            ),
            "t.toml",
        )
        .unwrap();
        let events = restart_gap();
        let (mut sinks, _control, tasks) = Sinks::start(&config.sinks);
        let stats = sinks.stats().lock().unwrap()[0].1.clone();
        // Far more than the socket buffers and the sink's queue hold.
        burst(&mut sinks, &events, ROUNDS).await;
        let burst = std::time::Instant::now();
        // Then quiet, as the session runs: whatever the sinks say is due is written.
        let mut lost = 0;
        let mut down_after = None;
        while burst.elapsed() < WRITE_DEADLINE + std::time::Duration::from_secs(3) {
            for data in sinks.due() {
                if matches!(&data, crate::events::Data::Lost(l) if l.cause == "sink:tcp") {
                    lost += 1;
                }
                sinks
                    .emit(crate::events::Event {
                        v: 1,
                        seq: 0,
                        ts: crate::clock::Clock::now_rfc3339(),
                        host: "h".into(),
                        data,
                        process: None,
                    })
                    .unwrap();
            }
            // Down: its write failed (timed out) or is seen stuck.
            let down =
                !stats.healthy.load(Ordering::Relaxed) || stats.errors.load(Ordering::Relaxed) > 0;
            if down_after.is_none() && down {
                down_after = Some(burst.elapsed());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let down_after = down_after.expect("the stalled sink was reported down");
        assert!(
            down_after <= WRITE_DEADLINE + std::time::Duration::from_secs(2),
            "down after {down_after:?}"
        );
        assert!(
            lost <= 2,
            "one lost record an outage, not one a tick: {lost}"
        );
        assert!(
            stats.dropped.load(Ordering::Relaxed) > 0,
            "what it could not take is counted"
        );
        // The other sink got every line written (or counted what its own full queue could not
        // take in the burst), and the stall added no more than its notices.
        let written = sinks.lines_written();
        let file_stats = sinks.stats().lock().unwrap()[1].1.clone();
        drop(sinks);
        tasks.finish(std::time::Duration::from_secs(1)).await;
        let lines = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
        assert_eq!(lines + file_stats.dropped.load(Ordering::Relaxed), written);
        assert!(
            written <= ROUNDS * events.len() as u64 + 2,
            "the stall added no more than its notices: {written}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_unix_sink_writes_ndjson_and_comes_back_after_the_reader_restarts() {
        let dir = std::env::temp_dir().join(format!("sockact-unix-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.sock");
        let config = AgentConfig::parse(
            &format!("[[sink]]\nkind = \"unix\"\npath = \"{}\"\n", path.display()),
            "t.toml",
        )
        .unwrap();
        let events: Vec<crate::events::Event> =
            include_str!("../../../tests/fixtures/healthy_echo.ndjson")
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let read_lines = |listener: tokio::net::UnixListener, n: usize| async move {
            let (conn, _) = listener.accept().await.unwrap();
            let mut lines = tokio::io::BufReader::new(conn).lines();
            let mut got = Vec::new();
            while got.len() < n {
                got.push(lines.next_line().await.unwrap().expect("a line"));
            }
            got
        };
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (mut sinks, _control, tasks) = Sinks::start(&config.sinks);
        for e in &events[..3] {
            sinks.emit(e.clone()).unwrap();
        }
        let first = read_lines(listener, 3).await;
        let seqs: Vec<u64> = first
            .iter()
            .map(|l| serde_json::from_str::<crate::events::Event>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(
            first[0].trim_end(),
            Line::encode(
                &{
                    let mut e = events[0].clone();
                    e.seq = 1;
                    e
                },
                false
            )
            .unwrap()
            .json
            .trim_end()
        );
        // The reader is gone (its connection closed with it): the next lines wait for a new one.
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for e in &events[3..6] {
            sinks.emit(e.clone()).unwrap();
        }
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let again = read_lines(listener, 3).await;
        let seqs: Vec<u64> = again
            .iter()
            .map(|l| serde_json::from_str::<crate::events::Event>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, [4, 5, 6], "nothing lost while it reconnected");
        drop(sinks);
        tasks.finish(std::time::Duration::from_secs(2)).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
