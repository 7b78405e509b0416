//! The findings engine: one module per rule behind one small trait. Rules take plain events,
//! do no I/O, and report one finding per episode.
pub mod double_bind;
pub mod fdnames_duplicate;

use crate::events::{Event, Finding};

/// Evidence is complete event objects, at most this many.
pub const MAX_EVIDENCE: usize = 16;

pub trait Rule {
    /// Looks at one event; pushes what it concludes.
    fn observe(&mut self, event: &Event, out: &mut Vec<Finding>);
    /// Decides what is pending when the stream ends.
    fn flush(&mut self, _out: &mut Vec<Finding>) {}
}

/// Every rule, fed the same stream.
pub struct Engine {
    rules: Vec<Box<dyn Rule>>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            rules: vec![
                Box::new(double_bind::DoubleBind::default()),
                Box::new(fdnames_duplicate::FdnamesDuplicate::default()),
            ],
        }
    }
}

impl Engine {
    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            rule.observe(event, &mut out);
        }
        out
    }

    pub fn flush(&mut self) -> Vec<Finding> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            rule.flush(&mut out);
        }
        out
    }
}

/// An event as evidence: the complete object.
pub fn evidence(events: &[&Event]) -> Vec<serde_json::Value> {
    events
        .iter()
        .take(MAX_EVIDENCE)
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect()
}
