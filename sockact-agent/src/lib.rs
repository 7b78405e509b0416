//! sockact: traces systemd socket-activated services with eBPF and tells, with kernel evidence,
//! why a socket handoff broke.
//!
//! The binaries are thin; everything lives here, one module per job.
pub mod addr;
pub mod agent;
pub mod cli;
pub mod clock;
pub mod config;
pub mod correlate;
pub mod decode;
pub mod detect;
pub mod ebpf;
pub mod errno;
pub mod events;
pub mod features;
pub mod kernel_log;
pub mod limit;
pub mod lint;
pub mod logging;
pub mod metrics;
pub mod offsets;
pub mod output;
pub mod procfs;
pub mod render;
pub mod replay;
pub mod select;
pub mod sinks;
pub mod summary;
pub mod system;
pub mod systemd;
pub mod text;
pub mod trace;
pub mod verify;
