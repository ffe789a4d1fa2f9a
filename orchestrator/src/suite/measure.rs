//! Measurements beyond the checks, for `vni-lab bench`: ping round trips,
//! iperf3 on several pairs at once while the region is sampled, the
//! interfaces' drop counters, the drivers' own profile. They run through
//! the same guests and context as the checks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vni_frames::Rtts;

use super::checks::Context;
use super::guests::Trouble;
use super::verdicts::{output_text, parse_iperf, Iperf};
use crate::driver::{DRIVER_LOG, DRIVER_PID};
use crate::topology::Driver;

/// The round trips in `ping`'s output (`time=0.512 ms` lines), summarised;
/// `sent` from its summary line when it has one.
pub fn parse_ping(text: &str, sent: u64) -> Rtts {
    let samples: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|ms| ms.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    let sent = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(sent);
    Rtts::from_samples(sent, 0, samples)
}

/// How full the buffers were while a load ran, sampled from the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Occupancy {
    /// Slots in the pool (config 2) or in all rings (config 1).
    pub slots: u64,
    /// Samples taken.
    pub samples: u64,
    /// Most slots in use at once.
    pub max_used: u64,
    /// Mean slots in use.
    pub mean_used: f64,
}

/// Samples `shm`'s buffer use every 20 ms for `time`.
async fn sample(shm: Option<PathBuf>, time: Duration) -> Option<Occupancy> {
    let shm = shm?;
    let region = vni_protocol::Region::open(&shm).ok()?;
    let end = Instant::now() + time;
    let mut o = Occupancy::default();
    let mut sum = 0u64;
    while Instant::now() < end {
        if let Ok(report) = vni_protocol::inspect(&region) {
            let used = report.pool.slots.saturating_sub(report.pool.free);
            o.slots = report.pool.slots;
            o.max_used = o.max_used.max(used);
            sum += used;
            o.samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if o.samples > 0 {
        o.mean_used = sum as f64 / o.samples as f64;
    }
    Some(o)
}

/// What an iperf3 run on several pairs at once gave.
#[derive(Clone, Debug, Default)]
pub struct Concurrent {
    /// Each pair's figures, or why it has none.
    pub pairs: Vec<Result<Iperf, String>>,
    /// Buffer use while they ran (the VNI only).
    pub occupancy: Option<Occupancy>,
}

impl Context {
    /// Kills whatever a measurement that ended early left running.
    pub async fn kill_leftovers(&mut self) {
        self.guests.kill_leftovers().await;
    }

    /// `count` pings from `a` to `b`, `interval` apart.
    pub async fn ping(
        &mut self,
        a: usize,
        b: usize,
        count: u32,
        interval: Duration,
    ) -> Result<Rtts, Trouble> {
        let client = self.node(a).name;
        let ip = self.node(b).ip.addr().to_string();
        let (count_t, interval_t) = (count.to_string(), format!("{:.3}", interval.as_secs_f64()));
        let wait = self.t(5.0 + interval.as_secs_f64() * f64::from(count));
        let out = self
            .guests
            .run(
                &client,
                &[
                    "ping",
                    "-n",
                    "-c",
                    &count_t,
                    "-i",
                    &interval_t,
                    "-W",
                    "1",
                    &ip,
                ],
                wait,
            )
            .await?;
        let rtts = parse_ping(&String::from_utf8_lossy(&out.stdout), count.into());
        if rtts.answered == 0 {
            return Err(Trouble {
                message: format!("{client}: no ping to {ip} was answered"),
                details: Some(output_text(&out)),
            });
        }
        Ok(rtts)
    }

    /// iperf3 on every pair of `pairs` at once for `time` (TCP, or UDP at
    /// `udp_rate` bit/s each), the region's buffer use sampled meanwhile.
    pub async fn iperf_together(
        &mut self,
        pairs: &[(usize, usize)],
        udp_rate: Option<u64>,
        time: Duration,
    ) -> Result<Concurrent, Trouble> {
        let secs = time.as_secs().max(1);
        let mut ports = Vec::new();
        for &(_, b) in pairs {
            ports.push(self.spawn_iperf_server(b, 20_000).await?);
        }
        for (&(_, b), &(port, _)) in pairs.iter().zip(&ports) {
            let server = self.node(b).name;
            self.wait_for_port(&server, port).await?;
        }
        let mut clients = Vec::new();
        for (&(a, b), &(port, _)) in pairs.iter().zip(&ports) {
            let client = self.node(a).name;
            let command = self.iperf_client(b, port, secs, udp_rate);
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            clients.push((client.clone(), self.guests.spawn(&client, &command).await?));
        }
        // Only the VNI has buffers in the region to sample.
        let vni = self.topology.network == crate::topology::Network::Vni;
        let shm = self.shm.clone().filter(|_| vni);
        let sampler = sample(shm, Duration::from_secs(secs));
        let timeout = self.t(30.0) + Duration::from_secs(secs);
        let waits = async {
            let mut outs = Vec::new();
            for (client, pid) in &clients {
                outs.push(self.guests.wait(client, *pid, "iperf3 -c", timeout).await);
            }
            outs
        };
        let (outs, occupancy) = tokio::join!(waits, sampler);
        let mut result = Concurrent {
            pairs: Vec::new(),
            occupancy,
        };
        for out in outs {
            let out = out?;
            result.pairs.push(parse_iperf(
                &String::from_utf8_lossy(&out.stdout),
                udp_rate.is_some(),
            ));
        }
        for (&(_, b), &(_, pid)) in pairs.iter().zip(&ports) {
            let server = self.node(b).name;
            let _ = self
                .guests
                .wait(&server, pid, "iperf3 -s", self.t(10.0))
                .await;
        }
        Ok(result)
    }

    /// Frames each node's `vni0` dropped so far, sending and receiving
    /// (a TAP drops what the driver has no room for).
    pub async fn interface_drops(&mut self) -> Result<Vec<(u64, u64)>, Trouble> {
        let mut drops = Vec::new();
        for i in 0..self.topology.nodes.len() {
            let name = self.node(i).name;
            let out = self
                .guests
                .sh(
                    &name,
                    "cat /sys/class/net/vni0/statistics/tx_dropped /sys/class/net/vni0/statistics/rx_dropped",
                    self.t(10.0),
                )
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut numbers = text.split_whitespace().map(|n| n.parse().unwrap_or(0));
            drops.push((numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)));
        }
        Ok(drops)
    }

    /// Frames every node's driver dropped so far (sending, receiving),
    /// from the region's counters.
    pub fn region_drops(&self) -> Option<(u64, u64)> {
        let report = self.region_report().ok()?;
        Some(report.nodes.iter().fold((0, 0), |(tx, rx), n| {
            (tx + n.counters.tx_dropped, rx + n.counters.rx_dropped)
        }))
    }

    /// Each node's ivshmem doorbell id, as its driver published it.
    pub fn doorbell_peers(&self) -> Vec<Option<u16>> {
        self.region_report()
            .map(|r| r.nodes.iter().map(|n| n.doorbell_peer).collect())
            .unwrap_or_default()
    }

    /// `count` doorbell round trips from node `a` to node `b` and back,
    /// their ivshmem ids `peers`, with `vni-driver bells` (the drivers
    /// must be stopped: the device is theirs otherwise). Its JSON line.
    pub async fn doorbell_rtt(
        &mut self,
        a: usize,
        b: usize,
        peers: (u16, u16),
        count: u32,
    ) -> Result<serde_json::Value, Trouble> {
        let (client, server) = (self.node(a).name, self.node(b).name);
        let (peer_a, peer_b, count_t) =
            (peers.0.to_string(), peers.1.to_string(), count.to_string());
        let pid = self
            .guests
            .spawn(&server, &["vni-driver", "bells", &peer_a, "--answer"])
            .await?;
        let out = self
            .guests
            .run(
                &client,
                &["vni-driver", "bells", &peer_b, "--count", &count_t],
                self.t(30.0 + f64::from(count) * 0.01),
            )
            .await?;
        let _ = self
            .guests
            .wait(&server, pid, "vni-driver bells --answer", self.t(10.0))
            .await;
        super::verdicts::last_json(&client, "vni-driver bells", &out)
    }

    /// Stops every node's driver and returns the profile each printed
    /// (its `profile {...}` line, run with `vni.profile: true`).
    pub async fn stop_drivers_for_profile(&mut self) -> Vec<Option<serde_json::Value>> {
        let mut profiles = Vec::new();
        for i in 0..self.topology.nodes.len() {
            let name = self.node(i).name;
            // The kernel module keeps no profile of its loop; unloading
            // it frees the device (for the doorbell round trips).
            if self.node(i).driver == Driver::Kernel {
                let _ = self
                    .guests
                    .sh(&name, &crate::driver::stop(Driver::Kernel), self.t(15.0))
                    .await;
                profiles.push(None);
                continue;
            }
            let script = format!(
                "kill -TERM $(cat {DRIVER_PID}); i=0; while kill -0 $(cat {DRIVER_PID}) 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; cat {DRIVER_LOG}"
            );
            let log = self.guests.sh(&name, &script, self.t(15.0)).await;
            profiles.push(log.ok().and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("vni-driver: profile "))
                    .and_then(|json| serde_json::from_str(json).ok())
            }));
        }
        profiles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_is_read() {
        let text = "PING 10.10.0.2 (10.10.0.2) 56(84) bytes of data.
64 bytes from 10.10.0.2: icmp_seq=1 ttl=64 time=1.50 ms
64 bytes from 10.10.0.2: icmp_seq=2 ttl=64 time=0.500 ms
64 bytes from 10.10.0.2: icmp_seq=3 ttl=64 time=2.25 ms

--- 10.10.0.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 3004ms
rtt min/avg/max/mdev = 0.500/1.416/2.250/0.716 ms
";
        let r = parse_ping(text, 9);
        assert_eq!((r.sent, r.answered), (4, 3));
        assert_eq!((r.min_us, r.p50_us, r.max_us), (500.0, 1500.0, 2250.0));
        let none = parse_ping("ping: connect: Network is unreachable\n", 5);
        assert_eq!((none.sent, none.answered), (5, 0));
    }
}
