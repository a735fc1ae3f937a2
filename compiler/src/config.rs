//! `pangaea.yaml`: the cluster configuration.
//!
//! ```yaml
//! apiVersion: pangaea.dev/v1alpha1
//! kind: Cluster
//! name: demo
//! provider: { type: local }            # local | vagrant | gce (see `provider`)
//! artifactSource: pinned               # pinned releases | os-packages (installed .debs)
//! network: { nodes: 10.213.0.0/24, pods: 10.244.0.0/16, services: 10.96.0.0/12 }
//! pools:
//!   - { name: node, count: 3, roles: [etcd, control-plane, worker], memoryMiB: 2048 }
//! removedNodes: [node-2]               # left out; the other nodes keep their names and addresses
//! addons: { monitoring: { enabled: true } }
//! ```
//!
//! Every field has a default, so an empty or missing file is a valid 3-node local cluster.
//! Unknown fields are refused; every error names the file, line and column.
//!
//! `removedNodes` is how `pangaea-ctl node remove` records a removal (it edits the file in
//! place, see [`crate::config_edit`]), so this file stays the one source of truth and a later
//! `up` does not bring the node back. A pool still numbers its nodes `POOL-1..POOL-count`
//! and a removed node's number and address are never reused: the nodes that remain keep
//! exactly the names and addresses they had.

use crate::artifact_set::{ArtifactOverride, ArtifactSource};
use crate::cidr::Cidr;
use crate::expose::{EXPOSABLE, Expose, ExposeType};
use crate::locate::locate;
use crate::provider::Provider;
use crate::roles::Role;
use pangaea_core::NodeName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The only `apiVersion` this compiler reads; a later format gets a new one, so an old
/// compiler refuses a newer file instead of misreading it.
pub const API_VERSION: &str = "pangaea.dev/v1alpha1";

/// A refused configuration; displays as `file:line:column: message`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{file}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    /// The configuration file, as given.
    pub file: String,
    /// 1-based line and column of the offending value, when it can be found.
    pub location: Option<(usize, usize)>,
    /// What is wrong, and what to do about it.
    pub message: String,
}

/// Something allowed but probably unwise (an even number of etcd members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line and column it is about, when it can be found.
    pub location: Option<(usize, usize)>,
    /// What, and why it matters.
    pub message: String,
}

/// `versions:`: the component versions templates see (the binaries themselves are pinned
/// in the artifact set).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Versions {
    /// Kubernetes (`v1.35.1`).
    #[serde(default = "default_k8s")]
    pub kubernetes: String,
    /// etcd (`v3.5.27`).
    #[serde(default = "default_etcd")]
    pub etcd: String,
}

fn default_k8s() -> String {
    "v1.35.1".into()
}
fn default_etcd() -> String {
    "v3.5.27".into()
}

impl Default for Versions {
    fn default() -> Self {
        Versions {
            kubernetes: default_k8s(),
            etcd: default_etcd(),
        }
    }
}

/// `network:`: the three address ranges, which must not overlap, and the DNS domain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// Node addresses (`10.213.0.0/24`); nodes get .11 onwards, .1 is the host's bridge.
    #[serde(default = "default_nodes_cidr")]
    pub nodes: Cidr,
    /// Pod addresses (`10.244.0.0/16`), split per node by flannel.
    #[serde(default = "default_pods_cidr")]
    pub pods: Cidr,
    /// Service addresses (`10.96.0.0/12`); the first is the API service, the tenth DNS.
    #[serde(default = "default_services_cidr")]
    pub services: Cidr,
    /// `clusterDomain` (`cluster.local`).
    #[serde(default = "default_domain")]
    pub cluster_domain: String,
}

fn default_nodes_cidr() -> Cidr {
    Cidr::parse("10.213.0.0/24").expect("valid")
}
fn default_pods_cidr() -> Cidr {
    Cidr::parse("10.244.0.0/16").expect("valid")
}
fn default_services_cidr() -> Cidr {
    Cidr::parse("10.96.0.0/12").expect("valid")
}
fn default_domain() -> String {
    "cluster.local".into()
}

impl Default for Network {
    fn default() -> Self {
        Network {
            nodes: default_nodes_cidr(),
            pods: default_pods_cidr(),
            services: default_services_cidr(),
            cluster_domain: default_domain(),
        }
    }
}

