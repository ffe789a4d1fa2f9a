// SPDX-License-Identifier: GPL-2.0

//! One VNI device: its configuration, the state its three contexts share
//! (transmit, the NAPI poll, the housekeeping work), and its life in the
//! region: attach, heartbeat and housekeeping, trouble and attaching again,
//! detach. The semantics are the user-space driver's (`vni-driver run`),
//! from the same protocol core: a node its peers fenced, or one that met
//! garbage a rogue wrote, attaches again as a new incarnation and carries
//! on; nothing another node writes makes it stop.

use core::time::Duration;

use kernel::alloc::{flags::GFP_KERNEL, AllocError, KBox, VBox};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::ffi::{self, VniPriv};
use crate::lock::DevLock;
use crate::platform::{Chain, Kernel, Shown};
use crate::stats::Stats;
use crate::vni_core::{
    members, Buffers, Endpoint, EndpointError, Instant, MacAddr, NodeId, NodeState, Notification,
    Platform, Region, BATCH, OFFENCE_LIMIT, QUARANTINE_LEASES, RX_VECTOR,
};

/// The endpoint as the kernel holds it: the mapped region shared by
/// reference count, its working lists in vmalloc'ed memory (about
/// 200 KiB, too large for a kernel stack), the kernel's clock. The
/// endpoint itself (under 2 KiB) is boxed as well: the kernel's stack is
/// 16 KiB and every move of an endpoint on it costs its size.
pub(crate) type Ep = Endpoint<Arc<Region>, VBox<Buffers>, Kernel>;

/// Housekeeping period: heartbeat, counters, dead peers, carrier.
pub(crate) const TICK_US: u32 = 10_000;
/// Pause before attaching again after a refused attach.
const REATTACH_PAUSE_US: u32 = 200_000;
/// Idle time after which the slots this node caches go back to the pool.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(100);

/// What the module parameters and the device say.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) node: NodeId,
    pub(crate) mac: MacAddr,
    pub(crate) notification: Notification,
    pub(crate) busy_poll: Duration,
    /// This guest's ivshmem peer id (IVPosition): peers ring it.
    pub(crate) position: u16,
}

/// One device.
pub(crate) struct Vni {
    /// The glue's device structure (alive as long as this value).
    pub(crate) dev: *mut VniPriv,
    pub(crate) config: Config,
    pub(crate) region: Arc<Region>,
    pub(crate) state: DevLock<State>,
}

/// What the device's contexts share, under the glue's spinlock.
pub(crate) struct State {
    /// The current incarnation; `None` before the first attach and while
    /// housekeeping attaches again.
    pub(crate) ep: Option<KBox<Ep>>,
    /// The endpoint met trouble with the region (fenced, garbage, a lock
    /// that timed out): no frame goes through it; housekeeping attaches
    /// again from it.
    pub(crate) trouble: bool,
    pub(crate) stats: Stats,
    /// When a frame last went either way.
    pub(crate) last_busy: Instant,
    /// The idle node's cached slots went back to the pool.
    pub(crate) gave_back: bool,
    /// A flush left frames staged (their receiver's queue was full).
    pub(crate) deferred: bool,
    /// Polling mode: the wait until the next poll, growing while idle.
    pub(crate) poll_wait_ns: u32,
    carrier: bool,
    quarantined: u64,
    refused: u64,
    /// Protocol errors last said in the log, and when.
    errors_said: (u64, Instant),
    /// When housekeeping last ran, and dead peers recovered by then.
    last_tick: Instant,
    recoveries: u64,
    /// NAPI polls as housekeeping last saw them.
    polls_seen: u64,
    /// The last round found frames waiting with no poll.
    unpolled: bool,
}

impl State {
    /// Marks the endpoint as in trouble after `e` and has housekeeping
    /// attach again now.
    pub(crate) fn fail(&mut self, dev: *mut VniPriv, e: &EndpointError) {
        if !self.trouble {
            pr_warn!("{}; attaching again\n", Chain(e));
        }
        self.trouble = true;
        // SAFETY: `dev` is the device this state belongs to, alive.
        unsafe { ffi::vni_housekeeping_soon(dev) };
    }

    /// Hands staged frames to their receivers, rings those that said they
    /// sleep (`peer << 16 | vector` to BAR0), and notes whether some stay
    /// deferred (their receiver's queue full).
    pub(crate) fn flush(&mut self, dev: *mut VniPriv) {
        let Some(ep) = self.ep.as_mut().filter(|_| !self.trouble) else {
            return;
        };
        match ep.flush() {
            Ok(report) => {
                for node in members(report.wake) {
                    if let Some(peer) = ep.doorbell_peer(node) {
                        // SAFETY: `dev` is alive; a doorbell write has no
                        // other effect on this guest.
                        unsafe { ffi::vni_ring(dev, peer, RX_VECTOR) };
                        self.stats.doorbells += 1;
                    }
                }
                self.deferred = report.deferred > 0;
            }
            Err(e) => self.fail(dev, &e),
        }
    }

    /// Notes that frames moved.
    pub(crate) fn busy(&mut self) {
        self.last_busy = Kernel.now();
        self.gave_back = false;
    }
}

