//! `vni-frames`: sends and receives VNI test frames on a guest's interface
//! with pnet. Runs inside lab guests (built static, added by `vni-lab up`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender, NetworkInterface};
use vni_frames::{answer, build, build_as, mac_text, parse, Kind, Mac, Rtts, Sent, Tally};

#[derive(Parser, Debug)]
#[command(
    name = "vni-frames",
    version,
    about = "VNI test frames: send, receive, count"
)]
struct Cli {
    /// The interface.
    #[arg(long, default_value = "vni0", global = true)]
    interface: String,
    #[command(subcommand)]
    command: Cmd,
}

/// Where frames go, and how many of what size.
#[derive(clap::Args, Debug)]
struct Frames {
    /// Destination MAC.
    #[arg(long)]
    to: String,
    /// Run id.
    #[arg(long)]
    run: u32,
    /// Frames to send.
    #[arg(long, default_value_t = 100)]
    count: u32,
    /// Frame size in bytes (Ethernet header included).
    #[arg(long, default_value_t = 64)]
    size: usize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Sends COUNT frames of run RUN to a MAC (or ff:ff:ff:ff:ff:ff), sizes
    /// from --size to --max-size in turn. Prints JSON: frames sent, frames
    /// the interface refused.
    Send {
        #[command(flatten)]
        frames: Frames,
        /// Cycle sizes up to this one.
        #[arg(long)]
        max_size: Option<usize>,
        /// Size step when cycling.
        #[arg(long, default_value_t = 1)]
        step: usize,
        /// Pause between frames, in microseconds.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
        /// Sequence number of the first frame (to go on from an earlier
        /// send of the same run).
        #[arg(long, default_value_t = 0)]
        first_seq: u32,
    },
    /// Receives frames of run RUN until EXPECT arrived from every sender
    /// seen, or for --seconds. Prints JSON: per sender, frames received,
    /// damaged, out of order, duplicated, highest sequence number, sizes.
    Recv {
        /// Run id.
        #[arg(long)]
        run: u32,
        /// Stop early once this many arrived from each of --senders.
        #[arg(long)]
        expect: Option<u64>,
        /// Senders to wait for with --expect.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Longest wait.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Create this file once listening.
        #[arg(long)]
        ready: Option<PathBuf>,
        /// Stop once no frame of the run came for this many milliseconds
        /// (after the first one).
        #[arg(long)]
        idle_ms: Option<u64>,
    },
    /// Answers echo requests of run RUN sent to this node, for --seconds
    /// or until --count were answered. Prints JSON: requests answered.
    Echo {
        /// Run id.
        #[arg(long)]
        run: u32,
        /// Stop after answering this many.
        #[arg(long)]
        count: Option<u64>,
        /// Longest run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Create this file once listening.
        #[arg(long)]
        ready: Option<PathBuf>,
    },
    /// Sends COUNT echo requests to a MAC, one at a time, and times the
    /// answers. Prints JSON: sent, answered, damaged, p50/p99/max/min/mean
    /// round trip in microseconds.
    Ping {
        #[command(flatten)]
        frames: Frames,
        /// How long to wait for each answer, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
        /// Pause between requests, in microseconds.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
    },
}

fn interface(name: &str) -> anyhow::Result<NetworkInterface> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .with_context(|| format!("no interface {name}"))
}

fn parse_mac(text: &str) -> anyhow::Result<Mac> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {text:?}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {text:?}: six bytes expected"))
}

/// Receive buffer of the packet socket: room for a burst that arrives
/// while this process is not scheduled (the default holds a few hundred
/// small frames).
const SOCKET_BUFFER: libc::c_int = 16 << 20;

/// A packet socket for every protocol, with a large receive buffer.
fn packet_socket() -> anyhow::Result<i32> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() takes no pointers; the fd it returns is handed to
    // pnet, which owns and closes it.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a packet socket");
    }
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: the option value is a live c_int and its size is given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&SOCKET_BUFFER).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // FORCE needs CAP_NET_ADMIN; the plain option is capped by
        // rmem_max but is better than nothing.
        if rc == 0 {
            break;
        }
    }
    Ok(fd)
}

