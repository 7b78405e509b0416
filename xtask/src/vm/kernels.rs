//! Debian's cloud kernels, the ones production hosts run: for each series the newest build the
//! registry serves, downloaded once and cached under `~/.cache/sockact/kernels`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::util::{cache_dir, output, run_cmd, stdout};

/// A kernel series of the matrix and the Debian release whose cloud kernel it is.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    /// What `--kernel` takes: `5.10`, `6.1`, `6.12`.
    pub name: &'static str,
    pub suite: &'static str,
}

/// Debian 11, 12 and 13: the kernels most hosts that run socket-activated services are on.
pub const MATRIX: &[Series] = &[
    Series {
        name: "5.10",
        suite: "bullseye",
    },
    Series {
        name: "6.1",
        suite: "bookworm",
    },
    Series {
        name: "6.12",
        suite: "trixie",
    },
];

pub fn series(name: &str) -> anyhow::Result<Series> {
    MATRIX
        .iter()
        .copied()
        .find(|s| s.name == name)
        .with_context(|| {
            let known: Vec<&str> = MATRIX.iter().map(|s| s.name).collect();
            format!(
                "no kernel {name} in the matrix: one of {}",
                known.join(", ")
            )
        })
}

/// A kernel unpacked in the cache.
#[derive(Debug)]
pub struct Kernel {
    /// `uname -r` of that kernel, e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Its `lib/modules/RELEASE`.
    pub modules: PathBuf,
}

fn kernels_dir() -> PathBuf {
    cache_dir().join("kernels")
}

/// The newest cloud kernel of `series`: downloaded when the cache lacks it; when the registry
/// cannot be reached, the newest one cached is used and that is said.
pub fn ensure(series: Series) -> anyhow::Result<Kernel> {
    match newest_package(series) {
        Ok((package, release)) => {
            let dir = kernels_dir().join(&release);
            if let Some(k) = unpacked(&dir, &release) {
                println!("kernel {}: {release} (cached)", series.name);
                return Ok(k);
            }
            println!("kernel {}: downloading {package}", series.name);
            download(series, &package, &dir)?;
            unpacked(&dir, &release)
                .with_context(|| format!("{package} holds no vmlinuz-{release} and modules"))
        }
        Err(e) => {
            let cached = cached(series);
            match cached {
                Some(k) => {
                    println!(
                        "kernel {}: the registry did not answer ({e:#}); using the cached {}",
                        series.name, k.release
                    );
                    Ok(k)
                }
                None => Err(e),
            }
        }
    }
}

/// The newest kernel of the series already in the cache.
fn cached(series: Series) -> Option<Kernel> {
    let prefix = format!("{}.", series.name);
    let mut found: Vec<Kernel> = std::fs::read_dir(kernels_dir())
        .ok()?
        .flatten()
        .filter_map(|e| {
            let release = e.file_name().to_str()?.to_owned();
            release
                .starts_with(&prefix)
                .then(|| unpacked(&e.path(), &release))?
        })
        .collect();
    found.sort_by_key(|k| version_key(&k.release));
    found.pop()
}

fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn unpacked(dir: &Path, release: &str) -> Option<Kernel> {
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| dir.join(m).join(release))
        .find(|m| m.join("modules.order").exists())?;
    vmlinuz.exists().then_some(Kernel {
        release: release.to_owned(),
        vmlinuz,
        modules,
    })
}

/// apt-get or apt-cache with a sources list and state of its own: the system's sources are not touched,
/// and bullseye, which the machine's own list lacks, can be read too.
fn apt(series: Series, program: &str) -> anyhow::Result<(Command, PathBuf)> {
    let state = kernels_dir().join("apt").join(series.suite);
    std::fs::create_dir_all(state.join("lists/partial"))?;
    std::fs::create_dir_all(state.join("cache/archives/partial"))?;
    let list = state.join("sources.list");
    let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mirror = crate::rootfs::mirror();
    let security = mirror.replace("/debian", "/debian-security");
    let suite = series.suite;
    std::fs::write(
        &list,
        format!(
            "deb [signed-by={key}] {mirror} {suite} main\n\
             deb [signed-by={key}] {security} {suite}-security main\n"
        ),
    )?;
    let mut cmd = Command::new(program);
    cmd.arg("-q")
        .arg(format!("-oDir::Etc::sourcelist={}", list.display()))
        .arg("-oDir::Etc::sourceparts=/nonexistent")
        .arg(format!(
            "-oDir::State::Lists={}",
            state.join("lists").display()
        ))
        .arg(format!("-oDir::Cache={}", state.join("cache").display()))
        .arg("-oAPT::Sandbox::User=root");
    Ok((cmd, state))
}

/// The package of the newest cloud kernel of the series, and its release, from the suite's
/// `linux-image-cloud-amd64` meta-package.
fn newest_package(series: Series) -> anyhow::Result<(String, String)> {
    let (mut update, _) = apt(series, "apt-get")?;
    let out = output(update.arg("update"))?;
    if !out.status.success() {
        bail!(
            "apt-get update for {}: {}",
            series.suite,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (mut show, _) = apt(series, "apt-cache")?;
    let meta = stdout(show.args(["show", "--no-all-versions", "linux-image-cloud-amd64"]))?;
    // "Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)"
    let package = meta
        .lines()
        .filter_map(|l| l.strip_prefix("Depends:"))
        .flat_map(|l| l.split(','))
        .filter_map(|d| d.split_whitespace().next())
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("no cloud kernel in {}: {meta}", series.suite))?
        .to_owned();
    let release = package.trim_start_matches("linux-image-").to_owned();
    if !release.starts_with(&format!("{}.", series.name)) {
        bail!(
            "{}'s cloud kernel is {release}, not {}",
            series.suite,
            series.name
        );
    }
    Ok((package, release))
}

fn download(series: Series, package: &str, dir: &Path) -> anyhow::Result<()> {
    let (mut get, state) = apt(series, "apt-get")?;
    let debs = state.join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs)?;
    run_cmd(get.current_dir(&debs).args(["download", package]))?;
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    let _ = std::fs::remove_dir_all(&debs);
    Ok(())
}
