//! Every command's exit status as docs/src/kernel-ci.md#exit-status documents
//! it, for what can be tried without a guest: 0 when it did what was
//! asked, 1 when what it checked failed, 2 when it could not do it (the
//! reason on stderr, nothing on stdout), and `exec`'s own codes.

#[path = "../../tests/kit/mod.rs"]
mod kit;

use kit::{text, topologies, Run};

/// An invalid lab file (two problems) in the run directory.
fn invalid_lab(run: &Run) -> String {
    run.lab_file("bad", "name: Bad\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn each_command_exits_as_documented() {
    let run = Run::new("exit-codes");
    std::fs::create_dir_all(&run.dir).unwrap();
    let bad = invalid_lab(&run);
    let good = topologies().join("two-node.yaml");
    let good = good.to_str().unwrap();
    let missing = "/nonexistent/lab.yaml";
    // (arguments, status, whether stdout stays empty)
    let cases: &[(&[&str], i32, bool)] = &[
        // Usage errors, from the argument parser.
        (&["no-such-command"], 2, true),
        (&["test", good, "--no-such-flag"], 2, true),
        (&["test", good, "--format", "xml"], 2, true),
        // Lab files.
        (&["validate", good], 0, false),
        (&["validate", &bad], 1, true),
        (&["validate", missing], 2, true),
        (&["up", &bad], 1, true),
        (&["test", &bad], 2, true),
        (&["test", missing], 2, true),
        (&["bench", &bad], 2, true),
        (&["soak", &bad], 2, true),
        (&["test", good, "--kernel", missing], 2, true),
        // Commands on labs, with none up.
        (&["status"], 0, false),
        (&["status", "nosuch"], 2, true),
        (&["down"], 2, true),
        (&["inspect"], 2, true),
        (&["console", "node0"], 2, true),
        (&["fault", "node0", "kill"], 2, true),
        (&["exec", "node0", "--", "true"], 125, true),
        (&["shell", "node0"], 2, true),
        // Printing.
        (&["kconfig", "--driver", "kernel"], 0, false),
        (&["schema"], 0, false),
        (&["completions", "bash"], 0, false),
        (&["man"], 0, false),
        (&["--version"], 0, false),
    ];
    let mut wrong = Vec::new();
    for (args, status, quiet_stdout) in cases {
        let out = run.run(args);
        let said = text(&out.stderr);
        if out.status.code() != Some(*status) {
            wrong.push(format!(
                "vni-lab {}: exit {:?}, documented {status}: {said}",
                args.join(" "),
                out.status.code()
            ));
        }
        if *status != 0 && said.trim().is_empty() {
            wrong.push(format!("vni-lab {}: no reason on stderr", args.join(" ")));
        }
        if *quiet_stdout && !out.stdout.is_empty() {
            wrong.push(format!(
                "vni-lab {}: stdout should stay empty: {}",
                args.join(" "),
                text(&out.stdout)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
