//! SPKI SHA-256 pins: the hash of a certificate's DER-encoded SubjectPublicKeyInfo, written
//! `sha256:<64 hex>` as kubeadm's `--discovery-token-ca-cert-hash`. Pinning the key rather
//! than the certificate lets the CA certificate be re-issued with the same key.

use sha2::{Digest, Sha256};
use std::fmt;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a pin could not be read or computed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The text is not `sha256:<64 hex>`.
    #[error("malformed CA pin {0:?}: expected \"sha256:\" followed by 64 hex digits")]
    Malformed(String),
    /// The DER is not a certificate.
    #[error("cannot parse certificate to compute its pin: {0}")]
    BadCertificate(String),
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo; displays as `sha256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SpkiPin([u8; 32]);

impl SpkiPin {
    /// The pin of a DER certificate's key.
    pub fn of_cert_der(der: &[u8]) -> Result<Self, PinError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PinError::BadCertificate(e.to_string()))?;
        Ok(SpkiPin(
            Sha256::digest(cert.tbs_certificate.subject_pki.raw).into(),
        ))
    }

    /// Reads `sha256:<64 hex>` (surrounding whitespace is ignored).
    pub fn parse(s: &str) -> Result<Self, PinError> {
        let hexpart = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or_else(|| PinError::Malformed(s.to_owned()))?;
        let bytes = hex::decode(hexpart).map_err(|_| PinError::Malformed(s.to_owned()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| PinError::Malformed(s.to_owned()))?;
        Ok(SpkiPin(arr))
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_differs_per_key() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let pa = SpkiPin::of_cert_der(a.cert.der()).unwrap();
        let pb = SpkiPin::of_cert_der(b.cert.der()).unwrap();
        assert_ne!(pa, pb);
        assert_eq!(SpkiPin::parse(&pa.to_string()).unwrap(), pa);
    }

    #[test]
    fn matches_openssl_style_spki_hash() {
        // The pin is the SHA-256 of the DER SubjectPublicKeyInfo, as
        // `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum`.
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        use rcgen::PublicKeyData;
        let expected: [u8; 32] = Sha256::digest(kp.subject_public_key_info()).into();
        assert_eq!(SpkiPin::of_cert_der(cert.der()).unwrap(), SpkiPin(expected));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            "sha256:zz",
            &format!("sha256:{}", "0".repeat(62)),
        ] {
            assert!(SpkiPin::parse(bad).is_err(), "{bad}");
        }
    }
}
