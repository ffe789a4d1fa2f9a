//! The endpoint through user space's handles: both configurations,
//! every path, misbehaving peers and crashes in one process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::{inspect, BufferConfig, Dest, LockError, MacAddr, NodeId, NodeState, BATCH, MAX_FRAME};

const CONFIGS: [BufferConfig; 2] = [BufferConfig::SharedPool, BufferConfig::PerPair];

/// A formatted region and `nodes` endpoints in `Run`.
fn lab(config: BufferConfig, nodes: usize, lease_ms: u32) -> (Arc<Region>, Vec<Endpoint>) {
    let len = 8 << 20;
    let region = Arc::new(Region::anonymous(len).unwrap());
    let mut g = Geometry::fit(config, len, nodes as u32, 2048).unwrap();
    g.lease_ms = lease_ms;
    format(&region, &g).unwrap();
    let eps = (0..nodes)
        .map(|n| {
            let mut ep = Endpoint::attach(region.clone(), n, MacAddr::for_node(n)).unwrap();
            ep.set_state(NodeState::Run).unwrap();
            ep
        })
        .collect();
    (region, eps)
}

fn frame(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

fn drain(ep: &mut Endpoint) -> Vec<(Option<NodeId>, Vec<u8>)> {
    let mut out = Vec::new();
    while ep
        .recv(BATCH, |f| out.push((f.source(), f.to_vec())))
        .unwrap()
        > 0
    {}
    out
}

fn assert_all_slots_home(region: &Region) {
    let report = inspect(region).unwrap();
    assert_eq!(report.pool.free, report.pool.slots, "{:#?}", report.nodes);
    assert!(!report.lock.held);
}

/// `fill` for `send_direct` that copies `bytes` into the iovecs, as
/// `readv` from a TAP would, truncating like the kernel.
fn readv_of(bytes: &[u8]) -> impl FnOnce(&IoSlots<'_>) -> std::io::Result<usize> + '_ {
    move |slots| {
        let mut done = 0;
        for v in slots.iovecs() {
            let n = v.iov_len.min(bytes.len() - done);
            // SAFETY: the iovec covers `iov_len` writable bytes of the
            // region; `n` is within it and within `bytes`.
            unsafe { std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), v.iov_base.cast(), n) };
            done += n;
        }
        Ok(done)
    }
}

/// A frame of `len` bytes after a 10-byte header, for `mac`.
fn addressed(len: usize, tag: u8, mac: MacAddr) -> Vec<u8> {
    let mut f = frame(len, tag);
    f[10..16].copy_from_slice(&mac.0);
    f
}

#[test]
fn direct_sends_arrive_intact_wherever_they_go() {
    for config in CONFIGS {
        let (region, mut eps) = lab(config, 3, 1000);
        let mut sent: Vec<(NodeId, Vec<u8>)> = Vec::new();
        // Unicast to 1, then to 2 (config 1: the speculated ring was
        // 1's), every size class, and a broadcast.
        for (i, &len) in [16, 60, 1500, 2048, 2049, 9000, MAX_FRAME]
            .iter()
            .enumerate()
        {
            for dest in [1, 2, 1] {
                let f = addressed(len, (i * 3 + dest) as u8, MacAddr::for_node(dest));
                let n = eps[0].send_direct(MAX_FRAME, 10, readv_of(&f)).unwrap();
                assert_eq!(n, Some(len));
                sent.push((dest, f));
            }
        }
        let bcast = addressed(100, 99, MacAddr([0xff; 6]));
        eps[0].send_direct(MAX_FRAME, 10, readv_of(&bcast)).unwrap();
        eps[0].flush().unwrap();
        for dest in [1, 2] {
            let got = drain(&mut eps[dest]);
            let mut want: Vec<Vec<u8>> = sent
                .iter()
                .filter(|(d, _)| *d == dest)
                .map(|(_, f)| f.clone())
                .collect();
            want.push(bcast.clone());
            assert_eq!(got.len(), want.len(), "{config:?} node {dest}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.0, &g.1), (Some(0), w), "{config:?} node {dest}");
            }
        }
        // No frame, a failing source: nothing sent, nothing lost.
        assert_eq!(eps[0].send_direct(MAX_FRAME, 10, |_| Ok(0)).unwrap(), None);
        let err = eps[0]
            .send_direct(MAX_FRAME, 10, |_| Err(std::io::ErrorKind::Other.into()))
            .unwrap_err();
        assert!(matches!(err, SendError::Source(_)), "{err}");
        eps[0].flush().unwrap();
        assert!(drain(&mut eps[1]).is_empty());
        for ep in &mut eps {
            ep.release_idle().unwrap();
        }
        if config == BufferConfig::SharedPool {
            assert_all_slots_home(&region);
        }
        let report = inspect(&region).unwrap();
        assert!(report.nodes.iter().all(|n| n.counters.protocol_errors == 0));
    }
}

