//! The shared-memory core of Mint's VNI protocol: everything that reads or
//! writes the region, with no operating system underneath.
//!
//! The user-space driver (through `vni-protocol`) and the kernel module
//! compile these same files, so both speak one region format by
//! construction. Hence the rules of this crate:
//!
//! - `#![no_std]`, no heap, no crates: only `core`. Where the caller's
//!   world differs (the clock, how to wait, where scratch memory comes
//!   from), the caller passes it in: a [`Platform`], and [`Sink`]s or
//!   slices for working storage.
//! - Every value read from the region was written by a node that may be
//!   buggy or hostile. It is read once into a local, validated, and a
//!   violation is a [`ProtocolError`] and a counter. No value from the
//!   region can reach a panic: indexing, `unwrap`, `expect`, `panic!` and
//!   unchecked arithmetic are denied below (the few justified exceptions
//!   are commented where they are). In the kernel a panic is an oops.
//! - No Rust reference points into the region; [`Region`] hands out atomics
//!   and copies only.
//!
//! # Building it into a kernel module
//!
//! A kernel module is one crate and cannot take crates from a registry, so
//! its crate root includes this file as a module, by path:
//!
//! ```text
//! // guest-driver/kernel/vni_main.rs
//! #[allow(unused_attributes)] // this file's `#![no_std]` is the crate's already
//! #[path = "../core/src/lib.rs"]
//! mod vni_core;
//! ```
//!
//! For that to work the files refer to each other with `super::`, never
//! `crate::`, and nothing here needs a feature the kernel build lacks (the
//! `std` and `serde` features are for user space and stay off there). The
//! test `tests/no_std_build.rs` compiles the core that way, as a `no_std`
//! crate root of its own with `panic=abort`, as the kernel build does.
//!
//! The rustc that builds Debian's Rust-enabled kernel is 1.85; the crate's
//! `rust-version` says so, and clippy's `incompatible_msrv` holds the code
//! to it.

#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::unreachable,
        clippy::todo
    )
)]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod addr;
pub mod directory;
pub mod endpoint;
pub mod ether;
pub mod frame;
pub mod layout;
pub mod lifecycle;
pub mod lock;
pub mod nodes;
pub mod notify;
pub mod offsets;
pub mod platform;
pub mod pool;
pub mod region;
pub mod rings;
pub mod section;
pub mod sink;

pub use addr::AddrError;
pub use endpoint::{
    format, members, Buffers, Dest, DirectSlots, Endpoint, EndpointError, FlushReport, NoSource,
    SendError, BATCH, OFFENCE_LIMIT, QUARANTINE_LEASES,
};
pub use ether::{MacAddr, MacParseError};
pub use frame::{ProtocolError, RawSegment, RxFrame, Segment};
pub use layout::{BufferConfig, Geometry, Layout, LayoutError, HEADER_LEN, MAX_FRAME, MAX_NODES};
pub use lifecycle::{Event, Lifecycle};
pub use lock::{Holder, LockError, LockStatus};
pub use nodes::{Counters, Incarnation, NodeId, NodeState};
pub use notify::{Notification, DOORBELL_VECTORS, RX_VECTOR};
pub use platform::{Instant, Platform};
pub use region::{Region, RegionError};
pub use sink::{Bounded, Sink};
