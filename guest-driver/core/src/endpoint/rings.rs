//! The endpoint's paths in buffer configuration 1 (a ring per pair): no
//! lock on the data path; each ring has one producer (the sender owns its
//! tail) and one consumer (the receiver owns its head).

use core::ops::Deref;

use super::{
    bit, members, FlushReport, Lists, NodeId, Platform, ProtocolError, Region, RxFrame, SendError,
    Shared, Sink, BATCH, MAX_NODES,
};

/// Per-peer ring indices this node keeps.
#[derive(Debug)]
pub(super) struct RingState {
    /// Per destination: next entry to write, last tail published, last
    /// head seen.
    tails: [u32; MAX_NODES],
    published: [u32; MAX_NODES],
    heads_seen: [u32; MAX_NODES],
    /// Per source: next entry to read.
    heads: [u32; MAX_NODES],
    /// Destinations written to since the last publish.
    dirty: u64,
    /// The source the next receive starts with (round robin).
    next_source: usize,
    /// Where the last unicast frame went: `send_direct` fills that ring.
    pub(super) last_dest: Option<NodeId>,
}

impl Default for RingState {
    fn default() -> Self {
        RingState {
            tails: [0; MAX_NODES],
            published: [0; MAX_NODES],
            heads_seen: [0; MAX_NODES],
            heads: [0; MAX_NODES],
            dirty: 0,
            next_source: 0,
            last_dest: None,
        }
    }
}

/// `indices[node]`, 0 past the table (node ids are checked before).
fn at(indices: &[u32; MAX_NODES], node: NodeId) -> u32 {
    indices.get(node).copied().unwrap_or(0)
}

fn set(indices: &mut [u32; MAX_NODES], node: NodeId, value: u32) {
    if let Some(cell) = indices.get_mut(node) {
        *cell = value;
    }
}

impl RingState {
    /// With the lock held, at attach: drop what was queued for the old
    /// incarnation, and continue after what it wrote (unless its indices
    /// are corrupt).
    pub(super) fn join<M: Deref<Target = Region>, P: Platform>(&mut self, sh: &Shared<M, P>) {
        let (rings, me) = (sh.rings(), sh.me);
        for peer in (0..sh.nodes().count()).filter(|&p| p != me) {
            let head = rings.tail(peer, me);
            set(&mut self.heads, peer, head);
            rings.consume(peer, me, head);
            let (tail, head) = (rings.tail(me, peer), rings.head(me, peer));
            let tail = if tail.wrapping_sub(head) > rings.capacity() {
                head
            } else {
                tail
            };
            rings.publish(me, peer, tail);
            set(&mut self.tails, peer, tail);
            set(&mut self.published, peer, tail);
            set(&mut self.heads_seen, peer, head);
        }
    }

    /// At detach: frames still in our incoming rings will never be read.
    pub(super) fn leave<M: Deref<Target = Region>, P: Platform>(&self, sh: &Shared<M, P>) {
        let (rings, me) = (sh.rings(), sh.me);
        for src in (0..sh.nodes().count()).filter(|&src| src != me) {
            rings.consume(src, me, rings.tail(src, me));
        }
    }

