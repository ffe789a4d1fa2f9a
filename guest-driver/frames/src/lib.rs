//! Test frames for the VNI: raw Ethernet frames with a test EtherType, a
//! run id, a sequence number and a checksum of their payload, so that a
//! receiver can count what arrived from whom, what was lost, reordered or
//! damaged. Sent and received with pnet on the node's VNI interface.
//!
//! Layout after the 14-byte Ethernet header (EtherType [`ETHERTYPE`], IEEE's
//! "local experimental" 0x88B5):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `VNIT` |
//! | 4 | run id (big endian) |
//! | 4 | sequence number, per sender and run |
//! | 4 | FNV-1a of the payload |
//! | rest | payload, a pattern of the sequence number |

use std::collections::BTreeMap;

/// The test EtherType (IEEE 802 local experimental).
pub const ETHERTYPE: u16 = 0x88b5;
const MAGIC: &[u8; 4] = b"VNIT";
/// Ethernet header plus the test header.
pub const HEADER_LEN: usize = 14 + 16;

/// A MAC address.
pub type Mac = [u8; 6];

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Builds test frame `seq` of run `run` from `src` to `dst`, `len` bytes in
/// all (at least [`HEADER_LEN`]).
pub fn build(dst: Mac, src: Mac, run: u32, seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(HEADER_LEN);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&run.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    f.extend((0..len - HEADER_LEN).map(|i| (i as u32 ^ seq).to_le_bytes()[i % 4]));
    let sum = fnv(&f[HEADER_LEN..]);
    f[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A test frame as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Sender's MAC.
    pub src: Mac,
    /// Run id.
    pub run: u32,
    /// Sequence number.
    pub seq: u32,
    /// The payload's checksum matched.
    pub intact: bool,
    /// Bytes in all.
    pub len: usize,
}

/// Parses `frame` if it is a test frame.
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    if frame.len() < HEADER_LEN
        || frame[12..14] != ETHERTYPE.to_be_bytes()
        || &frame[14..18] != MAGIC
    {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
    Some(Parsed {
        src: frame[6..12].try_into().expect("6 bytes"),
        run: word(18),
        seq: word(22),
        intact: word(26) == fnv(&frame[HEADER_LEN..]),
        len: frame.len(),
    })
}

/// What one sender's frames looked like at a receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FromSender {
    /// Frames received.
    pub received: u64,
    /// Frames with a damaged payload.
    pub damaged: u64,
    /// Frames that came after a higher sequence number.
    pub out_of_order: u64,
    /// Sequence numbers seen twice.
    pub duplicates: u64,
    /// Highest sequence number + 1.
    pub highest: u32,
    /// Smallest and largest frame.
    pub sizes: (usize, usize),
    #[serde(skip)]
    seen: std::collections::BTreeSet<u32>,
}

/// Frames of one run, per sender (MAC as text).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Tally {
    /// Per sender.
    pub senders: BTreeMap<String, FromSender>,
    /// Frames of other runs or not test frames, ignored.
    pub ignored: u64,
}

/// Formats a MAC as text.
pub fn mac_text(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Tally {
    /// Counts `frame` if it belongs to run `run` and is not from `me`
    /// (a packet socket also sees the frames it sends).
    pub fn count(&mut self, frame: &[u8], run: u32, me: &Mac) {
        let Some(p) = parse(frame).filter(|p| p.run == run && &p.src != me) else {
            self.ignored += 1;
            return;
        };
        let s = self.senders.entry(mac_text(&p.src)).or_default();
        s.received += 1;
        if !p.intact {
            s.damaged += 1;
        }
        if !s.seen.insert(p.seq) {
            s.duplicates += 1;
        }
        if p.seq + 1 < s.highest {
            s.out_of_order += 1;
        }
        s.highest = s.highest.max(p.seq + 1);
        s.sizes = if s.received == 1 {
            (p.len, p.len)
        } else {
            (s.sizes.0.min(p.len), s.sizes.1.max(p.len))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 1];
    const B: Mac = [2, 0, 0, 0, 0, 2];

    #[test]
    fn frames_round_trip_and_damage_shows() {
        for len in [0, HEADER_LEN, 60, 1514, 9014] {
            let f = build(B, A, 7, 42, len);
            assert_eq!(f.len(), len.max(HEADER_LEN));
            let p = parse(&f).unwrap();
            assert_eq!((p.src, p.run, p.seq, p.intact), (A, 7, 42, true));
        }
        let mut f = build(B, A, 7, 1, 100);
        f[80] ^= 1;
        assert!(!parse(&f).unwrap().intact);
        f[12] = 0x08;
        assert_eq!(parse(&f), None);
    }

    #[test]
    fn the_tally_counts_loss_order_duplicates_and_ignores_the_rest() {
        let mut t = Tally::default();
        for seq in [0, 1, 3, 2, 3] {
            t.count(&build(B, A, 7, seq, 64), 7, &B);
        }
        t.count(&build(B, A, 8, 9, 64), 7, &B); // another run
        t.count(&build(A, B, 7, 0, 64), 7, &B); // our own
        let s = &t.senders[&mac_text(&A)];
        assert_eq!(
            (
                s.received,
                s.out_of_order,
                s.duplicates,
                s.highest,
                s.damaged
            ),
            (5, 1, 1, 4, 0)
        );
        assert_eq!(t.ignored, 2);
    }
}
