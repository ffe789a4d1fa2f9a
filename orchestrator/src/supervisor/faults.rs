//! Faults asked for on the control socket (`vni-lab fault`): a node
//! killed, paused, resumed or restarted with the same identity.

use std::path::Path;
use std::time::{Duration, Instant};

use super::error::SupervisorError;
use super::event::{emit, timestamp, Event};
use super::record::{record_exit, signal, Recorder, Running};
use super::start::{driver_log, load_plan, spawn_node, tighten_sockets, wait_node, QMP_TIMEOUT};
use crate::driver;
use crate::lab::{LabDir, NodeState};
use crate::netns::LabNet;
use crate::qemu::Qmp;
use crate::sections::Sections;
use crate::topology::Network;

/// Reads one fault request from `stream` and answers it.
pub(super) async fn serve_fault(
    lab: &LabDir,
    nodes: &mut [Running],
    recorder: &Recorder,
    stream: tokio::net::UnixStream,
    net: Option<&LabNet>,
) {
    use crate::fault::{Reply, Request};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(QMP_TIMEOUT, lines.next_line()).await;
    let (replies, mut rx) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    let request: Result<Request, String> = match line {
        Ok(Ok(Some(line))) => {
            serde_json::from_str(&line).map_err(|e| format!("bad request {line:?}: {e}"))
        }
        _ => Err("no request".to_owned()),
    };
    let work = async {
        let outcome = match request {
            Ok(request) => {
                eprintln!("{} fault: {} {}", timestamp(), request.fault, request.node);
                inject(lab, nodes, recorder, &request, &replies, net)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let last = match outcome {
            Ok(message) => Reply::Done { message },
            Err(message) => Reply::Failed { message },
        };
        eprintln!("{} fault: {last:?}", timestamp());
        let _ = replies.send(last);
        drop(replies);
    };
    // The client may go away; the fault is carried through regardless.
    let forward = async {
        while let Some(reply) = rx.recv().await {
            if let Ok(mut line) = serde_json::to_string(&reply) {
                line.push('\n');
                let _ = write.write_all(line.as_bytes()).await;
            }
        }
    };
    tokio::join!(work, forward);
}

/// Injects `request`'s fault; the final message, or why it failed.
pub(super) async fn inject(
    lab: &LabDir,
    nodes: &mut [Running],
    recorder: &Recorder,
    request: &crate::fault::Request,
    replies: &tokio::sync::mpsc::UnboundedSender<crate::fault::Reply>,
    net: Option<&LabNet>,
) -> Result<String, SupervisorError> {
    use crate::fault::{Fault, Reply};

    let Some(i) = nodes.iter().position(|n| n.node.name == request.node) else {
        return Err(SupervisorError::NoSuchNode {
            lab: lab.name.clone(),
            node: request.node.clone(),
            nodes: nodes.iter().map(|n| n.node.name.clone()).collect(),
        });
    };
    let name = request.node.clone();
    let paths = lab.node(&name);
    let exited = nodes[i].exit.borrow().clone();
    if let (Some(status), Fault::Kill | Fault::Pause | Fault::Resume) = (&exited, request.fault) {
        return Err(SupervisorError::NotRunning {
            node: name,
            status: status.clone(),
        });
    }
    match request.fault {
        Fault::Kill => {
            let pid = nodes[i].pid;
            kill_node(&mut nodes[i], recorder).await?;
            Ok(format!("node {name}: QEMU (pid {pid}) killed with SIGKILL"))
        }
        Fault::Pause | Fault::Resume => {
            let qmp_err = |source| SupervisorError::Qmp {
                node: name.clone(),
                source,
            };
            let qmp = Qmp::connect(&paths.qmp, QMP_TIMEOUT)
                .await
                .map_err(qmp_err)?;
            if request.fault == Fault::Pause {
                qmp.pause().await.map_err(qmp_err)?;
                recorder.node(&name, |n| n.state = NodeState::Paused);
                Ok(format!("node {name}: vCPUs stopped"))
            } else {
                qmp.resume().await.map_err(qmp_err)?;
                recorder.node(&name, |n| n.state = NodeState::Ready);
                Ok(format!("node {name}: vCPUs running again"))
            }
        }
        Fault::Restart => {
            let socket = lab.ivshmem_socket();
            if !socket.exists() {
                return Err(SupervisorError::SocketGone {
                    node: name,
                    socket,
                    lab: lab.name.clone(),
                });
            }
            let (plan, topology) = load_plan(lab)?;
            let shm = plan.shm.clone();
            let before = node_in_region(&shm, nodes[i].node.id);
            if exited.is_none() {
                let _ = replies.send(Reply::Progress {
                    message: format!("killing node {name}"),
                });
                kill_node(&mut nodes[i], recorder).await?;
            } else if !nodes[i].reported {
                record_exit(&mut nodes[i], recorder);
            }
            // Keep the last life's console; QEMU truncates the file.
            let _ = std::fs::rename(&paths.console, paths.console.with_extension("console.prev"));
            let _ = replies.send(Reply::Progress {
                message: format!("booting node {name} again"),
            });
            let started = Instant::now();
            let node = nodes[i].node.clone();
            // The same sections as before: its own is its to set up again.
            let sections = Sections::of_lab(&topology, &plan.accel, &plan.shm);
            let running = spawn_node(
                lab,
                &plan,
                &topology,
                &node,
                &socket,
                net,
                sections.as_ref(),
            )?;
            recorder.node(&name, |n| {
                n.pid = running.pid;
                n.state = NodeState::Booting;
                n.ready_after = None;
                n.exit = None;
            });
            emit(&Event::NodeStarted {
                node: name.clone(),
                pid: running.pid,
            });
            nodes[i] = running;
            let agent = wait_node(
                lab,
                &topology,
                &nodes[i],
                recorder,
                topology.boot_timeout,
                topology.command_timeout,
                started,
            )
            .await?;
            if topology.network == Network::Vni {
                let _ = replies.send(Reply::Progress {
                    message: format!("waiting for node {name}'s VNI driver"),
                });
                let deadline = started + topology.boot_timeout;
                loop {
                    let now = node_in_region(&shm, node.id);
                    if now.is_some_and(|(run, _)| run) && now != before {
                        break;
                    }
                    if let Some(status) = nodes[i].exit.borrow().clone() {
                        return Err(SupervisorError::QemuExited { node: name, status });
                    }
                    if Instant::now() >= deadline {
                        let log = driver_log(&agent, node.driver).await;
                        return Err(SupervisorError::VniDriver(format!(
                            "node {name}: its VNI driver did not reach RUN within timeouts.boot\n--- {}:\n{}",
                            driver::log_name(node.driver),
                            log.trim_end()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tighten_sockets(lab);
            Ok(format!(
                "node {name}: restarted (QEMU pid {}), ready after {:.1} s",
                nodes[i].pid,
                started.elapsed().as_secs_f64()
            ))
        }
    }
}

/// Whether node `id` is in RUN in the region, and the incarnation it is
/// (generation and ivshmem peer id; both change when it attaches again).
pub(super) fn node_in_region(shm: &Path, id: usize) -> Option<(bool, (u32, Option<u16>))> {
    let region = vni_protocol::Region::open(shm).ok()?;
    let report = vni_protocol::inspect(&region).ok()?;
    let node = report.nodes.get(id)?;
    Some((report.runs(id), (node.generation, node.doorbell_peer)))
}

/// SIGKILL to a node's QEMU, waiting until it is reaped and recorded.
pub(super) async fn kill_node(
    running: &mut Running,
    recorder: &Recorder,
) -> Result<(), SupervisorError> {
    signal(running.pid, libc::SIGKILL);
    let mut exit = running.exit.clone();
    tokio::time::timeout(QMP_TIMEOUT, exit.wait_for(Option::is_some))
        .await
        .map_err(|_| SupervisorError::KillTimeout {
            node: running.node.name.clone(),
            after: QMP_TIMEOUT,
        })?
        .map_err(|_| SupervisorError::WatcherGone {
            node: running.node.name.clone(),
        })?;
    record_exit(running, recorder);
    Ok(())
}
