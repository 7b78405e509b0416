//! `accept_yes_storm` (research/failure-modes.md A1, A3): an Accept=yes socket spawns more
//! than `per_s` instances a second (a process per connection: scanners and bursts cost a fork
//! and an exec each, and 200 in 2 s trip systemd's trigger limit, which closes the socket), or
//! as many instances run at once as MaxConnections= allows (the next connections are dropped).
//! One finding an episode, when the rate has stayed at or below `per_s` for [`QUIET_NS`] or the
//! trace ends; its figures are the episode's instances, its length and its highest rate.
//!
//! Instances are seen by their exec with LISTEN_FDS (fd 3); those started with
//! StandardInput=socket get no LISTEN_* and are not watched.
use std::collections::{HashMap, VecDeque};

use serde_json::json;

use super::{
    Rule,
    context::{Context, is_instance, listen_fds, time_of, unit_of},
    evidence, figures,
};
use crate::{
    events::{Data, Event, Finding},
    systemd::template_socket_of,
};

/// The rate is counted over this much time.
const SECOND_NS: i128 = 1_000_000_000;
/// A storm is over when the rate stays low this long.
const QUIET_NS: i128 = 2_000_000_000;
/// How many instance execs are kept as evidence.
const KEEP_EXECS: usize = 6;
/// An instance whose end was never seen (its exit lost) is forgotten after this long.
const INSTANCE_TTL_NS: i128 = 3_600_000_000_000;

struct Storm {
    first: i128,
    last: i128,
    /// The last instance that came while the rate was over the threshold (or at the limit):
    /// the storm is over when that is [`QUIET_NS`] ago, whatever trickles in after.
    last_hot: i128,
    instances: u64,
    peak_rate: u64,
    /// Instances running at once, at most, and MaxConnections= when that was reached.
    limited: Option<u32>,
    execs: Vec<Event>,
}

#[derive(Default)]
pub struct AcceptYesStorm {
    /// Socket unit -> exec times of its instances within the last second.
    recent: HashMap<String, VecDeque<i128>>,
    /// Socket unit -> its running instances: instance unit -> (main pid, start).
    live: HashMap<String, HashMap<String, (u32, i128)>>,
    /// Socket unit -> its storm under way.
    storms: HashMap<String, Storm>,
}

