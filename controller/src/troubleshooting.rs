//! docs/troubleshooting.md, generated from the real error messages: each problem's message
//! is made by the code that reports it (a configuration parsed by the real loader, the real
//! error values), its exit code by [`crate::exit::code_of`], so the page cannot drift from
//! what pangaea-ctl prints. Cause and fix are written here, beside the message they explain.
//!
//! The page is checked against [`page`] by a test; after a change, regenerate it with
//! `PANGAEA_BLESS=1 cargo test -p pangaea-controller --lib troubleshooting`.

use crate::admin::BackendError;
use crate::health::Health;
use crate::preflight::{ArtifactsUnavailable, Unavailable};
use crate::provider::ProviderError;
use crate::reconcile::{ReconcileError, StuckNode};
use std::time::Duration;

/// A problem an operator meets: what pangaea-ctl prints, why, and what to do.
pub struct Problem {
    /// A short name, as the page's heading.
    pub title: &'static str,
    /// The message, as pangaea-ctl prints it after `Error: `.
    pub message: String,
    /// The exit code it ends with.
    pub exit: i32,
    /// Why it happens.
    pub cause: &'static str,
    /// What to do.
    pub fix: &'static str,
}

fn problem(
    title: &'static str,
    error: anyhow::Error,
    cause: &'static str,
    fix: &'static str,
) -> Problem {
    Problem {
        title,
        message: format!("{error:#}"),
        exit: crate::exit::code_of(&error) as i32,
        cause,
        fix,
    }
}

/// The error the configuration loader gives for `yaml`.
fn config_error(yaml: &str) -> anyhow::Error {
    match pangaea_compiler::config::Loaded::parse("pangaea.yaml", yaml, std::path::Path::new(".")) {
        Ok(_) => panic!("the troubleshooting example is a valid configuration:\n{yaml}"),
        Err(e) => e.into(),
    }
}

/// The pinned etcd download, as the default configuration has it.
fn pinned_etcd() -> Unavailable {
    let loaded =
        pangaea_compiler::config::Loaded::parse("pangaea.yaml", "", std::path::Path::new("."))
            .expect("the default configuration loads");
    let set = loaded.artifact_set();
    let etcd = set
        .artifacts
        .iter()
        .find(|a| a.name == "etcd")
        .expect("the pinned set has etcd");
    Unavailable {
        name: etcd.name.clone(),
        version: etcd.version.clone(),
        url: etcd.url.clone(),
        reason: String::new(),
    }
}

