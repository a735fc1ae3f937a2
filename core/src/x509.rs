//! Reading X.509 certificates, for both sides: the agent reads its own identity (node name,
//! validity), the controller shows certificates (`pki show`, expiry in `status`), checks
//! whether its serving certificate still fits, and names a node from its client certificate.
//!
//! Only reading lives here: [`first_cert_der`] (PEM to DER of the first certificate) and
//! [`CertInfo`] (the fields Pangaea shows and checks). Issuing certificates is the
//! controller's PKI.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a PEM text yielded no certificate.
#[derive(Debug, thiserror::Error)]
#[error("no PEM certificate")]
pub struct PemError(#[from] rustls_pki_types::pem::Error);

/// DER of the first certificate (`BEGIN CERTIFICATE` section) in `pem`. Other sections, such
/// as a private key kept in the same file before it, are skipped.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PemError> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
}

/// What Pangaea reads from a certificate. Serializes (for `pki show -o json`) as `subject`,
/// `issuer`, `serial_hex`, `sans`, `not_before`, `not_after`, `is_ca`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// Subject distinguished name, e.g. `O=pangaea, CN=node-1`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number as lowercase hex of its DER bytes.
    pub serial_hex: String,
    /// Subject alternative names: DNS names, IP addresses and URIs, in certificate order.
    pub sans: Vec<String>,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Basic constraints say CA.
    pub is_ca: bool,
    /// The subject's first common name, read from the parsed name (not from `subject`'s
    /// text), when it is a string. Read with [`CertInfo::common_name`].
    #[serde(skip)]
    common_name: Option<String>,
}

impl CertInfo {
    /// Reads a DER certificate; `None` when it is not one.
    pub fn from_der(der: &[u8]) -> Option<CertInfo> {
        let (_, c) = X509Certificate::from_der(der).ok()?;
        let sans = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        GeneralName::IPAddress(b) => ip_from_bytes(b).map(|i| i.to_string()),
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let common_name = c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Some(CertInfo {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            serial_hex: hex::encode(c.raw_serial()),
            sans,
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            is_ca: c.is_ca(),
            common_name,
        })
    }

    /// Reads the first certificate of a PEM text; `None` when there is no readable one.
    pub fn from_pem(pem: &str) -> Option<CertInfo> {
        CertInfo::from_der(&first_cert_der(pem).ok()?)
    }

    /// The subject's common name (a node certificate's is the node name).
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }
}

/// What Pangaea reads from a certificate revocation list: the serials it revokes and until
/// when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// Issuer distinguished name.
    pub issuer: String,
    /// The revoked serial numbers, lowercase hex of their DER bytes (as
    /// [`CertInfo::serial_hex`]).
    pub serials_hex: Vec<String>,
    /// The list's `nextUpdate`, unix seconds (0 when it has none).
    pub next_update: i64,
}

impl CrlInfo {
    /// Reads the first `X509 CRL` section of a PEM text; `None` when there is no readable one.
    pub fn from_pem(pem: &str) -> Option<CrlInfo> {
        use rustls_pki_types::CertificateRevocationListDer;
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).ok()?;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).ok()?;
        Some(CrlInfo {
            issuer: crl.issuer().to_string(),
            serials_hex: crl
                .iter_revoked_certificates()
                .map(|r| hex::encode(r.raw_serial()))
                .collect(),
            next_update: crl.next_update().map_or(0, |t| t.timestamp()),
        })
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(<[u8; 4]>::try_from(b).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(b).ok()?.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        SanType, SerialNumber,
    };

    fn dn(cn: &str) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "pangaea");
        dn.push(DnType::CommonName, cn);
        dn
    }

    /// A CA, and a node certificate it signed: (ca pem, node key, node pem).
    fn ca_and_node() -> (String, KeyPair, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name = dn("pangaea-controller-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut node = CertificateParams::new(vec!["node-1".into(), "10.0.0.7".into()]).unwrap();
        node.subject_alt_names
            .push(SanType::URI("spiffe://pangaea/node-1".try_into().unwrap()));
        node.distinguished_name = dn("node-1");
        node.serial_number = Some(SerialNumber::from_slice(&[0x01, 0xab, 0xcd]));
        node.not_before = rcgen::date_time_ymd(2030, 1, 2);
        node.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let node_pem = node.signed_by(&key, &issuer).unwrap().pem();
        (ca_pem, key, node_pem)
    }

    #[test]
    fn reads_what_pangaea_shows_and_checks() {
        let (ca_pem, _, node_pem) = ca_and_node();
        let node = CertInfo::from_pem(&node_pem).unwrap();
        assert_eq!(node.common_name(), Some("node-1"));
        assert_eq!(node.subject, "O=pangaea, CN=node-1");
        assert_eq!(node.issuer, "O=pangaea, CN=pangaea-controller-ca");
        assert_eq!(node.serial_hex, "01abcd");
        assert_eq!(node.sans, ["node-1", "10.0.0.7", "spiffe://pangaea/node-1"]);
        assert_eq!(node.not_before, 1_893_542_400); // 2030-01-02T00:00:00Z
        assert_eq!(node.not_after, 1_925_078_400); // 2031-01-02T00:00:00Z
        assert!(!node.is_ca);

        let ca = CertInfo::from_pem(&ca_pem).unwrap();
        assert!(ca.is_ca);
        assert_eq!(ca.common_name(), Some("pangaea-controller-ca"));
        assert!(ca.sans.is_empty());
    }

    #[test]
    fn the_first_certificate_is_read_past_a_key_and_before_others() {
        // The agent keeps key and certificate in one file, key first; a chain may follow.
        let (ca_pem, key, node_pem) = ca_and_node();
        let file = format!("{}{node_pem}{ca_pem}", key.serialize_pem());
        let der = first_cert_der(&file).unwrap();
        assert_eq!(
            CertInfo::from_der(&der).unwrap(),
            CertInfo::from_pem(&node_pem).unwrap()
        );
        assert_eq!(
            CertInfo::from_pem(&file).unwrap().common_name(),
            Some("node-1")
        );
    }

    #[test]
    fn no_certificate_is_none_or_an_error() {
        let key = KeyPair::generate().unwrap().serialize_pem();
        for text in ["", "garbage", key.as_str()] {
            assert!(first_cert_der(text).is_err(), "{text}");
            assert!(CertInfo::from_pem(text).is_none(), "{text}");
        }
        assert!(CertInfo::from_der(b"not DER").is_none());
        assert!(
            first_cert_der("")
                .unwrap_err()
                .to_string()
                .contains("no PEM certificate")
        );
    }

    #[test]
    fn json_keeps_its_fields() {
        // `pki show -o json` prints these; the common name is read with its method.
        let (_, _, node_pem) = ca_and_node();
        let json = serde_json::to_string(&CertInfo::from_pem(&node_pem).unwrap()).unwrap();
        let at: Vec<usize> = [
            "subject",
            "issuer",
            "serial_hex",
            "sans",
            "not_before",
            "not_after",
            "is_ca",
        ]
        .iter()
        .map(|k| json.find(&format!("\"{k}\":")).expect(k))
        .collect();
        assert!(at.is_sorted(), "{json}");
        assert!(!json.contains("common_name"), "{json}");
    }
}
