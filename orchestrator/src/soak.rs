//! `vni-lab soak`: a lab under mixed traffic for a long time, with a node
//! killed or restarted at random every period. This module holds what can
//! be tested without guests: the seeded choice of faults, the tallies, the
//! verdict and the report. The binary drives the lab.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// What happens to a node in a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// Its QEMU is killed; it stays down until a later period restarts it.
    Kill,
    /// Killed and booted again at once.
    Restart,
}

/// Seeded choice of each period's fault (xorshift64*: the same seed, the
/// same soak).
#[derive(Clone, Debug)]
pub struct Chaos {
    state: u64,
}

impl Chaos {
    /// A plan from `seed`.
    pub fn new(seed: u64) -> Self {
        Chaos {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The next fault, given which nodes are up: a node that is down is
    /// restarted (the lab must not run out of nodes); otherwise a random
    /// node is killed or restarted, keeping at least two nodes up so that
    /// traffic goes on.
    pub fn pick(&mut self, up: &[bool]) -> (usize, Event) {
        if let Some(down) = up.iter().position(|&u| !u) {
            return (down, Event::Restart);
        }
        let node = (self.next() % up.len() as u64) as usize;
        let alive = up.iter().filter(|&&u| u).count();
        let event = if alive > 2 && self.next() % 2 == 0 {
            Event::Kill
        } else {
            Event::Restart
        };
        (node, event)
    }
}

/// Test frames of one period, summed over the receivers that lived
/// through it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frames {
    /// Frames the senders' interfaces took.
    pub sent: u64,
    /// Frames received.
    pub received: u64,
    /// Frames whose payload arrived damaged.
    pub damaged: u64,
    /// Frames that came after a higher sequence number of their sender.
    pub out_of_order: u64,
    /// Frames received twice.
    pub duplicated: u64,
}

impl Frames {
    /// Adds `other` in.
    pub fn add(&mut self, other: &Frames) {
        self.sent += other.sent;
        self.received += other.received;
        self.damaged += other.damaged;
        self.out_of_order += other.out_of_order;
        self.duplicated += other.duplicated;
    }

    /// Adds a receiver's tally, counting senders of this run only.
    pub fn add_tally(&mut self, tally: &vni_frames::Tally) {
        for from in tally.senders.values() {
            self.received += from.received;
            self.damaged += from.damaged;
            self.out_of_order += from.out_of_order;
            self.duplicated += from.duplicates;
        }
    }
}

/// One period of the soak.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Period {
    /// Seconds since the soak started.
    pub at: f64,
    /// The node hit.
    pub node: String,
    /// What happened to it.
    pub event: Option<Event>,
    /// The fault's outcome: vni-lab's message, or why it failed.
    pub outcome: String,
    /// Whether the fault was carried out.
    pub ok: bool,
    /// Seconds the fault took (a restart: until the driver was in RUN).
    pub took: f64,
    /// Test frames between the nodes that lived through the period.
    pub frames: Frames,
    /// iperf3 TCP between two nodes left alone, Mbit/s (none when it
    /// could not run).
    pub tcp_mbit: Option<f64>,
    /// Problems with the traffic itself (a command that failed).
    pub notes: Vec<String>,
}

/// The region at the end, after every node was brought back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    /// Slots in the pool.
    pub slots: u64,
    /// Free.
    pub free: u64,
    /// Held by nodes.
    pub held: u64,
    /// Queued for nodes.
    pub queued: u64,
    /// Nodes not in RUN.
    pub not_running: Vec<String>,
    /// Protocol errors the nodes counted since they last attached.
    pub protocol_errors: u64,
    /// Recoveries of the lock from dead holders, in all.
    pub lock_recoveries: u64,
}

impl Accounting {
    /// Every slot is free, held or queued, and once the lab idles, free.
    pub fn whole(&self) -> bool {
        self.free + self.held + self.queued == self.slots && self.free == self.slots
    }
}

/// The whole soak.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Soak {
    /// The lab.
    pub lab: String,
    /// Nodes.
    pub nodes: usize,
    /// Seed of the faults.
    pub seed: u64,
    /// Seconds asked for.
    pub duration: f64,
    /// Seconds per period.
    pub every: f64,
    /// Each period.
    pub periods: Vec<Period>,
    /// The region at the end.
    pub end: Option<Accounting>,
    /// Seconds it took in all.
    pub elapsed: f64,
}

impl Soak {
    /// Frames over all periods.
    pub fn frames(&self) -> Frames {
        let mut all = Frames::default();
        for p in &self.periods {
            all.add(&p.frames);
        }
        all
    }