#[test]
fn unicast_of_every_size_class_arrives_intact_and_in_order() {
    for config in CONFIGS {
        let (region, mut eps) = lab(config, 3, 1000);
        let sizes = [1, 14, 60, 1500, 2047, 2048, 2049, 9000, 40_000, MAX_FRAME];
        for (i, &len) in sizes.iter().enumerate() {
            eps[0].send(Dest::Node(1), &frame(len, i as u8)).unwrap();
        }
        let report = eps[0].flush().unwrap();
        assert_eq!(report.deferred, 0);
        let got = drain(&mut eps[1]);
        assert_eq!(got.len(), sizes.len(), "{config:?}");
        for (i, (src, bytes)) in got.iter().enumerate() {
            assert_eq!(*src, Some(0));
            assert_eq!(bytes, &frame(sizes[i], i as u8), "{config:?} frame {i}");
        }
        assert!(drain(&mut eps[2]).is_empty(), "node 2 got node 1's frames");
        assert_eq!(eps[1].counters().rx_frames, sizes.len() as u64);
        assert_eq!(
            eps[0].counters().tx_bytes,
            sizes.iter().sum::<usize>() as u64
        );
        for ep in eps {
            ep.detach().unwrap();
        }
        assert_all_slots_home(&region);
    }
}

#[test]
fn broadcast_reaches_every_running_peer_but_not_the_sender() {
    for config in CONFIGS {
        let (_region, mut eps) = lab(config, 4, 1000);
        eps[3].set_state(NodeState::Ready).unwrap();
        let bcast = [
            &[0xffu8; 6][..],
            &[2, 0, 0, 0, 0, 9],
            &[0x88, 0xb5],
            b"hello all",
        ]
        .concat();
        assert_eq!(eps[0].route(&bcast).unwrap(), Dest::AllPeers);
        eps[0].send(Dest::AllPeers, &bcast).unwrap();
        eps[0].flush().unwrap();
        assert!(
            drain(&mut eps[0]).is_empty(),
            "{config:?}: the sender got its own broadcast"
        );
        assert_eq!(drain(&mut eps[1]), vec![(Some(0), bcast.clone())]);
        assert_eq!(drain(&mut eps[2]), vec![(Some(0), bcast.clone())]);
        assert!(
            drain(&mut eps[3]).is_empty(),
            "{config:?}: a node not in Run got a frame"
        );
    }
}

#[test]
fn routes_by_destination_mac() {
    let (_region, mut eps) = lab(BufferConfig::SharedPool, 3, 1000);
    let to = |mac: MacAddr| [&mac.0[..], &MacAddr::for_node(0).0, &[0x08, 0x00]].concat();
    assert_eq!(
        eps[0].route(&to(MacAddr::for_node(2))).unwrap(),
        Dest::Node(2)
    );
    assert_eq!(
        eps[0].route(&to(MacAddr::for_node(1))).unwrap(),
        Dest::Node(1)
    );
    assert_eq!(
        eps[0]
            .route(&to("02:99:00:00:00:01".parse().unwrap()))
            .unwrap(),
        Dest::AllPeers
    );
    assert_eq!(
        eps[0]
            .route(&to("33:33:00:00:00:01".parse().unwrap()))
            .unwrap(),
        Dest::AllPeers
    );
    assert_eq!(
        eps[0].route(&[1, 2]).unwrap(),
        Dest::AllPeers,
        "a runt frame floods"
    );
    // A node that leaves takes its address with it.
    let leaving = eps.remove(2);
    leaving.detach().unwrap();
    assert_eq!(
        eps[0].route(&to(MacAddr::for_node(2))).unwrap(),
        Dest::AllPeers
    );
}

