//! Growing etcd (lifecycle: `node add`, and `up` after a pool grew): a new etcd node joins
//! the running cluster as a **learner** and is promoted to a voting member only once it has
//! caught up with the leader, one node at a time.
//!
//! A founding member and a joining one differ only in etcd's bootstrap settings, which
//! etcd reads on its first start alone: the founders start with
//! `ETCD_INITIAL_CLUSTER_STATE=new` and the configured etcd nodes; a joiner with `existing`
//! and the membership as etcd listed it when the learner was added. That membership is
//! recorded here, in `.pangaea/etcd-joins.json`, **before** the node's instance exists, and
//! the compiler reads it through [`pangaea_compiler::inputs::Inputs::etcd_join`]; so a node
//! never starts etcd as a founder of a second cluster.
//!
//! [`join`] is idempotent, so a run interrupted at any point is completed by running `up`
//! (or `node add`) again: a learner already added for the node's peer URL is taken, an
//! instance already created is kept, a member already promoted is left as it is.

use crate::compile::Compilation;
use crate::membership::{self, Addition, Etcd, Member, Promoted};
use crate::state_dir::StateDir;
use pangaea_compiler::model::{ClusterModel, NodeModel};
use pangaea_core::NodeName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a passing state of etcd (a change being applied, an election) is waited out.
const SETTLE: Duration = Duration::from_secs(10);

/// One node's join, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRecord {
    /// etcd's `--initial-cluster` when the learner was added (`name=peer-url,…`).
    pub initial_cluster: String,
    /// Whether it has been promoted to a voting member: its join is complete.
    #[serde(default)]
    pub promoted: bool,
}

/// Every join recorded for the cluster, by node name.
pub type Joins = BTreeMap<String, JoinRecord>;

/// The joins recorded in `state` (none when the file does not exist).
pub fn load(state: &StateDir) -> anyhow::Result<Joins> {
    let path = state.etcd_joins();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a record of etcd joins: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Joins::new()),
        Err(e) => Err(anyhow::anyhow!("read {}: {e}", path.display())),
    }
}

/// Records `node`'s join (replacing an earlier record), durably.
fn save(state: &StateDir, node: &str, record: JoinRecord) -> anyhow::Result<()> {
    let mut joins = load(state)?;
    joins.insert(node.to_owned(), record);
    write(state, &joins)
}

/// Drops every join record: after a restore from a snapshot, the restored member founded
/// a new cluster, and every other etcd node joins it afresh.
pub fn reset(state: &StateDir) -> anyhow::Result<()> {
    write(state, &Joins::new())
}

/// Drops `node`'s join record (the node is removed for good; its number is never reused).
pub fn forget(state: &StateDir, node: &str) -> anyhow::Result<()> {
    let mut joins = load(state)?;
    if joins.remove(node).is_none() {
        return Ok(());
    }
    write(state, &joins)
}

fn write(state: &StateDir, joins: &Joins) -> anyhow::Result<()> {
    let path = state.etcd_joins();
    pangaea_core::fsutil::atomic_write(
        &path,
        &serde_json::to_vec_pretty(joins).expect("json"),
        0o600,
    )
    .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))
}

/// The etcd nodes of the configuration that must join the running cluster rather than
/// found it, in order: once the cluster was founded (an etcd node exists — `existing`
/// lists the instances — or one joined), every one without an instance (a new node, or one
/// whose machine was lost with its data), and those whose join is unfinished.
pub fn joiners(model: &ClusterModel, joins: &Joins, existing: &[NodeName]) -> Vec<NodeName> {
    let etcd: Vec<&NodeModel> = model.nodes.iter().filter(|n| n.is_etcd).collect();
    // Any etcd instance, or any join ever made, means the cluster was founded: a node
    // without an instance then joins it, whichever members are left.
    let formed = !joins.is_empty() || etcd.iter().any(|n| existing.contains(&n.name));
    etcd.iter()
        .filter(|n| {
            if existing.contains(&n.name) {
                joins.get(n.name.as_str()).is_some_and(|j| !j.promoted)
            } else {
                // No machine, so no etcd data: it joins, whatever it did before.
                formed
            }
        })
        .map(|n| n.name.clone())
        .collect()
}

