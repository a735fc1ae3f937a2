//! `pangaea-ctl node remove`: a journal of steps that a crash (kill -9 at any point) cannot
//! leave half done. The plan is written to `.pangaea/journal/remove-NODE.json` before the
//! first step acts, each finished step is recorded there, and running the command again
//! resumes after the last recorded step; every step is idempotent, so one that finished but
//! was not yet recorded is simply done again. The journal goes when the last step is done.
//!
//! The steps, in order: the node is drained ([`crate::drain`]: pods evicted where a
//! Kubernetes API answers, the kubelet stopped); the node's etcd member is removed (by ID, after
//! [`membership::check_removal`]); every credential of the node is revoked (controller
//! and etcd, with the other nodes re-planned so etcd gets the new revocation list); the
//! instance is deleted; `pangaea.yaml` records the node in `removedNodes`, so a later `up`
//! does not create it again.

use crate::membership::{self, Etcd, Removal, Removed};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One step of a removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Drain the node: cordon, evict its pods, stop its kubelet.
    Drain,
    /// Remove the node's etcd member (nodes with the etcd role).
    EtcdMember,
    /// Revoke the node's credentials; re-plan the other nodes.
    Credentials,
    /// Delete the instance and its disk.
    Instance,
    /// Record the node in `removedNodes` of `pangaea.yaml`.
    Config,
}

impl Step {
    /// Every step, in the order they run.
    pub const ALL: [Step; 5] = [
        Step::Drain,
        Step::EtcdMember,
        Step::Credentials,
        Step::Instance,
        Step::Config,
    ];

    /// Its name (as the journal and `PANGAEA_FAILPOINT` spell it).
    pub fn name(self) -> &'static str {
        match self {
            Step::Drain => "drain",
            Step::EtcdMember => "etcd-member",
            Step::Credentials => "credentials",
            Step::Instance => "instance",
            Step::Config => "config",
        }
    }

    /// What the step does, for `--dry-run` and progress.
    pub fn describe(self, j: &Journal) -> String {
        match self {
            Step::Drain => format!(
                "drain {}: cordon it and evict its pods (where a Kubernetes API answers), stop its kubelet",
                j.node
            ),
            Step::EtcdMember => match &j.etcd_peer_url {
                Some(p) => format!("remove {}'s etcd member (peer URL {p}), by its ID", j.node),
                None => format!("no etcd member to remove ({} has no etcd role)", j.node),
            },
            Step::Credentials => format!(
                "revoke every certificate issued for {} and re-plan the other nodes",
                j.node
            ),
            Step::Instance => format!("delete the instance {} and its disk", j.node),
            Step::Config => format!("add {} to removedNodes in {}", j.node, j.config.display()),
        }
    }
}

/// The removal under way: written before the first step, updated after each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The node.
    pub node: String,
    /// Its etcd peer URL, when it has the etcd role (what identifies its member).
    pub etcd_peer_url: Option<String>,
    /// Its etcd client URL, when it has the etcd role.
    pub etcd_client_url: Option<String>,
    /// The configuration file that records the removal.
    pub config: PathBuf,
    /// Steps done.
    pub done: Vec<Step>,
    /// When the removal started, unix seconds.
    pub started_at: i64,
}

/// Why a removal step failed.
#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    /// The journal could not be read or written.
    #[error("removal journal {}: {message}", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The etcd member may not be removed now.
    #[error("{node} not removed: {refusal}")]
    Refused {
        /// The node.
        node: String,
        /// Why, and what to do.
        refusal: membership::Refusal,
    },
    /// A step failed; running the command again resumes here.
    #[error("{node}: {step:?} failed: {message} (run the command again to resume)")]
    Step {
        /// The node.
        node: String,
        /// The step.
        step: Step,
        /// What went wrong.
        message: String,
    },
}