#[test]
fn bad_sends_are_refused_and_counted() {
    for config in CONFIGS {
        let (_region, mut eps) = lab(config, 3, 1000);
        eps[2].set_state(NodeState::Ready).unwrap();
        assert!(matches!(
            eps[0].send(Dest::Node(2), b"x"),
            Err(SendError::NoPeer(2))
        ));
        assert!(matches!(
            eps[0].send(Dest::Node(0), b"x"),
            Err(SendError::NoPeer(0))
        ));
        assert!(matches!(
            eps[0].send(Dest::Node(99), b"x"),
            Err(SendError::NoPeer(99))
        ));
        assert!(matches!(
            eps[0].send(Dest::Node(1), b""),
            Err(SendError::BadLength(0))
        ));
        let big = vec![0; MAX_FRAME + 1];
        assert!(matches!(
            eps[0].send(Dest::Node(1), &big),
            Err(SendError::BadLength(_))
        ));
        assert_eq!(eps[0].counters().tx_dropped, 5);
    }
}

#[test]
fn a_full_receiver_pushes_back_and_order_is_kept() {
    for config in CONFIGS {
        let (region, mut eps) = lab(config, 2, 1000);
        let mut sent = 0u32;
        let mut refused = 0;
        // Far more than any queue holds: 4 KiB frames.
        while sent < 5000 && refused < 3 {
            match eps[0].send(Dest::Node(1), &frame(4096, sent as u8)) {
                Ok(()) => sent += 1,
                Err(e) if e.is_backpressure() => {
                    refused += 1;
                    eps[0].flush().unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            refused > 0,
            "{config:?}: 5000 frames of 4 KiB never filled the receiver"
        );
        let mut got = 0u32;
        while got < sent {
            eps[0].flush().unwrap();
            let n = eps[1]
                .recv(BATCH, |f| {
                    assert_eq!(
                        f.to_vec(),
                        frame(4096, got as u8),
                        "{config:?}: frame {got} out of order"
                    );
                    got += 1;
                })
                .unwrap();
            assert!(
                n > 0 || got == sent,
                "{config:?}: stalled at {got} of {sent}"
            );
        }
        for ep in eps {
            ep.detach().unwrap();
        }
        assert_all_slots_home(&region);
    }
}

#[test]
fn an_idle_node_gives_every_slot_back() {
    let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
    for i in 0..100 {
        eps[0].send(Dest::Node(1), &frame(3000, i)).unwrap();
    }
    eps[0].flush().unwrap();
    let mut got = 0;
    eps[1].recv(BATCH * 4, |_| got += 1).unwrap();
    eps[1].recv(BATCH * 4, |_| got += 1).unwrap();
    assert_eq!(got, 100);
    let report = inspect::inspect(&region).unwrap();
    assert!(report.pool.free < report.pool.slots, "caches hold slots");
    for ep in &mut eps {
        ep.release_idle().unwrap();
    }
    let report = inspect::inspect(&region).unwrap();
    assert_eq!(report.pool.free, report.pool.slots);
    assert!(report.nodes.iter().all(|n| n.slots_held == 0));
    // Nothing to give: no lock round, no change.
    eps[0].release_idle().unwrap();
    assert_eq!(eps[0].counters().protocol_errors, 0);
}

#[test]
fn detach_returns_every_slot_even_with_frames_queued() {
    for config in CONFIGS {
        let (region, mut eps) = lab(config, 3, 1000);
        for i in 0..20 {
            eps[0].send(Dest::Node(1), &frame(3000, i)).unwrap();
            eps[2].send(Dest::Node(1), &frame(100, i)).unwrap();
        }
        eps[0].flush().unwrap();
        eps[2].flush().unwrap();
        // Node 1 received half and leaves with the rest queued.
        eps[1].recv(10, |_| {}).unwrap();
        for ep in eps {
            ep.detach().unwrap();
        }
        assert_all_slots_home(&region);
    }
}

#[test]
fn a_dead_peers_buffers_are_reclaimed_after_the_lease() {
    let (region, mut eps) = lab(BufferConfig::SharedPool, 3, 50);
    for i in 0..10 {
        eps[0].send(Dest::Node(2), &frame(5000, i)).unwrap();
    }
    eps[0].flush().unwrap();
    eps[2].recv(3, |_| {}).unwrap();
    // Node 2 dies: no detach, no more heartbeats.
    let dead = eps.pop().unwrap();
    std::mem::forget(dead);
    let held = inspect(&region).unwrap().nodes[2].slots_held
        + inspect(&region).unwrap().nodes[2].slots_queued;
    assert!(held > 0);
    let start = Instant::now();
    while inspect(&region).unwrap().nodes[2].state != Some(NodeState::Reset) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "node 2 never reaped"
        );
        for ep in &mut eps {
            ep.tick().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        start.elapsed() >= Duration::from_millis(50),
        "reaped before the lease ran out"
    );
    let report = inspect(&region).unwrap();
    assert_eq!(
        (report.nodes[2].slots_held, report.nodes[2].slots_queued),
        (0, 0)
    );
    assert!(matches!(
        eps[0].send(Dest::Node(2), b"x"),
        Err(SendError::NoPeer(2))
    ));
    assert_eq!(eps.iter().map(|e| e.counters().recoveries).sum::<u64>(), 1);
    for ep in eps {
        ep.detach().unwrap();
    }
    assert_all_slots_home(&region);
}

#[test]
fn a_restarted_node_reattaches_but_a_live_one_is_busy() {
    let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 50);
    // Node 1 crashes holding slots, then comes back with the same id.
    eps[0]
        .send(Dest::Node(1), b"queued for the old node 1")
        .unwrap();
    eps[0].flush().unwrap();
    std::mem::forget(eps.pop().unwrap());
    let mut node1 = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1)).unwrap();
    node1.set_state(NodeState::Run).unwrap();
    assert!(
        drain(&mut node1).is_empty(),
        "the new incarnation got the old one's frames"
    );
    eps[0].send(Dest::Node(1), b"fresh").unwrap();
    eps[0].flush().unwrap();
    assert_eq!(drain(&mut node1), vec![(Some(0), b"fresh".to_vec())]);

    // While node 1 keeps beating, nobody else may attach as node 1.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                node1.tick().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            node1
        })
    };
    let busy = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1));
    assert!(matches!(busy, Err(EndpointError::NodeBusy(1))), "{busy:?}");
    stop.store(true, Ordering::Relaxed);
    beating.join().unwrap().detach().unwrap();
    // Node 0 did not tick during those two leases, so node 1 rightly
    // declared it dead and reclaimed its buffers.
    let node0 = eps.pop().unwrap();
    assert!(matches!(
        node0.detach(),
        Err(EndpointError::Lock(LockError::Fenced))
    ));
    assert_all_slots_home(&region);
}

