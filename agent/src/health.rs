//! Health reports: what the node looks like now. sysinfo is refreshed only for what is
//! reported (CPU, memory, disks), never for the whole process table, to keep the agent small,
//! and read on tokio's blocking pool, so that a slow `/proc` or a hung mount never stalls the
//! agent's single runtime thread.

use crate::apply::SkippedUnit;
use crate::blocking;
use crate::service_manager::{ServiceManager, UnitStatus};
use pangaea_proto as pb;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// What the agent itself knows and reports alongside the machine's figures.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    /// The last revision applied (0 before the first).
    pub applied_revision: u64,
    /// The units of that revision, whose states are reported.
    pub units: Vec<String>,
    /// End of the node certificate's validity, unix seconds.
    pub cert_not_after: i64,
    /// What went wrong in the last apply (it is retried).
    pub errors: Vec<String>,
    /// Units deliberately not started, and why.
    pub skipped: Vec<SkippedUnit>,
}

/// Builds health reports. sysinfo's state is kept between reports (CPU usage is the
/// difference between two refreshes).
pub struct Reporter {
    machine: Machine,
}

impl Default for Reporter {
    fn default() -> Self {
        let kinds = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        Reporter {
            machine: Machine {
                sys: System::new_with_specifics(kinds).ok(),
            },
        }
    }
}

/// Resident set size of this process, from /proc/self/statm.
pub fn own_rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages * 4096
}

/// The machine's side of a report: everything read from `/proc` and the filesystems
/// (`statvfs` of each mount, which can block on a hung network mount). Sampled on the
/// blocking pool, never on the agent's runtime thread.
struct Machine {
    /// `None` where sysinfo cannot read this system; the report then carries zeros and an error.
    sys: Option<System>,
}

/// One sample of the machine.
struct Sample {
    /// `None` where sysinfo cannot read CPU and memory figures.
    cpu_and_memory: Option<(f32, u64, u64)>,
    disks: Vec<pb::DiskUsage>,
    boot_id: String,
    uptime_seconds: u64,
    agent_rss_bytes: u64,
}

impl Machine {
    fn sample(&mut self) -> Sample {
        let cpu_and_memory = self.sys.as_mut().map(|sys| {
            sys.refresh_cpu_usage();
            sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            (
                sys.global_cpu_usage(),
                sys.total_memory(),
                sys.used_memory(),
            )
        });
        let disks = Disks::new_with_refreshed_list()
            .map(|disks| {
                disks
                    .iter()
                    .map(|d| pb::DiskUsage {
                        mount_point: d.mount_point().display().to_string(),
                        total_bytes: d.total_space(),
                        available_bytes: d.available_space(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Sample {
            cpu_and_memory,
            disks,
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            uptime_seconds: System::uptime().unwrap_or(0),
            agent_rss_bytes: own_rss_bytes(),
        }
    }
}

impl Reporter {
    /// The report for now: the machine's figures (sampled on the blocking pool), the units'
    /// states from `units`, what the agent knows (`status`) and the artifacts' progress.
    pub async fn collect(
        &mut self,
        status: &AgentStatus,
        units: &dyn ServiceManager,
        artifacts: &pangaea_artifact::Progress,
    ) -> pb::HealthReport {
        // The machine moves to the blocking pool and back with the sample.
        let mut machine = std::mem::replace(&mut self.machine, Machine { sys: None });
        let (machine, sample) = blocking::run(move || {
            let sample = machine.sample();
            (machine, sample)
        })
        .await;
        self.machine = machine;
        let mut errors = status.errors.clone();
        let (cpu_percent, memory_total_bytes, memory_used_bytes) =
            sample.cpu_and_memory.unwrap_or_else(|| {
                errors.push("sysinfo cannot read CPU and memory figures on this system".into());
                (0.0, 0, 0)
            });
        let unit_states = units
            .status(&status.units)
            .await
            .into_iter()
            .map(|u| unit_state(u, &status.skipped))
            .collect();
        pb::HealthReport {
            boot_id: sample.boot_id,
            uptime_seconds: sample.uptime_seconds,
            cpu_percent,
            memory_total_bytes,
            memory_used_bytes,
            disks: sample.disks,
            units: unit_states,
            applied_revision: status.applied_revision,
            certificate_not_after: status.cert_not_after,
            errors,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_rss_bytes: sample.agent_rss_bytes,
            artifacts: artifacts
                .snapshot()
                .into_iter()
                .map(|(dest, s)| pb::ArtifactProgress {
                    dest: dest.display().to_string(),
                    url: s.url,
                    state: s.state.as_str().into(),
                    bytes_done: s.bytes_done,
                    bytes_total: s.bytes_total.unwrap_or(0),
                    resumed_from: s.resumed_from,
                    error: s.error.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A unit as reported: systemd's own state, plus why the agent held it back if it did, so
/// that the controller can tell "not started on purpose" from "failing".
fn unit_state(u: UnitStatus, skipped: &[SkippedUnit]) -> pb::UnitState {
    let mut state = pb::UnitState {
        name: u.name,
        active_state: u.active_state,
        sub_state: u.sub_state,
        ..Default::default()
    };
    if let Some(s) = skipped.iter().find(|s| s.unit == state.name) {
        state.set_not_running_reason(s.reason);
        state.not_running_detail = s.detail.clone();
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_manager::RecordingServiceManager;

    #[tokio::test]
    async fn a_held_back_unit_reports_systemds_state_and_why() {
        let sm = RecordingServiceManager::default();
        sm.start("etcd.service", true).await.unwrap();
        let status = AgentStatus {
            units: vec!["etcd.service".into(), "kube-apiserver.service".into()],
            skipped: vec![SkippedUnit {
                unit: "kube-apiserver.service".into(),
                reason: pb::NotRunningReason::ProgramNotInstalled,
                detail: "/usr/local/bin/kube-apiserver".into(),
            }],
            ..Default::default()
        };
        let report = Reporter::default()
            .collect(&status, &sm, &pangaea_artifact::Progress::default())
            .await;
        let [etcd, api] = &report.units[..] else {
            panic!("{:?}", report.units)
        };
        assert!(etcd.is_active() && etcd.not_started().is_none());
        // systemd's word, not a made-up state; the reason travels in its own field.
        assert_eq!(api.active_state, "inactive");
        assert_eq!(api.sub_state, "dead");
        assert_eq!(
            api.not_running_reason(),
            pb::NotRunningReason::ProgramNotInstalled
        );
        assert_eq!(api.not_running_detail, "/usr/local/bin/kube-apiserver");
        assert!(api.is_settled());
        assert!(report.errors.iter().all(|e| !e.contains("not started")));
    }
}
