//! When a node is healthy: the one rule that the report handler (boot timeline), `up`
//! (waiting for nodes) and `status` (the STATE column) all use.

use pangaea_proto as pb;
use std::fmt;

/// Agents report every 5 s on provisioned nodes; four missed reports mean the node is down.
pub const DOWN_AFTER_SECONDS: i64 = 20;

/// A node's health as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// No record: the node has not joined (yet).
    NotJoined,
    /// Removed by the operator; its certificates are revoked.
    Removed,
    /// Joined but never reported.
    NoReport,
    /// Its machine was started (or it joined again) and it has not reported since.
    Starting,
    /// No report for longer than [`DOWN_AFTER_SECONDS`].
    Down {
        /// Seconds since the last report.
        silent_for: i64,
    },
    /// The node has not applied its assigned revision.
    Applying {
        /// The revision the controller assigned.
        assigned: u64,
        /// The revision the node last applied.
        applied: u64,
    },
    /// Units that are neither active nor deliberately not started: (unit, state).
    UnitsNotActive(Vec<(String, String)>),
    /// Reported recently, applied its revision, every unit settled.
    Healthy,
}

impl Health {
    /// Whether this is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    /// Whether the node is not reporting (`status` and tests look for this).
    pub fn is_down(&self) -> bool {
        matches!(self, Health::Down { .. })
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::NotJoined => f.write_str("not joined yet"),
            Health::Removed => f.write_str("removed"),
            Health::NoReport => f.write_str("joined, no report yet"),
            Health::Starting => f.write_str("starting: no report since its machine started"),
            Health::Down { silent_for } => write!(f, "down: last report {silent_for} s ago"),
            Health::Applying { assigned, applied } => {
                write!(f, "applying revision {assigned} (applied {applied})")
            }
            Health::UnitsNotActive(units) => {
                f.write_str("units not active: ")?;
                let list: Vec<String> = units.iter().map(|(u, s)| format!("{u} {s}")).collect();
                f.write_str(&list.join(", "))
            }
            Health::Healthy => f.write_str("healthy"),
        }
    }
}

/// Whether `report` shows `assigned` applied with every unit settled (the report alone,
/// without its age: the report handler records the boot timeline with this).
pub fn applied_and_settled(report: &pb::HealthReport, assigned: u64) -> bool {
    assigned > 0
        && report.applied_revision == assigned
        && report.units.iter().all(pb::UnitState::is_settled)
}

/// The health of node `n` (None: no record) at unix time `now`.
pub fn assess(n: Option<&pb::NodeInfo>, now: i64) -> Health {
    let Some(n) = n else {
        return Health::NotJoined;
    };
    if n.removed {
        return Health::Removed;
    }
    let Some(r) = &n.last_report else {
        return Health::NoReport;
    };
    if n.last_report_at < n.reports_since {
        return Health::Starting;
    }
    if now - n.last_report_at > DOWN_AFTER_SECONDS {
        return Health::Down {
            silent_for: now - n.last_report_at,
        };
    }
    if n.assigned_revision == 0 || r.applied_revision != n.assigned_revision {
        return Health::Applying {
            assigned: n.assigned_revision,
            applied: r.applied_revision,
        };
    }
    let waiting: Vec<(String, String)> = r
        .units
        .iter()
        .filter(|u| !u.is_settled())
        .map(|u| (u.name.clone(), u.active_state.clone()))
        .collect();
    if !waiting.is_empty() {
        return Health::UnitsNotActive(waiting);
    }
    Health::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, state: &str) -> pb::UnitState {
        pb::UnitState {
            name: name.into(),
            active_state: state.into(),
            ..Default::default()
        }
    }

    fn not_installed(name: &str, program: &str) -> pb::UnitState {
        pb::UnitState {
            name: name.into(),
            active_state: "inactive".into(),
            not_running_reason: pb::NotRunningReason::ProgramNotInstalled as i32,
            not_running_detail: program.into(),
            ..Default::default()
        }
    }

    fn node(applied: u64, units: Vec<pb::UnitState>, reported: i64) -> pb::NodeInfo {
        pb::NodeInfo {
            name: "n".into(),
            assigned_revision: 2,
            last_report_at: reported,
            last_report: Some(pb::HealthReport {
                applied_revision: applied,
                units,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_reason_in_order() {
        let now = 1000;
        assert_eq!(assess(None, now), Health::NotJoined);
        let mut n = node(2, vec![], now);
        n.removed = true;
        assert_eq!(assess(Some(&n), now), Health::Removed);
        n.removed = false;
        // A report from before the machine was started again does not count.
        let mut restarted = node(2, vec![], now - 5);
        restarted.reports_since = now - 1;
        assert_eq!(assess(Some(&restarted), now), Health::Starting);
        restarted.last_report_at = now;
        assert!(assess(Some(&restarted), now).is_healthy());
        n.last_report = None;
        assert_eq!(assess(Some(&n), now), Health::NoReport);
        let stale = node(2, vec![], now - DOWN_AFTER_SECONDS - 1);
        assert!(assess(Some(&stale), now).is_down());
        assert_eq!(
            assess(Some(&node(1, vec![], now)), now).to_string(),
            "applying revision 2 (applied 1)"
        );
        let failing = node(2, vec![unit("etcd.service", "failed")], now);
        assert_eq!(
            assess(Some(&failing), now).to_string(),
            "units not active: etcd.service failed"
        );
        let ok = node(
            2,
            vec![
                unit("etcd.service", "active"),
                not_installed("kubelet.service", "/usr/local/bin/kubelet"),
            ],
            now,
        );
        assert!(assess(Some(&ok), now).is_healthy());
        // An inactive unit the agent did not hold back is waited for.
        let waiting = node(2, vec![unit("kubelet.service", "inactive")], now);
        assert!(!assess(Some(&waiting), now).is_healthy());
        assert!(applied_and_settled(ok.last_report.as_ref().unwrap(), 2));
        assert!(!applied_and_settled(ok.last_report.as_ref().unwrap(), 3));
    }
}
