//! The node image of the local provider: a debootstrap of Debian with systemd and
//! cloud-init, built once and cached under a hash of its recipe, so a changed recipe builds
//! a new image while nodes created from the old one keep their lower layer.

use super::run;
use crate::provider::{Progress, ProviderError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// The recipe of the node image; the cache key is its hash, so a changed recipe rebuilds.
/// (python3-cffi-backend is named because debootstrap does not resolve the virtual
/// packages python3-cryptography depends on.)
pub const IMAGE_PACKAGES: &str =
    "systemd,systemd-sysv,dbus,iproute2,cloud-init,ca-certificates,curl,python3-cffi-backend";
/// The Debian suite of the image.
pub const IMAGE_SUITE: &str = "bookworm";
/// Where debootstrap fetches packages.
pub const IMAGE_MIRROR: &str = "http://deb.debian.org/debian";
/// cloud-init settings baked into the image: nodes get their network from the provider, and
/// cloud-init runs only the modules the user-data needs. (The stock module list generates
/// locales and SSH keys, which slows every boot and at times stalled a node's config stage
/// so that its runcmd never ran.)
pub const IMAGE_CLOUD_CFG: &str = "network: {config: disabled}\ndatasource_list: [NoCloud, None]\ncloud_init_modules: [seed_random, bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts]\ncloud_config_modules: [runcmd]\ncloud_final_modules: [scripts_user, final_message]\n";

/// Eight hex digits of SHA-256: short, stable names derived from longer ones.
pub(super) fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// The image directory for the current recipe, under `cache`.
pub fn image_dir(cache: &Path) -> PathBuf {
    cache.join(format!(
        "{IMAGE_SUITE}-{}",
        short_hash(&format!(
            "{IMAGE_SUITE} {IMAGE_PACKAGES} {IMAGE_MIRROR} {IMAGE_CLOUD_CFG}"
        ))
    ))
}

/// Builds the node image with debootstrap if the cache lacks it (about a minute), into a
/// temporary directory renamed into place when complete.
pub async fn ensure_image(cache: &Path, progress: Progress<'_>) -> Result<PathBuf, ProviderError> {
    let dir = image_dir(cache);
    if dir.join("usr/lib/systemd/systemd").exists() {
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
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(ProviderError::io("create the image cache", cache))?;
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={IMAGE_PACKAGES}"),
            IMAGE_SUITE,
        ])
        .arg(&tmp)
        .arg(IMAGE_MIRROR))
    .await?;
    let cfg = tmp.join("etc/cloud/cloud.cfg.d/99-pangaea.cfg");
    tokio::fs::write(&cfg, IMAGE_CLOUD_CFG)
        .await
        .map_err(ProviderError::io(
            "write the image's cloud-init config",
            &cfg,
        ))?;
    tokio::fs::rename(&tmp, &dir)
        .await
        .map_err(ProviderError::io("move the built image into place", &dir))?;
    Ok(dir)
}
