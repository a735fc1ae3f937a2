//! `pangaea-agent --config FILE`: parse arguments, set up logging (journald picks up
//! stderr), build a single-threaded runtime (the agent is mostly idle; one thread keeps its
//! memory small) and run.

use anyhow::Context;
use clap::Parser;
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
    let cfg = pangaea_agent::AgentConfig::load(&args.config)?;
    let units: Arc<dyn ServiceManager> = if cfg.fake_systemd {
        Arc::new(RecordingServiceManager::default())
    } else {
        Arc::new(Systemctl)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build tokio runtime")?;
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
