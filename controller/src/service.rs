//! The gRPC services agents call: request decoding, peer identity and the mapping of the
//! cluster's answers to status codes. The rules themselves (who may join, which
//! certificate is still a node's, what a report records) are in [`crate::rules`]. Every
//! refusal is logged with the peer address and returned with a message that says what
//! was wrong; nothing is written on refusal.
//!
//! Anyone on the node network can reach this port, so what it takes on is bounded
//! ([`Limits`], hardening #6): connections and TLS handshakes at once, requests per
//! connection, the size of a request, the time a request may take, and the downloads
//! served at once, each of which holds at most one chunk of its file in memory.

use crate::assign;
use crate::controller::{Controller, ControllerError};
use crate::pki::CaKind;
use crate::rules::{self, Refusal};
use crate::store::{self, ASSIGNMENTS};
use pangaea_core::NodeName;
use pangaea_core::tls::{AcceptLimits, PeerInfo};
use pangaea_core::token::BootstrapToken;
use pangaea_proto as pb;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::StreamExt;
use tonic::transport::server::Router;
use tonic::{Code, Request, Response, Status};

/// Largest message the controller accepts from an agent (a join carries a CSR of a few
/// hundred bytes; a report a few KiB).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Requests (HTTP/2 streams) served at once on one agent connection.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 16;

/// Agent connections open at once: a fleet of 5,000 nodes (one connection each) with
/// room for as many again (reconnecting nodes whose old connection the controller has
/// not yet seen close, idle or hostile clients). Each costs a file descriptor.
pub const MAX_CONNECTIONS: usize = 10_240;

/// TLS handshakes at once: a handshake takes about a millisecond of CPU, so more than
/// this many at once only means clients that do not finish theirs (up to
/// [`HANDSHAKE_TIMEOUT`] each); 1,000 of those leave half the slots to real clients.
pub const MAX_HANDSHAKES: usize = 2048;

/// How long a client may take to finish its TLS handshake (waiting for a slot included).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take from its first byte to the handler's answer: a whole
/// unary call (join, renewal, report), and the opening of a stream (watch, download),
/// whose messages then flow for as long as the agent reads them.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Artifact downloads served at once, over all agents; more are answered
/// RESOURCE_EXHAUSTED and the agent retries with backoff, resuming where it stopped.
pub const MAX_DOWNLOADS: usize = 32;

/// What the agent-facing service takes on at once, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections and TLS handshakes at once.
    pub accept: AcceptLimits,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`MAX_DOWNLOADS`].
    pub max_downloads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            accept: AcceptLimits {
                max_connections: MAX_CONNECTIONS,
                max_handshakes: MAX_HANDSHAKES,
                handshake_timeout: HANDSHAKE_TIMEOUT,
            },
            request_timeout: REQUEST_TIMEOUT,
            max_downloads: MAX_DOWNLOADS,
        }
    }
}

/// Connections the kernel completes and queues for the controller to accept. The default
/// of Rust's and tokio's `bind` is 128: a fleet reconnecting at once, or a flood of
/// connections, overflows it, and each overflow costs a client a dropped SYN and a
/// retransmission one, three, seven seconds later. The kernel caps it at
/// `net.core.somaxconn` (4096 since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (for the agent port and the
/// agent-binary port).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// File descriptors the controller keeps for itself beyond connections and downloads: the
/// store, its log, the admin socket and its clients, files being planned or imported.
pub const RESERVED_FILE_DESCRIPTORS: usize = 256;

impl Limits {
    /// File descriptors the controller may need at once under these limits: one per agent
    /// connection and per download (its open file), the agent-binary endpoint's
    /// connections, and [`RESERVED_FILE_DESCRIPTORS`]. With the defaults, 11,552.
    pub fn file_descriptors(&self) -> u64 {
        (self.accept.max_connections
            + self.max_downloads
            + crate::agent_http::MAX_CONNECTIONS
            + RESERVED_FILE_DESCRIPTORS) as u64
    }

    /// These limits with the connection cap (and the handshake cap, if it is larger)
    /// lowered so that they fit in `nofile` file descriptors; at least 64 connections.
    pub fn fitted_to(mut self, nofile: u64) -> Limits {
        let others = self.file_descriptors() as usize - self.accept.max_connections;
        let room = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(others)
            .max(64);
        self.accept.max_connections = self.accept.max_connections.min(room);
        self.accept.max_handshakes = self.accept.max_handshakes.min(self.accept.max_connections);
        self
    }
}

/// The agent-facing services over one controller.
#[derive(Clone)]
pub struct Service(pub Arc<Controller>);

