//! README's quick start, word for word, as a new user runs it in an empty directory
//! (operator experience issue #13): the commands are read from README.md itself, so the
//! README cannot drift from what works.
//!
//! - The first way (`up` with no configuration, the pinned downloads): on a machine without
//!   internet (these build machines) it must fail within 10 s, create nothing, and name the
//!   second way; on a machine with internet it must bring the cluster up.
//! - The second way (the OS packages): every package its `apt-get install` line names is
//!   installed here (`.ci/run` installs them), and `up --artifact-source os-packages`
//!   brings up the default cluster, healthy; then some of the "Then:" commands, and `down
//!   --purge`.
//!
//! `sudo ./target/release/pangaea-ctl` is this build's `pangaea-ctl` (the test runs as
//! root). The cluster is the default one (`pangaea`, 10.213.0.0/24): the test cannot run
//! beside a cluster of that name on the same host.

use pangaea_tests::{binary, output_text as text, require_node_host};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `sh` code blocks of README's "Quick start" section, in order.
fn quick_start_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .expect("README has a Quick start section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap().to_owned())
        .collect()
}

/// `line` without its comment, its continuation lines joined.
fn commands(block: &str) -> Vec<String> {
    block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split("  # ").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The pangaea-ctl arguments of `command` (`… sudo ./target/release/pangaea-ctl ARGS`).
fn ctl_args(command: &str) -> Option<Vec<String>> {
    let (_, args) = command.split_once("./target/release/pangaea-ctl ")?;
    Some(args.split_whitespace().map(str::to_owned).collect())
}

struct User {
    dir: tempfile::TempDir,
    ctl: PathBuf,
}

impl User {
    fn run(&self, args: &[String]) -> (Output, Duration) {
        let started = Instant::now();
        let out = Command::new(&self.ctl)
            .args(args)
            .current_dir(self.dir.path())
            .env("PANGAEA_HOST_STATE", self.dir.path().join("host"))
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env_remove("PANGAEA_STATE_DIR")
            .env_remove("PANGAEA_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out, started.elapsed())
    }

    fn ok(&self, command: &str) -> String {
        let args =
            ctl_args(command).unwrap_or_else(|| panic!("not a pangaea-ctl command: {command}"));
        let (out, _) = self.run(&args);
        assert!(out.status.success(), "{command}: {}", text(&out));
        text(&out)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if self.dir.path().join(".pangaea").exists() {
            let _ = self.run(&["down".into(), "--purge".into()]);
        }
    }
}

#[test]
fn the_quick_start_works_as_written() {
    require_node_host();
    let blocks = quick_start_blocks();
    assert!(
        blocks.len() >= 3,
        "the quick start's code blocks: {blocks:?}"
    );
    let user = User {
        dir: tempfile::tempdir().unwrap(),
        ctl: binary("pangaea-ctl"),
    };

    // The first way: one command.
    let first = commands(&blocks[0]);
    assert_eq!(first.len(), 1, "{first:?}");
    let (build, up) = first[0].split_once(" && ").expect("build && up");
    assert_eq!(build, "cargo build --release");
    let args = ctl_args(up).unwrap();
    assert_eq!(args, ["up"]);
    let (out, took) = user.run(&args);
    if out.status.success() {
        // A machine with internet: the pinned downloads worked.
        assert!(text(&out).contains("3 nodes healthy"), "{}", text(&out));
        user.ok("sudo ./target/release/pangaea-ctl down --purge");
    } else {
        // No internet: refused at once, clearly, with the second way named, nothing made.
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        assert!(took < Duration::from_secs(10), "refused after {took:?}");
        assert!(
            text(&out).contains("--artifact-source os-packages"),
            "the second way is named: {}",
            text(&out)
        );
        assert!(
            !user.dir.path().join(".pangaea/nodes").exists(),
            "nothing is created"
        );
    }

    // `plan` before anything exists: what `up` would create, and nothing created by asking.
    let plan = user.ok("sudo ./target/release/pangaea-ctl plan");
    assert!(plan.contains("no cluster here yet"), "{plan}");
    for n in ["node-1", "node-2", "node-3"] {
        assert!(plan.contains(n), "{plan}");
    }
    assert!(
        !user.dir.path().join(".pangaea/pki").exists(),
        "plan made a PKI"
    );

    // The second way: the packages, then `up` with the flag.
    let offline = blocks
        .iter()
        .find(|b| b.contains("--artifact-source os-packages"))
        .expect("README shows the second way");
    let offline = commands(offline);
    let install = offline
        .iter()
        .find(|c| c.starts_with("sudo apt-get install "))
        .expect("the second way installs packages");
    for package in install
        .trim_start_matches("sudo apt-get install ")
        .split_whitespace()
    {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .unwrap();
        assert!(
            text(&status).contains("install ok installed"),
            "README's second way installs {package}, which is not installed here: apt-get install {package}"
        );
    }
    let up = offline
        .iter()
        .find(|c| c.contains("pangaea-ctl up"))
        .unwrap();
    let out = user.ok(up);
    assert!(out.contains("3 nodes healthy"), "{out}");
    assert!(
        std::fs::read_to_string(user.dir.path().join("pangaea.yaml"))
            .unwrap()
            .contains("artifactSource: os-packages"),
        "the flag records its line"
    );

    // Some of "Then:", as written (those that need nothing the test does not have).
    let then = blocks
        .iter()
        .find(|b| b.contains("pangaea-ctl status"))
        .expect("README shows what to do next");
    for c in commands(then) {
        let Some(args) = ctl_args(&c) else { continue };
        if ["status", "plan", "clusters", "cost"].contains(&args[0].as_str())
            || c.contains("node user-data")
            || c.contains("--dry-run")
        {
            let out = user.ok(&c);
            assert!(!out.trim().is_empty(), "{c} printed nothing");
        }
    }
    let status = user.ok("sudo ./target/release/pangaea-ctl status");
    assert!(status.contains("node-1"), "{status}");
    // A fourth node in pangaea.yaml: `plan` names it, as text and as data, and creates
    // nothing.
    let yaml = user.dir.path().join("pangaea.yaml");
    let config = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        format!("{config}pools:\n  - name: node\n    count: 4\n"),
    )
    .unwrap();
    let plan = user.ok("sudo ./target/release/pangaea-ctl plan");
    assert!(plan.contains("+ node node-4"), "{plan}");
    let (json, _) = user.run(&["plan".into(), "-o".into(), "json".into()]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["create"], serde_json::json!(["node-4"]), "{json}");
    std::fs::write(&yaml, config).unwrap();
    let status = user.ok("sudo ./target/release/pangaea-ctl status");
    assert!(!status.contains("node-4"), "{status}");
    user.ok("sudo ./target/release/pangaea-ctl down --purge");
    assert!(!user.dir.path().join(".pangaea").exists());
}
