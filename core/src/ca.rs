//! The cluster's certificate authorities, named once for the controller (which owns them)
//! and the compiler (whose certificate requests name the CA that signs them).

use serde::{Deserialize, Serialize};

/// A certificate authority of the cluster. Each trust domain has its own, so a certificate
/// of one is worthless to the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CaKind {
    /// Agent identities and the controller's serving certificate. Deliberately not the
    /// Kubernetes CA: an agent's certificate must not be a Kubernetes credential.
    Controller,
    /// Kubernetes: API server, kubelets, clients.
    Cluster,
    /// etcd: its members and its clients (the API server).
    Etcd,
    /// The API server's aggregation layer (front proxy).
    FrontProxy,
}

impl CaKind {
    /// Every CA.
    pub const ALL: [CaKind; 4] = [
        CaKind::Controller,
        CaKind::Cluster,
        CaKind::Etcd,
        CaKind::FrontProxy,
    ];

    /// The CA's file name without extension in the PKI directory (`cluster-ca`).
    pub fn file_stem(self) -> &'static str {
        match self {
            CaKind::Controller => "controller-ca",
            CaKind::Cluster => "cluster-ca",
            CaKind::Etcd => "etcd-ca",
            CaKind::FrontProxy => "front-proxy-ca",
        }
    }

    /// The subject common name of the CA's own certificate.
    pub fn common_name(self) -> &'static str {
        match self {
            CaKind::Controller => "pangaea-controller-ca",
            CaKind::Cluster => "kubernetes",
            CaKind::Etcd => "etcd-ca",
            CaKind::FrontProxy => "front-proxy-ca",
        }
    }

    /// Whether the compiler may request node certificates from this CA (every CA but the
    /// controller's, which signs only agent identities).
    pub fn signs_node_certificates(self) -> bool {
        self != CaKind::Controller
    }
}
