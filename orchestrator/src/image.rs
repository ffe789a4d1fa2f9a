//! The guest image: Debian's distribution kernel and a small root
//! filesystem, built from Debian packages only and cached by its inputs.
//!
//! The recipe is in `images/` (the guest's `/init`, its package list and the
//! kernel modules it needs). A build:
//!
//! 1. resolves the kernel package behind `linux-image-amd64` with apt and
//!    unpacks it (`apt-get download`, `dpkg-deb -x`);
//! 2. builds the root filesystem with `debootstrap --variant=minbase` from
//!    the mirror apt is configured with, plus the recipe's packages;
//! 3. copies in the listed modules with their dependencies
//!    (`modprobe --show-depends`) and runs `depmod`;
//! 4. drops documentation, manual pages, locales and apt's caches, adds
//!    `/init`, and packs everything as a gzip'd initramfs (the guest runs
//!    from RAM: no disk, and every node boots the same file).
//!
//! The result lands in `<cache>/images/<suite>-<hash>/` with a manifest;
//! the hash covers the recipe, the suite and the exact kernel package, so a
//! new kernel or a changed recipe builds a new image and an unchanged one
//! is reused, and a new build removes the older images of its suite. A
//! failed or interrupted build leaves nothing behind (an interrupted one
//! is removed by the next build).

use crate::io_failure::{io_err, IoFailure};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bumped when the image layout changes in ways the recipe does not show.
const FORMAT: u32 = 1;
const INIT: &str = include_str!("../../images/init");
const PACKAGES: &str = include_str!("../../images/packages");
const MODULES: &str = include_str!("../../images/modules");

/// Errors of the image build.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// debootstrap needs root.
    #[error(
        "Building the guest image needs root: debootstrap creates device nodes and runs a chroot. \
         Run `vni-lab image build` once as root; labs then use the cached image"
    )]
    NeedsRoot,
    /// A host tool is missing.
    #[error("Host tool `{tool}` is missing: install the Debian package {package} (or run `vni-lab doctor --install`)")]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// The package that provides it.
        package: &'static str,
    },
    /// apt has no Debian mirror configured.
    #[error("No Debian mirror found in apt's sources (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list)")]
    NoMirror,
    /// A suite we do not build.
    #[error("Guest suite {0:?} is not supported: use bookworm, trixie or trixie-backports")]
    Suite(String),
    /// A build step failed.
    #[error("Image build step \"{step}\" failed: `{command}` exited with {status}\n{tail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its output.
        tail: String,
    },
    /// A file operation failed.
    #[error("Image build")]
    Io(#[from] IoFailure),
}

/// What an image was built from, stored next to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Image layout version.
    pub format: u32,
    /// Debian suite.
    pub suite: String,
    /// The kernel package (e.g. linux-image-6.1.0-56-amd64).
    pub kernel_package: String,
    /// The kernel release the guests report (`uname -r`).
    pub kernel_release: String,
    /// The Debian version of the kernel package (its source package's
    /// version too: what the kernel module is built against).
    #[serde(default)]
    pub kernel_version: String,
    /// Hash of the recipe and the above.
    pub key: String,
    /// Bytes of the packed initramfs.
    pub initrd_bytes: u64,
    /// When it was built (Unix seconds).
    pub built_at: u64,
}

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Its directory.
    pub dir: PathBuf,
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs with the whole root filesystem.
    pub initrd: PathBuf,
    /// What it was built from.
    pub manifest: Manifest,
}

/// Where images are cached: `$VNI_LAB_CACHE`, else `$XDG_CACHE_HOME/vni-lab`,
/// else `~/.cache/vni-lab`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VNI_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("vni-lab");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("vni-lab")
}

/// The kernel modules a guest loads (`images/modules`), by name.
pub fn guest_modules() -> Vec<&'static str> {
    entries(MODULES)
}

