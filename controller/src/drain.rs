//! Draining a node (`pangaea-ctl node drain`, `node uncordon`, and the first step of
//! `node remove`), in two parts:
//!
//! - **Kubernetes.** The node is cordoned and its pods evicted through the eviction API, as
//!   `kubectl drain --ignore-daemonsets` does: the same requests in the same order (checked
//!   against the real kubectl in tests/tests/drain.rs), the same pods skipped (DaemonSet and
//!   mirror pods) and the same pods refused unless asked for (no controller: `--force`;
//!   emptyDir data: `--delete-emptydir-data`). An eviction a PodDisruptionBudget refuses
//!   (429) is tried again with backoff until the timeout; then the pods and the budgets that
//!   block them are named.
//! - **Pangaea.** The node is marked drained in the state store and its plan leaves out the
//!   kubelet's unit ([`hold_back`]): the agent stops the kubelet and it stays stopped, across
//!   reboots and re-plans, until `node uncordon`.
//!
//! Where no Kubernetes API answers (none runs yet, or it is down), the first part is skipped
//! with a warning saying so, and only the second is done.

use crate::assign::Plan;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// The units a drained node does not run.
pub const HELD_BACK: &[&str] = &[pangaea_compiler::node::KUBELET_UNIT];

/// Leaves the units of [`HELD_BACK`] out of a drained node's plan (their files stay): the
/// agent stops them, and starts them again once the node is no longer drained.
pub fn hold_back(plan: &mut Plan) {
    plan.units.retain(|u| !HELD_BACK.contains(&u.name.as_str()));
}

/// How far a drain may go.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long evictions (refused by budgets) and the pods' termination may take.
    pub timeout: Duration,
    /// Also delete pods that no controller re-creates, and DaemonSet pods whose DaemonSet
    /// is gone.
    pub force: bool,
    /// Also evict pods with emptyDir volumes (their data is lost).
    pub delete_emptydir_data: bool,
}

/// Why the Kubernetes part of a drain did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// No Kubernetes API answered: only what Pangaea manages can be drained.
    #[error("no Kubernetes API reachable at {server}: {message}")]
    Unreachable {
        /// The API server named by the kubeconfig.
        server: String,
        /// What happened.
        message: String,
    },
    /// The kubeconfig could not be used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// Kubernetes has no such node (its kubelet never registered).
    #[error("the Kubernetes API has no node {0} (its kubelet never registered)")]
    NoSuchNode(String),
    /// Pods that may not be deleted without asking; nothing was evicted.
    #[error(
        "cannot drain {node} (it stays cordoned; `pangaea-ctl node uncordon {node}` undoes that):\n{}",
        list(pods)
    )]
    Refused {
        /// The node.
        node: String,
        /// `namespace/name` and why.
        pods: Vec<(String, String)>,
    },
    /// Pods still on the node when the time was up.
    #[error(
        "{node} not drained within {timeout:?} (it stays cordoned; run the drain again, or raise --timeout):\n{}",
        list(pods)
    )]
    NotDrained {
        /// The node.
        node: String,
        /// The timeout.
        timeout: Duration,
        /// `namespace/name` and what holds it.
        pods: Vec<(String, String)>,
    },
    /// The API answered with an error.
    #[error("{0}")]
    Api(String),
}