fn open(
    iface: &NetworkInterface,
) -> anyhow::Result<(Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>)> {
    let config = Config {
        read_timeout: Some(Duration::from_millis(100)),
        // The largest frame: MTU 65535 plus its Ethernet header.
        read_buffer_size: 1 << 17,
        write_buffer_size: 1 << 17,
        socket_fd: Some(packet_socket()?),
        ..Config::default()
    };
    match pnet_datalink::channel(iface, config).context("opening a packet socket")? {
        Channel::Ethernet(tx, rx) => Ok((tx, rx)),
        _ => bail!("not an Ethernet channel"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let iface = interface(&cli.interface)?;
    let me: Mac = iface
        .mac
        .map(|m| m.octets())
        .with_context(|| format!("{} has no MAC", iface.name))?;
    let (mut tx, mut rx) = open(&iface)?;
    match cli.command {
        Cmd::Send {
            frames,
            max_size,
            step,
            gap_us,
            first_seq,
        } => {
            let Frames {
                to,
                run,
                count,
                size,
            } = frames;
            let dst = parse_mac(&to)?;
            let top = max_size.unwrap_or(size).max(size);
            let step = step.max(1);
            let sizes = (top - size) / step + 1;
            let (mut sent, mut refused) = (0u64, Vec::new());
            for i in 0..count {
                let seq = first_seq.wrapping_add(i);
                let len = size + (i as usize % sizes) * step;
                let frame = build(dst, me, run, seq, len);
                match tx.send_to(&frame, None) {
                    Some(Ok(())) => sent += 1,
                    Some(Err(e)) => refused.push(format!("seq {seq}, {len} bytes: {e}")),
                    None => refused.push(format!("seq {seq}: no buffer")),
                }
                if gap_us > 0 {
                    std::thread::sleep(Duration::from_micros(gap_us));
                }
            }
            let report = Sent {
                from: mac_text(&me),
                sent,
                refused,
            };
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::Recv {
            run,
            expect,
            senders,
            seconds,
            ready,
            idle_ms,
        } => {
            let mut tally = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let idle = idle_ms.map(Duration::from_millis);
            let mut last: Option<Instant> = None;
            announce(ready.as_deref())?;
            while Instant::now() < deadline {
                match rx.next() {
                    Ok(frame) => {
                        let before = tally.ignored;
                        tally.count(frame, run, &me);
                        if tally.ignored == before {
                            last = Some(Instant::now());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(e).context("receiving"),
                }
                if let (Some(idle), Some(last)) = (idle, last) {
                    if last.elapsed() >= idle {
                        break;
                    }
                }
                if let Some(n) = expect {
                    if tally.senders.len() >= senders
                        && tally.senders.values().all(|s| s.received >= n)
                    {
                        break;
                    }
                }
            }
            println!("{}", serde_json::to_string(&tally)?);
        }
        Cmd::Echo {
            run,
            count,
            seconds,
            ready,
        } => {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut answered = 0u64;
            announce(ready.as_deref())?;
            while Instant::now() < deadline && count.is_none_or(|c| answered < c) {
                let reply = match rx.next() {
                    Ok(frame) => answer(frame, run, &me),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => None,
                    Err(e) => return Err(e).context("receiving"),
                };
                if let Some(reply) = reply {
                    if let Some(Ok(())) = tx.send_to(&reply, None) {
                        answered += 1;
                    }
                }
            }
            println!("{}", serde_json::json!({ "answered": answered }));
        }
        Cmd::Ping {
            frames,
            wait_ms,
            gap_us,
        } => {
            let dst = parse_mac(&frames.to)?;
            let (run, count, size) = (frames.run, frames.count, frames.size);
            let wait = Duration::from_millis(wait_ms);
            let (mut samples, mut damaged) = (Vec::new(), 0u64);
            for seq in 0..count {
                let request = build_as(Kind::EchoRequest, dst, me, run, seq, size);
                let sent_at = Instant::now();
                match tx.send_to(&request, None) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return Err(e).context("sending an echo request"),
                    None => bail!("sending an echo request: no buffer"),
                }
                while sent_at.elapsed() < wait {
                    let frame = match rx.next() {
                        Ok(frame) => frame,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(e) => return Err(e).context("receiving"),
                    };
                    let Some(p) = parse(frame) else { continue };
                    if p.kind == Kind::EchoAnswer && p.run == run && p.seq == seq && p.src == dst {
                        if p.intact {
                            samples.push(sent_at.elapsed().as_secs_f64() * 1e6);
                        } else {
                            damaged += 1;
                        }
                        break;
                    }
                }
                if gap_us > 0 {
                    std::thread::sleep(Duration::from_micros(gap_us));
                }
            }
            let rtts = Rtts::from_samples(u64::from(count), damaged, samples);
            println!("{}", serde_json::to_string(&rtts)?);
        }
    }
    Ok(())
}

/// Says on stderr that the socket is open, and creates `ready` if given.
fn announce(ready: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(path) = ready {
        std::fs::write(path, b"").with_context(|| format!("creating {}", path.display()))?;
    }
    eprintln!("listening");
    Ok(())
}
