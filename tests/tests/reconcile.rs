//! `up`'s reconcile loop against the recording FakeProvider, without root: machines are
//! map entries, and a booting "machine" starts a real in-process agent with the token from
//! its user-data, which joins the in-process controller over mutual TLS. Create missing
//! nodes, leave running ones alone, boot stopped ones without a new token, resume an
//! interrupted run, name a node that never comes up; and `down`, with and without purge.

use pangaea_controller::admin::Backend;
use pangaea_controller::health::Health;
use pangaea_controller::provider::fake::{Call, FakeProvider, Op};
use pangaea_controller::reconcile::{
    Action, Bootstrap, DownAction, ReconcileError, Reconciler, WantedNode, power_down,
};
use pangaea_core::NodeName;
use pangaea_tests::{TestAgent, TestController, agent_config};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn name(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn wanted(n: usize) -> Vec<WantedNode> {
    (1..=n)
        .map(|i| WantedNode {
            name: name(&format!("node-{i}")),
            address: Ipv4Addr::new(10, 213, 0, 10 + i as u8),
            memory_mib: 2048,
            cpus: 2,
        })
        .collect()
}

fn names(n: usize) -> Vec<NodeName> {
    wanted(n).into_iter().map(|w| w.name).collect()
}

/// The bootstrap token cloud-init would write on the node.
fn token_in(user_data: &str) -> String {
    let mut lines = user_data.lines();
    lines
        .find(|l| l.contains("path: /etc/pangaea/bootstrap-token"))
        .expect("the user-data writes the token file");
    let content = lines
        .find_map(|l| l.trim().strip_prefix("content: "))
        .expect("the token file has content");
    serde_json::from_str(content).expect("the token is a JSON string")
}

/// Writes a recovery token where the agent of `cfg` looks for one.
fn seed(cfg: &pangaea_agent::AgentConfig, token: &str) {
    let path = &cfg.recovery_token_file;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, token).unwrap();
}

/// A controller, and a fake provider whose machines run in-process agents.
struct World {
    ctl: TestController,
    provider: Arc<FakeProvider>,
    /// Running agents, and the disks of stopped ones.
    agents: Arc<Mutex<BTreeMap<NodeName, TestAgent>>>,
    disks: Arc<Mutex<BTreeMap<NodeName, (tempfile::TempDir, pangaea_agent::AgentConfig)>>>,
    /// Nodes whose machine boots but whose agent does not start (until revived).
    dead: Arc<Mutex<BTreeSet<NodeName>>>,
    backend: Backend,
    bootstrap: Bootstrap,
}

/// Lifetimes for a [`World`]: its nodes' agent certificates and bootstrap tokens; with
/// `cluster_certs`, the controller plans with the real compiler (the default cluster, nothing
/// to download) and issues the cluster's certificates (etcd, Kubernetes) for that long.
#[derive(Clone, Copy)]
struct Lifetimes {
    node_cert: Option<Duration>,
    token: Duration,
    cluster_certs: Option<Duration>,
}

impl Default for Lifetimes {
    fn default() -> Lifetimes {
        Lifetimes {
            node_cert: None,
            token: pangaea_controller::reconcile::NODE_TOKEN_TTL,
            cluster_certs: None,
        }
    }
}

impl World {
    /// `dead`: nodes whose machine boots but whose agent never starts.
    async fn new(dead: &[&str]) -> World {
        World::with(dead, Lifetimes::default()).await
    }

