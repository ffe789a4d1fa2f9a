//! How a receiver learns that frames wait, and the ivshmem doorbell
//! vectors the VNI uses: one definition for the lab file, the orchestrator,
//! the user-space driver and the kernel module.

use core::fmt;
use core::str::FromStr;

/// MSI-X vectors each node's ivshmem-doorbell device has.
pub const DOORBELL_VECTORS: u16 = 2;
/// The vector a sender rings: "frames wait for you".
pub const RX_VECTOR: u16 = 0;
/// The vector for control messages (reserved).
pub const CONTROL_VECTOR: u16 = 1;

const _: () = assert!(RX_VECTOR < DOORBELL_VECTORS && CONTROL_VECTOR < DOORBELL_VECTORS);

/// How a receiving node learns that frames wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Notification {
    /// A doorbell (an MSI-X interrupt through ivshmem) when it sleeps.
    #[default]
    Interrupt,
    /// It polls, backing off while idle.
    Polling,
}

impl Notification {
    /// Every mode, in the order of [`Notification::NAMES`].
    pub const ALL: [Notification; 2] = [Notification::Interrupt, Notification::Polling];
    /// The modes' names, as the lab file and the driver's flag spell them.
    pub const NAMES: [&'static str; 2] = ["interrupt", "polling"];

    /// This mode's name.
    pub fn name(self) -> &'static str {
        match self {
            Notification::Interrupt => "interrupt",
            Notification::Polling => "polling",
        }
    }

    /// What the mode does, in a sentence (for schemas and help texts).
    pub fn description(self) -> &'static str {
        match self {
            Notification::Interrupt => "Doorbell (MSI-X through ivshmem) when the receiver sleeps.",
            Notification::Polling => "The receiver polls, backing off while idle.",
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A notification mode name that is neither `interrupt` nor `polling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationParseError;

impl fmt::Display for NotificationParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Invalid notification mode: use interrupt or polling")
    }
}

impl core::error::Error for NotificationParseError {}

impl FromStr for Notification {
    type Err = NotificationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Notification::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or(NotificationParseError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (mode, name) in Notification::ALL.into_iter().zip(Notification::NAMES) {
            assert_eq!(mode.name(), name);
            assert_eq!(name.parse(), Ok(mode));
        }
        assert!("poll".parse::<Notification>().is_err());
    }
}