#[test]
fn a_fenced_node_is_told_to_attach_again() {
    let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 50);
    // Node 1 "pauses" (no ticks) long enough to be declared dead.
    let start = Instant::now();
    while inspect(&region).unwrap().nodes[1].state == Some(NodeState::Run) {
        assert!(start.elapsed() < Duration::from_secs(5));
        eps[0].tick().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut node1 = eps.pop().unwrap();
    assert!(matches!(
        node1.tick(),
        Err(EndpointError::Lock(LockError::Fenced))
    ));
    assert!(matches!(
        node1.flush(),
        Err(EndpointError::Lock(LockError::Fenced))
    ));
    assert!(matches!(
        node1.send(Dest::Node(0), b"x"),
        Err(SendError::Endpoint(_))
    ));
    let mut node1 = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1)).unwrap();
    node1.set_state(NodeState::Run).unwrap();
    node1.send(Dest::Node(0), b"back").unwrap();
    node1.flush().unwrap();
    assert_eq!(drain(&mut eps[0]), vec![(Some(1), b"back".to_vec())]);
}

#[test]
fn what_a_node_finds_wrong_after_it_was_declared_dead_is_not_counted() {
    // Configuration 1 receives without the lock, so a node declared dead
    // (its guest not scheduled for a lease, under TCG) can go on reading
    // its rings before it learns of it.
    let (region, mut eps) = lab(BufferConfig::PerPair, 2, 50);
    let start = Instant::now();
    while inspect(&region).unwrap().nodes[1].state == Some(NodeState::Run) {
        assert!(start.elapsed() < Duration::from_secs(5));
        eps[0].tick().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    // What it finds there is not what it left (here: a tail impossibly
    // far ahead).
    let ring = eps[0].layout().ring(0, 1);
    let tail = region.load_u32(ring, Ordering::Relaxed);
    region.store_u32(ring, tail.wrapping_add(1 << 30), Ordering::Relaxed);
    let mut node1 = eps.pop().unwrap();
    let got = node1.recv(8, |_| {});
    assert!(
        matches!(got, Ok(0) | Err(EndpointError::Lock(LockError::Fenced))),
        "{got:?}"
    );
    assert_eq!(
        node1.counters().protocol_errors,
        0,
        "counted: {:?}",
        node1.last_error()
    );
    assert!(matches!(
        node1.tick(),
        Err(EndpointError::Lock(LockError::Fenced))
    ));
}

#[test]
fn a_violation_found_mid_flush_leaks_no_slot() {
    let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
    for i in 0..5 {
        eps[0].send(Dest::Node(1), &frame(3000, i)).unwrap();
    }
    // A rogue sets node 1's queue indices impossibly far apart.
    let layout = *eps[0].layout();
    let queue1 = layout.queues + layout.queue_stride;
    region.store_u32(queue1, 7, Ordering::Relaxed);
    region.store_u32(queue1 + 64, 7 + 100_000, Ordering::Relaxed);
    eps[0].flush().unwrap();
    assert!(eps[0].counters().protocol_errors > 0);
    assert_eq!(eps[0].counters().tx_dropped, 5);
    // The repaired queue works again.
    eps[0].send(Dest::Node(1), b"after").unwrap();
    eps[0].flush().unwrap();
    assert_eq!(drain(&mut eps[1]), vec![(Some(0), b"after".to_vec())]);
    for ep in eps {
        ep.detach().unwrap();
    }
    assert_all_slots_home(&region);
}

#[test]
fn the_lock_is_taken_once_per_batch_not_per_frame() {
    let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
    let tickets = || crate::inspect(&region).unwrap().lock.next_ticket;
    let before = tickets();
    let frames = 20 * BATCH;
    for i in 0..frames {
        eps[0].send(Dest::Node(1), &frame(64, i as u8)).unwrap();
        if i % BATCH == BATCH - 1 {
            let mut got = 0;
            eps[1].recv(BATCH, |_| got += 1).unwrap();
        }
    }
    eps[0].flush().unwrap();
    while eps[1].recv(BATCH, |_| {}).unwrap() > 0 {}
    let rounds = tickets().wrapping_sub(before) as usize;
    // One round per batch on each side, plus cache refills.
    assert!(
        rounds <= 3 * frames / BATCH,
        "{rounds} lock rounds for {frames} frames"
    );
    assert_eq!(eps[1].counters().rx_frames, frames as u64);
}

#[test]
fn doorbell_peer_ids_are_published_and_forgotten_on_reattach() {
    let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
    assert_eq!(eps[0].doorbell_peer(1), None);
    eps[1].set_doorbell_peer(Some(7));
    assert_eq!(eps[0].doorbell_peer(1), Some(7));
    assert_eq!(eps[0].doorbell_peer(99), None, "out-of-range node");
    // The guest restarts: its new incarnation has no doorbell until it
    // reads its new ivshmem id and publishes it.
    eps.pop().unwrap().detach().unwrap();
    let again = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1)).unwrap();
    assert_eq!(eps[0].doorbell_peer(1), None);
    again.set_doorbell_peer(Some(9));
    assert_eq!(eps[0].doorbell_peer(1), Some(9));
    assert_eq!(inspect(&region).unwrap().nodes[1].doorbell_peer, Some(9));
}

