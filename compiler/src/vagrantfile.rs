//! The multi-machine `Vagrantfile` of a cluster on the Vagrant provider (vagrant-libvirt),
//! generated from typed values: one machine per node at its address on the node network,
//! which is a libvirt network of its own with no forwarding (the host is its first address,
//! where the controller listens; nothing leaves the host), its memory and CPUs, and its
//! cloud-init user-data as a NoCloud seed ISO attached as a CD-ROM (vagrant-libvirt ignores
//! `config.vm.cloud_init`).
//!
//! That network is each machine's only one: no vagrant-libvirt management network (a NAT
//! network shared by every Vagrant project of the host, created by whichever `vagrant up`
//! comes first). The node's address comes from cloud-init (the seed's `network-config`), so
//! vagrant must not configure it (`auto_config: false`), and vagrant finds the address to
//! SSH to through the QEMU guest agent. The network itself is made by Pangaea before any
//! machine (`always_destroy: false`: vagrant leaves it alone).
//!
//! Synced folders (`provider.syncedFolders`) are shared by every machine: rsync copies at
//! `up`; NFS mounts the host folder with `all_squash` to its owner ([`Sharing::Nfs`]).
//!
//! `vagrant validate` checks option names but lets wrong value types and invalid addresses
//! through, so the values are typed here and every string is written as an escaped Ruby
//! literal ([`ruby_str`]): a path with a quote in it stays a path.

use crate::model::ClusterModel;
use crate::provider::{FolderSync, Provider, SyncedFolder};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// How libvirt runs the machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (TCG): slow, but runs where KVM cannot.
    Qemu,
}

impl Driver {
    /// How long a machine may take to boot until SSH answers, seconds.
    pub fn boot_timeout_secs(self) -> u32 {
        match self {
            Driver::Kvm => 300,
            Driver::Qemu => 900,
        }
    }

    /// vagrant-libvirt's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Kvm => "kvm",
            Driver::Qemu => "qemu",
        }
    }
}

/// One machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The node's name (the machine's name; cloud-init sets it as the hostname from the
    /// seed's meta-data, so vagrant has no hostname step to run over SSH).
    pub name: String,
    /// Its address on the node network.
    pub ip: Ipv4Addr,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// CPUs.
    pub cpus: u32,
    /// Its NoCloud seed ISO.
    pub seed_iso: String,
}

/// A folder of this machine shared with every machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folder {
    /// The host folder, absolute (vagrant reads relative paths from the Vagrantfile's
    /// directory, which is not `pangaea.yaml`'s).
    pub host: PathBuf,
    /// Where it appears in each machine.
    pub guest: String,
    /// How.
    pub sharing: Sharing,
}

/// How a [`Folder`] is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Copied in by rsync over SSH at `up` (vagrant's `rsync__chown` gives the files to the
    /// SSH user).
    Rsync,
    /// Mounted over NFSv4 (TCP) from this machine, exported `all_squash` with the host
    /// folder's owner as `anonuid`/`anongid`: every user of a node (root, the vagrant user,
    /// a container's) reads and writes as the folder's owner, so no uid that differs
    /// between host and guest gets "permission denied", and files created in a node stay
    /// the operator's on the host.
    Nfs {
        /// The host folder's owner.
        uid: u32,
        /// The host folder's group.
        gid: u32,
    },
}

/// A synced folder that cannot be shared.
#[derive(Debug, thiserror::Error)]
#[error(
    "synced folder {host}: {source}; create it, or remove it from provider.syncedFolders in pangaea.yaml"
)]
pub struct FolderError {
    /// The host folder.
    pub host: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

impl Folder {
    /// Entry `f` of a configuration in directory `dir`, as it stands on this machine: its
    /// host folder must be a directory (NFS exports it with its owner).
    pub fn resolve(f: &SyncedFolder, dir: &Path) -> Result<Folder, FolderError> {
        use std::os::unix::fs::MetadataExt as _;
        let host = f.host_path(dir);
        let err = |source| FolderError {
            host: host.clone(),
            source,
        };
        let meta = std::fs::metadata(&host).map_err(err)?;
        if !meta.is_dir() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        Ok(Folder {
            sharing: match f.sync {
                FolderSync::Rsync => Sharing::Rsync,
                FolderSync::Nfs => Sharing::Nfs {
                    uid: meta.uid(),
                    gid: meta.gid(),
                },
            },
            guest: f.guest.clone(),
            host,
        })
    }

    /// Every synced folder `provider` configures (none but Vagrant's), in a configuration in
    /// directory `dir`.
    pub fn all(provider: &Provider, dir: &Path) -> Result<Vec<Folder>, FolderError> {
        match provider {
            Provider::Vagrant(v) => v
                .synced_folders
                .iter()
                .map(|f| Folder::resolve(f, dir))
                .collect(),
            Provider::Local | Provider::Gce(_) => Ok(Vec::new()),
        }
    }

