// SPDX-License-Identifier: GPL-2.0

//! One VNI device: its configuration, the state its three contexts share
//! (transmit, the NAPI poll, the housekeeping work), and its life in the
//! region: attach, heartbeat and housekeeping, trouble and attaching again,
//! detach. The semantics are the user-space driver's (`vni-driver run`),
//! from the same protocol core: a node its peers fenced, or one that met
//! garbage a rogue wrote, attaches again as a new incarnation and carries
//! on; nothing another node writes makes it stop.

use core::time::Duration;

use kernel::alloc::{flags::GFP_KERNEL, KBox, VBox};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::device::NetDev;
use crate::lock::DevLock;
use crate::platform::{Chain, Ep, Kernel, Shown};
use crate::stats::Stats;
use crate::vni_core::lifecycle::{self, Event, Lifecycle};
use crate::vni_core::{
    members, Buffers, EndpointError, Instant, MacAddr, NodeId, NodeState, Notification, Platform,
    Region, BATCH, OFFENCE_LIMIT, QUARANTINE_LEASES, RX_VECTOR,
};

/// Housekeeping period (the lifecycle's), in microseconds.
pub(crate) const TICK_US: u32 = lifecycle::TICK.as_micros() as u32;
/// Pause before attaching again after a refused attach.
const REATTACH_PAUSE_US: u32 = lifecycle::REATTACH_PAUSE.as_micros() as u32;
/// Polling mode: the shortest wait between polls.
pub(crate) const POLL_MIN_NS: u32 = 50_000;

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
    pub(crate) dev: NetDev,
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
    /// Attaching, housekeeping and what of it to say (the core's, as the
    /// user-space driver's).
    life: Lifecycle,
    /// A flush left frames staged (their receiver's queue was full).
    pub(crate) deferred: bool,
    /// Polling mode: the wait until the next poll, growing while idle.
    pub(crate) poll_wait_ns: u32,
    /// When housekeeping last ran.
    last_tick: Instant,
    /// NAPI polls as housekeeping last saw them.
    polls_seen: u64,
    /// The last round found frames waiting with no poll.
    unpolled: bool,
}

impl State {
    /// Marks the endpoint as in trouble after `e` and has housekeeping
    /// attach again now.
    pub(crate) fn fail(&mut self, dev: NetDev, e: &EndpointError) {
        if !self.trouble {
            pr_warn!("{}; attaching again\n", Chain(e));
        }
        self.trouble = true;
        dev.housekeeping_soon();
    }

    /// Hands staged frames to their receivers, rings those that said they
    /// sleep (`peer << 16 | vector` to BAR0), and notes whether some stay
    /// deferred (their receiver's queue full).
    pub(crate) fn flush(&mut self, dev: NetDev) {
        let Some(ep) = self.ep.as_mut().filter(|_| !self.trouble) else {
            return;
        };
        match ep.flush() {
            Ok(report) => {
                for node in members(report.wake) {
                    if let Some(peer) = ep.doorbell_peer(node) {
                        dev.ring(peer, RX_VECTOR);
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
        self.life.busy(Kernel.now());
    }

    /// How long ago frames last moved.
    pub(crate) fn idle_for(&self) -> Duration {
        self.life.idle_for(Kernel.now())
    }
}

/// Says a [`Lifecycle`] event (all but the carrier's) in the kernel's log,
/// and counts the fences in `stats`.
fn say(event: Event, stats: &mut Stats) {
    match event {
        Event::Silent {
            node,
            silent,
            lease,
        } => pr_info!(
            "node {}'s heartbeat stood still for {} ms (lease {} ms)\n",
            node,
            silent.as_millis(),
            lease.as_millis()
        ),
        Event::Recovered { new, total } => {
            pr_info!("recovered from {} dead peers ({} so far)\n", new, total)
        }
        Event::Fenced { node, .. } => {
            pr_warn!(
                "fenced node {}: {} protocol errors blamed on it; its frames are ignored for {} leases\n",
                node,
                OFFENCE_LIMIT,
                QUARANTINE_LEASES
            );
            stats.quarantines += 1;
        }
        Event::Released { node } => pr_info!("node {} is out of quarantine\n", node),
        Event::ProtocolErrors { count, last } => pr_warn!(
            "{} protocol errors in values peers wrote (last: {})\n",
            count,
            Shown(&last)
        ),
        Event::Carrier(_) => {}
    }
}

impl Vni {
    /// A device on the glue's `dev` for `region`. `Send` and `Sync`, as
    /// the glue's callbacks need (they share it between transmit, the NAPI
    /// poll, the housekeeping work and ethtool, on any CPU): `config` is
    /// read-only, `region` reached through atomics and copies only, `dev`
    /// a handle for any context and `state` behind the spinlock.
    pub(crate) fn new(dev: NetDev, config: Config, region: Arc<Region>) -> Self {
        let state = State {
            ep: None,
            trouble: false,
            stats: Stats::default(),
            life: Lifecycle::new(Kernel.now()),
            deferred: false,
            poll_wait_ns: POLL_MIN_NS,
            last_tick: Kernel.now(),
            polls_seen: 0,
            unpolled: false,
        };
        Vni {
            dev,
            config,
            region,
            state: DevLock::new(dev, state),
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
        let up = self.dev.is_up();
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
            let stats = &mut s.stats;
            let mut result = s.life.tick(&mut **ep, now, |event| match event {
                Event::Carrier(on) => carrier = Some(on),
                other => say(other, stats),
            });
            if result.is_ok() && !up {
                // Nobody polls a down interface: take what peers sent so
                // that their frames do not wait for ever.
                result = ep.recv(4 * BATCH, |_| stats.rx_while_down += 1).map(|_| ());
            }
            // Frames wait, the interface is up, nothing polled since the
            // last round and no poll is scheduled (a scheduled one may
            // wait longer than a round: under load the kernel hands
            // softirqs to ksoftirqd, which this work may run before).
            // Once is a doorbell still on its way (under TCG on a busy
            // host one took up to 40 ms); twice in a row, a lost wake-up:
            // poll now, and count it.
            let unpolled =
                up && ep.pending() && s.stats.polls == s.polls_seen && !self.dev.napi_scheduled();
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
                    self.dev.napi_schedule();
                }
                (true, false) => s.stats.rx_slow_doorbells += 1,
                _ => {}
            }
            s.unpolled = unpolled && !s.unpolled;
            if let Err(e) = result {
                s.fail(self.dev, &e);
            }
            // (In trouble, the attach that follows drops the carrier.)
        }
        if let Some(on) = carrier {
            self.dev.carrier(on);
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
            if let Some(Event::Carrier(false)) = s.life.trouble() {
                self.dev.carrier(false);
            }
            s.ep.take()
        };
        let config = &self.config;
        // Zeroed in place: too large for a stack.
        let attached = VBox::<Buffers>::zeroed(GFP_KERNEL)
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
                s.stats.incarnations = s.life.attached(Kernel.now());
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
                // Frames may already wait.
                self.dev.napi_schedule();
                true
            }
            Err(e) => {
                if s.life.refused() {
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
