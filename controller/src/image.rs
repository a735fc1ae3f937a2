//! `image load` on the controller's side: an image archive already in the mirror becomes a
//! job for each chosen node ([`crate::jobs`]), and the nodes' progress and outcomes become
//! a stream of events for the operator's command (`Admin/LoadImage`).
//!
//! Every node gets an outcome: its own, or one the controller gives it — not connected
//! within [`CONNECT_GRACE`] (a stopped node is named at once rather than waited for), or
//! still busy when the timeout ends. The job is cancelled when the command goes away.

use crate::controller::{Controller, ControllerError};
use crate::jobs::{self, Statuses};
use pangaea_artifact::Digest;
use pangaea_proto as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The containerd namespace images are loaded into: the one the kubelet (CRI) reads.
pub const NAMESPACE: &str = "k8s.io";

/// How long a load waits for every node when the request does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a chosen node may take to connect its jobs stream before its part fails (by
/// default; `ControllerConfig::job_connect_grace`).
pub const CONNECT_GRACE: Duration = Duration::from_secs(15);

/// The largest archive that can be loaded (what an agent accepts).
pub const MAX_ARCHIVE_BYTES: u64 = pangaea_artifact::DEFAULT_MAX_SIZE;

/// Why a load could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The request's digest is not one.
    #[error("the archive's digest {0:?} is not sha256:<hex> or sha512:<hex>")]
    Digest(String),
    /// The mirror does not hold the archive (the command puts it there first).
    #[error("the archive {0} is not in the controller's mirror")]
    NotInMirror(String),
    /// The mirror's copy does not have the announced size.
    #[error("the archive {digest} in the mirror is {actual} bytes, not {announced}")]
    Size {
        /// The archive.
        digest: String,
        /// The size the request gave.
        announced: u64,
        /// The size in the mirror.
        actual: u64,
    },
    /// Larger than agents accept.
    #[error("the archive is {0} bytes; at most {MAX_ARCHIVE_BYTES} bytes can be loaded")]
    TooLarge(u64),
    /// A node the request names is not in the cluster (or was removed).
    #[error("no node named {name:?} in the cluster (nodes: {known})")]
    NoSuchNode {
        /// The name asked for.
        name: String,
        /// The nodes there are.
        known: String,
    },
    /// The cluster has no nodes at all.
    #[error("the cluster has no nodes yet (`pangaea-ctl up` creates them)")]
    NoNodes,
    /// The state could not be read.
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// Starts loading the archive of `req` into its nodes; the events (each node's state at
/// the start, then every change, ending once every node has an outcome) arrive on the
/// returned channel. Dropping the receiver cancels the job.
pub fn load(
    c: &Arc<Controller>,
    req: pb::LoadImageRequest,
) -> Result<mpsc::Receiver<pb::LoadImageEvent>, LoadError> {
    let digest = Digest::parse(&req.digest).map_err(|_| LoadError::Digest(req.digest.clone()))?;
    if req.size > MAX_ARCHIVE_BYTES {
        return Err(LoadError::TooLarge(req.size));
    }
    let actual = std::fs::metadata(c.mirror.blob_path(&digest))
        .map_err(|_| LoadError::NotInMirror(digest.to_string()))?
        .len();
    if actual != req.size {
        return Err(LoadError::Size {
            digest: digest.to_string(),
            announced: req.size,
            actual,
        });
    }
    let live = c.live_node_names()?;
    let targets = if req.nodes.is_empty() {
        live.clone()
    } else {
        let mut t = Vec::new();
        for n in &req.nodes {
            if !live.contains(n) {
                return Err(LoadError::NoSuchNode {
                    name: n.clone(),
                    known: live.join(", "),
                });
            }
            if !t.contains(n) {
                t.push(n.clone());
            }
        }
        t
    };
    if targets.is_empty() {
        return Err(LoadError::NoNodes);
    }
    let timeout = match req.timeout_seconds {
        0 => DEFAULT_TIMEOUT,
        s => Duration::from_secs(s),
    };
    let job = pb::Job {
        id: hex::encode(rand::random::<[u8; 8]>()),
        timeout_seconds: timeout.as_secs(),
        kind: Some(pb::job::Kind::ImageLoad(pb::ImageLoad {
            digest: digest.to_string(),
            size: req.size,
            namespace: NAMESPACE.into(),
            name: req.name.clone(),
        })),
    };
    tracing::info!(job = %job.id, archive = %req.name, %digest, nodes = ?targets, "image load");
    Ok(watch(c, job, &targets, timeout))
}

/// Submits `job` to `targets` and streams each node's state at the start, then every
/// change, until each has an outcome: its own, or one given when it did not connect within
/// the grace or did not finish within `timeout`. Dropping the receiver cancels the job.
pub fn watch(
    c: &Arc<Controller>,
    job: pb::Job,
    targets: &[String],
    timeout: Duration,
) -> mpsc::Receiver<pb::LoadImageEvent> {
    let handle = c.jobs.submit(job, targets);
    let (tx, rx) = mpsc::channel(64);
    let jobs = c.jobs.clone();
    let grace = c.config().job_connect_grace;
    tokio::spawn(async move {
        let mut status = handle.status.clone();
        let mut sent = Statuses::new();
        let grace = tokio::time::sleep(grace.min(timeout));
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(grace, deadline);
        let mut graced = false;
        loop {
            let now = status.borrow_and_update().clone();
            for (node, r) in &now {
                if sent.get(node) != Some(r) {
                    let event = pb::LoadImageEvent {
                        node: node.clone(),
                        report: Some(r.clone()),
                    };
                    if tx.send(event).await.is_err() {
                        return; // the command went away: the handle's drop cancels
                    }
                }
            }
            sent = now;
            if sent.values().all(jobs::is_final) {
                return;
            }
            tokio::select! {
                r = status.changed() => if r.is_err() { return },
                _ = &mut grace, if !graced => {
                    graced = true;
                    for (node, r) in &sent {
                        if r.state() == pb::JobState::Queued && !jobs.connected(node) {
                            handle.fail(node, "not connected to the controller: is the node running? (`pangaea-ctl status`)");
                        }
                    }
                }
                _ = &mut deadline => {
                    for (node, r) in &sent {
                        if !jobs::is_final(r) {
                            handle.fail(node, format!("timed out after {} s while {}", timeout.as_secs(), describe(r)));
                        }
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

/// A job's state in words: `queued`, `downloading (40 %)`, `importing`, ….
pub fn describe(r: &pb::JobReport) -> String {
    match r.state() {
        pb::JobState::Downloading if r.bytes_total > 0 && r.bytes_done > 0 => format!(
            "downloading ({} %)",
            r.bytes_done.saturating_mul(100) / r.bytes_total
        ),
        pb::JobState::Downloading => "downloading".into(),
        pb::JobState::Importing => "importing".into(),
        pb::JobState::Succeeded => "loaded".into(),
        pb::JobState::Failed => "failed".into(),
        pb::JobState::Queued | pb::JobState::Unspecified => "queued".into(),
    }
}
