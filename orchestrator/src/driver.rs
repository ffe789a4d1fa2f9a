//! A node's VNI driver inside its guest: the shell that starts it, tells
//! whether it runs, stops it and shows its log, for both drivers.
//!
//! - `user`: `vni-driver run` in the background (the ivshmem device
//!   through VFIO, frames to a TAP), its pid in [`DRIVER_PID`], its log in
//!   [`DRIVER_LOG`].
//! - `kernel`: `insmod` of the Rust module `vni.ko` (shipped in the lab's
//!   initramfs at [`KERNEL_MODULE`]) with the node's settings as module
//!   parameters; its log is the kernel's, filtered to the module's lines.
//!
//! Everything else (tests, faults, the rogue) goes through these, so that
//! what a driver is stays in one place.

use crate::topology::{Driver, Node, Topology};

/// Where a user-space driver logs, in the guest.
pub const DRIVER_LOG: &str = "/run/vni-driver.log";
/// Where the user-space driver's pid is, in the guest.
pub const DRIVER_PID: &str = "/run/vni-driver.pid";
/// Where the kernel module is, in the guest.
pub const KERNEL_MODULE: &str = "/usr/local/lib/vni/vni.ko";
/// The VNI interface every node has, whichever driver.
pub const INTERFACE: &str = "vni0";

/// The script that starts `node`'s driver and gives the interface its
/// address; it returns once the driver was started (the user-space one
/// attaches in the background; the kernel one attaches in its
/// housekeeping work). Both report RUN in the region when attached.
pub fn start(node: &Node, topology: &Topology) -> String {
    let vni = &topology.vni;
    match node.driver {
        Driver::User => format!(
            "vni-driver run --node {} --mac {} --mtu {} --address {} --notification {} \
             --busy-poll-us {}{} > {DRIVER_LOG} 2>&1 < /dev/null & echo $! > {DRIVER_PID}",
            node.id,
            node.mac,
            vni.mtu,
            node.ip,
            vni.notification,
            vni.busy_poll_for(node.driver).as_micros(),
            if vni.profile { " --profile" } else { "" }
        ),
        Driver::Kernel => format!(
            "insmod {KERNEL_MODULE} node={} mac={} mtu={} notification={} busy_poll_us={} ifname={INTERFACE} \
             && ip addr add {} dev {INTERFACE} && ip link set {INTERFACE} up \
             || {{ s=$?; dmesg | tail -n 20 >&2; exit $s; }}",
            node.id,
            node.mac,
            vni.mtu,
            vni.notification,
            vni.busy_poll_for(node.driver).as_micros(),
            node.ip,
        ),
    }
}

/// A shell condition that holds while the driver runs.
pub fn alive(driver: Driver) -> String {
    match driver {
        Driver::User => format!("kill -0 \"$(cat {DRIVER_PID} 2>/dev/null)\" 2>/dev/null"),
        Driver::Kernel => "grep -q '^vni ' /proc/modules".to_owned(),
    }
}

/// A script that stops the driver and waits (up to 10 s) until it is gone;
/// either driver leaves the region as it stops (its slots go back, its
/// state is RESET). The device is then free for another user (the rogue,
/// the lock-holding stand-in), which binds it to vfio-pci.
pub fn stop(driver: Driver) -> String {
    match driver {
        Driver::User => format!(
            "pid=$(cat {DRIVER_PID} 2>/dev/null); \
             if [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null; then kill \"$pid\"; \
             for i in $(seq 100); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; fi"
        ),
        Driver::Kernel => "if grep -q '^vni ' /proc/modules; then rmmod vni; fi".to_owned(),
    }
}

/// A script that prints the driver's log (the last `lines` lines).
pub fn log(driver: Driver, lines: u32) -> String {
    match driver {
        Driver::User => format!("tail -n {lines} {DRIVER_LOG}"),
        // The module's own lines ("vni: ..."), its device's ("vni
        // 0000:00:04.0: ...") and its interface's ("vni0: ...").
        Driver::Kernel => {
            format!("dmesg | grep -E '\\] (vni|{INTERFACE})[: ]' | tail -n {lines}")
        }
    }
}

