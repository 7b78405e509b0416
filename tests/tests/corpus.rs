//! lint on units others wrote: every socket unit that 23 real Debian packages install (the
//! corpus `cargo xtask test` builds: apt in a copy of the test root, the packages' maintainer
//! scripts enabling what Debian enables), system and user, read with `--root`. Each finding
//! is judged here, with why.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use sockact_tests::trace_bin;

/// The findings judged true, as (rule, socket unit), each checked against the unit and what
/// systemd does with it:
/// - cups.socket is PartOf=cups.service: `systemctl restart cups` closes the listener and
///   refuses clients until the socket starts again (the shape of moby/moby#37468, where
///   docker.socket's PartOf= was removed for it).
/// - cni-dhcp.socket (podman's) is PartOf=cni-dhcp.service: the same shape.
const TRUE_FINDINGS: &[(&str, &str)] = &[
    ("partof_on_socket", "cni-dhcp.socket"),
    ("partof_on_socket", "cups.socket"),
];

/// Rules whose findings were all judged deliberate on these units (reported with --pedantic).
const DELIBERATE: &[&str] = &["listen_all_addresses", "runs_as_root", "unix_socket_mode"];

fn corpus() -> PathBuf {
    let dir = std::env::var_os("SOCKACT_CORPUS").map(PathBuf::from).expect(
        "SOCKACT_CORPUS is not set: run the suite through `cargo xtask test`, which builds the corpus of real units",
    );
    assert!(
        dir.join(".sockact-corpus").is_file(),
        "{} is not a built corpus: `cargo xtask corpus` builds it",
        dir.display()
    );
    dir
}

/// `sockact-trace lint --format json ARGS`: its exit code and findings.
fn lint(args: &[&str]) -> (i32, Vec<Value>) {
    let out = Command::new(trace_bin())
        .args(["lint", "--format", "json"])
        .args(args)
        .output()
        .expect("running sockact-trace lint");
    let findings = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), findings)
}

/// The socket units installed in a unit directory of the root.
fn sockets_in(root: &Path, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".socket"))
        .collect();
    names.sort();
    names
}

fn pairs(findings: &[Value]) -> BTreeSet<(String, String)> {
    findings
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_owned(),
                f["socket_unit"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_debian_system_socket_unit_raises_only_the_true_problems() {
    let root = corpus();
    let sockets = sockets_in(&root, "usr/lib/systemd/system");
    assert!(
        sockets.len() >= 40,
        "the corpus's socket units: {sockets:?}"
    );
    let (code, findings) = lint(&["--root", root.to_str().unwrap()]);
    let want: BTreeSet<(String, String)> = TRUE_FINDINGS
        .iter()
        .map(|(r, s)| ((*r).to_owned(), (*s).to_owned()))
        .collect();
    assert_eq!(pairs(&findings), want, "{findings:#?}");
    assert_eq!(findings.len(), want.len(), "each once: {findings:#?}");
    assert_eq!(code, 1, "warnings exit 1");
    // Evidence points into the root, never at this host's units.
    let real_root = root.canonicalize().unwrap();
    for f in &findings {
        for e in f["evidence"].as_array().unwrap() {
            let file = Path::new(e["file"].as_str().unwrap())
                .canonicalize()
                .unwrap();
            assert!(file.starts_with(&real_root), "{f}");
        }
    }
    // With --pedantic, what these units do deliberately is said too, and nothing else more.
    let (_, pedantic) = lint(&["--root", root.to_str().unwrap(), "--pedantic"]);
    let extra: BTreeSet<String> = pedantic
        .iter()
        .filter(|f| {
            !want.contains(&(
                f["rule"].as_str().unwrap().to_owned(),
                f["socket_unit"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        extra,
        DELIBERATE.iter().map(|r| (*r).to_owned()).collect(),
        "{pedantic:#?}"
    );
}

#[test]
fn lint_of_each_healthy_debian_socket_unit_by_name_exits_0() {
    let root = corpus();
    let flagged: BTreeSet<&str> = TRUE_FINDINGS.iter().map(|(_, s)| *s).collect();
    let mut checked = 0;
    for socket in sockets_in(&root, "usr/lib/systemd/system") {
        let name = socket.trim_end_matches(".socket");
        let (code, findings) = lint(&["--root", root.to_str().unwrap(), name]);
        if flagged.contains(socket.as_str()) {
            assert_eq!(code, 1, "{socket}: {findings:#?}");
        } else {
            assert_eq!(code, 0, "{socket}: {findings:#?}");
            checked += 1;
        }
    }
    assert!(checked >= 38, "{checked} healthy units");
    // An alias is the unit it names: sshd is Debian's ssh.service.
    let (code, _) = lint(&["--root", root.to_str().unwrap(), "sshd"]);
    assert_eq!(code, 0);
    let (_, pedantic) = lint(&["--root", root.to_str().unwrap(), "--pedantic", "sshd"]);
    assert!(
        pedantic.iter().any(|f| f["unit"] == "ssh.service"),
        "{pedantic:#?}"
    );
}

#[test]
fn every_debian_user_socket_unit_lints_clean() {
    let root = corpus();
    let sockets = sockets_in(&root, "usr/lib/systemd/user");
    // pipewire, gpg-agent's five, the session bus, podman, mpd.
    assert!(
        sockets.len() >= 8,
        "the corpus's user socket units: {sockets:?}"
    );
    let (code, findings) = lint(&["--root", root.to_str().unwrap(), "--user"]);
    assert_eq!((code, findings.len()), (0, 0), "{findings:#?}");
    // A user manager's services run as their user: never runs_as_root. What --pedantic says is
    // mpd's 6600 on every interface (its mpd.conf says localhost).
    let (_, pedantic) = lint(&["--root", root.to_str().unwrap(), "--user", "--pedantic"]);
    assert!(
        pedantic.iter().all(|f| f["rule"] != "runs_as_root"),
        "{pedantic:#?}"
    );
    assert!(
        pedantic
            .iter()
            .any(|f| f["rule"] == "listen_all_addresses" && f["socket_unit"] == "mpd.socket"),
        "{pedantic:#?}"
    );
}