    /// What failed; empty when the soak passed: every fault carried out,
    /// no frame damaged or duplicated, every node back, every slot back.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let failed: Vec<String> = self
            .periods
            .iter()
            .filter(|p| p.event.is_some() && !p.ok)
            .map(|p| format!("{} at {:.0} s: {}", p.node, p.at, p.outcome))
            .collect();
        if !failed.is_empty() {
            problems.push(format!("faults that failed: {}", failed.join("; ")));
        }
        let f = self.frames();
        if f.damaged > 0 {
            problems.push(format!("{} corrupted frames delivered", f.damaged));
        }
        if f.duplicated > 0 {
            problems.push(format!("{} frames delivered twice", f.duplicated));
        }
        if f.received == 0 {
            problems.push("no test frame arrived at all".into());
        }
        match &self.end {
            None => problems.push("the region was not accounted for at the end".into()),
            Some(end) => {
                if !end.not_running.is_empty() {
                    problems.push(format!(
                        "not in RUN at the end: {}",
                        end.not_running.join(", ")
                    ));
                }
                if !end.whole() {
                    problems.push(format!(
                        "slots: {} free + {} held + {} queued of {}",
                        end.free, end.held, end.queued, end.slots
                    ));
                }
            }
        }
        problems
    }

    /// The report, in Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let f = self.frames();
        let problems = self.problems();
        let _ = writeln!(md, "# vni-lab soak: {}\n", self.lab);
        let _ = writeln!(
            md,
            "{} nodes, {:.0} s asked, {:.0} s taken, a fault every {:.0} s (seed {}).\n",
            self.nodes, self.duration, self.elapsed, self.every, self.seed
        );
        let _ = writeln!(
            md,
            "**{}**{}\n",
            if problems.is_empty() {
                "PASSED"
            } else {
                "FAILED"
            },
            if problems.is_empty() {
                String::new()
            } else {
                format!(": {}", problems.join("; "))
            }
        );
        let kills = self
            .periods
            .iter()
            .filter(|p| p.event == Some(Event::Kill))
            .count();
        let restarts = self
            .periods
            .iter()
            .filter(|p| p.event == Some(Event::Restart))
            .count();
        let _ = writeln!(md, "| | |\n|---|---:|");
        let _ = writeln!(md, "| kills | {kills} |\n| restarts | {restarts} |");
        let _ = writeln!(
            md,
            "| test frames sent | {} |\n| received (by nodes that lived through their period) | {} |",
            f.sent, f.received
        );
        let _ = writeln!(
            md,
            "| corrupted | {} |\n| delivered twice | {} |\n| out of order | {} |",
            f.damaged, f.duplicated, f.out_of_order
        );
        if let Some(end) = &self.end {
            let _ = writeln!(
                md,
                "| slots at the end: free / held / queued / all | {} / {} / {} / {} |",
                end.free, end.held, end.queued, end.slots
            );
            let _ = writeln!(md, "| lock recoveries | {} |", end.lock_recoveries);
            let _ = writeln!(
                md,
                "| protocol errors counted (since each node last attached) | {} |",
                end.protocol_errors
            );
        }
        let _ = writeln!(
            md,
            "\n| at (s) | node | fault | took (s) | frames sent | received | corrupted | TCP Mbit/s | outcome |\n|---:|---|---|---:|---:|---:|---:|---:|---|"
        );
        for p in &self.periods {
            let _ = writeln!(
                md,
                "| {:.0} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                p.at,
                p.node,
                p.event
                    .map_or("-".into(), |e| format!("{e:?}").to_lowercase()),
                p.took,
                p.frames.sent,
                p.frames.received,
                p.frames.damaged,
                p.tcp_mbit.map_or("-".into(), |m| format!("{m:.0}")),
                if p.notes.is_empty() {
                    p.outcome.replace('|', "/")
                } else {
                    format!("{} ({})", p.outcome, p.notes.join("; ")).replace('|', "/")
                }
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_restarts_the_fallen_and_keeps_two_nodes_up() {
        let mut chaos = Chaos::new(5);
        assert_eq!(chaos.pick(&[true, false, true, true]), (1, Event::Restart));
        for _ in 0..100 {
            let (node, event) = chaos.pick(&[true, true]);
            assert!(node < 2);
            assert_eq!(event, Event::Restart, "two nodes: never a kill");
        }
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..100 {
            kinds.insert(chaos.pick(&[true; 4]).1);
        }
        assert_eq!(kinds.len(), 2, "four nodes: kills and restarts");
        // The same seed, the same faults.
        let (mut a, mut b) = (Chaos::new(9), Chaos::new(9));
        for _ in 0..20 {
            assert_eq!(a.pick(&[true; 4]), b.pick(&[true; 4]));
        }
    }

    fn period(event: Event, ok: bool, damaged: u64) -> Period {
        Period {
            node: "node2".into(),
            event: Some(event),
            ok,
            outcome: if ok {
                "done".into()
            } else {
                "QEMU would not start".into()
            },
            frames: Frames {
                sent: 100,
                received: 90,
                damaged,
                ..Frames::default()
            },
            ..Period::default()
        }
    }

    #[test]
    fn the_verdict_needs_clean_frames_done_faults_and_every_slot() {
        let whole = Accounting {
            slots: 100,
            free: 100,
            ..Accounting::default()
        };
        let mut soak = Soak {
            periods: vec![
                period(Event::Kill, true, 0),
                period(Event::Restart, true, 0),
            ],
            end: Some(whole.clone()),
            ..Soak::default()
        };
        assert_eq!(soak.problems(), Vec::<String>::new());
        assert_eq!(soak.frames().received, 180);
        assert!(soak.markdown().contains("**PASSED**"));

        soak.periods.push(period(Event::Restart, false, 2));
        let problems = soak.problems();
        assert!(
            problems.iter().any(|p| p.contains("QEMU would not start")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("2 corrupted frames")),
            "{problems:?}"
        );
        assert!(soak.markdown().contains("**FAILED**"));

        soak.periods.pop();
        soak.end = Some(Accounting {
            free: 90,
            held: 4,
            not_running: vec!["node3".into()],
            ..whole
        });
        let problems = soak.problems();
        assert!(problems.iter().any(|p| p.contains("node3")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("90 free + 4 held")),
            "{problems:?}"
        );
        soak.end = None;
        assert!(soak.problems().iter().any(|p| p.contains("not accounted")));
    }
}
