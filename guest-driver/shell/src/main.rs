//! `vni-shell serve`: in a vni-lab guest, serves each shell port (the
//! virtio-serial ports named `org.vni-lab.shell.N`): when `vni-lab shell`
//! on the host starts a session, a login shell runs on a PTY of its own,
//! and the port carries its bytes (see the library for the stream). The
//! session ends when the shell exits (the host hears its status), when
//! the host hangs up, or when the host side goes away.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use vni_shell::{encode_data, send, Control, Decoder, PORT_PREFIX};

/// How long an idle port waits before looking again while no host is
/// connected (the port reports a hang-up until one is).
const IDLE_POLL: Duration = Duration::from_millis(250);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("serve") || args.len() != 2 {
        eprintln!("usage: vni-shell serve");
        std::process::exit(2);
    }
    let ports = find_ports();
    if ports.is_empty() {
        eprintln!("vni-shell: no virtio-serial port named {PORT_PREFIX}N");
        std::process::exit(1);
    }
    let threads: Vec<_> = ports
        .into_iter()
        .map(|port| {
            std::thread::spawn(move || loop {
                if let Err(e) = serve(&port) {
                    eprintln!("vni-shell: {}: {e}", port.display());
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

/// The device of every shell port (`/dev/vportNpM`).
fn find_ports() -> Vec<PathBuf> {
    let mut ports = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") else {
        return ports;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim().starts_with(PORT_PREFIX) {
            ports.push(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    ports.sort();
    ports
}

/// Waits until `fd` (or `other`) is readable or hung up; the `revents`.
fn wait(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of
    // the length given.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// One port, forever: idle until a host starts a session, then the
/// session.
fn serve(port: &PathBuf) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)?;
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        wait(&mut fds, Duration::from_secs(5))?;
        if fds[0].revents & libc::POLLIN == 0 {
            // No host on the other end (POLLHUP), or nothing yet.
            std::thread::sleep(IDLE_POLL);
            continue;
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            std::thread::sleep(IDLE_POLL);
            continue;
        }
        let (mut data, mut controls) = (Vec::new(), Vec::new());
        decoder.feed(&buf[..n], &mut data, &mut controls);
        for control in controls {
            match control {
                Control::Ping => send(&mut file, &Control::Ready)?,
                Control::Start { rows, cols, term } => {
                    let code = session(&mut file, rows, cols, &term)?;
                    send(&mut file, &Control::Exited { code })?;
                    decoder = Decoder::default();
                }
                // Only meaningful in a session.
                _ => {}
            }
        }
    }
}

fn set_size(fd: RawFd, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is
    // valid for the call; a bad fd only makes the call fail.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
}

/// Runs a login shell on a new PTY and relays it to `port` until it ends;
/// its exit status.
fn session(port: &mut File, rows: u16, cols: u16, term: &str) -> io::Result<i32> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes the two fds into the given pointers, valid
    // for the call; name, termios and winsize may be null.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if opened != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded: the fd is open and ours alone.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: as for `master`.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_size(master.as_raw_fd(), rows, cols);
    // Everything the child needs, made before fork (it may only make
    // async-signal-safe calls after).
    let term = if term.is_empty() { "linux" } else { term };
    let env: Vec<CString> = [
        format!("TERM={term}"),
        "HOME=/root".to_owned(),
        "USER=root".to_owned(),
        "LOGNAME=root".to_owned(),
        "SHELL=/bin/bash".to_owned(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    let bash = c"/bin/bash";
    let sh = c"/bin/sh";
    let login = c"-bash";
    let argv = [login.as_ptr(), std::ptr::null()];
    let root = c"/root";
    // SAFETY: fork has no preconditions; the child below makes only
    // async-signal-safe calls (setsid, ioctl, dup2, close, chdir, execve,
    // _exit) on data made before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        child(
            slave.as_raw_fd(),
            master.as_raw_fd(),
            &argv,
            &envp,
            [bash, sh, root],
        );
    }
    drop(slave);
    let mut pty = File::from(master);
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    let mut hung_up = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: port.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pty.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        wait(&mut fds, Duration::from_secs(1))?;
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match pty.read(&mut buf) {
                // EIO: every process of the session closed the terminal.
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = Vec::with_capacity(n + 16);
                    encode_data(&buf[..n], &mut out);
                    if port.write_all(&out).is_err() {
                        hung_up = true;
                        break;
                    }
                }
            }
        }
        if fds[0].revents & libc::POLLHUP != 0 && fds[0].revents & libc::POLLIN == 0 {
            // The host went away without hanging up.
            hung_up = true;
            break;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let n = port.read(&mut buf)?;
            if n == 0 {
                hung_up = true;
                break;
            }
            let (mut data, mut controls) = (Vec::new(), Vec::new());
            decoder.feed(&buf[..n], &mut data, &mut controls);
            if pty.write_all(&data).is_err() {
                break;
            }
            for control in controls {
                match control {
                    Control::Resize { rows, cols } => set_size(pty.as_raw_fd(), rows, cols),
                    Control::Hangup => hung_up = true,
                    _ => {}
                }
            }
            if hung_up {
                break;
            }
        }
    }
    if hung_up {
        // SAFETY: kill of the session's process group (the shell leads
        // it) has no memory effects.
        unsafe { libc::kill(-pid, libc::SIGHUP) };
    }
    drop(pty);
    let mut status = 0;
    for _ in 0..50 {
        // SAFETY: waitpid writes the status into a valid i32.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            return Ok(exit_code(status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above; the shell ignored the hang-up.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    // SAFETY: waitpid writes the status into a valid i32.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(exit_code(status))
}

/// In the forked child: a new session with the PTY `slave` as its
/// controlling terminal on 0, 1 and 2, then the shell (`paths`: bash, sh,
/// the home directory). Only async-signal-safe calls, on data made before
/// the fork (the pointers are to NUL-terminated strings and
/// null-terminated arrays alive until exec).
fn child(
    slave: RawFd,
    master: RawFd,
    argv: &[*const libc::c_char; 2],
    envp: &[*const libc::c_char],
    [bash, sh, root]: [&std::ffi::CStr; 3],
) -> ! {
    // SAFETY: setsid takes no arguments.
    unsafe { libc::setsid() };
    // SAFETY: TIOCSCTTY takes an int argument; `slave` is open.
    unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) };
    for fd in 0..3 {
        // SAFETY: dup2 of an open fd onto a standard one.
        unsafe { libc::dup2(slave, fd) };
    }
    if slave > 2 {
        // SAFETY: the child's own copy of the fd, no longer needed.
        unsafe { libc::close(slave) };
    }
    // SAFETY: as above.
    unsafe { libc::close(master) };
    // SAFETY: a NUL-terminated path.
    unsafe { libc::chdir(root.as_ptr()) };
    // SAFETY: NUL-terminated path, null-terminated argv and envp.
    unsafe { libc::execve(bash.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let argv = [sh.as_ptr(), std::ptr::null()];
    // SAFETY: as above.
    unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    // SAFETY: _exit ends the child without running the parent's atexit
    // handlers or destructors.
    unsafe { libc::_exit(127) }
}

/// A wait status as a shell would say it: the code, or 128+N for signal N.
fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}
