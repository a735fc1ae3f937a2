//! The Vagrant provider (vagrant-libvirt): each node is a libvirt VM that vagrant makes from
//! the cluster's generated `Vagrantfile` ([`pangaea_compiler::vagrantfile`]), booting a box
//! Pangaea builds from Debian packages ([`boxes`]), with the same cloud-init user-data as
//! every provider, delivered as a NoCloud seed ISO (vagrant-libvirt ignores
//! `config.vm.cloud_init`), on the cluster's own isolated libvirt network ([`libvirt`]),
//! where the host has the first address and the controller listens.
//!
//! Driven through the vagrant CLI (`up`, `halt`, `destroy`, `ssh`), whose errors are shown as
//! vagrant printed them. One vagrant command at a time per cluster (a lock across
//! processes): vagrant-libvirt guards the box upload and the network creation only within
//! its own process, and on two cores VMs booting one after another come up about as fast as
//! VMs booting together.
//!
//! Files: `.pangaea/vagrant/` holds the `Vagrantfile`, vagrant's `.vagrant/` and per node a
//! record and its user-data (0600); each node's seed ISO is in libvirt's image directory,
//! which QEMU can read (`.pangaea/` is private to its owner). Needs root, like the local
//! provider: the system libvirt, the seed directory.

pub mod boxes;
pub mod libvirt;

use super::{ControllerEndpoint, NodeInfo, NodeSpec, NodeState, Progress, Provider, ProviderError};
use crate::provider::local::run;
use crate::state_dir::StateDir;
use async_trait::async_trait;
use pangaea_compiler::cidr::Cidr;
use pangaea_compiler::provider::SyncedFolder;
use pangaea_compiler::vagrantfile::{Driver, Folder, Machine, Vagrantfile};
use pangaea_core::{NodeName, fsutil};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// Where each node's seed ISO is kept: libvirt's image directory, readable by QEMU.
pub const SEED_DIR: &str = "/var/lib/libvirt/images";

/// The seed ISO of node `node` of cluster `cluster`.
pub fn seed_iso(cluster: &str, node: &str) -> PathBuf {
    Path::new(SEED_DIR).join(format!("pangaea-{cluster}-{node}-seed.iso"))
}

/// `tool` on this process's `PATH`.
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    crate::doctor::find(tool, &std::env::var("PATH").unwrap_or_default())
}

/// A `vagrant` command with what every call wants: libvirt, no version check over the
/// network, no colour codes in the errors shown.
pub fn vagrant_command() -> Command {
    let mut c = Command::new("vagrant");
    c.env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_BOX_UPDATE_CHECK_DISABLE", "1")
        .env("VAGRANT_NO_COLOR", "1");
    c
}

/// The libvirt driver for this host, and why: KVM where the CPU offers hardware
/// virtualization (`vmx` or `svm`) and `/dev/kvm` exists; otherwise software emulation. A
/// nested KVM without those flags (like kvm_pvm) cannot run a stock kernel: vagrant-libvirt
/// then fails at "Starting domain" with `failed to set MSR`.
pub fn driver() -> (Driver, String) {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    choose(std::path::Path::new("/dev/kvm").exists(), hw)
}

fn choose(dev_kvm: bool, hw_flags: bool) -> (Driver, String) {
    match (dev_kvm, hw_flags) {
        (true, true) => (Driver::Kvm, "KVM: /dev/kvm and hardware virtualization".into()),
        (false, _) => (
            Driver::Qemu,
            "software emulation (qemu): no /dev/kvm; machines boot several times slower".into(),
        ),
        (true, false) => (
            Driver::Qemu,
            "software emulation (qemu): /dev/kvm exists but the CPU offers no vmx/svm (a nested KVM that cannot boot a stock kernel); machines boot several times slower".into(),
        ),
    }
}

/// The Vagrantfile of compilation `c`, as `up` would run it on this host.
pub fn vagrantfile(
    c: &crate::compile::Compilation,
    driver: Driver,
) -> Result<Vagrantfile, pangaea_compiler::vagrantfile::FolderError> {
    let cluster = &c.model.name;
    Ok(Vagrantfile::for_cluster(
        &c.model,
        &pangaea_compiler::vagrantfile::box_name(&c.loaded.config.provider, &boxes::box_name()),
        driver,
        |node| seed_iso(cluster, node).display().to_string(),
        Folder::all(&c.loaded.config.provider, &c.loaded.dir)?,
    ))
}

/// What the provider keeps of a node (`.pangaea/vagrant/nodes/<name>/record.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    instance_id: String,
    address: Ipv4Addr,
    created_at: i64,
    memory_mib: u32,
    cpus: u32,
}

