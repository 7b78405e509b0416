//! A safety valve on what the agent keeps: the events of one unit, and those of one uid (root's
//! aside), at most [`RATE`] a second with bursts up to [`BURST`]. A single busy service stays far
//! below it (the benchmarks' nginx under wrk: 38,000 events a second); a flood from one unit or
//! one user cannot push the other units' history out of a rotated file. What is held back is
//! counted and told, once its flood is over, as a `lost` event (`rate_limit:<unit>` or
//! `rate_limit:uid <N>`) covering the interval it started in. Events of no process (listener,
//! queue, drop, unit, finding) are never held back.
use std::collections::{BTreeMap, HashMap};

use crate::{
    detect::context::time_of,
    events::{Event, Lost},
};

/// Events a second a unit or a uid may have kept.
pub const RATE: f64 = 100_000.0;
/// As many at once.
pub const BURST: f64 = 200_000.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Unix ns of the last refill.
    at: i128,
}

impl Bucket {
    fn take(&mut self, now: i128) -> bool {
        let secs = (now - self.at).max(0) as f64 / 1e9;
        self.tokens = (self.tokens + secs * RATE).min(BURST);
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What was held back for one key: how many, since when (RFC 3339), and the count when last
/// looked at (it is told once nothing more is held back).
#[derive(Debug, Default)]
struct Held {
    count: u64,
    since: String,
    seen: u64,
}

#[derive(Debug, Default)]
pub struct Limiter {
    units: HashMap<String, Bucket>,
    uids: HashMap<u32, Bucket>,
    held: BTreeMap<String, Held>,
}

/// Takes a token from `key`'s bucket (made full at its first event).
fn take<K, Q>(buckets: &mut HashMap<K, Bucket>, key: &Q, now: i128) -> bool
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
{
    if let Some(b) = buckets.get_mut(key) {
        return b.take(now);
    }
    let mut b = Bucket {
        tokens: BURST,
        at: now,
    };
    let kept = b.take(now);
    buckets.insert(key.to_owned(), b);
    kept
}

impl Limiter {
    /// Whether to keep `e`: its unit's and its uid's buckets both have room. No allocation
    /// but for a unit's first event.
    pub fn admit(&mut self, e: &Event) -> bool {
        let Some(p) = &e.process else { return true };
        let now = time_of(e);
        let unit_ok = p
            .unit
            .as_deref()
            .is_none_or(|u| take(&mut self.units, u, now));
        let uid = p.uid.filter(|&u| u != 0);
        let uid_ok = uid.is_none_or(|u| take(&mut self.uids, &u, now));
        if unit_ok && uid_ok {
            return true;
        }
        // Counted once, against what had no room: the unit first.
        let key = match (&p.unit, uid) {
            (Some(u), _) if !unit_ok => u.clone(),
            (_, Some(u)) => format!("uid {u}"),
            _ => String::new(),
        };
        let held = self.held.entry(key).or_default();
        if held.count == 0 {
            held.since = e.ts.clone();
        }
        held.count += 1;
        false
    }

    /// The floods that are over (nothing more held back since the last look): one `lost` each.
    pub fn due(&mut self) -> Vec<Lost> {
        let mut out = Vec::new();
        self.held.retain(|key, h| {
            if h.count > 0 && h.count == h.seen {
                out.push(Lost {
                    count: h.count,
                    cause: format!("rate_limit:{key}"),
                    since: std::mem::take(&mut h.since),
                });
                return false;
            }
            h.seen = h.count;
            true
        });
        out
    }

    /// Everything still held back, at the end of the stream.
    pub fn flush(&mut self) -> Vec<Lost> {
        for h in self.held.values_mut() {
            h.seen = h.count;
        }
        self.due()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorded stream's first exec, as often as asked, `per_s` a second, from `uid`.
    fn flood(n: usize, per_s: u64, uid: u32, unit: Option<&str>) -> Vec<Event> {
        let line = include_str!("../../tests/fixtures/healthy_echo.ndjson")
            .lines()
            .find(|l| l.contains("\"kind\":\"exec\""))
            .unwrap();
        let base: Event = serde_json::from_str(line).unwrap();
        let start = time_of(&base);
        (0..n)
            .map(|i| {
                let mut e = base.clone();
                let p = e.process.as_mut().unwrap();
                p.uid = Some(uid);
                p.unit = unit.map(str::to_owned);
                let t = start + i as i128 * 1_000_000_000 / per_s as i128;
                e.ts = crate::clock::rfc3339(t);
                e
            })
            .collect()
    }

    #[test]
    fn a_busy_service_passes_and_a_flood_is_held_back_and_told_once() {
        let mut l = Limiter::default();
        // 50,000 a second for two seconds: kept, every one.
        let busy = flood(100_000, 50_000, 0, Some("echo.service"));
        assert!(busy.iter().all(|e| l.admit(e)));
        assert!(l.due().is_empty());
        // A user's 1,000,000 a second for a second: the burst, then the rate.
        let mut l = Limiter::default();
        let flood = flood(1_000_000, 1_000_000, 1000, None);
        let kept = flood.iter().filter(|e| l.admit(e)).count() as f64;
        assert!(
            (BURST..=BURST + RATE + 1.0).contains(&kept),
            "kept {kept} of 1,000,000"
        );
        assert!(
            l.due().is_empty(),
            "told once the flood is over, not during it"
        );
        let told = l.due();
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].cause, "rate_limit:uid 1000");
        assert_eq!(told[0].count as f64, 1_000_000.0 - kept);
        assert!(l.due().is_empty(), "once");
    }

    #[test]
    fn events_of_no_process_are_never_held_back() {
        let mut l = Limiter::default();
        let line = include_str!("../../tests/fixtures/healthy_echo.ndjson")
            .lines()
            .find(|l| l.contains("\"kind\":\"unit\""))
            .unwrap();
        let e: Event = serde_json::from_str(line).unwrap();
        assert!((0..1_000_000).all(|_| l.admit(&e)));
    }
}
