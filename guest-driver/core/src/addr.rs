//! The address management part: which node owns which MAC address.
//!
//! Entries are written only under the region lock. Each entry is a MAC word
//! (bit 63 = valid) and a node word. The version word at the start of the
//! part is bumped after every change, so nodes keep a private copy and
//! refresh it (again under the lock) only when the version moved: lookups on
//! the data path read one word of shared memory.

use core::fmt;
use core::sync::atomic::Ordering;

use super::ether::MacAddr;
use super::layout::{Layout, ADDR_ENTRY_MAC, ADDR_ENTRY_NODE, ADDR_VERSION};
use super::nodes::NodeId;
use super::region::Region;
use super::sink::Sink;

const VALID: u64 = 1 << 63;
const MAC_MASK: u64 = (1 << 48) - 1;

/// Errors from address management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    /// Another running node already owns this address.
    InUse {
        /// The address.
        mac: MacAddr,
        /// Its owner.
        owner: NodeId,
    },
    /// Every entry is taken.
    Full(u32),
    /// Group addresses cannot be owned.
    GroupAddress(MacAddr),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::InUse { mac, owner } => {
                write!(f, "MAC address {mac} is already owned by node {owner}")
            }
            AddrError::Full(entries) => write!(f, "Address table is full ({entries} entries)"),
            AddrError::GroupAddress(mac) => write!(
                f,
                "MAC address {mac} is a group address; a node needs a unicast address"
            ),
        }
    }
}

impl core::error::Error for AddrError {}

/// Access to the address table of one region. Mutating calls must be made
/// with the region lock held.
#[derive(Clone, Copy, Debug)]
pub struct AddrTable<'a> {
    pub region: &'a Region,
    pub layout: &'a Layout,
}

