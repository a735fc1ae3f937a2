//! The node's identity: joining with a bootstrap token, keeping the key and certificate,
//! and renewing before expiry.
//!
//! The private key is generated here and never leaves the node. Key and certificate are
//! kept together in one file (`identity.pem`, 0600) so that replacing them is one atomic
//! rename: a crash during renewal can never pair a new key with an old certificate.

use crate::blocking;
use crate::config::AgentConfig;
use crate::metadata;
use pangaea_core::fsutil;
use pangaea_core::pin::SpkiPin;
use pangaea_core::tls::{self, PinnedCaVerifier};
use pangaea_core::x509::{CertInfo, first_cert_der};
use pangaea_proto as pb;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why joining, loading or renewing the node's identity failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Not joined (or its identity expired), and no token to join with.
    #[error(
        "this node has no valid identity and no token to join with at {path} ({source}) or {recovery}; `pangaea-ctl up` delivers a recovery token to a stuck node, or create one with `pangaea-ctl token create --node NAME` and write it to {path}"
    )]
    NoToken {
        /// Where the token was looked for.
        path: PathBuf,
        /// Where a recovery token was looked for: its file, and the instance metadata
        /// item where the configuration names a metadata server.
        recovery: String,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// Writing the identity or removing the token failed.
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    /// The identity on disk is unreadable.
    #[error("identity file {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The controller answered with a refusal.
    #[error("controller {endpoint} refused the join: {message}")]
    Refused {
        /// The controller asked.
        endpoint: String,
        /// Its gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// No controller could be reached.
    #[error("controller {endpoint} unreachable: {message}")]
    Unreachable {
        /// The last controller tried.
        endpoint: String,
        /// Why it could not be reached.
        message: String,
    },
    /// The controller's CA does not have the pinned key: it is not the cluster's controller.
    #[error("controller sent a CA whose key does not match the pin {pin}: refusing it")]
    PinMismatch {
        /// The configured pin.
        pin: SpkiPin,
    },
    /// Anything else (an unusable certificate or endpoint), described.
    #[error("{0}")]
    Other(String),
}

impl IdentityError {
    /// Errors that waiting will not fix without the operator (a refused token, say) are
    /// still retried, but logged as errors rather than warnings.
    pub fn needs_operator(&self) -> bool {
        matches!(self, IdentityError::Refused { code, .. } if *code != tonic::Code::Unavailable)
            || matches!(
                self,
                IdentityError::NoToken { .. } | IdentityError::PinMismatch { .. }
            )
    }
}

/// The node's key and certificate, and the controller CA it trusts.
#[derive(Clone)]
pub struct Identity {
    /// The node's name: its certificate's common name.
    pub node_name: String,
    /// Private key (PKCS#8 PEM); never leaves the node.
    pub key_pem: String,
    /// Node certificate, PEM.
    pub cert_pem: String,
    /// Controller CA certificate, PEM.
    pub ca_pem: String,
    /// Start of the certificate's validity, unix seconds.
    pub not_before: i64,
    /// End of the certificate's validity, unix seconds.
    pub not_after: i64,
}

const IDENTITY_FILE: &str = "identity.pem";
const CA_FILE: &str = "controller-ca.pem";

/// Facts the controller records about this machine.
pub fn node_facts(cfg: &AgentConfig) -> pb::NodeFacts {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
    };
    let instance_id = cfg
        .instance_id
        .clone()
        .or_else(|| read("/var/lib/cloud/data/instance-id"))
        .or_else(|| read("/etc/machine-id"))
        .unwrap_or_default();
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mut addresses: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|s| s.as_sockaddr_in().map(|v4| std::net::IpAddr::V4(v4.ip())).or_else(|| s.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))))
                .filter(|ip| !ip.is_loopback() && !matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
                .map(|ip| ip.to_string())
                .collect()
        })
        .unwrap_or_default();
    addresses.sort();
    addresses.dedup();
    pb::NodeFacts {
        instance_id,
        hostname,
        addresses,
        boot_id: read("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
    }
}

/// (not_before, not_after) of the first certificate in `pem`, unix seconds.
fn cert_validity(pem: &str) -> Option<(i64, i64)> {
    CertInfo::from_pem(pem).map(|c| (c.not_before, c.not_after))
}

fn new_request(node: &str) -> (KeyPair, rcgen::CertificateSigningRequest) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("ring generates P-256 keys");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).expect("CSR serializes");
    (key, csr)
}

fn new_key_and_csr(node: &str) -> (KeyPair, Vec<u8>) {
    let (key, csr) = new_request(node);
    (key, csr.der().to_vec())
}

