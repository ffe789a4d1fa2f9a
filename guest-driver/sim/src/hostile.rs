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

use vni_core::layout::{Layout, HEADER_LEN, MAX_FRAME};
use vni_protocol::{format, BufferConfig, Dest, Endpoint, Geometry, MacAddr, NodeState, Region};

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
        let sections = sections(layout);
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

/// The region's sections as (start, size): header, node table, lock,
/// address table, free stack, descriptors, queues, slots.
fn sections(layout: &Layout) -> [(usize, usize); 8] {
    [
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
    ]
}

/// A rogue node (`vni-driver rogue`): attached like any node, it then
/// damages the region one step at a time, so that the honest nodes' every
/// check is exercised while they carry traffic: frames under its own name
/// whose slot chains loop, whose lengths run past the end, whose slot
/// indices are outside the pool; garbage in its own rings and queue
/// indices; random bytes over the header, the node table, the lock, the
/// address table and the buffer management. It takes no lock and honours
/// nothing. Honest nodes must keep running, count protocol errors, fence
/// it ([`vni_protocol::OFFENCE_LIMIT`]) and never read out of bounds.
#[derive(Debug)]
pub struct Rogue {
    region: Arc<Region>,
    layout: Layout,
    me: usize,
    rng: u64,
}

/// The kinds of damage a [`Rogue`] does, as [`Rogue::step`] names them.
pub const ROGUE_ATTACKS: [&str; 8] = [
    "looping chain",
    "length past the end",
    "slot outside the pool",
    "queue indices",
    "header bytes",
    "node table bytes",
    "lock and address bytes",
    "buffer management bytes",
];

