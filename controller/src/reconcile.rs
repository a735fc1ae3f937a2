//! The reconcile loop of `up`, written once over any [`Provider`]: bring the machines the
//! cluster configuration names into existence and running, then wait until each node's
//! agent joined, applied its assignment and reports its units settled.
//!
//! Every step checks before it acts, so a re-run on a healthy cluster changes nothing and
//! an interrupted run resumes: a running node is left alone, a stopped one boots with its
//! disk and identity (no new token), a missing one gets a single-use token bound to its
//! name and is created. A token whose node could not be created is revoked at once.

use crate::admin::{Backend, BackendError};
use crate::health::{self, Health};
use crate::provider::{NodeSpec, NodeState, Progress, Provider, ProviderError};
use pangaea_compiler::cloudinit::{self, UserData};
use pangaea_core::NodeName;
use pangaea_proto as pb;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long a node's bootstrap token lives: long enough for a slow machine to boot.
pub const NODE_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Why reconciling stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The provider failed on a node.
    #[error("{node}")]
    Provider {
        /// The node.
        node: NodeName,
        /// What the provider said.
        #[source]
        source: ProviderError,
    },
    /// Listing the provider's machines failed.
    #[error("list the machines")]
    List(#[source] ProviderError),
    /// Removing what the nodes shared failed.
    #[error("remove what the nodes shared")]
    Teardown(#[source] ProviderError),
    /// The controller refused or failed.
    #[error("controller")]
    Controller(#[from] BackendError),
    /// The user-data could not be rendered.
    #[error("render the user-data of {node}: {message}")]
    UserData {
        /// The node.
        node: NodeName,
        /// The template error.
        message: String,
    },
    /// Nodes not healthy by the deadline, each with its state and where to look.
    #[error("not healthy after {}s:\n  {}", timeout.as_secs(), stuck.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Stuck {
        /// How long it waited.
        timeout: Duration,
        /// The nodes that were not healthy.
        stuck: Vec<StuckNode>,
    },
}

/// A node that did not become healthy.
#[derive(Debug, Clone)]
pub struct StuckNode {
    /// The node.
    pub name: NodeName,
    /// Its last health.
    pub health: Health,
    /// Where to look (a console log).
    pub hint: Option<String>,
}

impl std::fmt::Display for StuckNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.health)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// A node the cluster configuration wants.
#[derive(Clone, Debug)]
pub struct WantedNode {
    /// Its name.
    pub name: NodeName,
    /// Its address on the node network.
    pub address: Ipv4Addr,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// CPUs.
    pub cpus: u32,
}

/// What every node's user-data carries besides its name and token.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    /// `host:port` of the controller's gRPC endpoint.
    pub controller: String,
    /// The controller CA's SPKI pin.
    pub ca_pin: String,
    /// Where cloud-init downloads the agent.
    pub agent_url: String,
    /// The agent binary's SHA-256 (hex).
    pub agent_sha256: String,
    /// How long a node's bootstrap (or recovery) token lives: [`NODE_TOKEN_TTL`].
    pub token_ttl: Duration,
    /// The login of the controller's reverse SSH tunnel, when nodes reach it through one
    /// ([`crate::tunnel`]).
    pub tunnel: Option<cloudinit::TunnelLogin>,
    /// Where agents look for a recovery token set as instance metadata
    /// ([`crate::provider::Provider::metadata_server`]).
    pub metadata_server: Option<String>,
}

/// Why an existing machine cannot join with what it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stuck {
    /// It never joined (its bootstrap token may have expired before it first booted).
    NeverJoined,
    /// Another instance of that name joined; this machine never did.
    OtherInstance,
    /// Its identity expired (the cluster was off, or the controller away, for longer than
    /// a node certificate lives).
    IdentityExpired,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stuck::NeverJoined => "never joined",
            Stuck::OtherInstance => "this machine never joined (another instance did)",
            Stuck::IdentityExpired => "its identity expired",
        })
    }
}

