//! `pangaea-ctl clusters`: the clusters of this host, from its registry
//! ([`crate::registry`]), each as its configuration says now and with its state.

use super::print_data;
use crate::cli::Output;
use crate::registry::Record;
use crate::state_dir::StateDir;
use serde::Serialize;

/// One row of `clusters`.
#[derive(Debug, Serialize)]
pub struct ClusterRow {
    /// The cluster's name.
    pub name: String,
    /// Its provider.
    pub provider: String,
    /// How many nodes its configuration asks for.
    pub nodes: usize,
    /// Its node network.
    pub network: String,
    /// `running` (its controller answers), `stopped`, or `gone` (its state directory was
    /// deleted without `down --purge`).
    pub state: &'static str,
    /// Where its `pangaea.yaml` is.
    pub directory: String,
}

/// Runs `clusters`.
pub async fn run(output: Output) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for recorded in crate::registry::list(&crate::registry::dir()) {
        rows.push(row(recorded).await);
    }
    print_data(output, &rows, || {
        if rows.is_empty() {
            crate::outln!("no clusters on this host (`pangaea-ctl up` creates one)");
            return Ok(());
        }
        crate::outln!(
            "{:<16} {:<9} {:<6} {:<16} {:<8} DIRECTORY",
            "NAME",
            "PROVIDER",
            "NODES",
            "NETWORK",
            "STATE"
        );
        for r in &rows {
            crate::outln!(
                "{:<16} {:<9} {:<6} {:<16} {:<8} {}",
                r.name,
                r.provider,
                r.nodes,
                r.network,
                r.state,
                r.directory
            );
        }
        Ok(())
    })
}

/// The row of a recorded cluster: its configuration read again where it still loads (a
/// `node add` since changes its node count), its state from its directory.
async fn row(recorded: Record) -> ClusterRow {
    let state_dir = StateDir::new(&recorded.state_dir);
    let now = pangaea_compiler::config::Loaded::load(&recorded.config)
        .map(|l| Record::of(&l, &recorded.config, &state_dir))
        .unwrap_or_else(|_| recorded.clone());
    let state = if !recorded.exists() {
        "gone"
    } else if crate::daemon::is_up(&state_dir).await {
        "running"
    } else {
        "stopped"
    };
    ClusterRow {
        name: now.name,
        provider: now.provider,
        nodes: now.nodes,
        network: now.network,
        state,
        directory: recorded.dir().display().to_string(),
    }
}
