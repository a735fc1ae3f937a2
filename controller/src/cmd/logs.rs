//! `pangaea-ctl logs NODE [UNIT] [--follow] [--since]`: a node's journal, and
//! `pangaea-ctl logs --bundle FILE`: everything a bug report needs in one archive (`up`
//! writes one by itself when it fails).
//!
//! The journal is read on the node by `journalctl`, run through the provider's shell
//! ([`crate::provider::Provider::shell`]: a unit of a local node's systemd, `gcloud compute
//! ssh` on GCE), not yet streamed by the agent over its mutual-TLS channel.

use super::Ctx;
use anyhow::Context;
use pangaea_core::NodeName;
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

/// `journalctl`'s command line for `unit` (all of this boot when none).
pub fn journalctl(
    unit: Option<&str>,
    since: Option<&str>,
    follow: bool,
    lines: u32,
) -> Vec<String> {
    let mut argv: Vec<String> = ["journalctl", "--no-pager", "-o", "short-iso"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match unit {
        Some(u) => argv.extend(["-u".into(), u.to_owned()]),
        None => argv.push("-b".into()),
    }
    match since {
        Some(s) => argv.extend(["--since".into(), s.to_owned()]),
        None if !follow => argv.extend(["-n".into(), lines.to_string()]),
        None => {}
    }
    if follow {
        argv.push("--follow".into());
    }
    argv
}

/// Runs `logs NODE [UNIT]`: this process becomes `journalctl` on the node.
pub async fn node(
    ctx: &Ctx,
    node: NodeName,
    unit: Option<String>,
    follow: bool,
    since: Option<String>,
) -> anyhow::Result<()> {
    let argv = journalctl(unit.as_deref(), since.as_deref(), follow, 200);
    super::ssh::run(ctx, node, argv).await
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

/// Each node's journal of [`BUNDLE_UNITS`], through the provider's shell.
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
        let mut argv = journalctl(None, None, false, 5000);
        argv.retain(|a| a != "-b");
        for u in BUNDLE_UNITS {
            argv.extend(["-u".into(), u.into()]);
        }
        let cmd = provider.shell(&node, &argv, false).await?;
        let out = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("run {}", cmd[0]))?;
        if !out.status.success() {
            errors.push(format!(
                "{node}: journalctl: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        files.push((format!("nodes/{node}/journal.txt"), out.stdout));
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
