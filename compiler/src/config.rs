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
//! addons: { monitoring: { enabled: true } }
//! ```
//!
//! Every field has a default, so an empty or missing file is a valid 3-node local cluster.
//! Unknown fields are refused; every error names the file, line and column.

use crate::artifact_set::{ArtifactOverride, ArtifactSource};
use crate::cidr::Cidr;
use crate::expose::{EXPOSABLE, Expose, ExposeType};
use crate::locate::locate;
use crate::provider::Provider;
use crate::roles::Role;
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
    /// Block device on the node (default: the provider's, see
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

/// The whole of `pangaea.yaml`, as written (validation is [`Loaded`]'s).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// `apiVersion`: must be [`API_VERSION`].
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
        if let Err(e) = pangaea_core::NodeName::try_from(c.name.as_str()) {
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
            if let Err(e) = pangaea_core::NodeName::try_from(p.name.as_str())
                .and_then(|_| pangaea_core::NodeName::try_from(longest))
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
        // Node addresses start at .11 of the node network (.1 is the host's bridge).
        if total + 11 >= c.network.nodes.size() {
            return Err(self.err(
                &["network", "nodes"],
                format!(
                    "network.nodes {} is too small for {total} nodes",
                    c.network.nodes
                ),
            ));
        }
        let count = |r: Role| {
            c.pools
                .iter()
                .filter(|p| p.roles.contains(&r))
                .map(|p| p.count as u64)
                .sum::<u64>()
        };
        let etcd = count(Role::Etcd);
        if etcd == 0 {
            return Err(self.err(
                &["pools"],
                "no node has the etcd role: the cluster has no datastore",
            ));
        }
        if count(Role::ControlPlane) == 0 {
            return Err(self.err(&["pools"], "no node has the control-plane role"));
        }
        if etcd == 2 {
            return Err(self.err(&["pools"], "2 etcd members cannot keep quorum when either fails (quorum is 2 of 2): use 1 for a test cluster or 3 for high availability"));
        }
        if etcd % 2 == 0 {
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
}
