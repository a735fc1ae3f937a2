//! The cluster as the templates see it: every node expanded from its pool with a stable name,
//! address, roles and memory budget, and the cluster-wide values derived once (service IP,
//! DNS IP, API endpoint).

use crate::budget::Budget;
use crate::config::{Addons, Disk, Loaded, NfsMount, Registry, UserSecret};
use crate::expose::{Expose, ExposeType};
use crate::provider::ProviderKind;
use crate::roles::Role;
use pangaea_core::NodeName;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// First host number of node addresses in the node network (.1 is the host's bridge).
pub const FIRST_NODE_HOST: u64 = 11;

/// One node; templates see it as `node`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeModel {
    /// `POOL-N`, N from 1: stable as long as pools keep their order and names (a removed
    /// node's number is not reused).
    pub name: NodeName,
    /// The pool it comes from.
    pub pool: String,
    /// Its address in the node network, in order across pools from [`FIRST_NODE_HOST`],
    /// counting the nodes of `removedNodes` (so removing a node moves no other).
    pub address: Ipv4Addr,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Has the etcd role (for templates, which cannot search a list).
    pub is_etcd: bool,
    /// Has the control-plane role.
    pub is_control_plane: bool,
    /// Has the worker role.
    pub is_worker: bool,
    /// Its memory, MiB.
    pub memory_mib: u32,
    /// Its CPUs.
    pub cpus: u32,
    /// Its zone, when the provider spreads nodes over zones (in turn, across all nodes, the
    /// removed ones included, like the address).
    pub zone: Option<String>,
    /// Its position across pools, removed nodes included: what its address and zone are
    /// chosen by (a provider that learns the zones later takes them in turn by it too).
    #[serde(skip)]
    pub position: u64,
    /// Its Kubernetes labels.
    pub labels: BTreeMap<String, String>,
    /// Its extra disks.
    pub disks: Vec<NodeDisk>,
    /// Its memory, shared out among the components its roles run.
    pub budget: Budget,
}

/// A disk of a node: as configured, with its block device resolved once here.
#[derive(Clone, Debug, Serialize)]
pub struct NodeDisk {
    /// The disk as `pangaea.yaml` gives it; templates see exactly these fields (`device` is
    /// null when the configuration leaves it to the provider).
    #[serde(flatten)]
    pub config: Disk,
    /// The block device to format and mount: the configured one, else the provider's
    /// default ([`ProviderKind::default_disk_device`]).
    #[serde(skip)]
    pub device: String,
}

impl NodeModel {
    /// Whether the node has role `r`.
    pub fn has(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }
}

/// The cluster; templates see it as `cluster` (without the nodes, which are `nodes`).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterModel {
    /// The cluster's name.
    pub name: String,
    /// The provider type; templates see it as written in `pangaea.yaml` (`local`,
    /// `vagrant`, `gce`).
    pub provider: ProviderKind,
    /// The cluster DNS domain.
    pub domain: String,
    /// Kubernetes version.
    pub kubernetes_version: String,
    /// etcd version.
    pub etcd_version: String,
    /// The node network, `a.b.c.d/n`.
    pub node_cidr: String,
    /// The pod network.
    pub pod_cidr: String,
    /// The service network.
    pub service_cidr: String,
    /// First address of the service network: the `kubernetes` service.
    pub service_ip: Ipv4Addr,
    /// Tenth address of the service network: cluster DNS.
    pub dns_ip: Ipv4Addr,
    /// Where clients outside the control plane reach the API.
    pub api_endpoint: String,
    /// The API's external address, where the provider reserves one (GCE's static address on
    /// the [`ClusterModel::api_node`]): every API server certificate names it, so that it
    /// may move between control-plane nodes. Not in the configuration: the controller sets
    /// it from its state ([`ClusterModel::build`] leaves it `None`).
    pub api_external: Option<Ipv4Addr>,
    /// Not serialized: templates see the nodes as the top-level `nodes` list.
    #[serde(skip)]
    pub nodes: Vec<NodeModel>,
    /// The add-ons, as configured.
    pub addons: Addons,
    /// The private registry, as configured.
    pub registry: Option<Registry>,
    /// Secrets made from files, as configured.
    pub secrets: Vec<UserSecret>,
    /// NFS mounts, as configured.
    pub nfs: Vec<NfsMount>,
    /// How add-on services are exposed, as configured.
    pub expose: BTreeMap<String, Expose>,
    /// How services meant to be reachable from outside the cluster are exposed when
    /// `expose` leaves them at ClusterIP: the provider's
    /// [`ProviderKind::external_exposure`]. Not serialized: templates see the decision in the
    /// add-on parameters.
    #[serde(skip)]
    pub external_exposure: ExposeType,
}

