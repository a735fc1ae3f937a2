//! Reading certificates back for display (`pki show`, expiry in `status`) and checks.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Clone, Debug, serde::Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial_hex: String,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
}

impl CertInfo {
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
        Some(CertInfo {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            serial_hex: hex::encode(c.raw_serial()),
            sans,
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            is_ca: c.is_ca(),
        })
    }

    pub fn from_pem(pem: &str) -> Option<CertInfo> {
        CertInfo::from_der(&crate::pki::rustls_pemfile_der(pem)?)
    }

    /// The subject's common name.
    pub fn common_name(&self) -> Option<&str> {
        self.subject.split(", ").find_map(|p| p.strip_prefix("CN="))
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(<[u8; 4]>::try_from(b).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(b).ok()?.into()),
        _ => None,
    }
}

/// Formats unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
