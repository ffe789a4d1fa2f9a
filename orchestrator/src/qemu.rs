//! One QEMU per OS node: its command line, and the few QMP calls the lab
//! needs (vCPU threads for pinning, a clean quit).
//!
//! Every node gets the same machine: q35 with an emulated intel-iommu (the
//! guest's VNI driver reaches the ivshmem device through VFIO, which needs
//! an IOMMU), the `ivshmem-doorbell` device on the lab's server with two
//! vectors (at a fixed PCI slot, where drivers find it), in configuration
//! 1 the write-protected sections ([`crate::sections`]), a virtio-serial
//! port for the guest agent, a QMP socket and its serial console in a log
//! file. `-nodefaults` and `-nic none` leave the
//! guest no other device: nothing but the region and the agent leads out.
//! `-no-reboot` with the kernel's `panic=-1` turns a kernel panic into
//! QEMU's exit, which the orchestrator sees at once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;

use crate::sections::Sections;
use crate::topology::Node;
use vni_protocol::directory::DOORBELL_SLOT;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// Doorbell vectors per node (the protocol's: 0 for "frames wait", 1 for
/// control).
pub const VECTORS: u16 = vni_protocol::DOORBELL_VECTORS;
/// The virtio-serial port name qemu-ga looks for.
pub const AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// Where a node's QEMU finds and puts things.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePaths {
    /// QMP socket (QEMU listens).
    pub qmp: PathBuf,
    /// Guest agent socket (QEMU listens).
    pub agent: PathBuf,
    /// Serial console log.
    pub console: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    /// The shell ports' sockets (QEMU listens; `vni-lab shell` connects),
    /// [`vni_shell::PORTS`] of them.
    pub shells: Vec<PathBuf>,
}

impl NodePaths {
    /// The paths of node `name` in lab directory `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        NodePaths {
            qmp: dir.join(format!("{name}.qmp")),
            agent: dir.join(format!("{name}.qga")),
            console: dir.join(format!("{name}.console")),
            qemu_log: dir.join(format!("{name}.qemu.log")),
            shells: (0..vni_shell::PORTS)
                .map(|i| dir.join(format!("{name}.shell{i}")))
                .collect(),
        }
    }
}

/// Everything a node's command line depends on.
#[derive(Clone, Debug)]
pub struct NodeSpec<'a> {
    /// Lab name (QEMU's `-name` is `lab/node`).
    pub lab: &'a str,
    /// The node.
    pub node: &'a Node,
    /// `kvm` or `tcg`.
    pub accel: &'a str,
    /// Kernel image.
    pub kernel: &'a Path,
    /// Initramfs (the whole root filesystem).
    pub initrd: &'a Path,
    /// Extra kernel command line, appended last.
    pub append: &'a str,
    /// The lab's ivshmem server socket.
    pub ivshmem: &'a Path,
    /// Sockets and logs.
    pub paths: &'a NodePaths,
    /// Whether this QEMU supports `-sandbox` (built with seccomp).
    pub sandbox: bool,
    /// `network: virtio-net` or `virtio-net-tap`: the `-netdev` of the
    /// node's virtio-net NIC.
    pub netdev: Option<String>,
    /// Configuration 1's write-protected sections, which every node maps
    /// (its own read-write).
    pub sections: Option<&'a Sections>,
}

/// The kernel command line of a node. `no_timer_check`: a guest starved of
/// CPU at boot (eight TCG guests on two host cores) fails the kernel's
/// check that the timer interrupt arrives through the interrupt-remapped
/// IO-APIC, and panics; seen twice in one bench sweep. `loglevel=5`: the
/// console shows warnings and worse (a `WARNING:` and its call trace are
/// printed at warning level, which `quiet` would hide), so that
/// `vni-lab test`'s `kernel` case finds them there.
pub fn kernel_cmdline(spec: &NodeSpec<'_>) -> String {
    let mut line = format!(
        "console=ttyS0 panic=-1 loglevel=5 intel_iommu=on no_timer_check vni.node={} vni.id={}",
        spec.node.name, spec.node.id
    );
    if !spec.append.trim().is_empty() {
        line.push(' ');
        line.push_str(spec.append.trim());
    }
    line
}

