//! Any text as the NDJSON that `replay` reads: every line is an event or counted as not one,
//! the detectors take whatever events it holds, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockact_agent::{detect::Engine, replay, summary::Tally};

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::default();
    let mut tally = Tally::default();
    let mut findings = Vec::new();
    let bad = replay::replay(data, "fuzz", &mut engine, &mut tally, |f| {
        findings.push(f);
        Ok(())
    });
    // Reading from memory fails only on invalid UTF-8, which is reported as an error.
    if let Ok(bad) = bad {
        assert!(bad as usize <= data.iter().filter(|&&b| b == b'\n').count() + 1);
    }
    for f in &findings {
        serde_json::to_string(f).expect("a finding serializes");
    }
});
