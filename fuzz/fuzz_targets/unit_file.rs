//! Any text as a socket unit and its service (split at the first NUL): parsed and linted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockact_agent::lint::{self, load::UnitSet};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (socket, service) = text.split_once('\0').unwrap_or((text, ""));
    let set = UnitSet::from_texts(&[("fuzz.socket", socket), ("fuzz.service", service)]);
    for finding in lint::lint(&set) {
        serde_json::to_string(&finding).expect("a finding serializes");
        let line = lint::text(&finding);
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\n'),
            "a control character reached the terminal: {line:?}"
        );
    }
});
