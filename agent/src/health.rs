//! Health reports: what the node looks like now. sysinfo is refreshed only for what is
//! reported (CPU, memory, disks), never for the whole process table, to keep the agent small.

use crate::service_manager::ServiceManager;
use pangaea_proto as pb;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// What the agent itself knows and reports alongside the machine's figures.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    pub applied_revision: u64,
    pub units: Vec<String>,
    pub cert_not_after: i64,
    pub errors: Vec<String>,
    /// Units deliberately not started: (unit, the missing program).
    pub skipped: Vec<(String, String)>,
}

pub struct Reporter {
    /// `None` where sysinfo cannot read this system; the report then carries zeros and an error.
    sys: Option<System>,
}

impl Default for Reporter {
    fn default() -> Self {
        let kinds = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        Reporter {
            sys: System::new_with_specifics(kinds).ok(),
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

impl Reporter {
    pub async fn collect(
        &mut self,
        status: &AgentStatus,
        units: &dyn ServiceManager,
        artifacts: &pangaea_artifact::Progress,
    ) -> pb::HealthReport {
        let mut errors = status.errors.clone();
        let (cpu_percent, memory_total_bytes, memory_used_bytes) = match self.sys.as_mut() {
            Some(sys) => {
                sys.refresh_cpu_usage();
                sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                (
                    sys.global_cpu_usage(),
                    sys.total_memory(),
                    sys.used_memory(),
                )
            }
            None => {
                errors.push("sysinfo cannot read CPU and memory figures on this system".into());
                (0.0, 0, 0)
            }
        };
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
        let unit_states = units
            .status(&status.units)
            .await
            .into_iter()
            .map(
                |u| match status.skipped.iter().find(|(n, _)| *n == u.name) {
                    // Reported as such, so `status` can say plainly why it is not running.
                    Some((_, program)) => pb::UnitState {
                        name: u.name,
                        active_state: "missing-binary".into(),
                        sub_state: program.clone(),
                    },
                    None => pb::UnitState {
                        name: u.name,
                        active_state: u.active_state,
                        sub_state: u.sub_state,
                    },
                },
            )
            .collect();
        pb::HealthReport {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            uptime_seconds: System::uptime().unwrap_or(0),
            cpu_percent,
            memory_total_bytes,
            memory_used_bytes,
            disks,
            units: unit_states,
            applied_revision: status.applied_revision,
            certificate_not_after: status.cert_not_after,
            errors,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_rss_bytes: own_rss_bytes(),
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
