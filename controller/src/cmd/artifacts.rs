//! `pangaea-ctl artifacts list|import|fetch`: the verified mirror nodes download from.

use super::{Ctx, human};
use crate::cli::ArtifactsCommand;
use crate::mirror::Mirror;
use anyhow::Context;
use pangaea_compiler::artifact_set::{ArtifactOverride, ArtifactSet, ArtifactSource};
use std::path::Path;

/// Runs an `artifacts` subcommand.
pub async fn run(ctx: &Ctx, cmd: ArtifactsCommand) -> anyhow::Result<()> {
    // The mirror is content-addressed and written atomically, so it needs no lock and works
    // the same whether or not a controller is running.
    let mirror = Mirror::new(&ctx.state.artifacts());
    match cmd {
        ArtifactsCommand::List => {
            let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
            if loaded.config.artifact_source == ArtifactSource::OsPackages {
                ctx.state.ensure()?;
                let (_, import) = crate::os_packages::resolve(&loaded, &ctx.state)?;
                crate::outln!(
                    "artifactSource: os-packages (installed packages, imported into the mirror)"
                );
                for line in import.iter().flat_map(|i| i.report()) {
                    crate::outln!("{line}");
                }
                return Ok(());
            }
            let set = ArtifactSet::defaults();
            crate::outln!("pinned set v{} ({})", set.set_version, set.arch);
            crate::outln!(
                "{:<18} {:<9} {:<8} {:>10}  DIGEST",
                "NAME",
                "VERSION",
                "MIRROR",
                "SIZE"
            );
            for a in &set.artifacts {
                let entry = mirror.entry(&a.digest());
                let size = entry.as_ref().map_or("-".to_owned(), |e| human(e.size));
                crate::outln!(
                    "{:<18} {:<9} {:<8} {:>10}  {}",
                    a.name,
                    a.version,
                    if entry.is_some() { "cached" } else { "missing" },
                    size,
                    a.digest
                );
            }
            let pinned: Vec<String> = set.artifacts.iter().map(|a| a.digest.clone()).collect();
            let others: Vec<_> = mirror
                .list()
                .into_iter()
                .filter(|e| !pinned.contains(&e.digest))
                .collect();
            if !others.is_empty() {
                crate::outln!("\nalso in the mirror:");
                for e in others {
                    crate::outln!("  {:>10}  {}  from {}", human(e.size), e.digest, e.source);
                }
            }
        }
        ArtifactsCommand::Import { file } => {
            for e in mirror.import(&file).await? {
                crate::outln!("{}  {}", e.digest, human(e.size));
            }
        }
        ArtifactsCommand::Fetch { names, overrides } => {
            let set = artifact_set(overrides.as_deref())?;
            for n in &names {
                if set.get(n).is_none() {
                    anyhow::bail!(
                        "no artifact named {n:?} in the set (see `pangaea-ctl artifacts list`)"
                    );
                }
            }
            for a in set
                .artifacts
                .iter()
                .filter(|a| names.is_empty() || names.contains(&a.name))
            {
                crate::errln!("{}: {}", a.name, a.url);
                let e = mirror.ensure(&a.url, &a.digest()).await?;
                crate::outln!("{:<18} {:>10}  {}", a.name, human(e.size), e.digest);
            }
        }
    }
    Ok(())
}

fn artifact_set(overrides: Option<&Path>) -> anyhow::Result<ArtifactSet> {
    let set = ArtifactSet::defaults();
    let Some(path) = overrides else {
        return Ok(set);
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let list: Vec<ArtifactOverride> = serde_norway::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        anyhow::anyhow!("{}{at}: {e}", path.display())
    })?;
    Ok(set.with_overrides(&path.display().to_string(), &list)?)
}
