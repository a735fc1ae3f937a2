//! `pangaea-ctl node drain` and `node uncordon` against the Kubernetes API stand-in
//! (tests/src/kube_api.rs), which is itself checked by the real `kubectl drain`: in each
//! scenario, kubectl and pangaea-ctl drain identical fresh stand-ins and must reach the same
//! outcome (exit status, node cordoned, pods left) through the same mutating requests in the
//! same order. Then what only Pangaea does: the node's kubelet stopped through its plan and
//! started again by `uncordon`, a budget that never allows (named in the error), and no API
//! at all.
//!
//! Needs kubectl (`.ci/run` checks for it).

use pangaea_tests::kube_api::{Budget, Cluster, KubeApi};
use pangaea_tests::{ARTIFACTS, TestAgent, TestController, eventually};
use std::path::Path;
use std::time::Duration;

const NODE: &str = "node-1";

/// What one drain did.
#[derive(Debug)]
struct Run {
    ok: bool,
    output: String,
    mutations: Vec<String>,
    cordoned: bool,
    pods: Vec<String>,
}

impl Run {
    /// Everything but the output, which differs between the tools.
    fn outcome(&self) -> (bool, &[String], bool, &[String]) {
        (self.ok, &self.mutations, self.cordoned, &self.pods)
    }
}

async fn run(cmd: &mut tokio::process::Command, api: &KubeApi) -> Run {
    let out = cmd.output().await.unwrap();
    let cluster = api.cluster();
    Run {
        ok: out.status.success(),
        output: pangaea_tests::output_text(&out),
        mutations: api.mutations(),
        cordoned: cluster.unschedulable(NODE),
        pods: cluster.pod_names(),
    }
}

fn require_kubectl() {
    assert!(
        std::process::Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/)"
    );
}