    async fn with(dead: &[&str], lifetimes: Lifetimes) -> World {
        let tweak = |c: &mut pangaea_controller::ControllerConfig| {
            if let Some(l) = lifetimes.node_cert {
                c.node_cert_lifetime = l;
            }
        };
        let ctl = match lifetimes.cluster_certs {
            None => TestController::start_with(tweak).await,
            Some(leaf) => {
                let nothing_to_download = |state: &std::path::Path| {
                    let disabled: String = pangaea_tests::ARTIFACTS
                        .iter()
                        .map(|n| format!("  - {{name: {n}, disabled: true}}\n"))
                        .collect();
                    let config = format!("name: expiry\nartifacts:\n{disabled}");
                    std::fs::write(state.parent().unwrap().join("pangaea.yaml"), config).unwrap();
                };
                TestController::start_compiled_with(nothing_to_download, Some(leaf), None, tweak)
                    .await
            }
        };
        let agents: Arc<Mutex<BTreeMap<NodeName, TestAgent>>> = Arc::default();
        let disks: Arc<Mutex<BTreeMap<_, _>>> = Arc::default();
        // Recovery tokens delivered to a machine that has not booted an agent yet.
        let seeds: Arc<Mutex<BTreeMap<NodeName, String>>> = Arc::default();
        let dead: Arc<Mutex<BTreeSet<NodeName>>> =
            Arc::new(Mutex::new(dead.iter().map(|d| name(d)).collect()));
        let (endpoint, pin) = (ctl.endpoint(), ctl.controller.pki().controller_pin());
        let (a, d, s, dd) = (agents.clone(), disks.clone(), seeds.clone(), dead.clone());
        let (a2, d2) = (agents.clone(), disks.clone());
        let (a3, d3, s3) = (agents.clone(), disks.clone(), seeds.clone());
        let provider = FakeProvider::new()
            .on_boot(move |machine, user_data, _first| {
                let node = &machine.name;
                if dd.lock().unwrap().contains(node) {
                    return;
                }
                // A machine boots with its disk, or for the first time with its user-data.
                let (dir, cfg) = d.lock().unwrap().remove(node).unwrap_or_else(|| {
                    // The agent reads its instance ID from the provider (cloud-init's
                    // meta-data on a real node).
                    let (dir, mut cfg) = agent_config(&endpoint, pin, node, &token_in(user_data));
                    cfg.instance_id = Some(machine.instance_id.clone());
                    (dir, cfg)
                });
                if let Some(token) = s.lock().unwrap().remove(node) {
                    seed(&cfg, &token);
                }
                a.lock()
                    .unwrap()
                    .insert(node.clone(), TestAgent::spawn(dir, cfg));
            })
            // The provider's seed: the node's agent finds the token in its recovery file,
            // running or stopped, or when it first boots.
            .on_token(move |node, token| {
                if let Some(a) = a3.lock().unwrap().get(node) {
                    seed(&a.cfg, token);
                } else if let Some((_, cfg)) = d3.lock().unwrap().get(node) {
                    seed(cfg, token);
                } else {
                    s3.lock().unwrap().insert(node.clone(), token.to_owned());
                }
            })
            .on_stop(move |node| {
                if let Some(agent) = a2.lock().unwrap().remove(node) {
                    d2.lock().unwrap().insert(node.clone(), agent.power_off());
                }
            });
        World {
            backend: Backend::Local(ctl.controller.clone()),
            ctl,
            provider: Arc::new(provider),
            agents,
            disks,
            dead,
            bootstrap: Bootstrap {
                controller: "127.0.0.1:0".into(),
                ca_pin: "sha256:00".into(),
                agent_url: "http://127.0.0.1/pangaea-agent".into(),
                agent_sha256: "00".repeat(32),
                token_ttl: lifetimes.token,
                tunnel: None,
                metadata_server: None,
            },
        }
    }

