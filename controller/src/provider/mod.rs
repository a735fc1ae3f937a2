//! Providers create, start, stop and delete the machines nodes run on. One trait, so that
//! the reconcile loop (`up`) is written once; the same cloud-init user-data for all.
//! Implemented: [`local`] (systemd-nspawn machines on this host, the default).

pub mod local;

use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    #[error("{0}")]
    Prerequisite(String),
    #[error("node {0:?} does not exist")]
    NoSuchNode(String),
}

/// What a provider needs to create a node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub address: Ipv4Addr,
    pub user_data: String,
    pub memory_mib: u32,
    pub cpus: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Stopped,
}

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub instance_id: String,
    pub address: Ipv4Addr,
    pub state: NodeState,
    pub created_at: i64,
}

pub trait Provider {
    /// The host's address on the nodes' network (where the controller listens), after
    /// making sure that network exists.
    fn ensure_network(&self) -> Result<Ipv4Addr, ProviderError>;
    /// Creates and boots a node; its instance ID is chosen here and stays stable.
    fn create(&self, spec: &NodeSpec) -> Result<NodeInfo, ProviderError>;
    /// Boots an existing, stopped node with the same disk (after `stop`, or a host reboot).
    fn start(&self, name: &str) -> Result<(), ProviderError>;
    /// Powers a node off cleanly.
    fn stop(&self, name: &str) -> Result<(), ProviderError>;
    fn reboot(&self, name: &str) -> Result<(), ProviderError> {
        self.stop(name)?;
        self.start(name)
    }
    /// Removes a node and everything created for it.
    fn delete(&self, name: &str) -> Result<(), ProviderError>;
    fn list(&self) -> Result<Vec<NodeInfo>, ProviderError>;
    fn status(&self, name: &str) -> Result<NodeInfo, ProviderError> {
        self.list()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ProviderError::NoSuchNode(name.to_owned()))
    }
    /// Removes the network once no node is left.
    fn teardown(&self) -> Result<(), ProviderError>;
}
