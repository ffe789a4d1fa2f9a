//! vni-lab: boots Mint-like labs of QEMU guests that share one memory
//! region, and drives the VNI across them.
//!
//! The lab file ([`topology`]) says what to start; `up` builds or reuses
//! the guest [`image`], writes a [`lab::Plan`] into the lab's directory and
//! starts the [`supervisor`], which formats the region, runs the
//! [`ivshmem_server`] and one QEMU per node ([`qemu`]) and waits for each
//! guest's [`agent`].

pub mod agent;
pub mod bench;
pub mod crash;
pub mod driver;
pub mod fault;
pub mod guest_bin;
pub mod host;
pub mod image;
pub mod io_failure;
pub mod ivshmem_server;
pub mod kconfig;
pub mod kmod;
pub mod lab;
pub mod logs;
pub mod netns;
pub mod own_kernel;
pub mod qemu;
pub mod sections;
pub mod soak;
pub mod spans;
pub mod suite;
pub mod supervisor;
pub mod test_spec;
pub mod topology;
pub mod units;
