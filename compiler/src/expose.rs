//! `expose:` in `pangaea.yaml`: how an add-on's service is reached from outside the cluster.
//!
//! A module of its own because two owners meet here: the configuration says what the user
//! asked for, and the provider decides what "outside" means by default
//! ([`crate::provider::ProviderKind::external_exposure`]); neither depends on the other.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A Kubernetes Service type, as written in `pangaea.yaml` and in the rendered manifests.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum ExposeType {
    /// Reachable inside the cluster only (and by `kubectl port-forward`).
    #[default]
    ClusterIP,
    /// A port on every node (30000-32767).
    NodePort,
    /// The provider's load balancer, where it has one.
    LoadBalancer,
}

/// How to expose one add-on service (`expose.grafana`, `expose.prometheus`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expose {
    /// The Service type (default ClusterIP).
    #[serde(rename = "type", default)]
    pub kind: ExposeType,
    /// For NodePort: the port (default: Kubernetes picks one).
    #[serde(default)]
    pub node_port: Option<u16>,
    /// For LoadBalancer: the address to ask for.
    #[serde(default, rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<Ipv4Addr>,
}

/// Services of the add-ons that can be exposed outside the cluster.
pub const EXPOSABLE: [&str; 2] = ["grafana", "prometheus"];
