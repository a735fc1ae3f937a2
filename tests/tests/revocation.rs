//! Hardening #3 (revocation), against a real etcd on loopback: the etcd member's files are
//! the ones a real agent applied from the controller's compiled assignment, and etcd reads
//! the revocation list the agent keeps up to date. When a node is removed, its etcd client
//! certificate is refused within 10 s, without restarting etcd; another node's still works.

use pangaea_controller::rules;
use pangaea_tests::{ARTIFACTS, TestAgent, TestController, eventually};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// A real etcd serving node-1's certificates on loopback; killed when dropped.
struct Etcd {
    child: Child,
    endpoint: String,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd(pki: &Path) -> Etcd {
    assert!(
        Path::new("/usr/bin/etcd").is_file(),
        "/usr/bin/etcd not found: apt-get install etcd-server"
    );
    let data = tempfile::tempdir().unwrap();
    let (client, peer) = (pangaea_tests::free_port(), pangaea_tests::free_port());
    let endpoint = format!("https://127.0.0.1:{client}");
    let log = data.path().join("etcd.log");
    let f = |name: &str| pki.join(name).display().to_string();
    let child = Command::new("/usr/bin/etcd")
        .arg(format!("--data-dir={}", data.path().join("data").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls=https://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=https://127.0.0.1:{peer}"
        ))
        .arg(format!(
            "--initial-cluster=default=https://127.0.0.1:{peer}"
        ))
        .arg("--client-cert-auth=true")
        .arg(format!("--trusted-ca-file={}", f("ca.crt")))
        .arg(format!("--cert-file={}", f("server.crt")))
        .arg(format!("--key-file={}", f("server.key")))
        .arg(format!("--client-crl-file={}", f("crl.pem")))
        .arg("--peer-client-cert-auth=true")
        .arg(format!("--peer-trusted-ca-file={}", f("ca.crt")))
        .arg(format!("--peer-cert-file={}", f("peer.crt")))
        .arg(format!("--peer-key-file={}", f("peer.key")))
        .arg(format!("--peer-crl-file={}", f("crl.pem")))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start etcd");
    Etcd {
        child,
        endpoint,
        log,
        _data: data,
    }
}

/// `etcdctl get` with client certificate `cert`/`key`, trusting `ca`.
fn etcdctl(e: &Etcd, ca: &Path, cert: &Path, key: &Path) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &e.endpoint, "--dial-timeout=2s"])
        .args(["--command-timeout=3s", "--cacert"])
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["get", "probe"])
        .output()
        .expect("etcdctl (apt-get install etcd-client)")
}

/// Copies a node's etcd client certificate out of its agent's root, as an attacker who
/// kept it would.
fn keep(agent: &TestAgent, to: &Path, name: &str) -> (PathBuf, PathBuf) {
    let from = |f: &str| agent.root_path(&format!("/etc/kubernetes/pki/{f}"));
    let (cert, key) = (
        to.join(format!("{name}.crt")),
        to.join(format!("{name}.key")),
    );
    std::fs::copy(from("apiserver-etcd-client.crt"), &cert)
        .expect("a control-plane node holds apiserver-etcd-client.crt");
    std::fs::copy(from("apiserver-etcd-client.key"), &key).unwrap();
    (cert, key)
}

/// Hardening #3: a removed node's `apiserver-etcd-client` certificate is refused by a
/// running etcd member within 10 s of `node remove`, through the revocation list its agent
/// receives; the member is not restarted; a remaining node's certificate still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_etcd_client_certificate_is_refused_within_10_s() {
    // The default cluster, with no artifact to download (nothing is reachable here).
    let ctl = TestController::start_compiled(|state| {
        let disabled: String = ARTIFACTS
            .iter()
            .map(|n| format!("  - {{name: {n}, disabled: true}}\n"))
            .collect();
        let config = format!("name: revocation\nartifacts:\n{disabled}");
        std::fs::write(state.parent().unwrap().join("pangaea.yaml"), config).unwrap();
    })
    .await;
    let mut agents = Vec::new();
    for name in ["node-1", "node-3"] {
        let (d, cfg) = ctl.agent_config(name, &ctl.token(None).await);
        agents.push(TestAgent::spawn(d, cfg));
    }
    let crl = agents[0].root_path("/etc/etcd/pki/crl.pem");
    eventually("both nodes to apply their assignment", T, || {
        agents.iter().all(|a| {
            a.root_path("/etc/kubernetes/pki/apiserver-etcd-client.key")
                .exists()
        }) && crl.exists()
    })
    .await;
    let kept = tempfile::tempdir().unwrap();
    let (cert1, key1) = keep(&agents[0], kept.path(), "node-1");
    let (cert3, key3) = keep(&agents[1], kept.path(), "node-3");
    let pki = agents[0].root_path("/etc/etcd/pki");
    let ca = pki.join("ca.crt");
    let e = etcd(&pki);
    let restarts = |a: &TestAgent| {
        let calls = a.units.calls();
        calls
            .iter()
            .filter(|c| c.starts_with("restart etcd.service"))
            .count()
    };
    let etcd_restarts = restarts(&agents[0]);

    let ok = |cert: &Path, key: &Path| etcdctl(&e, &ca, cert, key).status.success();
    let step = Duration::from_millis(200);
    let before = format!(
        "etcd to accept node-3's certificate before its removal (etcd's log: {})",
        e.log.display()
    );
    tokio::task::block_in_place(|| {
        pangaea_tests::poll_until(&before, T, step, || ok(&cert3, &key3).then_some(()))
    });

    rules::remove(&ctl.controller, "node-3").await.unwrap();
    let removed = Instant::now();
    // The time a refused attempt started: the attempt itself waits for its timeouts.
    let refused_after = tokio::task::block_in_place(|| {
        pangaea_tests::poll_until(
            "etcd to refuse node-3's etcd client certificate after its removal",
            Duration::from_secs(10),
            step,
            || {
                let tried = removed.elapsed();
                (!ok(&cert3, &key3)).then_some(tried)
            },
        )
    });
    eprintln!("refused {refused_after:?} after removal");
    let log = std::fs::read_to_string(&e.log).unwrap();
    assert!(
        log.contains("revoked"),
        "etcd refused it as revoked, not for another reason: {log}"
    );
    assert!(
        tokio::task::block_in_place(|| ok(&cert1, &key1)),
        "node-1's own certificate still works"
    );
    let applied = |name: &str| {
        let nodes = ctl.controller.nodes().unwrap();
        let n = nodes.iter().find(|n| n.record.name == name).unwrap();
        n.last_report
            .as_ref()
            .is_some_and(|(_, r)| r.applied_revision == n.assigned_revision)
    };
    eventually("node-1 to report the new assignment applied", T, || {
        applied("node-1")
    })
    .await;
    assert_eq!(
        restarts(&agents[0]),
        etcd_restarts,
        "the new revocation list restarted etcd"
    );
}
