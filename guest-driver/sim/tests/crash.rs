//! A node process killed (SIGKILL) while it holds the region lock, with
//! buffer management half changed: the survivors recover after one lease,
//! traffic goes on, and no slot is lost.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vni_protocol::{
    format, inspect, BufferConfig, Dest, Endpoint, Geometry, MacAddr, NodeState, Region,
};

const LEASE: Duration = Duration::from_millis(300);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Kills the child and removes the region file however the test ends.
struct Cleanup {
    child: Option<Child>,
    path: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn attach_running(region: &Arc<Region>, node: usize) -> Endpoint {
    let mut ep = Endpoint::attach(region.clone(), node, MacAddr::for_node(node)).unwrap();
    ep.set_state(NodeState::Run).unwrap();
    ep
}

#[test]
fn killing_the_lock_holder_loses_no_slot() {
    let path = vni_sim::region_path("crash");
    let mut cleanup = Cleanup {
        child: None,
        path: path.clone(),
    };
    let len = 16 << 20;
    let region = Arc::new(Region::create(&path, len).unwrap());
    let mut geometry = Geometry::fit(BufferConfig::SharedPool, len, 3, 2048).unwrap();
    geometry.lease_ms = LEASE.as_millis() as u32;
    format(&region, &geometry).unwrap();
    let mut node0 = attach_running(&region, 0);
    let mut node1 = attach_running(&region, 1);

    // Node 2, another process, takes the lock, pops slots and half-enqueues
    // frames for node 0, then waits to be killed.
    let exe = Path::new(env!("CARGO_BIN_EXE_vni-sim"));
    let mut child = Command::new(exe)
        .args(["hold-lock", "--node", "2", "--dest", "0", "--region"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    cleanup.child = Some(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let started = Instant::now();
    let line = loop {
        node0.tick().unwrap();
        node1.tick().unwrap();
        if let Ok(line) = rx.try_recv() {
            break line;
        }
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "hold-lock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(line.trim(), "HOLDING");
    let before = inspect(&region).unwrap();
    assert!(
        before.lock.held && before.lock.holder.node == Some(2),
        "{:?}",
        before.lock
    );
    assert!(
        before.nodes[2].slots_held > 0,
        "node 2 should hold slots when it dies"
    );

    let mut child = cleanup.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();

    // Traffic between the survivors: the first flush waits out the lease,
    // recovers the lock and repairs the pool.
    let frames: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            (0..(i as usize * 97) % 9000 + 1)
                .map(|b| (b as u32 ^ i) as u8)
                .collect()
        })
        .collect();
    let mut received = Vec::new();
    for f in &frames {
        loop {
            match node0.send(Dest::Node(1), f) {
                Ok(()) => break,
                Err(e) if e.is_backpressure() => {
                    node0.flush().unwrap();
                    node1.recv(64, |r| received.push(r.to_vec())).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    node0.flush().unwrap();
    let recovered_after = killed.elapsed();
    while node1.recv(64, |r| received.push(r.to_vec())).unwrap() > 0 {}
    assert_eq!(
        received, frames,
        "frames lost or corrupted across the recovery"
    );
    assert!(
        recovered_after >= LEASE / 2,
        "recovered in {recovered_after:?}, before the lease"
    );
    assert!(
        recovered_after < LEASE * 20,
        "recovery took {recovered_after:?}"
    );

    let after = inspect(&region).unwrap();
    assert_eq!(after.lock.recoveries, 1);
    assert_eq!(
        after.nodes[2].state,
        Some(NodeState::Reset),
        "the dead node was not fenced"
    );
    assert_eq!(
        (after.nodes[2].slots_held, after.nodes[2].slots_queued),
        (0, 0)
    );
    // The half-done enqueue to node 0 was dropped, not delivered as garbage.
    let mut stray = 0;
    node0.recv(1000, |_| stray += 1).unwrap();
    assert_eq!(
        stray, 0,
        "half-enqueued frames of the dead node were delivered"
    );

    node0.detach().unwrap();
    node1.detach().unwrap();
    let end = inspect(&region).unwrap();
    assert_eq!(
        end.pool.free, end.pool.slots,
        "slots lost: {:#?}",
        end.nodes
    );
    assert!(!end.lock.held);
}
