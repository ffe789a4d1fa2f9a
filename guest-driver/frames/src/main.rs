//! `vni-frames`: sends and receives VNI test frames on a guest's interface
//! with pnet. Runs inside lab guests (built static, added by `vni-lab up`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender, NetworkInterface};
use vni_frames::{build, mac_text, Mac, Tally};

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

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Sends COUNT frames of run RUN to a MAC (or ff:ff:ff:ff:ff:ff), sizes
    /// from --size to --max-size in turn. Prints JSON: frames sent, frames
    /// the interface refused.
    Send {
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
        /// Cycle sizes up to this one.
        #[arg(long)]
        max_size: Option<usize>,
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

fn open(
    iface: &NetworkInterface,
) -> anyhow::Result<(Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>)> {
    let config = Config {
        read_timeout: Some(Duration::from_millis(100)),
        read_buffer_size: 1 << 17,
        write_buffer_size: 1 << 17,
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
            to,
            run,
            count,
            size,
            max_size,
            gap_us,
            first_seq,
        } => {
            let dst = parse_mac(&to)?;
            let top = max_size.unwrap_or(size).max(size);
            let (mut sent, mut refused) = (0u64, Vec::new());
            for i in 0..count {
                let seq = first_seq.wrapping_add(i);
                let len = size + (i as usize % (top - size + 1));
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
            let report =
                serde_json::json!({ "from": mac_text(&me), "sent": sent, "refused": refused });
            println!("{report}");
        }
        Cmd::Recv {
            run,
            expect,
            senders,
            seconds,
        } => {
            let mut tally = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(seconds);
            println!("{}", serde_json::json!({ "listening": mac_text(&me) }));
            while Instant::now() < deadline {
                match rx.next() {
                    Ok(frame) => tally.count(frame, run, &me),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(e).context("receiving"),
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
    }
    Ok(())
}
