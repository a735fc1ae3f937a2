//! The Compute Engine REST API (v1), the calls the GCE provider makes, over reqwest with
//! rustls.
//!
//! - **Operations.** A mutating call returns an Operation; [`Compute::wait`] asks the
//!   operation's `wait` method (which answers when it is DONE or after about two minutes)
//!   until it is DONE, then its `error.errors[]` decides.
//! - **Idempotent retries.** Every mutating call carries a `requestId` (a UUID) that its
//!   retries reuse, so a retry after a lost response is answered with the first call's
//!   operation and never creates twice. Transport errors, 5xx, 429 and Google's rate-limit
//!   reasons are retried with backoff; anything else is the caller's.
//! - **Adoption.** An insert answered `409 alreadyExists` adopts the instance when it carries
//!   this cluster's label ([`CLUSTER_LABEL`]), and is refused otherwise
//!   ([`Compute::create_instance`]).
//!
//! The request bodies have the fields and shapes gcloud sends for the same instance (checked
//! against the real gcloud in tests/tests/gce_api.rs), with two deliberate differences: no
//! service account (nodes call no Google API, so they hold no Google credentials), and no
//! fields left at their defaults.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The label that marks what Pangaea created for a cluster: its value is the cluster's name.
pub const CLUSTER_LABEL: &str = "pangaea-cluster";

/// Where access tokens come from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A file holding one (read for each call, as gcloud does: it may be refreshed).
    File(PathBuf),
    /// The installed gcloud CLI: `gcloud auth print-access-token`.
    Gcloud,
    /// A service account's key ([`super::service_account`]).
    ServiceAccount(std::sync::Arc<super::service_account::ServiceAccount>),
    /// A fixed token (tests).
    Fixed(String),
}

impl TokenSource {
    async fn token(&self) -> Result<String, ComputeError> {
        let auth = |m: String| ComputeError::Auth(m);
        match self {
            TokenSource::File(f) => tokio::fs::read_to_string(f)
                .await
                .map(|t| t.trim().to_owned())
                .map_err(|e| auth(format!("access token file {}: {e}", f.display()))),
            TokenSource::Gcloud => {
                let out = tokio::process::Command::new("gcloud")
                    .args(["auth", "print-access-token"])
                    .output()
                    .await
                    .map_err(|e| {
                        auth(format!(
                            "gcloud auth print-access-token: {e} (install the gcloud CLI and run `gcloud auth login`, or set CLOUDSDK_AUTH_ACCESS_TOKEN_FILE)"
                        ))
                    })?;
                if !out.status.success() {
                    return Err(auth(format!(
                        "gcloud auth print-access-token: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            }
            TokenSource::ServiceAccount(sa) => sa.token().await,
            TokenSource::Fixed(t) => Ok(t.clone()),
        }
    }
}

/// Why a Compute call failed.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// No access token.
    #[error("Google credentials: {0}")]
    Auth(String),
    /// The API answered with an error.
    #[error("{method} {url}: {status} {reason}: {message}")]
    Http {
        /// The request's method.
        method: String,
        /// Its URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Google's reason (`alreadyExists`, `notFound`, `rateLimitExceeded`, …).
        reason: String,
        /// Google's message.
        message: String,
    },
    /// The operation finished with errors.
    #[error("operation {operation} failed: {}", errors.iter().map(|(c, m)| format!("{c}: {m}")).collect::<Vec<_>>().join("; "))]
    Operation {
        /// The operation's name.
        operation: String,
        /// Its errors: (code, message).
        errors: Vec<(String, String)>,
    },
    /// The API could not be reached (after the retries).
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("operation {0} not done after {1:?}")]
    Timeout(String, Duration),
    /// No zone tried had capacity.
    #[error(
        "{name}: no capacity for {machine_type} in any zone tried ({}); try later, another region (provider.zones) or another machine type",
        zones.join(", ")
    )]
    NoCapacity {
        /// The instance.
        name: String,
        /// Its machine type.
        machine_type: String,
        /// The zones tried.
        zones: Vec<String>,
    },
    /// A resource of that name exists and is not this cluster's.
    #[error(
        "{what} exists and is not cluster {cluster}'s (its mark, the {mark}, is {found:?}): delete or rename it"
    )]
    NotOurs {
        /// The resource (`instance node-1 in us-central1-a`).
        what: String,
        /// What marks a resource as a cluster's ([`CLUSTER_LABEL`], or the description).
        mark: &'static str,
        /// The cluster.
        cluster: String,
        /// The mark found, if any.
        found: Option<String>,
    },
}

