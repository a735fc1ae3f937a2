//! `pangaea-ctl up` as a person sees it in a terminal (operator experience issue #13),
//! driven through a real tmux (send-keys, capture-pane) on the local provider: while it
//! waits, a spinner beside the step in progress; when done, one line per step, the final
//! summary, no log records and no stray colour codes; with `NO_COLOR`, no colour at all.
//!
//! Needs root and a node host (as the other end-to-end tests) and tmux (`.ci/run`
//! installs it). The tmux server is the test's own (`-L`), killed at the end.

use pangaea_tests::{binary, etcd_only_config, require_node_host, run_ctl};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn run_id() -> u32 {
    std::process::id() % 250
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

const SPINNER: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A tmux server of this test's own with one 160×50 window in `dir`; on drop the cluster
/// is deleted and the server killed, also when the test fails.
struct Terminal {
    socket: String,
    dir: tempfile::TempDir,
}

impl Terminal {
    fn start() -> Terminal {
        let found = Command::new("sh")
            .args(["-c", "command -v tmux"])
            .output()
            .unwrap()
            .status
            .success();
        assert!(found, "tmux not found: apt-get install tmux");
        let t = Terminal {
            // One server per terminal: the tests of this file run at once.
            socket: format!(
                "pangaea-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            dir: tempfile::tempdir().unwrap(),
        };
        // A shell without the host's rc files: its prompt has no colour of its own.
        t.tmux(&["new-session", "-d", "-x", "160", "-y", "50", "-c"])
            .arg(t.dir.path())
            .arg("env PS1='$ ' bash --norc --noprofile")
            .env("TERM", "xterm-256color")
            .status()
            .expect("start tmux");
        t
    }

    fn tmux(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]).args(args);
        c
    }

    /// Types `line` and Enter.
    fn type_line(&self, line: &str) {
        let ok = self
            .tmux(&["send-keys", "-t", "0", line, "Enter"])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Clears the screen and its scrollback, once the shell has cleared it (no command's
    /// `EXIT=` line left on it).
    fn clear(&self) {
        self.type_line("clear");
        self.watch_until("the screen cleared", Duration::from_secs(10), |s| {
            !exited(s)
        });
        let ok = self.tmux(&["clear-history", "-t", "0"]).status().unwrap();
        assert!(ok.success());
    }

    /// The screen and its scrollback, as text (`escapes`: with colour codes).
    fn screen(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J", "-S", "-200", "-t", "0"];
        if escapes {
            args.push("-e");
        }
        let out = self.tmux(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Captures the screen every 50 ms until `done` holds for it; every capture is kept.
    fn watch_until(&self, what: &str, limit: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            let s = self.screen(false);
            let finished = done(&s);
            seen.push(s);
            if finished {
                return seen;
            }
            assert!(
                started.elapsed() < limit,
                "{what} not within {limit:?}; the screen:\n{}",
                seen.last().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let out = run_ctl(&binary("pangaea-ctl"), self.path(), &["down", "--purge"]);
        if !out.status.success() {
            eprintln!(
                "cleanup: down --purge: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = self.tmux(&["kill-server"]).status();
    }
}

/// The command line typed into the terminal: the same isolation as `run_ctl` (kubectl's
/// file and the host state in the test's directory), nothing else set.
fn command(ctl: &Path, dir: &Path, prefix: &str, args: &str) -> String {
    let host: PathBuf = dir.join("host");
    format!(
        "{prefix}KUBECONFIG={} PANGAEA_HOST_STATE={} {} {args}; echo EXIT=$?",
        dir.join("kubeconfig").display(),
        host.display(),
        ctl.display()
    )
}

/// Whether the typed command has finished: its `EXIT=` line (not the typed command line).
fn exited(screen: &str) -> bool {
    screen.lines().any(|l| l.starts_with("EXIT="))
}

#[test]
fn up_in_a_terminal_shows_a_spinner_while_it_waits_then_a_plain_summary() {
    require_node_host();
    let term = Terminal::start();
    let name = format!("tty{}", run_id());
    std::fs::write(
        term.path().join("pangaea.yaml"),
        etcd_only_config(&name, &format!("10.233.{}.0/24", run_id()), ""),
    )
    .unwrap();
    let ctl = binary("pangaea-ctl");

    term.type_line(&command(&ctl, term.path(), "", "up --timeout 180s"));
    let frames = term.watch_until("up", Duration::from_secs(200), exited);
    let last = frames.last().unwrap();
    assert!(last.lines().any(|l| l == "EXIT=0"), "{last}");

    // While it waited: the step in progress behind a spinner, with the nodes' states.
    let spinning = frames.iter().find(|f| {
        f.lines().any(|l| {
            l.starts_with(SPINNER) && l.contains("==> waiting until 3 node(s) are healthy")
        })
    });
    assert!(
        spinning.is_some(),
        "no spinner seen beside the wait in {} captures; the last:\n{last}",
        frames.len()
    );
    // When done: each step a line, the summary, the kubectl context; no log records.
    for want in [
        "  ==> waiting until 3 node(s) are healthy — healthy: node-1 node-2 node-3",
        &format!("cluster {name} is up: 3 nodes healthy"),
        &format!("kubectl: context pangaea-{name} in"),
    ] {
        assert!(last.contains(want), "{want:?} not on the screen:\n{last}");
    }
    assert!(
        !last.lines().any(|l| l.starts_with(SPINNER)),
        "a spinner left:\n{last}"
    );
    for record in [" INFO ", " WARN ", "[2m", "[0m"] {
        assert!(!last.contains(record), "{record:?} on the screen:\n{last}");
    }

    // Colour is on in a terminal (the time a long step took is dimmed)...
    assert!(
        term.screen(true).contains("\x1b[2m"),
        "no colour in a terminal"
    );

    // ...and off with NO_COLOR: again (nothing to do): not one colour code reaches the terminal.
    term.clear();
    term.type_line(&command(&ctl, term.path(), "NO_COLOR=1 ", "up"));
    term.watch_until("the second up", Duration::from_secs(60), exited);
    let coloured = term.screen(true);
    assert!(coloured.lines().any(|l| l == "EXIT=0"), "{coloured}");
    assert!(
        !coloured.contains('\x1b'),
        "colour with NO_COLOR:\n{coloured:?}"
    );
    assert!(coloured.contains("==> "), "steps shown:\n{coloured}");

    // -q: the summary only, no step.
    term.clear();
    term.type_line(&command(&ctl, term.path(), "", "-q up"));
    let quiet = term.watch_until("up -q", Duration::from_secs(60), exited);
    let quiet = quiet.last().unwrap();
    assert!(quiet.lines().any(|l| l == "EXIT=0"), "{quiet}");
    assert!(quiet.contains(&format!("cluster {name} is up")), "{quiet}");
    assert!(!quiet.contains("==> "), "a step with -q:\n{quiet}");

    // `ssh`: a command in a node (its exit status is the command's), an unknown node
    // refused, and an interactive shell on the terminal.
    let ssh = |args: &[&str]| run_ctl(&ctl, term.path(), &[&["ssh"], args].concat());
    let out = ssh(&["node-2", "--", "cat", "/etc/hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "node-2",
        "{out:?}"
    );
    let out = ssh(&["node-1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = ssh(&["node-9", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node node-9 is not in the cluster"),
        "{out:?}"
    );
    term.clear();
    term.type_line(&command(&ctl, term.path(), "", "ssh node-3"));
    term.watch_until("a shell on node-3", Duration::from_secs(30), |s| {
        s.lines().any(|l| l.contains("@node-3"))
    });
    term.type_line("echo inside-$(cat /etc/hostname); exit 3");
    let shell = term.watch_until("the shell's end", Duration::from_secs(30), exited);
    let shell = shell.last().unwrap();
    assert!(shell.contains("inside-node-3"), "{shell}");
    assert!(shell.lines().any(|l| l == "EXIT=3"), "{shell}");

    // `logs`: a unit's journal, read on the node by its agent and streamed over mutual
    // TLS (not through the provider's shell); `--bundle`: the bug-report archive, read by
    // the real tar.
    let out = run_ctl(
        &ctl,
        term.path(),
        &["logs", "node-1", "pangaea-agent", "--since", "-1h"],
    );
    let journal = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        journal
            .lines()
            .any(|l| l.contains(" node-1 ") && l.contains("connected to the controller")),
        "{journal}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("provider's shell"),
        "{out:?}"
    );
    // `logs -f` follows until the command goes away; then journalctl on the node stops too.
    let journalctl_runs = || {
        run_ctl(
            &ctl,
            term.path(),
            &[
                "ssh",
                "node-2",
                "--",
                "sh",
                "-c",
                "cat /proc/[0-9]*/comm 2>/dev/null | grep -qx journalctl",
            ],
        )
        .status
        .success()
    };
    let mut follow = Command::new(&ctl)
        .current_dir(term.path())
        .env("NO_COLOR", "1")
        .env("KUBECONFIG", term.path().join("kubeconfig"))
        .env("PANGAEA_HOST_STATE", term.path().join("host"))
        .args(["logs", "node-2", "pangaea-agent", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut first = String::new();
        std::io::BufReader::new(follow.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains(" node-2 "), "{first}");
    }
    assert!(journalctl_runs(), "no journalctl follows on node-2");
    follow.kill().unwrap();
    let _ = follow.wait();
    pangaea_tests::poll_until(
        "journalctl on node-2 to stop after `logs -f` ended",
        Duration::from_secs(10),
        Duration::from_millis(250),
        || (!journalctl_runs()).then_some(()),
    );
    // A live token's secret where a bundle picks it up (a note in pangaea.yaml): the
    // bundle keeps its id and never its secret.
    let token = run_ctl(&ctl, term.path(), &["token", "create", "--ttl", "5m"]);
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8_lossy(&token.stdout)
        .split_whitespace()
        .find(|w| w.contains('.') && w.len() > 20)
        .expect("token create prints the token")
        .to_owned();
    let (token_id, token_secret) = token.split_once('.').unwrap();
    let yaml = term.path().join("pangaea.yaml");
    let mut config = std::fs::read_to_string(&yaml).unwrap();
    config.push_str(&format!("# spare join token: {token}\n"));
    std::fs::write(&yaml, config).unwrap();
    let bundle = term.path().join("report.tar.gz");
    let out = run_ctl(
        &ctl,
        term.path(),
        &["logs", "--bundle", bundle.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&bundle)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "status.json",
        "pangaea.yaml",
        "serve.log",
        "README.txt",
        "nodes/node-3/journal.txt",
    ] {
        assert!(
            listing.contains(&format!("report/{f}\n")),
            "{f} not in:\n{listing}"
        );
    }
    let unpacked = term.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    assert!(
        Command::new("tar")
            .arg("-xzf")
            .arg(&bundle)
            .arg("-C")
            .arg(&unpacked)
            .status()
            .unwrap()
            .success()
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("report/status.json")).unwrap())
            .unwrap();
    assert_eq!(status.as_array().unwrap().len(), 3);
    let journal =
        std::fs::read_to_string(unpacked.join("report/nodes/node-2/journal.txt")).unwrap();
    assert!(journal.contains("etcd"), "{journal}");
    for f in pangaea_tests::files_below(&unpacked) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains("PRIVATE KEY"), "a key in {}", f.display());
        assert!(
            !text.contains(token_secret),
            "the token's secret in {}",
            f.display()
        );
    }
    let bundled = std::fs::read_to_string(unpacked.join("report/pangaea.yaml")).unwrap();
    assert!(
        bundled.contains(&format!("# spare join token: {token_id}.<redacted>")),
        "{bundled}"
    );
}

/// `up` that fails (here: nodes not healthy within 1 s) leaves a bug-report bundle and
/// says where.
#[test]
fn a_failed_up_writes_a_bundle() {
    require_node_host();
    let term = Terminal::start();
    let id = run_id();
    std::fs::write(
        term.path().join("pangaea.yaml"),
        etcd_only_config(&format!("ttyf{id}"), &format!("10.236.{id}.0/24"), ""),
    )
    .unwrap();
    let out = run_ctl(
        &binary("pangaea-ctl"),
        term.path(),
        &["up", "--timeout", "1s"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "not healthy in time:\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("attach "))
        .unwrap_or_else(|| panic!("no bundle named:\n{err}"));
    let path = line
        .trim_start_matches("attach ")
        .trim_end_matches(" to a bug report");
    let listing = Command::new("tar").args(["-tzf", path]).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("/status.json\n") && listing.contains("/nodes/node-1/journal.txt\n"),
        "{listing}"
    );
}
