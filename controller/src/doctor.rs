//! `pangaea-ctl doctor`: what this host needs for the configured cluster, checked one by
//! one with the version found and the exact fix; `--install` installs what the system
//! package manager can. Each check is a [`Check`]; which apply follows from the
//! configuration (the provider, the artifact source, NFS mounts), so a GCE cluster is not
//! asked for debootstrap, nor a local one for gcloud.

use pangaea_compiler::artifact_set::ArtifactSource;
use pangaea_compiler::config::Loaded;
use pangaea_compiler::provider::ProviderKind;
use serde::Serialize;
use std::path::Path;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Present and sufficient.
    Ok,
    /// Works without it, with less (a warning).
    Warn,
    /// `up` cannot work without it.
    Missing,
}

/// One requirement and what was found.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is checked (`systemd-nspawn`, `free disk`, …).
    pub name: String,
    /// Why the cluster needs it.
    pub why: String,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found (a version, a size), or `not found`.
    pub found: String,
    /// The fix, when not ok: a command to run, or what to change.
    pub fix: Option<String>,
    /// The Debian package `--install` installs for it, if one does.
    pub package: Option<String>,
}

/// A program the cluster needs: its command, Debian package, and why.
struct Tool {
    command: &'static str,
    package: &'static str,
    why: &'static str,
    required: bool,
}

const fn tool(
    command: &'static str,
    package: &'static str,
    why: &'static str,
    required: bool,
) -> Tool {
    Tool {
        command,
        package,
        why,
        required,
    }
}

/// The programs, by what needs them.
fn tools(loaded: &Loaded) -> Vec<Tool> {
    let c = &loaded.config;
    let mut t = vec![
        tool(
            "kubectl",
            "kubectl",
            "talk to the cluster (`pangaea-ctl env`)",
            false,
        ),
        tool(
            "etcdctl",
            "etcd-client",
            "inspect etcd (`pangaea-ctl env etcdctl`)",
            false,
        ),
        tool("jq", "jq", "read `-o json` output in scripts", false),
    ];
    match c.provider.kind() {
        ProviderKind::Local => t.extend([
            tool(
                "systemd-nspawn",
                "systemd-container",
                "run the local nodes",
                true,
            ),
            tool(
                "debootstrap",
                "debootstrap",
                "build the node image once",
                true,
            ),
            tool(
                "ip",
                "iproute2",
                "the nodes' network namespaces and bridge",
                true,
            ),
        ]),
        ProviderKind::Gce => {
            t.push(tool(
                "gcloud",
                "google-cloud-cli",
                "credentials and project for Compute Engine",
                true,
            ));
            if matches!(&c.provider, pangaea_compiler::provider::Provider::Gce(g) if g.advertise_address.is_none())
            {
                t.extend([
                    tool(
                        "ssh",
                        "openssh-client",
                        "the tunnels through which the nodes reach this controller",
                        true,
                    ),
                    tool(
                        "ssh-keygen",
                        "openssh-client",
                        "the tunnels' key, made once",
                        true,
                    ),
                ]);
            }
        }
        ProviderKind::Vagrant => t.extend([
            tool("vagrant", "vagrant", "drive the VMs", true),
            tool(
                "virsh",
                "libvirt-clients",
                "vagrant-libvirt's hypervisor",
                true,
            ),
            tool("qemu-system-x86_64", "qemu-system-x86", "run the VMs", true),
            tool("libvirtd", "libvirt-daemon-system", "run the VMs", true),
            tool(
                "genisoimage",
                "genisoimage",
                "each node's cloud-init seed ISO",
                true,
            ),
            tool(
                "debootstrap",
                "debootstrap",
                "build the node box once",
                true,
            ),
            tool("extlinux", "extlinux", "make the node box bootable", true),
        ]),
    }
    if !c.nfs.is_empty() || c.provider.kind() == ProviderKind::Vagrant {
        t.push(tool(
            "exportfs",
            "nfs-kernel-server",
            "serve NFS folders to the nodes",
            !c.nfs.is_empty(),
        ));
    }
    t
}

