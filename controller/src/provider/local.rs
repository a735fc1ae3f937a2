//! The local provider: each node is a systemd-nspawn machine booting real systemd from a
//! cached Debian image, with an overlay upper directory of its own (its "disk"), in its own
//! network namespace with a veth pair on a host bridge, and cloud-init's NoCloud seed.
//!
//! Everything it creates is named after the cluster (bridge and veth names carry a hash of
//! it, namespaces and machine names carry it whole), so two clusters on one host do not
//! collide, and `delete`/`teardown` remove exactly what was created. Node state lives in
//! `.pangaea/nodes/<name>/` (upper directory, record, PID, console log).
//!
//! Learned the hard way (see DESIGN.md §7): `--register=no` because no machined runs here;
//! SIGTERM to nspawn powers the machine off; SIGKILL to nspawn orphans the container, so a
//! crash is simulated by SIGKILL to the container's init.

use super::{NodeInfo, NodeSpec, NodeState, Provider, ProviderError};
use pangaea_core::fsutil;
use sha2::{Digest, Sha256};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The recipe of the node image; the cache key is its hash, so a changed recipe rebuilds.
/// (python3-cffi-backend is named because debootstrap does not resolve the virtual
/// packages python3-cryptography depends on.)
pub const IMAGE_PACKAGES: &str =
    "systemd,systemd-sysv,dbus,iproute2,cloud-init,ca-certificates,curl,python3-cffi-backend";
pub const IMAGE_SUITE: &str = "bookworm";
pub const IMAGE_MIRROR: &str = "http://deb.debian.org/debian";
/// cloud-init settings baked into the image: nodes get their network from the provider, and
/// cloud-init runs only the modules the user-data needs. (The stock module list generates
/// locales and SSH keys, which slows every boot and at times stalled a node's config stage
/// so that its runcmd never ran.)
pub const IMAGE_CLOUD_CFG: &str = "network: {config: disabled}\ndatasource_list: [NoCloud, None]\ncloud_init_modules: [seed_random, bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts]\ncloud_config_modules: [runcmd]\ncloud_final_modules: [scripts_user, final_message]\n";

pub struct Local {
    cluster: String,
    network: pangaea_compiler::cidr::Cidr,
    nodes_dir: PathBuf,
    image: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    instance_id: String,
    address: Ipv4Addr,
    created_at: i64,
    /// The image the node was created from (its overlay's lower layer).
    image: PathBuf,
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

fn run(cmd: &mut Command) -> Result<String, ProviderError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ProviderError::Command {
            command: shown.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ProviderError::Command {
            command: shown,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, ProviderError> {
    run(Command::new("ip").args(args))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.contains("systemd-nspawn"))
}

/// The image directory for the current recipe, under `cache`.
pub fn image_dir(cache: &Path) -> PathBuf {
    cache.join(format!(
        "{IMAGE_SUITE}-{}",
        short_hash(&format!(
            "{IMAGE_SUITE} {IMAGE_PACKAGES} {IMAGE_MIRROR} {IMAGE_CLOUD_CFG}"
        ))
    ))
}

/// Builds the node image with debootstrap if the cache lacks it (about a minute), into a
/// temporary directory renamed into place when complete.
pub fn ensure_image(cache: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, ProviderError> {
    let dir = image_dir(cache);
    if dir.join("usr/lib/systemd/systemd").exists() {
        return Ok(dir);
    }
    for tool in ["debootstrap", "systemd-nspawn"] {
        if run(Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}")))
        .is_err()
        {
            return Err(ProviderError::Prerequisite(format!(
                "{tool} not found: apt-get install debootstrap systemd-container"
            )));
        }
    }
    progress(&format!(
        "building the node image with debootstrap ({IMAGE_SUITE}; about a minute, once) into {}",
        dir.display()
    ));
    let tmp = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(cache).map_err(|e| ProviderError::Io {
        what: cache.display().to_string(),
        message: e.to_string(),
    })?;
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={IMAGE_PACKAGES}"),
            IMAGE_SUITE,
        ])
        .arg(&tmp)
        .arg(IMAGE_MIRROR))?;
    std::fs::write(
        tmp.join("etc/cloud/cloud.cfg.d/99-pangaea.cfg"),
        IMAGE_CLOUD_CFG,
    )
    .map_err(|e| ProviderError::Io {
        what: "image cloud-init config".into(),
        message: e.to_string(),
    })?;
    std::fs::rename(&tmp, &dir).map_err(|e| ProviderError::Io {
        what: dir.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(dir)
}

impl Local {
    pub fn new(
        cluster: &str,
        network: pangaea_compiler::cidr::Cidr,
        state_dir: &Path,
        image: PathBuf,
    ) -> Local {
        Local {
            cluster: cluster.to_owned(),
            network,
            nodes_dir: state_dir.join("nodes"),
            image,
        }
    }

    fn bridge(&self) -> String {
        format!("pgb{}", short_hash(&self.cluster))
    }

    fn host_address(&self) -> Ipv4Addr {
        self.network
            .nth(1)
            .expect("a node network has a first address")
    }

    fn netns(&self, node: &str) -> String {
        format!("pangaea-{}-{node}", self.cluster)
    }

    fn veth(&self, node: &str) -> String {
        format!("pgv{}", short_hash(&format!("{}/{node}", self.cluster)))
    }

    pub fn machine(&self, node: &str) -> String {
        format!("{}-{node}", self.cluster)
    }

    fn dir(&self, node: &str) -> PathBuf {
        self.nodes_dir.join(node)
    }

    fn record(&self, node: &str) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(self.dir(node).join("record.json")).ok()?).ok()
    }

