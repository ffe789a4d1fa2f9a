//! A kernel of one's own, as kernel CI brings it: the command line's
//! `--kernel`, `--modules`, `--initrd`, `--append` and `--kernel-tree`,
//! what they change in a lab file, and the check, before anything boots,
//! that the kernel has what the lab needs (from its `.config` where one
//! can be found, else from its modules directory).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kconfig::{self, ModuleList, Requirement};
use crate::topology::{Driver, Kernel, Topology};

/// The guest kernel given on the command line (`up`, `test`, `bench`),
/// overriding the lab file's `guest:` settings.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFlags {
    /// Boot this kernel image (a bzImage) instead of the lab file's
    /// guest.kernel.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// The kernel's modules: the folder `make modules_install
    /// INSTALL_MOD_PATH=DIR` fills (DIR, DIR/lib/modules or
    /// DIR/lib/modules/RELEASE all serve).
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
    /// The guests' root filesystem, an initramfs, instead of the built one
    /// (guest.image).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel arguments for every node, instead of the lab file's
    /// guest.append.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// A built kernel tree: boots its arch/x86/boot/bzImage with its
    /// modules (installed into the cache) after checking its .config; for
    /// the kernel driver, builds vni.ko against it (CONFIG_RUST, and the
    /// rustc that built it on PATH or in RUSTC).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "modules"])]
    pub kernel_tree: Option<PathBuf>,
}

/// Why a kernel of one's own cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OwnKernelError {
    #[error("--kernel-tree {}: no arch/x86/boot/bzImage (build the kernel first: make bzImage modules)", .0.display())]
    NotBuilt(PathBuf),
    #[error("{flag} {}: {source}", path.display())]
    Path {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install the modules of {}: {why}", tree.display())]
    ModulesInstall { tree: PathBuf, why: String },
    #[error("the lab file with the command line's kernel settings: {0}")]
    Yaml(String),
    #[error("{}: modules for {} only, but the kernel is {release}", dir.display(), found.join(", "))]
    ModulesMismatch {
        dir: PathBuf,
        release: String,
        found: Vec<String>,
    },
    #[error("{}: no modules.dep (an unpacked kernel package gets it from depmod at install): run `depmod -b {} {release}` first", release_dir.display(), base.display())]
    NoModuleIndex {
        release_dir: PathBuf,
        base: PathBuf,
        release: String,
    },
    #[error(
        "the lab runs the kernel driver, which vni-lab builds against the kernel's own built tree, and none was found for {kernel} (no tree holding the image, no modules' build link with a .config): give --kernel-tree DIR, or run the user-space driver (topologies/two-node.yaml)"
    )]
    NoTree { kernel: String },
    #[error(
        "the kernel {kernel} lacks what this lab needs (says {source_of}): {}; `vni-lab kconfig` prints the fragment to merge, or boot another kernel",
        missing.join(", ")
    )]
    Missing {
        kernel: String,
        source_of: String,
        missing: Vec<String>,
    },
}

impl KernelFlags {
    /// Whether any flag is given.
    pub fn any(&self) -> bool {
        *self != KernelFlags::default()
    }

