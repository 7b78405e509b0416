//! The metrics endpoint: `GET /metrics` over plain HTTP/1.x, one response per connection.
//! Prometheus needs nothing more, and a scrape must never disturb the tracing.
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::Shared;
use crate::sinks::SinkStats;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error(
    "metrics: cannot listen on {addr}: {source}; choose another address (metrics.listen, \
     --metrics-listen) or turn metrics off (--no-metrics)"
)]
pub struct BindError {
    addr: String,
    source: std::io::Error,
}

/// Binds the endpoint now (so that a taken port is an error at start), serves it in a task.
pub async fn serve(addr: &str, metrics: Shared, sinks: SinkStats) -> Result<SocketAddr, BindError> {
    let fail = |source| BindError {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let (metrics, sinks) = (metrics.clone(), sinks.clone());
                    tokio::spawn(async move {
                        if let Err(e) = answer(conn, &metrics, &sinks).await {
                            tracing::debug!("metrics request: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(bound)
}

/// The request's method and path, once its head has arrived.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.lines().next()?.split(' ');
    Some((parts.next()?, parts.next()?))
}

async fn answer(mut conn: TcpStream, metrics: &Shared, sinks: &SinkStats) -> std::io::Result<()> {
    let mut head = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (status, kind, body) = match request_line(&head) {
        Some(("GET", "/metrics")) => {
            let body = metrics.lock().expect("not poisoned").render(sinks);
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        Some(("GET", _)) => (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}
