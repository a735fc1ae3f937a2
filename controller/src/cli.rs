//! The `pangaea-ctl` command line.

use crate::admin::Backend;
use crate::certinfo::{CertInfo, rfc3339};
use crate::compile::{Compilation, CompilerPlanner};
use crate::mirror::Mirror;
use crate::pki::{CaKind, Pki};
use crate::{Controller, ControllerConfig};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pangaea_compiler::artifact_set::{ArtifactOverride, ArtifactSet};
use pangaea_proto as pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Pangaea: a cheap, highly available Kubernetes cluster with one command.
///
/// The controller keeps the cluster's PKI and state in `.pangaea/` beside `pangaea.yaml`
/// (found by walking up from the current directory). Nodes run `pangaea-agent`, which
/// joins with a single-use bootstrap token and then talks mutual TLS only.
#[derive(Parser)]
#[command(name = "pangaea-ctl", version)]
pub struct Cli {
    /// The cluster's state directory [default: .pangaea beside the nearest pangaea.yaml,
    /// else ./.pangaea]
    #[arg(long, global = true, env = "PANGAEA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The cluster configuration [default: the nearest pangaea.yaml, else built-in
    /// defaults: 3 local nodes]
    #[arg(long, global = true, env = "PANGAEA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the controller: serve agents (mutual TLS) and operator commands (local socket).
    Serve {
        /// Address to listen on for agents.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Names or IP addresses the agents use to reach this controller (repeatable);
        /// they go into its serving certificate.
        #[arg(long)]
        advertise: Vec<String>,
        /// Also serve the agent binary to booting nodes on this address (plain HTTP; nodes
        /// check its digest).
        #[arg(long)]
        agent_http: Option<SocketAddr>,
    },
    /// Bring the cluster up: create what is missing (PKI, controller daemon, node image,
    /// network, nodes), wait until every node is healthy, write the admin kubeconfig.
    /// Idempotent: on a healthy cluster it changes nothing. Local provider: needs root.
    Up {
        /// How long to wait for the nodes to become healthy.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// Where the node image is cached (built once with debootstrap).
        #[arg(
            long,
            env = "PANGAEA_IMAGE_CACHE",
            default_value = "/var/cache/pangaea/images"
        )]
        image_cache: PathBuf,
    },
    /// Stop the nodes and the controller daemon; the cluster's state is kept unless --purge.
    Down {
        /// Also delete the nodes, their network and the cluster's state (.pangaea).
        #[arg(long)]
        purge: bool,
    },
    /// Print shell exports for a tool, e.g. `eval "$(pangaea-ctl env etcdctl)"`.
    Env {
        #[arg(value_enum)]
        tool: EnvTool,
    },
    /// Inspect the cluster's certificate authorities.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Create, list and revoke bootstrap tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the nodes, their assignment revisions and latest health reports.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Render every file the nodes get from pangaea.yaml and the templates (deterministic:
    /// the same input gives byte-identical output).
    Compile {
        /// Only this node [default: all].
        #[arg(long)]
        node: Option<String>,
        /// Directory to write into, one subdirectory per node.
        #[arg(long, default_value = "compiled")]
        out: PathBuf,
        /// Render one template instead: a built-in name (like units/etcd.service) or a
        /// template file; as --node (default: the first node) sees it.
        #[arg(short = 'i', long = "template")]
        template: Option<String>,
        /// Where -i writes [default: standard output].
        #[arg(short = 'o', long = "output", requires = "template")]
        output: Option<PathBuf>,
        /// Keep running and re-render whenever the configuration or a template changes.
        #[arg(long)]
        watch: bool,
    },
    /// The verified artifact mirror in .pangaea/artifacts (what nodes download).
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
}

