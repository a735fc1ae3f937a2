//! The clusters of this host: one small record per cluster, written by `up` once the
//! cluster's state directory exists and removed by `down --purge`, so `pangaea-ctl
//! clusters` can list them from any directory, and a second local cluster that would take
//! the same names or addresses is refused before it creates anything.
//!
//! Local nodes are named after their cluster (network namespaces `pangaea-<cluster>-<node>`,
//! the bridge `pgb<hash of the name>`) and sit on the cluster's node network on this host,
//! so two local clusters with the same name, or overlapping node networks, would take over
//! each other's nodes and routes. Clusters on a cloud have their own networks there.
//!
//! Where: `clusters/` in the host's state directory ([`crate::host_state`]:
//! `/var/lib/pangaea` for root). A record whose state
//! directory is gone (deleted by hand) is stale, shown as such and never blocks.

use crate::state_dir::StateDir;
use pangaea_compiler::cidr::Cidr;
use pangaea_compiler::config::Loaded;
use pangaea_compiler::provider::ProviderKind;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

/// One cluster, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The cluster's name.
    pub name: String,
    /// Its provider (`local`, `gce`, `vagrant`).
    pub provider: String,
    /// How many nodes its configuration asks for.
    pub nodes: usize,
    /// Its node network.
    pub network: String,
    /// Its state directory (`.pangaea`), which identifies it.
    pub state_dir: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
}

impl Record {
    /// The record of `loaded`'s cluster kept in `state`.
    pub fn of(loaded: &Loaded, config: &Path, state: &StateDir) -> Record {
        let model = pangaea_compiler::model::ClusterModel::build(loaded);
        Record {
            name: loaded.config.name.clone(),
            provider: loaded.config.provider.kind().to_string(),
            nodes: model.nodes.len(),
            network: loaded.config.network.nodes.to_string(),
            state_dir: absolute(state.path()),
            config: absolute(config),
        }
    }

    /// Whether the cluster's state directory is still there.
    pub fn exists(&self) -> bool {
        self.state_dir.is_dir()
    }

    /// The directory the operator works in (where `pangaea.yaml` is).
    pub fn dir(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("/"))
    }

    /// Whether the cluster's machines live on this host: local nodes and Vagrant's VMs
    /// sit on its bridges and routes, named after their cluster.
    fn on_host(&self) -> bool {
        [ProviderKind::Local, ProviderKind::Vagrant]
            .iter()
            .any(|k| k.as_str() == self.provider)
    }

    /// Whether `other` is another cluster of this host whose machines and bridge carry
    /// the names this one's do.
    fn namesake_of(&self, other: &Record) -> bool {
        self.on_host() && other.on_host() && self.name == other.name
    }

    /// Why `self` and `other` cannot both be local clusters of this host, if they cannot.
    fn collides_with(&self, other: &Record) -> Option<String> {
        if !self.on_host() || !other.on_host() {
            return None;
        }
        if self.namesake_of(other) {
            return Some(format!(
                "cluster name {:?} is taken by the {} cluster in {} (nodes and networks \
                 are named after their cluster): set another `name:` in {}",
                self.name,
                other.provider,
                other.dir().display(),
                self.config.display()
            ));
        }
        let (mine, theirs) = (
            Cidr::parse(&self.network).ok()?,
            Cidr::parse(&other.network).ok()?,
        );
        mine.overlaps(&theirs).then(|| {
            format!(
                "node network {} overlaps {} of the {} cluster {:?} in {}: set another in {}, \
                 e.g.\n  network:\n    nodes: {}",
                self.network,
                other.network,
                other.provider,
                other.name,
                other.dir().display(),
                self.config.display(),
                free_network(&mine, &[theirs]),
            )
        })
    }
}