    fn pid(&self, node: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir(node).join("nspawn.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|p| alive(*p))
    }

    /// The node's namespace and veth (recreated after a host reboot, which drops both).
    fn ensure_node_network(&self, node: &str, address: Ipv4Addr) -> Result<(), ProviderError> {
        let ns = self.netns(node);
        if Path::new(&format!("/run/netns/{ns}")).exists() {
            return Ok(());
        }
        let (veth, prefix) = (self.veth(node), self.network.prefix);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/{prefix}"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &self.host_address().to_string(),
        ])?;
        Ok(())
    }

    fn boot(&self, node: &str) -> Result<(), ProviderError> {
        let rec = self
            .record(node)
            .ok_or_else(|| ProviderError::NoSuchNode(node.to_owned()))?;
        if self.pid(node).is_some() {
            return Ok(());
        }
        self.ensure_network()?;
        self.ensure_node_network(node, rec.address)?;
        let dir = self.dir(node);
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))
            .map_err(|e| ProviderError::Io {
                what: "console log".into(),
                message: e.to_string(),
            })?;
        let image = rec.image.display().to_string();
        let child = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&rec.image)
            .arg(format!(
                "--overlay={image}:{}:/",
                dir.join("upper").display()
            ))
            .args(["--boot", "--register=no", "--keep-unit", "--quiet"])
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.netns(node)
            ))
            .arg(format!("--machine={}", self.machine(node)))
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| ProviderError::Io {
                what: "console log".into(),
                message: e.to_string(),
            })?)
            .stderr(console)
            // Its own process group: an interrupted `pangaea-ctl` does not take nodes down.
            .process_group(0)
            .spawn()
            .map_err(|e| ProviderError::Command {
                command: "systemd-nspawn".into(),
                message: e.to_string(),
            })?;
        fsutil::atomic_write(
            &dir.join("nspawn.pid"),
            child.id().to_string().as_bytes(),
            0o644,
        )
        .map_err(|e| ProviderError::Io {
            what: "pid file".into(),
            message: e.to_string(),
        })?;
        Ok(())
    }

    /// Simulates a crash: SIGKILL to the container's init ends its whole PID namespace.
    pub fn crash(&self, node: &str) -> Result<(), ProviderError> {
        let pid = self
            .pid(node)
            .ok_or_else(|| ProviderError::NoSuchNode(node.to_owned()))?;
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.wait_gone(node, pid, Duration::from_secs(20));
        Ok(())
    }

    fn wait_gone(&self, node: &str, pid: u32, timeout: Duration) -> bool {
        let start = Instant::now();
        while alive(pid) {
            if start.elapsed() > timeout {
                tracing::warn!(node, pid, "the machine did not stop in time");
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(self.dir(node).join("nspawn.pid"));
        true
    }
}

impl Provider for Local {
    fn ensure_network(&self) -> Result<Ipv4Addr, ProviderError> {
        let br = self.bridge();
        if ip(&["link", "show", &br]).is_err() {
            ip(&["link", "add", &br, "type", "bridge"])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/{}", self.host_address(), self.network.prefix),
                "dev",
                &br,
            ])?;
        }
        ip(&["link", "set", &br, "up"])?;
        Ok(self.host_address())
    }

    fn create(&self, spec: &NodeSpec) -> Result<NodeInfo, ProviderError> {
        let dir = self.dir(&spec.name);
        let io = |what: &str| {
            let what = what.to_owned();
            move |e: fsutil::FsError| ProviderError::Io {
                what,
                message: e.to_string(),
            }
        };
        let instance_id = format!(
            "{}-{}-{}",
            self.cluster,
            spec.name,
            hex::encode(rand::random::<[u8; 4]>())
        );
        let seed = dir.join("upper/var/lib/cloud/seed/nocloud");
        fsutil::atomic_write(
            &seed.join("meta-data"),
            format!(
                "instance-id: {instance_id}\nlocal-hostname: {}\n",
                spec.name
            )
            .as_bytes(),
            0o644,
        )
        .map_err(io("meta-data"))?;
        fsutil::atomic_write(&seed.join("user-data"), spec.user_data.as_bytes(), 0o600)
            .map_err(io("user-data"))?;
        let rec = Record {
            instance_id: instance_id.clone(),
            address: spec.address,
            created_at: crate::records::now(),
            image: self.image.clone(),
        };
        fsutil::atomic_write(
            &dir.join("record.json"),
            &serde_json::to_vec(&rec).expect("json"),
            0o644,
        )
        .map_err(io("node record"))?;
        self.boot(&spec.name)?;
        Ok(NodeInfo {
            name: spec.name.clone(),
            instance_id,
            address: spec.address,
            state: NodeState::Running,
            created_at: rec.created_at,
        })
    }

    fn start(&self, name: &str) -> Result<(), ProviderError> {
        self.boot(name)
    }

    fn stop(&self, name: &str) -> Result<(), ProviderError> {
        let Some(pid) = self.pid(name) else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if !self.wait_gone(name, pid, Duration::from_secs(30)) {
            self.crash(name)?;
        }
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), ProviderError> {
        self.stop(name)?;
        let ns = self.netns(name);
        if Path::new(&format!("/run/netns/{ns}")).exists() {
            ip(&["netns", "del", &ns])?;
        }
        let _ = ip(&["link", "del", &self.veth(name)]);
        let dir = self.dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| ProviderError::Io {
                what: dir.display().to_string(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<NodeInfo>, ProviderError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.nodes_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
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

    fn teardown(&self) -> Result<(), ProviderError> {
        if self.list()?.is_empty() {
            let _ = ip(&["link", "del", &self.bridge()]);
        }
        Ok(())
    }
}