/// Whether `machine` needs a recovery token to join, given the controller's record of its
/// name and the tokens it knows (the one rule `up` follows; hardening #10): a machine that
/// never joined and has no live token bound to its name, or whose identity expired. A
/// removed node gets none: the operator removed it.
pub fn stuck_without_token(
    machine: &crate::provider::NodeInfo,
    record: Option<&pb::NodeInfo>,
    tokens: &[pb::TokenInfo],
) -> Option<Stuck> {
    let now = crate::records::now();
    let has_live_token = || {
        tokens.iter().any(|t| {
            t.node_name == machine.name.as_str()
                && !t.revoked
                && t.uses_left > 0
                && t.expires_at > now
        })
    };
    match record {
        None if has_live_token() => None,
        None => Some(Stuck::NeverJoined),
        Some(r) if r.removed => None,
        Some(r) if r.instance_id != machine.instance_id => Some(Stuck::OtherInstance),
        Some(r) if r.certificate_not_after <= now => Some(Stuck::IdentityExpired),
        Some(_) => None,
    }
}

/// What the reconcile loop did to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// It was running: nothing.
    None,
    /// It was stopped: booted with its disk.
    Booted,
    /// It was missing: created.
    Created,
}

/// The reconcile loop over one provider and one controller.
pub struct Reconciler<'a> {
    /// Where machines come from.
    pub provider: &'a dyn Provider,
    /// The controller (tokens, node health).
    pub backend: &'a mut Backend,
    /// What user-data carries.
    pub bootstrap: &'a Bootstrap,
    /// Progress lines.
    pub progress: Progress<'a>,
}