/// An extra disk of each node of a pool, formatted (ext4, if empty) and mounted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Disk {
    /// Its name: part of the format unit's name, the filesystem label and (on GCE) the device.
    pub name: String,
    /// `sizeGiB`: its size, for the provider creating it.
    #[serde(rename = "sizeGiB")]
    pub size_gib: u32,
    /// Where it is mounted (absolute).
    pub mount: String,
    /// Block device on the node (default: the provider's: `/dev/disk/by-id/google-NAME` on
    /// GCE, else `/dev/vdb`, `/dev/vdc`, … in the pool's order; see
    /// [`ProviderKind::default_disk_device`](crate::provider::ProviderKind::default_disk_device)).
    #[serde(default)]
    pub device: Option<String>,
}

/// `pools[]`: nodes that are alike; they are named `NAME-1`, `NAME-2`, ….
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pool {
    /// The pool's name, the prefix of its nodes' names.
    pub name: String,
    /// How many nodes (default 3).
    #[serde(default = "default_count")]
    pub count: u32,
    /// What its nodes do (default: all roles).
    #[serde(default = "all_roles")]
    pub roles: Vec<Role>,
    /// `machineType`: the provider's machine type; gives the memory when `memoryMiB` does
    /// not.
    #[serde(default)]
    pub machine_type: Option<String>,
    /// `memoryMiB`: each node's memory (default: the machine type's, else 2048).
    #[serde(default, rename = "memoryMiB")]
    pub memory_mib: Option<u32>,
    /// CPUs of each node (default 2).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Extra disks of each node.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Kubernetes labels of its nodes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_count() -> u32 {
    3
}
fn all_roles() -> Vec<Role> {
    Role::ALL.to_vec()
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            name: "node".into(),
            count: 3,
            roles: all_roles(),
            machine_type: None,
            memory_mib: Some(2048),
            cpus: Some(2),
            disks: vec![],
            labels: BTreeMap::new(),
        }
    }
}

/// `addons.logging`: collect container and system logs on the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Logging {
    /// Install it (default: no).
    #[serde(default)]
    pub enabled: bool,
    /// Keep logs on a persistent volume (hostPath on the node) instead of in memory.
    #[serde(default)]
    pub persistent_storage: bool,
}

/// `addons.monitoring`: Prometheus and a Grafana dashboard.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Monitoring {
    /// Install it (default: no).
    #[serde(default)]
    pub enabled: bool,
    /// Expose the dashboard outside the cluster (how: `expose.grafana`, else the provider's
    /// [`ProviderKind::external_exposure`](crate::provider::ProviderKind::external_exposure)).
    #[serde(default)]
    pub external_access: bool,
}

/// `addons:`: what the control plane applies to the cluster once it is up.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Addons {
    /// The pod network (default: yes).
    #[serde(default = "yes")]
    pub flannel: bool,
    /// Cluster DNS (default: yes).
    #[serde(default = "yes")]
    pub coredns: bool,
    /// `metricsServer`: resource metrics for `kubectl top` and autoscaling (default: yes).
    #[serde(default = "yes")]
    pub metrics_server: bool,
    /// Log collection.
    #[serde(default)]
    pub logging: Logging,
    /// Metrics and dashboards.
    #[serde(default)]
    pub monitoring: Monitoring,
}

fn yes() -> bool {
    true
}

impl Default for Addons {
    fn default() -> Self {
        Addons {
            flannel: true,
            coredns: true,
            metrics_server: true,
            logging: Logging::default(),
            monitoring: Monitoring::default(),
        }
    }
}

/// `registry:`: credentials for a private image registry, installed as an image pull
/// secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registry {
    /// The registry, e.g. `https://gcr.io` or `europe-docker.pkg.dev`.
    pub server: String,
    /// The user name (`_json_key` for a Google service account key).
    pub username: String,
    /// File (relative to the cluster directory) holding the password or JSON key.
    pub password_file: String,
    /// The e-mail address some registries want with the credentials.
    #[serde(default)]
    pub email: Option<String>,
}

