//! `pangaea-ctl node remove|reboot`.

use super::{Ctx, step};
use crate::admin::Backend;
use crate::cli::NodeCommand;
use pangaea_core::NodeName;

/// Runs a `node` subcommand.
pub async fn run(ctx: &Ctx, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Remove { name } => {
            Backend::connect(&ctx.state)
                .await?
                .remove_node(name.to_string())
                .await?;
            println!("node {name} removed; its certificates are revoked");
        }
        NodeCommand::Reboot { name } => reboot(ctx, &name).await?,
    }
    Ok(())
}

async fn reboot(ctx: &Ctx, name: &NodeName) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    step(&format!("{name}: rebooting"));
    provider.reboot(name).await?;
    println!("{name} rebooted; it re-applies its last assignment and reconnects by itself");
    Ok(())
}
