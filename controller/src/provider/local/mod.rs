//! The local provider: each node is a systemd-nspawn machine booting real systemd from a
//! cached Debian image ([`image`]), with an overlay upper directory of its own (its
//! "disk"), in its own network namespace with a veth pair on a host bridge ([`network`]),
//! and cloud-init's NoCloud seed.
//!
//! Everything it creates is named after the cluster (bridge and veth names carry a hash of
//! it, namespaces and machine names carry it whole), so two clusters on one host do not
//! collide, and `delete`/`teardown` remove exactly what was created. Node state lives in
//! `.pangaea/nodes/<name>/` (upper directory, containerd's directory, record, PID, console
//! log, the list of its cgroups).
//!
//! Learned the hard way (see DESIGN.md §7): `--register=no` because no machined runs here;
//! SIGTERM to nspawn powers the machine off; SIGKILL to nspawn orphans the container, so a
//! crash is simulated by SIGKILL to the container's init.
//!
//! Nodes can run containers: [`runtime_options`] are the nspawn options a worker's
//! container runtime needs, [`cgroup`] gives each node cgroups of its own, [`image`] carries
//! the rest, and [`host`] reports what cannot be prepared on this host.

pub mod cgroup;
pub mod host;
pub mod image;
pub mod network;

use super::{ControllerEndpoint, NodeInfo, NodeSpec, NodeState, Progress, Provider, ProviderError};
use crate::state_dir::StateDir;
use async_trait::async_trait;
use network::Network;
use pangaea_core::{NodeName, fsutil};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Why the local provider needs root.
pub const NEEDS_ROOT_FOR: &str = "systemd-nspawn, network namespaces, a bridge";

/// systemd-nspawn machines on this host.
pub struct Local {
    cluster: String,
    network: Network,
    nodes_dir: PathBuf,
    image_cache: PathBuf,
    /// The controller's artifact mirror, bound read-only into every node.
    mirror_dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    instance_id: String,
    address: Ipv4Addr,
    created_at: i64,
    /// The image the node was created from (its overlay's lower layer).
    image: PathBuf,
}

