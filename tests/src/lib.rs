//! Test support: an in-process controller on loopback with temporary state, and agents
//! running in-process with temporary roots and a recording service manager.

use pangaea_agent::AgentConfig;
use pangaea_agent::command::RecordingCommandRunner;
use pangaea_agent::service_manager::RecordingServiceManager;
use pangaea_controller::assign::{Plan, PlanError, Planner};
use pangaea_controller::records::NodeRecord;
use pangaea_controller::{Controller, ControllerConfig};
use pangaea_proto as pb;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub mod bench;
pub mod gce_api;
pub mod gce_cloud;
pub mod http_fixture;
pub mod kube_api;

pub fn init() {
    pangaea_core::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A planner whose per-node files and units the test sets.
#[derive(Default)]
pub struct TestPlanner {
    pub plans: Mutex<BTreeMap<String, Plan>>,
}

impl TestPlanner {
    pub fn set(&self, node: &str, plan: Plan) {
        self.plans.lock().unwrap().insert(node.to_owned(), plan);
    }
}

impl Planner for TestPlanner {
    fn plan(&self, node: &NodeRecord) -> Result<Plan, PlanError> {
        let mut plan = self
            .plans
            .lock()
            .unwrap()
            .get(node.name.as_str())
            .cloned()
            .unwrap_or_default();
        plan.files
            .push(file("/etc/pangaea/instance-id", &node.instance_id));
        Ok(plan)
    }
}

pub fn file(path: &str, content: &str) -> pb::File {
    pb::File {
        path: path.into(),
        mode: 0o644,
        owner: String::new(),
        content: content.as_bytes().to_vec(),
    }
}

pub fn unit(name: &str, restart_on: &[&str]) -> pb::Unit {
    pb::Unit {
        name: name.into(),
        enable: true,
        restart_on_change: restart_on.iter().map(|s| s.to_string()).collect(),
    }
}

pub struct TestController {
    pub dir: tempfile::TempDir,
    pub controller: Arc<Controller>,
    pub planner: Arc<TestPlanner>,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TestController {
    pub async fn start() -> TestController {
        Self::start_with(|_| {}).await
    }

    /// Starts a controller whose configuration `tweak` may adjust.
    pub async fn start_with(tweak: impl FnOnce(&mut ControllerConfig)) -> TestController {
        init();
        let dir = tempfile::tempdir().unwrap();
        let planner = Arc::new(TestPlanner::default());
        let mut config = ControllerConfig::new(dir.path().join(".pangaea"));
        tweak(&mut config);
        let controller = Controller::open(config, Some(planner.clone())).unwrap();
        Self::serve(dir, controller, planner).await
    }

    /// Starts a controller that plans with the real compiler, for the default cluster
    /// (`node-1`..`node-3`), after `prepare` had its way with the empty state directory.
    pub async fn start_compiled(prepare: impl FnOnce(&std::path::Path)) -> TestController {
        Self::start_compiled_rotating(prepare, None).await
    }

    /// [`TestController::start_compiled`] with node certificates of `rotation.0` lifetime,
    /// re-planned at the pace `rotation.1` (the daemon's rotation loop).
    pub async fn start_compiled_rotating(
        prepare: impl FnOnce(&std::path::Path),
        rotation: Option<(Duration, pangaea_controller::rules::Rotation)>,
    ) -> TestController {
        let (leaf, pace) = (rotation.map(|r| r.0), rotation.map(|r| r.1));
        Self::start_compiled_with(prepare, leaf, pace, |_| {}).await
    }

    /// [`TestController::start_compiled`] with cluster certificates of `leaf` lifetime, the
    /// rotation loop at `pace` if given, and a controller configuration `tweak` may adjust
    /// (the agents' certificate lifetime).
    pub async fn start_compiled_with(
        prepare: impl FnOnce(&std::path::Path),
        leaf: Option<Duration>,
        pace: Option<pangaea_controller::rules::Rotation>,
        tweak: impl FnOnce(&mut ControllerConfig),
    ) -> TestController {
        init();
        let dir = tempfile::tempdir().unwrap();
        let state = pangaea_controller::state_dir::StateDir::new(dir.path().join(".pangaea"));
        std::fs::create_dir_all(state.path()).unwrap();
        prepare(state.path());
        let mut compilation = pangaea_controller::compile::Compilation::load(
            &dir.path().join("pangaea.yaml"),
            &state,
        )
        .unwrap();
        if let Some(lifetime) = leaf {
            compilation.leaf_lifetime = lifetime;
        }
        let mut config = ControllerConfig::new(state.path());
        tweak(&mut config);
        let controller = Controller::open(
            config,
            Some(Arc::new(pangaea_controller::compile::CompilerPlanner::new(
                &dir.path().join("pangaea.yaml"),
                compilation,
            ))),
        )
        .unwrap();
        if let Some(pace) = pace {
            tokio::spawn(pangaea_controller::rules::rotate(
                controller.clone(),
                pace,
                std::future::pending(),
            ));
        }
        Self::serve(dir, controller, Arc::new(TestPlanner::default())).await
    }

    async fn serve(
        dir: tempfile::TempDir,
        controller: Arc<Controller>,
        planner: Arc<TestPlanner>,
    ) -> TestController {
        let listener = pangaea_controller::service::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut rx) = watch::channel(false);
        let c = controller.clone();
        let task = tokio::spawn(async move {
            pangaea_controller::service::serve(&c, listener, async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
            .unwrap();
        });
        TestController {
            dir,
            controller,
            planner,
            addr,
            stop,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The controller's record of node `name` (which must exist).
    pub fn record(&self, name: &str) -> NodeRecord {
        self.controller
            .node(name)
            .unwrap()
            .unwrap_or_else(|| panic!("no record of {name}"))
    }

    /// Waits until node `name`'s agent certificate has expired (a node kept off longer
    /// than it lives); returns its end.
    pub async fn identity_expired(&self, name: &str, timeout: Duration) -> i64 {
        eventually(
            &format!("{name}'s agent certificate to expire"),
            timeout,
            || self.record(name).cert_not_after < pangaea_controller::records::now(),
        )
        .await;
        self.record(name).cert_not_after
    }

    /// Waits until node `name` joined again, with a certificate that ends after `expired`;
    /// returns its record.
    pub async fn joined_again(&self, name: &str, expired: i64, timeout: Duration) -> NodeRecord {
        eventually(
            &format!("{name} to join again with a new certificate"),
            timeout,
            || self.record(name).cert_not_after > expired,
        )
        .await;
        self.record(name)
    }

    /// The state directory (`.pangaea`).
    pub fn state_dir(&self) -> pangaea_controller::state_dir::StateDir {
        self.controller.config().state_dir.clone()
    }

    /// Also serves the admin socket (`.pangaea/ctl.sock`), as `pangaea-ctl serve` does, so
    /// that operator commands reach this controller; returns once it accepts connections.
    pub async fn serve_admin(&self) {
        let mut rx = self.stop.subscribe();
        tokio::spawn(pangaea_controller::admin::serve(
            self.controller.clone(),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        ));
        let socket = self.state_dir().socket();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "admin socket {} not accepting",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn token(&self, node: Option<&str>) -> String {
        let spec = pangaea_controller::tokens::NewToken {
            node: node.map(str::to_owned),
            ..Default::default()
        };
        self.controller.create_token(spec).await.unwrap().0.expose()
    }

    /// A configuration for a fresh agent with its own temporary directories.
    pub fn agent_config(&self, name: &str, token: &str) -> (tempfile::TempDir, AgentConfig) {
        agent_config(
            &self.endpoint(),
            self.controller.pki().controller_pin(),
            name,
            token,
        )
    }

    /// Stops serving (the controller's state stays open).
    pub async fn stop(self) -> (tempfile::TempDir, Arc<Controller>) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        (self.dir, self.controller)
    }
}

/// Every artifact of the default artifact set: a configuration that disables them all
/// needs no download (nothing is reachable from the tests).
pub const ARTIFACTS: [&str; 11] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "containerd",
    "runc",
    "cni-plugins",
    "crictl",
];

#[test]
fn artifacts_names_every_entry_of_the_default_set() {
    let set = pangaea_compiler::artifact_set::ArtifactSet::defaults();
    let mut names: Vec<&str> = set.artifacts.iter().map(|a| a.name.as_str()).collect();
    let mut listed = ARTIFACTS.to_vec();
    names.sort_unstable();
    listed.sort_unstable();
    assert_eq!(
        listed, names,
        "ARTIFACTS must follow compiler/artifacts.yaml"
    );
}

/// `artifacts:` with every artifact of [`ARTIFACTS`] disabled: appended to a configuration,
/// `up` needs no download and no package.
pub fn all_artifacts_disabled() -> String {
    let entries: String = ARTIFACTS
        .iter()
        .map(|n| format!("  - {{name: {n}, disabled: true}}\n"))
        .collect();
    format!("artifacts:\n{entries}")
}

/// What the end-to-end tests on real nodes need on this host: root, systemd-nspawn,
/// debootstrap, etcdctl and Debian's etcd (the one artifact they deliver); a missing one is
/// an error naming its install command.
pub fn require_node_host() {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "this test needs root (CI runs as root): systemd-nspawn, network namespaces"
    );
    for (tool, install) in [
        ("systemd-nspawn", "apt-get install systemd-container"),
        ("debootstrap", "apt-get install debootstrap"),
        ("etcdctl", "apt-get install etcd-client"),
    ] {
        let found = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .unwrap()
            .status
            .success();
        assert!(found, "{tool} not found: {install}");
    }
    assert!(
        std::path::Path::new("/usr/bin/etcd").is_file(),
        "/usr/bin/etcd not found: apt-get install etcd-server"
    );
}

/// `pangaea.yaml` for cluster `name` on node network `network` with Debian's etcd
/// (`/usr/bin/etcd`, by its digest) as the only artifact, every other one disabled (none
/// can be fetched here); `extra` is appended (a `provider:` mapping).
pub fn etcd_only_config(name: &str, network: &str, extra: &str) -> String {
    use sha2::Digest;
    let etcd = std::fs::read("/usr/bin/etcd").expect("read /usr/bin/etcd");
    let digest = hex_lower(&sha2::Sha256::digest(&etcd));
    let disabled: String = ARTIFACTS
        .iter()
        .filter(|n| **n != "etcd")
        .map(|n| format!("  - {{name: {n}, disabled: true}}\n"))
        .collect();
    format!(
        "name: {name}\nnetwork:\n  nodes: {network}\n{extra}artifacts:\n  - name: etcd\n    url: file:///usr/bin/etcd\n    digest: sha256:{digest}\n    members: {{}}\n{disabled}"
    )
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prints the last `lines` lines of each log (a failing test's evidence, before cleanup
/// deletes it).
pub fn print_log_tails(logs: &[PathBuf], lines: usize) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        eprintln!(
            "--- {} (last lines)\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// A configuration for a fresh agent of node `name` (instance `i-NAME`) that joins the
/// controller at `endpoint` with `token`, with its own temporary directories.
pub fn agent_config(
    endpoint: &str,
    pin: pangaea_core::pin::SpkiPin,
    name: &str,
    token: &str,
) -> (tempfile::TempDir, AgentConfig) {
    let d = tempfile::tempdir().unwrap();
    let token_file = d.path().join("bootstrap-token");
    std::fs::write(&token_file, token).unwrap();
    let cfg = AgentConfig {
        controller: vec![endpoint.to_owned()],
        ca_pin: pin,
        token_file,
        recovery_token_file: d.path().join("seed/recovery-token"),
        metadata_server: None,
        node_name: Some(name.to_owned()),
        instance_id: Some(format!("i-{name}")),
        state_dir: d.path().join("state"),
        root: d.path().join("root"),
        report_interval_seconds: 1,
        fake_systemd: true,
    };
    (d, cfg)
}

pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub cfg: AgentConfig,
    pub units: Arc<RecordingServiceManager>,
    /// The programs its jobs ran (`ctr`), answered by the test.
    pub commands: Arc<RecordingCommandRunner>,
    stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), pangaea_agent::run::AgentError>>,
}

impl TestAgent {
    pub fn spawn(dir: tempfile::TempDir, cfg: AgentConfig) -> TestAgent {
        let units = Arc::new(RecordingServiceManager::default());
        let commands = Arc::new(RecordingCommandRunner::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(pangaea_agent::run_with(
            cfg.clone(),
            units.clone(),
            commands.clone(),
            rx,
        ));
        TestAgent {
            dir,
            cfg,
            units,
            commands,
            stop,
            task,
        }
    }

    pub fn root_path(&self, path: &str) -> PathBuf {
        self.cfg.root.join(path.trim_start_matches('/'))
    }

    /// Stops the agent at once, like a power cut (its files stay for the next boot).
    pub fn power_off(self) -> (tempfile::TempDir, AgentConfig) {
        let _ = self.stop.send(true);
        self.task.abort();
        (self.dir, self.cfg)
    }

    pub async fn shutdown(self) -> (tempfile::TempDir, AgentConfig) {
        let _ = self.stop.send(true);
        self.task.await.unwrap().unwrap();
        (self.dir, self.cfg)
    }
}

/// `pangaea-ctl` (at `bin`) run as an operator would, in the cluster directory `dir`, with
/// plain output, kubectl's configuration in `dir/kubeconfig` and the host's state (cluster
/// registry, log file) in `dir/host` (never the host's own).
pub fn run_ctl(
    bin: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(bin)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env("PANGAEA_HOST_STATE", dir.join("host"))
        .args(args)
        .output()
        .unwrap()
}

/// [`run_ctl`] that must succeed: its stdout and stderr together, or a failure naming the
/// command and showing them.
pub fn ctl_ok(bin: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> String {
    let out = run_ctl(bin, dir, args);
    assert!(
        out.status.success(),
        "pangaea-ctl {}: {}",
        args.join(" "),
        output_text(&out)
    );
    output_text(&out)
}

/// `pangaea-ctl status -o json` of the cluster in `dir`, parsed.
pub fn ctl_status(
    bin: &std::path::Path,
    dir: &std::path::Path,
) -> Vec<pangaea_controller::status::NodeStatus> {
    let out = run_ctl(bin, dir, &["status", "-o", "json"]);
    assert!(out.status.success(), "status: {}", output_text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status -o json: {e}: {}", output_text(&out)))
}

/// Where `tool` is on this process's PATH; a missing one fails the test naming it.
pub fn which(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not found on PATH (.ci/run installs it)"))
}

/// A TCP port free on loopback now (for a real server the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind loopback")
        .local_addr()
        .expect("local address")
        .port()
}

/// A command's stdout then stderr, as text.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One of the workspace's binaries, next to the test executable (`target/<profile>/deps/x`),
/// which `cargo test --workspace` builds.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("test executable is in target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first: cargo build --workspace",
        path.display()
    );
    path
}

/// Every file below `dir` (not following links).
pub fn files_below(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The paths of `paths` that user `nobody` can open for reading (needs root; switches
/// with `setpriv` from util-linux).
pub fn readable_by_nobody(paths: &[PathBuf]) -> Vec<String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "sh",
            "-c",
            "for f; do if cat \"$f\" >/dev/null 2>&1; then echo \"$f\"; fi; done",
            "sh",
        ])
        .args(paths)
        .output()
        .expect("setpriv not found: apt-get install util-linux");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Calls `f` every `step` until it returns `Some`, failing with `what` after `timeout`.
/// For tests that wait on other processes (synchronous).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(step);
    }
}

/// A node-service client presenting `cert_pem`/`key_pem`, trusting the controller CA.
pub fn mtls_client(
    ctl: &TestController,
    key_pem: &str,
    cert_pem: &str,
) -> pb::node_service_client::NodeServiceClient<tonic::transport::Channel> {
    pb::node_service_client::NodeServiceClient::new(mtls_channel(ctl, key_pem, cert_pem))
}

/// A channel presenting `cert_pem`/`key_pem`, trusting the controller CA.
pub fn mtls_channel(
    ctl: &TestController,
    key_pem: &str,
    cert_pem: &str,
) -> tonic::transport::Channel {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(
            ctl.controller
                .pki()
                .ca(pangaea_controller::pki::CaKind::Controller)
                .cert_der
                .clone(),
        ))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    pangaea_core::tls::channel(&ctl.endpoint(), Arc::new(cfg)).unwrap()
}

/// Polls `check` every 20 ms until it returns true, failing after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The assignments the crash test alternates between: revision parity picks the version.
pub mod crash {
    use pangaea_proto as pb;

    pub const FILES: usize = 6;
    pub const SIZE: usize = 512 * 1024;

    pub fn content(i: usize, version: u8) -> Vec<u8> {
        let mut v = vec![version; SIZE];
        v[..8].copy_from_slice(&(i as u64).to_be_bytes());
        v
    }

    pub fn assignment(revision: u64) -> pb::Assignment {
        let version = if revision % 2 == 1 { b'a' } else { b'b' };
        pb::Assignment {
            node_name: "crash".into(),
            revision,
            files: (0..FILES)
                .map(|i| pb::File {
                    path: format!("/etc/crash/f{i}"),
                    mode: 0o644,
                    owner: String::new(),
                    content: content(i, version),
                })
                .collect(),
            ..Default::default()
        }
    }
}
