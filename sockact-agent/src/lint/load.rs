//! Which unit files lint reads: the paths and directories given, or unit names looked up in
//! systemd's search path (`SYSTEMD_UNIT_PATH` when set, as systemd itself honours it), each with
//! its drop-ins; and the units they name (a socket's service, a proxy's backend), looked up the
//! same way but not linted themselves. Where the directories hold `*.wants/` links, whether a
//! unit is enabled is known too. With `--root DIR` every path is read inside DIR, as
//! `systemd-analyze --root` does: its search path, its alias links (an absolute target is a path
//! in DIR, never on this host), its masks and its enablement.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
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

/// The user manager's search path (systemd.unit(5)), highest priority first, less what lives
/// in a user's home (added by [`search_path`] where there is one).
const USER_SEARCH_PATH: &[&str] = &[
    "/etc/xdg/systemd/user",
    "/etc/systemd/user",
    "/run/systemd/user",
    "/usr/local/share/systemd/user",
    "/usr/share/systemd/user",
    "/usr/local/lib/systemd/user",
    "/usr/lib/systemd/user",
    "/lib/systemd/user",
];

/// Unit types lint reads.
const KINDS: &[&str] = &[".socket", ".service"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "no unit file or unit {0}: give a path, a directory, or a unit name in systemd's search path"
    )]
    NotFound(String),
    #[error("{0} is masked (linked to /dev/null): systemd never loads it, so it is not linted")]
    Masked(String),
    #[error(
        "no directory {0}: --root takes the root of a system (a directory holding /etc and /usr)"
    )]
    NoRoot(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Where units are read: this host's search path, or another root's (`--root`); the system
/// manager's units or a user manager's (`--user`).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub root: Option<PathBuf>,
    pub user: bool,
}

/// What a name in a unit directory is.
enum Found {
    /// A unit file (or a link to one of the same name).
    File(PathBuf),
    /// A link to a unit of another name: the name is an alias of that unit.
    Alias(String),
    /// A link to /dev/null or an empty file.
    Masked,
}

/// The unit files lint reads, and which of them it lints.
#[derive(Debug, Default)]
pub struct UnitSet {
    units: BTreeMap<String, UnitFile>,
    linted: BTreeSet<String>,
    /// Where units are looked up: the directories of what was given, then the search path.
    dirs: Vec<PathBuf>,
    /// The root absolute link targets are read in (`/` but with `--root`).
    root: PathBuf,
    /// Alias name -> the unit it names.
    aliases: BTreeMap<String, String>,
    /// A user manager's units (`--user`).
    user: bool,
    /// The search path alone (without the directories given): units found there are
    /// installed, and whether they are enabled is known.
    search: Vec<PathBuf>,
}