/// What [`log`] shows, for messages.
pub fn log_name(driver: Driver) -> &'static str {
    match driver {
        Driver::User => DRIVER_LOG,
        Driver::Kernel => "the kernel log (vni)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(driver: &str) -> Topology {
        let text = format!(
            "name: t\nvni:\n  driver: {driver}\nnodes:\n  - name: a\n    ip: 10.0.0.1/24\n  - name: b\n    ip: 10.0.0.2/24\n    driver: user\n"
        );
        Topology::parse(&text, std::path::Path::new("t.yaml")).expect("valid lab")
    }

    #[test]
    fn the_kernel_driver_is_loaded_with_the_nodes_settings() {
        let t = lab("kernel");
        let script = start(&t.nodes[0], &t);
        assert!(
            script.starts_with(&format!(
                "insmod {KERNEL_MODULE} node=0 mac={} mtu=1500 notification=interrupt",
                t.nodes[0].mac
            )),
            "{script}"
        );
        assert!(
            script.contains("ip addr add 10.0.0.1/24 dev vni0"),
            "{script}"
        );
        // A per-node setting wins over the lab's.
        assert!(start(&t.nodes[1], &t).starts_with("vni-driver run --node 1 "));
    }

    /// The words of `script` from `program` up to the first shell
    /// operator: the command line as the guest's shell would split it
    /// (these scripts quote nothing).
    fn command_line<'a>(script: &'a str, program: &str) -> Vec<&'a str> {
        let words: Vec<&str> = script.split_whitespace().collect();
        let start = words.iter().position(|w| *w == program).expect("program");
        words[start..]
            .iter()
            .take_while(|w| {
                !matches!(**w, ">" | "&&" | "||" | "&" | ";" | "<") && !w.starts_with('>')
            })
            .copied()
            .collect()
    }

    /// The user-space driver's command line, checked by the driver's own
    /// parser: a renamed or removed flag fails here, not in a VM test.
    #[test]
    fn the_driver_accepts_the_command_line_we_build() {
        use clap::Parser as _;
        for busy in [
            "",
            "  busy_poll: 250us\n  notification: polling\n  profile: true\n",
        ] {
            let text = format!(
                "name: t\nvni:\n  driver: user\n{busy}nodes:\n  - name: a\n    ip: 10.0.0.1/24\n  - name: b\n    ip: 10.0.0.2/24\n"
            );
            let t = Topology::parse(&text, std::path::Path::new("t.yaml")).expect("valid lab");
            let script = start(&t.nodes[1], &t);
            let line = command_line(&script, "vni-driver");
            let cli = vni_driver::cli::Cli::try_parse_from(&line)
                .unwrap_or_else(|e| panic!("{line:?}: {e}"));
            match cli.command {
                vni_driver::cli::Cmd::Run { node, mac, .. } => {
                    assert_eq!((node, mac), (1, t.nodes[1].mac));
                }
                other => panic!("{line:?} parsed as {other:?}"),
            }
        }
    }

    /// The kernel module's parameters as `up` passes them are the ones
    /// the module declares (`module_param` in its C glue).
    #[test]
    fn the_module_declares_the_parameters_we_pass() {
        let glue = include_str!("../../guest-driver/kernel/vni_glue.c");
        let t = lab("kernel");
        let script = start(&t.nodes[0], &t);
        let line = command_line(&script, "insmod");
        assert!(line.len() > 2, "{line:?}");
        for param in &line[2..] {
            let name = param.split('=').next().unwrap_or_default();
            assert!(
                glue.contains(&format!("module_param({name},"))
                    || glue.contains(&format!("module_param_string({name},")),
                "insmod passes {name}, which vni_glue.c does not declare"
            );
        }
    }

    #[test]
    fn each_driver_has_its_own_liveness_stop_and_log() {
        assert!(alive(Driver::User).contains(DRIVER_PID));
        assert!(alive(Driver::Kernel).contains("/proc/modules"));
        assert!(stop(Driver::Kernel).contains("rmmod vni"));
        assert!(log(Driver::Kernel, 5).starts_with("dmesg"));
        assert!(log(Driver::User, 5).contains(DRIVER_LOG));
    }
}
