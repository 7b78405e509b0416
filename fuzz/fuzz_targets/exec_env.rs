//! An exec record with any filename, argv and LISTEN_* values (the bytes the kernel copied
//! from a process's memory): decoded exactly and shown safely.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockact_agent::{clock::Clock, decode, render};
use sockact_common::{ExecRecord, RECORD_VERSION, RecordKind};

fuzz_target!(|data: &[u8]| {
    let size = size_of::<ExecRecord>();
    let mut bytes = vec![0u8; size];
    // The fuzzer's bytes fill the record after a valid header.
    let header = size_of::<sockact_common::RecordHeader>();
    let n = data.len().min(size - header);
    bytes[header..header + n].copy_from_slice(&data[..n]);
    // SAFETY: ExecRecord is plain old data, valid for any bit pattern.
    let mut record: ExecRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    record.header.version = RECORD_VERSION;
    record.header.kind = RecordKind::Exec as u32;
    record.header.size = size as u16;
    record.header.comm = [b'x'; 16];
    // SAFETY: as above; the whole record is written back as bytes.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts((&raw const record).cast::<u8>(), size) };
    let decoded = decode::parse(bytes).expect("a record with a valid header decodes");
    let event = decoded
        .to_event(&Clock::new(), "fuzz")
        .expect("an exec is an event");
    let json = serde_json::to_string(&event).expect("an exec serializes");
    serde_json::from_str::<serde_json::Value>(&json).expect("its JSON reads back");
    let line = render::line(&event, false);
    assert!(
        !line.chars().any(char::is_control),
        "a control character reached the terminal: {line:?}"
    );
});
