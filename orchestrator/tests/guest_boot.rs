//! Guests boot from the built image under the accelerator `doctor` picks,
//! answer through the guest agent, and see the lab's ivshmem device served
//! by our server. Builds the image first when it is not cached (needs root,
//! as CI runs; about 45 s), then boots two guests at once.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vni_lab::host::HostFacts;
use vni_lab::image;
use vni_lab::ivshmem_server::IvshmemServer;
use vni_lab::topology::Accel;

/// Generous for TCG on a loaded 2-core host (one guest alone: about 10 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// One guest-agent command on a fresh connection, after guest-sync.
    fn agent(&self, command: &serde_json::Value, timeout: Duration) -> Option<serde_json::Value> {
        let stream = UnixStream::connect(&self.qga).ok()?;
        stream.set_read_timeout(Some(timeout)).ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut writer = stream;
        let sync_id = 4242;
        writeln!(
            writer,
            "{}",
            serde_json::json!({"execute": "guest-sync", "arguments": {"id": sync_id}})
        )
        .ok()?;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
            if v["return"] == sync_id {
                break;
            }
        }
        writeln!(writer, "{command}").ok()?;
        line.clear();
        reader.read_line(&mut line).ok()?;
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        v.get("return").cloned()
    }

    /// Runs `path args` in the guest; returns (exit code, stdout).
    fn exec(&self, path: &str, args: &[&str]) -> (i64, String) {
        let cmd = serde_json::json!({"execute": "guest-exec", "arguments": {"path": path, "arg": args, "capture-output": true}});
        let pid = self
            .agent(&cmd, COMMAND_TIMEOUT)
            .unwrap_or_else(|| panic!("{}: guest-exec failed", self.name))["pid"]
            .clone();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let status = self
                .agent(
                    &serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
                    COMMAND_TIMEOUT,
                )
                .expect("guest-exec-status");
            if status["exited"] == true {
                use base64_decode as b64;
                let out = status["out-data"].as_str().map(b64).unwrap_or_default();
                return (status["exitcode"].as_i64().unwrap_or(-1), out);
            }
            assert!(
                Instant::now() < deadline,
                "{}: {path} did not finish",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Standard base64 (the agent's encoding of captured output).
fn base64_decode(text: &str) -> String {
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let Some(v) = table.iter().position(|&t| t == c) else {
            continue;
        };
        bits = bits << 6 | v as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    let guests = [
        boot("node0", &image, accel.accel, server.socket(), &dir),
        boot("node1", &image, accel.accel, server.socket(), &dir),
    ];
    server.wait_for_peers(2, BOOT_TIMEOUT).await.unwrap();

    let checked = tokio::task::spawn_blocking(move || {
        for guest in &guests {
            let sync = serde_json::json!({"execute": "guest-ping"});
            while guest.agent(&sync, Duration::from_secs(2)).is_none() {
                assert!(
                    started.elapsed() < BOOT_TIMEOUT,
                    "{} not ready after {BOOT_TIMEOUT:?}; console:\n{}",
                    guest.name,
                    guest.console_tail()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!(
                "{} ready after {:.1} s",
                guest.name,
                started.elapsed().as_secs_f64()
            );
        }
        for guest in &guests {
            assert_eq!(
                guest.exec("/bin/uname", &["-r"]),
                (0, format!("{}\n", image.manifest.kernel_release))
            );
            assert_eq!(
                guest.exec("/bin/hostname", &[]),
                (0, format!("{}\n", guest.name))
            );
            let (code, lspci) = guest.exec("/usr/bin/lspci", &["-n", "-d", "1af4:1110"]);
            assert_eq!(code, 0);
            assert!(
                lspci.contains("1af4:1110"),
                "{}: no ivshmem device: {lspci:?}",
                guest.name
            );
            // The guest reaches nothing but the region and its agent.
            let (_, links) = guest.exec("/bin/ip", &["-o", "link"]);
            assert_eq!(
                links.lines().count(),
                1,
                "{}: only lo expected: {links}",
                guest.name
            );
        }
        guests
    })
    .await
    .unwrap();
    drop(checked);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