/// A cluster's nodes as Vagrant machines.
pub struct Vagrant {
    cluster: String,
    cidr: Cidr,
    /// vagrant's working directory: `.pangaea/vagrant`.
    dir: PathBuf,
    /// `provider.boxName`, when the config names a box of its own.
    configured_box: Option<String>,
    /// `provider.syncedFolders`, and the directory their relative paths start from.
    folders: (Vec<SyncedFolder>, PathBuf),
    image_cache: PathBuf,
    driver: (Driver, String),
    lock: tokio::sync::Mutex<()>,
}

impl Vagrant {
    /// The Vagrant machines of `loaded`'s cluster, with files under `state` and the box
    /// cached in `image_cache`.
    pub fn new(
        loaded: &pangaea_compiler::config::Loaded,
        state: &StateDir,
        image_cache: &Path,
    ) -> Vagrant {
        let config = &loaded.config;
        let (configured_box, folders) = match &config.provider {
            pangaea_compiler::provider::Provider::Vagrant(v) => {
                (v.box_name.clone(), v.synced_folders.clone())
            }
            _ => (None, Vec::new()),
        };
        Vagrant {
            folders: (folders, loaded.dir.clone()),
            cluster: config.name.clone(),
            cidr: config.network.nodes,
            dir: std::path::absolute(state.vagrant()).unwrap_or_else(|_| state.vagrant()),
            configured_box,
            image_cache: image_cache.to_owned(),
            driver: driver(),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn network(&self) -> libvirt::NodeNetwork {
        libvirt::NodeNetwork {
            name: pangaea_compiler::vagrantfile::network_name(&self.cluster),
            bridge: format!(
                "pgl{}",
                crate::provider::local::image::short_hash(&self.cluster)
            ),
            cidr: self.cidr,
        }
    }

    fn box_name(&self) -> String {
        self.configured_box.clone().unwrap_or_else(boxes::box_name)
    }

    fn node_dir(&self, node: &NodeName) -> PathBuf {
        self.dir.join("nodes").join(node.as_str())
    }

    fn record(&self, node: &NodeName) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(self.node_dir(node).join("record.json")).ok()?).ok()
    }

    /// The record of `node`, or [`ProviderError::NoSuchNode`].
    fn existing(&self, node: &NodeName) -> Result<Record, ProviderError> {
        self.record(node)
            .ok_or_else(|| ProviderError::NoSuchNode(node.clone()))
    }

