//! Revoking the cluster certificates of a node that is removed or replaced.
//!
//! Every certificate the controller issues for a node (`NODE/...` in `.pangaea/pki/issued/`)
//! is either current (its files are there), *retired* (rotation issued a successor, but the
//! node may still hold it until it expires) or *revoked* (its node was removed or replaced).
//! The ledger `.pangaea/pki/revocations.json` keeps the retired and revoked ones until they
//! expire; then they are dropped, as an expired certificate needs no revocation.
//!
//! Who enforces a revocation:
//! * etcd (etcd CA): every member gets the CA's certificate revocation list ([`crl_pem`]) in
//!   its assignment and reads it on each new connection (`--client-crl-file`,
//!   `--peer-crl-file`), so a revoked client or peer certificate is refused as soon as the
//!   members have the new list, without restarting them.
//! * The controller (controller CA): agent identities are checked against the node record's
//!   active serials on every call, so they need no list.
//! * Kubernetes (cluster and front-proxy CAs) has no revocation: those certificates stop
//!   working when they expire ([`crate::issued::LEAF_LIFETIME`], 30 days at most).

use crate::certinfo::CertInfo;
use crate::pki::{CaKind, Pki, PkiError};
use crate::state_dir::StateDir;
use pangaea_core::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Validity of a published revocation list. It is signed again once a third of that is
/// left, at the latest on the controller's hourly rotation round.
pub const CRL_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// A certificate issued for a node that is no longer its current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The node it was issued for.
    pub node: String,
    /// The issuing CA.
    pub ca: CaKind,
    /// Serial number, lowercase hex of its DER bytes.
    pub serial_hex: String,
    /// Expiry, unix seconds; the entry is dropped afterwards.
    pub not_after: i64,
    /// When it was revoked (unix seconds), or `None` while it is only retired.
    pub revoked_at: Option<i64>,
}

#[derive(Default, Serialize, Deserialize)]
struct Ledger {
    entries: Vec<Entry>,
}

fn ledger_path(state: &StateDir) -> std::path::PathBuf {
    state.pki().join("revocations.json")
}

fn load(state: &StateDir) -> Result<Ledger, PkiError> {
    let path = ledger_path(state);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PkiError::Read {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
        Err(source) => Err(PkiError::Read { path, source }),
    }
}

fn save(state: &StateDir, mut ledger: Ledger) -> Result<(), PkiError> {
    let now = crate::records::now();
    ledger.entries.retain(|e| e.not_after > now);
    let json = serde_json::to_vec_pretty(&ledger).expect("the ledger serializes");
    fsutil::atomic_write(&ledger_path(state), &json, 0o600)?;
    Ok(())
}

/// The entry of a certificate file issued for `node`, its CA read from the request kept
/// beside it.
fn entry_of(node: &str, cert: &Path) -> Option<Entry> {
    let info = CertInfo::from_pem(&std::fs::read_to_string(cert).ok()?)?;
    let request: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cert.with_extension("json")).ok()?).ok()?;
    Some(Entry {
        node: node.to_owned(),
        ca: serde_json::from_value(request.get("ca")?.clone()).ok()?,
        serial_hex: info.serial_hex,
        not_after: info.not_after,
        revoked_at: None,
    })
}

/// Notes that the certificate at `cert` (issued for `node`) is about to be replaced by a
/// successor: the node may hold it until it expires, so removing the node must revoke it
/// too. Call under the PKI's lock, before overwriting it.
pub fn retire(state: &StateDir, node: &str, cert: &Path) -> Result<(), PkiError> {
    let Some(entry) = entry_of(node, cert) else {
        return Ok(());
    };
    let mut ledger = load(state)?;
    ledger.entries.push(entry);
    save(state, ledger)
}

/// Revokes every certificate issued for node `name` — current and retired — and deletes
/// the current ones, so that its next plan issues new keys and serials: a replacement never
/// gets its predecessor's. Takes the PKI's lock. Returns how many were revoked.
pub fn revoke_node(pki: &Pki, state: &StateDir, name: &str) -> Result<usize, PkiError> {
    let _lock = pki.lock()?;
    let now = crate::records::now();
    let mut ledger = load(state)?;
    let files = state.issued_for_node(name);
    ledger.entries.extend(
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            .filter_map(|p| entry_of(name, p)),
    );
    let mut revoked = 0;
    for e in ledger
        .entries
        .iter_mut()
        .filter(|e| e.node == name && e.revoked_at.is_none())
    {
        e.revoked_at = Some(now);
        revoked += 1;
    }
    // The ledger first: a crash in between leaves certificates revoked and still on disk
    // (issued again on the next plan), never deleted and forgotten.
    save(state, ledger)?;
    for path in files {
        std::fs::remove_file(&path).map_err(|source| PkiError::Read {
            path: path.clone(),
            source,
        })?;
    }
    Ok(revoked)
}

/// The revoked, unexpired certificates of `ca`.
pub fn revoked(state: &StateDir, ca: CaKind) -> Result<Vec<Entry>, PkiError> {
    Ok(load(state)?
        .entries
        .into_iter()
        .filter(|e| e.ca == ca && e.revoked_at.is_some())
        .filter(|e| e.not_after > crate::records::now())
        .collect())
}

