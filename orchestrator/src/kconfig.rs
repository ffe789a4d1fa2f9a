//! What a guest kernel must be built with to run a lab: the options, why
//! each is needed, the fragment `vni-lab kconfig` prints (ready for the
//! kernel's `scripts/kconfig/merge_config.sh`), and the check of a
//! kernel's `.config` against them, which names what is missing.

use std::fmt::Write as _;

use crate::topology::{Driver, Network};

/// One option a lab's guest kernel needs, built in or as a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// `CONFIG_…`.
    pub option: &'static str,
    /// What needs it.
    pub why: &'static str,
    /// The module it builds when it is `=m` (its `.ko` file's name, `-`
    /// and `_` alike), or `None` for an option that can only be built in.
    pub module: Option<&'static str>,
}

const fn req(option: &'static str, why: &'static str) -> Requirement {
    Requirement {
        option,
        why,
        module: None,
    }
}

/// A tristate option, and the module it builds.
const fn tri(option: &'static str, module: &'static str, why: &'static str) -> Requirement {
    Requirement {
        option,
        why,
        module: Some(module),
    }
}

/// What every lab's guest needs, whatever carries the frames.
const EVERY_LAB: &[Requirement] = &[
    req(
        "CONFIG_BLK_DEV_INITRD",
        "the guest's root filesystem is its initramfs",
    ),
    req("CONFIG_DEVTMPFS", "/dev in the initramfs"),
    req(
        "CONFIG_SERIAL_8250_CONSOLE",
        "the node's console (console=ttyS0)",
    ),
    tri(
        "CONFIG_VIRTIO_PCI",
        "virtio_pci",
        "virtio-serial for the guest agent",
    ),
    tri(
        "CONFIG_VIRTIO_CONSOLE",
        "virtio_console",
        "the guest agent's virtio-serial port",
    ),
    // Built in only on recent kernels (6.12's is bool, which
    // modules.builtin does not name): a .config tells.
    req("CONFIG_UNIX", "the guest agent and the tools"),
    req(
        "CONFIG_INET",
        "IP over the lab's network (nc, iperf3, ping)",
    ),
    tri(
        "CONFIG_PACKET",
        "af_packet",
        "raw frames (vni-frames, pnet)",
    ),
    req("CONFIG_PCI_MSI", "the ivshmem device's MSI-X doorbells"),
];

/// The user-space driver: the ivshmem device through VFIO behind the
/// emulated IOMMU, frames to and from a TAP.
const USER_DRIVER: &[Requirement] = &[
    req(
        "CONFIG_IOMMU_SUPPORT",
        "VFIO needs an IOMMU (QEMU's intel-iommu)",
    ),
    req(
        "CONFIG_INTEL_IOMMU",
        "the lab's emulated IOMMU (intel_iommu=on)",
    ),
    tri(
        "CONFIG_VFIO",
        "vfio",
        "the user-space driver reaches the device through VFIO",
    ),
    tri(
        "CONFIG_VFIO_PCI",
        "vfio_pci",
        "the ivshmem device bound to vfio-pci",
    ),
    tri("CONFIG_TUN", "tun", "the user-space driver's TAP interface"),
];

/// The kernel driver: a Rust module.
const KERNEL_DRIVER: &[Requirement] = &[
    req("CONFIG_MODULES", "vni.ko is loaded as a module"),
    req("CONFIG_RUST", "vni.ko is written in Rust"),
];

/// The virtio-net baselines.
const VIRTIO_NET: &[Requirement] = &[tri("CONFIG_VIRTIO_NET", "virtio_net", "the baseline's NIC")];

/// What a lab with these drivers and this network needs, each option once.
pub fn requirements(drivers: &[Driver], network: Network) -> Vec<Requirement> {
    let mut all: Vec<Requirement> = EVERY_LAB.to_vec();
    let mut add = |more: &[Requirement]| {
        for r in more {
            if !all.iter().any(|a| a.option == r.option) {
                all.push(*r);
            }
        }
    };
    if network.is_virtio() {
        add(VIRTIO_NET);
    } else {
        if drivers.contains(&Driver::User) {
            add(USER_DRIVER);
        }
        if drivers.contains(&Driver::Kernel) {
            add(KERNEL_DRIVER);
        }
    }
    all
}

/// The config fragment: each option `=y`, after a comment saying why.
pub fn fragment(requirements: &[Requirement]) -> String {
    let mut text = String::from(
        "# What a vni-lab guest kernel needs (vni-lab kconfig); merge with\n\
         # scripts/kconfig/merge_config.sh. Modules (=m) serve as well as =y.\n",
    );
    for r in requirements {
        let _ = writeln!(text, "# {}\n{}=y", r.why, r.option);
    }
    text
}

/// The value of `option` in `config` (a `.config`), a string's quotes
/// removed; `None` when it is not set.
pub fn value<'a>(config: &'a str, option: &str) -> Option<&'a str> {
    config.lines().find_map(|line| {
        let value = line.strip_prefix(option)?.strip_prefix('=')?;
        Some(value.trim_matches('"'))
    })
}

/// The options of `requirements` that `config` (a `.config`) has neither
/// built in nor as a module.
pub fn missing<'a>(config: &str, requirements: &'a [Requirement]) -> Vec<&'a Requirement> {
    requirements
        .iter()
        .filter(|r| !matches!(value(config, r.option), Some("y" | "m")))
        .collect()
}

