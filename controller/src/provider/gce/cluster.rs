//! The GCE provider: a cluster's nodes as Compute Engine instances, made with the
//! [`Compute`] client.
//!
//! What it creates in the project, each marked as the cluster's (instances by the
//! [`CLUSTER_LABEL`] label, the rest by their description) so that `down --purge` deletes
//! exactly that:
//!
//! - a VPC network `pangaea-CLUSTER` in custom subnet mode, and in the region a subnetwork
//!   with the cluster's node network (`network.nodes`) as its range, so that each instance
//!   gets the internal address the compiler gave its node (certificates, etcd peer URLs and
//!   the API endpoint are made for those addresses);
//! - two firewall rules: everything between the cluster's nodes, and the API server's port
//!   from anywhere;
//! - a static external address for the API, `pangaea-CLUSTER-api`, held by the API node
//!   (the first control-plane node) and moved by `prepare` when another node takes that
//!   place; every API server certificate names it (`provider.staticApiAddress`, default
//!   on; kept by `down`, released by `down --purge`);
//! - an instance per node, named `CLUSTER-NODE`, in its zone (the configured zones in turn,
//!   else the region's), moved to another zone of the region when its own has no capacity;
//!   cloud-init's user-data in its metadata; its data disks created with it, attached under
//!   their name, and deleted with the node.
//!
//! Nodes reach the controller through reverse SSH tunnels that its daemon keeps to their
//! external addresses ([`crate::tunnel`]; a fourth firewall rule opens SSH), or, with
//! `provider.advertiseAddress`, directly at that address (ports 7443 and 7444): an address
//! of this machine, or one forwarded to it. See docs/providers/gce.md.

use super::compute::{
    Allow, CLUSTER_LABEL, Compute, ComputeError, DataDisk, FirewallSpec, InstanceSpec, Nic,
};
use crate::provider::{
    ControllerEndpoint, NodeInfo, NodeSpec, NodeState, Progress, Provider, ProviderError,
    TunnelHost,
};
use async_trait::async_trait;
use pangaea_compiler::provider::gce;
use pangaea_core::NodeName;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// The label that names the node an instance is (its instance name carries the cluster's
/// name too).
pub const NODE_LABEL: &str = "pangaea-node";

/// The name of a node's instance.
pub fn instance_name(cluster: &str, node: &NodeName) -> String {
    format!("{cluster}-{node}")
}

/// The name of a node's data disk in its zone: its instance's name, then the disk's, so
/// that [`Gce::delete`] knows the node's disks by their names.
pub fn data_disk_name(cluster: &str, node: &NodeName, disk: &str) -> String {
    format!("{}-{disk}", instance_name(cluster, node))
}

/// The image nodes boot: Ubuntu LTS ships cloud-init.
pub const IMAGE: (&str, &str) = ("ubuntu-2404-lts-amd64", "ubuntu-os-cloud");

/// How long one operation (an insert, a stop) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);

/// What the configuration says of one node.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    /// Its position across pools: takes the region's zones in turn when none are configured.
    pub position: u64,
    /// Its configured zone.
    pub zone: Option<String>,
    /// Its machine type.
    pub machine_type: String,
    /// Its data disks.
    pub disks: Vec<DataDisk>,
}

/// The settings of a GCE cluster, resolved ([`super::Settings`]).
#[derive(Clone, Debug)]
pub struct GceCluster {
    /// The cluster's name.
    pub cluster: String,
    /// Its region.
    pub region: String,
    /// The configured zones (empty: the region's).
    pub zones: Vec<String>,
    /// Spot VMs.
    pub spot: bool,
    /// Where nodes reach the controller; `None`: through reverse SSH tunnels
    /// ([`GceCluster::tunnelled`]).
    pub advertise: Option<IpAddr>,
    /// The node network.
    pub node_cidr: pangaea_compiler::cidr::Cidr,
    /// The API server's port.
    pub api_port: u16,
    /// Where the API server's port may be reached from (`provider.apiAccess`; empty: no
    /// rule).
    pub api_access: Vec<String>,
    /// The NodePorts the configuration exposes (`expose.*` of type NodePort with a
    /// `nodePort`), reachable from anywhere.
    pub node_ports: Vec<u16>,
    /// The API's static external address and the node that holds it; `None`: switched off
    /// (`provider.staticApiAddress: false`), nodes have ephemeral addresses only.
    pub api_address: Option<StaticApiAddress>,
    /// The nodes of the configuration.
    pub nodes: BTreeMap<NodeName, PlannedNode>,
}

