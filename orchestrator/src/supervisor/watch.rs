//! The lab once it is up: nodes watched for exits, fault requests served
//! on the control socket, until a stop is asked for.

use super::event::timestamp;
use super::faults::serve_fault;
use super::record::{record_exit, Recorder, Running};
use super::start::tighten_sockets;
use crate::lab::LabDir;
use crate::netns::LabNet;

/// What woke the watch.
pub(super) enum Next {
    Stop(&'static str),
    Exited(usize),
    Request(tokio::net::UnixStream),
}

/// After the start: records QEMUs that exit and serves `vni-lab fault`
/// requests on the control socket, until asked to stop.
pub(super) async fn watch_nodes(
    lab: &LabDir,
    nodes: &mut [Running],
    recorder: &Recorder,
    stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = &'static str>>>,
    net: Option<&LabNet>,
) -> &'static str {
    tighten_sockets(lab);
    let control = match tokio::net::UnixListener::bind(lab.control_socket()) {
        Ok(listener) => {
            tighten_sockets(lab);
            Some(listener)
        }
        Err(e) => {
            eprintln!(
                "{} no control socket, faults cannot be injected: {e}",
                timestamp()
            );
            None
        }
    };
    loop {
        let waits: Vec<_> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.reported)
            .map(|(i, n)| {
                let mut exit = n.exit.clone();
                Box::pin(async move {
                    let _ = exit.wait_for(Option::is_some).await;
                    i
                })
            })
            .collect();
        let exited = async move {
            if waits.is_empty() {
                std::future::pending().await
            } else {
                futures::future::select_all(waits).await.0
            }
        };
        let request = async {
            match &control {
                Some(listener) => loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        break stream;
                    }
                },
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            why = &mut *stop => Next::Stop(why),
            i = exited => Next::Exited(i),
            stream = request => Next::Request(stream),
        };
        match next {
            Next::Stop(why) => return why,
            Next::Exited(i) => record_exit(&mut nodes[i], recorder),
            Next::Request(stream) => {
                tokio::select! {
                    why = &mut *stop => return why,
                    () = serve_fault(lab, nodes, recorder, stream, net) => {}
                }
            }
        }
    }
}
