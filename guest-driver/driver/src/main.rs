//! `vni-driver`: runs inside a lab guest (built static, put in the guest's
//! initramfs by `vni-lab up`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vni_driver::device::Ivshmem;

/// Doorbell vectors the lab's QEMUs give each node.
const VECTORS: u32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "vni-driver",
    version,
    about = "The VNI driver of a vni-lab guest: the ivshmem device through VFIO"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Opens the device and prints, as JSON, its PCI address, its ivshmem
    /// peer id, the size of the shared region and what the region holds.
    Probe,
    /// Rings a peer's doorbell.
    Ring {
        /// The peer's ivshmem id (its `probe` position).
        peer: u16,
        /// The vector to ring.
        #[arg(long, default_value_t = 0)]
        vector: u16,
    },
    /// Waits for a doorbell on this node. Prints `armed` once doorbells can
    /// arrive, then `doorbell N` with the count; exits 1 on timeout.
    Wait {
        /// The vector to wait on.
        #[arg(long, default_value_t = 0)]
        vector: usize,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vni-driver: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let device = Ivshmem::open(VECTORS)?;
    match cli.command {
        Cmd::Probe => {
            let region = device.map_region()?;
            let layout = match vni_protocol::Layout::read(&region) {
                Ok((layout, epoch)) => serde_json::json!({
                    "config": layout.geometry.config.number(),
                    "slots": layout.geometry.slot_count,
                    "slot_size": layout.geometry.slot_size,
                    "max_nodes": layout.geometry.max_nodes,
                    "epoch": epoch,
                }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            let report = serde_json::json!({
                "device": device.bdf(),
                "position": device.position()?,
                "region_bytes": device.region_len(),
                "layout": layout,
            });
            println!("{report}");
        }
        Cmd::Ring { peer, vector } => device.ring(peer, vector),
        Cmd::Wait { vector, timeout } => {
            println!("armed");
            std::io::stdout().flush()?;
            let count = device.wait(vector, Duration::from_secs(timeout))?;
            if count == 0 {
                println!("timeout");
                return Ok(ExitCode::FAILURE);
            }
            println!("doorbell {count}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
