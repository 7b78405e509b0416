//! `--unit NAME` resolution: `myapp`, `myapp.socket` and `myapp.service` name the same service
//! and every socket unit that triggers it. Pure: it works on what systemd said.
use super::Catalog;

/// What one `--unit` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub service: String,
    /// Every socket unit that triggers the service.
    pub sockets: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no unit {name}{}", suggest(.closest))]
    Unknown { name: String, closest: Vec<String> },
    #[error("{service} is not socket-activated: no socket unit triggers it")]
    NotActivated { service: String },
}

fn suggest(closest: &[String]) -> String {
    if closest.is_empty() {
        "; systemd has no socket units".into()
    } else {
        format!("; socket units: {}", closest.join(", "))
    }
}

/// Strips `.socket`/`.service`: the name a user would type.
/// A unit name without its `.socket` or `.service` suffix.
pub fn stem(name: &str) -> &str {
    name.strip_suffix(".socket")
        .or_else(|| name.strip_suffix(".service"))
        .unwrap_or(name)
}

/// Resolves against the catalog; `known_service` says whether systemd knows a service of that
/// name even though no socket triggers it (for the "not socket-activated" message).
pub fn resolve(
    name: &str,
    catalog: &Catalog,
    known_service: impl Fn(&str) -> bool,
) -> Result<Resolved, ResolveError> {
    let service = if let Some(socket) = name
        .strip_suffix(".socket")
        .and_then(|_| catalog.sockets.get(name))
    {
        socket
            .triggers
            .iter()
            .find(|t| t.ends_with(".service"))
            .cloned()
            .unwrap_or_else(|| format!("{}.service", stem(name)))
    } else if name.ends_with(".service") {
        name.to_owned()
    } else if let Some(socket) = catalog.sockets.get(&format!("{name}.socket")) {
        socket
            .triggers
            .iter()
            .find(|t| t.ends_with(".service"))
            .cloned()
            .unwrap_or_else(|| format!("{name}.service"))
    } else {
        format!("{}.service", stem(name))
    };
    let mut sockets: Vec<String> = catalog
        .sockets
        .values()
        .filter(|s| s.triggers.contains(&service))
        .map(|s| s.name.clone())
        .collect();
    // An Accept=yes socket triggers no service of its own: its instances are `stem@...`.
    let template_socket = format!("{}.socket", stem(&service).trim_end_matches('@'));
    if let Some(s) = catalog.sockets.get(&template_socket)
        && s.accept
        && !sockets.contains(&s.name)
    {
        sockets.push(s.name.clone());
    }
    if !sockets.is_empty() {
        sockets.sort();
        return Ok(Resolved { service, sockets });
    }
    if known_service(&service) {
        return Err(ResolveError::NotActivated { service });
    }
    Err(ResolveError::Unknown {
        name: name.to_owned(),
        closest: closest(stem(name), catalog.sockets.keys().map(String::as_str), 3),
    })
}

/// Up to `n` socket units whose names are most like `wanted`, the most similar first.
pub fn closest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>, n: usize) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = names
        .map(|name| (distance(wanted, stem(name)), name))
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(n)
        .map(|(_, name)| name.to_owned())
        .collect()
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j]))
                .min(row[j] + 1)
                .min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::SocketUnit;

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        for (name, triggers, accept) in [
            ("echo.socket", "echo.service", false),
            ("echo-admin.socket", "echo.service", false),
            ("web.socket", "web.service", false),
            ("ssh.socket", "", true),
        ] {
            c.sockets.insert(
                name.into(),
                SocketUnit {
                    name: name.into(),
                    triggers: if triggers.is_empty() {
                        vec![]
                    } else {
                        vec![triggers.into()]
                    },
                    accept,
                    ..Default::default()
                },
            );
        }
        c
    }

    #[test]
    fn every_spelling_names_the_service_and_all_its_sockets() {
        let want = Resolved {
            service: "echo.service".into(),
            sockets: vec!["echo-admin.socket".into(), "echo.socket".into()],
        };
        for name in ["echo", "echo.socket", "echo.service", "echo-admin.socket"] {
            assert_eq!(
                resolve(name, &catalog(), |_| false),
                Ok(want.clone()),
                "{name}"
            );
        }
    }

    #[test]
    fn accept_yes_templates_resolve_to_their_socket() {
        let r = resolve("ssh", &catalog(), |_| false).unwrap();
        assert_eq!(r.sockets, ["ssh.socket"]);
    }

    #[test]
    fn unknown_units_name_the_closest_socket_units() {
        let err = resolve("ehco", &catalog(), |_| false).unwrap_err();
        let ResolveError::Unknown { closest, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(closest[0], "echo.socket");
        assert_eq!(closest.len(), 3);
        let text = err.to_string();
        assert!(
            text.starts_with("no unit ehco; socket units: echo.socket, "),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn a_service_without_a_socket_says_so() {
        let err = resolve("cron", &catalog(), |s| s == "cron.service").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cron.service is not socket-activated: no socket unit triggers it"
        );
    }

    #[test]
    fn distances() {
        assert_eq!(distance("echo", "echo"), 0);
        assert_eq!(distance("ehco", "echo"), 2);
        assert_eq!(distance("", "abc"), 3);
    }
}