/// The certificate revocation list of `ca` (PEM), signed by it and kept in
/// `.pangaea/pki/<ca>.crl`: the same text for as long as the revoked set is unchanged and
/// two thirds of its validity remain, so that recompiling does not change nodes' files.
/// Call under the PKI's lock.
pub fn crl_pem(pki: &Pki, state: &StateDir, ca: CaKind) -> Result<String, PkiError> {
    let entries = revoked(state, ca)?;
    let wanted: BTreeSet<&str> = entries.iter().map(|e| e.serial_hex.as_str()).collect();
    let path = state.pki().join(format!("{}.crl", ca.file_stem()));
    if let Ok(pem) = std::fs::read_to_string(&path)
        && let Some(cached) = pangaea_core::x509::CrlInfo::from_pem(&pem)
    {
        let now = crate::records::now();
        let fresh = cached.next_update - now > CRL_LIFETIME.as_secs() as i64 / 3;
        let same: BTreeSet<&str> = cached.serials_hex.iter().map(String::as_str).collect();
        if fresh && same == wanted {
            return Ok(pem);
        }
    }
    let pem = pki.sign_crl(ca, &entries, CRL_LIFETIME)?;
    fsutil::atomic_write(&path, pem.as_bytes(), 0o600)?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issued::PkiInputs;
    use pangaea_compiler::inputs::{CertRequest, Inputs};

    fn request(id: &str, ca: CaKind) -> CertRequest {
        CertRequest {
            ca,
            id: id.into(),
            common_name: id.replace('/', "-"),
            organizations: vec![],
            dns_names: vec![],
            ips: vec![],
            server: false,
            client: true,
        }
    }

    fn serial(pem: &str) -> String {
        CertInfo::from_pem(pem).unwrap().serial_hex
    }

    /// Hardening #3: removing a node revokes every etcd certificate issued for it — the
    /// current ones and one that rotation superseded — and nothing of another node; the
    /// list is signed by the etcd CA and stays byte-identical while the set is unchanged.
    #[test]
    fn revoking_a_node_lists_its_current_and_retired_etcd_certificates_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join(".pangaea"));
        state.ensure().unwrap();
        let pki = Pki::load_or_create(&state.pki()).unwrap();
        let empty = {
            let _l = pki.lock().unwrap();
            crl_pem(&pki, &state, CaKind::Etcd).unwrap()
        };
        assert!(
            pangaea_core::x509::CrlInfo::from_pem(&empty)
                .unwrap()
                .serials_hex
                .is_empty()
        );

        // A certificate whose request changed (a node's address changed; the end of its
        // life is the rotation loop's case) is issued again while the node still holds the
        // old one, valid for 30 days: that one is retired.
        let inputs = PkiInputs::new(&pki, &state).unwrap();
        let first = inputs
            .cert(&request("node-3/etcd-client", CaKind::Etcd))
            .unwrap();
        let mut changed = request("node-3/etcd-client", CaKind::Etcd);
        changed.dns_names.push("node-3.example".into());
        let second = inputs.cert(&changed).unwrap();
        assert_ne!(serial(&first.cert_pem), serial(&second.cert_pem));
        let peer = inputs
            .cert(&request("node-3/etcd-peer", CaKind::Etcd))
            .unwrap();
        let kubelet = inputs
            .cert(&request("node-3/kubelet", CaKind::Cluster))
            .unwrap();
        let other = inputs
            .cert(&request("node-30/etcd-peer", CaKind::Etcd))
            .unwrap();
        {
            let _l = pki.lock().unwrap();
            assert_eq!(crl_pem(&pki, &state, CaKind::Etcd).unwrap(), empty);
        }

        assert_eq!(revoke_node(&pki, &state, "node-3").unwrap(), 4);
        assert!(state.issued_for_node("node-3").is_empty());
        let _l = pki.lock().unwrap();
        let pem = crl_pem(&pki, &state, CaKind::Etcd).unwrap();
        let listed: BTreeSet<String> = pangaea_core::x509::CrlInfo::from_pem(&pem)
            .unwrap()
            .serials_hex
            .into_iter()
            .collect();
        let want: BTreeSet<String> = [&first, &second, &peer]
            .iter()
            .map(|c| serial(&c.cert_pem))
            .collect();
        assert_eq!(
            listed, want,
            "the etcd CA's list, the superseded one included"
        );
        assert!(!listed.contains(&serial(&other.cert_pem)));
        assert!(
            !listed.contains(&serial(&kubelet.cert_pem)),
            "not the etcd CA's"
        );
        assert_eq!(crl_pem(&pki, &state, CaKind::Etcd).unwrap(), pem, "stable");

        // Signed by the etcd CA: openssl verifies the list against it.
        let ca = dir.path().join("etcd-ca.crt");
        let crl = dir.path().join("etcd.crl");
        std::fs::write(&ca, &pki.ca(CaKind::Etcd).cert_pem).unwrap();
        std::fs::write(&crl, &pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["crl", "-noout", "-CAfile"])
            .arg(&ca)
            .arg("-in")
            .arg(&crl)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("verify OK"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
