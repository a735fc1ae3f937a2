//! The controller: PKI + state store + planner, and the operations on them that both the
//! gRPC services and the CLI use. It is constructed once per process (`pangaea-ctl serve`,
//! or in-process in tests) and shared behind an `Arc`.

use crate::assign::{self, BasePlanner, Hub, Planner};
use crate::certinfo::CertInfo;
use crate::mirror::Mirror;
use crate::pki::{CaKind, Pki, PkiError, profiles};
use crate::records::{NodeRecord, TokenRecord};
use crate::state_dir::StateDir;
use crate::store::{self, ASSIGNMENTS, NODES, REPORTS, Store, StoreError};
use crate::tokens::{self, NewToken};
use pangaea_core::token::BootstrapToken;
use pangaea_proto as pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What can go wrong in a controller operation (refusals of agents are not errors; see
/// [`crate::rules`]).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The PKI could not be loaded, created or used.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A node's assignment could not be computed.
    #[error(transparent)]
    Plan(#[from] assign::PlanError),
    /// The serving certificate or the rustls configuration could not be set up.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A gRPC server (agents' or admin) failed, or the admin socket could not be set up.
    #[error("serve gRPC: {0}")]
    Serve(String),
    /// The configuration could not be read again; the controller goes on with the one it
    /// had.
    #[error("reload: {0}")]
    Reload(String),
    /// An operator command named a node that is not registered.
    #[error("no node named {0:?}")]
    NoSuchNode(String),
}

/// How to run a controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The cluster's `.pangaea/` directory.
    pub state_dir: StateDir,
    /// Names and addresses the agents dial; they go into the serving certificate.
    pub advertise: Vec<String>,
    /// Lifetime of the agent certificates issued at join and renewal.
    pub node_cert_lifetime: Duration,
    /// What the agent-facing service takes on at once, and for how long.
    pub limits: crate::service::Limits,
    /// How long a node chosen for a job may take to connect before its part fails
    /// ([`crate::image::CONNECT_GRACE`]).
    pub job_connect_grace: Duration,
}

impl ControllerConfig {
    /// Defaults for the state in `state_dir`: no advertised names, the default node
    /// certificate lifetime.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ControllerConfig {
            state_dir: StateDir::new(state_dir),
            advertise: vec![],
            node_cert_lifetime: profiles::NODE_LIFETIME,
            limits: crate::service::Limits::default(),
            job_connect_grace: crate::image::CONNECT_GRACE,
        }
    }
}

/// A node as `status` shows it: its record, assignment revision and latest report.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The node's stored record.
    pub record: NodeRecord,
    /// Revision of its stored assignment; 0 when it has none.
    pub assigned_revision: u64,
    /// Its latest health report with the time it was received (unix seconds), if any.
    pub last_report: Option<(i64, pb::HealthReport)>,
}

impl NodeView {
    /// The node as the admin API lists it (and as [`crate::health::assess`] judges it);
    /// absent times and reports become 0 or `None`.
    pub fn info(&self) -> pb::NodeInfo {
        let v = self;
        pb::NodeInfo {
            name: v.record.name.to_string(),
            instance_id: v.record.instance_id.clone(),
            addresses: v.record.addresses.clone(),
            certificate_not_after: v.record.cert_not_after,
            assigned_revision: v.assigned_revision,
            last_report: v.last_report.as_ref().map(|(_, r)| r.clone()),
            last_report_at: v.last_report.as_ref().map_or(0, |(t, _)| *t),
            removed: v.record.removed,
            drained: v.record.drained,
            reports_since: v.record.reports_since.unwrap_or(0),
            joined_at: v.record.joined_at,
            first_applied_at: v.record.first_applied_at.unwrap_or(0),
            healthy_at: v.record.healthy_at.unwrap_or(0),
            roles: v
                .record
                .roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
        }
    }
}

/// One cluster's controller: the state store (whose lock it holds), the PKI, the artifact
/// mirror, the planner, the fan-out of assignments to connected agents and their one-shot
/// jobs.
pub struct Controller {
    pub(crate) mirror: Mirror,
    pub(crate) store: Store,
    pub(crate) pki: Pki,
    pub(crate) hub: Hub,
    pub(crate) jobs: crate::jobs::Jobs,
    pub(crate) planner: Arc<dyn Planner>,
    /// One slot per artifact download being served.
    pub(crate) downloads: Arc<tokio::sync::Semaphore>,
    /// Counts the reports stored: waiters on a node's health (the rotation loop) wake on
    /// each instead of polling.
    pub(crate) reports: tokio::sync::watch::Sender<u64>,
    pub(crate) config: ControllerConfig,
}