impl ComputeError {
    /// Google's reason or error code: `alreadyExists`, `ZONE_RESOURCE_POOL_EXHAUSTED`, …
    pub fn reasons(&self) -> Vec<&str> {
        match self {
            ComputeError::Http { reason, .. } => vec![reason.as_str()],
            ComputeError::Operation { errors, .. } => {
                errors.iter().map(|(c, _)| c.as_str()).collect()
            }
            _ => vec![],
        }
    }

    /// Whether the zone has no capacity for the request (a stockout): another zone of the
    /// region may have some. The one rule [`Compute::create_in_region`] moves nodes by.
    pub fn is_zone_capacity(&self) -> bool {
        self.reasons().iter().any(|r| {
            matches!(
                *r,
                "ZONE_RESOURCE_POOL_EXHAUSTED"
                    | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
                    | "resourcePoolExhausted"
                    | "STOCKOUT"
            )
        })
    }
}

/// An operation (the fields Pangaea reads).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Its name.
    pub name: String,
    /// `PENDING`, `RUNNING` or `DONE`.
    #[serde(default)]
    pub status: String,
    /// Its URL.
    #[serde(default)]
    pub self_link: String,
    /// What it acts on.
    #[serde(default)]
    pub target_link: String,
    /// Its errors, once DONE.
    #[serde(default)]
    pub error: Option<OperationErrors>,
}

/// `error` of an operation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OperationErrors {
    /// Each error.
    #[serde(default)]
    pub errors: Vec<OperationError>,
}

/// One error of an operation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OperationError {
    /// Its code (`ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`, …).
    #[serde(default)]
    pub code: String,
    /// Its message.
    #[serde(default)]
    pub message: String,
}

/// An instance to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Its name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// Its machine type (`e2-small`).
    pub machine_type: String,
    /// The image family and the project that publishes it (`ubuntu-2404-lts-amd64`,
    /// `ubuntu-os-cloud`).
    pub image: (String, String),
    /// The boot disk's size, GiB, and type.
    pub boot_disk: (u32, String),
    /// cloud-init's user-data (instance metadata `user-data`).
    pub user_data: String,
    /// Labels (the cluster's among them).
    pub labels: BTreeMap<String, String>,
    /// Network tags (for firewall rules).
    pub tags: Vec<String>,
    /// A Spot VM.
    pub spot: bool,
    /// Persistent data disks, kept when the instance is deleted.
    pub data_disks: Vec<DataDisk>,
    /// Where its interface is: the network, its subnetwork in the zone's region and the
    /// internal address (`None`: the subnetwork's choice).
    pub nic: Nic,
}

/// The network interface of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The VPC network's name (`default`).
    pub network: String,
    /// Its subnetwork in the instance's region, by name; `None` for an auto-mode network.
    pub subnetwork: Option<String>,
    /// The internal address, from the subnetwork's range.
    pub address: Option<std::net::Ipv4Addr>,
    /// The external address: a reserved static one; `None` for an ephemeral one.
    pub external_address: Option<std::net::Ipv4Addr>,
}

impl Default for Nic {
    fn default() -> Nic {
        Nic {
            network: "default".into(),
            subnetwork: None,
            address: None,
            external_address: None,
        }
    }
}

/// An instance's external access config (gcloud's shape): `external` a reserved static
/// address, `None` an ephemeral one.
fn access_config(external: Option<std::net::Ipv4Addr>) -> Value {
    let mut ac = json!({"name": "external-nat", "type": "ONE_TO_ONE_NAT"});
    if let Some(ip) = external {
        ac["natIP"] = json!(ip.to_string());
    }
    ac
}

/// A persistent data disk of an instance: created with it the first time, attached again
/// (the same disk, its data kept) when the instance is created anew after a `down`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDisk {
    /// The disk's name in the zone (`node-1-data`).
    pub name: String,
    /// The name it is attached under: the node sees `/dev/disk/by-id/google-DEVICE`.
    pub device_name: String,
    /// Its size, GiB.
    pub size_gib: u32,
    /// Its type (`pd-balanced`).
    pub disk_type: String,
}