/// The first control-plane node of `nodes` ([`ClusterModel::api_node`]).
fn first_control_plane(nodes: &[NodeModel]) -> Option<&NodeModel> {
    nodes.iter().find(|n| n.is_control_plane)
}

impl ClusterModel {
    /// Expands a validated configuration (it panics on what validation refuses). The nodes
    /// of `removedNodes` are left out; the position of every node, which gives its address
    /// and zone, counts them all, so the others are where they would be without removals.
    pub fn build(loaded: &Loaded) -> ClusterModel {
        let c = &loaded.config;
        let provider = c.provider.kind();
        let zones = c.provider.zones();
        let mut nodes = Vec::new();
        // Position of the next node across pools, removed nodes included.
        let mut global = 0u64;
        for (i, p) in c.pools.iter().enumerate() {
            let memory = loaded.pool_memory(i).expect("validated");
            let budget = Budget::for_roles(memory, &p.roles).expect("validated");
            for n in 0..p.count {
                let position = global;
                global += 1;
                let name = NodeName::try_from(format!("{}-{}", p.name, n + 1))
                    .expect("validated: pool names leave room for the node number");
                if c.is_removed(&name) {
                    continue;
                }
                let zone = crate::provider::in_turn(zones, position).cloned();
                nodes.push(NodeModel {
                    name,
                    pool: p.name.clone(),
                    address: c
                        .network
                        .nodes
                        .nth(FIRST_NODE_HOST + position)
                        .expect("validated size"),
                    roles: p.roles.clone(),
                    is_etcd: p.roles.contains(&Role::Etcd),
                    is_control_plane: p.roles.contains(&Role::ControlPlane),
                    is_worker: p.roles.contains(&Role::Worker),
                    memory_mib: memory,
                    cpus: p.cpus.unwrap_or(2),
                    zone,
                    position,
                    labels: p.labels.clone(),
                    disks: p
                        .disks
                        .iter()
                        .enumerate()
                        .map(|(i, d)| NodeDisk {
                            device: d
                                .device
                                .clone()
                                .unwrap_or_else(|| provider.default_disk_device(&d.name, i)),
                            config: d.clone(),
                        })
                        .collect(),
                    budget: budget.clone(),
                });
            }
        }
        let first_cp = first_control_plane(&nodes).expect("validated").address;
        ClusterModel {
            name: c.name.clone(),
            provider,
            domain: c.network.cluster_domain.clone(),
            kubernetes_version: c.versions.kubernetes.clone(),
            etcd_version: c.versions.etcd.clone(),
            node_cidr: c.network.nodes.to_string(),
            pod_cidr: c.network.pods.to_string(),
            service_cidr: c.network.services.to_string(),
            service_ip: c.network.services.nth(1).expect("validated size"),
            dns_ip: c.network.services.nth(10).expect("validated size"),
            api_endpoint: format!("https://{first_cp}:{}", crate::node::API_PORT),
            api_external: None,
            nodes,
            addons: c.addons.clone(),
            registry: c.registry.clone(),
            secrets: c.secrets.clone(),
            nfs: c.nfs.clone(),
            expose: c.expose.clone(),
            external_exposure: provider.external_exposure(),
        }
    }

