//! A cgroup of its own for each node, in every hierarchy the host has mounted.
//!
//! With no systemd on the host (`--register=no`), systemd-nspawn leaves the machine in the
//! cgroup of the process that started it, so every node would land in one cgroup per
//! hierarchy: two nodes' containers named alike shared a host cgroup, and two kubelets
//! would fight over `/kubepods`. So before systemd-nspawn starts, its process moves into
//! `pangaea-<machine>` below the launcher's cgroup in each hierarchy; the node's cgroup
//! namespace then starts at that cgroup, and everything the node creates stays below it.
//!
//! The move happens in the child, just before it becomes systemd-nspawn ([`enter_script`]:
//! a shell that writes its own PID into each `cgroup.procs` and `exec`s), because the
//! cgroup namespace is fixed when nspawn clones the container, and the workspace forbids
//! the `unsafe` a `pre_exec` hook would need. The directories made are recorded in the
//! node's directory, so they are removed after the machine stopped whichever process runs
//! `down`.

use crate::provider::ProviderError;
use std::path::{Path, PathBuf};

/// One hierarchy the current process is in: where it is mounted and the process's cgroup
/// there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The controllers (`cpu,cpuacct`, `name=systemd`), empty for the unified hierarchy.
    pub controllers: String,
    /// The directory of the process's cgroup (mount point joined with its path).
    pub dir: PathBuf,
}

/// The hierarchies of `/proc/self/cgroup` (`cgroup` text) that are mounted (`mountinfo`
/// text), with the directory of this process's cgroup in each. Hierarchies that are not
/// mounted are left out; nodes cannot be separated in them, and need not be.
pub fn memberships(cgroup: &str, mountinfo: &str) -> Vec<Membership> {
    // (mount point, root inside the hierarchy, controllers or "" for cgroup2)
    let mounts: Vec<(String, String, Option<Vec<String>>)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (root, point) = (pre.get(3)?, pre.get(4)?);
            match *post.first()? {
                "cgroup2" => Some((point.to_string(), root.to_string(), None)),
                "cgroup" => Some((
                    point.to_string(),
                    root.to_string(),
                    Some(post.get(2)?.split(',').map(str::to_owned).collect()),
                )),
                _ => None,
            }
        })
        .collect();
    let mut out = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = mounts.iter().find(|(_, _, opts)| match opts {
            None => id == "0",
            Some(opts) => {
                id != "0"
                    && !controllers.is_empty()
                    && controllers.split(',').all(|c| opts.iter().any(|o| o == c))
            }
        });
        let Some((point, root, _)) = mount else {
            continue;
        };
        let Some(rel) = path.strip_prefix(root.as_str()) else {
            continue;
        };
        out.push(Membership {
            controllers: controllers.to_owned(),
            dir: Path::new(point).join(rel.trim_start_matches('/')),
        });
    }
    out
}

/// This process's memberships, read from `/proc`.
pub fn current() -> Vec<Membership> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    memberships(&read("/proc/self/cgroup"), &read("/proc/self/mountinfo"))
}

/// The name of a machine's cgroup below the launcher's, in every hierarchy.
pub fn name(machine: &str) -> String {
    format!("pangaea-{machine}")
}

/// Creates `machine`'s cgroup in every hierarchy this process is in, and records them in
/// `record` (one directory per line). A cpuset cgroup gets its parent's CPUs and memory
/// nodes (a new one has none, and refuses tasks). Returns the directories made; a hierarchy
/// where the cgroup cannot be made is skipped with a warning (the node then shares it).
pub fn create(machine: &str, record: &Path) -> Result<Vec<PathBuf>, ProviderError> {
    let mut made = Vec::new();
    for m in current() {
        let dir = m.dir.join(name(machine));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the node's cgroup; the node shares this hierarchy with the others");
            continue;
        }
        if m.controllers.split(',').any(|c| c == "cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                if mine.trim().is_empty() {
                    let parent = std::fs::read_to_string(m.dir.join(f))
                        .map_err(ProviderError::io("read", m.dir.join(f)))?;
                    std::fs::write(dir.join(f), parent.trim())
                        .map_err(ProviderError::io("write", dir.join(f)))?;
                }
            }
        }
        made.push(dir);
    }
    let text: String = made.iter().map(|d| format!("{}\n", d.display())).collect();
    pangaea_core::fsutil::atomic_write(record, text.as_bytes(), 0o600)
        .map_err(|e| ProviderError::Failed(format!("write {}: {e}", record.display())))?;
    Ok(made)
}

