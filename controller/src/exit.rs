//! `pangaea-ctl`'s exit codes: the one table ([`Exit`], documented in
//! docs/ARCHITECTURE.md and `pangaea-ctl --help`) and the one function that gives an error
//! its code ([`code_of`]), so scripts can tell a refusal from an unreachable controller
//! from a cluster that did not become healthy. Errors keep their own types; this module
//! only classifies them.

use crate::admin::BackendError;
use crate::reconcile::ReconcileError;
use crate::removal::RemovalError;
use crate::store::StoreError;

/// The exit codes. Stable: scripts depend on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Failed for another reason (the message says which).
    Failed = 1,
    /// The command line was wrong (clap's own code for usage errors).
    Usage = 2,
    /// The operation needs the running controller and none answers.
    Unreachable = 3,
    /// Nodes did not become healthy in time (`up`, `start`, `reboot`, drills).
    Unhealthy = 4,
    /// Refused before changing anything: unsafe, conflicting, or missing what it needs
    /// (`node remove` of the last etcd member, a second cluster on the same network,
    /// artifacts that cannot be downloaded, another pangaea-ctl holding the cluster).
    Refused = 5,
}

/// The table as `--help` and the docs show it.
pub const TABLE: &str = "\
Exit codes:
  0  done
  1  failed (the message says why)
  2  usage error (wrong command line)
  3  the controller is not running or does not answer
  4  nodes did not become healthy in time
  5  refused before changing anything (unsafe, conflicting, or missing a prerequisite)";

/// A refusal: the operation was not started because it would be unsafe or conflicts with
/// what exists. Commands wrap such an error in it to exit with [`Exit::Refused`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Nodes that did not become healthy in time ([`Exit::Unhealthy`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(pub String);

/// The code for `e`: the first cause in its chain that one of the classes names.
pub fn code_of(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if cause.is::<Refusal>() || cause.is::<crate::preflight::ArtifactsUnavailable>() {
            return Exit::Refused;
        }
        if cause.is::<Unhealthy>() {
            return Exit::Unhealthy;
        }
        if let Some(RemovalError::Refused { .. }) = cause.downcast_ref::<RemovalError>() {
            return Exit::Refused;
        }
        if let Some(StoreError::Locked { .. }) = cause.downcast_ref::<StoreError>() {
            return Exit::Refused;
        }
        if let Some(crate::kubeconfig::KubeconfigError::Locked { .. }) =
            cause.downcast_ref::<crate::kubeconfig::KubeconfigError>()
        {
            return Exit::Refused;
        }
        if let Some(crate::provider::ProviderError::Prerequisite(_)) =
            cause.downcast_ref::<crate::provider::ProviderError>()
        {
            return Exit::Refused;
        }
        if let Some(ReconcileError::Stuck { .. }) = cause.downcast_ref::<ReconcileError>() {
            return Exit::Unhealthy;
        }
        if let Some(BackendError::NotRunning { .. }) = cause.downcast_ref::<BackendError>() {
            return Exit::Unreachable;
        }
    }
    Exit::Failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_class_is_found_anywhere_in_the_chain() {
        let e = anyhow::Error::from(Refusal("no".into())).context("node remove");
        assert_eq!(code_of(&e), Exit::Refused);
        let e: anyhow::Error = BackendError::NotRunning {
            need: "x",
            start: "up",
        }
        .into();
        assert_eq!(code_of(&e.context("image load")), Exit::Unreachable);
        let e = Err::<(), _>(Unhealthy("node-2 stuck".into()))
            .context("up")
            .unwrap_err();
        assert_eq!(code_of(&e), Exit::Unhealthy);
        assert_eq!(code_of(&anyhow::anyhow!("disk full")), Exit::Failed);
    }

    #[test]
    fn the_architecture_document_shows_the_table() {
        let doc = include_str!("../../docs/ARCHITECTURE.md");
        assert!(
            doc.contains(&format!("```\n{TABLE}\n```")),
            "copy exit::TABLE into §14"
        );
    }

    #[test]
    fn the_table_lists_every_code_once() {
        for code in [
            Exit::Ok,
            Exit::Failed,
            Exit::Usage,
            Exit::Unreachable,
            Exit::Unhealthy,
            Exit::Refused,
        ] {
            let line = format!("\n  {}  ", code as u8);
            assert_eq!(TABLE.matches(&line).count(), 1, "{code:?}");
        }
    }
}
