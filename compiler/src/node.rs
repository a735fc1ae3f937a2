//! What one node gets: its files (rendered templates, certificates, keys), artifacts and
//! units, decided by its roles.
//!
//! | role | units | notable files |
//! |---|---|---|
//! | etcd | etcd | etcd CA, server and peer certificates |
//! | control-plane | kube-apiserver, kube-controller-manager, kube-scheduler, pangaea-addons | serving and client certificates, kubeconfigs, encryption config, audit policy, service-account keys, add-on manifests |
//! | worker | containerd, kubelet, kube-proxy | kubelet and kube-proxy configs and kubeconfigs, containerd config, log rotation |
//! | (all) | disk and NFS mounts | |

use crate::artifact_set::ArtifactSet;
use crate::expose::ExposeType;
use crate::inputs::{CaKind, CertRequest, Inputs};
use crate::model::{ClusterModel, NodeModel};
use crate::templates::{TemplateError, Templates};
use base64::Engine;
use pangaea_core::NodeName;
use serde::Serialize;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

/// Kubernetes certificates and keys on a node (templates: `paths.pki`).
pub const PKI: &str = "/etc/kubernetes/pki";
/// etcd's certificates and keys (`paths.etcd_pki`).
pub const ETCD_PKI: &str = "/etc/etcd/pki";
/// The API servers' port.
pub const API_PORT: u16 = 6443;
/// Where worker nodes' load balancer over the API servers listens (`pangaea-agent
/// api-lb`); their kubelet and kube-proxy reach the API through it.
pub const API_LB: &str = "127.0.0.1:6444";
/// The API servers the load balancer relays to, one `ADDRESS:PORT` per line
/// (`paths.api_servers`).
pub const API_SERVERS: &str = "/etc/pangaea/api-servers";
/// etcd's data directory (`paths.etcd_data`).
pub const ETCD_DATA: &str = "/var/lib/etcd";
/// etcd's bootstrap settings, read only on a member's first start (`paths.etcd_bootstrap`).
pub const ETCD_BOOTSTRAP: &str = "/etc/etcd/bootstrap.env";
/// Kubernetes configuration: kubeconfigs, encryption and audit config (`paths.kube`).
pub const KUBE: &str = "/etc/kubernetes";
/// Where binaries are installed (`paths.bin`).
pub const BIN: &str = "/usr/local/bin";
/// Add-on manifests, applied in name order (`paths.addons`).
pub const ADDONS: &str = "/etc/kubernetes/addons";
/// The kubelet's unit: what a drained node stops (`pangaea-ctl node drain`).
pub const KUBELET_UNIT: &str = "kubelet.service";
/// systemd units.
pub const UNITS: &str = "/etc/systemd/system";
/// The agent's cache of downloaded archives, kept so members can be re-extracted.
pub const ARTIFACT_CACHE: &str = "/var/lib/pangaea-agent/artifacts";

/// A file the node gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutFile {
    /// Absolute path on the node.
    pub path: String,
    /// Permission bits (keys and kubeconfigs 0600).
    pub mode: u32,
    /// The whole content.
    pub content: String,
}

/// A file extracted from an archive artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutMember {
    /// Path inside the archive.
    pub path: String,
    /// Absolute path on the node.
    pub dest: String,
    /// Permission bits.
    pub mode: u32,
}

/// An artifact the node downloads, verifies and installs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutArtifact {
    /// The artifact set's name for it.
    pub name: String,
    /// Where it comes from (the controller may point it at its mirror).
    pub url: String,
    /// The digest it must have, `sha256:…` or `sha512:…`.
    pub digest: String,
    /// Where it is installed: the file itself, or the archive in [`ARTIFACT_CACHE`].
    pub dest: String,
    /// Permission bits of `dest`.
    pub mode: u32,
    /// For an archive, the members to extract; empty for a plain file.
    pub members: Vec<OutMember>,
}

/// A systemd unit the node runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutUnit {
    /// The unit's name (`etcd.service`, `var-lib-data.mount`).
    pub name: String,
    /// Also enabled at boot (it is started either way).
    pub enable: bool,
    /// Files (configs, certificates, binaries) whose change restarts the unit.
    pub restart_on_change: Vec<String>,
}

