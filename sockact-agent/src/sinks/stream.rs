//! The TCP and unix stream sinks: NDJSON over a connection, reconnected with backoff. The
//! peer closing is noticed at once (a read ends), not at the next write, so fewer lines go
//! into a dead connection unknowingly.
use std::{pin::Pin, sync::atomic::Ordering};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use super::{Backoff, CONNECT_TIMEOUT, Feed, batch};
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

pub async fn run(config: SinkConfig, mut feed: Feed) {
    let peer = target(&config);
    let mut backoff = Backoff::default();
    'connect: loop {
        let mut conn = match connect(&config).await {
            Ok(c) => {
                feed.stats.working(&feed.name);
                backoff.reset();
                c
            }
            Err(e) => {
                feed.stats
                    .failed(&feed.name, &format!("connecting to {peer}"), &e);
                if feed.giving_up() {
                    feed.abandon(0);
                    return;
                }
                let wait = backoff.wait();
                feed.pause(wait).await;
                continue;
            }
        };
        let mut scratch = [0u8; 256];
        loop {
            tokio::select! {
                next = batch(&mut feed.rx) => {
                    let Some((bytes, lines)) = next else {
                        let _ = conn.shutdown().await;
                        return;
                    };
                    match conn.write_all(&bytes).await {
                        Ok(()) => {
                            feed.stats.delivered.fetch_add(lines, Ordering::Relaxed);
                        }
                        Err(e) => {
                            feed.stats.failed(&feed.name, &format!("writing to {peer}"), &e);
                            feed.stats.drop_events(lines);
                            continue 'connect;
                        }
                    }
                }
                read = conn.read(&mut scratch) => match read {
                    Ok(0) => {
                        feed.stats.failed(&feed.name, &peer, &"the peer closed the connection");
                        continue 'connect;
                    }
                    Err(e) => {
                        feed.stats.failed(&feed.name, &peer, &e);
                        continue 'connect;
                    }
                    // What a log receiver says back is of no interest.
                    Ok(_) => {}
                },
            }
        }
    }
}
