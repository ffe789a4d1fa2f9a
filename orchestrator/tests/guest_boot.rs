//! Guests boot from the built image under the accelerator `doctor` picks,
//! answer through the guest agent, and see the lab's ivshmem device served
//! by our server. Builds the image first when it is not cached (needs root,
//! as CI runs; about 45 s), then boots two guests at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vni_lab::agent::GuestAgent;
use vni_lab::host::HostFacts;
use vni_lab::image;
use vni_lab::ivshmem_server::IvshmemServer;
use vni_lab::topology::Accel;

/// Generous for TCG on a loaded 2-core host (one guest alone: about 10 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Removes the test's directory however the test ends (declared before
/// the QEMUs, so it is dropped after they are killed).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Guest {
    name: &'static str,
    child: Child,
    qga: PathBuf,
    console: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guest {
    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

async fn run(agent: &GuestAgent, path: &str, args: &[&str]) -> (Option<i64>, String) {
    let out = agent
        .exec(path, args, COMMAND_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    (out.code, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn boot(
    name: &'static str,
    image: &image::Image,
    accel: &str,
    ivshmem: &Path,
    dir: &Path,
) -> Guest {
    let qga = dir.join(format!("{name}.qga"));
    let console = dir.join(format!("{name}.console"));
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", accel, "-m", "512", "-smp", "1"])
        .args([
            "-display",
            "none",
            "-nic",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 quiet vni.node={name}"),
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=qga",
            qga.display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
        ])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivshmem", ivshmem.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivshmem,vectors=2"])
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 runs");
    Guest {
        name,
        child,
        qga,
        console,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_boot_answer_and_see_the_shared_device() {
    let image = tokio::task::spawn_blocking(|| {
        image::ensure("bookworm", &image::cache_dir(), false, &mut |s| {
            eprintln!("image: {s}")
        })
    })
    .await
    .unwrap()
    .expect("the guest image builds (as root)");
    let accel = HostFacts::probe().accel(Accel::Auto).unwrap();
    eprintln!("accelerator: {} ({})", accel.accel, accel.reason);

    let dir = std::env::temp_dir().join(format!("vni-guest-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("shm"))
        .unwrap();
    shm.set_len(4 << 20).unwrap();
    let server = IvshmemServer::start(&dir.join("ivshmem.sock"), shm, 2).unwrap();

    let started = Instant::now();
    let mut guests = [
        boot("node0", &image, accel.accel, server.socket(), &dir),
        boot("node1", &image, accel.accel, server.socket(), &dir),
    ];
    server.wait_for_peers(2, BOOT_TIMEOUT).await.unwrap();

    for guest in &mut guests {
        let qga = guest.qga.clone();
        let child = &mut guest.child;
        let ready = GuestAgent::wait_ready(
            &qga,
            BOOT_TIMEOUT.saturating_sub(started.elapsed()),
            COMMAND_TIMEOUT,
            || child.try_wait().ok().flatten().is_none(),
        )
        .await;
        let agent = ready
            .unwrap_or_else(|e| panic!("{}: {e}; console:\n{}", guest.name, guest.console_tail()));
        eprintln!(
            "{} ready after {:.1} s",
            guest.name,
            started.elapsed().as_secs_f64()
        );

        let release = format!("{}\n", image.manifest.kernel_release);
        assert_eq!(run(&agent, "/bin/uname", &["-r"]).await, (Some(0), release));
        assert_eq!(
            run(&agent, "/bin/hostname", &[]).await,
            (Some(0), format!("{}\n", guest.name))
        );
        let (code, lspci) = run(&agent, "/usr/bin/lspci", &["-n", "-d", "1af4:1110"]).await;
        assert_eq!(code, Some(0));
        assert!(
            lspci.contains("1af4:1110"),
            "{}: no ivshmem device: {lspci:?}",
            guest.name
        );
        // The guest reaches nothing but the region and its agent.
        let (_, links) = run(&agent, "/bin/ip", &["-o", "link"]).await;
        assert_eq!(
            links.lines().count(),
            1,
            "{}: only lo expected: {links}",
            guest.name
        );
        // A failing command's status comes back too.
        assert_eq!(run(&agent, "/bin/sh", &["-c", "exit 3"]).await.0, Some(3));
    }
    drop(guests);
    drop(server);
}
