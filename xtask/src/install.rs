//! `cargo xtask install`: the binaries, the agent's unit and its example configuration, put
//! where the unit expects them. An existing configuration is kept.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::util::{build_binaries, build_release, root, run_cmd};

pub struct Options {
    /// Install under this directory instead of / (a package's staging root, an image).
    pub dest: PathBuf,
    /// Where the binaries go, as the running system sees it.
    pub prefix: PathBuf,
    /// The debug build instead of the release one.
    pub debug: bool,
    /// No `systemctl daemon-reload` afterwards.
    pub no_reload: bool,
}

/// `dest` + an absolute path.
fn under(dest: &Path, path: &Path) -> PathBuf {
    dest.join(path.strip_prefix("/").unwrap_or(path))
}

fn put(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Through a temporary name: a running binary cannot be written over.
    let tmp = to.with_extension("sockact-new");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    println!("installed {}", to.display());
    Ok(())
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let root = root();
    let profile = if opts.debug {
        build_binaries()?;
        "debug"
    } else {
        build_release()?;
        "release"
    };
    let bin = under(&opts.dest, &opts.prefix.join("bin"));
    for name in ["sockact-agent", "sockact-trace"] {
        put(
            &root.join("target").join(profile).join(name),
            &bin.join(name),
            0o755,
        )?;
    }

    let unit = fs::read_to_string(root.join("packaging/sockact-agent.service"))?;
    let agent = opts.prefix.join("bin/sockact-agent");
    let unit = unit.replace("/usr/local/bin/sockact-agent", &agent.display().to_string());
    let unit_path = under(
        &opts.dest,
        Path::new("/etc/systemd/system/sockact-agent.service"),
    );
    fs::create_dir_all(unit_path.parent().expect("a directory"))?;
    fs::write(&unit_path, unit).with_context(|| format!("writing {}", unit_path.display()))?;
    println!("installed {}", unit_path.display());

    let config = under(&opts.dest, Path::new("/etc/sockact/agent.toml"));
    if config.exists() {
        println!(
            "kept {} (the example is packaging/agent.toml)",
            config.display()
        );
    } else {
        put(&root.join("packaging/agent.toml"), &config, 0o644)?;
    }

    let live = opts.dest == Path::new("/");
    if live && !opts.no_reload && Path::new("/run/systemd/system").exists() {
        run_cmd(Command::new("systemctl").arg("daemon-reload"))?;
        println!("next: systemctl enable --now sockact-agent");
    }
    Ok(())
}