/// Runs every check that applies to `loaded`'s cluster, with `path` as the program search
/// path and `state_dir`/`image_cache` where the cluster keeps its files.
pub fn run(loaded: &Loaded, path: &str, state_dir: &Path, image_cache: &Path) -> Vec<Check> {
    let mut checks: Vec<Check> = tools(loaded).iter().map(|t| check_tool(t, path)).collect();
    let kind = loaded.config.provider.kind();
    if kind == ProviderKind::Local {
        checks.push(check_root());
    }
    if loaded.config.artifact_source == ArtifactSource::OsPackages {
        checks.extend(check_os_packages());
    }
    if kind != ProviderKind::Gce {
        let nodes = pangaea_compiler::model::ClusterModel::build(loaded).nodes;
        let memory: u64 = nodes.iter().map(|n| u64::from(n.memory_mib)).sum();
        checks.push(check_memory(memory));
        checks.push(check_inotify());
    }
    checks.push(check_disk(state_dir, image_cache, kind));
    checks
}

/// Whether `up` can go ahead: no required check missing.
pub fn ready(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.outcome != Outcome::Missing)
}

/// The packages `--install` installs for what is missing or warned about.
pub fn packages(checks: &[Check]) -> Vec<String> {
    let mut p: Vec<String> = checks
        .iter()
        .filter(|c| c.outcome != Outcome::Ok)
        .filter_map(|c| c.package.clone())
        .collect();
    p.dedup();
    p
}

/// `command` on `path`, as the shell would find it.
pub fn find(command: &str, path: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|d| d.join(command))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn check_tool(t: &Tool, path: &str) -> Check {
    let found = find(t.command, path);
    let (outcome, found, fix) = match found {
        Some(p) => (
            Outcome::Ok,
            version(&p).unwrap_or_else(|| p.display().to_string()),
            None,
        ),
        None => (
            if t.required {
                Outcome::Missing
            } else {
                Outcome::Warn
            },
            "not found".to_owned(),
            Some(install_hint(t.package)),
        ),
    };
    Check {
        name: t.command.to_owned(),
        why: t.why.to_owned(),
        outcome,
        found,
        fix,
        package: Some(t.package.to_owned()),
    }
}

/// How to install `package`: apt, except the two that come from their vendors' repositories.
fn install_hint(package: &str) -> String {
    match package {
        "google-cloud-cli" => "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install (then `gcloud init`)".into(),
        "kubectl" => "install kubectl: https://kubernetes.io/docs/tasks/tools/ (or `pangaea-ctl doctor --install` where its apt repository is set up)".into(),
        p => format!("apt-get install {p}"),
    }
}

/// The first line `--version` (or `version`) prints, cut short; `None` if it prints none.
fn version(program: &Path) -> Option<String> {
    let name = program.file_name()?.to_string_lossy().into_owned();
    let args: &[&str] = match name.as_str() {
        "kubectl" => &["version", "--client"],
        "etcdctl" => &["version"],
        "ip" => &["-V"],
        "systemd-nspawn" => &["--version"],
        _ => &["--version"],
    };
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_owned();
    (!line.is_empty()).then(|| line.chars().take(60).collect())
}

fn check_root() -> Check {
    let root = nix::unistd::geteuid().is_root();
    Check {
        name: "root".into(),
        why: "systemd-nspawn, network namespaces and a bridge need it".into(),
        outcome: if root { Outcome::Ok } else { Outcome::Missing },
        found: if root {
            "running as root".into()
        } else {
            format!("uid {}", nix::unistd::geteuid())
        },
        fix: (!root).then(|| "run `sudo pangaea-ctl up`".into()),
        package: None,
    }
}

fn check_os_packages() -> Vec<Check> {
    let mut seen: Vec<&str> = Vec::new();
    let mut checks = Vec::new();
    for row in crate::os_packages::PACKAGE_BINARIES {
        if seen.contains(&row.package) {
            continue;
        }
        seen.push(row.package);
        let present = Path::new(row.path).is_file();
        checks.push(Check {
            name: row.package.to_owned(),
            why: format!("artifactSource: os-packages takes {} from it", row.artifact),
            outcome: if present { Outcome::Ok } else { Outcome::Warn },
            found: if present {
                row.path.to_owned()
            } else {
                "not installed".into()
            },
            fix: (!present).then(|| {
                format!(
                    "apt-get install {} (else {} is left out of the nodes)",
                    row.package, row.artifact
                )
            }),
            package: Some(row.package.to_owned()),
        });
    }
    checks
}

