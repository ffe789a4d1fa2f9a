//! The endpoint of user space: `vni-core`'s endpoint on a mapped
//! [`Region`], buffers on the heap and `std`'s clock, plus the one call
//! that speaks system calls ([`Endpoint::send_direct`], for `readv` from a
//! TAP).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::io::{iovec, IoSlots};
use crate::platform::StdPlatform;
use crate::region::Region;
use vni_core::{Buffers, EndpointError, Geometry, Layout, LayoutError, MacAddr, NodeId, SendError};

/// Keeps a mapping alive and dereferences to the core's access type: the
/// endpoint's region handle.
#[derive(Clone, Debug)]
pub struct SharedRegion(Arc<Region>);

impl Deref for SharedRegion {
    type Target = vni_core::Region;

    fn deref(&self) -> &vni_core::Region {
        &self.0
    }
}

/// The core's endpoint with user space's handles.
pub type CoreEndpoint = vni_core::Endpoint<SharedRegion, Box<Buffers>, StdPlatform>;

/// One node attached to the region: [`CoreEndpoint`] (all of its methods,
/// through `Deref`), attached to a mapping of this process.
#[derive(Debug)]
pub struct Endpoint(CoreEndpoint);

impl Deref for Endpoint {
    type Target = CoreEndpoint;

    fn deref(&self) -> &CoreEndpoint {
        &self.0
    }
}

impl DerefMut for Endpoint {
    fn deref_mut(&mut self) -> &mut CoreEndpoint {
        &mut self.0
    }
}

fn buffers() -> Box<Buffers> {
    Box::new(Buffers::new())
}

impl Endpoint {
    /// Attaches as node `me` with address `mac` to a formatted region
    /// (see [`vni_core::Endpoint::attach`]).
    pub fn attach(region: Arc<Region>, me: NodeId, mac: MacAddr) -> Result<Self, EndpointError> {
        CoreEndpoint::attach(
            SharedRegion(region),
            buffers(),
            StdPlatform::default(),
            me,
            mac,
        )
        .map(Endpoint)
    }

    /// Attaches this endpoint's node again, as a new incarnation (see
    /// [`vni_core::Endpoint::reattach`]).
    pub fn reattach(&self, mac: MacAddr) -> Result<Self, EndpointError> {
        self.0.reattach(buffers(), mac).map(Endpoint)
    }

    /// [`vni_core::Endpoint::send_direct`] for a source that is a file
    /// descriptor: `fill` gets the frame's memory as [`IoSlots`] for
    /// `readv`.
    pub fn send_direct(
        &mut self,
        max: usize,
        route_offset: usize,
        fill: impl FnOnce(&IoSlots<'_>) -> std::io::Result<usize>,
    ) -> Result<Option<usize>, SendError<std::io::Error>> {
        self.0.send_direct(max, route_offset, |slots| {
            let iovecs: Vec<libc::iovec> = slots.segments().map(iovec).collect();
            fill(&IoSlots::new(&iovecs))
        })
    }

    /// Leaves the region (see [`vni_core::Endpoint::detach`]).
    pub fn detach(self) -> Result<(), EndpointError> {
        self.0.detach()
    }
}

/// Formats `region` with `geometry` (see [`vni_core::format`]), with an
/// epoch made of the time and this process's id.
pub fn format(region: &Region, geometry: &Geometry) -> Result<Layout, LayoutError> {
    vni_core::format(region, geometry, format_epoch())
}

/// A format epoch unlikely to repeat: time and process id.
fn format_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 48)) | 1
}

#[cfg(test)]
mod tests;
