//! `pangaea-ctl plan`: what `up` would change, without changing anything: the nodes it
//! would create, the nodes the controller knows that the configuration no longer names,
//! and for every other node the files whose rendered content differs from the assignment
//! the node has now, as unified diffs (secret files named, never shown), plus changed
//! artifacts and units.
//!
//! The planned side is computed as the controller computes it ([`crate::compile::to_plan`],
//! [`crate::mirror::localize`], [`crate::drain::hold_back`]); the current side is read from
//! a consistent copy of the state store, which works whether or not the controller runs.

use super::{Ctx, print_data};
use crate::admin::Backend;
use crate::assign::Plan;
use crate::cli::Output;
use anyhow::Context;
use pangaea_proto as pb;
use serde::Serialize;
use std::collections::BTreeMap;

/// What `up` would do.
#[derive(Debug, Default, Serialize)]
pub struct Changes {
    /// Whether the cluster exists yet (its PKI); without it `up` creates everything.
    pub cluster_exists: bool,
    /// Nodes `up` would create.
    pub create: Vec<String>,
    /// Nodes the controller knows that the configuration no longer names (`up` leaves them;
    /// `node remove` removes them).
    pub not_configured: Vec<String>,
    /// Nodes whose assignment would change.
    pub nodes: Vec<NodeChanges>,
}

/// How one node's assignment would change.
#[derive(Debug, Serialize)]
pub struct NodeChanges {
    /// The node.
    pub name: String,
    /// Files added, removed or changed.
    pub files: Vec<FileChange>,
    /// Whether the artifacts it downloads would change.
    pub artifacts_changed: bool,
    /// Whether its units (or how they restart) would change.
    pub units_changed: bool,
}

/// One file's change.
#[derive(Debug, Serialize)]
pub struct FileChange {
    /// Its path on the node.
    pub path: String,
    /// `added`, `removed`, `changed` or `mode` (only its mode).
    pub change: &'static str,
    /// The unified diff, for text that holds no secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// Runs `plan`.
pub async fn run(ctx: &Ctx, output: Output) -> anyhow::Result<()> {
    let changes = changes(ctx).await?;
    print_data(output, &changes, || {
        print_table(&changes);
        Ok(())
    })
}

fn print_table(c: &Changes) {
    if !c.cluster_exists {
        crate::outln!("no cluster here yet: `up` would create its PKI and these nodes:");
        for n in &c.create {
            crate::outln!("  + {n}");
        }
        return;
    }
    for n in &c.create {
        crate::outln!("+ node {n} (created by `up`)");
    }
    for n in &c.not_configured {
        crate::outln!(
            "? node {n}: not in the configuration (`up` leaves it; `pangaea-ctl node remove {n}` removes it)"
        );
    }
    for n in &c.nodes {
        crate::outln!("~ node {}", n.name);
        for f in &n.files {
            match &f.diff {
                Some(d) => crate::out!("{d}"),
                None => crate::outln!("  {} {}", f.change, f.path),
            }
        }
        if n.artifacts_changed {
            crate::outln!("  changed artifacts (downloads)");
        }
        if n.units_changed {
            crate::outln!("  changed units");
        }
    }
    if c.create.is_empty() && c.nodes.is_empty() {
        crate::outln!("no changes: `up` would leave every node's assignment as it is");
    }
}

/// Compares what the configuration asks for with what the nodes have.
async fn changes(ctx: &Ctx) -> anyhow::Result<Changes> {
    let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
    let model = pangaea_compiler::model::ClusterModel::build(&loaded);
    let wanted: Vec<String> = model.nodes.iter().map(|n| n.name.to_string()).collect();
    if !ctx.state.pki().exists() {
        return Ok(Changes {
            cluster_exists: false,
            create: wanted,
            ..Changes::default()
        });
    }
    let mut backend = Backend::connect(&ctx.state).await?;
    let known: Vec<pb::NodeInfo> = backend
        .list_nodes()
        .await?
        .into_iter()
        .filter(|n| !n.removed)
        .collect();
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let copy = tmp.path().join("store.redb");
    backend.copy_store(&copy).await?;
    drop(backend);
    let current = read_assignments(&copy, &known)?;

    let c = ctx.compilation()?;
    let mirror_dir = ctx.state.artifacts();
    let mut out = Changes {
        cluster_exists: true,
        ..Changes::default()
    };
    for name in &wanted {
        let Some(info) = known.iter().find(|n| &n.name == name) else {
            out.create.push(name.clone());
            continue;
        };
        let mut planned = crate::compile::to_plan(c.compile_node(name)?);
        crate::mirror::localize(&mirror_dir, &mut planned);
        if info.drained {
            crate::drain::hold_back(&mut planned);
        }
        let now = current.get(name).cloned().unwrap_or_default();
        let n = compare(name, &now, &planned);
        if !n.files.is_empty() || n.artifacts_changed || n.units_changed {
            out.nodes.push(n);
        }
    }
    out.not_configured = known
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| !wanted.contains(n))
        .collect();
    Ok(out)
}