#[test]
fn a_reformat_is_noticed() {
    let (region, mut eps) = lab(BufferConfig::PerPair, 2, 1000);
    let g = *eps[0].layout();
    format(&region, &g.geometry).unwrap();
    assert!(matches!(eps[0].tick(), Err(EndpointError::Reformatted)));
}

#[test]
fn doorbells_only_for_sleeping_receivers() {
    for config in CONFIGS {
        let (_region, mut eps) = lab(config, 3, 1000);
        eps[0].send(Dest::Node(1), b"a").unwrap();
        eps[0].send(Dest::Node(2), b"b").unwrap();
        assert_eq!(eps[0].flush().unwrap().wake, 0, "{config:?}: nobody sleeps");
        eps[2].set_sleeping(true);
        eps[0].send(Dest::Node(1), b"a").unwrap();
        eps[0].send(Dest::Node(2), b"b").unwrap();
        assert_eq!(eps[0].flush().unwrap().wake, 0b100, "{config:?}");
        assert_eq!(
            eps[0].flush().unwrap().wake,
            0,
            "{config:?}: nothing new, no doorbell"
        );
        assert!(eps[2].pending());
    }
}

#[test]
fn a_batch_that_flushed_itself_still_rings_its_sleeping_receiver() {
    // A full batch flushes in the middle of `send`; the caller's flush
    // after it publishes nothing new but must still say whom to ring, or
    // a receiver that went to sleep before the batch sleeps on with
    // frames waiting (seen as stalls of a kernel node in mixed labs).
    for config in CONFIGS {
        let (_region, mut eps) = lab(config, 2, 1000);
        eps[1].set_sleeping(true);
        for i in 0..BATCH {
            eps[0].send(Dest::Node(1), &frame(60, i as u8)).unwrap();
        }
        assert!(eps[1].pending(), "{config:?}: the batch is published");
        assert_eq!(eps[0].flush().unwrap().wake, 0b10, "{config:?}");
        assert_eq!(eps[0].flush().unwrap().wake, 0, "{config:?}: rung once");
        assert_eq!(drain(&mut eps[1]).len(), BATCH, "{config:?}");
        // The same through direct sends (a batch, and in configuration 2
        // a cache that runs dry, flush by themselves).
        eps[1].set_sleeping(true);
        for i in 0..BATCH {
            let f = addressed(60, i as u8, MacAddr::for_node(1));
            eps[0].send_direct(MAX_FRAME, 10, readv_of(&f)).unwrap();
        }
        assert!(
            eps[1].pending(),
            "{config:?}: the direct batch is published"
        );
        assert_eq!(eps[0].flush().unwrap().wake, 0b10, "{config:?}: direct");
        assert_eq!(drain(&mut eps[1]).len(), BATCH, "{config:?}");
    }
}

