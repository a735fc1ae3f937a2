//! Rendered files checked by the real tools that consume them: `systemd-analyze verify`
//! for every unit, `kubectl config view` for every kubeconfig; and every certificate, key or
//! configuration file a unit references is part of the node's assignment.

mod common;

use common::{CASES, compile};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn tool(name: &str, install: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!path.is_empty(), "{name} not found: {install}");
    PathBuf::from(path)
}

/// Absolute paths a unit's command lines mention.
fn referenced_paths(unit: &str) -> BTreeSet<String> {
    unit.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            l.split(|c: char| {
                c.is_whitespace() || c == '=' || c == ',' || c == '\'' || c == '"' || c == ';'
            })
        })
        .filter(|w| w.starts_with('/') && w.len() > 1 && !w.contains('*'))
        .map(|w| w.trim_end_matches(['\\', ')']).to_owned())
        .collect()
}

/// A root that looks like a node image to `systemd-analyze verify --root`: the host's
/// systemd units and stand-in executables at every path a unit executes.
fn fake_root(units: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let sys = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&sys).unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(&sys)
        .status()
        .unwrap();
    assert!(ok.success());
    for (_, text) in units {
        for l in text.lines() {
            let Some((key, value)) = l.split_once('=') else {
                continue;
            };
            if !key.starts_with("Exec") {
                continue;
            }
            let exe = value
                .trim_start_matches(['-', '@', '+', '!'])
                .split_whitespace()
                .next()
                .unwrap_or_default();
            if exe.starts_with('/') {
                let p = root.path().join(exe.trim_start_matches('/'));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, "#!/bin/sh\n").unwrap();
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .unwrap();
            }
        }
    }
    root
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let analyze = tool("systemd-analyze", "apt-get install systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (case, config) in CASES {
        for node in compile(config, dir.path()) {
            let units: Vec<(&str, &str)> = node
                .files
                .iter()
                .filter(|f| f.path.starts_with("/etc/systemd/system/"))
                .map(|f| (f.path.as_str(), f.content.as_str()))
                .collect();
            assert_eq!(
                units.len(),
                node.units.len(),
                "{case}/{}: every unit has its file",
                node.node
            );
            let root = fake_root(&units);
            for (path, text) in &units {
                let p = root.path().join(path.trim_start_matches('/'));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, text).unwrap();
            }
            let out = Command::new(&analyze)
                .arg("verify")
                .arg(format!("--root={}", root.path().display()))
                .args(units.iter().map(|(p, _)| *p))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.trim().is_empty(),
                "{case}/{}: systemd-analyze verify:\n{stderr}",
                node.node
            );
            checked += units.len();
        }
    }
    assert!(checked > 20, "only {checked} units checked");
}

#[test]
fn systemd_analyze_verify_catches_a_broken_unit() {
    let analyze = tool("systemd-analyze", "apt-get install systemd");
    let units = [(
        "/etc/systemd/system/bad.service",
        "[Service]\nExecStart=/usr/local/bin/missing-binary\nRestartt=always\n",
    )];
    let root = fake_root(&[]);
    let p = root.path().join("etc/systemd/system/bad.service");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, units[0].1).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg(units[0].0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || !stderr.trim().is_empty(),
        "a broken unit must be reported"
    );
}

#[test]
fn every_kubeconfig_loads_in_kubectl() {
    let kubectl = tool(
        "kubectl",
        "install kubectl (https://kubernetes.io/docs/tasks/tools/)",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (case, config) in CASES {
        for node in compile(config, dir.path()) {
            for f in node
                .files
                .iter()
                .filter(|f| f.path.ends_with(".kubeconfig"))
            {
                let p = dir.path().join("kc");
                std::fs::write(&p, &f.content).unwrap();
                let out = Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&p)
                    .args([
                        "config",
                        "view",
                        "-o",
                        "jsonpath={.current-context} {.clusters[0].cluster.server}",
                    ])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{case}/{}{}: {}",
                    node.node,
                    f.path,
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    text.contains("@") && text.contains("https://"),
                    "{case}/{}{}: {text}",
                    node.node,
                    f.path
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} kubeconfigs checked");
    // And kubectl does reject a malformed one.
    let p = dir.path().join("bad");
    std::fs::write(&p, "apiVersion: v1\nkind: Config\nclusters: 7\n").unwrap();
    assert!(
        !Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&p)
            .args(["config", "view"])
            .output()
            .unwrap()
            .status
            .success()
    );
}

#[test]
fn every_path_a_unit_or_config_references_is_in_the_assignment() {
    let dir = tempfile::tempdir().unwrap();
    // Provided by the node image, created at run time, or not a file (an API path); the
    // agent is installed by cloud-init before any assignment.
    let from_image = [
        "/usr/local/bin/pangaea-agent",
        "/bin/",
        "/sbin/",
        "/usr/bin/",
        "/usr/sbin/",
        "/dev/",
        "/var/lib/etcd",
        "/var/log/",
        "/run/",
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/etc/kubernetes/addons/",
        "/var/lib/data",
        "/mnt/share",
        "/srv/share",
        "/readyz",
    ];
    for (case, config) in CASES {
        for node in compile(config, dir.path()) {
            let provided: BTreeSet<&str> = node
                .files
                .iter()
                .map(|f| f.path.as_str())
                .chain(node.artifacts.iter().flat_map(|a| {
                    std::iter::once(a.dest.as_str())
                        .chain(a.members.iter().map(|m| m.dest.as_str()))
                }))
                .collect();
            for f in node.files.iter().filter(|f| {
                f.path.starts_with("/etc/systemd/system/")
                    || f.path.ends_with(".yaml")
                        && !f.path.contains("/addons/")
                        && !f.path.ends_with("audit-policy.yaml")
                    || f.path.ends_with(".toml")
            }) {
                for p in referenced_paths(&f.content) {
                    if from_image
                        .iter()
                        .any(|pre| p.starts_with(pre) || p == pre.trim_end_matches('/'))
                    {
                        continue;
                    }
                    assert!(
                        provided.contains(p.as_str()),
                        "{case}/{}: {} references {p}, which the assignment does not provide",
                        node.node,
                        f.path
                    );
                }
            }
        }
    }
}

#[test]
fn keys_and_kubeconfigs_are_private() {
    let dir = tempfile::tempdir().unwrap();
    for node in compile("", dir.path()) {
        for f in &node.files {
            if f.path.ends_with(".key")
                || f.path.ends_with(".kubeconfig")
                || f.path.contains("encryption-config")
            {
                assert_eq!(f.mode, 0o600, "{} {}", node.node, f.path);
            }
        }
    }
}

#[test]
fn compilation_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for (case, config) in CASES {
        assert_eq!(
            compile(config, dir.path()),
            compile(config, dir.path()),
            "{case}"
        );
    }
}

