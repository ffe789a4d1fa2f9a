//! A node's life in the region, the same for every driver: attaching (and
//! attaching again after trouble, as a new incarnation), the housekeeping
//! round, and what of it is worth saying.
//!
//! Both drivers, the kernel module and the user-space one, keep one
//! [`Lifecycle`] per device and follow it:
//!
//! - every [`TICK`], [`Lifecycle::tick`] runs the endpoint's housekeeping
//!   and reports what changed as [`Event`]s: a peer's heartbeat that stood
//!   still for long, dead peers recovered, peers fenced and let out of
//!   quarantine, protocol errors in what peers wrote (at most once a
//!   second), the carrier (up while another node runs); after
//!   [`GIVE_BACK_AFTER`] without traffic ([`Lifecycle::busy`] says when
//!   frames moved) the slots the node caches go back to the pool;
//! - an error of the endpoint's is trouble with the region, never a reason
//!   to stop: the driver drops the carrier ([`Lifecycle::trouble`]) and
//!   attaches again from the old incarnation, at once after a fence, after
//!   [`REATTACH_PAUSE`] otherwise ([`Lifecycle::pause_after`]);
//! - an attach that succeeds is [`Lifecycle::attached`]; one that is
//!   refused is [`Lifecycle::refused`], said the first time and every
//!   [`SAY_REFUSED_EVERY`]th after, and tried again after
//!   [`REATTACH_PAUSE`].
//!
//! Each driver says the events its own way (the kernel's log, stderr) and
//! keeps only what is its own: how it reaches the device and the network
//! stack.

use core::ops::{Deref, DerefMut};
use core::time::Duration;

use super::endpoint::{members, Buffers, Endpoint, EndpointError};
use super::frame::ProtocolError;
use super::lock::LockError;
use super::nodes::NodeId;
use super::platform::{Instant, Platform};
use super::region::Region;

/// Housekeeping period: heartbeat, counters, dead peers, carrier.
pub const TICK: Duration = Duration::from_millis(10);
/// Pause before attaching again after a refused attach, or after trouble
/// other than a fence.
pub const REATTACH_PAUSE: Duration = Duration::from_millis(200);
/// Idle time after which the slots this node caches go back to the pool.
pub const GIVE_BACK_AFTER: Duration = Duration::from_millis(100);
/// A refused attach is said the first time and every this many times
/// after (every 10 s at [`REATTACH_PAUSE`]).
pub const SAY_REFUSED_EVERY: u64 = 50;
/// Protocol errors in what peers wrote are said at most this often.
const SAY_ERRORS_EVERY: Duration = Duration::from_secs(1);

/// What happened that a driver should say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer's heartbeat stood still for longer than any before (a
    /// quarter lease or more).
    Silent {
        /// The peer.
        node: NodeId,
        /// How long.
        silent: Duration,
        /// The region's lease.
        lease: Duration,
    },
    /// Dead peers were recovered (their buffers reclaimed).
    Recovered {
        /// How many since the last round.
        new: u64,
        /// How many in this incarnation.
        total: u64,
    },
    /// A peer was fenced for misbehaving: its frames are ignored for
    /// `QUARANTINE_LEASES` leases.
    Fenced {
        /// The peer.
        node: NodeId,
        /// The last protocol error seen.
        last: Option<ProtocolError>,
    },
    /// A fenced peer's quarantine ended.
    Released {
        /// The peer.
        node: NodeId,
    },
    /// Peers wrote values that failed validation.
    ProtocolErrors {
        /// How many in this incarnation.
        count: u64,
        /// The last one.
        last: ProtocolError,
    },
    /// The carrier changed: up while another node runs.
    Carrier(bool),
}

/// One device's life in the region (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Lifecycle {
    incarnations: u64,
    refused: u64,
    carrier: bool,
    quarantined: u64,
    recoveries: u64,
    /// Protocol errors last said, and when.
    errors_said: (u64, Instant),
    /// When frames last moved, and whether the idle node's cached slots
    /// went back since.
    last_busy: Instant,
    gave_back: bool,
}

impl Lifecycle {
    /// A device not attached yet, at `now`.
    pub fn new(now: Instant) -> Lifecycle {
        Lifecycle {
            incarnations: 0,
            refused: 0,
            carrier: false,
            quarantined: 0,
            recoveries: 0,
            errors_said: (0, now),
            last_busy: now,
            gave_back: false,
        }
    }

    /// Incarnations so far (attaches that succeeded).
    pub fn incarnations(&self) -> u64 {
        self.incarnations
    }

    /// Whether the carrier is up.
    pub fn carrier(&self) -> bool {
        self.carrier
    }

    /// An attach succeeded at `now`: the new incarnation's number. The
    /// log's baselines start over, as its counters do.
    pub fn attached(&mut self, now: Instant) -> u64 {
        self.incarnations = self.incarnations.saturating_add(1);
        self.refused = 0;
        self.recoveries = 0;
        self.errors_said = (0, now);
        self.last_busy = now;
        self.gave_back = false;
        self.incarnations
    }

