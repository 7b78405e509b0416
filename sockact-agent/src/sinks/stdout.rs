//! The stdout sink: NDJSON to standard output from a thread of its own, a batch a write.
use std::{io::Write, sync::atomic::Ordering};

use super::{Feed, batch_blocking};

pub fn run(mut feed: Feed) {
    let stdout = std::io::stdout();
    while let Some((bytes, lines)) = batch_blocking(&mut feed.rx, &feed.stats) {
        let mut out = stdout.lock();
        let writing = feed.stats.writing(lines);
        let result = out.write_all(&bytes).and_then(|()| out.flush());
        drop(writing);
        match result {
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