/// Working lists for an endpoint, zeroed in place (too large for a stack).
fn new_buffers() -> Result<VBox<Buffers>, AllocError> {
    let mut buffers = VBox::<Buffers>::new_uninit(GFP_KERNEL)?;
    // SAFETY: the allocation holds one `Buffers`; every field of it is
    // integers, so all-zero bytes are a valid, empty value (as its
    // documentation promises), which `assume_init` then states.
    unsafe {
        buffers.as_mut_ptr().write_bytes(0, 1);
        Ok(buffers.assume_init())
    }
}

impl Vni {
    /// A device on the glue's `dev` for `region`.
    ///
    /// # Safety
    ///
    /// `dev` must be the glue's device structure, alive with its spinlock
    /// for as long as the returned value.
    pub(crate) unsafe fn new(dev: *mut VniPriv, config: Config, region: Arc<Region>) -> Self {
        let state = State {
            ep: None,
            trouble: false,
            stats: Stats::default(),
            last_busy: Kernel.now(),
            gave_back: false,
            deferred: false,
            poll_wait_ns: crate::rx::POLL_MIN_NS,
            carrier: false,
            quarantined: 0,
            refused: 0,
            errors_said: (0, Kernel.now()),
            last_tick: Kernel.now(),
            recoveries: 0,
            polls_seen: 0,
            unpolled: false,
        };
        Vni {
            dev,
            config,
            region,
            // SAFETY: the glue's spinlock guards this state only; `dev`
            // outlives it (the caller's promise).
            state: unsafe { DevLock::new(dev, state) },
        }
    }

    /// The housekeeping work's round (process context): attach when
    /// there is no usable endpoint, then heartbeat, counters, dead peers,
    /// quarantine, the idle cache, the carrier. Returns the delay until
    /// the next round, in microseconds.
    pub(crate) fn housekeep(&self) -> u32 {
        let attach = {
            let s = self.state.lock();
            s.ep.is_none() || s.trouble
        };
        if attach && !self.attach() {
            return REATTACH_PAUSE_US;
        }
        self.tick()
    }

    /// Housekeeping's work on an attached endpoint.
    #[inline(never)]
    fn tick(&self) -> u32 {
        // SAFETY: `dev` is alive.
        let up = unsafe { ffi::vni_is_up(self.dev) };
        let mut carrier = None;
        {
            let mut guard = self.state.lock();
            let s = &mut *guard;
            let Some(ep) = s.ep.as_mut().filter(|_| !s.trouble) else {
                return TICK_US;
            };
            // Housekeeping beats the heartbeat: a late round (this CPU
            // busy in softirq) brings the node near its lease.
            let now = Kernel.now();
            let late = now.saturating_duration_since(s.last_tick);
            if late >= Duration::from_millis(300) {
                pr_warn!("housekeeping ran {} ms late\n", late.as_millis());
            }
            s.last_tick = now;
            let mut result = ep.tick();
            if let Some((node, silent)) = ep.silence_to_say() {
                pr_info!(
                    "node {}'s heartbeat stood still for {} ms (lease {} ms)\n",
                    node,
                    silent.as_millis(),
                    ep.lease().as_millis()
                );
            }
            let recoveries = ep.counters().recoveries;
            if recoveries != s.recoveries {
                pr_info!(
                    "recovered from {} dead peers ({} so far)\n",
                    recoveries.saturating_sub(s.recoveries),
                    recoveries
                );
                s.recoveries = recoveries;
            }
            let banned = ep.quarantined();
            if banned != s.quarantined {
                for node in members(banned & !s.quarantined) {
                    pr_warn!(
                        "fenced node {}: {} protocol errors blamed on it; its frames are ignored for {} leases\n",
                        node,
                        OFFENCE_LIMIT,
                        QUARANTINE_LEASES
                    );
                    s.stats.quarantines += 1;
                }
                for node in members(s.quarantined & !banned) {
                    pr_info!("node {} is out of quarantine\n", node);
                }
                s.quarantined = banned;
            }
            if result.is_ok() && !up {
                // Nobody polls a down interface: take what peers sent so
                // that their frames do not wait for ever.
                result = ep
                    .recv(4 * BATCH, |_| s.stats.rx_while_down += 1)
                    .map(|_| ());
            }
            let idle = now.saturating_duration_since(s.last_busy) >= GIVE_BACK_AFTER;
            if result.is_ok() && idle && !s.gave_back {
                result = ep.release_idle();
                s.gave_back = true;
            }
            // What peers wrote wrong, said at most once a second.
            let errors = ep.counters().protocol_errors;
            if errors > s.errors_said.0
                && now.saturating_duration_since(s.errors_said.1) >= Duration::from_secs(1)
            {
                if let Some(last) = ep.last_error() {
                    pr_warn!(
                        "{} protocol errors in values peers wrote (last: {})\n",
                        errors,
                        Shown(&last)
                    );
                }
                s.errors_said = (errors, now);
            }
            // Frames wait, the interface is up, nothing polled since the
            // last round and no poll is scheduled (a scheduled one may
            // wait longer than a round: under load the kernel hands
            // softirqs to ksoftirqd, which this work may run before).
            // Once is a doorbell still on its way (under TCG on a busy
            // host one took up to 40 ms); twice in a row, a lost wake-up:
            // poll now, and count it.
            let unpolled = up
                && ep.pending()
                && s.stats.polls == s.polls_seen
                // SAFETY: `dev` is alive.
                && !unsafe { ffi::vni_napi_scheduled(self.dev) };
            s.polls_seen = s.stats.polls;
            match (s.unpolled, unpolled) {
                (true, true) => {
                    s.stats.rx_stalls += 1;
                    if s.stats.rx_stalls == 1 {
                        pr_warn!(
                            "frames waited two rounds with nobody polling (said it slept: {}); polling again (ethtool -S: rx_stalls)\n",
                            ep.sleeping()
                        );
                    }
                    // SAFETY: `dev` is alive.
                    unsafe { ffi::vni_napi_schedule(self.dev) };
                }
                (true, false) => s.stats.rx_slow_doorbells += 1,
                _ => {}
            }
            s.unpolled = unpolled && !s.unpolled;
            let running = ep.running_peers() != 0;
            if let Err(e) = result {
                s.fail(self.dev, &e);
            } else if running != s.carrier {
                s.carrier = running;
                carrier = Some(running);
            }
            // (In trouble, the attach that follows drops the carrier.)
        }
        if let Some(on) = carrier {
            // SAFETY: `dev` is alive; carrier changes may be made from
            // process context.
            unsafe { ffi::vni_carrier(self.dev, on) };
        }
        TICK_US
    }

