//! The URL of an artifact in the controller's mirror: `pangaea-mirror:<algorithm>/<hex>`.
//!
//! The controller writes these URLs into assignments for the content its mirror holds, and
//! the agent's mirror source reads the digest back out of them to ask the controller for the
//! bytes. Both sides go through [`MirrorUrl`], so the scheme and the layout are defined here
//! once: the mirror is content-addressed, so the URL is nothing but the digest.
//!
//! ```
//! use pangaea_artifact::{Digest, MirrorUrl};
//! let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
//! let digest = Digest::parse(&format!("sha256:{hex}")).unwrap();
//! let url = MirrorUrl::from(digest.clone()).to_string();
//! assert_eq!(url, format!("pangaea-mirror:sha256/{hex}"));
//! assert_eq!(MirrorUrl::parse(&url).unwrap().digest(), &digest);
//! ```

use crate::digest::{Digest, MalformedDigest};
use std::fmt;
use std::path::{Path, PathBuf};

/// The URL scheme of the controller's mirror (what a [`crate::Sources`] registers it under).
pub const MIRROR_SCHEME: &str = "pangaea-mirror";

/// Where a node finds the controller's mirror directory itself, read-only, when its provider
/// can give it one (local nodes share the operator's disk: the local provider binds
/// `.pangaea/artifacts` there). The agent reads a blob from there when it is present — the
/// same bytes the controller would stream, still verified against the digest — and asks the
/// controller otherwise.
pub const NODE_MIRROR_DIR: &str = "/var/lib/pangaea/mirror";

/// Where the blob with digest `d` is in a mirror directory: `<dir>/<algorithm>/<hex>`. The
/// one layout of the controller's mirror and of its read-only view on nodes.
pub fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join(d.algorithm()).join(d.hex())
}

/// An artifact in the controller's mirror, named by its digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MirrorUrl(Digest);

/// Why a string is not a mirror URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MirrorUrlError {
    /// Another scheme, or no `<algorithm>/<hex>` after it.
    #[error("{url:?} is not a mirror URL ({MIRROR_SCHEME}:<algorithm>/<hex>)")]
    NotMirror {
        /// The URL as given.
        url: String,
    },
    /// The right shape, but the digest in it is not one.
    #[error("mirror URL {url:?}: {source}")]
    Digest {
        /// The URL as given.
        url: String,
        /// What is wrong with the digest.
        source: MalformedDigest,
    },
}

impl MirrorUrl {
    /// The mirror URL of `digest`.
    pub fn new(digest: Digest) -> MirrorUrl {
        MirrorUrl(digest)
    }

    /// Parses `pangaea-mirror:<algorithm>/<hex>`.
    pub fn parse(url: &str) -> Result<MirrorUrl, MirrorUrlError> {
        let (algorithm, hex) = url
            .strip_prefix(MIRROR_SCHEME)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|path| path.split_once('/'))
            .ok_or_else(|| MirrorUrlError::NotMirror {
                url: url.to_owned(),
            })?;
        Digest::parse(&format!("{algorithm}:{hex}"))
            .map(MirrorUrl)
            .map_err(|source| MirrorUrlError::Digest {
                url: url.to_owned(),
                source,
            })
    }

    /// The digest the URL names.
    pub fn digest(&self) -> &Digest {
        &self.0
    }

    /// The digest the URL names, by value.
    pub fn into_digest(self) -> Digest {
        self.0
    }
}

impl From<Digest> for MirrorUrl {
    fn from(digest: Digest) -> MirrorUrl {
        MirrorUrl(digest)
    }
}

impl fmt::Display for MirrorUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MIRROR_SCHEME}:{}/{}", self.0.algorithm(), self.0.hex())
    }
}

impl std::str::FromStr for MirrorUrl {
    type Err = MirrorUrlError;
    fn from_str(s: &str) -> Result<MirrorUrl, MirrorUrlError> {
        MirrorUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{DigestKind, Hasher};

    #[test]
    fn formats_and_parses_back_both_kinds() {
        for kind in [DigestKind::Sha256, DigestKind::Sha512] {
            let mut h = Hasher::new(kind);
            h.update(b"pangaea");
            let d = h.finish();
            let url = MirrorUrl::new(d.clone()).to_string();
            assert_eq!(url, format!("pangaea-mirror:{}/{}", d.algorithm(), d.hex()));
            assert_eq!(url.parse::<MirrorUrl>().unwrap().into_digest(), d);
        }
    }

    #[test]
    fn refuses_other_schemes_and_bad_digests() {
        let hex = "0".repeat(64);
        for url in [
            format!("https://example.com/sha256/{hex}"),
            format!("pangaea-mirrors:sha256/{hex}"),
            format!("pangaea-mirror:sha256:{hex}"),
            format!("pangaea-mirror{hex}"),
            String::new(),
        ] {
            assert_eq!(
                MirrorUrl::parse(&url),
                Err(MirrorUrlError::NotMirror { url: url.clone() }),
                "{url}"
            );
        }
        for url in [
            format!("pangaea-mirror:md5/{hex}"),
            format!("pangaea-mirror:sha256/{}", &hex[1..]),
            format!("pangaea-mirror:sha512/{hex}"),
            format!("pangaea-mirror:/{hex}"),
        ] {
            let e = MirrorUrl::parse(&url).unwrap_err();
            assert!(matches!(e, MirrorUrlError::Digest { .. }), "{url}: {e}");
            assert!(e.to_string().contains("malformed digest"), "{e}");
        }
    }
}
