//! What the state store keeps about tokens and nodes.

use crate::store::{self, NODES, StoreError};
use pangaea_compiler::roles::Role;
use pangaea_core::NodeName;
use pangaea_proto as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

/// A bootstrap token. Only the SHA-256 of its secret is kept.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The token's public id (its key in the table); shown in listings and refusals.
    pub id: String,
    /// Lowercase hex SHA-256 of the secret; the secret itself is never stored.
    pub secret_sha256: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Unix seconds from which the token is refused as expired.
    pub expires_at: i64,
    /// Joins the token still admits; each join spends one.
    pub uses_left: u32,
    /// When set, only a node of this name may join with the token.
    pub node: Option<String>,
    /// The operator's free-text note.
    pub description: String,
    /// Set by `token revoke`; a revoked token admits nothing.
    pub revoked: bool,
    /// The join that spent the token's last use. The same join sent again (its reply was
    /// lost) is admitted once more while the token is otherwise valid.
    #[serde(default)]
    pub spent_by: Option<JoinAttempt>,
}

/// What identifies one join attempt: its CSR (hence its key) and instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JoinAttempt {
    /// Lowercase hex SHA-256 of the CSR (DER).
    pub csr_sha256: String,
    /// The instance that sent it.
    pub instance_id: String,
}

/// A node, keyed by name; its identity is its instance ID.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// The node's name (its key in the table and its certificate's CN).
    pub name: NodeName,
    /// The machine's instance ID; another instance may take the name only if the node was
    /// removed or its token was bound to the name.
    pub instance_id: String,
    /// The hostname the agent reported when it joined.
    pub hostname: String,
    /// The addresses the agent reported when it joined.
    pub addresses: Vec<String>,
    /// The kernel boot ID the agent reported when it joined.
    pub boot_id: String,
    /// The roles the cluster configuration gave the node when it joined.
    pub roles: Vec<Role>,
    /// When the node (last) joined, unix seconds.
    pub joined_at: i64,
    /// Serials (hex) of the agent certificates this incarnation of the node may use. A
    /// client certificate whose serial is not listed is refused even if it chains to the
    /// controller CA: this is how removal and re-creation revoke old identities at once.
    pub active_serials: Vec<String>,
    /// Expiry of the newest certificate issued to the node, unix seconds.
    pub cert_not_after: i64,
    /// The operator removed the node; its certificates are refused and its name may be
    /// taken by another instance.
    pub removed: bool,
    /// The operator drained the node (`node drain`): its kubelet stays stopped until
    /// `node uncordon` ([`crate::drain::hold_back`]).
    #[serde(default)]
    pub drained: bool,
    /// Reports received before this (unix seconds) are from before the node's machine was
    /// last started by Pangaea or the node last joined: they say nothing of its health now
    /// ([`crate::health::assess`]).
    #[serde(default)]
    pub reports_since: Option<i64>,
    /// Boot timeline, unix seconds: first report with the assigned revision applied, and
    /// first report with every unit active (or reported as not installed).
    #[serde(default)]
    pub first_applied_at: Option<i64>,
    /// See `first_applied_at`: when the node first reported every unit active.
    #[serde(default)]
    pub healthy_at: Option<i64>,
}

/// The current time, unix seconds (0 if the clock is before 1970).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reports are stored as 8 bytes of receive time (unix seconds, big endian) + the protobuf.
pub fn encode_report(received_at: i64, report: &pb::HealthReport) -> Vec<u8> {
    let mut v = received_at.to_be_bytes().to_vec();
    report.encode(&mut v).expect("vec grows");
    v
}

/// The inverse of [`encode_report`].
pub fn decode_report(node: &str, bytes: &[u8]) -> Result<(i64, pb::HealthReport), StoreError> {
    let corrupt = |m: String| StoreError::Corrupt {
        table: "reports",
        key: node.to_owned(),
        message: m,
    };
    let (t, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("short record".into()))?;
    let report = pb::HealthReport::decode(rest).map_err(|e| corrupt(e.to_string()))?;
    Ok((i64::from_be_bytes(*t), report))
}

/// Changes node `name`'s record in `txn`: `change` edits it and returns `Some` to have it
/// written, `None` to leave it as it was. `Ok(None)` also when there is no such node.
pub fn update_node<T>(
    txn: &redb::WriteTransaction,
    name: &str,
    change: impl FnOnce(&mut NodeRecord) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    let mut nodes = txn
        .open_table(NODES)
        .map_err(|e| store::db_err("nodes", name, e))?;
    let Some(mut rec) = store::get::<NodeRecord>(&nodes, "nodes", name)? else {
        return Ok(None);
    };
    let Some(out) = change(&mut rec) else {
        return Ok(None);
    };
    store::put(&mut nodes, "nodes", name, &rec)?;
    Ok(Some(out))
}
