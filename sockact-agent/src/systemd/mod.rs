//! What sockact knows of systemd: socket units and the services they trigger (plain data),
//! the D-Bus client that fills it in and follows changes, and `--unit` resolution.
pub mod client;
pub mod follow;
pub mod p2p;
pub mod resolve;

use std::collections::BTreeMap;

/// systemd's longest unit name (UNIT_NAME_MAX less its NUL).
const UNIT_NAME_MAX: usize = 255;

/// Checks a unit name as systemd's `unit_name_is_valid` would (`myapp` stands for
/// `myapp.service`): at most 255 bytes of letters, digits and `:-_.\@`, not starting with a dot
/// or `@`. The error shows the name escaped, never its raw bytes.
pub fn check_unit_name(name: &str) -> Result<(), String> {
    let shown = || {
        let head: String = name.chars().take(40).collect();
        let more = if head.len() < name.len() { "..." } else { "" };
        format!("{head:?}{more}")
    };
    if name.is_empty() {
        return Err("a unit name cannot be empty".into());
    }
    if name.len() > UNIT_NAME_MAX {
        return Err(format!(
            "{} is {} bytes: systemd's unit names have at most {UNIT_NAME_MAX}",
            shown(),
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(format!(
            "{} holds {c:?}, which systemd does not allow in a unit name",
            shown()
        ));
    }
    if name.starts_with(['.', '@']) {
        return Err(format!(
            "{} is not a unit name: it starts with {:?}",
            shown(),
            &name[..1]
        ));
    }
    Ok(())
}

/// A socket unit, as org.freedesktop.systemd1.Socket describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketUnit {
    pub name: String,
    /// `(type, address)` pairs, e.g. `("Stream", "127.0.0.1:8080")`.
    pub listen: Vec<(String, String)>,
    pub accept: bool,
    pub backlog: u32,
    pub fd_name: String,
    /// The units it triggers (its service, or none for Accept=yes templates).
    pub triggers: Vec<String>,
    pub n_accepted: u32,
    pub n_connections: u32,
    pub n_refused: u32,
    pub active_state: String,
    pub sub_state: String,
    /// Its last start was skipped by a failed Condition*= (e.g. journald's audit socket in a
    /// container): it is not meant to listen.
    pub condition_failed: bool,
    /// Why it last failed, as systemd says (`trigger-limit-hit`, `service-start-limit-hit`,
    /// `resources`, ...); `success` otherwise.
    pub result: String,
    /// The units it is PartOf= or BindsTo=: stopping one of them closes its listeners.
    pub part_of: Vec<String>,
    /// MaxConnections= (Accept=yes: instances at once).
    pub max_connections: u32,
}

/// A service unit, as org.freedesktop.systemd1.Service describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceUnit {
    pub name: String,
    pub main_pid: u32,
    pub control_group: String,
    pub n_restarts: u32,
    pub active_state: String,
    pub sub_state: String,
    /// Hex, or empty before the first start.
    pub invocation_id: String,
    /// The invocation that last reached `active` (tells a restart from a first start).
    pub started_invocation: String,
    /// The socket units that trigger it.
    pub triggered_by: Vec<String>,
    /// Why it last failed, as systemd says; `success` otherwise.
    pub result: String,
}

/// Every socket unit and every service a socket unit triggers.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub sockets: BTreeMap<String, SocketUnit>,
    pub services: BTreeMap<String, ServiceUnit>,
}

impl Catalog {
    /// The socket units that trigger `service` (directly, or as instances of an Accept=yes
    /// template: `echo@3-...service` belongs to `echo.socket`).
    pub fn sockets_of(&self, service: &str) -> Vec<&SocketUnit> {
        if let Some(template_socket) = template_socket_of(service)
            && let Some(s) = self.sockets.get(&template_socket)
        {
            return vec![s];
        }
        self.sockets
            .values()
            .filter(|s| s.triggers.iter().any(|t| t == service))
            .collect()
    }

    /// The socket unit that listens on `addr` (as sockact prints addresses).
    pub fn socket_listening_on(&self, addr: &str) -> Option<&SocketUnit> {
        self.sockets
            .values()
            .find(|s| s.listen.iter().any(|(_, a)| same_address(a, addr)))
    }
}

/// The Accept=yes socket unit of one of its connection instances:
/// `echo@1-127.0.0.1:80-127.0.0.1:5555.service` -> `echo.socket`. Other template instances
/// (`app@blue.service`) are services of their own.
pub fn template_socket_of(service: &str) -> Option<String> {
    let stem = service.strip_suffix(".service")?;
    let (prefix, _) = stem.split_once('@')?;
    is_connection_instance(service).then(|| format!("{prefix}.socket"))
}

