//! The gRPC services agents call. Every refusal is logged with the peer address and
//! returned with a message that says what was wrong; nothing is written on refusal.

use crate::assign;
use crate::certinfo::CertInfo;
use crate::controller::{Controller, encode_report, unix_now};
use crate::pki::{CaKind, profiles};
use crate::records::NodeRecord;
use crate::store::{self, ASSIGNMENTS, NODES, REPORTS, StoreError};
use crate::tokens;
use pangaea_core::NodeName;
use pangaea_core::tls::PeerInfo;
use pangaea_core::token::BootstrapToken;
use pangaea_proto as pb;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::transport::server::Router;
use tonic::{Code, Request, Response, Status};

/// Largest message the controller accepts from an agent (a join carries a CSR of a few
/// hundred bytes; a report a few KiB).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct Service(pub Arc<Controller>);

pub fn router(controller: Arc<Controller>) -> Router {
    let svc = Service(controller);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(
            pb::enrollment_server::EnrollmentServer::new(svc.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::node_service_server::NodeServiceServer::new(svc)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(pangaea_proto::MAX_MESSAGE_BYTES),
        )
}

fn peer<T>(req: &Request<T>) -> (String, Option<PeerInfo>) {
    let info = req.extensions().get::<PeerInfo>().cloned();
    let addr = info
        .as_ref()
        .and_then(|p| p.remote_addr)
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    (addr, info)
}

fn refuse(code: Code, remote: &str, what: &str, message: impl std::fmt::Display) -> Status {
    tracing::warn!(%remote, call = what, code = ?code, "refused: {message}");
    Status::new(code, message.to_string())
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("internal error: {e}");
    Status::internal(e.to_string())
}

impl Service {
    /// The calling node, from its verified client certificate and the state store.
    fn authenticate<T>(&self, req: &Request<T>, what: &str) -> Result<NodeRecord, Status> {
        let (remote, info) = peer(req);
        let Some(certs) = info.and_then(|i| i.certs) else {
            return Err(refuse(
                Code::Unauthenticated,
                &remote,
                what,
                "this call needs the node's client certificate (mutual TLS); join with a bootstrap token first",
            ));
        };
        let cert = certs
            .first()
            .and_then(|c| CertInfo::from_der(c))
            .ok_or_else(|| {
                refuse(
                    Code::Unauthenticated,
                    &remote,
                    what,
                    "unreadable client certificate",
                )
            })?;
        let name = cert.common_name().unwrap_or_default().to_owned();
        let record = self.0.node(&name).map_err(internal)?;
        match record {
            None => Err(refuse(
                Code::Unauthenticated,
                &remote,
                what,
                format!("no node {name:?} is registered"),
            )),
            Some(r) if r.removed => Err(refuse(
                Code::PermissionDenied,
                &remote,
                what,
                format!("node {name:?} was removed; its certificates are revoked"),
            )),
            Some(r) if !r.active_serials.contains(&cert.serial_hex) => Err(refuse(
                Code::PermissionDenied,
                &remote,
                what,
                format!(
                    "certificate {} of node {name:?} is revoked or superseded",
                    cert.serial_hex
                ),
            )),
            Some(r) => Ok(r),
        }
    }
}

/// Why a join was refused, decided inside the transaction.
enum JoinOutcome {
    Joined(Option<pb::Assignment>),
    Refused(Code, String),
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for Service {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let (remote, _) = peer(&req);
        let bad = |m: String| refuse(Code::InvalidArgument, &remote, "Join", m);
        let req = req.into_inner();
        let token = BootstrapToken::parse(&req.token).map_err(|e| bad(e.to_string()))?;
        let facts = req
            .facts
            .ok_or_else(|| bad("node facts are missing".into()))?;
        if facts.instance_id.is_empty() || facts.instance_id.len() > 256 {
            return Err(bad("the instance ID must be 1 to 256 characters".into()));
        }
        let asked = if req.node_name.is_empty() {
            facts.hostname.clone()
        } else {
            req.node_name.clone()
        };
        let name = NodeName::try_from(asked).map_err(|e| bad(e.to_string()))?;
        for a in &facts.addresses {
            a.parse::<IpAddr>()
                .map_err(|_| bad(format!("node address {a:?} is not an IP address")))?;
        }
        let lifetime = self.0.config.node_cert_lifetime;
        let issued = self
            .0
            .pki
            .sign_csr(
                CaKind::Controller,
                &req.csr_der,
                &profiles::node_identity(name.as_str(), lifetime),
            )
            .map_err(|e| bad(e.to_string()))?;

        let planner = self.0.planner.clone();
        let mirror_dir = self.0.mirror_dir();
        let (n, serial, not_after) = (
            name.to_string(),
            issued.serial_hex.clone(),
            issued.not_after,
        );
        let outcome = self
            .0
            .store
            .write(move |txn| {
                // Validate everything first; write only when the join is admitted.
                let token_rec = match tokens::check(txn, &token, &n)? {
                    Ok(rec) => rec,
                    Err(refusal) => return Ok(JoinOutcome::Refused(Code::PermissionDenied, refusal.to_string())),
                };
                let mut nodes = txn.open_table(NODES).map_err(|e| store::db_err("nodes", &n, e))?;
                if let Some(old) = store::get::<NodeRecord>(&nodes, "nodes", &n)? {
                    let replaceable = old.removed || old.instance_id == facts.instance_id || token_rec.node.as_deref() == Some(n.as_str());
                    if !replaceable {
                        return Ok(JoinOutcome::Refused(
                            Code::AlreadyExists,
                            format!(
                                "node name {n:?} belongs to instance {:?}, not {:?}: remove it first (pangaea-ctl node remove {n}) or join with a token bound to it (pangaea-ctl token create --node {n})",
                                old.instance_id, facts.instance_id
                            ),
                        ));
                    }
                }
                let record = NodeRecord {
                    name: n.clone(),
                    instance_id: facts.instance_id,
                    hostname: facts.hostname,
                    addresses: facts.addresses,
                    boot_id: facts.boot_id,
                    roles: planner.roles(&n),
                    joined_at: unix_now(),
                    active_serials: vec![serial],
                    cert_not_after: not_after,
                    removed: false,
                    first_applied_at: None,
                    healthy_at: None,
                };
                let mut plan = match planner.plan(&record) {
                    Ok(p) => p,
                    Err(e) => return Ok(JoinOutcome::Refused(Code::FailedPrecondition, e.to_string())),
                };
                crate::mirror::localize(&mirror_dir, &mut plan);
                tokens::spend(txn, token_rec)?;
                store::put(&mut nodes, "nodes", &n, &record)?;
                drop(nodes);
                Ok(JoinOutcome::Joined(assign::store_plan(txn, &n, plan)?))
            })
            .await
            .map_err(internal)?;
        match outcome {
            JoinOutcome::Refused(code, message) => Err(refuse(code, &remote, "Join", message)),
            JoinOutcome::Joined(assignment) => {
                tracing::info!(node = %name, %remote, serial = %issued.serial_hex, "node joined");
                if let Some(a) = assignment {
                    self.0.hub.publish(a);
                }
                Ok(Response::new(pb::JoinResponse {
                    node_name: name.to_string(),
                    certificate_pem: issued.cert_pem,
                    ca_pem: self.0.pki.ca(CaKind::Controller).cert_pem.clone(),
                }))
            }
        }
    }
}

type ChunkStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

/// Chunk size for artifacts served from the mirror.
const CHUNK_BYTES: usize = 256 * 1024;

type AssignmentStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Assignment, Status>> + Send>>;

#[tonic::async_trait]
impl pb::node_service_server::NodeService for Service {
    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let node = self.authenticate(&req, "Renew")?;
        let (remote, _) = peer(&req);
        let lifetime = self.0.config.node_cert_lifetime;
        let issued = self
            .0
            .pki
            .sign_csr(
                CaKind::Controller,
                &req.get_ref().csr_der,
                &profiles::node_identity(&node.name, lifetime),
            )
            .map_err(|e| refuse(Code::InvalidArgument, &remote, "Renew", e))?;
        let (n, serial, not_after) = (
            node.name.clone(),
            issued.serial_hex.clone(),
            issued.not_after,
        );
        let renewed = self
            .0
            .store
            .write(move |txn| {
                let mut nodes = txn
                    .open_table(NODES)
                    .map_err(|e| store::db_err("nodes", &n, e))?;
                let Some(mut rec) =
                    store::get::<NodeRecord>(&nodes, "nodes", &n)?.filter(|r| !r.removed)
                else {
                    return Ok(false);
                };
                // Keep the certificate in use valid until the agent has switched over.
                let keep_from = rec.active_serials.len().saturating_sub(1);
                rec.active_serials.drain(..keep_from);
                rec.active_serials.push(serial);
                rec.cert_not_after = not_after;
                store::put(&mut nodes, "nodes", &n, &rec)?;
                Ok(true)
            })
            .await
            .map_err(internal)?;
        if !renewed {
            return Err(refuse(
                Code::PermissionDenied,
                &remote,
                "Renew",
                format!("node {:?} was removed", node.name),
            ));
        }
        tracing::info!(node = %node.name, serial = %issued.serial_hex, "node certificate renewed");
        Ok(Response::new(pb::RenewResponse {
            certificate_pem: issued.cert_pem,
        }))
    }

    type WatchAssignmentStream = AssignmentStream;

    async fn watch_assignment(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<AssignmentStream>, Status> {
        let node = self.authenticate(&req, "WatchAssignment")?;
        let asked = &req.get_ref().node_name;
        if !asked.is_empty() && *asked != node.name {
            let (remote, _) = peer(&req);
            return Err(refuse(
                Code::PermissionDenied,
                &remote,
                "WatchAssignment",
                format!(
                    "node {:?} may read only its own assignment, not {asked:?}",
                    node.name
                ),
            ));
        }
        let current = self
            .0
            .store
            .read(|r| {
                assign::load(
                    &r.open_table(ASSIGNMENTS)
                        .map_err(|e| store::db_err("assignments", &node.name, e))?,
                    &node.name,
                )
            })
            .map_err(internal)?;
        let rx = self.0.hub.subscribe(&node.name, current);
        let stream = tokio_stream::wrappers::WatchStream::new(rx)
            .filter_map(|a| a.map(|a| Ok((*a).clone())));
        Ok(Response::new(Box::pin(stream)))
    }

    type FetchArtifactStream = ChunkStream;

    async fn fetch_artifact(
        &self,
        req: Request<pb::FetchArtifactRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let node = self.authenticate(&req, "FetchArtifact")?;
        let (remote, _) = peer(&req);
        let r = req.into_inner();
        let digest = pangaea_artifact::Digest::parse(&r.digest)
            .map_err(|e| refuse(Code::InvalidArgument, &remote, "FetchArtifact", e))?;
        let path = self.0.mirror.blob_path(&digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(|_| {
            refuse(
                Code::NotFound,
                &remote,
                "FetchArtifact",
                format!("artifact {digest} is not in the controller's mirror"),
            )
        })?;
        let total = file.metadata().await.map_err(internal)?.len();
        if r.offset > total {
            return Err(refuse(
                Code::OutOfRange,
                &remote,
                "FetchArtifact",
                format!(
                    "offset {} is past the end of {digest} ({total} bytes)",
                    r.offset
                ),
            ));
        }
        file.seek(std::io::SeekFrom::Start(r.offset))
            .await
            .map_err(internal)?;
        tracing::debug!(node = %node.name, %digest, offset = r.offset, "serving artifact");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut offset = r.offset;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "read {}: {e}",
                                path.display()
                            ))))
                            .await;
                        return;
                    }
                };
                // An empty first chunk still tells the agent the size when nothing is left.
                if n == 0 && offset > r.offset {
                    return;
                }
                if tx
                    .send(Ok(pb::ArtifactChunk {
                        data: buf[..n].to_vec(),
                        total_size: total,
                        offset,
                    }))
                    .await
                    .is_err()
                    || n == 0
                {
                    return;
                }
                offset += n as u64;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report(
        &self,
        req: Request<pb::HealthReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let node = self.authenticate(&req, "Report")?;
        let now = unix_now();
        let value = encode_report(now, req.get_ref());
        let applied = req.get_ref().applied_revision;
        let units_ok = req
            .get_ref()
            .units
            .iter()
            .all(|u| u.active_state == "active" || u.active_state == "missing-binary");
        let n = node.name.clone();
        self.0
            .store
            .write(move |txn| {
                let mut t = txn
                    .open_table(REPORTS)
                    .map_err(|e| store::db_err("reports", &n, e))?;
                t.insert(n.as_str(), value.as_slice())
                    .map_err(|e| store::db_err("reports", &n, e))?;
                drop(t);
                // The boot timeline's milestones, recorded once.
                let assigned = assign::load(
                    &txn.open_table(ASSIGNMENTS)
                        .map_err(|e| store::db_err("assignments", &n, e))?,
                    &n,
                )?
                .map_or(0, |a| a.revision);
                let mut nodes = txn
                    .open_table(NODES)
                    .map_err(|e| store::db_err("nodes", &n, e))?;
                if let Some(mut rec) = store::get::<NodeRecord>(&nodes, "nodes", &n)? {
                    let done = assigned > 0 && applied == assigned;
                    let before = (rec.first_applied_at, rec.healthy_at);
                    if done && rec.first_applied_at.is_none() {
                        rec.first_applied_at = Some(now);
                    }
                    if done && units_ok && rec.healthy_at.is_none() {
                        rec.healthy_at = Some(now);
                    }
                    if before != (rec.first_applied_at, rec.healthy_at) {
                        store::put(&mut nodes, "nodes", &n, &rec)?;
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ReportAck {}))
    }
}
