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

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Plan(#[from] assign::PlanError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("serve gRPC: {0}")]
    Serve(String),
    #[error("no node named {0:?}")]
    NoSuchNode(String),
}

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The cluster's `.pangaea/` directory.
    pub state_dir: StateDir,
    /// Names and addresses the agents dial; they go into the serving certificate.
    pub advertise: Vec<String>,
    pub node_cert_lifetime: Duration,
}

impl ControllerConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ControllerConfig {
            state_dir: StateDir::new(state_dir),
            advertise: vec![],
            node_cert_lifetime: profiles::NODE_LIFETIME,
        }
    }
}

/// A node as `status` shows it: its record, assignment revision and latest report.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub record: NodeRecord,
    pub assigned_revision: u64,
    pub last_report: Option<(i64, pb::HealthReport)>,
}

pub struct Controller {
    pub(crate) mirror: Mirror,
    pub(crate) store: Store,
    pub(crate) pki: Pki,
    pub(crate) hub: Hub,
    pub(crate) planner: Arc<dyn Planner>,
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
            planner,
            config,
        }))
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub(crate) fn mirror_dir(&self) -> std::path::PathBuf {
        self.config.state_dir.artifacts()
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    pub async fn create_token(
        &self,
        spec: NewToken,
    ) -> Result<(BootstrapToken, TokenRecord), ControllerError> {
        Ok(self
            .store
            .write(move |txn| tokens::create(txn, &spec))
            .await?)
    }

    pub async fn revoke_token(&self, id: String) -> Result<bool, ControllerError> {
        Ok(self
            .store
            .write(move |txn| tokens::revoke(txn, &id))
            .await?)
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, ControllerError> {
        Ok(tokens::list(&self.store)?)
    }

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

    /// Removes a node: its certificates stop working at once and its watch stream ends.
    pub async fn remove_node(&self, name: String) -> Result<(), ControllerError> {
        let n = name.clone();
        let found = self
            .store
            .write(move |txn| {
                let mut t = txn
                    .open_table(NODES)
                    .map_err(|e| store::db_err("nodes", &n, e))?;
                let Some(mut rec) = store::get::<NodeRecord>(&t, "nodes", &n)? else {
                    return Ok(false);
                };
                rec.removed = true;
                rec.active_serials.clear();
                store::put(&mut t, "nodes", &n, &rec)?;
                Ok(true)
            })
            .await?;
        if !found {
            return Err(ControllerError::NoSuchNode(name));
        }
        self.hub.close(&name).await;
        tracing::info!(node = %name, "node removed; its certificates are revoked");
        Ok(())
    }
}

/// Expiry of a PEM certificate, for reports and listings.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    CertInfo::from_pem(cert_pem).map(|c| c.not_after)
}