/// Runs `cmd`; its standard output, or an error with its standard error.
pub(crate) async fn run(cmd: &mut Command) -> Result<String, ProviderError> {
    let shown = format!("{:?}", cmd.as_std()).replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| ProviderError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ProviderError::Command {
            command: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The systemd-nspawn options (beyond booting the image in the node's namespace) that let
/// a node run containers, for the node whose files are in `node_dir`. Why each is needed
/// (the error without it) is in docs/ARCHITECTURE.md, "Nodes that run containers".
pub fn runtime_options(node_dir: &Path) -> Vec<String> {
    let mut o = vec![
        // runc brings up `lo` in each container's network namespace, the CNI bridge plugin
        // makes bridges and veths, kube-proxy writes iptables rules; nspawn drops
        // CAP_NET_ADMIN with --network-namespace-path. CAP_SYSLOG: the kubelet's OOM watcher
        // opens /dev/kmsg, which needs it with kernel.dmesg_restrict=1 (CAP_SYS_ADMIN still
        // passes, deprecated).
        "--capability=CAP_NET_ADMIN,CAP_SYSLOG".to_owned(),
        // runc joins a session keyring per container; cgroup v2 device rules are BPF programs.
        "--system-call-filter=@keyring bpf".to_owned(),
        // containerd's overlay snapshotter cannot use the node's overlay root as upper dir.
        format!(
            "--bind={}:{CONTAINERD_DIR}",
            node_dir.join("containerd").display()
        ),
    ];
    for (host_path, what) in [
        ("/dev/kmsg", "kubelet OOM watcher"),
        ("/lib/modules", "modprobe"),
    ] {
        if Path::new(host_path).exists() {
            tracing::trace!(host_path, what, "bound read-only into the node");
            o.push(format!("--bind-ro={host_path}"));
        }
    }
    o
}

/// Where containerd keeps images and snapshots in a node; a directory of the node's on the
/// host, bound there.
pub const CONTAINERD_DIR: &str = "/var/lib/containerd";

/// nspawn's environment: `/proc/sys/net` writable (per network namespace, so it changes only
/// the node), for the CNI bridge's `ip_forward` and kube-proxy's settings. The rest of
/// `/proc/sys` stays read-only: it is the host's.
pub const NSPAWN_ENV: (&str, &str) = ("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network");

/// Runs its arguments (systemd-nspawn) again whenever they exit with status 133 — the
/// machine asked for a reboot (`systemctl reboot` inside the node), as
/// systemd-nspawn@.service does with `RestartForceExitStatus=133` — so a node rebooted from
/// inside comes back by itself. SIGTERM is passed on to systemd-nspawn (a clean shutdown of
/// the machine) and ends the loop with its status. Run as `sh -c REBOOT_LOOP NAME PROGRAM
/// ARGS...`; its PID is the one recorded for the node.
const REBOOT_LOOP: &str = "trap 'kill -TERM $child 2>/dev/null' TERM; while :; do \"$@\" & child=$!; while :; do wait $child; rc=$?; kill -0 $child 2>/dev/null || break; done; [ $rc -eq 133 ] || exit $rc; done";

/// The first child of process `pid`.
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .find_map(|c| c.parse().ok())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.contains("systemd-nspawn"))
}

impl Local {
    /// The local nodes of `cluster` on the node network `cidr`, with their files under
    /// `state` and node images cached in `image_cache`.
    pub fn new(
        cluster: &str,
        cidr: pangaea_compiler::cidr::Cidr,
        state: &StateDir,
        image_cache: &Path,
    ) -> Local {
        Local {
            cluster: cluster.to_owned(),
            network: Network::new(cluster, cidr),
            nodes_dir: state.nodes(),
            image_cache: image_cache.to_owned(),
            mirror_dir: state.artifacts(),
        }
    }

    /// The machine name of a node (unique on the host).
    pub fn machine(&self, node: &NodeName) -> String {
        format!("{}-{node}", self.cluster)
    }

    fn dir(&self, node: &NodeName) -> PathBuf {
        self.nodes_dir.join(node.as_str())
    }

    /// The host directory bound read-only into the node as its seed (0700, created here).
    fn seed_dir(&self, node: &NodeName) -> Result<PathBuf, ProviderError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.dir(node).join("seed");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(ProviderError::io("create the seed directory", &dir))?;
        Ok(dir)
    }

    /// cloud-init's NoCloud seed in the node's disk (`meta-data`, `user-data`).
    fn nocloud_seed(&self, node: &NodeName) -> PathBuf {
        self.dir(node).join("upper/var/lib/cloud/seed/nocloud")
    }

    fn record(&self, node: &NodeName) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(self.dir(node).join("record.json")).ok()?).ok()
    }

    fn pid(&self, node: &NodeName) -> Option<u32> {
        std::fs::read_to_string(self.dir(node).join("nspawn.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|p| alive(*p))
    }

    async fn boot(&self, node: &NodeName) -> Result<(), ProviderError> {
        let rec = self
            .record(node)
            .ok_or_else(|| ProviderError::NoSuchNode(node.clone()))?;
        if self.pid(node).is_some() {
            return Ok(());
        }
        self.network.ensure_bridge().await?;
        self.network.ensure_node(node, rec.address).await?;
        let dir = self.dir(node);
        let log = dir.join("console.log");
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(ProviderError::io("open the console log", &log))?;
        let stdout = console
            .try_clone()
            .map_err(ProviderError::io("open the console log", &log))?;
        let image = rec.image.display().to_string();
        let containerd = dir.join("containerd");
        std::fs::create_dir_all(&containerd).map_err(ProviderError::io(
            "create the node's containerd directory",
            &containerd,
        ))?;
        // The mirror, read-only: the node's agent reads the binaries there instead of
        // streaming them from the controller through TLS (the same bytes, still checked
        // against their digests; a node could already fetch any blob it can name). Created
        // if absent, so blobs added later appear in running nodes.
        std::fs::create_dir_all(&self.mirror_dir).map_err(ProviderError::io(
            "create the artifact mirror directory",
            &self.mirror_dir,
        ))?;
        let cgroups = cgroup::create(&self.machine(node), &dir.join("cgroups"))?;
        let child = Command::new("sh")
            .args(["-c", cgroup::enter_script(), "pangaea-cgroup-enter"])
            .env("PANGAEA_CGROUP_PROCS", cgroup::procs_list(&cgroups))
            .env(NSPAWN_ENV.0, NSPAWN_ENV.1)
            .args(["sh", "-c", REBOOT_LOOP, "pangaea-node"])
            .arg("systemd-nspawn")
            .arg("-D")
            .arg(&rec.image)
            .arg(format!(
                "--overlay={image}:{}:/",
                dir.join("upper").display()
            ))
            .args(["--boot", "--register=no", "--keep-unit", "--quiet"])
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.network.netns(node)
            ))
            .arg(format!("--machine={}", self.machine(node)))
            // The node's seed, live and read-only: a recovery token written here later is
            // seen by the running node at once.
            .arg(format!(
                "--bind-ro={}:{}",
                self.seed_dir(node)?.display(),
                Path::new(pangaea_core::token::RECOVERY_TOKEN_FILE)
                    .parent()
                    .expect("an absolute file path")
                    .display()
            ))
            .arg(format!(
                "--bind-ro={}:{}",
                self.mirror_dir.display(),
                pangaea_artifact::NODE_MIRROR_DIR
            ))
            .args(runtime_options(&dir))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(console)
            // Its own process group: an interrupted `pangaea-ctl` does not take nodes down.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| ProviderError::Spawn {
                command: "systemd-nspawn".into(),
                source,
            })?;
        let pid = child
            .id()
            .ok_or_else(|| ProviderError::Failed("systemd-nspawn exited at once".into()))?;
        let pid_file = dir.join("nspawn.pid");
        fsutil::atomic_write(&pid_file, pid.to_string().as_bytes(), 0o644)
            .map_err(|e| ProviderError::Failed(format!("write {}: {e}", pid_file.display())))?;
        // The machine outlives this process; nobody waits for it here.
        drop(child);
        Ok(())
    }

    /// The host PID of a running node's init: the child of systemd-nspawn, itself the child
    /// of the [`REBOOT_LOOP`] shell whose PID is recorded.
    pub fn init_pid(&self, node: &NodeName) -> Option<u32> {
        let nspawn = first_child(self.pid(node)?)?;
        first_child(nspawn)
    }

    /// The command line that runs `argv` inside a running node as a transient unit of its
    /// systemd (`nsenter` into all its namespaces, then `systemd-run --wait --pipe`), so the
    /// program gets the node's capabilities, seccomp filter and cgroups rather than the
    /// caller's; standard input and output are passed through, and its exit status returned.
    pub fn exec_argv(&self, node: &NodeName, argv: &[&str]) -> Option<Vec<String>> {
        let init = self.init_pid(node)?;
        let mut cmd: Vec<String> = [
            "nsenter",
            "-t",
            &init.to_string(),
            "-a",
            "systemd-run",
            "--quiet",
            "--wait",
            "--pipe",
            "--collect",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cmd.extend(argv.iter().map(|s| s.to_string()));
        Some(cmd)
    }

    /// Simulates a crash: SIGKILL to the container's init ends its whole PID namespace.
    pub async fn crash(&self, node: &NodeName) -> Result<(), ProviderError> {
        let pid = self
            .pid(node)
            .ok_or_else(|| ProviderError::NoSuchNode(node.clone()))?;
        if let Some(init) = self.init_pid(node) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(init as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.wait_gone(node, pid, Duration::from_secs(20)).await;
        Ok(())
    }

    async fn wait_gone(&self, node: &NodeName, pid: u32, timeout: Duration) -> bool {
        let start = Instant::now();
        while alive(pid) {
            if start.elapsed() > timeout {
                tracing::warn!(%node, pid, "the machine did not stop in time");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = std::fs::remove_file(self.dir(node).join("nspawn.pid"));
        // The node's last processes may still be exiting for a moment.
        let record = self.dir(node).join("cgroups");
        for attempt in 1..=20 {
            if cgroup::remove(&record, attempt == 20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }
}

#[async_trait]
impl Provider for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn check_privileges(&self) -> Result<(), ProviderError> {
        super::require_root("local", NEEDS_ROOT_FOR)
    }

    async fn prepare(&self, progress: Progress<'_>) -> Result<(), ProviderError> {
        image::ensure_image(&self.image_cache, progress).await?;
        Ok(())
    }

    async fn controller_endpoint(&self) -> Result<ControllerEndpoint, ProviderError> {
        let host = IpAddr::V4(self.network.ensure_bridge().await?);
        Ok(ControllerEndpoint {
            listen: host,
            advertise: host,
            tunnel: false,
        })
    }

    async fn create(&self, spec: &NodeSpec) -> Result<NodeInfo, ProviderError> {
        let dir = self.dir(&spec.name);
        let write = |path: PathBuf, content: &[u8], mode| {
            fsutil::atomic_write(&path, content, mode)
                .map_err(|e| ProviderError::Failed(format!("write {}: {e}", path.display())))
        };
        let instance_id = super::new_instance_id(&self.cluster, &spec.name);
        let seed = self.nocloud_seed(&spec.name);
        write(
            seed.join("meta-data"),
            format!(
                "instance-id: {instance_id}\nlocal-hostname: {}\n",
                spec.name
            )
            .as_bytes(),
            0o644,
        )?;
        write(seed.join("user-data"), spec.user_data.as_bytes(), 0o600)?;
        let rec = Record {
            instance_id: instance_id.clone(),
            address: spec.address,
            created_at: crate::records::now(),
            image: image::image_dir(&self.image_cache),
        };
        write(
            dir.join("record.json"),
            &serde_json::to_vec(&rec).expect("records serialize"),
            0o644,
        )?;
        self.boot(&spec.name).await?;
        Ok(NodeInfo::created(spec, instance_id, rec.created_at))
    }

    async fn start(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.boot(name).await
    }

    async fn crash(&self, name: &NodeName) -> Result<(), ProviderError> {
        Local::crash(self, name).await
    }

    async fn stop(&self, name: &NodeName) -> Result<(), ProviderError> {
        let Some(pid) = self.pid(name) else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if !self.wait_gone(name, pid, Duration::from_secs(30)).await {
            self.crash(name).await?;
        }
        Ok(())
    }

    async fn deliver_token(&self, name: &NodeName, token: &str) -> Result<(), ProviderError> {
        if self.record(name).is_none() {
            return Err(ProviderError::NoSuchNode(name.clone()));
        }
        let file = Path::new(pangaea_core::token::RECOVERY_TOKEN_FILE)
            .file_name()
            .expect("a file path");
        let path = self.seed_dir(name)?.join(file);
        fsutil::atomic_write(&path, token.as_bytes(), 0o600)
            .map_err(|e| ProviderError::Failed(format!("write {}: {e}", path.display())))
    }

    async fn delete(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.stop(name).await?;
        self.network.delete_node(name).await?;
        let dir = self.dir(name);
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(ProviderError::io("remove the node's files", &dir))?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, ProviderError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.nodes_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(name) = NodeName::try_from(e.file_name().to_string_lossy().into_owned()) else {
                continue;
            };
            if let Some(r) = self.record(&name) {
                let state = if self.pid(&name).is_some() {
                    NodeState::Running
                } else {
                    NodeState::Stopped
                };
                out.push(NodeInfo {
                    name,
                    instance_id: r.instance_id,
                    address: r.address,
                    state,
                    created_at: r.created_at,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn user_data(&self, name: &NodeName) -> Result<Option<String>, ProviderError> {
        if self.record(name).is_none() {
            return Ok(None);
        }
        let path = self.nocloud_seed(name).join("user-data");
        std::fs::read_to_string(&path)
            .map(Some)
            .map_err(ProviderError::io("read the node's user-data", &path))
    }

    async fn shell(
        &self,
        name: &NodeName,
        argv: &[String],
        tty: bool,
    ) -> Result<Vec<String>, ProviderError> {
        if self.record(name).is_none() {
            return Err(ProviderError::NoSuchNode(name.clone()));
        }
        let init = self.init_pid(name).ok_or_else(|| {
            ProviderError::Prerequisite(format!(
                "node {name} is not running: `pangaea-ctl start` boots it"
            ))
        })?;
        // A transient unit of the node's systemd: the node's capabilities, seccomp filter
        // and cgroup, not the caller's; a terminal when there is one.
        let mut cmd: Vec<String> = ["nsenter", "-t", &init.to_string(), "-a", "systemd-run"]
            .iter()
            .chain(&["--quiet", "--wait", "--collect"])
            .chain(if tty { &["--pty"] } else { &["--pipe"] })
            .chain(&["--setenv=TERM=xterm-256color", "--"])
            .map(|s| s.to_string())
            .collect();
        if argv.is_empty() {
            cmd.extend(["/bin/bash".to_owned(), "-l".to_owned()]);
        } else {
            cmd.extend(argv.iter().cloned());
        }
        Ok(cmd)
    }

    async fn teardown(&self) -> Result<(), ProviderError> {
        if self.list().await?.is_empty() {
            self.network.delete_bridge().await;
        }
        Ok(())
    }

    fn runtime_findings(&self, kubelet: Option<&str>) -> Vec<String> {
        host::check(kubelet)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn console_hint(&self, name: &NodeName) -> Option<String> {
        Some(format!(
            "console: {}",
            self.dir(name).join("console.log").display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::REBOOT_LOOP;
    use std::time::{Duration, Instant};

    #[test]
    fn a_machine_that_asks_for_a_reboot_is_started_again_and_any_other_exit_ends_it() {
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("runs");
        // Exits 133 (reboot) twice, then 7.
        let program = "n=$(cat \"$0\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$0\"; [ $n -lt 3 ] && exit 133; exit 7";
        let out = std::process::Command::new("sh")
            .args(["-c", REBOOT_LOOP, "pangaea-node", "sh", "-c", program])
            .arg(&count)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    }

    #[test]
    fn sigterm_reaches_the_machine_and_ends_the_loop() {
        let d = tempfile::tempdir().unwrap();
        let got = d.path().join("got-term");
        // Stands for systemd-nspawn: on SIGTERM it shuts down (exit 0), noting it did.
        let program =
            "trap 'touch \"$0\"; exit 0' TERM; touch \"$0.ready\"; while :; do sleep 0.1; done";
        let mut child = std::process::Command::new("sh")
            .args(["-c", REBOOT_LOOP, "pangaea-node", "sh", "-c", program])
            .arg(&got)
            .spawn()
            .unwrap();
        // Ready once the machine runs with its own trap set (it says so).
        let ready = d.path().join("got-term.ready");
        let t = Instant::now();
        while !ready.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the machine never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "the loop did not end");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0));
        assert!(got.exists(), "the machine got the SIGTERM");
    }
}