/// What [`Compute::create_instance`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// Created now.
    Created,
    /// It existed already with this cluster's label: adopted.
    Adopted,
}

/// A client for one project.
#[derive(Clone)]
pub struct Compute {
    http: reqwest::Client,
    base: String,
    project: String,
    token: TokenSource,
    /// Tries of one call (transport errors, 5xx, 429, rate limits).
    tries: u32,
    /// The first wait between tries, doubled after each.
    backoff: Duration,
}

/// A new `requestId`: a random (version 4) UUID, as the API requires.
pub fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Compute {
    /// A client of the API at `base` (ending in `/compute/v1/`) for `project`.
    pub fn new(base: &str, project: &str, token: TokenSource) -> Compute {
        pangaea_core::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(150))
            .user_agent(concat!("pangaea/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("reqwest client builds with the process crypto provider");
        Compute {
            http,
            base: base.to_owned(),
            project: project.to_owned(),
            token,
            tries: 5,
            backoff: Duration::from_millis(500),
        }
    }

    /// The same client with `tries` tries per call, the first retry after `backoff`.
    pub fn with_retries(mut self, tries: u32, backoff: Duration) -> Compute {
        self.tries = tries.max(1);
        self.backoff = backoff;
        self
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The URL of a project resource path (`zones/Z/instances`).
    pub fn url(&self, path: &str) -> String {
        format!("{}projects/{}/{path}", self.base, self.project)
    }

    /// One call, retried on transport errors, 5xx, 429 and rate limits with the same body
    /// (and so the same `requestId`).
    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, ComputeError> {
        let mut wait = self.backoff;
        let mut last = None;
        for attempt in 1..=self.tries {
            let token = self.token.token().await?;
            let mut req = self.http.request(method.clone(), url).bearer_auth(token);
            if let Some(b) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            }
            let transient = match req.send().await {
                Err(e) => ComputeError::Transport {
                    url: url.to_owned(),
                    message: pangaea_core::error_chain(&e),
                },
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return serde_json::from_str(&text).map_err(|e| ComputeError::Transport {
                            url: url.to_owned(),
                            message: format!("unreadable answer ({e}): {text:.200}"),
                        });
                    }
                    let (reason, message) = google_error(&text);
                    let err = ComputeError::Http {
                        method: method.to_string(),
                        url: url.to_owned(),
                        status,
                        reason,
                        message,
                    };
                    let retry = status >= 500
                        || status == 429
                        || err.reasons().iter().any(|r| {
                            matches!(
                                *r,
                                "rateLimitExceeded" | "userRateLimitExceeded" | "backendError"
                            )
                        });
                    if !retry {
                        return Err(err);
                    }
                    err
                }
            };
            tracing::info!(%url, attempt, error = %transient, "Compute API call failed; trying again");
            last = Some(transient);
            if attempt < self.tries {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
        Err(last.expect("at least one try"))
    }

    async fn mutate(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Operation, ComputeError> {
        // The requestId is fixed before the first try: every retry repeats it.
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}requestId={}", self.url(path), request_id());
        let v = self.call(method, &url, body.as_ref()).await?;
        serde_json::from_value(v).map_err(|e| ComputeError::Transport {
            url,
            message: format!("not an operation: {e}"),
        })
    }

    /// The body of an instance insert (the shapes gcloud sends).
    /// The body of an instance insert (the shapes gcloud sends); the data disks named in
    /// `existing` are attached, the others created.
    pub fn instance_body(&self, s: &InstanceSpec, existing: &[String]) -> Value {
        let zone = |p: &str| self.url(&format!("zones/{}/{p}", s.zone));
        let data = s.data_disks.iter().map(|d| {
            let mut disk = json!({
                "autoDelete": false,
                "boot": false,
                "deviceName": d.device_name,
                "mode": "READ_WRITE",
                "type": "PERSISTENT",
            });
            if existing.contains(&d.name) {
                disk["source"] = json!(zone(&format!("disks/{}", d.name)));
            } else {
                disk["initializeParams"] = json!({
                    "diskName": d.name,
                    "diskSizeGb": d.size_gib.to_string(),
                    "diskType": zone(&format!("diskTypes/{}", d.disk_type)),
                });
            }
            disk
        });
        let mut scheduling = json!({"automaticRestart": true});
        if s.spot {
            scheduling = json!({
                "automaticRestart": false,
                "onHostMaintenance": "TERMINATE",
                "provisioningModel": "SPOT",
                "instanceTerminationAction": "STOP",
            });
        }
        let mut nic = json!({
            "network": self.url(&format!("global/networks/{}", s.nic.network)),
            "accessConfigs": [access_config(s.nic.external_address)],
        });
        if let Some(sub) = &s.nic.subnetwork {
            nic["subnetwork"] = json!(self.url(&format!(
                "regions/{}/subnetworks/{sub}",
                pangaea_compiler::provider::gce::region_of(&s.zone)
            )));
        }
        if let Some(ip) = s.nic.address {
            nic["networkIP"] = json!(ip.to_string());
        }
        json!({
            "name": s.name,
            "machineType": zone(&format!("machineTypes/{}", s.machine_type)),
            "disks": std::iter::once(json!({
                "autoDelete": true,
                "boot": true,
                "mode": "READ_WRITE",
                "type": "PERSISTENT",
                "initializeParams": {
                    "diskSizeGb": s.boot_disk.0.to_string(),
                    "diskType": zone(&format!("diskTypes/{}", s.boot_disk.1)),
                    "sourceImage": format!(
                        "{}projects/{}/global/images/family/{}",
                        self.base, s.image.1, s.image.0
                    ),
                },
            })).chain(data).collect::<Vec<_>>(),
            "labels": s.labels,
            "metadata": {"items": [{"key": "user-data", "value": s.user_data}]},
            "networkInterfaces": [nic],
            "scheduling": scheduling,
            "tags": {"items": s.tags},
        })
    }

    /// Creates an instance and waits until it exists: an insert answered `alreadyExists`
    /// adopts the instance when it carries `cluster`'s label, and is refused otherwise. Its
    /// data disks that exist already (kept by a `down`) are attached again.
    pub async fn create_instance(
        &self,
        s: &InstanceSpec,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Created, ComputeError> {
        let mut existing = Vec::new();
        for d in &s.data_disks {
            if self
                .get(&format!("zones/{}/disks/{}", s.zone, d.name))
                .await?
                .is_some()
            {
                existing.push(d.name.clone());
            }
        }
        let owner = Owner::Label(cluster);
        self.insert_or_adopt(
            &format!("zones/{}/instances", s.zone),
            self.instance_body(s, &existing),
            &format!("instance {} in {}", s.name, s.zone),
            &owner,
            timeout,
        )
        .await
    }

    /// Inserts `body` into the collection at `path` and waits; an `alreadyExists` adopts the
    /// resource (`path/NAME`) when `owner` marks it as the cluster's, and is refused
    /// otherwise.
    async fn insert_or_adopt(
        &self,
        path: &str,
        body: Value,
        what: &str,
        owner: &Owner<'_>,
        timeout: Duration,
    ) -> Result<Created, ComputeError> {
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        match self.mutate(reqwest::Method::POST, path, Some(body)).await {
            Ok(op) => {
                self.wait(&op, timeout).await?;
                Ok(Created::Created)
            }
            Err(e) if e.reasons().contains(&"alreadyExists") => {
                let found = self
                    .get(&format!("{path}/{name}"))
                    .await?
                    .and_then(|v| owner.found(&v));
                if found.as_deref() == Some(owner.expected().as_str()) {
                    Ok(Created::Adopted)
                } else {
                    Err(ComputeError::NotOurs {
                        what: what.to_owned(),
                        mark: owner.mark(),
                        cluster: owner.cluster().to_owned(),
                        found,
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A project resource (`global/firewalls/NAME`), `None` when there is none.
    async fn get(&self, path: &str) -> Result<Option<Value>, ComputeError> {
        match self.call(reqwest::Method::GET, &self.url(path), None).await {
            Ok(v) => Ok(Some(v)),
            Err(ComputeError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a project resource and waits; `false` when there was none.
    async fn delete(&self, path: &str, timeout: Duration) -> Result<bool, ComputeError> {
        match self.mutate(reqwest::Method::DELETE, path, None).await {
            Ok(op) => self.wait(&op, timeout).await.map(|_| true),
            Err(ComputeError::Http { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The body of a firewall rule (the shapes gcloud sends).
    pub fn firewall_body(&self, f: &FirewallSpec, cluster: &str) -> Value {
        let allowed = match &f.allow {
            Allow::Tcp(ports) => {
                json!([{"IPProtocol": "tcp", "ports": ports.iter().map(u16::to_string).collect::<Vec<_>>()}])
            }
            Allow::Everything => {
                json!([{"IPProtocol": "tcp"}, {"IPProtocol": "udp"}, {"IPProtocol": "icmp"}])
            }
        };
        json!({
            "name": f.name,
            "description": owner_description(cluster),
            "direction": "INGRESS",
            "network": self.url(&format!("global/networks/{}", f.network)),
            "allowed": allowed,
            "sourceRanges": f.source_ranges,
            "targetTags": [f.target_tag],
        })
    }

    /// Creates a VPC network in custom subnet mode (or adopts this cluster's of that name).
    pub async fn ensure_network(
        &self,
        name: &str,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Created, ComputeError> {
        let body = json!({
            "name": name,
            "description": owner_description(cluster),
            "autoCreateSubnetworks": false,
            "routingConfig": {"routingMode": "REGIONAL"},
        });
        self.insert_or_adopt(
            "global/networks",
            body,
            &format!("network {name}"),
            &Owner::Description(cluster),
            timeout,
        )
        .await
    }

    /// Creates a subnetwork of `network` in `region` with the range `cidr` (or adopts this
    /// cluster's of that name).
    pub async fn ensure_subnetwork(
        &self,
        region: &str,
        name: &str,
        network: &str,
        cidr: &str,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Created, ComputeError> {
        let body = json!({
            "name": name,
            "description": owner_description(cluster),
            "network": self.url(&format!("global/networks/{network}")),
            "ipCidrRange": cidr,
            "privateIpGoogleAccess": false,
        });
        self.insert_or_adopt(
            &format!("regions/{region}/subnetworks"),
            body,
            &format!("subnetwork {name} in {region}"),
            &Owner::Description(cluster),
            timeout,
        )
        .await
    }

    /// Deletes a subnetwork; `false` when there was none.
    pub async fn delete_subnetwork(
        &self,
        region: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        self.delete(&format!("regions/{region}/subnetworks/{name}"), timeout)
            .await
    }

    /// Deletes a network (its subnetworks and firewall rules first); `false` when there
    /// was none.
    pub async fn delete_network(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        self.delete(&format!("global/networks/{name}"), timeout)
            .await
    }

    /// Creates a firewall rule (or adopts this cluster's of that name).
    pub async fn ensure_firewall(
        &self,
        f: &FirewallSpec,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Created, ComputeError> {
        self.insert_or_adopt(
            "global/firewalls",
            self.firewall_body(f, cluster),
            &format!("firewall rule {}", f.name),
            &Owner::Description(cluster),
            timeout,
        )
        .await
    }

    /// Deletes `cluster`'s firewall rule of that name; `false` when there was none. A rule
    /// of that name that is not the cluster's is refused ([`ComputeError::NotOurs`]).
    pub async fn delete_firewall(
        &self,
        name: &str,
        cluster: &str,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        let path = format!("global/firewalls/{name}");
        let owner = Owner::Description(cluster);
        match self.get(&path).await? {
            None => Ok(false),
            Some(rule) if owner.found(&rule).as_deref() == Some(owner.expected().as_str()) => {
                self.delete(&path, timeout).await
            }
            Some(rule) => Err(ComputeError::NotOurs {
                what: format!("firewall rule {name}"),
                mark: owner.mark(),
                cluster: cluster.to_owned(),
                found: owner.found(&rule),
            }),
        }
    }

    /// Reserves a static external address in `region` (or adopts this cluster's of that
    /// name); returns what was done and the address.
    pub async fn ensure_address(
        &self,
        region: &str,
        name: &str,
        cluster: &str,
        timeout: Duration,
    ) -> Result<(Created, String), ComputeError> {
        let path = format!("regions/{region}/addresses");
        let body = json!({"name": name, "description": owner_description(cluster)});
        let what = format!("address {name} in {region}");
        let created = self
            .insert_or_adopt(&path, body, &what, &Owner::Description(cluster), timeout)
            .await?;
        let address = self
            .get(&format!("{path}/{name}"))
            .await?
            .and_then(|a| a["address"].as_str().map(str::to_owned))
            .ok_or_else(|| ComputeError::Transport {
                url: self.url(&format!("{path}/{name}")),
                message: format!("{what} has no address"),
            })?;
        Ok((created, address))
    }

    /// Deletes a disk (`down --purge`); `false` when there was none. A disk still attached
    /// is refused by the API (`resourceInUseByAnotherResource`).
    pub async fn delete_disk(
        &self,
        zone: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        self.delete(&format!("zones/{zone}/disks/{name}"), timeout)
            .await
    }

    /// The static address `name` of `region` (`address`, `status` `RESERVED` or `IN_USE`,
    /// `users`), `None` when there is none.
    pub async fn address(&self, region: &str, name: &str) -> Result<Option<Value>, ComputeError> {
        self.get(&format!("regions/{region}/addresses/{name}"))
            .await
    }

    /// Gives instance `name` the external address `external` (`None`: an ephemeral one) in
    /// place of the one it has: its access config deleted, then one added with that
    /// address, each waited for. The instance has no external address in between.
    pub async fn set_external_address(
        &self,
        zone: &str,
        name: &str,
        external: Option<std::net::Ipv4Addr>,
        timeout: Duration,
    ) -> Result<(), ComputeError> {
        let path = format!("zones/{zone}/instances/{name}");
        let instance = self.get(&path).await?.ok_or_else(|| ComputeError::Http {
            method: "GET".into(),
            url: self.url(&path),
            status: 404,
            reason: "notFound".into(),
            message: format!("no instance {name} in {zone}"),
        })?;
        let nic = &instance["networkInterfaces"][0];
        let nic_name = nic["name"].as_str().unwrap_or("nic0");
        let before: Option<std::net::Ipv4Addr> = nic["accessConfigs"][0]["natIP"]
            .as_str()
            .and_then(|a| a.parse().ok());
        for ac in nic["accessConfigs"].as_array().into_iter().flatten() {
            let ac_name = ac["name"].as_str().unwrap_or("external-nat");
            let op = self
                .mutate(
                    reqwest::Method::POST,
                    &format!(
                        "{path}/deleteAccessConfig?accessConfig={}&networkInterface={nic_name}",
                        ac_name.replace(' ', "%20")
                    ),
                    None,
                )
                .await?;
            self.wait(&op, timeout).await?;
        }
        let add_path = format!("{path}/addAccessConfig?networkInterface={nic_name}");
        let add = |external| {
            let add_path = &add_path;
            async move {
                let op = self
                    .mutate(
                        reqwest::Method::POST,
                        add_path,
                        Some(access_config(external)),
                    )
                    .await?;
                self.wait(&op, timeout).await.map(|_| ())
            }
        };
        let Err(e) = add(external).await else {
            return Ok(());
        };
        // Not left without an external address: the one it had (a static one is still
        // free), else an ephemeral one.
        tracing::warn!(%name, error = %e, "the new external address was refused; restoring one");
        if before.is_none() || add(before).await.is_err() {
            let _ = add(None).await;
        }
        Err(e)
    }

    /// Releases a static address; `false` when there was none.
    pub async fn delete_address(
        &self,
        region: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<bool, ComputeError> {
        self.delete(&format!("regions/{region}/addresses/{name}"), timeout)
            .await
    }

    /// Creates an instance in `s.zone`, else — while zones answer that they have no capacity
    /// ([`ComputeError::is_zone_capacity`]) — in the other zones of `zones` (the region's,
    /// [`Compute::region_zones`]) in turn; `progress` hears each move. Returns the zone used.
    pub async fn create_in_region(
        &self,
        s: &InstanceSpec,
        zones: &[String],
        cluster: &str,
        timeout: Duration,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(String, Created), ComputeError> {
        let order: Vec<&String> = std::iter::once(&s.zone)
            .chain(zones.iter().filter(|z| **z != s.zone))
            .collect();
        let mut full = Vec::new();
        for (i, zone) in order.iter().enumerate() {
            let spec = InstanceSpec {
                zone: (*zone).clone(),
                ..s.clone()
            };
            match self.create_instance(&spec, cluster, timeout).await {
                Ok(c) => return Ok(((*zone).clone(), c)),
                Err(e) if e.is_zone_capacity() => {
                    if let Some(next) = order.get(i + 1) {
                        progress(&format!(
                            "{}: {zone} has no {} available now ({}); trying {next}",
                            s.name,
                            s.machine_type,
                            e.reasons().join(", ")
                        ));
                    }
                    full.push((*zone).clone());
                }
                Err(e) => return Err(e),
            }
        }
        Err(ComputeError::NoCapacity {
            name: s.name.clone(),
            machine_type: s.machine_type.clone(),
            zones: full,
        })
    }

    /// The zones of `region`, by name.
    pub async fn region_zones(&self, region: &str) -> Result<Vec<String>, ComputeError> {
        let v = self
            .call(
                reqwest::Method::GET,
                &self.url(&format!("regions/{region}")),
                None,
            )
            .await?;
        let mut zones: Vec<String> = v["zones"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|z| z.as_str()?.rsplit('/').next().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        zones.sort();
        Ok(zones)
    }

    /// Sets one metadata item of an instance, keeping the others: read, change, write
    /// with the fingerprint read; a `412` (another writer came between) reads again.
    pub async fn set_metadata_item(
        &self,
        zone: &str,
        name: &str,
        key: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), ComputeError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let instance =
                self.get_instance(zone, name)
                    .await?
                    .ok_or_else(|| ComputeError::Http {
                        method: "GET".into(),
                        url: self.url(&format!("zones/{zone}/instances/{name}")),
                        status: 404,
                        reason: "notFound".into(),
                        message: format!("no instance {name} in {zone}"),
                    })?;
            let meta = &instance["metadata"];
            let mut items: Vec<Value> = meta["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|i| i["key"] != key)
                .collect();
            items.push(json!({"key": key, "value": value}));
            let body = json!({"fingerprint": meta["fingerprint"], "items": items});
            match self
                .mutate(
                    reqwest::Method::POST,
                    &format!("zones/{zone}/instances/{name}/setMetadata"),
                    Some(body),
                )
                .await
            {
                Ok(op) => return self.wait(&op, timeout).await.map(|_| ()),
                Err(ComputeError::Http { status: 412, .. }) if tries < self.tries => {
                    tracing::info!(%name, "metadata changed meanwhile; reading it again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The instance, `None` when there is none.
    pub async fn get_instance(
        &self,
        zone: &str,
        name: &str,
    ) -> Result<Option<Value>, ComputeError> {
        self.get(&format!("zones/{zone}/instances/{name}")).await
    }

    /// The instances of `zone` that carry `cluster`'s label, every page.
    pub async fn list_instances(
        &self,
        zone: &str,
        cluster: &str,
    ) -> Result<Vec<Value>, ComputeError> {
        let filter = format!("labels.{CLUSTER_LABEL}={cluster}");
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = reqwest::Url::parse(&self.url(&format!("zones/{zone}/instances")))
                .map_err(|e| ComputeError::Transport {
                    url: self.base.clone(),
                    message: e.to_string(),
                })?;
            url.query_pairs_mut().append_pair("filter", &filter);
            if let Some(p) = &page {
                url.query_pairs_mut().append_pair("pageToken", p);
            }
            let v = self.call(reqwest::Method::GET, url.as_str(), None).await?;
            if let Some(items) = v["items"].as_array() {
                out.extend(items.iter().cloned());
            }
            match v["nextPageToken"].as_str() {
                Some(p) if !p.is_empty() => page = Some(p.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Deletes an instance; `None` when there was none.
    pub async fn delete_instance(
        &self,
        zone: &str,
        name: &str,
    ) -> Result<Option<Operation>, ComputeError> {
        match self
            .mutate(
                reqwest::Method::DELETE,
                &format!("zones/{zone}/instances/{name}"),
                None,
            )
            .await
        {
            Ok(op) => Ok(Some(op)),
            Err(ComputeError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `start`, `stop` or `reset` of an instance.
    pub async fn instance_action(
        &self,
        zone: &str,
        name: &str,
        action: &str,
    ) -> Result<Operation, ComputeError> {
        self.mutate(
            reqwest::Method::POST,
            &format!("zones/{zone}/instances/{name}/{action}"),
            None,
        )
        .await
    }

    /// Waits until `op` is DONE (its `wait` method, asked again until then or `timeout`);
    /// an operation that finished with errors is [`ComputeError::Operation`].
    pub async fn wait(&self, op: &Operation, timeout: Duration) -> Result<Operation, ComputeError> {
        let started = tokio::time::Instant::now();
        let mut op = op.clone();
        while op.status != "DONE" {
            if started.elapsed() > timeout {
                return Err(ComputeError::Timeout(op.name.clone(), timeout));
            }
            let v = self
                .call(
                    reqwest::Method::POST,
                    &format!("{}/wait", op.self_link),
                    None,
                )
                .await?;
            op = serde_json::from_value(v).map_err(|e| ComputeError::Transport {
                url: op.self_link.clone(),
                message: format!("not an operation: {e}"),
            })?;
        }
        match &op.error {
            Some(e) if !e.errors.is_empty() => Err(ComputeError::Operation {
                operation: op.name.clone(),
                errors: e
                    .errors
                    .iter()
                    .map(|e| (e.code.clone(), e.message.clone()))
                    .collect(),
            }),
            _ => Ok(op),
        }
    }
}

/// What marks firewall rules and addresses as a cluster's: they take no labels where gcloud
/// creates them, so their description says it.
pub fn owner_description(cluster: &str) -> String {
    format!("pangaea cluster {cluster}")
}

/// How a resource is recognised as a cluster's.
enum Owner<'a> {
    /// Instances: [`CLUSTER_LABEL`] is the cluster's name.
    Label(&'a str),
    /// Firewall rules and addresses: [`owner_description`].
    Description(&'a str),
}

impl Owner<'_> {
    fn cluster(&self) -> &str {
        match self {
            Owner::Label(c) | Owner::Description(c) => c,
        }
    }

    fn mark(&self) -> &'static str {
        match self {
            Owner::Label(_) => "label pangaea-cluster",
            Owner::Description(_) => "description",
        }
    }

    fn expected(&self) -> String {
        match self {
            Owner::Label(c) => (*c).to_owned(),
            Owner::Description(c) => owner_description(c),
        }
    }

    fn found(&self, v: &Value) -> Option<String> {
        match self {
            Owner::Label(_) => v["labels"][CLUSTER_LABEL].as_str().map(str::to_owned),
            Owner::Description(_) => v["description"].as_str().map(str::to_owned),
        }
    }
}

/// A firewall rule letting traffic reach the instances with a network tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Its name.
    pub name: String,
    /// Its network's name.
    pub network: String,
    /// What it lets through.
    pub allow: Allow,
    /// Where from (CIDRs).
    pub source_ranges: Vec<String>,
    /// The instances' network tag.
    pub target_tag: String,
}

/// What a firewall rule lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allow {
    /// These TCP ports.
    Tcp(Vec<u16>),
    /// TCP, UDP and ICMP, every port (between a cluster's own nodes).
    Everything,
}

/// Google's error body: `{"error": {"errors": [{"reason"}], "message"}}`.
fn google_error(text: &str) -> (String, String) {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let e = &v["error"];
    let reason = e["errors"][0]["reason"]
        .as_str()
        .or_else(|| e["status"].as_str())
        .unwrap_or("")
        .to_owned();
    let message = e["message"]
        .as_str()
        .map_or_else(|| format!("{text:.200}"), str::to_owned);
    (reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = request_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a, request_id());
    }

    #[test]
    fn google_errors_are_read() {
        let (r, m) = google_error(
            r#"{"error":{"code":409,"message":"The resource 'x' already exists","errors":[{"reason":"alreadyExists"}]}}"#,
        );
        assert_eq!(
            (r.as_str(), m.as_str()),
            ("alreadyExists", "The resource 'x' already exists")
        );
        let (r, _) = google_error("<html>bad gateway</html>");
        assert_eq!(r, "");
    }
}