/// Every problem on the page, in the order an operator meets them.
pub fn problems() -> Vec<Problem> {
    vec![
        problem(
            "A value of the wrong type in pangaea.yaml",
            config_error("name: lab\npools:\n  - name: node\n    count: three\n"),
            "The file does not match the configuration's types; the message names the file, line and column.",
            "Fix the value at that place. `pangaea-ctl init` writes a commented pangaea.yaml with every field and its default; docs/configuration.md is the reference.",
        ),
        problem(
            "A machine too small for its roles",
            config_error(
                "name: lab\npools:\n  - name: node\n    count: 3\n    memoryMiB: 1024\n    roles: [control-plane, etcd, worker]\n",
            ),
            "The compiler adds up what each role on the pool's nodes reserves (the message lists the parts) and the pool's memory does not hold it.",
            "Give the pool more memory (`memoryMiB`, or a bigger `machineType` on GCE), or split the roles across pools: etcd and the control plane on one, workers on another.",
        ),
        problem(
            "No internet: the pinned downloads cannot be had",
            ArtifactsUnavailable {
                missing: vec![Unavailable {
                    reason: "failed to lookup address information".into(),
                    ..pinned_etcd()
                }],
                config: "pangaea.yaml".into(),
                os_packages: false,
            }
            .into(),
            "`up` asks every artifact source first (at most 8 s each, all at once) and refuses before creating anything when one cannot answer: a machine that reaches only its OS package mirror, a proxy that is not set, a site that is down.",
            "Use the way forward the message names first: `pangaea-ctl up --artifact-source os-packages` takes etcd, containerd, runc and the CNI plugins from this machine's Debian packages. Or set HTTPS_PROXY, or `pangaea-ctl artifacts import FILE`, or disable the artifact.",
        ),
        problem(
            "Not root",
            crate::provider::root_needed("local", crate::provider::local::NEEDS_ROOT_FOR).into(),
            "The local and Vagrant providers create machines, network namespaces, bridges and libvirt domains, which only root may.",
            "Run it with sudo. `pangaea-ctl doctor` lists everything else the host needs.",
        ),
        problem(
            "libvirt does not answer (Vagrant provider)",
            crate::provider::vagrant::libvirt::not_answering(
                "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
            )
            .into(),
            "vagrant-libvirt talks to the system libvirt daemon, which is not running (a host where systemd is not PID 1 starts none by itself).",
            "Start it as the message says; `virsh -c qemu:///system list` then answers. `pangaea-ctl doctor` checks vagrant, vagrant-libvirt, QEMU and libvirt.",
        ),
        problem(
            "The controller is not running",
            BackendError::NotRunning {
                need: "no node can receive the image",
                start: "up",
            }
            .into(),
            "The command needs the controller daemon (`pangaea-ctl serve`, started by `up` and `start`), and none answers on the cluster's socket: the cluster is stopped, or the daemon died (its log: .pangaea/serve.log).",
            "Start it with the command the message names; `pangaea-ctl status` works without it and shows what is known.",
        ),
        problem(
            "Nodes not healthy in time",
            ReconcileError::Stuck {
                timeout: Duration::from_secs(300),
                stuck: vec![StuckNode {
                    name: "node-2".parse().expect("a node name"),
                    health: Health::NotJoined,
                    hint: Some("console: .pangaea/nodes/node-2/console.log".into()),
                }],
            }
            .into(),
            "A node did not report healthy before `--timeout`: it did not boot, could not reach the controller (its agent downloads itself from the controller's address on the node network), or a unit keeps failing. The state after each node says which.",
            "Look where the message points (the node's console), then `pangaea-ctl logs NODE`, `pangaea-ctl ssh NODE`. `up` wrote a bundle of logs to .pangaea/bundles/ to attach to a bug report. Under software emulation (Vagrant without KVM) give `--timeout 15m`.",
        ),
        problem(
            "vagrant up timed out",
            ReconcileError::Provider {
                node: "node-3".parse().expect("a node name"),
                source: ProviderError::Command {
                    command: "vagrant up node-3".into(),
                    stderr: "Timed out while waiting for the machine to boot.".into(),
                },
            }
            .into(),
            "Vagrant waited for SSH on the VM longer than its boot timeout (Pangaea sets 900 s under software emulation, 300 s with KVM): the host is overloaded, or the VM did not boot.",
            "See the VM's console (`virsh -c qemu:///system console pangaea-CLUSTER-NODE`); run `pangaea-ctl up` again once the host is less busy: it continues where it stopped.",
        ),
    ]
}

/// docs/troubleshooting.md.
pub fn page() -> String {
    let mut o = String::from(
        "# Troubleshooting\n\n<!-- Generated by controller/src/troubleshooting.rs from the real error messages: edit that file, then `PANGAEA_BLESS=1 cargo test -p pangaea-controller --lib troubleshooting`. -->\n\nWhat pangaea-ctl prints when something is wrong, why, and what to do. Exit codes are\nthose of `pangaea-ctl --help` (docs/ARCHITECTURE.md §14). Every failed `up` also writes\na bundle of logs and status to `.pangaea/bundles/` for a bug report.\n",
    );
    for p in problems() {
        o.push_str(&format!(
            "\n## {}\n\n```\nError: {}\n```\n\nExit code {}.\n\n**Cause.** {}\n\n**Fix.** {}\n",
            p.title, p.message, p.exit, p.cause, p.fix
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documentation_is_the_generated_page() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/troubleshooting.md");
        let want = page();
        if std::env::var_os("PANGAEA_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/troubleshooting.md is not the generated page: PANGAEA_BLESS=1 cargo test -p pangaea-controller --lib troubleshooting"
        );
    }

    #[test]
    fn each_problem_has_its_own_message_and_a_fix() {
        let problems = problems();
        for p in &problems {
            assert!(!p.message.is_empty() && !p.fix.is_empty(), "{}", p.title);
            assert!(
                problems.iter().filter(|q| q.message == p.message).count() == 1,
                "{}",
                p.title
            );
        }
        // The classes the exit-code table promises.
        let exit = |title: &str| problems.iter().find(|p| p.title == title).unwrap().exit;
        assert_eq!(exit("No internet: the pinned downloads cannot be had"), 5);
        assert_eq!(exit("Not root"), 5);
        assert_eq!(exit("The controller is not running"), 3);
        assert_eq!(exit("Nodes not healthy in time"), 4);
        assert!(
            problems[0].message.starts_with("pangaea.yaml:4:"),
            "line and column: {}",
            problems[0].message
        );
    }
}
