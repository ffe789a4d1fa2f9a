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
}

const fn req(option: &'static str, why: &'static str) -> Requirement {
    Requirement { option, why }
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
    req("CONFIG_VIRTIO_PCI", "virtio-serial for the guest agent"),
    req(
        "CONFIG_VIRTIO_CONSOLE",
        "the guest agent's virtio-serial port",
    ),
    req("CONFIG_UNIX", "the guest agent and the tools"),
    req(
        "CONFIG_INET",
        "IP over the lab's network (nc, iperf3, ping)",
    ),
    req("CONFIG_PACKET", "raw frames (vni-frames, pnet)"),
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
    req(
        "CONFIG_VFIO",
        "the user-space driver reaches the device through VFIO",
    ),
    req("CONFIG_VFIO_PCI", "the ivshmem device bound to vfio-pci"),
    req("CONFIG_TUN", "the user-space driver's TAP interface"),
];

/// The kernel driver: a Rust module.
const KERNEL_DRIVER: &[Requirement] = &[
    req("CONFIG_MODULES", "vni.ko is loaded as a module"),
    req("CONFIG_RUST", "vni.ko is written in Rust"),
];

/// The virtio-net baselines.
const VIRTIO_NET: &[Requirement] = &[req("CONFIG_VIRTIO_NET", "the baseline's NIC")];

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

/// The options of `requirements` that `config` (a `.config`) has neither
/// built in nor as a module.
pub fn missing<'a>(config: &str, requirements: &'a [Requirement]) -> Vec<&'a Requirement> {
    requirements
        .iter()
        .filter(|r| {
            !config.lines().any(|line| {
                line.strip_prefix(r.option)
                    .is_some_and(|rest| rest == "=y" || rest == "=m")
            })
        })
        .collect()
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
}
