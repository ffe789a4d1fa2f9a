//! Labs on the host, from the lab file to teardown, as every command
//! uses them:
//!
//! - [`file`]: a lab file read and validated, the command line's kernel
//!   settings in the file's place;
//! - [`prepare`]: what a lab needs before it boots (the host's QEMU, the
//!   guest image, the kernel module, the guest binaries), checked, built
//!   when missing, and written into a new lab directory as its plan;
//! - [`launch`]: the lab's supervisor started on that plan, and its typed
//!   events followed until the lab is up, fails, or is down;
//! - [`running`]: one handle on a lab that is up: its nodes, their guest
//!   agents and drivers, faults through its supervisor;
//! - [`dir`]: the lab's directory, lock, plan and state, taking a lab
//!   down, and cleaning up after a killed one.

pub mod dir;
pub mod file;
pub mod launch;
pub mod prepare;
pub mod running;

pub use dir::*;
pub use file::{LabFile, LabFileError};
pub use launch::{LaunchError, Mode, Supervisor};
pub use prepare::{prepare, PrepareError, Prepared};
pub use running::{RunningError, RunningLab};

/// Where long work reports what it does (a spinner, log lines, nothing).
pub trait Reporter {
    /// What happens now: replaces the previous step.
    fn step(&mut self, what: &str);
    /// A line worth keeping.
    fn note(&mut self, line: &str);
}

/// A reporter that drops everything (tests, quiet callers).
#[derive(Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn step(&mut self, _: &str) {}
    fn note(&mut self, _: &str) {}
}
