//! The VNI kernel module (`vni.ko`), built against the exact kernel a lab
//! boots, and cached.
//!
//! A Rust module must be built by the rustc that built the kernel, against
//! the kernel's prepared source tree (Debian's headers have no `rust/`).
//! So the first kernel-driver lab builds a *kernel tree*: a Debian 13 build
//! root with its own toolchain, the kernel package's source, configuration
//! and `Module.symvers`, after `make modules_prepare` (the recipe is
//! `images/kernel-tree`; about 4 GB and 3 to 10 minutes, once per kernel
//! package). Then each change of the module's source (`guest-driver/kernel`
//! and the protocol core it includes, `guest-driver/core/src`) builds the
//! module in it, in seconds. Both land under the image cache:
//!
//! - `<cache>/kernel-trees/<release>-<hash>/root`, the hash over the
//!   recipe and the kernel package's name and version;
//! - `<cache>/kernel-modules/<release>-<hash>/vni.ko`, the hash over the
//!   tree's and every source file's path and contents.
//!
//! A kernel of one's own with Rust support needs no build root: its
//! built tree (`--kernel-tree`) is where the module is built, on the
//! host, by the rustc that built the kernel ([`OwnTree`],
//! [`ensure_own_module`]); the module lands in the same cache.
//!
//! Builds run in directories of their own (`.build-<hash>-<pid>`) and are
//! published by rename: an interrupted build leaves nothing that is used,
//! and the next build removes it. The build root's `/proc` is mounted in
//! a private mount namespace (`unshare --mount`), so no mount outlives a
//! build, whatever stops it.

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::image::{self, Manifest, Scratch};
use crate::io_failure::{io_err, IoFailure};
use crate::kconfig;
use crate::logs::last_lines;

/// The build root's recipe.
const KERNEL_TREE: &str = include_str!("../../images/kernel-tree");
/// Where the module's source is, relative to the checkout.
pub const MODULE_DIR: &str = "guest-driver/kernel";
/// The protocol core it includes by path.
pub const CORE_DIR: &str = "guest-driver/core/src";

/// Errors of the module build.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// Building the tree needs root.
    #[error(
        "Building the VNI kernel module's build root needs root (debootstrap, chroot): run `vni-lab up` once as root; labs then use the cached module"
    )]
    NeedsRoot,
    /// The module's source is not there.
    #[error("The VNI kernel module's source ({MODULE_DIR}) was not found: run vni-lab from its source checkout, or install it with `vni-lab install`")]
    NoSource,
    /// The image has no kernel version (built by an older vni-lab).
    #[error("The guest image of {0} does not say its kernel's version: rebuild it with `vni-lab image build --suite trixie-backports --force`")]
    NoVersion(String),
    /// The tree of one's own was built by another rustc than the one here.
    #[error(
        "{}: the kernel was built with `{built_with}`, and `{rustc} --version` here says `{here}`; a Rust module must be built by the rustc that built the kernel (put that one first on PATH, or name it in RUSTC)",
        .tree.display()
    )]
    Rustc {
        /// The tree.
        tree: PathBuf,
        /// Its `CONFIG_RUSTC_VERSION_TEXT`.
        built_with: String,
        /// The rustc that would build the module.
        rustc: String,
        /// What it says it is (or why it could not say).
        here: String,
    },
    /// The tree of one's own is configured for Rust but not built.
    #[error("{}: {what} is missing: build the kernel first (make), then give its tree", .tree.display())]
    NotBuilt {
        /// The tree.
        tree: PathBuf,
        /// The missing file.
        what: &'static str,
    },
    /// A build step failed.
    #[error("{step} failed: {status}\n{tail}")]
    Step {
        /// What was being done.
        step: String,
        /// Its exit status.
        status: String,
        /// The end of its output.
        tail: String,
    },
    /// The build root has no clippy (a tree of an older recipe).
    #[error("The kernel tree's build root {} has no clippy-driver; a tree of the current recipe has (remove the old one from the cache)", .0.display())]
    NoClippy(PathBuf),
    /// A file operation failed.
    #[error("Kernel module build")]
    Io(#[from] IoFailure),
}

/// The cache key of `parts`: each followed by a NUL, hashed as the
/// images' keys are.
fn hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    image::fnv1a(
        parts
            .into_iter()
            .flat_map(|part| part.iter().copied().chain(std::iter::once(0))),
    )
}

