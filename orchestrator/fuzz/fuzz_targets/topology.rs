//! Arbitrary text as a lab file: `Topology::parse` must accept it with
//! consistent nodes or refuse it with at least one problem, each located
//! in the file; never panic or hang.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vni_lab::topology::{Topology, TopologyError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    match Topology::parse(text, path) {
        Ok(topology) => {
            assert!(!topology.nodes.is_empty(), "a valid lab has nodes");
            let names: HashSet<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names.len(), topology.nodes.len(), "node names are unique");
            for (i, node) in topology.nodes.iter().enumerate() {
                assert_eq!(node.id, i, "node ids count from 0");
            }
            assert!(topology.vni.mtu <= vni_lab::topology::MAX_MTU);
        }
        Err(TopologyError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "an invalid file says why");
            for problem in &problems {
                let line = problem.render(path);
                assert!(line.starts_with("fuzz.yaml"), "unlocated problem: {line}");
                assert!(!problem.message.is_empty());
            }
        }
        Err(e @ TopologyError::Read { .. }) => panic!("parse never reads: {e}"),
    }
});
