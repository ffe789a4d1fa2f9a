//! Stress: real processes, one per node, mapping one region file; millions
//! of random-size frames (1 B to 64 KiB) in all, every byte and the order per
//! sender-receiver pair checked, and every slot back in the pool at the end.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use vni_protocol::{BufferConfig, Geometry};
use vni_sim::{self as sim, Pattern, Sizes, WorkerPlan};

/// Frames per run, spread over all pairs: 6 runs make 3 million frames.
const FRAMES_PER_RUN: u64 = 500_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// One run at a time: the runs are processes competing for 2 cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn stress(config: BufferConfig, nodes: usize) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pairs = (nodes * (nodes - 1)) as u64;
    let plan = WorkerPlan {
        region: Default::default(),
        node: 0,
        nodes,
        pattern: Pattern::AllToAll,
        sizes: Sizes::Mixed,
        frames_per_pair: FRAMES_PER_RUN / pairs,
        duration_ms: 0,
        seed: 0x5eed + nodes as u64,
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_vni-sim"));
    let report = sim::run(
        exe,
        config,
        64 << 20,
        Geometry::DEFAULT_SLOT_SIZE,
        &plan,
        RUN_TIMEOUT,
    )
    .unwrap();
    let problems = report.problems(&plan);
    assert!(
        problems.is_empty(),
        "config {config}, {nodes} nodes: {problems:#?}"
    );
    let received: u64 = report.workers.iter().map(|w| w.received).sum();
    assert_eq!(received, plan.frames_per_pair * pairs);
    let bytes: u64 = report.workers.iter().map(|w| w.received_bytes).sum();
    // Random sizes really spanned small and large frames.
    assert!(
        bytes / received > 2000,
        "mean frame {} bytes",
        bytes / received
    );
    eprintln!(
        "config {config}, {nodes} nodes: {received} frames, {:.2} GB, all slots home",
        bytes as f64 / 1e9
    );
}

#[test]
fn shared_pool_2_nodes() {
    stress(BufferConfig::SharedPool, 2);
}

#[test]
fn shared_pool_4_nodes() {
    stress(BufferConfig::SharedPool, 4);
}

#[test]
fn shared_pool_8_nodes() {
    stress(BufferConfig::SharedPool, 8);
}

#[test]
fn per_pair_rings_2_nodes() {
    stress(BufferConfig::PerPair, 2);
}

#[test]
fn per_pair_rings_4_nodes() {
    stress(BufferConfig::PerPair, 4);
}

#[test]
fn per_pair_rings_8_nodes() {
    stress(BufferConfig::PerPair, 8);
}
