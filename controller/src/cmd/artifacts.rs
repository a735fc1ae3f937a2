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
        ArtifactsCommand::List { output } => list(ctx, &mirror, output)?,
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

/// `artifacts list`: the set nodes install (the configuration's overrides applied; with
/// `artifactSource: os-packages`, the packages' binaries) and what the mirror holds.
fn list(ctx: &Ctx, mirror: &Mirror, output: crate::cli::Output) -> anyhow::Result<()> {
    let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
    let (set, import) = match loaded.config.artifact_source {
        ArtifactSource::Pinned => (loaded.artifact_set(), None),
        ArtifactSource::OsPackages => {
            ctx.state.ensure()?;
            crate::os_packages::resolve(&loaded, &ctx.state)?
        }
    };
    let artifacts: Vec<ArtifactRow> = set
        .artifacts
        .iter()
        .map(|a| {
            let entry = mirror.entry(&a.digest());
            ArtifactRow {
                name: a.name.clone(),
                version: a.version.clone(),
                url: a.url.clone(),
                digest: a.digest.clone(),
                disabled: a.disabled,
                mirrored: entry.is_some(),
                size: entry.map(|e| e.size),
            }
        })
        .collect();
    let listed: Vec<&str> = set.artifacts.iter().map(|a| a.digest.as_str()).collect();
    let others: Vec<crate::mirror::MirrorEntry> = mirror
        .list()
        .into_iter()
        .filter(|e| !listed.contains(&e.digest.as_str()))
        .collect();
    let data = ArtifactList {
        source: loaded.config.artifact_source,
        set_version: set.set_version,
        arch: set.arch.clone(),
        artifacts,
        also_in_mirror: others,
    };
    super::print_data(output, &data, || {
        match &import {
            Some(i) => {
                crate::outln!(
                    "artifactSource: os-packages (installed packages, imported into the mirror)"
                );
                for line in i.report() {
                    crate::outln!("{line}");
                }
            }
            None => crate::outln!("pinned set v{} ({})", data.set_version, data.arch),
        }
        crate::outln!(
            "{:<24} {:<22} {:<8} {:>10}  DIGEST",
            "NAME",
            "VERSION",
            "MIRROR",
            "SIZE"
        );
        for a in &data.artifacts {
            let state = match (a.disabled, a.mirrored) {
                (true, _) => "disabled",
                (false, true) => "cached",
                (false, false) => "missing",
            };
            let size = a.size.map_or("-".to_owned(), human);
            crate::outln!(
                "{:<24} {:<22} {:<8} {:>10}  {}",
                a.name,
                a.version,
                state,
                size,
                a.digest
            );
        }
        if !data.also_in_mirror.is_empty() {
            crate::outln!("\nalso in the mirror:");
            for e in &data.also_in_mirror {
                crate::outln!("  {:>10}  {}  from {}", human(e.size), e.digest, e.source);
            }
        }
        Ok(())
    })
}

/// `artifacts list -o json|yaml`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactList {
    source: ArtifactSource,
    set_version: u32,
    arch: String,
    artifacts: Vec<ArtifactRow>,
    also_in_mirror: Vec<crate::mirror::MirrorEntry>,
}

/// One artifact of the set.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactRow {
    name: String,
    version: String,
    url: String,
    digest: String,
    disabled: bool,
    /// Whether the mirror holds it.
    mirrored: bool,
    /// Its size, when mirrored.
    size: Option<u64>,
}
