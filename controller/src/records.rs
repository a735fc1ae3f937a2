//! What the state store keeps about tokens and nodes.

use crate::store::StoreError;
use pangaea_compiler::roles::Role;
use pangaea_core::NodeName;
use pangaea_proto as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

/// A bootstrap token. Only the SHA-256 of its secret is kept.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: u32,
    /// When set, only a node of this name may join with the token.
    pub node: Option<String>,
    pub description: String,
    pub revoked: bool,
}

/// A node, keyed by name; its identity is its instance ID.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: NodeName,
    pub instance_id: String,
    pub hostname: String,
    pub addresses: Vec<String>,
    pub boot_id: String,
    pub roles: Vec<Role>,
    pub joined_at: i64,
    /// Serials (hex) of the agent certificates this incarnation of the node may use. A
    /// client certificate whose serial is not listed is refused even if it chains to the
    /// controller CA: this is how removal and re-creation revoke old identities at once.
    pub active_serials: Vec<String>,
    pub cert_not_after: i64,
    pub removed: bool,
    /// Boot timeline, unix seconds: first report with the assigned revision applied, and
    /// first report with every unit active (or reported as not installed).
    #[serde(default)]
    pub first_applied_at: Option<i64>,
    #[serde(default)]
    pub healthy_at: Option<i64>,
}

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
