//! The node image of the local provider: a debootstrap of Debian with systemd and
//! cloud-init, built once and cached under a hash of its recipe, so a changed recipe builds
//! a new image while nodes created from the old one keep their lower layer.
//!
//! Besides the packages, the image carries what a worker's container runtime needs inside a
//! systemd-nspawn machine and that cannot be given from outside ([`IMAGE_FILES`]; the boot
//! options are in the provider, `super::Local::boot`). Each is explained in
//! docs/ARCHITECTURE.md, "Nodes that run containers".

use super::run;
use crate::provider::{Progress, ProviderError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// The recipe of the node image; the cache key is its hash, so a changed recipe rebuilds.
/// (python3-cffi-backend is named because debootstrap does not resolve the virtual
/// packages python3-cryptography depends on.)
/// iptables and conntrack are for kube-proxy and the CNI plugins (masquerading, port
/// mappings, flushing conntrack entries of deleted services). openssh-server is for nodes
/// that a controller behind NAT reaches through a reverse SSH tunnel (the GCE stand-in's
/// instances, which boot this image); it is off until the user-data turns it on, and has
/// no host keys until then ([`IMAGE_REMOVED`]).
pub const IMAGE_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,cloud-init,ca-certificates,curl,python3-cffi-backend,iptables,conntrack,openssh-server";
/// The Debian suite of the image.
pub const IMAGE_SUITE: &str = "bookworm";
/// Where debootstrap fetches packages.
pub const IMAGE_MIRROR: &str = "http://deb.debian.org/debian";
/// cloud-init settings baked into the image: nodes get their network from the provider, and
/// cloud-init runs only the modules the user-data needs. (The stock module list generates
/// locales and SSH keys, which slows every boot and at times stalled a node's config stage
/// so that its runcmd never ran.) Everything runs in the first networked stage (`init`):
/// each later stage is a new Python process, 1.5–2.5 s apiece on a busy host, and the agent
/// would start only after both. The user-data starts the agent with `--no-block`, so
/// starting it from inside `cloud-init.service` (which `network-online.target`, and so the
/// agent, waits for) cannot deadlock.
pub const IMAGE_CLOUD_CFG: &str = "network: {config: disabled}\ndatasource_list: [NoCloud, None]\ncloud_init_modules: [seed_random, bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts, runcmd, scripts_user]\ncloud_config_modules: []\ncloud_final_modules: [final_message]\n";

/// The unit that makes the cgroup v1 controllers writable in a node. Without a user
/// namespace, nspawn mounts them read-only, and runc fails with `mkdir
/// /sys/fs/cgroup/cpuset/default: read-only file system`. The node's cgroup namespace
/// starts at its own per-node cgroup, so what it writes stays below it. A no-op on a
/// cgroup v2 host (the conditions fail).
pub const CGROUP_RW_UNIT: &str = "pangaea-cgroup-rw.service";

/// Files written into the image after debootstrap: (path, content, mode). An empty content
/// for `/etc/machine-id` is deliberate: systemd then gives each node its own machine ID at
/// first boot and commits it to the node's disk (the debootstrapped image carries one fixed
/// ID, which every node would share: journald, D-Bus, the kubelet's machine ID).
pub const IMAGE_FILES: &[(&str, &str, u32)] = &[
    (
        "etc/cloud/cloud.cfg.d/99-pangaea.cfg",
        IMAGE_CLOUD_CFG,
        0o644,
    ),
    ("etc/machine-id", "", 0o444),
    (
        "etc/systemd/system/pangaea-cgroup-rw.service",
        "[Unit]
Description=Remount the cgroup v1 controllers read-write (nspawn mounts them read-only)
DefaultDependencies=no
ConditionPathExists=/sys/fs/cgroup/memory
ConditionPathIsReadWrite=!/sys/fs/cgroup/memory
Before=sysinit.target containerd.service kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*; do [ -L \"$c\" ] || ! findmnt -no OPTIONS \"$c\" | grep -q \"^ro,\" || mount -o remount,bind,rw \"$c\"; done'

[Install]
WantedBy=sysinit.target
",
        0o644,
    ),
    // A container that ignores SIGTERM would hold a node's power-off for systemd's default
    // 90 s; 10 s keeps `down` and `node reboot` short.
    (
        "etc/systemd/system.conf.d/10-pangaea-stop-timeout.conf",
        "[Manager]\nDefaultTimeoutStopSec=10s\n",
        0o644,
    ),
];

/// Files removed from the image after debootstrap: the SSH host keys the package made (each
/// node that turns sshd on makes its own: `ssh-keygen -A` in the user-data), and the link
/// that starts sshd at boot (nodes without a tunnel run no SSH server).
pub const IMAGE_REMOVED: &[&str] = &[
    "etc/ssh/ssh_host_rsa_key",
    "etc/ssh/ssh_host_rsa_key.pub",
    "etc/ssh/ssh_host_ecdsa_key",
    "etc/ssh/ssh_host_ecdsa_key.pub",
    "etc/ssh/ssh_host_ed25519_key",
    "etc/ssh/ssh_host_ed25519_key.pub",
    "etc/systemd/system/multi-user.target.wants/ssh.service",
    // The alias: cloud-init's first stage `Wants=sshd.service`, which would start it anyway.
    "etc/systemd/system/sshd.service",
];

/// Symbolic links made in the image: (link, target). D-Bus keeps its own copy of the
/// machine ID unless it is a link to systemd's; the cgroup unit is enabled by its link.
pub const IMAGE_LINKS: &[(&str, &str)] = &[
    ("var/lib/dbus/machine-id", "/etc/machine-id"),
    (
        "etc/systemd/system/sysinit.target.wants/pangaea-cgroup-rw.service",
        "/etc/systemd/system/pangaea-cgroup-rw.service",
    ),
];

/// Eight hex digits of SHA-256: short, stable names derived from longer ones.
pub(crate) fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// The image directory for the current recipe, under `cache`.
pub fn image_dir(cache: &Path) -> PathBuf {
    cache.join(format!("{IMAGE_SUITE}-{}", short_hash(&recipe())))
}

/// Everything the image is made from, as one string (its hash names the image).
fn recipe() -> String {
    let mut r = format!("{IMAGE_SUITE} {IMAGE_PACKAGES} {IMAGE_MIRROR}");
    for (path, content, mode) in IMAGE_FILES {
        r.push_str(&format!("\n{path} {mode:o}\n{content}"));
    }
    for (link, target) in IMAGE_LINKS {
        r.push_str(&format!("\n{link} -> {target}"));
    }
    for path in IMAGE_REMOVED {
        r.push_str(&format!("\n-{path}"));
    }
    r
}

/// Builds the node image with debootstrap if the cache lacks it (about a minute), into a
/// temporary directory renamed into place when complete. One build at a time per image,
/// across processes and within one (a `flock` on `<image>.lock`): whoever waited finds the
/// image built. (Two builds at once in one process once shared a temporary directory and
/// failed: `mknod: .../test-dev-null: File exists`.)
pub async fn ensure_image(cache: &Path, progress: Progress<'_>) -> Result<PathBuf, ProviderError> {
    let dir = image_dir(cache);
    let built = |dir: &Path| dir.join("usr/lib/systemd/systemd").exists();
    if built(&dir) {
        return Ok(dir);
    }
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(ProviderError::io("create the image cache", cache))?;
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(ProviderError::io("open the image lock", &lock_path))?;
    let _lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .expect("the lock task does not panic")
        .map_err(ProviderError::io("take the image lock", &lock_path))?;
    if built(&dir) {
        return Ok(dir);
    }
    for tool in ["debootstrap", "systemd-nspawn"] {
        if run(Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}")))
        .await
        .is_err()
        {
            return Err(ProviderError::Prerequisite(format!(
                "{tool} not found: apt-get install debootstrap systemd-container"
            )));
        }
    }
    progress(&format!(
        "building the node image with debootstrap ({IMAGE_SUITE}; about a minute, once) into {}",
        dir.display()
    ));
    let tmp = dir.with_extension("building");
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={IMAGE_PACKAGES}"),
            IMAGE_SUITE,
        ])
        .arg(&tmp)
        .arg(IMAGE_MIRROR))
    .await?;
    customize(&tmp)?;
    if let Err(e) = tokio::fs::rename(&tmp, &dir).await {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        if !dir.join("usr/lib/systemd/systemd").exists() {
            return Err(ProviderError::io("move the built image into place", &dir)(
                e,
            ));
        }
    }
    Ok(dir)
}

/// Writes [`IMAGE_FILES`] and [`IMAGE_LINKS`] into the debootstrapped tree at `root`, and
/// removes [`IMAGE_REMOVED`].
fn customize(root: &Path) -> Result<(), ProviderError> {
    use std::os::unix::fs::PermissionsExt;
    for path in IMAGE_REMOVED {
        let p = root.join(path);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ProviderError::io("remove from the node image", &p)(e));
            }
            _ => {}
        }
    }
    for (path, content, mode) in IMAGE_FILES {
        let p = root.join(path);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(p.parent().expect("image files are below the root"))?;
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, content)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
        };
        write().map_err(ProviderError::io("write into the node image", &p))?;
    }
    for (link, target) in IMAGE_LINKS {
        let p = root.join(link);
        let make = || -> std::io::Result<()> {
            std::fs::create_dir_all(p.parent().expect("image links are below the root"))?;
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(target, &p)
        };
        make().map_err(ProviderError::io("link in the node image", &p))?;
    }
    Ok(())
}
