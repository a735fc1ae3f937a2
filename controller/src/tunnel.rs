//! Reverse SSH tunnels: how cloud nodes reach a controller that runs behind NAT (the
//! operator's laptop), with nothing to configure.
//!
//! The controller listens on this machine's loopback only. Its daemon keeps one `ssh -N -R`
//! to each running node ([`keep`]), so that the node's own `127.0.0.1:7443` (gRPC) and
//! `127.0.0.1:7444` (the agent binary) lead back to the controller; the node's user-data
//! points the agent there. The connection goes out from this machine, so NAT is no
//! obstacle; the nodes need an SSH server reachable from here (a firewall rule for port 22)
//! and the tunnel's key authorized for a user that can do nothing else
//! ([`authorized_key`]: `restrict`, forwarding only to and from those two ports, no shell).
//!
//! While the daemon is down there is no tunnel, and nodes go on from their last assignment
//! as they do whenever the controller is away; the agents reconnect when it is back.
//!
//! The key is the cluster's (`secrets/tunnel_ed25519`, made once with `ssh-keygen`, kept by
//! a backup). A node's host key is trusted on first use and remembered per instance ID
//! (`HostKeyAlias`), so a replaced machine at the same address is a new entry, never a
//! mismatch; a changed key of the same instance is refused by ssh.

use crate::provider::{Provider, TunnelHost};
use crate::state_dir::{AGENT_HTTP_PORT, GRPC_PORT, StateDir};
use anyhow::Context;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The user the tunnels log in as on each node: created by the user-data, no shell.
pub const USER: &str = "pangaea-tunnel";

/// How often the daemon compares its tunnels with the provider's running nodes while one is
/// missing (a node booting, a tunnel closed)...
pub const POLL: Duration = Duration::from_secs(2);

/// ...and while all are open (each look is a cloud API call per zone).
pub const POLL_SETTLED: Duration = Duration::from_secs(10);

/// How often the tunnels' ssh processes are looked at (a closed one is reopened at once,
/// without waiting for the next look at the provider's nodes).
const TICK: Duration = Duration::from_millis(250);

/// The wait before a failed tunnel is tried again, per failure in a row...
const BACKOFF_STEP: Duration = Duration::from_millis(500);

/// ...and the longest: a booting node refuses until its sshd runs, and its agent download
/// waits on the tunnel, so retries stay close.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// A tunnel that stayed up this long counts as working: its next failure starts the
/// backoff from the beginning.
const STABLE: Duration = Duration::from_secs(10);

/// The line of the nodes' `authorized_keys` for the tunnel's public key `public`: it may
/// listen on the node's loopback at the controller's two ports, open nothing but the first
/// of them, and get no shell, terminal or agent.
pub fn authorized_key(public: &str) -> String {
    format!(
        "restrict,port-forwarding,permitlisten=\"127.0.0.1:{GRPC_PORT}\",permitlisten=\"127.0.0.1:{AGENT_HTTP_PORT}\",permitopen=\"127.0.0.1:{GRPC_PORT}\" {}",
        public.trim()
    )
}

