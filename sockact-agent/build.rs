//! Builds the eBPF programs (sockact-ebpf, nightly, bpfel-unknown-none) with aya-build; the
//! object is embedded in the binaries.
use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest.join("../sockact-ebpf").canonicalize()?;
    let common = manifest.join("../sockact-common").canonicalize()?;
    println!("cargo:rerun-if-changed={}", common.display());
    // The pinned nightly (rust-toolchain.toml's channel).
    let pin = ebpf.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", pin.display());
    let text =
        std::fs::read_to_string(&pin).with_context(|| format!("reading {}", pin.display()))?;
    let channel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .with_context(|| format!("no channel in {}", pin.display()))?
        .to_owned();
    // sockact-ebpf is its own workspace (nightly, build-std, its own profiles and lock file):
    // aya-build runs cargo in the current directory.
    std::env::set_current_dir(&ebpf)?;
    let root = ebpf.to_str().context("non-UTF-8 path to sockact-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sockact-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
    .context(
        "building the eBPF programs failed: run `cargo xtask setup` (it installs rust-src for \
         nightly and bpf-linker)",
    )
}
