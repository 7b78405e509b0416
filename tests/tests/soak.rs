//! Three minutes of watched load through sockact-agent, as a leak check: nothing lost, memory
//! flat. `cargo xtask soak --minutes N` runs the same for longer.
use std::time::Duration;

use sockact_tests::soak::{self, Options};

#[test]
fn three_minutes_of_watched_load_with_restarts_lose_nothing_and_leak_nothing() {
    let report = soak::run(&Options {
        duration: Duration::from_secs(180),
        clients: 4,
        rate: 2000,
        restart_every: Duration::from_secs(3),
        sample_every: Duration::from_secs(10),
    });
    report.print();
    let last = report.last();
    let secs = report.duration.as_secs_f64();
    assert!(
        last.served as f64 / secs > 1500.0,
        "thousands of connections a second: {} in {secs:.0} s",
        last.served
    );
    // Every 3 s, each restart taking what systemd needs under load.
    assert!(report.restarts >= 30, "{} restarts", report.restarts);
    assert_eq!(last.lost, 0, "events lost");
    assert_eq!(last.sink_dropped, 0, "events a sink dropped");
    // Every event reached both sinks (the stop and summary lines come after the last sample).
    assert!(
        report.file_events >= last.events,
        "{} < {}",
        report.file_events,
        last.events
    );
    assert_eq!(
        report.relp_events, report.file_events,
        "RELP against the file"
    );
    let (first, end) = (report.rss_after_first_minute(), last.rss_kib);
    assert!(
        end as f64 <= first as f64 * 1.10,
        "RSS grew from {first} KiB after a minute to {end} KiB"
    );
}
