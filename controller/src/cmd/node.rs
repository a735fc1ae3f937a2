//! `pangaea-ctl node add|drain|uncordon|remove|reboot`.

use super::{Ctx, step};
use crate::admin::Backend;
use crate::cli::NodeCommand;
use crate::removal::{EtcdAccess, Journal, RemovalError, Step};
use anyhow::Context;
use pangaea_core::NodeName;
use std::time::{Duration, Instant};

/// Runs a `node` subcommand.
pub async fn run(ctx: &Ctx, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Add {
            pool,
            count,
            timeout,
        } => add(ctx, pool.as_deref(), count, timeout).await?,
        NodeCommand::Drain {
            name,
            drain,
            kubeconfig,
        } => {
            let kubeconfig = kubeconfig.unwrap_or_else(|| ctx.state.admin_kubeconfig());
            let done = drain_node(ctx, &name, &kubeconfig, &drain.options(), true).await?;
            crate::outln!("node {name} drained: {done}");
        }
        NodeCommand::UserData { name } => {
            let c = ctx.compilation()?;
            let provider = ctx.provider(&c)?;
            let text = provider.user_data(&name).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "node {name} does not exist on provider {} (`pangaea-ctl status` lists the nodes)",
                    provider.name()
                )
            })?;
            crate::out!("{}", pangaea_core::token::redact_tokens(&text));
        }
        NodeCommand::Uncordon { name, kubeconfig } => {
            let kubeconfig = kubeconfig.unwrap_or_else(|| ctx.state.admin_kubeconfig());
            uncordon(ctx, &name, &kubeconfig).await?;
        }
        NodeCommand::Remove {
            name,
            force,
            dry_run,
            output,
            timeout,
        } => {
            let drain = crate::drain::Options {
                timeout,
                force,
                // The node and its disks go: so does its emptyDir data, evicted or not.
                delete_emptydir_data: true,
            };
            remove(ctx, &name, &drain, dry_run.then_some(output)).await?
        }
        NodeCommand::Reboot { name, timeout } => {
            let c = ctx.compilation()?;
            let provider = ctx.provider(&c)?;
            reboot(ctx, &c, provider.as_ref(), &name, timeout).await?;
        }
    }
    Ok(())
}

/// `node add`: raises the pool's count in pangaea.yaml, then runs `up`, which creates the
/// new nodes (etcd ones joining as learners, one at a time).
async fn add(ctx: &Ctx, pool: Option<&str>, count: u32, timeout: Duration) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    let pools = &c.loaded.config.pools;
    let pool = match (pool, pools.as_slice()) {
        (Some(p), _) => pools.iter().find(|x| x.name == p).with_context(|| {
            let names: Vec<&str> = pools.iter().map(|x| x.name.as_str()).collect();
            format!(
                "no pool {p:?} in {} (its pools: {})",
                ctx.config.display(),
                names.join(", ")
            )
        })?,
        (None, [only]) => only,
        (None, _) => {
            let names: Vec<&str> = pools.iter().map(|x| x.name.as_str()).collect();
            anyhow::bail!(
                "{} has several pools ({}): name one with --pool",
                ctx.config.display(),
                names.join(", ")
            )
        }
    };
    let to = pool.count + count;
    pangaea_compiler::config_edit::write_pool_count(&ctx.config, &pool.name, to)?;
    step(&format!(
        "{}: pool {} count {} → {to} (if interrupted, `pangaea-ctl up` completes the addition)",
        ctx.config.display(),
        pool.name,
        pool.count
    ));
    super::up::run(ctx, timeout, super::up::Mode::Up).await
}

/// What `node remove --dry-run` would do, as `-o json|yaml` prints it.
#[derive(serde::Serialize)]
struct RemovalPreview {
    /// The node.
    node: String,
    /// Whether an interrupted removal would be resumed (its done steps are left out).
    resumed: bool,
    /// The steps still to do, in order.
    steps: Vec<PlannedStep>,
}

/// One step of a [`RemovalPreview`].
#[derive(serde::Serialize)]
struct PlannedStep {
    /// Its name, as the journal spells it.
    step: &'static str,
    /// What it does.
    does: String,
    /// For the etcd step: whether etcd would allow it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<crate::removal::EtcdPreview>,
}

