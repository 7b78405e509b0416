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
/// A flood that goes on is told at least this often (ns), not only once it is over.
pub const TELL_EVERY_NS: i128 = 60_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Unix ns of the last refill.
    at: i128,
}

impl Bucket {
    /// Refills for the time since the last look; whether a token is there.
    fn has_room(&mut self, now: i128, rate: f64, burst: f64) -> bool {
        let secs = (now - self.at).max(0) as f64 / 1e9;
        self.tokens = (self.tokens + secs * rate).min(burst);
        self.at = now.max(self.at);
        self.tokens >= 1.0
    }
}

/// What was held back for one key: how many, since when (RFC 3339 and ns), and the count when
/// last looked at (it is told once nothing more is held back, or after [`TELL_EVERY_NS`]).
#[derive(Debug, Default)]
struct Held {
    count: u64,
    since: String,
    since_ns: i128,
    seen: u64,
}

#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    tell_every_ns: i128,
    units: HashMap<String, Bucket>,
    uids: HashMap<u32, Bucket>,
    held: BTreeMap<String, Held>,
    /// The newest event time seen.
    latest: i128,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(RATE, BURST, TELL_EVERY_NS)
    }
}

/// `key`'s bucket, made full at its first event.
fn bucket<'a, K, Q>(
    buckets: &'a mut HashMap<K, Bucket>,
    key: &Q,
    now: i128,
    burst: f64,
) -> &'a mut Bucket
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
{
    if !buckets.contains_key(key) {
        buckets.insert(
            key.to_owned(),
            Bucket {
                tokens: burst,
                at: now,
            },
        );
    }
    buckets.get_mut(key).expect("just inserted")
}

impl Limiter {
    pub fn new(rate: f64, burst: f64, tell_every_ns: i128) -> Self {
        Self {
            rate,
            burst,
            tell_every_ns,
            units: HashMap::new(),
            uids: HashMap::new(),
            held: BTreeMap::new(),
            latest: 0,
        }
    }

    /// Whether to keep `e`: its unit's and its uid's buckets both have room (a token is taken
    /// from each only then). No allocation but for a unit's first event.
    pub fn admit(&mut self, e: &Event) -> bool {
        let Some(p) = &e.process else { return true };
        let now = time_of(e);
        self.latest = self.latest.max(now);
        let (rate, burst) = (self.rate, self.burst);
        let uid = p.uid.filter(|&u| u != 0);
        let mut unit = p
            .unit
            .as_deref()
            .map(|u| bucket(&mut self.units, u, now, burst));
        let mut user = uid.map(|u| bucket(&mut self.uids, &u, now, burst));
        let unit_ok = unit.as_mut().is_none_or(|b| b.has_room(now, rate, burst));
        let uid_ok = user.as_mut().is_none_or(|b| b.has_room(now, rate, burst));
        if unit_ok && uid_ok {
            for b in unit.into_iter().chain(user) {
                b.tokens -= 1.0;
            }
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
            held.since.clone_from(&e.ts);
            held.since_ns = now;
        }
        held.count += 1;
        false
    }

    /// The floods that are over (nothing more held back since the last look), or have gone on
    /// for [`TELL_EVERY_NS`]: one `lost` each. Buckets idle long enough to be full again are
    /// forgotten (Accept=yes instances each have a unit of their own).
    pub fn due(&mut self) -> Vec<Lost> {
        let latest = self.latest;
        let full_after = (self.burst / self.rate * 1e9) as i128;
        self.units.retain(|_, b| latest - b.at < full_after);
        self.uids.retain(|_, b| latest - b.at < full_after);
        let tell_every = self.tell_every_ns;
        let mut out = Vec::new();
        self.held.retain(|key, h| {
            let over = h.count == h.seen;
            if h.count > 0 && (over || latest - h.since_ns >= tell_every) {
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
    fn a_flood_that_goes_on_is_told_every_interval_and_idle_buckets_are_forgotten() {
        // 1,000 a second allowed, told every second; 5,000 a second for three seconds.
        let mut l = Limiter::new(1_000.0, 1_000.0, 1_000_000_000);
        let events = flood(15_000, 5_000, 1000, Some("flood.service"));
        let mut told = Vec::new();
        let mut kept = 0;
        for chunk in events.chunks(500) {
            kept += chunk.iter().filter(|e| l.admit(e)).count();
            told.extend(l.due());
        }
        assert_eq!(
            told.len(),
            2,
            "told during the flood, once a second: {told:?}"
        );
        assert!(told.iter().all(|t| t.cause == "rate_limit:flood.service"));
        told.extend(l.flush());
        let held: u64 = told.iter().map(|t| t.count).sum();
        assert_eq!(held as usize + kept, events.len(), "every one kept or told");
        // The burst, then the rate for three seconds.
        assert!((3_990..=4_001).contains(&kept), "kept {kept}");
        // Quiet for longer than a bucket takes to fill: the flood's unit is forgotten.
        let mut e = events[0].clone();
        e.process.as_mut().unwrap().unit = Some("other.service".into());
        e.ts = crate::clock::rfc3339(time_of(&events[14_999]) + 5_000_000_000);
        assert!(l.admit(&e));
        assert!(l.due().is_empty());
        assert_eq!(l.units.len(), 1, "only the unit of the latest event");
    }

    #[test]
    fn an_event_refused_for_its_unit_takes_nothing_from_its_user() {
        let mut l = Limiter::new(1_000.0, 10.0, TELL_EVERY_NS);
        // Root's processes of a.service empty its bucket (root has no bucket of its own).
        let by_root = flood(10, 1_000_000, 0, Some("a.service"));
        assert!(by_root.iter().all(|e| l.admit(e)));
        // A user's events of a.service at the same moments: refused for the unit.
        let by_user = flood(10, 1_000_000, 1000, Some("a.service"));
        assert!(by_user.iter().all(|e| !l.admit(e)));
        // The user's own room is whole: ten events of another unit are kept.
        let elsewhere = flood(10, 1_000_000, 1000, Some("b.service"));
        assert_eq!(elsewhere.iter().filter(|e| l.admit(e)).count(), 10);
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
