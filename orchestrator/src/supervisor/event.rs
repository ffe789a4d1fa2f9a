//! What the supervisor tells the command that started it: typed events,
//! one JSON line each on its stdout, and the same with a timestamp in its
//! log.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Lines of a console shown with a boot failure.
pub const CONSOLE_TAIL: usize = 30;
/// What the supervisor tells `up`, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A step of the start.
    Step {
        /// What happens.
        message: String,
    },
    /// A node's QEMU started.
    NodeStarted {
        /// Node name.
        node: String,
        /// QEMU's pid.
        pid: u32,
    },
    /// A node's guest agent answered.
    NodeReady {
        /// Node name.
        node: String,
        /// Seconds since the lab started.
        after: f64,
    },
    /// Every node is ready.
    Ready {
        /// Seconds since the lab started.
        after: f64,
    },
    /// A node's QEMU exited while the lab ran.
    NodeExited {
        /// Node name.
        node: String,
        /// How.
        status: String,
    },
    /// The lab could not start; the supervisor tears down and exits.
    Failed {
        /// What went wrong, with the console tail where it helps.
        message: String,
    },
    /// Everything is torn down.
    Down,
}

/// Writes events to stdout; a reader that went away (`up --detach` after
/// ready) is not an error.
pub(super) fn emit(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    eprintln!("{} {event:?}", timestamp());
}

pub(super) fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("[{}.{:03}]", now.as_secs(), now.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_per_line() {
        let event = Event::NodeReady {
            node: "node0".into(),
            after: 9.5,
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(line, r#"{"event":"node-ready","node":"node0","after":9.5}"#);
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }
}