    /// Its `config.vm.synced_folder` line.
    fn render(&self) -> String {
        let mut line = format!(
            "  config.vm.synced_folder {}, {}",
            ruby_str(&self.host.display().to_string()),
            ruby_str(&self.guest)
        );
        match self.sharing {
            Sharing::Rsync => line.push_str(", type: 'rsync'"),
            Sharing::Nfs { uid, gid } => {
                let _ = write!(
                    line,
                    ", type: 'nfs', nfs_version: 4, nfs_udp: false, linux__nfs_options: ['rw', 'no_subtree_check', 'all_squash', 'anonuid={uid}', 'anongid={gid}']"
                );
            }
        }
        line
    }
}

/// A cluster's Vagrantfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vagrantfile {
    /// The base box.
    pub box_name: String,
    /// How libvirt runs the machines.
    pub driver: Driver,
    /// The libvirt network of the node network.
    pub network_name: String,
    /// The node network's netmask (how vagrant-libvirt finds that network by address).
    pub netmask: Ipv4Addr,
    /// Prefix of every libvirt domain name (`<prefix><node>`), unique per cluster.
    pub domain_prefix: String,
    /// The machines.
    pub machines: Vec<Machine>,
    /// The folders every machine shares.
    pub folders: Vec<Folder>,
}

impl Vagrantfile {
    /// The Vagrantfile of `model`'s cluster booting `box_name`, each node's seed ISO where
    /// `seed_iso(node)` says, sharing `folders`.
    pub fn for_cluster(
        model: &ClusterModel,
        box_name: &str,
        driver: Driver,
        seed_iso: impl Fn(&str) -> String,
        folders: Vec<Folder>,
    ) -> Vagrantfile {
        let machines = model
            .nodes
            .iter()
            .map(|n| Machine {
                name: n.name.to_string(),
                ip: n.address,
                memory_mib: n.memory_mib,
                cpus: n.cpus,
                seed_iso: seed_iso(n.name.as_str()),
            })
            .collect();
        let nodes = crate::cidr::Cidr::parse(&model.node_cidr).expect("a validated node network");
        Vagrantfile::new(&model.name, nodes, box_name, driver, machines, folders)
    }

    /// The Vagrantfile of cluster `cluster` on node network `nodes` with `machines` sharing
    /// `folders`.
    pub fn new(
        cluster: &str,
        nodes: crate::cidr::Cidr,
        box_name: &str,
        driver: Driver,
        machines: Vec<Machine>,
        folders: Vec<Folder>,
    ) -> Vagrantfile {
        Vagrantfile {
            box_name: box_name.to_owned(),
            driver,
            network_name: network_name(cluster),
            netmask: nodes.netmask(),
            domain_prefix: format!("pangaea-{cluster}-"),
            machines,
            folders,
        }
    }

    /// The Vagrantfile's text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str("# Generated by pangaea-ctl from pangaea.yaml: edit that, not this file.\n");
        o.push_str("Vagrant.configure(\"2\") do |config|\n");
        let _ = writeln!(o, "  config.vm.box = {}", ruby_str(&self.box_name));
        o.push_str("  config.vm.synced_folder \".\", \"/vagrant\", disabled: true\n");
        for f in &self.folders {
            o.push_str(&f.render());
            o.push('\n');
        }
        // How long vagrant waits for SSH on a booting machine: its 300 s default is too short
        // under software emulation when other nodes keep the host's CPUs busy.
        let _ = writeln!(
            o,
            "  config.vm.boot_timeout = {}",
            self.driver.boot_timeout_secs()
        );
        o.push_str("  config.vm.provider :libvirt do |lv|\n");
        let _ = writeln!(o, "    lv.driver = {}", ruby_str(self.driver.as_str()));
        o.push_str("    lv.mgmt_attach = false\n");
        o.push_str("    lv.qemu_use_agent = true\n");
        let _ = writeln!(
            o,
            "    lv.default_prefix = {}",
            ruby_str(&self.domain_prefix)
        );
        o.push_str("  end\n");
        for m in &self.machines {
            let _ = writeln!(o, "  config.vm.define {} do |m|", ruby_str(&m.name));
            let _ = writeln!(
                o,
                "    m.vm.network :private_network, ip: {}, libvirt__netmask: {}, libvirt__network_name: {}, libvirt__dhcp_enabled: false, libvirt__forward_mode: \"none\", libvirt__always_destroy: false, auto_config: false",
                ruby_str(&m.ip.to_string()),
                ruby_str(&self.netmask.to_string()),
                ruby_str(&self.network_name)
            );
            o.push_str("    m.vm.provider :libvirt do |lv|\n");
            let _ = writeln!(o, "      lv.memory = {}", m.memory_mib);
            let _ = writeln!(o, "      lv.cpus = {}", m.cpus);
            let _ = writeln!(
                o,
                "      lv.storage :file, device: :cdrom, path: {}",
                ruby_str(&m.seed_iso)
            );
            o.push_str("    end\n  end\n");
        }
        o.push_str("end\n");
        o
    }
}

