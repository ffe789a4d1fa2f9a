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

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vni_protocol::lifecycle::{Event, Lifecycle, REATTACH_PAUSE, TICK};
use vni_protocol::{members, Endpoint, EndpointError, MacAddr, NodeState, SendError, BATCH};

use crate::device::{DeviceError, Ivshmem};
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

/// Doorbell vector for "frames wait".
const RX_VECTOR: u16 = vni_protocol::RX_VECTOR;
/// Longest wait between polls in polling mode.
const POLL_MAX: Duration = Duration::from_millis(1);
const POLL_MIN: Duration = Duration::from_micros(50);

/// Why the driver stopped: its own side failed (the device, the TAP).
/// Trouble with the region never stops it ([`run`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The ivshmem device.
    #[error("The ivshmem device")]
    Device(#[from] DeviceError),
    /// The device has no eventfd for the doorbell vector.
    #[error("The ivshmem device has no doorbell vector {0}")]
    NoVector(u16),
    /// The TAP interface.
    #[error("The TAP interface")]
    Tap(#[source] io::Error),
    /// Leaving the region at the end.
    #[error("Leaving the region")]
    Detach(#[source] EndpointError),
}

/// Trouble with the region: what a peer wrote, the lock, a fence. The
/// driver attaches again.
#[derive(Debug, thiserror::Error)]
pub enum Trouble {
    /// The endpoint failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A frame could not be sent for a reason of the region's (never the
    /// TAP's: that is [`RunError::Tap`]).
    #[error("Sending a frame")]
    Send(#[source] SendError<io::Error>),
}

impl Trouble {
    /// How long to wait before attaching again.
    fn pause(&self) -> Duration {
        match self {
            Trouble::Endpoint(e) => Lifecycle::pause_after(e),
            Trouble::Send(_) => REATTACH_PAUSE,
        }
    }
}

/// Why one incarnation's loop ended.
#[derive(Debug)]
enum Stop {
    /// Trouble with the region: attach again.
    Region(Trouble),
    /// The driver's own side failed: stop.
    Driver(RunError),
}

impl From<EndpointError> for Stop {
    fn from(e: EndpointError) -> Self {
        Stop::Region(Trouble::Endpoint(e))
    }
}

impl From<RunError> for Stop {
    fn from(e: RunError) -> Self {
        Stop::Driver(e)
    }
}

impl From<SendError<io::Error>> for Stop {
    fn from(e: SendError<io::Error>) -> Self {
        match e {
            SendError::Source(e) => Stop::Driver(RunError::Tap(e)),
            SendError::Endpoint(e) => e.into(),
            other => Stop::Region(Trouble::Send(other)),
        }
    }
}

/// `error` and its sources as one line, `a: b: c`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(&format!(": {cause}"));
        next = cause.source();
    }
    text
}

/// Says a [`Lifecycle`] event (all but the carrier's) on stderr.
fn say(event: Event) {
    match event {
        Event::Silent {
            node,
            silent,
            lease,
        } => eprintln!(
            "vni-driver: node {node}'s heartbeat stood still for {} ms (lease {} ms)",
            silent.as_millis(),
            lease.as_millis()
        ),
        Event::Recovered { new, total } => {
            eprintln!("vni-driver: recovered from {new} dead peers ({total} so far)")
        }
        Event::Fenced { node, last } => eprintln!(
            "vni-driver: fenced node {node}: {} protocol errors blamed on it (last: {}); its frames are ignored for {} leases",
            vni_protocol::OFFENCE_LIMIT,
            last.map_or_else(|| "none".to_owned(), |e| e.to_string()),
            vni_protocol::QUARANTINE_LEASES
        ),
        Event::Released { node } => eprintln!("vni-driver: node {node} is out of quarantine"),
        Event::ProtocolErrors { count, last } => {
            eprintln!("vni-driver: {count} protocol errors in values peers wrote (last: {last})")
        }
        Event::Carrier(_) => {}
    }
}

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
pub fn run(config: &Config, stop: &AtomicBool) -> Result<LoopStats, RunError> {
    let device = Ivshmem::open(2)?;
    let region = Arc::new(device.map_region()?);
    let position = device.position()?;
    let tap = Tap::open(&config.interface).map_err(RunError::Tap)?;
    tap.set_carrier(false).map_err(RunError::Tap)?;
    tap.configure(&config.mac.to_string(), config.mtu, &config.addresses)
        .map_err(RunError::Tap)?;
    let mut stats = LoopStats::default();
    // (Its clock is the endpoint's, whose origin is the first attach:
    // `attached` starts the lifecycle's times over.)
    let mut life = Lifecycle::new(vni_protocol::Instant::from_origin(Duration::ZERO));
    let mut last: Option<Endpoint> = None;
    while !stop.load(Ordering::Relaxed) {
        // After trouble, from the old incarnation: no lease-long wait, and
        // its copy of the header if a rogue damaged the region's.
        let attached = match &last {
            Some(old) => old.reattach(config.mac),
            None => Endpoint::attach(region.clone(), config.node, config.mac),
        }
        .and_then(|mut ep| {
            ep.set_doorbell_peer(Some(position));
            ep.set_state(NodeState::Run)?;
            Ok(ep)
        });
        let mut ep = match attached {
            Ok(ep) => ep,
            Err(e) => {
                if life.refused() {
                    eprintln!(
                        "vni-driver: cannot attach as node {}: {}; trying again",
                        config.node,
                        chain(&e)
                    );
                }
                if let Some(old) = &mut last {
                    let _ = old.guard_header();
                }
                std::thread::sleep(REATTACH_PAUSE);
                continue;
            }
        };
        stats.incarnations = life.attached(ep.now());
        eprintln!(
            "vni-driver: node {} up on {} ({}, MAC {}, MTU {}, {:?}; incarnation {})",
            config.node,
            tap.name(),
            device.bdf(),
            config.mac,
            config.mtu,
            config.notification,
            stats.incarnations,
        );
        match serve(config, stop, &device, &tap, &mut ep, &mut life, &mut stats) {
            Ok(()) => {
                tap.set_carrier(false).map_err(RunError::Tap)?;
                ep.detach().map_err(RunError::Detach)?;
                return Ok(stats);
            }
            Err(Stop::Region(trouble)) => {
                life.trouble();
                tap.set_carrier(false).map_err(RunError::Tap)?;
                eprintln!("vni-driver: {}; attaching again", chain(&trouble));
                last = Some(ep);
                std::thread::sleep(trouble.pause());
            }
            Err(Stop::Driver(e)) => return Err(e),
        }
    }
    Ok(stats)
}

/// One incarnation's loop, until `stop` or an error.
fn serve(
    config: &Config,
    stop: &AtomicBool,
    device: &Ivshmem,
    tap: &Tap,
    ep: &mut Endpoint,
    life: &mut Lifecycle,
    stats: &mut LoopStats,
) -> Result<(), Stop> {
    let rx_bell = device
        .vector(usize::from(RX_VECTOR))
        .ok_or(RunError::NoVector(RX_VECTOR))?;
    let mut iov: Vec<libc::iovec> = Vec::new();
    let mut last_tick = Instant::now() - TICK;
    let mut idle_wait = POLL_MIN;
    let mut last_busy = Instant::now();
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
            let now = ep.now();
            let mut carrier = None;
            life.tick(&mut *ep, now, |event| match event {
                Event::Carrier(on) => carrier = Some(on),
                other => say(other),
            })?;
            if let Some(on) = carrier {
                tap.set_carrier(on).map_err(RunError::Tap)?;
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
            life.busy(ep.now());
            continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use vni_protocol::LockError;

    #[test]
    fn the_taps_errors_stop_the_driver_the_regions_are_trouble() {
        let tap = Stop::from(SendError::Source(io::Error::from(
            io::ErrorKind::BrokenPipe,
        )));
        assert!(matches!(tap, Stop::Driver(RunError::Tap(_))), "{tap:?}");
        let fenced = Stop::from(SendError::<io::Error>::Endpoint(EndpointError::Lock(
            LockError::Fenced,
        )));
        assert!(
            matches!(
                fenced,
                Stop::Region(Trouble::Endpoint(EndpointError::Lock(LockError::Fenced)))
            ),
            "{fenced:?}"
        );
        let no_peer = Stop::from(SendError::<io::Error>::NoPeer(3));
        assert!(
            matches!(no_peer, Stop::Region(Trouble::Send(SendError::NoPeer(3)))),
            "{no_peer:?}"
        );
        let missing = Stop::from(RunError::NoVector(RX_VECTOR));
        assert!(matches!(missing, Stop::Driver(_)));
    }

    #[test]
    fn a_fenced_node_attaches_again_at_once_other_trouble_after_a_pause() {
        let fenced = Trouble::Endpoint(EndpointError::Lock(LockError::Fenced));
        assert_eq!(fenced.pause(), Duration::ZERO);
        let garbage = Trouble::Endpoint(EndpointError::Reformatted);
        assert_eq!(garbage.pause(), REATTACH_PAUSE);
        assert_eq!(
            Trouble::Send(SendError::BadLength(0)).pause(),
            REATTACH_PAUSE
        );
    }

    #[test]
    fn errors_are_said_with_their_causes() {
        let e = RunError::Tap(io::Error::from(io::ErrorKind::NotFound));
        let said = chain(&e);
        assert!(said.starts_with("The TAP interface: "), "{said}");
        assert!(said.contains("not found"), "{said}");
        let trouble = Trouble::Endpoint(EndpointError::Lock(LockError::Fenced));
        let said = chain(&trouble);
        assert!(said.starts_with("Region lock failed: "), "{said}");
        assert!(said.contains("declared dead"), "{said}");
    }

    #[test]
    fn the_profile_is_in_milliseconds() {
        let profile = Profile {
            flush: Duration::from_micros(1500),
            rounds: 7,
            ..Profile::default()
        };
        let json = profile.to_json();
        assert_eq!(json["flush_ms"], 1.5);
        assert_eq!(json["tap_read_ms"], 0.0);
        assert_eq!(json["rounds"], 7);
    }

    #[test]
    fn a_stopwatch_that_is_off_adds_nothing_but_counts_waits() {
        let mut profile = Profile::default();
        let mut watch = Stopwatch::new(false);
        std::thread::sleep(Duration::from_millis(2));
        watch.waited(&mut profile);
        assert_eq!(profile.waits, 1);
        assert_eq!(profile.wait, Duration::ZERO);
        let mut on = Stopwatch::new(true);
        std::thread::sleep(Duration::from_millis(2));
        on.lap(&mut profile.flush);
        assert!(profile.flush >= Duration::from_millis(2));
    }
}
