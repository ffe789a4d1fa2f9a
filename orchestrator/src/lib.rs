//! vni-lab: boots Mint-like labs of QEMU guests that share one memory
//! region, and drives the VNI across them.
//!
//! Today this holds the lab file format ([`topology`]); the lab lifecycle
//! (`up`, `down`, …) arrives with the guest image and QEMU control.

pub mod agent;
pub mod host;
pub mod image;
pub mod ivshmem_server;
pub mod spans;
pub mod topology;
