//! The compiler's inputs from the controller's PKI: leaf certificates issued once per
//! request and kept in `.pangaea/pki/issued/` (re-issued only when the request changes or a
//! third of the lifetime remains), and the cluster's generated secrets. Reusing issued
//! certificates keeps compiled output stable, so an unchanged cluster never restarts units.

use crate::certinfo::CertInfo;
use crate::pki::{CaKind, LeafSpec, Pki, Usage};
use crate::state_dir::StateDir;
use pangaea_compiler::inputs::{CertPair, CertRequest, Inputs};
use pangaea_core::fsutil;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lifetime of the cluster certificates issued for nodes (etcd, API server, kubelet,
/// clients): short, so that a leaked or forgotten one stops working by itself. Each is
/// issued again once less than a third of it remains — when the node is next planned, which
/// the controller's rotation loop ([`crate::rules::rotate`]) does at least hourly.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why the compiler's inputs could not be had.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// The PKI's lock could not be taken.
    #[error(transparent)]
    Lock(#[from] crate::pki::PkiError),
    /// A key of the PKI could not be read.
    #[error("read {what} {}: {source}", path.display())]
    Read {
        /// Which key.
        what: &'static str,
        /// Its file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A generated cluster secret could not be stored (nothing is used unstored: every
    /// node must get the same secret).
    #[error("store the cluster secret {}: {source}", path.display())]
    StoreSecret {
        /// The secret's file.
        path: PathBuf,
        /// Why.
        source: fsutil::FsError,
    },
    /// The record of etcd joins could not be read.
    #[error("{0}")]
    Joins(String),
}

/// The PKI and secrets as the compiler takes them, read (and generated) once up front, so
/// that every failure is a typed error here and rendering itself cannot fail on them.
pub struct PkiInputs<'a> {
    pki: &'a Pki,
    state: StateDir,
    lifetime: Duration,
    cluster_ca_key: String,
    service_account_key: String,
    encryption_key: String,
    etcd_crl: String,
    etcd_joins: crate::etcd_join::Joins,
}

impl<'a> PkiInputs<'a> {
    /// `state_dir` is the cluster's `.pangaea/`.
    pub fn new(pki: &'a Pki, state_dir: &StateDir) -> Result<PkiInputs<'a>, InputsError> {
        let key = |what, path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| InputsError::Read {
                what,
                path,
                source,
            })
        };
        let _lock = pki.lock()?;
        Ok(PkiInputs {
            cluster_ca_key: key("the cluster CA key", pki.ca_key_path(CaKind::Cluster))?,
            service_account_key: key("the service-account key", pki.dir().join("sa.key"))?,
            encryption_key: secret(state_dir, "encryption-key", || {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
            })?,
            etcd_crl: crate::revocation::crl_pem(pki, state_dir, CaKind::Etcd)?,
            etcd_joins: crate::etcd_join::load(state_dir)
                .map_err(|e| InputsError::Joins(e.to_string()))?,
            pki,
            state: state_dir.clone(),
            lifetime: LEAF_LIFETIME,
        })
    }

    /// Issues leaf certificates valid for `lifetime` instead of [`LEAF_LIFETIME`].
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// The nearest expiry (unix seconds) of the certificates issued for node `name`, if any.
pub fn nearest_expiry(state: &StateDir, name: &str) -> Option<i64> {
    state
        .issued_for_node(name)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|pem| CertInfo::from_pem(&pem).map(|c| c.not_after))
        .min()
}

/// A secret generated once (`make`) and kept in `.pangaea/secrets/NAME` (0600).
fn secret(
    state: &StateDir,
    name: &str,
    make: impl FnOnce() -> String,
) -> Result<String, InputsError> {
    let path = state.secret(name);
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s);
    }
    let value = make();
    fsutil::atomic_write(&path, value.as_bytes(), 0o600)
        .map_err(|source| InputsError::StoreSecret { path, source })?;
    Ok(value)
}