/// The API's static external address ([`GceCluster::api_address`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticApiAddress {
    /// The reserved address's name in the region.
    pub name: String,
    /// The node whose instance holds it: the API node
    /// ([`ClusterModel::api_node`](pangaea_compiler::model::ClusterModel::api_node)).
    pub node: NodeName,
}

/// The name of cluster `cluster`'s static API address.
pub fn api_address_name(cluster: &str) -> String {
    format!("pangaea-{cluster}-api")
}

impl GceCluster {
    /// Whether the nodes reach the controller through reverse SSH tunnels that its daemon
    /// keeps ([`crate::tunnel`]): the default, for an operator's machine behind NAT; an
    /// `advertiseAddress` (an address the nodes can dial) turns it off.
    pub fn tunnelled(&self) -> bool {
        self.advertise.is_none()
    }
}

/// Compute Engine instances.
pub struct Gce {
    compute: Compute,
    c: GceCluster,
    region_zones: tokio::sync::OnceCell<Vec<String>>,
    /// The static API address, once read or reserved.
    api_ip: tokio::sync::OnceCell<Option<Ipv4Addr>>,
}

fn failed(e: ComputeError) -> ProviderError {
    ProviderError::Failed(e.to_string())
}

impl Gce {
    /// The provider of cluster `c` through `compute`.
    pub fn new(compute: Compute, c: GceCluster) -> Gce {
        Gce {
            compute,
            c,
            region_zones: tokio::sync::OnceCell::new(),
            api_ip: tokio::sync::OnceCell::new(),
        }
    }

    /// The cluster's network, subnetwork and the prefix of its firewall rules and tag.
    pub fn network(&self) -> String {
        format!("pangaea-{}", self.c.cluster)
    }

    fn instance_name(&self, node: &NodeName) -> String {
        instance_name(&self.c.cluster, node)
    }

    /// The cluster's firewall rules: each with `Some` when the configuration wants it, `None`
    /// when it is switched off (and so deleted if it exists).
    pub fn firewalls(&self) -> Vec<(String, Option<FirewallSpec>)> {
        let net = self.network();
        let rule = |suffix: &str, on: bool, allow: Allow, source_ranges: Vec<String>| {
            let name = format!("{net}-{suffix}");
            let spec = on.then(|| FirewallSpec {
                name: name.clone(),
                network: net.clone(),
                allow,
                source_ranges,
                target_tag: net.clone(),
            });
            (name, spec)
        };
        let c = &self.c;
        vec![
            rule(
                "internal",
                true,
                Allow::Everything,
                vec![c.node_cidr.to_string()],
            ),
            rule(
                "api",
                !c.api_access.is_empty(),
                Allow::Tcp(vec![c.api_port]),
                c.api_access.clone(),
            ),
            rule(
                "nodeports",
                !c.node_ports.is_empty(),
                Allow::Tcp(c.node_ports.clone()),
                vec!["0.0.0.0/0".into()],
            ),
            // The tunnels' SSH, from wherever the operator's machine is (behind NAT its
            // address is not known; the tunnel user can only forward the two ports).
            rule(
                "ssh",
                c.tunnelled(),
                Allow::Tcp(vec![22]),
                vec!["0.0.0.0/0".into()],
            ),
        ]
    }

    /// The zones of the region, asked once.
    async fn all_zones(&self) -> Result<&Vec<String>, ProviderError> {
        self.region_zones
            .get_or_try_init(|| async {
                let z = self
                    .compute
                    .region_zones(&self.c.region)
                    .await
                    .map_err(failed)?;
                if z.is_empty() {
                    return Err(ProviderError::Failed(format!(
                        "region {} has no zones",
                        self.c.region
                    )));
                }
                Ok(z)
            })
            .await
    }

    /// The zones nodes are spread over: the configured ones, else the region's.
    async fn spread(&self) -> Result<Vec<String>, ProviderError> {
        if self.c.zones.is_empty() {
            Ok(self.all_zones().await?.clone())
        } else {
            Ok(self.c.zones.clone())
        }
    }

