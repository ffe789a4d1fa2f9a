//! The address management part: which node owns which MAC address.
//!
//! Entries are written only under the region lock. Each entry is a MAC word
//! (bit 63 = valid) and a node word. The version word at the start of the
//! part is bumped after every change, so nodes keep a private copy and
//! refresh it (again under the lock) only when the version moved: lookups on
//! the data path read one word of shared memory.

use std::sync::atomic::Ordering;

use crate::ether::MacAddr;
use crate::layout::Layout;
use crate::nodes::NodeId;
use crate::region::Region;

const VALID: u64 = 1 << 63;
const MAC_MASK: u64 = (1 << 48) - 1;

/// Errors from address management.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    /// Another running node already owns this address.
    #[error("MAC address {mac} is already owned by node {owner}")]
    InUse {
        /// The address.
        mac: MacAddr,
        /// Its owner.
        owner: NodeId,
    },
    /// Every entry is taken.
    #[error("Address table is full ({0} entries)")]
    Full(u32),
    /// Group addresses cannot be owned.
    #[error("MAC address {0} is a group address; a node needs a unicast address")]
    GroupAddress(MacAddr),
}

/// Access to the address table of one region. Mutating calls must be made
/// with the region lock held.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AddrTable<'a> {
    pub(crate) region: &'a Region,
    pub(crate) layout: &'a Layout,
}

impl AddrTable<'_> {
    fn capacity(&self) -> usize {
        self.layout.geometry.mac_capacity as usize
    }

    pub(crate) fn version(&self) -> u32 {
        self.region.load_u32(self.layout.addr, Ordering::Acquire)
    }

    fn bump(&self) {
        // Release: a node that sees the new version sees the entries.
        self.region
            .fetch_add_u32(self.layout.addr, 1, Ordering::Release);
    }

    /// Entry `i` as (MAC word, node word), read once.
    fn entry(&self, i: usize) -> (u64, u32) {
        let off = self.layout.addr_entry(i);
        (
            self.region.load_u64(off, Ordering::Acquire),
            self.region.load_u32(off + 8, Ordering::Relaxed),
        )
    }

    fn set_entry(&self, i: usize, mac: u64, node: u32) {
        let off = self.layout.addr_entry(i);
        self.region.store_u32(off + 8, node, Ordering::Relaxed);
        self.region.store_u64(off, mac, Ordering::Release);
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

    /// Valid entries, validated (the first entry for an address wins), and
    /// how many malformed entries were skipped.
    pub(crate) fn snapshot(&self) -> (Vec<(MacAddr, NodeId)>, u64) {
        let mut out = Vec::new();
        let mut bad = 0;
        for i in 0..self.capacity() {
            let (mac, node) = self.entry(i);
            if mac & VALID == 0 {
                continue;
            }
            match self.well_formed(mac, node, &out) {
                Some(entry) => out.push(entry),
                None => bad += 1,
            }
        }
        (out, bad)
    }

    /// Records that `node` owns `mac`. `is_running` says whether a node
    /// still counts as an owner (a dead node's address can be taken over).
    pub(crate) fn register(
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
    pub(crate) fn retain(&self, keep: impl Fn(MacAddr, NodeId) -> bool) -> u64 {
        let mut kept = Vec::new();
        let mut bad = 0;
        for i in 0..self.capacity() {
            let (mac, node) = self.entry(i);
            if mac & VALID == 0 {
                continue;
            }
            match self.well_formed(mac, node, &kept) {
                Some(entry) if keep(entry.0, entry.1) => kept.push(entry),
                Some(_) => self.set_entry(i, 0, 0),
                None => {
                    bad += 1;
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
            t.snapshot().0,
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
        assert_eq!(t.snapshot().0[0], (MacAddr::for_node(1), 3));
        assert_eq!(
            t.register(MacAddr::BROADCAST, 0, |_| true),
            Err(AddrError::GroupAddress(MacAddr::BROADCAST))
        );
        t.retain(|_, node| node != 2);
        assert_eq!(t.snapshot().0, vec![(MacAddr::for_node(1), 3)]);
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
        let (entries, bad) = t.snapshot();
        assert_eq!(entries, vec![(MacAddr::for_node(1), 1)]);
        assert_eq!(bad, 3);
        t.retain(|_, _| true);
        assert_eq!(t.snapshot(), (vec![(MacAddr::for_node(1), 1)], 0));
    }
}
