//! `pangaea-ctl logs NODE [UNIT] [--follow] [--since]`: a node's journal, and
//! `pangaea-ctl logs --bundle FILE`: everything a bug report needs in one archive (`up`
//! writes one by itself when it fails).
//!
//! The journal is read on the node by `journalctl` ([`pb::JournalRead::args`]), run by the
//! node's agent and streamed over its mutual-TLS channel through the running controller
//! ([`crate::journal`]). A node whose agent cannot do it (the controller is not running, or
//! the agent is not connected: it may be the very thing that is broken) is read through the
//! provider's shell instead ([`crate::provider::Provider::shell`]: a unit of a local node's
//! systemd, `vagrant ssh`, `gcloud compute ssh`), and `logs` says so on stderr.

use super::Ctx;
use crate::admin::Backend;
use anyhow::Context;
use pangaea_core::NodeName;
use pangaea_proto as pb;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The units a bundle takes each node's journal of.
const BUNDLE_UNITS: [&str; 9] = [
    "pangaea-agent",
    "cloud-init",
    "etcd",
    "containerd",
    "kubelet",
    "kube-proxy",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// How many entries `logs` shows without `--since` or `--follow`.
const LINES: u32 = 200;

/// How a node's journal was read.
#[derive(Debug, PartialEq, Eq)]
pub enum Via {
    /// By the node's agent, over its mutual-TLS channel.
    Agent,
    /// Through the provider's shell, because the agent could not (why).
    Shell(String),
}

/// Runs `logs NODE [UNIT]`: the journal printed as it comes.
pub async fn node(
    ctx: &Ctx,
    node: NodeName,
    unit: Option<String>,
    follow: bool,
    since: Option<String>,
) -> anyhow::Result<()> {
    let read = pb::JournalRead {
        units: unit.into_iter().collect(),
        since: since.unwrap_or_default(),
        lines: LINES,
        follow,
    };
    read_journal(ctx, &node, read, &mut |bytes| super::write_out_bytes(bytes)).await?;
    Ok(())
}

/// Reads `read` of `node`'s journal, handing its output to `out` as it comes: through the
/// node's agent when the controller runs and the agent is connected, else through the
/// provider's shell (saying why on stderr).
pub async fn read_journal(
    ctx: &Ctx,
    node: &NodeName,
    read: pb::JournalRead,
    out: &mut (dyn FnMut(&[u8]) + Send),
) -> anyhow::Result<Via> {
    let c = ctx.compilation()?;
    anyhow::ensure!(
        c.model.node(node.as_str()).is_some(),
        "node {node} is not in the cluster configuration ({})",
        c.loaded.file
    );
    let request = pb::ReadJournalRequest {
        node: node.to_string(),
        read: Some(read.clone()),
    };
    let why = match Backend::connect(&ctx.state)
        .await?
        .read_journal(request)
        .await?
    {
        Ok(mut stream) => {
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("reading {node}'s journal: {}", s.message()))?
            {
                out(&chunk.data);
            }
            return Ok(Via::Agent);
        }
        Err(why) => why,
    };
    crate::errln!("{why}: reading {node}'s journal through the provider's shell instead");
    let provider = ctx.provider(&c)?;
    let mut argv = vec![pb::journal::JOURNALCTL.to_owned()];
    argv.extend(read.args());
    let cmd = provider.shell(node, &argv, false).await?;
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("run {}", cmd[0]))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        use tokio::io::AsyncReadExt;
        let n = stdout.read(&mut buf).await.context("read the journal")?;
        if n == 0 {
            break;
        }
        out(&buf[..n]);
    }
    let status = child.wait().await.context("wait for the journal read")?;
    anyhow::ensure!(status.success(), "{node}: journalctl: {status}");
    Ok(Via::Shell(why))
}