#[test]
fn the_user_data_passes_cloud_init_schema() {
    let cloud_init = tool("cloud-init", "apt-get install cloud-init");
    let direct = pangaea_compiler::cloudinit::UserData {
        node: "node-1".parse().unwrap(),
        controller: "10.213.0.1:7443".into(),
        ca_pin: format!("sha256:{}", "ab".repeat(32)),
        token: "abcdef.0123456789abcdef".into(),
        agent_url: "http://10.213.0.1:7444/pangaea-agent".into(),
        agent_sha256: "cd".repeat(32),
        tunnel: None,
        metadata_server: None,
    };
    // Through the controller's reverse SSH tunnel (GCE behind NAT).
    let tunnelled = pangaea_compiler::cloudinit::UserData {
        controller: "127.0.0.1:7443".into(),
        agent_url: "http://127.0.0.1:7444/pangaea-agent".into(),
        tunnel: Some(pangaea_compiler::cloudinit::TunnelLogin {
            user: "pangaea-tunnel".into(),
            authorized_key: r#"restrict,port-forwarding,permitlisten="127.0.0.1:7443" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG pangaea-tunnel@c"#.into(),
        }),
        metadata_server: Some("169.254.169.254".into()),
        ..direct.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    for (case, data) in [("direct", direct), ("tunnelled", tunnelled)] {
        let good = dir.path().join(case);
        std::fs::write(&good, pangaea_compiler::cloudinit::render(&data).unwrap()).unwrap();
        let out = Command::new(&cloud_init)
            .args(["schema", "--config-file"])
            .arg(&good)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cloud-init schema ({case}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The validator does reject a broken document.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "#cloud-config\nwrite_files: 7\n").unwrap();
    assert!(
        !Command::new(&cloud_init)
            .args(["schema", "--config-file"])
            .arg(&bad)
            .output()
            .unwrap()
            .status
            .success()
    );
}

/// The containerd configuration rendered for containerd 1.x is read by the real containerd
/// 1.x of this machine as meant (systemd cgroups for runc, the CNI directories); the 2.x
/// format given to it instead is silently ignored — which is why the compiler renders by
/// version.
#[test]
fn the_containerd_1x_configuration_is_read_by_containerd_1x() {
    let containerd = tool("containerd", "apt-get install containerd");
    let version = Command::new(&containerd).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(
        version
            .split_whitespace()
            .nth(2)
            .is_some_and(|v| v.starts_with("1.") || v.starts_with("v1.")),
        "this check needs containerd 1.x (Debian 12's package): {version}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = |case: &str| {
        let (_, yaml) = CASES.iter().find(|(c, _)| *c == case).unwrap();
        let nodes = compile(yaml, dir.path());
        nodes[0]
            .files
            .iter()
            .find(|f| f.path == "/etc/containerd/config.toml")
            .expect("a worker node has a containerd config")
            .content
            .clone()
    };
    let dump = |content: &str| {
        let p = dir.path().join("config.toml");
        std::fs::write(&p, content).unwrap();
        let out = Command::new(&containerd)
            .arg("--config")
            .arg(&p)
            .args(["config", "dump"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let v2 = dump(&config("containerd-1x"));
    for want in [
        "SystemdCgroup = true",
        "BinaryName = \"/usr/local/sbin/runc\"",
        "bin_dir = \"/opt/cni/bin\"",
        "conf_dir = \"/etc/cni/net.d\"",
    ] {
        assert!(
            v2.contains(want),
            "containerd 1.x read {want:?} from the rendered file:\n{v2}"
        );
    }
    let v3 = dump(&config("default"));
    assert!(
        v3.contains("SystemdCgroup = false"),
        "containerd 1.x ignores the 2.x format (if it no longer does, revisit containerd.rs)"
    );
}
