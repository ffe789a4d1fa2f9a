//! Traffic among real processes sharing one region: the stress test, the
//! benchmark and the crash test all run through here.
//!
//! A coordinator formats a region file, starts one worker process per node
//! (the calling binary again, with the `worker` subcommand), waits for them
//! and audits the region afterwards. Frame contents and lengths are a pure
//! function of (seed, sender, receiver, sequence number), so a receiver
//! regenerates what it should have got and compares every byte, and per-pair
//! order is checked by the sequence numbers it expects, even for 1-byte
//! frames that have no room for a header.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use vni_protocol::{
    format, inspect, BufferConfig, Dest, Endpoint, Geometry, MacAddr, NodeState, Region,
    RegionReport, SendError,
};

/// Who sends to whom.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Pattern {
    /// Every node sends to every other node.
    AllToAll,
    /// Disjoint one-way pairs: node 2k sends to node 2k+1.
    Pairs,
}

impl Pattern {
    /// The nodes `node` sends to, among `nodes`.
    pub fn targets(self, node: usize, nodes: usize) -> Vec<usize> {
        match self {
            Pattern::AllToAll => (0..nodes).filter(|&n| n != node).collect(),
            Pattern::Pairs if node % 2 == 0 && node + 1 < nodes => vec![node + 1],
            Pattern::Pairs => vec![],
        }
    }

    /// The nodes that send to `node`.
    pub fn sources(self, node: usize, nodes: usize) -> Vec<usize> {
        (0..nodes)
            .filter(|&src| self.targets(src, nodes).contains(&node))
            .collect()
    }
}

/// Frame lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sizes {
    /// Every frame this long.
    Fixed(usize),
    /// Random from 1 byte to 64 KiB: half up to 1514 bytes, a quarter up to
    /// 9000, a quarter up to 65536 (mean about 10 KB).
    Mixed,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn frame_key(seed: u64, src: usize, dst: usize, seq: u64) -> u64 {
    splitmix(seed ^ splitmix((src as u64) << 48 | (dst as u64) << 32 ^ splitmix(seq)))
}

/// Length of frame `seq` from `src` to `dst`.
pub fn frame_len(sizes: Sizes, seed: u64, src: usize, dst: usize, seq: u64) -> usize {
    match sizes {
        Sizes::Fixed(len) => len,
        Sizes::Mixed => {
            let r = frame_key(seed ^ 0x5151, src, dst, seq);
            let max = match r & 3 {
                0 | 1 => 1514,
                2 => 9000,
                _ => vni_protocol::MAX_FRAME as u64,
            };
            1 + ((r >> 8) % max) as usize
        }
    }
}

/// Fills `buf` with the contents of frame `seq` from `src` to `dst`.
pub fn fill_frame(buf: &mut [u8], seed: u64, src: usize, dst: usize, seq: u64) {
    let mut x = frame_key(seed, src, dst, seq) | 1;
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&x.rotate_left(8).to_le_bytes()[..n]);
}

/// What one worker is to do.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WorkerPlan {
    /// The region file.
    pub region: PathBuf,
    /// This worker's node id.
    pub node: usize,
    /// Nodes taking part.
    pub nodes: usize,
    /// Who sends to whom.
    pub pattern: Pattern,
    /// Frame lengths.
    pub sizes: Sizes,
    /// Stress: frames per (sender, receiver) pair, all checked.
    /// Bench: 0, and `duration_ms` applies.
    pub frames_per_pair: u64,
    /// Bench: how long to send.
    pub duration_ms: u64,
    /// Seed of the frame contents.
    pub seed: u64,
}

/// What one worker reports (one JSON line on its stdout).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WorkerReport {
    /// Node id.
    pub node: usize,
    /// Frames handed over.
    pub sent: u64,
    /// Frames received (in the measured window, for the bench).
    pub received: u64,
    /// Bytes received (same window).
    pub received_bytes: u64,
    /// Frames whose bytes differed from what was sent.
    pub corrupt: u64,
    /// Frames out of order or from an unexpected sender.
    pub misordered: u64,
    /// Protocol violations the endpoint counted.
    pub protocol_errors: u64,
    /// Sends refused for backpressure (retried).
    pub backpressure: u64,
    /// Seconds from the start barrier to the end of the measured work.
    pub seconds: f64,
    /// First problem seen, if any.
    pub problem: Option<String>,
}