impl AddrTable<'_> {
    fn capacity(&self) -> usize {
        self.layout.geometry.mac_capacity as usize
    }

    /// Bumped after every change (a node refreshes its copy when it moved).
    pub fn version(&self) -> u32 {
        self.region.load_u32(self.version_off(), Ordering::Acquire)
    }

    fn version_off(&self) -> usize {
        self.layout.addr.saturating_add(ADDR_VERSION)
    }

    fn bump(&self) {
        // Release: a node that sees the new version sees the entries.
        self.region
            .fetch_add_u32(self.version_off(), 1, Ordering::Release);
    }

    /// Entry `i` as (MAC word, node word), read once.
    fn entry(&self, i: usize) -> (u64, u32) {
        let off = self.layout.addr_entry(i);
        (
            self.region
                .load_u64(off.saturating_add(ADDR_ENTRY_MAC), Ordering::Acquire),
            self.region
                .load_u32(off.saturating_add(ADDR_ENTRY_NODE), Ordering::Relaxed),
        )
    }

    fn set_entry(&self, i: usize, mac: u64, node: u32) {
        let off = self.layout.addr_entry(i);
        self.region
            .store_u32(off.saturating_add(ADDR_ENTRY_NODE), node, Ordering::Relaxed);
        self.region
            .store_u64(off.saturating_add(ADDR_ENTRY_MAC), mac, Ordering::Release);
    }

    /// Decodes a valid-flagged entry: `None` when it is malformed (node out
    /// of range, stray bits, group address) or repeats an address in `seen`.
    fn well_formed(
        &self,
        mac: u64,
        node: u32,
        seen: &[(MacAddr, NodeId)],
    ) -> Option<(MacAddr, NodeId)> {
        let addr = MacAddr::from_word(mac & MAC_MASK);
        let ok = node < self.layout.geometry.max_nodes
            && mac & !(VALID | MAC_MASK) == 0
            && !addr.is_group()
            && !seen.iter().any(|e| e.0 == addr);
        ok.then_some((addr, node as NodeId))
    }

    /// Appends the valid entries to `out`, validated (the first entry for
    /// an address wins), and returns how many malformed entries were
    /// skipped. `out` should have room for `mac_capacity` entries; what
    /// does not fit is left out.
    pub fn snapshot(&self, out: &mut impl Sink<(MacAddr, NodeId)>) -> u64 {
        let mut bad = 0u64;
        for i in 0..self.capacity() {
            let (mac, node) = self.entry(i);
            if mac & VALID == 0 {
                continue;
            }
            match self.well_formed(mac, node, out.as_slice()) {
                Some(entry) => {
                    if !out.push(entry) {
                        break;
                    }
                }
                None => bad = bad.saturating_add(1),
            }
        }
        bad
    }

    /// Records that `node` owns `mac`. `is_running` says whether a node
    /// still counts as an owner (a dead node's address can be taken over).
    pub fn register(
        &self,
        mac: MacAddr,
        node: NodeId,
        is_running: impl Fn(NodeId) -> bool,
    ) -> Result<(), AddrError> {
        if mac.is_group() {
            return Err(AddrError::GroupAddress(mac));
        }
        let word = mac.to_word() | VALID;
        let mut free = None;
        for i in 0..self.capacity() {
            let (m, owner) = self.entry(i);
            if m == word {
                let owner = owner as NodeId;
                if owner != node
                    && owner < self.layout.geometry.max_nodes as usize
                    && is_running(owner)
                {
                    return Err(AddrError::InUse { mac, owner });
                }
                self.set_entry(i, word, node as u32);
                self.bump();
                return Ok(());
            }
            if m & VALID == 0 && free.is_none() {
                free = Some(i);
            }
        }
        let i = free.ok_or(AddrError::Full(self.layout.geometry.mac_capacity))?;
        self.set_entry(i, word, node as u32);
        self.bump();
        Ok(())
    }

    /// Drops every entry for which `keep(mac, node)` is false, and every
    /// malformed entry. Returns how many malformed entries were dropped.
    /// `kept` is scratch space for the entries kept (room for
    /// `mac_capacity`; an entry that does not fit is dropped).
    pub fn retain(
        &self,
        keep: impl Fn(MacAddr, NodeId) -> bool,
        kept: &mut impl Sink<(MacAddr, NodeId)>,
    ) -> u64 {
        kept.truncate(0);
        let mut bad = 0u64;
        for i in 0..self.capacity() {
            let (mac, node) = self.entry(i);
            if mac & VALID == 0 {
                continue;
            }
            match self.well_formed(mac, node, kept.as_slice()) {
                Some(entry) if keep(entry.0, entry.1) && kept.push(entry) => {}
                Some(_) => self.set_entry(i, 0, 0),
                None => {
                    bad = bad.saturating_add(1);
                    self.set_entry(i, 0, 0);
                }
            }
        }
        self.bump();
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{scratch, BufferConfig};
    use std::vec;
    use std::vec::Vec;

    fn snap(t: &AddrTable<'_>) -> (Vec<(MacAddr, NodeId)>, u64) {
        let mut entries = Vec::new();
        let bad = t.snapshot(&mut entries);
        (entries, bad)
    }

    fn table() -> (Region, Layout) {
        scratch(BufferConfig::SharedPool, 1 << 20, 4)
    }

    #[test]
    fn register_lookup_and_conflicts() {
        let (region, layout) = table();
        let t = AddrTable {
            region: &region,
            layout: &layout,
        };
        let v0 = t.version();
        t.register(MacAddr::for_node(1), 1, |_| true).unwrap();
        t.register(MacAddr::for_node(2), 2, |_| true).unwrap();
        assert_ne!(t.version(), v0);
        assert_eq!(
            snap(&t).0,
            vec![(MacAddr::for_node(1), 1), (MacAddr::for_node(2), 2)]
        );
        assert_eq!(
            t.register(MacAddr::for_node(1), 3, |_| true),
            Err(AddrError::InUse {
                mac: MacAddr::for_node(1),
                owner: 1
            })
        );
        // A dead owner's address can be taken over.
        t.register(MacAddr::for_node(1), 3, |n| n != 1).unwrap();
        assert_eq!(snap(&t).0[0], (MacAddr::for_node(1), 3));
        assert_eq!(
            t.register(MacAddr::BROADCAST, 0, |_| true),
            Err(AddrError::GroupAddress(MacAddr::BROADCAST))
        );
        t.retain(|_, node| node != 2, &mut Vec::new());
        assert_eq!(snap(&t).0, vec![(MacAddr::for_node(1), 3)]);
    }

    #[test]
    fn full_table_is_an_error() {
        let (region, layout) = table();
        let t = AddrTable {
            region: &region,
            layout: &layout,
        };
        for i in 0..layout.geometry.mac_capacity as usize {
            t.register(MacAddr([2, 0, 0, 0, 1, i as u8]), i % 4, |_| true)
                .unwrap();
        }
        assert!(matches!(
            t.register(MacAddr([2, 0, 0, 0, 2, 0]), 0, |_| true),
            Err(AddrError::Full(_))
        ));
    }

    #[test]
    fn garbage_entries_are_ignored_and_repaired() {
        let (region, layout) = table();
        let t = AddrTable {
            region: &region,
            layout: &layout,
        };
        t.register(MacAddr::for_node(1), 1, |_| true).unwrap();
        // A rogue writes a duplicate, an out-of-range node and a group MAC.
        t.set_entry(3, MacAddr::for_node(1).to_word() | VALID, 2);
        t.set_entry(4, MacAddr::for_node(5).to_word() | VALID, 999);
        t.set_entry(5, MacAddr::BROADCAST.to_word() | VALID, 0);
        let (entries, bad) = snap(&t);
        assert_eq!(entries, vec![(MacAddr::for_node(1), 1)]);
        assert_eq!(bad, 3);
        t.retain(|_, _| true, &mut Vec::new());
        assert_eq!(snap(&t), (vec![(MacAddr::for_node(1), 1)], 0));
    }
}