/// Whether a service is an instance systemd made for one connection of an Accept=yes socket:
/// `name@NUMBER-...service`.
pub fn is_connection_instance(name: &str) -> bool {
    name.split_once('@').is_some_and(|(_, rest)| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest.as_bytes().get(digits) == Some(&b'-')
    })
}

/// Whether systemd's Listen address and sockact's address name the same socket. systemd writes
/// `[::]:80` for a dual-stack port, `127.0.0.1:80`, `/run/x.sock`, `@name`.
pub fn same_address(systemd: &str, ours: &str) -> bool {
    systemd == ours
}

/// The unit a cgroup path belongs to: its last component that names a service, socket or
/// scope (`/system.slice/echo.service` -> `echo.service`).
pub fn unit_of_cgroup(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".socket") || c.ends_with(".scope"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_checked_as_systemd_checks_them() {
        for ok in [
            "myapp",
            "myapp.service",
            "web@8080.socket",
            "a-b_c:d\\x2d.socket",
        ] {
            assert_eq!(check_unit_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(300);
        for (bad, says) in [
            ("", "empty"),
            ("a/b", "'/'"),
            ("x\u{1b}[2J", "'\\u{1b}'"),
            (long.as_str(), "300 bytes"),
            (".hidden", "starts with"),
            ("@x.service", "starts with"),
        ] {
            let e = check_unit_name(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
            assert!(!e.contains('\u{1b}'), "no raw ESC: {e:?}");
        }
    }

    #[test]
    fn cgroup_paths_name_their_unit() {
        assert_eq!(
            unit_of_cgroup("/system.slice/echo.service"),
            Some("echo.service")
        );
        assert_eq!(
            unit_of_cgroup("/machine.slice/x.scope/system.slice/echo.service"),
            Some("echo.service")
        );
        assert_eq!(
            unit_of_cgroup(
                "/system.slice/system-echo.slice/echo@2-127.0.0.1:9-127.0.0.1:5.service"
            ),
            Some("echo@2-127.0.0.1:9-127.0.0.1:5.service")
        );
        assert_eq!(unit_of_cgroup("/user.slice"), None);
        assert_eq!(unit_of_cgroup("/"), None);
    }

    #[test]
    fn accept_yes_instances_belong_to_their_socket() {
        assert_eq!(
            template_socket_of("echo@1-127.0.0.1:80-127.0.0.1:5555.service").as_deref(),
            Some("echo.socket")
        );
        assert_eq!(template_socket_of("echo.service"), None);
        assert_eq!(template_socket_of("app@blue.service"), None);
        assert!(!is_connection_instance("getty@tty1.service"));
    }
}

/// What a unit change means. Reaching `active` is a start, or a restart when an earlier
/// invocation had started (`started_invocation`, the invocation that last reached active,
/// differs from the current one); reaching `inactive` or `failed` is a stop; anything else that
/// moved is a state change. systemd sends a unit's properties once per turn of its event loop,
/// so a quick restart can arrive as `active` to `active` with a new invocation: a restart too.
pub fn classify(
    prev_active: &str,
    active: Option<&str>,
    started_invocation: &str,
    invocation: &str,
) -> &'static str {
    let new_invocation = !started_invocation.is_empty() && started_invocation != invocation;
    match active {
        Some("active") if new_invocation => "restarted",
        Some("active") if prev_active != "active" => "started",
        Some(s @ ("inactive" | "failed")) if prev_active != s => "stopped",
        _ => "state",
    }
}

#[cfg(test)]
mod classify_tests {
    use super::classify;

    #[test]
    fn changes() {
        // First start, then a restart (a new invocation reaches active).
        assert_eq!(classify("activating", Some("active"), "", "ab"), "started");
        assert_eq!(
            classify("activating", Some("active"), "ab", "cd"),
            "restarted"
        );
        assert_eq!(
            classify("deactivating", Some("inactive"), "ab", "ab"),
            "stopped"
        );
        assert_eq!(
            classify("active", Some("deactivating"), "ab", "ab"),
            "state"
        );
        assert_eq!(classify("active", Some("active"), "ab", "ab"), "state");
        // The stop and the start within one turn of systemd's loop: one signal.
        assert_eq!(classify("active", Some("active"), "ab", "cd"), "restarted");
        assert_eq!(classify("failed", Some("failed"), "ab", "ab"), "state");
    }
}