/// `kubectl drain` against a fresh stand-in serving `cluster`.
async fn kubectl(cluster: Cluster, args: &[&str]) -> (Run, KubeApi) {
    let api = KubeApi::start(cluster).await;
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let r = run(
        tokio::process::Command::new("kubectl")
            .env("HOME", home.path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(home.path().join("cache"))
            .args(args),
        &api,
    )
    .await;
    eprintln!("kubectl {args:?}:\n{}", r.output);
    (r, api)
}

/// `pangaea-ctl` of `ctl`'s cluster against a fresh stand-in serving `cluster`.
async fn pangaea(ctl: &TestController, cluster: Cluster, args: &[&str]) -> (Run, KubeApi) {
    let api = KubeApi::start(cluster).await;
    let kubeconfig = ctl.dir.path().join("standin.kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let r = run(&mut pangaea_cmd(ctl, args, &kubeconfig), &api).await;
    eprintln!("pangaea-ctl {args:?}:\n{}", r.output);
    (r, api)
}

fn pangaea_cmd(ctl: &TestController, args: &[&str], kubeconfig: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(pangaea_tests::binary("pangaea-ctl"));
    c.current_dir(ctl.dir.path())
        .env("NO_COLOR", "1")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig);
    c
}

/// A controller planning the default cluster with nothing to download, and node-1's agent
/// joined and applied, with a kubelet binary in place so that its unit runs.
async fn cluster_with_node_1() -> (TestController, TestAgent) {
    let ctl = TestController::start_compiled(|state| {
        let disabled: String = ARTIFACTS
            .iter()
            .map(|n| format!("  - {{name: {n}, disabled: true}}\n"))
            .collect();
        let config = format!("name: drain\nartifacts:\n{disabled}");
        std::fs::write(state.parent().unwrap().join("pangaea.yaml"), config).unwrap();
    })
    .await;
    ctl.serve_admin().await;
    let (d, cfg) = ctl.agent_config(NODE, &ctl.token(None).await);
    let kubelet = cfg.root.join("usr/local/bin/kubelet");
    std::fs::create_dir_all(kubelet.parent().unwrap()).unwrap();
    std::fs::write(&kubelet, "").unwrap();
    let agent = TestAgent::spawn(d, cfg);
    eventually(
        "node-1 to start its kubelet",
        Duration::from_secs(30),
        || kubelet_calls(&agent).iter().any(|c| c.starts_with("start")),
    )
    .await;
    (ctl, agent)
}

fn kubelet_calls(agent: &TestAgent) -> Vec<String> {
    agent
        .units
        .calls()
        .into_iter()
        .filter(|c| c.contains("kubelet.service"))
        .collect()
}

fn replicated(c: &mut Cluster, name: &str) {
    c.pod(
        "default",
        name,
        NODE,
        Some(("ReplicaSet", "web-6d4")),
        &[("app", "web")],
    );
}

/// The scenarios both tools run, with kubectl's flags for what Pangaea does by default.
fn scenarios() -> Vec<(&'static str, Cluster, Vec<&'static str>)> {
    let empty = Cluster::with_node(NODE);

    let mut daemonset = Cluster::with_node(NODE);
    daemonset.pod(
        "kube-system",
        "fluent-x7",
        NODE,
        Some(("DaemonSet", "fluent")),
        &[],
    );
    daemonset
        .daemonsets
        .push(("kube-system".into(), "fluent".into()));
    daemonset.pod(
        "kube-system",
        "kube-apiserver-node-1",
        NODE,
        Some(("Node", NODE)),
        &[],
    )["metadata"]["annotations"] = serde_json::json!({"kubernetes.io/config.mirror": "abc"});
    replicated(&mut daemonset, "web-1");
    daemonset.pod(
        "default",
        "elsewhere",
        "node-2",
        Some(("ReplicaSet", "web-6d4")),
        &[],
    );

    let mut budget = Cluster::with_node(NODE);
    replicated(&mut budget, "web-1");
    budget.budgets.push(Budget {
        namespace: "default".into(),
        name: "web".into(),
        match_labels: [("app".to_string(), "web".to_string())].into(),
        blocks: 1,
    });

    let mut bare = Cluster::with_node(NODE);
    bare.pod("default", "scratch", NODE, None, &[]);
    replicated(&mut bare, "web-1");

    vec![
        ("no pods", empty, vec![]),
        ("a DaemonSet pod", daemonset, vec!["--ignore-daemonsets"]),
        ("a budget that blocks, then allows", budget, vec![]),
        ("a pod without controller", bare, vec![]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_matches_kubectl_drain_request_for_request() {
    require_kubectl();
    let (ctl, agent) = cluster_with_node_1().await;
    for (name, cluster, kubectl_flags) in scenarios() {
        let mut args = vec!["drain", NODE, "--timeout=60s"];
        args.extend(&kubectl_flags);
        let (theirs, theirs_api) = kubectl(cluster.clone(), &args).await;
        let (ours, ours_api) =
            pangaea(&ctl, cluster, &["node", "drain", NODE, "--timeout", "60s"]).await;
        assert_eq!(
            ours.outcome(),
            theirs.outcome(),
            "{name}: pangaea-ctl (left) and kubectl (right) differ\npangaea-ctl:\n{}\nkubectl:\n{}",
            ours.output,
            theirs.output
        );
        assert!(!ours.mutations.is_empty(), "{name}: the node is cordoned");
        // What the comparison rests on: the stand-in implements every request kubectl made.
        let requests: Vec<String> = theirs_api
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect();
        eprintln!("{name}: kubectl's requests: {requests:#?}");
        assert_eq!(
            theirs_api.cluster().unserved,
            Vec::<String>::new(),
            "{name}"
        );
        assert!(ours_api.cluster().unserved.is_empty(), "{name}");
        if ours.ok {
            // Drained: the kubelet is held back (the agent stopped it)...
            eventually(
                "node-1's kubelet to be stopped",
                Duration::from_secs(10),
                || {
                    kubelet_calls(&agent)
                        .last()
                        .is_some_and(|c| c.starts_with("remove"))
                },
            )
            .await;
            assert!(
                ours.output.contains("node node-1 drained"),
                "{}",
                ours.output
            );
        } else {
            // ...not when the drain was refused.
            assert!(
                ours.output
                    .contains("no controller would re-create it (--force"),
                "{}",
                ours.output
            );
            assert!(kubelet_calls(&agent).last().unwrap().starts_with("start"));
        }
        // uncordon, both tools: the same single patch; Pangaea starts the kubelet first.
        let drained = theirs_api.cluster();
        let (theirs, _) = kubectl(drained.clone(), &["uncordon", NODE]).await;
        let (ours, _) = pangaea(&ctl, drained, &["node", "uncordon", NODE]).await;
        assert_eq!(ours.outcome(), theirs.outcome(), "uncordon after {name}");
        assert_eq!(
            ours.mutations,
            [format!(
                "PATCH /api/v1/nodes/{NODE} application/strategic-merge-patch+json {{\"spec\":{{\"unschedulable\":null}}}}"
            )]
        );
        assert!(kubelet_calls(&agent).last().unwrap().starts_with("start"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_never_allows_is_named_when_the_time_is_up() {
    let (ctl, agent) = cluster_with_node_1().await;
    let mut cluster = Cluster::with_node(NODE);
    replicated(&mut cluster, "web-1");
    replicated(&mut cluster, "web-2");
    cluster.budgets.push(Budget {
        namespace: "default".into(),
        name: "web".into(),
        match_labels: [("app".to_string(), "web".to_string())].into(),
        blocks: u32::MAX,
    });
    let (ours, api) = pangaea(&ctl, cluster, &["node", "drain", NODE, "--timeout", "4s"]).await;
    assert!(!ours.ok);
    for want in [
        "pod default/web-1",
        "pod default/web-2",
        "disruption budget web",
        "4s",
    ] {
        assert!(
            ours.output.contains(want),
            "{want:?} not in {}",
            ours.output
        );
    }
    assert!(ours.cordoned && ours.pods.len() == 2);
    // Retried with backoff (1 s, 2 s: three tries each in 4 s), not in a busy loop.
    let evictions = ours
        .mutations
        .iter()
        .filter(|m| m.ends_with("/eviction"))
        .count();
    assert!(
        (4..=8).contains(&evictions),
        "{evictions}: {:?}",
        ours.mutations
    );
    // Not drained: the kubelet runs on.
    assert!(kubelet_calls(&agent).last().unwrap().starts_with("start"));
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_only_the_kubelet_is_drained_and_said_so() {
    let (ctl, agent) = cluster_with_node_1().await;
    // A kubeconfig naming a port nothing listens on.
    let api = KubeApi::start(Cluster::with_node(NODE)).await;
    let kubeconfig = ctl.dir.path().join("gone.kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    drop(api);
    let out = pangaea_cmd(&ctl, &["node", "drain", NODE], &kubeconfig)
        .output()
        .await
        .unwrap();
    let text = pangaea_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("no Kubernetes API reachable at https://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("no pod was evicted") && text.contains("applied it"),
        "{text}"
    );
    assert!(kubelet_calls(&agent).last().unwrap().starts_with("remove"));
    let status = std::process::Command::new(pangaea_tests::binary("pangaea-ctl"))
        .current_dir(ctl.dir.path())
        .args(["status", "-o", "json"])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s[0]["drained"], true, "{s}");
    // Drained twice is drained once; uncordon starts the kubelet and says what it could not do.
    let again = pangaea_cmd(&ctl, &["node", "drain", NODE], &kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(pangaea_tests::output_text(&again).contains("already held back"));
    let out = pangaea_cmd(&ctl, &["node", "uncordon", NODE], &kubeconfig)
        .output()
        .await
        .unwrap();
    let text = pangaea_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("could not be marked schedulable"), "{text}");
    assert!(kubelet_calls(&agent).last().unwrap().starts_with("start"));
}
