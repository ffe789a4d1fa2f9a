//! Mint's virtual network interface (VNI) protocol: Ethernet frames carried
//! through one memory region that every OS node maps.
//!
//! This crate is the protocol alone, with no device access: any shared
//! mapping stands in for the ivshmem BAR (a /dev/shm file, a memfd, an
//! anonymous mapping for single-process tests), so everything here runs and
//! is tested on the host. The code that touches the region lives in
//! `vni-core` (`no_std`, shared with the kernel module); this crate adds
//! the mappings, the clock and the endpoint of user space on top.
//!
//! The design is the 2018 Mint study's (see docs/src/design/overview.md):
//!
//! - buffer configuration 2 (its choice): one pool of slots for all frames
//!   of all nodes ([`pool`](crate::BufferConfig::SharedPool)); or
//!   configuration 1: one ring per (sender, receiver) pair
//!   ([`PerPair`](crate::BufferConfig::PerPair)). Both behind [`Endpoint`];
//! - mutual exclusion only on buffer management and address management, by
//!   a fair ticket lock in the region that survives the death of its holder;
//!   frame bytes are copied without it.
//!
//! Every value read from the region is treated as hostile: read once,
//! validated, and a violation is a [`ProtocolError`] and a counter, never a
//! panic or an out-of-bounds access. No Rust reference points into the
//! region; [`Region`] hands out atomics and copies only.
//!
//! ```
//! use std::sync::Arc;
//! use vni_protocol::{format, BufferConfig, Dest, Endpoint, Geometry, MacAddr, NodeState, Region};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Any shared mapping will do; a lab maps the ivshmem BAR or /dev/shm.
//! let region = Arc::new(Region::anonymous(8 << 20)?);
//! format(&region, &Geometry::fit(BufferConfig::SharedPool, 8 << 20, 4, 2048)?)?;
//!
//! let mut node0 = Endpoint::attach(region.clone(), 0, MacAddr::for_node(0))?;
//! let mut node1 = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1))?;
//! node0.set_state(NodeState::Run)?;
//! node1.set_state(NodeState::Run)?;
//!
//! // An Ethernet frame for node 1: destination, source, EtherType, payload.
//! let frame = [&MacAddr::for_node(1).0[..], &MacAddr::for_node(0).0, &[0x88, 0xb5], b"hello"].concat();
//! let dest = node0.route(&frame)?; // by destination MAC
//! assert_eq!(dest, Dest::Node(1));
//! node0.send(dest, &frame)?; // staged
//! node0.flush()?; // handed over: one lock round per batch
//!
//! let mut got = Vec::new();
//! node1.recv(64, |f| got.push((f.source(), f.to_vec())))?;
//! assert_eq!(got, vec![(Some(0), frame)]);
//!
//! node0.tick()?; // every few ms: heartbeat, counters, reaping dead peers
//! node0.detach()?; // slots back to the pool, address removed
//! node1.detach()?;
//! # Ok(())
//! # }
//! ```

// The shared-memory core, under the names this crate's modules use.
use vni_core::{addr, ether, layout, lock, nodes, pool, rings};

mod endpoint;
mod inspect;
mod io;
mod platform;
mod region;

pub use endpoint::{format, CoreEndpoint, Endpoint, SharedRegion};
pub use inspect::{inspect, NodeReport, PoolReport, RegionReport};
pub use io::{frame_iovecs, IoSlots};
pub use platform::{Backoff, StdPlatform};
pub use region::{Region, RegionError};
pub use vni_core::lifecycle::{self, Event, Lifecycle};
pub use vni_core::section::{SectionGeometry, SectionLayout};
pub use vni_core::{directory, section};
pub use vni_core::{
    members, Dest, EndpointError, FlushReport, NoSource, SendError, BATCH, OFFENCE_LIMIT,
    QUARANTINE_LEASES,
};
pub use vni_core::{
    AddrError, BufferConfig, Counters, Geometry, Holder, Instant, Layout, LayoutError, LockError,
    LockStatus, MacAddr, MacParseError, NodeId, NodeState, Notification, ProtocolError, RxFrame,
    Segment, DOORBELL_VECTORS, HEADER_LEN, MAX_FRAME, MAX_NODES, RX_VECTOR,
};
