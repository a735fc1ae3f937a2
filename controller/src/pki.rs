//! The cluster's PKI, kept in `.pangaea/pki/`.
//!
//! Four CAs and one key pair, all ECDSA P-256, CAs valid for 10 years:
//!
//! | file stem        | signs                                                            |
//! |------------------|------------------------------------------------------------------|
//! | `controller-ca`  | agent identities and the controller's serving certificate; its   |
//! |                  | SPKI hash is the pin agents carry                                |
//! | `cluster-ca`     | Kubernetes serving and client certificates                      |
//! | `etcd-ca`        | etcd peer, server and client certificates                       |
//! | `front-proxy-ca` | the aggregation layer's client certificate                      |
//! | `sa`             | (key pair) service-account token signing                         |
//!
//! The controller CA is separate from the cluster CA on purpose: a node's agent certificate
//! must not authenticate to kube-apiserver (which trusts every client certificate of the
//! cluster CA), and a Kubernetes client certificate must not enroll as a node.
//!
//! Keys are written first, certificates second, each atomically and owner-only (0600, like
//! every file in the state directory), so a crash never leaves a certificate without its key.

pub mod profiles;

use pangaea_core::fsutil::{self, FsError};
use pangaea_core::pin::SpkiPin;
pub use profiles::{LeafSpec, NODE_CERT_LIFETIME, Usage};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// Validity of each CA certificate: ten years from creation.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaf certificates are valid from slightly in the past, for clocks that lag; a tenth of
/// the lifetime at most, so that short-lived certificates are not mostly in the past.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why the PKI could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Writing a key or certificate file failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Reading a key or certificate file failed (other than its not existing).
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CA certificate exists without its key: the CA can sign nothing, and replacing it
    /// would invalidate everything it issued, so this needs the operator.
    #[error(
        "{path} exists but its key {key} is missing: the PKI is damaged; restore .pangaea/pki from a backup"
    )]
    OrphanCertificate {
        /// The CA certificate.
        path: PathBuf,
        /// Where its key should be.
        key: PathBuf,
    },
    /// A stored key or certificate does not parse, or a CA could not be created.
    #[error("{path}: {source}")]
    Crypto {
        /// The file concerned.
        path: PathBuf,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A CSR does not parse or its key is not ECDSA P-256; the requester is at fault.
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
    /// Building or signing a leaf certificate failed (e.g. a name is not a valid DNS name).
    #[error("issue certificate for {cn:?}: {source}")]
    Issue {
        /// The requested common name.
        cn: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

pub use pangaea_core::ca::CaKind;

/// A freshly issued certificate. `key_pem` is empty when the key stayed with the requester.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM), or empty when it was signed from a CSR.
    pub key_pem: String,
    /// Serial number, lowercase hex; what [`NodeRecord::active_serials`] lists.
    ///
    /// [`NodeRecord::active_serials`]: crate::records::NodeRecord::active_serials
    pub serial_hex: String,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

/// One loaded CA: its certificate, and its key ready to sign.
pub struct Ca {
    /// Which CA this is.
    pub kind: CaKind,
    /// Its self-signed certificate (PEM), as stored in `<stem>.crt`.
    pub cert_pem: String,
    /// The same certificate, DER.
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// The cluster's PKI, loaded from `.pangaea/pki/`: every CA of [`CaKind::ALL`] and the
/// service-account key pair.
pub struct Pki {
    dir: PathBuf,
    cas: Vec<Ca>,
    /// The service-account signing key's public half (PEM), also in `sa.pub`.
    pub service_account_public_pem: String,
}

/// The lock file in the PKI directory; see [`PkiLock`].
const LOCK_FILE: &str = ".lock";

/// An exclusive lock over the PKI directory and the secrets generated beside it, held while
/// a key and its certificate (or a secret) are read or written. Every process that issues
/// takes it — the controller daemon, `compile`, `env`, `up` — so two of them never interleave
/// a key of one issuance with the certificate of another, nor create two different CAs or
/// secrets. It is held for one issuance at a time, unlike the state store's lock, which the
/// daemon holds for its life. Released when dropped.
pub struct PkiLock(#[allow(dead_code)] std::fs::File);

impl PkiLock {
    /// Waits for the lock of the PKI directory `dir` (creating the directory).
    pub fn acquire(dir: &Path) -> Result<PkiLock, PkiError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| PkiError::Read {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.lock().map_err(io)?;
        Ok(PkiLock(f))
    }
}

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing (under [`PkiLock`]).
    pub fn load_or_create(dir: &Path) -> Result<Pki, PkiError> {
        let _lock = PkiLock::acquire(dir)?;
        let cas = CaKind::ALL
            .iter()
            .map(|&k| load_or_create_ca(dir, k))
            .collect::<Result<Vec<_>, _>>()?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        let key = match read_opt(&sa_key)? {
            Some(pem) => KeyPair::from_pem(&pem).map_err(|source| PkiError::Crypto {
                path: sa_key.clone(),
                source,
            })?,
            None => {
                let key = new_key();
                fsutil::atomic_write(&sa_key, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
        };
        let public = key.public_key_pem();
        if read_opt(&sa_pub)?.as_deref() != Some(public.as_str()) {
            fsutil::atomic_write(&sa_pub, public.as_bytes(), 0o600)?;
        }
        Ok(Pki {
            dir: dir.to_owned(),
            cas,
            service_account_public_pem: public,
        })
    }

    /// The PKI directory (`.pangaea/pki/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the PKI's [`PkiLock`].
    pub fn lock(&self) -> Result<PkiLock, PkiError> {
        PkiLock::acquire(&self.dir)
    }

    /// Where CA `kind`'s private key is (PEM, 0600).
    pub fn ca_key_path(&self, kind: CaKind) -> PathBuf {
        ca_paths(&self.dir, kind).1
    }

    /// Where the controller's serving certificate is (PEM).
    pub fn controller_cert_path(&self) -> PathBuf {
        self.dir.join("controller.crt")
    }

    /// Where CA `kind`'s certificate is (PEM).
    pub fn ca_cert_path(&self, kind: CaKind) -> PathBuf {
        ca_paths(&self.dir, kind).0
    }

    /// CA `kind` (every kind is loaded).
    pub fn ca(&self, kind: CaKind) -> &Ca {
        self.cas
            .iter()
            .find(|c| c.kind == kind)
            .expect("every CA kind is loaded")
    }

    /// The pin agents are given: SPKI SHA-256 of the controller CA.
    pub fn controller_pin(&self) -> SpkiPin {
        SpkiPin::of_cert_der(&self.ca(CaKind::Controller).cert_der)
            .expect("own CA certificate parses")
    }

    /// Issues a certificate with a key generated here (for certificates the controller
    /// hands out, such as etcd's).
    pub fn issue(&self, kind: CaKind, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let key = new_key();
        let (params, serial) = leaf_params(spec)?;
        let cert = params
            .signed_by(&key, &self.ca(kind).issuer)
            .map_err(|source| PkiError::Issue {
                cn: spec.common_name.clone(),
                source,
            })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial_hex: serial,
            not_after: unix(params.not_after),
        })
    }

    /// Signs the public key of a PKCS#10 request. Only the key (and the request's proof of
    /// possession) is taken from the CSR: subject, names and usages come from `spec`, so a
    /// node cannot ask for more than it is given.
    pub fn sign_csr(
        &self,
        kind: CaKind,
        csr_der: &[u8],
        spec: &LeafSpec,
    ) -> Result<Issued, PkiError> {
        let der = CertificateSigningRequestDer::from(csr_der);
        let csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::BadCsr("the key must be ECDSA P-256".into()));
        }
        let (params, serial) = leaf_params(spec)?;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = signed
            .signed_by(&self.ca(kind).issuer)
            .map_err(|source| PkiError::Issue {
                cn: spec.common_name.clone(),
                source,
            })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: String::new(),
            serial_hex: serial,
            not_after: unix(signed.params.not_after),
        })
    }

    /// A certificate revocation list of CA `kind` listing `revoked`, valid for `lifetime`
    /// from now. Its CRL number is the signing time, so a newer list has a larger one.
    pub fn sign_crl(
        &self,
        kind: CaKind,
        revoked: &[crate::revocation::Entry],
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams};
        let now = OffsetDateTime::now_utc();
        let at = |unix: i64| OffsetDateTime::from_unix_timestamp(unix).unwrap_or(now);
        let issue_err = |source| PkiError::Issue {
            cn: format!("{} revocation list", kind.common_name()),
            source,
        };
        let revoked_certs = revoked
            .iter()
            .map(|e| {
                let serial = hex::decode(&e.serial_hex)
                    .map_err(|_| issue_err(rcgen::Error::CouldNotParseCertificate))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: at(e.revoked_at.unwrap_or(now.unix_timestamp())),
                    reason_code: Some(rcgen::RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + lifetime,
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca(kind).issuer).map_err(issue_err)?;
        crl.pem().map_err(issue_err)
    }

    /// The controller's own serving certificate (controller CA), re-issued when the wanted
    /// names change or when less than a third of its lifetime remains.
    pub fn controller_serving(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let (crt, key) = (self.controller_cert_path(), self.dir.join("controller.key"));
        if let (Some(cert_pem), Some(key_pem)) = (read_opt(&crt)?, read_opt(&key)?)
            && serving_cert_still_fits(&cert_pem, names)
        {
            return Ok((cert_pem, key_pem));
        }
        let issued = self.issue(CaKind::Controller, &profiles::controller_serving(names))?;
        fsutil::atomic_write(&key, issued.key_pem.as_bytes(), 0o600)?;
        fsutil::atomic_write(&crt, issued.cert_pem.as_bytes(), 0o600)?;
        Ok((issued.cert_pem, issued.key_pem))
    }
}