    /// Writes `frame` into the ring to `dest` (reachable, checked by the
    /// caller).
    pub(super) fn stage<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        dest: NodeId,
        frame: &[u8],
    ) -> Result<(), SendError> {
        let (rings, me) = (sh.rings(), sh.me);
        let capacity = rings.capacity();
        let span = rings.span(frame.len());
        let tail = at(&self.tails, dest);
        let used = tail.wrapping_sub(at(&self.heads_seen, dest)).min(capacity);
        if capacity.saturating_sub(used) < span {
            let head = rings.head(me, dest);
            let used = tail.wrapping_sub(head);
            if used > capacity {
                sh.note(ProtocolError::QueueIndices {
                    node: dest,
                    head,
                    tail,
                    capacity,
                });
                return Err(SendError::QueueFull);
            }
            set(&mut self.heads_seen, dest, head);
            if capacity.saturating_sub(used) < span {
                return Err(SendError::QueueFull);
            }
        }
        rings.write(me, dest, tail, frame);
        self.commit(sh, dest, tail, span, frame.len());
        Ok(())
    }

    /// Counts the frame of `len` bytes written at `tail` of the ring to
    /// `dest` (`span` entries) for the next publish, and publishes a full
    /// batch.
    fn commit<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        dest: NodeId,
        tail: u32,
        span: u32,
        len: usize,
    ) {
        let tail = tail.wrapping_add(span);
        set(&mut self.tails, dest, tail);
        self.dirty |= bit(dest);
        sh.counters.add_sent(len);
        if tail.wrapping_sub(at(&self.published, dest)) >= BATCH as u32 {
            self.flush(sh);
        }
    }

    /// Publishes every ring written to since the last flush.
    pub(super) fn flush<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
    ) -> FlushReport {
        let (rings, me) = (sh.rings(), sh.me);
        let mut report = FlushReport::default();
        let dirty = core::mem::take(&mut self.dirty);
        for dest in members(dirty) {
            let tail = at(&self.tails, dest);
            rings.publish(me, dest, tail);
            let published = tail.wrapping_sub(at(&self.published, dest)) as usize;
            report.published = report.published.saturating_add(published);
            set(&mut self.published, dest, tail);
        }
        sh.unrung |= dirty;
        report
    }

    /// `send_direct`'s first half: the next `need` entries of the ring to
    /// the last unicast destination (or the first running peer), as
    /// offsets in `lists.direct`. `Ok(None)`: no peer to speculate on, or
    /// a ring too small for the frame; the frame goes through a buffer.
    pub(super) fn reserve_direct<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &Shared<M, P>,
        lists: &mut Lists,
        need: usize,
    ) -> Result<Option<(NodeId, u32)>, SendError> {
        let (rings, me) = (sh.rings(), sh.me);
        let running = sh.running_peers();
        let capacity = rings.capacity();
        let Ok(need) = u32::try_from(need) else {
            return Ok(None);
        };
        let speculated = self
            .last_dest
            .filter(|&d| running & bit(d) != 0)
            .or_else(|| members(running).next());
        let Some(dest) = speculated.filter(|_| need <= capacity) else {
            return Ok(None);
        };
        let tail = at(&self.tails, dest);
        let head = rings.head(me, dest);
        let used = tail.wrapping_sub(head);
        if used > capacity || capacity.saturating_sub(used) < need {
            return Err(SendError::QueueFull);
        }
        set(&mut self.heads_seen, dest, head);
        lists.direct.clear();
        for i in 0..need {
            lists
                .direct
                .push(rings.entry_data(me, dest, tail.wrapping_add(i)));
        }
        Ok(Some((dest, tail)))
    }

    /// `send_direct`'s second half: `used` entries from `tail` of the ring
    /// to `dest` hold a frame of `len` bytes.
    pub(super) fn commit_direct<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        dest: NodeId,
        tail: u32,
        used: usize,
        len: usize,
    ) {
        sh.rings().describe(sh.me, dest, tail, len);
        self.last_dest = Some(dest);
        let span = u32::try_from(used).unwrap_or(u32::MAX);
        self.commit(sh, dest, tail, span, len);
    }

    /// True when a ring to this node has frames.
    pub(super) fn pending<M: Deref<Target = Region>, P: Platform>(
        &self,
        sh: &Shared<M, P>,
    ) -> bool {
        let (rings, me) = (sh.rings(), sh.me);
        (0..sh.nodes().count()).any(|src| src != me && rings.tail(src, me) != at(&self.heads, src))
    }

    /// Receives up to `max` frames from the rings to this node, a source
    /// after the other, starting with another source each time.
    pub(super) fn recv<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        max: usize,
        deliver: &mut dyn FnMut(&RxFrame<'_>),
    ) -> usize {
        let me = sh.me;
        let peers = sh.nodes().count().max(1);
        let mut delivered = 0usize;
        for k in 0..peers {
            let src = self
                .next_source
                .wrapping_add(k)
                .checked_rem(peers)
                .unwrap_or(0);
            if src == me {
                continue;
            }
            let rings = sh.rings();
            let quarantined = sh.quarantined & bit(src) != 0;
            let mut head = at(&self.heads, src);
            let mut avail = match rings.available(src, me, head) {
                // A peer in quarantine: whatever it wrote is dropped.
                Ok(avail) if quarantined => {
                    sh.counters.rx_dropped =
                        sh.counters.rx_dropped.saturating_add(u64::from(avail > 0));
                    head = head.wrapping_add(avail);
                    0
                }
                Ok(avail) => avail,
                Err(error) => {
                    // Nothing in this ring can be trusted: skip to its tail.
                    // Only `src` writes it.
                    head = rings.tail(src, me);
                    sh.note(error);
                    sh.blame(Some(src));
                    0
                }
            };
            while avail > 0 && delivered < max {
                lists.segments.clear();
                let rings = sh.rings();
                match rings.read(src, me, head, avail, &mut lists.segments) {
                    Ok((len, span)) => {
                        deliver(&RxFrame::new(
                            &sh.region,
                            lists.segments.as_slice(),
                            len,
                            Some(src),
                        ));
                        sh.counters.add_received(len);
                        delivered = delivered.saturating_add(1);
                        head = head.wrapping_add(span);
                        avail = avail.saturating_sub(span);
                    }
                    Err(error) => {
                        sh.counters.rx_dropped = sh.counters.rx_dropped.saturating_add(1);
                        sh.note(error);
                        sh.blame(Some(src));
                        head = head.wrapping_add(avail);
                        avail = 0;
                    }
                }
            }
            if head != at(&self.heads, src) {
                set(&mut self.heads, src, head);
                sh.rings().consume(src, me, head);
            }
        }
        self.next_source = self
            .next_source
            .wrapping_add(1)
            .checked_rem(peers)
            .unwrap_or(0);
        delivered
    }
}