    /// The same flags with a kernel tree turned into its kernel image and
    /// installed modules, and every path absolute (as the lab file's
    /// settings they replace would be resolved otherwise against the
    /// file's folder, not the working directory).
    pub fn resolve(
        &self,
        cache: &Path,
        step: &mut dyn FnMut(&str),
    ) -> Result<KernelFlags, OwnKernelError> {
        let absolute = |flag: &'static str, path: &Option<PathBuf>| {
            path.as_deref()
                .map(|p| {
                    std::fs::canonicalize(p).map_err(|source| OwnKernelError::Path {
                        flag,
                        path: p.to_owned(),
                        source,
                    })
                })
                .transpose()
        };
        let mut resolved = KernelFlags {
            kernel: absolute("--kernel", &self.kernel)?,
            modules: absolute("--modules", &self.modules)?,
            initrd: absolute("--initrd", &self.initrd)?,
            append: self.append.clone(),
            kernel_tree: None,
        };
        if let Some(tree) = absolute("--kernel-tree", &self.kernel_tree)? {
            let image = tree.join("arch/x86/boot/bzImage");
            if !image.is_file() {
                return Err(OwnKernelError::NotBuilt(tree));
            }
            resolved.modules = install_modules(&tree, cache, step)?;
            resolved.kernel = Some(image);
        }
        if let Some(modules) = &resolved.modules {
            resolved.modules = Some(modules_root(modules));
        }
        Ok(resolved)
    }

    /// `text` (a lab file) with these flags in its `guest:` section, or
    /// `text` itself when no flag is given. Call on resolved flags.
    pub fn apply(&self, text: &str) -> Result<String, OwnKernelError> {
        if !self.any() {
            return Ok(text.to_owned());
        }
        let yaml = |e: serde_yaml::Error| OwnKernelError::Yaml(e.to_string());
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml)?;
        let lab = doc
            .as_mapping_mut()
            .ok_or_else(|| OwnKernelError::Yaml("the lab file is not a mapping".into()))?;
        let guest = lab
            .entry("guest".into())
            .or_insert_with(|| serde_yaml::Mapping::new().into());
        if guest.is_null() {
            *guest = serde_yaml::Mapping::new().into();
        }
        let guest = guest
            .as_mapping_mut()
            .ok_or_else(|| OwnKernelError::Yaml("guest: is not a mapping".into()))?;
        let path = |p: &PathBuf| serde_yaml::Value::from(p.to_string_lossy().into_owned());
        if let Some(kernel) = &self.kernel {
            guest.insert("kernel".into(), path(kernel));
            if self.modules.is_none() {
                // The file's modules went with the file's kernel.
                guest.remove("modules");
            }
        }
        if let Some(modules) = &self.modules {
            guest.insert("modules".into(), path(modules));
        }
        if let Some(initrd) = &self.initrd {
            guest.insert("image".into(), path(initrd));
        }
        if let Some(append) = &self.append {
            guest.insert("append".into(), append.as_str().into());
        }
        let body = serde_yaml::to_string(&doc).map_err(yaml)?;
        Ok(format!(
            "# The lab file with vni-lab's command-line kernel settings.\n{body}"
        ))
    }

    /// The flags as `up` takes them (for `test`, which starts `up`).
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        let mut add = |flag: &str, value: Option<std::ffi::OsString>| {
            if let Some(value) = value {
                args.push(flag.into());
                args.push(value);
            }
        };
        add("--kernel", self.kernel.clone().map(Into::into));
        add("--modules", self.modules.clone().map(Into::into));
        add("--initrd", self.initrd.clone().map(Into::into));
        add("--append", self.append.clone().map(Into::into));
        add("--kernel-tree", self.kernel_tree.clone().map(Into::into));
        args
    }
}

/// Runs the tree's `make modules_install` into the cache (afresh: stale
/// modules of an earlier build must not linger), or `None` for a kernel
/// built without modules.
fn install_modules(
    tree: &Path,
    cache: &Path,
    step: &mut dyn FnMut(&str),
) -> Result<Option<PathBuf>, OwnKernelError> {
    if !tree.join("modules.order").is_file() {
        return Ok(None);
    }
    let key = crate::image::fnv1a(tree.as_os_str().as_encoded_bytes().iter().copied());
    let dest = cache.join("tree-modules").join(key);
    let _ = std::fs::remove_dir_all(&dest);
    let failed = |why: String| OwnKernelError::ModulesInstall {
        tree: tree.to_owned(),
        why,
    };
    std::fs::create_dir_all(&dest)
        .map_err(|e| failed(format!("create {}: {e}", dest.display())))?;
    step(&format!("installing the modules of {}", tree.display()));
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(tree)
        .arg(format!("INSTALL_MOD_PATH={}", dest.display()))
        .args(["INSTALL_MOD_STRIP=1", "modules_install"])
        .output()
        .map_err(|e| failed(format!("cannot run make: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = said.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(failed(format!(
            "make modules_install: {}\n{}",
            out.status,
            tail.join("\n")
        )));
    }
    Ok(Some(modules_root(&dest)))
}

