//! A Kubernetes API stand-in: the calls `kubectl drain` and `pangaea-ctl node drain` make,
//! with the API server's shapes, over TLS with client certificates, on loopback.
//!
//! No Kubernetes API server can run on these machines. This one implements only what a
//! drain uses — discovery (legacy, non-aggregated), node get/patch, pod list by
//! `spec.nodeName`, pod get, DaemonSet get, and the policy/v1 eviction subresource with
//! PodDisruptionBudgets — and it is checked by running the real `kubectl drain` against it
//! (tests/tests/drain.rs): a stand-in kubectl could not work with would prove nothing.
//!
//! Budgets are deterministic: a budget refuses its next `blocks` evictions (429, with the
//! `DisruptionBudget` cause the API server sends), then allows them. An allowed eviction
//! marks the pod terminating and deletes it `delete_after` later, as a kubelet would once
//! the containers stopped; clients must wait for it to be gone. Every request is logged.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request the stand-in received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
}

impl Request {
    /// Whether the request changes state (what the kubectl comparison compares).
    pub fn mutating(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }

    /// `METHOD path`; for a patch also its type and the body's JSON (its semantics).
    pub fn summary(&self) -> String {
        if self.method == "PATCH" {
            let body: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
            format!("{} {} {} {body}", self.method, self.path, self.content_type)
        } else {
            format!("{} {}", self.method, self.path)
        }
    }
}

/// A PodDisruptionBudget: it covers the pods whose labels include `match_labels`.
#[derive(Clone, Debug)]
pub struct Budget {
    pub namespace: String,
    pub name: String,
    pub match_labels: BTreeMap<String, String>,
    /// Evictions refused before the budget allows one (`u32::MAX`: never).
    pub blocks: u32,
}

/// What the API holds.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Value>,
    /// Pods, in creation order.
    pub pods: Vec<Value>,
    /// DaemonSets that exist, as (namespace, name).
    pub daemonsets: Vec<(String, String)>,
    pub budgets: Vec<Budget>,
    /// How long after an allowed eviction the pod is gone.
    pub delete_after: Duration,
    /// Requests the stand-in does not implement (`METHOD path`): a client needing one
    /// would not be checked by it.
    pub unserved: Vec<String>,
}

impl Cluster {
    /// A cluster with one schedulable node `name`.
    pub fn with_node(name: &str) -> Cluster {
        let mut c = Cluster {
            delete_after: Duration::from_millis(1500),
            ..Default::default()
        };
        c.nodes.insert(
            name.into(),
            json!({
                "kind": "Node", "apiVersion": "v1",
                "metadata": {"name": name, "uid": format!("uid-node-{name}"), "resourceVersion": "1"},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            }),
        );
        c
    }

    /// Adds a running pod on `node`; `owner` is its controller as (kind, name), if any.
    pub fn pod(
        &mut self,
        namespace: &str,
        name: &str,
        node: &str,
        owner: Option<(&str, &str)>,
        labels: &[(&str, &str)],
    ) -> &mut Value {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut meta = json!({
            "name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
            "resourceVersion": "1", "labels": labels,
        });
        if let Some((kind, owner)) = owner {
            let api = if kind == "DaemonSet" || kind == "ReplicaSet" {
                "apps/v1"
            } else {
                "v1"
            };
            meta["ownerReferences"] = json!([{
                "apiVersion": api, "kind": kind, "name": owner,
                "uid": format!("uid-{owner}"), "controller": true, "blockOwnerDeletion": true
            }]);
        }
        self.pods.push(json!({
            "kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
            "status": {"phase": "Running"}
        }));
        self.pods.last_mut().unwrap()
    }

    /// The names (`namespace/name`) of the pods still there.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.iter().map(pod_key).collect()
    }

    /// Whether node `name` is cordoned.
    pub fn unschedulable(&self, name: &str) -> bool {
        self.nodes[name]["spec"]["unschedulable"] == json!(true)
    }
}

