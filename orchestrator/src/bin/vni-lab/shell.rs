//! `shell`: an interactive login shell on a node, with the user's
//! terminal: one of the node's shell ports (virtio-serial, served in the
//! guest by `vni-shell serve`, which runs the shell on a PTY), the
//! terminal in raw mode meanwhile, the window size passed on, Ctrl-] to
//! leave. No guest agent: shells work while `vni-lab test` holds it.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vni_shell::{encode, encode_data, send, Control, Decoder, PORTS};

/// Ctrl-]: leaves the shell (as telnet's escape).
const LEAVE: u8 = 0x1d;
/// How long the guest's relay may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a hung-up shell may take to end.
const HANGUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The terminal in raw mode until dropped (then as it was).
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: i32) -> anyhow::Result<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd
        // and fails (checked) otherwise.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the pointer is valid for the call.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot read the terminal's mode");
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only changes the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads the struct, valid for the call.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot set the terminal raw");
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads the saved struct, valid for the call.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The terminal's size (rows, columns), 24x80 when it does not say.
fn window_size(fd: i32) -> (u16, u16) {
    // SAFETY: winsize is plain data.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer, valid for
    // the call; a failure leaves it zeroed.
    unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    if size.ws_row == 0 || size.ws_col == 0 {
        (24, 80)
    } else {
        (size.ws_row, size.ws_col)
    }
}

/// A free shell port of `node`: its lock (held while connected) and its
/// socket.
fn claim(lab: &vni_lab::lab::LabDir, node: &str) -> anyhow::Result<(std::fs::File, UnixStream)> {
    let paths = lab.node(node);
    for (i, socket) in paths.shells.iter().enumerate() {
        let lock_path = lab.dir.join(format!("{node}.shell{i}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        // SAFETY: flock on an fd we own has no memory effects.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let stream = UnixStream::connect(socket).with_context(|| {
            format!(
                "cannot reach {node}'s shell port {} (a lab started by an older vni-lab has none: restart it)",
                socket.display()
            )
        })?;
        return Ok((lock, stream));
    }
    bail!("all {PORTS} shells of {node} are in use (`exit` one, or leave it with Ctrl-])")
}

pub fn shell(name: Option<&str>, node: &str) -> anyhow::Result<ExitCode> {
    let running = vni_lab::lab::RunningLab::find(name)?;
    running.node(node)?;
    let lab = running.dir;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("vni-lab shell needs a terminal; for a command use `vni-lab exec {node} -- CMD`");
    }
    let (_lock, mut stream) = claim(&lab, node)?;
    // The relay answers a ping once it is idle.
    let mut reader = stream.try_clone().context("the shell port")?;
    reader.set_read_timeout(Some(Duration::from_millis(250)))?;
    let mut decoder = Decoder::default();
    let (mut data, mut controls) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut buf = [0u8; 8192];
    'ready: loop {
        send(&mut stream, &Control::Ping)?;
        match reader.read(&mut buf) {
            Ok(0) => bail!("{node} closed its shell port"),
            Ok(n) => {
                decoder.feed(&buf[..n], &mut data, &mut controls);
                if controls.contains(&Control::Ready) {
                    break 'ready;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("the shell port"),
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{node}'s shell relay does not answer (see /run/vni-shell.log there, or `vni-lab console {node}`)"
            );
        }
    }
    reader.set_read_timeout(None)?;
    let tty = stdin.as_raw_fd();
    let (rows, cols) = window_size(tty);
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    eprintln!(
        "vni-lab: shell on {node} of lab {}; Ctrl-] leaves",
        lab.name
    );
    let raw = RawMode::enter(tty)?;
    send(&mut stream, &Control::Start { rows, cols, term })?;

    // The guest's bytes to the terminal; how the session ended.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Ended>();
    let to_terminal = {
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut decoder = Decoder::default();
            let mut stdout = std::io::stdout().lock();
            let mut buf = [0u8; 8192];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = done_tx.send(Ended::Closed);
                        return;
                    }
                    Ok(n) => n,
                };
                let (mut data, mut controls) = (Vec::new(), Vec::new());
                decoder.feed(&buf[..n], &mut data, &mut controls);
                let _ = stdout.write_all(&data);
                let _ = stdout.flush();
                for control in controls {
                    if let Control::Exited { code } = control {
                        let _ = done_tx.send(Ended::Exited(code));
                        return;
                    }
                }
            }
        })
    };
    // The window's size, whenever it changes.
    let mut winch = signal_hook::iterator::Signals::new([libc::SIGWINCH])?;
    let winch_handle = winch.handle();
    {
        let mut stream = stream.try_clone()?;
        std::thread::spawn(move || {
            for _ in winch.forever() {
                let (rows, cols) = window_size(tty);
                if send(&mut stream, &Control::Resize { rows, cols }).is_err() {
                    return;
                }
            }
        });
    }
    // The terminal's bytes to the guest, until Ctrl-].
    {
        let mut stream = stream.try_clone()?;
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 4096];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let input = &buf[..n];
                let leave = n == 0 || input.contains(&LEAVE);
                let before = input.split(|&b| b == LEAVE).next().unwrap_or_default();
                let mut out = Vec::new();
                encode_data(before, &mut out);
                if leave {
                    encode(&Control::Hangup, &mut out);
                }
                if stream.write_all(&out).is_err() || leave {
                    if leave {
                        let _ = done_tx.send(Ended::Left);
                    }
                    return;
                }
            }
        });
    }
    let ended = match done_rx.recv().unwrap_or(Ended::Closed) {
        // Left: the relay ends the session; wait a moment for its word.
        Ended::Left => {
            let _ = done_rx.recv_timeout(HANGUP_TIMEOUT);
            Ended::Left
        }
        other => other,
    };
    winch_handle.close();
    drop(raw);
    drop(to_terminal);
    match ended {
        Ended::Left => {
            eprintln!("\r\nvni-lab: left the shell on {node}");
            Ok(ExitCode::SUCCESS)
        }
        Ended::Exited(code) => {
            eprintln!("vni-lab: the shell on {node} exited (status {code})");
            Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
        }
        Ended::Closed => {
            eprintln!("\r\nvni-lab: {node}'s shell port closed (the node stopped?)");
            Ok(ExitCode::from(1))
        }
    }
}

/// How a session ended.
enum Ended {
    /// The user left (Ctrl-], or the end of standard input).
    Left,
    /// The shell exited with this status.
    Exited(i32),
    /// The port closed under it.
    Closed,
}