/// etcd's `--initial-cluster` for `members`, the node joining (`name`, peer URL `peer`)
/// among them: a member not started yet has no name; the only one allowed is the joiner.
fn initial_cluster(members: &[Member], name: &str, peer: &str) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for m in members {
        let this = m.peer_urls.iter().any(|u| u == peer);
        let n = if this { name } else { m.name.as_str() };
        anyhow::ensure!(
            !n.is_empty(),
            "etcd member {:x} ({}) has never started; remove it (`etcdctl member remove {:x}`) or start its node before adding another",
            m.id,
            m.peer_urls.join(","),
            m.id
        );
        for u in &m.peer_urls {
            out.push(format!("{n}={u}"));
        }
    }
    Ok(out.join(","))
}

/// How one node's join went, for progress and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct JoinTimes {
    /// From the start to the learner added.
    pub learner: Duration,
    /// To the node reported healthy (its etcd running as a learner).
    pub started: Duration,
    /// To the promotion to a voting member.
    pub voter: Duration,
}

/// What [`join`] needs from its caller: the node brought up (instance created and booted,
/// healthy) once its join is recorded, and the running controller made to read the record.
#[allow(async_fn_in_trait)]
pub trait Bring {
    /// Makes the running controller read the configuration and the join records again.
    async fn reload(&mut self) -> anyhow::Result<()>;
    /// Creates the node's instance if it has none, boots it, and waits until it is healthy.
    async fn start(&mut self, node: &NodeName, timeout: Duration) -> anyhow::Result<()>;
    /// Whether the node's machine exists (else it has no etcd data).
    async fn exists(&mut self, node: &NodeName) -> anyhow::Result<bool>;
}

