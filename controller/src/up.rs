//! `pangaea-ctl up`, `down` and `env`: the reconcile loop over the provider.
//!
//! `up` is idempotent and resumable: every step checks before it acts (PKI and state exist;
//! the controller daemon answers; the image is cached; the network exists; each node exists
//! and runs; the mirror holds each artifact), so re-running it on a healthy cluster changes
//! nothing, and an interrupted run continues where it stopped.

use crate::admin::Backend;
use crate::compile::Compilation;
use crate::issued::PkiInputs;
use crate::mirror::Mirror;
use crate::provider::local::{self, Local};
use crate::provider::{NodeSpec, NodeState, Provider, ProviderError};
use anyhow::{Context, bail};
use pangaea_compiler::cloudinit::{self, UserData};
use pangaea_compiler::inputs::{CaName, CertRequest, Inputs};
use pangaea_proto as pb;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const GRPC_PORT: u16 = 7443;
pub const AGENT_HTTP_PORT: u16 = 7444;

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the local provider needs root (systemd-nspawn, network namespaces, a bridge): run `sudo pangaea-ctl ...`"
        );
    }
    Ok(())
}

fn provider(c: &Compilation, state_dir: &Path, image: std::path::PathBuf) -> Local {
    Local::new(
        &c.loaded.config.name,
        c.loaded.config.network.nodes,
        state_dir,
        image,
    )
}

/// Whether the controller daemon answers on its admin socket.
async fn daemon_up(state_dir: &Path) -> bool {
    tokio::net::UnixStream::connect(state_dir.join(crate::admin::SOCKET))
        .await
        .is_ok()
}

