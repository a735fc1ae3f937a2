//! What a node does in the cluster. A module of its own because both the configuration
//! (`pools[].roles`) and the memory budgets (which components a node's memory must hold)
//! are written in terms of roles, and neither should depend on the other for it.

use serde::{Deserialize, Serialize};

/// A role a pool's nodes take on; a node may have several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Member of the etcd cluster (the datastore).
    Etcd,
    /// Runs kube-apiserver, kube-controller-manager, kube-scheduler and the add-ons.
    ControlPlane,
    /// Runs containerd, kubelet and kube-proxy: pods are scheduled here.
    Worker,
}

impl Role {
    /// Every role, the default of a pool that names none.
    pub const ALL: [Role; 3] = [Role::Etcd, Role::ControlPlane, Role::Worker];

    /// The name used in `pangaea.yaml` (`etcd`, `control-plane`, `worker`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}
