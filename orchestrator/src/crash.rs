//! Crash fingerprints in a guest's console: what the kernel prints when it
//! panics, oopses, warns or stalls. `vni-lab test` ends with a `kernel`
//! case per node that fails on any of them, even when every network check
//! passed: a driver that works but warns is broken.

/// What the kernel prints when something went wrong, as it prints it
/// (case matters: `WARNING:` is the kernel's, a program's `warning:` is
/// not).
pub const FINGERPRINTS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "Oops",
    "WARNING:",
    "Call Trace",
    "general protection fault",
    "soft lockup",
    "hard LOCKUP",
    "hung_task",
    "blocked for more than",
    "rcu: INFO:",
    "RCU stall",
    "detected stall",
    "KASAN",
    "kmemleak",
    "UBSAN",
];

/// Lines of context shown before and after the first hit.
const CONTEXT: usize = 12;

/// The first crash fingerprint in `console`: which one, and the lines
/// around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The fingerprint found.
    pub fingerprint: &'static str,
    /// Its line, trimmed.
    pub line: String,
    /// The lines around it.
    pub excerpt: String,
}

/// The first crash fingerprint in `console`, if any.
pub fn scan(console: &str) -> Option<Hit> {
    let lines: Vec<&str> = console.lines().collect();
    lines.iter().enumerate().find_map(|(i, line)| {
        let fingerprint = FINGERPRINTS.iter().find(|f| line.contains(*f))?;
        let from = i.saturating_sub(CONTEXT);
        let to = (i + CONTEXT + 1).min(lines.len());
        Some(Hit {
            fingerprint,
            line: line.trim().to_owned(),
            excerpt: lines[from..to].join("\n"),
        })
    })
}

/// Whether a console shows a kernel panic.
pub fn panicked(console: &str) -> bool {
    console.contains("Kernel panic - not syncing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_with_its_trace_is_found_with_context() {
        let console = "vni-lab: guest agent on /dev/vport0p1\n\
            [   12.1] ------------[ cut here ]------------\n\
            [   12.2] WARNING: CPU: 0 PID: 11 at net/core/dev.c:1 netdev_warn+0x1\n\
            [   12.3] Call Trace:\n";
        let hit = scan(console).expect("a hit");
        assert_eq!(hit.fingerprint, "WARNING:");
        assert!(hit.line.contains("net/core/dev.c"), "{hit:?}");
        assert!(hit.excerpt.contains("cut here") && hit.excerpt.contains("Call Trace"));
    }

    #[test]
    fn quiet_consoles_and_programs_warnings_pass() {
        let console = "[    9.65] vni: loading out-of-tree module taints kernel.\n\
            [    9.65] vni: module verification failed: signature and/or required key missing - tainting kernel\n\
            iperf3: warning: UDP block size 1470 exceeds TCP MSS\n";
        assert_eq!(scan(console), None);
    }

    #[test]
    fn every_kind_is_recognised() {
        for line in [
            "[ 1.0] BUG: unable to handle page fault for address: 0000000000000008",
            "[ 1.0] Oops: double fault: 0000 [#1] SMP NOPTI",
            "[ 1.0] general protection fault, probably for non-canonical address",
            "[ 1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!",
            "[ 1.0] INFO: task kworker/0:1:11 blocked for more than 120 seconds.",
            "[ 1.0] rcu: INFO: rcu_preempt self-detected stall on CPU",
            "[ 1.0] UBSAN: shift-out-of-bounds in drivers/net/vni.c:10:5",
            "[ 1.0] Kernel panic - not syncing: Fatal exception in interrupt",
        ] {
            assert!(scan(line).is_some(), "{line}");
        }
        assert!(panicked("[ 1.0] Kernel panic - not syncing: VFS"));
        assert!(!panicked("vni-lab: guest agent on /dev/vport1p1"));
    }
}
