//! `cargo xtask fuzz`: every libFuzzer target in `fuzz/` (cargo fuzz), each for a bounded
//! time, from seeds taken from the repository's real recorded data, with every crash ever
//! found (`fuzz/regressions/<target>/`) run first.
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use sockact_common::{BindRecord, ConnectRecord, RecordHeader, RecordKind, SockAddrRaw};

use crate::{
    setup,
    util::{root, run_cmd},
};

/// The targets, in `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &[
    "record",
    "exec_env",
    "sockaddr",
    "replay",
    "unit_file",
    "agent_config",
];

pub fn run(seconds: u64, only: &[String]) -> anyhow::Result<()> {
    setup::cargo_fuzz()?;
    let root = root();
    let targets: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if let Some(unknown) = only.iter().find(|o| !TARGETS.contains(&o.as_str())) {
        bail!(
            "no fuzz target {unknown}: the targets are {}",
            TARGETS.join(", ")
        );
    }
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .arg(format!("+{}", crate::util::pinned_nightly()?))
            .args(["fuzz", "build"]),
    )?;
    let corpus_root = root.join("target/fuzz/corpus");
    for target in &targets {
        let corpus = corpus_root.join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = seed(target, &root, &corpus)?;
        let regressions = root.join("fuzz/regressions").join(target);
        std::fs::create_dir_all(&regressions)?;
        println!("fuzz: {target} for {seconds} s ({seeds} seeds)");
        let status = Command::new("cargo")
            .current_dir(&root)
            .arg(format!("+{}", crate::util::pinned_nightly()?))
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .arg(&regressions)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-timeout=10", "-max_len=65536", "-print_final_stats=1"])
            .status()
            .context("cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}): its input is in fuzz/artifacts/{target}/; \
                 once fixed, move it to fuzz/regressions/{target}/ so it runs every time"
            );
        }
    }
    println!("fuzz: {} targets, no crash", targets.len());
    Ok(())
}

/// Writes `target`'s seeds into `corpus` (named by content, so reruns add nothing twice).
fn seed(target: &str, root: &Path, corpus: &Path) -> anyhow::Result<usize> {
    let inputs: Vec<Vec<u8>> = match target {
        "record" => records(root)?,
        "exec_env" => records(root)?
            .into_iter()
            .filter(|r| kind(r) == Some(RecordKind::Exec as u32))
            .map(|r| r[size_of::<RecordHeader>()..].to_vec())
            .collect(),
        "sockaddr" => records(root)?.iter().filter_map(|r| sockaddr(r)).collect(),
        "replay" => files(&root.join("tests/fixtures"), "ndjson")?
            .iter()
            .flat_map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines
                    .chunks(16)
                    .map(|c| (c.join("\n") + "\n").into_bytes())
                    .collect::<Vec<_>>()
            })
            .collect(),
        "unit_file" => units(root)?,
        "agent_config" => vec![std::fs::read(root.join("packaging/agent.toml"))?],
        other => bail!("no seeds for {other}"),
    };
    for input in &inputs {
        let mut h = DefaultHasher::new();
        input.hash(&mut h);
        std::fs::write(corpus.join(format!("seed-{:016x}", h.finish())), input)?;
    }
    Ok(inputs.len())
}

/// The recorded kernel records (`SOCKACT_RECORD_RECORDS`): each a little-endian u32 length and
/// the record.
fn records(root: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for path in paths(&root.join("tests/fixtures/records"), "bin")? {
        let bytes = std::fs::read(&path)?;
        let mut rest = bytes.as_slice();
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into()?) as usize;
            let Some(record) = rest.get(4..4 + len) else {
                break;
            };
            out.push(record.to_vec());
            rest = &rest[4 + len..];
        }
    }
    Ok(out)
}

fn kind(record: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(record.get(..4)?.try_into().ok()?))
}

/// A bind's or connect's sockaddr as the sockaddr target takes it: length byte, then bytes.
fn sockaddr(record: &[u8]) -> Option<Vec<u8>> {
    let at = match kind(record)? {
        k if k == RecordKind::Bind as u32 => std::mem::offset_of!(BindRecord, addr),
        k if k == RecordKind::Connect as u32 => std::mem::offset_of!(ConnectRecord, addr),
        _ => return None,
    };
    let raw = record.get(at..at + size_of::<SockAddrRaw>())?;
    let len = u32::from_le_bytes(raw[..4].try_into().ok()?);
    let bytes = &raw[std::mem::offset_of!(SockAddrRaw, bytes)..];
    let mut input = vec![len.min(255) as u8];
    input.extend_from_slice(&bytes[..(len as usize).min(bytes.len())]);
    Some(input)
}

/// Every socket unit of the test units with its service, joined by a NUL.
fn units(root: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for dir in [root.join("tests/lint"), root.join("tests/scenarios")] {
        for socket in walk(&dir)?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "socket"))
        {
            let mut input = std::fs::read(&socket)?;
            input.push(0);
            let stem = socket.file_stem().unwrap_or_default().to_string_lossy();
            for name in [format!("{stem}.service"), format!("{stem}@.service")] {
                if let Ok(service) = std::fs::read(socket.with_file_name(name)) {
                    input.extend_from_slice(&service);
                    break;
                }
            }
            out.push(input);
        }
    }
    Ok(out)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

fn paths(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = walk(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    Ok(out)
}

fn files(dir: &Path, ext: &str) -> anyhow::Result<Vec<String>> {
    paths(dir, ext)?
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds_from_the_repository() {
        let dir = std::env::temp_dir().join(format!("sockact-seeds-{}", std::process::id()));
        for target in TARGETS {
            let corpus = dir.join(target);
            std::fs::create_dir_all(&corpus).unwrap();
            let n = seed(target, &root(), &corpus).unwrap();
            assert!(n > 0, "{target}: no seeds");
            assert!(
                root()
                    .join("fuzz/fuzz_targets")
                    .join(format!("{target}.rs"))
                    .is_file(),
                "{target}: no fuzz_targets/{target}.rs"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