    /// The node that stands for the API where one address must (`api_endpoint`, the API's
    /// external address): the first control-plane node of the configuration, removed ones
    /// left out.
    pub fn api_node(&self) -> &NodeModel {
        first_control_plane(&self.nodes).expect("validated: a control-plane node")
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeModel> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The nodes that have role `r`, in order.
    pub fn with_role(&self, r: Role) -> impl Iterator<Item = &NodeModel> {
        self.nodes.iter().filter(move |n| n.has(r))
    }

    /// etcd's `--initial-cluster` for the members that found the cluster: every etcd node,
    /// `name=https://address:2380,…`.
    pub fn etcd_initial_cluster(&self) -> String {
        self.with_role(Role::Etcd)
            .map(|n| crate::helpers::etcd_initial_cluster_entry(&n.name, n.address))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cluster_has_three_all_role_nodes() {
        let l = Loaded::parse("p.yaml", "", std::path::Path::new(".")).unwrap();
        let m = ClusterModel::build(&l);
        let names: Vec<_> = m.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3"]);
        assert_eq!(m.nodes[0].address.to_string(), "10.213.0.11");
        assert_eq!(m.service_ip.to_string(), "10.96.0.1");
        assert_eq!(m.dns_ip.to_string(), "10.96.0.10");
        assert_eq!(m.api_endpoint, "https://10.213.0.11:6443");
        assert!(
            m.nodes
                .iter()
                .all(|n| n.is_etcd && n.is_control_plane && n.is_worker)
        );
    }

    #[test]
    fn pools_and_zones() {
        let l = Loaded::parse("p.yaml", "provider:\n  type: gce\n  zones: [a, b, c]\npools:\n  - name: cp\n    roles: [etcd, control-plane]\n    machineType: e2-medium\n  - name: w\n    count: 4\n    roles: [worker]\n    machineType: e2-small\n", std::path::Path::new(".")).unwrap();
        let m = ClusterModel::build(&l);
        assert_eq!(m.nodes.len(), 7);
        assert_eq!(m.nodes[3].name, "w-1");
        assert_eq!(m.nodes[3].zone.as_deref(), Some("a"));
        assert_eq!(m.nodes[4].zone.as_deref(), Some("b"));
        assert_eq!(m.with_role(Role::Etcd).count(), 3);
        assert_eq!(m.nodes[0].memory_mib, 4096);
        assert_eq!(m.provider, ProviderKind::Gce);
        assert_eq!(m.external_exposure, ExposeType::LoadBalancer);
    }

    #[test]
    fn disk_devices_are_resolved_once_by_the_provider() {
        let disks = "pools:\n  - name: a\n    count: 1\n    disks:\n      - {name: data, sizeGiB: 1, mount: /data}\n      - {name: logs, sizeGiB: 1, mount: /logs}\n      - {name: own, sizeGiB: 1, mount: /own, device: /dev/sdz}\n";
        let devices = |provider: &str| {
            let text = format!("{provider}{disks}");
            let l = Loaded::parse("p.yaml", &text, std::path::Path::new(".")).unwrap();
            let m = ClusterModel::build(&l);
            m.nodes[0]
                .disks
                .iter()
                .map(|d| d.device.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(devices(""), ["/dev/vdb", "/dev/vdc", "/dev/sdz"]);
        assert_eq!(
            devices("provider: {type: gce}\n"),
            [
                "/dev/disk/by-id/google-data",
                "/dev/disk/by-id/google-logs",
                "/dev/sdz"
            ]
        );
        // Templates still see the disk as configured.
        let l = Loaded::parse("p.yaml", disks, std::path::Path::new(".")).unwrap();
        let m = ClusterModel::build(&l);
        let v = serde_json::to_value(&m.nodes[0].disks[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "data", "sizeGiB": 1, "mount": "/data", "device": null})
        );
        assert_eq!(serde_json::to_value(&m).unwrap()["provider"], "local");
        assert_eq!(m.external_exposure, ExposeType::ClusterIP);
    }

    #[test]
    fn removed_nodes_leave_the_others_their_names_addresses_and_zones() {
        let pools = "provider:\n  type: gce\n  zones: [a, b]\npools:\n  - name: node\n    count: 3\n    roles: [etcd, control-plane, worker]\n    memoryMiB: 2048\n  - name: w\n    count: 2\n    roles: [worker]\n    memoryMiB: 2048\n";
        let model = |removed: &str| {
            let text = format!("{pools}removedNodes: [{removed}]\n");
            ClusterModel::build(&Loaded::parse("p.yaml", &text, std::path::Path::new(".")).unwrap())
        };
        let all = model("");
        let less = model("node-2");
        let names: Vec<_> = less.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-3", "w-1", "w-2"]);
        assert_eq!(
            less.node("node-3").unwrap().address.to_string(),
            "10.213.0.13"
        );
        for n in &less.nodes {
            let was = all.node(&n.name).unwrap();
            assert_eq!((n.address, &n.zone), (was.address, &was.zone), "{}", n.name);
        }
        // The API endpoint is the first control-plane node that is kept.
        assert_eq!(model("node-1").api_endpoint, "https://10.213.0.12:6443");
    }
}
