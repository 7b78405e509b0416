//! A sockaddr as a caller gave it: its length (first byte) and up to SOCKADDR_MAX bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockact_agent::addr;

fuzz_target!(|data: &[u8]| {
    let Some((&len, bytes)) = data.split_first() else {
        return;
    };
    let bytes = &bytes[..bytes.len().min(sockact_common::SOCKADDR_MAX)];
    if let Some(a) = addr::decode_sockaddr(bytes, len as usize) {
        assert!(a.text.len() <= 4 * bytes.len() + 8, "{a:?}");
        if a.family == "unix" {
            assert!(a.port.is_none());
        }
    }
    let _ = addr::unix_path(bytes);
});
