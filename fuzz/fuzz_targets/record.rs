//! Any bytes as a kernel record: decoded, turned into an event, written as JSON (which reads
//! back) and as a text line (which holds no control character).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockact_agent::{clock::Clock, decode, events::Event, render};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode::parse(data) else {
        return;
    };
    let clock = Clock::new();
    let _ = record.cgroup_name();
    let _ = record.listen_backlog();
    let _ = record.queue_observation(&clock);
    if let Some(event) = record.to_event(&clock, "fuzz") {
        check_event(&event);
    }
});

fn check_event(event: &Event) {
    let json = serde_json::to_string(event).expect("an event serializes");
    let back: Event = serde_json::from_str(&json).expect("an event's JSON reads back");
    assert_eq!(
        serde_json::to_string(&back).expect("serializes again"),
        json,
        "JSON round trip"
    );
    let line = render::line(event, false);
    assert!(
        !line.chars().any(char::is_control),
        "a control character reached the terminal: {line:?}"
    );
}
