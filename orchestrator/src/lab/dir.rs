//! A lab's directory on the host: its lock, its plan, its recorded state,
//! taking a lab down, and the cleanup of a lab whose supervisor is gone.
//!
//! Each lab lives in one directory, `<run dir>/<lab name>/`, mode 0700:
//! the plan the supervisor follows, the state it records, every socket
//! (ivshmem server, QMP and guest agent per node), every log (console and
//! QEMU per node, the supervisor's own) and the lock. The shared-memory
//! file sits in /dev/shm (mode 0600) and is named in the state.
//!
//! The lock is an `flock` on `<dir>/lock`, taken by `up` before anything
//! starts and handed to the supervisor process, which holds it for the
//! lab's whole life. A lab directory whose lock can be taken is therefore a
//! leftover (its supervisor was killed): [`LabDir::clean_leftover`] kills
//! what it recorded and removes the rest. Processes are only killed when
//! their command line names the lab directory, so a recycled pid is safe.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::io_failure::IoFailure;
use crate::qemu::NodePaths;

/// Where labs live: `$VNI_LAB_RUN_DIR`, else `/run/vni-lab` for root, else
/// `$XDG_RUNTIME_DIR/vni-lab`, else `/tmp/vni-lab-<uid>`.
pub fn run_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VNI_LAB_RUN_DIR") {
        return PathBuf::from(dir);
    }
    let uid = uid();
    if uid == 0 {
        return PathBuf::from("/run/vni-lab");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("vni-lab");
    }
    std::env::temp_dir().join(format!("vni-lab-{uid}"))
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Errors about lab directories.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab is running.
    #[error("Lab {name:?} is already up (supervisor pid {pid}); run `vni-lab down {name}` first, or start this one under another name with --name")]
    Running {
        /// Lab name.
        name: String,
        /// Its supervisor, when recorded.
        pid: u32,
    },
    /// No such lab.
    #[error("No lab {name:?} is up (labs live in {run})")]
    NotFound {
        /// The name asked for.
        name: String,
        /// Where we looked.
        run: PathBuf,
    },
    /// No lab at all, when one was expected.
    #[error("No lab is up (labs live in {0})")]
    None(PathBuf),
    /// Several labs, and none named.
    #[error("Several labs are up ({0}); name one with --lab")]
    Ambiguous(String),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoFailure),
}

/// For `map_err`: `what` failed on `path`.
fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> IoFailure {
    crate::io_failure::io_err(format!("{what} {}", path.display()))
}

/// What the supervisor is told to start (written by `up`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Lab name (the file's, or `--name`).
    pub name: String,
    /// The lab file, for relative paths and messages.
    pub topology_path: PathBuf,
    /// Its text as read by `up` (the file may change later).
    pub topology_text: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// The kernel release guests report.
    pub kernel_release: String,
    /// QEMU has `-sandbox`.
    pub sandbox: bool,
    /// The shared-memory file to create.
    pub shm: PathBuf,
    /// Where to copy every console and the supervisor's log when the lab
    /// goes down (`up --keep-logs`).
    #[serde(default)]
    pub keep_logs: Option<PathBuf>,
}

/// A node's life as the supervisor records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// QEMU runs; the agent has not answered yet.
    Booting,
    /// The guest agent answered.
    Ready,
    /// Its vCPUs are stopped (`vni-lab fault NODE pause`).
    Paused,
    /// QEMU exited.
    Exited,
}

/// One node in the recorded state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// QEMU's pid.
    pub pid: u32,
    /// Where it is.
    pub state: NodeState,
    /// Seconds from start to ready.
    pub ready_after: Option<f64>,
    /// How QEMU ended, when it did.
    pub exit: Option<String>,
}

/// The state the supervisor keeps in `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The supervisor's pid.
    pub supervisor: u32,
    /// When the lab started (Unix seconds).
    pub started_at: u64,
    /// The shared-memory file.
    pub shm: Option<PathBuf>,
    /// Nodes, in lab order, once their QEMU started.
    pub nodes: Vec<NodeRecord>,
    /// Every node became ready.
    pub ready: bool,
}

