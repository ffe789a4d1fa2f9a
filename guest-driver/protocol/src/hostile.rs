//! Hostile peers for tests and fuzzing: arbitrary bytes written into a live
//! region while honest endpoints keep working.
//!
//! [`Scribbles::decode`] turns arbitrary input into writes aimed at one
//! section each (header, node table, lock, address table, buffer
//! management, slots), so a fuzzer reaches every parser instead of mostly
//! hitting payload bytes. [`run_hostile`] and [`attach_hostile`] are the
//! harnesses: they must never panic, hang, or touch memory outside the region;
//! errors are fine.

use std::sync::Arc;

use crate::layout::{Layout, HEADER_LEN};
use crate::{format, BufferConfig, Dest, Endpoint, Geometry, MacAddr, NodeState, Region};

/// One write of a rogue peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scribble {
    /// Byte offset in the region.
    pub offset: usize,
    /// Bytes written there.
    pub bytes: Vec<u8>,
}

/// Writes decoded from arbitrary input.
#[derive(Clone, Debug, Default)]
pub struct Scribbles(pub Vec<Scribble>);

impl Scribbles {
    /// Each write is `[section, offset u32 LE, len, bytes...]`; the offset is
    /// taken modulo the chosen section of `layout`.
    pub fn decode(layout: &Layout, mut data: &[u8]) -> Self {
        let sections = [
            (0, HEADER_LEN),
            (layout.nodes, layout.lock - layout.nodes),
            (layout.lock, 64),
            (layout.addr, layout.pool - layout.addr),
            (
                layout.pool,
                layout.descs.max(layout.pool + 64) - layout.pool,
            ),
            (
                layout.descs,
                layout.queues.saturating_sub(layout.descs).max(64),
            ),
            (
                layout.queues,
                layout.slots.saturating_sub(layout.queues).max(64),
            ),
            (
                layout.slots,
                layout.total.saturating_sub(layout.slots).max(64),
            ),
        ];
        let mut out = Vec::new();
        while data.len() >= 6 && out.len() < 64 {
            let (start, size) = sections[data[0] as usize % sections.len()];
            let offset =
                start + u32::from_le_bytes([data[1], data[2], data[3], data[4]]) as usize % size;
            let len = (data[5] as usize % 16).min(data.len() - 6);
            let bytes = data[6..6 + len].to_vec();
            data = &data[6 + len..];
            if offset + bytes.len() <= layout.total {
                out.push(Scribble { offset, bytes });
            }
        }
        Scribbles(out)
    }

    /// Applies the writes to `region`.
    pub fn apply(&self, region: &Region) {
        for s in &self.0 {
            region.write_bytes(s.offset, &s.bytes);
        }
    }
}

const NODES: usize = 3;
/// Short lease so recovery from scribbled lock words is quick.
const LEASE_MS: u32 = 10;

/// A small formatted region with every node in `Run`.
fn lab(config: BufferConfig) -> (Arc<Region>, Vec<Endpoint>) {
    let len = 4 << 20;
    let region = Arc::new(Region::anonymous(len).expect("anonymous mapping"));
    let mut geometry = Geometry::fit(config, len, NODES as u32 + 1, 2048).expect("geometry fits");
    geometry.lease_ms = LEASE_MS;
    format(&region, &geometry).expect("format");
    let endpoints = (0..NODES)
        .map(|n| {
            let mut ep = Endpoint::attach(region.clone(), n, MacAddr::for_node(n)).expect("attach");
            ep.set_state(NodeState::Run).expect("run");
            ep
        })
        .collect();
    (region, endpoints)
}

/// Honest traffic among `endpoints`; endpoints that fail are dropped.
fn traffic(endpoints: &mut Vec<Endpoint>, rounds: usize) {
    let mut buf = vec![0u8; crate::MAX_FRAME];
    for round in 0..rounds {
        endpoints.retain_mut(|ep| {
            let me = ep.id();
            let frame: Vec<u8> = (0..(round * 997 + me * 131) % 5000 + 1)
                .map(|i| i as u8)
                .collect();
            ep.tick().is_ok()
                && ep
                    .recv(16, |f| {
                        let n = f.copy_to(&mut buf);
                        assert!(n <= f.len());
                    })
                    .is_ok()
                && ep.route(&frame).is_ok()
                && !matches!(
                    ep.send(Dest::Node((me + 1) % NODES), &frame),
                    Err(crate::SendError::Endpoint(_))
                )
                && !matches!(
                    ep.send(Dest::AllPeers, &frame[..frame.len().min(64)]),
                    Err(crate::SendError::Endpoint(_))
                )
                && ep.flush().is_ok()
        });
    }
}