    fn records(&self) -> Vec<(NodeName, Record)> {
        let mut out: Vec<(NodeName, Record)> = std::fs::read_dir(self.dir.join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| NodeName::try_from(e.file_name().to_string_lossy().into_owned()).ok())
            .filter_map(|n| self.record(&n).map(|r| (n, r)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The libvirt domain of a node.
    pub fn domain(&self, node: &NodeName) -> String {
        format!("pangaea-{}-{node}", self.cluster)
    }

    /// The synced folders as they stand on this machine; a missing host folder is an error
    /// that names it.
    fn synced_folders(&self) -> Result<Vec<Folder>, ProviderError> {
        let (folders, dir) = &self.folders;
        folders
            .iter()
            .map(|f| Folder::resolve(f, dir))
            .collect::<Result<_, _>>()
            .map_err(|e| ProviderError::Prerequisite(e.to_string()))
    }

    /// The Vagrantfile of the recorded nodes sharing `folders`, written where vagrant reads
    /// it.
    fn write_vagrantfile(&self, folders: Vec<Folder>) -> Result<(), ProviderError> {
        let machines = self
            .records()
            .into_iter()
            .map(|(name, r)| Machine {
                seed_iso: seed_iso(&self.cluster, name.as_str()).display().to_string(),
                name: name.to_string(),
                ip: r.address,
                memory_mib: r.memory_mib,
                cpus: r.cpus,
            })
            .collect();
        let v = Vagrantfile::new(
            &self.cluster,
            self.cidr,
            &self.box_name(),
            self.driver.0,
            machines,
            folders,
        );
        write(&self.dir.join("Vagrantfile"), v.render().as_bytes(), 0o644)
    }

    /// Runs `vagrant ARGS` in the cluster's directory, one vagrant command at a time
    /// across processes; its output, or its error as vagrant printed it.
    async fn vagrant(&self, args: &[&str]) -> Result<String, ProviderError> {
        let _here = self.lock.lock().await;
        let lock_path = self.dir.join("vagrant.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ProviderError::io("open the vagrant lock", &lock_path))?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .expect("the lock task does not panic")
            .map_err(ProviderError::io("take the vagrant lock", &lock_path))?;
        // Written under the lock, from the records as they are now: every vagrant command
        // sees every node, whichever process recorded it. Synced folders only for the
        // commands that share them: vagrant validates every folder before any command, so
        // with them a deleted host folder (or, for NFS, a host without nfsd) would stop even
        // `halt` and `destroy`.
        let folders = match args.first() {
            Some(&("up" | "reload")) => self.synced_folders()?,
            _ => Vec::new(),
        };
        self.write_vagrantfile(folders)?;
        tracing::info!(?args, "vagrant");
        let out = run(vagrant_command().current_dir(&self.dir).args(args)).await;
        drop(file);
        out
    }

    /// The seed ISO of a node: its user-data, its meta-data (instance ID, hostname) and its
    /// network-config (its address on the node network, the host as gateway).
    async fn write_seed(&self, spec: &NodeSpec, instance_id: &str) -> Result<(), ProviderError> {
        let dir = self.node_dir(&spec.name).join("seed");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let network_config = format!(
            "version: 2\nethernets:\n  eth0:\n    addresses: [{}/{}]\n    routes:\n      - to: 0.0.0.0/0\n        via: {}\n",
            spec.address,
            self.cidr.prefix,
            self.network().host_address()
        );
        for (file, content) in [
            ("user-data", spec.user_data.clone()),
            (
                "meta-data",
                format!(
                    "instance-id: {instance_id}\nlocal-hostname: {}\n",
                    spec.name
                ),
            ),
            ("network-config", network_config),
        ] {
            write(&dir.join(file), content.as_bytes(), 0o600)?;
        }
        let iso = seed_iso(&self.cluster, spec.name.as_str());
        std::fs::create_dir_all(SEED_DIR).map_err(ProviderError::io("create", SEED_DIR))?;
        let partial = iso.with_extension("iso.partial");
        run(Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&partial)
            .arg(dir.join("user-data"))
            .arg(dir.join("meta-data"))
            .arg(dir.join("network-config")))
        .await?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&partial, &iso))
            .map_err(ProviderError::io("write the seed ISO", &iso))?;
        // The copy kept for `node user-data`; the ISO's inputs are not needed any more.
        write(
            &self.node_dir(&spec.name).join("user-data"),
            spec.user_data.as_bytes(),
            0o600,
        )?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        Ok(())
    }
}

fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), ProviderError> {
    fsutil::atomic_write(path, content, mode)
        .map_err(|e| ProviderError::Failed(format!("write {}: {e}", path.display())))
}

