//! Assignments: what each node should have on disk and running, computed by a [`Planner`],
//! versioned with a per-node revision that moves only when the content changes, stored
//! durably, and pushed to the node's watch stream.

use crate::records::NodeRecord;
use crate::store::{self, ASSIGNMENTS, StoreError};
use pangaea_compiler::roles::Role;
use pangaea_core::NodeName;
use pangaea_proto as pb;
use prost::Message;
use redb::{ReadableTable, WriteTransaction};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio::sync::watch;

/// The content of an assignment, before it gets a revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Files to write on the node, with their modes.
    pub files: Vec<pb::File>,
    /// Artifacts to download, verify against their digests and install.
    pub artifacts: Vec<pb::Artifact>,
    /// systemd units the agent manages: whether each is enabled, and which file changes
    /// restart it.
    pub units: Vec<pb::Unit>,
}

/// A node's plan could not be computed (at join, the node is refused with it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot plan node {node}: {message}")]
pub struct PlanError {
    /// The node being planned.
    pub node: String,
    /// Why, for the operator (and the agent's log).
    pub message: String,
}

/// Computes a node's plan. Must be deterministic: the same node and cluster give the same
/// plan, or every call would look like a change.
pub trait Planner: Send + Sync + 'static {
    /// The plan for `node`. The controller calls it on the blocking pool, so it may do
    /// file I/O.
    fn plan(&self, node: &NodeRecord) -> Result<Plan, PlanError>;
    /// The roles the cluster configuration gives a node (shown by `status`).
    fn roles(&self, _node: &NodeName) -> Vec<Role> {
        vec![]
    }
    /// Reads its sources again (the configuration, the cluster state); later plans use
    /// them. The error says what could not be read, and the previous sources stay in use.
    fn reload(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The plan every node gets from the foundation alone: the controller CA (so local tools
/// can verify the controller) and a description of the node itself.
pub struct BasePlanner {
    /// The controller CA certificate (PEM), written to `/etc/pangaea/controller-ca.pem`.
    pub controller_ca_pem: String,
}

impl Planner for BasePlanner {
    fn plan(&self, node: &NodeRecord) -> Result<Plan, PlanError> {
        let facts = serde_json::json!({ "name": node.name, "instance_id": node.instance_id, "roles": node.roles, "addresses": node.addresses });
        Ok(Plan {
            files: vec![
                pb::File {
                    path: "/etc/pangaea/controller-ca.pem".into(),
                    mode: 0o644,
                    owner: String::new(),
                    content: self.controller_ca_pem.clone().into_bytes(),
                },
                pb::File {
                    path: "/etc/pangaea/node.json".into(),
                    mode: 0o644,
                    owner: String::new(),
                    content: serde_json::to_vec_pretty(&facts).expect("json"),
                },
            ],
            artifacts: vec![],
            units: vec![],
        })
    }
}

/// Reads a node's stored assignment.
pub fn load(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    node: &str,
) -> Result<Option<pb::Assignment>, StoreError> {
    let Some(v) = table
        .get(node)
        .map_err(|e| store::db_err("assignments", node, e))?
    else {
        return Ok(None);
    };
    pb::Assignment::decode(v.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            table: "assignments",
            key: node.into(),
            message: e.to_string(),
        })
}

/// Stores `plan` for `node`; the revision increases only when the content differs from the
/// stored assignment. Returns the new assignment when it changed.
pub fn store_plan(
    txn: &WriteTransaction,
    node: &str,
    plan: Plan,
) -> Result<Option<pb::Assignment>, StoreError> {
    let mut table = txn
        .open_table(ASSIGNMENTS)
        .map_err(|e| store::db_err("assignments", node, e))?;
    let previous = load(&table, node)?;
    let mut next = pb::Assignment {
        node_name: node.to_owned(),
        revision: 0,
        files: plan.files,
        artifacts: plan.artifacts,
        units: plan.units,
    };
    if let Some(prev) = &previous {
        next.revision = prev.revision;
        if *prev == next {
            return Ok(None);
        }
    }
    next.revision = previous.map_or(1, |p| p.revision + 1);
    table
        .insert(node, next.encode_to_vec().as_slice())
        .map_err(|e| store::db_err("assignments", node, e))?;
    Ok(Some(next))
}

/// The revision of a node's latest committed assignment (0: none yet).
type Latest = watch::Sender<u64>;

/// In-memory fan-out of assignment changes to the nodes' watch streams. It holds only
/// revisions: each stream reads the assignment itself from the store when it moves, so a
/// fleet's assignments (tens of KiB each) are not kept in memory twice, once in the store's
/// cache and once here. The lock is tokio's: it is only ever held for a map operation,
/// never across other awaits.
#[derive(Default, Clone)]
pub struct Hub {
    senders: Arc<Mutex<HashMap<String, Latest>>>,
}

impl Hub {
    async fn sender(&self, node: &str) -> Latest {
        self.senders
            .lock()
            .await
            .entry(node.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Publishes a committed assignment.
    pub async fn publish(&self, a: pb::Assignment) {
        self.advance(&a.node_name, a.revision).await;
    }

    async fn advance(&self, node: &str, revision: u64) {
        self.sender(node).await.send_if_modified(|cur| {
            let newer = *cur < revision;
            if newer {
                *cur = revision;
            }
            newer
        });
    }

    /// Subscribes to the revision of a node's assignment, seeding it with the `current`
    /// one from the store.
    pub async fn subscribe(&self, node: &str, current: u64) -> watch::Receiver<u64> {
        self.advance(node, current).await;
        self.sender(node).await.subscribe()
    }

    /// Ends a node's watch streams (the node was removed).
    pub async fn close(&self, node: &str) {
        self.senders.lock().await.remove(node);
    }

    /// Ends every watch stream (the controller is shutting down).
    pub async fn close_all(&self) {
        self.senders.lock().await.clear();
    }
}