/// Writes the bug-report bundle to `file`: `status.json`, each node's journal of the
/// Pangaea units, the controller's log, `pangaea.yaml`, the tail of the host's log, and
/// `README.txt` saying what is in it. Token secrets are redacted everywhere; no key is
/// read. What cannot be had is recorded in `errors.txt`, never a failure.
pub async fn bundle(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    super::step("status");
    match super::status::rows(ctx).await {
        Ok((rows, _)) => files.push(("status.json".into(), serde_json::to_vec_pretty(&rows)?)),
        Err(e) => errors.push(format!("status: {e:#}")),
    }
    match std::fs::read(&ctx.config) {
        Ok(c) => files.push(("pangaea.yaml".into(), c)),
        Err(e) => errors.push(format!("{}: {e}", ctx.config.display())),
    }
    for (name, path) in [
        ("serve.log", ctx.state.serve_log()),
        ("pangaea-ctl.log", crate::host_state::log_file()),
    ] {
        match std::fs::read(&path) {
            Ok(c) => files.push((name.into(), tail(&c, 4 << 20).to_vec())),
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    match journals(ctx).await {
        Ok((j, e)) => {
            files.extend(j);
            errors.extend(e);
        }
        Err(e) => errors.push(format!("node journals: {e:#}")),
    }
    if !errors.is_empty() {
        files.push(("errors.txt".into(), (errors.join("\n") + "\n").into_bytes()));
    }
    files.push(("README.txt".into(), readme(&files).into_bytes()));
    for (_, content) in &mut files {
        let text = String::from_utf8_lossy(content);
        let redacted = pangaea_core::token::redact_tokens(&text);
        if redacted != text {
            *content = redacted.into_bytes();
        }
    }
    write_archive(file, &files)?;
    crate::outln!(
        "bundle: {} ({} files; token secrets redacted, no keys)",
        file.display(),
        files.len()
    );
    Ok(())
}

/// Each running node's journal of [`BUNDLE_UNITS`] ([`read_journal`]: through its agent, or
/// its provider's shell).
async fn journals(ctx: &Ctx) -> anyhow::Result<(Vec<(String, Vec<u8>)>, Vec<String>)> {
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    let running: Vec<NodeName> = provider
        .list()
        .await?
        .into_iter()
        .filter(|n| n.state == crate::provider::NodeState::Running)
        .map(|n| n.name)
        .collect();
    let (mut files, mut errors) = (Vec::new(), Vec::new());
    for node in running {
        super::step(&format!("journal of {node}"));
        let read = pb::JournalRead {
            units: BUNDLE_UNITS.iter().map(|u| u.to_string()).collect(),
            lines: 5000,
            ..Default::default()
        };
        let mut journal = Vec::new();
        if let Err(e) = read_journal(ctx, &node, read, &mut |b| journal.extend_from_slice(b)).await
        {
            errors.push(format!("{node}: {e:#}"));
        }
        files.push((format!("nodes/{node}/journal.txt"), journal));
    }
    Ok((files, errors))
}

/// The last `max` bytes of `content`.
fn tail(content: &[u8], max: usize) -> &[u8] {
    &content[content.len().saturating_sub(max)..]
}

fn readme(files: &[(String, Vec<u8>)]) -> String {
    let mut s = format!(
        "A pangaea-ctl {} bug-report bundle, written {}.\n\
         Token secrets are redacted; no private key is in it.\n\n",
        env!("CARGO_PKG_VERSION"),
        crate::certinfo::rfc3339(crate::records::now())
    );
    for (name, content) in files {
        s.push_str(&format!("{name:<40} {} bytes\n", content.len()));
    }
    s
}

/// Writes `files` as a gzip'd tar under one directory, replacing `file` once complete.
fn write_archive(file: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let top = file
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".tar.gz").to_owned())
        .unwrap_or_else(|| "pangaea-bundle".into());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut tar = tar::Builder::new(&mut gz);
        for (name, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(crate::records::now().max(0) as u64);
            header.set_cksum();
            tar.append_data(&mut header, format!("{top}/{name}"), content.as_slice())
                .with_context(|| format!("add {name}"))?;
        }
        tar.finish().context("finish the archive")?;
    }
    let bytes = gz.finish().context("compress the archive")?;
    pangaea_core::fsutil::atomic_write(file, &bytes, 0o600)
        .with_context(|| format!("write {}", file.display()))
}

/// Where `up` writes the bundle when it fails: `.pangaea/bundles/up-failed-<time>.tar.gz`.
pub fn failed_up_bundle(ctx: &Ctx) -> PathBuf {
    ctx.state.path().join("bundles").join(format!(
        "up-failed-{}.tar.gz",
        crate::certinfo::rfc3339(crate::records::now()).replace(':', "")
    ))
}

/// Best effort, after `up` failed: a bundle, and a line saying where it is.
pub async fn after_failed_up(ctx: &Ctx) {
    if !ctx.state.pki().exists() {
        return; // Refused before anything was created: nothing to collect.
    }
    let file = failed_up_bundle(ctx);
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match bundle(ctx, &file).await {
        Ok(()) => crate::errln!("attach {} to a bug report", file.display()),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "warning: no bundle written: {e:#}");
        }
    }
}