/// The first /N after `net` (same size) that overlaps none of `taken`.
fn free_network(net: &Cidr, taken: &[Cidr]) -> String {
    let size = 1u64 << (32 - u32::from(net.prefix));
    let mut start = u64::from(u32::from(net.network));
    loop {
        start += size;
        let Ok(addr) = u32::try_from(start) else {
            return "(none free after it)".into();
        };
        let candidate = format!("{}/{}", std::net::Ipv4Addr::from(addr), net.prefix);
        match Cidr::parse(&candidate) {
            Ok(c) if !taken.iter().any(|t| t.overlaps(&c)) => return candidate,
            _ => continue,
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// The registry directory of this host (see the module docs).
pub fn dir() -> PathBuf {
    crate::host_state::dir().join("clusters")
}

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cluster registry {path}: {message}")]
pub struct RegistryError {
    path: String,
    message: String,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |e| RegistryError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The registry, locked against other `up`s and `down`s of this host while held.
pub struct Registry {
    dir: PathBuf,
    _lock: File,
}

impl Registry {
    /// Opens (creating) the registry in `dir`, waiting for its lock.
    pub fn open(dir: &Path) -> Result<Registry, RegistryError> {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let lock_path = dir.join(".lock");
        let lock = File::create(&lock_path).map_err(err(&lock_path))?;
        lock.lock().map_err(err(&lock_path))?;
        Ok(Registry {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Every record, in name order; unreadable files are skipped.
    pub fn list(&self) -> Vec<Record> {
        list(&self.dir)
    }

    /// Refuses `record` when a live cluster other than itself collides with it.
    pub fn check(&self, record: &Record) -> Result<(), String> {
        for other in self.list() {
            if other.state_dir == record.state_dir || !other.exists() {
                continue;
            }
            if let Some(why) = record.collides_with(&other) {
                return Err(why);
            }
        }
        Ok(())
    }

    /// Another live cluster of this host with `record`'s name (and so its machines' and
    /// bridge's names): `down --purge` of `record` would take its bridge along.
    pub fn namesake(&self, record: &Record) -> Option<Record> {
        self.list()
            .into_iter()
            .find(|o| o.state_dir != record.state_dir && o.exists() && record.namesake_of(o))
    }

    /// Records (or updates) `record`.
    pub fn put(&self, record: &Record) -> Result<(), RegistryError> {
        let path = self.file(&record.state_dir);
        let json = serde_json::to_vec_pretty(record).expect("a record serializes");
        pangaea_core::fsutil::atomic_write(&path, &json, 0o644).map_err(|e| RegistryError {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Forgets the cluster kept in `state_dir`.
    pub fn remove(&self, state_dir: &Path) -> Result<(), RegistryError> {
        let path = self.file(&absolute(state_dir));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// The record's file: named after a hash of the state directory, which is unique.
    fn file(&self, state_dir: &Path) -> PathBuf {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
        let short: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{short}.json"))
    }
}

/// The records in `dir`, without taking the lock (a reader sees whole files: they are
/// replaced atomically).
pub fn list(dir: &Path) -> Vec<Record> {
    let mut out: Vec<Record> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a, b| (&a.name, &a.state_dir).cmp(&(&b.name, &b.state_dir)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, provider: &str, network: &str, dir: &str) -> Record {
        Record {
            name: name.into(),
            provider: provider.into(),
            nodes: 3,
            network: network.into(),
            state_dir: PathBuf::from(dir).join(".pangaea"),
            config: PathBuf::from(dir).join("pangaea.yaml"),
        }
    }

    #[test]
    fn local_clusters_collide_by_name_or_overlapping_network_only() {
        let a = record("pangaea", "local", "10.213.0.0/24", "/a");
        let same_name = record("pangaea", "local", "10.9.0.0/24", "/b");
        let e = same_name.collides_with(&a).unwrap();
        assert!(
            e.contains("name \"pangaea\" is taken") && e.contains("/a"),
            "{e}"
        );
        let overlap = record("other", "local", "10.213.0.0/16", "/b");
        let e = overlap.collides_with(&a).unwrap();
        assert!(e.contains("overlaps 10.213.0.0/24"), "{e}");
        assert!(e.contains("nodes: 10.214.0.0/16"), "{e}");
        let apart = record("other", "local", "10.213.1.0/24", "/b");
        assert_eq!(apart.collides_with(&a), None);
        let cloud = record("pangaea", "gce", "10.213.0.0/24", "/b");
        assert_eq!(cloud.collides_with(&a), None);
    }

    #[test]
    fn the_free_network_suggested_skips_every_taken_one() {
        let net = Cidr::parse("10.213.0.0/24").unwrap();
        let taken = [
            Cidr::parse("10.213.0.0/24").unwrap(),
            Cidr::parse("10.213.1.0/24").unwrap(),
        ];
        assert_eq!(free_network(&net, &taken), "10.213.2.0/24");
    }

    #[test]
    fn records_are_put_checked_and_removed_by_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = tmp.path().join("a");
        std::fs::create_dir_all(cluster.join(".pangaea")).unwrap();
        let reg = Registry::open(&tmp.path().join("registry")).unwrap();
        let a = record(
            "pangaea",
            "local",
            "10.213.0.0/24",
            cluster.to_str().unwrap(),
        );
        reg.put(&a).unwrap();
        reg.put(&a).unwrap();
        assert_eq!(reg.list(), vec![a.clone()]);
        // Itself is no collision; another directory with the same name is.
        assert_eq!(reg.check(&a), Ok(()));
        let b = record("pangaea", "local", "10.213.0.0/24", "/elsewhere");
        assert!(reg.check(&b).is_err());
        // A record whose state directory is gone never blocks.
        std::fs::remove_dir_all(cluster.join(".pangaea")).unwrap();
        assert_eq!(reg.check(&b), Ok(()));
        reg.remove(&a.state_dir).unwrap();
        reg.remove(&a.state_dir).unwrap();
        assert!(reg.list().is_empty());
    }
}