/// A module's cache key: what it is built against (`tree`), then every
/// source file's path and contents.
fn module_key<'a>(
    tree: impl IntoIterator<Item = &'a [u8]>,
    files: &'a [(PathBuf, Vec<u8>)],
) -> String {
    hash(
        tree.into_iter().chain(
            files
                .iter()
                .flat_map(|(p, b)| [p.as_os_str().as_encoded_bytes(), b.as_slice()]),
        ),
    )
}

/// A prepared kernel tree in its build root.
#[derive(Clone, Debug)]
pub struct KernelTree {
    /// The build root (`usr/src/linux` in it is the tree).
    pub root: PathBuf,
    /// Its cache key.
    pub key: String,
    /// The kernel release it builds for.
    pub release: String,
}

impl KernelTree {
    /// perf, built statically from the tree's source by the recipe, for
    /// the guests (`/usr/local/bin/perf` in kernel-driver labs).
    pub fn perf(&self) -> PathBuf {
        self.root.join("usr/src/perf/perf")
    }
}

/// The tree for the image's kernel, building it first when missing.
pub fn ensure_tree(
    manifest: &Manifest,
    cache: &Path,
    step: &mut dyn FnMut(&str),
) -> Result<KernelTree, KmodError> {
    if manifest.kernel_version.is_empty() {
        return Err(KmodError::NoVersion(manifest.suite.clone()));
    }
    let key = hash([
        KERNEL_TREE.as_bytes(),
        manifest.kernel_package.as_bytes(),
        manifest.kernel_version.as_bytes(),
    ]);
    let trees = cache.join("kernel-trees");
    let dir = trees.join(format!("{}-{key}", manifest.kernel_release));
    let tree = KernelTree {
        root: dir.join("root"),
        key: key.clone(),
        release: manifest.kernel_release.clone(),
    };
    if tree.root.join("usr/src/linux/.vni-localversion").is_file() {
        return Ok(tree);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(KmodError::NeedsRoot);
    }
    std::fs::create_dir_all(&trees).map_err(io_err(format!("create {}", trees.display())))?;
    image::remove_stale_builds(&trees);
    let build = trees.join(format!(".build-{key}-{}", std::process::id()));
    image::remove_build_dir(&build);
    std::fs::create_dir_all(&build).map_err(io_err(format!("create {}", build.display())))?;
    let scratch = Scratch(build.clone());
    let script = build.join("kernel-tree");
    std::fs::write(&script, KERNEL_TREE).map_err(io_err("write the build root recipe"))?;
    let mirror = image::apt_mirror().map_err(|e| KmodError::Step {
        step: "finding the Debian mirror".into(),
        status: "none".into(),
        tail: e.to_string(),
    })?;
    step(&format!(
        "building the kernel tree for {} (once per kernel package)",
        manifest.kernel_release
    ));
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "bash"])
        .arg(&script)
        .arg(build.join("root"))
        .args([
            &mirror,
            &manifest.kernel_version,
            &manifest.kernel_release,
            &flavour(&manifest.kernel_release),
        ]);
    run_with_steps("building the kernel tree", &mut command, step)?;
    // The build's log stays beside the tree, for whoever wonders.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&build, &dir).map_err(io_err(format!("publish {}", dir.display())))?;
    drop(scratch);
    // Trees of other kernels or recipes are not used again (4 GB each).
    if let Ok(entries) = std::fs::read_dir(&trees) {
        for entry in entries.filter_map(Result::ok) {
            if entry.path() != dir && !entry.file_name().to_string_lossy().starts_with('.') {
                image::remove_build_dir(&entry.path());
            }
        }
    }
    Ok(tree)
}

/// The flavour at the end of a Debian kernel release (`cloud-amd64` of
/// `7.3.4+deb13-cloud-amd64`).
fn flavour(release: &str) -> String {
    let parts: Vec<&str> = release.split('-').skip(1).collect();
    let abi = parts
        .iter()
        .take_while(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .count();
    parts[abi..].join("-")
}

/// Runs `command`, passing its `step: ` lines to `step`; on failure the
/// end of its output is the error.
fn run_with_steps(
    what: &str,
    command: &mut Command,
    step: &mut dyn FnMut(&str),
) -> Result<(), KmodError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("run {command:?}")))?;
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let mut output = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in io::BufReader::new(out).lines().map_while(Result::ok) {
            match line.strip_prefix("step: ") {
                Some(s) => step(s),
                None => output.push(line),
            }
        }
    }
    let status = child.wait().map_err(io_err(format!("wait for {what}")))?;
    let errors = errors.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    output.push(errors);
    Err(KmodError::Step {
        step: what.to_owned(),
        status: status.to_string(),
        tail: last_lines(&output.join("\n"), 25),
    })
}