/// The search path of `scope`: inside its root when it has one; else `SYSTEMD_UNIT_PATH` (a
/// trailing `:` appends the defaults), else systemd's (with the user's own directories first
/// for `--user`).
pub fn search_path(scope: &Scope) -> Vec<PathBuf> {
    let list = if scope.user {
        USER_SEARCH_PATH
    } else {
        SEARCH_PATH
    };
    if let Some(root) = &scope.root {
        return list
            .iter()
            .map(|d| root.join(d.trim_start_matches('/')))
            .collect();
    }
    let defaults = || {
        let mut dirs: Vec<PathBuf> = list.iter().map(PathBuf::from).collect();
        if scope.user
            && let Some(home) = std::env::var_os("HOME")
        {
            // The user's configuration first, the user's data after /run (systemd.unit(5)).
            let home = PathBuf::from(home);
            dirs.insert(0, home.join(".config/systemd/user"));
            let after_run = dirs
                .iter()
                .position(|d| d == Path::new("/run/systemd/user"))
                .map_or(dirs.len(), |i| i + 1);
            dirs.insert(after_run, home.join(".local/share/systemd/user"));
        }
        dirs
    };
    if scope.user {
        return defaults();
    }
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
            let mut unit = UnitFile {
                name: name.to_owned(),
                path,
                entries,
                headers,
            };
            unit.expand_specifiers(false);
            set.units.insert(name.to_owned(), unit);
            set.linted.insert(name.to_owned());
        }
        set
    }

    /// Reads what `args` name in this host's system search path; with no argument, every
    /// socket unit there.
    pub fn load(args: &[String]) -> Result<UnitSet, LoadError> {
        Self::load_in(args, &Scope::default())
    }

    /// Reads what `args` name in `scope`; with no argument, every socket unit there.
    pub fn load_in(args: &[String], scope: &Scope) -> Result<UnitSet, LoadError> {
        if let Some(root) = &scope.root
            && !root.is_dir()
        {
            return Err(LoadError::NoRoot(root.display().to_string()));
        }
        let mut set = UnitSet {
            dirs: search_path(scope),
            root: scope.root.clone().unwrap_or_else(|| PathBuf::from("/")),
            user: scope.user,
            search: search_path(scope),
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
                let mut masked = None;
                for name in candidates {
                    if set.is_masked(&name) {
                        masked = Some(name);
                    } else if let Some(unit) = set.resolve(&name)? {
                        let real = unit.name.clone();
                        set.linted.insert(real);
                        found = true;
                    }
                }
                match (found, masked) {
                    (true, _) => {}
                    (false, Some(name)) => return Err(LoadError::Masked(name)),
                    (false, None) => return Err(LoadError::NotFound(arg.clone())),
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
            // Masks are skipped, aliases linted under the name of the unit they name.
            if let Some(unit) = set.resolve(&name)? {
                let real = unit.name.clone();
                set.linted.insert(real);
            }
        }
        set.load_companions()?;
        Ok(set)
    }

    fn insert_file(&mut self, name: &str, path: &Path) -> Result<(), LoadError> {
        let mut dirs = vec![path.parent().map(Path::to_owned).unwrap_or_default()];
        dirs.extend(self.dirs.iter().cloned());
        let mut unit = UnitFile::read(name, path, &dropins(name, &dirs))?;
        unit.expand_specifiers(self.user);
        self.units.insert(name.to_owned(), unit);
        Ok(())
    }

    /// A unit by name (or by an alias of it): already read, or found in the directories and
    /// read now. A masked unit is none.
    fn resolve(&mut self, name: &str) -> Result<Option<&UnitFile>, LoadError> {
        let mut name = name.to_owned();
        // Aliases of aliases, as systemd follows them, a few deep.
        for _ in 0..8 {
            if let Some(real) = self.aliases.get(&name) {
                name = real.clone();
                continue;
            }
            if self.units.contains_key(&name) {
                break;
            }
            match self.find(&name) {
                None | Some(Found::Masked) => return Ok(None),
                Some(Found::File(path)) => {
                    self.insert_file(&name, &path)?;
                    break;
                }
                Some(Found::Alias(real)) => {
                    self.aliases.insert(name.clone(), real.clone());
                    name = real;
                }
            }
        }
        Ok(self.units.get(&name))
    }

    /// What `name` is in the first directory that has it, links read inside the root. A name
    /// with a `/` is no unit name (systemd refuses it too).
    fn find(&self, name: &str) -> Option<Found> {
        if name.is_empty() || name.contains('/') {
            return None;
        }
        for dir in &self.dirs {
            let path = dir.join(name);
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let (real, meta) = if meta.is_symlink() {
                let Ok(target) = std::fs::read_link(&path) else {
                    continue;
                };
                if target == Path::new("/dev/null") {
                    return Some(Found::Masked);
                }
                let first = self.in_root(&path, &target);
                if let Some(real_name) = first.file_name().map(|n| n.to_string_lossy())
                    && real_name != name
                    && is_unit_name(&real_name)
                {
                    return Some(Found::Alias(real_name.into_owned()));
                }
                // A link to a unit file of the same name elsewhere (`systemctl link`).
                match self.follow(first) {
                    Some(end) if end == Path::new("/dev/null") => return Some(Found::Masked),
                    Some(end) => match end.symlink_metadata() {
                        Ok(meta) => (end, meta),
                        Err(_) => continue,
                    },
                    None => continue,
                }
            } else {
                (path, meta)
            };
            if !meta.is_file() {
                continue;
            }
            return Some(if meta.len() == 0 {
                Found::Masked
            } else {
                Found::File(real)
            });
        }
        None
    }

    /// Where a chain of links ends, each read inside the root; `/dev/null` for a mask, none for
    /// a dangling link or a loop (more than 32 links, as the kernel stops at 40).
    fn follow(&self, mut path: PathBuf) -> Option<PathBuf> {
        for _ in 0..32 {
            if !path.symlink_metadata().ok()?.is_symlink() {
                return Some(path);
            }
            let target = std::fs::read_link(&path).ok()?;
            if target == Path::new("/dev/null") {
                return Some(target);
            }
            path = self.in_root(&path, &target);
        }
        None
    }

    /// A link's target as a path here: an absolute one inside the root, a relative one beside
    /// the link; `..` never leads above the root, as in a chroot.
    fn in_root(&self, link: &Path, target: &Path) -> PathBuf {
        let mut out = if target.is_absolute() {
            self.root.clone()
        } else {
            link.parent().map(Path::to_owned).unwrap_or_default()
        };
        for part in target.components() {
            match part {
                Component::Normal(p) => out.push(p),
                Component::ParentDir if out != self.root && out.starts_with(&self.root) => {
                    out.pop();
                }
                _ => {}
            }
        }
        out
    }

    /// Whether these are a user manager's units.
    pub fn is_user(&self) -> bool {
        self.user
    }

    /// Whether a unit was found installed in the search path (not only in a directory given),
    /// so that not being enabled means something.
    pub fn installed(&self, unit: &UnitFile) -> bool {
        self.search.iter().any(|d| unit.path.starts_with(d))
    }

    /// Whether `name` is masked in the directories.
    pub fn is_masked(&self, name: &str) -> bool {
        matches!(self.find(name), Some(Found::Masked))
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
        names.extend(
            self.linted("socket")
                .filter_map(|s| self.get(&self.service_of(s)))
                .map(|u| u.name.clone()),
        );
        names.iter().filter_map(|n| self.units.get(n)).collect()
    }

    /// A unit read (linted or looked up), by its name or an alias (of an alias).
    pub fn get(&self, name: &str) -> Option<&UnitFile> {
        let mut name = name;
        for _ in 0..8 {
            match self.aliases.get(name) {
                Some(real) => name = real,
                None => break,
            }
        }
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
            .find(|s| {
                self.get(&self.service_of(s))
                    .is_some_and(|u| u.name == service.name)
            })
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

/// The names of socket and service units in a directory (files and links: what they are is
/// decided when they are resolved), sorted.
fn unit_names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
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

#[cfg(test)]
mod root_tests {
    use super::*;

    /// A root laid out as Debian lays one out: the unit in /lib, an alias link and a mask in
    /// /etc, absolute link targets (which name paths inside the root, never on this host).
    fn debian_like_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("sockact-root-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let lib = root.join("lib/systemd/system");
        let etc = root.join("etc/systemd/system");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(etc.join("sockets.target.wants")).unwrap();
        std::fs::write(lib.join("ssh.socket"), "[Socket]\nListenStream=22\n").unwrap();
        std::fs::write(
            lib.join("ssh.service"),
            "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nAlias=sshd.service\n",
        )
        .unwrap();
        std::fs::write(lib.join("gone.socket"), "[Socket]\nListenStream=9\n").unwrap();
        let link = |target: &str, at: PathBuf| std::os::unix::fs::symlink(target, at).unwrap();
        link("/lib/systemd/system/ssh.service", etc.join("sshd.service"));
        link(
            "/lib/systemd/system/ssh.socket",
            etc.join("sockets.target.wants/ssh.socket"),
        );
        link("/dev/null", etc.join("gone.socket"));
        root
    }

    fn scope(root: &Path) -> Scope {
        Scope {
            root: Some(root.to_owned()),
            user: false,
        }
    }

    #[test]
    fn an_alias_is_its_unit_inside_the_root_and_a_mask_is_not_linted() {
        let root = debian_like_root("alias");
        let set = UnitSet::load_in(&["sshd".into()], &scope(&root)).unwrap();
        let linted: Vec<&str> = set.linted("service").map(|u| u.name.as_str()).collect();
        assert_eq!(linted, ["ssh.service"]);
        assert!(set.get("ssh.service").unwrap().path.starts_with(&root));
        assert_eq!(set.get("sshd.service").unwrap().name, "ssh.service");
        assert!(set.enabled("ssh.socket"));
        let err = UnitSet::load_in(&["gone".into()], &scope(&root)).unwrap_err();
        assert!(
            matches!(err, LoadError::Masked(ref n) if n == "gone.socket"),
            "{err}"
        );
        // Every socket unit of the root: the masked one is not among them.
        let all = UnitSet::load_in(&[], &scope(&root)).unwrap();
        let sockets: Vec<&str> = all.linted("socket").map(|u| u.name.as_str()).collect();
        assert_eq!(sockets, ["ssh.socket"]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn links_that_loop_dangle_or_climb_stay_inside_the_root() {
        let root = debian_like_root("links");
        let etc = root.join("etc/systemd/system");
        let link =
            |target: &str, at: &str| std::os::unix::fs::symlink(target, etc.join(at)).unwrap();
        // A loop and a dangling link hide nothing below them; a climb out of the root stays in.
        link("loop.socket", "loop.socket");
        link("/nowhere/ssh.socket", "ssh.socket");
        link("../../../../../../etc/passwd", "climb.service");
        let set = UnitSet::load_in(&["ssh.socket".into()], &scope(&root)).unwrap();
        assert!(
            set.get("ssh.socket")
                .unwrap()
                .path
                .starts_with(root.join("lib"))
        );
        assert!(UnitSet::load_in(&["loop.socket".into()], &scope(&root)).is_err());
        let climb = UnitSet::load_in(&["climb".into()], &scope(&root));
        assert!(
            climb.is_err(),
            "the host's /etc/passwd is not a unit of the root"
        );
        let set = UnitSet::load_in(&[], &scope(&root)).unwrap();
        assert!(set.all().all(|u| u.path.starts_with(&root)));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_an_error_naming_it() {
        let err = UnitSet::load_in(&[], &scope(Path::new("/nonexistent/root"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root"), "{err}");
    }
}
