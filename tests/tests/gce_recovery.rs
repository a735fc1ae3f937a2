//! Providers (#12): a Compute Engine node that cannot join with what it has gets its
//! recovery token as instance metadata. `up`'s reconcile loop runs with the real GCE
//! provider against the Compute API stand-in, whose instances are in-process agents (as in
//! tests/tests/reconcile.rs), each with its own metadata server (the stand-in's, serving the
//! instance's metadata as the API holds it). The token goes through `instances.setMetadata`
//! (with the fingerprint, on the stopped instance) and the agent reads it from its metadata
//! server when it boots: nothing of the controller's machine writes to the node.

use pangaea_controller::admin::Backend;
use pangaea_controller::provider::Provider;
use pangaea_controller::provider::gce::cluster::{Gce, GceCluster, PlannedNode, instance_name};
use pangaea_controller::provider::gce::compute::{Compute, TokenSource};
use pangaea_controller::reconcile::{Bootstrap, Reconciler, WantedNode};
use pangaea_core::NodeName;
use pangaea_core::token::RECOVERY_TOKEN_METADATA_KEY;
use pangaea_tests::gce_api::{GceApi, MachineEvent, PROJECT, serve_metadata};
use pangaea_tests::{TestAgent, TestController, agent_config};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const CLUSTER: &str = "demo";

