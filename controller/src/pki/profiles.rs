//! What a leaf certificate is (its usage and spec), and the controller's own certificates.
//! (The cluster's certificates — etcd, API server, kubelets, clients — are requested by the
//! compiler, `compiler/src/node.rs`, and issued through `crate::issued`.)

use std::net::IpAddr;
use std::time::Duration;

/// Default lifetime of a node's agent certificate; the agent renews at about 2/3 of it.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a leaf certificate is for; decides its extended key usages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication.
    Server,
    /// TLS client authentication.
    Client,
    /// etcd peers and etcd servers act as both ends of TLS.
    ServerAndClient,
}

/// Subject, names and purpose of a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Subject CN (for Kubernetes client certificates, the user name).
    pub common_name: String,
    /// Subject O values, in order (for Kubernetes client certificates, the groups).
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    pub ips: Vec<IpAddr>,
    /// Which extended key usages the certificate gets.
    pub usage: Usage,
    /// Validity from now; `not_before` is backdated a little for clock skew.
    pub lifetime: Duration,
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The agent's identity towards the controller (controller CA). CN is the node name.
pub fn node_identity(node: &str, lifetime: Duration) -> LeafSpec {
    LeafSpec {
        common_name: node.into(),
        organizations: vec!["pangaea:nodes".into()],
        dns_names: vec![node.into()],
        ips: vec![],
        usage: Usage::Client,
        lifetime,
    }
}

/// The controller's gRPC serving certificate: `names` are DNS names or IP addresses.
pub fn controller_serving(names: &[String]) -> LeafSpec {
    let (ips, dns): (Vec<_>, Vec<_>) = names.iter().partition(|n| n.parse::<IpAddr>().is_ok());
    LeafSpec {
        common_name: "pangaea-controller".into(),
        organizations: vec!["pangaea".into()],
        dns_names: dns.into_iter().cloned().collect(),
        ips: ips
            .iter()
            .map(|i| i.parse().expect("partitioned"))
            .collect(),
        usage: Usage::Server,
        lifetime: YEAR,
    }
}

/// Default node identity lifetime, re-exported for callers choosing a profile.
pub const NODE_LIFETIME: Duration = NODE_CERT_LIFETIME;
