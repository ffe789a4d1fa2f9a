//! The checks as they run: what runs in which guest (`vni-frames`, `nc`,
//! `iperf3`), with what timeouts, and which verdict ([`super::verdicts`])
//! judges what comes back.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use vni_frames::{Rtts, Sent, Tally};

use super::guests::{Guests, Trouble};
use super::verdicts::*;
use super::{scaled, Subject};
use crate::agent::ExecOutput;
use crate::driver;
use crate::lab::LabDir;
use crate::sections::Sections;
use crate::topology::Driver;
use crate::topology::{Network, Node, Topology};

/// The smallest Ethernet frame (without FCS).
const MIN_FRAME: usize = 60;
/// At most this many sizes in the sizes check (larger MTUs are stepped).
const MOST_SIZES: usize = 2048;
/// A multicast group no other protocol uses.
const MULTICAST: &str = "01:00:5e:7f:56:49";
const BROADCAST: &str = "ff:ff:ff:ff:ff:ff";
/// The base of TCP ports the checks listen on.
pub(super) const PORT_BASE: u32 = 15_000;

/// The script that prints a node's [`NodeFacts`] as `key=value` lines.
fn facts_script(which: Driver) -> String {
    // The kernel applies a carrier change to the operational state through
    // its link watch, up to a second later: a lab checked right after it
    // came up may show vni0 with a carrier and still "down". Up to 2 s for
    // the link to settle, only when it has not (a node without vni0 or
    // without a carrier is reported after that).
    format!(
        "if {}; then echo driver=1; else echo driver=0; fi; \
         d=/sys/class/net/vni0; \
         for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
           [ -d $d ] || break; \
           [ \"$(cat $d/carrier 2>/dev/null)\" = 1 ] && [ \"$(cat $d/operstate 2>/dev/null)\" != down ] && break; \
           sleep 0.1; done; \
         [ -d $d ] && echo interface=1; \
         for f in mtu operstate carrier address; do echo \"$f=$(cat $d/$f 2>/dev/null)\"; done; \
         ip -4 -o addr show dev vni0 2>/dev/null | while read -r _ _ _ a _; do echo ip=$a; done",
        driver::alive(which)
    )
}

/// What every check needs: the lab, its guests, the timeout scale.
#[derive(Debug)]
pub struct Context {
    pub(super) topology: Topology,
    pub(super) shm: Option<PathBuf>,
    /// The lab, for its QEMUs' pids.
    lab: LabDir,
    /// Configuration 1's write-protected sections.
    sections: Option<Sections>,
    pub(super) guests: Guests,
    scale: f64,
    runs: u32,
}

impl Context {
    /// A context for running `topology`'s checks in `lab`.
    pub fn new(lab: &LabDir, topology: &Topology, guests: Guests, scale: f64) -> Self {
        // Run ids differ between runs of vni-lab test, so frames left over
        // from an earlier run are never counted.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            ^ std::process::id().rotate_left(16);
        let plan = lab.plan();
        let sections = plan
            .as_ref()
            .and_then(|p| Sections::of_lab(topology, &p.accel, &p.shm));
        Context {
            topology: topology.clone(),
            shm: plan.map(|p| p.shm),
            lab: lab.clone(),
            sections,
            guests,
            scale,
            runs: seed & 0x00ff_ffff,
        }
    }

    pub(super) fn t(&self, seconds: f64) -> Duration {
        scaled(Duration::from_secs_f64(seconds), self.scale)
    }

    pub(super) fn next_run(&mut self) -> u32 {
        self.runs = self.runs.wrapping_add(1);
        self.runs
    }

    pub(super) fn node(&self, i: usize) -> Node {
        self.topology.nodes[i].clone()
    }

    /// Runs `check` on `subject`.
    pub async fn run(&mut self, check: &str, subject: &Subject) -> Result<Verdict, Trouble> {
        match (check, subject) {
            ("preflight", &Subject::Node(a)) => self.preflight(a).await,
            ("unicast", &Subject::Pair(a, b)) => self.unicast(a, b).await,
            ("sizes", &Subject::Pair(a, b)) => self.sizes(a, b).await,
            ("burst", &Subject::Pair(a, b)) => self.burst(a, b).await,
            ("broadcast", &Subject::Sender(a)) => self.flood(a, BROADCAST).await,
            ("multicast", &Subject::Sender(a)) => self.flood(a, MULTICAST).await,
            ("echo", &Subject::Pair(a, b)) => self.echo(a, b).await,
            ("tcp-string", &Subject::Pair(a, b)) => self.tcp_string(a, b).await,
            ("iperf-tcp", &Subject::Pair(a, b)) => self.iperf(a, b, false).await,
            ("iperf-udp", &Subject::Pair(a, b)) => self.iperf(a, b, true).await,
            ("region", Subject::Lab) => self.region().await,
            (check, subject) => Err(Trouble::new(format!("no check {check} on {subject:?}"))),
        }
    }

    pub(super) fn region_report(&self) -> Result<vni_protocol::RegionReport, String> {
        let shm = self.shm.as_ref().ok_or("the lab has no readable plan")?;
        let region = vni_protocol::Region::open(shm).map_err(|e| e.to_string())?;
        vni_protocol::inspect(&region).map_err(|e| e.to_string())
    }

    async fn preflight(&mut self, a: usize) -> Result<Verdict, Trouble> {
        let node = self.node(a);
        let out = self
            .guests
            .sh(&node.name, &facts_script(node.driver), self.t(10.0))
            .await?;
        let mut facts = parse_facts(&String::from_utf8_lossy(&out.stdout));
        facts.region_state = self
            .region_report()
            .ok()
            .and_then(|r| r.nodes.get(a).and_then(|n| n.state))
            .map(|s| format!("{s:?}"));
        let vni = self.topology.network == Network::Vni;
        let mut verdict = judge_preflight(&facts, &node, self.topology.vni.mtu, vni);
        if !verdict.passed {
            let log = self
                .guests
                .sh(&node.name, &driver::log(node.driver, 20), self.t(10.0))
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|t| t.message);
            verdict.details = Some(format!(
                "--- {} in {}:\n{}",
                driver::log_name(node.driver),
                node.name,
                log.trim_end()
            ));
        }
        Ok(verdict)
    }

    fn ready_file(run: u32) -> String {
        format!("/run/vni-test-{run}.ready")
    }

    /// Starts a `vni-frames recv` in node `i` and waits until it listens.
    async fn start_receiver(
        &mut self,
        i: usize,
        run: u32,
        expect: Option<u64>,
        seconds: f64,
    ) -> Result<i64, Trouble> {
        let name = self.node(i).name;
        let ready = Self::ready_file(run);
        let seconds = self.t(seconds).as_secs().max(1).to_string();
        // With nothing to expect it stops when frames stop: soon after
        // the last, but late enough to see anything echoed back.
        let idle = self
            .t(if expect.is_some() { 1.0 } else { 0.3 })
            .as_millis()
            .to_string();
        let run_text = run.to_string();
        let mut command = vec![
            "vni-frames",
            "recv",
            "--run",
            &run_text,
            "--seconds",
            &seconds,
            "--ready",
            &ready,
            "--idle-ms",
            &idle,
        ];
        let expect_text = expect.map(|n| n.to_string());
        if let Some(n) = &expect_text {
            command.extend(["--expect", n]);
        }
        let pid = self.guests.spawn(&name, &command).await?;
        self.wait_for_file(&name, &ready).await?;
        Ok(pid)
    }

    /// Waits until the shell condition `test` holds in `node` (polled
    /// every 50 ms, 400 times at most); `what` says what did not happen.
    async fn wait_until(&mut self, node: &str, test: &str, what: &str) -> Result<(), Trouble> {
        let script =
            format!("i=0; until {test}; do [ $i -ge 400 ] && exit 1; sleep 0.05; i=$((i+1)); done");
        let out = self.guests.sh(node, &script, self.t(30.0)).await?;
        if out.code != Some(0) {
            return Err(Trouble::new(format!("{node}: {what}")));
        }
        Ok(())
    }

    /// Waits for a `--ready` file of vni-frames, and removes it.
    async fn wait_for_file(&mut self, node: &str, path: &str) -> Result<(), Trouble> {
        let test = format!("[ -e {path} ] && rm -f {path}");
        self.wait_until(node, &test, "vni-frames did not start listening")
            .await
    }

    pub(super) async fn wait_for_port(&mut self, node: &str, port: u32) -> Result<(), Trouble> {
        let test = format!("ss -Hltn 'sport = :{port}' | grep -q .");
        self.wait_until(node, &test, &format!("nothing listens on port {port}"))
            .await
    }

    /// Sends frames from node `a`; returns vni-frames' report.
    async fn send(
        &mut self,
        a: usize,
        to: &str,
        run: u32,
        extra: &[&str],
        seconds: f64,
    ) -> Result<Sent, Trouble> {
        let name = self.node(a).name;
        let run_text = run.to_string();
        let mut command = vec!["vni-frames", "send", "--to", to, "--run", &run_text];
        command.extend_from_slice(extra);
        let out = self.guests.run(&name, &command, self.t(seconds)).await?;
        last_json(&name, "vni-frames send", &out)
    }

    async fn tally(&mut self, i: usize, pid: i64, seconds: f64) -> Result<Tally, Trouble> {
        let name = self.node(i).name;
        let out = self
            .guests
            .wait(&name, pid, "vni-frames recv", self.t(seconds))
            .await?;
        last_json(&name, "vni-frames recv", &out)
    }

    async fn unicast(&mut self, a: usize, b: usize) -> Result<Verdict, Trouble> {
        let n = u64::from(self.topology.tests.frames);
        let run = self.next_run();
        let pid = self.start_receiver(b, run, Some(n), 10.0).await?;
        let to = self.node(b).mac.to_string();
        let count = n.to_string();
        self.send(
            a,
            &to,
            run,
            &["--count", &count, "--size", "64", "--gap-us", "200"],
            30.0,
        )
        .await?;
        let tally = self.tally(b, pid, 15.0).await?;
        let from = self.node(a).mac.to_string();
        let got = tally.senders.get(&from).map_or(0, |s| s.received);
        Ok(Verdict::of(
            frame_problems(&tally, &from, n),
            format!("{got}/{n} frames arrived intact, in order"),
        )
        .metric("received", got as f64))
    }

    async fn sizes(&mut self, a: usize, b: usize) -> Result<Verdict, Trouble> {
        let largest = self.topology.vni.mtu as usize + 14;
        let step = (largest - MIN_FRAME + 1).div_ceil(MOST_SIZES).max(1);
        let count = ((largest - MIN_FRAME) / step + 1) as u64;
        let top = MIN_FRAME + (count as usize - 1) * step;
        let run = self.next_run();
        let pid = self.start_receiver(b, run, None, 20.0).await?;
        let to = self.node(b).mac.to_string();
        let (count_t, min_t, top_t, step_t) = (
            count.to_string(),
            MIN_FRAME.to_string(),
            top.to_string(),
            step.to_string(),
        );
        let sent = self
            .send(
                a,
                &to,
                run,
                &[
                    "--count",
                    &count_t,
                    "--size",
                    &min_t,
                    "--max-size",
                    &top_t,
                    "--step",
                    &step_t,
                    "--gap-us",
                    "100",
                ],
                60.0,
            )
            .await?;
        // One byte over the MTU: the sender's kernel must refuse it.
        let (over, first) = ((largest + 1).to_string(), count.to_string());
        let over_sent = self
            .send(
                a,
                &to,
                run,
                &["--count", "1", "--size", &over, "--first-seq", &first],
                10.0,
            )
            .await?;
        let tally = self.tally(b, pid, 30.0).await?;
        let from = self.node(a).mac.to_string();
        let mut problems = frame_problems(&tally, &from, count);
        if !sent.refused.is_empty() {
            problems.push(format!(
                "the sender refused {} frames: {}",
                sent.refused.len(),
                sent.refused[0]
            ));
        }
        if over_sent.sent != 0 {
            problems.push(format!(
                "a {}-byte frame (MTU + 15) was sent, not refused",
                largest + 1
            ));
        }
        let sizes = tally
            .senders
            .get(&from)
            .map(|s| s.sizes)
            .unwrap_or_default();
        if problems.is_empty() && sizes != (MIN_FRAME, top) {
            problems.push(format!(
                "sizes {}..{} arrived, {MIN_FRAME}..{top} sent",
                sizes.0, sizes.1
            ));
        }
        let stepped = if step > 1 {
            format!(" every {step} bytes")
        } else {
            String::new()
        };
        Ok(Verdict::of(
            problems,
            format!("{count} sizes from {MIN_FRAME} to {top} bytes{stepped} arrived intact; {} bytes refused", largest + 1),
        )
        .metric("sizes", count as f64)
        .metric("largest", top as f64))
    }

    async fn burst(&mut self, a: usize, b: usize) -> Result<Verdict, Trouble> {
        let n = u64::from(self.topology.tests.burst);
        let run = self.next_run();
        let pid = self.start_receiver(b, run, Some(n), 30.0).await?;
        let to = self.node(b).mac.to_string();
        let count = n.to_string();
        let started = std::time::Instant::now();
        let sent = self
            .send(a, &to, run, &["--count", &count, "--size", "64"], 60.0)
            .await?;
        let send_seconds = started.elapsed().as_secs_f64();
        let tally = self.tally(b, pid, 40.0).await?;
        let from = self.node(a).mac.to_string();
        Ok(
            judge_burst(n, &sent, &tally, &from, self.topology.tests.max_burst_loss)
                .metric("send_seconds", send_seconds),
        )
    }

    async fn flood(&mut self, a: usize, to: &str) -> Result<Verdict, Trouble> {
        let n = u64::from(self.topology.tests.frames);
        let run = self.next_run();
        let mut receivers = Vec::new();
        for i in 0..self.topology.nodes.len() {
            // The sender's own receiver only counts its own frames: it
            // stops when they stop.
            let expect = (i != a).then_some(n);
            receivers.push((i, self.start_receiver(i, run, expect, 10.0).await?));
        }
        let count = n.to_string();
        self.send(
            a,
            to,
            run,
            &["--count", &count, "--size", "64", "--gap-us", "200"],
            30.0,
        )
        .await?;
        let from = self.node(a).mac.to_string();
        let mut problems = Vec::new();
        for (i, pid) in receivers {
            let name = self.node(i).name;
            let tally = self.tally(i, pid, 15.0).await?;
            if i == a {
                // A packet socket sees each frame its node sends once;
                // twice means the VNI delivered it back to the sender.
                if tally.own > n {
                    problems.push(format!(
                        "{name} (the sender) got {} of its own frames back",
                        tally.own - n
                    ));
                }
                continue;
            }
            problems.extend(
                frame_problems(&tally, &from, n)
                    .into_iter()
                    .map(|p| format!("{name}: {p}")),
            );
        }
        let others = match self.topology.nodes.len() - 1 {
            1 => "the other node".to_owned(),
            n => format!("all {n} other nodes"),
        };
        Ok(Verdict::of(
            problems,
            format!("{n} frames to {to} reached {others}, not the sender"),
        ))
    }

    async fn echo(&mut self, a: usize, b: usize) -> Result<Verdict, Trouble> {
        let rtts = self.echo_rtts(a, b, self.topology.tests.echo_count).await?;
        let tests = &self.topology.tests;
        Ok(judge_echo(&rtts, tests.max_rtt_p50, tests.max_rtt_p99))
    }

    /// `n` raw-frame echo round trips from `a` to `b`.
    pub async fn echo_rtts(&mut self, a: usize, b: usize, n: u32) -> Result<Rtts, Trouble> {
        let run = self.next_run();
        let (run_t, count_t) = (run.to_string(), n.to_string());
        let ready = Self::ready_file(run);
        let server = self.node(b).name;
        let seconds = self.t(30.0 + f64::from(n) * 0.01).as_secs().to_string();
        let pid = self
            .guests
            .spawn(
                &server,
                &[
                    "vni-frames",
                    "echo",
                    "--run",
                    &run_t,
                    "--count",
                    &count_t,
                    "--seconds",
                    &seconds,
                    "--ready",
                    &ready,
                ],
            )
            .await?;
        self.wait_for_file(&server, &ready).await?;
        let client = self.node(a).name;
        let to = self.node(b).mac.to_string();
        let wait_ms = self.t(1.0).as_millis().to_string();
        let out = self
            .guests
            .run(
                &client,
                &[
                    "vni-frames",
                    "ping",
                    "--to",
                    &to,
                    "--run",
                    &run_t,
                    "--count",
                    &count_t,
                    "--wait-ms",
                    &wait_ms,
                ],
                self.t(20.0 + f64::from(n) * 0.01),
            )
            .await?;
        let rtts: Rtts = last_json(&client, "vni-frames ping", &out)?;
        // The server stops after answering them all; one left waiting for
        // a lost request is killed when the case ends.
        if rtts.answered == rtts.sent {
            self.guests
                .wait(&server, pid, "vni-frames echo", self.t(10.0))
                .await?;
        }
        Ok(rtts)
    }

    async fn tcp_string(&mut self, a: usize, b: usize) -> Result<Verdict, Trouble> {
        let run = self.next_run();
        let port = PORT_BASE + run % 10_000;
        let message = format!("vni-lab test {run}: the quick brown fox jumps over the lazy dog");
        let server = self.node(b).name;
        let listen = format!("timeout {} nc -l -p {port}", self.t(30.0).as_secs());
        let pid = self
            .guests
            .spawn(&server, &["/bin/sh", "-c", &listen])
            .await?;
        self.wait_for_port(&server, port).await?;
        let client = self.node(a).name;
        let ip = self.node(b).ip.addr();
        let send = format!("printf '%s' '{message}' | nc -N -w 5 {ip} {port}");
        let out = self.guests.sh(&client, &send, self.t(20.0)).await?;
        if out.code != Some(0) {
            let message = format!("nc in {client} failed (exit {:?})", out.code);
            return Ok(Verdict::failed(message, &out));
        }
        let got = self
            .guests
            .wait(&server, pid, "nc -l", self.t(20.0))
            .await?;
        let received = String::from_utf8_lossy(&got.stdout);
        let problems = if received == message {
            Vec::new()
        } else {
            vec![format!(
                "{} bytes arrived, {} sent, and differ",
                received.len(),
                message.len()
            )]
        };
        Ok(Verdict::of(
            problems,
            format!("{} bytes through nc intact", message.len()),
        ))
    }

    async fn iperf(&mut self, a: usize, b: usize, udp: bool) -> Result<Verdict, Trouble> {
        let tests = &self.topology.tests;
        let (secs, rate) = (tests.iperf_time, udp.then_some(tests.udp_rate));
        let figures = match self.iperf_run(a, b, rate, secs).await? {
            Ok(f) => f,
            Err((message, out)) => return Ok(Verdict::failed(message, &out)),
        };
        let tests = &self.topology.tests;
        Ok(if udp {
            judge_udp(&figures, tests.max_udp_loss)
        } else {
            judge_tcp(&figures, tests.min_tcp_rate)
        })
    }

    /// Starts a one-test iperf3 server in node `b` on a port of its own
    /// (`offset` keeps callers' port ranges apart); its port and pid.
    pub(super) async fn spawn_iperf_server(
        &mut self,
        b: usize,
        offset: u32,
    ) -> Result<(u32, i64), Trouble> {
        let port = PORT_BASE + offset + self.next_run() % 10_000;
        let server = self.node(b).name;
        let port_t = port.to_string();
        let pid = self
            .guests
            .spawn(&server, &["iperf3", "-s", "-1", "-p", &port_t])
            .await?;
        Ok((port, pid))
    }

    /// The iperf3 client command to node `b`'s server on `port` for
    /// `secs` seconds: TCP, or UDP offering `udp_rate` bit/s; JSON out.
    pub(super) fn iperf_client(
        &self,
        b: usize,
        port: u32,
        secs: u64,
        udp_rate: Option<u64>,
    ) -> Vec<String> {
        let ip = self.node(b).ip.addr().to_string();
        let mut command: Vec<String> = ["iperf3", "-c", &ip, "-p"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        command.extend([port.to_string(), "-t".into(), secs.to_string(), "-J".into()]);
        if let Some(rate) = udp_rate {
            // A socket buffer that holds a NAPI batch or two of datagrams
            // (both ends; the guests allow up to 4 MiB each way): loss then
            // measures the network, not how late TCG schedules iperf3.
            command.extend([
                "-u".into(),
                "-b".into(),
                rate.to_string(),
                "-w".into(),
                "2M".into(),
            ]);
        }
        command
    }

    /// One iperf3 run from `a` to `b` for `time`: TCP, or UDP offering
    /// `udp_rate` bit/s. Its figures, or what went wrong with its output.
    pub async fn iperf_run(
        &mut self,
        a: usize,
        b: usize,
        udp_rate: Option<u64>,
        time: Duration,
    ) -> Result<Result<Iperf, (String, ExecOutput)>, Trouble> {
        let (port, pid) = self.spawn_iperf_server(b, 10_000).await?;
        let server = self.node(b).name;
        self.wait_for_port(&server, port).await?;
        let client = self.node(a).name;
        let secs = time.as_secs().max(1);
        let command = self.iperf_client(b, port, secs, udp_rate);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let out = self
            .guests
            .run(&client, &command, self.t(30.0) + Duration::from_secs(secs))
            .await?;
        Ok(
            match parse_iperf(&String::from_utf8_lossy(&out.stdout), udp_rate.is_some()) {
                Ok(f) => {
                    // The server ends after its one test.
                    let _ = self
                        .guests
                        .wait(&server, pid, "iperf3 -s", self.t(10.0))
                        .await;
                    Ok(f)
                }
                Err(e) => Err((e, out)),
            },
        )
    }

    /// What is wrong with how the nodes' QEMUs map configuration 1's
    /// sections (their own read-write, every other read-only), from
    /// `/proc/PID/maps`; nothing for configuration 2.
    fn section_mappings(&self) -> Vec<String> {
        let Some(sections) = &self.sections else {
            return Vec::new();
        };
        let records = self.lab.state().map(|s| s.nodes).unwrap_or_default();
        let mut problems = Vec::new();
        for node in &self.topology.nodes {
            let Some(pid) = records.iter().find(|r| r.name == node.name).map(|r| r.pid) else {
                problems.push(format!("{}: no QEMU on record", node.name));
                continue;
            };
            match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
                Ok(maps) => problems.extend(sections.mapping_problems(node.id, &maps)),
                Err(e) => problems.push(format!("{}: cannot read its QEMU's maps: {e}", node.name)),
            }
        }
        problems
    }

    async fn region(&mut self) -> Result<Verdict, Trouble> {
        // Drivers give idle slots back after 100 ms.
        let deadline = std::time::Instant::now() + self.t(5.0);
        loop {
            let report = self
                .region_report()
                .map_err(|e| Trouble::new(format!("cannot read the region: {e}")))?;
            let errors: u64 = report
                .nodes
                .iter()
                .map(|n| n.counters.protocol_errors)
                .sum();
            let not_running: Vec<String> = self
                .topology
                .nodes
                .iter()
                .filter(|n| !report.runs(n.id))
                .map(|n| n.name.clone())
                .collect();
            let mut problems = Vec::new();
            if errors > 0 {
                problems.push(format!("{errors} protocol errors counted"));
            }
            if !not_running.is_empty() {
                problems.push(format!("not in Run: {}", not_running.join(", ")));
            }
            problems.extend(self.section_mappings());
            let (free, slots) = (report.pool.free, report.pool.slots);
            if free != slots {
                problems.push(format!(
                    "{} of {slots} slots not back in the pool",
                    slots - free
                ));
            }
            let dropped: u64 = report
                .nodes
                .iter()
                .map(|n| n.counters.tx_dropped + n.counters.rx_dropped)
                .sum();
            if problems.is_empty() || std::time::Instant::now() >= deadline {
                let mut details = String::new();
                for n in &report.nodes {
                    let _ = writeln!(
                        details,
                        "node {}: {:?}, counters {:?}",
                        n.id, n.state, n.counters
                    );
                }
                let sections = match &self.sections {
                    Some(s) => format!(
                        "; {} sections, each writable by its owner only",
                        s.files.len()
                    ),
                    None => String::new(),
                };
                let mut v = Verdict::of(
                    problems,
                    format!("all {slots} slots back in the pool, no protocol errors, {dropped} frames dropped{sections}"),
                )
                .metric("slots", slots as f64)
                .metric("free", free as f64)
                .metric("protocol_errors", errors as f64)
                .metric("dropped", dropped as f64);
                v.details = Some(details);
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_script_is_valid_sh_and_quick_without_an_interface() {
        for driver in [Driver::User, Driver::Kernel] {
            let script = facts_script(driver);
            let syntax = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .status()
                .unwrap();
            assert!(syntax.success(), "{script}");
        }
        // No vni0 here (a build host): the wait for the link ends at once.
        let started = std::time::Instant::now();
        let script = facts_script(Driver::User).replace("/sys/class/net/vni0", "/nonexistent/vni0");
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let facts = parse_facts(&String::from_utf8_lossy(&out.stdout));
        assert!(!facts.interface);
    }
}