const BARRIER_TIMEOUT: Duration = Duration::from_secs(60);
const TICK_EVERY: Duration = Duration::from_millis(5);

/// Keeps a busy worker's endpoint ticking, and backs off while it is idle.
/// Reads the clock only every few iterations: on a VM the clock read costs
/// as much as moving a small frame.
struct Pacer {
    last_tick: Instant,
    calls: u32,
    idle: vni_protocol::Backoff,
}

impl Pacer {
    const CLOCK_EVERY: u32 = 16;

    fn new() -> Self {
        Pacer {
            last_tick: Instant::now(),
            calls: 0,
            idle: vni_protocol::Backoff::default(),
        }
    }

    /// Call once per loop iteration; `progress` says whether it did work.
    /// Returns the time when it read the clock.
    fn pace(&mut self, ep: &mut Endpoint, progress: bool) -> anyhow::Result<Option<Instant>> {
        self.calls = self.calls.wrapping_add(1);
        let mut now = None;
        if self.calls % Self::CLOCK_EVERY == 0 || !progress {
            let t = Instant::now();
            if t.duration_since(self.last_tick) >= TICK_EVERY {
                self.last_tick = t;
                ep.tick()?;
            }
            now = Some(t);
        }
        if progress {
            self.idle = vni_protocol::Backoff::default();
        } else {
            self.idle.wait();
        }
        Ok(now)
    }
}