/// Lines of a recipe list, without comments and blanks.
fn entries(list: &str) -> Vec<&str> {
    list.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The cache key of an image: recipe, suite and kernel package.
pub fn key(suite: &str, kernel_package: &str) -> String {
    let input = format!("{FORMAT}\0{suite}\0{kernel_package}\0{INIT}\0{PACKAGES}\0{MODULES}");
    fnv1a(input.bytes())
}

/// FNV-1a of `bytes` as 16 hex digits: the cache keys' hash.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> String {
    let hash = bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The first Debian mirror in apt's sources (deb822 or one-line format).
pub fn mirror_from_apt_sources(deb822: &[String], one_line: &str) -> Option<String> {
    for source in deb822 {
        // A stanza for the main archive: URIs plus a plain suite name.
        for stanza in source.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                continue;
            };
            let enabled = field("Enabled:").is_none_or(|v| v != "no");
            if enabled
                && suites.split_whitespace().any(|s| !s.contains('-'))
                && !uris.contains("security")
            {
                return uris.split_whitespace().next().map(str::to_owned);
            }
        }
    }
    one_line
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .find_map(|l| {
            let words: Vec<&str> = l
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            let (uri, suite) = (words.get(1)?, words.get(2)?);
            (!suite.contains('-') && !uri.contains("security")).then(|| (*uri).to_owned())
        })
}

pub(crate) fn apt_mirror() -> Result<String, ImageError> {
    let mut deb822 = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sources"))
        {
            deb822.push(std::fs::read_to_string(path).unwrap_or_default());
        }
    }
    let one_line = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    mirror_from_apt_sources(&deb822, &one_line).ok_or(ImageError::NoMirror)
}

/// Runs one build step; on failure the error carries the end of its output.
fn run(step: &'static str, cmd: &mut Command) -> Result<Output, ImageError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(io_err(format!("run {command}")))?;
    if out.status.success() {
        return Ok(out);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(ImageError::Step {
        step,
        command,
        status: out.status.to_string(),
        tail,
    })
}

/// Debian suites guests can run.
pub const SUITES: &[&str] = &["bookworm", "trixie", "trixie-backports"];

/// The suite whose root filesystem an image suite has: a backports suite
/// is its release's root with the backports' kernel.
pub fn root_suite(suite: &str) -> &str {
    suite.strip_suffix("-backports").unwrap_or(suite)
}

/// The kernel metapackage of an image suite: the distribution's generic
/// kernel, or for backports the cloud flavour (smaller, quicker to boot,
/// and what the kernel module is built against).
fn kernel_meta(suite: &str) -> &'static str {
    if suite.ends_with("-backports") {
        "linux-image-cloud-amd64"
    } else {
        "linux-image-amd64"
    }
}
/// Package lists of a suite the host's apt does not carry are refreshed
/// when older than this.
const LISTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// apt for one suite: the host's own for the host's suite, otherwise a
/// private apt (its own sources, lists and cache under the image cache)
/// pointed at the same mirror, so the host's apt configuration is never
/// touched.
struct Apt {
    /// `-o` options of the private apt; empty for the host's.
    options: Vec<String>,
}

