//! `pangaea-ctl ssh NODE [-- CMD...]`: a shell on a node, or a command run there, through
//! the node's provider ([`crate::provider::Provider::shell`]): inside a local node's
//! namespaces as a unit of its systemd, `gcloud compute ssh` to an instance. This process
//! becomes that command, so its exit status is the command's.

use super::Ctx;
use pangaea_core::NodeName;

/// Runs `ssh`.
pub async fn run(ctx: &Ctx, node: NodeName, argv: Vec<String>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use std::os::unix::process::CommandExt;
    let c = ctx.compilation()?;
    anyhow::ensure!(
        c.model.node(node.as_str()).is_some(),
        "node {node} is not in the cluster configuration ({})",
        c.loaded.file
    );
    let provider = ctx.provider(&c)?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let cmd = provider.shell(&node, &argv, tty).await?;
    crate::progress::settle();
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    anyhow::bail!("run {}: {err}", cmd[0])
}