/// Runs honest traffic, lets a rogue scribble `data` over the region, then
/// runs more traffic and attaches one more node. Nothing may panic.
pub fn run_hostile(config: BufferConfig, data: &[u8]) {
    let (region, mut endpoints) = lab(config);
    traffic(&mut endpoints, 3);
    let layout = *endpoints[0].layout();
    Scribbles::decode(&layout, data).apply(&region);
    traffic(&mut endpoints, 4);
    // The attach path on the damaged region.
    if let Ok(mut late) = Endpoint::attach(region.clone(), NODES, MacAddr::for_node(NODES)) {
        let _ = late.set_state(NodeState::Run);
        endpoints.push(late);
        traffic(&mut endpoints, 2);
    }
    let _ = crate::inspect(&region);
    for ep in endpoints {
        let _ = ep.detach();
    }
}

/// Attaches to a damaged region. `data[0]` picks the case: bit 0 raw
/// bytes over the header, node table and lock (almost always refused by
/// the checksum), otherwise a valid region (bit 1: config 1) whose header,
/// node table or lock a rogue edited, re-sealing the checksum when bit 2 is
/// set. Attach must refuse, or work; nothing may panic.
pub fn attach_hostile(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let region = if mode & 1 == 1 {
        let region = Arc::new(Region::anonymous(4 << 20).expect("anonymous mapping"));
        region.write_bytes(0, &rest[..rest.len().min(region.len())]);
        region
    } else {
        let config = if mode & 2 == 0 {
            BufferConfig::SharedPool
        } else {
            BufferConfig::PerPair
        };
        let (region, endpoints) = lab(config);
        let layout = *endpoints[0].layout();
        drop(endpoints); // nodes 0..3 stay attached, silent: as if crashed
        let mut edits = Scribbles::decode(&layout, rest);
        // Aim at the header, node table and lock only.
        edits.0.retain(|s| s.offset < layout.addr);
        edits.apply(&region);
        if mode & 4 != 0 {
            crate::layout::reseal_header(&region);
        }
        region
    };
    if let Ok((layout, _)) = Layout::read(&region) {
        assert!(layout.total <= region.len());
    }
    let _ = crate::inspect(&region);
    // Attaching waits out a lease the header claims (up to 10 minutes) when
    // the node's entry looks alive, so only short-lease headers are tried.
    if Layout::read(&region).is_ok_and(|(l, _)| l.geometry.lease_ms <= 50) {
        for node in [NODES, 0] {
            if let Ok(mut ep) = Endpoint::attach(region.clone(), node, MacAddr::for_node(node)) {
                let _ = ep.set_state(NodeState::Run);
                let _ = ep.tick();
                let _ = ep.send(Dest::AllPeers, b"hello after attach");
                let _ = ep.flush();
                let _ = ep.detach();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_scribbles_stay_inside_the_layout() {
        let (_region, endpoints) = lab(BufferConfig::SharedPool);
        let layout = *endpoints[0].layout();
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let s = Scribbles::decode(&layout, &data);
        assert!(!s.0.is_empty());
        assert!(s.0.iter().all(|w| w.offset + w.bytes.len() <= layout.total));
    }

    #[test]
    fn targeted_damage_is_survived_and_counted() {
        for config in [BufferConfig::SharedPool, BufferConfig::PerPair] {
            let (region, mut endpoints) = lab(config);
            traffic(&mut endpoints, 2);
            let layout = *endpoints[0].layout();
            // Garbage over the control words and first entries of every
            // queue (config 2) or ring (config 1).
            let garbage: Vec<u8> = (0..256).map(|i| (i * 7 + 3) as u8).collect();
            let count = match config {
                BufferConfig::SharedPool => layout.geometry.max_nodes as usize,
                BufferConfig::PerPair => (layout.geometry.max_nodes as usize).pow(2),
            };
            for i in 0..count {
                region.write_bytes(layout.queues + i * layout.queue_stride, &garbage);
            }
            traffic(&mut endpoints, 3);
            let errors: u64 = endpoints.iter().map(|e| e.counters().protocol_errors).sum();
            assert!(errors > 0, "{config:?}: garbage went unnoticed");
        }
    }
}