impl Rogue {
    /// A rogue as node `me` of `region` (which must hold a valid header),
    /// its random choices seeded with `seed`.
    pub fn new(
        region: Arc<Region>,
        me: usize,
        seed: u64,
    ) -> Result<Self, vni_protocol::LayoutError> {
        let (layout, _) = Layout::read(&region)?;
        Ok(Rogue {
            region,
            layout,
            me,
            rng: seed | 1,
        })
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast, and reproducible from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Another node than the rogue, as a victim.
    fn victim(&mut self) -> usize {
        let nodes = self.layout.geometry.max_nodes as usize;
        (self.me + 1 + self.below(nodes - 1)) % nodes
    }

    /// Does one kind of damage, chosen at random (its index in
    /// [`ROGUE_ATTACKS`]); returns it.
    pub fn step(&mut self) -> usize {
        let attack = self.below(ROGUE_ATTACKS.len());
        self.attack(attack);
        attack
    }

    /// Does damage of kind `attack` (an index in [`ROGUE_ATTACKS`]).
    pub fn attack(&mut self, attack: usize) {
        match attack {
            0..=3 => self.bad_frame(attack),
            _ => {
                let sections = sections(&self.layout);
                let (start, size) = match attack {
                    4 => sections[0],
                    5 => sections[1],
                    6 => [sections[2], sections[3]][self.below(2)],
                    _ => sections[4 + self.below(3)],
                };
                let len = 1 + self.below(16);
                let offset = start + self.below(size);
                let bytes: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
                if offset + len <= self.layout.total {
                    self.region.write_bytes(offset, &bytes);
                }
            }
        }
    }

    /// Fences `victim` as its peers fence a dead node (state `Reset`,
    /// generation moved on): the victim attaches again.
    pub fn fence(&self, victim: usize) {
        let nodes = vni_core::nodes::NodeTable {
            region: &self.region,
            layout: &self.layout,
        };
        nodes.fence(victim, nodes.generation(victim));
    }

    /// A frame under the rogue's name that fails validation, queued for a
    /// victim at random.
    fn bad_frame(&mut self, attack: usize) {
        let victim = self.victim();
        self.bad_frame_to(victim, attack);
    }

    /// A frame under the rogue's name that fails validation (`attack` 0 to
    /// 3 in [`ROGUE_ATTACKS`]), queued for `victim`: in its queue
    /// (configuration 2) or in the rogue's ring to it (configuration 1).
    pub fn bad_frame_to(&mut self, victim: usize, attack: usize) {
        use std::sync::atomic::Ordering::{Relaxed, Release};
        use vni_core::layout::{
            DESC_LEN_WORD as D_LEN, DESC_META as D_META, DESC_NEXT as D_NEXT, DESC_OWNER as D_OWNER,
        };
        use vni_core::pool::{queued, Pool, NO_SLOT};
        let g = self.layout.geometry;
        // Random numbers first: the region is borrowed below.
        let slot = self.below(g.slot_count as usize) as u32;
        let (small, large) = (self.below(1000) as u32, self.below(1 << 20) as u32);
        let (region, layout) = (&*self.region, &self.layout);
        match g.config {
            BufferConfig::SharedPool => {
                let pool = Pool { region, layout };
                let sender = (self.me as u32) << 24;
                let (next, len, frame_len, entry) = match attack {
                    0 => (slot, g.slot_size, 2 * g.slot_size, slot),
                    1 => (NO_SLOT, g.slot_size + 1 + small, g.slot_size, slot),
                    2 => (NO_SLOT, 64, 64, g.slot_count + large),
                    _ => {
                        // Indices that say the queue holds more than it can.
                        let (head, _) = pool.queue_indices(victim);
                        let tail = head.wrapping_add(g.queue_capacity + 1 + small);
                        pool.publish_tail(victim, tail);
                        return;
                    }
                };
                region.store_u32(pool.desc(slot, D_OWNER), queued(victim), Relaxed);
                region.store_u32(pool.desc(slot, D_NEXT), next, Relaxed);
                region.store_u32(pool.desc(slot, D_LEN), len, Relaxed);
                region.store_u32(pool.desc(slot, D_META), sender | frame_len, Relaxed);
                let (_, tail) = pool.queue_indices(victim);
                region.store_u32(pool.entry_off(victim, tail), entry, Relaxed);
                pool.publish_tail(victim, tail.wrapping_add(1));
            }
            BufferConfig::PerPair => {
                let rings = vni_core::rings::Rings { region, layout };
                let tail = rings.tail(self.me, victim);
                let desc = rings.desc_off(self.me, victim, tail);
                let (len, span, publish) = match attack {
                    0 => (g.slot_size * 2, 1, 1),
                    1 => (MAX_FRAME as u32 + 1 + small, 2, 2),
                    2 => (64, 1 + large, 1),
                    _ => (64, 1, rings.capacity() + 1 + small),
                };
                region.store_u32(desc, len, Relaxed);
                region.store_u32(desc + 4, span, Release);
                rings.publish(self.me, victim, tail.wrapping_add(publish));
            }
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
    let mut buf = vec![0u8; vni_protocol::MAX_FRAME];
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
                    Err(vni_protocol::SendError::Endpoint(_))
                )
                && !matches!(
                    ep.send(Dest::AllPeers, &frame[..frame.len().min(64)]),
                    Err(vni_protocol::SendError::Endpoint(_))
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
    let _ = vni_protocol::inspect(&region);
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
            vni_core::layout::reseal_header(&region);
        }
        region
    };
    if let Ok((layout, _)) = Layout::read(&region) {
        assert!(layout.total <= region.len());
    }
    let _ = vni_protocol::inspect(&region);
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
    use vni_protocol::QUARANTINE_LEASES;

    /// One round of an honest node as the driver runs it: on any error
    /// it attaches again (after a fence, a scribbled generation, …).
    fn honest_round(ep: &mut Endpoint, to: usize, seq: u32) {
        let me = ep.id();
        let mut frame = vec![0u8; 60 + (seq as usize * 37) % 1400];
        frame[..6].copy_from_slice(&MacAddr::for_node(to).0);
        frame[6..12].copy_from_slice(&MacAddr::for_node(me).0);
        frame[12..16].copy_from_slice(&seq.to_le_bytes());
        let ok = ep.tick().is_ok()
            && ep.recv(64, |f| assert!(f.len() <= MAX_FRAME)).is_ok()
            && !matches!(
                ep.send(Dest::Node(to), &frame),
                Err(vni_protocol::SendError::Endpoint(_))
            )
            && ep.flush().is_ok();
        if !ok {
            let _ = ep.guard_header();
            if let Ok(mut again) = ep.reattach(MacAddr::for_node(me)) {
                if again.set_state(NodeState::Run).is_ok() {
                    *ep = again;
                }
            }
        }
    }

    /// The rogue as node `NODES` of `region`: attached and running under
    /// its own name, and the damage it does (seeded with `seed`).
    fn rogue_in(region: &Arc<Region>, seed: u64) -> (Endpoint, Rogue) {
        let mut ep = Endpoint::attach(region.clone(), NODES, MacAddr::for_node(NODES)).unwrap();
        ep.set_state(NodeState::Run).unwrap();
        (ep, Rogue::new(region.clone(), NODES, seed).unwrap())
    }

    #[test]
    fn a_rogue_sending_bad_frames_is_fenced_and_ignored() {
        for config in [BufferConfig::SharedPool, BufferConfig::PerPair] {
            let (region, mut honest) = lab(config);
            let rogue_id = NODES;
            let (mut rogue_ep, mut rogue) = rogue_in(&region, 42);
            let mut fenced = false;
            for round in 0..400u32 {
                // Frames under its own name that fail validation.
                rogue.attack(round as usize % 3);
                let _ = rogue_ep.tick();
                for ep in &mut honest {
                    let to = (ep.id() + 1) % NODES;
                    honest_round(ep, to, round);
                }
                fenced |= honest
                    .iter()
                    .any(|ep| ep.quarantined() & 1 << rogue_id != 0);
            }
            assert!(fenced, "{config:?}: nobody fenced the rogue");
            let errors: u64 = honest.iter().map(|e| e.counters().protocol_errors).sum();
            assert!(
                errors >= u64::from(vni_protocol::OFFENCE_LIMIT),
                "{config:?}"
            );
            // Fenced: its entry was reset and nothing goes to it.
            for ep in &honest {
                if ep.quarantined() & 1 << rogue_id != 0 {
                    assert_eq!(ep.running_peers() & 1 << rogue_id, 0);
                }
            }
            // Honest traffic still flows, and after it the pool is whole.
            let before: u64 = honest.iter().map(|e| e.counters().rx_frames).sum();
            for round in 0..50 {
                for ep in &mut honest {
                    let to = (ep.id() + 1) % NODES;
                    honest_round(ep, to, round);
                }
            }
            let after: u64 = honest.iter().map(|e| e.counters().rx_frames).sum();
            assert!(
                after > before + 50,
                "{config:?}: {before} -> {after} frames"
            );
        }
    }

    /// The generation of `ep`'s node as the region says.
    fn victim_generation(region: &Region, ep: &Endpoint) -> u32 {
        let nodes = vni_core::nodes::NodeTable {
            region,
            layout: ep.layout(),
        };
        nodes.generation(ep.id())
    }

    /// A rogue that fences its victim before the victim has blamed it
    /// [`vni_protocol::OFFENCE_LIMIT`] times is fenced all the same: the
    /// victim's count survives its re-attach.
    #[test]
    fn a_rogue_that_keeps_fencing_its_victim_is_still_fenced() {
        for config in [BufferConfig::SharedPool, BufferConfig::PerPair] {
            let (region, mut honest) = lab(config);
            let rogue_id = NODES;
            let (mut rogue_ep, mut rogue) = rogue_in(&region, 5);
            let victim = 0;
            let (mut incarnations, mut fenced_at) = (0, None);
            for round in 0..200u32 {
                // Two bad frames, then a fence: fewer than OFFENCE_LIMIT
                // errors in any one incarnation of the victim.
                if round % 3 == 2 {
                    rogue.fence(victim);
                } else {
                    rogue.bad_frame_to(victim, round as usize % 3);
                }
                let _ = rogue_ep.tick();
                let before = victim_generation(&region, &honest[victim]);
                for ep in &mut honest {
                    let to = (ep.id() + 1) % NODES;
                    honest_round(ep, to, round);
                }
                if victim_generation(&region, &honest[victim]) != before {
                    incarnations += 1;
                }
                if honest[victim].quarantined() & 1 << rogue_id != 0 {
                    fenced_at = Some(round);
                    break;
                }
            }
            let round = fenced_at.unwrap_or_else(|| {
                panic!("{config:?}: the victim never fenced the rogue ({incarnations} re-attaches)")
            });
            assert!(
                incarnations >= 2,
                "{config:?}: fenced after {round} rounds and only {incarnations} re-attaches"
            );
        }
    }

    #[test]
    fn honest_nodes_survive_every_kind_of_rogue_damage() {
        for config in [BufferConfig::SharedPool, BufferConfig::PerPair] {
            let (region, mut honest) = lab(config);
            let mut rogue = Rogue::new(region.clone(), NODES, 7).unwrap();
            let mut seen = [0u32; ROGUE_ATTACKS.len()];
            for round in 0..3000u32 {
                seen[rogue.step()] += 1;
                for ep in &mut honest {
                    let to = (ep.id() + 1) % NODES;
                    honest_round(ep, to, round);
                }
            }
            assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
            // The rogue stops: the header is whole again (restored by the
            // honest nodes), and once the quarantines end (scribbles in a
            // node's rings are blamed on it: a rogue can frame others for
            // a while) they exchange frames again.
            let before: u64 = honest.iter().map(|e| e.counters().rx_frames).sum();
            let quarantine = u64::from(LEASE_MS * vni_protocol::QUARANTINE_LEASES);
            let until =
                std::time::Instant::now() + std::time::Duration::from_millis(3 * quarantine);
            for round in 0.. {
                for ep in &mut honest {
                    let to = (ep.id() + 1) % NODES;
                    honest_round(ep, to, round);
                }
                if std::time::Instant::now() > until {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            assert!(
                Layout::read(&region).is_ok(),
                "{config:?}: header not restored"
            );
            let after: u64 = honest.iter().map(|e| e.counters().rx_frames).sum();
            assert!(
                after > before,
                "{config:?}: no traffic after the rogue stopped"
            );
        }
    }

    fn to_of(ep: &Endpoint) -> usize {
        (ep.id() + 1) % NODES
    }

    #[test]
    fn concurrent_honest_nodes_are_never_stuck_long_under_a_rogue() {
        for config in [BufferConfig::SharedPool, BufferConfig::PerPair] {
            let (region, honest) = lab(config);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let recovered = std::sync::atomic::AtomicUsize::new(0);
            let lease = std::time::Duration::from_millis(u64::from(LEASE_MS));
            let worst = std::thread::scope(|s| {
                let rogue = s.spawn(|| {
                    let mut rogue = Rogue::new(region.clone(), NODES, 3).unwrap();
                    let until = std::time::Instant::now() + lease * 300;
                    while std::time::Instant::now() < until {
                        rogue.step();
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                });
                let workers: Vec<_> = honest
                    .into_iter()
                    .map(|mut ep| {
                        let (stop, recovered) = (&stop, &recovered);
                        s.spawn(move || {
                            let mut worst = std::time::Duration::ZERO;
                            let mut round = 0;
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                let started = std::time::Instant::now();
                                let to = (ep.id() + 1) % NODES;
                                honest_round(&mut ep, to, round);
                                worst = worst.max(started.elapsed());
                                round += 1;
                            }
                            // The rogue stopped: frames flow again soon, to
                            // every node (each keeps sending until all got
                            // one).
                            let before = ep.counters().rx_frames;
                            let started = std::time::Instant::now();
                            let mut got = false;
                            while recovered.load(std::sync::atomic::Ordering::Relaxed) < NODES {
                                assert!(
                                    started.elapsed() < lease * (QUARANTINE_LEASES + 10),
                                    "node {} receives nothing after the rogue stopped",
                                    ep.id()
                                );
                                let to = to_of(&ep);
                                honest_round(&mut ep, to, round);
                                round += 1;
                                if !got && ep.counters().rx_frames > before {
                                    got = true;
                                    recovered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            worst
                        })
                    })
                    .collect();
                rogue.join().unwrap();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap())
                    .max()
                    .unwrap()
            });
            // Never a lock timeout (30 leases).
            assert!(worst < lease * 25, "{config:?}: one round took {worst:?}");
        }
    }

    #[test]
    fn a_node_attaches_again_from_its_own_copy_of_a_damaged_header() {
        let (region, eps) = lab(BufferConfig::SharedPool);
        region.write_bytes(0, &[0xEE; 16]);
        let me = MacAddr::for_node(0);
        assert!(
            Endpoint::attach(region.clone(), 0, me).is_err(),
            "a stranger is refused"
        );
        let mut again = eps[0].reattach(me).expect("its own copy");
        again.set_state(NodeState::Run).unwrap();
        // Its ticks put the header back after a quarter lease.
        again.tick().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(u64::from(LEASE_MS)));
        again.tick().unwrap();
        assert!(Layout::read(&region).is_ok());
    }

    #[test]
    fn a_scribbled_header_is_put_back_and_a_reformat_is_not() {
        let (region, mut eps) = lab(BufferConfig::SharedPool);
        let mut header = [0u8; HEADER_LEN];
        region.read_bytes(0, &mut header);
        region.write_bytes(40, &[0xAB; 8]);
        eps[0].tick().unwrap();
        // Left alone for a quarter lease (a formatter may be at work).
        let mut now = [0u8; HEADER_LEN];
        region.read_bytes(0, &mut now);
        assert_ne!(now, header);
        std::thread::sleep(std::time::Duration::from_millis(u64::from(LEASE_MS)));
        eps[0].tick().unwrap();
        region.read_bytes(0, &mut now);
        assert_eq!(now, header, "restored");
        assert!(eps[0].counters().protocol_errors > 0);
        // A real re-format (a valid header of a new epoch) ends the endpoint.
        let geometry = eps[0].layout().geometry;
        format(&region, &geometry).unwrap();
        assert!(matches!(
            eps[1].tick(),
            Err(vni_protocol::EndpointError::Reformatted)
        ));
    }

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
