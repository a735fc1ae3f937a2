//! A Compute Engine API (v1) stand-in on loopback, with Google's resource, operation and
//! error shapes: projects, zones, image families, instances (insert, get, list with
//! pagination and a label filter, delete, start, stop, reset) and zone operations (get,
//! wait). Mutating calls honour `requestId` as Google does: the same id again is answered
//! with the first call's operation.
//!
//! It also serves the OAuth2 token endpoint of service accounts (`POST /token`, RFC 7523):
//! given the account's public key, it checks the JWT's RS256 signature and claims and
//! issues access tokens, which the Compute calls must then carry.
//!
//! It is checked by the real gcloud CLI (tests/tests/gce_api.rs drives `gcloud compute
//! instances create|list|describe|delete` against it through
//! `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE`), so a shape gcloud would not accept fails
//! there. Faults on request: responses lost after the work was done, zones out of
//! resources (the insert's operation ends with `ZONE_RESOURCE_POOL_EXHAUSTED`).
//!
//! Networks and subnetworks are served too (a network in use by a subnetwork or a firewall
//! rule refuses deletion, as Google's does). With [`State::machines`] set, instances are
//! real machines: each insert, start, stop, reset and delete is carried out by it (the e2e
//! test boots local nspawn nodes from the instance's `user-data`) before the call answers.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A request the stand-in received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path below the base URL (`projects/demo/zones/…`).
    pub path: String,
    pub query: String,
    pub authorization: String,
    pub body: Value,
}

/// What happens to an instance, for [`State::machines`].
#[derive(Clone, Debug)]
pub enum MachineEvent {
    /// Inserted: boot it with this user-data at this internal address.
    Create {
        name: String,
        /// The instance's ID (what cloud-init's GCE datasource gives the node).
        id: String,
        address: Option<std::net::Ipv4Addr>,
        user_data: String,
    },
    Start(String),
    Stop(String),
    /// A hard reset: off without a shutdown, then on.
    Reset(String),
    Delete(String),
}

/// Carries out instance events on real machines; the call answers once it returns.
pub type Machines = Arc<
    dyn Fn(MachineEvent) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// What the API holds, and the faults it plays.
#[derive(Default)]
pub struct State {
    /// Instances by (zone, name).
    pub instances: BTreeMap<(String, String), Value>,
    /// Firewall rules by name.
    pub firewalls: BTreeMap<String, Value>,
    /// Disks by (zone, name), with their `users`.
    pub disks: BTreeMap<(String, String), Value>,
    /// Static addresses by (region, name).
    pub addresses: BTreeMap<(String, String), Value>,
    /// Networks by name.
    pub networks: BTreeMap<String, Value>,
    /// Subnetworks by (region, name).
    pub subnetworks: BTreeMap<(String, String), Value>,
    /// Real machines behind the instances, when set.
    pub machines: Option<Machines>,
    pub operations: BTreeMap<String, Value>,
    /// requestId → operation name.
    pub request_ids: BTreeMap<String, String>,
    /// Mutating requests whose response is lost (the connection closed) after the work
    /// was done; counts down.
    pub lose_responses: u32,
    /// Zones where an insert's operation fails for lack of resources.
    pub exhausted: BTreeSet<String>,
    /// Page size of instance lists (Google's default is 500).
    pub page_size: usize,
    pub log: Vec<Request>,
    /// Requests it does not implement (`METHOD path`).
    pub unserved: Vec<String>,
    /// The service account's public key (PKCS#1 DER): when set, `/token` verifies
    /// assertions with it and the Compute calls must carry a token it issued.
    pub sa_public_key: Option<Vec<u8>>,
    /// Lifetime of the tokens `/token` issues, seconds (default 3600).
    pub token_lifetime: u64,
    /// Tokens issued.
    pub issued: Vec<String>,
    /// setMetadata calls preceded by another writer's change (the caller's fingerprint is
    /// then stale: 412); counts down.
    pub concurrent_metadata_writes: u32,
    next_id: u64,
}

/// The stand-in, serving until dropped.
pub struct GceApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GceApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The project every test uses.
pub const PROJECT: &str = "demo";