impl Identity {
    /// The identity kept in `state_dir`, if this node has joined. Reads files: in async code,
    /// call it on the blocking pool.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(IdentityError::Corrupt {
                    path,
                    message: e.to_string(),
                });
            }
        };
        let ca_path = state_dir.join(CA_FILE);
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| IdentityError::Corrupt {
            path: ca_path,
            message: e.to_string(),
        })?;
        let corrupt = |m: &str| IdentityError::Corrupt {
            path: path.clone(),
            message: m.to_owned(),
        };
        let key_end = pem
            .find("-----END PRIVATE KEY-----")
            .ok_or_else(|| corrupt("no private key"))?
            + "-----END PRIVATE KEY-----".len();
        let (key_pem, cert_pem) = (
            pem[..key_end].to_owned() + "\n",
            pem[key_end..].trim_start().to_owned(),
        );
        let cert =
            CertInfo::from_pem(&cert_pem).ok_or_else(|| corrupt("no readable certificate"))?;
        let node_name = cert
            .common_name()
            .ok_or_else(|| corrupt("certificate has no common name"))?
            .to_owned();
        Ok(Some(Identity {
            node_name,
            key_pem,
            cert_pem,
            ca_pem,
            not_before: cert.not_before,
            not_after: cert.not_after,
        }))
    }

    /// Writes the identity durably (fsync): call it on the blocking pool.
    fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        fsutil::atomic_write(&state_dir.join(CA_FILE), self.ca_pem.as_bytes(), 0o644)?;
        fsutil::atomic_write(
            &state_dir.join(IDENTITY_FILE),
            format!("{}{}", self.key_pem, self.cert_pem).as_bytes(),
            0o600,
        )?;
        Ok(())
    }

    /// Whether the certificate has expired (the controller refuses it: the node must join
    /// again, with a recovery token).
    pub fn expired(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now >= self.not_after
    }

    /// When to renew: at 2/3 of the certificate's lifetime.
    pub fn renew_at(&self) -> SystemTime {
        UNIX_EPOCH
            + Duration::from_secs(
                (self.not_before + (self.not_after - self.not_before) * 2 / 3).max(0) as u64,
            )
    }

    /// Mutual-TLS client configuration: trusts only the controller CA, presents this node's
    /// certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let bad = |m: String| IdentityError::Other(format!("identity unusable for TLS: {m}"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(first_cert_der(&self.ca_pem).map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
        let chain = vec![first_cert_der(&self.cert_pem).map_err(|e| bad(e.to_string()))?];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A mutual-TLS channel to `endpoint` (tonic reconnects it as needed).
    pub fn channel(&self, endpoint: &str) -> Result<tonic::transport::Channel, IdentityError> {
        tls::channel(endpoint, self.client_config()?)
            .map_err(|e| IdentityError::Other(e.to_string()))
    }
}

/// Client configuration before joining: no client certificate, controller verified by pin.
pub fn pinned_config(pin: SpkiPin) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// The key and certificate request a join sends, kept in the state directory
/// (`join-request.pem`, 0600) until a join succeeds: a join whose reply was lost is sent
/// again with the same request, which the controller admits once more with the spent token
/// (hardening #10), instead of being refused as a second use.
struct JoinRequestKey {
    key: KeyPair,
    csr_der: Vec<u8>,
}

const JOIN_REQUEST_FILE: &str = "join-request.pem";

impl JoinRequestKey {
    /// The kept request for `node`, or a new one, written durably before it is ever sent.
    /// Reads and writes files: call it on the blocking pool.
    fn load_or_create(state_dir: &Path, node: &str) -> Result<JoinRequestKey, IdentityError> {
        use rustls::pki_types::CertificateSigningRequestDer;
        let path = state_dir.join(JOIN_REQUEST_FILE);
        if let Ok(pem) = std::fs::read_to_string(&path)
            && let Ok(key) = KeyPair::from_pem(&pem)
            && let Ok(csr) = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            && rcgen::CertificateSigningRequestParams::from_der(&csr).is_ok_and(|p| {
                p.params
                    .distinguished_name
                    .get(&DnType::CommonName)
                    .is_some_and(|cn| *cn == rcgen::DnValue::Utf8String(node.to_owned()))
            })
        {
            return Ok(JoinRequestKey {
                key,
                csr_der: csr.as_ref().to_vec(),
            });
        }
        let (key, csr) = new_request(node);
        let csr_pem = csr
            .pem()
            .map_err(|e| IdentityError::Other(format!("encode the join request: {e}")))?;
        fsutil::atomic_write(
            &path,
            format!("{}{csr_pem}", key.serialize_pem()).as_bytes(),
            0o600,
        )?;
        Ok(JoinRequestKey {
            key,
            csr_der: csr.der().to_vec(),
        })
    }
}

