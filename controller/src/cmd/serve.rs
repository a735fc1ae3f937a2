//! `pangaea-ctl serve`: the controller daemon. Agents on the gRPC port (mutual TLS after
//! the join), operator commands on the admin socket, and optionally the agent binary over
//! plain HTTP for booting nodes (they check its digest).

use super::{Ctx, print_warnings};
use crate::compile::CompilerPlanner;
use crate::{Controller, ControllerConfig};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The listener of the operator's API load balancer: on loopback, at the port it had
/// before (the admin kubeconfig names it) when that is free, else at a new one.
async fn bind_api_proxy(
    state: &crate::state_dir::StateDir,
) -> anyhow::Result<tokio::net::TcpListener> {
    let before: Option<SocketAddr> = std::fs::read_to_string(state.api_proxy_addr())
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if let Some(addr) = before {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the API proxy's port is taken; a new one is used (`up` rewrites the admin kubeconfig)")
            }
        }
    }
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("listen for the operator's API connections")
}

/// Relays the operator's API connections to the cluster's API servers
/// ([`pangaea_core::relay`]), following the configuration's control-plane nodes as the
/// planner reloads it.
async fn serve_api_proxy(listener: tokio::net::TcpListener, planner: Arc<CompilerPlanner>) {
    use pangaea_core::relay::{CHECK_EVERY, Pool, serve_with};
    let pool = Arc::new(std::sync::RwLock::new(Pool::new(
        planner.current().api_servers(),
    )));
    let current = {
        let pool = pool.clone();
        move || {
            pool.read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    };
    let checked = current.clone();
    tokio::spawn(async move {
        loop {
            let servers = planner.current().api_servers();
            if checked().addrs() != servers {
                tracing::info!(?servers, "API servers changed");
                *pool
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Pool::new(servers);
            }
            checked().check().await;
            tokio::time::sleep(CHECK_EVERY).await;
        }
    });
    if let Err(e) = serve_with(listener, current).await {
        tracing::error!(error = %e, "the operator's API load balancer stopped");
    }
}

/// Serves until SIGTERM or Ctrl-C; with `tunnel`, keeping a reverse SSH tunnel to each of
/// the provider's running nodes ([`crate::tunnel::keep`]).
pub async fn run(
    ctx: &Ctx,
    listen: SocketAddr,
    advertise: Vec<String>,
    agent_http: Option<SocketAddr>,
    tunnel: bool,
) -> anyhow::Result<()> {
    let state = &ctx.state;
    let mut config = ControllerConfig::new(state.path());
    config.advertise = advertise;
    if !listen.ip().is_unspecified() {
        config.advertise.push(listen.ip().to_string());
    }
    // Every connection holds a file descriptor: take what the hard limit allows, and keep
    // the connection cap within it, so that the store and downloads never meet EMFILE.
    let need = config.limits.file_descriptors();
    match crate::fdlimit::raise_nofile() {
        Ok(nofile) if nofile >= need => tracing::debug!(nofile, need, "file descriptor limit"),
        Ok(nofile) => {
            config.limits = config.limits.fitted_to(nofile);
            tracing::warn!(
                nofile,
                need,
                max_connections = config.limits.accept.max_connections,
                "the file descriptor limit (RLIMIT_NOFILE hard limit) is below what the \
                 controller needs; agent connections are capped lower (raise it with \
                 `ulimit -Hn` or LimitNOFILE=)"
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE"),
    }
    let compilation = ctx.compilation()?;
    print_warnings(&compilation.loaded);
    let tunnels = if tunnel {
        Some(ctx.provider(&compilation)?)
    } else {
        None
    };
    let planner = Arc::new(CompilerPlanner::new(&ctx.config, compilation));
    let controller = Controller::open(config, Some(planner.clone()))?;
    let listener = crate::service::bind(listen).with_context(|| format!("listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let write = |path: std::path::PathBuf, text: String| {
        pangaea_core::fsutil::atomic_write(&path, text.as_bytes(), 0o600)
            .with_context(|| format!("write {}", path.display()))
    };
    let agent_http = match agent_http {
        Some(addr) => Some(
            crate::service::bind(addr)
                .with_context(|| format!("listen on {addr} for agent downloads"))?,
        ),
        None => None,
    };
    let api_proxy = bind_api_proxy(state).await?;
    // Written before serve.addr, which tells that the daemon is listening.
    if let Some(l) = &agent_http {
        write(state.agent_http_addr(), l.local_addr()?.to_string())?;
    }
    write(state.api_proxy_addr(), api_proxy.local_addr()?.to_string())?;
    tokio::spawn(serve_api_proxy(api_proxy, planner));
    write(state.serve_pid(), std::process::id().to_string())?;
    write(state.serve_addr(), addr.to_string())?;
    tracing::info!(%addr, pin = %controller.pki().controller_pin(), state = %state.path().display(), "controller serving");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let admin = tokio::spawn(crate::admin::serve(controller.clone(), stop(rx.clone())));
    tokio::spawn(crate::rules::rotate(
        controller.clone(),
        crate::rules::Rotation::default(),
        stop(rx.clone()),
    ));
    if let Some(provider) = tunnels {
        tokio::spawn(crate::tunnel::keep(
            provider,
            state.clone(),
            stop(rx.clone()),
        ));
    }
    if let Some(l) = agent_http {
        tokio::spawn(crate::agent_http::serve(
            l,
            crate::agent_http::default_binary(),
        ));
    }
    let agents = crate::service::serve(&controller, listener, stop(rx));
    tokio::pin!(agents);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = &mut agents => r?,
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
    }
    let _ = tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    let _ = std::fs::remove_file(state.serve_pid());
    Ok(())
}
