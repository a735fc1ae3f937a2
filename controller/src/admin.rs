//! Operator commands reach a running controller through `.pangaea/ctl.sock`, a unix socket
//! only the owner of `.pangaea/` can open, because the running controller holds the state
//! store's lock. When no controller runs, the same commands open the store directly.
//! Both paths go through [`Backend`], so each command is written once.

use crate::controller::{Controller, ControllerError, NodeView};
use crate::records::TokenRecord;
use crate::state_dir::StateDir;
use crate::tokens::NewToken;
use pangaea_proto as pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// A token record as the admin API lists it: without the secret's hash, and with an empty
/// `node_name` when the token is not bound to a node.
pub fn token_info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        expires_at: t.expires_at,
        uses_left: t.uses_left,
        node_name: t.node.clone().unwrap_or_default(),
        revoked: t.revoked,
        description: t.description.clone(),
    }
}

fn status(e: ControllerError) -> Status {
    match e {
        ControllerError::NoSuchNode(_) => Status::not_found(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

struct AdminService(Arc<Controller>);

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = req.into_inner();
        if r.ttl_seconds > crate::tokens::MAX_TTL.as_secs() {
            return Err(Status::invalid_argument(format!(
                "a token lifetime of {} s is longer than the {} days allowed",
                r.ttl_seconds,
                crate::tokens::MAX_TTL.as_secs() / 86400
            )));
        }
        let spec = NewToken {
            ttl: if r.ttl_seconds == 0 {
                crate::tokens::DEFAULT_TTL
            } else {
                Duration::from_secs(r.ttl_seconds)
            },
            uses: r.uses.max(1),
            node: Some(r.node_name).filter(|n| !n.is_empty()),
            description: r.description,
        };
        let (token, rec) = self.0.create_token(spec).await.map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.expose(),
            expires_at: rec.expires_at,
        }))
    }
    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Ok(Response::new(pb::ListTokensResponse {
            tokens: self
                .0
                .tokens()
                .map_err(status)?
                .iter()
                .map(token_info)
                .collect(),
        }))
    }
    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = req.into_inner().id;
        if !self.0.revoke_token(id.clone()).await.map_err(status)? {
            return Err(Status::not_found(format!("no token with id {id:?}")));
        }
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }
    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        Ok(Response::new(pb::ListNodesResponse {
            nodes: self
                .0
                .nodes()
                .map_err(status)?
                .iter()
                .map(NodeView::info)
                .collect(),
        }))
    }
    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        crate::rules::remove(&self.0, &req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn set_drained(
        &self,
        req: Request<pb::SetDrainedRequest>,
    ) -> Result<Response<pb::SetDrainedResponse>, Status> {
        let req = req.into_inner();
        let revision = crate::rules::set_drained(&self.0, &req.name, req.drained)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SetDrainedResponse {
            revision: revision.unwrap_or(0),
        }))
    }

    async fn mark_starting(
        &self,
        req: Request<pb::MarkStartingRequest>,
    ) -> Result<Response<pb::MarkStartingResponse>, Status> {
        crate::rules::mark_starting(&self.0, &req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MarkStartingResponse {}))
    }

    async fn reload(
        &self,
        _req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let changed = crate::rules::reload(&self.0).await.map_err(status)?;
        Ok(Response::new(pb::ReloadResponse { changed }))
    }

    async fn copy_store(
        &self,
        req: Request<pb::CopyStoreRequest>,
    ) -> Result<Response<pb::CopyStoreResponse>, Status> {
        let dest = PathBuf::from(req.into_inner().dest);
        if !dest.is_absolute() {
            return Err(Status::invalid_argument("the copy's path must be absolute"));
        }
        let c = self.0.clone();
        tokio::task::spawn_blocking(move || c.store.copy_to(&dest))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::CopyStoreResponse {}))
    }

    type LoadImageStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::LoadImageEvent, Status>> + Send>,
    >;

    async fn load_image(
        &self,
        req: Request<pb::LoadImageRequest>,
    ) -> Result<Response<Self::LoadImageStream>, Status> {
        use crate::image::LoadError;
        use tokio_stream::StreamExt;
        let rx = crate::image::load(&self.0, req.into_inner()).map_err(|e| match e {
            LoadError::NotInMirror(_) | LoadError::NoSuchNode { .. } => {
                Status::not_found(e.to_string())
            }
            LoadError::Controller(_) => Status::internal(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        })?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok),
        )))
    }

    type ReadJournalStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::JournalOutput, Status>> + Send>,
    >;

    async fn read_journal(
        &self,
        req: Request<pb::ReadJournalRequest>,
    ) -> Result<Response<Self::ReadJournalStream>, Status> {
        use crate::journal::ReadError;
        let rx = crate::journal::read(&self.0, req.into_inner()).map_err(|e| match e {
            ReadError::NoSuchNode { .. } => Status::not_found(e.to_string()),
            ReadError::NotConnected(_) => Status::unavailable(e.to_string()),
            ReadError::Controller(_) => Status::internal(e.to_string()),
        })?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type RestoreEtcdStream = Self::LoadImageStream;

    async fn restore_etcd(
        &self,
        req: Request<pb::RestoreEtcdRequest>,
    ) -> Result<Response<Self::RestoreEtcdStream>, Status> {
        use tokio_stream::StreamExt;
        let req = req.into_inner();
        let restore = req
            .restore
            .ok_or_else(|| Status::invalid_argument("no restore given"))?;
        let digest = pangaea_artifact::Digest::parse(&restore.digest)
            .map_err(|e| Status::invalid_argument(format!("digest: {e}")))?;
        if !self.0.mirror.blob_path(&digest).is_file() {
            return Err(Status::not_found(format!(
                "{digest} is not in the controller's mirror"
            )));
        }
        let live = self
            .0
            .node(&req.node)
            .map_err(status)?
            .is_some_and(|n| !n.removed);
        if !live {
            return Err(Status::not_found(format!("no node named {:?}", req.node)));
        }
        let timeout = Duration::from_secs(req.timeout_seconds.max(1));
        let job = pb::Job {
            id: hex::encode(rand::random::<[u8; 8]>()),
            timeout_seconds: timeout.as_secs(),
            kind: Some(pb::job::Kind::EtcdRestore(restore)),
        };
        tracing::info!(job = %job.id, node = %req.node, "etcd restore");
        let rx = crate::image::watch(&self.0, job, std::slice::from_ref(&req.node), timeout);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok),
        )))
    }
}

