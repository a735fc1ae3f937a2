//! `pangaea-ctl down [--purge]`: power the nodes off and stop the controller daemon; with
//! `--purge`, delete the nodes, what they shared and the cluster's state.

use super::{Ctx, step};
use crate::provider::NodeState;
use anyhow::Context;

/// Runs `down`.
pub async fn run(ctx: &Ctx, purge: bool) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    for n in provider.list().await? {
        if purge {
            step(&format!("{}: deleting", n.name));
            provider.delete(&n.name).await?;
        } else if n.state == NodeState::Running {
            step(&format!("{}: stopping", n.name));
            provider.stop(&n.name).await?;
        }
    }
    crate::daemon::stop(&ctx.state, &step).await;
    let name = &c.loaded.config.name;
    if purge {
        provider.teardown().await?;
        let dir = ctx.state.path();
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        println!("cluster {name} deleted");
    } else {
        println!(
            "cluster {name} stopped (state kept in {}; `pangaea-ctl up` starts it again)",
            ctx.state.path().display()
        );
    }
    Ok(())
}