/// The lock on a lab directory.
#[derive(Debug)]
pub struct LabLock(File);

impl LabLock {
    /// The locked file (handed to the supervisor).
    pub fn file(&self) -> &File {
        &self.0
    }

    /// Takes over a lock handed down by the parent as an open file.
    pub fn from_file(file: File) -> Self {
        LabLock(file)
    }
}

/// A lab's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabDir {
    /// Lab name.
    pub name: String,
    /// The directory.
    pub dir: PathBuf,
}

/// What [`LabDir::clean_leftover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// QEMU (or supervisor) processes killed.
    pub killed: Vec<u32>,
    /// The shared-memory file was removed.
    pub shm_removed: bool,
}

impl std::fmt::Display for Cleaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} processes killed", self.killed.len())?;
        if self.shm_removed {
            write!(f, ", shared memory removed")?;
        }
        Ok(())
    }
}

impl LabDir {
    /// The directory of lab `name` under `run`.
    pub fn new(run: &Path, name: &str) -> Self {
        LabDir {
            name: name.to_owned(),
            dir: run.join(name),
        }
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }
    /// The plan `up` writes.
    pub fn plan_path(&self) -> PathBuf {
        self.dir.join("plan.json")
    }
    /// The state the supervisor records.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// The ivshmem server's socket.
    pub fn ivshmem_socket(&self) -> PathBuf {
        self.dir.join("ivshmem.sock")
    }
    /// The supervisor's control socket (`vni-lab fault`).
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The supervisor's log.
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    /// A node's sockets and logs.
    pub fn node(&self, name: &str) -> NodePaths {
        NodePaths::new(&self.dir, name)
    }
    /// A lock serialising guest-agent clients of one node (the agent's
    /// channel takes one client at a time).
    pub fn agent_lock_path(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.qga.lock"))
    }

