//! Content digests: `sha256:<64 hex>` or `sha512:<128 hex>` (a bare 64-hex string is taken
//! as SHA-256). SHA-256 uses the CPU's SHA extensions where present (the `sha2` crate detects
//! them at run time); SHA-512 is offered because some upstreams (Kubernetes release bundles)
//! publish only that.

use sha2::Digest as _;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// A hash algorithm artifacts are pinned with.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DigestKind {
    /// SHA-256 (the default: most upstreams publish it).
    Sha256,
    /// SHA-512 (what some upstreams publish instead).
    Sha512,
}

/// A content digest; displays (and parses) as `sha256:<hex>` or `sha512:<hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// The algorithm.
    pub kind: DigestKind,
    /// The raw hash (32 or 64 bytes).
    pub bytes: Vec<u8>,
}

/// A string that is not a digest (the string is kept for the message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
pub struct MalformedDigest(pub String);

impl Digest {
    /// Parses `sha256:<64 hex>`, `sha512:<128 hex>` or a bare 64-hex SHA-256; hex must be
    /// lowercase.
    pub fn parse(s: &str) -> Result<Digest, MalformedDigest> {
        let bad = || MalformedDigest(s.to_owned());
        let (kind, hexpart) = match s.split_once(':') {
            Some(("sha256", h)) => (DigestKind::Sha256, h),
            Some(("sha512", h)) => (DigestKind::Sha512, h),
            None if s.len() == 64 => (DigestKind::Sha256, s),
            _ => return Err(bad()),
        };
        let want = match kind {
            DigestKind::Sha256 => 64,
            DigestKind::Sha512 => 128,
        };
        if hexpart.len() != want
            || !hexpart
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        Ok(Digest {
            kind,
            bytes: hex::decode(hexpart).map_err(|_| bad())?,
        })
    }

    /// The hash in lowercase hex, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// The algorithm's name (`sha256`, `sha512`).
    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            DigestKind::Sha256 => "sha256",
            DigestKind::Sha512 => "sha512",
        }
    }

    /// A hasher of this digest's kind, to check content against it.
    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.kind)
    }

    /// Digest of a file of this kind; `None` when it cannot be read.
    pub fn of_file(kind: DigestKind, path: &Path) -> Option<Digest> {
        let mut f = std::fs::File::open(path).ok()?;
        let mut h = Hasher::new(kind);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return Some(h.finish()),
                Ok(n) => h.update(&buf[..n]),
                Err(_) => return None,
            }
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = MalformedDigest;
    fn from_str(s: &str) -> Result<Digest, MalformedDigest> {
        Digest::parse(s)
    }
}

/// An incremental hasher of either kind.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 in progress.
    Sha256(sha2::Sha256),
    /// SHA-512 in progress.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A hasher of `kind` that has seen nothing yet.
    pub fn new(kind: DigestKind) -> Hasher {
        match kind {
            DigestKind::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestKind::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                kind: DigestKind::Sha256,
                bytes: h.finalize().to_vec(),
            },
            Hasher::Sha512(h) => Digest {
                kind: DigestKind::Sha512,
                bytes: h.finalize().to_vec(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_bare_sha256() {
        let e256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            Digest::parse(e256).unwrap().to_string(),
            format!("sha256:{e256}")
        );
        assert_eq!(
            Digest::parse(&format!("sha256:{e256}")).unwrap().kind,
            DigestKind::Sha256
        );
        let h = Hasher::new(DigestKind::Sha256);
        assert_eq!(h.finish().hex(), e256, "SHA-256 of the empty string");
        let e512 = Hasher::new(DigestKind::Sha512).finish();
        assert_eq!(Digest::parse(&e512.to_string()).unwrap(), e512);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256:",
            "md5:abc",
            "sha256:ABCDEF",
            &format!("sha256:{}", "0".repeat(63)),
            &format!("sha512:{}", "0".repeat(64)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }
}
