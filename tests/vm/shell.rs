//! `vni-lab shell` through a real terminal: tmux runs it, the test sends
//! keys and reads the screen. Needs tmux (tests/run installs it).

#[path = "../kit/mod.rs"]
mod kit;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kit::{text, timeouts, topologies, wait_for, Run};

/// A tmux server of the test's own (its socket in the run directory).
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn new(run: &Run) -> Self {
        let socket = run.dir.join("tmux.sock");
        let tmux = Tmux { socket };
        // One window running a plain bash, with the lab's run directory.
        tmux.ok(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            "-e",
            &format!("VNI_LAB_RUN_DIR={}", run.dir.display()),
            "bash --norc --noprofile",
        ]);
        // No status line: the pane is the whole window.
        tmux.ok(&["set-option", "-g", "status", "off"]);
        tmux
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (tests/run installs it)");
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Types `keys` (tmux key names) into `pane`.
    fn keys(&self, pane: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", pane];
        args.extend_from_slice(keys);
        self.ok(&args);
    }

    /// Types a line into `pane`.
    fn line(&self, pane: &str, line: &str) {
        self.keys(pane, &["-l", line]);
        self.keys(pane, &["Enter"]);
    }

    fn screen(&self, pane: &str) -> String {
        self.ok(&["capture-pane", "-p", "-J", "-t", pane, "-S", "-200"])
    }

    /// Waits until `pane`'s screen shows `what`.
    fn shows(&self, pane: &str, what: &str, within: Duration) -> String {
        wait_for(
            &format!("{pane} shows {what:?}"),
            within,
            Duration::from_millis(200),
            || {
                let screen = self.screen(pane);
                if screen.contains(what) {
                    Ok(screen)
                } else {
                    Err(screen)
                }
            },
        )
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn a_shell_in_a_node_through_a_real_terminal() {
    let run = Run::new("shell");
    let file = topologies().join("two-node.yaml");
    run.up(&file);
    let tmux = Tmux::new(&run);
    let bin = Path::new(kit::BIN).display().to_string();
    let shell_started = Duration::from_secs(60);

    // A shell on node0: the key to leave is said, the guest runs what is
    // typed (the host's hostname is not node0), with the terminal's size.
    tmux.line("t:0", &format!("{bin} shell node0"));
    tmux.shows("t:0", "Ctrl-] leaves", shell_started);
    tmux.line("t:0", "echo on-$(hostname)-$((6*7))");
    tmux.shows("t:0", "on-node0-42", shell_started);
    tmux.line("t:0", "echo size-$(stty size | tr ' ' x)");
    tmux.shows("t:0", "size-40x120", timeouts::DOORBELL);
    // The window changes size: the shell hears it.
    tmux.ok(&["resize-window", "-t", "t:0", "-x", "100", "-y", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.line("t:0", "echo resized-$(stty size | tr ' ' x)");
    tmux.shows("t:0", "resized-30x100", timeouts::DOORBELL);

    // A second shell at once, on node0 too, while `vni-lab test` runs on
    // the lab (it holds the guest agents; shells do not need them).
    tmux.ok(&["new-window", "-t", "t:1", "bash --norc --noprofile"]);
    tmux.line("t:1", &format!("{bin} shell node0"));
    tmux.shows("t:1", "Ctrl-] leaves", shell_started);
    let tested = std::thread::scope(|s| {
        let test = s.spawn(|| run.test(&file, &["--checks", "unicast"]));
        std::thread::sleep(Duration::from_secs(2));
        tmux.line("t:1", "echo second-$((40+2)) $(tty)");
        let screen = tmux.shows("t:1", "second-42 /dev/pts/", shell_started);
        let (code, results, _) = test.join().unwrap();
        (code, results, screen)
    });
    assert_eq!(tested.0, Some(0), "{:#}", tested.1);

    // Ctrl-] leaves the second shell; `exit` ends the first; both times
    // the host's shell is back, and the lab runs on.
    tmux.keys("t:1", &["C-]"]);
    tmux.shows("t:1", "vni-lab: left the shell on node0", shell_started);
    tmux.line("t:1", "echo host-$((1+1))");
    tmux.shows("t:1", "host-2", timeouts::DOORBELL);
    tmux.line("t:0", "exit 3");
    tmux.shows("t:0", "exited (status 3)", shell_started);
    tmux.line("t:0", "echo status-$?");
    tmux.shows("t:0", "status-3", timeouts::DOORBELL);
    assert_eq!(run.status()[0]["state"], "up");
    let out = run.run(&["exec", "node0", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));

    // Without a terminal, or on a node that is not there: said, exit 2.
    let out = run.run(&["shell", "node0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("needs a terminal"),
        "{}",
        text(&out.stderr)
    );
    let out = run.run(&["shell", "node9"]);
    assert_eq!(out.status.code(), Some(2));

    drop(tmux);
    let shm = run.status()[0]["shm"].as_str().unwrap().to_owned();
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("two-node", Some(&shm));
}
