//! The gRPC services agents call: request decoding, peer identity and the mapping of the
//! cluster's answers to status codes. The rules themselves (who may join, which
//! certificate is still a node's, what a report records) are in [`crate::rules`]. Every
//! refusal is logged with the peer address and returned with a message that says what
//! was wrong; nothing is written on refusal.

use crate::assign;
use crate::controller::{Controller, ControllerError};
use crate::pki::CaKind;
use crate::rules::{self, Refusal};
use crate::store::{self, ASSIGNMENTS};
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

/// Requests (HTTP/2 streams) served at once on one agent connection.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 16;

/// The agent-facing services over one controller.
#[derive(Clone)]
pub struct Service(pub Arc<Controller>);

/// The gRPC router of the agent-facing services.
pub fn router(controller: Arc<Controller>) -> Router {
    let svc = Service(controller);
    tonic::transport::Server::builder()
        // One connection cannot take the controller for itself: an agent needs a watch,
        // a report and now and then a renewal or a download at once; more wait their turn
        // on that connection only (hardening #6).
        .concurrency_limit_per_connection(MAX_REQUESTS_PER_CONNECTION)
        .max_concurrent_streams(Some(MAX_REQUESTS_PER_CONNECTION as u32))
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

/// The rustls configuration of the gRPC port: controller serving certificate (with the
/// controller CA in the chain, for the agents' pin check); client certificates optional
/// at the TLS layer, required by every handler except `Join`.
pub fn server_tls(c: &Controller) -> Result<Arc<rustls::ServerConfig>, ControllerError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut names = vec![
        "pangaea-controller".to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for a in &c.config().advertise {
        if !names.contains(a) {
            names.push(a.clone());
        }
    }
    let (cert_pem, key_pem) = c.pki().controller_serving(&names)?;
    let ca = CertificateDer::from(c.pki().ca(CaKind::Controller).cert_der.clone());
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| ControllerError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ControllerError::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| ControllerError::Tls(e.to_string()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| ControllerError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf, ca], key)
        .map_err(|e| ControllerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves the agents on `listener` until `shutdown` completes.
pub async fn serve(
    c: &Arc<Controller>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    let incoming = pangaea_core::tls::tls_incoming(listener, server_tls(c)?);
    let hub = c.hub.clone();
    // Watch streams never finish by themselves; end them so connections can close.
    let shutdown = async move {
        shutdown.await;
        hub.close_all().await;
    };
    router(c.clone())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ControllerError::Serve(e.to_string()))
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

/// The status code of each refusal.
fn code(r: &Refusal) -> Code {
    match r {
        Refusal::Invalid(_) => Code::InvalidArgument,
        Refusal::Token(_) | Refusal::Revoked(_) => Code::PermissionDenied,
        Refusal::NameTaken { .. } => Code::AlreadyExists,
        Refusal::Plan(_) => Code::FailedPrecondition,
        Refusal::Unauthenticated(_) => Code::Unauthenticated,
    }
}

/// A rule's outcome as a gRPC result: refusals logged with the peer, failures internal.
fn answer<T>(
    outcome: Result<Result<T, Refusal>, ControllerError>,
    remote: &str,
    what: &str,
) -> Result<T, Status> {
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(r)) => {
            tracing::warn!(%remote, call = what, "refused: {r}");
            Err(Status::new(code(&r), r.public_message()))
        }
        Err(e) => Err(internal(e)),
    }
}

impl Service {
    /// The calling node, from its verified client certificate and the state store.
    fn authenticate<T>(&self, req: &Request<T>, what: &str) -> Result<rules::Caller, Status> {
        let (remote, info) = peer(req);
        let certs = info.and_then(|i| i.certs);
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        answer(rules::authenticate(&self.0, leaf), &remote, what)
    }
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
        let join = rules::Join {
            token,
            name: name.clone(),
            instance_id: facts.instance_id,
            hostname: facts.hostname,
            addresses: facts.addresses,
            boot_id: facts.boot_id,
            csr_der: req.csr_der,
        };
        let joined = answer(rules::join(&self.0, join).await, &remote, "Join")?;
        tracing::info!(node = %name, %remote, serial = %joined.serial_hex, "node joined");
        if joined.replaced {
            // The previous incarnation's streams end; its certificate is no longer listed.
            self.0.hub.close(&name).await;
            self.0
                .jobs
                .close(&name, "the node was replaced by a new machine");
        }
        if let Some(a) = joined.assignment {
            self.0.hub.publish(a).await;
        }
        Ok(Response::new(pb::JoinResponse {
            node_name: name.to_string(),
            certificate_pem: joined.certificate_pem,
            ca_pem: self.0.pki().ca(CaKind::Controller).cert_pem.clone(),
        }))
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
        let caller = self.authenticate(&req, "Renew")?;
        let (remote, _) = peer(&req);
        let outcome = rules::renew(&self.0, &caller, &req.get_ref().csr_der).await;
        Ok(Response::new(pb::RenewResponse {
            certificate_pem: answer(outcome, &remote, "Renew")?,
        }))
    }

    type WatchAssignmentStream = AssignmentStream;

    async fn watch_assignment(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<AssignmentStream>, Status> {
        let node = self.authenticate(&req, "WatchAssignment")?.record;
        let asked = &req.get_ref().node_name;
        if !asked.is_empty() && node.name != *asked.as_str() {
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
        let rx = self.0.hub.subscribe(&node.name, current).await;
        // Check the caller again now that it is subscribed: a removal or replacement
        // committed since the first check closed the hub before this subscription existed,
        // and one committed from now on closes this subscription. Either way no stream of a
        // revoked certificate stays open.
        self.authenticate(&req, "WatchAssignment")?;
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
        let node = self.authenticate(&req, "FetchArtifact")?.record;
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

    type WatchJobsStream = crate::jobs::JobStream;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<crate::jobs::JobStream>, Status> {
        let node = self.authenticate(&req, "WatchJobs")?.record;
        let stream = crate::jobs::stream(&self.0.jobs, &node.name);
        // As for the assignment: a removal committed meanwhile is caught here.
        self.authenticate(&req, "WatchJobs")?;
        Ok(Response::new(stream))
    }

    async fn report_job(
        &self,
        req: Request<pb::JobReport>,
    ) -> Result<Response<pb::JobAck>, Status> {
        let node = self.authenticate(&req, "ReportJob")?.record;
        let (remote, _) = peer(&req);
        self.0
            .jobs
            .report(&node.name, req.into_inner())
            .map_err(|r| refuse(Code::NotFound, &remote, "ReportJob", r))?;
        Ok(Response::new(pb::JobAck {}))
    }

    async fn report(
        &self,
        req: Request<pb::HealthReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let node = self.authenticate(&req, "Report")?.record;
        rules::record_report(&self.0, &node.name, req.into_inner())
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ReportAck {}))
    }
}