    /// Every instance of the cluster, with its zone.
    async fn instances(&self) -> Result<Vec<(String, Value)>, ProviderError> {
        let mut zones = self.all_zones().await?.clone();
        for z in &self.c.zones {
            if !zones.contains(z) {
                zones.push(z.clone());
            }
        }
        let mut out = Vec::new();
        for z in zones {
            for i in self
                .compute
                .list_instances(&z, &self.c.cluster)
                .await
                .map_err(failed)?
            {
                out.push((z.clone(), i));
            }
        }
        Ok(out)
    }

    /// The zone of node `name`'s instance.
    async fn locate(&self, name: &NodeName) -> Result<String, ProviderError> {
        self.instance(name)
            .await?
            .map(|(z, _)| z)
            .ok_or_else(|| ProviderError::NoSuchNode(name.clone()))
    }

    /// Node `name`'s instance with its zone, `None` when it has none.
    async fn instance(&self, name: &NodeName) -> Result<Option<(String, Value)>, ProviderError> {
        Ok(self
            .instances()
            .await?
            .into_iter()
            .find(|(_, i)| i["labels"][NODE_LABEL] == name.as_str()))
    }

    /// The static API address as reserved; `None` when switched off or not reserved (yet).
    async fn api_ip(&self) -> Result<Option<Ipv4Addr>, ProviderError> {
        let Some(a) = &self.c.api_address else {
            return Ok(None);
        };
        self.api_ip
            .get_or_try_init(|| async {
                let found = self
                    .compute
                    .address(&self.c.region, &a.name)
                    .await
                    .map_err(failed)?;
                Ok(found.and_then(|v| v["address"].as_str()?.parse().ok()))
            })
            .await
            .copied()
    }

    /// Reserves the static API address (or adopts the cluster's) and gives it to its node
    /// if that node's instance exists and lacks it: the address is moved when another node
    /// became the API node (the first one removed), unless an instance still holds it.
    async fn place_api_address(
        &self,
        a: &StaticApiAddress,
        progress: Progress<'_>,
    ) -> Result<(), ProviderError> {
        let t = OPERATION_TIMEOUT;
        let (created, ip) = self
            .compute
            .ensure_address(&self.c.region, &a.name, &self.c.cluster, t)
            .await
            .map_err(failed)?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| {
            ProviderError::Failed(format!("address {}: {ip:?} is not IPv4: {e}", a.name))
        })?;
        let _ = self.api_ip.set(Some(ip));
        let how = match created {
            super::compute::Created::Created => "reserved",
            super::compute::Created::Adopted => "kept",
        };
        progress(&format!(
            "GCE: static address {} ({ip}) for the API on {}, {how}",
            a.name, a.node
        ));
        let Some((zone, holder)) = self.instance(&a.node).await? else {
            return Ok(());
        };
        let nat = holder["networkInterfaces"][0]["accessConfigs"][0]["natIP"].as_str();
        if nat == Some(ip.to_string().as_str()) {
            return Ok(());
        }
        let address = self
            .compute
            .address(&self.c.region, &a.name)
            .await
            .map_err(failed)?
            .unwrap_or_default();
        if let Some(user) = address["users"].as_array().and_then(|u| u.first()) {
            let user = user
                .as_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default();
            progress(&format!(
                "GCE: the API's address {ip} is still held by {user}; it moves to {} once {user} is deleted (`pangaea-ctl up` again)",
                a.node
            ));
            return Ok(());
        }
        progress(&format!("GCE: moving the API's address {ip} to {}", a.node));
        self.compute
            .set_external_address(&zone, &self.instance_name(&a.node), Some(ip), t)
            .await
            .map_err(failed)
    }

    /// Releases the cluster's static API address, switched off: its holder first gets an
    /// ephemeral address. Another's address of that name is left alone.
    async fn release_api_address(&self, progress: Progress<'_>) -> Result<(), ProviderError> {
        let name = api_address_name(&self.c.cluster);
        let t = OPERATION_TIMEOUT;
        let Some(address) = self
            .compute
            .address(&self.c.region, &name)
            .await
            .map_err(failed)?
        else {
            return Ok(());
        };
        if address["description"] != super::compute::owner_description(&self.c.cluster).as_str() {
            return Ok(());
        }
        for user in address["users"].as_array().into_iter().flatten() {
            let Some(instance) = user.as_str().and_then(|u| u.rsplit('/').next()) else {
                continue;
            };
            if let Some((zone, _)) = self
                .instances()
                .await?
                .into_iter()
                .find(|(_, i)| i["name"] == instance)
            {
                self.compute
                    .set_external_address(&zone, instance, None, t)
                    .await
                    .map_err(failed)?;
            }
        }
        self.compute
            .delete_address(&self.c.region, &name, t)
            .await
            .map_err(failed)?;
        progress(&format!(
            "GCE: static address {name} released (switched off)"
        ));
        Ok(())
    }

    async fn act(&self, name: &NodeName, action: &str) -> Result<(), ProviderError> {
        let zone = self.locate(name).await?;
        let op = self
            .compute
            .instance_action(&zone, &self.instance_name(name), action)
            .await
            .map_err(failed)?;
        self.compute
            .wait(&op, OPERATION_TIMEOUT)
            .await
            .map_err(failed)?;
        Ok(())
    }
}

