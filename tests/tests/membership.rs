//! Lifecycle (node remove): the controller's etcd membership client against a real
//! three-member etcd cluster with mutual TLS on loopback. The survey sees the members and
//! their leader; 3 → 2 is refused without `--force`; a pending learner blocks even a forced
//! removal; the removal acts on the member ID found by peer URL, and doing it again is a
//! no-op; the cluster keeps serving writes after it. Growing (node add): a learner is
//! added once, one at a time, only while every member answers, and promoted only once it
//! has caught up.

use pangaea_controller::membership::{self, Addition, Etcd, Promoted, Removal, Removed};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a certificate for 127.0.0.1 (server and client: etcd's peers use it both
    /// ways) and a client certificate for the operator.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test etcd CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).unwrap();
        for (name, server) in [("member", true), ("operator", false)] {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            if server {
                p.extended_key_usages
                    .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
            }
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn client(&self) -> Etcd {
        let read = |f: &str| std::fs::read(self.path(f)).unwrap();
        Etcd::new(
            &read("ca.crt"),
            &read("operator.crt"),
            &read("operator.key"),
        )
        .unwrap()
    }
}

/// Three etcd members on loopback; killed when dropped.
struct Cluster {
    children: Vec<Child>,
    _data: tempfile::TempDir,
    clients: Vec<String>,
    peers: Vec<String>,
}

impl Cluster {
    /// Kills member `i` (a power cut).
    fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for i in 0..self.children.len() {
                let log = self._data.path().join(format!("m{i}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!("--- m{i}.log (last lines)");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn start(pki: &Pki) -> Cluster {
    assert!(
        Path::new("/usr/bin/etcd").is_file(),
        "/usr/bin/etcd not found: apt-get install etcd-server"
    );
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (pangaea_tests::free_port(), pangaea_tests::free_port()))
        .collect();
    let clients: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("https://127.0.0.1:{c}"))
        .collect();
    let peers: Vec<String> = ports
        .iter()
        .map(|(_, p)| format!("https://127.0.0.1:{p}"))
        .collect();
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}={p}"))
        .collect();
    let children = (0..3)
        .map(|i| {
            spawn_member(
                pki,
                data.path(),
                i,
                (&clients[i], &peers[i]),
                &initial.join(","),
                "new",
            )
        })
        .collect();
    Cluster {
        children,
        _data: data,
        clients,
        peers,
    }
}

/// Starts etcd member `m{i}` with its data and log under `data`.
fn spawn_member(
    pki: &Pki,
    data: &Path,
    i: usize,
    (client, peer): (&str, &str),
    initial_cluster: &str,
    state: &str,
) -> Child {
    let (crt, key, ca) = (
        pki.path("member.crt"),
        pki.path("member.key"),
        pki.path("ca.crt"),
    );
    let log = std::fs::File::create(data.join(format!("m{i}.log"))).unwrap();
    Command::new("/usr/bin/etcd")
        .arg(format!("--name=m{i}"))
        .arg(format!(
            "--data-dir={}",
            data.join(format!("m{i}")).display()
        ))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg(format!("--initial-cluster-state={state}"))
        .arg("--client-cert-auth")
        .arg("--peer-client-cert-auth")
        .arg(format!("--cert-file={}", crt.display()))
        .arg(format!("--key-file={}", key.display()))
        .arg(format!("--trusted-ca-file={}", ca.display()))
        .arg(format!("--peer-cert-file={}", crt.display()))
        .arg(format!("--peer-key-file={}", key.display()))
        .arg(format!("--peer-trusted-ca-file={}", ca.display()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd")
}

/// A survey in which every member answers and follows a leader (waits up to 10 s).
async fn whole_survey(etcd: &Etcd, clients: &[String]) -> membership::Survey {
    for _ in 0..100 {
        let survey = membership::survey(etcd, clients).await;
        if membership::all_serving(&survey) {
            return survey;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let survey = membership::survey(etcd, clients).await;
    panic!("etcd is not whole: {}", membership::describe(&survey));
}

/// The tests' etcd clusters run one at a time: side by side on two cores, a learner
/// sometimes did not catch up within 30 s and a killed member's loss went unseen for 10 s
/// (both seen in CI, neither alone).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_a_learner_and_promotes_it_only_once_caught_up() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    pangaea_tests::init();
    let pki = Pki::new();
    let mut cluster = start(&pki);
    let etcd = pki.client();
    let survey = whole_survey(&etcd, &cluster.clients).await;
    let (client, peer) = (
        format!("https://127.0.0.1:{}", pangaea_tests::free_port()),
        format!("https://127.0.0.1:{}", pangaea_tests::free_port()),
    );

    // The cluster can take it: every member answers and agrees.
    let (addition, members) = membership::check_addition(&survey, &peer).unwrap();
    assert_eq!(members.len(), 3);
    let Addition::Add { ask } = addition else {
        panic!("{addition:?}")
    };
    let (id, members) = etcd.add_learner(&ask, &peer).await.unwrap();
    assert_eq!(members.len(), 4);
    assert!(
        members
            .iter()
            .any(|m| m.id == id && m.is_learner && m.name.is_empty())
    );
    // Adding it again (a retried call whose first attempt was applied) gives the same member.
    let (again, members) = etcd.add_learner(&ask, &peer).await.unwrap();
    assert_eq!((again, members.len()), (id, 4));

    // One learner at a time: another addition is refused while it is pending; the same
    // node's addition continues with the member there.
    let survey = membership::survey(&etcd, &cluster.clients).await;
    let other = format!("https://127.0.0.1:{}", pangaea_tests::free_port());
    let refused = membership::check_addition(&survey, &other).unwrap_err();
    assert!(refused.reason.contains("is not promoted yet"), "{refused}");
    assert_eq!(
        membership::check_addition(&survey, &peer).unwrap().0,
        Addition::Exists {
            id,
            is_learner: true,
            ask: ask.clone()
        }
    );

    // Not started, so not caught up: etcd refuses the promotion.
    assert_eq!(etcd.promote(&ask, id).await.unwrap(), Promoted::NotCaughtUp);

    // Started with the membership as it is, as a member of the existing cluster: it catches
    // up and is promoted.
    let initial: Vec<String> = members
        .iter()
        .map(|m| {
            let name = if m.id == id { "m3" } else { m.name.as_str() };
            format!("{name}={}", m.peer_urls[0])
        })
        .collect();
    cluster.children.push(spawn_member(
        &pki,
        cluster._data.path(),
        3,
        (&client, &peer),
        &initial.join(","),
        "existing",
    ));
    let mut promoted = Promoted::NotCaughtUp;
    for _ in 0..150 {
        promoted = etcd.promote(&ask, id).await.unwrap();
        if promoted != Promoted::NotCaughtUp {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // When it never catches up, what the new member said is the evidence (seen once in
    // CI under load, not reproduced alone).
    assert_eq!(
        promoted,
        Promoted::Now,
        "the learner's log:\n{}",
        std::fs::read_to_string(cluster._data.path().join("m3.log")).unwrap_or_default()
    );
    assert_eq!(etcd.promote(&ask, id).await.unwrap(), Promoted::Already);
    let mut clients = cluster.clients.clone();
    clients.push(client.clone());
    let survey = whole_survey(&etcd, &clients).await;
    let view = survey.answers[3].1.as_ref().unwrap();
    assert_eq!(view.members.len(), 4);
    assert!(view.members.iter().all(|m| !m.is_learner));
    etcd.put(&client, "joined", "yes", Duration::from_secs(5))
        .await
        .unwrap();

    // A member down: an addition would raise the quorum the others must reach; refused.
    // (If it led, the others answer again once they elected a leader.)
    cluster.kill(1);
    let mut survey = membership::survey(&etcd, &clients).await;
    for _ in 0..50 {
        if survey.answers.iter().filter(|(_, r)| r.is_ok()).count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        survey = membership::survey(&etcd, &clients).await;
    }
    let refused = membership::check_addition(&survey, &other).unwrap_err();
    assert!(refused.reason.contains("does not answer"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removes_by_id_only_when_safe_against_a_real_etcd_cluster() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    pangaea_tests::init();
    let pki = Pki::new();
    let mut cluster = start(&pki);
    let etcd = pki.client();

    // All three answer, agree, and follow one leader.
    let mut survey = membership::survey(&etcd, &cluster.clients).await;
    for _ in 0..100 {
        if survey
            .answers
            .iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|v| v.leader != 0))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        survey = membership::survey(&etcd, &cluster.clients).await;
    }
    let views: Vec<_> = survey
        .answers
        .iter()
        .map(|(e, r)| r.as_ref().unwrap_or_else(|m| panic!("{e}: {m}")))
        .collect();
    assert_eq!(views[0].members.len(), 3);
    assert!(
        views
            .iter()
            .all(|v| v.leader == views[0].leader && v.leader != 0)
    );

    // 3 → 2 is refused without --force, and names the member.
    let (target, own_url) = (&cluster.peers[2].clone(), cluster.clients[2].clone());
    let own = Some(own_url.as_str());
    let refusal = membership::check_removal(&survey, target, own, false).unwrap_err();
    assert!(refusal.reason.contains("m2"), "{refusal}");
    assert!(
        refusal.reason.contains("2 members would be left"),
        "{refusal}"
    );

    // A pending learner blocks even a forced removal (one change at a time).
    // etcd takes no member while its members have been connected for less than 5 s
    // ("unhealthy cluster"): ask until it does.
    let learner_peer = format!(
        r#"{{"peerURLs":["https://127.0.0.1:{}"],"isLearner":true}}"#,
        pangaea_tests::free_port()
    );
    let added = pangaea_tests::poll_until(
        "etcd to take a learner",
        Duration::from_secs(20),
        Duration::from_millis(500),
        || {
            let r = etcd_post(
                &pki,
                &cluster.clients[0],
                "cluster/member/add",
                &learner_peer,
            );
            r.get("member").is_some().then_some(r)
        },
    );
    let learner_id: u64 = added["member"]["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("member add: {added}"))
        .parse()
        .unwrap();
    let with_learner = membership::survey(&etcd, &cluster.clients).await;
    let refusal = membership::check_removal(&with_learner, target, own, true).unwrap_err();
    assert!(refusal.reason.contains("learner"), "{refusal}");
    assert_eq!(
        etcd.remove(&cluster.clients[0], learner_id).await.unwrap(),
        Removed::Now
    );

    // Forced: the member with that peer URL is removed by its ID, through a survivor.
    let survey = membership::survey(&etcd, &cluster.clients).await;
    let Removal::Member { id, ask, left, .. } =
        membership::check_removal(&survey, target, own, true).unwrap()
    else {
        panic!("m2 is a member")
    };
    assert_ne!(
        ask, cluster.clients[2],
        "never asks the member being removed"
    );
    assert_eq!(left, 2);
    assert_eq!(etcd.remove(&ask, id).await.unwrap(), Removed::Now);
    // As `node remove` deletes the instance next: a removed member left running can keep
    // the two left busy with elections (etcd 3.4 has no pre-vote by default).
    cluster.kill(2);
    assert_eq!(etcd.remove(&ask, id).await.unwrap(), Removed::Already);
    let after_clients = cluster.clients.clone();
    let after = membership::survey(&etcd, &cluster.clients[..2]).await;
    let v = after.answers[0].1.as_ref().unwrap();
    assert_eq!(v.members.len(), 2);
    assert!(v.members.iter().all(|m| !m.peer_urls.contains(target)));
    assert_eq!(
        membership::check_removal(&after, target, own, false).unwrap(),
        Removal::NotAMember,
        "a second run finds nothing to do"
    );
    // The two left still take writes.
    let put: serde_json::Value = etcd_post(
        &pki,
        &cluster.clients[0],
        "kv/put",
        r#"{"key":"YQ==","value":"MQ=="}"#,
    );
    assert!(put["header"]["revision"].is_string(), "{put}");

    // Disaster recovery: a snapshot through the gateway, 0600, that etcd's own tool
    // restores (it checks the SHA-256 trailer), and from which a new etcd serves the key.
    let snaps = tempfile::tempdir().unwrap();
    let file = snaps.path().join("etcd.snapshot");
    let saved = etcd.snapshot(&cluster.clients[0], &file).await.unwrap();
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(saved.bytes, meta.len());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(saved.revision > 1, "{saved:?}");
    let (client, peer) = (pangaea_tests::free_port(), pangaea_tests::free_port());
    let restored = snaps.path().join("restored");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg(format!("--data-dir={}", restored.display()))
        .args(["--name=r"])
        .arg(format!("--initial-cluster=r=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .output()
        .expect("etcdctl (apt-get install etcd-client)");
    assert!(
        out.status.success(),
        "etcdctl snapshot restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(snaps.path().join("r.log")).unwrap();
    let mut r = Command::new("/usr/bin/etcd")
        .arg(format!("--data-dir={}", restored.display()))
        .arg("--name=r")
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let got = pangaea_tests::poll_until(
        "the restored etcd to serve the key written before the snapshot",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let o = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints=http://127.0.0.1:{client}"))
                .args(["--dial-timeout=1s", "get", "a", "--print-value-only"])
                .output()
                .ok()?;
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        },
    );
    let _ = r.kill();
    let _ = r.wait();
    assert_eq!(got, "1");

    // A snapshot that cannot be had leaves an existing file as it was.
    std::fs::write(&file, "the previous snapshot").unwrap();
    drop(cluster);
    assert!(etcd.snapshot(&after_clients[0], &file).await.is_err());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "the previous snapshot"
    );
    assert_eq!(
        std::fs::read_dir(snaps.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".snapshot"))
            .count(),
        0,
        "no temporary file left"
    );
}

/// A raw call to etcd's gateway with curl (the test's own client, independent of the one
/// under test).
fn etcd_post(pki: &Pki, endpoint: &str, path: &str, body: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(pki.path("ca.crt"))
        .arg("--cert")
        .arg(pki.path("operator.crt"))
        .arg("--key")
        .arg(pki.path("operator.key"))
        .args(["-X", "POST", "-d", body])
        .arg(format!("{endpoint}/v3/{path}"))
        .output()
        .expect("curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