    fn reconciler(&mut self) -> Reconciler<'_> {
        Reconciler {
            provider: self.provider.as_ref(),
            backend: &mut self.backend,
            bootstrap: &self.bootstrap,
            progress: &|m| eprintln!("{m}"),
        }
    }

    async fn tokens(&mut self) -> Vec<pangaea_proto::TokenInfo> {
        self.backend.list_tokens().await.unwrap()
    }

    fn instance_of(&self, node: &str) -> String {
        self.ctl
            .controller
            .node(node)
            .unwrap()
            .expect("the node joined")
            .instance_id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_creates_missing_nodes_then_a_rerun_changes_nothing() {
    let mut w = World::new(&[]).await;
    let done = w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert!(done.iter().all(|(_, a)| *a == Action::Created), "{done:?}");
    assert_eq!(
        w.provider.calls().await,
        names(3).into_iter().map(Call::Create).collect::<Vec<_>>()
    );
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    // Each node got its own single-use token, bound to its name, and spent it.
    let tokens = w.tokens().await;
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    for t in &tokens {
        assert_eq!(t.uses_left, 0, "{t:?}");
        assert!(t.node_name.starts_with("node-"), "{t:?}");
    }

    w.provider.clear_calls().await;
    let again = w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert!(again.iter().all(|(_, a)| *a == Action::None), "{again:?}");
    assert_eq!(
        w.provider.calls().await,
        vec![],
        "a healthy cluster is left alone"
    );
    assert_eq!(w.tokens().await.len(), 3, "no new token");
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_boots_with_its_disk_and_no_new_token() {
    let mut w = World::new(&[]).await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    let before = w.instance_of("node-2");
    w.provider.power_off(&name("node-2")).await;
    assert!(w.disks.lock().unwrap().contains_key(&name("node-2")));

    // Off until the clock has left the second of its last report (reports are stamped in
    // whole seconds), far less than the 20 s after which a silent node counts as down: its
    // last report still looks fresh.
    let last = w
        .ctl
        .controller
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.record.name.as_str() == "node-2")
        .and_then(|n| n.last_report.map(|(at, _)| at))
        .unwrap();
    pangaea_tests::eventually("the clock to pass node-2's last report", T, || {
        pangaea_controller::records::now() > last
    })
    .await;
    w.provider.clear_calls().await;
    let booted_at = pangaea_controller::records::now();
    let done = w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert_eq!(done[1], (name("node-2"), Action::Booted), "{done:?}");
    assert_eq!(w.provider.calls().await, vec![Call::Start(name("node-2"))]);
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    // Healthy by a report of this boot: the one from before the stop, seconds old, is not.
    let info = w.backend.list_nodes().await.unwrap();
    let node_2 = info.iter().find(|n| n.name == "node-2").unwrap();
    assert!(node_2.last_report_at >= booted_at, "{node_2:?}");
    assert_eq!(w.tokens().await.len(), 3, "a returning node needs no token");
    assert_eq!(w.instance_of("node-2"), before, "same identity");
    assert!(w.agents.lock().unwrap().contains_key(&name("node-2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_up_resumes_where_it_stopped() {
    let mut w = World::new(&[]).await;
    w.provider.fail_once(Op::Create, &name("node-2")).await;
    let err = w
        .reconciler()
        .ensure_nodes(&wanted(3))
        .await
        .expect_err("node-2 fails");
    assert!(
        matches!(&err, ReconcileError::Provider { node, .. } if *node == name("node-2")),
        "{err}"
    );
    assert!(err.to_string().contains("node-2"), "{err}");
    // Nodes are created together: the others are created beside the one that failed.
    assert_eq!(
        w.provider.calls().await,
        vec![
            Call::Create(name("node-1")),
            Call::Create(name("node-2")),
            Call::Create(name("node-3"))
        ],
    );
    // The failed node's token is not left valid.
    let node2: Vec<_> = w
        .tokens()
        .await
        .into_iter()
        .filter(|t| t.node_name == "node-2")
        .collect();
    assert!(node2.iter().all(|t| t.revoked), "{node2:?}");

    w.provider.clear_calls().await;
    let done = w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert_eq!(
        done.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
        vec![Action::None, Action::Created, Action::None]
    );
    assert_eq!(
        w.provider.calls().await,
        vec![Call::Create(name("node-2"))],
        "node-1 and node-3 are not created twice"
    );
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_comes_up_is_named_with_its_state() {
    let mut w = World::new(&["node-3"]).await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    let err = w
        .reconciler()
        .wait_healthy(&names(3), Duration::from_secs(5))
        .await
        .expect_err("node-3 never joins");
    let ReconcileError::Stuck { stuck, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(stuck.len(), 1, "{err}");
    assert_eq!(stuck[0].name, name("node-3"));
    assert_eq!(stuck[0].health, Health::NotJoined);
    let text = err.to_string();
    assert!(
        text.contains("node-3: not joined yet (fake console of node-3)"),
        "{text}"
    );
    assert!(
        !text.contains("node-1") && !text.contains("node-2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_powers_off_running_nodes_and_purge_deletes_everything() {
    let mut w = World::new(&[]).await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    w.provider.power_off(&name("node-3")).await;
    w.provider.clear_calls().await;

    // In the order given (the etcd leader, node-1 here, last); a stopped node is left alone.
    let order = [name("node-3"), name("node-2"), name("node-1")];
    let done = power_down(w.provider.as_ref(), false, &order, &|_| {})
        .await
        .unwrap();
    assert_eq!(
        done,
        vec![
            (name("node-3"), DownAction::None),
            (name("node-2"), DownAction::Stopped),
            (name("node-1"), DownAction::Stopped)
        ]
    );
    assert_eq!(
        w.provider.calls().await,
        vec![Call::Stop(name("node-2")), Call::Stop(name("node-1"))],
        "a stopped node is left alone"
    );
    assert!(w.agents.lock().unwrap().is_empty(), "every agent is down");

    // `up` after `down` boots all three with their disks, no new token.
    let back = w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert!(back.iter().all(|(_, a)| *a == Action::Booted), "{back:?}");
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    assert_eq!(w.tokens().await.len(), 3);

    w.provider.clear_calls().await;
    power_down(w.provider.as_ref(), true, &[], &|_| {})
        .await
        .unwrap();
    let calls = w.provider.calls().await;
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(
        calls.last(),
        Some(&Call::Teardown),
        "teardown after the last node"
    );
    assert!(w.provider.list_now().await.is_empty());
}

/// Hardening #10 (token expired before first boot): a machine whose bootstrap token expired
/// before its agent ever ran gets a recovery token from the next `up` (bound to its name,
/// single-use), delivered through the provider's seed before it boots, and joins with it.
/// Nodes with a live token, or joined, get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_token_expired_before_first_boot_joins_with_a_recovery_token() {
    let ttl = Duration::from_secs(2);
    let lifetimes = Lifetimes {
        token: ttl,
        ..Lifetimes::default()
    };
    let mut w = World::with(&["node-2"], lifetimes).await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    // While its token lives, a re-run delivers nothing: the node may still be booting.
    w.provider.clear_calls().await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert_eq!(
        w.provider.calls().await,
        vec![],
        "no recovery while a token lives"
    );
    w.reconciler()
        .wait_healthy(&[name("node-1"), name("node-3")], T)
        .await
        .unwrap();
    pangaea_tests::eventually("node-2's bootstrap token to expire", T, || {
        let now = pangaea_controller::records::now();
        let tokens = w.ctl.controller.tokens().unwrap();
        let mut node_2 = tokens
            .iter()
            .filter(|t| t.node.as_deref() == Some("node-2"));
        node_2.all(|t| t.expires_at < now)
    })
    .await;
    // Its agent starts only now, with the expired token in its user-data.
    w.provider.power_off(&name("node-2")).await;
    w.dead.lock().unwrap().clear();

    w.provider.clear_calls().await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert_eq!(
        w.provider.calls().await,
        vec![
            Call::DeliverToken(name("node-2")),
            Call::Start(name("node-2"))
        ],
        "the recovery token is delivered before the node boots, to it alone"
    );
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    let recovery: Vec<_> = w
        .tokens()
        .await
        .into_iter()
        .filter(|t| t.description == "recovery")
        .collect();
    assert_eq!(recovery.len(), 1, "{recovery:?}");
    assert_eq!(recovery[0].node_name, "node-2");
    assert_eq!(recovery[0].uses_left, 0, "spent by the join");
}

/// Hardening #10 (identity expired while off): a node powered off for longer than its
/// agent certificate lives cannot renew; the next `up` sees the expired identity, delivers
/// a recovery token to it and boots it, and it joins again as the same instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_identity_expired_while_off_joins_again_with_a_recovery_token() {
    let lifetime = Duration::from_secs(3);
    let lifetimes = Lifetimes {
        node_cert: Some(lifetime),
        ..Lifetimes::default()
    };
    let mut w = World::with(&[], lifetimes).await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    let instance = w.instance_of("node-3");
    w.provider.power_off(&name("node-3")).await;
    let expired = w.ctl.identity_expired("node-3", T).await;
    assert!(expired <= pangaea_controller::records::now());

    w.provider.clear_calls().await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    assert_eq!(
        w.provider.calls().await,
        vec![
            Call::DeliverToken(name("node-3")),
            Call::Start(name("node-3"))
        ]
    );
    let record = w.ctl.joined_again("node-3", expired, T).await;
    assert_eq!(
        record.instance_id, instance,
        "the same instance, joined again"
    );
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
}

/// Lifecycle (a long stop): every node powered off for longer than all its certificates
/// live — its agent identity and its cluster certificates (etcd's server and peer ones, the
/// API server's), lifetimes of seconds — then `start` (the reconcile loop on existing machines):
/// each node gets a recovery token, joins again as the same instance and receives cluster
/// certificates valid from now; none is left expired on any node's disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_stopped_longer_than_its_certificates_live_comes_back_renewed() {
    let lifetime = Duration::from_secs(4);
    let lifetimes = Lifetimes {
        node_cert: Some(lifetime),
        cluster_certs: Some(lifetime),
        ..Lifetimes::default()
    };
    let mut w = World::with(&[], lifetimes).await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    let etcd_certs = [
        "etc/etcd/pki/server.crt",
        "etc/etcd/pki/peer.crt",
        "etc/kubernetes/pki/apiserver-etcd-client.crt",
        "etc/kubernetes/pki/apiserver.crt",
    ];
    let not_after = |cfg: &pangaea_agent::AgentConfig, file: &str| {
        let path = cfg.root.join(file);
        let pem =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        pangaea_core::x509::CertInfo::from_pem(&pem)
            .unwrap()
            .not_after
    };
    let instances: Vec<String> = names(3).iter().map(|n| w.instance_of(n.as_str())).collect();
    for n in names(3) {
        w.provider.power_off(&n).await;
    }
    // Off until everything any node holds has expired.
    let latest = {
        let disks = w.disks.lock().unwrap();
        let mut latest = 0;
        for n in names(3) {
            let (_, cfg) = &disks[&n];
            for f in etcd_certs {
                latest = latest.max(not_after(cfg, f));
            }
            latest = latest.max(
                w.ctl
                    .controller
                    .node(n.as_str())
                    .unwrap()
                    .unwrap()
                    .cert_not_after,
            );
        }
        latest
    };
    pangaea_tests::eventually("every certificate to expire", T, || {
        pangaea_controller::records::now() > latest
    })
    .await;

    w.provider.clear_calls().await;
    w.reconciler().ensure_nodes(&wanted(3)).await.unwrap();
    let mut calls = w.provider.calls().await;
    calls.sort_by_key(|c| format!("{c:?}"));
    let mut want: Vec<Call> = names(3)
        .into_iter()
        .flat_map(|n| [Call::DeliverToken(n.clone()), Call::Start(n)])
        .collect();
    want.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        calls, want,
        "a recovery token and a boot for every node, nothing created"
    );
    w.reconciler().wait_healthy(&names(3), T).await.unwrap();
    let now = pangaea_controller::records::now();
    for (n, instance) in names(3).iter().zip(&instances) {
        assert_eq!(
            &w.instance_of(n.as_str()),
            instance,
            "{n}: the same instance"
        );
        let cfg = w.agents.lock().unwrap()[n].cfg.clone();
        for f in etcd_certs {
            // Renewed at the join (a lifetime of seconds may have been renewed again since).
            let t = not_after(&cfg, f);
            assert!(
                t > latest && t >= now - 1,
                "{n}: {f} expires at {t} (now {now})"
            );
        }
    }
}