fn list(pods: &[(String, String)]) -> String {
    pods.iter()
        .map(|(p, why)| format!("  pod {p}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client for the API server of `kubeconfig`, with short timeouts: a drain must say soon
/// when no API answers.
pub async fn client(kubeconfig: &Path) -> Result<(kube::Client, String), DrainError> {
    let bad = |m: String| DrainError::Kubeconfig {
        path: kubeconfig.display().to_string(),
        message: m,
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    // kube-rs retries 429s by itself by default: the drain's own backoff, which knows the
    // deadline and names the budgets, is the one retry (the budget test counts requests).
    config.default_retry = false;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| bad(e.to_string()))?;
    Ok((client, server))
}

/// An error of the first request: no answer at all means no API.
fn first_error(server: &str, e: kube::Error) -> DrainError {
    match e {
        kube::Error::Api(s) => DrainError::Api(format!("{server}: {} ({})", s.message, s.code)),
        e => DrainError::Unreachable {
            server: server.to_owned(),
            message: error_chain(&e),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

fn api_error(what: &str, e: kube::Error) -> DrainError {
    match e {
        kube::Error::Api(s) => DrainError::Api(format!("{what}: {} ({})", s.message, s.code)),
        e => DrainError::Api(format!("{what}: {}", error_chain(&e))),
    }
}

/// Sets the node's `spec.unschedulable` with the strategic merge patch kubectl sends
/// (`true` to cordon, `null` to uncordon); returns whether it changed. `Ok(None)`: no such
/// node.
pub async fn cordon(
    client: &kube::Client,
    server: &str,
    node: &str,
    cordoned: bool,
) -> Result<bool, DrainError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .get_opt(node)
        .await
        .map_err(|e| first_error(server, e))?
        .ok_or_else(|| DrainError::NoSuchNode(node.to_owned()))?;
    let now = n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
    if now == cordoned {
        return Ok(false);
    }
    let value = if cordoned {
        serde_json::Value::Bool(true)
    } else {
        serde_json::Value::Null
    };
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"spec": {"unschedulable": value}})),
        )
        .await
        .map_err(|e| api_error(&format!("patch node {node}"), e))?;
    Ok(true)
}

/// What a drain does with a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Evict it, with these warnings.
    Evict(Vec<String>),
    /// Leave it: why.
    Skip(&'static str),
    /// Refuse the whole drain: why, and what would allow it.
    Refuse(String),
}

/// The pod's DaemonSet, as (namespace, name), if a DaemonSet controls it.
pub fn daemonset_of(pod: &Pod) -> Option<(String, String)> {
    let owner = controller_of(pod)?;
    (owner.kind == "DaemonSet").then(|| {
        (
            pod.metadata.namespace.clone().unwrap_or_default(),
            owner.name.clone(),
        )
    })
}

fn controller_of(
    pod: &Pod,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// What a drain does with `pod` (kubectl's filters, in its order): `daemonset_exists` is
/// whether the pod's DaemonSet ([`daemonset_of`]) still exists.
pub fn disposition(pod: &Pod, daemonset_exists: bool, o: &Options) -> Disposition {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let finished = matches!(phase, Some("Succeeded" | "Failed"));
    let mut warnings = Vec::new();
    if daemonset_of(pod).is_some() && !finished {
        if daemonset_exists {
            return Disposition::Skip("DaemonSet-managed");
        }
        if !o.force {
            return Disposition::Refuse(
                "its DaemonSet is gone (--force deletes the pod)".to_owned(),
            );
        }
        warnings.push("its DaemonSet is gone".to_owned());
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")) {
        return Disposition::Skip("mirror pod (a static pod of the kubelet)");
    }
    let empty_dir = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()));
    if empty_dir && !finished {
        if !o.delete_emptydir_data {
            return Disposition::Refuse(
                "it has local storage, an emptyDir volume (--delete-emptydir-data evicts it; the data is lost)"
                    .to_owned(),
            );
        }
        warnings.push("its emptyDir data is lost".to_owned());
    }
    if controller_of(pod).is_none() && !finished {
        if !o.force {
            return Disposition::Refuse(
                "no controller would re-create it (--force deletes it)".to_owned(),
            );
        }
        warnings.push("no controller re-creates it".to_owned());
    }
    Disposition::Evict(warnings)
}

