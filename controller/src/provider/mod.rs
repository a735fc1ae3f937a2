//! Providers create, start, stop and delete the machines nodes run on. One async trait, so
//! that the reconcile loop ([`crate::reconcile`]) and every command are written once; the
//! same cloud-init user-data for all. [`from_config`] picks the implementation from
//! `pangaea.yaml`.
//!
//! Implemented: [`local`] (systemd-nspawn machines on this host, the default), [`gce`]
//! (Compute Engine instances) and [`vagrant`] (vagrant-libvirt VMs). A new
//! provider is a module here implementing [`Provider`] plus one arm in [`from_config`];
//! what differs by provider is an explicit step of the trait: [`Provider::prepare`] (build
//! an image, check credentials), [`Provider::controller_endpoint`] (how nodes reach the
//! controller), and the machine operations. `fake` (feature `test-util`) is an in-process recording provider
//! for tests.
//!
//! The trait is async because cloud providers poll long-running operations; an
//! implementation must never block the runtime (run processes with `tokio::process`, wait
//! with `tokio::time`).

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod gce;
pub mod local;
pub mod vagrant;

use async_trait::async_trait;
use pangaea_core::NodeName;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Why a provider operation failed. Each variant keeps what failed and, where there is
/// one, the underlying error as its source.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A command ran and failed.
    #[error("{command}: {stderr}")]
    Command {
        /// The command line, as run.
        command: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run {command}")]
    Spawn {
        /// The program.
        command: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done (like "write the node record").
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// This host lacks something the provider needs; the message says how to get it.
    #[error("{0}")]
    Prerequisite(String),
    /// The provider has no such node.
    #[error("node {0} does not exist")]
    NoSuchNode(NodeName),
    /// The operation failed for a reason the provider explains.
    #[error("{0}")]
    Failed(String),
}

impl ProviderError {
    /// An [`ProviderError::Io`] builder for `map_err`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ProviderError::Io { what, path, source }
    }
}

/// Fails with the fix when this process is not root: `provider` needs it for `why`.
pub(crate) fn require_root(provider: &str, why: &str) -> Result<(), ProviderError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(root_needed(provider, why))
}

/// The error of [`require_root`].
pub(crate) fn root_needed(provider: &str, why: &str) -> ProviderError {
    ProviderError::Prerequisite(format!(
        "the {provider} provider needs root ({why}): run `sudo pangaea-ctl ...`"
    ))
}

/// What a provider needs to create a node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The node's name (a DNS label).
    pub name: NodeName,
    /// Its address on the node network.
    pub address: Ipv4Addr,
    /// cloud-init user-data (it carries the node's bootstrap token: a secret).
    pub user_data: String,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// CPUs.
    pub cpus: u32,
}

/// Whether a machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Booted (or booting).
    Running,
    /// Powered off; its disk is kept.
    Stopped,
}

/// A machine as the provider sees it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node's name.
    pub name: NodeName,
    /// Chosen by the provider at creation; stable for the machine's life.
    pub instance_id: String,
    /// Its address on the node network.
    pub address: Ipv4Addr,
    /// Running or stopped.
    pub state: NodeState,
    /// When it was created, unix seconds.
    pub created_at: i64,
}

impl NodeInfo {
    /// A machine just created from `spec` and booted.
    pub fn created(spec: &NodeSpec, instance_id: String, created_at: i64) -> NodeInfo {
        NodeInfo {
            name: spec.name.clone(),
            instance_id,
            address: spec.address,
            state: NodeState::Running,
            created_at,
        }
    }
}

/// A new instance ID for node `node` of cluster `cluster` on this host: its names and 8 random
/// hex digits, so a machine made again under the same name has another ID (cloud-init runs
/// again on it; the controller sees a new machine).
pub fn new_instance_id(cluster: &str, node: &NodeName) -> String {
    format!(
        "{cluster}-{node}-{}",
        hex::encode(rand::random::<[u8; 4]>())
    )
}

/// Where the controller serves the nodes of this provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerEndpoint {
    /// The address the controller binds.
    pub listen: IpAddr,
    /// The address nodes dial (it goes into the controller's serving certificate).
    pub advertise: IpAddr,
    /// Nodes cannot dial this machine (it is behind NAT): the controller listens on
    /// loopback, and its daemon keeps a reverse SSH tunnel to each node
    /// ([`crate::tunnel`]), through which the node dials `advertise` (its own loopback).
    pub tunnel: bool,
}

/// A node the controller keeps a reverse SSH tunnel to ([`crate::tunnel`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelHost {
    /// The node.
    pub node: NodeName,
    /// Its machine's instance ID (a new machine of the same name and address has a new
    /// host key, remembered apart).
    pub instance_id: String,
    /// Where this machine reaches its SSH server (a cloud instance's external address).
    pub address: IpAddr,
}

