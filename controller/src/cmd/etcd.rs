//! `pangaea-ctl etcd snapshot save FILE`.

use super::{Ctx, step};
use std::path::Path;

/// Saves a snapshot of etcd's data to `file`, asked of the leader when one is known, else
/// of the first running member that answers.
pub async fn snapshot_save(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    let (running, _) = crate::etcd::running_members(&c, provider.as_ref()).await?;
    anyhow::ensure!(
        !running.is_empty(),
        "no etcd member of cluster {} runs: `pangaea-ctl start` first",
        c.loaded.config.name
    );
    let leader = crate::etcd::leader(&c, provider.as_ref()).await;
    let mut ordered = running.clone();
    ordered.sort_by_key(|(n, _)| Some(n.as_str()) != leader.as_deref());
    let etcd = crate::etcd::operator_client(&c)?;
    let mut errors = Vec::new();
    for (node, endpoint) in ordered {
        step(&format!("snapshot of etcd from {node} ({endpoint})"));
        match etcd.snapshot(&endpoint, file).await {
            Ok(s) => {
                println!(
                    "etcd snapshot saved to {}: {} bytes, revision {}, from {node}; its SHA-256 trailer checked",
                    file.display(),
                    s.bytes,
                    s.revision
                );
                return Ok(());
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    anyhow::bail!("no member gave a snapshot: {}", errors.join("; "))
}