/// Serves the admin API on `<state_dir>/ctl.sock` until `shutdown`.
pub async fn serve(
    controller: Arc<Controller>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    let path = controller.config().state_dir.socket();
    let _ = std::fs::remove_file(&path);
    // Created owner-only (umask 0177 around bind), not chmod'ed after: no moment exists in
    // which another user could connect. The umask is the process's, so it is restored at
    // once; the socket sits in the 0700 state directory besides.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(&path);
    nix::sys::stat::umask(old);
    let listener =
        bound.map_err(|e| ControllerError::Serve(format!("bind {}: {e}", path.display())))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(pb::admin_server::AdminServer::new(AdminService(controller)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ControllerError::Serve(e.to_string()));
    let _ = std::fs::remove_file(&path);
    result
}

/// Where operator commands are carried out.
pub enum Backend {
    /// A running `pangaea-ctl serve`, through its socket.
    Daemon(pb::admin_client::AdminClient<tonic::transport::Channel>),
    /// The state store opened by this process.
    Local(Arc<Controller>),
}

/// Why an operator command failed, on either backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The local controller failed (or could not be opened).
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// The running controller answered with an error, or could not be reached; the
    /// message only (the gRPC code is dropped).
    #[error("{0}")]
    Status(String),
    /// The operation needs the running controller (the agents are connected to it), and
    /// none runs: `need` says what could not be done, `start` the command that starts it.
    #[error("the controller is not running, so {need}: start it with `pangaea-ctl {start}`")]
    NotRunning {
        /// What could not be done without it.
        need: &'static str,
        /// `up` or `start`.
        start: &'static str,
    },
}

impl From<Status> for BackendError {
    fn from(s: Status) -> Self {
        BackendError::Status(s.message().to_owned())
    }
}