/// Progress lines for long operations (an image build, a node boot).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// The machines a cluster runs on.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name as `pangaea.yaml` spells it.
    fn name(&self) -> &'static str;

    /// Fails with a clear message when this process lacks the privileges the provider
    /// needs (the local provider needs root).
    fn check_privileges(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Makes ready what nodes are made from, once: the local provider builds its node
    /// image; a cloud provider checks its credentials and finds its image.
    async fn prepare(&self, progress: Progress<'_>) -> Result<(), ProviderError>;

    /// Where nodes reach the controller, making sure that path exists (the local provider
    /// creates its bridge and answers with the bridge's address).
    async fn controller_endpoint(&self) -> Result<ControllerEndpoint, ProviderError>;

    /// Creates and boots a node; its instance ID is chosen here and stays stable.
    async fn create(&self, spec: &NodeSpec) -> Result<NodeInfo, ProviderError>;

    /// Boots an existing, stopped node with the same disk (after `stop`, or a host reboot).
    async fn start(&self, name: &NodeName) -> Result<(), ProviderError>;

    /// Powers a node off cleanly.
    async fn stop(&self, name: &NodeName) -> Result<(), ProviderError>;

    /// Kills a node the way a power cut would (no clean shutdown), for `drill node-loss`.
    async fn crash(&self, name: &NodeName) -> Result<(), ProviderError> {
        Err(ProviderError::Failed(format!(
            "the {} provider cannot crash {name} on purpose",
            self.name()
        )))
    }

    /// Powers a node off and boots it again with the same disk.
    async fn reboot(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.stop(name).await?;
        self.start(name).await
    }

    /// Puts a recovery token on node `name` at
    /// [`RECOVERY_TOKEN_FILE`](pangaea_core::token::RECOVERY_TOKEN_FILE), or where
    /// [`Provider::metadata_server`] says, where its agent finds it — at once on a running
    /// node, or when a stopped one boots — replacing any earlier one. Readable by the
    /// node's root only (a metadata item: by the node and the project's viewers).
    async fn deliver_token(&self, name: &NodeName, token: &str) -> Result<(), ProviderError>;

    /// The API's external address where the provider reserves one (GCE's static address,
    /// given to the API node), as `prepare` left it; `None` elsewhere
    /// ([`crate::api_address`]).
    async fn api_address(&self) -> Result<Option<std::net::Ipv4Addr>, ProviderError> {
        Ok(None)
    }

    /// `HOST[:PORT]` of the metadata server where the nodes' agents look for the recovery
    /// token [`Provider::deliver_token`] sets as an instance metadata item
    /// ([`RECOVERY_TOKEN_METADATA_KEY`](pangaea_core::token::RECOVERY_TOKEN_METADATA_KEY));
    /// `None` for a provider that writes the token file itself.
    fn metadata_server(&self) -> Option<String> {
        None
    }

    /// Removes a node and everything created for it.
    async fn delete(&self, name: &NodeName) -> Result<(), ProviderError>;

    /// Every node of this cluster the provider has, sorted by name.
    async fn list(&self) -> Result<Vec<NodeInfo>, ProviderError>;

    /// One node, or `None` when the provider has no such node.
    async fn describe(&self, name: &NodeName) -> Result<Option<NodeInfo>, ProviderError> {
        Ok(self.list().await?.into_iter().find(|n| &n.name == name))
    }

    /// The cloud-init user-data node `name` was created with, as the provider keeps it (the
    /// local seed, the instance's metadata); `None` when the node does not exist. It holds
    /// the node's bootstrap token: show it through
    /// [`redact_tokens`](pangaea_core::token::redact_tokens).
    async fn user_data(&self, name: &NodeName) -> Result<Option<String>, ProviderError>;

    /// Removes what the nodes shared (the local bridge) once no node is left.
    async fn teardown(&self) -> Result<(), ProviderError>;

    /// The host command line that runs `argv` on node `name` (a login shell when `argv` is
    /// empty), for `pangaea-ctl ssh`: into the local node's namespaces, or `gcloud compute
    /// ssh` to an instance. `tty`: the caller's terminal is passed through.
    async fn shell(
        &self,
        name: &NodeName,
        argv: &[String],
        tty: bool,
    ) -> Result<Vec<String>, ProviderError> {
        let _ = (name, argv, tty);
        Err(ProviderError::Prerequisite(
            "this provider has no shell into its nodes yet".into(),
        ))
    }

    /// Where an operator looks when a node does not come up (a console log, a serial port
    /// command).
    fn console_hint(&self, name: &NodeName) -> Option<String> {
        let _ = name;
        None
    }

    /// The running nodes the controller keeps reverse SSH tunnels to, when its endpoint
    /// says so ([`ControllerEndpoint::tunnel`]); none for a provider whose nodes dial the
    /// controller directly.
    async fn tunnel_hosts(&self) -> Result<Vec<TunnelHost>, ProviderError> {
        Ok(Vec::new())
    }

    /// What this provider's nodes cannot do for the worker runtime, and cannot be prepared
    /// by it (a host setting, a kernel feature), each with what the operator can do; `up`
    /// and `status` print them. `kubelet` is the Kubernetes version of the cluster's
    /// workers, `None` when it has none.
    fn runtime_findings(&self, kubelet: Option<&str>) -> Vec<String> {
        let _ = kubelet;
        Vec::new()
    }
}

/// The provider `pangaea.yaml` configures for this cluster.
pub fn from_config(
    config: &pangaea_compiler::config::Loaded,
    state: &crate::state_dir::StateDir,
    image_cache: &std::path::Path,
) -> Result<Box<dyn Provider>, ProviderError> {
    use pangaea_compiler::provider::ProviderKind;
    let c = &config.config;
    match c.provider.kind() {
        ProviderKind::Local => Ok(Box::new(local::Local::new(
            &c.name,
            c.network.nodes,
            state,
            image_cache,
        ))),
        ProviderKind::Gce => Ok(Box::new(gce::provider(
            config,
            &gce::GcloudEnv::from_env(),
        )?)),
        ProviderKind::Vagrant => Ok(Box::new(vagrant::Vagrant::new(config, state, image_cache))),
    }
}