/// The public half of the cluster's tunnel key, making the key first if there is none
/// (`ssh-keygen`, ed25519, no passphrase: the daemon uses it unattended).
pub fn ensure_key(state: &StateDir, cluster: &str) -> anyhow::Result<String> {
    let key = state.tunnel_key();
    let public = key.with_extension("pub");
    if !key.is_file() || !public.is_file() {
        let dir = key.parent().expect("the key is in a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&public);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("pangaea-tunnel@{cluster}"))
            .arg("-f")
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .output()
            .context("run ssh-keygen for the tunnels' key (apt-get install openssh-client)")?;
        anyhow::ensure!(
            out.status.success(),
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::read_to_string(&public).with_context(|| format!("read {}", public.display()))
}

/// ssh's arguments for the tunnel to `host`.
pub fn ssh_args(state: &StateDir, host: &TunnelHost) -> Vec<String> {
    let option = |o: &str| ["-o".to_owned(), o.to_owned()];
    let mut args = vec!["-N".to_owned(), "-T".to_owned()];
    for o in [
        "BatchMode=yes".to_owned(),
        "ExitOnForwardFailure=yes".to_owned(),
        "ServerAliveInterval=5".to_owned(),
        "ServerAliveCountMax=3".to_owned(),
        "ConnectTimeout=10".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
        format!(
            "UserKnownHostsFile={}",
            state.tunnel_known_hosts().display()
        ),
        format!("HostKeyAlias=pangaea-{}", host.instance_id),
        "LogLevel=ERROR".to_owned(),
    ] {
        args.extend(option(&o));
    }
    args.push("-i".into());
    args.push(state.tunnel_key().display().to_string());
    for port in [GRPC_PORT, AGENT_HTTP_PORT] {
        args.push("-R".into());
        args.push(format!("127.0.0.1:{port}:127.0.0.1:{port}"));
    }
    args.push(format!("{USER}@{}", host.address));
    args
}

/// One node's tunnel.
struct Tunnel {
    host: TunnelHost,
    child: Option<(tokio::process::Child, Instant)>,
    failures: u32,
    next_try: Instant,
}

impl Tunnel {
    /// Notes the end of its ssh, if it ended.
    fn reap(&mut self) {
        let Some((child, since)) = &mut self.child else {
            return;
        };
        let Ok(Some(status)) = child.try_wait() else {
            return;
        };
        let lasted = since.elapsed();
        if lasted >= STABLE {
            self.failures = 0;
        }
        self.failures += 1;
        let backoff = (BACKOFF_STEP * self.failures).min(MAX_BACKOFF);
        tracing::warn!(node = %self.host.node, address = %self.host.address, %status, ?lasted, retry_in = ?backoff, "tunnel closed");
        self.child = None;
        self.next_try = Instant::now() + backoff;
    }

    /// Starts its ssh when none runs and its backoff is over.
    fn open(&mut self, state: &StateDir) {
        if self.child.is_some() || Instant::now() < self.next_try {
            return;
        }
        match tokio::process::Command::new("ssh")
            .args(ssh_args(state, &self.host))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => {
                tracing::info!(node = %self.host.node, address = %self.host.address, "tunnel opening");
                self.child = Some((child, Instant::now()));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot run ssh for the tunnels (apt-get install openssh-client)");
                self.next_try = Instant::now() + MAX_BACKOFF;
            }
        }
    }
}

/// Keeps a tunnel open to each node `provider` lists ([`Provider::tunnel_hosts`], asked
/// every [`POLL`] while a tunnel is missing, else every [`POLL_SETTLED`]) until
/// `shutdown`: opens the missing ones, opens a closed one again (0.5 s later, half a second
/// more each time it fails again, at most 3 s), and closes those of nodes gone or replaced.
/// Every ssh ends with the daemon.
pub async fn keep(
    provider: Box<dyn Provider>,
    state: StateDir,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tunnels: BTreeMap<String, Tunnel> = BTreeMap::new();
    let mut next_look = Instant::now();
    loop {
        if Instant::now() >= next_look {
            look(provider.as_ref(), &mut tunnels).await;
            let settled = !tunnels.is_empty() && tunnels.values().all(|t| t.child.is_some());
            next_look = Instant::now() + if settled { POLL_SETTLED } else { POLL };
        }
        for t in tunnels.values_mut() {
            t.reap();
            t.open(&state);
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Compares `tunnels` with the provider's running nodes: adds the new ones, drops (and so
/// kills) those of nodes gone or replaced.
async fn look(provider: &dyn Provider, tunnels: &mut BTreeMap<String, Tunnel>) {
    let hosts = match provider.tunnel_hosts().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "tunnels: cannot list the nodes");
            return;
        }
    };
    // Keyed by instance: a replaced machine gets a tunnel of its own.
    let wanted: BTreeMap<String, TunnelHost> = hosts
        .into_iter()
        .map(|h| (format!("{}/{}", h.node, h.instance_id), h))
        .collect();
    tunnels.retain(|k, t| {
        let keep = wanted.get(k).is_some_and(|h| *h == t.host);
        if !keep {
            tracing::info!(node = %t.host.node, "tunnel closed: the node is gone or stopped");
        }
        keep
    });
    for (k, h) in wanted {
        tunnels.entry(k).or_insert_with(|| Tunnel {
            host: h,
            child: None,
            failures: 0,
            next_try: Instant::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_may_only_forward_the_controllers_ports() {
        assert_eq!(
            authorized_key("ssh-ed25519 AAAAC3Nz pangaea-tunnel@demo\n"),
            "restrict,port-forwarding,permitlisten=\"127.0.0.1:7443\",permitlisten=\"127.0.0.1:7444\",permitopen=\"127.0.0.1:7443\" ssh-ed25519 AAAAC3Nz pangaea-tunnel@demo"
        );
    }

    #[test]
    fn ssh_forwards_both_ports_to_loopback_and_remembers_hosts_per_instance() {
        let state = StateDir::new("/c/.pangaea");
        let args = ssh_args(
            &state,
            &TunnelHost {
                node: pangaea_core::NodeName::try_from("node-1").unwrap(),
                instance_id: "4711".into(),
                address: "203.0.113.9".parse().unwrap(),
            },
        );
        let joined = args.join(" ");
        assert!(joined.starts_with("-N -T "), "{joined}");
        for part in [
            "-R 127.0.0.1:7443:127.0.0.1:7443 -R 127.0.0.1:7444:127.0.0.1:7444 pangaea-tunnel@203.0.113.9",
            "-o HostKeyAlias=pangaea-4711",
            "-o UserKnownHostsFile=/c/.pangaea/tunnel_known_hosts",
            "-i /c/.pangaea/secrets/tunnel_ed25519",
            "-o ExitOnForwardFailure=yes",
            "-o BatchMode=yes",
        ] {
            assert!(joined.contains(part), "{part} in {joined}");
        }
    }

    #[test]
    fn the_key_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join(".pangaea"));
        let first = ensure_key(&state, "demo").unwrap();
        assert!(first.starts_with("ssh-ed25519 "), "{first}");
        assert!(first.trim_end().ends_with("pangaea-tunnel@demo"), "{first}");
        assert_eq!(ensure_key(&state, "demo").unwrap(), first);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(state.tunnel_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}