/// The libvirt network of cluster `cluster`'s node network.
pub fn network_name(cluster: &str) -> String {
    format!("pangaea-{cluster}")
}

/// The box a cluster's nodes boot: `provider.boxName`, else Pangaea's own, `built`.
pub fn box_name(provider: &Provider, built: &str) -> String {
    match provider {
        Provider::Vagrant(v) => v.box_name.clone(),
        Provider::Local | Provider::Gce(_) => None,
    }
    .unwrap_or_else(|| built.to_owned())
}

/// `s` as a single-quoted Ruby string literal: only `\` and `'` are special there.
pub fn ruby_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;

    fn model(yaml: &str) -> (ClusterModel, Provider) {
        let l = Loaded::parse("p.yaml", yaml, std::path::Path::new(".")).unwrap();
        (ClusterModel::build(&l), l.config.provider.clone())
    }

    #[test]
    fn one_machine_per_node_with_its_address_memory_and_seed() {
        let (m, p) = model(
            "name: demo\nprovider: {type: vagrant, boxName: local/bookworm}\npools:\n  - name: node\n    count: 3\n    memoryMiB: 2048\n",
        );
        let v = Vagrantfile::for_cluster(
            &m,
            &box_name(&p, "built"),
            Driver::Qemu,
            |n| format!("/seed/{n}.iso"),
            vec![],
        );
        assert_eq!(v.box_name, "local/bookworm");
        assert_eq!(v.network_name, "pangaea-demo");
        assert_eq!(v.machines.len(), 3);
        for (machine, node) in v.machines.iter().zip(&m.nodes) {
            assert_eq!(machine.name, node.name.as_str());
            assert_eq!(machine.ip, node.address);
            assert_eq!(machine.memory_mib, 2048);
            assert_eq!(machine.seed_iso, format!("/seed/{}.iso", node.name));
        }
        let text = v.render();
        assert!(text.contains("lv.driver = 'qemu'"), "{text}");
        assert!(text.contains("config.vm.boot_timeout = 900"), "{text}");
        assert!(
            text.contains(
                "ip: '10.213.0.11', libvirt__netmask: '255.255.255.0', libvirt__network_name: 'pangaea-demo'"
            ),
            "{text}"
        );
        assert!(
            text.contains("lv.default_prefix = 'pangaea-demo-'"),
            "{text}"
        );
        let (_, p) = model("name: demo\n");
        assert_eq!(box_name(&p, "built"), "built");
    }

    #[test]
    fn folders_are_absolute_and_nfs_squashes_to_the_host_folders_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let (_, p) = model(
            "provider:\n  type: vagrant\n  syncedFolders:\n    - {host: src, guest: /srv/src}\n    - {host: src, guest: /srv/live, type: nfs}\n",
        );
        let folders = Folder::all(&p, dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join("src")).unwrap();
        assert_eq!(
            folders,
            [
                Folder {
                    host: dir.path().join("src"),
                    guest: "/srv/src".into(),
                    sharing: Sharing::Rsync
                },
                Folder {
                    host: dir.path().join("src"),
                    guest: "/srv/live".into(),
                    sharing: Sharing::Nfs {
                        uid: meta.uid(),
                        gid: meta.gid()
                    }
                }
            ]
        );
        assert_eq!(
            folders[1].render(),
            format!(
                "  config.vm.synced_folder '{}', '/srv/live', type: 'nfs', nfs_version: 4, nfs_udp: false, linux__nfs_options: ['rw', 'no_subtree_check', 'all_squash', 'anonuid={}', 'anongid={}']",
                dir.path().join("src").display(),
                meta.uid(),
                meta.gid()
            )
        );
        // A host folder that is missing, or a file, is refused by name, with the way out.
        for bad in ["missing", "file"] {
            let (_, p) = model(&format!(
                "provider:\n  type: vagrant\n  syncedFolders: [{{host: {bad}, guest: /x}}]\n"
            ));
            let e = Folder::all(&p, dir.path()).unwrap_err().to_string();
            assert!(
                e.contains(&dir.path().join(bad).display().to_string()),
                "{e}"
            );
            assert!(e.contains("remove it from provider.syncedFolders"), "{e}");
        }
        let (_, local) = model("name: demo\n");
        assert_eq!(Folder::all(&local, dir.path()).unwrap(), []);
    }

    #[test]
    fn strings_are_ruby_literals_whatever_they_hold() {
        assert_eq!(ruby_str("a'b"), r"'a\'b'");
        assert_eq!(ruby_str(r"a\'; system('x')"), r"'a\\\'; system(\'x\')'");
    }
}
