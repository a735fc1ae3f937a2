//! `pangaea-ctl stop` (= `down`): power the nodes off in a safe order
//! ([`crate::reconcile::stop_order`]) and stop the controller daemon, keeping disks and
//! state; `down --purge` deletes the nodes, what they shared and the cluster's state.

use super::{Ctx, step};
use anyhow::Context;

/// Runs `down` (and `stop`, which is `down` without `--purge`).
pub async fn run(ctx: &Ctx, purge: bool) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    if purge {
        // Machines and the bridge are found by the cluster's name: never purge one that
        // another cluster of this host shares.
        let record = crate::registry::Record::of(&c.loaded, &ctx.config, &ctx.state);
        let registry = crate::registry::Registry::open(&crate::registry::dir())?;
        if let Some(other) = registry.namesake(&record) {
            return Err(crate::exit::Refusal(format!(
                "another cluster named {:?} lives in {} on this host, and its machines and \
                 bridge carry the names this one's do: `down --purge` here would take them \
                 too; nothing was changed (purge it from there, or `down` without --purge)",
                record.name,
                other.dir().display()
            ))
            .into());
        }
    }
    let provider = ctx.provider(&c)?;
    let order = if purge {
        vec![]
    } else {
        let leader = crate::etcd::leader(&c, provider.as_ref()).await;
        crate::reconcile::stop_order(&c.model.nodes, leader.as_deref())
    };
    crate::reconcile::power_down(provider.as_ref(), purge, &order, &step).await?;
    crate::daemon::stop(&ctx.state, &step).await;
    let name = &c.loaded.config.name;
    if purge {
        let dir = ctx.state.path();
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        super::kubeconfig::remove_after_purge(name);
        let forgotten =
            crate::registry::Registry::open(&crate::registry::dir()).and_then(|r| r.remove(dir));
        if let Err(e) = forgotten {
            crate::errln!("warning: {e}: `pangaea-ctl clusters` shows {name} as gone");
        }
        crate::outln!("cluster {name} deleted");
    } else {
        crate::outln!(
            "cluster {name} stopped (disks and state kept in {}; `pangaea-ctl start` boots it again)",
            ctx.state.path().display()
        );
    }
    Ok(())
}