/// The folder holding `RELEASE/` folders, from any of the forms a user
/// may give: the `INSTALL_MOD_PATH`, its `lib/modules`, or a release
/// folder itself (which holds `modules.dep`).
pub fn modules_root(given: &Path) -> PathBuf {
    for below in ["lib/modules", "usr/lib/modules"] {
        if given.join(below).is_dir() {
            return given.join(below);
        }
    }
    if given.join("modules.dep").is_file() || given.join("modules.order").is_file() {
        if let Some(parent) = given.parent() {
            return parent.to_owned();
        }
    }
    given.to_owned()
}

/// Where x86's boot protocol puts the setup header's magic in a bzImage.
const HEADER_MAGIC: std::ops::Range<usize> = 0x202..0x206;
/// Where it puts the pointer to the `kernel_version` string (relative to
/// [`VERSION_BASE`]).
const VERSION_POINTER: std::ops::Range<usize> = 0x20e..0x210;
/// What that pointer counts from.
const VERSION_BASE: usize = 0x200;

/// The kernel release a bzImage says it is (the boot protocol's
/// `kernel_version` string), if it says.
pub fn image_release(image: &[u8]) -> Option<String> {
    if image.get(HEADER_MAGIC)? != b"HdrS" {
        return None;
    }
    let offset = u16::from_le_bytes(image.get(VERSION_POINTER)?.try_into().ok()?);
    if offset == 0 {
        return None;
    }
    let start = usize::from(offset) + VERSION_BASE;
    let text = image.get(start..start.saturating_add(256).min(image.len()))?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// A place a kernel's `.config` may be, and whether it is a built tree's
/// (the tree the kernel driver is then built against).
#[derive(Debug, PartialEq, Eq)]
struct ConfigPlace {
    config: PathBuf,
    tree: Option<PathBuf>,
}

/// Where a kernel's `.config` may be, beside its image or its modules, in
/// order: a kernel tree's `.config` (the image in `arch/x86/boot/`),
/// Debian's `config-RELEASE` beside `vmlinuz-RELEASE`, or the modules'
/// `build/` tree (the link `make modules_install` leaves to the tree) and
/// `config`.
fn config_candidates(kernel: &Path, release_dir: Option<&Path>) -> Vec<ConfigPlace> {
    let in_tree = |dir: PathBuf| ConfigPlace {
        config: dir.join(".config"),
        tree: Some(dir),
    };
    let mut places: Vec<ConfigPlace> = kernel
        .ancestors()
        .skip(1)
        .take(4)
        .filter(|dir| dir.join("Makefile").is_file())
        .map(|dir| in_tree(dir.to_owned()))
        .collect();
    let loose = |config: PathBuf| ConfigPlace { config, tree: None };
    if let (Some(dir), Some(name)) = (kernel.parent(), kernel.file_name()) {
        if let Some(release) = name.to_string_lossy().strip_prefix("vmlinuz-") {
            places.push(loose(dir.join(format!("config-{release}"))));
        }
    }
    if let Some(dir) = release_dir {
        places.push(in_tree(dir.join("build")));
        places.push(loose(dir.join("config")));
    }
    places
}

/// What the check before booting found.
#[derive(Debug)]
pub struct Checked {
    /// The kernel's release, when its image says.
    pub release: Option<String>,
    /// What was read: the `.config`'s path or the modules folder's.
    pub source: String,
    /// Options only a `.config` tells, left unchecked (none when one was
    /// read).
    pub unchecked: Vec<&'static str>,
    /// The built tree the kernel driver is to be built against, when a
    /// node runs it (its `.config` is the one read).
    pub tree: Option<PathBuf>,
}

/// Checks a kernel of one's own against what `topology` needs: its
/// modules match its release, and its `.config` (or, without one, its
/// modules) has every option. A lab with the kernel driver needs the
/// kernel's built tree too, to build `vni.ko` against: the tree holding
/// the image (`--kernel-tree`), or the one its modules' `build` link
/// names. Nothing to check for Debian's kernels.
pub fn check(topology: &Topology) -> Result<Option<Checked>, OwnKernelError> {
    let Kernel::Path(kernel) = &topology.kernel else {
        return Ok(None);
    };
    let drivers: Vec<_> = topology.nodes.iter().map(|n| n.driver).collect();
    let requirements = kconfig::requirements(&drivers, topology.network);
    let image = std::fs::read(kernel).map_err(|source| OwnKernelError::Path {
        flag: "guest.kernel",
        path: kernel.clone(),
        source,
    })?;
    let release = image_release(&image);
    let release_dir = match &topology.modules {
        None => None,
        Some(given) => Some(release_dir(given, release.as_deref())?),
    };
    let label = release
        .clone()
        .unwrap_or_else(|| kernel.display().to_string());
    let refuse = |source_of: String, missing: Vec<&Requirement>| OwnKernelError::Missing {
        kernel: label.clone(),
        source_of,
        missing: missing.iter().map(|r| r.option.to_owned()).collect(),
    };
    let needs_tree = topology.uses(Driver::Kernel);
    let config = config_candidates(kernel, release_dir.as_deref())
        .into_iter()
        .filter(|place| !needs_tree || place.tree.is_some())
        .find_map(|place| {
            std::fs::read_to_string(&place.config)
                .ok()
                .map(|text| (place, text))
        });
    if let Some((place, text)) = config {
        let missing = kconfig::missing(&text, &requirements);
        if !missing.is_empty() {
            return Err(refuse(place.config.display().to_string(), missing));
        }
        return Ok(Some(Checked {
            release,
            source: place.config.display().to_string(),
            unchecked: Vec::new(),
            tree: place.tree.filter(|_| needs_tree),
        }));
    }
    if needs_tree {
        return Err(OwnKernelError::NoTree { kernel: label });
    }
    let Some(dir) = release_dir else {
        // Without modules, every option must be built in; only a .config
        // could say which are.
        return Ok(Some(Checked {
            release,
            source: "nothing (no .config beside the kernel, no modules)".into(),
            unchecked: requirements.iter().map(|r| r.option).collect(),
            tree: None,
        }));
    };
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let list = ModuleList::parse(&read("modules.builtin"), &read("modules.dep"));
    let (missing, unknown) = list.missing(&requirements);
    let source = format!("{}/modules.builtin and modules.dep", dir.display());
    if !missing.is_empty() {
        return Err(refuse(source, missing));
    }
    Ok(Some(Checked {
        release,
        source,
        unchecked: unknown.iter().map(|r| r.option).collect(),
        tree: None,
    }))
}

/// The release folder under the modules folder `given` for the kernel
/// `release` (the only one, when the image does not say its release).
fn release_dir(given: &Path, release: Option<&str>) -> Result<PathBuf, OwnKernelError> {
    let root = modules_root(given);
    let mut found: Vec<String> = std::fs::read_dir(&root)
        .map_err(|source| OwnKernelError::Path {
            flag: "guest.modules",
            path: root.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let name = match release {
        Some(release) if found.iter().any(|f| f == release) => release.to_owned(),
        None if found.len() == 1 => found[0].clone(),
        _ => {
            return Err(OwnKernelError::ModulesMismatch {
                dir: root,
                release: release.unwrap_or("of an unknown release").to_owned(),
                found,
            })
        }
    };
    let dir = root.join(&name);
    if !dir.join("modules.dep").is_file() {
        // depmod's base: the folder holding lib/modules.
        let base = root
            .parent()
            .and_then(Path::parent)
            .filter(|_| root.ends_with("lib/modules"))
            .map_or_else(|| root.clone(), Path::to_owned);
        return Err(OwnKernelError::NoModuleIndex {
            release_dir: dir,
            base,
            release: name,
        });
    }
    Ok(dir)
}

/// The smallest file [`image_release`] reads as a kernel of `release`
/// (up to 200 bytes): a boot header pointing at its version string, and
/// nothing to boot. For trying what vni-lab checks of a kernel of one's
/// own before it boots one.
pub fn release_only_image(release: &str) -> Vec<u8> {
    let pointer: u16 = 0x300;
    let start = usize::from(pointer) + VERSION_BASE;
    let mut image = vec![0u8; 0x1000];
    image[HEADER_MAGIC].copy_from_slice(b"HdrS");
    image[VERSION_POINTER].copy_from_slice(&pointer.to_le_bytes());
    let text = format!("{release} (ci@example) #1 SMP\0");
    let end = (start + text.len()).min(image.len());
    image[start..end].copy_from_slice(&text.as_bytes()[..end - start]);
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_comes_from_the_boot_header() {
        assert_eq!(
            image_release(&release_only_image("6.12.57+deb13-amd64")).as_deref(),
            Some("6.12.57+deb13-amd64")
        );
        assert_eq!(image_release(b"not a kernel"), None);
        let mut no_version = release_only_image("x");
        no_version[0x20e..0x210].copy_from_slice(&[0, 0]);
        assert_eq!(image_release(&no_version), None);
        // An offset past the end, or a string without an end, is no release.
        let mut past = release_only_image("x");
        past[0x20e..0x210].copy_from_slice(&0xff00u16.to_le_bytes());
        assert_eq!(image_release(&past), None);
    }

    #[test]
    fn flags_replace_the_files_guest_settings_and_keep_the_rest() {
        let text = "# mine\nname: lab\nguest:\n  kernel: old/bzImage\n  modules: old/mods\n  append: quiet\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n";
        let none = KernelFlags::default();
        assert_eq!(none.apply(text).unwrap(), text, "no flags, the same text");
        let flags = KernelFlags {
            kernel: Some("/k/bzImage".into()),
            append: Some("loglevel=7".into()),
            ..Default::default()
        };
        let out = flags.apply(text).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(doc["guest"]["kernel"], "/k/bzImage");
        assert_eq!(doc["guest"]["append"], "loglevel=7");
        assert!(
            doc["guest"].get("modules").is_none(),
            "the old kernel's modules go"
        );
        assert_eq!(doc["nodes"][0]["name"], "a");
        let bare = "name: lab\nguest:\nnodes: []\n";
        let flags = KernelFlags {
            initrd: Some("/i".into()),
            ..Default::default()
        };
        let doc: serde_yaml::Value = serde_yaml::from_str(&flags.apply(bare).unwrap()).unwrap();
        assert_eq!(doc["guest"]["image"], "/i");
        assert!(matches!(
            flags.apply("- a list"),
            Err(OwnKernelError::Yaml(_))
        ));
        assert_eq!(
            flags.args(),
            vec![std::ffi::OsString::from("--initrd"), "/i".into()]
        );
    }

    #[test]
    fn the_modules_folder_is_found_in_each_form_and_must_match_the_kernel() {
        let dir = std::env::temp_dir().join(format!("vni-own-kernel-{}", std::process::id()));
        let release = dir.join("lib/modules/6.1.0-x");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("modules.dep"), "").unwrap();
        let root = dir.join("lib/modules");
        assert_eq!(modules_root(&dir), root);
        assert_eq!(modules_root(&root), root);
        assert_eq!(modules_root(&release), root);
        assert_eq!(release_dir(&dir, Some("6.1.0-x")).unwrap(), release);
        assert_eq!(release_dir(&dir, None).unwrap(), release);
        let err = release_dir(&dir, Some("6.2.0")).unwrap_err().to_string();
        assert!(
            err.contains("modules for 6.1.0-x only, but the kernel is 6.2.0"),
            "{err}"
        );
        std::fs::remove_file(release.join("modules.dep")).unwrap();
        let err = release_dir(&dir, None).unwrap_err().to_string();
        assert!(err.contains("no modules.dep"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_config_is_looked_for_in_the_tree_beside_the_image_and_in_the_modules() {
        let tree = std::env::temp_dir().join(format!("vni-own-tree-{}", std::process::id()));
        std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
        std::fs::write(tree.join("Makefile"), "").unwrap();
        let found = config_candidates(
            &tree.join("arch/x86/boot/bzImage"),
            Some(Path::new("/m/6.1")),
        );
        assert_eq!(
            found[0],
            ConfigPlace {
                config: tree.join(".config"),
                tree: Some(tree.clone())
            }
        );
        std::fs::remove_dir_all(&tree).unwrap();
        assert!(found.contains(&ConfigPlace {
            config: PathBuf::from("/m/6.1/build/.config"),
            tree: Some(PathBuf::from("/m/6.1/build")),
        }));
        let debian = config_candidates(Path::new("/x/boot/vmlinuz-6.1.0-9-amd64"), None);
        assert_eq!(
            debian,
            vec![ConfigPlace {
                config: PathBuf::from("/x/boot/config-6.1.0-9-amd64"),
                tree: None
            }],
            "a distribution's config is no tree"
        );
    }
}