/// The module's source files, as (path relative to the checkout, bytes),
/// in a stable order.
fn sources(checkout: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, KmodError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = dir.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push((path.clone(), std::fs::read(root.join(&path))?));
            }
        }
        Ok(())
    }
    if !checkout.join(MODULE_DIR).join("Kbuild").is_file() {
        return Err(KmodError::NoSource);
    }
    let mut out = Vec::new();
    for dir in [MODULE_DIR, CORE_DIR] {
        walk(checkout, Path::new(dir), &mut out).map_err(io_err(format!("read {dir}")))?;
    }
    Ok(out)
}

/// The module for `tree`, built from the checkout's source unless the
/// same source was built for the same tree before.
pub fn ensure_module(
    tree: &KernelTree,
    checkout: &Path,
    cache: &Path,
    step: &mut dyn FnMut(&str),
) -> Result<PathBuf, KmodError> {
    let files = sources(checkout)?;
    let key = module_key([tree.key.as_bytes()], &files);
    let modules = cache.join("kernel-modules");
    let dir = modules.join(format!("{}-{key}", tree.release));
    let ko = dir.join("vni.ko");
    if ko.is_file() {
        return Ok(ko);
    }
    step("building the VNI kernel module (a few seconds)");
    let (build, scratch) = build_dir(tree, &key, &files)?;
    let mut command = build_command(tree, &build, "");
    run_with_steps("building the VNI kernel module", &mut command, step)?;
    publish(
        &scratch.0.join(MODULE_DIR).join("vni.ko"),
        &modules,
        &tree.release,
        &key,
    )?;
    drop(scratch);
    Ok(ko)
}

/// A directory of its own inside the build root holding `files` (its
/// path inside the root), removed when the guard is dropped.
fn build_dir(
    tree: &KernelTree,
    key: &str,
    files: &[(PathBuf, Vec<u8>)],
) -> Result<(PathBuf, Scratch), KmodError> {
    let inside = PathBuf::from(format!("/build/{key}-{}", std::process::id()));
    let build = tree.root.join(inside.strip_prefix("/").unwrap_or(&inside));
    let _ = std::fs::remove_dir_all(&build);
    let scratch = Scratch(build.clone());
    write_sources(files, &build)?;
    Ok((inside, scratch))
}

/// The kernel's module build of the sources in `build` (a path inside the
/// build root), in the root, with `make_args` added: `vni.ko`, stripped of
/// debug information. The root's `/proc` is mounted in a private mount
/// namespace, so no mount outlives the build.
fn build_command(tree: &KernelTree, build: &Path, make_args: &str) -> Command {
    let module_dir = build.join(MODULE_DIR);
    let script = format!(
        "mount -t proc proc {root}/proc && exec chroot {root} env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
         sh -c 'cd /usr/src/linux && make -s -j$(nproc) CC=x86_64-linux-gnu-gcc-14 LOCALVERSION=$(cat .vni-localversion) {make_args} M={m} modules \
         && x86_64-linux-gnu-strip --strip-debug {m}/vni.ko'",
        root = tree.root.display(),
        m = module_dir.display(),
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    command
}

/// The kernel's own lints over the module's Rust: the module built from
/// the checkout's source in `tree` with `CLIPPY=1` (the kernel's clippy
/// settings, the root's `clippy-driver` of the same toolchain). Returns
/// clippy's warnings, one diagnostic's first line each (none when clean);
/// an error when the build fails, or when the root has no clippy (a tree
/// of an older recipe: [`KmodError::NoClippy`]).
pub fn clippy(tree: &KernelTree, checkout: &Path) -> Result<Vec<String>, KmodError> {
    if !tree.root.join("usr/bin/clippy-driver").exists() {
        return Err(KmodError::NoClippy(tree.root.clone()));
    }
    let files = sources(checkout)?;
    let key = module_key([tree.key.as_bytes(), b"clippy"], &files);
    let (build, _scratch) = build_dir(tree, &key, &files)?;
    let output = build_command(tree, &build, "CLIPPY=1")
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("run the module's clippy build"))?;
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(KmodError::Step {
            step: "the module's clippy build".into(),
            status: output.status.to_string(),
            tail: last_lines(&text, 40),
        });
    }
    Ok(text
        .lines()
        .filter(|l| l.starts_with("warning: ") && !l.ends_with(" emitted"))
        .map(str::to_owned)
        .collect())
}

