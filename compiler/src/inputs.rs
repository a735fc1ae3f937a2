//! What the compiler needs from outside: CA certificates, issued leaf certificates, and the
//! cluster's generated secrets. The controller provides them from its PKI (issuing each
//! certificate once and reusing it, so output stays stable); tests and benchmarks use
//! [`FakeInputs`].

use serde::Serialize;
use std::net::Ipv4Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum CaName {
    Cluster,
    Etcd,
    FrontProxy,
}

/// A leaf certificate a node needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertRequest {
    pub ca: CaName,
    /// Stable identity of this certificate, e.g. `node-1/etcd-peer` or `cluster/admin`.
    pub id: String,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<Ipv4Addr>,
    pub server: bool,
    pub client: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

pub trait Inputs {
    fn ca_cert(&self, ca: CaName) -> String;
    /// The cluster CA's key, for kube-controller-manager's CSR signer (control-plane only).
    fn cluster_ca_key(&self) -> String;
    fn cert(&self, req: &CertRequest) -> Result<CertPair, String>;
    /// 32 random bytes, base64, for encryption at rest (secretbox).
    fn encryption_key(&self) -> String;
    /// Service-account token signing key pair (private PEM, public PEM).
    fn service_account_keys(&self) -> (String, String);
}

/// Deterministic placeholder material: the same request always gives the same text.
pub struct FakeInputs;

fn fake(kind: &str, id: &str) -> String {
    format!("-----BEGIN {kind}-----\nRkFLRQ== {id}\n-----END {kind}-----\n")
}

impl Inputs for FakeInputs {
    fn ca_cert(&self, ca: CaName) -> String {
        fake("CERTIFICATE", &format!("{ca:?}-ca"))
    }
    fn cluster_ca_key(&self) -> String {
        fake("PRIVATE KEY", "cluster-ca")
    }
    fn cert(&self, req: &CertRequest) -> Result<CertPair, String> {
        Ok(CertPair {
            cert_pem: fake("CERTIFICATE", &req.id),
            key_pem: fake("PRIVATE KEY", &req.id),
        })
    }
    fn encryption_key(&self) -> String {
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()
    }
    fn service_account_keys(&self) -> (String, String) {
        (fake("PRIVATE KEY", "sa"), fake("PUBLIC KEY", "sa"))
    }
}