/// Runs one worker to completion.
pub fn run_worker(plan: &WorkerPlan) -> anyhow::Result<WorkerReport> {
    let region = Arc::new(Region::open(&plan.region)?);
    let mut ep = Endpoint::attach(region, plan.node, MacAddr::for_node(plan.node))?;
    ep.set_state(NodeState::Run)?;
    let all: u64 = (0..plan.nodes)
        .filter(|&n| n != plan.node)
        .fold(0, |s, n| s | 1 << n);
    let barrier = Instant::now();
    while ep.running_peers() & all != all {
        if barrier.elapsed() > BARRIER_TIMEOUT {
            bail!(
                "node {}: peers never came up (running {:#b})",
                plan.node,
                ep.running_peers()
            );
        }
        ep.tick()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = if plan.frames_per_pair > 0 {
        stress_loop(&mut ep, plan)?
    } else {
        bench_loop(&mut ep, plan)?
    };
    // Wait for the others to finish receiving before leaving: a detached
    // node is no longer a peer to send to.
    let done_at = Instant::now();
    ep.set_state(NodeState::Ready)?;
    while ep.running_peers() & all != 0 && done_at.elapsed() < BARRIER_TIMEOUT {
        ep.recv(vni_protocol::BATCH, |_| {})?;
        ep.tick()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    let errors = ep.counters().protocol_errors;
    ep.detach()?;
    Ok(WorkerReport {
        protocol_errors: errors,
        ..report
    })
}

fn stress_loop(ep: &mut Endpoint, plan: &WorkerPlan) -> anyhow::Result<WorkerReport> {
    let me = plan.node;
    let targets = plan.pattern.targets(me, plan.nodes);
    let sources = plan.pattern.sources(me, plan.nodes);
    let mut next_seq = vec![0u64; plan.nodes];
    let mut expect_seq = vec![0u64; plan.nodes];
    let expected_total = plan.frames_per_pair * sources.len() as u64;
    let mut report = WorkerReport {
        node: me,
        ..Default::default()
    };
    let mut buf = vec![0u8; vni_protocol::MAX_FRAME];
    let mut want = vec![0u8; vni_protocol::MAX_FRAME];
    let start = Instant::now();
    let mut pacer = Pacer::new();
    let mut deferred = 0;
    let mut rr = 0;
    loop {
        let mut progress = false;
        let got = ep.recv(vni_protocol::BATCH, |frame| {
            let Some(src) = frame.source().filter(|s| sources.contains(s)) else {
                report.misordered += 1;
                report.problem.get_or_insert_with(|| {
                    format!("frame from unexpected sender {:?}", frame.source())
                });
                return;
            };
            let seq = expect_seq[src];
            expect_seq[src] += 1;
            report.received += 1;
            report.received_bytes += frame.len() as u64;
            let len = frame_len(plan.sizes, plan.seed, src, me, seq);
            if frame.len() != len {
                report.misordered += 1;
                report.problem.get_or_insert_with(|| {
                    format!(
                        "from {src}: frame {seq} has {} bytes, expected {len} (lost or reordered)",
                        frame.len()
                    )
                });
                return;
            }
            frame.copy_to(&mut buf[..len]);
            fill_frame(&mut want[..len], plan.seed, src, me, seq);
            if buf[..len] != want[..len] {
                report.corrupt += 1;
                report.problem.get_or_insert_with(|| {
                    format!("from {src}: frame {seq} ({len} bytes) is corrupt")
                });
            }
        })?;
        progress |= got > 0;

        let mut sent_now = 0;
        for k in 0..targets.len() {
            let dst = targets[(rr + k) % targets.len()];
            while next_seq[dst] < plan.frames_per_pair && sent_now < vni_protocol::BATCH {
                let seq = next_seq[dst];
                let len = frame_len(plan.sizes, plan.seed, me, dst, seq);
                fill_frame(&mut buf[..len], plan.seed, me, dst, seq);
                match ep.send(Dest::Node(dst), &buf[..len]) {
                    Ok(()) => {
                        next_seq[dst] += 1;
                        report.sent += 1;
                        sent_now += 1;
                    }
                    Err(e) if e.is_backpressure() => {
                        report.backpressure += 1;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        rr += 1;
        progress |= sent_now > 0;
        if sent_now > 0 || deferred > 0 {
            deferred = ep.flush()?.deferred;
        }

        let all_sent =
            targets.iter().all(|&d| next_seq[d] == plan.frames_per_pair) && deferred == 0;
        if all_sent && report.received >= expected_total {
            break;
        }
        if report.problem.is_some() && report.corrupt + report.misordered > 100 {
            break;
        }
        pacer.pace(ep, progress)?;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn bench_loop(ep: &mut Endpoint, plan: &WorkerPlan) -> anyhow::Result<WorkerReport> {
    let me = plan.node;
    let targets = plan.pattern.targets(me, plan.nodes);
    let len = match plan.sizes {
        Sizes::Fixed(len) => len,
        Sizes::Mixed => bail!("the benchmark uses fixed frame sizes"),
    };
    let mut frame = vec![0u8; len];
    fill_frame(&mut frame, plan.seed, me, 0, 0);
    let mut sink = vec![0u8; vni_protocol::MAX_FRAME];
    let mut report = WorkerReport {
        node: me,
        ..Default::default()
    };
    let duration = Duration::from_millis(plan.duration_ms);
    let start = Instant::now();
    let mut pacer = Pacer::new();
    'run: loop {
        let mut progress = false;
        let got = ep.recv(vni_protocol::BATCH, |f| {
            report.received_bytes += f.copy_to(&mut sink) as u64;
        })?;
        report.received += got as u64;
        progress |= got > 0;
        for &dst in &targets {
            for _ in 0..vni_protocol::BATCH {
                match ep.send(Dest::Node(dst), &frame) {
                    Ok(()) => report.sent += 1,
                    Err(e) if e.is_backpressure() => {
                        report.backpressure += 1;
                        break;
                    }
                    // The receiver finished its window first.
                    Err(SendError::NoPeer(_)) => break 'run,
                    Err(e) => return Err(e.into()),
                }
                progress = true;
            }
            ep.flush()?;
        }
        if pacer
            .pace(ep, progress)?
            .is_some_and(|now| now.duration_since(start) >= duration)
        {
            break;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A whole run: the region, the workers, and what the region looked like
/// after they all left.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    /// Each worker's report, by node.
    pub workers: Vec<WorkerReport>,
    /// The region after every worker detached.
    pub region_after: RegionReport,
}

impl RunReport {
    /// Every problem with the run: corrupt or misordered frames, frames
    /// lost, protocol errors, or slots not back in the pool.
    pub fn problems(&self, plan: &WorkerPlan) -> Vec<String> {
        let mut out = Vec::new();
        for w in &self.workers {
            if let Some(p) = &w.problem {
                out.push(format!("node {}: {p}", w.node));
            }
            if w.protocol_errors > 0 {
                out.push(format!(
                    "node {}: {} protocol errors",
                    w.node, w.protocol_errors
                ));
            }
            if plan.frames_per_pair > 0 {
                let want =
                    plan.frames_per_pair * plan.pattern.sources(w.node, plan.nodes).len() as u64;
                if w.received != want {
                    out.push(format!(
                        "node {}: received {} frames, expected {want}",
                        w.node, w.received
                    ));
                }
            }
        }
        let r = &self.region_after;
        if r.pool.free != r.pool.slots {
            out.push(format!(
                "{} of {} slots are not back in the pool",
                r.pool.slots - r.pool.free,
                r.pool.slots
            ));
        }
        for n in r
            .nodes
            .iter()
            .filter(|n| n.state != Some(NodeState::Reset) || n.queue_depth != 0)
        {
            out.push(format!(
                "node {} left in state {:?} with {} frames queued",
                n.id, n.state, n.queue_depth
            ));
        }
        if r.lock.held {
            out.push(format!("the lock is still held by {:?}", r.lock.holder));
        }
        out
    }
}

/// Kills the children when dropped, so no worker outlives a failed run.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes the region file when dropped.
struct RegionFile(PathBuf);

impl Drop for RegionFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh path for a region file in /dev/shm (or the temp dir).
pub fn region_path(tag: &str) -> PathBuf {
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let nonce =
        splitmix(Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id()));
    dir.join(format!("vni-{tag}-{}-{nonce:x}", std::process::id()))
}

/// Formats a region of `region_len` bytes with `slot_size`-byte slots for
/// `plan.nodes` nodes, runs one
/// `exe worker` per node, and audits the region after they leave.
pub fn run(
    exe: &Path,
    config: BufferConfig,
    region_len: usize,
    slot_size: u32,
    plan: &WorkerPlan,
    timeout: Duration,
) -> anyhow::Result<RunReport> {
    let path = region_path("sim");
    let _cleanup = RegionFile(path.clone());
    let region = Region::create(&path, region_len)?;
    let geometry = Geometry::fit(config, region_len, plan.nodes.max(2) as u32, slot_size)?;
    format(&region, &geometry)?;
    let mut workers = Workers(Vec::new());
    for node in 0..plan.nodes {
        let plan = WorkerPlan {
            region: path.clone(),
            node,
            ..plan.clone()
        };
        let child = Command::new(exe)
            .arg("worker")
            .arg(serde_json::to_string(&plan)?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start worker {}", exe.display()))?;
        workers.0.push(child);
    }
    let deadline = Instant::now() + timeout;
    let mut reports = Vec::new();
    for (node, child) in workers.0.iter_mut().enumerate() {
        loop {
            if let Some(status) = child.try_wait()? {
                let mut line = String::new();
                if let Some(out) = child.stdout.take() {
                    BufReader::new(out).read_line(&mut line)?;
                }
                if !status.success() {
                    bail!("worker {node} failed ({status}): {}", line.trim());
                }
                let report: WorkerReport = serde_json::from_str(line.trim())
                    .with_context(|| format!("worker {node} printed no report: {line:?}"))?;
                reports.push(report);
                break;
            }
            if Instant::now() > deadline {
                bail!("run timed out after {timeout:?} waiting for worker {node}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(RunReport {
        workers: reports,
        region_after: inspect(&region)?,
    })
}
