//! What to install: the description a caller hands to [`crate::Fetcher::install`]. Kept
//! apart from the pipeline so that archive extraction and callers can name it without
//! depending on the download code.

use crate::digest::Digest;
use std::path::PathBuf;

/// A named file inside a `.tar.gz` artifact, extracted to `dest` after the archive verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub path: String,
    pub dest: PathBuf,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactSpec {
    pub url: String,
    pub digest: Digest,
    pub dest: PathBuf,
    pub mode: u32,
    /// Empty for a plain file; for an archive, the members to extract.
    pub members: Vec<Member>,
}