impl Controller {
    /// Opens the cluster state (taking its lock) and the PKI, creating them on first use.
    /// `planner` defaults to [`BasePlanner`].
    pub fn open(
        config: ControllerConfig,
        planner: Option<Arc<dyn Planner>>,
    ) -> Result<Arc<Controller>, ControllerError> {
        let store = Store::open(&config.state_dir)?;
        let pki = Pki::load_or_create(&config.state_dir.pki())?;
        let planner = planner.unwrap_or_else(|| {
            Arc::new(BasePlanner {
                controller_ca_pem: pki.ca(CaKind::Controller).cert_pem.clone(),
            })
        });
        Ok(Arc::new(Controller {
            mirror: Mirror::new(&config.state_dir.artifacts()),
            store,
            pki,
            hub: Hub::default(),
            jobs: crate::jobs::Jobs::default(),
            planner,
            downloads: Arc::new(tokio::sync::Semaphore::new(config.limits.max_downloads)),
            reports: tokio::sync::watch::Sender::new(0),
            config,
        }))
    }

    /// The artifact mirror in `.pangaea/artifacts/`.
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub(crate) fn mirror_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.artifacts()
    }

    /// The agents' one-shot jobs.
    pub fn jobs(&self) -> &crate::jobs::Jobs {
        &self.jobs
    }

    /// The cluster's PKI.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration the controller was opened with.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Creates a bootstrap token; returns once it is durably stored. The returned token
    /// carries the only copy of its secret.
    pub async fn create_token(
        &self,
        spec: NewToken,
    ) -> Result<(BootstrapToken, TokenRecord), ControllerError> {
        Ok(self
            .store
            .write(move |txn| tokens::create(txn, &spec))
            .await?)
    }

    /// Revokes a token by id; `false` when there is no such token.
    pub async fn revoke_token(&self, id: String) -> Result<bool, ControllerError> {
        Ok(self
            .store
            .write(move |txn| tokens::revoke(txn, &id))
            .await?)
    }

    /// Every token record.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, ControllerError> {
        Ok(tokens::list(&self.store)?)
    }

    /// The record of the node named `name`, removed or not.
    pub fn node(&self, name: &str) -> Result<Option<NodeRecord>, ControllerError> {
        Ok(self.store.read(|r| {
            store::get(
                &r.open_table(NODES)
                    .map_err(|e| store::db_err("nodes", name, e))?,
                "nodes",
                name,
            )
        })?)
    }

    /// The names of the nodes that are not removed: those a job can be given.
    pub fn live_node_names(&self) -> Result<Vec<String>, ControllerError> {
        Ok(self
            .nodes()?
            .into_iter()
            .filter(|n| !n.record.removed)
            .map(|n| n.record.name.to_string())
            .collect())
    }

    /// Every node (removed ones included) with its assignment revision and latest report,
    /// read from one snapshot.
    pub fn nodes(&self) -> Result<Vec<NodeView>, ControllerError> {
        Ok(self.store.read(|r| {
            let records: Vec<NodeRecord> = store::all(
                &r.open_table(NODES)
                    .map_err(|e| store::db_err("nodes", "*", e))?,
                "nodes",
            )?;
            let assignments = r
                .open_table(ASSIGNMENTS)
                .map_err(|e| store::db_err("assignments", "*", e))?;
            let reports = r
                .open_table(REPORTS)
                .map_err(|e| store::db_err("reports", "*", e))?;
            records
                .into_iter()
                .map(|record| {
                    let assigned_revision =
                        assign::load(&assignments, &record.name)?.map_or(0, |a| a.revision);
                    let last_report = match reports
                        .get(record.name.as_str())
                        .map_err(|e| store::db_err("reports", &record.name, e))?
                    {
                        Some(v) => Some(crate::records::decode_report(&record.name, v.value())?),
                        None => None,
                    };
                    Ok(NodeView {
                        record,
                        assigned_revision,
                        last_report,
                    })
                })
                .collect()
        })?)
    }
}

/// Expiry of a PEM certificate, for reports and listings.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    CertInfo::from_pem(cert_pem).map(|c| c.not_after)
}
