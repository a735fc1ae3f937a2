//! The one error type of the artifact pipeline. A module of its own because every stage
//! (sources, the download itself, archive extraction) reports through it, and none of them
//! should depend on another just to name its errors.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("artifact {url}: unsupported source (supported schemes: {supported})")]
    UnsupportedSource { url: String, supported: String },
    #[error("artifact {url}: HTTP status {status}")]
    Http { url: String, status: u16 },
    #[error("artifact {url}: transfer failed: {message}")]
    Transport { url: String, message: String },
    #[error("artifact {url}: body ended after {got} of {expected} bytes")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "artifact {url}: digest mismatch, expected {expected}, got {actual}; nothing was installed"
    )]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
        resumed: bool,
    },
    #[error(
        "artifact {url}: not enough space in {dir}: {need_mib} MiB needed, {free_mib} MiB free; {dest} left as it was"
    )]
    DiskFull {
        url: String,
        dir: PathBuf,
        dest: PathBuf,
        need_mib: u64,
        free_mib: u64,
    },
    #[error("artifact {url}: {action} {path}: {message}")]
    Io {
        url: String,
        action: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("archive {archive}: {message}")]
    Archive { archive: PathBuf, message: String },
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
