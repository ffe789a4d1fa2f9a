//! The driver loop: frames from the TAP into the region, frames from the
//! region into the TAP, doorbells only where a receiver sleeps.
//!
//! One thread does everything, in rounds:
//!
//! 1. up to a batch of frames is read from the TAP by the kernel straight
//!    into slots (`readv` into the sender's cached slots, or into the ring
//!    of the last destination), routed (the address table says which node
//!    owns a destination MAC; group and unknown addresses go to every
//!    running peer, copied) and staged, then flushed; the flush names the
//!    receivers that said they sleep, and only those are rung
//!    (`peer << 16 | 0` to the ivshmem doorbell); when the pool or ring is
//!    full, frames wait in the TAP's queue;
//! 2. up to a batch of frames from the region is written to the TAP
//!    straight from the slots (`writev` with iovecs into the mapping);
//! 3. every few milliseconds, housekeeping: heartbeat, counters, dead
//!    peers' buffers, and the TAP's carrier (up while another node runs);
//!    after 100 ms without traffic, the slots the node caches go back to
//!    the pool.
//!
//! When a round moved nothing the node waits. With interrupt
//! notification it says it sleeps, checks its queue once more, and polls
//! the TAP and the doorbell eventfd. With polling it never sleeps in the
//! region's eyes (nobody rings it) and polls the TAP with a timeout that
//! grows from 50 µs to 1 ms while idle, so an idle node costs little CPU
//! and a busy one reacts within microseconds.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use vni_protocol::{members, Endpoint, EndpointError, LockError, MacAddr, NodeState, BATCH};

use crate::device::Ivshmem;
use crate::tap::{Tap, VNET_HDR_LEN};

pub use vni_protocol::Notification;

/// What the driver is told by the orchestrator.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id in the region.
    pub node: usize,
    /// Its MAC address.
    pub mac: MacAddr,
    /// MTU of the interface.
    pub mtu: u32,
    /// Addresses (CIDR) of the interface.
    pub addresses: Vec<String>,
    /// Interface name.
    pub interface: String,
    /// Interrupts or polling.
    pub notification: Notification,
    /// Time the loop's phases.
    pub profile: bool,
    /// How long after its last frame the loop keeps polling (yielding
    /// the CPU between rounds) before it sleeps.
    pub busy_poll: Duration,
}

/// Housekeeping period.
const TICK: Duration = Duration::from_millis(10);
/// Doorbell vector for "frames wait".
const RX_VECTOR: u16 = vni_protocol::RX_VECTOR;
/// Longest wait between polls in polling mode.
const POLL_MAX: Duration = Duration::from_millis(1);
const POLL_MIN: Duration = Duration::from_micros(50);
/// Idle time after which cached slots go back to the pool.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(100);

/// Where the loop's time went, per phase (only with `Config::profile`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Profile {
    /// Reading frames from the TAP into slots (including the readiness
    /// checks).
    pub tap_read: Duration,
    /// Publishing staged frames.
    pub flush: Duration,
    /// Ringing doorbells.
    pub ring: Duration,
    /// Taking frames from the region and writing them to the TAP.
    pub recv: Duration,
    /// Housekeeping.
    pub tick: Duration,
    /// Waiting (asleep or polling).
    pub wait: Duration,
    /// Rounds of the loop.
    pub rounds: u64,
    /// Waits.
    pub waits: u64,
}

impl Profile {
    /// The profile as JSON: milliseconds per phase, rounds and waits.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        serde_json::json!({
            "tap_read_ms": ms(self.tap_read),
            "flush_ms": ms(self.flush),
            "ring_ms": ms(self.ring),
            "recv_ms": ms(self.recv),
            "tick_ms": ms(self.tick),
            "wait_ms": ms(self.wait),
            "rounds": self.rounds,
            "waits": self.waits,
        })
    }
}

/// Times phases of the loop when profiling is on; costs nothing otherwise.
struct Stopwatch {
    on: bool,
    last: Instant,
}

impl Stopwatch {
    fn new(on: bool) -> Self {
        Self {
            on,
            last: Instant::now(),
        }
    }

    /// Adds the time since the previous lap to `into`.
    fn lap(&mut self, into: &mut Duration) {
        if self.on {
            let now = Instant::now();
            *into += now - self.last;
            self.last = now;
        }
    }

    /// Counts a wait (asleep, polling or yielding) and laps its time.
    fn waited(&mut self, profile: &mut Profile) {
        profile.waits += 1;
        self.lap(&mut profile.wait);
    }
}

/// Counts of what the loop did (beyond the protocol's own counters).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopStats {
    /// Frames the TAP refused (a bad virtio-net header from a peer).
    pub tap_rejected: u64,
    /// Doorbells rung.
    pub doorbells: u64,
    /// Times the node attached (more than one after being fenced).
    pub incarnations: u64,
    /// Where the time went (the durations stay zero unless profiling;
    /// rounds and waits are always counted).
    pub profile: Profile,
}

