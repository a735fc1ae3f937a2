//! What the Vagrant provider asks libvirt directly (`virsh -c qemu:///system`): the
//! cluster's node network, made before any machine so the controller can listen on it, and
//! the machines' power state (one `virsh list` instead of a slow `vagrant status`).

use crate::provider::ProviderError;
use crate::provider::local::run;
use pangaea_compiler::cidr::Cidr;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use tokio::process::Command;

/// The libvirt connection vagrant-libvirt uses by default.
pub const URI: &str = "qemu:///system";

async fn virsh(args: &[&str]) -> Result<String, ProviderError> {
    run(Command::new("virsh").args(["-q", "-c", URI]).args(args)).await
}

/// Fails with the fix when libvirt's daemon does not answer.
pub async fn check_daemon() -> Result<(), ProviderError> {
    if super::find_tool("virsh").is_none() {
        return Err(ProviderError::Prerequisite(
            "virsh not found: apt-get install libvirt-clients libvirt-daemon-system qemu-system-x86".into(),
        ));
    }
    virsh(&["uri"])
        .await
        .map(drop)
        .map_err(|e| not_answering(&e.to_string()))?;
    ensure_state_dirs()
}

/// Where libvirt's network driver writes each network's dnsmasq files (`*.macs`), even for
/// a network without DHCP. systemd-tmpfiles makes it on a host where systemd runs libvirt;
/// where the daemons were started by hand it is missing, and starting any machine on the
/// network then fails (`Failed to create file '/var/lib/libvirt/dnsmasq/NET.macs.new'`).
const DNSMASQ_STATE: &str = "/var/lib/libvirt/dnsmasq";

/// Makes the state directories libvirt expects and does not make itself
/// ([`DNSMASQ_STATE`]), as its packaging would; nothing where libvirt's own state
/// directory is not this host's.
fn ensure_state_dirs() -> Result<(), ProviderError> {
    let dir = std::path::Path::new(DNSMASQ_STATE);
    if dir.parent().is_some_and(|p| p.is_dir()) && !dir.is_dir() {
        std::fs::create_dir(dir)
            .map_err(ProviderError::io("make libvirt's dnsmasq directory", dir))?;
    }
    Ok(())
}

/// The error when libvirt's daemon does not answer, `why` being virsh's words.
pub fn not_answering(why: &str) -> ProviderError {
    ProviderError::Prerequisite(format!(
        "libvirt does not answer at {URI} ({why}): start it with `systemctl start libvirtd` (where systemd is not PID 1: `virtlogd -d; libvirtd -d`)"
    ))
}

/// A cluster's node network in libvirt: isolated (no forwarding, nothing leaves the host),
/// no DHCP (cloud-init gives each node its address), no DNS (libvirt's dnsmasq would relay
/// the nodes' queries to the host's resolvers), the host at the first address.
pub struct NodeNetwork {
    /// libvirt's name for it (`pangaea-<cluster>`).
    pub name: String,
    /// The host bridge (at most 15 characters).
    pub bridge: String,
    /// The node network.
    pub cidr: Cidr,
}

impl NodeNetwork {
    /// The host's address on it, where the controller listens.
    pub fn host_address(&self) -> Ipv4Addr {
        self.cidr
            .nth(1)
            .expect("a validated node network has a first address")
    }

    fn xml(&self) -> String {
        format!(
            "<network>\n  <name>{}</name>\n  <bridge name='{}' stp='off' delay='0'/>\n  <dns enable='no'/>\n  <ip address='{}' netmask='{}'/>\n</network>\n",
            self.name,
            self.bridge,
            self.host_address(),
            self.cidr.netmask()
        )
    }

    /// Defines and starts the network if it is not there and running.
    pub async fn ensure(&self) -> Result<Ipv4Addr, ProviderError> {
        if virsh(&["net-info", &self.name]).await.is_err() {
            let file = std::env::temp_dir().join(format!(
                "pangaea-net-{}-{}.xml",
                self.name,
                std::process::id()
            ));
            std::fs::write(&file, self.xml())
                .map_err(ProviderError::io("write the network definition", &file))?;
            let defined = virsh(&["net-define", &file.display().to_string()]).await;
            let _ = std::fs::remove_file(&file);
            defined?;
        }
        let info = virsh(&["net-info", &self.name]).await?;
        let active = info
            .lines()
            .any(|l| l.starts_with("Active:") && l.trim_end().ends_with("yes"));
        if !active {
            virsh(&["net-start", &self.name]).await?;
        }
        Ok(self.host_address())
    }

    /// Stops and removes the network (nothing when it is not there).
    pub async fn delete(&self) {
        let _ = virsh(&["net-destroy", &self.name]).await;
        let _ = virsh(&["net-undefine", &self.name]).await;
    }
}

/// The names of the running libvirt domains.
pub async fn running_domains() -> Result<BTreeSet<String>, ProviderError> {
    Ok(virsh(&["list", "--name", "--state-running"])
        .await?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Powers domain `name` off at once, as a power cut would.
pub async fn destroy(name: &str) -> Result<(), ProviderError> {
    virsh(&["destroy", name]).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_is_isolated_with_the_host_first_and_no_dhcp() {
        let n = NodeNetwork {
            name: "pangaea-demo".into(),
            bridge: "pgl0011aabb".into(),
            cidr: Cidr::parse("10.213.0.0/24").unwrap(),
        };
        let xml = n.xml();
        assert!(
            xml.contains("<ip address='10.213.0.1' netmask='255.255.255.0'/>"),
            "{xml}"
        );
        assert!(!xml.contains("<forward"), "no forwarding: {xml}");
        assert!(!xml.contains("<dhcp"), "no DHCP: {xml}");
        assert!(xml.contains("<dns enable='no'/>"), "no DNS relay: {xml}");
    }
}