impl Rule for AcceptYesStorm {
    fn observe(&mut self, ctx: &Context, e: &Event, _out: &mut Vec<Finding>) {
        match &e.data {
            Data::Exec(_) if listen_fds(e).is_some() => {
                let Some(instance) = unit_of(e).filter(|u| is_instance(u)) else {
                    return;
                };
                let Some(socket) = template_socket_of(instance) else {
                    return;
                };
                let pid = e.process.as_ref().map_or(0, |p| p.pid);
                // An instance may exec twice (systemd-executor, then the program): one start.
                let live = self.live.entry(socket.clone()).or_default();
                if live
                    .insert(instance.to_owned(), (pid, time_of(e)))
                    .is_some()
                {
                    return;
                }
                self.instance(ctx, &socket, e);
            }
            Data::Exit(_) => {
                let Some(instance) = unit_of(e).filter(|u| is_instance(u)) else {
                    return;
                };
                // The instance ends with its main process (not with the children it runs).
                if let (Some(socket), Some(p)) = (template_socket_of(instance), &e.process)
                    && let Some(live) = self.live.get_mut(&socket)
                    && live.get(instance).is_some_and(|(pid, _)| *pid == p.pid)
                {
                    live.remove(instance);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.report(ctx, out, false);
    }

    fn flush(&mut self, ctx: &Context, out: &mut Vec<Finding>) {
        self.report(ctx, out, true);
    }
}

impl AcceptYesStorm {
    fn instance(&mut self, ctx: &Context, socket: &str, e: &Event) {
        let t = time_of(e);
        let recent = self.recent.entry(socket.to_owned()).or_default();
        recent.push_back(t);
        while recent.front().is_some_and(|&r| t - r >= SECOND_NS) {
            recent.pop_front();
        }
        let rate = recent.len() as u64;
        let per_s = ctx.thresholds.get("accept_yes_storm", "per_s");
        let running = self.live.get(socket).map_or(0, HashMap::len) as u32;
        let max = max_connections(ctx, socket);
        let at_limit = max.is_some_and(|m| m > 0 && running >= m);
        if !self.storms.contains_key(socket) {
            if rate <= per_s && !at_limit {
                return;
            }
            // The storm started with the second that crossed the threshold.
            let first = *recent.front().unwrap_or(&t);
            self.storms.insert(
                socket.to_owned(),
                Storm {
                    first,
                    last: t,
                    last_hot: t,
                    instances: rate.saturating_sub(1),
                    peak_rate: 0,
                    limited: None,
                    execs: Vec::new(),
                },
            );
        }
        let Some(storm) = self.storms.get_mut(socket) else {
            return;
        };
        storm.instances += 1;
        storm.last = t;
        if rate > per_s || at_limit {
            storm.last_hot = t;
        }
        storm.peak_rate = storm.peak_rate.max(rate);
        if at_limit {
            storm.limited = max;
        }
        if storm.execs.len() < KEEP_EXECS {
            storm.execs.push(e.clone());
        } else if let Some(last) = storm.execs.last_mut() {
            *last = e.clone();
        }
    }

    /// Reports the storms that are over (every one when `all`).
    fn report(&mut self, ctx: &Context, out: &mut Vec<Finding>, all: bool) {
        let over: Vec<String> = self
            .storms
            .iter()
            .filter(|(_, s)| all || ctx.now - s.last_hot >= QUIET_NS)
            .map(|(k, _)| k.clone())
            .collect();
        for socket in over {
            let Some(s) = self.storms.remove(&socket) else {
                continue;
            };
            let per_s = ctx.thresholds.get("accept_yes_storm", "per_s");
            let window_s = ((s.last - s.first) as f64 / 1e9).max(0.001);
            let service = ctx.service_of(&socket);
            let mut message = format!(
                "{socket} started {} instances in {window_s:.1} s, up to {} a second (threshold {per_s})",
                s.instances, s.peak_rate
            );
            match s.limited {
                Some(max) => message.push_str(&format!(
                    ", and as many ran at once as MaxConnections={max} allows: systemd refuses further connections meanwhile."
                )),
                None => message.push('.'),
            }
            let mut proof: Vec<&Event> = Vec::new();
            proof.extend(ctx.unit(&socket));
            proof.extend(s.execs.iter());
            let mut figs = json!({
                "instances": s.instances,
                "window_s": (window_s * 10.0).round() / 10.0,
                "rate_per_s": s.peak_rate,
            });
            if let Some(max) = s.limited {
                figs["max_connections"] = json!(max);
            }
            out.push(Finding {
                rule: "accept_yes_storm".into(),
                severity: "warning".into(),
                unit: service,
                socket_unit: Some(socket.clone()),
                message,
                hint: "A process per connection does not take bursts: serve the socket with Accept=no from one long-running process, or limit who connects (firewall, MaxConnectionsPerSource=) and raise TriggerLimitBurst= knowingly; at 200 instances in 2 s systemd closes the socket (trigger-limit-hit).".into(),
                evidence: evidence(&proof),
                figures: figures(figs),
            });
        }
        // Rates of sockets that went quiet; instances whose end was lost.
        let now = ctx.now;
        self.recent
            .retain(|_, r| r.back().is_some_and(|&t| now - t < SECOND_NS));
        for live in self.live.values_mut() {
            live.retain(|_, (_, start)| now - *start < INSTANCE_TTL_NS);
        }
        self.live.retain(|_, l| !l.is_empty());
    }
}

/// MaxConnections= of an Accept=yes socket unit, as resolved.
fn max_connections(ctx: &Context, socket: &str) -> Option<u32> {
    match &ctx.unit(socket)?.data {
        Data::Unit(u) => u.max_connections,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::{
        Thresholds,
        testing::{of_rule, replay, replay_with},
    };

    const STORM: &str = include_str!("../../../tests/fixtures/accept_yes_storm.ndjson");

    #[test]
    fn eighty_connections_a_second_for_two_seconds() {
        // Recorded on the test bed: tests/scenarios/accept-storm, `--unit storm.socket`, 160
        // connections 12.5 ms apart.
        let findings = of_rule(&replay(STORM), "accept_yes_storm");
        assert_eq!(findings.len(), 1, "one per episode: {findings:?}");
        let f = &findings[0];
        assert_eq!(f.severity, "warning");
        assert_eq!(f.unit.as_deref(), Some("storm@.service"));
        assert_eq!(f.socket_unit.as_deref(), Some("storm.socket"));
        assert_eq!(f.figures["instances"], 160);
        let rate = f.figures["rate_per_s"].as_u64().unwrap();
        assert!((60..=100).contains(&rate), "{f:?}");
        assert!(f.evidence.iter().filter(|e| e["kind"] == "exec").count() >= 2);
    }

    #[test]
    fn below_the_threshold_nothing() {
        let mut t = Thresholds::default();
        t.apply("accept_yes_storm.per_s=200").unwrap();
        assert!(of_rule(&replay_with(STORM, t), "accept_yes_storm").is_empty());
        // Two connections (the accept-yes scenario): two instances, no storm.
        let calm = replay(include_str!("../../../tests/fixtures/accept_yes.ndjson"));
        assert!(of_rule(&calm, "accept_yes_storm").is_empty(), "{calm:?}");
    }
}
