//! What a worker's runtime needs from the host that the local provider cannot prepare,
//! found before it turns into a crash loop in a node.
//!
//! [`check`] is the one entry point (`up` prints its findings before creating nodes,
//! `status` before its table); [`findings`] is the rule, a pure function of the host's
//! [`HostFacts`] so that every case is tested without such a host.

use super::cgroup;
use std::fmt;

/// How the host's cgroups look to the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// The resource controllers (memory at least) are on cgroup v1 hierarchies (a "legacy"
    /// or "hybrid" host): nodes see cgroup v1.
    V1,
    /// Only the unified hierarchy: nodes see cgroup v2.
    V2,
}

/// The facts about this host that decide what a node's kubelet and containers can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// The cgroup version nodes see.
    pub cgroup: CgroupMode,
    /// On a cgroup v2 host: the controllers a node's cgroup gets (its parent's
    /// `cgroup.subtree_control`).
    pub v2_controllers: Vec<String>,
    /// Host-wide kernel settings the kubelet sets at start, with their values here
    /// (`None`: unreadable).
    pub sysctls: Vec<(&'static str, Option<String>)>,
    /// Whether `/dev/kmsg` exists (bound into nodes for the kubelet's OOM watcher).
    pub kmsg: bool,
    /// Whether this process holds CAP_SYS_RESOURCE (nodes cannot get it otherwise).
    pub cap_sys_resource: bool,
}

/// Something the worker runtime needs that this host does not give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The component that fails or is weakened (`kubelet`, `containerd`).
    pub component: &'static str,
    /// What will happen, plainly.
    pub problem: String,
    /// What the operator can do.
    pub remedy: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.component, self.problem, self.remedy)
    }
}