/// Each known node's stored assignment, from the store copy at `path`.
fn read_assignments(
    path: &std::path::Path,
    nodes: &[pb::NodeInfo],
) -> anyhow::Result<BTreeMap<String, pb::Assignment>> {
    use redb::ReadableDatabase;
    let db = redb::Database::open(path).context("open the store copy")?;
    let txn = db.begin_read().context("read the store copy")?;
    let table = txn
        .open_table(crate::store::ASSIGNMENTS)
        .context("the store copy's assignments")?;
    let mut out = BTreeMap::new();
    for n in nodes {
        if let Some(a) = crate::assign::load(&table, &n.name)? {
            out.insert(n.name.clone(), a);
        }
    }
    Ok(out)
}

/// Whether `content` must not be shown: private keys, tokens, kubeconfigs with keys.
fn secret(path: &str, content: &[u8]) -> bool {
    let text = String::from_utf8_lossy(content);
    path.ends_with(".key")
        || text.contains("PRIVATE KEY")
        || text.contains("client-key-data")
        || text.contains("token:")
}

fn compare(node: &str, now: &pb::Assignment, planned: &Plan) -> NodeChanges {
    let before: BTreeMap<&str, &pb::File> =
        now.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let after: BTreeMap<&str, &pb::File> =
        planned.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut files = Vec::new();
    for (path, new) in &after {
        let old = before.get(path);
        let change = match old {
            None => "added",
            Some(o) if o.content != new.content => "changed",
            Some(o) if o.mode != new.mode || o.owner != new.owner => "mode",
            Some(_) => continue,
        };
        let old_content = old.map(|o| o.content.as_slice()).unwrap_or_default();
        let diff = (change != "mode" && !secret(path, &new.content) && !secret(path, old_content))
            .then(|| unified(node, path, old_content, &new.content))
            .flatten();
        files.push(FileChange {
            path: path.to_string(),
            change,
            diff,
        });
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        files.push(FileChange {
            path: path.to_string(),
            change: "removed",
            diff: None,
        });
    }
    NodeChanges {
        name: node.to_owned(),
        files,
        artifacts_changed: now.artifacts != planned.artifacts,
        units_changed: now.units != planned.units,
    }
}

/// The unified diff of two texts (`None` for binary content).
fn unified(node: &str, path: &str, old: &[u8], new: &[u8]) -> Option<String> {
    let (old, new) = (
        std::str::from_utf8(old).ok()?,
        std::str::from_utf8(new).ok()?,
    );
    let diff = similar::TextDiff::from_lines(old, new);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(
                &format!("{node}:{path} (now)"),
                &format!("{node}:{path} (up)"),
            )
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &str) -> pb::File {
        pb::File {
            path: path.into(),
            mode: 0o644,
            owner: String::new(),
            content: content.as_bytes().to_vec(),
        }
    }

    #[test]
    fn changed_text_is_diffed_and_secrets_are_only_named() {
        let now = pb::Assignment {
            files: vec![
                file("/etc/a.conf", "x = 1\ny = 2\n"),
                file("/etc/k.key", "-----BEGIN PRIVATE KEY-----\nold\n"),
                file("/etc/gone", "g"),
            ],
            ..Default::default()
        };
        let planned = Plan {
            files: vec![
                file("/etc/a.conf", "x = 1\ny = 3\n"),
                file("/etc/k.key", "-----BEGIN PRIVATE KEY-----\nnew\n"),
                file("/etc/new", "n\n"),
            ],
            artifacts: vec![],
            units: vec![],
        };
        let c = compare("node-1", &now, &planned);
        let by: BTreeMap<&str, &FileChange> =
            c.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let a = by["/etc/a.conf"];
        assert_eq!(a.change, "changed");
        let d = a.diff.as_deref().unwrap();
        assert!(
            d.contains("-y = 2\n+y = 3\n") && d.contains("node-1:/etc/a.conf (up)"),
            "{d}"
        );
        assert_eq!(by["/etc/k.key"].change, "changed");
        assert!(by["/etc/k.key"].diff.is_none(), "a key is never shown");
        assert_eq!(by["/etc/gone"].change, "removed");
        assert_eq!(by["/etc/new"].change, "added");
        assert!(!c.artifacts_changed && !c.units_changed);
        let same = compare(
            "node-1",
            &now,
            &Plan {
                files: now.files.clone(),
                artifacts: vec![],
                units: vec![],
            },
        );
        assert!(same.files.is_empty());
    }
}
