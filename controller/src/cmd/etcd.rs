//! `pangaea-ctl etcd snapshot save|restore FILE`.

use super::{Ctx, step};
use crate::admin::Backend;
use crate::membership::SnapshotCheck;
use anyhow::{Context, bail};
use pangaea_compiler::roles::Role;
use pangaea_core::NodeName;
use pangaea_proto as pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
                crate::outln!(
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

/// `etcd snapshot restore FILE`: rebuilds etcd from a snapshot when its quorum is lost for
/// good (see `docs/ARCHITECTURE.md`, §12): the snapshot is restored on this machine, with
/// etcd's own tool and a new cluster token, into the data directory of a one-member
/// cluster; that directory replaces the data of one surviving etcd node (a job of its
/// agent); the machines of the other etcd nodes are deleted; `up` then re-creates them and
/// they join the restored member as learners, one at a time.
pub async fn snapshot_restore(
    ctx: &Ctx,
    file: &Path,
    node: Option<NodeName>,
    force: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bytes = check_snapshot(file)?;
    step(&format!(
        "{}: an etcd snapshot of {} bytes, its SHA-256 trailer checked",
        file.display(),
        bytes
    ));
    let c = ctx.compilation()?;
    let provider = ctx.provider(&c)?;
    let (running, _) = crate::etcd::running_members(&c, provider.as_ref()).await?;
    let survivor = match &node {
        Some(n) => running
            .iter()
            .find(|(r, _)| r == n)
            .map(|(r, _)| r.clone())
            .with_context(|| {
                format!("{n} is not an etcd node whose machine runs (`pangaea-ctl status`)")
            })?,
        None => running.first().map(|(n, _)| n.clone()).with_context(|| {
            format!(
                "no etcd node of cluster {} runs: start one (`pangaea-ctl start`), or re-create the cluster (`pangaea-ctl down --purge && pangaea-ctl up`) and restore onto it",
                c.loaded.config.name
            )
        })?,
    };
    let etcd = crate::etcd::operator_client(&c)?;
    let endpoints: Vec<String> = running.iter().map(|(_, e)| e.clone()).collect();
    let survey = crate::membership::survey(&etcd, &endpoints).await;
    let leader = survey
        .answers
        .iter()
        .any(|(_, r)| r.as_ref().is_ok_and(|v| v.leader != 0));
    if leader && !force {
        return Err(crate::exit::Refusal(format!(
            "etcd still has a leader ({}): restoring replaces all of its data with the snapshot's; pass --force to do it anyway",
            crate::membership::describe(&survey)
        ))
        .into());
    }
    let existing: Vec<NodeName> = provider.list().await?.into_iter().map(|m| m.name).collect();
    let others: Vec<&NodeName> = c
        .model
        .with_role(Role::Etcd)
        .map(|n| &n.name)
        .filter(|n| **n != survivor && existing.contains(n))
        .collect();

    // 1. The restored data directory, made here with etcd's own tool.
    let model = c
        .model
        .node(&survivor)
        .context("the survivor is in the model")?;
    let peer = pangaea_compiler::helpers::etcd_peer_url(model.address);
    let token = format!(
        "{}-etcd-restored-{}",
        c.loaded.config.name,
        crate::records::now()
    );
    let work = tempfile::Builder::new()
        .prefix("etcd-restore-")
        .tempdir_in(ctx.state.path())
        .context("a working directory for the restore")?;
    let data = work.path().join("etcd");
    let (tool, api) = restore_tool()?;
    let out = std::process::Command::new(&tool)
        .envs(api)
        .args(["snapshot", "restore"])
        .arg(file)
        .arg(format!("--name={survivor}"))
        .arg(format!("--initial-cluster={survivor}={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster-token={token}"))
        .arg(format!("--data-dir={}", data.display()))
        .output()
        .with_context(|| format!("run {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "{} snapshot restore failed ({}): {}",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let archive = work.path().join("etcd-data.tar.gz");
    pangaea_artifact::tree::pack(&data, &archive)
        .with_context(|| format!("pack {}", data.display()))?;
    let mirror = crate::mirror::Mirror::new(&ctx.state.artifacts());
    let entry = mirror
        .add_file_as(
            &archive,
            "etcd snapshot restore",
            pangaea_artifact::DEFAULT_MAX_SIZE,
        )
        .context("put the restored data in the controller's mirror")?;
    step(&format!(
        "restored with {} into a one-member cluster {survivor} (token {token}): {}",
        tool.display(),
        super::human(entry.size)
    ));

    // 2. It replaces the survivor's data.
    let mut backend = Backend::connect(&ctx.state).await?;
    let mut stream = backend
        .restore_etcd(pb::RestoreEtcdRequest {
            node: survivor.to_string(),
            restore: Some(pb::EtcdRestore {
                digest: entry.digest.clone(),
                size: entry.size,
                data_dir: pangaea_compiler::node::ETCD_DATA.into(),
                unit: "etcd.service".into(),
            }),
            timeout_seconds: timeout.as_secs(),
        })
        .await?;
    let mut outcome = None;
    while let Some(event) = stream.message().await.context("the controller's answer")? {
        let Some(r) = event.report else { continue };
        if crate::jobs::is_final(&r) {
            outcome = Some(r);
        }
    }
    let r = outcome.context("the controller ended the restore without an outcome")?;
    if r.state() != pb::JobState::Succeeded {
        bail!("{survivor}: the restore failed: {}", r.message);
    }
    step(&format!(
        "{survivor}: etcd runs on the restored data (its old data kept beside it, named {}.before-restore-*)",
        pangaea_compiler::node::ETCD_DATA
    ));
    let survivor_url = crate::etcd::client_url(&model.address.to_string());
    let deadline = Instant::now() + timeout;
    loop {
        let s = crate::membership::survey(&etcd, std::slice::from_ref(&survivor_url)).await;
        if crate::membership::all_serving(&s) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{survivor}: the restored etcd does not serve: {}",
                crate::membership::describe(&s)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 3. The other etcd nodes start again from nothing: they join the restored member.
    crate::etcd_join::reset(&ctx.state)?;
    for n in others {
        step(&format!(
            "{n}: deleting its machine (its etcd data belongs to the lost cluster); `up` creates it again"
        ));
        provider.delete(n).await?;
    }
    drop(backend);
    super::up::run(ctx, timeout, super::up::Mode::Up).await?;
    crate::outln!(
        "etcd restored from {} in {:.1}s: {survivor} holds the snapshot's data, every other etcd node joined it",
        file.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reads the snapshot at `file` through [`SnapshotCheck`]: its length, once its SHA-256
/// trailer matches.
fn check_snapshot(file: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let mut check = SnapshotCheck::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", file.display()))?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]);
    }
    check.finish().map_err(|m| {
        anyhow::anyhow!(
            "{} is not a whole etcd snapshot: {m} (`pangaea-ctl etcd snapshot save` writes one)",
            file.display()
        )
    })
}

/// etcd's tool that restores a snapshot on this machine: `etcdutl` (etcd ≥ 3.5), else
/// `etcdctl` (3.4, with `ETCDCTL_API=3`); with the environment it needs.
fn restore_tool() -> anyhow::Result<(PathBuf, Vec<(&'static str, &'static str)>)> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let find = |name: &str| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    if let Some(p) = find("etcdutl") {
        return Ok((p, vec![]));
    }
    if let Some(p) = find("etcdctl") {
        return Ok((p, vec![("ETCDCTL_API", "3")]));
    }
    bail!(
        "restoring a snapshot needs etcd's etcdutl or etcdctl on this machine: apt-get install etcd-client (or put etcdutl from an etcd release on the PATH)"
    )
}
