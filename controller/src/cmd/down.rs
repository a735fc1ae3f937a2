//! `pangaea-ctl down [--purge]`: power the nodes off and stop the controller daemon; with
//! `--purge`, delete the nodes, what they shared and the cluster's state.

use super::{Ctx, step};
use anyhow::Context;

/// Runs `down`.
pub async fn run(ctx: &Ctx, purge: bool) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    crate::reconcile::power_down(provider.as_ref(), purge, &step).await?;
    crate::daemon::stop(&ctx.state, &step).await;
    let name = &c.loaded.config.name;
    if purge {
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
