//! Memory budgets for small nodes.
//!
//! On 1–2 GB machines the usual failure is etcd or kube-apiserver being OOM-killed while pods
//! grow. Pangaea computes, per node, how much each component may use and renders it:
//! `GOMEMLIMIT` for the Go components (their garbage collector then works to stay under it),
//! etcd's backend quota (its memory follows its database size), kubelet's `systemReserved`,
//! `kubeReserved` and hard eviction threshold (pods are evicted before the node starves), and
//! `OOMScoreAdjust` so that the kernel picks pods before the datastore.
//!
//! Every component has a floor (what it needs to run at all, measured on idle clusters and
//! rounded up); a node whose roles' floors exceed its memory is refused with the breakdown.
//! What is left above the floors is shared out by fixed proportions.

use crate::roles::Role;
use serde::Serialize;

/// Floors, MiB.
const SYSTEM: u32 = 192; // kernel, systemd, journald, the agent
const KUBE_DAEMONS: u32 = 160; // kubelet, containerd, kube-proxy
const EVICTION: u32 = 100; // kept free by kubelet's hard eviction
const PODS: u32 = 256; // room for at least the add-ons
const ETCD: u32 = 192;
const APISERVER: u32 = 320;
const CONTROLLER_MANAGER: u32 = 96;
const SCHEDULER: u32 = 48;

/// One node's memory, shared out; templates see it as `budget`. Components a node's roles
/// do not run get 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// The node's memory, MiB.
    pub memory_mib: u32,
    /// kubelet's `systemReserved`: the system and every control-plane component, i.e.
    /// everything outside kubelet's pods and its own daemons.
    pub system_reserved_mib: u32,
    /// kubelet's `kubeReserved`: kubelet, containerd and kube-proxy (workers only).
    pub kube_reserved_mib: u32,
    /// kubelet's hard eviction threshold on available memory (workers only).
    pub eviction_hard_mib: u32,
    /// etcd's share.
    pub etcd_mib: u32,
    /// etcd's `--quota-backend-bytes`: its database is memory-mapped, so it is capped by
    /// etcd's share (256 MiB to 2 GiB).
    pub etcd_quota_bytes: u64,
    /// etcd's `--snapshot-count`: fewer entries kept in memory on small shares.
    pub etcd_snapshot_count: u32,
    /// kube-apiserver's share.
    pub apiserver_mib: u32,
    /// kube-controller-manager's share.
    pub controller_manager_mib: u32,
    /// kube-scheduler's share.
    pub scheduler_mib: u32,
    /// What is left for pods.
    pub pods_mib: u32,
    /// `GOMEMLIMIT` values (90 % of each allocation), as `NNNMiB`.
    pub gomemlimit: GoMemLimits,
}

/// `GOMEMLIMIT` of each Go component, as `NNNMiB`: 90 % of its share, so that its garbage
/// collector works to stay inside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoMemLimits {
    /// etcd.
    pub etcd: String,
    /// kube-apiserver.
    pub apiserver: String,
    /// kube-controller-manager.
    pub controller_manager: String,
    /// kube-scheduler.
    pub scheduler: String,
    /// kubelet (half of the kubelet/containerd/kube-proxy floor).
    pub kubelet: String,
}

/// A node whose memory is below the sum of its roles' floors.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "{memory_mib} MiB cannot hold the roles {roles}: they need at least {needed} MiB ({breakdown}); use a machine with more memory or split the roles across pools"
)]
pub struct BudgetError {
    /// The node's memory, MiB.
    pub memory_mib: u32,
    /// Its roles, as `etcd+control-plane+worker`.
    pub roles: String,
    /// The sum of the floors, MiB.
    pub needed: u32,
    /// Each floor, as `name MiB`, comma-separated.
    pub breakdown: String,
}

fn limit(mib: u32) -> String {
    format!("{}MiB", mib * 9 / 10)
}