    /// A number of this lab's own (FNV-1a of its directory), for names it
    /// must not share with other labs.
    pub fn seed(&self) -> u32 {
        self.dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0x811c_9dc5u32, |h, &b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            })
    }

    /// The default shared-memory file of a lab: per user, lab name and
    /// run directory, so labs of one name in two run directories (tests,
    /// users with their own `VNI_LAB_RUN_DIR`) never share a region.
    pub fn default_shm(&self) -> PathBuf {
        let hash = self.seed();
        let name = format!("vni-lab-{}-{}-{hash:08x}", uid(), self.name);
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.join(name)
        } else {
            self.dir.join("shm")
        }
    }

    /// Whether a supervisor holds this lab's lock.
    pub fn is_live(&self) -> bool {
        match File::open(self.lock_path()) {
            Ok(f) => !try_flock(&f),
            Err(_) => false,
        }
    }

    /// Waits up to `timeout` for the lab's supervisor to let go of its
    /// lock; true if it did.
    pub fn wait_dead(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_live() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Creates the directory (0700) and takes its lock, for `up`. A
    /// leftover of a killed lab is cleaned first (and reported through
    /// `cleaned`); a running lab is an error.
    pub fn create(&self, cleaned: &mut Option<Cleaned>) -> Result<LabLock, LabError> {
        if let Some(parent) = self.dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err("create", parent))?;
        }
        if self.dir.exists() {
            *cleaned = Some(self.clean_leftover()?);
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("create", &self.dir))?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path())
            .map_err(io_err("create", &self.lock_path()))?;
        if !try_flock(&lock) {
            return Err(self.running());
        }
        Ok(LabLock(lock))
    }

    fn running(&self) -> LabError {
        LabError::Running {
            name: self.name.clone(),
            pid: self.state().map(|s| s.supervisor).unwrap_or(0),
        }
    }

    /// The recorded state, if any.
    pub fn state(&self) -> Option<State> {
        let text = std::fs::read_to_string(self.state_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The plan, if any.
    pub fn plan(&self) -> Option<Plan> {
        let text = std::fs::read_to_string(self.plan_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `value` as JSON to `path` atomically (a reader never sees
    /// half a file), mode 0600.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), LabError> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| io_err("encode", path)(io::Error::other(e)))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("write", &tmp))?;
        io::Write::write_all(&mut file, &text).map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("write", path))?;
        Ok(())
    }

    /// Takes the lab down: asks its supervisor to tear it down (SIGTERM),
    /// kills it when it does not within [`DOWN_TIMEOUT`], and removes what
    /// is left; a leftover of a killed vni-lab is cleaned up.
    pub fn down(&self) -> Result<Down, LabError> {
        if !self.is_live() {
            return self.clean_leftover().map(Down::Leftover);
        }
        let pid = self.state().map(|s| s.supervisor).unwrap_or(0);
        signal_if_ours(pid, &self.dir, libc::SIGTERM);
        let mut down = Down::Stopped;
        if !self.wait_dead(DOWN_TIMEOUT) {
            signal_if_ours(pid, &self.dir, libc::SIGKILL);
            self.wait_dead(Duration::from_secs(5));
            down = Down::Killed;
        }
        if self.dir.exists() {
            self.clean_leftover()?;
        }
        Ok(down)
    }

    /// Removes a lab whose supervisor is gone: kills the QEMUs (and a
    /// supervisor) it recorded that still run, removes the shared-memory
    /// file and the directory. Refuses a live lab.
    pub fn clean_leftover(&self) -> Result<Cleaned, LabError> {
        let lock = File::open(self.lock_path()).ok();
        if let Some(lock) = &lock {
            if !try_flock(lock) {
                return Err(self.running());
            }
        }
        let mut cleaned = Cleaned::default();
        let state = self.state().unwrap_or_default();
        let pids = state
            .nodes
            .iter()
            .map(|n| n.pid)
            .chain(Some(state.supervisor));
        for pid in pids {
            if kill_if_ours(pid, &self.dir) {
                cleaned.killed.push(pid);
            }
        }
        let shm = state
            .shm
            .or_else(|| self.plan().map(|p| p.shm))
            .unwrap_or_else(|| self.default_shm());
        cleaned.shm_removed = std::fs::remove_file(&shm).is_ok();
        crate::sections::Sections::remove(&shm);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(cleaned),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(cleaned),
            Err(e) => Err(io_err("remove", &self.dir)(e).into()),
        }
    }
}

/// How long [`LabDir::down`] waits for a supervisor to tear its lab down.
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How a lab went down.
#[derive(Debug)]
pub enum Down {
    /// Its supervisor tore it down.
    Stopped,
    /// Its supervisor did not stop within [`DOWN_TIMEOUT`] and was
    /// killed; what it left was removed.
    Killed,
    /// It was left over by a killed vni-lab, and is cleaned up.
    Leftover(Cleaned),
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Down::Stopped => f.write_str("is down"),
            Down::Killed => write!(
                f,
                "is down (its supervisor did not stop within {DOWN_TIMEOUT:?} and was killed)"
            ),
            Down::Leftover(cleaned) => write!(
                f,
                "was left over by a killed vni-lab; cleaned up ({cleaned})"
            ),
        }
    }
}

