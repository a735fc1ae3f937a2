//! The controller daemon of a cluster: `pangaea-ctl serve` started in the background by
//! `up` (its PID, address and log in the state directory), found through its admin socket,
//! and stopped by `down`.

use crate::provider::ControllerEndpoint;
use crate::state_dir::{AGENT_HTTP_PORT, GRPC_PORT, StateDir};
use anyhow::{Context, bail};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the controller daemon answers on its admin socket.
pub async fn is_up(state: &StateDir) -> bool {
    tokio::net::UnixStream::connect(state.socket())
        .await
        .is_ok()
}

/// Starts `pangaea-ctl serve` for the cluster unless it runs, listening where `endpoint`
/// says, and waits until it answers (30 s at most).
pub async fn ensure(
    state: &StateDir,
    config: &Path,
    endpoint: &ControllerEndpoint,
    progress: crate::provider::Progress<'_>,
) -> anyhow::Result<()> {
    if is_up(state).await {
        return Ok(());
    }
    let log_path = state.serve_log();
    progress(&format!(
        "starting the controller daemon on {}:{GRPC_PORT} (log: {})",
        endpoint.listen,
        log_path.display()
    ));
    std::fs::create_dir_all(state.path())
        .with_context(|| format!("create {}", state.path().display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut serve = Command::new(std::env::current_exe()?);
    serve
        .arg("--state-dir")
        .arg(state.path())
        .arg("--config")
        .arg(config)
        .args([
            "serve",
            "--listen",
            &format!("{}:{GRPC_PORT}", endpoint.listen),
            "--advertise",
            &endpoint.advertise.to_string(),
            "--agent-http",
            &format!("{}:{AGENT_HTTP_PORT}", endpoint.listen),
        ]);
    if endpoint.tunnel {
        serve.arg("--tunnel");
    }
    serve
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: an interrupted `up` does not take the daemon down.
        .process_group(0)
        .spawn()
        .context("start `pangaea-ctl serve`")?;
    let start = Instant::now();
    while !is_up(state).await {
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the controller daemon did not start within 30 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Stops the controller daemon recorded in `serve.pid`, waiting for it to exit.
pub async fn stop(state: &StateDir, progress: crate::provider::Progress<'_>) {
    let Some(pid) = std::fs::read_to_string(state.serve_pid())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        return;
    }
    progress("stopping the controller daemon");
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() || !is_up(state).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
