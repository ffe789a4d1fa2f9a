//! `network: virtio-net-tap`: the strongest QEMU network a user can pick
//! without KVM's vhost, as the bench's second baseline. Each node's
//! virtio-net NIC sits on a TAP (`-netdev tap` with `vnet_hdr`, so
//! checksum and segmentation offloads reach the host and 64 KiB TCP
//! segments cross whole), and the TAPs are joined by a Linux bridge.
//!
//! All of it lives in a network namespace of the lab's own, which no name
//! refers to: the supervisor holds it open and the QEMUs run inside it, so
//! the host's networking is never touched, labs never see each other's
//! devices, and when the last of them exits the kernel removes the
//! namespace with its bridge and TAPs. Nothing is left to clean up, even
//! after a `kill -9`.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

/// The largest MTU a TAP takes (Linux counts the Ethernet header into its
/// 65535-byte limit); the host side is set to it whatever the guests use,
/// so that only the guests' MTU limits frames.
const TAP_MTU: u32 = 65521;

/// Why the lab's network could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create a network namespace for the lab (needs root or CAP_SYS_ADMIN): {0}")]
    Create(#[source] std::io::Error),
    #[error("cannot open the new network namespace: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot run `ip` (iproute2) in the lab's network namespace: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`ip -batch` could not set up the bridge and TAPs ({status}): {stderr}")]
    Setup { status: String, stderr: String },
}

/// The lab's network namespace, with a bridge `br0` and one TAP per node
/// (`tap0`, `tap1`, … by node id) enslaved to it, all up.
#[derive(Debug)]
pub struct LabNet {
    ns: OwnedFd,
}

impl LabNet {
    /// A new namespace holding the bridge and `taps` TAPs.
    pub fn create(taps: usize) -> Result<Self, NetnsError> {
        let ns = new_namespace()?;
        let net = LabNet { ns };
        net.run_ip(&setup_script(taps))?;
        Ok(net)
    }

    /// The TAP of node `id`, as QEMU's `-netdev tap,ifname=` names it.
    pub fn tap_name(id: usize) -> String {
        format!("tap{id}")
    }

    /// Has `command`, once forked, join the namespace before it runs.
    pub fn enter_on_spawn(&self, command: &mut Command) {
        let fd = self.ns.as_raw_fd();
        let join = move || {
            // SAFETY: setns takes a descriptor this process holds open (the
            // parent's `LabNet` outlives the spawn, and the descriptor is
            // inherited until exec) and a flag; between fork and exec it
            // only changes the child's own network namespace.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: `join` makes one async-signal-safe system call and
        // allocates nothing, as code between fork and exec must.
        unsafe { command.pre_exec(join) };
    }

    /// Runs `ip -batch -` with `script` on its standard input, inside the
    /// namespace.
    fn run_ip(&self, script: &str) -> Result<(), NetnsError> {
        let mut command = Command::new("ip");
        command
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        self.enter_on_spawn(&mut command);
        let mut child = command.spawn().map_err(NetnsError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error shows as ip's own failure below.
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child.wait_with_output().map_err(NetnsError::Spawn)?;
        if !out.status.success() {
            return Err(NetnsError::Setup {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

/// The `ip -batch` commands that make the bridge and the TAPs. STP stays
/// off, so a port forwards as soon as its QEMU opens the TAP.
fn setup_script(taps: usize) -> String {
    let mut script = format!(
        "link set lo up\nlink add br0 type bridge stp_state 0\nlink set br0 mtu {TAP_MTU} up\n"
    );
    for id in 0..taps {
        let tap = LabNet::tap_name(id);
        script.push_str(&format!(
            "tuntap add dev {tap} mode tap vnet_hdr\nlink set {tap} mtu {TAP_MTU} master br0 up\n"
        ));
    }
    script
}

/// A network namespace of its own, as an open descriptor. Made on a
/// thread of its own: `unshare(CLONE_NEWNET)` moves only the calling
/// thread, which then ends, leaving the namespace to the descriptor.
fn new_namespace() -> Result<OwnedFd, NetnsError> {
    std::thread::spawn(|| {
        // SAFETY: unshare takes a flag and changes only this thread's
        // namespaces; this thread does nothing else but open the result.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Create(std::io::Error::last_os_error()));
        }
        File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(NetnsError::Open)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError::Create(std::io::Error::other(
            "the thread making it panicked",
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_makes_a_bridge_and_a_tap_per_node() {
        let script = setup_script(2);
        assert!(script.contains("link add br0 type bridge stp_state 0\n"));
        assert!(script.contains("tuntap add dev tap0 mode tap vnet_hdr\n"));
        assert!(script.contains("link set tap1 mtu 65521 master br0 up\n"));
        assert!(!script.contains("tap2"));
    }

    /// Needs root; skipped (and says so) without it.
    #[test]
    fn the_namespace_holds_the_devices_and_leaves_the_hosts_alone() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make a network namespace");
            return;
        }
        let net = LabNet::create(2).expect("lab network");
        let mut ip = Command::new("ip");
        ip.args(["-o", "link", "show"]);
        net.enter_on_spawn(&mut ip);
        let inside = String::from_utf8(ip.output().expect("ip").stdout).expect("utf-8");
        for dev in ["br0", "tap0", "tap1"] {
            assert!(inside.contains(&format!(": {dev}:")), "{dev} in {inside}");
        }
        assert!(inside.contains("master br0"), "{inside}");
        // Another namespace than the test's own: the host's devices are
        // not the ones made.
        use std::os::unix::fs::MetadataExt as _;
        let own = std::fs::metadata("/proc/self/ns/net")
            .expect("own netns")
            .ino();
        let lab = File::from(net.ns.try_clone().expect("dup"))
            .metadata()
            .expect("lab netns")
            .ino();
        assert_ne!(own, lab);
    }
}