/// Takes `file`'s exclusive flock without waiting; false if someone holds it.
pub fn try_flock(file: &File) -> bool {
    // SAFETY: flock on an fd we own; no memory is involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A node's guest-agent lock, held while talking to its agent: the agent
/// channel takes one client at a time, so concurrent `exec`s and test runs
/// on one node queue here instead of colliding.
#[derive(Debug)]
pub struct AgentLock(#[allow(dead_code, reason = "held for its flock")] File);

impl AgentLock {
    /// Takes the lock at `path`, waiting at most `timeout`.
    pub fn take(path: &Path, timeout: Duration) -> io::Result<Self> {
        // For this user only, as everything in the lab directory, whatever
        // the umask of the command that takes it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let deadline = Instant::now() + timeout;
        loop {
            if try_flock(&file) {
                return Ok(AgentLock(file));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another vni-lab command holds this node's guest agent for over {timeout:?}"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether process `pid` runs with `needle` in its command line.
pub fn cmdline_mentions(pid: u32, needle: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Sends `sig` to `pid` if its command line names the lab directory `dir`
/// (a recycled pid belongs to someone else); true if it was sent.
pub fn signal_if_ours(pid: u32, dir: &Path, sig: i32) -> bool {
    if pid == 0 || !cmdline_mentions(pid, dir) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory effects; the pid was checked to be ours.
    unsafe { libc::kill(raw, sig) == 0 }
}

/// SIGKILLs `pid` if it is still ours (its command line names `dir`) and
/// waits up to 5 s for it to go; true if it was killed.
fn kill_if_ours(pid: u32, dir: &Path) -> bool {
    if !signal_if_ours(pid, dir, libc::SIGKILL) {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while cmdline_mentions(pid, dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The labs under `run`, by name.
pub fn list(run: &Path) -> Vec<LabDir> {
    let Ok(entries) = std::fs::read_dir(run) else {
        return Vec::new();
    };
    let mut labs: Vec<LabDir> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("lock").exists() || e.path().join("plan.json").exists())
        .map(|e| LabDir::new(run, &e.file_name().to_string_lossy()))
        .collect();
    labs.sort_by(|a, b| a.name.cmp(&b.name));
    labs
}

/// The lab named `name`, or the only lab when `name` is `None`.
pub fn find(run: &Path, name: Option<&str>) -> Result<LabDir, LabError> {
    let labs = list(run);
    match name {
        Some(name) => labs
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| LabError::NotFound {
                name: name.to_owned(),
                run: run.to_owned(),
            }),
        None => match labs.len() {
            0 => Err(LabError::None(run.to_owned())),
            1 => Ok(labs.into_iter().next().expect("one lab")),
            _ => Err(LabError::Ambiguous(
                labs.iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(tag: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("vni-lab-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Tmp(dir)
    }

    #[test]
    fn a_held_lock_is_a_running_lab_and_a_dropped_one_a_leftover() {
        let run = tmp("lock");
        let lab = LabDir::new(&run.0, "a");
        let mut cleaned = None;
        let lock = lab.create(&mut cleaned).unwrap();
        assert!(cleaned.is_none());
        let mode = std::fs::metadata(&lab.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(lab.is_live());
        assert!(matches!(
            lab.create(&mut cleaned),
            Err(LabError::Running { .. })
        ));
        assert!(matches!(
            lab.clean_leftover(),
            Err(LabError::Running { .. })
        ));
        assert_eq!(find(&run.0, None).unwrap(), lab);

        // The holder dies: the directory is a leftover, cleaned by the
        // next create. A recorded pid that is not ours is left alone.
        let shm = run.0.join("shm-file");
        std::fs::write(&shm, b"x").unwrap();
        let state = State {
            supervisor: std::process::id(),
            shm: Some(shm.clone()),
            ..State::default()
        };
        lab.write_json(&lab.state_path(), &state).unwrap();
        drop(lock);
        assert!(!lab.is_live());
        let _again = lab.create(&mut cleaned).unwrap();
        assert_eq!(
            cleaned,
            Some(Cleaned {
                killed: vec![],
                shm_removed: true
            })
        );
        assert!(!shm.exists());
        assert!(lab.state().is_none());
    }

    #[test]
    fn finding_a_lab_by_name_or_alone() {
        let run = tmp("find");
        assert!(matches!(find(&run.0, None), Err(LabError::None(_))));
        let (a, b) = (LabDir::new(&run.0, "a"), LabDir::new(&run.0, "b"));
        let _la = a.create(&mut None).unwrap();
        assert_eq!(find(&run.0, None).unwrap(), a);
        let _lb = b.create(&mut None).unwrap();
        assert!(matches!(find(&run.0, None), Err(LabError::Ambiguous(_))));
        assert_eq!(find(&run.0, Some("b")).unwrap(), b);
        assert!(matches!(
            find(&run.0, Some("c")),
            Err(LabError::NotFound { .. })
        ));
    }

    #[test]
    fn only_processes_naming_the_lab_are_killed() {
        let me = std::process::id();
        assert!(!cmdline_mentions(me, Path::new("/no/such/lab/dir")));
        assert!(!kill_if_ours(me, Path::new("/no/such/lab/dir")));
        assert!(!kill_if_ours(0, Path::new("/")));
    }
}