/// Writes the module's source files under `dir`, at their paths.
fn write_sources(files: &[(PathBuf, Vec<u8>)], dir: &Path) -> Result<(), KmodError> {
    for (path, bytes) in files {
        let to = dir.join(path);
        std::fs::create_dir_all(to.parent().unwrap_or(dir))
            .map_err(io_err(format!("create {}", dir.display())))?;
        std::fs::write(&to, bytes).map_err(io_err(format!("write {}", to.display())))?;
    }
    Ok(())
}

/// Moves a built `vni.ko` to `<modules>/<release>-<key>/`, by rename, and
/// removes the modules of older sources for the same release (a running
/// build's staging stays).
fn publish(built: &Path, modules: &Path, release: &str, key: &str) -> Result<(), KmodError> {
    std::fs::create_dir_all(modules).map_err(io_err(format!("create {}", modules.display())))?;
    let dir = modules.join(format!("{release}-{key}"));
    let staged = modules.join(format!(".build-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir_all(&staged).map_err(io_err("create the module directory"))?;
    std::fs::copy(built, staged.join("vni.ko")).map_err(io_err("copy vni.ko"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staged, &dir).map_err(io_err(format!("publish {}", dir.display())))?;
    image::remove_stale_builds(modules);
    if let Ok(entries) = std::fs::read_dir(modules) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path() != dir && name.starts_with(&format!("{release}-")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

/// The name of LLVM's `tool` as kbuild's `LLVM=` makes it: a version
/// suffix (`-19`), a directory prefix (`/opt/llvm/bin/`), or neither
/// (`1`).
fn llvm_tool(tool: &str, llvm: &str) -> String {
    if llvm.starts_with('-') {
        format!("{tool}{llvm}")
    } else if llvm.ends_with('/') {
        format!("{llvm}{tool}")
    } else {
        tool.to_owned()
    }
}

/// A built kernel tree of one's own with Rust support (`--kernel-tree`,
/// or the tree a kernel's modules link to), checked for what building
/// the module against it takes.
#[derive(Debug)]
pub struct OwnTree {
    /// The tree (canonical).
    pub dir: PathBuf,
    /// Its kernel release (`include/config/kernel.release`).
    pub release: String,
    config: String,
    symbols: Vec<u8>,
    /// The rustc that builds the module, and what it says it is.
    rustc: String,
    rustc_version: String,
}

impl OwnTree {
    /// Checks that `dir` is built (its `Module.symvers`, release and Rust
    /// crates are there) and that the rustc here (`RUSTC`, or `rustc` on
    /// PATH) is the one that built it (`CONFIG_RUSTC_VERSION_TEXT`).
    pub fn open(dir: &Path) -> Result<OwnTree, KmodError> {
        let dir = std::fs::canonicalize(dir).map_err(io_err(format!("find {}", dir.display())))?;
        let read = |name: &'static str| {
            std::fs::read(dir.join(name)).map_err(|_| KmodError::NotBuilt {
                tree: dir.clone(),
                what: name,
            })
        };
        let config = String::from_utf8_lossy(&read(".config")?).into_owned();
        let symbols = read("Module.symvers")?;
        let release = String::from_utf8_lossy(&read("include/config/kernel.release")?)
            .trim()
            .to_owned();
        read("rust/libkernel.rmeta")?;
        let built_with = kconfig::value(&config, "CONFIG_RUSTC_VERSION_TEXT").unwrap_or_default();
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
        let here = match Command::new(&rustc).arg("--version").output() {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            Ok(out) => format!("nothing ({})", out.status),
            Err(e) => format!("nothing ({e})"),
        };
        if here != built_with {
            return Err(KmodError::Rustc {
                tree: dir,
                built_with: built_with.to_owned(),
                rustc,
                here,
            });
        }
        Ok(OwnTree {
            dir,
            release,
            config,
            symbols,
            rustc,
            rustc_version: here,
        })
    }
}

/// The module for a tree of one's own, built on this host with the
/// tree's own build system, as any external module is: `make -C TREE
/// M=DIR modules`, by the rustc [`OwnTree::open`] checked, with `LLVM=1`
/// for a tree built by clang. Cached until the source, the tree's
/// configuration, symbols or kernel, or the rustc change.
pub fn ensure_own_module(
    tree: &OwnTree,
    checkout: &Path,
    cache: &Path,
    step: &mut dyn FnMut(&str),
) -> Result<PathBuf, KmodError> {
    let OwnTree {
        dir: tree_dir,
        release,
        config,
        symbols,
        rustc,
        rustc_version: here,
    } = tree;
    // The kernel image's size and time stand for the build: a rebuilt
    // kernel builds the module again, without hashing hundreds of MB.
    let kernel = std::fs::metadata(tree_dir.join("vmlinux"))
        .map(|m| format!("{} {:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    let files = sources(checkout)?;
    let key = module_key(
        [
            b"own tree".as_slice(),
            tree_dir.as_os_str().as_encoded_bytes(),
            config.as_bytes(),
            symbols,
            release.as_bytes(),
            kernel.as_bytes(),
            here.as_bytes(),
        ],
        &files,
    );
    let modules = cache.join("kernel-modules");
    let ko = modules.join(format!("{release}-{key}")).join("vni.ko");
    if ko.is_file() {
        return Ok(ko);
    }
    step(&format!(
        "building the VNI kernel module against {}",
        tree_dir.display()
    ));
    std::fs::create_dir_all(&modules).map_err(io_err(format!("create {}", modules.display())))?;
    let build = modules.join(format!(".build-src-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    let scratch = Scratch(build.clone());
    write_sources(&files, &build)?;
    let module_dir = build.join(MODULE_DIR);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A clang-built tree needs LLVM again: the job's own (`LLVM=1`,
    // `LLVM=-19`, `LLVM=/opt/llvm/bin/`, which make takes from the
    // environment), else `LLVM=1`.
    let llvm = (kconfig::value(config, "CONFIG_CC_IS_CLANG") == Some("y")).then(|| {
        std::env::var("LLVM")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "1".to_owned())
    });
    let mut command = Command::new("make");
    command
        .arg("-s")
        .arg(format!("-j{jobs}"))
        .arg("-C")
        .arg(tree_dir)
        .arg(format!("M={}", module_dir.display()))
        .arg(format!("RUSTC={rustc}"));
    if let Some(llvm) = &llvm {
        command.arg(format!("LLVM={llvm}"));
    }
    command.arg("modules");
    run_with_steps("building the VNI kernel module", &mut command, step)?;
    let ko_built = module_dir.join("vni.ko");
    let strip = match &llvm {
        Some(llvm) => llvm_tool("llvm-strip", llvm),
        None => "strip".to_owned(),
    };
    let mut command = Command::new(strip);
    command.arg("--strip-debug").arg(&ko_built);
    run_with_steps("stripping vni.ko", &mut command, step)?;
    publish(&ko_built, &modules, release, &key)?;
    drop(scratch);
    Ok(ko)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_tools_are_named_as_kbuild_names_them() {
        assert_eq!(llvm_tool("llvm-strip", "1"), "llvm-strip");
        assert_eq!(llvm_tool("llvm-strip", "-19"), "llvm-strip-19");
        assert_eq!(
            llvm_tool("llvm-strip", "/opt/llvm/bin/"),
            "/opt/llvm/bin/llvm-strip"
        );
    }

    #[test]
    fn the_flavour_is_the_end_of_the_release() {
        assert_eq!(flavour("7.3.4+deb13-cloud-amd64"), "cloud-amd64");
        assert_eq!(flavour("6.1.0-56-amd64"), "amd64");
    }

    #[test]
    fn the_module_key_follows_every_source_file() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let files = sources(root).expect("the checkout has the module's source");
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        for needed in [
            "guest-driver/kernel/Kbuild",
            "guest-driver/kernel/vni_main.rs",
            "guest-driver/kernel/vni_glue.c",
            "guest-driver/core/src/lib.rs",
            "guest-driver/core/src/endpoint/mod.rs",
        ] {
            assert!(names.iter().any(|n| n == needed), "{needed} in {names:?}");
        }
        assert_eq!(hash([b"a".as_slice(), b"b"]), hash([b"a".as_slice(), b"b"]));
        assert_ne!(hash([b"ab".as_slice()]), hash([b"a".as_slice(), b"b"]));
    }
}
