//! `vni-driver`'s command line, in the library so that the orchestrator's
//! tests can check the command lines it builds against this very parser
//! (a renamed flag then fails in seconds, not in a VM test).

use clap::{Parser, Subcommand};

use crate::run::Notification;

#[derive(Parser, Debug)]
#[command(
    name = "vni-driver",
    version,
    about = "The VNI driver of a vni-lab guest: the ivshmem device through VFIO"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Runs the VNI: a TAP interface whose frames travel through the
    /// shared region. Stops on SIGTERM or SIGINT.
    Run {
        /// This node's id in the region.
        #[arg(long)]
        node: usize,
        /// The interface's MAC address.
        #[arg(long)]
        mac: vni_protocol::MacAddr,
        /// MTU.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// An address (CIDR) of the interface; repeatable.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Interface name.
        #[arg(long, default_value = "vni0")]
        interface: String,
        /// interrupt or polling.
        #[arg(long, default_value = "interrupt", value_parser = notification_parser())]
        notification: Notification,
        /// Times the loop's phases and prints where the time went when
        /// the driver stops.
        #[arg(long)]
        profile: bool,
        /// Microseconds the driver keeps polling after its last frame
        /// before it sleeps (0: sleep at once).
        #[arg(long, default_value_t = 0)]
        busy_poll_us: u64,
    },
    /// For fault tests (the VNI driver must not run on this node): attaches
    /// as the node, takes slots from the pool, takes the region's lock and
    /// leaves buffer management half changed (frames for PEER_NODE written
    /// but not published), prints `holding`, and waits, lock held, to be
    /// killed (`vni-lab fault NODE kill --holding-lock`).
    HoldLock {
        /// This node's id in the region.
        #[arg(long)]
        node: usize,
        /// Its MAC address.
        #[arg(long)]
        mac: vni_protocol::MacAddr,
        /// The node whose queue gets the half-written frames.
        #[arg(long)]
        peer_node: usize,
    },
    /// A rogue node, for fault tests (the VNI driver must not run on this
    /// node): attaches as the node, then for SECONDS damages the region at
    /// RATE steps per second: frames under its name whose slot chains loop,
    /// whose lengths run past the end or whose slots are outside the pool,
    /// impossible queue indices, and random bytes over the header, the node
    /// table, the lock, the address table and the buffer management. Keeps
    /// its heartbeat and attaches again when fenced. Prints what it did as
    /// JSON.
    Rogue {
        /// This node's id in the region.
        #[arg(long)]
        node: usize,
        /// Its MAC address.
        #[arg(long)]
        mac: vni_protocol::MacAddr,
        /// How long.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Damage steps per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Seed of its random choices (the same seed, the same damage).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
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
    /// Measures doorbell round trips with a peer (the VNI driver must not
    /// run on either node): rings it until it answers, then `count` times,
    /// waiting each time for the answer, and prints the round trips as
    /// JSON (microseconds: p50, mean, min, max). With --answer, answers
    /// every doorbell until none came for 3 seconds.
    Bells {
        /// The peer's ivshmem id (its `probe` position).
        peer: u16,
        /// Round trips.
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// Answer the peer's doorbells instead of ringing.
        #[arg(long)]
        answer: bool,
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

/// `interrupt` or `polling`, the protocol's names, offered as possible values.
fn notification_parser() -> impl clap::builder::TypedValueParser<Value = Notification> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Notification::NAMES)
        .map(|name| name.parse().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_takes_the_orchestrators_flags_with_defaults() {
        let cli = Cli::try_parse_from([
            "vni-driver",
            "run",
            "--node",
            "2",
            "--mac",
            "02:00:00:00:00:03",
            "--address",
            "10.0.0.3/24",
        ])
        .unwrap();
        let Cmd::Run {
            node,
            mtu,
            addresses,
            interface,
            notification,
            busy_poll_us,
            ..
        } = cli.command
        else {
            panic!("not run: {:?}", cli.command);
        };
        assert_eq!(node, 2);
        assert_eq!(mtu, 1500);
        assert_eq!(addresses, ["10.0.0.3/24"]);
        assert_eq!(interface, "vni0");
        assert_eq!(notification, Notification::Interrupt);
        assert_eq!(busy_poll_us, 0);
    }

    #[test]
    fn a_bad_mac_or_notification_is_refused() {
        let run = |extra: &[&str]| {
            let mut args = vec!["vni-driver", "run", "--node", "0"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        assert!(run(&["--mac", "02:00:00:00:00"]).is_err());
        assert!(run(&["--mac", "02:00:00:00:00:01", "--notification", "sometimes"]).is_err());
        assert!(run(&["--mac", "02:00:00:00:00:01", "--notification", "polling"]).is_ok());
    }
}
