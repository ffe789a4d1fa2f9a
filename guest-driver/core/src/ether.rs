//! Ethernet addresses and the one header field the VNI routes on.

use core::fmt;
use core::str::FromStr;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for broadcast and multicast (group bit set).
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The address as the low 48 bits of a word (as stored in the region).
    pub fn to_word(self) -> u64 {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&self.0);
        u64::from_le_bytes(b)
    }

    /// The address in the low 48 bits of `word`.
    pub fn from_word(word: u64) -> Self {
        let b = word.to_le_bytes();
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// A locally administered unicast address derived from `node`.
    pub fn for_node(node: usize) -> Self {
        MacAddr([0x02, 0x56, 0x4e, 0x49, 0x00, node as u8])
    }

    /// Destination address of an Ethernet frame, if it is long enough.
    pub fn destination(frame: &[u8]) -> Option<Self> {
        frame
            .get(..6)
            .and_then(|d| <[u8; 6]>::try_from(d).ok())
            .map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address string that is not six hex octets separated by colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacParseError;

impl fmt::Display for MacParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Invalid MAC address: expected six hex octets like 02:00:00:00:00:01"
        )
    }
}

impl core::error::Error for MacParseError {}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(MacParseError)?;
            if part.len() != 2 {
                return Err(MacParseError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacParseError)?;
        }
        if parts.next().is_some() {
            return Err(MacParseError);
        }
        Ok(MacAddr(out))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn parses_prints_and_round_trips_words() {
        let mac: MacAddr = "02:56:4e:49:00:07".parse().unwrap();
        assert_eq!(mac, MacAddr::for_node(7));
        assert_eq!(mac.to_string(), "02:56:4e:49:00:07");
        assert_eq!(MacAddr::from_word(mac.to_word()), mac);
        assert!(!mac.is_group());
        assert!(MacAddr::BROADCAST.is_group());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_group());
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