/// A module's name from its file's path in a modules directory
/// (`kernel/drivers/vfio/pci/vfio-pci.ko.xz` is `vfio_pci`: `-` and `_`
/// are one to modprobe).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// What a kernel's modules directory (`lib/modules/RELEASE`) says about
/// its options: the modules built in (`modules.builtin`) and those built
/// as modules (`modules.dep`), by name with `-` read as `_`.
#[derive(Debug, Default)]
pub struct ModuleList {
    built_in: std::collections::BTreeSet<String>,
    loadable: std::collections::BTreeSet<String>,
}

impl ModuleList {
    /// From the text of `modules.builtin` and `modules.dep`.
    pub fn parse(builtin: &str, dep: &str) -> Self {
        let names = |text: &str, field: fn(&str) -> &str| {
            text.lines()
                .map(field)
                .map(str::trim)
                .filter(|p| p.contains(".ko"))
                .map(module_name)
                .collect()
        };
        ModuleList {
            built_in: names(builtin, |l| l),
            loadable: names(dep, |l| l.split(':').next().unwrap_or_default()),
        }
    }

    /// The options of `requirements` these modules show missing, and those
    /// they cannot tell about (options that are built in or not at all:
    /// only a `.config` says).
    pub fn missing<'a>(
        &self,
        requirements: &'a [Requirement],
    ) -> (Vec<&'a Requirement>, Vec<&'a Requirement>) {
        let mut missing = Vec::new();
        let mut unknown = Vec::new();
        for r in requirements {
            match r.module {
                None => unknown.push(r),
                Some(module) => {
                    let module = module.replace('-', "_");
                    if !self.built_in.contains(&module) && !self.loadable.contains(&module) {
                        missing.push(r);
                    }
                }
            }
        }
        (missing, unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_driver_and_network_brings_its_options() {
        let names = |r: Vec<Requirement>| r.iter().map(|r| r.option).collect::<Vec<_>>();
        let user = names(requirements(&[Driver::User], Network::Vni));
        assert!(user.contains(&"CONFIG_VFIO_PCI") && user.contains(&"CONFIG_TUN"));
        assert!(!user.contains(&"CONFIG_RUST"));
        let kernel = names(requirements(&[Driver::Kernel], Network::Vni));
        assert!(kernel.contains(&"CONFIG_RUST") && !kernel.contains(&"CONFIG_TUN"));
        let mixed = names(requirements(&[Driver::User, Driver::Kernel], Network::Vni));
        assert!(mixed.contains(&"CONFIG_RUST") && mixed.contains(&"CONFIG_TUN"));
        let mut sorted = mixed.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), mixed.len(), "each option once");
        let virtio = names(requirements(&[Driver::User], Network::VirtioNetTap));
        assert!(virtio.contains(&"CONFIG_VIRTIO_NET") && !virtio.contains(&"CONFIG_VFIO"));
    }

    #[test]
    fn the_check_names_what_is_missing_and_takes_modules() {
        let reqs = requirements(&[Driver::User], Network::Vni);
        let full = fragment(&reqs).replace("CONFIG_TUN=y", "CONFIG_TUN=m");
        assert!(missing(&full, &reqs).is_empty());
        let without = full.replace("CONFIG_TUN=m", "# CONFIG_TUN is not set");
        let gone: Vec<_> = missing(&without, &reqs).iter().map(|r| r.option).collect();
        assert_eq!(gone, ["CONFIG_TUN"]);
        // A longer option's name is not the one asked for.
        let tricky = full.replace("CONFIG_VFIO=y", "CONFIG_VFIO_IOMMU_TYPE1=y");
        let gone: Vec<_> = missing(&tricky, &reqs).iter().map(|r| r.option).collect();
        assert_eq!(gone, ["CONFIG_VFIO"]);
    }

    #[test]
    fn a_value_is_read_whole_and_unquoted() {
        let config = "CONFIG_CC_IS_CLANG=y\nCONFIG_RUSTC_VERSION_TEXT=\"rustc 1.95.0 (x)\"\n";
        assert_eq!(value(config, "CONFIG_CC_IS_CLANG"), Some("y"));
        assert_eq!(
            value(config, "CONFIG_RUSTC_VERSION_TEXT"),
            Some("rustc 1.95.0 (x)")
        );
        assert_eq!(value(config, "CONFIG_CC_IS"), None);
    }

    #[test]
    fn a_modules_directory_tells_modules_and_built_ins_but_not_the_rest() {
        let reqs = requirements(&[Driver::User], Network::Vni);
        let builtin = "kernel/net/unix/unix.ko\nkernel/net/packet/af_packet.ko\nkernel/drivers/virtio/virtio_pci.ko\n";
        let dep = "kernel/drivers/char/virtio_console.ko.xz:\n\
                   kernel/drivers/vfio/vfio.ko.zst: kernel/drivers/iommu/iommufd/iommufd.ko.zst\n\
                   kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko\n\
                   kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko\n";
        let list = ModuleList::parse(builtin, dep);
        let (missing, unknown) = list.missing(&reqs);
        let names = |r: &[&Requirement]| r.iter().map(|r| r.option).collect::<Vec<_>>();
        assert_eq!(names(&missing), ["CONFIG_TUN"]);
        assert!(names(&unknown).contains(&"CONFIG_INTEL_IOMMU"));
        assert!(!names(&unknown).contains(&"CONFIG_VFIO_PCI"));
        let with_tun = ModuleList::parse(builtin, &format!("{dep}kernel/drivers/net/tun.ko:\n"));
        assert!(with_tun.missing(&reqs).0.is_empty());
    }
}
