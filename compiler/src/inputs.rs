//! What the compiler needs from outside: CA certificates, issued leaf certificates, and the
//! cluster's generated secrets. The controller provides them from its PKI (issuing each
//! certificate once and reusing it, so output stays stable); tests and benchmarks use
//! [`FakeInputs`].

use serde::Serialize;
use std::net::Ipv4Addr;

pub use pangaea_core::ca::CaKind;

/// A leaf certificate a node needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertRequest {
    /// The CA that signs it.
    pub ca: CaKind,
    /// Stable identity of this certificate, e.g. `node-1/etcd-peer` or `cluster/admin`.
    pub id: String,
    /// Subject CN: the user name for client certificates.
    pub common_name: String,
    /// Subject O: the groups for client certificates.
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ips: Vec<Ipv4Addr>,
    /// For TLS servers (serverAuth).
    pub server: bool,
    /// For TLS clients (clientAuth).
    pub client: bool,
}

/// An issued certificate and its private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// Where certificates, keys and secrets come from, so that the compiler itself does no
/// cryptography or I/O and its output depends only on its input.
pub trait Inputs {
    /// The CA's certificate, PEM.
    fn ca_cert(&self, ca: CaKind) -> String;
    /// The cluster CA's key, for kube-controller-manager's CSR signer (control-plane only).
    fn cluster_ca_key(&self) -> String;
    /// The certificate for `req`: the same one for the same request, so recompiling does not
    /// change nodes' files. The error says why it could not be issued.
    fn cert(&self, req: &CertRequest) -> Result<CertPair, String>;
    /// 32 random bytes, base64, for encryption at rest (secretbox).
    fn encryption_key(&self) -> String;
    /// The CA's current certificate revocation list, PEM (etcd reads the etcd CA's on each
    /// new connection). The same text while nothing new is revoked.
    fn revocation_list(&self, ca: CaKind) -> String;
    /// Service-account token signing key pair (private PEM, public PEM).
    fn service_account_keys(&self) -> (String, String);
    /// When etcd node `node` joined a running etcd cluster as a learner: etcd's
    /// `--initial-cluster` as it was when the member was added (`name=peer-url,…`, the
    /// node included). `None` for the members that founded the cluster.
    fn etcd_join(&self, _node: &str) -> Option<String> {
        None
    }
}

/// Deterministic placeholder material: the same request always gives the same text.
pub struct FakeInputs;

fn fake(kind: &str, id: &str) -> String {
    format!("-----BEGIN {kind}-----\nRkFLRQ== {id}\n-----END {kind}-----\n")
}

impl Inputs for FakeInputs {
    fn ca_cert(&self, ca: CaKind) -> String {
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
    fn revocation_list(&self, ca: CaKind) -> String {
        fake("X509 CRL", &format!("{ca:?}-crl"))
    }
    fn encryption_key(&self) -> String {
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()
    }
    fn service_account_keys(&self) -> (String, String) {
        (fake("PRIVATE KEY", "sa"), fake("PUBLIC KEY", "sa"))
    }
}
