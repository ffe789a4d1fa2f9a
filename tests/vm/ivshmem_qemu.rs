//! The ivshmem server against real QEMU: two QEMU processes (paused, no
//! guest needed) realise an `ivshmem-doorbell` device on our socket, map our
//! memory as BAR2, and come and go. tests/run installs qemu-system-x86.

#[path = "../kit/mod.rs"]
mod kit;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vni_lab::ivshmem_server::IvshmemServer;

const SHM_BYTES: u64 = 4 << 20;

/// Removes the test's directory however the test ends (declared before
/// the QEMUs, so it is dropped after they are killed).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A QEMU process, killed however the test ends.
struct Qemu {
    child: Child,
    qmp: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.qmp);
    }
}

fn qemu(dir: &Path, name: &str, ivshmem: &Path) -> Qemu {
    let qmp = dir.join(format!("{name}.qmp"));
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "64",
            "-S",
            "-nodefaults",
            "-nic",
            "none",
        ])
        .args(["-display", "none", "-serial", "none", "-monitor", "none"])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivshmem", ivshmem.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivshmem,vectors=2"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 must be installed (tests/run installs it)");
    Qemu { child, qmp }
}

/// BAR2 size of the ivshmem device (1af4:1110), from `query-pci`.
fn ivshmem_bar2(qmp_socket: &Path) -> Option<u64> {
    let buses = kit::qmp(qmp_socket, "query-pci");
    let devices = buses
        .as_array()?
        .iter()
        .flat_map(|b| b["devices"].as_array().cloned().unwrap_or_default());
    for dev in devices {
        if dev["id"]["vendor"] == 0x1af4 && dev["id"]["device"] == 0x1110 {
            return dev["regions"].as_array()?.iter().find(|r| r["bar"] == 2)?["size"].as_u64();
        }
    }
    None
}

/// Panics with QEMU's exit status and stderr if it is no longer running.
fn assert_alive(q: &mut Qemu, name: &str) {
    if let Some(status) = q.child.try_wait().unwrap() {
        let mut err = String::new();
        if let Some(mut stderr) = q.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        panic!("{name} exited ({status}): {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_guests_join_leave_and_rejoin_through_our_server() {
    let dir = std::env::temp_dir().join(format!("vni-ivshmem-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let shm_path = dir.join("shm");
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&shm_path)
        .unwrap();
    shm.set_len(SHM_BYTES).unwrap();
    let socket = dir.join("ivshmem.sock");
    let server = IvshmemServer::start(&socket, shm, 2).unwrap();

    let mut q0 = qemu(&dir, "q0", &socket);
    server
        .wait_for_peers(1, kit::timeouts::QEMU_START)
        .await
        .unwrap();
    let mut q1 = qemu(&dir, "q1", &socket);
    assert_eq!(
        server
            .wait_for_peers(2, kit::timeouts::QEMU_START)
            .await
            .unwrap(),
        vec![0, 1]
    );

    // QEMU realised the device with our memory: both alive, BAR2 is ours.
    let (qmp0, qmp1) = (q0.qmp.clone(), q1.qmp.clone());
    let bars = tokio::task::spawn_blocking(move || (ivshmem_bar2(&qmp0), ivshmem_bar2(&qmp1)))
        .await
        .unwrap();
    assert_alive(&mut q0, "q0");
    assert_alive(&mut q1, "q1");
    assert_eq!(bars, (Some(SHM_BYTES), Some(SHM_BYTES)));

    // One QEMU dies: the server notices and frees its id.
    q0.child.kill().unwrap();
    q0.child.wait().unwrap();
    let deadline = Instant::now() + kit::timeouts::QEMU_START;
    while server.peers() != vec![1] {
        assert!(
            Instant::now() < deadline,
            "peers still {:?}",
            server.peers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_alive(&mut q1, "q1 (the survivor)");

    // A restarted node joins again, on the same memory, with a fresh id
    // (reusing id 0 would make QEMU 7.2 corrupt q1's heap).
    let mut q2 = qemu(&dir, "q2", &socket);
    assert_eq!(
        server
            .wait_for_peers(2, kit::timeouts::QEMU_START)
            .await
            .unwrap(),
        vec![1, 2]
    );
    // A QMP round trip to q1 after q2 joined: q1 has run its event loop
    // since (and would have crashed on a reused id).
    let (qmp1, qmp2) = (q1.qmp.clone(), q2.qmp.clone());
    let bars = tokio::task::spawn_blocking(move || (ivshmem_bar2(&qmp1), ivshmem_bar2(&qmp2)))
        .await
        .unwrap();
    assert_eq!(bars, (Some(SHM_BYTES), Some(SHM_BYTES)));
    assert_alive(&mut q1, "q1");
    assert_alive(&mut q2, "q2 (the restarted node)");

    drop((q0, q1, q2));
    drop(server);
    assert!(!socket.exists());
}