/// The gRPC router of the agent-facing services.
pub fn router(controller: Arc<Controller>) -> Router {
    let limits = controller.config().limits;
    let svc = Service(controller);
    tonic::transport::Server::builder()
        // One connection cannot take the controller for itself: an agent needs a watch,
        // a report and now and then a renewal or a download at once; more wait their turn
        // on that connection only (hardening #6).
        .concurrency_limit_per_connection(MAX_REQUESTS_PER_CONNECTION)
        .max_concurrent_streams(Some(MAX_REQUESTS_PER_CONNECTION as u32))
        // tonic's timeout bounds the future that yields the response head: for a unary
        // call that is reading the request, handling it and answering; for a server
        // stream it ends when the handler returns the stream, so watches and downloads
        // are not cut (tested in tests/tests/limits.rs).
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(
            pb::enrollment_server::EnrollmentServer::new(svc.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        // Its server streams are answered by `stream_body`, whose messages hold no memory
        // once sent; the rest by tonic's generated service.
        .add_service(crate::stream_body::NodeServiceRoutes::new(
            svc.clone(),
            pb::node_service_server::NodeServiceServer::new(svc)
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(pangaea_proto::MAX_MESSAGE_BYTES),
        ))
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
    let incoming =
        pangaea_core::tls::tls_incoming(listener, server_tls(c)?, c.config().limits.accept);
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

/// A node's current assignment, from the store.
fn load_assignment(c: &Controller, node: &str) -> Result<Option<pb::Assignment>, ControllerError> {
    Ok(c.store.read(|r| {
        assign::load(
            &r.open_table(ASSIGNMENTS)
                .map_err(|e| store::db_err("assignments", node, e))?,
            node,
        )
    })?)
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

type ChunkStream = ArtifactChunks;

/// Chunk size for artifacts served from the mirror. The next chunk is read only when the
/// connection has taken the previous one, so a download holds about two chunks (this one
/// and the one HTTP/2 buffers) however slowly its client reads.
const CHUNK_BYTES: usize = 64 * 1024;

/// An artifact's chunks from `offset` to the end of its mirror file, each read (on the
/// blocking pool) only when the response body asks for it: no task reads ahead and no
/// buffer waits for a slow client. Holds a download slot until dropped.
pub struct ArtifactChunks {
    file: Arc<std::fs::File>,
    path: Arc<PathBuf>,
    start: u64,
    offset: u64,
    total: u64,
    reading: Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>,
    done: bool,
    _slot: Option<OwnedSemaphorePermit>,
}

impl ArtifactChunks {
    fn new(
        file: std::fs::File,
        path: PathBuf,
        offset: u64,
        total: u64,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        ArtifactChunks {
            file: Arc::new(file),
            path: Arc::new(path),
            start: offset,
            offset,
            total,
            reading: None,
            done: false,
            _slot: slot,
        }
    }
}

/// Reads up to `buf.len()` bytes at `offset`, fewer only at the end of the file.
fn read_full_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl tokio_stream::Stream for ArtifactChunks {
    type Item = Result<pb::ArtifactChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let reading = this.reading.get_or_insert_with(|| {
            let (file, offset) = (this.file.clone(), this.offset);
            let want = this.total.saturating_sub(offset).min(CHUNK_BYTES as u64) as usize;
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = read_full_at(&file, &mut buf, offset)?;
                buf.truncate(n);
                Ok(buf)
            })
        });
        let read = ready!(Pin::new(reading).poll(cx));
        this.reading = None;
        let data = match read {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => {
                this.done = true;
                return Poll::Ready(Some(Err(internal(format!(
                    "read {}: {e}",
                    this.path.display()
                )))));
            }
            Err(e) => {
                this.done = true;
                return Poll::Ready(Some(Err(internal(format!(
                    "read {}: {e}",
                    this.path.display()
                )))));
            }
        };
        let n = data.len() as u64;
        // An empty first chunk still tells the agent the size when nothing is left.
        if n == 0 && this.offset > this.start {
            this.done = true;
            return Poll::Ready(None);
        }
        let chunk = pb::ArtifactChunk {
            data,
            total_size: this.total,
            offset: this.offset,
        };
        this.offset += n;
        this.done = n == 0;
        Poll::Ready(Some(Ok(chunk)))
    }
}

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
        let current = load_assignment(&self.0, &node.name).map_err(internal)?;
        let rx = self
            .0
            .hub
            .subscribe(&node.name, current.map_or(0, |a| a.revision))
            .await;
        // Check the caller again now that it is subscribed: a removal or replacement
        // committed since the first check closed the hub before this subscription existed,
        // and one committed from now on closes this subscription. Either way no stream of a
        // revoked certificate stays open.
        self.authenticate(&req, "WatchAssignment")?;
        // Each time the revision moves, the assignment is read from the store, sent, and
        // dropped: nothing of it stays in memory between changes.
        let (c, name) = (self.0.clone(), node.name);
        let mut sent = 0;
        let stream = tokio_stream::wrappers::WatchStream::new(rx).filter_map(move |revision| {
            if revision <= sent {
                return None;
            }
            match load_assignment(&c, &name) {
                Ok(Some(a)) if a.revision > sent => {
                    sent = a.revision;
                    Some(Ok(a))
                }
                Ok(_) => None,
                Err(e) => Some(Err(internal(e))),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type FetchArtifactStream = ChunkStream;

    async fn fetch_artifact(
        &self,
        req: Request<pb::FetchArtifactRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let node = self.authenticate(&req, "FetchArtifact")?.record;
        let (remote, _) = peer(&req);
        let r = req.into_inner();
        let digest = pangaea_artifact::Digest::parse(&r.digest)
            .map_err(|e| refuse(Code::InvalidArgument, &remote, "FetchArtifact", e))?;
        // Before the file is opened: a slot bounds open files and buffers alike.
        let slot = self.0.downloads.clone().try_acquire_owned().map_err(|_| {
            refuse(
                Code::ResourceExhausted,
                &remote,
                "FetchArtifact",
                format!(
                    "the controller is serving its maximum of {} downloads; try again later",
                    self.0.config().limits.max_downloads
                ),
            )
        })?;
        let path = self.0.mirror.blob_path(&digest);
        let file = tokio::fs::File::open(&path).await.map_err(|_| {
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
        tracing::debug!(node = %node.name, %digest, offset = r.offset, "serving artifact");
        Ok(Response::new(ArtifactChunks::new(
            file.into_std().await,
            path,
            r.offset,
            total,
            Some(slot),
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

    async fn send_job_output(
        &self,
        req: Request<tonic::Streaming<pb::JobOutput>>,
    ) -> Result<Response<pb::JobAck>, Status> {
        const WHAT: &str = "SendJobOutput";
        let node = self.authenticate(&req, WHAT)?.record;
        let (remote, _) = peer(&req);
        let mut stream = req.into_inner();
        // The first message names the job; every later one must name the same.
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(pb::JobAck {}));
        };
        let sink = self
            .0
            .jobs
            .output(&node.name, &first.id)
            .map_err(|r| refuse(Code::NotFound, &remote, WHAT, r))?;
        let id = first.id.clone();
        let mut next = Some(first);
        while let Some(chunk) = next {
            if chunk.id != id {
                return Err(refuse(
                    Code::InvalidArgument,
                    &remote,
                    WHAT,
                    format!("output of job {:?} in the stream of job {id:?}", chunk.id),
                ));
            }
            if sink.send(chunk.data).await.is_err() {
                // The reader went away (the operator's `logs` ended): the node stops.
                return Err(Status::cancelled(format!(
                    "nobody reads the output of job {id:?} any more"
                )));
            }
            next = stream.message().await?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening #6 (file descriptors): the default limits need 11,552 descriptors, and
    /// under a smaller limit the connection cap (and the handshake cap with it) shrinks to
    /// fit.
    #[test]
    fn limits_fit_the_file_descriptors() {
        let l = Limits::default();
        assert_eq!(l.file_descriptors(), 11_552);
        assert_eq!(l.fitted_to(1 << 20), l, "room enough: unchanged");
        let small = l.fitted_to(4096);
        assert_eq!(small.file_descriptors(), 4096);
        assert_eq!(small.accept.max_connections, 4096 - 1312);
        assert_eq!(small.accept.max_handshakes, MAX_HANDSHAKES);
        let tiny = l.fitted_to(1024);
        assert_eq!(tiny.accept.max_connections, 64);
        assert_eq!(tiny.accept.max_handshakes, 64);
    }

    /// Hardening #6 (listen backlog): a burst of connections that the controller has not
    /// accepted yet waits in the kernel's queue; none loses its SYN, which would delay it
    /// by a second or more (with tokio's default backlog of 128, most of these would).
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_listen_queue() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..600 {
            connects.spawn(async move {
                let connect = tokio::net::TcpStream::connect(addr);
                tokio::time::timeout(Duration::from_millis(900), connect).await
            });
        }
        let (mut held, mut late) = (Vec::new(), 0);
        while let Some(r) = connects.join_next().await {
            match r.unwrap() {
                Ok(s) => held.push(s.unwrap()),
                Err(_) => late += 1,
            }
        }
        assert_eq!(
            late, 0,
            "connects that took over 900 ms: their SYN was dropped"
        );
        drop(listener);
    }
}