impl Apt {
    fn for_suite(suite: &str, cache: &Path) -> Result<Self, ImageError> {
        if host_suite().as_deref() == Some(suite) {
            return Ok(Apt {
                options: Vec::new(),
            });
        }
        let root = cache.join("apt").join(suite);
        for dir in [
            "lists/partial",
            "cache/archives/partial",
            "etc/preferences.d",
        ] {
            std::fs::create_dir_all(root.join(dir))
                .map_err(io_err(format!("create {}", root.join(dir).display())))?;
        }
        let sources = root.join("etc/sources.list");
        let line = format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {suite} main\n",
            apt_mirror()?
        );
        std::fs::write(&sources, line).map_err(io_err("write the private apt sources"))?;
        let status = root.join("status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(io_err("create the private apt status"))?;
        }
        let path = |p: &str| root.join(p).display().to_string();
        let apt = Apt {
            options: vec![
                format!("Dir::Etc::SourceList={}", sources.display()),
                "Dir::Etc::SourceParts=/nonexistent".into(),
                format!("Dir::Etc::Preferences={}", path("etc/preferences")),
                format!("Dir::Etc::PreferencesParts={}", path("etc/preferences.d")),
                format!("Dir::State::Lists={}", path("lists")),
                format!("Dir::State::status={}", status.display()),
                format!("Dir::Cache={}", path("cache")),
                "Debug::NoLocking=1".into(),
            ],
        };
        let fresh = std::fs::metadata(root.join("lists"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        let has_lists = std::fs::read_dir(root.join("lists"))
            .map(|d| d.filter_map(Result::ok).any(|e| e.file_name() != "partial"))
            .unwrap_or(false);
        if !(fresh && has_lists) {
            run(
                "update the package lists",
                apt.command("apt-get").args(["update", "-q"]),
            )?;
        }
        Ok(apt)
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        for option in &self.options {
            cmd.args(["-o", option]);
        }
        cmd
    }
}

/// The host's Debian suite (`VERSION_CODENAME` of /etc/os-release).
fn host_suite() -> Option<String> {
    std::fs::read_to_string("/etc/os-release")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

/// The kernel package the suite's kernel metapackage depends on, per apt.
fn kernel_package(apt: &Apt, suite: &str) -> Result<String, ImageError> {
    let meta = kernel_meta(suite);
    let out = run(
        "resolve the kernel package",
        apt.command("apt-cache").args(["depends", meta]),
    )?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-"))
                .map(str::to_owned)
        })
        .ok_or_else(|| ImageError::Step {
            step: "resolve the kernel package",
            command: format!("apt-cache depends {meta}"),
            status: "no linux-image dependency".into(),
            tail: "run apt-get update".into(),
        })
}

/// The packages a kernel comes in: the image package and, from 7.x on,
/// the parts it depends on that carry its release in their name
/// (`linux-binary-R` with the kernel, `linux-modules-R`, `linux-base-R`).
fn kernel_parts(apt: &Apt, package: &str) -> Result<Vec<String>, ImageError> {
    let release = package.trim_start_matches("linux-image-");
    let out = run(
        "resolve the kernel package",
        apt.command("apt-cache").args(["depends", package]),
    )?;
    Ok(std::iter::once(package.to_owned())
        .chain(parts_from_depends(
            &String::from_utf8_lossy(&out.stdout),
            release,
        ))
        .collect())
}

/// The `linux-*-RELEASE` dependencies in `apt-cache depends` output.
fn parts_from_depends(depends: &str, release: &str) -> Vec<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-") && p.ends_with(&format!("-{release}")))
        .map(str::to_owned)
        .collect()
}

/// The candidate version of `package`, per apt.
fn package_version(apt: &Apt, package: &str) -> Result<String, ImageError> {
    let out = run(
        "resolve the kernel version",
        apt.command("apt-cache")
            .args(["show", "--no-all-versions", package]),
    )?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: ").map(|v| v.trim().to_owned()))
        .ok_or_else(|| ImageError::Step {
            step: "resolve the kernel version",
            command: format!("apt-cache show {package}"),
            status: "no Version field".into(),
            tail: "run apt-get update".into(),
        })
}

/// Removes a directory tree when dropped (a failed build's leftovers).
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_build_dir(&self.0);
    }
}

/// Mount points at or below `dir`, deepest first (from
/// /proc/self/mountinfo, whose fifth field is the mount point, with
/// spaces and the like escaped as octal).
fn mounts_under(dir: &Path, mountinfo: &str) -> Vec<PathBuf> {
    let unescape = |field: &str| {
        let mut out = Vec::new();
        let bytes = field.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\' && i + 3 < bytes.len() {
                if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        PathBuf::from(String::from_utf8_lossy(&out).into_owned())
    };
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts
}

