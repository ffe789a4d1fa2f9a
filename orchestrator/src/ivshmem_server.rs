//! The ivshmem server: hands every QEMU of a lab the shared memory and the
//! doorbell eventfds of every peer, speaking QEMU's `ivshmem-server`
//! protocol byte for byte (Debian ships no server binary).
//!
//! The protocol (QEMU `docs/specs/ivshmem-spec.rst`): a UNIX stream socket;
//! the server talks, a client only listens. Every message is one 8-byte
//! little-endian signed integer, optionally with one file descriptor
//! (SCM_RIGHTS). A new client receives, in order:
//!
//! 1. `0`, the protocol version, no fd;
//! 2. its own peer id, no fd;
//! 3. `-1` with the shared memory fd;
//! 4. for every other peer P: P, once per vector, each with P's eventfd for
//!    that vector;
//! 5. its own id, once per vector, each with its own eventfd (the ones it
//!    waits on).
//!
//! Before step 4 the other peers learn of the new one (its id with each of
//! its eventfds). A peer id without an fd announces a disconnect. Any byte
//! or end of file from a client is its disconnect.
//!
//! The memory outlives every client: a guest that restarts gets the same
//! region, with whatever the other nodes left in it.
//!
//! Peer ids roll forward (the next unused id after the last one given), as
//! in QEMU's reference server; a departed peer's id is not handed out again
//! until the counter wraps. QEMU 7.2's ivshmem device frees a departed
//! peer's eventfd array without resetting it, so reusing that id at once
//! makes every other QEMU write into freed memory (seen here as
//! `malloc_consolidate(): unaligned fastbin chunk detected` and SIGABRT).
//! A guest's peer id therefore changes when it restarts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Protocol version QEMU expects first.
pub const PROTOCOL_VERSION: i64 = 0;
/// Most interrupt vectors per peer this server hands out.
pub const MAX_VECTORS: u16 = 64;

/// Errors of the ivshmem server.
#[derive(Debug, thiserror::Error)]
pub enum IvshmemError {
    /// The socket path is taken by a live server.
    #[error("ivshmem socket {0} is in use by another server")]
    InUse(PathBuf),
    /// Binding or preparing the socket failed.
    #[error("Cannot listen on ivshmem socket {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A vector count QEMU would not accept from us.
    #[error("Invalid vector count {0}: use 1 to {MAX_VECTORS}")]
    Vectors(u16),
    /// Waiting for peers timed out.
    #[error(
        "Timed out after {waited:?} waiting for {wanted} ivshmem peers ({connected} connected)"
    )]
    Timeout {
        /// How long.
        waited: Duration,
        /// Peers wanted.
        wanted: usize,
        /// Peers connected.
        connected: usize,
    },
}

/// A client connection; sends go straight to the socket (8-byte messages
/// never fill a socket buffer unless the client stopped reading, which is
/// then treated as its disconnect).
#[derive(Debug)]
struct Client(UnixStream);

