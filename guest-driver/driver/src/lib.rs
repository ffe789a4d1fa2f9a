//! The VNI driver of a vni-lab guest.
//!
//! Today: [`device`], the ivshmem device through VFIO (registers, the
//! shared region, doorbells in and out). The network side (a TAP interface
//! carrying Ethernet over the region) builds on it.

pub mod device;
