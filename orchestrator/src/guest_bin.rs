//! The project's own guest binaries (`vni-driver`), built static and added
//! to each lab's initramfs.
//!
//! The same archive carries the modules of a kernel given by path
//! (`guest.modules`).
//!
//! They are not part of the cached image: the image changes when Debian's
//! packages or the recipe change, the driver whenever its code does, and
//! rebuilding a root filesystem for every driver change would cost a minute
//! and root. Instead `up` appends a second cpio archive holding the
//! binaries to the image's initramfs (Linux unpacks concatenated archives
//! in order), into the lab directory.
//!
//! Where the binaries come from, first match wins:
//! 1. `$VNI_LAB_GUEST_BIN`, a directory holding them;
//! 2. an installed vni-lab's own (`vni-lab install`): `PREFIX/bin/vni-lab`
//!    takes them from `PREFIX/share/vni-lab/guest/` ([`installed`]);
//! 3. the source checkout vni-lab was built from, if it is still there:
//!    `cargo build` (static: `+crt-static`, its own target directory so the
//!    host build is not disturbed), which is a no-op when nothing changed;
//! 4. the directory of the `vni-lab` executable.
//!
//! The kernel module's source comes from the installed copy or the
//! checkout the same way ([`module_source`]).

use crate::io_failure::{io_err, IoFailure};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest binaries, installed in `/usr/local/bin` of every guest.
pub const BINARIES: &[&str] = &["vni-driver", "vni-frames", "vni-shell"];
/// The Rust target of the guests.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Where the binaries land in the guest.
pub const GUEST_DIR: &str = "usr/local/bin";

/// Errors finding or packing the guest binaries.
#[derive(Debug, thiserror::Error)]
pub enum GuestBinError {
    /// Nowhere to be found.
    #[error("The guest binaries ({}) were not found: set VNI_LAB_GUEST_BIN to a directory holding them, or run vni-lab from its source checkout (cargo builds them)", BINARIES.join(", "))]
    NotFound,
    /// The build failed.
    #[error("Building the guest binaries failed: `{command}` exited with {status}\n{tail}")]
    Build {
        /// The command line.
        command: String,
        /// Its status.
        status: String,
        /// The end of its output.
        tail: String,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoFailure),
}

/// The source checkout this vni-lab was built from, if it is still there.
pub fn source_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    (root.join("Cargo.toml").is_file() && root.join("guest-driver/driver/Cargo.toml").is_file())
        .then_some(root)
}

/// Where an installed vni-lab keeps its files, beside its executable:
/// `PREFIX/share/vni-lab` for `PREFIX/bin/vni-lab`.
pub fn installed() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let share = exe.parent()?.parent()?.join("share").join("vni-lab");
    share.join(INSTALLED_MARK).is_file().then_some(share)
}

/// The file `vni-lab install` writes last into `share/vni-lab`: an
/// installation is complete once it is there.
pub const INSTALLED_MARK: &str = "installed";
/// Under `share/vni-lab`: the guest binaries.
pub const INSTALLED_GUEST: &str = "guest";
/// Under `share/vni-lab`: the kernel module's source, laid out as in the
/// checkout.
pub const INSTALLED_SOURCE: &str = "src";

/// The root the kernel module's source is under (as in the checkout):
/// an installed vni-lab's copy, else the checkout.
pub fn module_source() -> Option<PathBuf> {
    installed()
        .map(|share| share.join(INSTALLED_SOURCE))
        .or_else(source_root)
}

/// Builds the guest binaries from the checkout vni-lab was built from
/// (for `vni-lab install`).
pub fn build_from_checkout() -> Result<PathBuf, GuestBinError> {
    build(&source_root().ok_or(GuestBinError::NotFound)?)
}