/// The drivers' shared lifecycle on real endpoints: the carrier follows
/// the peers, a dead peer's recovery is said, an idle node's cache goes
/// back after [`crate::lifecycle::GIVE_BACK_AFTER`] and not while busy.
#[test]
fn the_lifecycle_says_carrier_recoveries_and_gives_an_idle_cache_back() {
    use crate::lifecycle::{Event, Lifecycle, GIVE_BACK_AFTER};
    let (region, mut eps) = lab(BufferConfig::SharedPool, 3, 50);
    let mut life = Lifecycle::new(eps[0].now());
    life.attached(eps[0].now());
    let mut events = Vec::new();
    let now = eps[0].now();
    life.tick(&mut eps[0], now, |e| events.push(e)).unwrap();
    assert_eq!(events, [Event::Carrier(true)], "peers run");
    // Slots cached by a sender that was busy just now stay with it.
    for i in 0..20 {
        eps[0].send(Dest::Node(1), &frame(3000, i)).unwrap();
    }
    eps[0].flush().unwrap();
    drain(&mut eps[1]);
    life.busy(eps[0].now());
    events.clear();
    let now = eps[0].now();
    life.tick(&mut eps[0], now, |e| events.push(e)).unwrap();
    assert!(events.is_empty(), "{events:?}");
    let held = |region: &Region| inspect(region).unwrap().nodes[0].slots_held;
    assert!(held(&region) > 0, "a busy node keeps its cache");
    // Idle long enough: given back.
    std::thread::sleep(GIVE_BACK_AFTER);
    let now = eps[0].now();
    life.tick(&mut eps[0], now, |e| events.push(e)).unwrap();
    assert_eq!(held(&region), 0, "an idle node gives its cache back");
    // Node 2 dies; node 1 stops: recovered, then the carrier follows.
    std::mem::forget(eps.pop().unwrap());
    let start = Instant::now();
    while !events
        .iter()
        .any(|e| matches!(e, Event::Recovered { new: 1, total: 1 }))
    {
        assert!(start.elapsed() < Duration::from_secs(5), "{events:?}");
        std::thread::sleep(Duration::from_millis(5));
        // Node 0 looks first in each round: it is the one to recover.
        let now = eps[0].now();
        life.tick(&mut eps[0], now, |e| events.push(e)).unwrap();
        eps[1].tick().unwrap();
    }
    eps.pop().unwrap().detach().unwrap();
    events.clear();
    let now = eps[0].now();
    life.tick(&mut eps[0], now, |e| events.push(e)).unwrap();
    assert_eq!(events, [Event::Carrier(false)], "no peer runs");
    assert!(!life.carrier());
}
