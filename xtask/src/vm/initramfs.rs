//! The virtual machine's root: the test root filesystem itself as an initramfs, with systemd as
//! its init. Three cpio archives back to back, which the kernel unpacks in order: the root
//! (cached until the root changes), the kernel's network modules with their depmod index (cached
//! per kernel), and this run's payload (binaries, scenarios, the driver unit).
use std::{
    fs,
    io::Write,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::{
    util::{cache_dir, run_cmd},
    vm::kernels::Kernel,
};

fn vm_dir() -> PathBuf {
    cache_dir().join("vm")
}

/// `find . | cpio -o -H newc` of `dir` into `out`, every file owned by root.
fn pack(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let tmp = out.with_extension("tmp");
    run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg("find . -mindepth 1 -print0 | cpio --null --create --format=newc --owner=0:0 --quiet > \"$0\"")
            .arg(&tmp)
            .current_dir(dir),
    )
    .context("packing a cpio archive (cpio; cargo xtask setup installs it)")?;
    fs::rename(&tmp, out)?;
    Ok(())
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(a), Some(b)) if a > b)
}

/// The root filesystem as a cpio archive, packed again only when the root was rebuilt.
pub fn root_archive(rootfs: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(vm_dir())?;
    let out = vm_dir().join("rootfs.cpio");
    let stamp = rootfs.join(".sockact-rootfs");
    if out.exists() && newer(&out, &stamp) {
        return Ok(out);
    }
    println!("vm: packing the test root as an initramfs");
    pack(rootfs, &out)?;
    Ok(out)
}

/// The kernel's network modules (sock_diag's inet_diag, tcp_diag, udp_diag, unix_diag...) and
/// their index, so that they autoload as on a real host.
pub fn modules_archive(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let out = vm_dir().join(format!("modules-{}.cpio", kernel.release));
    if out.exists() {
        return Ok(out);
    }
    let stage = vm_dir().join(format!("modules-{}", kernel.release));
    let _ = fs::remove_dir_all(&stage);
    // The root is merged-/usr: /lib is a link to usr/lib.
    let dest = stage.join("usr/lib/modules").join(&kernel.release);
    fs::create_dir_all(dest.join("kernel"))?;
    run_cmd(
        Command::new("cp")
            .arg("-a")
            .arg(kernel.modules.join("kernel/net"))
            .arg(dest.join("kernel")),
    )?;
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let src = kernel.modules.join(f);
        if src.exists() {
            fs::copy(&src, dest.join(f))?;
        }
    }
    run_cmd(
        Command::new("depmod")
            .arg("-b")
            .arg(stage.join("usr"))
            .arg(&kernel.release),
    )
    .context("depmod (package kmod)")?;
    pack(&stage, &out)?;
    let _ = fs::remove_dir_all(&stage);
    Ok(out)
}

/// What one boot carries beyond the root.
pub struct Payload {
    /// Files copied with their mode: (path inside the VM, source on the host).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// Directories copied whole: (path inside the VM, source on the host).
    pub trees: Vec<(PathBuf, PathBuf)>,
    /// Files written from text: (path inside the VM, contents, mode).
    pub texts: Vec<(PathBuf, String, u32)>,
    /// Links: (path inside the VM, target).
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// Packs a payload into `out`.
pub fn payload_archive(payload: &Payload, out: &Path) -> anyhow::Result<()> {
    let stage = out.with_extension("d");
    let _ = fs::remove_dir_all(&stage);
    let inside = |p: &Path| stage.join(p.strip_prefix("/").unwrap_or(p));
    for (dest, src) in &payload.files {
        let d = inside(dest);
        fs::create_dir_all(d.parent().context("a file at /")?)?;
        fs::copy(src, &d).with_context(|| format!("copying {}", src.display()))?;
    }
    for (dest, src) in &payload.trees {
        let d = inside(dest);
        fs::create_dir_all(d.parent().context("a tree at /")?)?;
        run_cmd(Command::new("cp").arg("-a").arg(src).arg(&d))?;
    }
    for (dest, text, mode) in &payload.texts {
        let d = inside(dest);
        fs::create_dir_all(d.parent().context("a file at /")?)?;
        let mut f = fs::File::create(&d)?;
        f.write_all(text.as_bytes())?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&d, fs::Permissions::from_mode(*mode))?;
    }
    for (dest, target) in &payload.links {
        let d = inside(dest);
        fs::create_dir_all(d.parent().context("a link at /")?)?;
        let _ = fs::remove_file(&d);
        symlink(target, &d)?;
    }
    pack(&stage, out)?;
    let _ = fs::remove_dir_all(&stage);
    Ok(())
}

/// The archives, back to back, as one initrd file.
pub fn concatenate(parts: &[&Path], out: &Path) -> anyhow::Result<()> {
    let mut f = fs::File::create(out)?;
    for p in parts {
        let mut src = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        std::io::copy(&mut src, &mut f)?;
    }
    Ok(())
}