#[async_trait]
impl Provider for Vagrant {
    fn name(&self) -> &'static str {
        "vagrant"
    }

    fn check_privileges(&self) -> Result<(), ProviderError> {
        super::require_root(
            "Vagrant",
            "the system libvirt, the seed ISOs in /var/lib/libvirt/images",
        )
    }

    async fn prepare(&self, progress: Progress<'_>) -> Result<(), ProviderError> {
        for (tool, package) in [
            ("vagrant", "vagrant vagrant-libvirt"),
            ("genisoimage", "genisoimage"),
        ] {
            if find_tool(tool).is_none() {
                return Err(ProviderError::Prerequisite(format!(
                    "{tool} not found: apt-get install {package}"
                )));
            }
        }
        libvirt::check_daemon().await?;
        self.synced_folders()?;
        progress(&format!("libvirt driver: {}", self.driver.1));
        match &self.configured_box {
            Some(name) => {
                if !boxes::has_box(name).await? {
                    return Err(ProviderError::Prerequisite(format!(
                        "Vagrant has no box {name} (provider.boxName): add it with `vagrant box add --name {name} FILE`, or remove boxName to use the box Pangaea builds"
                    )));
                }
            }
            None => {
                boxes::ensure_box(&self.image_cache, progress).await?;
            }
        }
        Ok(())
    }

    async fn controller_endpoint(&self) -> Result<ControllerEndpoint, ProviderError> {
        let host = IpAddr::V4(self.network().ensure().await?);
        Ok(ControllerEndpoint {
            listen: host,
            advertise: host,
            tunnel: false,
        })
    }

    async fn create(&self, spec: &NodeSpec) -> Result<NodeInfo, ProviderError> {
        let instance_id = super::new_instance_id(&self.cluster, &spec.name);
        self.write_seed(spec, &instance_id).await?;
        let rec = Record {
            instance_id: instance_id.clone(),
            address: spec.address,
            created_at: crate::records::now(),
            memory_mib: spec.memory_mib,
            cpus: spec.cpus,
        };
        write(
            &self.node_dir(&spec.name).join("record.json"),
            &serde_json::to_vec(&rec).expect("records serialize"),
            0o644,
        )?;
        self.vagrant(&["up", spec.name.as_str()]).await?;
        Ok(NodeInfo::created(spec, instance_id, rec.created_at))
    }

    async fn start(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.existing(name)?;
        self.vagrant(&["up", name.as_str()]).await.map(drop)
    }

    async fn stop(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.existing(name)?;
        self.vagrant(&["halt", name.as_str()]).await.map(drop)
    }

    async fn crash(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.existing(name)?;
        libvirt::destroy(&self.domain(name)).await
    }

    async fn deliver_token(&self, name: &NodeName, token: &str) -> Result<(), ProviderError> {
        self.existing(name)?;
        // `vagrant ssh` needs a running machine: a stopped one is booted first. Its agent,
        // with no identity it may use, keeps trying to join until the token is there.
        if !libvirt::running_domains()
            .await?
            .contains(&self.domain(name))
        {
            self.start(name).await?;
        }
        let command = format!(
            "sudo install -D -m 600 /dev/stdin {}",
            pangaea_core::token::RECOVERY_TOKEN_FILE
        );
        let mut child = vagrant_command()
            .current_dir(&self.dir)
            .args(["ssh", name.as_str(), "-c", &command])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProviderError::Spawn {
                command: "vagrant ssh".into(),
                source,
            })?;
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin
                .write_all(token.as_bytes())
                .await
                .map_err(|source| ProviderError::Spawn {
                    command: "vagrant ssh".into(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| ProviderError::Spawn {
                command: "vagrant ssh".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(ProviderError::Command {
                command: format!("vagrant ssh {name} -c '{command}'"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    async fn delete(&self, name: &NodeName) -> Result<(), ProviderError> {
        if self.record(name).is_some() {
            self.vagrant(&["destroy", "--force", name.as_str()]).await?;
        }
        let _ = std::fs::remove_file(seed_iso(&self.cluster, name.as_str()));
        let dir = self.node_dir(name);
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(ProviderError::io("remove the node's files", &dir))?;
        }
        self.write_vagrantfile(Vec::new())
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, ProviderError> {
        let records = self.records();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let running = libvirt::running_domains().await?;
        Ok(records
            .into_iter()
            .map(|(name, r)| NodeInfo {
                state: if running.contains(&self.domain(&name)) {
                    NodeState::Running
                } else {
                    NodeState::Stopped
                },
                name,
                instance_id: r.instance_id,
                address: r.address,
                created_at: r.created_at,
            })
            .collect())
    }

    async fn user_data(&self, name: &NodeName) -> Result<Option<String>, ProviderError> {
        if self.record(name).is_none() {
            return Ok(None);
        }
        let path = self.node_dir(name).join("user-data");
        std::fs::read_to_string(&path)
            .map(Some)
            .map_err(ProviderError::io("read the node's user-data", &path))
    }

    async fn teardown(&self) -> Result<(), ProviderError> {
        if self.records().is_empty() {
            self.network().delete().await;
        }
        Ok(())
    }

    async fn shell(
        &self,
        name: &NodeName,
        argv: &[String],
        tty: bool,
    ) -> Result<Vec<String>, ProviderError> {
        self.existing(name)?;
        let mut cmd: Vec<String> = vec![
            "env".into(),
            format!("VAGRANT_CWD={}", self.dir.display()),
            "VAGRANT_CHECKPOINT_DISABLE=1".into(),
            "VAGRANT_NO_COLOR=1".into(),
            "vagrant".into(),
            "ssh".into(),
            name.to_string(),
        ];
        // As root, like a shell into a local node: a login shell, or the command.
        let line = if argv.is_empty() {
            "sudo -i".to_owned()
        } else {
            let words: Vec<String> = argv
                .iter()
                .map(|a| crate::cmd::env::posix_quote(a))
                .collect();
            format!("sudo {}", words.join(" "))
        };
        cmd.extend(["-c".into(), line]);
        cmd.extend(["--".into(), if tty { "-t" } else { "-T" }.into()]);
        Ok(cmd)
    }

    fn console_hint(&self, name: &NodeName) -> Option<String> {
        Some(format!(
            "console: virsh -c {} console {}",
            libvirt::URI,
            self.domain(name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_with_the_device_and_the_cpu_flags() {
        assert_eq!(choose(true, true).0, Driver::Kvm);
        assert_eq!(choose(false, true).0, Driver::Qemu);
        let (d, why) = choose(true, false);
        assert_eq!(d, Driver::Qemu);
        assert!(why.contains("vmx/svm"), "{why}");
    }
}
