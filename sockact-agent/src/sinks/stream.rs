//! The TCP and unix stream sinks: NDJSON over a connection, reconnected with backoff. The
//! peer closing is noticed at once (a read ends), not at the next write, so fewer lines go
//! into a dead connection unknowingly.
use std::pin::Pin;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use super::{Backoff, CONNECT_TIMEOUT, Feed, batch, reconnect};
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
                next = batch(&mut feed.rx) => Step::Batch(next),
                read = conn.read(&mut scratch) => Step::Read(read),
            };
            match step {
                Step::Batch(None) => {
                    let _ = conn.shutdown().await;
                    return;
                }
                Step::Batch(Some((bytes, lines))) => match conn.write_all(&bytes).await {
                    Ok(()) => feed.delivered(lines),
                    Err(e) => {
                        // Part of it may have arrived; none of it is known to have.
                        feed.stats.drop_events(lines);
                        feed.failed(&format!("writing to {peer}"), &e);
                        break;
                    }
                },
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
    use crate::sinks::{Line, Sinks};
    use crate::{config::AgentConfig, output::Emit};
    use tokio::io::AsyncBufReadExt;

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