/// `secrets[]`: a Kubernetes secret made from files in the cluster directory, so secrets
/// need not be written into manifests.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserSecret {
    /// The secret's name.
    pub name: String,
    /// Its namespace (default: `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Files relative to the cluster directory; each becomes a key named after the file.
    pub files: Vec<String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// `nfs[]`: an NFS export mounted on every node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NfsMount {
    /// The NFS server's address.
    pub server: String,
    /// The exported path on the server.
    pub export: String,
    /// Where it is mounted on the nodes (absolute).
    pub mount: String,
}

/// The whole of `pangaea.yaml`, as written (its checks across fields are [`Loaded`]'s).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// `apiVersion`: must be `pangaea.dev/v1alpha1` ([`API_VERSION`]).
    #[serde(default = "api_version")]
    pub api_version: String,
    /// Must be `Cluster`.
    #[serde(default = "kind")]
    pub kind: String,
    /// The cluster's name (default `pangaea`); a valid node name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where the nodes run (default: local).
    #[serde(default)]
    pub provider: Provider,
    /// Component versions.
    #[serde(default)]
    pub versions: Versions,
    /// Address ranges and DNS domain.
    #[serde(default)]
    pub network: Network,
    /// The nodes, by pool (default: one pool of 3 nodes with all roles).
    #[serde(default = "default_pools")]
    pub pools: Vec<Pool>,
    /// `removedNodes`: nodes of the pools that are left out of the cluster (written by
    /// `pangaea-ctl node remove`); each must be a node some pool makes. The others keep their
    /// numbers and addresses, and a removed node's are not reused.
    #[serde(default)]
    pub removed_nodes: Vec<NodeName>,
    /// Where the binaries come from: `pinned` (default) or `os-packages`.
    #[serde(default)]
    pub artifact_source: ArtifactSource,
    /// Changes to the pinned artifact set.
    #[serde(default)]
    pub artifacts: Vec<ArtifactOverride>,
    /// Add-ons.
    #[serde(default)]
    pub addons: Addons,
    /// A private image registry.
    #[serde(default)]
    pub registry: Option<Registry>,
    /// Secrets made from files.
    #[serde(default)]
    pub secrets: Vec<UserSecret>,
    /// NFS mounts of every node.
    #[serde(default)]
    pub nfs: Vec<NfsMount>,
    /// Per add-on service: how to expose it (`grafana`, `prometheus`).
    #[serde(default)]
    pub expose: BTreeMap<String, Expose>,
    /// Directory (relative to the cluster directory) whose files override the built-in
    /// templates of the same name.
    #[serde(default = "default_templates_dir")]
    pub templates_dir: String,
}

fn api_version() -> String {
    API_VERSION.into()
}
fn kind() -> String {
    "Cluster".into()
}
fn default_name() -> String {
    "pangaea".into()
}
fn default_pools() -> Vec<Pool> {
    vec![Pool::default()]
}
fn default_templates_dir() -> String {
    "templates".into()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        serde_norway::from_str("{}").expect("defaults deserialize")
    }
}

impl ClusterConfig {
    /// The pool that makes node `name` (its index in `pools`) and the node's number in it:
    /// `POOL-N` with N from 1 to the pool's count, written without leading zeros.
    pub fn pool_of(&self, name: &str) -> Option<(usize, u32)> {
        self.pools.iter().enumerate().find_map(|(i, p)| {
            let number = name.strip_prefix(p.name.as_str())?.strip_prefix('-')?;
            if number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u32 = number.parse().ok()?;
            (1..=p.count).contains(&n).then_some((i, n))
        })
    }

    /// Whether `removedNodes` lists node `name`.
    pub fn is_removed(&self, name: &str) -> bool {
        self.removed_nodes.iter().any(|r| r == name)
    }

    /// The nodes the pools make, for messages: `cp-1..cp-3, w-1`.
    fn pool_node_ranges(&self) -> String {
        let ranges: Vec<String> = self
            .pools
            .iter()
            .filter(|p| p.count > 0)
            .map(|p| match p.count {
                1 => format!("{}-1", p.name),
                n => format!("{0}-1..{0}-{n}", p.name),
            })
            .collect();
        if ranges.is_empty() {
            "no nodes".into()
        } else {
            ranges.join(", ")
        }
    }
}

