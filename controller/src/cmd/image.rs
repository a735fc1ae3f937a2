//! `pangaea-ctl image load ARCHIVE [--node N ...]`: an image archive into the containerd of
//! every node, or the named ones.
//!
//! The archive is copied into the controller's mirror (hashed while copied: read once), the
//! running controller hands each node a job for it ([`crate::image`]), and each node's agent
//! fetches it over mutual TLS through the artifact pipeline (digest-checked) and imports it
//! with `ctr -n k8s.io images import`. The command prints each node's progress, then one
//! line per node, and fails when any node failed — naming the node and what containerd
//! said.

use super::{Ctx, human};
use crate::admin::Backend;
use crate::image::{MAX_ARCHIVE_BYTES, describe};
use crate::mirror::Mirror;
use crate::state_dir::StateDir;
use anyhow::{Context, bail};
use pangaea_proto as pb;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What `image load` was asked.
#[derive(Clone, Debug)]
pub struct Args {
    /// The archive (a tar in OCI or docker format).
    pub archive: PathBuf,
    /// The nodes to load it into; empty means every node.
    pub nodes: Vec<String>,
    /// How long to wait for every node's outcome.
    pub timeout: Duration,
}

/// One node's outcome (`-o json` shows these fields, `took` as `took_seconds`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeOutcome {
    /// The node.
    pub node: String,
    /// Whether containerd holds the image now.
    pub loaded: bool,
    /// The images containerd imported from the archive (when loaded).
    pub images: Vec<String>,
    /// Why not (when not loaded): containerd's words, or the controller's.
    pub error: String,
    /// From the start of the load to this node's outcome.
    #[serde(rename = "took_seconds", serialize_with = "seconds")]
    pub took: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What `image load` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// The archive's digest in the mirror.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Each node's outcome, by name.
    pub nodes: Vec<NodeOutcome>,
}

impl Outcome {
    /// The nodes that did not load the image.
    pub fn failed(&self) -> Vec<&NodeOutcome> {
        self.nodes.iter().filter(|n| !n.loaded).collect()
    }

    /// An error naming each node that failed and why; `Ok` when every node loaded it.
    pub fn check(&self) -> anyhow::Result<()> {
        let failed = self.failed();
        if failed.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = failed
            .iter()
            .map(|n| format!("  {}: {}", n.node, n.error))
            .collect();
        bail!(
            "image load failed on {} of {} nodes:\n{}",
            failed.len(),
            self.nodes.len(),
            lines.join("\n")
        )
    }
}

/// Runs `image load`: progress on standard error, one line per node on standard output;
/// an error when any node failed.
pub async fn run(ctx: &Ctx, args: Args, output: crate::cli::Output) -> anyhow::Result<()> {
    let outcome = load(&ctx.state, &args, &mut |line| crate::errln!("{line}")).await?;
    super::print_data(output, &outcome, || {
        let width = outcome
            .nodes
            .iter()
            .map(|n| n.node.len())
            .max()
            .unwrap_or(4)
            .max(4);
        crate::outln!(
            "{:width$}  {:6}  {:>6}  IMAGES / ERROR",
            "NODE",
            "RESULT",
            "TIME"
        );
        for n in &outcome.nodes {
            let (result, detail) = if n.loaded {
                ("loaded", n.images.join(", "))
            } else {
                ("FAILED", n.error.clone())
            };
            crate::outln!(
                "{:width$}  {result:6}  {:>5.1}s  {detail}",
                n.node,
                n.took.as_secs_f64()
            );
        }
        Ok(())
    })?;
    outcome.check()
}