/// Removes a build directory, first detaching anything debootstrap left
/// mounted in it (an interrupted build can leave /proc or /sys mounted in
/// the chroot; deleting through those mounts must never happen). A
/// directory with a mount that will not go is left alone.
pub(crate) fn remove_build_dir(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for mount in mounts_under(dir, &mountinfo) {
        let Ok(c_path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: `c_path` is a NUL-terminated path; umount2 reads it only.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
            return;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the build directories of builds whose process is gone (killed
/// by Ctrl-C, say): `.build-<key>-<pid>`.
pub(crate) fn remove_stale_builds(images: &Path) {
    let Ok(entries) = std::fs::read_dir(images) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".build-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_build_dir(&entry.path());
        }
    }
}

/// Returns the cached image for `suite`, building it first when it is
/// missing, its recipe or kernel changed, or `force` is set. `step` is told
/// what happens (for progress output).
pub fn ensure(
    suite: &str,
    cache: &Path,
    force: bool,
    step: &mut dyn FnMut(&str),
) -> Result<Image, ImageError> {
    if !SUITES.contains(&suite) {
        return Err(ImageError::Suite(suite.to_owned()));
    }
    remove_stale_builds(&cache.join("images"));
    step("resolving the kernel package");
    let apt = Apt::for_suite(suite, cache)?;
    let kernel_package = kernel_package(&apt, suite)?;
    let key = key(suite, &kernel_package);
    let dir = cache.join("images").join(format!("{suite}-{key}"));
    if !force {
        if let Some(image) = load(&dir) {
            step("using the cached image");
            return Ok(image);
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NeedsRoot);
    }
    if let Some(&(tool, package)) = crate::host::IMAGE_TOOLS
        .iter()
        .find(|(tool, _)| !crate::host::on_path(tool))
    {
        return Err(ImageError::MissingTool { tool, package });
    }
    let mirror = apt_mirror()?;
    let build = cache
        .join("images")
        .join(format!(".build-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    let scratch = Scratch(build.clone());
    let (kdir, rootfs) = (build.join("kernel"), build.join("rootfs"));
    std::fs::create_dir_all(&kdir).map_err(io_err(format!("create {}", kdir.display())))?;

    let kernel_version = package_version(&apt, &kernel_package)?;
    let parts = kernel_parts(&apt, &kernel_package)?;
    step(&format!("downloading {}", parts.join(", ")));
    run(
        "download the kernel",
        apt.command("apt-get")
            .args(["download", "-q"])
            .args(&parts)
            .current_dir(&build),
    )?;
    let debs: Vec<PathBuf> = std::fs::read_dir(&build)
        .map_err(io_err("list the download"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    if debs.is_empty() {
        return Err(ImageError::Io(IoFailure::new(
            "find the kernel package".into(),
            io::ErrorKind::NotFound.into(),
        )));
    }
    for deb in &debs {
        run(
            "unpack the kernel",
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&kdir),
        )?;
    }
    // bookworm's kernel packages ship /lib/modules, trixie's (merged /usr)
    // /usr/lib/modules.
    let kmods = if kdir.join("lib/modules").is_dir() {
        kdir.clone()
    } else {
        kdir.join("usr")
    };
    let release = std::fs::read_dir(kmods.join("lib/modules"))
        .map_err(io_err("read the kernel's modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| {
            ImageError::Io(IoFailure::new(
                "find the kernel release".into(),
                io::ErrorKind::NotFound.into(),
            ))
        })?;

    step(&format!(
        "building the root filesystem (debootstrap {}, about 30 s)",
        root_suite(suite)
    ));
    let include = entries(PACKAGES).join(",");
    run(
        "debootstrap",
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={include}"),
                root_suite(suite),
            ])
            .arg(&rootfs)
            .arg(&mirror),
    )?;

    step("adding kernel modules");
    run(
        "depmod the kernel",
        Command::new("depmod").arg("-b").arg(&kmods).arg(&release),
    )?;
    let mut files = Vec::new();
    for module in entries(MODULES) {
        let out = run(
            "resolve module dependencies",
            Command::new("modprobe").arg("-d").arg(&kmods).args([
                "-S",
                &release,
                "--show-depends",
                module,
            ]),
        )?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line
                .strip_prefix("insmod ")
                .and_then(|l| l.split_whitespace().next())
            {
                files.push(PathBuf::from(path));
            }
        }
    }
    for file in files {
        let relative = file.strip_prefix(&kmods).map_err(|_| {
            ImageError::Io(IoFailure::new(
                format!("place module {}", file.display()),
                io::ErrorKind::InvalidData.into(),
            ))
        })?;
        let target = rootfs.join(relative);
        std::fs::create_dir_all(target.parent().unwrap_or(&rootfs))
            .map_err(io_err("create module directories"))?;
        std::fs::copy(&file, &target).map_err(io_err(format!("copy {}", file.display())))?;
    }
    for extra in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let from = kmods.join("lib/modules").join(&release).join(extra);
        if from.exists() {
            std::fs::copy(&from, rootfs.join("lib/modules").join(&release).join(extra))
                .map_err(io_err(format!("copy {extra}")))?;
        }
    }
    run(
        "depmod the guest",
        Command::new("depmod").arg("-b").arg(&rootfs).arg(&release),
    )?;

    step("trimming and packing the initramfs");
    for waste in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "var/cache/apt",
        "var/lib/apt/lists",
    ] {
        let _ = std::fs::remove_dir_all(rootfs.join(waste));
    }
    let init = rootfs.join("init");
    std::fs::write(&init, INIT).map_err(io_err("write /init"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("make /init executable"))?;
    let initrd = build.join("initrd.gz");
    run(
        "pack the initramfs",
        Command::new("bash")
            .args([
                "-o",
                "pipefail",
                "-c",
                "cd \"$1\" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > \"$2\"",
                "pack",
            ])
            .arg(&rootfs)
            .arg(&initrd),
    )?;
    // Up to 6.12 Debian ships the kernel as /boot/vmlinuz-RELEASE, from
    // 7.x as /usr/lib/modules/RELEASE/vmlinuz.
    let kernel_file = [
        kdir.join("boot").join(format!("vmlinuz-{release}")),
        kmods.join("lib/modules").join(&release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|f| f.is_file())
    .ok_or_else(|| {
        ImageError::Io(IoFailure::new(
            format!("find the kernel image of {kernel_package}"),
            io::ErrorKind::NotFound.into(),
        ))
    })?;

    // Move the results into a fresh directory and publish it by rename.
    let staged = build.join("image");
    std::fs::create_dir_all(&staged).map_err(io_err("create the image directory"))?;
    std::fs::rename(&initrd, staged.join("initrd.gz")).map_err(io_err("move the initramfs"))?;
    std::fs::copy(&kernel_file, staged.join("vmlinuz")).map_err(io_err("copy the kernel"))?;
    let manifest = Manifest {
        format: FORMAT,
        suite: suite.to_owned(),
        kernel_package,
        kernel_release: release,
        kernel_version,
        key,
        initrd_bytes: std::fs::metadata(staged.join("initrd.gz"))
            .map_err(io_err("stat the initramfs"))?
            .len(),
        built_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| ImageError::Io(IoFailure::new("write the manifest".into(), e.into())))?;
    std::fs::write(staged.join("manifest.json"), json).map_err(io_err("write the manifest"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staged, &dir).map_err(io_err(format!("publish {}", dir.display())))?;
    drop(scratch);
    // Older images of this suite (another kernel or recipe) are not used
    // again: labs run from their own copies of kernel and initramfs.
    if let Ok(entries) = std::fs::read_dir(cache.join("images")) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let older = name
                .strip_prefix(&format!("{suite}-"))
                .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()));
            if older && entry.path() != dir {
                remove_build_dir(&entry.path());
            }
        }
    }
    step("image ready");
    load(&dir).ok_or_else(|| {
        ImageError::Io(IoFailure::new(
            "read back the image".into(),
            io::ErrorKind::NotFound.into(),
        ))
    })
}