/// A loaded configuration: where it came from, and its text (for locating errors).
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The configuration, validated.
    pub config: ClusterConfig,
    /// The directory relative paths in the config refer to.
    pub dir: PathBuf,
    /// The file, as named in errors.
    pub file: String,
    /// Its text (empty for a missing file).
    pub text: String,
    /// What validation allowed but warns about.
    pub warnings: Vec<Warning>,
}

impl Loaded {
    /// Loads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ConfigError {
                    file,
                    location: None,
                    message: format!("cannot read: {e}"),
                });
            }
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        Loaded::parse(&file, &text, &dir)
    }

    /// Parses and validates `text` (named `file` in errors; relative paths under `dir`); an
    /// empty text means all defaults.
    pub fn parse(file: &str, text: &str, dir: &Path) -> Result<Loaded, ConfigError> {
        let config: ClusterConfig = if text.trim().is_empty() {
            ClusterConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|e| ConfigError {
                file: file.into(),
                location: e.location().map(|l| (l.line(), l.column())),
                message: e
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            })?
        };
        let mut loaded = Loaded {
            config,
            dir: dir.to_owned(),
            file: file.into(),
            text: text.into(),
            warnings: vec![],
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// This configuration with `name` added to `removedNodes`, validated as if the file said
    /// so (errors locate in the current text): what [`crate::config_edit`] checks its edit of
    /// the text against.
    /// This configuration with pool `pool` (which must exist) at `count` nodes, validated.
    pub(crate) fn with_pool_count(&self, pool: &str, count: u32) -> Result<Loaded, ConfigError> {
        let mut next = Loaded {
            warnings: vec![],
            ..self.clone()
        };
        if let Some(p) = next.config.pools.iter_mut().find(|p| p.name == pool) {
            p.count = count;
        }
        next.validate()?;
        Ok(next)
    }

    pub(crate) fn with_artifact_source(
        &self,
        source: ArtifactSource,
    ) -> Result<Loaded, ConfigError> {
        let mut next = Loaded {
            warnings: vec![],
            ..self.clone()
        };
        next.config.artifact_source = source;
        next.validate()?;
        Ok(next)
    }

    pub(crate) fn with_removed_node(&self, name: NodeName) -> Result<Loaded, ConfigError> {
        let mut next = Loaded {
            warnings: vec![],
            ..self.clone()
        };
        next.config.removed_nodes.push(name);
        next.validate()?;
        Ok(next)
    }

    fn err(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            location: locate(&self.text, path),
            message: message.into(),
        }
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.api_version != API_VERSION {
            return Err(self.err(
                &["apiVersion"],
                format!("apiVersion must be {API_VERSION}, not {:?}", c.api_version),
            ));
        }
        if c.kind != "Cluster" {
            return Err(self.err(&["kind"], format!("kind must be Cluster, not {:?}", c.kind)));
        }
        if let Err(e) = NodeName::try_from(c.name.as_str()) {
            return Err(self.err(&["name"], format!("cluster name: {e}")));
        }
        let nets = [
            ("nodes", c.network.nodes),
            ("pods", c.network.pods),
            ("services", c.network.services),
        ];
        for (i, (a, ca)) in nets.iter().enumerate() {
            for (b, cb) in &nets[i + 1..] {
                if ca.overlaps(cb) {
                    // Point at whichever of the two the file sets (the other may be a default).
                    let location = crate::locate::locate_exact(&self.text, &["network", b])
                        .or_else(|| crate::locate::locate_exact(&self.text, &["network", a]))
                        .or_else(|| locate(&self.text, &["network"]));
                    return Err(ConfigError {
                        file: self.file.clone(),
                        location,
                        message: format!(
                            "network.{b} {cb} overlaps network.{a} {ca}; choose disjoint ranges"
                        ),
                    });
                }
            }
        }
        if c.network.services.size() < 16 {
            return Err(self.err(
                &["network", "services"],
                "network.services is too small: use at least a /28",
            ));
        }
        if c.pools.is_empty() {
            return Err(self.err(&["pools"], "at least one pool is needed"));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut total = 0u64;
        for (i, p) in c.pools.iter().enumerate() {
            let idx = i.to_string();
            // The pool's nodes are named `<pool>-<n>`; the longest of those must be a
            // valid node name too.
            let longest = format!("{}-{}", p.name, p.count.max(1));
            if let Err(e) =
                NodeName::try_from(p.name.as_str()).and_then(|_| NodeName::try_from(longest))
            {
                return Err(self.err(&["pools", &idx, "name"], format!("pool name: {e}")));
            }
            if !names.insert(p.name.clone()) {
                return Err(self.err(
                    &["pools", &idx, "name"],
                    format!("pool {:?} appears twice", p.name),
                ));
            }
            if p.roles.is_empty() {
                return Err(self.err(
                    &["pools", &idx, "roles"],
                    format!(
                        "pool {:?} has no roles; give it etcd, control-plane and/or worker",
                        p.name
                    ),
                ));
            }
            let memory = self.pool_memory(i)?;
            if let Err(e) = crate::budget::Budget::for_roles(memory, &p.roles) {
                return Err(self.err(&["pools", &idx], format!("pool {:?}: {e}", p.name)));
            }
            for (j, d) in p.disks.iter().enumerate() {
                if !d.mount.starts_with('/') {
                    return Err(self.err(
                        &["pools", &idx, "disks", &j.to_string(), "mount"],
                        format!("disk {:?}: mount must be an absolute path", d.name),
                    ));
                }
            }
            total += p.count as u64;
        }
        // Node addresses start at .11 of the node network (.1 is the host's bridge); removed
        // nodes keep theirs (unused), so they count here.
        if total + 11 >= c.network.nodes.size() {
            return Err(self.err(
                &["network", "nodes"],
                format!(
                    "network.nodes {} is too small for {total} nodes",
                    c.network.nodes
                ),
            ));
        }
        // How many nodes of each pool `removedNodes` leaves out.
        let mut removed = vec![0u64; c.pools.len()];
        let mut listed = std::collections::BTreeSet::new();
        for (j, name) in c.removed_nodes.iter().enumerate() {
            let at = ["removedNodes", &j.to_string()];
            let Some((i, _)) = c.pool_of(name) else {
                return Err(self.err(
                    &at,
                    format!(
                        "removedNodes: {name} is not a node of any pool (pools make {})",
                        c.pool_node_ranges()
                    ),
                ));
            };
            if !listed.insert(name) {
                return Err(self.err(&at, format!("removedNodes: {name} is listed twice")));
            }
            removed[i] += 1;
        }
        // Members with role `r`: as the pools make them, and those `removedNodes` keeps.
        let count = |r: Role| {
            c.pools
                .iter()
                .zip(&removed)
                .filter(|(p, _)| p.roles.contains(&r))
                .fold((0u64, 0u64), |(made, kept), (p, gone)| {
                    (made + p.count as u64, kept + p.count as u64 - gone)
                })
        };
        let (etcd_made, etcd) = count(Role::Etcd);
        if etcd_made == 0 {
            return Err(self.err(
                &["pools"],
                "no node has the etcd role: the cluster has no datastore",
            ));
        }
        if etcd == 0 {
            return Err(self.err(
                &["removedNodes"],
                "removedNodes removes every node with the etcd role: the cluster would have no datastore; keep at least one",
            ));
        }
        let (control_plane_made, control_plane) = count(Role::ControlPlane);
        if control_plane_made == 0 {
            return Err(self.err(&["pools"], "no node has the control-plane role"));
        }
        if control_plane == 0 {
            return Err(self.err(
                &["removedNodes"],
                "removedNodes removes every node with the control-plane role: keep at least one",
            ));
        }
        // Refused as the pools make it; allowed (with a warning) when removals lead there,
        // since the operator got there on purpose (`pangaea-ctl node remove --force`).
        if etcd_made == 2 {
            return Err(self.err(&["pools"], "2 etcd members cannot keep quorum when either fails (quorum is 2 of 2): use 1 for a test cluster or 3 for high availability"));
        }
        if etcd == 2 {
            self.warnings.push(Warning {
                location: locate(&self.text, &["removedNodes"]),
                message: "removedNodes leaves 2 etcd members, which cannot keep quorum when either fails (quorum is 2 of 2): add an etcd node, or remove one more for a test cluster".into(),
            });
        } else if etcd % 2 == 0 {
            self.warnings.push(Warning {
                location: locate(&self.text, &["pools"]),
                message: format!("{etcd} etcd members tolerate no more failures than {} (quorum {} of {etcd}); an odd number is better", etcd - 1, etcd / 2 + 1),
            });
        }
        for (name, e) in &c.expose {
            if !EXPOSABLE.contains(&name.as_str()) {
                return Err(self.err(
                    &["expose", name],
                    format!(
                        "cannot expose {name:?}: exposable services are {}",
                        EXPOSABLE.join(", ")
                    ),
                ));
            }
            if let Some(p) = e.node_port
                && !(30000..=32767).contains(&p)
            {
                return Err(self.err(
                    &["expose", name, "nodePort"],
                    format!("nodePort {p} is outside the NodePort range 30000-32767"),
                ));
            }
            if e.load_balancer_ip.is_some() && e.kind != ExposeType::LoadBalancer {
                return Err(self.err(
                    &["expose", name, "loadBalancerIP"],
                    "loadBalancerIP needs type: LoadBalancer",
                ));
            }
        }
        if let Provider::Vagrant(v) = &c.provider {
            let mut guests = std::collections::BTreeSet::new();
            for (i, f) in v.synced_folders.iter().enumerate() {
                let idx = i.to_string();
                let err = |key: &str, message: String| {
                    Err(self.err(&["provider", "syncedFolders", &idx, key], message))
                };
                if f.host.trim().is_empty() {
                    return err("host", "a synced folder needs a host folder".into());
                }
                let guest = Path::new(&f.guest);
                if !guest.is_absolute() || guest.parent().is_none() {
                    return err(
                        "guest",
                        format!(
                            "guest {:?} must be an absolute path below / (for example /srv/src)",
                            f.guest
                        ),
                    );
                }
                if !guests.insert(guest.components().collect::<PathBuf>()) {
                    return err(
                        "guest",
                        format!("guest {:?} is the guest of two synced folders", f.guest),
                    );
                }
            }
        }
        if let Err(e) =
            crate::artifact_set::ArtifactSet::defaults().with_overrides(&self.file, &c.artifacts)
        {
            return Err(self.err(&["artifacts"], e.to_string()));
        }
        Ok(())
    }

    /// Memory of pool `i`: `memoryMiB`, else its machine type's.
    pub fn pool_memory(&self, i: usize) -> Result<u32, ConfigError> {
        let p = &self.config.pools[i];
        match (p.memory_mib, &p.machine_type) {
            (Some(m), _) => Ok(m),
            (None, Some(t)) => self
                .config
                .provider
                .kind()
                .machine_memory_mib(t)
                .ok_or_else(|| {
                    self.err(
                        &["pools", &i.to_string(), "machineType"],
                        format!("unknown machine type {t:?}: set memoryMiB for this pool"),
                    )
                }),
            (None, None) => Ok(2048),
        }
    }

    /// The artifact set with the configuration's overrides applied.
    pub fn artifact_set(&self) -> crate::artifact_set::ArtifactSet {
        crate::artifact_set::ArtifactSet::defaults()
            .with_overrides(&self.file, &self.config.artifacts)
            .expect("validated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::parse("pangaea.yaml", text, Path::new("."))
    }

    #[test]
    fn empty_means_a_three_node_local_cluster() {
        let l = parse("").unwrap();
        assert_eq!(l.config.pools[0].count, 3);
        assert_eq!(l.config.pools[0].roles.len(), 3);
        assert_eq!(l.config.provider, Provider::Local);
        assert!(l.warnings.is_empty());
        assert_eq!(
            parse("apiVersion: pangaea.dev/v1alpha1\nkind: Cluster\n")
                .unwrap()
                .config,
            l.config
        );
    }

    #[test]
    fn malformed_yaml_unknown_fields_and_wrong_types_have_locations() {
        let e = parse("name: a\npools: [\n").unwrap_err();
        assert_eq!(e.file, "pangaea.yaml");
        assert!(e.location.is_some(), "{e}");
        let e = parse("name: a\nnetwork:\n  podz: 10.0.0.0/8\n").unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(3), "{e}");
        assert!(e.message.contains("podz"), "{e}");
        let e = parse("pools:\n  - name: a\n    count: many\n").unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(3), "{e}");
        assert!(e.to_string().starts_with("pangaea.yaml:3:"), "{e}");
    }

    #[test]
    fn invalid_and_overlapping_cidrs_are_refused() {
        let e = parse("network:\n  pods: 10.244.0.1/16\n").unwrap_err();
        assert!(e.message.contains("host bits"), "{e}");
        assert_eq!(e.location.map(|l| l.0), Some(2));
        let e = parse("network:\n  pods: 10.96.0.0/16\n  services: 10.96.0.0/12\n").unwrap_err();
        assert!(e.message.contains("overlaps"), "{e}");
        assert_eq!(e.location.map(|l| l.0), Some(3), "{e}");
    }

    #[test]
    fn etcd_member_counts() {
        let e = parse("pools:\n  - name: a\n    count: 2\n").unwrap_err();
        assert!(e.message.contains("cannot keep quorum"), "{e}");
        let l = parse("pools:\n  - name: a\n    count: 4\n").unwrap();
        assert!(
            l.warnings[0].message.contains("odd number"),
            "{:?}",
            l.warnings
        );
        let e = parse("pools:\n  - name: a\n    roles: [worker]\n").unwrap_err();
        assert!(e.message.contains("no node has the etcd role"), "{e}");
    }

    #[test]
    fn a_profile_that_cannot_fit_its_roles_is_refused_with_the_breakdown() {
        let e = parse("pools:\n  - name: small\n    machineType: e2-micro\n").unwrap_err();
        assert!(e.message.contains("1024 MiB cannot hold"), "{e}");
        assert!(e.message.contains("etcd 192"), "{e}");
        assert_eq!(e.location.map(|l| l.0), Some(2), "{e}");
        let e = parse("pools:\n  - name: x\n    machineType: z9-huge\n").unwrap_err();
        assert!(e.message.contains("unknown machine type"), "{e}");
        assert!(parse("pools:\n  - name: cp\n    count: 3\n    roles: [etcd, control-plane]\n  - name: w\n    count: 5\n    roles: [worker]\n    machineType: e2-micro\n").is_ok());
    }

    #[test]
    fn a_synced_folder_needs_an_absolute_guest_path_of_its_own() {
        let folders = |list: &str| {
            parse(&format!(
                "provider:\n  type: vagrant\n  syncedFolders:\n{list}"
            ))
        };
        assert!(
            folders("    - {host: ./src, guest: /srv/src}\n    - {host: ./src, guest: /srv/b}\n")
                .is_ok()
        );
        let e = folders("    - host: ./src\n      guest: srv/src\n").unwrap_err();
        assert_eq!(e.location, Some((5, 7)), "{e}");
        assert!(
            e.message
                .contains("guest \"srv/src\" must be an absolute path"),
            "{e}"
        );
        let e = folders("    - {host: ./src, guest: /}\n").unwrap_err();
        assert!(e.message.contains("below /"), "{e}");
        let e =
            folders("    - host: a\n      guest: /srv/a\n    - host: b\n      guest: /srv/a/\n")
                .unwrap_err();
        assert_eq!(e.location, Some((7, 7)), "{e}");
        assert!(e.message.contains("the guest of two synced folders"), "{e}");
        let e = folders("    - {host: '', guest: /srv/a}\n").unwrap_err();
        assert!(e.message.contains("needs a host folder"), "{e}");
    }

    #[test]
    fn a_provider_field_of_another_type_is_refused_where_it_is() {
        let e = parse("name: demo\nprovider: {type: local, spot: true}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:2:25: provider: `spot` is not valid for provider type local; only provider type gce accepts it"
        );
        let e = parse("provider:\n  type: vagrant\n  project: p\n").unwrap_err();
        assert_eq!(e.location, Some((3, 3)), "{e}");
        let l = parse("provider:\n  type: gce\n  project: p\n").unwrap();
        assert_eq!(l.config.provider.kind(), crate::provider::ProviderKind::Gce);
    }

    #[test]
    fn expose_is_checked() {
        assert!(parse("expose:\n  grafana:\n    type: NodePort\n    nodePort: 30300\n").is_ok());
        let e = parse("expose:\n  grafana:\n    type: NodePort\n    nodePort: 80\n").unwrap_err();
        assert!(e.message.contains("30000-32767"), "{e}");
        let e = parse("expose:\n  nginx:\n    type: NodePort\n").unwrap_err();
        assert!(e.message.contains("cannot expose"), "{e}");
    }

    #[test]
    fn removed_nodes_must_be_nodes_of_the_pools() {
        let l = parse("removedNodes: [node-2]\n").unwrap();
        assert_eq!(
            l.config.removed_nodes,
            ["node-2"].map(|n| NodeName::try_from(n).unwrap())
        );
        // Only removedNodes: still the default pools.
        assert_eq!(l.config.pools, default_pools());
        assert_eq!(
            parse("removedNodes:\n").unwrap().config,
            parse("").unwrap().config
        );

        let e = parse("name: demo\nremovedNodes: [node-2, node-9]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:2:1: removedNodes: node-9 is not a node of any pool (pools make node-1..node-3)"
        );
        let e = parse("pools:\n  - name: cp\n    count: 1\n  - name: w\n    count: 2\n    roles: [worker]\n  - name: spare\n    count: 0\nremovedNodes:\n  - w-1\n  - cp-01\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:11:5: removedNodes: cp-01 is not a node of any pool (pools make cp-1, w-1..w-2)"
        );
        let e = parse("removedNodes:\n  - node-1\n  - node-1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:3:5: removedNodes: node-1 is listed twice"
        );
        let e = parse("removedNodes: [Node-1]\n").unwrap_err();
        assert!(e.message.contains("invalid node name"), "{e}");
        assert_eq!(e.location.map(|l| l.0), Some(1), "{e}");
    }

    #[test]
    fn pool_of_finds_the_pool_and_number() {
        let c = parse("pools:\n  - name: a\n    count: 12\n  - name: a-1\n    count: 2\n")
            .unwrap()
            .config;
        assert_eq!(c.pool_of("a-12"), Some((0, 12)));
        assert_eq!(c.pool_of("a-1-2"), Some((1, 2)));
        assert_eq!(c.pool_of("a-1"), Some((0, 1)));
        for no in ["a-13", "a-0", "a-01", "a-", "a", "a-1-3", "b-1", "a-+1"] {
            assert_eq!(c.pool_of(no), None, "{no}");
        }
    }

    #[test]
    fn removing_every_etcd_or_control_plane_node_is_refused() {
        let pools = "pools:\n  - name: e\n    count: 1\n    roles: [etcd]\n  - name: cp\n    count: 2\n    roles: [control-plane, worker]\n";
        let e = parse(&format!("{pools}removedNodes: [e-1]\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:8:1: removedNodes removes every node with the etcd role: the cluster would have no datastore; keep at least one"
        );
        assert!(parse(&format!("{pools}removedNodes: [cp-2]\n")).is_ok());
        let e = parse(&format!("{pools}removedNodes:\n  - cp-2\n  - cp-1\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pangaea.yaml:8:1: removedNodes removes every node with the control-plane role: keep at least one"
        );
        // The pools' own role checks come first.
        let e = parse("pools:\n  - name: a\n    roles: [etcd, worker]\nremovedNodes: [a-1]\n")
            .unwrap_err();
        assert_eq!(e.message, "no node has the control-plane role");
    }

    #[test]
    fn two_etcd_members_are_refused_from_the_pools_but_not_after_removals() {
        let l = parse("removedNodes: [node-3]\n").unwrap();
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(
            l.warnings[0]
                .message
                .contains("removedNodes leaves 2 etcd members")
        );
        assert_eq!(l.warnings[0].location, Some((1, 1)));
        // A removal down to 1 member is quiet; 2 members from the pools stay refused.
        assert!(
            parse("removedNodes: [node-3, node-1]\n")
                .unwrap()
                .warnings
                .is_empty()
        );
        let e = parse("pools:\n  - name: a\n    count: 2\nremovedNodes: [a-2]\n").unwrap_err();
        assert!(e.message.contains("cannot keep quorum"), "{e}");
        // 4 made, 3 kept: no even-count warning.
        let l = parse("pools:\n  - name: a\n    count: 4\nremovedNodes: [a-4]\n").unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        // 5 made, 4 kept: the even-count warning is about the members kept.
        let l = parse("pools:\n  - name: a\n    count: 5\nremovedNodes: [a-4]\n").unwrap();
        assert!(
            l.warnings[0].message.starts_with("4 etcd members"),
            "{:?}",
            l.warnings
        );
    }
}