/// Runs the driver until `stop` is set or the TAP fails.
///
/// A node its peers declared dead (it stood still for a lease: a guest
/// paused, or starved of CPU on a loaded host) is fenced: its buffers are
/// reclaimed and it may not touch the region's shared state again. The
/// driver then attaches again as a new incarnation of the same node and
/// carries on; frames in flight are lost, as on a NIC reset. Any other
/// trouble with the region (a rogue peer's garbage, a lock that times out,
/// a header that does not validate) is handled the same way: the driver
/// never exits because of what others wrote into the region, it logs,
/// waits a little and attaches again, keeping its old incarnation's copy
/// of the header to heal a damaged one.
pub fn run(config: &Config, stop: &AtomicBool) -> anyhow::Result<LoopStats> {
    let device = Ivshmem::open(2).context("opening the ivshmem device")?;
    let region = Arc::new(device.map_region()?);
    let tap = Tap::open(&config.interface).context("creating the TAP interface")?;
    tap.set_carrier(false)?;
    tap.configure(&config.mac.to_string(), config.mtu, &config.addresses)?;
    let mut stats = LoopStats::default();
    let mut last: Option<Endpoint> = None;
    let mut refused = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // After trouble, from the old incarnation: no lease-long wait, and
        // its copy of the header if a rogue damaged the region's.
        let attached = match &last {
            Some(old) => old.reattach(config.mac),
            None => Endpoint::attach(region.clone(), config.node, config.mac),
        }
        .map_err(anyhow::Error::new)
        .and_then(|mut ep| {
            ep.set_doorbell_peer(Some(device.position()?));
            ep.set_state(NodeState::Run)?;
            Ok(ep)
        });
        let mut ep = match attached {
            Ok(ep) => ep,
            Err(e) => {
                // Said once, then every 50th time (every 10 s).
                if refused % 50 == 0 {
                    eprintln!(
                        "vni-driver: cannot attach as node {}: {e:#}; trying again",
                        config.node
                    );
                }
                refused += 1;
                if let Some(old) = &mut last {
                    let _ = old.guard_header();
                }
                std::thread::sleep(REATTACH_PAUSE);
                continue;
            }
        };
        refused = 0;
        eprintln!(
            "vni-driver: node {} up on {} ({}, MAC {}, MTU {}, {:?}; incarnation {})",
            config.node,
            tap.name(),
            device.bdf(),
            config.mac,
            config.mtu,
            config.notification,
            stats.incarnations + 1,
        );
        stats.incarnations += 1;
        match serve(config, stop, &device, &tap, &mut ep, &mut stats) {
            Ok(()) => {
                tap.set_carrier(false)?;
                ep.detach()?;
                return Ok(stats);
            }
            Err(e) if region_trouble(&e) => {
                tap.set_carrier(false)?;
                eprintln!("vni-driver: {e:#}; attaching again");
                last = Some(ep);
                if !fenced(&e) {
                    std::thread::sleep(REATTACH_PAUSE);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(stats)
}

/// Pause before attaching again after trouble other than a fence, or
/// after a refused attach.
const REATTACH_PAUSE: Duration = Duration::from_millis(200);

/// Whether `e` says this node was fenced by its peers.
fn fenced(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<EndpointError>(),
            Some(EndpointError::Lock(LockError::Fenced))
        ) || matches!(cause.downcast_ref::<LockError>(), Some(LockError::Fenced))
    })
}

/// Whether `e` came from the region (what peers wrote, the lock), not
/// from this guest's TAP: the driver attaches again instead of exiting.
fn region_trouble(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<EndpointError>()
            || cause.is::<LockError>()
            || cause.is::<vni_protocol::ProtocolError>()
            || cause.is::<vni_protocol::LayoutError>()
            || cause.is::<vni_protocol::SendError>()
            || matches!(
                cause.downcast_ref::<vni_protocol::SendError<std::io::Error>>(),
                Some(e) if !matches!(e, vni_protocol::SendError::Source(_))
            )
    })
}