#[derive(Subcommand)]
pub enum ArtifactsCommand {
    /// Show the pinned artifact set and what the mirror holds, with sizes and digests.
    List,
    /// Copy a local file into the mirror (air-gapped use); it then serves any pin of its
    /// SHA-256 or SHA-512.
    Import { file: PathBuf },
    /// Fetch artifacts of the pinned set into the mirror (all, or the names given), each
    /// verified against its pinned digest; already mirrored ones are skipped.
    Fetch {
        names: Vec<String>,
        /// YAML list of overrides by name (url, digest, version, members), e.g. a local
        /// source for an artifact.
        #[arg(long)]
        overrides: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum PkiCommand {
    /// List each CA and the controller certificate with subject, SANs and expiry.
    Show {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print the controller CA pin (`sha256:...`) that agents are configured with.
    Pin,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it (the only time its secret is shown).
    Create {
        /// Lifetime, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many joins it admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Admit only a node of this name (and let it replace an old node of that name).
        #[arg(long)]
        node: Option<pangaea_core::NodeName>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids only; secrets are not stored).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Remove a node: its certificates are refused at once.
    Remove { name: String },
    /// Power a node off and boot it again with the same disk (local provider; root).
    Reboot { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EnvTool {
    /// ETCDCTL_* for the cluster's etcd, with an operator client certificate.
    Etcdctl,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Parses `90s`, `30m`, `1h`, `2d` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use a number with s, m, h or d, like 30m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// `.pangaea` beside the nearest `pangaea.yaml` above `start`, else `start/.pangaea`.
pub fn find_state_dir(start: &Path) -> PathBuf {
    find_cluster_dir(start).join(".pangaea")
}

/// The directory of the nearest `pangaea.yaml` above `start`, else `start`.
pub fn find_cluster_dir(start: &Path) -> PathBuf {
    start
        .ancestors()
        .find(|d| d.join("pangaea.yaml").is_file())
        .unwrap_or(start)
        .to_owned()
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("current directory")?;
    let state_dir = cli.state_dir.unwrap_or_else(|| find_state_dir(&cwd));
    let config = cli
        .config
        .unwrap_or_else(|| find_cluster_dir(&cwd).join("pangaea.yaml"));
    match cli.command {
        Command::Serve {
            listen,
            advertise,
            agent_http,
        } => serve(&state_dir, &config, listen, advertise, agent_http).await,
        Command::Up {
            timeout,
            image_cache,
        } => crate::up::up(&state_dir, &config, timeout, &image_cache).await,
        Command::Down { purge } => crate::up::down(&state_dir, &config, purge).await,
        Command::Env {
            tool: EnvTool::Etcdctl,
        } => crate::up::env_etcdctl(&state_dir, &config),
        Command::Compile {
            node,
            out,
            template,
            output,
            watch,
        } => compile(&state_dir, &config, node, &out, template, output, watch).await,
        Command::Pki(cmd) => pki(&state_dir, cmd),
        Command::Token(cmd) => token(&state_dir, cmd).await,
        Command::Status { output } => status(&state_dir, &config, output).await,
        Command::Artifacts(cmd) => artifacts(&state_dir, cmd).await,
        Command::Node(NodeCommand::Reboot { name }) => {
            crate::up::reboot(&state_dir, &config, &name)
        }
        Command::Node(NodeCommand::Remove { name }) => {
            Backend::connect(&state_dir)
                .await?
                .remove_node(name.clone())
                .await?;
            println!("node {name} removed; its certificates are revoked");
            Ok(())
        }
    }
}

async fn serve(
    state_dir: &Path,
    cluster_config: &Path,
    listen: SocketAddr,
    advertise: Vec<String>,
    agent_http: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut config = ControllerConfig::new(state_dir);
    config.advertise = advertise;
    if !listen.ip().is_unspecified() {
        config.advertise.push(listen.ip().to_string());
    }
    let compilation = Compilation::load(cluster_config, state_dir)?;
    print_warnings(&compilation.loaded);
    let controller = Controller::open(config, Some(Arc::new(CompilerPlanner(compilation))))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    let addr = listener.local_addr()?;
    pangaea_core::fsutil::atomic_write(
        &state_dir.join("serve.pid"),
        std::process::id().to_string().as_bytes(),
        0o644,
    )?;
    pangaea_core::fsutil::atomic_write(
        &state_dir.join("serve.addr"),
        addr.to_string().as_bytes(),
        0o644,
    )?;
    tracing::info!(%addr, pin = %controller.pki().controller_pin(), state = %state_dir.display(), "controller serving");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let admin = tokio::spawn(crate::admin::serve(controller.clone(), stop(rx.clone())));
    if let Some(addr) = agent_http {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr} for agent downloads"))?;
        tokio::spawn(crate::agent_http::serve(
            l,
            crate::agent_http::default_binary(),
        ));
    }
    let agents = controller.serve(listener, stop(rx));
    tokio::pin!(agents);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = &mut agents => r?,
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    let _ = tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    let _ = std::fs::remove_file(state_dir.join("serve.pid"));
    Ok(())
}

/// When the provider created a node (local provider records it), unix seconds.
fn created_at(state_dir: &Path, node: &str) -> Option<i64> {
    let text = std::fs::read(state_dir.join("nodes").join(node).join("record.json")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&text).ok()?["created_at"].as_i64()
}

/// `created → joined +4s → applied +6s → healthy +8s`, from the first known milestone.
fn timeline(created: Option<i64>, n: &pb::NodeInfo) -> Option<String> {
    let steps = [
        ("created", created.unwrap_or(0)),
        ("joined", n.joined_at),
        ("applied", n.first_applied_at),
        ("healthy", n.healthy_at),
    ];
    let start = steps.iter().map(|(_, t)| *t).find(|t| *t > 0)?;
    Some(
        steps
            .iter()
            .filter(|(_, t)| *t > 0)
            .map(|(name, t)| {
                if *t == start {
                    (*name).to_owned()
                } else {
                    format!("{name} +{}s", t - start)
                }
            })
            .collect::<Vec<_>>()
            .join(" → "),
    )
}

fn print_warnings(loaded: &pangaea_compiler::config::Loaded) {
    for w in &loaded.warnings {
        let at = w
            .location
            .map(|(l, c)| format!(":{l}:{c}"))
            .unwrap_or_default();
        eprintln!("warning: {}{at}: {}", loaded.file, w.message);
    }
}

/// Modification stamps of the configuration and every template override, to notice edits.
fn watch_stamp(
    config: &Path,
    templates: &Path,
) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        (
            p.to_owned(),
            m.as_ref().and_then(|m| m.modified().ok()),
            m.map_or(0, |m| m.len()),
        )
    };
    let mut out = vec![stamp(config)];
    let mut stack = vec![templates.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(stamp(&p));
            }
        }
    }
    out.sort();
    out
}

#[allow(clippy::too_many_arguments)]
async fn compile(
    state_dir: &Path,
    config: &Path,
    node: Option<String>,
    out: &Path,
    template: Option<String>,
    output: Option<PathBuf>,
    watch: bool,
) -> anyhow::Result<()> {
    let once = |first: bool| -> anyhow::Result<()> {
        let c = Compilation::load(config, state_dir)?;
        if first {
            print_warnings(&c.loaded);
        }
        if let Some(t) = &template {
            let node = node
                .clone()
                .unwrap_or_else(|| c.model.nodes[0].name.clone());
            let inputs = crate::issued::PkiInputs::new(&c.pki, state_dir);
            let compiler = pangaea_compiler::node::Compiler {
                model: &c.model,
                templates: &c.templates,
                inputs: &inputs,
                artifacts: &c.artifacts,
            };
            let path = Path::new(t);
            let text = if path.is_file() {
                compiler.render_one(t, Some(&std::fs::read_to_string(path)?), &node)?
            } else {
                compiler.render_one(t, None, &node)?
            };
            match &output {
                Some(o) => {
                    pangaea_core::fsutil::atomic_write(o, text.as_bytes(), 0o644)?;
                    eprintln!("wrote {}", o.display());
                }
                None => print!("{text}"),
            }
            return Ok(());
        }
        let names: Vec<String> = match &node {
            Some(n) => vec![n.clone()],
            None => c.model.nodes.iter().map(|n| n.name.clone()).collect(),
        };
        // Render everything first: an error anywhere writes nothing.
        let outputs = names
            .iter()
            .map(|n| c.compile_node(n))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut total, mut changed) = (0, 0);
        for o in &outputs {
            for (path, ch) in crate::compile::write_node(out, o)? {
                total += 1;
                if ch {
                    changed += 1;
                    println!("written    {}", path.display());
                } else if !watch {
                    println!("unchanged  {}", path.display());
                }
            }
        }
        eprintln!(
            "{} node(s), {total} files, {changed} changed, in {}",
            outputs.len(),
            out.display()
        );
        Ok(())
    };
    // Stamp before rendering, so an edit made while rendering is not missed.
    let templates_dir = config.parent().unwrap_or(Path::new(".")).join("templates");
    let mut last = watch_stamp(config, &templates_dir);
    once(true)?;
    if !watch {
        return Ok(());
    }
    eprintln!(
        "watching {} and {} (Ctrl-C to stop)",
        config.display(),
        templates_dir.display()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let now = watch_stamp(config, &templates_dir);
        if now != last {
            last = now;
            if let Err(e) = once(false) {
                eprintln!("error: {e:#}");
            }
        }
    }
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

async fn artifacts(state_dir: &Path, cmd: ArtifactsCommand) -> anyhow::Result<()> {
    // The mirror is content-addressed and written atomically, so it needs no lock and works
    // the same whether or not a controller is running.
    let mirror = Mirror::new(&state_dir.join("artifacts"));
    match cmd {
        ArtifactsCommand::List => {
            let set = ArtifactSet::defaults();
            println!("pinned set v{} ({})", set.set_version, set.arch);
            println!(
                "{:<18} {:<9} {:<8} {:>10}  DIGEST",
                "NAME", "VERSION", "MIRROR", "SIZE"
            );
            for a in &set.artifacts {
                let entry = mirror.entry(&a.digest());
                let size = entry.as_ref().map_or("-".to_owned(), |e| human(e.size));
                println!(
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
                println!("\nalso in the mirror:");
                for e in others {
                    println!("  {:>10}  {}  from {}", human(e.size), e.digest, e.source);
                }
            }
        }
        ArtifactsCommand::Import { file } => {
            for e in mirror.import(&file).await? {
                println!("{}  {}", e.digest, human(e.size));
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
                eprintln!("{}: {}", a.name, a.url);
                let e = mirror.ensure(&a.url, &a.digest()).await?;
                println!("{:<18} {:>10}  {}", a.name, human(e.size), e.digest);
            }
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn pki(state_dir: &Path, cmd: PkiCommand) -> anyhow::Result<()> {
    // The PKI files are only created, never rewritten, so reading them does not need the
    // store's lock; a first `pki show` creates them like any other first use.
    let pki = Pki::load_or_create(&state_dir.join("pki"))?;
    match cmd {
        PkiCommand::Pin => println!("{}", pki.controller_pin()),
        PkiCommand::Show { output } => {
            let mut rows: Vec<(String, CertInfo)> = CaKind::ALL
                .iter()
                .filter_map(|k| {
                    CertInfo::from_der(&pki.ca(*k).cert_der).map(|i| (k.file_stem().to_owned(), i))
                })
                .collect();
            if let Some(info) = std::fs::read_to_string(state_dir.join("pki/controller.crt"))
                .ok()
                .and_then(|p| CertInfo::from_pem(&p))
            {
                rows.push(("controller".into(), info));
            }
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &rows
                            .iter()
                            .map(|(n, i)| serde_json::json!({"name": n, "cert": i}))
                            .collect::<Vec<_>>()
                    )?
                ),
                Output::Table => {
                    println!("{:<16} {:<40} {:<22} SANS", "NAME", "SUBJECT", "EXPIRES");
                    for (name, i) in rows {
                        println!(
                            "{:<16} {:<40} {:<22} {}",
                            name,
                            i.subject,
                            rfc3339(i.not_after),
                            if i.sans.is_empty() {
                                "-".into()
                            } else {
                                i.sans.join(",")
                            }
                        );
                    }
                    println!("\nagent pin: {}", pki.controller_pin());
                }
            }
        }
    }
    Ok(())
}

async fn token(state_dir: &Path, cmd: TokenCommand) -> anyhow::Result<()> {
    let mut backend = Backend::connect(state_dir).await?;
    match cmd {
        TokenCommand::Create {
            ttl,
            uses,
            node,
            description,
        } => {
            let resp = backend
                .create_token(pb::CreateTokenRequest {
                    ttl_seconds: ttl.as_secs(),
                    uses,
                    node_name: node.map(String::from).unwrap_or_default(),
                    description,
                })
                .await?;
            println!("{}", resp.token);
            eprintln!("expires {}", rfc3339(resp.expires_at));
        }
        TokenCommand::List => {
            println!(
                "{:<8} {:<22} {:<5} {:<16} {:<8} DESCRIPTION",
                "ID", "EXPIRES", "USES", "NODE", "STATE"
            );
            let now = crate::records::now();
            for t in backend.list_tokens().await? {
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_at <= now {
                    "expired"
                } else if t.uses_left == 0 {
                    "used"
                } else {
                    "valid"
                };
                println!(
                    "{:<8} {:<22} {:<5} {:<16} {:<8} {}",
                    t.id,
                    rfc3339(t.expires_at),
                    t.uses_left,
                    if t.node_name.is_empty() {
                        "*"
                    } else {
                        &t.node_name
                    },
                    state,
                    t.description
                );
            }
        }
        TokenCommand::Revoke { id } => {
            backend.revoke_token(id.clone()).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

async fn status(state_dir: &Path, config: &Path, output: Output) -> anyhow::Result<()> {
    let mut backend = Backend::connect(state_dir).await?;
    if matches!(backend, Backend::Local(_)) {
        eprintln!(
            "note: no controller is running for {}; showing the last stored reports",
            state_dir.display()
        );
    }
    let nodes = backend.list_nodes().await?;
    // Ask etcd only where it runs: nodes reporting an active etcd unit.
    let now = crate::records::now();
    let running: Vec<String> = nodes
        .iter()
        .filter(|n| now - n.last_report_at <= crate::admin::DOWN_AFTER_SECONDS)
        .filter(|n| {
            n.last_report.as_ref().is_some_and(|r| {
                r.units
                    .iter()
                    .any(|u| u.name == "etcd.service" && u.active_state == "active")
            })
        })
        .filter_map(|n| n.addresses.first().cloned())
        .collect();
    let (sd, cf) = (state_dir.to_owned(), config.to_owned());
    let etcd =
        tokio::task::spawn_blocking(move || crate::up::etcd_members(&sd, &cf, &running)).await?;
    let etcd_of = |n: &pb::NodeInfo| match &etcd {
        Ok(members) => n.addresses.iter().find_map(|a| members.get(a)).map_or_else(
            || serde_json::json!({"member": null}),
            |(id, leader)| serde_json::json!({"member": id, "leader": leader}),
        ),
        Err(e) => serde_json::json!({"error": e}),
    };
    match output {
        Output::Json => {
            let rows: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let r = n.last_report.clone().unwrap_or_default();
                    serde_json::json!({
                        "name": n.name, "instance_id": n.instance_id, "addresses": n.addresses, "roles": n.roles, "removed": n.removed, "etcd": etcd_of(n),
                        "timeline": { "created_at": created_at(state_dir, &n.name), "joined_at": n.joined_at, "first_applied_at": n.first_applied_at, "healthy_at": n.healthy_at },
                        "state": if n.removed { "removed".to_owned() } else { crate::admin::unhealthy_reason(Some(n), crate::records::now()).unwrap_or_else(|| "healthy".into()) },
                        "assigned_revision": n.assigned_revision, "applied_revision": r.applied_revision,
                        "last_report_at": n.last_report_at, "certificate_not_after": n.certificate_not_after,
                        "agent_version": r.agent_version, "agent_rss_bytes": r.agent_rss_bytes, "errors": r.errors,
                        "units": r.units.iter().map(|u| serde_json::json!({"name": u.name, "active": u.active_state, "sub": u.sub_state})).collect::<Vec<_>>(),
                        "artifacts": r.artifacts.iter().map(|a| serde_json::json!({
                            "dest": a.dest, "url": a.url, "state": a.state, "bytes_done": a.bytes_done,
                            "bytes_total": a.bytes_total, "resumed_from": a.resumed_from, "error": a.error,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let now = crate::records::now();
            println!(
                "{:<12} {:<14} {:<27} {:<9} {:<10} {:<8} {:<21} STATE",
                "NODE", "ADDRESS", "ROLES", "REVISION", "REPORTED", "AGENT", "CERT EXPIRES"
            );
            for n in &nodes {
                let r = n.last_report.clone().unwrap_or_default();
                let age = if n.last_report_at == 0 {
                    "never".to_owned()
                } else {
                    format!("{}s ago", now - n.last_report_at)
                };
                let state = if n.removed {
                    "removed".to_owned()
                } else {
                    crate::admin::unhealthy_reason(Some(n), now).unwrap_or_else(|| "healthy".into())
                };
                println!(
                    "{:<12} {:<14} {:<27} {:<9} {:<10} {:<8} {:<21} {state}",
                    n.name,
                    n.addresses.first().map_or("-", String::as_str),
                    if n.roles.is_empty() {
                        "-".to_owned()
                    } else {
                        n.roles.join(",")
                    },
                    format!("{}/{}", r.applied_revision, n.assigned_revision),
                    age,
                    if r.agent_version.is_empty() {
                        "-"
                    } else {
                        &r.agent_version
                    },
                    rfc3339(n.certificate_not_after),
                );
                let units: Vec<String> = r
                    .units
                    .iter()
                    .filter(|u| u.active_state != "missing-binary")
                    .map(|u| format!("{}={}", u.name.trim_end_matches(".service"), u.active_state))
                    .collect();
                if !units.is_empty() {
                    println!("{:<12} units: {}", "", units.join(" "));
                }
                let missing: Vec<String> = r
                    .units
                    .iter()
                    .filter(|u| u.active_state == "missing-binary")
                    .map(|u| u.name.trim_end_matches(".service").to_owned())
                    .collect();
                if !missing.is_empty() {
                    println!(
                        "{:<12} not started (program not installed): {}",
                        "",
                        missing.join(" ")
                    );
                }
                let e = etcd_of(n);
                if n.roles.iter().any(|r| r == "etcd") || e["member"].is_string() {
                    let line = match (e["member"].as_str(), e["error"].as_str()) {
                        (Some(id), _) => format!(
                            "member {id}{}",
                            if e["leader"] == true { " (leader)" } else { "" }
                        ),
                        (None, Some(err)) => format!("unknown: {err}"),
                        (None, None) => "not answering".to_owned(),
                    };
                    println!("{:<12} etcd: {line}", "");
                }
                let created = created_at(state_dir, &n.name);
                if let Some(t) = timeline(created, n) {
                    println!("{:<12} timeline: {t}", "");
                }
                for e in r.errors.iter().filter(|e| !e.contains("not started:")) {
                    println!("{:<12} error: {e}", "");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn state_dir_is_found_beside_pangaea_yaml() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pangaea.yaml"), "").unwrap();
        let sub = d.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(find_state_dir(&sub), d.path().join(".pangaea"));
        let lone = tempfile::tempdir().unwrap();
        assert_eq!(find_state_dir(lone.path()), lone.path().join(".pangaea"));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
