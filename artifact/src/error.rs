//! The one error type of the artifact pipeline. A module of its own because every stage
//! (sources, the download itself, archive extraction) reports through it, and none of them
//! should depend on another just to name its errors.

use std::path::PathBuf;

/// Why an artifact could not be installed. Every variant names the artifact's URL (or the
/// archive), so a failure in a node's health report says which download broke and where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// No source is registered for the URL's scheme.
    #[error("artifact {url}: unsupported source (supported schemes: {supported})")]
    UnsupportedSource {
        /// The artifact's URL.
        url: String,
        /// The schemes that are registered, comma-separated.
        supported: String,
    },
    /// The server answered with an error status (a missing `file://` path is a 404).
    #[error("artifact {url}: HTTP status {status}")]
    Http {
        /// The artifact's URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The connection or the stream broke; what arrived is kept for a resumed attempt.
    #[error("artifact {url}: transfer failed: {message}")]
    Transport {
        /// The artifact's URL.
        url: String,
        /// What the transport reported, with its causes.
        message: String,
    },
    /// The body ended before the size the source announced.
    #[error("artifact {url}: body ended after {got} of {expected} bytes")]
    Truncated {
        /// The artifact's URL.
        url: String,
        /// Bytes the file holds, counting a resumed prefix.
        got: u64,
        /// Bytes the source announced.
        expected: u64,
    },
    /// The body ran past the most an artifact may be: the size the source declared, or
    /// when it declared none the fetcher's maximum ([`crate::Fetcher::with_max_size`]). The
    /// download was abandoned and its partial file removed.
    #[error(
        "artifact {url}: body exceeds {limit} bytes, {}; download abandoned, nothing was installed",
        limit_source(*.declared)
    )]
    TooLarge {
        /// The artifact's URL.
        url: String,
        /// The limit in bytes (of the whole content, counting a resumed prefix).
        limit: u64,
        /// Whether the limit is the size the source declared (else the fetcher's maximum).
        declared: bool,
    },
    /// The downloaded content does not have the pinned digest; it was discarded.
    #[error(
        "artifact {url}: digest mismatch, expected {expected}, got {actual}; nothing was installed"
    )]
    Mismatch {
        /// The artifact's URL.
        url: String,
        /// The pinned digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
        /// Whether the download had resumed from an earlier partial file (then one fresh
        /// attempt is worth it: the earlier bytes may have been the wrong ones).
        resumed: bool,
    },
    /// The destination's file system cannot hold the artifact.
    #[error(
        "artifact {url}: not enough space in {dir}: {need_mib} MiB needed, {free_mib} MiB free; {dest} left as it was"
    )]
    DiskFull {
        /// The artifact's URL.
        url: String,
        /// The directory the artifact goes to.
        dir: PathBuf,
        /// The destination, untouched.
        dest: PathBuf,
        /// Space needed, MiB (the remaining bytes plus a margin).
        need_mib: u64,
        /// Space free, MiB.
        free_mib: u64,
    },
    /// A local file operation failed.
    #[error("artifact {url}: {action} {path}: {message}")]
    Io {
        /// The artifact's URL.
        url: String,
        /// What was being done (`create directory`, `write`, `rename into place`, …).
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        message: String,
    },
    /// Extracting the members of a verified archive failed; none of them was installed.
    #[error("archive {archive}: {message}")]
    Archive {
        /// The archive being extracted.
        archive: PathBuf,
        /// What went wrong (a missing member, a read or write error).
        message: String,
    },
}

fn limit_source(declared: bool) -> &'static str {
    if declared {
        "the size the source declared"
    } else {
        "the maximum for a download of undeclared size"
    }
}

impl FetchError {
    /// Worth another attempt: the network or the server may do better next time.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Transport { .. } | FetchError::Truncated { .. } => true,
            FetchError::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            // A resumed download whose digest is wrong starts over from zero once.
            FetchError::Mismatch { resumed, .. } => *resumed,
            _ => false,
        }
    }
}