async fn ensure_daemon(
    state_dir: &Path,
    config: &Path,
    host: std::net::Ipv4Addr,
) -> anyhow::Result<()> {
    if daemon_up(state_dir).await {
        return Ok(());
    }
    step(&format!(
        "starting the controller daemon on {host}:{GRPC_PORT} (log: {})",
        state_dir.join("serve.log").display()
    ));
    std::fs::create_dir_all(state_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("serve.log"))?;
    Command::new(std::env::current_exe()?)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--config")
        .arg(config)
        .args([
            "serve",
            "--listen",
            &format!("{host}:{GRPC_PORT}"),
            "--advertise",
            &host.to_string(),
            "--agent-http",
            &format!("{host}:{AGENT_HTTP_PORT}"),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start `pangaea-ctl serve`")?;
    let start = Instant::now();
    while !daemon_up(state_dir).await {
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the controller daemon did not start within 30 s; see {}",
                state_dir.join("serve.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let d = pangaea_artifact::Digest::of_file(pangaea_artifact::DigestKind::Sha256, path)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(d.hex())
}

pub async fn up(
    state_dir: &Path,
    config: &Path,
    timeout: Duration,
    image_cache: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    require_root()?;
    let c = Compilation::load(config, state_dir)?;
    for w in &c.loaded.warnings {
        eprintln!("warning: {}: {}", c.loaded.file, w.message);
    }
    if c.loaded.config.provider.kind() != pangaea_compiler::provider::ProviderKind::Local {
        bail!(
            "provider {:?} is not implemented yet; use provider: {{type: local}}",
            c.loaded.config.provider.kind()
        );
    }
    let image = local::ensure_image(image_cache, &|m| step(m))?;
    let local = provider(&c, state_dir, image);
    let host = local.ensure_network()?;
    let mut phases = vec![("image and network", started.elapsed())];

    // The mirror holds every enabled artifact before any node asks for one.
    let mirror = Mirror::new(&state_dir.join("artifacts"));
    for a in c.artifacts.artifacts.iter().filter(|a| !a.disabled) {
        if !mirror.has(&a.digest()) {
            step(&format!("fetching artifact {} ({})", a.name, a.url));
        }
        mirror.ensure(&a.url, &a.digest()).await.with_context(|| format!("artifact {} (disable it in pangaea.yaml with `disabled: true` if it cannot be had here)", a.name))?;
    }
    ensure_daemon(state_dir, config, host).await?;
    phases.push(("artifacts and controller", started.elapsed()));

    let mut backend = Backend::connect(state_dir).await?;
    let agent_sha256 = sha256_file(&crate::agent_http::default_binary())?;
    let pin = c.pki.controller_pin().to_string();
    for node in &c.model.nodes {
        match local.status(&node.name) {
            Ok(info) if info.state == NodeState::Running => {}
            Ok(_) => {
                step(&format!("{}: booting (existing disk)", node.name));
                local.start(&node.name)?;
            }
            Err(ProviderError::NoSuchNode(_)) => {
                let token = backend
                    .create_token(pb::CreateTokenRequest {
                        ttl_seconds: 3600,
                        uses: 1,
                        node_name: node.name.clone(),
                        description: "cloud-init".into(),
                    })
                    .await?
                    .token;
                let user_data = cloudinit::render(&UserData {
                    node: node.name.clone(),
                    controller: format!("{host}:{GRPC_PORT}"),
                    ca_pin: pin.clone(),
                    token,
                    agent_url: format!(
                        "http://{host}:{AGENT_HTTP_PORT}{}",
                        crate::agent_http::PATH
                    ),
                    agent_sha256: agent_sha256.clone(),
                })?;
                step(&format!(
                    "{}: creating ({}, {} MiB)",
                    node.name, node.address, node.memory_mib
                ));
                local.create(&NodeSpec {
                    name: node.name.clone(),
                    address: node.address,
                    user_data,
                    memory_mib: node.memory_mib,
                    cpus: node.cpus,
                })?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    phases.push(("nodes started", started.elapsed()));

    // Wait for every node to join, apply its assignment and report its units active.
    let deadline = Instant::now() + timeout;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut healthy_at: BTreeMap<String, Duration> = BTreeMap::new();
    loop {
        let nodes = backend.list_nodes().await?;
        let now = crate::records::now();
        let mut pending = Vec::new();
        for m in &c.model.nodes {
            let info = nodes.iter().find(|n| n.name == m.name && !n.removed);
            let state = crate::admin::unhealthy_reason(info, now);
            let shown = state.clone().unwrap_or_else(|| "healthy".into());
            if last.get(&m.name) != Some(&shown) {
                eprintln!(
                    "    {:<12} {shown}  (+{:.1}s)",
                    m.name,
                    started.elapsed().as_secs_f64()
                );
                last.insert(m.name.clone(), shown);
            }
            match state {
                Some(s) => pending.push(format!(
                    "{}: {s} (console: {})",
                    m.name,
                    state_dir
                        .join("nodes")
                        .join(&m.name)
                        .join("console.log")
                        .display()
                )),
                None => {
                    healthy_at
                        .entry(m.name.clone())
                        .or_insert(started.elapsed());
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "not healthy after {}s:\n  {}",
                timeout.as_secs(),
                pending.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    phases.push(("all healthy", started.elapsed()));

    write_admin_kubeconfig(&c, state_dir)?;
    let nodes = backend.list_nodes().await?;
    println!(
        "cluster {} is up: {} nodes healthy in {:.1}s",
        c.loaded.config.name,
        c.model.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    for (phase, at) in &phases {
        println!("  {phase:<26} +{:.1}s", at.as_secs_f64());
    }
    for n in nodes.iter().filter(|n| !n.removed) {
        let r = n.last_report.clone().unwrap_or_default();
        let missing: Vec<&str> = r
            .units
            .iter()
            .filter(|u| u.active_state == "missing-binary")
            .map(|u| u.name.as_str())
            .collect();
        let active: Vec<&str> = r
            .units
            .iter()
            .filter(|u| u.active_state == "active")
            .map(|u| u.name.as_str())
            .collect();
        println!(
            "  {:<12} {}  active: {}",
            n.name,
            n.addresses.first().map_or("-", String::as_str),
            active.join(" ")
        );
        if !missing.is_empty() {
            println!(
                "  {:<12} not started, program not installed: {}",
                "",
                missing.join(" ")
            );
        }
    }
    println!(
        "admin kubeconfig: {}",
        state_dir.join("admin.kubeconfig").display()
    );
    println!("etcd: eval \"$(pangaea-ctl env etcdctl)\"; etcdctl endpoint health");
    Ok(())
}

fn write_admin_kubeconfig(c: &Compilation, state_dir: &Path) -> anyhow::Result<()> {
    let Some(cp) = c.model.nodes.iter().find(|n| n.is_control_plane) else {
        return Ok(());
    };
    let out = c.compile_node(&cp.name)?;
    if let Some(f) = out
        .files
        .iter()
        .find(|f| f.path.ends_with("/admin.kubeconfig"))
    {
        let text = f
            .content
            .replace("https://127.0.0.1:6443", &c.model.api_endpoint);
        pangaea_core::fsutil::atomic_write(
            &state_dir.join("admin.kubeconfig"),
            text.as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

pub fn reboot(state_dir: &Path, config: &Path, name: &str) -> anyhow::Result<()> {
    require_root()?;
    let c = Compilation::load(config, state_dir)?;
    let local = provider(
        &c,
        state_dir,
        local::image_dir(Path::new("/var/cache/pangaea/images")),
    );
    step(&format!("{name}: rebooting"));
    local.reboot(name)?;
    println!("{name} rebooted; it re-applies its last assignment and reconnects by itself");
    Ok(())
}

pub async fn down(state_dir: &Path, config: &Path, purge: bool) -> anyhow::Result<()> {
    require_root()?;
    let c = Compilation::load(config, state_dir)?;
    let local = provider(
        &c,
        state_dir,
        local::image_dir(Path::new("/var/cache/pangaea/images")),
    );
    for n in local.list()? {
        if purge {
            step(&format!("{}: deleting", n.name));
            local.delete(&n.name)?;
        } else if n.state == NodeState::Running {
            step(&format!("{}: stopping", n.name));
            local.stop(&n.name)?;
        }
    }
    stop_daemon(state_dir).await;
    if purge {
        local.teardown()?;
        if state_dir.exists() {
            std::fs::remove_dir_all(state_dir)
                .with_context(|| format!("remove {}", state_dir.display()))?;
        }
        println!("cluster {} deleted", c.loaded.config.name);
    } else {
        println!(
            "cluster {} stopped (state kept in {}; `pangaea-ctl up` starts it again)",
            c.loaded.config.name,
            state_dir.display()
        );
    }
    Ok(())
}

/// Stops the controller daemon recorded in `serve.pid`, waiting for it to exit.
pub async fn stop_daemon(state_dir: &Path) {
    let Some(pid) = std::fs::read_to_string(state_dir.join("serve.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        return;
    }
    step("stopping the controller daemon");
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() || !daemon_up(state_dir).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ETCDCTL_*` settings for the cluster's etcd with an operator client certificate (issued
/// once from the etcd CA).
pub fn etcdctl_env(state_dir: &Path, config: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let c = Compilation::load(config, state_dir)?;
    let inputs = PkiInputs::new(&c.pki, state_dir);
    let req = CertRequest {
        ca: CaName::Etcd,
        id: "cluster/etcd-operator".into(),
        common_name: "pangaea-operator".into(),
        organizations: vec![],
        dns_names: vec![],
        ips: vec![],
        server: false,
        client: true,
    };
    inputs.cert(&req).map_err(anyhow::Error::msg)?;
    let abs = |p: std::path::PathBuf| std::fs::canonicalize(&p).unwrap_or(p).display().to_string();
    let issued = state_dir.join("pki/issued");
    let endpoints: Vec<String> = c
        .model
        .nodes
        .iter()
        .filter(|n| n.is_etcd)
        .map(|n| format!("https://{}:2379", n.address))
        .collect();
    Ok(vec![
        ("ETCDCTL_API", "3".to_owned()),
        ("ETCDCTL_ENDPOINTS", endpoints.join(",")),
        ("ETCDCTL_CACERT", abs(state_dir.join("pki/etcd-ca.crt"))),
        (
            "ETCDCTL_CERT",
            abs(issued.join("cluster__etcd-operator.crt")),
        ),
        (
            "ETCDCTL_KEY",
            abs(issued.join("cluster__etcd-operator.key")),
        ),
    ])
}

pub fn env_etcdctl(state_dir: &Path, config: &Path) -> anyhow::Result<()> {
    for (k, v) in etcdctl_env(state_dir, config)? {
        println!("export {k}={v}");
    }
    Ok(())
}

/// etcd membership as etcd itself reports it, asked of the members at `addresses` (the
/// nodes whose etcd unit is running): address → (member ID, is leader). An error says why
/// it could not be asked (no etcdctl, no quorum, …).
pub fn etcd_members(
    state_dir: &Path,
    config: &Path,
    addresses: &[String],
) -> Result<BTreeMap<String, (String, bool)>, String> {
    if addresses.is_empty() {
        return Ok(BTreeMap::new());
    }
    let env = etcdctl_env(state_dir, config).map_err(|e| e.to_string())?;
    let endpoints: Vec<String> = addresses
        .iter()
        .map(|a| format!("https://{a}:2379"))
        .collect();
    let out = Command::new("etcdctl")
        .envs(env)
        .env("ETCDCTL_ENDPOINTS", endpoints.join(","))
        .args([
            "--dial-timeout=500ms",
            "--command-timeout=1s",
            "endpoint",
            "status",
            "-w",
            "json",
        ])
        .output()
        .map_err(|_| "etcdctl not found (apt-get install etcd-client)".to_owned())?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "etcdctl: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        )
    })?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let ep = r["Endpoint"]
                .as_str()?
                .trim_start_matches("https://")
                .split(':')
                .next()?
                .to_owned();
            let id = r["Status"]["header"]["member_id"].as_u64()?;
            let leader = r["Status"]["leader"].as_u64()? == id;
            Some((ep, (format!("{id:x}"), leader)))
        })
        .collect())
}
