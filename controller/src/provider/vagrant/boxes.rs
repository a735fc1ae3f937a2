//! The box Pangaea's Vagrant nodes boot, built here from Debian packages (no box download):
//! debootstrap with the kernel, cloud-init, sshd and the QEMU guest agent, the Vagrant user
//! with Vagrant's insecure key (vagrant replaces it on first boot), one ext4 partition
//! booted by extlinux, packed as a vagrant-libvirt qcow2 box (`build-box.sh`). Built once
//! into the image cache under a hash of its recipe and added to Vagrant under a name carrying
//! that hash, so a changed recipe makes a new box and machines of the old one keep theirs.

use crate::provider::local::image::IMAGE_PACKAGES;
use crate::provider::local::run;
use crate::provider::{Progress, ProviderError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// The script that builds the box.
const BUILD_SCRIPT: &str = include_str!("build-box.sh");

/// The packages of the box: those of the local node image (what the user-data and the
/// agent use) and what a VM needs besides (a kernel, sshd for vagrant, the guest agent that
/// tells vagrant the node's address, ifupdown for cloud-init's network configuration, and
/// rsync and nfs-common for synced folders: without them vagrant installs them over the
/// network at `up`, which a node on the isolated network cannot reach).
fn packages() -> String {
    format!(
        "{IMAGE_PACKAGES},linux-image-cloud-amd64,openssh-server,sudo,ifupdown,qemu-guest-agent,libpam-systemd,rsync,nfs-common"
    )
}

/// The Debian suite and mirror of the box (those of the local node image).
use crate::provider::local::image::{IMAGE_MIRROR as MIRROR, IMAGE_SUITE as SUITE};

/// cloud-init in the box: the NoCloud seed ISO only, and the modules the user-data needs
/// (as in the local image, for the same reasons), but with cloud-init's network
/// configuration on: the node's static address comes from the seed's `network-config`.
/// `manage_etc_hosts: localhost` maps the node's name to 127.0.1.1 in /etc/hosts: sudo
/// looks its host up, and without it every `sudo` (so every `pangaea-ctl ssh`) waits on a
/// DNS lookup that cannot succeed and prints `unable to resolve host`. The `ssh` module
/// gives each node SSH host keys of its own at first boot (the box carries none: keys made
/// when the box was built would be shared by every node of every cluster); ed25519 only,
/// as an RSA key takes seconds under emulation.
pub const BOX_CLOUD_CFG: &str = "datasource_list: [NoCloud, None]\nmanage_etc_hosts: localhost\nssh_genkeytypes: [ed25519]\ncloud_init_modules: [seed_random, bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts, ssh, runcmd, scripts_user]\ncloud_config_modules: []\ncloud_final_modules: [final_message]\n";

/// Vagrant's insecure public key, which the box authorizes for the `vagrant` user.
pub const VAGRANT_PUBKEY: &str =
    "/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub";

fn recipe_hash() -> String {
    let recipe = format!(
        "{SUITE} {MIRROR} {}\n{BOX_CLOUD_CFG}\n{BUILD_SCRIPT}",
        packages()
    );
    hex::encode(&Sha256::digest(recipe.as_bytes())[..4])
}

/// The name of Pangaea's box in Vagrant (`pangaea/bookworm-<recipe hash>`).
pub fn box_name() -> String {
    format!("pangaea/{SUITE}-{}", recipe_hash())
}

/// The box file in `cache`.
pub fn box_file(cache: &Path) -> PathBuf {
    cache.join(format!("vagrant-{SUITE}-{}.box", recipe_hash()))
}

/// Whether Vagrant has box `name` (for the libvirt provider).
pub async fn has_box(name: &str) -> Result<bool, ProviderError> {
    let list = run(super::vagrant_command().args(["box", "list", "--machine-readable"])).await?;
    // Lines like `1700000000,,box-name,pangaea/bookworm-1a2b3c4d`.
    Ok(list
        .lines()
        .filter_map(|l| l.split(',').nth(3).filter(|_| l.contains(",box-name,")))
        .any(|b| b == name))
}

/// Makes sure Vagrant has Pangaea's box: built into `cache` if missing (a few minutes,
/// once), then added. Returns its name.
pub async fn ensure_box(cache: &Path, progress: Progress<'_>) -> Result<String, ProviderError> {
    let name = box_name();
    if has_box(&name).await? {
        return Ok(name);
    }
    let file = box_file(cache);
    if !file.exists() {
        build(cache, &file, progress).await?;
    }
    progress(&format!("adding box {name} to Vagrant"));
    run(super::vagrant_command()
        .args(["box", "add", "--force", "--name", &name])
        .arg(&file))
    .await?;
    Ok(name)
}

async fn build(cache: &Path, file: &Path, progress: Progress<'_>) -> Result<(), ProviderError> {
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("extlinux", "extlinux"),
        ("sfdisk", "fdisk"),
        ("qemu-img", "qemu-utils"),
        ("losetup", "mount"),
    ] {
        if super::find_tool(tool).is_none() {
            return Err(ProviderError::Prerequisite(format!(
                "{tool} not found, needed to build the Vagrant box: apt-get install {package}"
            )));
        }
    }
    if !Path::new(VAGRANT_PUBKEY).exists() {
        return Err(ProviderError::Prerequisite(format!(
            "{VAGRANT_PUBKEY} not found: apt-get install vagrant"
        )));
    }
    progress(&format!(
        "building the Vagrant box ({SUITE}, from Debian packages; a few minutes, once) into {}",
        file.display()
    ));
    let work = cache.join(format!("vagrant-box-building-{}", std::process::id()));
    let _ = tokio::fs::remove_dir_all(&work).await;
    tokio::fs::create_dir_all(&work)
        .await
        .map_err(ProviderError::io("create the box's work directory", &work))?;
    let cfg = work.join("cloud.cfg");
    let result = async {
        tokio::fs::write(&cfg, BOX_CLOUD_CFG)
            .await
            .map_err(ProviderError::io(
                "write the box's cloud-init settings",
                &cfg,
            ))?;
        let partial = file.with_extension("box.partial");
        run(Command::new("sh")
            .args(["-c", BUILD_SCRIPT, "build-box.sh"])
            .arg(&work)
            .arg(&partial)
            .args([SUITE, MIRROR, &packages(), VAGRANT_PUBKEY]))
        .await?;
        tokio::fs::rename(&partial, file)
            .await
            .map_err(ProviderError::io("move the built box into place", file))
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_box_name_follows_the_recipe() {
        let name = super::box_name();
        assert!(name.starts_with("pangaea/bookworm-"), "{name}");
        assert_eq!(name.len(), "pangaea/bookworm-".len() + 8);
        assert_eq!(name, super::box_name());
    }
}