/// A key of `/proc/meminfo`, in MiB.
fn meminfo_mib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:")))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn check_memory(wanted_mib: u64) -> Check {
    let total = meminfo_mib("MemTotal").unwrap_or(0);
    let enough = total >= wanted_mib;
    Check {
        name: "memory".into(),
        why: format!("the nodes may use {wanted_mib} MiB together (their configured memory)"),
        outcome: if enough { Outcome::Ok } else { Outcome::Warn },
        found: format!("{total} MiB in all"),
        fix: (!enough).then(|| "lower pools[].memoryMiB or count in pangaea.yaml: the nodes would be short of memory under load".into()),
        package: None,
    }
}

fn check_inotify() -> Check {
    let read = |k: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/fs/inotify/{k}"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let (instances, watches) = (read("max_user_instances"), read("max_user_watches"));
    let enough = instances >= 512 && watches >= 524_288;
    Check {
        name: "inotify limits".into(),
        why: "each node's systemd and kubelet watch files; the host's limits are shared by all nodes".into(),
        outcome: if enough { Outcome::Ok } else { Outcome::Warn },
        found: format!("max_user_instances {instances}, max_user_watches {watches}"),
        fix: (!enough).then(|| "sysctl -w fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=524288 (and in /etc/sysctl.d/ to keep it)".into()),
        package: None,
    }
}

/// Free bytes on the filesystem holding `path` (or its nearest existing parent).
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let s = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// What `up` stores on this host: the node image (local, about 600 MB) and the nodes'
/// disks, and the artifact mirror (about 300 MB); 3 GiB leaves room.
const DISK_WANTED: u64 = 3 << 30;

fn check_disk(state_dir: &Path, image_cache: &Path, kind: ProviderKind) -> Check {
    let place = if kind == ProviderKind::Local {
        image_cache
    } else {
        state_dir
    };
    let free = free_bytes(place).unwrap_or(0);
    let wanted = if kind == ProviderKind::Local {
        DISK_WANTED
    } else {
        1 << 30
    };
    let enough = free >= wanted;
    Check {
        name: "free disk".into(),
        why: format!(
            "the node image, the nodes' disks and the artifact mirror (at least {} GiB)",
            wanted >> 30
        ),
        outcome: if enough {
            Outcome::Ok
        } else {
            Outcome::Missing
        },
        found: format!(
            "{:.1} GiB free for {}",
            free as f64 / f64::from(1 << 30),
            place.display()
        ),
        fix: (!enough).then(|| {
            format!(
                "free space under {}, or move it (--image-cache, --state-dir)",
                place.display()
            )
        }),
        package: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(text: &str) -> Loaded {
        Loaded::parse("pangaea.yaml", text, Path::new(".")).unwrap()
    }

    #[test]
    fn the_checks_follow_the_provider_and_the_artifact_source() {
        let names = |text: &str| -> Vec<String> {
            tools(&loaded(text))
                .iter()
                .map(|t| t.command.to_owned())
                .collect()
        };
        let local = names("");
        assert!(local.contains(&"debootstrap".to_owned()) && !local.contains(&"gcloud".to_owned()));
        let gce = names("provider: {type: gce}\n");
        assert!(gce.contains(&"gcloud".to_owned()) && !gce.contains(&"debootstrap".to_owned()));
        // SSH for the tunnels, unless the nodes dial an advertised address.
        assert!(gce.contains(&"ssh".to_owned()));
        let direct = names("provider: {type: gce, advertiseAddress: 203.0.113.7}\n");
        assert!(!direct.contains(&"ssh".to_owned()));
        let vagrant = names("provider: {type: vagrant}\n");
        assert!(vagrant.contains(&"vagrant".to_owned()));
    }

    #[test]
    fn a_missing_required_tool_is_named_with_its_package() {
        let empty = tempfile::tempdir().unwrap();
        let path = empty.path().to_str().unwrap();
        let checks = run(&loaded(""), path, empty.path(), empty.path());
        let nspawn = checks.iter().find(|c| c.name == "systemd-nspawn").unwrap();
        assert_eq!(nspawn.outcome, Outcome::Missing);
        assert_eq!(
            nspawn.fix.as_deref(),
            Some("apt-get install systemd-container")
        );
        let jq = checks.iter().find(|c| c.name == "jq").unwrap();
        assert_eq!(jq.outcome, Outcome::Warn);
        assert!(!ready(&checks));
        let p = packages(&checks);
        assert!(p.contains(&"systemd-container".to_owned()) && p.contains(&"jq".to_owned()));
    }
}