fn pod_key(p: &Value) -> String {
    format!(
        "{}/{}",
        p["metadata"]["namespace"].as_str().unwrap_or(""),
        p["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// The TLS material of a stand-in: its CA, and an administrator's client certificate.
struct Tls {
    server: Arc<rustls::ServerConfig>,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn tls() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kube-api stand-in CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec![]).unwrap();
    sp.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    sp.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let server_cert = sp.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(vec![]).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "admin");
    cp.distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    let client_cert = cp.signed_by(&client_key, &issuer).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let mut server = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Tls {
        server: Arc::new(server),
        ca_pem: ca_cert.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// The stand-in, serving until dropped.
pub struct KubeApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<Cluster>>,
    pub log: Arc<Mutex<Vec<Request>>>,
    tls: Tls,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeApi {
    /// Serves `cluster` on a free loopback port.
    pub async fn start(cluster: Cluster) -> KubeApi {
        pangaea_core::install_crypto_provider();
        let tls = tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(cluster));
        let log = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
        let (s, l) = (state.clone(), log.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, s, l) = (acceptor.clone(), s.clone(), l.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (s, l) = (s.clone(), l.clone());
                        async move { Ok::<_, std::convert::Infallible>(handle(req, s, l).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        KubeApi {
            addr,
            state,
            log,
            tls,
            task,
        }
    }

    /// Writes a kubeconfig for this API, as Pangaea writes the operator's: the CA and an
    /// administrator's client certificate inline.
    pub fn write_kubeconfig(&self, path: &Path) {
        use base64::Engine;
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: admin\ncurrent-context: standin\n",
            self.addr,
            b(&self.tls.ca_pem),
            b(&self.tls.client_cert_pem),
            b(&self.tls.client_key_pem),
        );
        std::fs::write(path, text).unwrap();
    }

    /// The mutating requests so far, summarized ([`Request::summary`]).
    pub fn mutations(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.mutating())
            .map(Request::summary)
            .collect()
    }

    /// Forgets the requests logged so far.
    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    /// A copy of what the API holds now.
    pub fn cluster(&self) -> Cluster {
        self.state.lock().unwrap().clone()
    }
}

type Response = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn respond(code: u16, body: Value) -> Response {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap()
}

/// A `Status` object, as the API server sends with every error.
fn status(code: u16, reason: &str, message: &str, details: Value) -> Response {
    respond(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": if code < 300 { "Success" } else { "Failure" },
            "message": message, "reason": reason, "details": details, "code": code
        }),
    )
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        404,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind}),
    )
}

fn discovery(path: &str, addr: &str) -> Option<Value> {
    let resource = |name: &str, kind: &str, namespaced: bool, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs});
    let group = |name: &str| {
        json!({"name": name, "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}],
               "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"}})
    };
    Some(match path {
        "/version" => {
            json!({"major": "1", "minor": "35", "gitVersion": "v1.35.1", "platform": "linux/amd64"})
        }
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [group("apps"), group("policy")]}),
        "/api/v1" => {
            let mut eviction = resource("pods/eviction", "Eviction", true, &["create"]);
            eviction["group"] = json!("policy");
            eviction["version"] = json!("v1");
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                resource("nodes", "Node", false, &["get", "list", "patch", "update", "watch"]),
                resource("pods", "Pod", true, &["delete", "get", "list", "patch", "watch"]),
                eviction,
            ]})
        }
        "/apis/apps/v1" => {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
            "resources": [resource("daemonsets", "DaemonSet", true, &["get", "list"])]})
        }
        "/apis/policy/v1" => {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "policy/v1",
            "resources": [resource("poddisruptionbudgets", "PodDisruptionBudget", true, &["get", "list"])]})
        }
        _ => return None,
    })
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    state: Arc<Mutex<Cluster>>,
    log: Arc<Mutex<Vec<Request>>>,
) -> Response {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    log.lock().unwrap().push(Request {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
    });
    let addr = "127.0.0.1";
    if method == "GET"
        && let Some(d) = discovery(&path, addr)
    {
        return respond(200, d);
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["api", "v1", "nodes", name]) => match state.lock().unwrap().nodes.get(*name) {
            Some(n) => respond(200, n.clone()),
            None => not_found("nodes", name),
        },
        ("PATCH", ["api", "v1", "nodes", name]) => {
            let Ok(patch) = serde_json::from_str::<Value>(&body) else {
                return status(400, "BadRequest", "the patch is not JSON", json!({}));
            };
            if !content_type.starts_with("application/strategic-merge-patch+json")
                && !content_type.starts_with("application/merge-patch+json")
            {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!("the stand-in takes merge patches, not {content_type:?}"),
                    json!({}),
                );
            }
            let mut s = state.lock().unwrap();
            let Some(node) = s.nodes.get_mut(*name) else {
                return not_found("nodes", name);
            };
            merge(node, &patch);
            respond(200, node.clone())
        }
        ("GET", ["api", "v1", "pods"]) => {
            let on = field_selector_node(&query);
            let s = state.lock().unwrap();
            let items: Vec<&Value> = s
                .pods
                .iter()
                .filter(|p| on.as_deref().is_none_or(|n| p["spec"]["nodeName"] == n))
                .collect();
            respond(
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            let s = state.lock().unwrap();
            match s.pods.iter().find(|p| pod_key(p) == format!("{ns}/{name}")) {
                Some(p) => respond(200, p.clone()),
                None => not_found("pods", name),
            }
        }
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "daemonsets", name]) => {
            let s = state.lock().unwrap();
            if s.daemonsets.iter().any(|(n, d)| n == ns && d == name) {
                respond(
                    200,
                    json!({"kind": "DaemonSet", "apiVersion": "apps/v1",
                        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
                        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {}}}),
                )
            } else {
                not_found("daemonsets.apps", name)
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) => {
            evict(&state, ns, name, &body)
        }
        _ => {
            state
                .lock()
                .unwrap()
                .unserved
                .push(format!("{method} {path}"));
            status(
                404,
                "NotFound",
                &format!("the stand-in does not serve {method} {path}"),
                json!({}),
            )
        }
    }
}

