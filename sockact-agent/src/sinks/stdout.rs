//! The stdout sink: NDJSON to standard output, written out whenever its queue is empty.
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;

use super::{Feed, batch};

pub async fn run(mut feed: Feed) {
    let mut out = tokio::io::stdout();
    while let Some((bytes, lines)) = batch(&mut feed.rx).await {
        let written = async {
            out.write_all(&bytes).await?;
            out.flush().await
        };
        match written.await {
            Ok(()) => feed.delivered(lines),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                // The reader is gone: the agent stops (Sinks::closed).
                feed.stats.closed.store(true, Ordering::Relaxed);
                feed.stats.drop_events(lines);
                feed.abandon(0);
                return;
            }
            Err(e) => {
                feed.stats.drop_events(lines);
                feed.failed("writing", &e);
            }
        }
    }
}
