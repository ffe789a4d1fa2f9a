//! The VNI driver of a vni-lab guest.
//!
//! [`device`] is the ivshmem device through VFIO (registers, the shared
//! region, doorbells in and out), [`tap`] the network interface, and
//! [`run`] the loop that carries Ethernet frames between the two with the
//! protocol library.

pub mod cli;
pub mod device;
pub mod run;
pub mod tap;