/// What the Kubernetes part of a drain did.
#[derive(Debug, Default)]
pub struct Drained {
    /// Whether this drain cordoned the node (it was not cordoned before).
    pub cordoned: bool,
    /// The pods evicted, `namespace/name`.
    pub evicted: Vec<String>,
    /// The pods left, and why.
    pub skipped: Vec<(String, &'static str)>,
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Cordons `node` and evicts its pods ([`disposition`]); `progress` hears each step.
pub async fn drain(
    client: &kube::Client,
    server: &str,
    node: &str,
    o: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Drained, DrainError> {
    let deadline = Instant::now() + o.timeout;
    let mut out = Drained {
        cordoned: cordon(client, server, node, true).await?,
        ..Default::default()
    };
    progress(&if out.cordoned {
        format!("node/{node} cordoned")
    } else {
        format!("node/{node} already cordoned")
    });
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|e| api_error(&format!("list the pods on {node}"), e))?;
    let mut evict = Vec::new();
    let mut refused = Vec::new();
    for pod in on_node.items {
        let exists = match daemonset_of(&pod) {
            Some((ns, name)) => Api::<DaemonSet>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
                .map_err(|e| api_error(&format!("get daemonset {ns}/{name}"), e))?
                .is_some(),
            None => false,
        };
        match disposition(&pod, exists, o) {
            Disposition::Evict(warnings) => {
                for w in warnings {
                    progress(&format!("warning: evicting pod {}: {w}", key(&pod)));
                }
                evict.push(pod);
            }
            Disposition::Skip(why) => out.skipped.push((key(&pod), why)),
            Disposition::Refuse(why) => refused.push((key(&pod), why)),
        }
    }
    if !refused.is_empty() {
        return Err(DrainError::Refused {
            node: node.to_owned(),
            pods: refused,
        });
    }
    for (p, why) in &out.skipped {
        progress(&format!("leaving pod {p}: {why}"));
    }
    // All at once, as kubectl: one pod's budget holds back no other pod.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for pod in evict {
        progress(&format!("evicting pod {}", key(&pod)));
        let (client, tx) = (client.clone(), tx.clone());
        tasks.spawn(async move {
            let outcome = evict_and_wait(&client, &pod, deadline, &tx).await;
            if outcome.is_ok() {
                let _ = tx.send(format!("pod {} evicted", key(&pod)));
            }
            (key(&pod), outcome)
        });
    }
    drop(tx);
    while let Some(line) = rx.recv().await {
        progress(&line);
    }
    let mut stuck = Vec::new();
    for (pod, outcome) in tasks.join_all().await {
        match outcome {
            Ok(()) => out.evicted.push(pod),
            Err(why) => stuck.push((pod, why)),
        }
    }
    if !stuck.is_empty() {
        stuck.sort();
        return Err(DrainError::NotDrained {
            node: node.to_owned(),
            timeout: o.timeout,
            pods: stuck,
        });
    }
    out.evicted.sort();
    Ok(out)
}

/// The first wait after a refused eviction, doubled after each until [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between evictions of one pod (kubectl waits 5 s every time).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a pod being deleted is looked at (as kubectl).
const POLL: Duration = Duration::from_secs(1);

/// Evicts `pod` (again after each refusal by a budget, until `deadline`), then waits until
/// it is gone; `Err` says what holds it. Progress goes to `progress`.
async fn evict_and_wait(
    client: &kube::Client,
    pod: &Pod,
    deadline: Instant,
    progress: &tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<(), String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match evict(client, &ns, &name).await {
            Ok(()) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 429 => {
                let why = blocked_by(&s);
                if Instant::now() + backoff > deadline {
                    return Err(why);
                }
                let _ = progress.send(format!(
                    "pod {ns}/{name}: {why}; trying again in {}s",
                    backoff.as_secs()
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(format!("eviction failed: {}", error_chain(&e))),
        }
    }
    let uid = pod.metadata.uid.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    loop {
        match pods.get_opt(&name).await {
            Ok(None) => return Ok(()),
            Ok(Some(p)) if p.metadata.uid != uid => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => {
                return Err(format!(
                    "cannot tell whether it is gone: {}",
                    error_chain(&e)
                ));
            }
        }
        if Instant::now() + POLL > deadline {
            return Err("evicted, but still terminating".to_owned());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a 429 says blocks the eviction: the budgets named in its causes, else its message.
fn blocked_by(s: &kube::core::Status) -> String {
    let causes: Vec<String> = s
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .filter(|c| c.reason == "DisruptionBudget")
                .map(|c| c.message.clone())
                .collect()
        })
        .unwrap_or_default();
    if causes.is_empty() {
        format!("eviction refused: {}", s.message)
    } else {
        format!("blocked by a PodDisruptionBudget: {}", causes.join("; "))
    }
}

/// Posts a policy/v1 Eviction for the pod, as kubectl does. (kube-rs's `Api::evict` sends
/// its delete options under `delete_options`, a key the API server ignores.)
async fn evict(client: &kube::Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
        "deleteOptions": {},
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .map_err(kube::Error::HttpError)?;
    client.request::<kube::core::Status>(req).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(owner: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("ns".into());
        p.metadata.name = Some("p".into());
        p.metadata.owner_references = owner.map(|kind| {
            vec![OwnerReference {
                kind: kind.into(),
                name: "o".into(),
                controller: Some(true),
                ..Default::default()
            }]
        });
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        p
    }

    const PLAIN: Options = Options {
        timeout: Duration::from_secs(1),
        force: false,
        delete_emptydir_data: false,
    };

    #[test]
    fn dispositions_follow_kubectl_drain_ignore_daemonsets() {
        assert_eq!(
            disposition(&pod(Some("ReplicaSet")), false, &PLAIN),
            Disposition::Evict(vec![])
        );
        assert_eq!(
            disposition(&pod(Some("DaemonSet")), true, &PLAIN),
            Disposition::Skip("DaemonSet-managed")
        );
        // An orphaned DaemonSet pod, a bare pod: refused unless forced.
        assert!(matches!(
            disposition(&pod(Some("DaemonSet")), false, &PLAIN),
            Disposition::Refuse(_)
        ));
        assert!(matches!(
            disposition(&pod(None), false, &PLAIN),
            Disposition::Refuse(_)
        ));
        let force = Options {
            force: true,
            ..PLAIN
        };
        assert!(
            matches!(disposition(&pod(None), false, &force), Disposition::Evict(w) if w.len() == 1)
        );
        // A finished bare pod goes without asking.
        let mut done = pod(None);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(
            disposition(&done, false, &PLAIN),
            Disposition::Evict(vec![])
        );
        // Mirror pods stay.
        let mut mirror = pod(Some("Node"));
        mirror.metadata.annotations =
            Some([("kubernetes.io/config.mirror".to_string(), "x".to_string())].into());
        assert!(matches!(
            disposition(&mirror, false, &PLAIN),
            Disposition::Skip(_)
        ));
        // emptyDir data needs its own consent.
        let mut scratch = pod(Some("ReplicaSet"));
        scratch.spec = Some(PodSpec {
            volumes: Some(vec![Volume {
                name: "v".into(),
                empty_dir: Some(Default::default()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(matches!(
            disposition(&scratch, false, &PLAIN),
            Disposition::Refuse(_)
        ));
        let consent = Options {
            delete_emptydir_data: true,
            ..PLAIN
        };
        assert!(
            matches!(disposition(&scratch, false, &consent), Disposition::Evict(w) if w.len() == 1)
        );
    }

    #[test]
    fn a_drained_plan_holds_back_the_kubelet_only() {
        let unit = |n: &str| pangaea_proto::Unit {
            name: n.into(),
            enable: true,
            restart_on_change: vec![],
        };
        let mut plan = Plan {
            files: vec![],
            artifacts: vec![],
            units: vec![
                unit("containerd.service"),
                unit("kubelet.service"),
                unit("etcd.service"),
            ],
        };
        hold_back(&mut plan);
        let names: Vec<&str> = plan.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["containerd.service", "etcd.service"]);
    }
}
