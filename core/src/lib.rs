//! Types and small mechanisms shared by `pangaea-ctl` and `pangaea-agent`.
//!
//! * [`names`]: validated identifiers (node names) built at the edge with `TryFrom`.
//! * [`token`]: the bootstrap token format, its hashing and constant-time check.
//! * [`pin`]: SPKI SHA-256 pins, as `kubeadm join --discovery-token-ca-cert-hash`.
//! * [`backoff`]: jittered exponential backoff (gRPC's connection-backoff parameters).
//! * [`fsutil`]: atomic file replacement (temp + fsync + rename + fsync dir).
//! * [`tls`]: rustls plumbing under tonic: the pinned-CA verifier, the client connector and
//!   the server's TLS listener that exposes the peer certificate to handlers.
//! * [`x509`]: reading certificates: PEM to DER, and the fields shown and checked.

#![warn(missing_docs)]

pub mod backoff;
pub mod ca;
pub mod fsutil;
pub mod names;
pub mod pin;
pub mod relay;
pub mod tls;
pub mod token;
pub mod x509;

pub use names::NodeName;

/// Installs ring as the process-wide rustls crypto provider. Idempotent; call it once in
/// `main` (and in tests) before any TLS configuration is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error and its causes, as one line (`outer: cause: root cause`): what a log line or an
/// operator message should carry of a transport error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
