//! `install`: vni-lab with everything it takes from its source checkout
//! (the static guest binaries, the kernel module's source), its man page
//! and its shell completions, under a prefix, so that it runs from any
//! directory once the checkout is gone.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use vni_lab::guest_bin::{self, INSTALLED_GUEST, INSTALLED_MARK, INSTALLED_SOURCE};
use vni_lab::kmod::{CORE_DIR, MODULE_DIR};

use crate::Progress;

/// The prefix when none is given: /usr/local for root, ~/.local otherwise.
pub fn default_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/usr/local")
    } else {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        home.join(".local")
    }
}

/// Copies `from` to `to` with `mode`, through a file beside it renamed
/// into place (a running `to` is replaced, not overwritten).
fn place(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let dir = to.parent().context("a file's folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staged = dir.join(format!(
        ".{}.{}",
        to.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::copy(from, &staged)
        .with_context(|| format!("cannot copy {} to {}", from.display(), staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", staged.display()))?;
    std::fs::rename(&staged, to).with_context(|| format!("cannot install {}", to.display()))
}

/// Writes `bytes` to `to` (mode 0644).
fn write(to: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(to, bytes).with_context(|| format!("cannot write {}", to.display()))
}

/// Copies the tree `from` to `to`, which is replaced.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("cannot replace {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else {
            place(&path, &to.join(entry.file_name()), 0o644)?;
        }
    }
    Ok(())
}

pub fn install(root: &Path, cli: clap::Command, quiet: bool) -> anyhow::Result<ExitCode> {
    let Some(checkout) = guest_bin::source_root() else {
        bail!("vni-lab install runs from its source checkout: `cargo run --release -p vni-lab -- install`");
    };
    let root = std::path::absolute(root).with_context(|| format!("--root {}", root.display()))?;
    let mut progress = Progress::new(quiet);
    let share = root.join("share").join("vni-lab");
    // Not complete until the mark is written again, last.
    let mark = share.join(INSTALLED_MARK);
    if mark.exists() {
        std::fs::remove_file(&mark).with_context(|| format!("cannot remove {}", mark.display()))?;
    }
    progress.step("building the guest binaries (cargo; quick when unchanged)");
    let guest = guest_bin::build_from_checkout()?;
    progress.step(&format!("installing into {}", root.display()));
    for bin in guest_bin::BINARIES {
        place(
            &guest.join(bin),
            &share.join(INSTALLED_GUEST).join(bin),
            0o755,
        )?;
    }
    for dir in [MODULE_DIR, CORE_DIR] {
        copy_tree(&checkout.join(dir), &share.join(INSTALLED_SOURCE).join(dir))?;
    }
    let mut man = Vec::new();
    crate::man_page(&cli, &mut man).context("cannot make the man page")?;
    write(&root.join("share/man/man1/vni-lab.1"), &man)?;
    for (shell, path) in [
        (
            clap_complete::Shell::Bash,
            "share/bash-completion/completions/vni-lab",
        ),
        (
            clap_complete::Shell::Zsh,
            "share/zsh/site-functions/_vni-lab",
        ),
        (
            clap_complete::Shell::Fish,
            "share/fish/vendor_completions.d/vni-lab.fish",
        ),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cli.clone(), "vni-lab", &mut text);
        write(&root.join(path), &text)?;
    }
    let exe = std::env::current_exe().context("cannot find vni-lab's own executable")?;
    let installed = root.join("bin").join("vni-lab");
    place(&exe, &installed, 0o755)?;
    let mut said = Vec::new();
    writeln!(
        said,
        "vni-lab {} (commit {}), installed from {}",
        env!("CARGO_PKG_VERSION"),
        env!("VNI_LAB_COMMIT"),
        checkout.display()
    )?;
    write(&mark, &said)?;
    progress.done();
    println!(
        "vni-lab installed: {} (guest binaries and the kernel module's source in {}, man page, bash, zsh and fish completions under {})",
        installed.display(),
        share.display(),
        root.join("share").display()
    );
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d == root.join("bin")));
    if !on_path {
        println!(
            "{} is not on PATH: add it to run `vni-lab` from anywhere",
            root.join("bin").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