fn has_all(dir: &Path) -> bool {
    BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// The directory holding the guest binaries, building them when vni-lab
/// runs from its source checkout. `step` hears what happens.
pub fn locate(step: &mut dyn FnMut(&str)) -> Result<PathBuf, GuestBinError> {
    if let Some(dir) = std::env::var_os("VNI_LAB_GUEST_BIN") {
        let dir = PathBuf::from(dir);
        return if has_all(&dir) {
            Ok(dir)
        } else {
            Err(GuestBinError::NotFound)
        };
    }
    if let Some(dir) = installed()
        .map(|share| share.join(INSTALLED_GUEST))
        .filter(|dir| has_all(dir))
    {
        return Ok(dir);
    }
    if let Some(root) = source_root() {
        step("building the guest driver (cargo; quick when unchanged)");
        return build(&root);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .filter(|dir| has_all(dir))
        .ok_or(GuestBinError::NotFound)
}

/// Builds the guest binaries static in `root`'s `target/guest`.
fn build(root: &Path) -> Result<PathBuf, GuestBinError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = root.join("target").join("guest");
    let mut command = Command::new(&cargo);
    command
        .current_dir(root)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for bin in BINARIES {
        command.args(["--bin", bin]);
    }
    // With --target, RUSTFLAGS reach only the guest's artifacts, not build
    // scripts or proc-macros (which cannot be static). Debug info stays on
    // the host: every guest holds the binaries in RAM.
    command
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(std::process::Stdio::null());
    let rendered = format!("{command:?}");
    let output = command.output().map_err(io_err("run cargo"))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        return Err(GuestBinError::Build {
            command: rendered,
            status: output.status.to_string(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        });
    }
    Ok(target_dir.join(TARGET).join("release"))
}

/// One entry of the added archive.
type Entry = (cpio::NewcBuilder, io::Cursor<Vec<u8>>);

fn dir_entry(name: &str) -> Entry {
    (
        cpio::NewcBuilder::new(name).mode(0o40755).nlink(2),
        io::Cursor::new(Vec::new()),
    )
}

/// Entries for `dir`'s tree (files, directories, symlinks) under `prefix`.
fn tree(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<(), GuestBinError> {
    let mut children: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map_err(io_err(format!("read {}", dir.display())))?
        .filter_map(Result::ok)
        .collect();
    children.sort_by_key(std::fs::DirEntry::file_name);
    for child in children {
        let path = child.path();
        let name = format!("{prefix}/{}", child.file_name().to_string_lossy());
        let meta =
            std::fs::symlink_metadata(&path).map_err(io_err(format!("stat {}", path.display())))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(io_err(format!("read link {}", path.display())))?;
            out.push((
                cpio::NewcBuilder::new(&name).mode(0o120777).nlink(1),
                io::Cursor::new(target.as_os_str().as_encoded_bytes().to_vec()),
            ));
        } else if meta.is_dir() {
            out.push(dir_entry(&name));
            tree(&path, &name, out)?;
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
            out.push((
                cpio::NewcBuilder::new(&name).mode(0o100644).nlink(1),
                io::Cursor::new(bytes),
            ));
        }
    }
    Ok(())
}

/// The modules a guest may load, by name (`-` read as `_`): those of
/// `images/modules` and every module an option of [`crate::kconfig`]
/// builds (af_packet, unix, ...: built in on Debian's kernels, perhaps
/// not on one's own).
fn wanted_modules() -> std::collections::BTreeSet<String> {
    use crate::topology::{Driver, Network};
    let mut names: std::collections::BTreeSet<String> = crate::image::guest_modules()
        .into_iter()
        .map(|m| m.replace('-', "_"))
        .collect();
    for network in [Network::Vni, Network::VirtioNet] {
        for r in crate::kconfig::requirements(&[Driver::User, Driver::Kernel], network) {
            names.extend(r.module.map(|m| m.replace('-', "_")));
        }
    }
    names
}

/// The modules tree `root` (one folder per kernel release) under
/// `lib/modules`: for a release with a `modules.dep`, only the modules a
/// guest loads and what they depend on, with the index files (a
/// distribution's whole tree is hundreds of MiB, more than a guest's
/// memory); a release without one, whole.
fn module_trees(root: &Path, out: &mut Vec<Entry>) -> Result<(), GuestBinError> {
    let mut releases: Vec<std::fs::DirEntry> = std::fs::read_dir(root)
        .map_err(io_err(format!("read {}", root.display())))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    releases.sort_by_key(std::fs::DirEntry::file_name);
    for release in releases {
        let dir = release.path();
        let prefix = format!("lib/modules/{}", release.file_name().to_string_lossy());
        let Ok(dep) = std::fs::read_to_string(dir.join("modules.dep")) else {
            out.push(dir_entry(&prefix));
            tree(&dir, &prefix, out)?;
            continue;
        };
        out.push(dir_entry(&prefix));
        let mut index: Vec<std::fs::DirEntry> = std::fs::read_dir(&dir)
            .map_err(io_err(format!("read {}", dir.display())))?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("modules.") && e.path().is_file()
            })
            .collect();
        index.sort_by_key(std::fs::DirEntry::file_name);
        for file in index {
            let path = file.path();
            let bytes = std::fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
            out.push((
                cpio::NewcBuilder::new(&format!("{prefix}/{}", file.file_name().to_string_lossy()))
                    .mode(0o100644)
                    .nlink(1),
                io::Cursor::new(bytes),
            ));
        }
        let mut dirs = std::collections::BTreeSet::new();
        for file in module_closure(&dep, &wanted_modules()) {
            let mut at = String::new();
            for part in file
                .split('/')
                .collect::<Vec<_>>()
                .split_last()
                .map_or(&[][..], |(_, d)| d)
            {
                at = if at.is_empty() {
                    (*part).to_owned()
                } else {
                    format!("{at}/{part}")
                };
                if dirs.insert(at.clone()) {
                    out.push(dir_entry(&format!("{prefix}/{at}")));
                }
            }
            let path = dir.join(&file);
            let bytes = std::fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
            out.push((
                cpio::NewcBuilder::new(&format!("{prefix}/{file}"))
                    .mode(0o100644)
                    .nlink(1),
                io::Cursor::new(bytes),
            ));
        }
    }
    Ok(())
}