/// The node named by a `fieldSelector=spec.nodeName=NAME` query, if any.
fn field_selector_node(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let v = kv.strip_prefix("fieldSelector=")?;
        let v = v.replace("%3D", "=").replace("%3d", "=");
        v.strip_prefix("spec.nodeName=").map(str::to_owned)
    })
}

/// A JSON merge patch (what the node patches of a drain amount to): `null` deletes.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn evict(state: &Arc<Mutex<Cluster>>, ns: &str, name: &str, body: &str) -> Response {
    let Ok(eviction) = serde_json::from_str::<Value>(body) else {
        return status(400, "BadRequest", "the eviction is not JSON", json!({}));
    };
    if eviction["apiVersion"] != "policy/v1" || eviction["kind"] != "Eviction" {
        return status(
            400,
            "BadRequest",
            &format!(
                "expected a policy/v1 Eviction, got {} {}",
                eviction["apiVersion"], eviction["kind"]
            ),
            json!({}),
        );
    }
    let mut s = state.lock().unwrap();
    let key = format!("{ns}/{name}");
    let Some(pod) = s.pods.iter().find(|p| pod_key(p) == key).cloned() else {
        return not_found("pods", name);
    };
    if pod["metadata"]["deletionTimestamp"].is_string() {
        // Already terminating: the API server accepts the eviction again.
        return status(201, "", "", json!({}));
    }
    let labels = &pod["metadata"]["labels"];
    if let Some(b) = s.budgets.iter_mut().find(|b| {
        b.namespace == ns
            && b.match_labels
                .iter()
                .all(|(k, v)| labels[k.as_str()] == v.as_str())
    }) && b.blocks > 0
    {
        b.blocks = b
            .blocks
            .saturating_sub(if b.blocks == u32::MAX { 0 } else { 1 });
        return status(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
            json!({"causes": [{"reason": "DisruptionBudget",
                "message": format!("The disruption budget {} needs 1 healthy pods and has 1 currently", b.name)}]}),
        );
    }
    for p in s.pods.iter_mut().filter(|p| pod_key(p) == key) {
        p["metadata"]["deletionTimestamp"] = json!("2026-11-22T00:00:00Z");
    }
    let (delay, st) = (s.delete_after, state.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        st.lock().unwrap().pods.retain(|p| pod_key(p) != key);
    });
    status(201, "", "", json!({}))
}