/// Where a token to join with was found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TokenSource {
    /// A file: the bootstrap token's (deleted once spent) or the provider's seed.
    File(PathBuf),
    /// The instance's metadata item (Compute Engine), at this URL.
    Metadata(String),
}

/// Where recovery tokens are looked for, for messages.
fn recovery_places(cfg: &AgentConfig) -> String {
    let file = cfg.recovery_token_file.display().to_string();
    match &cfg.metadata_server {
        Some(server) => format!("{file} or {}", metadata::recovery_token_url(server)),
        None => file,
    }
}

/// The tokens in files this node may join with, in the order tried: its bootstrap token,
/// then a recovery token the provider's seed put there. Reads files: call it on the
/// blocking pool. The error says why none was found.
fn file_tokens(cfg: &AgentConfig) -> (Vec<(TokenSource, String)>, IdentityError) {
    let mut found = Vec::new();
    let mut missing = None;
    for path in [&cfg.token_file, &cfg.recovery_token_file] {
        match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => {
                found.push((TokenSource::File(path.clone()), t.trim().to_owned()))
            }
            Ok(_) => {}
            Err(source) => {
                missing.get_or_insert(IdentityError::NoToken {
                    path: path.clone(),
                    recovery: recovery_places(cfg),
                    source,
                });
            }
        }
    }
    let none = missing.unwrap_or_else(|| IdentityError::NoToken {
        path: cfg.token_file.clone(),
        recovery: recovery_places(cfg),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "empty"),
    });
    (found, none)
}

/// Every token this node may join with, in the order tried: those of [`file_tokens`], then
/// the recovery token of the instance's metadata where a metadata server is configured
/// (an unreachable server is logged, not fatal: the files may still do).
async fn join_tokens(
    cfg: &AgentConfig,
    (mut found, none): (Vec<(TokenSource, String)>, IdentityError),
) -> Result<Vec<(TokenSource, String)>, IdentityError> {
    if let Some(server) = &cfg.metadata_server {
        match metadata::recovery_token(server).await {
            Ok(Some(token)) => found.push((
                TokenSource::Metadata(metadata::recovery_token_url(server)),
                token,
            )),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "no recovery token from the instance metadata"),
        }
    }
    if found.is_empty() {
        Err(none)
    } else {
        Ok(found)
    }
}