/// The node an instance is, by its [`NODE_LABEL`]; `None` for an instance without one.
fn node_info(i: &Value) -> Option<NodeInfo> {
    let name = NodeName::try_from(i["labels"][NODE_LABEL].as_str()?.to_owned()).ok()?;
    let state = match i["status"].as_str().unwrap_or_default() {
        "PROVISIONING" | "STAGING" | "RUNNING" | "REPAIRING" => NodeState::Running,
        _ => NodeState::Stopped,
    };
    let address = i["networkInterfaces"][0]["networkIP"]
        .as_str()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let created_at = i["creationTimestamp"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, |t| t.unix_timestamp());
    Some(NodeInfo {
        name,
        instance_id: i["id"].as_str().unwrap_or_default().to_owned(),
        address,
        state,
        created_at,
    })
}

/// Whether `ip` is an address of this machine (a socket can be bound to it; nothing is
/// sent).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[async_trait]
impl Provider for Gce {
    fn name(&self) -> &'static str {
        "gce"
    }

    async fn prepare(&self, progress: Progress<'_>) -> Result<(), ProviderError> {
        let net = self.network();
        let t = OPERATION_TIMEOUT;
        progress(&format!(
            "GCE: network {net} with subnetwork {} in {}",
            self.c.node_cidr, self.c.region
        ));
        self.compute
            .ensure_network(&net, &self.c.cluster, t)
            .await
            .map_err(failed)?;
        self.compute
            .ensure_subnetwork(
                &self.c.region,
                &net,
                &net,
                &self.c.node_cidr.to_string(),
                &self.c.cluster,
                t,
            )
            .await
            .map_err(failed)?;
        for (name, rule) in self.firewalls() {
            match rule {
                Some(f) => {
                    progress(&format!(
                        "GCE: firewall rule {name} from {}",
                        f.source_ranges.join(", ")
                    ));
                    self.compute
                        .ensure_firewall(&f, &self.c.cluster, t)
                        .await
                        .map_err(failed)?;
                }
                None => {
                    if self
                        .compute
                        .delete_firewall(&name, &self.c.cluster, t)
                        .await
                        .map_err(failed)?
                    {
                        progress(&format!("GCE: firewall rule {name} deleted (switched off)"));
                    }
                }
            }
        }
        match &self.c.api_address {
            Some(a) => self.place_api_address(a, progress).await?,
            None => self.release_api_address(progress).await?,
        }
        let zones = self.spread().await?;
        progress(&format!("GCE: nodes spread over {}", zones.join(", ")));
        Ok(())
    }

    async fn api_address(&self) -> Result<Option<Ipv4Addr>, ProviderError> {
        self.api_ip().await
    }

    async fn controller_endpoint(&self) -> Result<ControllerEndpoint, ProviderError> {
        let Some(advertise) = self.c.advertise else {
            // Through the tunnels: the controller on this machine's loopback, each node
            // dialing its own loopback, where the tunnel's far end listens.
            let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
            return Ok(ControllerEndpoint {
                listen: lo,
                advertise: lo,
                tunnel: true,
            });
        };
        // Behind a forward (NAT), the advertised address is not this machine's: listen on
        // every address then.
        let listen = if is_local(advertise) {
            advertise
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        Ok(ControllerEndpoint {
            listen,
            advertise,
            tunnel: false,
        })
    }

    async fn create(&self, spec: &NodeSpec) -> Result<NodeInfo, ProviderError> {
        let planned = self.c.nodes.get(&spec.name).ok_or_else(|| {
            ProviderError::Failed(format!("{} is not in the configuration", spec.name))
        })?;
        let zones = self.spread().await?;
        let zone = planned
            .zone
            .clone()
            .or_else(|| pangaea_compiler::provider::in_turn(&zones, planned.position).cloned())
            .expect("spread zones are never empty");
        let net = self.network();
        let external_address = match &self.c.api_address {
            Some(a) if a.node == spec.name => self.api_ip().await?,
            _ => None,
        };
        let s = InstanceSpec {
            name: self.instance_name(&spec.name),
            zone,
            machine_type: planned.machine_type.clone(),
            image: (IMAGE.0.into(), IMAGE.1.into()),
            boot_disk: (gce::BOOT_DISK_GIB, gce::DISK_TYPE.into()),
            user_data: spec.user_data.clone(),
            labels: [
                (CLUSTER_LABEL.to_owned(), self.c.cluster.clone()),
                (NODE_LABEL.to_owned(), spec.name.to_string()),
            ]
            .into(),
            tags: vec![net.clone()],
            spot: self.c.spot,
            data_disks: planned.disks.clone(),
            nic: Nic {
                network: net.clone(),
                subnetwork: Some(net),
                address: Some(spec.address),
                external_address,
            },
        };
        let region_zones = self.all_zones().await?.clone();
        let (zone, _) = self
            .compute
            .create_in_region(
                &s,
                &region_zones,
                &self.c.cluster,
                OPERATION_TIMEOUT,
                &|m| tracing::warn!("{m}"),
            )
            .await
            .map_err(failed)?;
        let i = self
            .compute
            .get_instance(&zone, &s.name)
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                ProviderError::Failed(format!("{} vanished after its insert", s.name))
            })?;
        node_info(&i)
            .ok_or_else(|| ProviderError::Failed(format!("{} has no {NODE_LABEL} label", s.name)))
    }

    async fn start(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.act(name, "start").await
    }

    async fn stop(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.act(name, "stop").await
    }

    /// As the instance's metadata item, which its agent reads from the metadata server
    /// ([`Provider::metadata_server`]): nothing of the operator's machine needs to reach
    /// the node, and a stopped instance takes it too (it finds it when it boots).
    async fn deliver_token(&self, name: &NodeName, token: &str) -> Result<(), ProviderError> {
        let zone = self.locate(name).await?;
        self.compute
            .set_metadata_item(
                &zone,
                &self.instance_name(name),
                pangaea_core::token::RECOVERY_TOKEN_METADATA_KEY,
                token,
                OPERATION_TIMEOUT,
            )
            .await
            .map_err(failed)
    }

    fn metadata_server(&self) -> Option<String> {
        Some(pangaea_core::token::GCE_METADATA_SERVER.to_owned())
    }

    async fn delete(&self, name: &NodeName) -> Result<(), ProviderError> {
        let zone = match self.locate(name).await {
            Ok(z) => z,
            Err(ProviderError::NoSuchNode(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let instance = self.instance_name(name);
        // Its data disks, as attached (the node may have left the configuration already):
        // those named for this node, which outlive the instance unless deleted here.
        let prefix = format!("{instance}-");
        let data_disks: Vec<String> = self
            .compute
            .get_instance(&zone, &instance)
            .await
            .map_err(failed)?
            .iter()
            .flat_map(|i| i["disks"].as_array().cloned().unwrap_or_default())
            .filter(|d| d["boot"] != true)
            .filter_map(|d| Some(d["source"].as_str()?.rsplit('/').next()?.to_owned()))
            .filter(|d| d.starts_with(&prefix))
            .collect();
        if let Some(op) = self
            .compute
            .delete_instance(&zone, &instance)
            .await
            .map_err(failed)?
        {
            self.compute
                .wait(&op, OPERATION_TIMEOUT)
                .await
                .map_err(failed)?;
        }
        for d in data_disks {
            self.compute
                .delete_disk(&zone, &d, OPERATION_TIMEOUT)
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    async fn tunnel_hosts(&self) -> Result<Vec<TunnelHost>, ProviderError> {
        if !self.c.tunnelled() {
            return Ok(Vec::new());
        }
        let mut out: Vec<TunnelHost> = self
            .instances()
            .await?
            .iter()
            .filter(|(_, i)| i["status"] == "RUNNING")
            .filter_map(|(_, i)| {
                let node = node_info(i)?;
                let address = i["networkInterfaces"][0]["accessConfigs"][0]["natIP"]
                    .as_str()?
                    .parse()
                    .ok()?;
                Some(TunnelHost {
                    node: node.name,
                    instance_id: node.instance_id,
                    address,
                })
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, ProviderError> {
        let mut out: Vec<NodeInfo> = self
            .instances()
            .await?
            .iter()
            .filter_map(|(_, i)| node_info(i))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn shell(
        &self,
        name: &NodeName,
        argv: &[String],
        tty: bool,
    ) -> Result<Vec<String>, ProviderError> {
        let zone = self.locate(name).await?;
        let mut cmd: Vec<String> = vec![
            "gcloud".into(),
            "compute".into(),
            "ssh".into(),
            self.instance_name(name),
            format!("--zone={zone}"),
            format!("--project={}", self.compute.project()),
            // Nodes have internal addresses only unless the operator gave them more.
            "--internal-ip".into(),
        ];
        if !argv.is_empty() {
            let words: Vec<String> = argv
                .iter()
                .map(|a| crate::cmd::env::posix_quote(a))
                .collect();
            cmd.push(format!("--command={}", words.join(" ")));
            if tty {
                cmd.extend(["--".into(), "-t".into()]);
            }
        }
        Ok(cmd)
    }

    async fn user_data(&self, name: &NodeName) -> Result<Option<String>, ProviderError> {
        let Some((_, i)) = self.instance(name).await? else {
            return Ok(None);
        };
        Ok(i["metadata"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["key"] == "user-data")
            .and_then(|m| m["value"].as_str())
            .map(str::to_owned))
    }

    async fn teardown(&self) -> Result<(), ProviderError> {
        if !self.instances().await?.is_empty() {
            return Ok(());
        }
        let t = OPERATION_TIMEOUT;
        for (name, _) in self.firewalls() {
            self.compute
                .delete_firewall(&name, &self.c.cluster, t)
                .await
                .map_err(failed)?;
        }
        self.release_api_address(&|_| {}).await?;
        let net = self.network();
        self.compute
            .delete_subnetwork(&self.c.region, &net, t)
            .await
            .map_err(failed)?;
        self.compute.delete_network(&net, t).await.map_err(failed)?;
        Ok(())
    }

    fn console_hint(&self, name: &NodeName) -> Option<String> {
        Some(format!(
            "console: gcloud compute instances get-serial-port-output {} --project {} (zone: gcloud compute instances list --filter labels.{NODE_LABEL}={name})",
            self.instance_name(name),
            self.compute.project()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_reads_as_the_node_its_label_names() {
        let i = serde_json::json!({
            "id": "4002", "status": "TERMINATED",
            "creationTimestamp": "2026-11-22T01:02:03.456-08:00",
            "labels": {"pangaea-cluster": "demo", "pangaea-node": "node-2"},
            "networkInterfaces": [{"networkIP": "10.213.0.12"}],
        });
        let n = node_info(&i).unwrap();
        assert_eq!(n.name.as_str(), "node-2");
        assert_eq!(n.instance_id, "4002");
        assert_eq!(n.address, Ipv4Addr::new(10, 213, 0, 12));
        assert_eq!(n.state, NodeState::Stopped);
        assert_eq!(n.created_at, 1_795_338_123);
        let mut running = i.clone();
        running["status"] = "STAGING".into();
        assert_eq!(node_info(&running).unwrap().state, NodeState::Running);
        let mut foreign = i;
        foreign["labels"] = serde_json::json!({"pangaea-cluster": "demo"});
        assert!(node_info(&foreign).is_none(), "no node label: not a node");
    }

    #[test]
    fn the_controller_listens_on_the_advertised_address_only_when_it_is_this_machines() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(!is_local("192.0.2.1".parse().unwrap()));
    }
}