    /// Attaches (first time) or attaches again from the incarnation in
    /// trouble; may sleep (the first attach watches an earlier
    /// incarnation's heartbeat for a lease). True when attached. Not
    /// inlined: it holds endpoints on the stack, the core's attach more.
    #[inline(never)]
    fn attach(&self) -> bool {
        let old = {
            let mut s = self.state.lock();
            if s.carrier {
                s.carrier = false;
                // SAFETY: `dev` is alive.
                unsafe { ffi::vni_carrier(self.dev, false) };
            }
            s.ep.take()
        };
        let config = &self.config;
        let attached = new_buffers()
            .map_err(|_| None)
            .and_then(|buffers| {
                match &old {
                    Some(old) => old.reattach(buffers, config.mac),
                    None => Ep::attach(
                        self.region.clone(),
                        buffers,
                        Kernel,
                        config.node,
                        config.mac,
                    ),
                }
                .map_err(Some)
            })
            .and_then(|ep| KBox::new(ep, GFP_KERNEL).map_err(|_| None))
            .and_then(|mut ep| {
                ep.set_doorbell_peer(Some(config.position));
                ep.set_state(NodeState::Run).map_err(Some)?;
                Ok(ep)
            });
        let mut s = self.state.lock();
        match attached {
            Ok(ep) => {
                if let Some(old) = &old {
                    s.stats.retire(&old.counters());
                }
                s.ep = Some(ep);
                s.trouble = false;
                s.refused = 0;
                // The log's baselines count per incarnation, as its
                // counters do.
                s.recoveries = 0;
                s.errors_said = (0, Kernel.now());
                s.stats.incarnations += 1;
                pr_info!(
                    "node {} up, ivshmem peer {} (MAC {}, {}; incarnation {})\n",
                    config.node,
                    config.position,
                    Shown(&config.mac),
                    config.notification.name(),
                    s.stats.incarnations
                );
                drop(s);
                // The old incarnation's lists are freed here, not under
                // the spinlock.
                drop(old);
                // SAFETY: `dev` is alive; frames may already wait.
                unsafe { ffi::vni_napi_schedule(self.dev) };
                true
            }
            Err(e) => {
                // Said once, then every 50th time (every 10 s).
                if s.refused % 50 == 0 {
                    match e {
                        Some(e) => pr_warn!(
                            "cannot attach as node {}: {}; trying again\n",
                            config.node,
                            Chain(&e)
                        ),
                        None => pr_warn!(
                            "cannot attach as node {}: out of memory; trying again\n",
                            config.node
                        ),
                    }
                }
                s.refused += 1;
                s.stats.attach_failures += 1;
                if let Some(mut old) = old {
                    // Keep healing the header from our copy meanwhile.
                    let _ = old.guard_header();
                    s.ep = Some(old);
                    s.trouble = true;
                }
                false
            }
        }
    }

    /// Leaves the region (the device goes away): every slot this node
    /// holds goes back to the pool, its address is removed, its state is
    /// `Reset`, so the others go on with a consistent region.
    pub(crate) fn detach(&mut self) {
        let s = self.state.get_mut();
        if let Some(ep) = s.ep.take() {
            match KBox::into_inner(ep).detach() {
                Ok(()) => pr_info!("node {} left the region\n", self.config.node),
                Err(e) => pr_warn!(
                    "node {} could not leave the region cleanly: {}\n",
                    self.config.node,
                    Chain(&e)
                ),
            }
        }
    }
}