/// `node remove`: plans the removal into its journal (or resumes the journal of an
/// interrupted one) and runs the steps still to do ([`crate::removal`]).
async fn remove(
    ctx: &Ctx,
    name: &NodeName,
    drain: &crate::drain::Options,
    dry_run: Option<crate::cli::Output>,
) -> anyhow::Result<()> {
    let force = drain.force;
    let c = ctx.compilation()?;
    let path = ctx.state.removal_journal(name);
    let journal = match Journal::load(&path)? {
        Some(j) => {
            let done: Vec<&str> = j.done.iter().map(|s| s.name()).collect();
            step(&format!(
                "{name}: resuming the removal started {} s ago (done: {})",
                crate::records::now() - j.started_at,
                done.join(", ")
            ));
            j
        }
        None => {
            if c.loaded
                .config
                .removed_nodes
                .iter()
                .any(|n| n == name.as_str())
            {
                crate::outln!(
                    "{name} is already removed (listed in removedNodes of {})",
                    ctx.config.display()
                );
                return Ok(());
            }
            let Some(node) = c.model.nodes.iter().find(|n| n.name == *name) else {
                let names: Vec<&str> = c.model.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow::bail!(
                    "no node {name} in {} (its nodes: {})",
                    ctx.config.display(),
                    names.join(", ")
                );
            };
            let address = node.address.to_string();
            Journal {
                node: name.to_string(),
                etcd_peer_url: node
                    .is_etcd
                    .then(|| pangaea_compiler::helpers::etcd_peer_url(&address)),
                etcd_client_url: node.is_etcd.then(|| crate::etcd::client_url(&address)),
                // Absolute: a resumed removal may run from another directory.
                config: std::path::absolute(&ctx.config).unwrap_or_else(|_| ctx.config.clone()),
                done: vec![],
                started_at: crate::records::now(),
            }
        }
    };
    let provider = ctx.provider(&c)?;
    let (running, any_member_exists) = crate::etcd::running_members(&c, provider.as_ref()).await?;
    let mut endpoints: Vec<String> = running.into_iter().map(|(_, e)| e).collect();
    // A resumed removal: the node may be in removedNodes already, and so not in the
    // configuration's members; its machine is gone by then too.
    if let Some(own) = &journal.etcd_client_url
        && !endpoints.contains(own)
        && provider
            .describe(name)
            .await?
            .is_some_and(|m| m.state == crate::provider::NodeState::Running)
    {
        endpoints.push(own.clone());
    }
    let access = EtcdAccess {
        etcd: crate::etcd::operator_client(&c)?,
        endpoints,
        any_member_exists,
    };

    if let Some(output) = dry_run {
        let mut steps = Vec::new();
        for s in journal.remaining() {
            let etcd = if s == Step::EtcdMember && journal.etcd_peer_url.is_some() {
                Some(crate::removal::preview_etcd_member(&journal, &access, force).await)
            } else {
                None
            };
            steps.push(PlannedStep {
                step: s.name(),
                does: s.describe(&journal),
                etcd,
            });
        }
        let preview = RemovalPreview {
            node: name.to_string(),
            resumed: !journal.done.is_empty(),
            steps,
        };
        return super::print_data(output, &preview, || {
            crate::outln!("node remove {name} would:");
            for s in &preview.steps {
                let mut line = format!("  {:<13} {}", s.step, s.does);
                if let Some(etcd) = &s.etcd {
                    line.push_str(&format!(" — {etcd}"));
                }
                crate::outln!("{line}");
            }
            Ok(())
        });
    }

    if journal.done.is_empty() {
        crate::removal::precheck_etcd_member(&journal, &access, force).await?;
    }
    let mut journal = journal;
    journal.save(&path)?;
    for s in journal.remaining() {
        step(&format!("{name}: {}", s.describe(&journal)));
        let outcome = match run_step(ctx, provider.as_ref(), &journal, s, drain, &access).await {
            Ok(o) => o,
            Err(e) => match e.downcast::<RemovalError>() {
                // Refused before anything was done: the removal never started.
                Ok(e @ RemovalError::Refused { .. }) if journal.done.is_empty() => {
                    pangaea_core::fsutil::remove_durably(&path)?;
                    return Err(e.into());
                }
                Ok(e) => return Err(e.into()),
                Err(e) => {
                    return Err(RemovalError::Step {
                        node: name.to_string(),
                        step: s,
                        message: format!("{e:#}"),
                    }
                    .into());
                }
            },
        };
        if !outcome.is_empty() {
            step(&format!("{name}: {outcome}"));
        }
        journal.done.push(s);
        journal.save(&path)?;
        crate::removal::failpoint(s);
    }
    pangaea_core::fsutil::remove_durably(&path)
        .with_context(|| format!("remove the finished journal {}", path.display()))?;
    crate::outln!(
        "node {name} removed: etcd member, certificates, instance; recorded in removedNodes of {}",
        ctx.config.display()
    );
    Ok(())
}