impl Budget {
    /// The budget of a node with `memory_mib` and `roles`; refused with the breakdown when
    /// the roles' floors do not fit.
    pub fn for_roles(memory_mib: u32, roles: &[Role]) -> Result<Budget, BudgetError> {
        let (etcd, cp, worker) = (
            roles.contains(&Role::Etcd),
            roles.contains(&Role::ControlPlane),
            roles.contains(&Role::Worker),
        );
        let mut parts = vec![("system", SYSTEM)];
        if worker {
            parts.extend([
                ("kubelet+containerd+kube-proxy", KUBE_DAEMONS),
                ("eviction reserve", EVICTION),
                ("pods", PODS),
            ]);
        }
        if etcd {
            parts.push(("etcd", ETCD));
        }
        if cp {
            parts.extend([
                ("kube-apiserver", APISERVER),
                ("kube-controller-manager", CONTROLLER_MANAGER),
                ("kube-scheduler", SCHEDULER),
            ]);
        }
        let needed: u32 = parts.iter().map(|(_, m)| m).sum();
        if memory_mib < needed {
            return Err(BudgetError {
                memory_mib,
                roles: roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join("+"),
                needed,
                breakdown: parts
                    .iter()
                    .map(|(n, m)| format!("{n} {m}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // Share what is above the floors: the datastore and API server first, pods get the rest.
        let spare = memory_mib - needed;
        let share = |pct: u32, on: bool| if on { spare * pct / 100 } else { 0 };
        let etcd_mib = if etcd { ETCD + share(20, true) } else { 0 };
        let apiserver_mib = if cp { APISERVER + share(25, true) } else { 0 };
        let controller_manager_mib = if cp {
            CONTROLLER_MANAGER + share(5, true)
        } else {
            0
        };
        let scheduler_mib = if cp { SCHEDULER + share(2, true) } else { 0 };
        let control = etcd_mib + apiserver_mib + controller_manager_mib + scheduler_mib;
        let system_reserved_mib = SYSTEM + control; // everything outside kubelet's pods
        let (kube_reserved_mib, eviction_hard_mib) = if worker {
            (KUBE_DAEMONS, EVICTION.max(memory_mib / 20))
        } else {
            (0, 0)
        };
        let pods_mib =
            memory_mib.saturating_sub(system_reserved_mib + kube_reserved_mib + eviction_hard_mib);
        // etcd keeps its database in memory-mapped pages: cap the database by its share.
        let etcd_quota_bytes = if etcd {
            (etcd_mib as u64).clamp(256, 2048) << 20
        } else {
            0
        };
        Ok(Budget {
            memory_mib,
            system_reserved_mib,
            kube_reserved_mib,
            eviction_hard_mib,
            etcd_mib,
            etcd_quota_bytes,
            etcd_snapshot_count: if etcd_mib < 512 { 10_000 } else { 50_000 },
            apiserver_mib,
            controller_manager_mib,
            scheduler_mib,
            pods_mib,
            gomemlimit: GoMemLimits {
                etcd: limit(etcd_mib),
                apiserver: limit(apiserver_mib),
                controller_manager: limit(controller_manager_mib),
                scheduler: limit(scheduler_mib),
                kubelet: limit(KUBE_DAEMONS / 2),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_gigabyte_node_cannot_hold_all_roles_but_can_be_a_worker() {
        let e = Budget::for_roles(1024, &Role::ALL).unwrap_err();
        assert_eq!(e.needed, 1364);
        assert!(e.to_string().contains("kube-apiserver 320"), "{e}");
        assert!(Budget::for_roles(1024, &[Role::Worker]).is_ok());
        assert!(Budget::for_roles(1024, &[Role::Etcd]).is_ok());
    }

    #[test]
    fn budgets_add_up_and_grow_with_memory() {
        for mem in [1536, 2048, 4096, 8192] {
            let b = Budget::for_roles(mem, &Role::ALL).unwrap();
            assert_eq!(
                b.system_reserved_mib + b.kube_reserved_mib + b.eviction_hard_mib + b.pods_mib,
                mem,
                "{b:?}"
            );
            assert!(b.pods_mib >= PODS, "{b:?}");
            assert!(b.etcd_quota_bytes >= 256 << 20 && b.etcd_quota_bytes <= 2048 << 20);
        }
        let small = Budget::for_roles(1536, &Role::ALL).unwrap();
        let big = Budget::for_roles(8192, &Role::ALL).unwrap();
        assert!(big.apiserver_mib > small.apiserver_mib && big.etcd_mib > small.etcd_mib);
        assert_eq!(
            small.gomemlimit.apiserver,
            format!("{}MiB", small.apiserver_mib * 9 / 10)
        );
    }
}