    /// An attach was refused: whether to say so (the first time, then
    /// every [`SAY_REFUSED_EVERY`]th). Try again after
    /// [`REATTACH_PAUSE`].
    pub fn refused(&mut self) -> bool {
        let say = self.refused % SAY_REFUSED_EVERY == 0;
        self.refused = self.refused.saturating_add(1);
        say
    }

    /// The endpoint met trouble (fenced, garbage, a lock that timed out):
    /// no frame goes through it until it attached again. The carrier
    /// drops, if it was up ([`Event::Carrier`]).
    pub fn trouble(&mut self) -> Option<Event> {
        self.carrier.then(|| {
            self.carrier = false;
            Event::Carrier(false)
        })
    }

    /// How long to wait before attaching again after `error`: not at all
    /// after a fence (the peers already reclaimed this node's buffers),
    /// [`REATTACH_PAUSE`] after other trouble.
    pub fn pause_after(error: &EndpointError) -> Duration {
        if matches!(error, EndpointError::Lock(LockError::Fenced)) {
            Duration::ZERO
        } else {
            REATTACH_PAUSE
        }
    }

    /// How long before `now` frames last moved.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_busy)
    }

    /// Frames moved at `now`.
    pub fn busy(&mut self, now: Instant) {
        self.last_busy = now;
        self.gave_back = false;
    }

    /// The housekeeping round on an attached endpoint at `now`: its tick,
    /// the events worth saying (passed to `say` as they come), the idle
    /// node's cached slots given back, the carrier. An error is trouble
    /// with the region: the driver calls [`Lifecycle::trouble`] and
    /// attaches again.
    pub fn tick<M, B, P>(
        &mut self,
        ep: &mut Endpoint<M, B, P>,
        now: Instant,
        mut say: impl FnMut(Event),
    ) -> Result<(), EndpointError>
    where
        M: Deref<Target = Region> + Clone,
        B: DerefMut<Target = Buffers>,
        P: Platform + Clone,
    {
        let mut result = ep.tick();
        if let Some((node, silent)) = ep.silence_to_say() {
            say(Event::Silent {
                node,
                silent,
                lease: ep.lease(),
            });
        }
        let recoveries = ep.counters().recoveries;
        if recoveries != self.recoveries {
            say(Event::Recovered {
                new: recoveries.saturating_sub(self.recoveries),
                total: recoveries,
            });
            self.recoveries = recoveries;
        }
        let fenced = ep.quarantined();
        if fenced != self.quarantined {
            for node in members(fenced & !self.quarantined) {
                say(Event::Fenced {
                    node,
                    last: ep.last_error(),
                });
            }
            for node in members(self.quarantined & !fenced) {
                say(Event::Released { node });
            }
            self.quarantined = fenced;
        }
        let idle = now.saturating_duration_since(self.last_busy) >= GIVE_BACK_AFTER;
        if result.is_ok() && idle && !self.gave_back {
            result = ep.release_idle();
            self.gave_back = true;
        }
        let errors = ep.counters().protocol_errors;
        if errors > self.errors_said.0
            && now.saturating_duration_since(self.errors_said.1) >= SAY_ERRORS_EVERY
        {
            if let Some(last) = ep.last_error() {
                say(Event::ProtocolErrors {
                    count: errors,
                    last,
                });
            }
            self.errors_said = (errors, now);
        }
        result?;
        let running = ep.running_peers() != 0;
        if running != self.carrier {
            self.carrier = running;
            say(Event::Carrier(running));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_said_once_then_every_fiftieth() {
        let mut life = Lifecycle::new(Instant::from_origin(Duration::ZERO));
        let said: usize = (0..120).filter(|_| life.refused()).count();
        assert_eq!(said, 3, "the 1st, 51st and 101st");
        life.attached(Instant::from_origin(Duration::from_secs(1)));
        assert!(life.refused(), "an attach starts the count over");
        assert_eq!(life.incarnations(), 1);
    }

    #[test]
    fn a_fence_is_attached_again_at_once_other_trouble_after_a_pause() {
        let fenced = EndpointError::Lock(LockError::Fenced);
        assert_eq!(Lifecycle::pause_after(&fenced), Duration::ZERO);
        assert_eq!(
            Lifecycle::pause_after(&EndpointError::Reformatted),
            REATTACH_PAUSE
        );
    }

    #[test]
    fn trouble_drops_a_carrier_that_is_up_once() {
        let mut life = Lifecycle::new(Instant::from_origin(Duration::ZERO));
        assert_eq!(life.trouble(), None);
        life.carrier = true;
        assert_eq!(life.trouble(), Some(Event::Carrier(false)));
        assert_eq!(life.trouble(), None);
        assert!(!life.carrier());
    }
}