/// The files (paths relative to the release folder, in `modules.dep`'s
/// order) of the modules named in `wanted` and of all they depend on.
fn module_closure(dep: &str, wanted: &std::collections::BTreeSet<String>) -> Vec<String> {
    let name = crate::kconfig::module_name;
    let lines: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(file, deps)| (file.trim(), deps.split_whitespace().collect()))
        .collect();
    let mut needed: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|(file, _)| wanted.contains(&name(file)))
        .map(|(file, _)| *file)
        .collect();
    // modules.dep lists each module's dependencies in full already.
    for (file, deps) in &lines {
        if needed.contains(file) {
            needed.extend(deps.iter().copied());
        }
    }
    lines
        .iter()
        .map(|(file, _)| *file)
        .filter(|f| needed.contains(f))
        .map(str::to_owned)
        .collect()
}

/// Writes `out`: the initramfs `base` followed by a cpio archive that adds
/// the guest binaries from `bin_dir` and the executables `tools` (perf for
/// kernel-driver labs) to `/usr/local/bin`, the VNI kernel module
/// `kernel_module` (when nodes run it) as [`crate::driver::KERNEL_MODULE`],
/// and, for a kernel of the user's, the `modules` tree (the directories of
/// `lib/modules/`, one per kernel release) to `/lib/modules`.
pub fn overlay_initrd(
    base: &Path,
    bin_dir: &Path,
    modules: Option<&Path>,
    kernel_module: Option<&Path>,
    tools: &[PathBuf],
    out: &Path,
) -> Result<(), GuestBinError> {
    let mut file =
        std::fs::File::create(out).map_err(io_err(format!("create {}", out.display())))?;
    let mut src = std::fs::File::open(base).map_err(io_err(format!("open {}", base.display())))?;
    io::copy(&mut src, &mut file).map_err(io_err(format!("copy {}", base.display())))?;
    // The kernel looks for the next archive at a 4-byte boundary.
    let len = file
        .stream_position()
        .map_err(io_err("measure the initramfs"))?;
    let pad = (4 - len % 4) % 4;
    file.write_all(&[0u8; 3][..pad as usize])
        .map_err(io_err("pad the initramfs"))?;

    let mut entries: Vec<Entry> = Vec::new();
    let mut prefix = String::new();
    for part in GUEST_DIR.split('/') {
        prefix = if prefix.is_empty() {
            part.to_owned()
        } else {
            format!("{prefix}/{part}")
        };
        entries.push(dir_entry(&prefix));
    }
    let tools = tools
        .iter()
        .filter_map(|t| Some((t.clone(), t.file_name()?.to_string_lossy().into_owned())));
    for (path, name) in BINARIES
        .iter()
        .map(|bin| (bin_dir.join(bin), (*bin).to_owned()))
        .chain(tools)
    {
        let bytes = std::fs::read(&path).map_err(io_err(format!("read {}", path.display())))?;
        entries.push((
            cpio::NewcBuilder::new(&format!("{GUEST_DIR}/{name}"))
                .mode(0o100755)
                .nlink(1),
            io::Cursor::new(bytes),
        ));
    }
    if let Some(module) = kernel_module {
        let guest = crate::driver::KERNEL_MODULE.trim_start_matches('/');
        let dir = guest.rsplit_once('/').map_or("", |(dir, _)| dir);
        // usr/local/lib is in every Debian root filesystem.
        entries.push(dir_entry(dir));
        let bytes = std::fs::read(module).map_err(io_err(format!("read {}", module.display())))?;
        entries.push((
            cpio::NewcBuilder::new(guest).mode(0o100644).nlink(1),
            io::Cursor::new(bytes),
        ));
    }
    if let Some(modules) = modules {
        // No entries for /lib and /lib/modules themselves: on a merged-/usr
        // root /lib is a symlink, and the kernel's unpacker replaces an
        // entry of another type (the symlink by an empty directory, which
        // would take the C library's loader with it). Both exist in every
        // Debian root filesystem.
        module_trees(modules, &mut entries)?;
    }
    let ino_base = 0x7000_0000u32;
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(i, (b, data))| (b.ino(ino_base.wrapping_add(i as u32)), data));
    cpio::write_cpio(entries, &mut file).map_err(io_err("write the guest binaries' archive"))?;
    file.sync_all().map_err(io_err("write the initramfs"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names and modes in a cpio archive.
    fn archive_names(bytes: &[u8]) -> Vec<(String, u32)> {
        let mut reader = io::Cursor::new(bytes.to_vec());
        let mut names = Vec::new();
        loop {
            let entry = cpio::NewcReader::new(reader).unwrap();
            if entry.entry().is_trailer() {
                return names;
            }
            names.push((entry.entry().name().to_owned(), entry.entry().mode()));
            reader = entry.finish().unwrap();
        }
    }

    #[test]
    fn a_tree_with_an_index_gives_only_the_guests_modules_and_their_dependencies() {
        let dep = "kernel/drivers/net/tun.ko.xz:\n\
                   kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/pci/vfio-pci-core.ko.xz kernel/drivers/vfio/vfio.ko.xz\n\
                   kernel/drivers/vfio/pci/vfio-pci-core.ko.xz: kernel/drivers/vfio/vfio.ko.xz\n\
                   kernel/drivers/vfio/vfio.ko.xz:\n\
                   kernel/sound/snd.ko.xz: kernel/sound/soundcore.ko.xz\n\
                   kernel/sound/soundcore.ko.xz:\n";
        let files = module_closure(dep, &wanted_modules());
        assert_eq!(
            files,
            [
                "kernel/drivers/net/tun.ko.xz",
                "kernel/drivers/vfio/pci/vfio-pci.ko.xz",
                "kernel/drivers/vfio/pci/vfio-pci-core.ko.xz",
                "kernel/drivers/vfio/vfio.ko.xz",
            ]
        );

        let dir = std::env::temp_dir().join(format!("vni-module-trees-{}", std::process::id()));
        let release = dir.join("6.12.0-x");
        for file in dep.lines().filter_map(|l| l.split(':').next()) {
            let path = release.join(file.trim());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"ko").unwrap();
        }
        std::fs::write(release.join("modules.dep"), dep).unwrap();
        std::fs::write(release.join("modules.alias"), "").unwrap();
        let base = dir.join("base");
        std::fs::write(&base, b"1234").unwrap();
        for bin in BINARIES {
            std::fs::write(dir.join(bin), b"\x7fELF").unwrap();
        }
        let out = dir.join("initrd");
        overlay_initrd(&base, &dir, Some(&dir.join("modules")), None, &[], &out).unwrap_err();
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        std::fs::rename(&release, dir.join("modules/6.12.0-x")).unwrap();
        overlay_initrd(&base, &dir, Some(&dir.join("modules")), None, &[], &out).unwrap();
        let names: Vec<String> = archive_names(&std::fs::read(&out).unwrap()[4..])
            .into_iter()
            .map(|(name, _)| name)
            .filter(|n| n.starts_with("lib/"))
            .collect();
        let r = "lib/modules/6.12.0-x";
        let want: Vec<String> = [
            "",
            "/modules.alias",
            "/modules.dep",
            "/kernel",
            "/kernel/drivers",
            "/kernel/drivers/net",
            "/kernel/drivers/net/tun.ko.xz",
            "/kernel/drivers/vfio",
            "/kernel/drivers/vfio/pci",
            "/kernel/drivers/vfio/pci/vfio-pci.ko.xz",
            "/kernel/drivers/vfio/pci/vfio-pci-core.ko.xz",
            "/kernel/drivers/vfio/vfio.ko.xz",
        ]
        .iter()
        .map(|p| format!("{r}{p}"))
        .collect();
        assert_eq!(names, want, "no sound modules");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_overlay_is_a_padded_second_archive_holding_the_binaries() {
        let dir = std::env::temp_dir().join(format!("vni-guest-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base");
        std::fs::write(&base, b"12345").unwrap();
        for bin in BINARIES {
            std::fs::write(dir.join(bin), b"\x7fELF").unwrap();
        }
        let out = dir.join("initrd");
        let modules = dir.join("modules");
        std::fs::create_dir_all(modules.join("6.1.0-x/kernel")).unwrap();
        std::fs::write(modules.join("6.1.0-x/kernel/a.ko"), b"ko").unwrap();
        std::os::unix::fs::symlink("/src/linux", modules.join("6.1.0-x/build")).unwrap();
        let perf = dir.join("tools/perf");
        std::fs::create_dir_all(dir.join("tools")).unwrap();
        std::fs::write(&perf, b"\x7fELF").unwrap();
        overlay_initrd(&base, &dir, Some(&modules), None, &[perf], &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..5], b"12345");
        assert_eq!(&bytes[5..8], &[0, 0, 0]);
        let mut reader = io::Cursor::new(bytes[8..].to_vec());
        let mut names = Vec::new();
        loop {
            let entry = cpio::NewcReader::new(reader).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            names.push((entry.entry().name().to_owned(), entry.entry().mode()));
            reader = entry.finish().unwrap();
        }
        let mut want = vec![
            ("usr".to_owned(), 0o40755),
            ("usr/local".to_owned(), 0o40755),
            ("usr/local/bin".to_owned(), 0o40755),
        ];
        want.extend(
            BINARIES
                .iter()
                .map(|b| (format!("usr/local/bin/{b}"), 0o100755)),
        );
        want.extend([
            ("usr/local/bin/perf".to_owned(), 0o100755),
            ("lib/modules/6.1.0-x".to_owned(), 0o40755),
            ("lib/modules/6.1.0-x/build".to_owned(), 0o120777),
            ("lib/modules/6.1.0-x/kernel".to_owned(), 0o40755),
            ("lib/modules/6.1.0-x/kernel/a.ko".to_owned(), 0o100644),
        ]);
        assert_eq!(names, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
