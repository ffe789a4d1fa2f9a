//! Sending a frame that its source writes straight into slots (a TAP's
//! `readv`, a device's DMA), with no buffer in between.

use core::ops::{Deref, DerefMut};

use super::buffers::Buffers;
use super::{
    route, runs, send_taken, Backend, Dest, Endpoint, Platform, RawSegment, Region, Segment,
    SendError, Sink, MAX_FRAME,
};

/// Where the bytes of a [`Endpoint::send_direct`] frame go: slot memory
/// this node holds (or the endpoint's own buffer), as raw segments for a
/// system call or a copy; only the endpoint makes one.
#[derive(Debug)]
pub struct DirectSlots<'a> {
    target: DirectTarget<'a>,
}

#[derive(Debug)]
enum DirectTarget<'a> {
    Slots {
        region: &'a Region,
        offsets: &'a [usize],
        max: usize,
        slot_size: usize,
    },
    Buffer(RawSegment),
}

impl DirectSlots<'_> {
    /// The memory to write the frame into, in order: valid while this
    /// value is borrowed; never to be turned into Rust references.
    pub fn segments(&self) -> impl Iterator<Item = RawSegment> + '_ {
        let (slots, buffer) = match &self.target {
            DirectTarget::Slots {
                region,
                offsets,
                max,
                slot_size,
            } => (Some((*region, *offsets, *max, *slot_size)), None),
            DirectTarget::Buffer(seg) => (None, Some(*seg)),
        };
        let from_slots = slots
            .into_iter()
            .flat_map(|(region, offsets, max, slot_size)| {
                // Consecutive slots as one piece: fewer iovecs for `readv`.
                runs(slot_pieces(offsets, max, slot_size)).map(move |seg| RawSegment {
                    ptr: region.raw_ptr(seg.offset, seg.len),
                    len: seg.len,
                })
            });
        from_slots.chain(buffer)
    }
}

/// The first `len` bytes of slots at `offsets`, as one segment a slot.
fn slot_pieces(
    offsets: &[usize],
    len: usize,
    slot_size: usize,
) -> impl Iterator<Item = Segment> + '_ {
    let mut left = len;
    offsets.iter().map_while(move |&offset| {
        let piece = left.min(slot_size);
        left = left.saturating_sub(piece);
        (piece > 0).then_some(Segment { offset, len: piece })
    })
}

