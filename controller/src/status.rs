//! What `status` says about a node, as one typed row that the table, `-o json` and the
//! tests all read. Built from the controller's node record and latest report, etcd's own
//! view of its membership, and the provider's creation time.

use crate::etcd::Member;
use crate::health;
use pangaea_proto as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One node in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// The instance it joined from.
    pub instance_id: String,
    /// Its addresses, as it reported them at the join.
    pub addresses: Vec<String>,
    /// Its roles from the cluster configuration.
    pub roles: Vec<String>,
    /// Whether the operator removed it.
    pub removed: bool,
    /// Whether the operator drained it (`node drain`: its kubelet stopped until `uncordon`).
    #[serde(default)]
    pub drained: bool,
    /// Its etcd membership as etcd reports it.
    pub etcd: EtcdStatus,
    /// Its boot timeline, unix seconds (0: not reached).
    pub timeline: Timeline,
    /// `healthy`, or why not ([`crate::health::Health`]'s text).
    pub state: String,
    /// The revision the controller assigned.
    pub assigned_revision: u64,
    /// The revision the node last applied.
    pub applied_revision: u64,
    /// When it last reported, unix seconds (0: never).
    pub last_report_at: i64,
    /// Expiry of its agent certificate, unix seconds.
    pub certificate_not_after: i64,
    /// The nearest expiry of any certificate the node holds — its agent certificate and every
    /// cluster certificate issued for it — unix seconds (0: none known).
    pub nearest_certificate_expiry: i64,
    /// The agent's version.
    pub agent_version: String,
    /// The agent's resident memory.
    pub agent_rss_bytes: u64,
    /// Errors the agent reported.
    pub errors: Vec<String>,
    /// Its units.
    pub units: Vec<UnitRow>,
    /// Artifact downloads in progress or failed.
    pub artifacts: Vec<ArtifactRow>,
}

/// etcd's view of one node: `{"member": ID, "leader": bool}`, `{"member": null}` when etcd
/// does not list it, or `{"error": ...}` when etcd could not be asked.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EtcdStatus {
    /// Why etcd could not be asked. (First: an untagged reader tries it before `Asked`,
    /// whose fields may all be absent.)
    Unknown {
        /// The reason.
        error: String,
    },
    /// Asked: the node's member, if any.
    Asked {
        /// The member ID (hex), or null.
        member: Option<String>,
        /// Whether it leads (absent when not a member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<bool>,
    },
}

impl EtcdStatus {
    /// The node's member ID, when etcd lists it.
    pub fn member(&self) -> Option<&str> {
        match self {
            EtcdStatus::Asked { member, .. } => member.as_deref(),
            EtcdStatus::Unknown { .. } => None,
        }
    }

    /// Whether the node's member leads.
    pub fn is_leader(&self) -> bool {
        matches!(
            self,
            EtcdStatus::Asked {
                leader: Some(true),
                ..
            }
        )
    }
}

/// The boot timeline: created → joined → applied → healthy, unix seconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timeline {
    /// The provider created the machine (None: unknown to the provider).
    pub created_at: Option<i64>,
    /// The agent joined.
    pub joined_at: i64,
    /// First report with the assigned revision applied.
    pub first_applied_at: i64,
    /// First report with every unit settled.
    pub healthy_at: i64,
}

impl Timeline {
    /// `created → joined +4s → applied +6s → healthy +8s`, from the first known milestone.
    pub fn describe(&self) -> Option<String> {
        let steps = [
            ("created", self.created_at.unwrap_or(0)),
            ("joined", self.joined_at),
            ("applied", self.first_applied_at),
            ("healthy", self.healthy_at),
        ];
        let start = steps.iter().map(|(_, t)| *t).find(|t| *t > 0)?;
        let parts: Vec<String> = steps
            .iter()
            .filter(|(_, t)| *t > 0)
            .map(|(name, t)| {
                if *t == start {
                    (*name).to_owned()
                } else {
                    format!("{name} +{}s", t - start)
                }
            })
            .collect();
        Some(parts.join(" → "))
    }
}