/// Joins etcd node `node` to the running cluster: proves the cluster can take a member
/// ([`membership::check_addition`]), adds it as a learner (or takes the learner an earlier
/// run added), records the join, brings the node up, and promotes it once caught up.
/// `endpoints` are the client URLs of the running members to ask.
pub async fn join(
    c: &Compilation,
    etcd: &Etcd,
    endpoints: &[String],
    node: &NodeModel,
    bring: &mut impl Bring,
    timeout: Duration,
    progress: crate::provider::Progress<'_>,
) -> anyhow::Result<JoinTimes> {
    let started = Instant::now();
    let mut times = JoinTimes::default();
    let peer = pangaea_compiler::helpers::etcd_peer_url(node.address);
    let name = node.name.as_str();
    let fresh = !bring.exists(&node.name).await?;
    // A refusal may be passing (a change just made, not yet applied by every member; an
    // election): asked again for a few seconds before it counts.
    let settle = started + SETTLE;
    let (addition, members) = loop {
        let survey = membership::survey(etcd, endpoints).await;
        match membership::check_addition(&survey, &peer) {
            Ok(a) => break a,
            Err(_) if Instant::now() < settle => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(r) => anyhow::bail!(
                "cannot add {name} to etcd: {r} (members: {})",
                membership::describe(&survey)
            ),
        }
    };
    let (id, ask, members, learner) = match addition {
        Addition::Add { ask } => {
            let (id, members) = etcd.add_learner(&ask, &peer).await?;
            progress(&format!(
                "{name}: etcd learner {id:x} added (peer URL {peer}); {} members",
                members.len()
            ));
            (id, ask, members, true)
        }
        // A voting member whose node has no machine any more lost its data with it: a
        // member must never vote again with less than it acknowledged, so it is removed
        // and the node joins afresh, as a learner.
        Addition::Exists {
            id,
            is_learner: false,
            ask,
        } if fresh => {
            etcd.remove(&ask, id).await?;
            let (new_id, members) = etcd.add_learner(&ask, &peer).await?;
            progress(&format!(
                "{name}: its old etcd member {id:x} lost its data with the machine: removed; learner {new_id:x} added (peer URL {peer})"
            ));
            (new_id, ask, members, true)
        }
        Addition::Exists {
            id,
            is_learner,
            ask,
        } => {
            progress(&format!(
                "{name}: etcd member {id:x} exists already ({}); continuing",
                if is_learner { "a learner" } else { "voting" }
            ));
            (id, ask, members, is_learner)
        }
    };
    times.learner = started.elapsed();
    // A node without a machine starts etcd from nothing: its bootstrap settings are the
    // membership now. One with a machine keeps what it was given (its data decides).
    let joins = load(&c.state_dir)?;
    if fresh || !joins.contains_key(name) {
        save(
            &c.state_dir,
            name,
            JoinRecord {
                initial_cluster: initial_cluster(&members, name, &peer)?,
                promoted: false,
            },
        )?;
    }
    bring.reload().await?;
    bring.start(&node.name, timeout).await?;
    times.started = started.elapsed();
    progress(&format!(
        "{name}: up; its etcd {} catching up",
        if learner { "learner is" } else { "member was" }
    ));
    let deadline = started + timeout;
    loop {
        match etcd.promote(&ask, id).await? {
            Promoted::Now | Promoted::Already => break,
            Promoted::NotCaughtUp if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Promoted::NotCaughtUp => anyhow::bail!(
                "{name}: its etcd learner {id:x} did not catch up with the leader within {}s; see `pangaea-ctl status` and the node's etcd log, then run `pangaea-ctl up` to go on",
                timeout.as_secs()
            ),
        }
    }
    times.voter = started.elapsed();
    // Every member applies the promotion before the next change is asked for.
    let mut all = endpoints.to_vec();
    let own = crate::etcd::client_url(&node.address.to_string());
    if !all.contains(&own) {
        all.push(own);
    }
    let settle = Instant::now() + SETTLE;
    loop {
        let survey = membership::survey(etcd, &all).await;
        let voter = survey.answers.iter().all(|(_, r)| {
            r.as_ref()
                .is_ok_and(|v| v.members.iter().all(|m| !m.is_learner))
        });
        if (voter && membership::all_serving(&survey)) || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut record = load(&c.state_dir)?.remove(name).unwrap_or(JoinRecord {
        initial_cluster: initial_cluster(&members, name, &peer)?,
        promoted: false,
    });
    record.promoted = true;
    save(&c.state_dir, name, record)?;
    progress(&format!(
        "{name}: voting etcd member {id:x} (learner after {:.1}s, up after {:.1}s, voter after {:.1}s)",
        times.learner.as_secs_f64(),
        times.started.as_secs_f64(),
        times.voter.as_secs_f64()
    ));
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, peer: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: vec![],
            is_learner: name.is_empty(),
        }
    }

    #[test]
    fn joiners_are_new_etcd_nodes_of_a_formed_cluster_and_unfinished_joins() {
        let text = "pools:\n  - { name: cp, count: 4, roles: [etcd, control-plane] }\n  - { name: w, count: 2, roles: [worker] }\n";
        let l =
            pangaea_compiler::config::Loaded::parse("p", text, std::path::Path::new(".")).unwrap();
        let model = ClusterModel::build(&l);
        let names = |v: &[&str]| -> Vec<NodeName> {
            v.iter().map(|n| NodeName::try_from(*n).unwrap()).collect()
        };
        let none = Joins::new();
        // The first `up`: every etcd node founds the cluster.
        assert_eq!(joiners(&model, &none, &[]), names(&[]));
        // Formed with cp-1..3: cp-4 joins; the new worker does not (no etcd role).
        let formed = names(&["cp-1", "cp-2", "cp-3", "w-1"]);
        assert_eq!(joiners(&model, &none, &formed), names(&["cp-4"]));
        // A join under way is finished even when its instance exists; a finished one is not
        // done again.
        let mut joins = Joins::new();
        let record = |promoted| JoinRecord {
            initial_cluster: "x".into(),
            promoted,
        };
        joins.insert("cp-4".into(), record(false));
        let all = names(&["cp-1", "cp-2", "cp-3", "cp-4"]);
        assert_eq!(joiners(&model, &joins, &all), names(&["cp-4"]));
        joins.insert("cp-4".into(), record(true));
        assert_eq!(joiners(&model, &joins, &all), names(&[]));
        // Its machine lost (and its data with it): it joins again.
        assert_eq!(
            joiners(&model, &joins, &names(&["cp-1", "cp-2", "cp-3"])),
            names(&["cp-4"])
        );
        // Only joined members left: the cluster is still formed.
        joins.insert("cp-1".into(), record(true));
        assert_eq!(
            joiners(&model, &joins, &names(&["cp-1", "cp-4"])),
            names(&["cp-2", "cp-3"])
        );
    }

    #[test]
    fn the_initial_cluster_names_the_joiner_and_refuses_other_unstarted_members() {
        let members = [
            member(1, "node-1", "https://10.0.0.11:2380"),
            member(4, "", "https://10.0.0.14:2380"),
        ];
        assert_eq!(
            initial_cluster(&members, "node-4", "https://10.0.0.14:2380").unwrap(),
            "node-1=https://10.0.0.11:2380,node-4=https://10.0.0.14:2380"
        );
        let e = initial_cluster(&members, "node-5", "https://10.0.0.15:2380").unwrap_err();
        assert!(e.to_string().contains("has never started"), "{e}");
    }
}
