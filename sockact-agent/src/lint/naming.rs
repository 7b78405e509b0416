//! `fdname_shared` (research/failure-modes.md N2): one socket unit with several Listen*= lines
//! gives all of their fds the one FileDescriptorName= (the last assignment wins), so a service
//! that looks its fds up by name cannot tell them apart. One socket unit per name, each with
//! Service=, is the layout that works.
use serde_json::json;

use super::{Found, cite, load::UnitSet};
use crate::events::Finding;

/// Every Listen*= setting of a socket unit.
pub const LISTEN_KEYS: &[&str] = &[
    "ListenStream",
    "ListenDatagram",
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
];

pub fn check(set: &UnitSet, out: &mut Vec<Finding>) {
    for socket in set.linted("socket") {
        let listen = socket.lists("Socket", LISTEN_KEYS);
        let names = socket.list("Socket", "FileDescriptorName");
        if listen.len() < 2 || names.is_empty() {
            continue;
        }
        let name = &names[names.len() - 1].value;
        let mut evidence: Vec<_> = listen.iter().map(|e| cite(e)).collect();
        evidence.extend(names.iter().map(|e| cite(e)));
        Found {
            rule: "fdname_shared",
            severity: "warning",
            unit: Some(set.service_of(socket)),
            socket_unit: Some(socket.name.clone()),
            message: format!(
                "{} has {} Listen*= lines and one FileDescriptorName={name}: every one of its fds is named {name}.",
                socket.name,
                listen.len()
            ),
            hint: format!(
                "Split {} into one socket unit per name (each with its Listen*= line, its FileDescriptorName= and Service= naming the same service).",
                socket.name
            ),
            evidence,
            figures: json!({ "names": [name], "fds": listen.len() }),
        }
        .push(out);
    }
}
