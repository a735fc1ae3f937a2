//! Artifacts: every binary a node runs arrives as a source URL plus a digest.
//!
//! The pipeline ([`Fetcher::install`]) makes a partial or unverified file at the destination
//! impossible: bytes stream into a `.partial` file beside the destination while being hashed
//! (on a separate thread, so hashing overlaps the transfer), the file is fsynced, its digest
//! compared, and only then renamed into place and the directory fsynced. The previous version
//! stays in place on every failure. An interrupted download resumes with an HTTP `Range`
//! request from the bytes already on disk; if the final digest of a resumed download does not
//! match, the partial file is discarded and the download starts over once.
//!
//! Sources are pluggable by URL scheme ([`Source`]): `http(s)://` (reqwest), `file://`, and
//! whatever the embedding program registers (the agent adds the controller's mirror).

#![warn(missing_docs)]

pub mod archive;
pub mod digest;
pub mod error;
pub mod fetch;
pub mod mirror;
pub mod progress;
pub mod source;
pub mod spec;
pub mod tree;

pub use digest::{Digest, DigestKind};
pub use error::FetchError;
pub use fetch::{DEFAULT_MAX_SIZE, Fetcher, Installed, RetryPolicy};
pub use mirror::{MIRROR_SCHEME, MirrorUrl, MirrorUrlError, NODE_MIRROR_DIR, blob_path};
pub use progress::{Progress, State, Status};
pub use source::{Body, BoxFuture, Chunks, Source, Sources};
pub use spec::{ArtifactSpec, Member};
