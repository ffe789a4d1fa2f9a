//! `vni-lab validate` and `vni-lab schema` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vni_lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vni-lab"))
        .args(args)
        .output()
        .expect("vni-lab runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[test]
fn every_shipped_topology_is_valid() {
    let dir = repo().join("topologies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = vni_lab(&["validate", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "topologies/ should ship the two-node and four-node labs"
    );
}

#[test]
fn the_shipped_schema_matches_the_code() {
    let out = vni_lab(&["schema"]);
    assert!(out.status.success());
    let shipped = std::fs::read_to_string(repo().join("topologies/schema.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        shipped,
        "topologies/schema.json is stale: run `cargo run -p vni-lab -- schema > topologies/schema.json`"
    );
}

#[test]
fn a_bad_file_lists_every_problem_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("vni-lab-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, vcpus: 0}\n  - {name: a, ip: 10.0.0.1/24}\n").unwrap();
    let out = vni_lab(&["validate", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    let prefix = format!("{}:", file.display());
    assert!(
        lines[0].starts_with(&format!("{prefix}3:")) && lines[0].contains("nodes[0].vcpus"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{prefix}4:")) && lines[1].contains("nodes[1].name"),
        "{stderr}"
    );
    assert!(
        lines[2].contains("nodes[1].ip") && lines[2].contains("unique"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_exits_2_with_the_reason() {
    let out = vni_lab(&["validate", "/nonexistent/lab.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Cannot read topology /nonexistent/lab.yaml")
    );
}

#[test]
fn json_output_is_the_validated_lab() {
    let lab = repo().join("topologies/four-node.yaml");
    let out = vni_lab(&["validate", "--json", lab.to_str().unwrap()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(v["nodes"][3]["ip"], "10.10.0.4/24");
    assert_eq!(v["vni"]["geometry"]["config"], "SharedPool");
}

/// The lab files of `dir` as JSON, by name.
fn labs_in(dir: &Path) -> Vec<(PathBuf, String, serde_json::Value)> {
    let mut labs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_yaml::from_str(&text).unwrap();
            (path, text, json)
        })
        .collect();
    labs.sort_by(|a, b| a.0.cmp(&b.0));
    labs
}

#[test]
fn a_standard_validator_with_the_schema_rejects_what_a_schema_can() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("topologies/schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    for (path, _, json) in labs_in(&repo().join("topologies")) {
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
    // Each invalid file says which field `vni-lab validate` names, and,
    // for what only relations between values show, that a schema cannot
    // tell.
    let invalid = labs_in(&repo().join("tests/labs/invalid"));
    assert!(invalid.len() >= 22, "{} invalid lab files", invalid.len());
    let mut wrong = Vec::new();
    let mut schema_rejects = 0;
    for (path, text, json) in &invalid {
        let field = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# vni-lab validate names: "))
            .unwrap_or_else(|| panic!("{}: no '# vni-lab validate names:' line", path.display()));
        let out = vni_lab(&["validate", path.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) || (!field.starts_with('(') && !said.contains(field)) {
            wrong.push(format!(
                "{}: validate said {:?}: {said}",
                path.display(),
                out.status.code()
            ));
        }
        let cannot = text.contains("\n# schema: cannot tell");
        let valid = validator.is_valid(json);
        if valid && !cannot {
            wrong.push(format!("{}: the schema accepts it", path.display()));
        }
        if !valid && cannot {
            wrong.push(format!(
                "{}: the schema rejects it after all: drop its 'cannot tell'",
                path.display()
            ));
        }
        schema_rejects += usize::from(!valid);
    }
    eprintln!(
        "the schema rejects {schema_rejects} of {} invalid lab files",
        invalid.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
