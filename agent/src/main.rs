//! `pangaea-agent --config FILE`: parse arguments, set up logging (journald picks up
//! stderr), build a single-threaded runtime (the agent is mostly idle; one thread keeps its
//! memory small) and run. `pangaea-agent fetch` runs the artifact pipeline by hand;
//! `pangaea-agent api-lb` is the node-local load balancer over the API servers (a unit of
//! its own, so it outlives agent restarts).

use anyhow::Context;
use clap::{Parser, Subcommand};
use pangaea_agent::service_manager::{RecordingServiceManager, ServiceManager, Systemctl};
use std::path::PathBuf;
use std::sync::Arc;

/// The Pangaea node agent: joins the controller with a bootstrap token, then applies the
/// node's assignment (files, artifacts, systemd units) and reports health over mutual TLS.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Agent configuration (YAML), as written by cloud-init.
    #[arg(long, default_value = "/etc/pangaea/agent.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Download, verify and atomically install one artifact, exactly as the agent does:
    /// for debugging a node's downloads by hand. Resumes a previous interrupted attempt.
    Fetch {
        /// https://, http:// or file:// source.
        #[arg(long)]
        url: String,
        /// Expected SHA-256 (hex).
        #[arg(long, conflicts_with = "digest", required_unless_present = "digest")]
        sha256: Option<String>,
        /// Expected digest as sha256:<hex> or sha512:<hex>.
        #[arg(long)]
        digest: Option<String>,
        /// Where to install it.
        #[arg(long)]
        dest: PathBuf,
        /// File mode, octal.
        #[arg(long, default_value = "755", value_parser = parse_mode)]
        mode: u32,
        /// For a .tar.gz: extract MEMBER to DEST (repeatable), as MEMBER=DEST.
        #[arg(long = "member", value_parser = parse_member)]
        members: Vec<(String, PathBuf)>,
        /// Attempts before giving up.
        #[arg(long, default_value_t = 5)]
        attempts: u32,
    },
    /// Relay TCP connections on LISTEN to the cluster's API servers (round robin, healthy
    /// ones first, a lost one skipped): the node's kubelet and kube-proxy reach the API
    /// through it, so losing any one control-plane node leaves them connected. TLS stays
    /// end to end.
    ApiLb {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:6444")]
        listen: std::net::SocketAddr,
        /// The API servers, one ADDRESS:PORT per line (as the assignment writes it).
        #[arg(long, default_value = "/etc/pangaea/api-servers")]
        backends: PathBuf,
    },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid mode {s:?}: use octal like 755"))
}

fn parse_member(s: &str) -> Result<(String, PathBuf), String> {
    let (m, d) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid member {s:?}: use PATH_IN_ARCHIVE=DEST"))?;
    Ok((m.to_owned(), PathBuf::from(d)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    pangaea_core::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build tokio runtime")?;
    match args.command {
        Some(Command::Fetch {
            url,
            sha256,
            digest,
            dest,
            mode,
            members,
            attempts,
        }) => {
            let digest =
                pangaea_artifact::Digest::parse(&digest.or(sha256).expect("clap requires one"))?;
            let spec = pangaea_artifact::ArtifactSpec {
                url,
                digest,
                dest,
                mode,
                members: members
                    .into_iter()
                    .map(|(path, dest)| pangaea_artifact::Member { path, dest, mode })
                    .collect(),
            };
            let policy = pangaea_artifact::RetryPolicy {
                attempts,
                ..Default::default()
            };
            let fetcher = pangaea_artifact::Fetcher::new(pangaea_artifact::Sources::standard(), 1)
                .with_policy(policy);
            let installed = rt.block_on(fetcher.install(&spec))?;
            println!(
                "{} {} ({} bytes downloaded, resumed from byte {}, {} attempt(s))",
                if installed.changed {
                    "installed"
                } else {
                    "already current:"
                },
                spec.dest.display(),
                installed.downloaded_bytes,
                installed.resumed_from,
                installed.attempts
            );
            Ok(())
        }
        Some(Command::ApiLb { listen, backends }) => {
            let text = std::fs::read_to_string(&backends)
                .with_context(|| format!("read {}", backends.display()))?;
            let addrs = pangaea_core::relay::parse_backends(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", backends.display()))?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listen on {listen}"))?;
                tracing::info!(%listen, backends = ?addrs, "API load balancer");
                let pool = pangaea_core::relay::Pool::new(addrs);
                tokio::spawn(pangaea_core::relay::health_loop(
                    pool.clone(),
                    pangaea_core::relay::CHECK_EVERY,
                ));
                pangaea_core::relay::serve(listener, pool)
                    .await
                    .context("relay")
            })
        }
        None => {
            let cfg = pangaea_agent::AgentConfig::load(&args.config)?;
            let units: Arc<dyn ServiceManager> = if cfg.fake_systemd {
                Arc::new(RecordingServiceManager::default())
            } else {
                Arc::new(Systemctl)
            };
            rt.block_on(async {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
                    let _ = tx.send(true);
                });
                pangaea_agent::run(cfg, units, rx).await
            })?;
            Ok(())
        }
    }
}
