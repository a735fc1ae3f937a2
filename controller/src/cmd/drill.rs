//! `pangaea-ctl drill node-loss [NODE] [-o json]` ([`crate::drill`]).

use super::{Ctx, step};
use crate::admin::Backend;
use crate::cli::Output;
use pangaea_core::NodeName;

/// How long a crashed node may take to be healthy again.
const BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs the node-loss drill on `node` (default: the etcd leader).
pub async fn node_loss(ctx: &Ctx, node: Option<NodeName>, output: Output) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    let (running, _) = crate::etcd::running_members(&c, provider.as_ref()).await?;
    let members = c.model.nodes.iter().filter(|n| n.is_etcd).count();
    anyhow::ensure!(
        members >= 3 && running.len() == members,
        "a node-loss drill needs at least 3 etcd members, all running ({} of {members} run): with fewer, losing one loses quorum, which is what `node remove` refuses too",
        running.len()
    );
    let leader = crate::etcd::leader(&c, provider.as_ref()).await;
    let target = match node {
        Some(n) => n,
        None => NodeName::try_from(leader.clone().ok_or_else(|| {
            anyhow::anyhow!("etcd has no leader now: the cluster is not healthy")
        })?)
        .map_err(anyhow::Error::msg)?,
    };
    anyhow::ensure!(
        c.model.nodes.iter().any(|n| n.name == target),
        "no node {target} in the cluster"
    );
    let survivors: Vec<String> = running
        .iter()
        .filter(|(n, _)| *n != target)
        .map(|(_, e)| e.clone())
        .collect();
    let etcd = crate::etcd::operator_client(&c)?;
    let mut backend = Backend::connect(&ctx.state).await?;
    let name = target.to_string();
    let before = super::boot_id(&backend.list_nodes().await?, &name);
    let report = crate::drill::node_loss(
        &etcd,
        crate::drill::Target {
            node: name.clone(),
            was_leader: leader.as_deref() == Some(name.as_str()),
            survivors,
        },
        async { Ok(provider.crash(&target).await?) },
        async {
            provider.start(&target).await?;
            super::wait_healthy_from_new_boot(&mut backend, &name, before.as_deref(), BACK_TIMEOUT)
                .await
        },
        &step,
    )
    .await?;
    super::print_data(output, &report, || {
        crate::outln!(
            "node-loss drill: crashed {}{}",
            report.node,
            if report.was_leader {
                " (the etcd leader)"
            } else {
                ""
            }
        );
        crate::outln!(
            "  etcd writes unavailable  {:.2} s (target ≤ {:.1} s: election timeout + 1 s){}",
            report.write_unavailable_ms as f64 / 1000.0,
            report.target_ms as f64 / 1000.0,
            if report.write_unavailable_ms <= report.target_ms {
                ""
            } else {
                "  MISSED"
            }
        );
        crate::outln!(
            "  writes                   {} acknowledged, {} failed attempts (retried on another member)",
            report.writes_ok,
            report.writes_failed
        );
        match report.back_healthy_ms {
            Some(ms) => crate::outln!(
                "  back healthy             {:.1} s after the crash",
                ms as f64 / 1000.0
            ),
            None => crate::outln!(
                "  back healthy             not within 180 s (see `pangaea-ctl status`)"
            ),
        }
        Ok(())
    })?;
    if report.back_healthy_ms.is_none() {
        let why = format!("{} did not come back healthy", report.node);
        return Err(crate::exit::Unhealthy(why).into());
    }
    Ok(())
}
