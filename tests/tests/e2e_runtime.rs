//! End to end on real nodes: containers run in every local node. `pangaea-ctl up` with
//! `artifactSource: os-packages` (the one config line) boots two systemd-nspawn machines
//! whose etcd, containerd, runc and CNI plugins come from this host's Debian packages
//! through the controller's mirror; the agent starts containerd with the rendered config.
//! An OCI image the test builds is loaded into every node's containerd with `pangaea-ctl
//! image load` (through the agents, into the kubelet's namespace `k8s.io`; twice, which is
//! fine), and a corrupt archive is refused by every node with containerd's words. Then,
//! inside each node (as one of its own units, not with the host's capabilities): a
//! container started from the image exits 0, gets an address from a CNI bridge
//! configuration and reaches its node. The nodes have distinct machine IDs, and two nodes'
//! containers named alike land in distinct host cgroups.
//!
//! Needs root and: apt-get install systemd-container debootstrap etcd-server containerd
//! runc containernetworking-plugins busybox-static (`.ci/run` installs them).

use pangaea_controller::provider::local::{Local, cgroup, host};
use pangaea_controller::state_dir::StateDir;
use pangaea_tests::{binary, output_text as text};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Its own cluster name and node network per run (from the PID), distinct from
/// `e2e_local`'s, so runs on one host never collide.
fn run_id() -> u32 {
    std::process::id() % 250
}

fn cluster_name() -> String {
    format!("rt{}", run_id())
}

fn network() -> String {
    format!("10.232.{}.0/24", run_id())
}

const NODES: [&str; 2] = ["cp-1", "wk-1"];

fn require(tool: &str, install: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} not found: apt-get install {install}"
    );
}

struct Cluster {
    dir: tempfile::TempDir,
    ctl: PathBuf,
}

impl Cluster {
    fn ctl(&self, args: &[&str]) -> Output {
        pangaea_tests::run_ctl(&self.ctl, self.dir.path(), args)
    }

    fn local(&self) -> Local {
        Local::new(
            &cluster_name(),
            pangaea_compiler::cidr::Cidr::parse(&network()).unwrap(),
            &StateDir::new(self.dir.path().join(".pangaea")),
            Path::new("/var/cache/pangaea/images"),
        )
    }

    /// Runs `script` with /bin/sh inside `node` as a unit of the node's systemd, with
    /// `input` on its standard input.
    fn sh(&self, node: &str, script: &str, input: &[u8]) -> Output {
        self.try_sh(node, script, input)
            .unwrap_or_else(|| panic!("{node} is not running"))
    }

    /// [`Cluster::sh`], or `None` when the node is not running.
    fn try_sh(&self, node: &str, script: &str, input: &[u8]) -> Option<Output> {
        let argv = self
            .local()
            .exec_argv(&node.parse().unwrap(), &["/bin/sh", "-c", script])?;
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter not found: apt-get install util-linux");
        use std::io::Write;
        // A process that exits without reading its input closes the pipe; that is its answer.
        let _ = child.stdin.take().unwrap().write_all(input);
        Some(child.wait_with_output().unwrap())
    }

    fn sh_ok(&self, node: &str, script: &str, input: &[u8]) -> String {
        let out = self.sh(node, script, input);
        assert!(out.status.success(), "{node}: {script}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = StateDir::new(self.dir.path().join(".pangaea"));
            for n in NODES {
                let log = state.nodes().join(n).join("console.log");
                let t = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(30).collect();
                eprintln!(
                    "--- {} (last lines)\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        let out = self.ctl(&["down", "--purge"]);
        if !out.status.success() {
            eprintln!("cleanup: down --purge failed: {}", text(&out));
        }
    }
}

/// A one-layer OCI image archive of busybox (static, from this host's busybox-static), named
/// `docker.io/local/busybox:1`: what `ctr image import` reads; no registry is needed.
fn busybox_image() -> Vec<u8> {
    fn sha(b: &[u8]) -> String {
        format!("{:x}", Sha256::digest(b))
    }
    fn add(t: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        t.append_data(&mut h, path, data).unwrap();
    }
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        layer.append_data(&mut h, d, &[][..]).unwrap();
    }
    add(&mut layer, "bin/busybox", &busybox, 0o755);
    for applet in ["sh", "ip", "ping", "sleep", "cat", "echo"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_size(0);
        layer
            .append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    add(
        &mut layer,
        "etc/passwd",
        b"root:x:0:0:root:/:/bin/sh\n",
        0o644,
    );
    let layer = layer.into_inner().unwrap();
    let diff_id = sha(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &layer).unwrap();
    let layer_gz = gz.finish().unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":{}}}]}}"#,
        sha(config.as_bytes()),
        config.len(),
        sha(&layer_gz),
        layer_gz.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"io.containerd.image.name":"docker.io/local/busybox:1","org.opencontainers.image.ref.name":"1"}}}}]}}"#,
        sha(manifest.as_bytes()),
        manifest.len()
    );
    let mut out = tar::Builder::new(Vec::new());
    add(
        &mut out,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    );
    add(&mut out, "index.json", index.as_bytes(), 0o644);
    for blob in [config.as_bytes(), manifest.as_bytes(), &layer_gz] {
        add(
            &mut out,
            &format!("blobs/sha256/{}", sha(blob)),
            blob,
            0o644,
        );
    }
    out.into_inner().unwrap()
}

