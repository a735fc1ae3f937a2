//! How a unit's reported state reads: the one rule the controller's health check, `status`
//! and `up` share.
//!
//! The agent reports systemd's own `ActiveState` for every unit, and separately, in
//! [`UnitState::not_running_reason`], when it deliberately did not start one (today: its
//! program is not installed). A unit is *settled* when it is active or held back on purpose:
//! the node is then as the agent means it to be, and waiting longer changes nothing.

use crate::v1::{NotRunningReason, UnitState};
use std::fmt;

/// A unit the agent deliberately did not start, as [`UnitState::not_started`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotStarted<'a> {
    /// Why; `None` for a reason newer than this build (the unit was still held back on
    /// purpose by a newer agent).
    pub reason: Option<NotRunningReason>,
    /// What the reason is about: for [`NotRunningReason::ProgramNotInstalled`], the path of
    /// the missing program.
    pub detail: &'a str,
}

impl NotStarted<'_> {
    /// The reason in a few words for operators, e.g. `"program not installed"`.
    pub fn why(&self) -> &'static str {
        match self.reason {
            Some(NotRunningReason::ProgramNotInstalled) => "program not installed",
            // Never built by `not_started` (0 means "not held back"); worded for completeness.
            Some(NotRunningReason::Unspecified) => "not held back",
            None => "held back for a reason this version does not know",
        }
    }
}

/// `program not installed: /usr/local/bin/kube-apiserver`
impl fmt::Display for NotStarted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.why())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl UnitState {
    /// systemd reports the unit `active`.
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }

    /// Why the agent deliberately did not start this unit, or `None` when it did not hold it
    /// back (the unit may still be inactive or failed on its own: see `active_state`).
    pub fn not_started(&self) -> Option<NotStarted<'_>> {
        (self.not_running_reason != NotRunningReason::Unspecified as i32).then(|| NotStarted {
            reason: NotRunningReason::try_from(self.not_running_reason).ok(),
            detail: &self.not_running_detail,
        })
    }

    /// The unit is where the agent means it to be: active, or deliberately not started.
    /// A node whose units are all settled (and whose assignment is applied) is healthy.
    pub fn is_settled(&self) -> bool {
        self.is_active() || self.not_started().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active_state: &str, reason: i32, detail: &str) -> UnitState {
        UnitState {
            name: "kube-apiserver.service".into(),
            active_state: active_state.into(),
            sub_state: String::new(),
            not_running_reason: reason,
            not_running_detail: detail.into(),
        }
    }

    const MISSING: i32 = NotRunningReason::ProgramNotInstalled as i32;

    #[test]
    fn active_units_are_settled_and_not_held_back() {
        let u = unit("active", 0, "");
        assert!(u.is_active() && u.is_settled());
        assert_eq!(u.not_started(), None);
    }

    #[test]
    fn inactive_or_failed_units_the_agent_started_are_not_settled() {
        for state in ["inactive", "activating", "failed", "unknown", ""] {
            let u = unit(state, 0, "");
            assert!(!u.is_settled(), "{state}");
            assert_eq!(u.not_started(), None, "{state}");
        }
    }

    #[test]
    fn a_unit_whose_program_is_missing_is_settled_and_says_why() {
        let u = unit("inactive", MISSING, "/usr/local/bin/kube-apiserver");
        assert!(!u.is_active());
        assert!(u.is_settled());
        let n = u.not_started().unwrap();
        assert_eq!(n.reason, Some(NotRunningReason::ProgramNotInstalled));
        assert_eq!(n.detail, "/usr/local/bin/kube-apiserver");
        assert_eq!(
            n.to_string(),
            "program not installed: /usr/local/bin/kube-apiserver"
        );
    }

    #[test]
    fn a_reason_from_a_newer_agent_still_means_held_back_on_purpose() {
        let u = unit("inactive", 99, "");
        assert!(u.is_settled());
        let n = u.not_started().unwrap();
        assert_eq!(n.reason, None);
        assert_eq!(
            n.to_string(),
            "held back for a reason this version does not know"
        );
    }

    #[test]
    fn the_reason_survives_the_wire() {
        use prost::Message;
        let u = unit("inactive", MISSING, "/usr/local/bin/etcd");
        let back = UnitState::decode(u.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, u);
        assert_eq!(
            back.not_running_reason(),
            NotRunningReason::ProgramNotInstalled
        );
    }
}
