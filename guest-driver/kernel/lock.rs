// SPDX-License-Identifier: GPL-2.0

//! The driver's one lock: the glue's spinlock (`vni_lock`, taken with
//! bottom halves off), guarding the state that transmit, the NAPI poll and
//! the housekeeping work share. It is never held across a sleep, and never
//! while frames go up the stack (which may transmit, and so take it again).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use crate::ffi::{self, VniPriv};

/// `T`, reachable only under the glue's spinlock of `dev`.
pub(crate) struct DevLock<T> {
    dev: *mut VniPriv,
    inner: UnsafeCell<T>,
}

// SAFETY: the value moves with the lock; `dev` is the glue's structure,
// which any context may use.
unsafe impl<T: Send> Send for DevLock<T> {}

// SAFETY: transmit (bottom halves off), the NAPI poll (softirq) and the
// housekeeping work (process context) share a `DevLock` from any CPU; the
// only way to the value is `lock`, which takes the glue's spinlock with
// bottom halves off, so at most one context holds a reference at a time,
// and `get_mut` needs `&mut self`, which nobody holds while the device is
// registered. `T: Send` because the value is used from whichever context
// holds the lock.
unsafe impl<T: Send> Sync for DevLock<T> {}

impl<T> DevLock<T> {
    /// `inner`, guarded by the spinlock of `dev`.
    ///
    /// # Safety
    ///
    /// `dev` must be the glue's device structure, alive (with its
    /// initialized spinlock) for as long as this value, and its spinlock
    /// must guard nothing but this value.
    pub(crate) unsafe fn new(dev: *mut VniPriv, inner: T) -> Self {
        DevLock {
            dev,
            inner: UnsafeCell::new(inner),
        }
    }

    /// Takes the lock (spinning; bottom halves off until the guard drops).
    pub(crate) fn lock(&self) -> Guard<'_, T> {
        // SAFETY: `dev` is alive with its spinlock (the promise of `new`);
        // the guard releases it exactly once.
        unsafe { ffi::vni_lock(self.dev) };
        Guard { lock: self }
    }

    /// The value, without locking: for the owner that holds it alone
    /// (before the device is registered and after it is gone).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

/// The locked state; the lock is released when this drops.
pub(crate) struct Guard<'a, T> {
    lock: &'a DevLock<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the spinlock is held for the guard's lifetime, and it
        // guards only this value: no other reference to it exists.
        unsafe { &*self.lock.inner.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only access.
        unsafe { &mut *self.lock.inner.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard took the lock in `DevLock::lock`.
        unsafe { ffi::vni_unlock(self.lock.dev) };
    }
}
