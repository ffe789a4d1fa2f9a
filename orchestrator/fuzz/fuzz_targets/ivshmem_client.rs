//! Misbehaving clients of the ivshmem server: up to four connections that
//! connect, never read, read only part of their setup, send bytes (which
//! the protocol takes as leaving), half-close, close and come back, in any
//! order. Afterwards the server must have exactly the connections that
//! still follow the protocol as peers, and a well-behaved newcomer must get
//! a complete, correct setup: the version, a fresh id, the memory, every
//! live peer's eventfds, its own. The server must never panic or hang.
#![no_main]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vni_lab::ivshmem_server::{IvshmemServer, PROTOCOL_VERSION};

const VECTORS: u16 = 2;
const CLIENTS: usize = 4;
/// How long the server may take to notice what a client did.
const SETTLE: Duration = Duration::from_secs(2);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn socket_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "vni-fuzz-ivshmem-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn memfd() -> File {
    // SAFETY: memfd_create reads a NUL-terminated name we own and returns
    // a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vni-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(4096).expect("size memfd");
    file
}

/// One message: its value and whether an fd came with it; `None` when
/// nothing is there (non-blocking) or the read timed out.
fn recv(sock: &UnixStream) -> Option<(i64, bool)> {
    let mut buf = [0u8; 8];
    match sock.recv_with_fd(&mut buf) {
        Ok((8, file)) => Some((i64::from_le_bytes(buf), file.is_some())),
        Ok((0, _)) => None,
        Ok((n, _)) => panic!("a message of {n} bytes"),
        Err(_) => None,
    }
}

struct Client {
    sock: UnixStream,
    /// Still a peer by the protocol: has neither sent anything nor
    /// half-closed.
    member: bool,
    /// Messages of its setup's first three (version, id, memory) read.
    setup: usize,
    /// Its peer id, once read.
    id: Option<u16>,
}

impl Client {
    /// Reads one message, noting the id the setup gives.
    fn read(&mut self) -> Option<(i64, bool)> {
        let message = recv(&self.sock)?;
        if self.setup == 1 {
            self.id = u16::try_from(message.0).ok();
        }
        self.setup += 1;
        Some(message)
    }
}

fuzz_target!(init: {
    // As in every Rust program (libFuzzer's main is not Rust's): a write
    // to a closed socket is an error, not a signal.
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory
    // effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}, |data: &[u8]| {
    let rt = runtime();
    let path = socket_path();
    let server = {
        let _in_runtime = rt.enter();
        IvshmemServer::start(&path, memfd(), VECTORS).expect("server starts")
    };
    let mut clients: [Option<Client>; CLIENTS] = Default::default();
    for op in data.chunks(2).take(64) {
        let (code, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        let k = usize::from(code / 8) % CLIENTS;
        match code % 8 {
            0 => {
                if clients[k].is_none() {
                    let sock = UnixStream::connect(&path).expect("connect");
                    clients[k] = Some(Client {
                        sock,
                        member: true,
                        setup: 0,
                        id: None,
                    });
                }
            }
            1 => clients[k] = None,
            2 => {
                if let Some(c) = &mut clients[k] {
                    let len = usize::from(arg % 16) + 1;
                    // The server may already have closed on us.
                    let _ = c.sock.write_all(&vec![arg; len]);
                    c.member = false;
                }
            }
            3 => {
                if let Some(c) = &mut clients[k] {
                    c.sock.set_nonblocking(true).expect("nonblocking");
                    for _ in 0..usize::from(arg) {
                        let Some((value, _)) = c.read() else { break };
                        assert!(value >= -1, "a negative peer id {value}");
                    }
                }
            }
            4 => {
                if let Some(c) = &mut clients[k] {
                    let _ = c.sock.shutdown(Shutdown::Write);
                    c.member = false;
                }
            }
            5 => {
                // Churn: connect and leave at once, `arg % 8` times.
                for _ in 0..arg % 8 {
                    drop(UnixStream::connect(&path).expect("connect"));
                }
            }
            6 => std::thread::sleep(Duration::from_micros(u64::from(arg) * 10)),
            _ => {}
        }
    }

    // Every open connection has been accepted: its setup comes first,
    // whatever it did since (the server sends before it reads).
    for (k, c) in clients.iter_mut().enumerate() {
        let Some(c) = c else { continue };
        c.sock.set_nonblocking(false).expect("blocking");
        c.sock.set_read_timeout(Some(SETTLE)).expect("timeout");
        while c.setup < 3 {
            assert!(c.read().is_some(), "client {k} never got its setup");
        }
    }
    // The server's peers become exactly the members.
    let members: BTreeSet<u16> = clients
        .iter()
        .flatten()
        .filter(|c| c.member)
        .map(|c| c.id.expect("a member read its id"))
        .collect();
    let settled = |extra: Option<u16>| {
        let until = Instant::now() + SETTLE;
        let mut want = members.clone();
        want.extend(extra);
        loop {
            let peers: BTreeSet<u16> = server.peers().into_iter().collect();
            if peers == want {
                break;
            }
            assert!(
                Instant::now() < until,
                "the server has peers {peers:?}, the clients following the protocol are {want:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    settled(None);

    // A newcomer gets a complete setup: the version, a fresh id, the
    // memory, each peer's eventfds (a peer that was leaving as it came may
    // be announced, then said to be gone), its own.
    let sock = UnixStream::connect(&path).expect("connect");
    sock.set_read_timeout(Some(SETTLE)).expect("timeout");
    assert_eq!(recv(&sock), Some((PROTOCOL_VERSION, false)), "version first");
    let (id, fd) = recv(&sock).expect("an id");
    assert!(!fd, "the id comes without an fd");
    let id = u16::try_from(id).expect("an id in range");
    assert!(!members.contains(&id), "id {id} is in use");
    assert_eq!(recv(&sock), Some((-1, true)), "then the memory");
    let mut fds: std::collections::BTreeMap<u16, u16> = Default::default();
    let mut own = 0;
    while own < VECTORS {
        let (peer, fd) = recv(&sock).expect("the rest of the setup");
        assert!(fd, "setup messages come with an fd");
        let peer = u16::try_from(peer).expect("a peer id in range");
        if peer == id {
            own += 1;
        } else {
            assert_eq!(own, 0, "a peer's eventfd after the newcomer's own");
            *fds.entry(peer).or_default() += 1;
        }
    }
    for (peer, count) in &fds {
        assert_eq!(*count, VECTORS, "peer {peer}: {count} eventfds");
    }
    settled(Some(id));
    // Then only notices of peers leaving.
    sock.set_nonblocking(true).expect("nonblocking");
    while let Some((gone, fd)) = recv(&sock) {
        assert!(!fd, "after the setup, only disconnect notices");
        fds.remove(&u16::try_from(gone).expect("an id in range"));
    }
    let announced: BTreeSet<u16> = fds.into_keys().collect();
    assert_eq!(announced, members, "the newcomer's view of the peers");
    drop(sock);
    drop(clients);
    drop(server);
    assert!(!path.exists(), "the socket outlived its server");
});
