//! Checks and set-up of the host before loading: privileges, BTF, tracefs, RLIMIT_MEMLOCK.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("needs root (or CAP_BPF and CAP_PERFMON): run it with sudo")]
    NotPrivileged,
    #[error(
        "no BTF at {0}: sockact needs a kernel built with CONFIG_DEBUG_INFO_BTF=y, or SOCKACT_BTF naming this kernel's BTF file"
    )]
    NoBtf(String),
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}): mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    Tracefs(std::io::Error),
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether this process may load and attach tracing programs.
pub fn check_privileges() -> Result<(), SystemError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if has_tracing_caps(caps) {
        Ok(())
    } else {
        Err(SystemError::NotPrivileged)
    }
}

/// CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN, in an effective capability mask.
pub fn has_tracing_caps(caps: u64) -> bool {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check_btf(path: &Path) -> Result<(), SystemError> {
    if path.exists() {
        Ok(())
    } else {
        Err(SystemError::NoBtf(path.display().to_string()))
    }
}

const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs mount point, mounting it when it is missing (aya attaches tracepoints through it).
pub fn ensure_tracefs() -> Result<PathBuf, SystemError> {
    for dir in TRACEFS_DIRS {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = TRACEFS_DIRS[0];
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, fs) = (c("tracefs"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(SystemError::Tracefs(std::io::Error::last_os_error()));
    }
    tracing::debug!("mounted tracefs at {target}");
    Ok(PathBuf::from(target))
}

/// The inode number of this process's network namespace (0 when it cannot be read).
pub fn own_netns() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones (memcg accounting) do
/// not, and may refuse the raise: that is fine.
pub fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "RLIMIT_MEMLOCK not raised: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// This host's name, for the `host` field.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_masks() {
        assert!(has_tracing_caps(u64::MAX));
        assert!(has_tracing_caps(1 << CAP_SYS_ADMIN));
        assert!(has_tracing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_tracing_caps(1 << CAP_BPF));
        assert!(!has_tracing_caps(0));
    }
}
