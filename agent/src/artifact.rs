//! The agent's side of the artifact pipeline (`pangaea-artifact`): turning assignment
//! entries into install specs under the agent's root, and the controller's mirror as a
//! source (`pangaea-mirror:<algorithm>/<hex>`, streamed over the mutual-TLS channel, or read
//! from the node's read-only view of the mirror directory where the provider gives one).

use bytes::Bytes;
use pangaea_artifact::source::FileSource;
use pangaea_artifact::{ArtifactSpec, Body, BoxFuture, Chunks, Digest, FetchError, Member, Source};
use pangaea_proto as pb;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

pub use pangaea_artifact::MIRROR_SCHEME;

/// The install spec of an assignment's artifact, with paths under `root`.
pub fn spec(root: &Path, a: &pb::Artifact) -> Result<ArtifactSpec, String> {
    let digest = Digest::parse(&a.digest).map_err(|e| format!("artifact {}: {e}", a.url))?;
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    Ok(ArtifactSpec {
        url: a.url.clone(),
        digest,
        dest: under(&a.dest),
        mode: a.mode,
        members: a
            .members
            .iter()
            .map(|m| Member {
                path: m.path.clone(),
                dest: under(&m.dest),
                mode: m.mode,
            })
            .collect(),
    })
}

/// Reads artifacts from the controller's mirror: from the node's read-only view of the
/// mirror directory when the blob is there ([`pangaea_artifact::NODE_MIRROR_DIR`], bound by
/// the local provider), else over the agent's current channel. Either way the fetcher checks
/// the bytes against the digest.
#[derive(Clone, Default)]
pub struct MirrorSource {
    /// The current session's channel (`None` before the first). A watch cell: its clones
    /// share it, and it is set and read without a lock that could be held across `.await`.
    channel: watch::Sender<Option<tonic::transport::Channel>>,
    /// The node's view of the mirror directory, if any.
    node_mirror: Option<PathBuf>,
}

impl MirrorSource {
    /// A source that reads blobs present in `dir` (the node's view of the mirror directory,
    /// under the agent's root) from there, and the others from the controller.
    pub fn with_node_mirror(dir: PathBuf) -> MirrorSource {
        MirrorSource {
            node_mirror: Some(dir),
            ..MirrorSource::default()
        }
    }

    /// Called when a session with the controller starts.
    pub fn set_channel(&self, channel: tonic::transport::Channel) {
        self.channel.send_replace(Some(channel));
    }

    /// The current session's channel to the controller (`None` before the first).
    pub fn channel(&self) -> Option<tonic::transport::Channel> {
        self.channel.borrow().clone()
    }
}

struct MirrorChunks {
    url: String,
    stream: tonic::Streaming<pb::ArtifactChunk>,
    first: Option<Bytes>,
}

impl Chunks for MirrorChunks {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, FetchError>> {
        Box::pin(async move {
            if let Some(b) = self.first.take() {
                return Ok(Some(b));
            }
            match self.stream.message().await {
                Ok(Some(c)) => Ok(Some(Bytes::from(c.data))),
                Ok(None) => Ok(None),
                Err(s) => Err(FetchError::Transport {
                    url: self.url.clone(),
                    message: format!("{:?}: {}", s.code(), s.message()),
                }),
            }
        })
    }
}

