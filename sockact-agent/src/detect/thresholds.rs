//! Rule thresholds (DESIGN.md's rule table), with their defaults; `--set RULE.KEY=VALUE` and
//! the agent config's `[rules.RULE]` change them.
use std::fmt;

/// Every threshold: rule, key, default.
pub const DEFAULTS: &[(&str, &str, u64)] = &[
    ("fds_ignored", "after_ms", 3000),
    ("accept_before_ready", "window_ms", 5000),
    ("cold_start", "warn_ms", 1000),
    ("restart_gap", "warn_ms", 1000),
    ("crash_loop", "restarts", 5),
    ("crash_loop", "window_s", 60),
    ("accept_yes_storm", "per_s", 50),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("--set {0}: expected RULE.KEY=VALUE, e.g. fds_ignored.after_ms=5000")]
    Shape(String),
    #[error("--set {name}: no such threshold; known: {known}")]
    Unknown { name: String, known: String },
    #[error("--set {name}={value}: the value must be a whole number")]
    Value { name: String, value: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    values: Vec<u64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            values: DEFAULTS.iter().map(|d| d.2).collect(),
        }
    }
}

fn position(rule: &str, key: &str) -> Option<usize> {
    DEFAULTS.iter().position(|d| d.0 == rule && d.1 == key)
}

impl Thresholds {
    /// A threshold's value; the names are this crate's own, so an unknown one is a bug.
    pub fn get(&self, rule: &str, key: &str) -> u64 {
        let i = position(rule, key).unwrap_or_else(|| panic!("no threshold {rule}.{key}"));
        self.values[i]
    }

    /// Sets `rule.key` to `value`.
    pub fn set(&mut self, rule: &str, key: &str, value: u64) -> Result<(), SetError> {
        let i = position(rule, key).ok_or_else(|| SetError::Unknown {
            name: format!("{rule}.{key}"),
            known: known(),
        })?;
        self.values[i] = value;
        Ok(())
    }

    /// Applies one `RULE.KEY=VALUE`.
    pub fn apply(&mut self, assignment: &str) -> Result<(), SetError> {
        let shape = || SetError::Shape(assignment.to_owned());
        let (name, value) = assignment.split_once('=').ok_or_else(shape)?;
        let (rule, key) = name.trim().split_once('.').ok_or_else(shape)?;
        let value_text = value.trim();
        let value = value_text.parse::<u64>().map_err(|_| SetError::Value {
            name: name.trim().to_owned(),
            value: value_text.to_owned(),
        })?;
        self.set(rule, key, value)
    }
}

fn known() -> String {
    DEFAULTS
        .iter()
        .map(|(r, k, _)| format!("{r}.{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Thresholds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ((rule, key, _), v) in DEFAULTS.iter().zip(&self.values) {
            writeln!(f, "{rule}.{key}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_design_md_s() {
        let t = Thresholds::default();
        assert_eq!(t.get("fds_ignored", "after_ms"), 3000);
        assert_eq!(t.get("crash_loop", "restarts"), 5);
    }

    #[test]
    fn assignments_change_one_threshold() {
        let mut t = Thresholds::default();
        t.apply("fds_ignored.after_ms=500").unwrap();
        assert_eq!(t.get("fds_ignored", "after_ms"), 500);
        assert_eq!(t.get("cold_start", "warn_ms"), 1000);
    }

    #[test]
    fn bad_assignments_say_what_is_known() {
        let mut t = Thresholds::default();
        assert!(matches!(
            t.apply("fds_ignored.after_ms"),
            Err(SetError::Shape(_))
        ));
        assert!(matches!(t.apply("after_ms=5"), Err(SetError::Shape(_))));
        let err = t.apply("fds_ignored.after=5").unwrap_err().to_string();
        assert!(err.contains("known: fds_ignored.after_ms, "), "{err}");
        assert!(matches!(
            t.apply("fds_ignored.after_ms=soon"),
            Err(SetError::Value { .. })
        ));
        assert_eq!(t, Thresholds::default(), "nothing changed");
    }
}
