//! The agent's side of the artifact pipeline (`pangaea-artifact`): turning assignment
//! entries into install specs under the agent's root, and the controller's mirror as a
//! source (`pangaea-mirror:<algorithm>/<hex>`, streamed over the mutual-TLS channel).

use bytes::Bytes;
use pangaea_artifact::{ArtifactSpec, Body, BoxFuture, Chunks, Digest, FetchError, Member, Source};
use pangaea_proto as pb;
use std::path::Path;
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

/// Reads artifacts from the controller's mirror over the agent's current channel.
#[derive(Clone, Default)]
pub struct MirrorSource {
    /// The current session's channel (`None` before the first). A watch cell: its clones
    /// share it, and it is set and read without a lock that could be held across `.await`.
    channel: watch::Sender<Option<tonic::transport::Channel>>,
}

impl MirrorSource {
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
                .to_string();
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
