//! Reading certificates back for display (`pki show`, expiry in `status`) and checks. The
//! reading itself is `pangaea_core::x509`'s, shared with the agent; the controller adds its
//! date format.

pub use pangaea_core::x509::{CertInfo, first_cert_der};

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