fn name(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn wanted() -> Vec<WantedNode> {
    (1..=3u8)
        .map(|i| WantedNode {
            name: name(&format!("node-{i}")),
            address: Ipv4Addr::new(10, 213, 0, 10 + i),
            memory_mib: 2048,
            cpus: 2,
        })
        .collect()
}

/// The bootstrap token and the metadata server the user-data's agent configuration names.
fn from_user_data(user_data: &str) -> (String, String) {
    let v: serde_json::Value = serde_norway::from_str(user_data).unwrap();
    let files = v["write_files"].as_array().unwrap();
    let file = |path: &str| {
        files.iter().find(|f| f["path"] == path).unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let agent = pangaea_agent::AgentConfig::parse(
        std::path::Path::new("agent.yaml"),
        &file("/etc/pangaea/agent.yaml"),
    )
    .expect("the user-data's agent configuration is the agent's");
    (
        file("/etc/pangaea/bootstrap-token"),
        agent
            .metadata_server
            .expect("a GCE node's agent reads metadata"),
    )
}

/// A machine: its agent while it runs, else its disk; and its metadata server.
#[derive(Default)]
struct Machines {
    running: BTreeMap<NodeName, TestAgent>,
    disks: BTreeMap<NodeName, (tempfile::TempDir, pangaea_agent::AgentConfig)>,
    metadata: BTreeMap<NodeName, (std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gce_node_whose_identity_expired_while_stopped_joins_with_a_token_from_its_metadata() {
    let ctl = TestController::start_with(|c| c.node_cert_lifetime = Duration::from_secs(3)).await;
    let api = GceApi::start().await;
    let machines: Arc<Mutex<Machines>> = Arc::default();
    let (endpoint, pin) = (ctl.endpoint(), ctl.controller.pki().controller_pin());
    let (m, state) = (machines.clone(), Arc::downgrade(&api.state));
    api.state.lock().unwrap().machines = Some(Arc::new(move |e: MachineEvent| {
        let (m, state, endpoint) = (m.clone(), state.clone(), endpoint.clone());
        Box::pin(async move {
            let node = |instance: &str| name(instance.strip_prefix("demo-").unwrap());
            match e {
                MachineEvent::Create {
                    name: instance,
                    id,
                    user_data,
                    ..
                } => {
                    let node = node(&instance);
                    let (token, server) = from_user_data(&user_data);
                    assert_eq!(server, pangaea_core::token::GCE_METADATA_SERVER);
                    // This instance's own metadata server, where its agent looks instead
                    // of the link-local address.
                    let (addr, task) =
                        serve_metadata(state, instance, IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
                    let (dir, mut cfg) = agent_config(&endpoint, pin, node.as_str(), &token);
                    cfg.instance_id = Some(id);
                    cfg.metadata_server = Some(addr.to_string());
                    let mut m = m.lock().unwrap();
                    m.metadata.insert(node.clone(), (addr, task));
                    m.running.insert(node, TestAgent::spawn(dir, cfg));
                }
                MachineEvent::Stop(instance) => {
                    let mut m = m.lock().unwrap();
                    if let Some(a) = m.running.remove(&node(&instance)) {
                        m.disks.insert(node(&instance), a.power_off());
                    }
                }
                MachineEvent::Start(instance) => {
                    let mut m = m.lock().unwrap();
                    if let Some((dir, cfg)) = m.disks.remove(&node(&instance)) {
                        m.running
                            .insert(node(&instance), TestAgent::spawn(dir, cfg));
                    }
                }
                MachineEvent::Reset(_) | MachineEvent::Delete(_) => {}
            }
        })
    }));

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "ya29.test-token\n").unwrap();
    let compute = Compute::new(&api.base(), PROJECT, TokenSource::File(token))
        .with_retries(4, Duration::from_millis(50));
    let gce = Gce::new(
        compute,
        GceCluster {
            cluster: CLUSTER.into(),
            region: "us-central1".into(),
            zones: vec![],
            spot: false,
            advertise: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            node_cidr: pangaea_compiler::cidr::Cidr::parse("10.213.0.0/24").unwrap(),
            api_port: 6443,
            api_access: vec![],
            node_ports: vec![],
            api_address: None,
            nodes: wanted()
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let planned = PlannedNode {
                        position: i as u64,
                        zone: None,
                        machine_type: "e2-small".into(),
                        disks: vec![],
                    };
                    (n.name.clone(), planned)
                })
                .collect(),
        },
    );
    gce.prepare(&|_| {}).await.unwrap();
    let mut backend = Backend::Local(ctl.controller.clone());
    let bootstrap = Bootstrap {
        controller: ctl.endpoint(),
        ca_pin: pin.to_string(),
        agent_url: "http://127.0.0.1/pangaea-agent".into(),
        agent_sha256: "00".repeat(32),
        token_ttl: pangaea_controller::reconcile::NODE_TOKEN_TTL,
        tunnel: None,
        metadata_server: gce.metadata_server(),
    };
    let names: Vec<NodeName> = wanted().into_iter().map(|w| w.name).collect();
    let mut reconciler = Reconciler {
        provider: &gce,
        backend: &mut backend,
        bootstrap: &bootstrap,
        progress: &|m| eprintln!("{m}"),
    };
    reconciler.ensure_nodes(&wanted()).await.unwrap();
    reconciler.wait_healthy(&names, T).await.unwrap();
    let instance = ctl.record("node-3").instance_id;

    // node-3's instance is stopped for longer than its agent certificate lives.
    gce.stop(&name("node-3")).await.unwrap();
    let expired = ctl.identity_expired("node-3", T).await;
    let set_metadata = || api.requests("POST", "/setMetadata");
    assert!(set_metadata().is_empty());

    // The next `up`: a token in node-3's metadata (set while it is stopped), then a boot.
    reconciler.ensure_nodes(&wanted()).await.unwrap();
    let writes = set_metadata();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(
        writes[0].path.ends_with(&format!(
            "/instances/{}/setMetadata",
            instance_name(CLUSTER, &name("node-3"))
        )),
        "{}",
        writes[0].path
    );
    let items = writes[0].body["items"].as_array().unwrap();
    assert!(
        items.iter().any(|i| i["key"] == "user-data"),
        "the other items are kept: {items:?}"
    );
    let delivered = items
        .iter()
        .find(|i| i["key"] == RECOVERY_TOKEN_METADATA_KEY)
        .and_then(|i| i["value"].as_str())
        .expect("the recovery token's item")
        .to_owned();
    let start = api.requests("POST", "/start");
    assert_eq!(start.len(), 1, "{start:?}");
    assert!(
        writes[0].query.contains("requestId=") && start[0].query.contains("requestId="),
        "mutating calls carry a requestId"
    );

    let record = ctl.joined_again("node-3", expired, T).await;
    assert_eq!(
        record.instance_id, instance,
        "the same instance, joined again"
    );
    reconciler.wait_healthy(&names, T).await.unwrap();
    let tokens = reconciler.backend.list_tokens().await.unwrap();
    let recovery: Vec<_> = tokens
        .iter()
        .filter(|t| t.description == "recovery")
        .collect();
    assert_eq!(recovery.len(), 1, "{recovery:?}");
    assert_eq!(recovery[0].node_name, "node-3");
    assert_eq!(recovery[0].uses_left, 0, "spent by the join");
    assert!(delivered.starts_with(&format!("{}.", recovery[0].id)));

    // Only node-3's metadata holds it: node-2's server has no such item, and a request
    // without Google's header is refused, as Google's server refuses it.
    let (node_2, node_3) = {
        let m = machines.lock().unwrap();
        (m.metadata[&name("node-2")].0, m.metadata[&name("node-3")].0)
    };
    assert_eq!(
        pangaea_agent::metadata::recovery_token(&node_2.to_string())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        pangaea_agent::metadata::recovery_token(&node_3.to_string())
            .await
            .unwrap()
            .as_deref(),
        Some(delivered.as_str())
    );
    let bare = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(node_3).await.unwrap();
        let path = pangaea_agent::metadata::recovery_token_url(&node_3.to_string());
        let path = path.trim_start_matches(&format!("http://{node_3}"));
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: metadata\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(bare.starts_with("HTTP/1.1 403"), "{bare}");
    assert!(!bare.contains(&delivered), "{bare}");

    // The other nodes were left alone: no second token, no other write.
    assert_eq!(set_metadata().len(), 1);
    for (_, (_, task)) in std::mem::take(&mut machines.lock().unwrap().metadata) {
        task.abort();
    }
}
