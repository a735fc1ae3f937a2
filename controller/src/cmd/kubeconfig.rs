//! `pangaea-ctl kubeconfig`: print the admin kubeconfig, or merge it into the operator's
//! kubectl configuration ([`crate::kubeconfig`]); `up` merges it, `down --purge` removes it.

use super::Ctx;
use crate::kubeconfig::{default_file, entry_name, merge_into};
use anyhow::Context;
use std::path::PathBuf;

/// The cluster's name, from its configuration.
fn cluster_name(ctx: &Ctx) -> anyhow::Result<String> {
    Ok(pangaea_compiler::config::Loaded::load(&ctx.config)?
        .config
        .name)
}

/// The admin kubeconfig `up` wrote.
fn admin(ctx: &Ctx) -> anyhow::Result<String> {
    let path = ctx.state.admin_kubeconfig();
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {}: no admin kubeconfig yet (`pangaea-ctl up` writes it)",
            path.display()
        )
    })
}

/// The admin kubeconfig reaching the API at its external address ([`crate::api_address`])
/// instead of this machine's load balancer: for kubectl on other machines.
fn external(ctx: &Ctx) -> anyhow::Result<String> {
    admin(ctx)?;
    let c = ctx.compilation()?;
    let ip = c.model.api_external.ok_or_else(|| {
        anyhow::anyhow!(
            "cluster {} has no external API address: only a GCE cluster with provider.staticApiAddress (the default) has one, recorded by `pangaea-ctl up`",
            c.loaded.config.name
        )
    })?;
    Ok(c.operator_kubeconfig(&format!(
        "https://{ip}:{}",
        pangaea_compiler::node::API_PORT
    ))?)
}

/// Runs `kubeconfig`: prints it (reaching the API at its external address when
/// `external`), or merges it into `file` (default: kubectl's first file), making it current
/// when `switch`.
pub fn run(
    ctx: &Ctx,
    merge: bool,
    switch: bool,
    external: bool,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let admin = if external {
        self::external(ctx)?
    } else {
        admin(ctx)?
    };
    if !merge {
        return super::print_out(&admin);
    }
    let name = cluster_name(ctx)?;
    let file = file.unwrap_or_else(default_file);
    let merged = merge_into(&file, &admin, &name, switch)?;
    crate::outln!("{}", describe(&merged, &name));
    Ok(())
}

/// After `up`: the cluster's context in kubectl's file, made current (as kind and k3d do).
pub fn merge_after_up(ctx: &Ctx) -> anyhow::Result<()> {
    run(ctx, true, true, false, None)
}

/// After `down --purge`: the cluster's entries gone from kubectl's file. The cluster is
/// already deleted then, so a file that cannot be changed is a warning, not a failure.
pub fn remove_after_purge(cluster: &str) {
    let file = default_file();
    match crate::kubeconfig::remove_from(&file, cluster) {
        Ok(true) => crate::outln!(
            "kubectl: context {} removed from {}",
            entry_name(cluster),
            file.display()
        ),
        Ok(false) => {}
        Err(e) => crate::errln!(
            "warning: kubectl's context {} is still in {}: {e}",
            entry_name(cluster),
            file.display()
        ),
    }
}

fn describe(merged: &crate::kubeconfig::Merged, cluster: &str) -> String {
    let context = entry_name(cluster);
    let path = merged.path.display();
    if merged.current {
        format!("kubectl: context {context} in {path}, now current (`kubectl get nodes`)")
    } else {
        format!("kubectl: context {context} in {path} (`kubectl config use-context {context}`)")
    }
}