/// Everything one node gets: what the controller sends it as its assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeOutput {
    /// The node's name.
    pub node: NodeName,
    /// Its files.
    pub files: Vec<OutFile>,
    /// Its artifacts, one per archive.
    pub artifacts: Vec<OutArtifact>,
    /// Its units.
    pub units: Vec<OutUnit>,
}

/// Why a node could not be compiled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CompileError {
    /// A template failed to render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The inputs could not issue a certificate.
    #[error("certificate {id}: {message}")]
    Cert {
        /// The certificate's stable id (`node-1/etcd-peer`).
        id: String,
        /// Why.
        message: String,
    },
    /// Asked for a node the configuration does not have.
    #[error("no node named {0:?} in the cluster")]
    NoSuchNode(String),
    /// An artifact of the set cannot be configured (an unsupported version, say).
    #[error("artifact {name}: {message}")]
    Artifact {
        /// The artifact's name.
        name: String,
        /// Why.
        message: String,
    },
}

#[derive(Serialize)]
struct Paths {
    pki: &'static str,
    etcd_pki: &'static str,
    etcd_bootstrap: &'static str,
    etcd_data: &'static str,
    api_servers: &'static str,
    api_lb: &'static str,
    kube: &'static str,
    bin: &'static str,
    addons: &'static str,
}

const PATHS: Paths = Paths {
    pki: PKI,
    etcd_pki: ETCD_PKI,
    etcd_bootstrap: ETCD_BOOTSTRAP,
    etcd_data: ETCD_DATA,
    api_servers: API_SERVERS,
    api_lb: API_LB,
    kube: KUBE,
    bin: BIN,
    addons: ADDONS,
};

/// Everything a compilation shares across nodes.
pub struct Compiler<'a> {
    /// The cluster.
    pub model: &'a ClusterModel,
    /// The templates.
    pub templates: &'a Templates,
    /// Certificates, keys and secrets.
    pub inputs: &'a dyn Inputs,
    /// The artifacts nodes install.
    pub artifacts: &'a ArtifactSet,
}

/// Escapes an absolute path into a systemd unit name (`/var/lib/x` → `var-lib-x`).
pub fn systemd_escape_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, c) in trimmed.chars().enumerate() {
        match c {
            '/' => out.push('-'),
            c if c.is_ascii_alphanumeric() || c == '_' || (c == '.' && i > 0) || c == ':' => {
                out.push(c)
            }
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
    }
    out
}

/// What templates see of the other nodes (enough for etcd member lists and role filters;
/// kept small because every node's context carries all of them).
#[derive(Serialize)]
struct NodeRef<'a> {
    name: &'a str,
    pool: &'a str,
    address: Ipv4Addr,
    roles: &'a [crate::roles::Role],
    is_etcd: bool,
    is_control_plane: bool,
    is_worker: bool,
    zone: &'a Option<String>,
}

struct Builder<'c, 'a> {
    c: &'c Compiler<'a>,
    out: NodeOutput,
    /// The node's template context without `params`, built once per node.
    base: Value,
    /// `base` with empty `params`, ready for the templates that take none.
    plain: handlebars::Context,
}

impl<'c, 'a> Builder<'c, 'a> {
    fn new(c: &'c Compiler<'a>, shared: &Value, node: &NodeModel) -> Builder<'c, 'a> {
        let mut base = shared.clone();
        base["node"] = serde_json::to_value(node).expect("node serializes");
        base["budget"] = serde_json::to_value(&node.budget).expect("budget serializes");
        let mut plain = base.clone();
        plain["params"] = json!({});
        Builder {
            c,
            out: NodeOutput {
                node: node.name.clone(),
                files: vec![],
                artifacts: vec![],
                units: vec![],
            },
            base,
            plain: handlebars::Context::from(plain),
        }
    }

    fn ctx(&self, params: Value) -> handlebars::Context {
        let mut v = self.base.clone();
        v["params"] = params;
        handlebars::Context::from(v)
    }

    fn render(
        &mut self,
        template: &str,
        path: &str,
        mode: u32,
        params: Value,
    ) -> Result<(), CompileError> {
        let content = if params.as_object().is_some_and(|o| o.is_empty()) {
            self.c.templates.render_ctx(template, &self.plain)?
        } else {
            self.c.templates.render_ctx(template, &self.ctx(params))?
        };
        self.file(path, mode, content);
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, content: String) {
        self.out.files.push(OutFile {
            path: path.into(),
            mode,
            content,
        });
    }