/// One incarnation's loop, until `stop` or an error.
fn serve(
    config: &Config,
    stop: &AtomicBool,
    device: &Ivshmem,
    tap: &Tap,
    ep: &mut Endpoint,
    stats: &mut LoopStats,
) -> anyhow::Result<()> {
    let rx_bell = device
        .vector(usize::from(RX_VECTOR))
        .context("no doorbell vector")?;
    let mut iov: Vec<libc::iovec> = Vec::new();
    let mut carrier = false;
    let mut quarantined = 0u64;
    let mut last_tick = Instant::now() - TICK;
    let mut idle_wait = POLL_MIN;
    let mut last_busy = Instant::now();
    let mut gave_back = false;
    let mut watch = Stopwatch::new(config.profile);
    while !stop.load(Ordering::Relaxed) {
        stats.profile.rounds += 1;
        // 1. TAP -> region, read by the kernel straight into slots. Only
        // when a frame waits: reserving slots for nothing would keep an
        // idle node's cache full.
        let mut read = 0;
        let mut blocked = false;
        while read < BATCH && (read > 0 || tap.readable()) {
            match ep.send_direct(vni_protocol::MAX_FRAME, VNET_HDR_LEN, |slots| {
                tap.read_into(slots)
            }) {
                Ok(Some(_)) => read += 1,
                Ok(None) => break,
                // The pool or the ring is full: leave frames in the TAP
                // (its queue is the backpressure a NIC's stopped queue
                // would be) until receivers make room.
                Err(e) if e.is_backpressure() => {
                    blocked = true;
                    break;
                }
                Err(vni_protocol::SendError::Source(e)) => {
                    return Err(anyhow::Error::new(e).context("reading the TAP"))
                }
                Err(e) => return Err(e.into()),
            }
        }
        watch.lap(&mut stats.profile.tap_read);
        let report = ep.flush()?;
        watch.lap(&mut stats.profile.flush);
        for node in members(report.wake) {
            if let Some(peer) = ep.doorbell_peer(node) {
                device.ring(peer, RX_VECTOR);
                stats.doorbells += 1;
            }
        }
        watch.lap(&mut stats.profile.ring);

        // 2. Region -> TAP, straight from the slots.
        let mut rejected = 0;
        let received = ep.recv(BATCH, |frame| {
            if frame.len() <= VNET_HDR_LEN || tap.write_frame(frame, &mut iov).is_err() {
                rejected += 1;
            }
        })?;
        stats.tap_rejected += rejected;
        watch.lap(&mut stats.profile.recv);

        // 3. Housekeeping.
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            ep.tick()?;
            if let Some((node, silent)) = ep.silence_to_say() {
                eprintln!(
                    "vni-driver: node {node}'s heartbeat stood still for {} ms (lease {} ms)",
                    silent.as_millis(),
                    ep.lease().as_millis()
                );
            }
            let banned = ep.quarantined();
            if banned != quarantined {
                for node in members(banned & !quarantined) {
                    eprintln!(
                        "vni-driver: fenced node {node}: {} protocol errors blamed on it (last: {}); its frames are ignored for {} leases",
                        vni_protocol::OFFENCE_LIMIT,
                        ep.last_error().map_or_else(|| "none".to_owned(), |e| e.to_string()),
                        vni_protocol::QUARANTINE_LEASES
                    );
                }
                for node in members(quarantined & !banned) {
                    eprintln!("vni-driver: node {node} is out of quarantine");
                }
                quarantined = banned;
            }
            let up = ep.running_peers() != 0;
            if up != carrier {
                tap.set_carrier(up)?;
                carrier = up;
            }
        }
        watch.lap(&mut stats.profile.tick);

        if blocked {
            // Wait for room, not for the TAP (it is readable anyway).
            wait(&[rx_bell.as_raw_fd()], POLL_MAX);
            watch.waited(&mut stats.profile);
            continue;
        }
        if read > 0 || received > 0 || report.published > 0 || report.deferred > 0 {
            idle_wait = POLL_MIN;
            last_busy = Instant::now();
            gave_back = false;
            continue;
        }
        // Idle for a while: hand back cached slots, so that an idle lab's
        // pool is whole again.
        if last_busy.elapsed() >= GIVE_BACK_AFTER && !gave_back {
            ep.release_idle()?;
            gave_back = true;
        }
        if last_busy.elapsed() < config.busy_poll {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
            watch.waited(&mut stats.profile);
            continue;
        }
        match config.notification {
            Notification::Interrupt => {
                ep.set_sleeping(true);
                if !ep.pending() {
                    wait(&[tap.fd(), rx_bell.as_raw_fd()], TICK);
                }
                ep.set_sleeping(false);
                // Drain the doorbell; a count of zero is fine.
                let _ = rx_bell.read();
            }
            Notification::Polling => {
                wait(&[tap.fd()], idle_wait);
                idle_wait = (idle_wait * 2).min(POLL_MAX);
            }
        }
        watch.waited(&mut stats.profile);
    }
    Ok(())
}

/// Waits until one of `fds` is readable or `timeout` passes.
fn wait(fds: &[std::os::fd::RawFd], timeout: Duration) {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Sub-millisecond timeouts need ppoll's timespec.
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `polls` is a valid array of pollfds of the length passed and
    // `ts` a valid timespec; no signal mask is passed.
    unsafe {
        libc::ppoll(
            polls.as_mut_ptr(),
            polls.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
}
