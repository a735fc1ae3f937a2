//! The local provider's network: a bridge per cluster holding the first address of the
//! node network (where the controller listens), and per node a network namespace with a
//! veth pair on the bridge. Names carry a hash of the cluster (and node) name, so two
//! clusters on one host never collide and teardown removes exactly what was created.

use super::image::short_hash;
use super::run;
use crate::provider::ProviderError;
use pangaea_compiler::cidr::Cidr;
use pangaea_core::NodeName;
use std::net::Ipv4Addr;
use std::path::Path;
use tokio::process::Command;

async fn ip(args: &[&str]) -> Result<String, ProviderError> {
    run(Command::new("ip").args(args)).await
}

/// One cluster's node network on this host.
pub struct Network {
    cluster: String,
    cidr: Cidr,
}

impl Network {
    /// The network of `cluster` on `cidr`.
    pub fn new(cluster: &str, cidr: Cidr) -> Network {
        Network {
            cluster: cluster.to_owned(),
            cidr,
        }
    }

    fn bridge(&self) -> String {
        format!("pgb{}", short_hash(&self.cluster))
    }

    /// The host's address on the node network: the bridge's, where the controller listens.
    pub fn host_address(&self) -> Ipv4Addr {
        self.cidr
            .nth(1)
            .expect("a validated node network has a first address")
    }

    /// The node's network namespace (`/run/netns/<name>`).
    pub fn netns(&self, node: &NodeName) -> String {
        format!("pangaea-{}-{node}", self.cluster)
    }

    fn veth(&self, node: &NodeName) -> String {
        format!("pgv{}", short_hash(&format!("{}/{node}", self.cluster)))
    }

    /// Creates the bridge with the host address if it is missing, and sets it up.
    pub async fn ensure_bridge(&self) -> Result<Ipv4Addr, ProviderError> {
        let br = self.bridge();
        if ip(&["link", "show", &br]).await.is_err() {
            ip(&["link", "add", &br, "type", "bridge"]).await?;
            ip(&[
                "addr",
                "add",
                &format!("{}/{}", self.host_address(), self.cidr.prefix),
                "dev",
                &br,
            ])
            .await?;
        }
        ip(&["link", "set", &br, "up"]).await?;
        Ok(self.host_address())
    }

    /// The node's namespace and veth (recreated after a host reboot, which drops both).
    pub async fn ensure_node(
        &self,
        node: &NodeName,
        address: Ipv4Addr,
    ) -> Result<(), ProviderError> {
        let ns = self.netns(node);
        if Path::new(&format!("/run/netns/{ns}")).exists() {
            return Ok(());
        }
        let (veth, prefix) = (self.veth(node), self.cidr.prefix);
        ip(&["netns", "add", &ns]).await?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])
        .await?;
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"]).await?;
        let cidr = format!("{address}/{prefix}");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
        ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
        let gateway = self.host_address().to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &gateway]).await?;
        Ok(())
    }

    /// Removes the node's namespace and veth.
    pub async fn delete_node(&self, node: &NodeName) -> Result<(), ProviderError> {
        let ns = self.netns(node);
        if Path::new(&format!("/run/netns/{ns}")).exists() {
            ip(&["netns", "del", &ns]).await?;
        }
        let _ = ip(&["link", "del", &self.veth(node)]).await;
        Ok(())
    }

    /// Removes the bridge.
    pub async fn delete_bridge(&self) {
        let _ = ip(&["link", "del", &self.bridge()]).await;
    }
}