impl GceApi {
    pub async fn start() -> GceApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            page_size: 500,
            token_lifetime: 3600,
            ..Default::default()
        }));
        let base = format!("http://{addr}/compute/v1/");
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (s, base) = (s.clone(), base.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (s, base) = (s.clone(), base.clone());
                        async move { handle(req, &s, &base).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        GceApi { addr, state, task }
    }

    /// The base URL (what `CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE` is set to).
    pub fn base(&self) -> String {
        format!("http://{}/compute/v1/", self.addr)
    }

    /// The service accounts' token endpoint (a key file's `token_uri`).
    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The requests so far whose method and path match.
    pub fn requests(&self, method: &str, path_suffix: &str) -> Vec<Request> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(path_suffix))
            .cloned()
            .collect()
    }

    /// The names of the instances in `zone`.
    pub fn instances(&self, zone: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .instances
            .keys()
            .filter(|(z, _)| z == zone)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

type Response = hyper::Response<http_body_util::Full<bytes::Bytes>>;

fn respond(code: u16, body: &Value) -> Response {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json; charset=UTF-8")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap()
}

/// Google's error shape.
fn error(code: u16, reason: &str, message: &str) -> Response {
    respond(
        code,
        &json!({"error": {"code": code, "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}]}}),
    )
}

/// Google's 404 for a resource (`projects/P/zones/Z/instances/N`).
fn not_found(resource: &str) -> Response {
    error(
        404,
        "notFound",
        &format!("The resource '{resource}' was not found"),
    )
}

fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(r, _)| r)
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    base: &str,
) -> Result<Response, std::io::Error> {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let full = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if method == "POST" && full == "/token" {
        let mut s = state.lock().unwrap();
        let uri = format!("{}token", base.trim_end_matches("compute/v1/"));
        return Ok(token(&mut s, &String::from_utf8_lossy(&bytes), &uri));
    }
    let Some(path) = full.strip_prefix("/compute/v1/").map(str::to_owned) else {
        return Ok(error(404, "notFound", &format!("no API at {full}")));
    };
    let (response, machines, event) = {
        let mut s = state.lock().unwrap();
        s.log.push(Request {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            authorization: authorization.clone(),
            body: body.clone(),
        });
        if !authorization.starts_with("Bearer ") || authorization.len() < 12 {
            return Ok(error(
                401,
                "required",
                "Request is missing required authentication credential.",
            ));
        }
        if s.sa_public_key.is_some()
            && !s
                .issued
                .iter()
                .any(|t| authorization == format!("Bearer {t}"))
        {
            return Ok(error(401, "authError", "Invalid Credentials"));
        }
        let param = |k: &str| {
            query.split('&').find_map(|kv| {
                kv.strip_prefix(&format!("{k}="))
                    .map(|v| v.replace("%3D", "=").replace("%3d", "=").replace('+', " "))
            })
        };
        let parts: Vec<&str> = path.split('/').collect();
        let url = |p: &str| format!("{base}{p}");
        let mutating = method != "GET";
        // A repeated requestId: the first call's operation, nothing done again.
        if mutating
            && let Some(id) = param("requestId")
            && let Some(op) = s
                .request_ids
                .get(&id)
                .and_then(|n| s.operations.get(n))
                .cloned()
        {
            return lose_or(&mut s, respond(200, &op));
        }
        let mut event = None;
        let response = match (method.as_str(), parts.as_slice()) {
            ("GET", ["projects", p]) => respond(
                200,
                &json!({"kind": "compute#project", "name": p, "id": "1234",
                "defaultServiceAccount": format!("1234-compute@developer.gserviceaccount.com"),
                "selfLink": url(&format!("projects/{p}"))}),
            ),
            ("GET", ["projects", p, "regions", r]) => {
                let zones: Vec<String> = ["a", "b", "c", "f"]
                    .iter()
                    .map(|l| url(&format!("projects/{p}/zones/{r}-{l}")))
                    .collect();
                respond(
                    200,
                    &json!({"kind": "compute#region", "name": r, "status": "UP", "zones": zones,
                    "selfLink": url(&path)}),
                )
            }
            (
                "POST",
                [
                    "projects",
                    _,
                    "zones",
                    z,
                    "instances",
                    n,
                    "deleteAccessConfig",
                ],
            ) => {
                let key = (z.to_string(), n.to_string());
                let Some(i) = s.instances.get(&key).cloned() else {
                    return Ok(not_found(&format!(
                        "projects/{PROJECT}/zones/{z}/instances/{n}"
                    )));
                };
                let name = param("accessConfig").unwrap_or_default();
                let nic = &i["networkInterfaces"][0];
                if param("networkInterface").as_deref() != nic["name"].as_str() {
                    error(400, "invalid", "Invalid value for field 'networkInterface'")
                } else {
                    let (gone, kept): (Vec<Value>, Vec<Value>) = nic["accessConfigs"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .partition(|ac| ac["name"] == name.as_str());
                    if gone.is_empty() {
                        not_found(&format!("accessConfig {name}"))
                    } else {
                        let link = i["selfLink"].as_str().unwrap_or_default().to_owned();
                        release_addresses_of(&mut s, &link);
                        s.instances.get_mut(&key).unwrap()["networkInterfaces"][0]["accessConfigs"] =
                            json!(kept);
                        let op = operation(
                            &mut s,
                            z,
                            "deleteAccessConfig",
                            &link,
                            None,
                            &url,
                            param("requestId"),
                        );
                        respond(200, &op)
                    }
                }
            }
            ("POST", ["projects", _, "zones", z, "instances", n, "addAccessConfig"]) => {
                let key = (z.to_string(), n.to_string());
                let Some(i) = s.instances.get(&key).cloned() else {
                    return Ok(not_found(&format!(
                        "projects/{PROJECT}/zones/{z}/instances/{n}"
                    )));
                };
                let nic = &i["networkInterfaces"][0];
                let link = i["selfLink"].as_str().unwrap_or_default().to_owned();
                if param("networkInterface").as_deref() != nic["name"].as_str() {
                    error(400, "invalid", "Invalid value for field 'networkInterface'")
                } else if nic["accessConfigs"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                {
                    error(
                        400,
                        "invalid",
                        "At most one access config currently supported.",
                    )
                } else {
                    let mut ac = body.clone();
                    ac["kind"] = json!("compute#accessConfig");
                    match take_address(&mut s, region_of(z), &ac, &link, nic) {
                        Err(e) => *e,
                        Ok(nat) => {
                            ac["natIP"] = nat;
                            s.instances.get_mut(&key).unwrap()["networkInterfaces"][0]["accessConfigs"] =
                                json!([ac]);
                            let op = operation(
                                &mut s,
                                z,
                                "addAccessConfig",
                                &link,
                                None,
                                &url,
                                param("requestId"),
                            );
                            respond(200, &op)
                        }
                    }
                }
            }
            ("POST", ["projects", _, "zones", z, "instances", n, "setMetadata"]) => {
                let key = (z.to_string(), n.to_string());
                if !s.instances.contains_key(&key) {
                    return Ok(not_found(&format!(
                        "projects/{PROJECT}/zones/{z}/instances/{n}"
                    )));
                }
                // Another writer, just before this one: the fingerprint moves on.
                if s.concurrent_metadata_writes > 0 {
                    s.concurrent_metadata_writes -= 1;
                    let i = s.instances.get_mut(&key).unwrap();
                    let mut items = i["metadata"]["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    items.push(json!({"key": "written-meanwhile", "value": "yes"}));
                    i["metadata"] = metadata(items);
                }
                if body["fingerprint"] != s.instances[&key]["metadata"]["fingerprint"] {
                    error(
                        412,
                        "conditionNotMet",
                        "Supplied fingerprint does not match current metadata fingerprint.",
                    )
                } else {
                    let items = body["items"].as_array().cloned().unwrap_or_default();
                    s.instances.get_mut(&key).unwrap()["metadata"] = metadata(items);
                    let target = url(&format!("projects/{PROJECT}/zones/{z}/instances/{n}"));
                    let op = operation(
                        &mut s,
                        z,
                        "setMetadata",
                        &target,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            ("GET", ["projects", p, "zones", z]) => respond(
                200,
                &json!({"kind": "compute#zone", "name": z, "status": "UP",
                "region": url(&format!("projects/{p}/regions/{}", region_of(z))),
                "selfLink": url(&path), "id": "2000"}),
            ),
            ("GET", ["projects", p, "global", "images", "family", f])
            | ("GET", ["projects", p, "zones", _, "imageFamilyViews", f]) => {
                let image = json!({"kind": "compute#image", "name": format!("{f}-v20260101"),
                "family": f, "status": "READY", "diskSizeGb": "10", "id": "3000",
                "selfLink": url(&format!("projects/{p}/global/images/{f}-v20260101"))});
                if parts[2] == "zones" {
                    respond(
                        200,
                        &json!({"kind": "compute#imageFamilyView", "image": image}),
                    )
                } else {
                    respond(200, &image)
                }
            }
            ("POST", ["projects", p, "zones", z, "instances"]) => {
                let r = insert(&mut s, p, z, &body, &url, param("requestId"));
                if r.status() == 200 && !s.exhausted.contains(*z) {
                    let name = body["name"].as_str().unwrap_or_default().to_owned();
                    event = Some(MachineEvent::Create {
                        id: s.instances[&(z.to_string(), name.clone())]["id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        name,
                        address: body["networkInterfaces"][0]["networkIP"]
                            .as_str()
                            .and_then(|a| a.parse().ok()),
                        user_data: body["metadata"]["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|i| i["key"] == "user-data")
                            .and_then(|i| i["value"].as_str())
                            .unwrap_or_default()
                            .to_owned(),
                    });
                }
                r
            }
            ("GET", ["projects", _, "zones", z, "instances"]) => {
                let filter = param("filter");
                let wanted = filter
                    .as_deref()
                    .and_then(|f| f.strip_prefix("labels."))
                    .and_then(|f| f.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()));
                let all: Vec<Value> = s
                    .instances
                    .iter()
                    .filter(|((zone, _), _)| zone == z)
                    .map(|(_, i)| i.clone())
                    .filter(|i| {
                        wanted
                            .as_ref()
                            .is_none_or(|(k, v)| i["labels"][k.as_str()] == v.as_str())
                    })
                    .collect();
                let size = param("maxResults")
                    .and_then(|m| m.parse::<usize>().ok())
                    .unwrap_or(s.page_size)
                    .min(s.page_size);
                let from: usize = param("pageToken").and_then(|t| t.parse().ok()).unwrap_or(0);
                let page: Vec<&Value> = all.iter().skip(from).take(size).collect();
                let mut list = json!({"kind": "compute#instanceList", "id": format!("projects/{PROJECT}/zones/{z}/instances"),
                "items": page, "selfLink": url(&path)});
                if from + size < all.len() {
                    list["nextPageToken"] = json!((from + size).to_string());
                }
                respond(200, &list)
            }
            ("GET", ["projects", _, "zones", z, "instances", n]) => {
                match s.instances.get(&(z.to_string(), n.to_string())) {
                    Some(i) => respond(200, i),
                    None => not_found(&format!("projects/{PROJECT}/zones/{z}/instances/{n}")),
                }
            }
            ("GET", ["projects", _, "zones", z, "disks", d]) => {
                match s.disks.get(&(z.to_string(), d.to_string())) {
                    Some(disk) => respond(200, disk),
                    None => not_found(&format!("projects/{PROJECT}/zones/{z}/disks/{d}")),
                }
            }
            ("DELETE", ["projects", _, "zones", z, "disks", d]) => {
                let key = (z.to_string(), d.to_string());
                match s.disks.get(&key) {
                    None => not_found(&format!("projects/{PROJECT}/zones/{z}/disks/{d}")),
                    Some(disk) if disk["users"].as_array().is_some_and(|u| !u.is_empty()) => error(
                        400,
                        "resourceInUseByAnotherResource",
                        &format!(
                            "The disk resource 'projects/{PROJECT}/zones/{z}/disks/{d}' is already being used"
                        ),
                    ),
                    Some(_) => {
                        s.disks.remove(&key);
                        let target = url(&format!("projects/{PROJECT}/zones/{z}/disks/{d}"));
                        let op =
                            operation(&mut s, z, "delete", &target, None, &url, param("requestId"));
                        respond(200, &op)
                    }
                }
            }
            ("DELETE", ["projects", _, "zones", z, "instances", n]) => {
                let removed = s.instances.remove(&(z.to_string(), n.to_string()));
                if let Some(i) = &removed {
                    release_addresses_of(&mut s, i["selfLink"].as_str().unwrap_or_default());
                }
                // Its disks: deleted with it when autoDelete, else detached and kept.
                for d in removed
                    .iter()
                    .flat_map(|i| i["disks"].as_array().cloned().unwrap_or_default())
                {
                    let name = d["source"]
                        .as_str()
                        .and_then(|l| l.rsplit('/').next())
                        .unwrap_or_default()
                        .to_owned();
                    let key = (z.to_string(), name);
                    if d["autoDelete"] == true {
                        s.disks.remove(&key);
                    } else if let Some(disk) = s.disks.get_mut(&key) {
                        disk["users"] = json!([]);
                    }
                }
                if removed.is_none() {
                    not_found(&format!("projects/{PROJECT}/zones/{z}/instances/{n}"))
                } else {
                    event = Some(MachineEvent::Delete(n.to_string()));
                    let op = operation(
                        &mut s,
                        z,
                        "delete",
                        &url(&format!("projects/{PROJECT}/zones/{z}/instances/{n}")),
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            (
                "POST",
                [
                    "projects",
                    _,
                    "zones",
                    z,
                    "instances",
                    n,
                    action @ ("start" | "stop" | "reset"),
                ],
            ) => {
                let key = (z.to_string(), n.to_string());
                if !s.instances.contains_key(&key) {
                    not_found(&format!("projects/{PROJECT}/zones/{z}/instances/{n}"))
                } else {
                    let status = if *action == "stop" {
                        "TERMINATED"
                    } else {
                        "RUNNING"
                    };
                    s.instances.get_mut(&key).unwrap()["status"] = json!(status);
                    event = Some(match *action {
                        "start" => MachineEvent::Start(n.to_string()),
                        "stop" => MachineEvent::Stop(n.to_string()),
                        _ => MachineEvent::Reset(n.to_string()),
                    });
                    let target = url(&format!("projects/{PROJECT}/zones/{z}/instances/{n}"));
                    let op = operation(&mut s, z, action, &target, None, &url, param("requestId"));
                    respond(200, &op)
                }
            }
            ("POST", ["projects", p, "global", "firewalls"]) => {
                let Some(name) = body["name"].as_str().map(str::to_owned) else {
                    return Ok(error(
                        400,
                        "required",
                        "Required field 'resource.name' not specified",
                    ));
                };
                let target = url(&format!("projects/{p}/global/firewalls/{name}"));
                let mut rule = body.clone();
                rule["kind"] = json!("compute#firewall");
                rule["selfLink"] = json!(target);
                rule["id"] = json!("5000");
                if let std::collections::btree_map::Entry::Vacant(v) =
                    s.firewalls.entry(name.clone())
                {
                    v.insert(rule);
                    let op = operation(
                        &mut s,
                        "global",
                        "insert",
                        &target,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                } else {
                    already_exists(&format!("projects/{p}/global/firewalls/{name}"))
                }
            }
            ("GET", ["projects", p, "global", "firewalls", n]) => match s.firewalls.get(*n) {
                Some(f) => respond(200, f),
                None => not_found(&format!("projects/{p}/global/firewalls/{n}")),
            },
            ("DELETE", ["projects", p, "global", "firewalls", n]) => {
                if s.firewalls.remove(*n).is_none() {
                    not_found(&format!("projects/{p}/global/firewalls/{n}"))
                } else {
                    let target = url(&format!("projects/{p}/global/firewalls/{n}"));
                    let op = operation(
                        &mut s,
                        "global",
                        "delete",
                        &target,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            ("POST", ["projects", p, "regions", r, "addresses"]) => {
                let Some(name) = body["name"].as_str().map(str::to_owned) else {
                    return Ok(error(
                        400,
                        "required",
                        "Required field 'resource.name' not specified",
                    ));
                };
                let key = (r.to_string(), name.clone());
                if s.addresses.contains_key(&key) {
                    already_exists(&format!("projects/{p}/regions/{r}/addresses/{name}"))
                } else {
                    let target = url(&format!("projects/{p}/regions/{r}/addresses/{name}"));
                    let mut a = body.clone();
                    a["kind"] = json!("compute#address");
                    a["selfLink"] = json!(target);
                    a["region"] = json!(url(&format!("projects/{p}/regions/{r}")));
                    a["address"] = json!(format!("198.51.100.{}", s.addresses.len() + 10));
                    a["addressType"] = json!("EXTERNAL");
                    a["status"] = json!("RESERVED");
                    s.addresses.insert(key, a);
                    let op = operation(
                        &mut s,
                        &format!("regions/{r}"),
                        "insert",
                        &target,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            ("GET", ["projects", p, "regions", r, "addresses", n]) => {
                match s.addresses.get(&(r.to_string(), n.to_string())) {
                    Some(a) => respond(200, a),
                    None => not_found(&format!("projects/{p}/regions/{r}/addresses/{n}")),
                }
            }
            ("DELETE", ["projects", p, "regions", r, "addresses", n])
                if s.addresses
                    .get(&(r.to_string(), n.to_string()))
                    .is_some_and(|a| a["status"] == "IN_USE") =>
            {
                error(
                    400,
                    "resourceInUseByAnotherResource",
                    &format!(
                        "The address resource 'projects/{p}/regions/{r}/addresses/{n}' is already being used by '{}'",
                        s.addresses[&(r.to_string(), n.to_string())]["users"][0]
                            .as_str()
                            .unwrap_or_default()
                    ),
                )
            }
            ("DELETE", ["projects", p, "regions", r, "addresses", n]) => {
                if s.addresses
                    .remove(&(r.to_string(), n.to_string()))
                    .is_none()
                {
                    not_found(&format!("projects/{p}/regions/{r}/addresses/{n}"))
                } else {
                    let target = url(&format!("projects/{p}/regions/{r}/addresses/{n}"));
                    let op = operation(
                        &mut s,
                        &format!("regions/{r}"),
                        "delete",
                        &target,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            ("POST", ["projects", p, "global", "networks"]) => {
                let name = body["name"].as_str().unwrap_or_default().to_owned();
                let target = url(&format!("projects/{p}/global/networks/{name}"));
                if let std::collections::btree_map::Entry::Vacant(v) =
                    s.networks.entry(name.clone())
                {
                    let mut n = body.clone();
                    n["kind"] = json!("compute#network");
                    n["selfLink"] = json!(target);
                    n["subnetworks"] = json!([]);
                    v.insert(n);
                    let op = operation(
                        &mut s,
                        "global",
                        "insert",
                        &target,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                } else {
                    already_exists(&format!("projects/{p}/global/networks/{name}"))
                }
            }
            ("GET", ["projects", p, "global", "networks", n]) => match s.networks.get(*n) {
                Some(v) => respond(200, v),
                None => not_found(&format!("projects/{p}/global/networks/{n}")),
            },
            ("DELETE", ["projects", p, "global", "networks", n]) => {
                let link = url(&format!("projects/{p}/global/networks/{n}"));
                let users: Vec<String> = s
                    .subnetworks
                    .values()
                    .chain(s.firewalls.values())
                    .filter(|v| v["network"] == link.as_str())
                    .filter_map(|v| v["selfLink"].as_str().map(str::to_owned))
                    .collect();
                if !s.networks.contains_key(*n) {
                    not_found(&format!("projects/{p}/global/networks/{n}"))
                } else if let Some(user) = users.first() {
                    error(
                        400,
                        "resourceInUseByAnotherResource",
                        &format!(
                            "The network resource 'projects/{p}/global/networks/{n}' is already being used by '{user}'"
                        ),
                    )
                } else {
                    s.networks.remove(*n);
                    let op = operation(
                        &mut s,
                        "global",
                        "delete",
                        &link,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            ("POST", ["projects", p, "regions", r, "subnetworks"]) => {
                let name = body["name"].as_str().unwrap_or_default().to_owned();
                let target = url(&format!("projects/{p}/regions/{r}/subnetworks/{name}"));
                let network = body["network"].as_str().unwrap_or_default();
                let key = (r.to_string(), name.clone());
                if s.subnetworks.contains_key(&key) {
                    already_exists(&format!("projects/{p}/regions/{r}/subnetworks/{name}"))
                } else if !s.networks.values().any(|n| n["selfLink"] == network) {
                    not_found(network)
                } else {
                    let mut sub = body.clone();
                    sub["kind"] = json!("compute#subnetwork");
                    sub["selfLink"] = json!(target);
                    sub["region"] = json!(url(&format!("projects/{p}/regions/{r}")));
                    s.subnetworks.insert(key, sub);
                    let op = operation(
                        &mut s,
                        &format!("regions/{r}"),
                        "insert",
                        &target,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            ("GET", ["projects", p, "regions", r, "subnetworks", n]) => {
                match s.subnetworks.get(&(r.to_string(), n.to_string())) {
                    Some(v) => respond(200, v),
                    None => not_found(&format!("projects/{p}/regions/{r}/subnetworks/{n}")),
                }
            }
            ("DELETE", ["projects", p, "regions", r, "subnetworks", n]) => {
                let link = url(&format!("projects/{p}/regions/{r}/subnetworks/{n}"));
                let user = s
                    .instances
                    .values()
                    .find(|i| i["networkInterfaces"][0]["subnetwork"] == link.as_str())
                    .and_then(|i| i["selfLink"].as_str().map(str::to_owned));
                if s.subnetworks
                    .remove(&(r.to_string(), n.to_string()))
                    .is_none()
                {
                    not_found(&format!("projects/{p}/regions/{r}/subnetworks/{n}"))
                } else if let Some(user) = user {
                    let v = json!({"selfLink": link});
                    s.subnetworks.insert((r.to_string(), n.to_string()), v);
                    error(
                        400,
                        "resourceInUseByAnotherResource",
                        &format!(
                            "The subnetwork resource '{link}' is already being used by '{user}'"
                        ),
                    )
                } else {
                    let op = operation(
                        &mut s,
                        &format!("regions/{r}"),
                        "delete",
                        &link,
                        None,
                        &url,
                        param("requestId"),
                    );
                    respond(200, &op)
                }
            }
            ("GET", ["projects", _, "zones", _, "operations", o])
            | ("POST", ["projects", _, "zones", _, "operations", o, "wait"])
            | ("GET", ["projects", _, "regions", _, "operations", o])
            | ("POST", ["projects", _, "regions", _, "operations", o, "wait"])
            | ("GET", ["projects", _, "global", "operations", o])
            | ("POST", ["projects", _, "global", "operations", o, "wait"]) => {
                match s.operations.get_mut(*o) {
                    Some(op) => {
                        // Done at the first look: the work was done when the call was made.
                        op["status"] = json!("DONE");
                        op["progress"] = json!(100);
                        let op = op.clone();
                        return Ok(respond(200, &op));
                    }
                    None => not_found(&format!("operations/{o}")),
                }
            }
            _ => {
                s.unserved.push(format!("{method} {path}"));
                error(
                    404,
                    "notFound",
                    &format!("the stand-in does not serve {method} {path}"),
                )
            }
        };
        let response = if mutating {
            lose_or(&mut s, response)
        } else {
            Ok(response)
        };
        // The machine's work is done before the call answers (as an operation that is DONE at
        // its first look promises), outside the lock.
        (response, s.machines.clone(), event)
    };
    if let (Some(m), Some(e)) = (machines, event) {
        m(e).await;
    }
    response
}

/// Serves the metadata server of instance `name` (any zone) on `bind`, as each Compute
/// Engine VM has its own: `GET /computeMetadata/v1/instance/attributes/KEY` answers the
/// item's value from the instance's metadata as it is now, only to a request that carries
/// `Metadata-Flavor: Google` (as Google's does), and every answer carries that header.
/// Returns where it listens; it serves until the returned task is aborted.
pub async fn serve_metadata(
    state: std::sync::Weak<Mutex<State>>,
    name: String,
    bind: std::net::IpAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (state, name) = (state.clone(), name.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = metadata_answer(&req, &state, &name);
                    async move { Ok::<_, std::io::Error>(answer) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn metadata_answer<B>(
    req: &hyper::Request<B>,
    state: &std::sync::Weak<Mutex<State>>,
    name: &str,
) -> Response {
    let answer = |code: u16, text: String| {
        hyper::Response::builder()
            .status(code)
            .header("Metadata-Flavor", "Google")
            .header("content-type", "application/text")
            .body(http_body_util::Full::new(bytes::Bytes::from(text)))
            .unwrap()
    };
    if req
        .headers()
        .get("Metadata-Flavor")
        .is_none_or(|v| v != "Google")
    {
        return answer(403, "Missing Metadata-Flavor:Google header.".into());
    }
    let key = req
        .uri()
        .path()
        .strip_prefix("/computeMetadata/v1/instance/attributes/");
    let value = state.upgrade().and_then(|s| {
        let s = s.lock().unwrap();
        let i = s.instances.iter().find(|((_, n), _)| n == name)?.1;
        i["metadata"]["items"]
            .as_array()?
            .iter()
            .find(|item| item["key"].as_str() == key)
            .and_then(|item| item["value"].as_str().map(str::to_owned))
    });
    match value {
        Some(v) => answer(200, v),
        None => answer(404, "not found".into()),
    }
}

/// The external address an access config `ac` of instance `link` (interface `nic`) gets:
/// its `natIP`, which must be a static address of `region` that no other instance uses (it
/// is then in use by this one); without one, an ephemeral address: the instance's own
/// internal address (where its machine boots, the test's bridge, it is the one address of
/// it this host can reach, as an operator's machine reaches a real instance's external
/// address: the controller's SSH tunnels dial it).
fn take_address(
    s: &mut State,
    region: &str,
    ac: &Value,
    link: &str,
    nic: &Value,
) -> Result<Value, Box<Response>> {
    let Some(ip) = ac["natIP"].as_str() else {
        return Ok(nic["networkIP"].clone());
    };
    let Some(address) = s
        .addresses
        .iter_mut()
        .find(|((r, _), a)| r == region && a["address"] == ip)
        .map(|(_, a)| a)
    else {
        return Err(Box::new(error(
            400,
            "invalid",
            &format!(
                "Invalid value for field 'resource.natIP': '{ip}'. The specified external IP address '{ip}' was not found in region '{region}'."
            ),
        )));
    };
    if address["status"] == "IN_USE" {
        return Err(Box::new(error(
            400,
            "invalid",
            &format!("External IP address: {ip} is already in-use."),
        )));
    }
    address["status"] = json!("IN_USE");
    address["users"] = json!([link]);
    Ok(json!(ip))
}

/// The static addresses instance `link` used are free again.
fn release_addresses_of(s: &mut State, link: &str) {
    for a in s.addresses.values_mut() {
        if a["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|x| x == link))
        {
            a["status"] = json!("RESERVED");
            if let Some(o) = a.as_object_mut() {
                o.remove("users");
            }
        }
    }
}

/// Google's 409 for a resource that exists.
fn already_exists(resource: &str) -> Response {
    error(
        409,
        "alreadyExists",
        &format!("The resource '{resource}' already exists"),
    )
}

/// `response`, unless a lost response is due: then the connection closes without one.
fn lose_or(s: &mut State, response: Response) -> Result<Response, std::io::Error> {
    if s.lose_responses > 0 {
        s.lose_responses -= 1;
        return Err(std::io::Error::other("response lost (fault)"));
    }
    Ok(response)
}

/// A new operation on `scope`: a zone's name, `regions/R` or `global`.
fn operation(
    s: &mut State,
    scope: &str,
    kind: &str,
    target: &str,
    error: Option<(&str, &str)>,
    url: &dyn Fn(&str) -> String,
    request_id: Option<String>,
) -> Value {
    s.next_id += 1;
    let name = format!("operation-{}-{kind}", s.next_id);
    let scope = if scope == "global" || scope.starts_with("regions/") {
        scope.to_owned()
    } else {
        format!("zones/{scope}")
    };
    let mut op = json!({
        "kind": "compute#operation", "id": s.next_id.to_string(), "name": name,
        "operationType": kind, "targetLink": target, "status": "RUNNING", "progress": 0,
        "user": "pangaea-test@example.invalid", "insertTime": "2026-11-22T00:00:00.000-00:00",
        "selfLink": url(&format!("projects/{PROJECT}/{scope}/operations/{name}")),
    });
    if let Some(field) = scope.split('/').next().filter(|f| *f != "global") {
        // "zones/Z" → "zone": URL; "regions/R" → "region": URL.
        op[field.trim_end_matches('s')] = json!(url(&format!("projects/{PROJECT}/{scope}")));
    }
    if let Some((code, message)) = error {
        op["error"] = json!({"errors": [{"code": code, "message": message}]});
        op["httpErrorStatusCode"] = json!(503);
        op["httpErrorMessage"] = json!("SERVICE UNAVAILABLE");
    }
    s.operations.insert(name.clone(), op.clone());
    if let Some(id) = request_id {
        s.request_ids.insert(id, name);
    }
    op
}

fn insert(
    s: &mut State,
    project: &str,
    zone: &str,
    body: &Value,
    url: &dyn Fn(&str) -> String,
    request_id: Option<String>,
) -> Response {
    let Some(name) = body["name"].as_str() else {
        return error(
            400,
            "required",
            "Required field 'resource.name' not specified",
        );
    };
    for field in ["machineType", "disks", "networkInterfaces"] {
        if body[field].is_null() {
            return error(
                400,
                "required",
                &format!("Required field 'resource.{field}' not specified"),
            );
        }
    }
    if let Some(sub) = body["networkInterfaces"][0]["subnetwork"].as_str()
        && !s.subnetworks.values().any(|v| v["selfLink"] == sub)
    {
        return not_found(sub);
    }
    let key = (zone.to_owned(), name.to_owned());
    if s.instances.contains_key(&key) {
        return already_exists(&format!("projects/{project}/zones/{zone}/instances/{name}"));
    }
    let target = url(&format!("projects/{project}/zones/{zone}/instances/{name}"));
    if s.exhausted.contains(zone) {
        let op = operation(
            s,
            zone,
            "insert",
            &target,
            Some((
                "ZONE_RESOURCE_POOL_EXHAUSTED",
                &format!(
                    "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request."
                ),
            )),
            url,
            request_id,
        );
        return respond(200, &op);
    }
    // The disks: the boot disk takes the instance's name; a data disk is created from its
    // initializeParams, or an existing free one attached by `source`.
    let disk_url = |d: &str| url(&format!("projects/{project}/zones/{zone}/disks/{d}"));
    let mut attach = Vec::new();
    for d in body["disks"].as_array().cloned().unwrap_or_default() {
        let (disk, new) = if d["boot"] == true {
            (name.to_owned(), true)
        } else if let Some(n) = d["initializeParams"]["diskName"].as_str() {
            (n.to_owned(), true)
        } else if let Some(src) = d["source"].as_str() {
            (src.rsplit('/').next().unwrap_or_default().to_owned(), false)
        } else {
            return error(400, "invalid", "a disk needs initializeParams or source");
        };
        let dkey = (zone.to_owned(), disk.clone());
        match (new, s.disks.get(&dkey)) {
            (true, Some(_)) => {
                return already_exists(&format!("projects/{project}/zones/{zone}/disks/{disk}"));
            }
            (false, None) => {
                return not_found(&format!("projects/{project}/zones/{zone}/disks/{disk}"));
            }
            (false, Some(existing))
                if existing["users"].as_array().is_some_and(|u| !u.is_empty()) =>
            {
                return error(
                    400,
                    "resourceInUseByAnotherResource",
                    &format!(
                        "The disk resource '{}' is already being used",
                        disk_url(&disk)
                    ),
                );
            }
            _ => {}
        }
        let size = d["initializeParams"]["diskSizeGb"].clone();
        attach.push((dkey, size, d["autoDelete"] == true));
    }
    // A static external address is taken now, the last check before anything changes.
    let nat = body["networkInterfaces"][0]["accessConfigs"][0].clone();
    if !nat.is_null()
        && let Err(e) = take_address(s, region_of(zone), &nat, &target, &Value::Null)
    {
        return *e;
    }
    let mut sources = Vec::new();
    for ((z, disk), size, auto_delete) in attach {
        let link = disk_url(&disk);
        let entry = s.disks.entry((z, disk.clone())).or_insert_with(|| {
            json!({"kind": "compute#disk", "name": disk, "sizeGb": size, "selfLink": link, "users": []})
        });
        entry["users"] = json!([target]);
        sources.push((link, auto_delete));
    }
    let n = s.instances.len() + 2;
    let mut instance = body.clone();
    for (d, (link, auto_delete)) in instance["disks"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .zip(sources)
    {
        d["source"] = json!(link);
        d["autoDelete"] = json!(auto_delete);
        if let Some(o) = d.as_object_mut() {
            o.remove("initializeParams");
        }
    }
    instance["kind"] = json!("compute#instance");
    instance["id"] = json!((4000 + n).to_string());
    instance["status"] = json!("RUNNING");
    instance["zone"] = json!(url(&format!("projects/{project}/zones/{zone}")));
    instance["selfLink"] = json!(target);
    // Google's format: local time with its offset.
    let now = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(-8));
    instance["creationTimestamp"] = json!(
        now.format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory]:[offset_minute]"
        ))
        .unwrap()
    );
    instance["metadata"] = metadata(
        body["metadata"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    if let Some(nic) = instance["networkInterfaces"].get_mut(0) {
        if nic["networkIP"].is_null() {
            nic["networkIP"] = json!(format!("10.128.0.{n}"));
        }
        nic["name"] = json!("nic0");
        // An ephemeral external address is the instance's own ([`take_address`]).
        let own = nic["networkIP"].clone();
        if let Some(ac) = nic["accessConfigs"].get_mut(0)
            && ac["natIP"].is_null()
        {
            ac["natIP"] = own;
        }
    }
    s.instances.insert(key, instance);
    let op = operation(s, zone, "insert", &target, None, url, request_id);
    respond(200, &op)
}

/// The token endpoint: an RS256 JWT bearer assertion checked against the account's key.
fn token(s: &mut State, form: &str, uri: &str) -> Response {
    use base64::Engine;
    let refuse = |why: &str| {
        respond(
            400,
            &json!({"error": "invalid_grant", "error_description": why}),
        )
    };
    let field = |k: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
    };
    if field("grant_type") != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return respond(400, &json!({"error": "unsupported_grant_type"}));
    }
    let Some(key) = s.sa_public_key.clone() else {
        return refuse("no service account configured in the stand-in");
    };
    let parts: Vec<&str> = field("assertion").unwrap_or("").split('.').collect();
    let &[h, c, sig] = parts.as_slice() else {
        return refuse("Invalid JWT: not three parts");
    };
    let b64 = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()
    };
    let header: Value = b64(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if header["alg"] != "RS256" {
        return refuse("Invalid JWT: alg must be RS256");
    }
    let signed = format!("{h}.{c}");
    let ok = b64(sig).is_some_and(|sig| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &key)
            .verify(signed.as_bytes(), &sig)
            .is_ok()
    });
    if !ok {
        return refuse("Invalid JWT Signature.");
    }
    let claims: Value = b64(c)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if claims["aud"] != uri
        || !claims["scope"]
            .as_str()
            .is_some_and(|sc| sc.contains("auth/compute"))
        || claims["iss"].as_str().is_none_or(str::is_empty)
        || exp <= now
        || iat > now + 60
        || exp.saturating_sub(iat) > 3600
    {
        return refuse(&format!("Invalid JWT claims: {claims}"));
    }
    let t = format!("ya29.sa-{}", s.issued.len() + 1);
    s.issued.push(t.clone());
    respond(
        200,
        &json!({"access_token": t, "expires_in": s.token_lifetime, "token_type": "Bearer"}),
    )
}

/// Instance metadata with its fingerprint (a hash of the items: it changes with them).
fn metadata(items: Vec<Value>) -> Value {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    Value::Array(items.clone()).to_string().hash(&mut h);
    json!({"kind": "compute#metadata", "fingerprint": format!("{:016x}", h.finish()), "items": items})
}
