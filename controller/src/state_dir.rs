//! The layout of a cluster's state directory, `.pangaea/` beside `pangaea.yaml`, and the
//! ports the controller serves on. Every path under `.pangaea/` is named here and only here,
//! so that what a file is (and who may read it) is decided in one place.
//!
//! Who may read it: the directory is 0700 ([`StateDir::ensure`], also tightening one made
//! by an older version or by hand) and the controller writes every file in it 0600, so no
//! other local user reaches a key, a token or the store.
//!
//! ```text
//! .pangaea/
//!   lock, state.redb          the state store and the lock naming its holder
//!   ctl.sock                  the running controller's admin socket (0600)
//!   serve.pid/.addr/.log      the controller daemon
//!   pki/                      the CAs and the controller's serving certificate; pki/.lock
//!                             serializes issuance across processes (pki::PkiLock)
//!   pki/issued/<id>.{crt,key,json}  leaf certificates issued once per request
//!   secrets/                  generated cluster secrets (encryption key)
//!   artifacts/                the verified, content-addressed artifact mirror
//!   nodes/<name>/             what a provider keeps per node (local: disk, console log)
//!   admin.kubeconfig          the operator's kubeconfig
//! ```

use std::path::{Path, PathBuf};

/// The gRPC port agents dial (mutual TLS after the join).
pub const GRPC_PORT: u16 = 7443;
/// The plain-HTTP port booting nodes download the agent binary from (checked by digest).
pub const AGENT_HTTP_PORT: u16 = 7444;

/// A cluster's `.pangaea/` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// The state directory at `path` (not created here).
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir(path.into())
    }

    /// `.pangaea` beside the nearest `pangaea.yaml` above `start`, else `start/.pangaea`.
    pub fn find(start: &Path) -> StateDir {
        StateDir(find_cluster_dir(start).join(".pangaea"))
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Creates the directory private to its owner (0700), or makes an existing one so.
    /// Everything of the cluster's that must stay secret lives below it; called before
    /// anything is written there.
    pub fn ensure(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(parent) = self.0.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(&self.0)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700))?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The store's lock file (flock; holds the holder's PID).
    pub fn lock(&self) -> PathBuf {
        self.0.join("lock")
    }

    /// The redb state store.
    pub fn store(&self) -> PathBuf {
        self.0.join("state.redb")
    }

    /// The running controller's admin socket.
    pub fn socket(&self) -> PathBuf {
        self.0.join("ctl.sock")
    }

    /// PID of the controller daemon.
    pub fn serve_pid(&self) -> PathBuf {
        self.0.join("serve.pid")
    }

    /// The address the controller daemon serves agents on.
    pub fn serve_addr(&self) -> PathBuf {
        self.0.join("serve.addr")
    }

    /// Where the controller daemon relays the operator's API connections to the API servers
    /// (`127.0.0.1:PORT`; the admin kubeconfig points there, so the port is kept).
    pub fn api_proxy_addr(&self) -> PathBuf {
        self.0.join("api-proxy.addr")
    }

    /// The API's external address where the provider reserves one ([`crate::api_address`]).
    pub fn api_address(&self) -> PathBuf {
        self.0.join("api-address")
    }

    /// The address the controller daemon serves the agent binary on, when it does.
    pub fn agent_http_addr(&self) -> PathBuf {
        self.0.join("agent-http.addr")
    }

    /// The controller daemon's log.
    pub fn serve_log(&self) -> PathBuf {
        self.0.join("serve.log")
    }

    /// The CAs and the controller's serving certificate.
    pub fn pki(&self) -> PathBuf {
        self.0.join("pki")
    }

    /// The journal of `node remove NODE` while it is under way ([`crate::removal`]).
    pub fn removal_journal(&self, node: &str) -> PathBuf {
        self.journal().join(format!("remove-{node}.json"))
    }

    /// The journals of operations under way.
    pub fn journal(&self) -> PathBuf {
        self.0.join("journal")
    }

    /// What `pangaea-ctl backup` keeps of this directory besides the state store (which it
    /// copies through the controller): the PKI, the cluster's secrets, unfinished
    /// journals, the join records and the admin kubeconfig. Not kept, because they can be
    /// had again: the artifact mirror, the provider's per-node files (node disks on the
    /// local provider), the daemon's runtime files and log.
    pub fn backed_up(&self) -> [PathBuf; 5] {
        [
            self.pki(),
            self.secrets(),
            self.journal(),
            self.etcd_joins(),
            self.admin_kubeconfig(),
        ]
    }

    /// What belongs to this machine rather than to a backup: the artifact mirror and the
    /// provider's per-node files. `pangaea-ctl restore` keeps them in place.
    pub fn machine_local(&self) -> [PathBuf; 2] {
        [self.artifacts(), self.nodes()]
    }

    /// The etcd members that joined the running cluster ([`crate::etcd_join`]).
    pub fn etcd_joins(&self) -> PathBuf {
        self.0.join("etcd-joins.json")
    }

    /// Certificate, key and request of the leaf issued for request `id` (like
    /// `node-1/etcd-peer`; `/` is not allowed in file names, so it becomes `__`).
    pub fn issued(&self, id: &str) -> IssuedPaths {
        let stem = self.pki().join("issued").join(id.replace('/', "__"));
        IssuedPaths {
            cert: stem.with_extension("crt"),
            key: stem.with_extension("key"),
            request: stem.with_extension("json"),
        }
    }

    /// Every file of every certificate issued for node `node` (ids `NODE/...`).
    pub fn issued_for_node(&self, node: &str) -> Vec<PathBuf> {
        let prefix = format!("{node}__");
        std::fs::read_dir(self.pki().join("issued"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }

    /// Generated cluster secrets, one file each.
    pub fn secret(&self, name: &str) -> PathBuf {
        self.secrets().join(name)
    }

    /// The directory of the generated cluster secrets.
    pub fn secrets(&self) -> PathBuf {
        self.0.join("secrets")
    }

    /// The private key of the cluster's reverse SSH tunnels ([`crate::tunnel`]), with its
    /// public half beside it (`.pub`). A secret, so a backup keeps it: nodes authorize
    /// this key at their first boot.
    pub fn tunnel_key(&self) -> PathBuf {
        self.secret("tunnel_ed25519")
    }

    /// The nodes' SSH host keys as the tunnels first met them (one entry per instance).
    pub fn tunnel_known_hosts(&self) -> PathBuf {
        self.0.join("tunnel_known_hosts")
    }

    /// The artifact mirror.
    pub fn artifacts(&self) -> PathBuf {
        self.0.join("artifacts")
    }

    /// The Vagrant provider's directory: the cluster's `Vagrantfile` (vagrant's working
    /// directory) and `seed/NODE.iso`, each node's cloud-init seed.
    pub fn vagrant(&self) -> PathBuf {
        self.0.join("vagrant")
    }

    /// Where providers keep per-node files.
    pub fn nodes(&self) -> PathBuf {
        self.0.join("nodes")
    }

    /// The operator's admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.0.join("admin.kubeconfig")
    }
}

