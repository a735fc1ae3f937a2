//! Reading a node's journal through its agent (`Admin/ReadJournal`, for `pangaea-ctl
//! logs`): a job with output ([`crate::jobs::Jobs::submit_with_output`]) that the node's
//! agent runs as `journalctl` ([`pb::JournalRead::args`]) and streams back over its
//! mutual-TLS channel (`NodeService/SendJobOutput`), and that ends when the read ends or,
//! following, when the operator's command goes away.
//!
//! The read needs the node's agent connected now: a journal read is not worth queueing for
//! a node that may come back in ten minutes, so it is refused at once and `logs` goes
//! through the provider's shell instead (`crate::cmd::logs`).

use crate::controller::Controller;
use crate::jobs;
use pangaea_proto as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest a read that does not follow may take on the node.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a following read lasts (the command then ends, saying so).
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Why a journal read was refused before it started.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No such node, or a removed one.
    #[error("no node {name:?} (nodes: {known})")]
    NoSuchNode {
        /// The name asked for.
        name: String,
        /// The nodes there are.
        known: String,
    },
    /// The node's agent has no job stream open.
    #[error(
        "node {0}'s agent is not connected to the controller (is the node running? `pangaea-ctl status`)"
    )]
    NotConnected(String),
    /// The controller's state could not be read.
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
}

/// One item of a read: output, or the message that ends the read when it failed.
pub type Item = Result<pb::JournalOutput, tonic::Status>;

/// Starts reading `req.node`'s journal: its output as it comes, then the end (an error item
/// when the node could not read it). Dropping the receiver cancels the read on the node.
pub fn read(
    c: &Arc<Controller>,
    req: pb::ReadJournalRequest,
) -> Result<mpsc::Receiver<Item>, ReadError> {
    let live = c.live_node_names()?;
    if !live.contains(&req.node) {
        return Err(ReadError::NoSuchNode {
            name: req.node,
            known: live.join(", "),
        });
    }
    if !c.jobs.connected(&req.node) {
        return Err(ReadError::NotConnected(req.node));
    }
    let read = req.read.unwrap_or_default();
    let timeout = if read.follow {
        FOLLOW_TIMEOUT
    } else {
        READ_TIMEOUT
    };
    let job = pb::Job {
        id: hex::encode(rand::random::<[u8; 8]>()),
        timeout_seconds: timeout.as_secs(),
        kind: Some(pb::job::Kind::JournalRead(read)),
    };
    tracing::info!(job = %job.id, node = %req.node, "journal read");
    let (handle, mut output) = c.jobs.submit_with_output(job, &req.node);
    let node = req.node;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut status = handle.status.clone();
        let deadline = tokio::time::sleep(timeout + Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            let outcome = status.borrow_and_update().get(&node).cloned();
            if let Some(r) = outcome.filter(jobs::is_final) {
                // The node sends its outcome after its last output: what is buffered is
                // all there is.
                while let Ok(data) = output.try_recv() {
                    if tx.send(Ok(pb::JournalOutput { data })).await.is_err() {
                        return;
                    }
                }
                if r.state() == pb::JobState::Failed {
                    let _ = tx
                        .send(Err(tonic::Status::aborted(format!(
                            "{node}: {}",
                            r.message
                        ))))
                        .await;
                }
                return;
            }
            tokio::select! {
                Some(data) = output.recv() => {
                    if tx.send(Ok(pb::JournalOutput { data })).await.is_err() {
                        return; // the reader went away: dropping the handle cancels
                    }
                }
                r = status.changed() => if r.is_err() { return },
                _ = &mut deadline => {
                    handle.fail(&node, format!("no outcome within {} s", timeout.as_secs()));
                }
                _ = tx.closed() => return,
            }
        }
    });
    Ok(rx)
}