impl<M, B, P> Endpoint<M, B, P>
where
    M: Deref<Target = Region> + Clone,
    B: DerefMut<Target = Buffers>,
    P: Platform + Clone,
{
    /// Sends a frame that `fill` writes straight into slots, with no
    /// buffer in between: `fill` gets [`DirectSlots`] covering `max` bytes
    /// (at most [`MAX_FRAME`]) of memory this node holds, which a device or
    /// the kernel may write into (never through Rust references), and
    /// returns the frame's length, 0 for none. The frame is then routed by
    /// the destination address `route_offset` bytes in (after a virtio-net
    /// header, say) and staged as [`Endpoint::send`] stages.
    ///
    /// Configuration 2 fills slots from this node's cache. Configuration 1
    /// fills the ring of the last unicast destination and copies the frame
    /// over when it is for another node. Group and unknown destinations
    /// are copied to every peer, as `send` does.
    ///
    /// `Ok(None)`: `fill` produced no frame. Backpressure errors
    /// ([`SendError::is_backpressure`]) come before `fill` is called: the
    /// frame stays with its source. A frame taken from the source and then
    /// refused (no such peer, say) is counted in `tx_dropped` and reported
    /// as taken, like a NIC that drops; only [`SendError::Endpoint`] and
    /// [`SendError::Source`] are other errors.
    pub fn send_direct<E>(
        &mut self,
        max: usize,
        route_offset: usize,
        fill: impl FnOnce(&DirectSlots<'_>) -> Result<usize, E>,
    ) -> Result<Option<usize>, SendError<E>> {
        self.sh.check_usable()?;
        let max = max.min(MAX_FRAME);
        let need = max.div_ceil(self.sh.slot_size());
        let Buffers { lists, bounce } = &mut *self.buffers;
        // Where the bytes go: the cache's last `need` slots, or the next
        // `need` entries of the speculated ring; `None`: the bounce buffer.
        let speculated = match &mut self.backend {
            Backend::Pool(state) => {
                state
                    .reserve_direct(&mut self.sh, lists, need)
                    .map_err(SendError::widen)?;
                Some(None)
            }
            Backend::Rings(state) => state
                .reserve_direct(&self.sh, lists, need)
                .map_err(SendError::widen)?
                .map(Some),
        };
        let Some(speculated) = speculated else {
            // No peer to speculate on, or a ring that can never hold a
            // frame of `max`: go through the bounce buffer.
            let buffer = bounce.get_mut(..max).unwrap_or(&mut []);
            let target = DirectSlots {
                target: DirectTarget::Buffer(RawSegment {
                    ptr: buffer.as_mut_ptr(),
                    len: buffer.len(),
                }),
            };
            let n = fill(&target).map_err(SendError::Source)?.min(max);
            if n == 0 {
                return Ok(None);
            }
            let frame = bounce.get(..n).unwrap_or(&[]);
            let dest = route(
                &mut self.sh,
                lists,
                &mut self.addr_version,
                frame.get(route_offset..).unwrap_or(&[]),
            )?;
            return send_taken(&mut self.sh, &mut self.backend, lists, dest, frame);
        };
        let slot_size = self.sh.slot_size();
        let target = DirectSlots {
            target: DirectTarget::Slots {
                region: &self.sh.region,
                offsets: lists.direct.as_slice(),
                max,
                slot_size,
            },
        };
        let n = fill(&target).map_err(SendError::Source)?;
        if n == 0 || n > max {
            return Ok(None);
        }
        let used = n.div_ceil(slot_size);
        let first = lists.direct.as_slice().first().copied().unwrap_or(0);
        let mut head = [0u8; 64];
        let seen = route_offset
            .saturating_add(6)
            .min(n)
            .min(head.len())
            .min(slot_size);
        if let Some(head) = head.get_mut(..seen) {
            self.sh.region.read_bytes(first, head);
        }
        let dest = route(
            &mut self.sh,
            lists,
            &mut self.addr_version,
            head.get(route_offset..seen).unwrap_or(&[]),
        )?;
        let direct = match (dest, speculated) {
            (Dest::Node(d), None) => self.sh.reachable(d),
            (Dest::Node(d), Some((spec, _))) => d == spec,
            (Dest::AllPeers, _) => false,
        };
        if !direct {
            // Another destination than the bytes sit for, or several:
            // copy the frame out and send it the ordinary way.
            let mut done = 0usize;
            for seg in runs(slot_pieces(lists.direct.as_slice(), n, slot_size)) {
                let end = done.saturating_add(seg.len);
                if let Some(dst) = bounce.get_mut(done..end) {
                    self.sh.region.read_bytes(seg.offset, dst);
                }
                done = end;
            }
            if let (Dest::Node(d), Backend::Rings(state)) = (dest, &mut self.backend) {
                state.last_dest = Some(d);
            }
            let frame = bounce.get(..n).unwrap_or(&[]);
            return send_taken(&mut self.sh, &mut self.backend, lists, dest, frame);
        }
        match (&mut self.backend, dest, speculated) {
            (Backend::Pool(state), Dest::Node(dest), _) => state
                .commit_direct(&mut self.sh, lists, dest, need, used, n)
                .map_err(SendError::widen)?,
            (Backend::Rings(state), _, Some((dest, tail))) => {
                state.commit_direct(&mut self.sh, dest, tail, used, n)
            }
            // `direct` is false for these: handled above.
            _ => {}
        }
        Ok(Some(n))
    }
}