/// The arguments of `qemu-system-x86_64` for one node.
pub fn args(spec: &NodeSpec<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    let path = |p: &Path| p.display().to_string();
    let node = spec.node;
    // Under TCG, `rep movsb` runs one byte per emulated iteration, and a
    // guest kernel that sees ERMS/FSRM copies every buffer that way; without
    // them it uses `rep movsq`. Measured on two-node labs: iperf3 TCP went
    // from 275 to 618 Mbit/s over the VNI and from 316 to 650 over virtio-net.
    let cpu = if spec.accel == "kvm" {
        "host"
    } else {
        "max,erms=off,fsrm=off"
    };
    push(&[
        "-name",
        &format!("{}/{},debug-threads=on", spec.lab, node.name),
    ]);
    push(&[
        "-machine",
        &format!("q35,accel={}", spec.accel),
        "-cpu",
        cpu,
    ]);
    // Under TCG, QEMU makes a guest's atomic instructions (lock xadd,
    // cmpxchg) atomic on the host only when the machine may have more
    // than one vCPU (`tcg_cpu_init_cflags(cpu, max_cpus > 1)`): with one,
    // nothing else in the process can race, so it emulates them as a
    // plain load and store. The ivshmem region is written by other QEMU
    // processes, so a guest with one vCPU could lose a peer's ticket or
    // claim a lock a peer holds. One possible vCPU more (never brought
    // online) keeps every cross-guest atomic atomic.
    let smp = if spec.accel == "tcg" && node.vcpus < 2 {
        format!("{},maxcpus=2", node.vcpus)
    } else {
        node.vcpus.to_string()
    };
    push(&["-smp", &smp]);
    push(&["-m", &format!("{}M", node.memory >> 20)]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-nic", "none", "-no-reboot"]);
    if spec.sandbox {
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    push(&["-device", "intel-iommu"]);
    push(&["-kernel", &path(spec.kernel), "-initrd", &path(spec.initrd)]);
    push(&["-append", &kernel_cmdline(spec)]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={}", path(&spec.paths.console)),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            path(&spec.paths.qmp)
        ),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&[
        "-device",
        "virtio-serial-pci",
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            path(&spec.paths.agent)
        ),
        "-device",
        &format!("virtserialport,chardev=agent,name={AGENT_PORT}"),
    ]);
    // The shell ports, on the same virtio-serial bus (`vni-lab shell`).
    for (i, socket) in spec.paths.shells.iter().enumerate() {
        push(&[
            "-chardev",
            &format!(
                "socket,id=shell{i},path={},server=on,wait=off",
                path(socket)
            ),
            "-device",
            &format!(
                "virtserialport,chardev=shell{i},name={}{i}",
                vni_shell::PORT_PREFIX
            ),
        ]);
    }
    push(&[
        "-chardev",
        &format!("socket,id=ivshmem,path={}", path(spec.ivshmem)),
        "-device",
        &format!("ivshmem-doorbell,chardev=ivshmem,vectors={VECTORS},addr={DOORBELL_SLOT:#x}"),
    ]);
    if let Some(sections) = spec.sections {
        let extra = sections.qemu_args(node.id);
        push(&extra.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if let Some(netdev) = &spec.netdev {
        push(&[
            "-netdev",
            netdev,
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={}", node.mac),
        ]);
    }
    args
}

/// The `-netdev` of node `index` of `count` for `network: virtio-net`:
/// two nodes are joined by a stream on a Unix socket in the lab directory
/// (node 0 listens), more by a datagram multicast group on the loopback
/// interface, chosen from `seed` so that labs do not share one.
pub fn baseline_netdev(dir: &Path, index: usize, count: usize, seed: u32) -> String {
    if count == 2 {
        format!(
            "stream,id=net0,server={},addr.type=unix,addr.path={}",
            if index == 0 { "on" } else { "off" },
            dir.join("net.sock").display()
        )
    } else {
        let group = format!("239.255.{}.{}", (seed >> 8) & 0xff, (seed & 0xff).max(1));
        let port = 20_000 + (seed >> 16) % 20_000;
        format!(
            "dgram,id=net0,remote.type=inet,remote.host={group},remote.port={port},local.type=inet,local.host=127.0.0.1,local.port={port}"
        )
    }
}

/// The `-netdev` of a node for `network: virtio-net-tap`: the TAP of its
/// own that the lab's network namespace holds ([`crate::netns`]), with
/// the virtio-net header so that offloads reach it.
pub fn tap_netdev(tap: &str) -> String {
    format!("tap,id=net0,ifname={tap},script=no,downscript=no,vnet_hdr=on")
}

/// Whether this QEMU was built with seccomp (`-sandbox`). Asked once per
/// lab: a QEMU without it refuses the option and would not start.
pub fn supports_sandbox() -> bool {
    std::process::Command::new(QEMU)
        .args(["-sandbox", "help"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Errors talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened or the handshake failed.
    #[error("Cannot talk QMP on {path}: {message}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A command failed or got no answer in time.
    #[error("QMP {what} failed: {message}")]
    Failed {
        /// The command.
        what: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A QMP connection to one QEMU, every call bounded in time.
pub struct Qmp {
    service: QapiService<qapi::futures::QmpStreamTokio<WriteHalf<UnixStream>>>,
    events: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.events.abort();
    }
}

impl Qmp {
    /// Connects to `path` and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let err = |message: String| QmpError::Connect {
            path: path.to_owned(),
            message,
        };
        let stream = tokio::time::timeout(timeout, async {
            QmpStreamTokio::open_uds(path)
                .await?
                .negotiate()
                .await
                .map_err(std::io::Error::other)
        })
        .await
        .map_err(|_| err(format!("no answer within {timeout:?}")))?
        .map_err(|e| err(e.to_string()))?;
        let (service, events) = stream.spawn_tokio();
        Ok(Qmp {
            service,
            events,
            timeout,
        })
    }

    async fn call<C: qmp::QmpCommand + 'static>(
        &self,
        what: &'static str,
        command: C,
    ) -> Result<C::Ok, QmpError> {
        match tokio::time::timeout(self.timeout, self.service.execute(command)).await {
            Err(_) => Err(QmpError::Failed {
                what,
                message: format!("no answer within {:?}", self.timeout),
            }),
            Ok(Err(e)) => Err(QmpError::Failed {
                what,
                message: e.to_string(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Host thread ids of the vCPUs, in vCPU order.
    pub async fn vcpu_threads(&self) -> Result<Vec<i32>, QmpError> {
        let cpus = self
            .call("query-cpus-fast", qmp::query_cpus_fast {})
            .await?;
        let mut threads: Vec<(i64, i64)> = cpus
            .iter()
            .filter_map(|c| match c {
                qmp::CpuInfoFast::x86_64(base) | qmp::CpuInfoFast::i386(base) => {
                    Some((base.cpu_index, base.thread_id))
                }
                _ => None,
            })
            .collect();
        threads.sort_unstable();
        threads
            .into_iter()
            .map(|(index, tid)| {
                i32::try_from(tid).map_err(|_| QmpError::Failed {
                    what: "query-cpus-fast",
                    message: format!("vCPU {index} has thread id {tid}"),
                })
            })
            .collect()
    }

    /// Stops the vCPUs (the guest hangs, its devices stay).
    pub async fn pause(&self) -> Result<(), QmpError> {
        self.call("stop", qmp::stop {}).await.map(|_| ())
    }

    /// Lets stopped vCPUs run again.
    pub async fn resume(&self) -> Result<(), QmpError> {
        self.call("cont", qmp::cont {}).await.map(|_| ())
    }

    /// Asks QEMU to exit.
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.call("quit", qmp::quit {}).await.map(|_| ())
    }
}

/// Pins thread `tid` to `cpus`.
pub fn pin_thread(tid: i32, cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only writes within `set`; validation keeps cpu
        // numbers below CPU_SETSIZE (1024).
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the kernel
    // only reads it.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    fn lab() -> Topology {
        Topology::parse(
            "name: t\nnodes:\n  - {name: a, ip: 10.0.0.1/24, vcpus: 2, memory: 256M}\n  - {name: b, ip: 10.0.0.2/24}\n",
            Path::new("t.yaml"),
        )
        .unwrap()
    }

    fn rendered(spec: &NodeSpec<'_>) -> String {
        args(spec)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A TCG node's spec with the lab's paths, the sandbox on and a
    /// `loglevel=7` to append.
    fn spec<'a>(node: &'a Node, paths: &'a NodePaths) -> NodeSpec<'a> {
        NodeSpec {
            lab: "t",
            node,
            accel: "tcg",
            kernel: Path::new("/img/vmlinuz"),
            initrd: Path::new("/img/initrd"),
            append: " loglevel=7 ",
            ivshmem: Path::new("/run/lab/ivshmem.sock"),
            paths,
            sandbox: true,
            netdev: None,
            sections: None,
        }
    }

    #[test]
    fn a_one_vcpu_tcg_guest_may_have_two_so_its_atomics_stay_atomic() {
        let lab = lab();
        let paths = NodePaths::new(Path::new("/run/lab"), "b");
        let mut spec = spec(&lab.nodes[1], &paths);
        assert!(rendered(&spec).contains("-smp 1,maxcpus=2 "));
        spec.accel = "kvm";
        assert!(rendered(&spec).contains("-smp 1 "));
        spec.accel = "tcg";
        spec.node = &lab.nodes[0];
        assert!(rendered(&spec).contains("-smp 2 "));
    }

    #[test]
    fn the_command_line_isolates_the_guest_and_wires_the_lab() {
        let lab = lab();
        let paths = NodePaths::new(Path::new("/run/lab"), "a");
        let spec = spec(&lab.nodes[0], &paths);
        let line = rendered(&spec);
        for part in [
            "-machine q35,accel=tcg -cpu max",
            "-smp 2 -m 256M",
            "-nodefaults",
            "-nic none -no-reboot",
            "-sandbox on,",
            "-device intel-iommu",
            "file,id=console,path=/run/lab/a.console",
            "socket,id=qmp,path=/run/lab/a.qmp,server=on,wait=off",
            "socket,id=agent,path=/run/lab/a.qga,server=on,wait=off",
            "name=org.qemu.guest_agent.0",
            "socket,id=shell0,path=/run/lab/a.shell0,server=on,wait=off",
            "virtserialport,chardev=shell3,name=org.vni-lab.shell.3",
            "socket,id=ivshmem,path=/run/lab/ivshmem.sock",
            &format!("ivshmem-doorbell,chardev=ivshmem,vectors={VECTORS},addr=0x10"),
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        assert_eq!(
            kernel_cmdline(&spec),
            "console=ttyS0 panic=-1 loglevel=5 intel_iommu=on no_timer_check vni.node=a vni.id=0 loglevel=7"
        );
        assert!(!line.contains("-netdev") && !line.contains("-nic user"));
        let baseline = NodeSpec {
            netdev: Some(baseline_netdev(Path::new("/run/lab"), 1, 2, 7)),
            ..spec
        };
        let line = rendered(&baseline);
        assert!(
            line.contains(
                "-netdev stream,id=net0,server=off,addr.type=unix,addr.path=/run/lab/net.sock"
            ),
            "{line}"
        );
        assert!(
            line.contains(&format!(
                "-device virtio-net-pci,netdev=net0,mac={}",
                lab.nodes[0].mac
            )),
            "{line}"
        );
        assert!(baseline_netdev(Path::new("/x"), 0, 4, 0x0102_0304)
            .starts_with("dgram,id=net0,remote.type=inet,remote.host=239.255.3.4,remote.port="));
        let spec = NodeSpec {
            accel: "kvm",
            sandbox: false,
            append: "",
            ..spec
        };
        let line = rendered(&spec);
        assert!(line.contains("accel=kvm -cpu host"));
        assert!(!line.contains("-sandbox"));
        assert!(kernel_cmdline(&spec).ends_with("vni.id=0"));
    }

    #[test]
    fn a_configuration_1_node_gets_the_sections_after_the_doorbell() {
        let topology = Topology::parse(
            "name: t\nvni: {buffers: 1}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let geometry = topology
            .sections_for("tcg")
            .expect("configuration 1 has sections");
        let sections = Sections::new(Path::new("/dev/shm/t"), geometry);
        let paths = NodePaths::new(Path::new("/run/lab"), "b");
        let node = &topology.nodes[1];
        let line = rendered(&NodeSpec {
            sections: Some(&sections),
            ..spec(node, &paths)
        });
        let doorbell = line.find("ivshmem-doorbell").unwrap();
        let own = line
            .find("mem-path=/dev/shm/t-s1,size=33554432,share=on -device")
            .expect("its own section, writable");
        let peer = line
            .find("mem-path=/dev/shm/t-s0,size=33554432,share=on,readonly=on")
            .expect("the peer's, read-only");
        assert!(doorbell < peer && peer < own, "{line}");
        assert!(Topology::parse(
            "name: t\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
            Path::new("t.yaml"),
        )
        .unwrap()
        .sections_for("tcg")
        .is_none());
    }
}
