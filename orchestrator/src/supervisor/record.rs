//! The supervisor's record of its lab: each node's QEMU as it holds it,
//! and the lab's state, persisted in the lab directory at every change.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::error::causes;
use super::event::{emit, timestamp, Event};
use crate::lab::{LabDir, NodeRecord, NodeState, State};
use crate::topology::Node;

/// A node's QEMU as the supervisor holds it.
pub(super) struct Running {
    pub(super) node: Node,
    pub(super) pid: u32,
    /// `Some(status)` once QEMU exited.
    pub(super) exit: watch::Receiver<Option<String>>,
    /// Its exit has been recorded and announced.
    pub(super) reported: bool,
}

/// Shared, persisted state.
#[derive(Clone)]
pub(super) struct Recorder {
    pub(super) lab: LabDir,
    pub(super) state: Arc<Mutex<State>>,
}

impl Recorder {
    pub(super) fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        if let Err(e) = self.lab.write_json(&self.lab.state_path(), &*state) {
            eprintln!("{} cannot record state: {}", timestamp(), causes(&e));
        }
    }

    pub(super) fn node(&self, name: &str, change: impl FnOnce(&mut NodeRecord)) {
        self.update(|s| {
            if let Some(n) = s.nodes.iter_mut().find(|n| n.name == name) {
                change(n);
            }
        });
    }
}

/// Records and announces that a node's QEMU exited.
pub(super) fn record_exit(running: &mut Running, recorder: &Recorder) {
    running.reported = true;
    let name = running.node.name.clone();
    let status = running.exit.borrow().clone().unwrap_or_default();
    recorder.node(&name, |n| {
        n.state = NodeState::Exited;
        n.exit = Some(status.clone());
    });
    emit(&Event::NodeExited { node: name, status });
}

pub(super) fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill has no memory effects; `pid` is our own child,
            // not yet reaped (its watcher reaps it), so it cannot be reused.
            unsafe { libc::kill(pid, sig) };
        }
    }
}
