//! An in-process provider that records every call, for tests of the reconcile loop and the
//! commands without root or machines. Its "machines" are entries in a map; a test makes
//! them do something by hooks: `on_boot` runs when a node is created or started (a test
//! starts an in-process agent there, with the token from the user-data), `on_stop` when
//! it is stopped or deleted. Failures are injected per node and operation, once.

use super::{ControllerEndpoint, NodeInfo, NodeSpec, NodeState, Progress, Provider, ProviderError};
use async_trait::async_trait;
use pangaea_core::NodeName;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use tokio::sync::Mutex;

/// A provider operation, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `prepare`.
    Prepare,
    /// `create` of a node.
    Create(NodeName),
    /// `start` of a node.
    Start(NodeName),
    /// `stop` of a node.
    Stop(NodeName),
    /// `delete` of a node.
    Delete(NodeName),
    /// `deliver_token` to a node.
    DeliverToken(NodeName),
    /// `teardown`.
    Teardown,
}

/// Which operation an injected failure hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// `create`: fails before the machine exists.
    Create,
    /// `start`.
    Start,
}

/// A node booting: the machine (name, instance ID), its user-data (with the bootstrap
/// token) and whether it is the first boot.
pub type BootHook = Box<dyn Fn(&NodeInfo, &str, bool) + Send + Sync>;
/// A node going down.
pub type StopHook = Box<dyn Fn(&NodeName) + Send + Sync>;
/// A recovery token delivered to a node (a test writes it where the node's agent looks).
pub type TokenHook = Box<dyn Fn(&NodeName, &str) + Send + Sync>;

#[derive(Default)]
struct State {
    nodes: BTreeMap<NodeName, (NodeInfo, String)>,
    calls: Vec<Call>,
    failures: BTreeSet<(Op, NodeName)>,
    next_id: u32,
}

/// The recording provider.
#[derive(Default)]
pub struct FakeProvider {
    state: Mutex<State>,
    on_boot: Option<BootHook>,
    on_stop: Option<StopHook>,
    on_token: Option<TokenHook>,
}

impl FakeProvider {
    /// A provider with no nodes and no hooks.
    pub fn new() -> FakeProvider {
        FakeProvider::default()
    }

    /// Runs `hook` whenever a node boots (created or started).
    pub fn on_boot(mut self, hook: impl Fn(&NodeInfo, &str, bool) + Send + Sync + 'static) -> Self {
        self.on_boot = Some(Box::new(hook));
        self
    }

    /// Runs `hook` whenever a node stops (stopped or deleted).
    pub fn on_stop(mut self, hook: impl Fn(&NodeName) + Send + Sync + 'static) -> Self {
        self.on_stop = Some(Box::new(hook));
        self
    }

    /// Runs `hook` whenever a recovery token is delivered to a node.
    pub fn on_token(mut self, hook: impl Fn(&NodeName, &str) + Send + Sync + 'static) -> Self {
        self.on_token = Some(Box::new(hook));
        self
    }

    /// Makes the next `op` on `node` fail.
    pub async fn fail_once(&self, op: Op, node: &NodeName) {
        self.state.lock().await.failures.insert((op, node.clone()));
    }

    /// Every call so far, in order.
    pub async fn calls(&self) -> Vec<Call> {
        self.state.lock().await.calls.clone()
    }

    /// The machines it has now.
    pub async fn list_now(&self) -> Vec<NodeInfo> {
        self.state
            .lock()
            .await
            .nodes
            .values()
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// Forgets the recorded calls.
    pub async fn clear_calls(&self) {
        self.state.lock().await.calls.clear();
    }

    /// Powers a node off behind the reconcile loop's back (a host reboot, a crash).
    pub async fn power_off(&self, node: &NodeName) {
        if let Some((info, _)) = self.state.lock().await.nodes.get_mut(node) {
            info.state = NodeState::Stopped;
        }
        if let Some(h) = &self.on_stop {
            h(node);
        }
    }

    async fn injected(&self, op: Op, node: &NodeName) -> Result<(), ProviderError> {
        if self.state.lock().await.failures.remove(&(op, node.clone())) {
            return Err(ProviderError::Failed(format!(
                "injected failure: {op:?} {node}"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn prepare(&self, _progress: Progress<'_>) -> Result<(), ProviderError> {
        self.state.lock().await.calls.push(Call::Prepare);
        Ok(())
    }

    async fn controller_endpoint(&self) -> Result<ControllerEndpoint, ProviderError> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Ok(ControllerEndpoint {
            listen: lo,
            advertise: lo,
            tunnel: false,
        })
    }

    async fn create(&self, spec: &NodeSpec) -> Result<NodeInfo, ProviderError> {
        self.state
            .lock()
            .await
            .calls
            .push(Call::Create(spec.name.clone()));
        self.injected(Op::Create, &spec.name).await?;
        let info = {
            let mut s = self.state.lock().await;
            if s.nodes.contains_key(&spec.name) {
                return Err(ProviderError::Failed(format!(
                    "node {} exists already",
                    spec.name
                )));
            }
            s.next_id += 1;
            let info = NodeInfo {
                name: spec.name.clone(),
                instance_id: format!("fake-{}-{}", spec.name, s.next_id),
                address: spec.address,
                state: NodeState::Running,
                created_at: crate::records::now(),
            };
            s.nodes
                .insert(spec.name.clone(), (info.clone(), spec.user_data.clone()));
            info
        };
        if let Some(h) = &self.on_boot {
            h(&info, &spec.user_data, true);
        }
        Ok(info)
    }

    async fn deliver_token(&self, name: &NodeName, token: &str) -> Result<(), ProviderError> {
        {
            let mut s = self.state.lock().await;
            s.calls.push(Call::DeliverToken(name.clone()));
            if !s.nodes.contains_key(name) {
                return Err(ProviderError::NoSuchNode(name.clone()));
            }
        }
        if let Some(h) = &self.on_token {
            h(name, token);
        }
        Ok(())
    }

    async fn start(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.state
            .lock()
            .await
            .calls
            .push(Call::Start(name.clone()));
        self.injected(Op::Start, name).await?;
        let (info, user_data) = {
            let mut s = self.state.lock().await;
            let (info, user_data) = s
                .nodes
                .get_mut(name)
                .ok_or_else(|| ProviderError::NoSuchNode(name.clone()))?;
            if info.state == NodeState::Running {
                return Ok(());
            }
            info.state = NodeState::Running;
            (info.clone(), user_data.clone())
        };
        if let Some(h) = &self.on_boot {
            h(&info, &user_data, false);
        }
        Ok(())
    }

    async fn stop(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.state.lock().await.calls.push(Call::Stop(name.clone()));
        self.power_off(name).await;
        Ok(())
    }

    async fn delete(&self, name: &NodeName) -> Result<(), ProviderError> {
        self.state
            .lock()
            .await
            .calls
            .push(Call::Delete(name.clone()));
        let existed = self.state.lock().await.nodes.remove(name).is_some();
        if existed && let Some(h) = &self.on_stop {
            h(name);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, ProviderError> {
        Ok(self.list_now().await)
    }

    async fn user_data(&self, name: &NodeName) -> Result<Option<String>, ProviderError> {
        Ok(self
            .state
            .lock()
            .await
            .nodes
            .get(name)
            .map(|(_, u)| u.clone()))
    }

    async fn teardown(&self) -> Result<(), ProviderError> {
        self.state.lock().await.calls.push(Call::Teardown);
        Ok(())
    }

    fn console_hint(&self, name: &NodeName) -> Option<String> {
        Some(format!("fake console of {name}"))
    }
}