/// A unit on a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitRow {
    /// The unit's name.
    pub name: String,
    /// systemd's ActiveState.
    pub active: String,
    /// systemd's SubState.
    pub sub: String,
    /// Why the agent deliberately did not start it, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_started: Option<NotStartedRow>,
}

/// Why a unit was deliberately not started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotStartedRow {
    /// The reason in a few words (`program not installed`).
    pub reason: String,
    /// What it is about (the missing program's path).
    pub detail: String,
}

/// An artifact download on a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArtifactRow {
    /// Where it is installed.
    pub dest: String,
    /// Where it comes from.
    pub url: String,
    /// downloading, retrying, installed, failed.
    pub state: String,
    /// Bytes received.
    pub bytes_done: u64,
    /// Bytes expected (0: unknown).
    pub bytes_total: u64,
    /// Where a resumed download started.
    pub resumed_from: u64,
    /// The last error.
    pub error: String,
}

impl From<&pb::ArtifactProgress> for ArtifactRow {
    fn from(a: &pb::ArtifactProgress) -> Self {
        ArtifactRow {
            dest: a.dest.clone(),
            url: a.url.clone(),
            state: a.state.clone(),
            bytes_done: a.bytes_done,
            bytes_total: a.bytes_total,
            resumed_from: a.resumed_from,
            error: a.error.clone(),
        }
    }
}

/// Builds a node's row. `etcd` is etcd's membership by address (or why it could not be
/// asked), `created_at` the provider's creation time, `issued_expiry` the nearest expiry of
/// the cluster certificates issued for the node.
pub fn node_status(
    n: &pb::NodeInfo,
    etcd: &Result<BTreeMap<String, Member>, String>,
    created_at: Option<i64>,
    issued_expiry: Option<i64>,
    now: i64,
) -> NodeStatus {
    let r = n.last_report.clone().unwrap_or_default();
    let health = health::assess(Some(n), now);
    let etcd = match etcd {
        Ok(members) => {
            let m = n.addresses.iter().find_map(|a| members.get(a));
            EtcdStatus::Asked {
                member: m.map(|m| m.id.clone()),
                leader: m.map(|m| m.leader),
            }
        }
        Err(e) => EtcdStatus::Unknown { error: e.clone() },
    };
    NodeStatus {
        name: n.name.clone(),
        instance_id: n.instance_id.clone(),
        addresses: n.addresses.clone(),
        roles: n.roles.clone(),
        removed: n.removed,
        drained: n.drained,
        etcd,
        timeline: Timeline {
            created_at,
            joined_at: n.joined_at,
            first_applied_at: n.first_applied_at,
            healthy_at: n.healthy_at,
        },
        state: health.to_string(),
        assigned_revision: n.assigned_revision,
        applied_revision: r.applied_revision,
        last_report_at: n.last_report_at,
        certificate_not_after: n.certificate_not_after,
        nearest_certificate_expiry: [Some(n.certificate_not_after), issued_expiry]
            .into_iter()
            .flatten()
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(0),
        agent_version: r.agent_version.clone(),
        agent_rss_bytes: r.agent_rss_bytes,
        errors: r.errors.clone(),
        units: r
            .units
            .iter()
            .map(|u| UnitRow {
                name: u.name.clone(),
                active: u.active_state.clone(),
                sub: u.sub_state.clone(),
                not_started: u.not_started().map(|n| NotStartedRow {
                    reason: n.why().to_owned(),
                    detail: n.detail.to_owned(),
                }),
            })
            .collect(),
        artifacts: r.artifacts.iter().map(ArtifactRow::from).collect(),
    }
}

/// Addresses of the nodes whose etcd unit runs and that report: the ones worth asking.
pub fn etcd_addresses(nodes: &[pb::NodeInfo], now: i64) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| !health::assess(Some(n), now).is_down())
        .filter(|n| {
            n.last_report.as_ref().is_some_and(|r| {
                r.units
                    .iter()
                    .any(|u| u.name == "etcd.service" && u.active_state == "active")
            })
        })
        .filter_map(|n| n.addresses.first().cloned())
        .collect()
}