impl Journal {
    /// The journal at `path`, if a removal is under way.
    pub fn load(path: &Path) -> Result<Option<Journal>, RemovalError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| RemovalError::Journal {
                    path: path.to_owned(),
                    message: format!("unreadable ({e}); delete it to start over"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RemovalError::Journal {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        }
    }

    /// Writes the journal to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), RemovalError> {
        pangaea_core::fsutil::atomic_write(
            path,
            &serde_json::to_vec_pretty(self).expect("json"),
            0o600,
        )
        .map_err(|e| RemovalError::Journal {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The steps still to do.
    pub fn remaining(&self) -> Vec<Step> {
        Step::ALL
            .into_iter()
            .filter(|s| !self.done.contains(s))
            .collect()
    }
}

/// For the crash tests: `PANGAEA_FAILPOINT=remove-after:STEP` (a step's kebab-case name)
/// kills the process with SIGKILL right after that step is recorded, as an operator's
/// `kill -9` or a power cut would.
pub fn failpoint(done: Step) {
    let Ok(want) = std::env::var("PANGAEA_FAILPOINT") else {
        return;
    };
    if want.strip_prefix("remove-after:") == Some(done.name()) {
        crate::errln!("PANGAEA_FAILPOINT: killed after {want}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// What the etcd step needs.
pub struct EtcdAccess {
    /// The operator's etcd client.
    pub etcd: Etcd,
    /// The client URLs of the members whose machines run (the target's included if it
    /// runs): the only ones asked.
    pub endpoints: Vec<String>,
    /// Whether any etcd member's machine exists, running or not. When none does, there is
    /// no membership anywhere to change.
    pub any_member_exists: bool,
}

/// What the etcd step would do now: `None` when there is nothing to do (the node has no
/// etcd role, or no etcd member's machine exists: no membership anywhere), else the
/// verdict of [`membership::check_removal`] on what the running members answer.
async fn plan_etcd_member(
    j: &Journal,
    access: &EtcdAccess,
    force: bool,
) -> Option<Result<Removal, membership::Refusal>> {
    let peer = j.etcd_peer_url.as_ref()?;
    if !access.any_member_exists {
        return None;
    }
    let survey = membership::survey(&access.etcd, &access.endpoints).await;
    Some(membership::check_removal(
        &survey,
        peer,
        j.etcd_client_url.as_deref(),
        force,
    ))
}

/// The etcd step: proves the removal safe, then removes the member by ID. Returns what it
/// did, for the operator.
pub async fn remove_etcd_member(
    j: &Journal,
    access: &EtcdAccess,
    force: bool,
) -> Result<String, RemovalError> {
    match plan_etcd_member(j, access, force).await {
        None => Ok("no etcd membership to change".into()),
        Some(Err(refusal)) => Err(RemovalError::Refused {
            node: j.node.clone(),
            refusal,
        }),
        Some(Ok(Removal::NotAMember)) => Ok("not an etcd member (already removed)".into()),
        Some(Ok(Removal::Member {
            id,
            name,
            ask,
            left,
            warnings,
        })) => {
            for w in &warnings {
                crate::errln!("warning (--force): {w}");
            }
            let r = access
                .etcd
                .remove(&ask, id)
                .await
                .map_err(|e| RemovalError::Step {
                    node: j.node.clone(),
                    step: Step::EtcdMember,
                    message: e.to_string(),
                })?;
            Ok(match r {
                Removed::Now => format!("etcd member {name} ({id:x}) removed; {left} left"),
                Removed::Already => format!("etcd member {name} ({id:x}) was already removed"),
            })
        }
    }
}

/// The etcd step's refusal, asked before a removal starts: a removal etcd would refuse
/// must not drain the node first (the drain comes before the etcd step).
pub async fn precheck_etcd_member(
    j: &Journal,
    access: &EtcdAccess,
    force: bool,
) -> Result<(), RemovalError> {
    match plan_etcd_member(j, access, force).await {
        Some(Err(refusal)) => Err(RemovalError::Refused {
            node: j.node.clone(),
            refusal,
        }),
        _ => Ok(()),
    }
}

/// What `--dry-run` says about the etcd step: whether it would be allowed now, and why or
/// what it would ask of etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EtcdPreview {
    /// Whether the step would be allowed now.
    pub allowed: bool,
    /// What it would do (allowed), or why it would be refused.
    pub detail: String,
}

impl std::fmt::Display for EtcdPreview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.allowed {
            f.write_str(&self.detail)
        } else {
            write!(f, "would be REFUSED now: {}", self.detail)
        }
    }
}

/// The etcd step's [`EtcdPreview`], asking the running members.
pub async fn preview_etcd_member(j: &Journal, access: &EtcdAccess, force: bool) -> EtcdPreview {
    let allowed = |detail: String| EtcdPreview {
        allowed: true,
        detail,
    };
    match plan_etcd_member(j, access, force).await {
        None => allowed("nothing to do".into()),
        Some(Err(r)) => EtcdPreview {
            allowed: false,
            detail: r.to_string(),
        },
        Some(Ok(Removal::NotAMember)) => allowed("not a member (nothing to do)".into()),
        Some(Ok(Removal::Member {
            id,
            name,
            ask,
            left,
            warnings,
        })) => {
            let mut s = format!("allowed now: member {name} ({id:x}), asking {ask}; {left} left");
            for w in warnings {
                s.push_str(&format!("; overridden by --force: {w}"));
            }
            allowed(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        Journal {
            node: "node-3".into(),
            etcd_peer_url: Some("https://10.0.0.13:2380".into()),
            etcd_client_url: Some("https://10.0.0.13:2379".into()),
            config: "pangaea.yaml".into(),
            done: vec![],
            started_at: 0,
        }
    }

    #[test]
    fn a_saved_journal_resumes_after_its_last_recorded_step() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("journal/remove-node-3.json");
        assert_eq!(Journal::load(&path).unwrap(), None);
        let mut j = journal();
        j.save(&path).unwrap();
        assert_eq!(j.remaining(), Step::ALL);
        j.done.push(Step::Drain);
        j.done.push(Step::EtcdMember);
        j.done.push(Step::Credentials);
        j.save(&path).unwrap();
        let back = Journal::load(&path).unwrap().unwrap();
        assert_eq!(back.remaining(), [Step::Instance, Step::Config]);
        let text = std::fs::read_to_string(&path).unwrap();
        for s in &back.done {
            assert!(text.contains(&format!("\"{}\"", s.name())), "{text}");
        }
        std::fs::write(&path, "{").unwrap();
        let e = Journal::load(&path).unwrap_err().to_string();
        assert!(e.contains("delete it to start over"), "{e}");
    }

    #[test]
    fn steps_say_what_they_do() {
        let mut j = journal();
        assert!(Step::EtcdMember.describe(&j).contains("by its ID"));
        j.etcd_peer_url = None;
        assert!(Step::EtcdMember.describe(&j).contains("no etcd role"));
        assert!(Step::Config.describe(&j).contains("removedNodes"));
    }
}
