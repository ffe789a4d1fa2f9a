//! The test kit the VM tests (and the host tests that run `vni-lab`)
//! share: the `vni-lab` binary run with a run directory of its own and
//! its output read, one QMP client, named timeouts, a wait for a
//! condition instead of a sleep, and checks that a lab left nothing
//! behind.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vni-lab");
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long the tests wait, by what for (generous: the machine is
/// shared and guests run under TCG).
pub mod timeouts {
    use std::time::Duration;

    /// A lab's processes to be gone once it was torn down or killed.
    pub const PROCESSES_GONE: Duration = Duration::from_secs(10);
    /// Every slot back in the pool once traffic stopped.
    pub const POOL_WHOLE: Duration = Duration::from_secs(10);
    /// A node's carrier to follow its peers' drivers.
    pub const CARRIER: Duration = Duration::from_secs(10);
    /// A node back in the lab (re-attached after being declared dead,
    /// restarted) until `vni-lab test` passes on it.
    pub const REJOIN: Duration = Duration::from_secs(60);
    /// A doorbell to arrive in a guest.
    pub const DOORBELL: Duration = Duration::from_secs(30);
    /// A QEMU's QMP socket to accept, or a QEMU to start.
    pub const QEMU_START: Duration = Duration::from_secs(30);
    /// `up` to exit after Ctrl-C or a failure.
    pub const UP_EXIT: Duration = Duration::from_secs(60);
    /// Frames crossing the VNI again after a rogue stopped (each try is a
    /// `vni-lab exec` of a ping, seconds under load: a CI run took 19.8 s
    /// of them).
    pub const AFTER_ROGUE: Duration = Duration::from_secs(40);
    /// A guest command of the kit's own (dmesg for the kept files).
    pub const KEPT_COMMAND: &str = "20s";
}

/// Polls `probe` every `every` until it gives a value, or panics after
/// `within` with what it last said: the wait for a condition the tests
/// use instead of a sleep.
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Runs QMP `command` (with no arguments) on the QMP socket `socket`
/// (waiting up to [`timeouts::QEMU_START`] for it to accept) and returns
/// its `return` value; panics on an error reply.
pub fn qmp(socket: &Path, command: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let stream = wait_for(
        "QMP socket",
        timeouts::QEMU_START,
        Duration::from_millis(50),
        || {
            std::os::unix::net::UnixStream::connect(socket)
                .map_err(|e| format!("{}: {e}", socket.display()))
        },
    );
    stream.set_read_timeout(Some(timeouts::QEMU_START)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // the greeting
    let mut reply = serde_json::Value::Null;
    for execute in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\": \"{execute}\"}}").unwrap();
        reply = loop {
            line.clear();
            assert_ne!(reader.read_line(&mut line).unwrap(), 0, "QMP closed");
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            // Events come in between; the reply has return or error.
            if value.get("return").is_some() || value.get("error").is_some() {
                break value;
            }
        };
        assert!(reply.get("return").is_some(), "QMP {execute}: {reply}");
    }
    reply["return"].take()
}

pub fn topologies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies")
}