/// The shell script that moves itself into the cgroups listed (one `cgroup.procs` per line)
/// in `$PANGAEA_CGROUP_PROCS` and then `exec`s its arguments, keeping its PID. Run as
/// `sh -c SCRIPT pangaea-cgroup-enter PROGRAM ARGS...`.
pub fn enter_script() -> &'static str {
    "IFS='\n'; for f in $PANGAEA_CGROUP_PROCS; do echo $$ > \"$f\" || exit 125; done; unset PANGAEA_CGROUP_PROCS; exec \"$@\""
}

/// The environment value for [`enter_script`]: the `cgroup.procs` file of each directory.
pub fn procs_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.join("cgroup.procs").display().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes the cgroups listed in `record` and everything the node made below them, once
/// the machine has stopped (deepest first), and then the record. Whether all are gone: a
/// cgroup still holding an exiting process stays (and is named in a warning if `last`).
pub fn remove(record: &Path, last: bool) -> bool {
    let Ok(text) = std::fs::read_to_string(record) else {
        return true;
    };
    let mut gone = true;
    for dir in text.lines().map(PathBuf::from) {
        gone &= remove_tree(&dir, last);
    }
    if gone {
        let _ = std::fs::remove_file(record);
    }
    gone
}

/// rmdir of `dir` and its sub-cgroups, deepest first; whether `dir` is gone.
fn remove_tree(dir: &Path, warn: bool) -> bool {
    if !dir.exists() {
        return true;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path(), warn);
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => {
            if warn {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the node's cgroup");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 /outer /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
";

    #[test]
    fn hybrid_host_every_mounted_hierarchy_with_its_mount_root() {
        let cgroup = "\
12:rdma:/
5:memory:/outer/job
4:cpuset:/
3:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/session-1.scope
0::/user.slice/session-1.scope
";
        let m = memberships(cgroup, MOUNTINFO);
        let dirs: Vec<(&str, &Path)> = m
            .iter()
            .map(|m| (m.controllers.as_str(), m.dir.as_path()))
            .collect();
        assert_eq!(
            dirs,
            vec![
                ("memory", Path::new("/sys/fs/cgroup/memory/job")),
                ("cpuset", Path::new("/sys/fs/cgroup/cpuset")),
                (
                    "cpu,cpuacct",
                    Path::new("/sys/fs/cgroup/cpu,cpuacct/user.slice")
                ),
                (
                    "name=systemd",
                    Path::new("/sys/fs/cgroup/systemd/user.slice/session-1.scope")
                ),
                (
                    "",
                    Path::new("/sys/fs/cgroup/unified/user.slice/session-1.scope")
                ),
            ],
            "rdma is not mounted and is left out"
        );
    }

    #[test]
    fn pure_v2_host() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = memberships("0::/system.slice/x.service\n", mountinfo);
        assert_eq!(
            m,
            vec![Membership {
                controllers: String::new(),
                dir: "/sys/fs/cgroup/system.slice/x.service".into()
            }]
        );
    }

    #[test]
    fn the_enter_script_moves_itself_then_execs() {
        let d = tempfile::tempdir().unwrap();
        let dirs = vec![d.path().join("a"), d.path().join("b c")];
        for x in &dirs {
            std::fs::create_dir(x).unwrap();
        }
        let out = std::process::Command::new("sh")
            .args(["-c", enter_script(), "pangaea-cgroup-enter", "sh", "-c"])
            .arg("echo $$; echo ${PANGAEA_CGROUP_PROCS:-unset}")
            .env("PANGAEA_CGROUP_PROCS", procs_list(&dirs))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let pid = lines.next().unwrap();
        assert_eq!(lines.next(), Some("unset"));
        for x in &dirs {
            assert_eq!(
                std::fs::read_to_string(x.join("cgroup.procs"))
                    .unwrap()
                    .trim(),
                pid,
                "the same process (exec keeps the PID) wrote itself into {}",
                x.display()
            );
        }
        // A cgroup that cannot be entered stops the launch.
        let out = std::process::Command::new("sh")
            .args(["-c", enter_script(), "x", "true"])
            .env("PANGAEA_CGROUP_PROCS", "/nonexistent/cgroup.procs")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125));
    }
}