/// The kernel settings the kubelet (with `protectKernelDefaults: false`, its default) sets
/// at start, and the values it wants. They are host-wide, so nodes cannot set them (their
/// `/proc/sys` is read-only but for `net`), and the kubelet fails to start when it cannot.
pub const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// Reads this host's facts.
pub fn probe() -> HostFacts {
    let memberships = cgroup::current();
    let v1 = memberships
        .iter()
        .any(|m| m.controllers.split(',').any(|c| c == "memory"));
    let v2_controllers = memberships
        .iter()
        .find(|m| m.controllers.is_empty())
        .map(|m| {
            std::fs::read_to_string(m.dir.join("cgroup.subtree_control"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    HostFacts {
        cgroup: if v1 { CgroupMode::V1 } else { CgroupMode::V2 },
        v2_controllers,
        sysctls: KUBELET_SYSCTLS
            .iter()
            .map(|(k, _)| {
                let v = std::fs::read_to_string(format!("/proc/sys/{k}")).ok();
                (*k, v.map(|v| v.trim().to_owned()))
            })
            .collect(),
        kmsg: std::path::Path::new("/dev/kmsg").exists(),
        // CAP_SYS_RESOURCE is capability 24.
        cap_sys_resource: cap_eff & (1 << 24) != 0,
    }
}

/// `v1.35.1` → (1, 35).
fn minor(version: &str) -> Option<(u32, u32)> {
    let mut it = version.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// What nodes on a host with `facts` cannot do. `kubelet` is the Kubernetes version the
/// cluster's workers run, `None` when the cluster has no worker.
pub fn findings(facts: &HostFacts, kubelet: Option<&str>) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(kubelet) = kubelet else {
        return out;
    };
    if facts.cgroup == CgroupMode::V1 && minor(kubelet).is_some_and(|v| v >= (1, 35)) {
        out.push(Finding {
            component: "kubelet",
            problem: format!(
                "this host has cgroup v1, and kubelet {kubelet} refuses to start on cgroup v1 (failCgroupV1, the default since 1.35): workers will run containerd but no kubelet"
            ),
            remedy: "boot the host with cgroup v2 (kernel option systemd.unified_cgroup_hierarchy=1), or set versions.kubernetes below v1.35 in pangaea.yaml".into(),
        });
    }
    if facts.cgroup == CgroupMode::V2 {
        let missing: Vec<&str> = ["cpu", "memory", "pids"]
            .into_iter()
            .filter(|c| !facts.v2_controllers.iter().any(|h| h == c))
            .collect();
        if !missing.is_empty() {
            out.push(Finding {
                component: "kubelet",
                problem: format!(
                    "nodes' cgroups get no {} controller (not enabled in the parent's cgroup.subtree_control): the kubelet cannot enforce pod limits",
                    missing.join(", ")
                ),
                remedy: "run pangaea-ctl in a cgroup that delegates them, e.g. systemd-run --scope -p Delegate=yes pangaea-ctl up".into(),
            });
        }
    }
    let wrong: Vec<String> = facts
        .sysctls
        .iter()
        .filter_map(|(k, v)| {
            let want = KUBELET_SYSCTLS.iter().find(|(n, _)| n == k)?.1;
            (v.as_deref() != Some(want)).then(|| format!("{}={want}", k.replace('/', ".")))
        })
        .collect();
    if !wrong.is_empty() {
        out.push(Finding {
            component: "kubelet",
            problem: format!(
                "the kubelet sets {} at start and fails when it cannot; these are host-wide and read-only in nodes",
                wrong.join(" ")
            ),
            remedy: format!("set them on the host: sysctl -w {}", wrong.join(" ")),
        });
    }
    if !facts.kmsg {
        out.push(Finding {
            component: "kubelet",
            problem: "the host has no /dev/kmsg, which the kubelet's OOM watcher reads".into(),
            remedy: "run on a host (or VM) with /dev/kmsg".into(),
        });
    }
    if !facts.cap_sys_resource {
        out.push(Finding {
            component: "containerd",
            problem: "pangaea-ctl lacks CAP_SYS_RESOURCE, so nodes lack it too: OOMScoreAdjust of containerd and the kubelet is silently ignored".into(),
            remedy: "run pangaea-ctl as root with all capabilities".into(),
        });
    }
    out
}

/// What nodes on this host cannot do for a cluster whose workers run Kubernetes `kubelet`
/// (`None`: no worker): [`findings`] of [`probe`].
pub fn check(kubelet: Option<&str>) -> Vec<Finding> {
    findings(&probe(), kubelet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_v2() -> HostFacts {
        HostFacts {
            cgroup: CgroupMode::V2,
            v2_controllers: vec![
                "cpuset".into(),
                "cpu".into(),
                "memory".into(),
                "pids".into(),
            ],
            sysctls: KUBELET_SYSCTLS
                .iter()
                .map(|(k, v)| (*k, Some((*v).to_owned())))
                .collect(),
            kmsg: true,
            cap_sys_resource: true,
        }
    }

    #[test]
    fn a_prepared_v2_host_has_nothing_to_report() {
        assert_eq!(findings(&good_v2(), Some("v1.35.1")), vec![]);
    }

    #[test]
    fn cgroup_v1_is_fatal_for_kubelet_1_35_and_later_only() {
        let v1 = HostFacts {
            cgroup: CgroupMode::V1,
            ..good_v2()
        };
        let f = findings(&v1, Some("v1.35.1"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].to_string()
                .contains("kubelet v1.35.1 refuses to start on cgroup v1")
        );
        assert!(f[0].remedy.contains("systemd.unified_cgroup_hierarchy=1"));
        assert_eq!(findings(&v1, Some("v1.36.0")).len(), 1);
        assert_eq!(findings(&v1, Some("v1.34.3")), vec![]);
        assert_eq!(findings(&v1, None), vec![], "no worker, no kubelet");
    }

    #[test]
    fn the_rest_each_named_with_the_fix() {
        let mut facts = good_v2();
        facts.v2_controllers = vec!["cpu".into()];
        facts.sysctls[0].1 = Some("0".into());
        facts.sysctls[2].1 = None;
        facts.kmsg = false;
        facts.cap_sys_resource = false;
        let f: Vec<String> = findings(&facts, Some("v1.35.1"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(f.len(), 4, "{f:#?}");
        assert!(f[0].contains("no memory, pids controller"), "{}", f[0]);
        assert!(
            f[1].contains("sysctl -w vm.overcommit_memory=1 kernel.panic=10"),
            "{}",
            f[1]
        );
        assert!(f[2].contains("/dev/kmsg"), "{}", f[2]);
        assert!(f[3].contains("CAP_SYS_RESOURCE"), "{}", f[3]);
    }

    #[test]
    fn probe_reads_this_host() {
        let facts = probe();
        assert_eq!(facts.sysctls.len(), KUBELET_SYSCTLS.len());
        assert!(facts.sysctls.iter().all(|(_, v)| v.is_some()), "{facts:?}");
    }
}