/// A run directory of its own; tears down whatever is left and removes
/// itself when dropped, so a failing test leaks nothing either.
pub struct Run {
    pub dir: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

impl Run {
    pub fn new(tag: &str) -> Self {
        let serial = ONE_LAB_AT_A_TIME
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dir = std::env::temp_dir().join(format!("vni-lifecycle-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Run {
            dir,
            _serial: serial,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("VNI_LAB_RUN_DIR", &self.dir)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("vni-lab runs");
        eprintln!(
            "$ vni-lab {} -> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Asserts that the lab `name` left nothing: no directory, no process
    /// naming it, no shared-memory file.
    pub fn assert_gone(&self, name: &str, shm: Option<&str>) {
        let lab_dir = self.dir.join(name);
        wait_for(
            "the lab's processes gone",
            timeouts::PROCESSES_GONE,
            Duration::from_millis(100),
            || match processes_naming(&lab_dir) {
                left if left.is_empty() => Ok(()),
                left => Err(format!("processes left: {left:?}")),
            },
        );
        assert!(!lab_dir.exists(), "{} left", lab_dir.display());
        if let Some(shm) = shm {
            assert!(!Path::new(shm).exists(), "{shm} left");
        }
        // Its region, by the name vni-lab gives it (labs of the same name
        // in other run directories are not ours).
        let region = vni_lab::lab::LabDir::new(&self.dir, name).default_shm();
        // And configuration 1's sections beside it (`REGION-dir`,
        // `REGION-sN`).
        let beside = format!("{}-", region.file_name().unwrap().to_string_lossy());
        let mut left: Vec<PathBuf> = std::fs::read_dir(region.parent().unwrap())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&beside))
            })
            .collect();
        left.extend(Some(region).filter(|r| r.exists()));
        assert_eq!(left, Vec::<PathBuf>::new(), "shared memory left");
        let status = self.status();
        assert_eq!(status.as_array().map(Vec::len), Some(0), "{status}");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_files();
        }
        let _ = self.cmd(&["down", "--all"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Run {
    /// After a failure: copies the run directory's regular files (each
    /// lab's consoles, the previous lives' too, driver and supervisor
    /// logs, state) and what `inspect` says of the region now, into
    /// `target/tmp/kept/`, and says where; so that a failure seen once in
    /// CI can still be read.
    fn keep_files(&self) {
        let name = self.dir.file_name().unwrap_or_default();
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("kept")
            .join(name);
        let _ = std::fs::remove_dir_all(&kept);
        let mut copied = 0;
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() && meta.len() <= 64 << 20 {
                    let Ok(rel) = entry.path().strip_prefix(&self.dir).map(Path::to_path_buf)
                    else {
                        continue;
                    };
                    let to = kept.join(rel);
                    if to
                        .parent()
                        .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
                        && std::fs::copy(entry.path(), &to).is_ok()
                    {
                        copied += 1;
                    }
                }
            }
        }
        let _ = std::fs::create_dir_all(&kept);
        if let Ok(out) = self.cmd(&["inspect", "--json"]).output() {
            let _ = std::fs::write(kept.join("inspect.json"), &out.stdout);
        }
        // Each running node's kernel log (the kernel driver's lines are
        // there, and the console has only warnings).
        let status = self.cmd(&["status", "--json"]).output().ok();
        let status: serde_json::Value = status
            .and_then(|out| serde_json::from_slice(&out.stdout).ok())
            .unwrap_or_default();
        for lab in status.as_array().into_iter().flatten() {
            for node in lab["nodes"].as_array().into_iter().flatten() {
                let (Some(lab), Some(node)) = (lab["name"].as_str(), node["name"].as_str()) else {
                    continue;
                };
                // And the user-space driver's log, where it runs.
                for (what, command) in [
                    ("dmesg", "dmesg"),
                    ("driver.log", "cat /run/vni-driver.log 2>/dev/null"),
                ] {
                    let args = [
                        "exec",
                        "--lab",
                        lab,
                        "--timeout",
                        timeouts::KEPT_COMMAND,
                        node,
                        "--",
                        "sh",
                        "-c",
                        command,
                    ];
                    if let Ok(out) = self.cmd(&args).output() {
                        if !out.stdout.is_empty() {
                            let _ = std::fs::write(
                                kept.join(format!("{lab}.{node}.{what}")),
                                &out.stdout,
                            );
                        }
                    }
                }
            }
        }
        eprintln!(
            "kept {copied} files of the failed run (consoles, logs, inspect.json) in {}",
            kept.display()
        );
    }
}

/// Live processes (zombies excepted) whose command line names `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
        if !zombie && cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Run {
    /// Writes a lab file into the run directory.
    pub fn lab_file(&self, name: &str, yaml: &str) -> PathBuf {
        std::fs::create_dir_all(&self.dir).unwrap();
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// `up --detach` of `file`; panics unless the lab came up. Returns
    /// the lab's `status --json` entry.
    pub fn up(&self, file: &Path) -> serde_json::Value {
        let out = self.run(&["up", "--detach", "--quiet", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "the lab did not come up");
        self.status()[0].clone()
    }

    /// `exec NODE -- ARGS` with a timeout.
    pub fn exec(&self, node: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "--timeout", "120s", node, "--"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `exec`, asserting exit status 0; returns stdout.
    pub fn exec_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.exec(node, args);
        assert_eq!(out.status.code(), Some(0), "{node}: {args:?} failed");
        text(&out.stdout)
    }

    /// `inspect --json` of the only lab.
    pub fn inspect(&self) -> serde_json::Value {
        let out = self.run(&["inspect", "--json"]);
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice(&out.stdout).expect("inspect --json is JSON")
    }
}

impl Run {
    /// `vni-lab test FILE ARGS`, writing JSON, JUnit and artifacts into the
    /// run directory. Returns the exit code, the JSON results and the JUnit
    /// XML.
    pub fn test(&self, file: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
        let json = self.dir.join("results.json");
        let junit = self.dir.join("junit.xml");
        let artifacts = self.dir.join("artifacts");
        let mut all = vec![
            "test",
            file.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--artifacts",
            artifacts.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            text(&out.stdout).contains("vni-lab test "),
            "a summary line"
        );
        let results = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let junit = std::fs::read_to_string(&junit).unwrap();
        (out.status.code(), results, junit)
    }
}

/// The case `check` on `subject` in `vni-lab test` results, asserting
/// its status and that its message contains `says`.
pub fn case<'a>(
    results: &'a serde_json::Value,
    check: &str,
    subject: &str,
    status: &str,
    says: &str,
) -> &'a serde_json::Value {
    let case = results["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check && c["subject"] == subject)
        .unwrap_or_else(|| panic!("no case {check} {subject} in {results:#}"));
    assert_eq!(case["status"], status, "{case}");
    assert!(case["message"].as_str().unwrap().contains(says), "{case}");
    case
}

/// Asserts that `case`'s details contain `text`.
pub fn details_contain(case: &serde_json::Value, text: &str) {
    let details = case["details"].as_str().unwrap_or_default();
    assert!(
        details.contains(text),
        "{text:?} not in the details of {case}"
    );
}

/// The Rust-enabled kernel the kernel-driver labs boot: its source
/// (`<tree>/usr/src/linux`, with its `.config`, `scripts/` and `tools/`),
/// its image, and the module's build root, prepared as a kernel-driver lab
/// prepares them (cached; the first run on a machine builds them, as
/// root, in several minutes). Once per test binary, whichever test asks
/// first.
pub fn rust_kernel() -> &'static (PathBuf, PathBuf, vni_lab::kmod::KernelTree) {
    static TREE: std::sync::OnceLock<(PathBuf, PathBuf, vni_lab::kmod::KernelTree)> =
        std::sync::OnceLock::new();
    TREE.get_or_init(|| {
        let file = vni_lab::lab::LabFile::read(&topologies().join("two-node-kernel.yaml"))
            .expect("topologies/two-node-kernel.yaml");
        let cache = vni_lab::image::cache_dir();
        let mut step = |s: &str| eprintln!("kernel tree: {s}");
        let image = vni_lab::image::ensure(file.topology.kernel.suite(), &cache, false, &mut step)
            .expect("the kernel-driver labs' guest image");
        let tree = vni_lab::kmod::ensure_tree(&image.manifest, &cache, &mut step)
            .expect("the kernel-driver labs' kernel tree (needs root the first time)");
        (tree.root.join("usr/src/linux"), image.kernel, tree)
    })
}
