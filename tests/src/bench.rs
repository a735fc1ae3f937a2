//! Support for the benchmarks that run the real controller daemon (`pangaea-ctl serve`) as
//! its own process, so that its memory is measured alone: starting, stopping and killing
//! it by PID, its `/proc` figures, the CLI, and simulated agents that join with a fresh
//! key and CSR the way `pangaea-agent` does.

use anyhow::{Context, bail, ensure};
use pangaea_agent::identity::Identity;
use pangaea_core::pin::SpkiPin;
use pangaea_proto as pb;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of the workspace beside the running benchmark (`target/release/<name>`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable has a directory")?;
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found beside {}: build it first (cargo build --release -p pangaea-controller -p pangaea-agent)",
        exe.display()
    )
}

/// The `pangaea-ctl` to run: `$PANGAEA_CTL` if set (another build, or a wrapper that
/// `exec`s it under a profiler), else the one beside the benchmark.
pub fn ctl_binary() -> anyhow::Result<PathBuf> {
    match std::env::var_os("PANGAEA_CTL") {
        Some(p) => Ok(PathBuf::from(p)),
        None => sibling_binary("pangaea-ctl"),
    }
}

/// Runs `pangaea-ctl --state-dir STATE --config DIR/pangaea.yaml ARGS`; returns its stdout.
pub fn ctl(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(ctl_binary()?)
        .arg("--state-dir")
        .arg(dir.join(".pangaea"))
        .arg("--config")
        .arg(dir.join("pangaea.yaml"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run pangaea-ctl {args:?}"))?;
    ensure!(
        out.status.success(),
        "pangaea-ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `pangaea-ctl serve` for the cluster in `dir`, as its own process.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts `pangaea-ctl serve --listen LISTEN [--agent-http ADDR]` with its log in
    /// `DIR/serve.log`, and waits until it listens and its admin socket answers.
    pub fn start(dir: &Path, listen: &str, agent_http: Option<&str>) -> anyhow::Result<Daemon> {
        let state = dir.join(".pangaea");
        for stale in ["serve.addr", "agent-http.addr"] {
            let _ = std::fs::remove_file(state.join(stale));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))?;
        let mut cmd = Command::new(ctl_binary()?);
        cmd.arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(dir.join("pangaea.yaml"))
            .args(["serve", "--listen", listen]);
        if let Some(a) = agent_http {
            cmd.args(["--agent-http", a]);
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start pangaea-ctl serve")?;
        let mut d = Daemon {
            child,
            dir: dir.to_owned(),
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let state = self.dir.join(".pangaea");
        let started = Instant::now();
        // Another process: its files are the only sign, so poll them.
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "pangaea-ctl serve exited ({status}); see {}",
                    self.dir.join("serve.log").display()
                );
            }
            if state.join("serve.addr").exists()
                && std::os::unix::net::UnixStream::connect(state.join("ctl.sock")).is_ok()
            {
                return Ok(());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "pangaea-ctl serve not ready after 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address agents dial.
    pub fn addr(&self) -> anyhow::Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.join(".pangaea/serve.addr"))?
                .trim()
                .to_owned(),
        )
    }

    /// The address of the agent-binary endpoint.
    pub fn agent_http_addr(&self) -> anyhow::Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.join(".pangaea/agent-http.addr"))?
                .trim()
                .to_owned(),
        )
    }

    /// `VmRSS` and `VmHWM` (peak) of the daemon, in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        memory_kib(self.pid())
    }

    /// File descriptors the daemon has open.
    pub fn open_files(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Kills the daemon with SIGKILL (a crash) and reaps it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops the daemon with SIGTERM and reaps it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        self.child.wait()?;
        Ok(())
    }

    fn signal(&self, s: nix::sys::signal::Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), s)
            .with_context(|| format!("signal pangaea-ctl serve (pid {})", self.pid()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Joins `name` (instance `i-NAME`) at `endpoint` with `token`, as `pangaea-agent` does:
/// a fresh P-256 key and CSR, the controller verified by its CA pin.
pub async fn join(
    endpoint: &str,
    pin: SpkiPin,
    token: &str,
    name: &str,
) -> Result<Identity, tonic::Status> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr_der = params.serialize_request(&key).expect("CSR").der().to_vec();
    let channel = pangaea_core::tls::channel(endpoint, pangaea_agent::identity::pinned_config(pin))
        .expect("endpoint");
    let resp = pb::enrollment_client::EnrollmentClient::new(channel)
        .join(pb::JoinRequest {
            token: token.to_owned(),
            csr_der,
            node_name: name.to_owned(),
            facts: Some(pb::NodeFacts {
                instance_id: format!("i-{name}"),
                hostname: name.to_owned(),
                addresses: vec!["192.0.2.1".into()],
                boot_id: String::new(),
            }),
        })
        .await?
        .into_inner();
    Ok(Identity {
        node_name: resp.node_name,
        key_pem: key.serialize_pem(),
        cert_pem: resp.certificate_pem,
        ca_pem: resp.ca_pem,
        not_before: 0,
        not_after: 0,
    })
}

/// A configuration with every artifact disabled (nothing is downloaded), the given pools.
pub fn cluster_yaml(pools: &str) -> String {
    let mut y = format!("network: {{nodes: 10.200.0.0/16}}\npools:\n{pools}artifacts:\n");
    for a in crate::ARTIFACTS {
        y.push_str(&format!("  - {{name: {a}, disabled: true}}\n"));
    }
    y
}

/// Median and 99th percentile of `v` (sorted here).
pub fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99))
}