impl ScmSocket for Client {
    fn socket_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Client {
    /// Sends `value`, with `fd` when given.
    fn send(&self, value: i64, fd: Option<RawFd>) -> io::Result<()> {
        let bytes = value.to_le_bytes();
        let fds: &[RawFd] = match &fd {
            Some(fd) => std::slice::from_ref(fd),
            None => &[],
        };
        let sent = self
            .send_with_fds(&[&bytes[..]], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if sent != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short ivshmem message",
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Peer {
    /// Tells this connection apart from a later one with the same id.
    serial: u64,
    client: Arc<Client>,
    vectors: Vec<EventFd>,
    watcher: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    shm: File,
    vectors: u16,
    peers: BTreeMap<u16, Peer>,
    next_serial: u64,
    /// Where the search for the next peer id starts.
    next_id: u16,
}

/// A running server. Dropping it stops it and removes its socket; the
/// clients see their connection close.
#[derive(Debug)]
pub struct IvshmemServer {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    peers: watch::Receiver<Vec<u16>>,
    acceptor: JoinHandle<()>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves a consistent map (every change
    // is a single insert or remove), so carry on.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl IvshmemServer {
    /// Listens on `socket` (mode 0600) and serves `shm` with `vectors`
    /// doorbell vectors per peer. Must be called inside a tokio runtime.
    pub fn start(socket: &Path, shm: File, vectors: u16) -> Result<Self, IvshmemError> {
        if !(1..=MAX_VECTORS).contains(&vectors) {
            return Err(IvshmemError::Vectors(vectors));
        }
        let listen_err = |source| IvshmemError::Listen {
            path: socket.to_owned(),
            source,
        };
        if socket.exists() {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(IvshmemError::InUse(socket.to_owned()));
            }
            // Left by a server that died: nobody listens.
            std::fs::remove_file(socket).map_err(listen_err)?;
        }
        let listener = UnixListener::bind(socket).map_err(listen_err)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        let state = Arc::new(Mutex::new(State {
            shm,
            vectors,
            peers: BTreeMap::new(),
            next_serial: 0,
            next_id: 0,
        }));
        let (tx, rx) = watch::channel(Vec::new());
        let tx = Arc::new(tx);
        let acceptor = tokio::spawn(accept_loop(listener, state.clone(), tx));
        Ok(IvshmemServer {
            socket: socket.to_owned(),
            state,
            peers: rx,
            acceptor,
        })
    }

    /// The socket QEMU connects to (`-chardev socket,path=…`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Ids of the peers connected now.
    pub fn peers(&self) -> Vec<u16> {
        self.peers.borrow().clone()
    }

    /// Waits until at least `count` peers are connected.
    pub async fn wait_for_peers(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<u16>, IvshmemError> {
        let mut rx = self.peers.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|peers| peers.len() >= count)
                .await
                .map(|peers| peers.clone())
        })
        .await;
        match waited {
            Ok(Ok(peers)) => Ok(peers),
            _ => Err(IvshmemError::Timeout {
                waited: timeout,
                wanted: count,
                connected: self.peers().len(),
            }),
        }
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        self.acceptor.abort();
        for (_, peer) in std::mem::take(&mut lock(&self.state).peers) {
            peer.watcher.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept_loop(
    listener: UnixListener,
    state: Arc<Mutex<State>>,
    peers: Arc<watch::Sender<Vec<u16>>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (a client that connects and
                // never leaves, many times over) fails every accept at
                // once: back off instead of spinning on a core.
                eprintln!("ivshmem server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let client = Arc::new(Client(stream));
        let mut st = lock(&state);
        // A client that went away mid-setup, or no id or eventfd left:
        // the connection is dropped and QEMU reports the failure.
        if let Ok((id, vectors)) = admit(&mut st, &client) {
            let serial = st.next_serial;
            st.next_serial += 1;
            // The watcher locks the state only after this guard is gone.
            let watcher = tokio::spawn(watch_client(
                client.clone(),
                id,
                serial,
                state.clone(),
                peers.clone(),
            ));
            st.peers.insert(
                id,
                Peer {
                    serial,
                    client,
                    vectors,
                    watcher,
                },
            );
            publish(&st, &peers);
        }
    }
}

/// Tells `wait_for_peers` and `peers` who is connected now.
fn publish(st: &State, peers: &watch::Sender<Vec<u16>>) {
    peers.send_replace(st.peers.keys().copied().collect());
}

/// Gives a new client its id, the memory and every peer's eventfds, and
/// tells the other peers about it. Returns its id and eventfds; the caller
/// records the peer.
fn admit(st: &mut State, client: &Client) -> io::Result<(u16, Vec<EventFd>)> {
    let id = (0..=u16::MAX)
        .map(|i| st.next_id.wrapping_add(i))
        .find(|id| !st.peers.contains_key(id))
        .ok_or_else(|| io::Error::other("all 65536 peer ids are in use"))?;
    let vectors = (0..st.vectors)
        .map(|_| EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC))
        .collect::<io::Result<Vec<_>>>()?;
    client.send(PROTOCOL_VERSION, None)?;
    client.send(i64::from(id), None)?;
    client.send(-1, Some(st.shm.as_raw_fd()))?;
    for other in st.peers.values() {
        for fd in &vectors {
            // A peer that cannot be told is gone; its watcher removes it.
            let _ = other.client.send(i64::from(id), Some(fd.as_raw_fd()));
        }
    }
    for (&other_id, other) in &st.peers {
        for fd in &other.vectors {
            client.send(i64::from(other_id), Some(fd.as_raw_fd()))?;
        }
    }
    for fd in &vectors {
        client.send(i64::from(id), Some(fd.as_raw_fd()))?;
    }
    st.next_id = id.wrapping_add(1);
    Ok((id, vectors))
}

/// Waits for the client to close (or to send anything, which the protocol
/// also treats as leaving), then removes it and tells the others.
async fn watch_client(
    client: Arc<Client>,
    id: u16,
    serial: u64,
    state: Arc<Mutex<State>>,
    peers: Arc<watch::Sender<Vec<u16>>>,
) {
    let mut byte = [0u8; 1];
    loop {
        if client.0.readable().await.is_err() {
            break;
        }
        match client.0.try_read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            _ => break,
        }
    }
    let mut st = lock(&state);
    if st.peers.get(&id).is_some_and(|p| p.serial == serial) {
        st.peers.remove(&id);
        for other in st.peers.values() {
            let _ = other.client.send(i64::from(id), None);
        }
    }
    publish(&st, &peers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream as StdStream;

    /// One message as a client sees it.
    fn recv(sock: &StdStream) -> (i64, Option<File>) {
        let mut buf = [0u8; 8];
        let (n, file) = sock.recv_with_fd(&mut buf).expect("recvmsg");
        assert_eq!(n, 8, "short message");
        (i64::from_le_bytes(buf), file)
    }

    /// A client socket whose reads fail instead of hanging when a message
    /// the test expects never comes.
    fn connect(path: &Path) -> StdStream {
        let sock = StdStream::connect(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock
    }

    fn shm(len: u64) -> File {
        let f = tempfile_in_shm();
        f.set_len(len).unwrap();
        f
    }

    fn tempfile_in_shm() -> File {
        let path = std::env::temp_dir().join(format!(
            "vni-ivshmem-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    fn socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "vni-ivshmem-{tag}-{}-{}.sock",
            std::process::id(),
            rand_suffix()
        ))
    }

    /// Reads a new client's setup: (id, shm, peers' fds by id, own fds).
    fn setup(
        sock: &StdStream,
        vectors: usize,
        others: &[u16],
    ) -> (u16, File, BTreeMap<u16, Vec<File>>, Vec<File>) {
        assert_eq!(recv(sock).0, PROTOCOL_VERSION);
        let (id, fd) = recv(sock);
        assert!(fd.is_none(), "the id comes without an fd");
        let (minus_one, shm) = recv(sock);
        assert_eq!(minus_one, -1);
        let shm = shm.expect("shm fd");
        let mut peers: BTreeMap<u16, Vec<File>> = BTreeMap::new();
        for &other in others {
            for _ in 0..vectors {
                let (who, fd) = recv(sock);
                assert_eq!(who, i64::from(other));
                peers
                    .entry(other)
                    .or_default()
                    .push(fd.expect("peer eventfd"));
            }
        }
        let mut own = Vec::new();
        for _ in 0..vectors {
            let (who, fd) = recv(sock);
            assert_eq!(who, id);
            own.push(fd.expect("own eventfd"));
        }
        (id as u16, shm, peers, own)
    }

    #[tokio::test]
    async fn two_clients_get_the_memory_and_each_others_doorbells() {
        let path = socket_path("two");
        let server = IvshmemServer::start(&path, shm(1 << 20), 2).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let a = connect(&path);
        let (a_id, a_shm, _, a_own) = tokio::task::spawn_blocking({
            let a = a.try_clone().unwrap();
            move || setup(&a, 2, &[])
        })
        .await
        .unwrap();
        assert_eq!(a_id, 0);
        server
            .wait_for_peers(1, Duration::from_secs(5))
            .await
            .unwrap();

        let b = connect(&path);
        let (b_id, b_shm, b_peers, b_own) = tokio::task::spawn_blocking({
            let b = b.try_clone().unwrap();
            move || setup(&b, 2, &[0])
        })
        .await
        .unwrap();
        assert_eq!(b_id, 1);
        assert_eq!(
            server
                .wait_for_peers(2, Duration::from_secs(5))
                .await
                .unwrap(),
            vec![0, 1]
        );

        // A learns of B: B's id with each of B's eventfds.
        let a2 = a.try_clone().unwrap();
        let a_about_b = tokio::task::spawn_blocking(move || [recv(&a2), recv(&a2)])
            .await
            .unwrap();
        assert!(a_about_b.iter().all(|(who, fd)| *who == 1 && fd.is_some()));

        // Both mapped the same memory: a write through one fd shows in the other.
        use std::os::unix::fs::FileExt;
        a_shm.write_at(b"shared", 4096).unwrap();
        let mut buf = [0u8; 6];
        b_shm.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"shared");

        // A doorbell: B writes to A's vector-1 eventfd (as QEMU does for a
        // write to BAR0's doorbell register), A's own vector-1 fd fires.
        let ring = |fd: &File| {
            use std::io::Write;
            (&*fd).write_all(&1u64.to_ne_bytes()).unwrap();
        };
        ring(&b_peers[&0][1]);
        let mut counter = [0u8; 8];
        (&a_own[1]).read_exact(&mut counter).unwrap();
        assert_eq!(u64::from_ne_bytes(counter), 1);
        ring(&a_about_b[0].1.as_ref().unwrap().try_clone().unwrap());
        (&b_own[0]).read_exact(&mut counter).unwrap();
        assert_eq!(u64::from_ne_bytes(counter), 1);

        // B leaves: A is told, with B's id and no fd.
        drop(b);
        let a2 = a.try_clone().unwrap();
        let (who, fd) = tokio::task::spawn_blocking(move || recv(&a2))
            .await
            .unwrap();
        assert_eq!((who, fd.is_none()), (1, true));
        tokio::time::timeout(Duration::from_secs(5), async {
            while server.peers() != vec![0] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();

        // A newcomer gets a fresh id, not the one just freed, and sees A.
        let c = connect(&path);
        let (c_id, _, c_peers, _) = tokio::task::spawn_blocking(move || setup(&c, 2, &[0]))
            .await
            .unwrap();
        assert_eq!((c_id, c_peers.len()), (2, 1));
        drop(a);

        drop(server);
        assert!(
            !path.exists(),
            "the socket is removed when the server stops"
        );
    }

    #[tokio::test]
    async fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
        let path = socket_path("busy");
        let first = IvshmemServer::start(&path, shm(1 << 20), 1).unwrap();
        assert!(matches!(
            IvshmemServer::start(&path, shm(1 << 20), 1),
            Err(IvshmemError::InUse(_))
        ));
        drop(first);
        // A socket file nobody listens on (a crashed server) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let second = IvshmemServer::start(&path, shm(1 << 20), 1).unwrap();
        assert!(matches!(
            IvshmemServer::start(&path, shm(1 << 20), 0),
            Err(IvshmemError::Vectors(0))
        ));
        drop(second);
    }

    #[tokio::test]
    async fn waiting_for_peers_times_out_with_the_count() {
        let path = socket_path("wait");
        let server = IvshmemServer::start(&path, shm(1 << 20), 1).unwrap();
        let err = server
            .wait_for_peers(1, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                IvshmemError::Timeout {
                    wanted: 1,
                    connected: 0,
                    ..
                }
            ),
            "{err}"
        );
    }
}