impl Inputs for PkiInputs<'_> {
    fn ca_cert(&self, ca: CaKind) -> String {
        self.pki.ca(ca).cert_pem.clone()
    }

    fn cluster_ca_key(&self) -> String {
        self.cluster_ca_key.clone()
    }

    fn cert(&self, req: &CertRequest) -> Result<CertPair, String> {
        if !req.ca.signs_node_certificates() {
            return Err(format!(
                "certificate {} asks for the {:?} CA, which signs only agent identities",
                req.id, req.ca
            ));
        }
        // Reading and (re)issuing under the PKI's lock: another process issuing the same
        // certificate waits, then finds it fresh and reuses it.
        let _lock = self.pki.lock().map_err(|e| e.to_string())?;
        let paths = self.state.issued(&req.id);
        let (crt, key, spec_path) = (paths.cert, paths.key, paths.request);
        let wanted = serde_json::to_string(req).expect("requests serialize");
        if let (Some(cert_pem), Some(key_pem), Some(spec)) =
            (Self::read(&crt), Self::read(&key), Self::read(&spec_path))
        {
            let now = crate::records::now();
            let fresh = CertInfo::from_pem(&cert_pem)
                .is_some_and(|i| i.not_after - now > (i.not_after - i.not_before) / 3);
            if spec == wanted && fresh {
                return Ok(CertPair { cert_pem, key_pem });
            }
        }
        let spec = LeafSpec {
            common_name: req.common_name.clone(),
            organizations: req.organizations.clone(),
            dns_names: req.dns_names.clone(),
            ips: req.ips.iter().map(|i| (*i).into()).collect(),
            usage: match (req.server, req.client) {
                (true, true) => Usage::ServerAndClient,
                (true, false) => Usage::Server,
                _ => Usage::Client,
            },
            lifetime: self.lifetime,
        };
        let issued = self.pki.issue(req.ca, &spec).map_err(|e| e.to_string())?;
        // The node may still hold the one this replaces: removing it must revoke both.
        if let Some(node) = req.id.split_once('/').map(|(node, _)| node) {
            crate::revocation::retire(&self.state, node, &crt).map_err(|e| e.to_string())?;
        }
        let write = |p: &Path, s: &str, mode| {
            fsutil::atomic_write(p, s.as_bytes(), mode).map_err(|e| e.to_string())
        };
        write(&key, &issued.key_pem, 0o600)?;
        write(&crt, &issued.cert_pem, 0o600)?;
        write(&spec_path, &wanted, 0o600)?;
        Ok(CertPair {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }

    fn encryption_key(&self) -> String {
        self.encryption_key.clone()
    }

    fn revocation_list(&self, ca: CaKind) -> String {
        match ca {
            CaKind::Etcd => self.etcd_crl.clone(),
            // Only etcd reads a revocation list; the others are never asked for.
            _ => String::new(),
        }
    }

    fn etcd_join(&self, node: &str) -> Option<String> {
        self.etcd_joins.get(node).map(|j| j.initial_cluster.clone())
    }

    fn service_account_keys(&self) -> (String, String) {
        (
            self.service_account_key.clone(),
            self.pki.service_account_public_pem.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CaKind;
    use std::time::Duration;

    /// Hardening #3 (`status`): the nearest expiry of the certificates issued for a node is
    /// its soonest one, and only its own count.
    #[test]
    fn nearest_expiry_is_the_soonest_of_the_nodes_own_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join(".pangaea"));
        state.ensure().unwrap();
        let pki = Pki::load_or_create(&state.pki()).unwrap();
        let put = |id: &str, lifetime: Duration| {
            let spec = LeafSpec {
                common_name: id.into(),
                organizations: vec![],
                dns_names: vec![],
                ips: vec![],
                usage: Usage::Client,
                lifetime,
            };
            let issued = pki.issue(CaKind::Cluster, &spec).unwrap();
            let at = state.issued(id);
            fsutil::atomic_write(&at.cert, issued.cert_pem.as_bytes(), 0o600).unwrap();
            issued.not_after
        };
        let year = put("node-1/kubelet", LEAF_LIFETIME);
        let hour = put("node-1/etcd-peer", Duration::from_secs(3600));
        let other = put("node-10/kubelet", Duration::from_secs(60));
        assert!(hour < year && other < hour);
        assert_eq!(nearest_expiry(&state, "node-1"), Some(hour));
        assert_eq!(nearest_expiry(&state, "node-10"), Some(other));
        assert_eq!(nearest_expiry(&state, "node-2"), None);
    }
}