/// Joins the cluster with the bootstrap token, or else the recovery token, stores the
/// identity, then deletes the bootstrap token (a recovery token sits on the provider's
/// read-only seed and is spent anyway). Also how a node whose identity expired comes back.
pub async fn join(cfg: &AgentConfig) -> Result<Identity, IdentityError> {
    let node_name = cfg.node_name.clone();
    let (tokens, facts, request) = {
        let cfg = cfg.clone();
        blocking::run(move || {
            let tokens = file_tokens(&cfg);
            let facts = node_facts(&cfg);
            let name = node_name.unwrap_or_else(|| facts.hostname.clone());
            let request = JoinRequestKey::load_or_create(&cfg.state_dir, &name)?;
            Ok::<_, IdentityError>((tokens, facts, request))
        })
        .await?
    };
    let tokens = join_tokens(cfg, tokens).await?;
    let node_name = cfg
        .node_name
        .clone()
        .unwrap_or_else(|| facts.hostname.clone());
    let mut last = None;
    for (source, token) in tokens {
        match join_with(cfg, &token, &node_name, &facts, &request).await {
            Ok(id) => {
                let (saved, state_dir) = (id.clone(), cfg.state_dir.clone());
                let bootstrap = (source == TokenSource::File(cfg.token_file.clone()))
                    .then(|| cfg.token_file.clone());
                blocking::run(move || {
                    saved.save(&state_dir)?;
                    // The token is single-use and now spent: it must not stay on the node.
                    if let Some(t) = bootstrap {
                        fsutil::remove_durably(&t)?;
                    }
                    fsutil::remove_durably(&state_dir.join(JOIN_REQUEST_FILE))?;
                    Ok::<_, IdentityError>(())
                })
                .await?;
                tracing::info!(node = %id.node_name, "joined the cluster; bootstrap token removed");
                return Ok(id);
            }
            // A refused token: the next one may do.
            Err(e @ IdentityError::Refused { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| IdentityError::Other("no token to join with".into())))
}

/// One join with `token`, trying each controller endpoint until one answers.
async fn join_with(
    cfg: &AgentConfig,
    token: &str,
    node_name: &str,
    facts: &pb::NodeFacts,
    request: &JoinRequestKey,
) -> Result<Identity, IdentityError> {
    let mut last = None;
    for endpoint in &cfg.controller {
        let channel = tls::channel(endpoint, pinned_config(cfg.ca_pin))
            .map_err(|e| IdentityError::Other(e.to_string()))?;
        let mut client = pb::enrollment_client::EnrollmentClient::new(channel);
        let req = pb::JoinRequest {
            token: token.to_owned(),
            csr_der: request.csr_der.clone(),
            node_name: node_name.to_owned(),
            facts: Some(facts.clone()),
        };
        match client.join(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let ca_der = first_cert_der(&resp.ca_pem)
                    .map_err(|e| IdentityError::Other(format!("controller CA unreadable: {e}")))?;
                if SpkiPin::of_cert_der(&ca_der).ok() != Some(cfg.ca_pin) {
                    return Err(IdentityError::PinMismatch { pin: cfg.ca_pin });
                }
                let (not_before, not_after) =
                    cert_validity(&resp.certificate_pem).ok_or_else(|| {
                        IdentityError::Other("controller sent an unreadable certificate".into())
                    })?;
                return Ok(Identity {
                    node_name: resp.node_name,
                    key_pem: request.key.serialize_pem(),
                    cert_pem: resp.certificate_pem,
                    ca_pem: resp.ca_pem,
                    not_before,
                    not_after,
                });
            }
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    || status.code() == tonic::Code::Unknown =>
            {
                last = Some(IdentityError::Unreachable {
                    endpoint: endpoint.clone(),
                    message: status.message().to_owned(),
                });
            }
            Err(status) => {
                return Err(IdentityError::Refused {
                    endpoint: endpoint.clone(),
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| IdentityError::Other("no controller endpoint configured".into())))
}

/// Renews the node certificate over mutual TLS with a fresh key.
pub async fn renew(
    cfg: &AgentConfig,
    endpoint: &str,
    current: &Identity,
) -> Result<Identity, IdentityError> {
    let (key, csr_der) = new_key_and_csr(&current.node_name);
    let mut client = pb::node_service_client::NodeServiceClient::new(current.channel(endpoint)?);
    let resp = client
        .renew(pb::RenewRequest { csr_der })
        .await
        .map_err(|s| IdentityError::Refused {
            endpoint: endpoint.to_owned(),
            code: s.code(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    let (not_before, not_after) = cert_validity(&resp.certificate_pem)
        .ok_or_else(|| IdentityError::Other("controller sent an unreadable certificate".into()))?;
    let id = Identity {
        node_name: current.node_name.clone(),
        key_pem: key.serialize_pem(),
        cert_pem: resp.certificate_pem,
        ca_pem: current.ca_pem.clone(),
        not_before,
        not_after,
    };
    let (saved, state_dir) = (id.clone(), cfg.state_dir.clone());
    blocking::run(move || saved.save(&state_dir)).await?;
    tracing::info!(node = %id.node_name, not_after = id.not_after, "node certificate renewed");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening #10 (lost join reply): the join request (key and CSR) is kept until a join
    /// succeeds, so a retry sends the very same CSR, which the controller admits again with
    /// the token the lost reply spent; another node name gets a new request.
    #[test]
    fn a_join_is_retried_with_the_same_request() {
        let dir = tempfile::tempdir().unwrap();
        let first = JoinRequestKey::load_or_create(dir.path(), "node-1").unwrap();
        let again = JoinRequestKey::load_or_create(dir.path(), "node-1").unwrap();
        assert_eq!(
            first.csr_der, again.csr_der,
            "the same CSR after a lost reply"
        );
        assert_eq!(first.key.serialize_pem(), again.key.serialize_pem());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(JOIN_REQUEST_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the key is the node's alone");
        let renamed = JoinRequestKey::load_or_create(dir.path(), "node-2").unwrap();
        assert_ne!(renamed.csr_der, first.csr_der);
        std::fs::write(dir.path().join(JOIN_REQUEST_FILE), "garbage").unwrap();
        let fresh = JoinRequestKey::load_or_create(dir.path(), "node-2").unwrap();
        assert_ne!(fresh.csr_der, renamed.csr_der, "a damaged file is replaced");
    }

    #[test]
    fn load_reads_back_what_save_wrote() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let (key, _) = new_key_and_csr("node-1");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "node-1");
        params.distinguished_name = dn;
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let cert_pem = params.self_signed(&key).unwrap().pem();
        let saved = Identity {
            node_name: "node-1".into(),
            key_pem: key.serialize_pem(),
            cert_pem: cert_pem.clone(),
            ca_pem: cert_pem,
            not_before: 0,
            not_after: 0,
        };
        saved.save(dir.path()).unwrap();
        let id = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(id.node_name, "node-1");
        assert_eq!(id.cert_pem, saved.cert_pem);
        assert_eq!(
            (id.not_before, id.not_after),
            (1_893_542_400, 1_925_078_400)
        );
        assert!(id.client_config().is_ok());

        std::fs::write(dir.path().join(IDENTITY_FILE), saved.key_pem).unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
