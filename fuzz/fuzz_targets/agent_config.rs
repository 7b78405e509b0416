//! Any text as the agent's configuration: accepted, or refused with an error that names where.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockact_agent::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = AgentConfig::parse(text, "fuzz.toml") {
        let message = e.to_string();
        assert!(message.contains("fuzz.toml"), "{message}");
    }
});