    /// Issues (or reuses) a certificate and adds `dir/name.crt` and `dir/name.key`.
    fn cert(
        &mut self,
        req: CertRequest,
        dir: &str,
        name: &str,
    ) -> Result<(String, String), CompileError> {
        let pair = self
            .c
            .inputs
            .cert(&req)
            .map_err(|message| CompileError::Cert {
                id: req.id.clone(),
                message,
            })?;
        self.file(&format!("{dir}/{name}.crt"), 0o644, pair.cert_pem.clone());
        self.file(&format!("{dir}/{name}.key"), 0o600, pair.key_pem.clone());
        Ok((pair.cert_pem, pair.key_pem))
    }

    fn unit(
        &mut self,
        template: &str,
        name: &str,
        restart_on: Vec<String>,
        params: Value,
    ) -> Result<(), CompileError> {
        let path = format!("{UNITS}/{name}");
        self.render(template, &path, 0o644, params)?;
        self.out.units.push(OutUnit {
            name: name.into(),
            enable: true,
            restart_on_change: restart_on,
        });
        Ok(())
    }

    fn kubeconfig(
        &mut self,
        path: &str,
        user: &str,
        server: &str,
        cert: &(String, String),
    ) -> Result<(), CompileError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let params = json!({
            "user": user, "server": server,
            "ca_data": b64(&self.c.inputs.ca_cert(CaKind::Cluster)),
            "cert_data": b64(&cert.0), "key_data": b64(&cert.1),
        });
        self.render("kubeconfig", path, 0o600, params)
    }

    /// Fills the node's downloads: [`downloads`] of its binaries. A single-file download
    /// is installed where its binary goes; an archive is kept in the agent's cache with the
    /// wanted members extracted.
    fn artifacts(&mut self, node: &NodeModel) {
        let binaries = node_binaries(node);
        let dest_of = |b: &str| {
            binaries
                .iter()
                .find(|(n, _)| *n == b)
                .map(|(_, d)| (*d).to_owned())
                .expect("cover returns only asked binaries")
        };
        for (a, taken) in downloads(self.c.artifacts, node) {
            let (dest, mode, members) = if a.members.is_empty() {
                (dest_of(&taken[0]), 0o755, vec![])
            } else {
                let ext = if a.url.ends_with(".tgz") {
                    "tgz"
                } else {
                    "tar.gz"
                };
                let members = taken
                    .iter()
                    .map(|b| OutMember {
                        path: a.members[b].clone(),
                        dest: dest_of(b),
                        mode: 0o755,
                    })
                    .collect();
                (
                    format!("{ARTIFACT_CACHE}/{}-{}.{ext}", a.name, a.version),
                    0o644,
                    members,
                )
            };
            self.out.artifacts.push(OutArtifact {
                name: a.name.clone(),
                url: a.url.clone(),
                digest: a.digest.clone(),
                dest,
                mode,
                members,
            });
        }
    }
}

/// The binaries each role runs, and where they are installed.
const ETCD_BINARIES: &[(&str, &str)] = &[
    ("etcd", "/usr/local/bin/etcd"),
    ("etcdctl", "/usr/local/bin/etcdctl"),
];
const CONTROL_PLANE_BINARIES: &[(&str, &str)] = &[
    ("kube-apiserver", "/usr/local/bin/kube-apiserver"),
    (
        "kube-controller-manager",
        "/usr/local/bin/kube-controller-manager",
    ),
    ("kube-scheduler", "/usr/local/bin/kube-scheduler"),
    ("kubectl", "/usr/local/bin/kubectl"),
];
const WORKER_BINARIES: &[(&str, &str)] = &[
    ("kubelet", "/usr/local/bin/kubelet"),
    ("kube-proxy", "/usr/local/bin/kube-proxy"),
    ("containerd", "/usr/local/bin/containerd"),
    (
        "containerd-shim-runc-v2",
        "/usr/local/bin/containerd-shim-runc-v2",
    ),
    ("ctr", "/usr/local/bin/ctr"),
    ("runc", "/usr/local/sbin/runc"),
    ("bridge", "/opt/cni/bin/bridge"),
    ("host-local", "/opt/cni/bin/host-local"),
    ("loopback", "/opt/cni/bin/loopback"),
    ("portmap", "/opt/cni/bin/portmap"),
    ("crictl", "/usr/local/bin/crictl"),
];

