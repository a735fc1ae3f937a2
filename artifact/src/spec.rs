//! What to install: the description a caller hands to [`crate::Fetcher::install`]. Kept
//! apart from the pipeline so that archive extraction and callers can name it without
//! depending on the download code.

use crate::digest::Digest;
use std::path::PathBuf;

/// A named file inside a `.tar.gz` artifact, extracted to `dest` after the archive verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Path inside the archive (a leading `./` does not matter).
    pub path: String,
    /// Where the member is installed.
    pub dest: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

/// One artifact to install: where it comes from, what it must hash to, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// Where the bytes come from; its scheme picks the [`crate::Source`].
    pub url: String,
    /// The digest the content must have; nothing else is ever installed.
    pub digest: Digest,
    /// Where the file (for an archive: the verified archive itself) is installed.
    pub dest: PathBuf,
    /// Permission bits of `dest`.
    pub mode: u32,
    /// Empty for a plain file; for an archive, the members to extract.
    pub members: Vec<Member>,
}