/// Where an issued leaf certificate is kept.
#[derive(Clone, Debug)]
pub struct IssuedPaths {
    /// The certificate (PEM, 0600 like every file here).
    pub cert: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
    /// The request it was issued for (JSON), to notice a changed request.
    pub request: PathBuf,
}

/// The directory of the nearest `pangaea.yaml` above `start`, else `start`.
pub fn find_cluster_dir(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|d| d.join("pangaea.yaml").is_file())
        .unwrap_or(start)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_beside_pangaea_yaml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pangaea.yaml"), "").unwrap();
        let sub = d.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(StateDir::find(&sub).path(), d.path().join(".pangaea"));
        let lone = tempfile::tempdir().unwrap();
        assert_eq!(
            StateDir::find(lone.path()).path(),
            lone.path().join(".pangaea")
        );
    }

    #[test]
    fn the_directory_is_private_new_or_old() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let fresh = StateDir::new(d.path().join("a/.pangaea"));
        fresh.ensure().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(fresh.path()), 0o700);
        let old = d.path().join("b/.pangaea");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::new(&old).ensure().unwrap();
        assert_eq!(
            mode(&old),
            0o700,
            "an older, open state directory is tightened"
        );
    }

    #[test]
    fn issued_ids_become_flat_file_names() {
        let s = StateDir::new("/x/.pangaea");
        let p = s.issued("cluster/etcd-operator");
        assert_eq!(
            p.cert,
            Path::new("/x/.pangaea/pki/issued/cluster__etcd-operator.crt")
        );
        assert_eq!(
            p.key,
            Path::new("/x/.pangaea/pki/issued/cluster__etcd-operator.key")
        );
    }
}