/// The image in `dir`, if complete.
fn load(dir: &Path) -> Option<Image> {
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).ok()?).ok()?;
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    (manifest.format == FORMAT && kernel.is_file() && initrd.is_file()).then(|| Image {
        dir: dir.to_owned(),
        kernel,
        initrd,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_kernel_comes_in_its_release_parts() {
        let depends = "linux-image-7.3.4+deb13-cloud-amd64\n  PreDepends: linux-base\n |Depends: <dracut>\n  Depends: linux-base-7.3.4+deb13-cloud-amd64\n  Depends: linux-binary-7.3.4+deb13-cloud-amd64\n  Depends: linux-modules-7.3.4+deb13-cloud-amd64\n  Breaks: <fwupdate>\n";
        assert_eq!(
            parts_from_depends(depends, "7.3.4+deb13-cloud-amd64"),
            [
                "linux-base-7.3.4+deb13-cloud-amd64",
                "linux-binary-7.3.4+deb13-cloud-amd64",
                "linux-modules-7.3.4+deb13-cloud-amd64"
            ]
        );
        // 6.1's package is the whole kernel; linux-base is not a part.
        assert!(
            parts_from_depends("  Depends: linux-base\n  Depends: kmod\n", "6.1.0-56-amd64")
                .is_empty()
        );
    }

    #[test]
    fn the_mirror_comes_from_apt_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let other = "Types: deb\nURIs: https://elsewhere.example/x\nSuites: bookworm-extras\nComponents: main\n";
        assert_eq!(
            mirror_from_apt_sources(&[other.into(), deb822.into()], ""),
            Some("http://mirror.example/debian".into())
        );
        let one_line = "# comment\ndeb [arch=amd64] http://m.example/debian bookworm main\ndeb http://m.example/debian-security bookworm-security main\n";
        assert_eq!(
            mirror_from_apt_sources(&[], one_line),
            Some("http://m.example/debian".into())
        );
        assert_eq!(mirror_from_apt_sources(&[], ""), None);
        let disabled = "Enabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n";
        assert_eq!(mirror_from_apt_sources(&[disabled.into()], ""), None);
    }

    #[test]
    fn mounts_below_a_build_are_found_deepest_first() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 1 0:5 / /c/.build-k-1/rootfs/proc rw - proc proc rw\n\
                    91 90 0:6 / /c/.build-k-1/rootfs/proc/sys/fs/binfmt_misc rw - binfmt_misc b rw\n\
                    92 1 0:7 / /c/.build-k-1/root\\040fs rw - tmpfs t rw\n";
        assert_eq!(
            mounts_under(Path::new("/c/.build-k-1"), info),
            vec![
                PathBuf::from("/c/.build-k-1/rootfs/proc/sys/fs/binfmt_misc"),
                PathBuf::from("/c/.build-k-1/rootfs/proc"),
                PathBuf::from("/c/.build-k-1/root fs"),
            ]
        );
        assert!(mounts_under(Path::new("/elsewhere"), info).is_empty());
    }

    #[test]
    fn the_key_follows_the_inputs() {
        assert_eq!(
            key("bookworm", "linux-image-6.1.0-56-amd64"),
            key("bookworm", "linux-image-6.1.0-56-amd64")
        );
        assert_ne!(
            key("bookworm", "linux-image-6.1.0-56-amd64"),
            key("bookworm", "linux-image-6.1.0-57-amd64")
        );
        assert_eq!(key("bookworm", "k").len(), 16);
    }

    #[test]
    fn the_recipe_is_complete() {
        let packages = entries(PACKAGES);
        assert!(packages.contains(&"qemu-guest-agent") && packages.contains(&"iperf3"));
        assert!(entries(MODULES).contains(&"vfio_pci"));
        assert!(INIT.starts_with("#!/bin/bash") && INIT.contains("qemu-ga"));
    }

    #[test]
    fn unknown_suites_are_refused_before_any_work() {
        let err = ensure("sid", Path::new("/nonexistent"), false, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::Suite(_)), "{err}");
    }
}
