//! The benchmark's table and its JSON: every figure with its unit, and the target it is held
//! to with whether it was met.
use serde_json::{Value, json};

use super::kernel::Prog;

#[derive(Clone, Copy, Debug)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {}", number(t)),
            Target::AtLeast(t) => format!(">= {}", number(t)),
        }
    }
}

struct Row {
    section: String,
    metric: String,
    value: f64,
    unit: String,
    target: Option<Target>,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    programs: Vec<Value>,
    rounds: Vec<Value>,
    notes: Vec<(String, f64)>,
}

/// Few digits for big numbers, three significant ones for small.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    pub fn row(
        &mut self,
        section: &str,
        metric: &str,
        value: f64,
        unit: &str,
        target: Option<Target>,
    ) {
        self.rows.push(Row {
            section: section.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
            target,
        });
    }

    /// One sockact program beside the floor's on the same tracepoint.
    pub fn program(&mut self, name: &str, ours: &Prog, floor: Option<&Prog>, requests: f64) {
        let per_run = |p: &Prog| p.ns as f64 / p.runs.max(1) as f64;
        self.programs.push(json!({
            "program": name,
            "runs": ours.runs,
            "runs_per_request": ours.runs as f64 / requests,
            "ns_per_run": per_run(ours),
            "ns_per_request": ours.ns as f64 / requests,
            "floor_ns_per_run": floor.map(per_run),
            "floor_ns_per_request": floor.map(|f| f.ns as f64 / requests),
        }));
    }

    /// Every round's figure, for whoever wants more than the median.
    pub fn rounds(&mut self, what: &str, kinds: &[&str], per_kind: &[Vec<f64>]) {
        self.rounds.push(json!({
            "load": what,
            "per_second": kinds.iter().zip(per_kind).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }));
    }

    pub fn note(&mut self, key: &str, value: f64) {
        self.notes.push((key.into(), value));
    }

    pub fn print(&self) {
        let mut section = "";
        println!();
        for r in &self.rows {
            if r.section != section {
                section = &r.section;
                println!("{section}");
            }
            let (target, status) = match r.target {
                Some(t) => (t.text(), if t.met(r.value) { "met" } else { "NOT MET" }),
                None => (String::new(), ""),
            };
            println!(
                "  {:<48} {:>14} {:<9} {:<12} {}",
                r.metric,
                number(r.value),
                r.unit,
                target,
                status
            );
        }
        if !self.programs.is_empty() {
            println!("per program (unrelated load): ns/run sockact | floor, runs/request");
            for p in &self.programs {
                let floor = p["floor_ns_per_run"].as_f64().map_or("-".into(), number);
                println!(
                    "  {:<32} {:>8} | {:>8} {:>8}",
                    p["program"].as_str().unwrap_or("?"),
                    number(p["ns_per_run"].as_f64().unwrap_or(0.0)),
                    floor,
                    number(p["runs_per_request"].as_f64().unwrap_or(0.0)),
                );
            }
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "rows": self.rows.iter().map(|r| json!({
                "section": r.section,
                "metric": r.metric,
                "value": r.value,
                "unit": r.unit,
                "target": r.target.map(Target::text),
                "met": r.target.map(|t| t.met(r.value)),
            })).collect::<Vec<_>>(),
            "programs": self.programs,
            "rounds": self.rounds,
            "notes": self.notes.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_say_whether_they_are_met() {
        let mut r = Report::default();
        r.row("s", "ratio", 1.31, "x", Some(Target::AtMost(1.2)));
        r.row(
            "s",
            "rate",
            1_300_000.0,
            "records/s",
            Some(Target::AtLeast(1e6)),
        );
        let j = r.json();
        assert_eq!(j["rows"][0]["met"], false);
        assert_eq!(j["rows"][1]["met"], true);
        assert_eq!(j["rows"][0]["target"], "<= 1.200");
    }
}
