//! Kernel timestamps (CLOCK_BOOTTIME) to wall-clock RFC 3339 strings.
use time::{OffsetDateTime, format_description::FormatItem, macros::format_description};

const RFC3339_NANOS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// The offset between CLOCK_REALTIME and CLOCK_BOOTTIME, taken once at start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_boot_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        let boot = now_ns(libc::CLOCK_BOOTTIME);
        let real = now_ns(libc::CLOCK_REALTIME);
        Clock {
            realtime_minus_boot_ns: real - boot,
        }
    }

    /// A clock whose boot time is `unix_ns` (tests).
    pub fn fixed(unix_ns: i128) -> Self {
        Clock {
            realtime_minus_boot_ns: unix_ns,
        }
    }

    /// CLOCK_BOOTTIME now, nanoseconds: the kernel's timestamps are on this clock.
    pub fn boot_now_ns() -> u64 {
        now_ns(libc::CLOCK_BOOTTIME) as u64
    }

    pub fn rfc3339_from_boot_ns(&self, boot_ns: u64) -> String {
        rfc3339(self.unix_ns_from_boot_ns(boot_ns))
    }

    /// A kernel timestamp as nanoseconds since the Unix epoch.
    pub fn unix_ns_from_boot_ns(&self, boot_ns: u64) -> i128 {
        boot_ns as i128 + self.realtime_minus_boot_ns
    }

    /// Now on the kernel's timeline, nanoseconds since the Unix epoch: CLOCK_BOOTTIME with the
    /// offset taken at start, so that times sockact makes compare with the kernel's even after
    /// the wall clock is stepped.
    pub fn now(&self) -> i128 {
        self.unix_ns_from_boot_ns(Self::boot_now_ns())
    }

    pub fn now_rfc3339() -> String {
        rfc3339(now_ns(libc::CLOCK_REALTIME))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// An event's `ts` as nanoseconds since the Unix epoch (None when it is not RFC 3339).
pub fn parse_rfc3339(ts: &str) -> Option<i128> {
    OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp_nanos)
}

/// RFC 3339, UTC, always nine fractional digits.
pub fn rfc3339(unix_ns: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| t.format(RFC3339_NANOS).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000000000Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds() {
        assert_eq!(rfc3339(1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(
            Clock::fixed(1_763_888_400_000_000_000).rfc3339_from_boot_ns(5),
            "2025-11-23T09:00:00.000000005Z"
        );
    }

    #[test]
    fn timestamps_parse_back() {
        assert_eq!(
            parse_rfc3339(&rfc3339(1_763_888_400_000_000_005)),
            Some(1_763_888_400_000_000_005)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn kernel_timestamps_land_near_now() {
        let clock = Clock::new();
        let now = clock.rfc3339_from_boot_ns(Clock::boot_now_ns());
        assert_eq!(&now[..16], &Clock::now_rfc3339()[..16]);
    }
}