/// Loads `args.archive` into the nodes through the running controller of `state`, telling
/// `progress` what happens as it happens. `Err` when the load could not start (no
/// controller, no such archive or node); a node's failure is in the [`Outcome`].
pub async fn load(
    state: &StateDir,
    args: &Args,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<Outcome> {
    let archive = &args.archive;
    let meta = std::fs::metadata(archive)
        .with_context(|| format!("image archive {}", archive.display()))?;
    if !meta.is_file() {
        bail!(
            "image archive {} is not a file: give the tar that `docker save -o`, `ctr images export` or `skopeo copy ... oci-archive:FILE` wrote",
            archive.display()
        );
    }
    if meta.len() > MAX_ARCHIVE_BYTES {
        bail!(
            "image archive {} is {}; at most {} can be loaded",
            archive.display(),
            human(meta.len()),
            human(MAX_ARCHIVE_BYTES)
        );
    }
    // First the controller: without it no node can receive the archive.
    let mut backend = Backend::connect(state).await?;
    if matches!(backend, Backend::Local(_)) {
        return Err(crate::admin::BackendError::NotRunning {
            need: "no node can receive the image",
            start: "up",
        }
        .into());
    }

    let t = Instant::now();
    let mirror = Mirror::new(&state.artifacts());
    let file = archive.clone();
    let entry = tokio::task::spawn_blocking(move || mirror.add_file(&file, MAX_ARCHIVE_BYTES))
        .await
        .context("copy task")?
        .with_context(|| {
            format!(
                "copy {} into the controller's mirror {}",
                archive.display(),
                state.artifacts().display()
            )
        })?;
    let name = archive.file_name().map_or_else(
        || archive.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    progress(format!(
        "==> {name} ({}, {}) is in the controller's mirror ({:.1}s)",
        human(entry.size),
        entry.digest,
        t.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    let mut stream = backend
        .load_image(pb::LoadImageRequest {
            digest: entry.digest.clone(),
            size: entry.size,
            nodes: args.nodes.clone(),
            timeout_seconds: args.timeout.as_secs(),
            name: name.clone(),
        })
        .await?;
    let mut last: BTreeMap<String, (pb::JobReport, Instant)> = BTreeMap::new();
    let mut done: BTreeMap<String, NodeOutcome> = BTreeMap::new();
    // The controller ends the stream at the timeout; this bounds a controller that dies.
    let guard = tokio::time::sleep(args.timeout + Duration::from_secs(30));
    tokio::pin!(guard);
    loop {
        let event = tokio::select! {
            m = stream.message() => m.context("the controller's answer")?,
            _ = &mut guard => bail!("the controller gave no outcome within {} s", args.timeout.as_secs()),
        };
        let Some(event) = event else { break };
        let Some(r) = event.report else { continue };
        let node = event.node;
        if crate::jobs::is_final(&r) {
            let loaded = r.state() == pb::JobState::Succeeded;
            let took = t.elapsed();
            progress(if loaded {
                format!(
                    "{node}: loaded {} ({:.1}s)",
                    r.images.join(", "),
                    took.as_secs_f64()
                )
            } else {
                format!("{node}: FAILED: {}", r.message)
            });
            done.insert(
                node.clone(),
                NodeOutcome {
                    node,
                    loaded,
                    images: r.images,
                    error: r.message,
                    took,
                },
            );
            continue;
        }
        // Progress: each new state, and a running download every few seconds.
        let show = match last.get(&node) {
            None => true,
            Some((prev, at)) => prev.state() != r.state() || at.elapsed() >= Duration::from_secs(3),
        };
        if show {
            let bytes = match (r.state(), r.bytes_done, r.bytes_total) {
                (pb::JobState::Downloading, _, 0) => String::new(),
                (pb::JobState::Downloading, 0, total) => format!(" {}", human(total)),
                (pb::JobState::Downloading, done, total) => {
                    format!(" {} of {}", human(done), human(total))
                }
                _ => String::new(),
            };
            progress(format!("{node}: {}{bytes}", describe(&r)));
            last.insert(node, (r, Instant::now()));
        }
    }
    // A node the stream left without an outcome (the controller went away).
    for node in last.keys() {
        done.entry(node.clone()).or_insert_with(|| NodeOutcome {
            node: node.clone(),
            loaded: false,
            images: vec![],
            error: "the controller ended before this node's outcome".into(),
            took: t.elapsed(),
        });
    }
    Ok(Outcome {
        digest: entry.digest,
        size: entry.size,
        nodes: done.into_values().collect(),
    })
}