fn serving_cert_still_fits(cert_pem: &str, names: &[String]) -> bool {
    let Some(info) = crate::certinfo::CertInfo::from_pem(cert_pem) else {
        return false;
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let fresh = info.not_after - now > (info.not_after - info.not_before) / 3;
    fresh && names.iter().all(|n| info.sans.iter().any(|s| s == n))
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("ring generates P-256 keys")
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn read_opt(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // no leading zero byte, so the hex form is canonical
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

/// A CA's certificate and key files in the PKI directory.
fn ca_paths(dir: &Path, kind: CaKind) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{}.crt", kind.file_stem())),
        dir.join(format!("{}.key", kind.file_stem())),
    )
}

fn load_or_create_ca(dir: &Path, kind: CaKind) -> Result<Ca, PkiError> {
    let (crt, keyp) = ca_paths(dir, kind);
    let crypto = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Crypto { path, source }
    };
    let (cert_pem, key) = match (read_opt(&crt)?, read_opt(&keyp)?) {
        (Some(cert_pem), Some(key_pem)) => (
            cert_pem,
            KeyPair::from_pem(&key_pem).map_err(crypto(&keyp))?,
        ),
        (Some(_), None) => {
            return Err(PkiError::OrphanCertificate {
                path: crt,
                key: keyp,
            });
        }
        (None, _) => {
            let key = new_key();
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(kind.common_name(), &["pangaea"]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::from_secs(3600);
            params.not_after = now + CA_LIFETIME;
            params.serial_number = Some(random_serial().0);
            let cert = params.self_signed(&key).map_err(crypto(&crt))?;
            fsutil::atomic_write(&keyp, key.serialize_pem().as_bytes(), 0o600)?;
            fsutil::atomic_write(&crt, cert.pem().as_bytes(), 0o600)?;
            (cert.pem(), key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(crypto(&crt))?;
    let cert_der = pangaea_core::x509::first_cert_der(&cert_pem)
        .map_err(|_| PkiError::Crypto {
            path: crt.clone(),
            source: rcgen::Error::CouldNotParseCertificate,
        })?
        .to_vec();
    Ok(Ca {
        kind,
        cert_pem,
        cert_der,
        issuer,
    })
}

fn dn(cn: &str, orgs: &[impl AsRef<str>]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, o.as_ref());
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf_params(spec: &LeafSpec) -> Result<(CertificateParams, String), PkiError> {
    let issue_err = |source| PkiError::Issue {
        cn: spec.common_name.clone(),
        source,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&spec.common_name, &spec.organizations);
    for d in &spec.dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(d.clone().try_into().map_err(issue_err)?));
    }
    params
        .subject_alt_names
        .extend(spec.ips.iter().copied().map(SanType::IpAddress));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match spec.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW.min(spec.lifetime / 10);
    params.not_after = now + spec.lifetime;
    let (serial, serial_hex) = random_serial();
    params.serial_number = Some(serial);
    Ok((params, serial_hex))
}