impl Reconciler<'_> {
    /// Creates missing nodes and boots stopped ones; returns what it did to each.
    pub async fn ensure_nodes(
        &mut self,
        wanted: &[WantedNode],
    ) -> Result<Vec<(NodeName, Action)>, ReconcileError> {
        let existing: BTreeMap<NodeName, crate::provider::NodeInfo> = self
            .provider
            .list()
            .await
            .map_err(ReconcileError::List)?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let records: BTreeMap<String, pb::NodeInfo> = self
            .backend
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let tokens = self.backend.list_tokens().await?;
        let mut done = Vec::new();
        let mut to_create = Vec::new();
        for node in wanted {
            let machine = existing.get(&node.name);
            if let Some(m) = machine
                && let Some(why) = stuck_without_token(m, records.get(node.name.as_str()), &tokens)
            {
                self.recover(node, why).await?;
            }
            let action = match machine.map(|m| m.state) {
                Some(NodeState::Running) => Action::None,
                Some(NodeState::Stopped) => {
                    (self.progress)(&format!("{}: booting (existing disk)", node.name));
                    // Its reports from before the stop must not pass for this boot's.
                    self.backend.mark_starting(node.name.to_string()).await?;
                    self.provider.start(&node.name).await.map_err(|source| {
                        ReconcileError::Provider {
                            node: node.name.clone(),
                            source,
                        }
                    })?;
                    Action::Booted
                }
                None => {
                    to_create.push(node);
                    Action::Created
                }
            };
            done.push((node.name.clone(), action));
        }
        self.create(&to_create).await?;
        Ok(done)
    }

    /// A single-use token bound to `node`'s name, for `purpose`.
    async fn node_token(
        &mut self,
        node: &WantedNode,
        purpose: &str,
    ) -> Result<String, ReconcileError> {
        Ok(self
            .backend
            .create_token(pb::CreateTokenRequest {
                ttl_seconds: self.bootstrap.token_ttl.as_secs().max(1),
                uses: 1,
                node_name: node.name.to_string(),
                description: purpose.into(),
            })
            .await?
            .token)
    }

    /// Delivers a recovery token to an existing machine that cannot join by itself
    /// (hardening #10); its agent joins with it at once if running, or when it boots.
    async fn recover(&mut self, node: &WantedNode, why: Stuck) -> Result<(), ReconcileError> {
        let token = self.node_token(node, "recovery").await?;
        (self.progress)(&format!(
            "{}: {why}; delivering a recovery token",
            node.name
        ));
        if let Err(source) = self.provider.deliver_token(&node.name, &token).await {
            self.revoke_unused(node, &token).await;
            return Err(ReconcileError::Provider {
                node: node.name.clone(),
                source,
            });
        }
        Ok(())
    }

    /// Revokes a token made for `node` that never reached it.
    async fn revoke_unused(&mut self, node: &WantedNode, token: &str) {
        let id = pangaea_core::token::BootstrapToken::parse(token)
            .map(|t| t.id().to_owned())
            .unwrap_or_default();
        if let Err(e) = self.backend.revoke_token(id).await {
            tracing::warn!(node = %node.name, "revoke the unused token: {e}");
        }
    }

    /// Creates `nodes`, all at once (a cloud's inserts take a while each): their tokens and
    /// user-data first, then the provider's creates together. A node whose create fails
    /// has its token revoked; the first failure is returned once all have ended.
    async fn create(&mut self, nodes: &[&WantedNode]) -> Result<(), ReconcileError> {
        let mut specs = Vec::new();
        for node in nodes {
            let token = self.node_token(node, "cloud-init").await?;
            let user_data = cloudinit::render(&UserData {
                node: node.name.clone(),
                controller: self.bootstrap.controller.clone(),
                ca_pin: self.bootstrap.ca_pin.clone(),
                token: token.clone(),
                agent_url: self.bootstrap.agent_url.clone(),
                agent_sha256: self.bootstrap.agent_sha256.clone(),
                tunnel: self.bootstrap.tunnel.clone(),
                metadata_server: self.bootstrap.metadata_server.clone(),
            })
            .map_err(|e| ReconcileError::UserData {
                node: node.name.clone(),
                message: e.to_string(),
            })?;
            (self.progress)(&format!(
                "{}: creating ({}, {} MiB)",
                node.name, node.address, node.memory_mib
            ));
            let spec = NodeSpec {
                name: node.name.clone(),
                address: node.address,
                user_data,
                memory_mib: node.memory_mib,
                cpus: node.cpus,
            };
            specs.push((*node, spec, token));
        }
        let provider = self.provider;
        let results =
            futures_util::future::join_all(specs.iter().map(|(_, spec, _)| provider.create(spec)))
                .await;
        let mut first = None;
        for ((node, _, token), result) in specs.iter().zip(results) {
            if let Err(source) = result {
                // The token was for this machine only; do not leave it valid.
                self.revoke_unused(node, token).await;
                first.get_or_insert(ReconcileError::Provider {
                    node: node.name.clone(),
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits until every node in `nodes` is healthy ([`health::assess`]), printing the
    /// nodes by state whenever one changes (an indented line: a detail of the wait, which a
    /// terminal shows beside its spinner); on timeout, fails naming each node that is not,
    /// with its state.
    pub async fn wait_healthy(
        &mut self,
        nodes: &[NodeName],
        timeout: Duration,
    ) -> Result<(), ReconcileError> {
        let started = Instant::now();
        (self.progress)(&format!(
            "waiting until {} node(s) are healthy",
            nodes.len()
        ));
        let mut shown = String::new();
        loop {
            let infos = self.backend.list_nodes().await?;
            let now = crate::records::now();
            let mut stuck = Vec::new();
            // Nodes by state, states in the order nodes show them: `healthy: node-1 node-2;
            // not joined yet: node-3`.
            let mut by_state: Vec<(String, Vec<&str>)> = Vec::new();
            for name in nodes {
                let info = infos.iter().find(|n| n.name == name.as_str() && !n.removed);
                let h = health::assess(info, now);
                let text = h.to_string();
                match by_state.iter_mut().find(|(s, _)| *s == text) {
                    Some((_, names)) => names.push(name.as_str()),
                    None => by_state.push((text, vec![name.as_str()])),
                }
                if !h.is_healthy() {
                    stuck.push(StuckNode {
                        hint: self.provider.console_hint(name),
                        name: name.clone(),
                        health: h,
                    });
                }
            }
            let summary = by_state
                .iter()
                .map(|(state, names)| format!("{state}: {}", names.join(" ")))
                .collect::<Vec<_>>()
                .join("; ");
            if summary != shown {
                (self.progress)(&format!(
                    "    {summary}  (+{:.1}s)",
                    started.elapsed().as_secs_f64()
                ));
                shown = summary;
            }
            if stuck.is_empty() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(ReconcileError::Stuck { timeout, stuck });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `down`'s half of the loop: power off every running node, or with `purge` delete every
/// node and then what they shared. Returns what it did to each node.
pub async fn power_down(
    provider: &dyn Provider,
    purge: bool,
    order: &[NodeName],
    progress: Progress<'_>,
) -> Result<Vec<(NodeName, DownAction)>, ReconcileError> {
    let mut done = Vec::new();
    let mut machines = provider.list().await.map_err(ReconcileError::List)?;
    // Stable: machines `order` does not name keep their place, ahead of those it does.
    machines.sort_by_key(|m| order.iter().position(|n| *n == m.name));
    for n in machines {
        let fail = |source| ReconcileError::Provider {
            node: n.name.clone(),
            source,
        };
        let action = if purge {
            progress(&format!("{}: deleting", n.name));
            provider.delete(&n.name).await.map_err(fail)?;
            DownAction::Deleted
        } else if n.state == NodeState::Running {
            progress(&format!("{}: stopping", n.name));
            provider.stop(&n.name).await.map_err(fail)?;
            DownAction::Stopped
        } else {
            DownAction::None
        };
        done.push((n.name, action));
    }
    if purge {
        provider
            .teardown()
            .await
            .map_err(ReconcileError::Teardown)?;
    }
    Ok(done)
}

/// The order `stop` powers nodes off in, first to last: worker-only nodes (their workloads
/// go before the API they report to), then control-plane nodes without etcd, then the etcd
/// members with the `leader` last (a follower leaving costs no election; the leader leaving
/// last costs one, when nobody is left to serve). Otherwise the configuration's order.
pub fn stop_order(
    nodes: &[pangaea_compiler::model::NodeModel],
    leader: Option<&str>,
) -> Vec<NodeName> {
    let rank = |n: &pangaea_compiler::model::NodeModel| match (n.is_etcd, n.is_control_plane) {
        (true, _) if Some(n.name.as_str()) == leader => 3,
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    };
    let mut out: Vec<&pangaea_compiler::model::NodeModel> = nodes.iter().collect();
    out.sort_by_key(|n| rank(n));
    out.into_iter().map(|n| n.name.clone()).collect()
}

/// What `down` did to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownAction {
    /// It was stopped already.
    None,
    /// Powered off, disk kept.
    Stopped,
    /// Deleted with everything created for it.
    Deleted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangaea_compiler::config::Loaded;
    use pangaea_compiler::model::ClusterModel;

    #[test]
    fn an_error_shows_each_cause_once() {
        let e = anyhow::Error::from(ReconcileError::Provider {
            node: "node-3".parse().unwrap(),
            source: ProviderError::Command {
                command: "vagrant up node-3".into(),
                stderr: "Timed out while waiting for the machine to boot.".into(),
            },
        });
        let shown = format!("{e:#}");
        assert_eq!(
            shown,
            "node-3: vagrant up node-3: Timed out while waiting for the machine to boot."
        );
        let e = anyhow::Error::from(ReconcileError::List(ProviderError::Failed("no".into())));
        assert_eq!(format!("{e:#}"), "list the machines: no");
    }

    #[test]
    fn workers_stop_first_then_control_planes_then_etcd_with_the_leader_last() {
        let loaded = Loaded::parse(
            "pangaea.yaml",
            "pools:\n  - {name: db, count: 3, roles: [etcd]}\n  - {name: cp, count: 1, roles: [control-plane]}\n  - {name: w, count: 2, roles: [worker]}\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let model = ClusterModel::build(&loaded);
        let order: Vec<String> = stop_order(&model.nodes, Some("db-1"))
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(order, ["w-1", "w-2", "cp-1", "db-2", "db-3", "db-1"]);
        let no_leader: Vec<String> = stop_order(&model.nodes, None)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(no_leader, ["w-1", "w-2", "cp-1", "db-1", "db-2", "db-3"]);
    }
}
