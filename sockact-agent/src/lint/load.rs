//! Which unit files lint reads: the paths and directories given, or unit names looked up in
//! systemd's search path (`SYSTEMD_UNIT_PATH` when set, as systemd itself honours it), each with
//! its drop-ins; and the units they name (a socket's service, a proxy's backend), looked up the
//! same way but not linted themselves. Where the directories hold `*.wants/` links, whether a
//! unit is enabled is known too.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use super::unit_file::{ParseError, UnitFile};

/// systemd's unit search path for the system manager, highest priority first (the directories
/// that hold unit files a user writes or a package ships).
const SEARCH_PATH: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Unit types lint reads.
const KINDS: &[&str] = &[".socket", ".service"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "no unit file or unit {0}: give a path, a directory, or a unit name in systemd's search path"
    )]
    NotFound(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// The unit files lint reads, and which of them it lints.
#[derive(Debug, Default)]
pub struct UnitSet {
    units: BTreeMap<String, UnitFile>,
    linted: BTreeSet<String>,
    /// Where units are looked up: the directories of what was given, then the search path.
    dirs: Vec<PathBuf>,
}

/// The search path: `SYSTEMD_UNIT_PATH` (a trailing `:` appends the defaults), else systemd's.
pub fn search_path() -> Vec<PathBuf> {
    let defaults = || SEARCH_PATH.iter().map(PathBuf::from).collect::<Vec<_>>();
    match std::env::var("SYSTEMD_UNIT_PATH") {
        Ok(v) if !v.is_empty() => {
            let mut dirs: Vec<PathBuf> = v
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect();
            if v.ends_with(':') {
                dirs.extend(defaults());
            }
            dirs
        }
        _ => defaults(),
    }
}

fn is_unit_name(name: &str) -> bool {
    KINDS.iter().any(|k| name.ends_with(k))
}

impl UnitSet {
    /// Units given as (name, text), each one linted; nothing is read from disk (the fuzzer's
    /// way in, and a pure test's).
    pub fn from_texts(units: &[(&str, &str)]) -> UnitSet {
        let mut set = UnitSet::default();
        for &(name, text) in units {
            let path = PathBuf::from(name);
            let (entries, headers) = super::unit_file::parse_text(text, &path);
            set.units.insert(
                name.to_owned(),
                UnitFile {
                    name: name.to_owned(),
                    path,
                    entries,
                    headers,
                },
            );
            set.linted.insert(name.to_owned());
        }
        set
    }

    /// Reads what `args` name; with no argument, every socket unit in the search path.
    pub fn load(args: &[String]) -> Result<UnitSet, LoadError> {
        let mut set = UnitSet {
            dirs: search_path(),
            ..Default::default()
        };
        let mut given_dirs = Vec::new();
        let mut names = Vec::new();
        if args.is_empty() {
            for dir in set.dirs.clone() {
                for name in unit_names_in(&dir) {
                    if name.ends_with(".socket") {
                        names.push(name);
                    }
                }
            }
        }
        for arg in args {
            let path = Path::new(arg);
            if path.is_dir() {
                given_dirs.push(path.to_owned());
                names.extend(unit_names_in(path));
            } else if path.is_file() {
                let dir = path.parent().map(Path::to_owned).unwrap_or_default();
                given_dirs.push(if dir.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    dir
                });
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                set.insert_file(&name, path)?;
                set.linted.insert(name);
            } else if !arg.contains('/') {
                // A unit name: `web`, `web.socket`, `web.service`.
                let candidates: Vec<String> = if is_unit_name(arg) {
                    vec![arg.clone()]
                } else {
                    KINDS.iter().map(|k| format!("{arg}{k}")).collect()
                };
                let mut found = false;
                for name in candidates {
                    if set.resolve(&name)?.is_some() {
                        set.linted.insert(name);
                        found = true;
                    }
                }
                if !found {
                    return Err(LoadError::NotFound(arg.clone()));
                }
            } else {
                return Err(LoadError::NotFound(arg.clone()));
            }
        }
        given_dirs.dedup();
        let mut dirs = given_dirs;
        dirs.append(&mut set.dirs);
        set.dirs = dirs;
        for name in names {
            if set.resolve(&name)?.is_some() {
                set.linted.insert(name);
            }
        }
        set.load_companions()?;
        Ok(set)
    }

    fn insert_file(&mut self, name: &str, path: &Path) -> Result<(), LoadError> {
        let mut dirs = vec![path.parent().map(Path::to_owned).unwrap_or_default()];
        dirs.extend(self.dirs.iter().cloned());
        let unit = UnitFile::read(name, path, &dropins(name, &dirs))?;
        self.units.insert(name.to_owned(), unit);
        Ok(())
    }

    /// A unit by name: already read, or found in the directories and read now.
    fn resolve(&mut self, name: &str) -> Result<Option<&UnitFile>, LoadError> {
        if !self.units.contains_key(name) {
            let Some(path) = self.dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) else {
                return Ok(None);
            };
            self.insert_file(name, &path)?;
        }
        Ok(self.units.get(name))
    }

    /// Reads the units the linted ones name, so that rules can look at pairs.
    fn load_companions(&mut self) -> Result<(), LoadError> {
        let linted: Vec<String> = self.linted.iter().cloned().collect();
        for name in linted {
            let Some(unit) = self.units.get(&name).cloned() else {
                continue;
            };
            let mut wanted = Vec::new();
            match unit.kind() {
                "socket" => {
                    wanted.extend(unit.get("Socket", "Service").map(|e| e.value.clone()));
                    wanted.push(format!("{}.service", unit.stem()));
                    wanted.push(format!("{}@.service", unit.stem()));
                }
                "service" => {
                    wanted.push(format!("{}.socket", unit.stem().trim_end_matches('@')));
                    // A proxy's backend: what it is ordered after or requires.
                    for key in ["After", "Requires", "Wants", "BindsTo"] {
                        wanted.extend(unit.words("Unit", key));
                    }
                }
                _ => {}
            }
            for w in wanted.iter().filter(|w| is_unit_name(w)) {
                self.resolve(w)?;
            }
        }
        // The services of the sockets now known, and their sockets' services.
        let sockets: Vec<UnitFile> = self
            .units
            .values()
            .filter(|u| u.kind() == "socket")
            .cloned()
            .collect();
        for s in sockets {
            let service = self.service_of(&s);
            if let Some(svc) = self.resolve(&service)?.cloned() {
                for key in ["After", "Requires", "Wants", "BindsTo"] {
                    for w in svc.words("Unit", key).iter().filter(|w| is_unit_name(w)) {
                        self.resolve(w)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The linted units of a kind.
    pub fn linted(&self, kind: &str) -> impl Iterator<Item = &UnitFile> {
        self.linted
            .iter()
            .filter_map(|n| self.units.get(n))
            .filter(move |u| u.kind() == kind)
    }

    /// The services lint checks: the linted ones, and those the linted sockets start.
    pub fn services(&self) -> Vec<&UnitFile> {
        let mut names: BTreeSet<String> = self.linted("service").map(|u| u.name.clone()).collect();
        names.extend(self.linted("socket").map(|s| self.service_of(s)));
        names.iter().filter_map(|n| self.units.get(n)).collect()
    }

    /// A unit read (linted or looked up).
    pub fn get(&self, name: &str) -> Option<&UnitFile> {
        self.units.get(name)
    }

    /// Every unit read.
    pub fn all(&self) -> impl Iterator<Item = &UnitFile> {
        self.units.values()
    }

    /// The service a socket unit starts: Service=, else its name (a template for Accept=yes).
    pub fn service_of(&self, socket: &UnitFile) -> String {
        if let Some(s) = socket.get("Socket", "Service") {
            return s.value.clone();
        }
        if socket.flag("Socket", "Accept") == Some(true) {
            format!("{}@.service", socket.stem())
        } else {
            format!("{}.service", socket.stem())
        }
    }

    /// The socket unit that starts a service, if one was read.
    pub fn socket_of(&self, service: &UnitFile) -> Option<&UnitFile> {
        self.units
            .values()
            .filter(|u| u.kind() == "socket")
            .find(|s| self.service_of(s) == service.name)
    }

    /// Whether a unit is enabled: linked from a `*.wants/` or `*.requires/` directory.
    pub fn enabled(&self, name: &str) -> bool {
        self.dirs.iter().any(|dir| {
            std::fs::read_dir(dir).ok().is_some_and(|entries| {
                entries.flatten().any(|e| {
                    let dep = e.file_name().to_string_lossy().into_owned();
                    (dep.ends_with(".wants") || dep.ends_with(".requires"))
                        && e.path().join(name).symlink_metadata().is_ok()
                })
            })
        })
    }

    /// The `*.wants/` link that enables a unit, for evidence.
    pub fn enabling_link(&self, name: &str) -> Option<PathBuf> {
        self.dirs.iter().find_map(|dir| {
            std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
                let dep = e.file_name().to_string_lossy().into_owned();
                let link = e.path().join(name);
                ((dep.ends_with(".wants") || dep.ends_with(".requires"))
                    && link.symlink_metadata().is_ok())
                .then_some(link)
            })
        })
    }
}

/// The socket and service unit files in a directory, sorted.
fn unit_names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_unit_name(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The drop-ins of a unit, in the order systemd applies them: `NAME.d/*.conf` in every
/// directory (a template instance's template's too), sorted by file name, a name in a
/// higher-priority directory hiding the same name in a lower one.
fn dropins(name: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut stems = vec![name.to_owned()];
    if let Some((prefix, rest)) = name.split_once('@')
        && let Some((_, kind)) = rest.rsplit_once('.')
    {
        let template = format!("{prefix}@.{kind}");
        if template != name {
            stems.insert(0, template);
        }
    }
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for stem in &stems {
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir.join(format!("{stem}.d"))) else {
                continue;
            };
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.ends_with(".conf") {
                    by_name.entry(file).or_insert_with(|| e.path());
                }
            }
        }
    }
    by_name.into_values().collect()
}
