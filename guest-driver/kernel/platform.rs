// SPDX-License-Identifier: GPL-2.0

//! The protocol core's clock and waiting, from the kernel: `ktime_get_ns`,
//! `cpu_relax` between looks at a word another node must change (the
//! endpoint's calls run in softirq or with bottom halves off, where nothing
//! may sleep), and `fsleep` only where the core says the caller may sleep
//! (attaching, from the housekeeping work).

use core::time::Duration;

use kernel::alloc::VBox;
use kernel::prelude::Zeroable;
use kernel::sync::Arc;

use crate::ffi;
use crate::vni_core::{Buffers, Endpoint, Instant, Platform, Region};

/// The endpoint as the kernel holds it: the mapped region shared by
/// reference count, its working lists in vmalloc'ed memory (about
/// 200 KiB, too large for a kernel stack; `VBox::zeroed`), the kernel's
/// clock.
pub(crate) type Ep = Endpoint<Arc<Region>, VBox<Buffers>, Kernel>;

// SAFETY: `Buffers` holds integers, arrays and bounded lists of integers
// only (no references, no enums, no `NonZero`): all-zero bytes are a
// valid, empty value, as its documentation promises.
unsafe impl Zeroable for Buffers {}

/// The kernel's monotonic clock and waits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Kernel;

impl Platform for Kernel {
    fn now(&self) -> Instant {
        // SAFETY: vni_now_ns wraps ktime_get_ns: no arguments, any context.
        Instant::from_origin(Duration::from_nanos(unsafe { ffi::vni_now_ns() }))
    }

    fn pause(&self, _round: u32) {
        kernel::processor::cpu_relax();
    }

    fn sleep(&self, duration: Duration) {
        let us = u32::try_from(duration.as_micros()).unwrap_or(u32::MAX);
        // SAFETY: vni_sleep_us wraps fsleep; the core calls `sleep` only
        // while attaching, which this driver does from its housekeeping
        // work (process context, no lock held).
        unsafe { ffi::vni_sleep_us(us) };
    }
}

/// The core's values (errors, addresses) in the kernel's log: its
/// `pr_*!` macros take `kernel::fmt::Display`, the core implements
/// `core::fmt::Display`.
pub(crate) struct Shown<'a, T>(pub(crate) &'a T);

impl<T: core::fmt::Display> kernel::fmt::Display for Shown<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self.0, f)
    }
}

/// An error and its causes, `outer: inner: ...`, for the kernel's log.
pub(crate) struct Chain<'a>(pub(crate) &'a dyn core::error::Error);

impl kernel::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}