/// The binaries `node`'s roles run, each with where it is installed: the one table of what
/// a role needs.
pub fn node_binaries(node: &NodeModel) -> Vec<(&'static str, &'static str)> {
    [
        (node.is_etcd, ETCD_BINARIES),
        (node.is_control_plane, CONTROL_PLANE_BINARIES),
        (node.is_worker, WORKER_BINARIES),
    ]
    .into_iter()
    .filter(|(has, _)| *has)
    .flat_map(|(_, b)| b.iter().copied())
    .collect()
}

/// What `node` downloads from `set`, each entry with the binaries taken from it (the
/// set's rule, [`ArtifactSet::cover`], over [`node_binaries`]). The controller fills its
/// mirror with exactly the union of these over the cluster's nodes.
pub fn downloads<'s>(
    set: &'s ArtifactSet,
    node: &NodeModel,
) -> Vec<(&'s crate::artifact_set::ArtifactEntry, Vec<String>)> {
    let names: Vec<&str> = node_binaries(node).iter().map(|(b, _)| *b).collect();
    set.cover(&names)
}

/// A client certificate: user `cn` in groups `orgs`.
/// The cluster administrator's client certificate (one for the cluster, not per node).
fn admin_cert() -> CertRequest {
    client_cert(
        CaKind::Cluster,
        "cluster/admin".into(),
        "kubernetes-admin",
        &["system:masters"],
    )
}

fn client_cert(ca: CaKind, id: String, cn: &str, orgs: &[&str]) -> CertRequest {
    CertRequest {
        ca,
        id,
        common_name: cn.into(),
        organizations: orgs.iter().map(|s| s.to_string()).collect(),
        dns_names: vec![],
        ips: vec![],
        server: false,
        client: true,
    }
}

/// A serving certificate for `dns` and `ips`; etcd's also authenticate as clients.
fn serving_cert(
    ca: CaKind,
    id: String,
    cn: &str,
    dns: Vec<String>,
    ips: Vec<Ipv4Addr>,
    also_client: bool,
) -> CertRequest {
    CertRequest {
        ca,
        id,
        common_name: cn.into(),
        organizations: vec![],
        dns_names: dns,
        ips,
        server: true,
        client: also_client,
    }
}