impl Source for MirrorSource {
    fn open<'a>(&'a self, url: &'a str, offset: u64) -> BoxFuture<'a, Result<Body, FetchError>> {
        Box::pin(async move {
            let transport = |message: String| FetchError::Transport {
                url: url.to_owned(),
                message,
            };
            let digest = pangaea_artifact::MirrorUrl::parse(url)
                .map_err(|e| transport(e.to_string()))?
                .digest()
                .clone();
            if let Some(dir) = &self.node_mirror {
                let blob = pangaea_artifact::blob_path(dir, &digest);
                if blob.is_file() {
                    tracing::debug!(blob = %blob.display(), "from the node's view of the mirror");
                    let file_url = format!("file://{}", blob.display());
                    return FileSource.open(&file_url, offset).await;
                }
            }
            let digest = digest.to_string();
            let channel = self
                .channel()
                .ok_or_else(|| transport("not connected to the controller yet".into()))?;
            let mut client = pb::node_service_client::NodeServiceClient::new(channel);
            let mut stream = client
                .fetch_artifact(pb::FetchArtifactRequest { digest, offset })
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::NotFound => FetchError::Http {
                        url: url.to_owned(),
                        status: 404,
                    },
                    _ => transport(format!("{:?}: {}", s.code(), s.message())),
                })?
                .into_inner();
            let first = stream
                .message()
                .await
                .map_err(|s| transport(format!("{:?}: {}", s.code(), s.message())))?;
            let (start, total, first) = match first {
                Some(c) => (c.offset, Some(c.total_size), Some(Bytes::from(c.data))),
                None => (offset, None, None),
            };
            Ok(Body {
                start,
                total,
                chunks: Box::new(MirrorChunks {
                    url: url.to_owned(),
                    stream,
                    first,
                }),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangaea_artifact::{DigestKind, Fetcher, RetryPolicy, Sources};
    use std::time::Duration;

    /// A mirror directory holding `data` under its SHA-256, and the mirror URL naming it.
    fn mirror_with(dir: &Path, data: &[u8]) -> (Digest, String) {
        std::fs::create_dir_all(dir).unwrap();
        let tmp = dir.join("tmp");
        std::fs::write(&tmp, data).unwrap();
        let digest = Digest::of_file(DigestKind::Sha256, &tmp).unwrap();
        let blob = pangaea_artifact::blob_path(dir, &digest);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::rename(&tmp, &blob).unwrap();
        let url = pangaea_artifact::MirrorUrl::new(digest.clone()).to_string();
        (digest, url)
    }

    fn fetcher(source: MirrorSource) -> Fetcher {
        let mut sources = Sources::standard();
        sources.register(MIRROR_SCHEME, std::sync::Arc::new(source));
        Fetcher::new(sources, 1).with_policy(RetryPolicy {
            attempts: 1,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
        })
    }

    fn install_spec(dest: &Path, digest: Digest, url: String) -> ArtifactSpec {
        ArtifactSpec {
            url,
            digest,
            dest: dest.to_owned(),
            mode: 0o755,
            members: vec![],
        }
    }

    #[tokio::test]
    async fn a_blob_in_the_nodes_view_of_the_mirror_needs_no_controller() {
        let d = tempfile::tempdir().unwrap();
        let mirror = d.path().join("mirror");
        let data = b"#!/bin/sh\necho etcd\n".repeat(1000);
        let (digest, url) = mirror_with(&mirror, &data);
        // No channel was ever set: the controller cannot have served it.
        let source = MirrorSource::with_node_mirror(mirror.clone());
        let body = source.open(&url, 7).await.unwrap();
        assert_eq!((body.start, body.total), (7, Some(data.len() as u64)));

        let dest = d.path().join("bin/etcd");
        fetcher(source)
            .install(&install_spec(&dest, digest, url))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }

    #[tokio::test]
    async fn a_blob_missing_from_the_nodes_view_is_asked_of_the_controller() {
        let d = tempfile::tempdir().unwrap();
        let mirror = d.path().join("mirror");
        let (_, url) = mirror_with(&mirror, b"present");
        let absent = pangaea_artifact::MirrorUrl::new(
            Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
        )
        .to_string();
        let source = MirrorSource::with_node_mirror(mirror);
        assert!(source.open(&url, 0).await.is_ok());
        let Err(err) = source.open(&absent, 0).await else {
            panic!("an absent blob must go to the controller")
        };
        assert!(
            err.to_string()
                .contains("not connected to the controller yet"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn altered_bytes_in_the_nodes_view_are_never_installed() {
        let d = tempfile::tempdir().unwrap();
        let mirror = d.path().join("mirror");
        let (digest, url) = mirror_with(&mirror, b"the real binary");
        std::fs::write(
            pangaea_artifact::blob_path(&mirror, &digest),
            b"a replacement",
        )
        .unwrap();
        let dest = d.path().join("bin/etcd");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, b"the previous version").unwrap();
        let err = fetcher(MirrorSource::with_node_mirror(mirror))
            .install(&install_spec(&dest, digest, url))
            .await
            .unwrap_err();
        assert!(
            matches!(err, pangaea_artifact::FetchError::Mismatch { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"the previous version");
    }
}