async fn run_step(
    ctx: &Ctx,
    provider: &dyn crate::provider::Provider,
    j: &Journal,
    s: Step,
    drain: &crate::drain::Options,
    access: &EtcdAccess,
) -> anyhow::Result<String> {
    let state = &ctx.state;
    let name = NodeName::try_from(j.node.clone()).map_err(anyhow::Error::msg)?;
    Ok(match s {
        // The instance is deleted two steps later: the kubelet stopping is not waited for.
        Step::Drain => drain_node(ctx, &name, &state.admin_kubeconfig(), drain, false).await?,
        Step::EtcdMember => crate::removal::remove_etcd_member(j, access, drain.force).await?,
        Step::Credentials => {
            let known = Backend::connect(state)
                .await?
                .remove_node(j.node.clone())
                .await?;
            if known {
                "certificates revoked".into()
            } else {
                "the controller never knew it (it never joined)".into()
            }
        }
        Step::Instance => {
            if provider.describe(&name).await?.is_none() {
                "no instance (already deleted)".into()
            } else {
                provider.delete(&name).await?;
                "instance deleted".into()
            }
        }
        Step::Config => {
            pangaea_compiler::config_edit::write_removed_node(&j.config, &j.node)?;
            crate::etcd_join::forget(state, &j.node)?;
            String::new()
        }
    })
}

/// Drains node `name` ([`crate::drain`]): the Kubernetes part where an API answers at
/// `kubeconfig` (with a warning where none does), then its kubelet stopped through its plan;
/// with `wait`, until the node applied that (or is seen not reporting). Returns a summary.
async fn drain_node(
    ctx: &Ctx,
    name: &NodeName,
    kubeconfig: &std::path::Path,
    o: &crate::drain::Options,
    wait: bool,
) -> anyhow::Result<String> {
    use crate::drain::DrainError;
    let started = Instant::now();
    let progress = |m: &str| step(&format!("{name}: {m}"));
    let api = match kubernetes(kubeconfig).await {
        Ok((client, server)) => {
            crate::drain::drain(&client, &server, name.as_str(), o, &progress).await
        }
        Err(e) => Err(e),
    };
    let mut summary = match api {
        Ok(d) => {
            let mut s = format!("{} pod(s) evicted", d.evicted.len());
            if !d.skipped.is_empty() {
                s.push_str(&format!(
                    ", {} left (DaemonSet or mirror pods)",
                    d.skipped.len()
                ));
            }
            s
        }
        Err(e @ (DrainError::Unreachable { .. } | DrainError::NoSuchNode(_))) => {
            crate::errln!(
                "warning: {e}: {name} is not cordoned and no pod is evicted; draining only what Pangaea manages (its kubelet)"
            );
            "no Kubernetes API answered, so no pod was evicted".to_owned()
        }
        Err(e) => return Err(e.into()),
    };
    let mut backend = Backend::connect(&ctx.state).await?;
    let Some(revision) = backend.set_drained(name.to_string(), true).await? else {
        summary.push_str(&format!(
            "; the controller has no node {name} (it never joined), so no kubelet to stop"
        ));
        return Ok(summary);
    };
    summary.push_str("; ");
    summary.push_str(&match revision {
        None => "its kubelet was already held back".to_owned(),
        Some(r) if wait => {
            let left = o.timeout.saturating_sub(started.elapsed());
            wait_applied(&mut backend, name, r, left).await?
        }
        Some(_) => "its kubelet is being stopped".to_owned(),
    });
    Ok(summary)
}

/// A client for the API at `kubeconfig`; a missing file means no API is known (as before
/// `up` wrote the cluster's): [`crate::drain::DrainError::Unreachable`].
async fn kubernetes(
    kubeconfig: &std::path::Path,
) -> Result<(kube::Client, String), crate::drain::DrainError> {
    if !kubeconfig.exists() {
        return Err(crate::drain::DrainError::Unreachable {
            server: "(none)".into(),
            message: format!("no kubeconfig at {}", kubeconfig.display()),
        });
    }
    crate::drain::client(kubeconfig).await
}