/// A CNI bridge network for containers inside a node (the node's own namespace, so the
/// subnet is private to it).
const CNI_CONF: &str = r#"{"cniVersion":"1.0.0","name":"e2e","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}"#;

/// The host processes whose command line contains `marker`, with their memory cgroup as
/// this process sees it.
fn memory_cgroups_of(marker: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if pid == std::process::id() || !String::from_utf8_lossy(&cmdline).contains(marker) {
            continue;
        }
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        if let Some(path) = cg.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            (c.split(',').any(|c| c == "memory") || c.is_empty()).then(|| p.to_owned())
        }) {
            out.push((pid, path));
        }
    }
    out
}

#[test]
fn containers_run_in_every_node_with_their_own_cgroups_and_machine_ids() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CI runs as root): systemd-nspawn, network namespaces"
    );
    require("/usr/bin/systemd-nspawn", "systemd-container");
    require("/usr/sbin/debootstrap", "debootstrap");
    require("/usr/bin/dpkg-query", "dpkg");
    require("/usr/bin/nsenter", "util-linux");
    require("/usr/bin/etcd", "etcd-server");
    require("/usr/bin/containerd", "containerd");
    require("/usr/sbin/runc", "runc");
    require("/usr/lib/cni/bridge", "containernetworking-plugins");
    require("/bin/busybox", "busybox-static");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pangaea.yaml"),
        format!(
            "name: {}\nnetwork:\n  nodes: {}\nartifactSource: os-packages\npools:\n  - {{name: cp, count: 1, roles: [etcd, control-plane, worker]}}\n  - {{name: wk, count: 1, roles: [worker]}}\n",
            cluster_name(),
            network()
        ),
    )
    .unwrap();
    let c = Cluster {
        dir,
        ctl: binary("pangaea-ctl"),
    };
    assert!(binary("pangaea-agent").is_file());

    // 1. Up, with the binaries of this host's packages (the image may be built now, once),
    // leaving the operator's kubectl file alone (`--no-kubeconfig`; run_ctl points
    // KUBECONFIG into the test's directory).
    let t = Instant::now();
    let up = c.ctl(&["up", "--timeout", "240s", "--no-kubeconfig"]);
    let out = text(&up);
    assert!(up.status.success(), "up: {out}");
    assert!(
        !c.dir.path().join("kubeconfig").exists(),
        "up --no-kubeconfig wrote the operator's kubectl file: {out}"
    );
    assert!(c.dir.path().join(".pangaea/admin.kubeconfig").is_file());
    eprintln!("up took {:.1}s:\n{out}", t.elapsed().as_secs_f64());
    assert!(out.contains("2 nodes healthy"), "{out}");
    for expected in [
        "artifact containerd: from OS packages containerd 1.",
        "artifact runc: from OS packages runc ",
        "artifact cni-plugins: from OS packages containernetworking-plugins ",
        "artifact etcd: from OS packages etcd-client ",
        "artifacts kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl, crictl: unavailable (in no OS package)",
    ] {
        assert!(out.contains(expected), "up reports {expected:?}: {out}");
    }
    // What the host cannot give is said plainly, and only then.
    let v1 = host::probe().cgroup == host::CgroupMode::V1;
    assert_eq!(
        out.contains("refuses to start on cgroup v1"),
        v1,
        "cgroup v1 host: {v1}; {out}"
    );

    // 2. The image built here, into every node's containerd through the agents; the same
    // archive again is fine; a corrupt one is refused by every node, each named.
    let image = busybox_image();
    let archive = c.dir.path().join("busybox.tar");
    std::fs::write(&archive, &image).unwrap();
    let archive = archive.to_str().unwrap();
    for round in ["first", "again"] {
        let t = Instant::now();
        let load = c.ctl(&["image", "load", archive]);
        let said = text(&load);
        assert!(load.status.success(), "image load ({round}): {said}");
        eprintln!(
            "image load ({round}) of {} KiB into 2 nodes took {:.2}s:\n{said}",
            image.len() / 1024,
            t.elapsed().as_secs_f64()
        );
        for node in NODES {
            assert!(
                said.lines().any(|l| l.starts_with(node)
                    && l.contains("loaded")
                    && l.contains("docker.io/local/busybox:1")),
                "{node}: {said}"
            );
        }
    }
    for node in NODES {
        let images = c.sh_ok(node, "ctr -n k8s.io images ls -q", b"");
        assert!(
            images.lines().any(|l| l == "docker.io/local/busybox:1"),
            "{node}: {images}"
        );
    }
    let corrupt = c.dir.path().join("corrupt.tar");
    std::fs::write(&corrupt, &image[..image.len() / 2]).unwrap();
    let t = Instant::now();
    let load = c.ctl(&["image", "load", corrupt.to_str().unwrap()]);
    let said = text(&load);
    eprintln!(
        "image load of a corrupt archive took {:.2}s:\n{said}",
        t.elapsed().as_secs_f64()
    );
    assert!(!load.status.success(), "a corrupt archive: {said}");
    assert!(said.contains("image load failed on 2 of 2 nodes"), "{said}");
    // The same as data: JSON on stdout, each node failed with containerd's words, and the
    // command still fails.
    let json = c.ctl(&["image", "load", corrupt.to_str().unwrap(), "-o", "json"]);
    assert!(!json.status.success());
    let outcome: serde_json::Value = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("image load -o json: {e}: {}", text(&json)));
    let nodes = outcome["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), NODES.len(), "{outcome}");
    for n in nodes {
        assert_eq!(n["loaded"], false, "{outcome}");
        assert!(
            n["error"]
                .as_str()
                .unwrap()
                .contains("images import failed")
                && n["took_seconds"].as_f64().is_some(),
            "{outcome}"
        );
    }
    for node in NODES {
        assert!(
            said.contains(&format!("  {node}: ")) && said.contains("images import failed"),
            "{node} is named with containerd's words: {said}"
        );
    }

    let mut machine_ids = Vec::new();
    for node in NODES {
        let addr = c
            .sh_ok(node, "ip -4 -o addr show dev eth0", b"")
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.split('/').next().map(str::to_owned))
            .unwrap_or_else(|| panic!("{node} has no address on eth0"));
        assert!(addr.starts_with(&format!("10.232.{}.", run_id())), "{addr}");
        // 3. containerd runs with the rendered configuration, as the agent started it.
        let state = c.sh_ok(
            node,
            "systemctl is-active containerd; systemctl show -p ExecStart --value containerd",
            b"",
        );
        assert!(
            state.starts_with("active\n") && state.contains("/etc/containerd/config.toml"),
            "{node}: {state}"
        );
        // The node sees the controller's mirror read-only (its agent reads the binaries
        // there instead of streaming them): containerd's blob is in it, and root in the node
        // can neither alter a blob nor add one.
        let view = c.sh_ok(
            node,
            "set -e; d=/var/lib/pangaea/mirror/sha256; h=$(sha256sum /usr/local/bin/containerd | cut -d' ' -f1); test -f $d/$h; if echo x >> $d/$h || touch $d/new; then echo writable; else echo refused; fi",
            b"",
        );
        assert_eq!(view.trim(), "refused", "{node}: the mirror's view: {view}");
        machine_ids.push(c.sh_ok(node, "cat /etc/machine-id", b"").trim().to_owned());
        // The kubelet's OOM watcher can open /dev/kmsg.
        c.sh_ok(node, "exec 3</dev/kmsg", b"");

        // 4. A container from the loaded image exits 0, gets an address from the CNI bridge
        // configuration and reaches its node.
        c.sh_ok(
            node,
            "mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/10-e2e.conflist",
            CNI_CONF.as_bytes(),
        );
        let t = Instant::now();
        let run = c.sh(
            node,
            &format!(
                "ctr -n k8s.io run --rm --cni docker.io/local/busybox:1 probe /bin/sh -c 'ip -4 -o addr show eth0 && ping -c1 -W2 {addr} && echo reached'"
            ),
            b"",
        );
        let said = text(&run);
        assert!(run.status.success(), "{node}: container: {said}");
        assert!(
            said.contains("inet 10.88.") && said.contains("reached"),
            "{node}: {said}"
        );
        eprintln!(
            "{node}: container with CNI ran in {:.2}s",
            t.elapsed().as_secs_f64()
        );
        // A failing container fails the run: exit codes come through.
        let fail = c.sh(
            node,
            "ctr -n k8s.io run --rm docker.io/local/busybox:1 fails /bin/sh -c 'exit 3'",
            b"",
        );
        assert_eq!(fail.status.code(), Some(3), "{node}: {}", text(&fail));

        // 5. A long-running container with the same name in every node.
        c.sh_ok(
            node,
            &format!(
                "ctr -n k8s.io run -d docker.io/local/busybox:1 same /bin/sh -c 'while :; do sleep 1; done' marker-{}-{node}",
                cluster_name()
            ),
            b"",
        );
    }

    // 6. Distinct machine IDs, each a real one.
    assert!(
        machine_ids
            .iter()
            .all(|m| m.len() == 32 && m.chars().all(|c| c.is_ascii_hexdigit())),
        "{machine_ids:?}"
    );
    assert_ne!(machine_ids[0], machine_ids[1]);

    // 7. The two containers named `same` are in distinct cgroups, each below its node's.
    let mut cgroups = Vec::new();
    for node in NODES {
        let marker = format!("marker-{}-{node}", cluster_name());
        let found = pangaea_tests::poll_until(
            "the container's process on the host",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || Some(memory_cgroups_of(&marker)).filter(|f| !f.is_empty()),
        );
        let (_, path) = &found[0];
        let own = format!("/pangaea-{}-{node}/", cluster_name());
        assert!(
            path.contains(&own) && path.ends_with("/same"),
            "{node}'s container is in {path}, not below {own}"
        );
        cgroups.push(path.clone());
    }
    assert_ne!(cgroups[0], cgroups[1]);

    // 8. `status` says the same about the host as `up`.
    let status = text(&c.ctl(&["status"]));
    assert_eq!(
        status.contains("refuses to start on cgroup v1"),
        v1,
        "{status}"
    );

    // 9. A reboot keeps the node's machine ID and containerd's images (its directory is
    // kept with the node's disk).
    let out = c.ctl(&["node", "reboot", "wk-1"]);
    assert!(out.status.success(), "{}", text(&out));
    // `node reboot` returns once the new machine is booting; the agent starts containerd
    // again from its last assignment.
    pangaea_tests::poll_until(
        "containerd active in wk-1 after its reboot",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let out = c.try_sh("wk-1", "systemctl is-active containerd", b"")?;
            (out.status.success() && out.stdout.starts_with(b"active")).then_some(())
        },
    );
    assert_eq!(
        c.sh_ok("wk-1", "cat /etc/machine-id", b"").trim(),
        machine_ids[1]
    );
    let images = c.sh_ok("wk-1", "ctr -n k8s.io image ls -q", b"");
    assert!(images.contains("docker.io/local/busybox:1"), "{images}");

    // 10. `down` powers the nodes off promptly although a container ignores SIGTERM (the
    // image's stop timeout), and removes their cgroups.
    let t = Instant::now();
    let out = c.ctl(&["down"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("down took {:.1}s", t.elapsed().as_secs_f64());
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "down took {:?}",
        t.elapsed()
    );
    for node in NODES {
        let machine = cgroup::name(&format!("{}-{node}", cluster_name()));
        for m in cgroup::current() {
            assert!(
                !m.dir.join(&machine).exists(),
                "{} left behind",
                m.dir.join(&machine).display()
            );
        }
    }
}
