//! Property tests: the endpoint against a model of perfect delivery, and
//! hostile region contents against the receive and attach paths.

use std::collections::VecDeque;
use std::sync::Arc;

use proptest::prelude::*;
use vni_protocol::{
    format, inspect, BufferConfig, Dest, Endpoint, Geometry, MacAddr, NodeState, Region,
};
use vni_sim::hostile::{attach_hostile, run_hostile};

const NODES: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Send { from: usize, to: usize, len: usize },
    Broadcast { from: usize, len: usize },
    Flush { node: usize },
    Recv { node: usize, max: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    let len = prop_oneof![1..64usize, 64..2100usize, 2100..70_000usize]
        .prop_map(|l| l.min(vni_protocol::MAX_FRAME));
    prop_oneof![
        4 => (node.clone(), 1..NODES, len.clone()).prop_map(|(from, d, len)| Op::Send { from, to: (from + d) % NODES, len }),
        1 => (node.clone(), len.prop_map(|l| l.min(3000))).prop_map(|(from, len)| Op::Broadcast { from, len }),
        2 => node.clone().prop_map(|node| Op::Flush { node }),
        2 => (node, 1..100usize).prop_map(|(node, max)| Op::Recv { node, max }),
    ]
}

fn config() -> impl Strategy<Value = BufferConfig> {
    prop_oneof![Just(BufferConfig::SharedPool), Just(BufferConfig::PerPair)]
}

/// Frame `n` of the run: its first 8 bytes are `n`, the rest derive from it.
fn frame(n: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (n as usize * 131 + i * 7) as u8).collect();
    let id = n.to_le_bytes();
    let k = len.min(8);
    v[..k].copy_from_slice(&id[..k]);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever the interleaving of sends, flushes and receives, every
    /// receiver gets exactly the frames sent to it, intact, in per-sender
    /// order, and every slot comes back.
    #[test]
    fn delivery_matches_a_perfect_model(config in config(), ops in prop::collection::vec(op(), 1..120)) {
        let len = 16 << 20;
        let region = Arc::new(Region::anonymous(len).unwrap());
        format(&region, &Geometry::fit(config, len, NODES as u32, 2048).unwrap()).unwrap();
        let mut eps: Vec<Endpoint> = (0..NODES)
            .map(|n| {
                let mut ep = Endpoint::attach(region.clone(), n, MacAddr::for_node(n)).unwrap();
                ep.set_state(NodeState::Run).unwrap();
                ep
            })
            .collect();
        // expected[dst][src]: frames in flight from src to dst, in order.
        let mut expected = vec![vec![VecDeque::new(); NODES]; NODES];
        let mut next = 0u64;
        let check = |eps: &mut Vec<Endpoint>, node: usize, max: usize, expected: &mut Vec<Vec<VecDeque<Vec<u8>>>>| {
            let mut got = Vec::new();
            eps[node].recv(max, |f| got.push((f.source().unwrap(), f.to_vec()))).unwrap();
            for (src, bytes) in got {
                let want = expected[node][src].pop_front();
                prop_assert_eq!(Some(bytes), want, "node {} from {}", node, src);
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Send { from, to, len } => {
                    let f = frame(next, len);
                    next += 1;
                    eps[from].send(Dest::Node(to), &f).unwrap();
                    expected[to][from].push_back(f);
                }
                Op::Broadcast { from, len } => {
                    let f = frame(next, len);
                    next += 1;
                    eps[from].send(Dest::AllPeers, &f).unwrap();
                    for to in (0..NODES).filter(|&n| n != from) {
                        expected[to][from].push_back(f.clone());
                    }
                }
                Op::Flush { node } => {
                    prop_assert_eq!(eps[node].flush().unwrap().deferred, 0);
                }
                Op::Recv { node, max } => check(&mut eps, node, max, &mut expected)?,
            }
        }
        for ep in &mut eps {
            ep.flush().unwrap();
        }
        for node in 0..NODES {
            check(&mut eps, node, usize::MAX, &mut expected)?;
            for (src, in_flight) in expected[node].iter().enumerate() {
                prop_assert!(in_flight.is_empty(), "node {} lost frames from {}", node, src);
            }
        }
        for ep in eps {
            ep.detach().unwrap();
        }
        let report = inspect(&region).unwrap();
        prop_assert_eq!(report.pool.free, report.pool.slots);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A rogue node's writes anywhere in the region never make an honest
    /// endpoint panic, hang or read outside the region.
    #[test]
    fn rogue_writes_are_survived(config in config(), data in prop::collection::vec(any::<u8>(), 0..1500)) {
        run_hostile(config, &data);
    }

    /// Arbitrary header and table bytes, and edits of a valid region's
    /// header, node table and lock (re-sealed or not), are refused or work.
    #[test]
    fn damaged_headers_are_refused_or_work(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        attach_hostile(&data);
    }
}

/// Valid headers with a few bytes changed: the checksum or the geometry
/// checks must catch every change that matters.
#[test]
fn bit_flips_in_a_valid_header_are_caught() {
    let region = Region::anonymous(1 << 20).unwrap();
    let geometry = Geometry::fit(BufferConfig::SharedPool, 1 << 20, 4, 2048).unwrap();
    format(&region, &geometry).unwrap();
    let mut header = [0u8; vni_protocol::HEADER_LEN];
    region.read_bytes(0, &mut header);
    let mut refused = 0;
    for byte in 0..header.len() {
        for bit in 0..8 {
            let mut h = header;
            h[byte] ^= 1 << bit;
            match vni_protocol::Layout::parse(&h, 1 << 20) {
                Err(_) => refused += 1,
                Ok((layout, _)) => {
                    // Only reserved bytes or the epoch may change unnoticed.
                    assert!(
                        (16..24).contains(&byte)
                            || (60..64).contains(&byte)
                            || (112..120).contains(&byte),
                        "byte {byte}"
                    );
                    assert_eq!(layout.geometry, geometry);
                }
            }
        }
    }
    assert!(refused > 900, "{refused}");
}