/// Waits until node `name` applied `revision` (its plan with or without the kubelet). A
/// node not reporting applies it once back: that is said, not waited for.
async fn wait_applied(
    backend: &mut Backend,
    name: &NodeName,
    revision: u64,
    timeout: Duration,
) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let nodes = backend.list_nodes().await?;
        let info = nodes.iter().find(|n| n.name == name.as_str());
        let health = crate::health::assess(info, crate::records::now());
        if health.is_down()
            || matches!(
                health,
                crate::health::Health::NoReport | crate::health::Health::Starting
            )
        {
            return Ok(format!(
                "{name} is not reporting ({health}); it applies the change when it is back"
            ));
        }
        let applied = info
            .and_then(|n| n.last_report.as_ref())
            .map_or(0, |r| r.applied_revision);
        if applied >= revision {
            return Ok(format!("{name} applied it (revision {revision})"));
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "{name} has not applied revision {revision} after {timeout:?} ({health})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `node uncordon`: the kubelet first (so nothing is scheduled onto a node without one),
/// then `spec.unschedulable` cleared where an API answers.
async fn uncordon(ctx: &Ctx, name: &NodeName, kubeconfig: &std::path::Path) -> anyhow::Result<()> {
    let mut backend = Backend::connect(&ctx.state).await?;
    match backend.set_drained(name.to_string(), false).await? {
        None => crate::errln!(
            "warning: the controller has no node {name} (it never joined): no kubelet to start"
        ),
        Some(None) => step(&format!("{name}: its kubelet was not held back")),
        Some(Some(revision)) => {
            let done = wait_applied(&mut backend, name, revision, Duration::from_secs(180)).await?;
            step(&format!("{name}: kubelet no longer held back; {done}"));
        }
    }
    use crate::drain::DrainError;
    let api = match kubernetes(kubeconfig).await {
        Ok((client, server)) => crate::drain::cordon(&client, &server, name.as_str(), false).await,
        Err(e) => Err(e),
    };
    match api {
        Ok(true) => crate::outln!("node/{name} uncordoned"),
        Ok(false) => crate::outln!("node/{name} already uncordoned"),
        Err(e @ (DrainError::Unreachable { .. } | DrainError::NoSuchNode(_))) => {
            crate::errln!("warning: {e}: {name} could not be marked schedulable in Kubernetes");
            crate::outln!("node {name}: kubelet no longer held back");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Reboots `name` and waits until it reports healthy from its new boot and, when it runs an
/// etcd member, until etcd has every member it had and one leader.
async fn reboot(
    ctx: &Ctx,
    c: &crate::compile::Compilation,
    provider: &dyn crate::provider::Provider,
    name: &NodeName,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut backend = Backend::connect(&ctx.state).await?;
    let before = super::boot_id(&backend.list_nodes().await?, name);
    step(&format!("{name}: rebooting"));
    provider.reboot(name).await?;
    super::wait_healthy_from_new_boot(&mut backend, name, before.as_deref(), timeout).await?;
    let is_etcd = c.model.nodes.iter().any(|n| n.name == *name && n.is_etcd);
    if is_etcd {
        let etcd = crate::etcd::operator_client(c)?;
        loop {
            let (running, _) = crate::etcd::running_members(c, provider).await?;
            let endpoints: Vec<String> = running.into_iter().map(|(_, e)| e).collect();
            let survey = crate::membership::survey(&etcd, &endpoints).await;
            if crate::membership::all_serving(&survey) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "etcd is not whole again {timeout:?} after rebooting {name}: {}",
                crate::membership::describe(&survey)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let took = started.elapsed();
    step(&format!(
        "{name}: healthy from a new boot after {:.1}s",
        took.as_secs_f64()
    ));
    Ok(took)
}

/// `pangaea-ctl reboot`: every node in turn, in the stop order (the etcd leader last), each
/// back and etcd whole before the next.
pub async fn reboot_all(ctx: &Ctx, timeout: Duration) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    let leader = crate::etcd::leader(&c, provider.as_ref()).await;
    let existing: Vec<NodeName> = provider.list().await?.into_iter().map(|n| n.name).collect();
    let order: Vec<NodeName> = crate::reconcile::stop_order(&c.model.nodes, leader.as_deref())
        .into_iter()
        .filter(|n| existing.contains(n))
        .collect();
    anyhow::ensure!(
        !order.is_empty(),
        "no node of cluster {} exists (`pangaea-ctl up` creates them)",
        c.loaded.config.name
    );
    let members = c.model.nodes.iter().filter(|n| n.is_etcd).count();
    if members < 3 {
        crate::errln!(
            "warning: with {members} etcd member(s), each reboot of one stops etcd's writes until it is back (3 members keep serving)"
        );
    }
    for name in &order {
        reboot(ctx, &c, provider.as_ref(), name, timeout).await?;
    }
    crate::outln!(
        "{} nodes rebooted one at a time, each back healthy before the next",
        order.len()
    );
    Ok(())
}
