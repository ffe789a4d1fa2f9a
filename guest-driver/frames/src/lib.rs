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
//! | 4 | magic and kind: `VNIT` data, `VNIQ` echo request, `VNIA` echo answer |
//! | 4 | run id (big endian) |
//! | 4 | sequence number, per sender and run |
//! | 4 | FNV-1a of the payload |
//! | rest | payload, a pattern of the sequence number |

use std::collections::BTreeMap;

/// The test EtherType (IEEE 802 local experimental).
pub const ETHERTYPE: u16 = 0x88b5;
const MAGIC: &[u8; 3] = b"VNI";
/// Ethernet header plus the test header.
pub const HEADER_LEN: usize = 14 + 16;

/// A MAC address.
pub type Mac = [u8; 6];

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// What a test frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Counted by receivers.
    Data,
    /// To be answered by an echo server.
    EchoRequest,
    /// An echo server's answer.
    EchoAnswer,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Data => b'T',
            Kind::EchoRequest => b'Q',
            Kind::EchoAnswer => b'A',
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            b'T' => Some(Kind::Data),
            b'Q' => Some(Kind::EchoRequest),
            b'A' => Some(Kind::EchoAnswer),
            _ => None,
        }
    }
}

/// Builds data frame `seq` of run `run` from `src` to `dst`, `len` bytes in
/// all (at least [`HEADER_LEN`]).
pub fn build(dst: Mac, src: Mac, run: u32, seq: u32, len: usize) -> Vec<u8> {
    build_as(Kind::Data, dst, src, run, seq, len)
}

/// Builds test frame `seq` of `kind`.
pub fn build_as(kind: Kind, dst: Mac, src: Mac, run: u32, seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(HEADER_LEN);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.push(kind.tag());
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
    /// What it is for.
    pub kind: Kind,
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
        || &frame[14..17] != MAGIC
    {
        return None;
    }
    let kind = Kind::from_tag(frame[17])?;
    let word = |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
    Some(Parsed {
        kind,
        src: frame[6..12].try_into().expect("6 bytes"),
        run: word(18),
        seq: word(22),
        intact: word(26) == fnv(&frame[HEADER_LEN..]),
        len: frame.len(),
    })
}

/// What `vni-frames send` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    /// The sender's MAC.
    pub from: String,
    /// Frames the interface took.
    pub sent: u64,
    /// Frames it refused, and why.
    pub refused: Vec<String>,
}

/// What one sender's frames looked like at a receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Per sender.
    pub senders: BTreeMap<String, FromSender>,
    /// Data frames of this run with our own MAC as source: the copies a
    /// packet socket sees of what this node sends, plus any frame the
    /// network wrongly delivered back to its sender.
    pub own: u64,
    /// Frames of other runs or kinds, or not test frames, ignored.
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
    /// Counts `frame` if it is a data frame of run `run`; those from `me`
    /// only in [`Tally::own`] (a packet socket also sees what it sends).
    pub fn count(&mut self, frame: &[u8], run: u32, me: &Mac) {
        let Some(p) = parse(frame).filter(|p| p.run == run && p.kind == Kind::Data) else {
            self.ignored += 1;
            return;
        };
        if &p.src == me {
            self.own += 1;
            return;
        }
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

/// The answer to `frame` when it is an echo request of run `run` sent to
/// `me`: the same frame back to its sender, marked as an answer.
pub fn answer(frame: &[u8], run: u32, me: &Mac) -> Option<Vec<u8>> {
    let p = parse(frame)?;
    if p.kind != Kind::EchoRequest || p.run != run || frame[..6] != me[..] {
        return None;
    }
    let mut reply = frame.to_vec();
    reply[..6].copy_from_slice(&p.src);
    reply[6..12].copy_from_slice(me);
    reply[17] = Kind::EchoAnswer.tag();
    Some(reply)
}

/// Round-trip times of an echo run, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rtts {
    /// Requests sent.
    pub sent: u64,
    /// Answers received in time, intact.
    pub answered: u64,
    /// Answers with a damaged payload.
    pub damaged: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile (nearest rank).
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Smallest.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Rtts {
    /// Summarises `samples` (microseconds) of `sent` requests.
    pub fn from_samples(sent: u64, damaged: u64, mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least q of all at
            // or below it.
            let n = samples.len();
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            samples[i]
        };
        Rtts {
            sent,
            answered: samples.len() as u64,
            damaged,
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            max_us: samples.last().copied().unwrap_or(0.0),
            min_us: samples.first().copied().unwrap_or(0.0),
            mean_us: if samples.is_empty() {
                0.0
            } else {
                samples.iter().sum::<f64>() / samples.len() as f64
            },
        }
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
            assert_eq!(
                (p.kind, p.src, p.run, p.seq, p.intact),
                (Kind::Data, A, 7, 42, true)
            );
        }
        let q = build_as(Kind::EchoAnswer, B, A, 7, 3, 60);
        assert_eq!(parse(&q).unwrap().kind, Kind::EchoAnswer);
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
        t.count(&build_as(Kind::EchoRequest, B, A, 7, 9, 64), 7, &B); // not data
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
        assert_eq!((t.ignored, t.own), (2, 1));
    }

    #[test]
    fn an_echo_request_is_answered_to_its_sender_only() {
        let q = build_as(Kind::EchoRequest, B, A, 7, 5, 80);
        let a = answer(&q, 7, &B).unwrap();
        let p = parse(&a).unwrap();
        assert_eq!(
            (p.kind, p.src, p.seq, p.intact),
            (Kind::EchoAnswer, B, 5, true)
        );
        assert_eq!(a[..6], A);
        assert_eq!(answer(&q, 8, &B), None, "another run");
        assert_eq!(answer(&q, 7, &A), None, "not for us");
        assert_eq!(answer(&a, 7, &A), None, "answers are not answered");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let r = Rtts::from_samples(201, 0, samples);
        assert_eq!((r.sent, r.answered), (201, 200));
        assert_eq!(
            (r.p50_us, r.p99_us, r.max_us, r.min_us),
            (100.0, 198.0, 200.0, 1.0)
        );
        assert!((r.mean_us - 100.5).abs() < 1e-9);
        assert_eq!(Rtts::from_samples(3, 0, vec![]).p99_us, 0.0);
    }
}