impl Compiler<'_> {
    /// Renders one template — a built-in name, or the text of a template file — as node
    /// `name` sees it, with empty `params`.
    pub fn render_one(
        &self,
        name: &str,
        source: Option<&str>,
        node: &str,
    ) -> Result<String, CompileError> {
        let node = self
            .model
            .node(node)
            .ok_or_else(|| CompileError::NoSuchNode(node.to_owned()))?;
        let b = Builder::new(self, &self.shared(), node);
        Ok(match source {
            Some(text) => self.templates.render_source(name, text, b.plain.data())?,
            None => self.templates.render_ctx(name, &b.plain)?,
        })
    }

    /// The part of every template context that is the same for all nodes.
    fn shared(&self) -> Value {
        let nodes: Vec<NodeRef> = self
            .model
            .nodes
            .iter()
            .map(|n| NodeRef {
                name: &n.name,
                pool: &n.pool,
                address: n.address,
                roles: &n.roles,
                is_etcd: n.is_etcd,
                is_control_plane: n.is_control_plane,
                is_worker: n.is_worker,
                zone: &n.zone,
            })
            .collect();
        json!({ "cluster": self.model, "nodes": nodes, "paths": PATHS })
    }

    /// Every node's output, in node order.
    pub fn compile_all(&self) -> Result<Vec<NodeOutput>, CompileError> {
        let shared = self.shared();
        self.model
            .nodes
            .iter()
            .map(|n| self.compile_with(&shared, n))
            .collect()
    }

    /// The output of the node named `name`.
    pub fn compile_node(&self, name: &str) -> Result<NodeOutput, CompileError> {
        let node = self
            .model
            .node(name)
            .ok_or_else(|| CompileError::NoSuchNode(name.to_owned()))?;
        self.compile_with(&self.shared(), node)
    }

    /// The operator's admin kubeconfig: the same admin client certificate the control plane
    /// nodes hold, reaching the API at `server` (the controller's load balancer over the API
    /// servers; [`ClusterModel::api_endpoint`](crate::model::ClusterModel) when there is
    /// none).
    pub fn operator_kubeconfig(&self, server: &str) -> Result<String, CompileError> {
        let node = self
            .model
            .nodes
            .iter()
            .find(|n| n.is_control_plane)
            .ok_or_else(|| CompileError::NoSuchNode("(a control-plane node)".into()))?;
        let mut b = Builder::new(self, &self.shared(), node);
        let admin = b.cert(admin_cert(), &format!("{PKI}/clients"), "admin")?;
        let path = "admin.kubeconfig";
        b.kubeconfig(path, "kubernetes-admin", server, &admin)?;
        let file = b.out.files.into_iter().find(|f| f.path == path);
        Ok(file.map(|f| f.content).unwrap_or_default())
    }

    fn compile_with(&self, shared: &Value, node: &NodeModel) -> Result<NodeOutput, CompileError> {
        let mut b = Builder::new(self, shared, node);
        let (n, addr) = (node.name.as_str(), node.address);
        let lo = Ipv4Addr::LOCALHOST;
        // A control-plane node reaches its own API server; any other node the API servers
        // through its local load balancer, so losing one control-plane node (the first
        // included) leaves it connected.
        let local_api = format!("https://127.0.0.1:{API_PORT}");
        let api = if node.is_control_plane {
            local_api.clone()
        } else {
            format!("https://{API_LB}")
        };

        b.file(
            &format!("{PKI}/ca.crt"),
            0o644,
            self.inputs.ca_cert(CaKind::Cluster),
        );

        if node.is_etcd {
            b.file(
                &format!("{ETCD_PKI}/ca.crt"),
                0o644,
                self.inputs.ca_cert(CaKind::Etcd),
            );
            // Read by etcd on every new connection: not among the files that restart it, so
            // revoking a removed node's certificates restarts no member.
            b.file(
                &format!("{ETCD_PKI}/crl.pem"),
                0o644,
                self.inputs.revocation_list(CaKind::Etcd),
            );
            let dns = vec![n.to_owned(), "localhost".into()];
            b.cert(
                serving_cert(
                    CaKind::Etcd,
                    format!("{n}/etcd-server"),
                    n,
                    dns.clone(),
                    vec![addr, lo],
                    true,
                ),
                ETCD_PKI,
                "server",
            )?;
            b.cert(
                serving_cert(
                    CaKind::Etcd,
                    format!("{n}/etcd-peer"),
                    n,
                    dns,
                    vec![addr, lo],
                    true,
                ),
                ETCD_PKI,
                "peer",
            )?;
            // Not among the files that restart etcd: it reads them only on its first start.
            let (join, initial_cluster) = match self.inputs.etcd_join(n) {
                Some(membership) => (true, membership),
                None => (false, self.model.etcd_initial_cluster()),
            };
            b.render(
                "config/etcd-bootstrap.env",
                ETCD_BOOTSTRAP,
                0o644,
                json!({ "join": join, "initial_cluster": initial_cluster }),
            )?;
            let watch = [
                format!("{ETCD_PKI}/ca.crt"),
                format!("{ETCD_PKI}/server.crt"),
                format!("{ETCD_PKI}/peer.crt"),
                format!("{BIN}/etcd"),
            ];
            b.unit(
                "units/etcd.service",
                "etcd.service",
                watch.to_vec(),
                json!({}),
            )?;
        }

        if node.is_control_plane {
            let m = self.model;
            let api_dns = [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                &format!("kubernetes.default.svc.{}", m.domain),
                "localhost",
                n,
            ]
            .map(String::from)
            .to_vec();
            b.cert(
                serving_cert(
                    CaKind::Cluster,
                    format!("{n}/apiserver"),
                    "kube-apiserver",
                    api_dns,
                    [m.service_ip, addr, lo]
                        .into_iter()
                        .chain(m.api_external)
                        .collect(),
                    false,
                ),
                PKI,
                "apiserver",
            )?;
            b.cert(
                client_cert(
                    CaKind::Etcd,
                    format!("{n}/apiserver-etcd-client"),
                    "kube-apiserver-etcd-client",
                    &[],
                ),
                PKI,
                "apiserver-etcd-client",
            )?;
            b.file(
                &format!("{PKI}/etcd-ca.crt"),
                0o644,
                self.inputs.ca_cert(CaKind::Etcd),
            );
            b.cert(
                client_cert(
                    CaKind::Cluster,
                    format!("{n}/apiserver-kubelet-client"),
                    "kube-apiserver-kubelet-client",
                    &["system:masters"],
                ),
                PKI,
                "apiserver-kubelet-client",
            )?;
            b.file(
                &format!("{PKI}/front-proxy-ca.crt"),
                0o644,
                self.inputs.ca_cert(CaKind::FrontProxy),
            );
            b.cert(
                client_cert(
                    CaKind::FrontProxy,
                    format!("{n}/front-proxy-client"),
                    "front-proxy-client",
                    &[],
                ),
                PKI,
                "front-proxy-client",
            )?;
            b.file(
                &format!("{PKI}/ca.key"),
                0o600,
                self.inputs.cluster_ca_key(),
            );
            let (sa_key, sa_pub) = self.inputs.service_account_keys();
            b.file(&format!("{PKI}/sa.key"), 0o600, sa_key);
            b.file(&format!("{PKI}/sa.pub"), 0o644, sa_pub);
            b.render(
                "config/encryption-config.yaml",
                &format!("{KUBE}/encryption-config.yaml"),
                0o600,
                json!({ "key": self.inputs.encryption_key() }),
            )?;
            b.render(
                "config/audit-policy.yaml",
                &format!("{KUBE}/audit-policy.yaml"),
                0o644,
                json!({}),
            )?;

            let cm = b.cert(
                client_cert(
                    CaKind::Cluster,
                    format!("{n}/controller-manager"),
                    "system:kube-controller-manager",
                    &[],
                ),
                &format!("{PKI}/clients"),
                "controller-manager",
            )?;
            b.kubeconfig(
                &format!("{KUBE}/controller-manager.kubeconfig"),
                "system:kube-controller-manager",
                &local_api,
                &cm,
            )?;
            let sched = b.cert(
                client_cert(
                    CaKind::Cluster,
                    format!("{n}/scheduler"),
                    "system:kube-scheduler",
                    &[],
                ),
                &format!("{PKI}/clients"),
                "scheduler",
            )?;
            b.kubeconfig(
                &format!("{KUBE}/scheduler.kubeconfig"),
                "system:kube-scheduler",
                &local_api,
                &sched,
            )?;
            let admin = b.cert(admin_cert(), &format!("{PKI}/clients"), "admin")?;
            b.kubeconfig(
                &format!("{KUBE}/admin.kubeconfig"),
                "kubernetes-admin",
                &local_api,
                &admin,
            )?;

            let pki = |f: &str| format!("{PKI}/{f}");
            b.unit(
                "units/kube-apiserver.service",
                "kube-apiserver.service",
                vec![
                    pki("apiserver.crt"),
                    pki("apiserver-etcd-client.crt"),
                    pki("front-proxy-client.crt"),
                    format!("{KUBE}/encryption-config.yaml"),
                    format!("{KUBE}/audit-policy.yaml"),
                    format!("{BIN}/kube-apiserver"),
                ],
                json!({}),
            )?;
            b.unit(
                "units/kube-controller-manager.service",
                "kube-controller-manager.service",
                vec![
                    format!("{KUBE}/controller-manager.kubeconfig"),
                    format!("{BIN}/kube-controller-manager"),
                ],
                json!({}),
            )?;
            b.unit(
                "units/kube-scheduler.service",
                "kube-scheduler.service",
                vec![
                    format!("{KUBE}/scheduler.kubeconfig"),
                    format!("{BIN}/kube-scheduler"),
                ],
                json!({}),
            )?;

            let addons = self.addon_manifests(&mut b)?;
            b.unit(
                "units/pangaea-addons.service",
                "pangaea-addons.service",
                addons,
                json!({}),
            )?;
        }

        if node.is_worker && !node.is_control_plane {
            let servers: String = self
                .model
                .with_role(crate::roles::Role::ControlPlane)
                .map(|cp| format!("{}:{API_PORT}\n", cp.address))
                .collect();
            b.file(
                API_SERVERS,
                0o644,
                format!("# The API servers, for pangaea-api-lb.service.\n{servers}"),
            );
            b.unit(
                "units/pangaea-api-lb.service",
                "pangaea-api-lb.service",
                vec![API_SERVERS.to_owned()],
                json!({}),
            )?;
        }

        if node.is_worker {
            let kubelet = b.cert(
                client_cert(
                    CaKind::Cluster,
                    format!("{n}/kubelet-client"),
                    &format!("system:node:{n}"),
                    &["system:nodes"],
                ),
                "/var/lib/kubelet/pki",
                "kubelet-client",
            )?;
            b.kubeconfig(
                &format!("{KUBE}/kubelet.kubeconfig"),
                &format!("system:node:{n}"),
                &api,
                &kubelet,
            )?;
            b.cert(
                serving_cert(
                    CaKind::Cluster,
                    format!("{n}/kubelet-serving"),
                    n,
                    vec![n.to_owned()],
                    vec![addr],
                    false,
                ),
                "/var/lib/kubelet/pki",
                "kubelet",
            )?;
            let proxy = b.cert(
                client_cert(
                    CaKind::Cluster,
                    format!("{n}/kube-proxy"),
                    "system:kube-proxy",
                    &[],
                ),
                &format!("{PKI}/clients"),
                "kube-proxy",
            )?;
            b.kubeconfig(
                &format!("{KUBE}/kube-proxy.kubeconfig"),
                "system:kube-proxy",
                &api,
                &proxy,
            )?;
            b.render(
                "config/kubelet-config.yaml",
                "/var/lib/kubelet/config.yaml",
                0o644,
                json!({}),
            )?;
            b.render(
                "config/kube-proxy-config.yaml",
                &format!("{KUBE}/kube-proxy-config.yaml"),
                0o644,
                json!({}),
            )?;
            let containerd = self.artifacts.get("containerd");
            let format = crate::containerd::ConfigVersion::for_containerd(
                containerd.map_or("", |a| a.version.as_str()),
            )
            .map_err(|message| CompileError::Artifact {
                name: "containerd".into(),
                message,
            })?;
            b.render(
                format.template(),
                "/etc/containerd/config.toml",
                0o644,
                json!({}),
            )?;
            b.render(
                "node/logrotate-containers",
                "/etc/logrotate.d/pangaea-containers",
                0o644,
                json!({}),
            )?;
            b.unit(
                "units/containerd.service",
                "containerd.service",
                vec![
                    "/etc/containerd/config.toml".into(),
                    format!("{BIN}/containerd"),
                ],
                json!({}),
            )?;
            b.unit(
                "units/kubelet.service",
                KUBELET_UNIT,
                vec![
                    "/var/lib/kubelet/config.yaml".into(),
                    format!("{KUBE}/kubelet.kubeconfig"),
                    format!("{BIN}/kubelet"),
                ],
                json!({}),
            )?;
            b.unit(
                "units/kube-proxy.service",
                "kube-proxy.service",
                vec![
                    format!("{KUBE}/kube-proxy-config.yaml"),
                    format!("{KUBE}/kube-proxy.kubeconfig"),
                    format!("{BIN}/kube-proxy"),
                ],
                json!({}),
            )?;
        }

        for d in &node.disks {
            let mount_unit = format!("{}.mount", systemd_escape_path(&d.config.mount));
            let format_unit = format!("pangaea-format-{}.service", d.config.name);
            let params =
                json!({ "disk": d.config, "device": d.device, "format_unit": format_unit });
            b.unit(
                "units/disk-format.service",
                &format_unit,
                vec![],
                params.clone(),
            )?;
            b.unit("units/disk.mount", &mount_unit, vec![], params)?;
        }
        for m in &self.model.nfs {
            let name = format!("{}.mount", systemd_escape_path(&m.mount));
            b.unit("units/nfs.mount", &name, vec![], json!({ "nfs": m }))?;
        }
        b.artifacts(node);
        Ok(b.out)
    }

    /// Renders the enabled add-ons into the add-on directory; returns their paths.
    fn addon_manifests(&self, b: &mut Builder) -> Result<Vec<String>, CompileError> {
        let a = &self.model.addons;
        let expose = |svc: &str, default_external: bool| {
            let e = self.model.expose.get(svc).cloned().unwrap_or_default();
            let kind = match e.kind {
                ExposeType::ClusterIP if default_external => self.model.external_exposure,
                kind => kind,
            };
            json!({ "type": kind, "node_port": e.node_port, "load_balancer_ip": e.load_balancer_ip })
        };
        let mut list: Vec<(&str, bool, Value)> = vec![
            ("flannel", a.flannel, json!({})),
            ("coredns", a.coredns, json!({})),
            ("metrics-server", a.metrics_server, json!({})),
            (
                "logging",
                a.logging.enabled,
                json!({ "persistent_storage": a.logging.persistent_storage }),
            ),
            (
                "monitoring",
                a.monitoring.enabled,
                json!({ "grafana": expose("grafana", a.monitoring.external_access), "prometheus": expose("prometheus", false) }),
            ),
            (
                "registry-secret",
                self.model.registry.is_some(),
                json!({ "registry": self.model.registry }),
            ),
        ];
        list.push((
            "user-secrets",
            !self.model.secrets.is_empty(),
            json!({ "secrets": self.model.secrets }),
        ));
        let mut paths = Vec::new();
        for (i, (name, on, params)) in list.into_iter().enumerate() {
            if on {
                let path = format!("{ADDONS}/{:02}-{name}.yaml", i + 1);
                b.render(&format!("addons/{name}.yaml"), &path, 0o600, params)?;
                paths.push(path);
            }
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_paths_like_systemd_escape() {
        assert_eq!(systemd_escape_path("/var/lib/data"), "var-lib-data");
        assert_eq!(systemd_escape_path("/mnt/my-share"), "mnt-my\\x2dshare");
        assert_eq!(systemd_escape_path("/"), "-");
    }

    /// [`FakeInputs`](crate::inputs::FakeInputs), with node-4 having joined as a learner.
    struct Joined;

    impl Inputs for Joined {
        fn ca_cert(&self, ca: CaKind) -> String {
            crate::inputs::FakeInputs.ca_cert(ca)
        }
        fn cluster_ca_key(&self) -> String {
            crate::inputs::FakeInputs.cluster_ca_key()
        }
        fn cert(&self, req: &CertRequest) -> Result<crate::inputs::CertPair, String> {
            crate::inputs::FakeInputs.cert(req)
        }
        fn encryption_key(&self) -> String {
            crate::inputs::FakeInputs.encryption_key()
        }
        fn revocation_list(&self, ca: CaKind) -> String {
            crate::inputs::FakeInputs.revocation_list(ca)
        }
        fn service_account_keys(&self) -> (String, String) {
            crate::inputs::FakeInputs.service_account_keys()
        }
        fn etcd_join(&self, node: &str) -> Option<String> {
            (node == "node-4")
                .then(|| "node-1=https://10.213.0.11:2380,node-4=https://10.213.0.14:2380".into())
        }
    }

    #[test]
    fn founders_and_joiners_get_their_own_etcd_bootstrap_outside_the_unit() {
        let loaded = crate::config::Loaded::parse(
            "pangaea.yaml",
            "pools:\n  - name: node\n    count: 4\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let model = ClusterModel::build(&loaded);
        let templates = Templates::load(std::path::Path::new("."), None).unwrap();
        let artifacts = loaded.artifact_set();
        let c = Compiler {
            model: &model,
            templates: &templates,
            inputs: &Joined,
            artifacts: &artifacts,
        };
        let file = |node: &str, path: &str| {
            c.compile_node(node)
                .unwrap()
                .files
                .into_iter()
                .find(|f| f.path == path)
                .unwrap()
                .content
        };
        let founder = file("node-1", ETCD_BOOTSTRAP);
        assert!(
            founder.contains("\nETCD_INITIAL_CLUSTER_STATE=new\n"),
            "{founder}"
        );
        assert!(founder.contains("\nETCD_INITIAL_CLUSTER=node-1=https://10.213.0.11:2380,node-2=https://10.213.0.12:2380,node-3=https://10.213.0.13:2380,node-4=https://10.213.0.14:2380\n"), "{founder}");
        let joiner = file("node-4", ETCD_BOOTSTRAP);
        assert!(
            joiner.contains("\nETCD_INITIAL_CLUSTER_STATE=existing\n"),
            "{joiner}"
        );
        assert!(joiner.contains("\nETCD_INITIAL_CLUSTER=node-1=https://10.213.0.11:2380,node-4=https://10.213.0.14:2380\n"), "{joiner}");
        // The unit reads them, and is the same for both: a change of membership restarts
        // no member.
        let unit = file("node-1", "/etc/systemd/system/etcd.service");
        assert!(
            unit.contains(&format!("EnvironmentFile={ETCD_BOOTSTRAP}")),
            "{unit}"
        );
        assert!(!unit.contains("--initial-cluster"), "{unit}");
        let out = c.compile_node("node-1").unwrap();
        let etcd = out.units.iter().find(|u| u.name == "etcd.service").unwrap();
        assert!(!etcd.restart_on_change.iter().any(|p| p == ETCD_BOOTSTRAP));
    }
}