impl Backend {
    /// Connects to the running controller of `state_dir`, or opens the state directly.
    pub async fn connect(state_dir: &StateDir) -> Result<Backend, BackendError> {
        let path: PathBuf = state_dir.socket();
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            let p = path.clone();
            let channel = tonic::transport::Endpoint::from_static("http://ctl.sock")
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = p.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| BackendError::Status(format!("connect {}: {e}", path.display())))?;
            return Ok(Backend::Daemon(pb::admin_client::AdminClient::new(channel)));
        }
        Ok(Backend::Local(Controller::open(
            crate::ControllerConfig::new(state_dir.path()),
            None,
        )?))
    }

    /// Creates a bootstrap token; the response holds the token, secret included.
    pub async fn create_token(
        &mut self,
        req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, BackendError> {
        match self {
            Backend::Daemon(c) => Ok(c.create_token(req).await?.into_inner()),
            Backend::Local(ctl) => Ok(AdminService(ctl.clone()).create_token_local(req).await?),
        }
    }

    /// Lists every token (metadata only).
    pub async fn list_tokens(&mut self) -> Result<Vec<pb::TokenInfo>, BackendError> {
        match self {
            Backend::Daemon(c) => Ok(c
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens),
            Backend::Local(ctl) => Ok(ctl.tokens()?.iter().map(token_info).collect()),
        }
    }

    /// Revokes the token `id`; an error when there is no such token.
    pub async fn revoke_token(&mut self, id: String) -> Result<(), BackendError> {
        match self {
            Backend::Daemon(c) => Ok(c
                .revoke_token(pb::RevokeTokenRequest { id })
                .await
                .map(drop)?),
            Backend::Local(ctl) => match ctl.revoke_token(id.clone()).await? {
                true => Ok(()),
                false => Err(BackendError::Status(format!("no token with id {id:?}"))),
            },
        }
    }

    /// Lists every node, removed ones included.
    pub async fn list_nodes(&mut self) -> Result<Vec<pb::NodeInfo>, BackendError> {
        match self {
            Backend::Daemon(c) => Ok(c
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes),
            Backend::Local(ctl) => Ok(ctl.nodes()?.iter().map(NodeView::info).collect()),
        }
    }

    /// Loads an image archive from the mirror into the nodes' containerd
    /// ([`crate::image::load`]): each node's state, then every change until all have an
    /// outcome. Only a running controller can: it is what the agents are connected to.
    pub async fn load_image(
        &mut self,
        req: pb::LoadImageRequest,
    ) -> Result<tonic::Streaming<pb::LoadImageEvent>, BackendError> {
        match self {
            Backend::Daemon(c) => Ok(c.load_image(req).await?.into_inner()),
            Backend::Local(_) => Err(BackendError::NotRunning {
                need: "no node can receive the image",
                start: "up",
            }),
        }
    }

    /// Reads node `req.node`'s journal through its agent ([`crate::journal::read`]). Only
    /// a running controller can: it is what the agents are connected to.
    /// `Ok(Err(why))` when the agent cannot read it now (no controller runs, or the node's
    /// agent is not connected), so the caller may go another way.
    pub async fn read_journal(
        &mut self,
        req: pb::ReadJournalRequest,
    ) -> Result<Result<tonic::Streaming<pb::JournalOutput>, String>, BackendError> {
        match self {
            Backend::Daemon(c) => match c.read_journal(req).await {
                Ok(r) => Ok(Ok(r.into_inner())),
                Err(s) if s.code() == tonic::Code::Unavailable => Ok(Err(s.message().to_owned())),
                Err(s) => Err(s.into()),
            },
            Backend::Local(_) => Ok(Err("the controller is not running".into())),
        }
    }

    /// Restores node `req.node`'s etcd data from a data directory in the mirror (a job, as
    /// [`Backend::load_image`]). Only a running controller can.
    pub async fn restore_etcd(
        &mut self,
        req: pb::RestoreEtcdRequest,
    ) -> Result<tonic::Streaming<pb::LoadImageEvent>, BackendError> {
        match self {
            Backend::Daemon(c) => Ok(c.restore_etcd(req).await?.into_inner()),
            Backend::Local(_) => Err(BackendError::NotRunning {
                need: "no node can be restored",
                start: "start",
            }),
        }
    }

    /// Writes a consistent copy of the state store to the new file `dest` (absolute), by
    /// the running controller or from the store opened here.
    pub async fn copy_store(&mut self, dest: &std::path::Path) -> Result<(), BackendError> {
        match self {
            Backend::Daemon(c) => {
                c.copy_store(pb::CopyStoreRequest {
                    dest: dest.display().to_string(),
                })
                .await?;
                Ok(())
            }
            Backend::Local(ctl) => Ok(ctl.store.copy_to(dest).map_err(ControllerError::from)?),
        }
    }

    /// Makes the running controller read `pangaea.yaml` and the cluster state again and
    /// re-plan the nodes ([`crate::rules::reload`]); returns the nodes whose assignment
    /// changed. Without a running controller there is nothing to reload: it reads them when
    /// it starts.
    pub async fn reload(&mut self) -> Result<Vec<String>, BackendError> {
        match self {
            Backend::Daemon(c) => Ok(c.reload(pb::ReloadRequest {}).await?.into_inner().changed),
            Backend::Local(_) => Ok(vec![]),
        }
    }

    /// Records that node `name`'s machine is being started ([`crate::rules::mark_starting`]).
    pub async fn mark_starting(&mut self, name: String) -> Result<(), BackendError> {
        match self {
            Backend::Daemon(c) => {
                c.mark_starting(pb::MarkStartingRequest { name }).await?;
                Ok(())
            }
            Backend::Local(ctl) => Ok(crate::rules::mark_starting(ctl, &name).await?),
        }
    }

    /// Marks node `name` drained or not ([`crate::rules::set_drained`]): its new revision
    /// (`Some(None)`: unchanged), or `None` when the controller has no such node.
    pub async fn set_drained(
        &mut self,
        name: String,
        drained: bool,
    ) -> Result<Option<Option<u64>>, BackendError> {
        match self {
            Backend::Daemon(c) => {
                match c.set_drained(pb::SetDrainedRequest { name, drained }).await {
                    Ok(r) => Ok(Some(Some(r.into_inner().revision).filter(|r| *r > 0))),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) => Err(s.into()),
                }
            }
            Backend::Local(ctl) => match crate::rules::set_drained(ctl, &name, drained).await {
                Ok(r) => Ok(Some(r)),
                Err(ControllerError::NoSuchNode(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Removes node `name` ([`crate::rules::remove`]); `Ok(false)` when the controller has
    /// no such node (it never joined).
    pub async fn remove_node(&mut self, name: String) -> Result<bool, BackendError> {
        match self {
            Backend::Daemon(c) => match c.remove_node(pb::RemoveNodeRequest { name }).await {
                Ok(_) => Ok(true),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                Err(s) => Err(s.into()),
            },
            Backend::Local(ctl) => match crate::rules::remove(ctl, &name).await {
                Ok(()) => Ok(true),
                Err(ControllerError::NoSuchNode(_)) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }
}

impl AdminService {
    async fn create_token_local(
        &self,
        req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, Status> {
        use pb::admin_server::Admin;
        self.create_token(Request::new(req))
            .await
            .map(Response::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening #12: an overflowing or overlong token lifetime is refused, with or without
    /// a running daemon (both go through the admin service).
    #[tokio::test]
    async fn an_overlong_token_lifetime_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = Controller::open(crate::ControllerConfig::new(dir.path()), None).unwrap();
        let mut backend = Backend::Local(ctl);
        let ask = |ttl_seconds| pb::CreateTokenRequest {
            ttl_seconds,
            uses: 1,
            ..Default::default()
        };
        for ttl in [u64::MAX, i64::MAX as u64 + 1, 400 * 86400] {
            let err = backend.create_token(ask(ttl)).await.expect_err("refused");
            assert!(err.to_string().contains("365 days"), "{err}");
        }
        assert!(
            backend.list_tokens().await.unwrap().is_empty(),
            "nothing written"
        );
        let ok = backend.create_token(ask(3600)).await.unwrap();
        assert!(ok.expires_at > crate::records::now());
    }
}
