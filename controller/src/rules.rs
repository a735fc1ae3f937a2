//! The cluster's rules for what agents ask, apart from how they ask (gRPC lives in
//! [`crate::service`], which maps these outcomes to status codes): who may join and under
//! which name, which certificate is still a node's, renewal, and what a report records.
//!
//! Writes follow one pattern: decide and compute outside the store's writer (planning
//! renders templates and issues certificates: slow, and fallible), then commit in one
//! transaction that re-checks what must still hold (the token is still unspent, the name
//! still free), so a refused or failed request writes nothing and never stalls or breaks
//! the writer that every other request shares.

use crate::assign::{self, Plan};
use crate::certinfo::CertInfo;
use crate::controller::{Controller, ControllerError};
use crate::health;
use crate::pki::{CaKind, profiles};
use crate::records::{JoinAttempt, NodeRecord, TokenRecord, now, update_node};
use crate::store::{self, ASSIGNMENTS, NODES, REPORTS, StoreError};
use crate::tokens::{self, TokenRefused};
use pangaea_core::NodeName;
use pangaea_core::token::BootstrapToken;
use pangaea_proto as pb;
use redb::ReadableTable;
use sha2::Digest;

/// Why the cluster refused a request. Each says what was wrong and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The request itself is malformed (a bad CSR, bad facts).
    #[error("{0}")]
    Invalid(String),
    /// The bootstrap token does not admit this node.
    #[error(transparent)]
    Token(#[from] TokenRefused),
    /// Another instance holds the name.
    #[error(
        "node name {name:?} belongs to instance {holder:?}, not {asked:?}: remove it first (pangaea-ctl node remove {name}) or join with a token bound to it (pangaea-ctl token create --node {name})"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The instance that has it.
        holder: String,
        /// The instance that asked.
        asked: String,
    },
    /// The node's assignment cannot be computed (not in the configuration, a template or
    /// secret failed); the message names the node and the cause.
    #[error(transparent)]
    Plan(#[from] assign::PlanError),
    /// The caller has no valid node certificate.
    #[error("{0}")]
    Unauthenticated(String),
    /// The certificate is no longer this node's (removed, revoked, superseded).
    #[error("{0}")]
    Revoked(String),
}

impl Refusal {
    /// What the caller is told. The same as the log's text, except that an unknown token and
    /// a wrong secret read alike, so a caller cannot probe which token ids exist.
    pub fn public_message(&self) -> String {
        match self {
            Refusal::Token(TokenRefused::Unknown(id) | TokenRefused::WrongSecret(id)) => {
                format!(
                    "bootstrap token {id} is not valid: unknown, or a wrong secret (create one with `pangaea-ctl token create`)"
                )
            }
            other => other.to_string(),
        }
    }
}

/// What an agent sends to join.
#[derive(Debug, Clone)]
pub struct Join {
    /// The bootstrap token.
    pub token: BootstrapToken,
    /// The name it asks for.
    pub name: NodeName,
    /// Its instance ID (its identity: stable across reboots).
    pub instance_id: String,
    /// Its hostname.
    pub hostname: String,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// The boot it joins from.
    pub boot_id: String,
    /// Its certificate signing request (its key never leaves the node).
    pub csr_der: Vec<u8>,
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The node's certificate (controller CA).
    pub certificate_pem: String,
    /// The serial of that certificate (hex).
    pub serial_hex: String,
    /// The assignment, when it is new or changed (to publish).
    pub assignment: Option<pb::Assignment>,
    /// The join replaced a live record of that name (another instance, or the same one
    /// joining afresh): the old incarnation's watch streams must end.
    pub replaced: bool,
}

/// Admits a node: checks the token and the name, issues its certificate, plans its
/// assignment, then commits the node, the spent token and the assignment together.
pub async fn join(c: &Controller, req: Join) -> Result<Result<Joined, Refusal>, ControllerError> {
    let name = req.name.to_string();
    let attempt = JoinAttempt {
        csr_sha256: hex::encode(sha2::Sha256::digest(&req.csr_der)),
        instance_id: req.instance_id.clone(),
    };
    // 1. Check without writing: a refusal costs no signature and no planning.
    let precheck = {
        let (token, name, attempt) = (req.token.clone(), name.clone(), attempt.clone());
        c.store.read(move |r| {
            let tokens = r
                .open_table(crate::store::TOKENS)
                .map_err(|e| store::db_err("tokens", "*", e))?;
            let nodes = r
                .open_table(NODES)
                .map_err(|e| store::db_err("nodes", &name, e))?;
            admission(&tokens, &nodes, &token, &name, &attempt)
        })?
    };
    let predecessor = match precheck {
        Ok((_, old)) => old,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // Another instance takes the name (a replacement): its node certificates are issued
    // afresh, never handed down from the predecessor (hardening #3).
    if predecessor
        .as_ref()
        .is_some_and(|old| old.instance_id != req.instance_id)
    {
        crate::revocation::revoke_node(&c.pki, &c.config.state_dir, &name)?;
    }
    // The same machine joining again (its identity lost) stays drained; a new one does not.
    let drained = predecessor
        .as_ref()
        .is_some_and(|old| old.drained && !old.removed && old.instance_id == req.instance_id);
    // 2. Sign and plan, outside the writer.
    let issued = match c.pki.sign_csr(
        CaKind::Controller,
        &req.csr_der,
        &profiles::node_identity(&name, c.config.node_cert_lifetime),
    ) {
        Ok(i) => i,
        Err(e) => return Ok(Err(Refusal::Invalid(e.to_string()))),
    };
    let record = NodeRecord {
        name: req.name.clone(),
        instance_id: req.instance_id,
        hostname: req.hostname,
        addresses: req.addresses,
        boot_id: req.boot_id,
        roles: c.planner.roles(&req.name),
        joined_at: now(),
        active_serials: vec![issued.serial_hex.clone()],
        cert_not_after: issued.not_after,
        removed: false,
        drained,
        // The stored report of an earlier incarnation is not this one's.
        reports_since: Some(now()),
        first_applied_at: None,
        healthy_at: None,
    };
    let plan = match plan(c, &record).await? {
        Ok(p) => p,
        Err(e) => return Ok(Err(Refusal::Plan(e))),
    };
    // 3. Commit, re-checking what another request could have changed meanwhile.
    let token = req.token;
    let committed = c
        .store
        .write(move |txn| {
            let t = txn
                .open_table(crate::store::TOKENS)
                .map_err(|e| store::db_err("tokens", "*", e))?;
            let mut nodes = txn
                .open_table(NODES)
                .map_err(|e| store::db_err("nodes", &record.name, e))?;
            let (token_rec, old) = match admission(&t, &nodes, &token, &record.name, &attempt)? {
                Ok(admitted) => admitted,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let replaced = old.is_some_and(|o| !o.removed);
            drop(t);
            tokens::spend(txn, token_rec, attempt)?;
            store::put(&mut nodes, "nodes", &record.name, &record)?;
            drop(nodes);
            Ok(Ok((assign::store_plan(txn, &record.name, plan)?, replaced)))
        })
        .await?;
    Ok(committed.map(|(assignment, replaced)| Joined {
        certificate_pem: issued.cert_pem,
        serial_hex: issued.serial_hex,
        assignment,
        replaced,
    }))
}

/// Whether `token` admits `instance` as node `name`: the token is valid for the name, and
/// the name is free, removed, or the token was bound to it by the operator (a re-join or a
/// replacement). Checked before signing and again in the commit.
fn admission(
    tokens: &impl ReadableTable<&'static str, &'static [u8]>,
    nodes: &impl ReadableTable<&'static str, &'static [u8]>,
    token: &BootstrapToken,
    name: &str,
    attempt: &JoinAttempt,
) -> Result<Result<(TokenRecord, Option<NodeRecord>), Refusal>, StoreError> {
    let instance = attempt.instance_id.as_str();
    let token_rec = match tokens::check(tokens, token, name, attempt)? {
        Ok(rec) => rec,
        Err(refused) => return Ok(Err(Refusal::Token(refused))),
    };
    let old = store::get::<NodeRecord>(nodes, "nodes", name)?;
    Ok(match old {
        // An instance ID is not secret (a provider's API, a node's metadata show it), so it
        // is never proof by itself: a live node's name is taken over only with a token the
        // operator bound to that name (hardening #5).
        // The same join sent again after its reply was lost may take back the record it
        // made (hardening #10).
        Some(old)
            if !(old.removed
                || token_rec.node.as_deref() == Some(name)
                || (token_rec.spent_by.as_ref() == Some(attempt)
                    && old.instance_id == instance)) =>
        {
            Err(Refusal::NameTaken {
                name: name.to_owned(),
                holder: old.instance_id,
                asked: instance.to_owned(),
            })
        }
        old => Ok((token_rec, old)),
    })
}

/// A node's plan, computed on the blocking pool (rendering and issuing do file I/O), with
/// artifacts pointed at the mirror. A panicking planner is an error, not a dead task.
pub async fn plan(
    c: &Controller,
    record: &NodeRecord,
) -> Result<Result<Plan, assign::PlanError>, ControllerError> {
    let (planner, mirror_dir, rec) = (c.planner.clone(), c.mirror_dir(), record.clone());
    let planned = tokio::task::spawn_blocking(move || {
        planner.plan(&rec).map(|mut p| {
            crate::mirror::localize(&mirror_dir, &mut p);
            if rec.drained {
                crate::drain::hold_back(&mut p);
            }
            p
        })
    })
    .await;
    match planned {
        Ok(p) => Ok(p),
        Err(e) => Ok(Err(assign::PlanError {
            node: record.name.to_string(),
            message: format!("the planner failed: {e}"),
        })),
    }
}

/// A node calling with one of its certificates.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The node.
    pub record: NodeRecord,
    /// The serial (hex) of the certificate it presented.
    pub serial: String,
}

/// The node a client certificate belongs to: registered, not removed, and the certificate's
/// serial one the controller issued to this incarnation of the node.
pub fn authenticate(
    c: &Controller,
    cert_der: Option<&[u8]>,
) -> Result<Result<Caller, Refusal>, ControllerError> {
    let Some(der) = cert_der else {
        return Ok(Err(Refusal::Unauthenticated(
            "this call needs the node's client certificate (mutual TLS); join with a bootstrap token first".into(),
        )));
    };
    let Some(cert) = CertInfo::from_der(der) else {
        return Ok(Err(Refusal::Unauthenticated(
            "unreadable client certificate".into(),
        )));
    };
    let name = cert.common_name().unwrap_or_default().to_owned();
    Ok(match c.node(&name)? {
        None => Err(Refusal::Unauthenticated(format!(
            "no node {name:?} is registered"
        ))),
        Some(r) if r.removed => Err(Refusal::Revoked(format!(
            "node {name:?} was removed; its certificates are revoked"
        ))),
        Some(r) if !r.active_serials.contains(&cert.serial_hex) => Err(Refusal::Revoked(format!(
            "certificate {} of node {name:?} is revoked or superseded",
            cert.serial_hex
        ))),
        Some(r) => Ok(Caller {
            record: r,
            serial: cert.serial_hex,
        }),
    })
}

/// Issues a renewed certificate for the caller from `csr_der`. The certificate the caller
/// presented stays valid beside the new one until the agent uses the new one: if the reply
/// is lost, the agent renews again with the certificate it still has, and is not locked out
/// however many replies are lost (hardening #10).
pub async fn renew(
    c: &Controller,
    caller: &Caller,
    csr_der: &[u8],
) -> Result<Result<String, Refusal>, ControllerError> {
    let issued = match c.pki.sign_csr(
        CaKind::Controller,
        csr_der,
        &profiles::node_identity(&caller.record.name, c.config.node_cert_lifetime),
    ) {
        Ok(i) => i,
        Err(e) => return Ok(Err(Refusal::Invalid(e.to_string()))),
    };
    let (n, serial, not_after) = (
        caller.record.name.clone(),
        issued.serial_hex.clone(),
        issued.not_after,
    );
    let presented = caller.serial.clone();
    let renewed = c
        .store
        .write(move |txn| {
            update_node(txn, &n, |rec| {
                (!rec.removed).then(|| {
                    // The presented certificate and the new one; earlier renewals whose
                    // certificates the agent never used lapse.
                    rec.active_serials = vec![presented, serial];
                    rec.cert_not_after = not_after;
                })
            })
        })
        .await?
        .is_some();
    if !renewed {
        return Ok(Err(Refusal::Revoked(format!(
            "node {:?} was removed",
            caller.record.name
        ))));
    }
    tracing::info!(node = %caller.record.name, serial = %issued.serial_hex, "node certificate renewed");
    Ok(Ok(issued.cert_pem))
}

/// Stores a node's report and records the milestones of its boot timeline (first applied,
/// first healthy: [`health::applied_and_settled`]) once.
pub async fn record_report(
    c: &Controller,
    node: &str,
    report: pb::HealthReport,
) -> Result<(), ControllerError> {
    let now = now();
    let value = crate::records::encode_report(now, &report);
    let n = node.to_owned();
    c.store
        .write(move |txn| {
            let mut t = txn
                .open_table(REPORTS)
                .map_err(|e| store::db_err("reports", &n, e))?;
            t.insert(n.as_str(), value.as_slice())
                .map_err(|e| store::db_err("reports", &n, e))?;
            drop(t);
            let assigned = assign::load(
                &txn.open_table(ASSIGNMENTS)
                    .map_err(|e| store::db_err("assignments", &n, e))?,
                &n,
            )?
            .map_or(0, |a| a.revision);
            update_node(txn, &n, |rec| {
                let before = (rec.first_applied_at, rec.healthy_at);
                if assigned > 0 && report.applied_revision == assigned {
                    rec.first_applied_at.get_or_insert(now);
                }
                if health::applied_and_settled(&report, assigned) {
                    rec.healthy_at.get_or_insert(now);
                }
                (before != (rec.first_applied_at, rec.healthy_at)).then_some(())
            })?;
            Ok::<_, StoreError>(())
        })
        .await?;
    c.reports.send_modify(|n| *n += 1);
    Ok(())
}

/// How often the controller daemon re-plans every node (see [`rotate`]).
pub const ROTATION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The pace of the rotation loop ([`rotate`]).
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// How often every node is re-planned.
    pub every: std::time::Duration,
    /// How long a round waits for a node that got new certificates to be healthy again
    /// before it gives up on the round, leaving the nodes after it for the next round.
    pub settle_timeout: std::time::Duration,
}

impl Default for Rotation {
    /// Hourly rounds; ten minutes for a node to come back.
    fn default() -> Rotation {
        Rotation {
            every: ROTATION_INTERVAL,
            settle_timeout: std::time::Duration::from_secs(600),
        }
    }
}

/// Re-plans every node, one at a time, every `pace.every`, until `shutdown`: certificates with
/// less than a third of their life left are issued again on the way, and each node gets
/// them through its watch stream and restarts only the units that use them. A node whose
/// plan changed must be healthy again ([`crate::health::assess`]) before the next one is
/// touched, so a rotation never restarts the etcd members or API servers of two nodes at
/// once. When one does not recover within `pace.settle_timeout`, the round stops there;
/// the next round finds that node's plan unchanged and goes on with the others, so a dead
/// node delays the others' rotation by one round, never forever. A node whose plan fails is
/// logged and retried on the next round.
pub async fn rotate(
    c: std::sync::Arc<Controller>,
    pace: Rotation,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(pace.every) => {}
        }
        let round = async {
            let nodes = match c.nodes() {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "rotation: cannot list the nodes");
                    return;
                }
            };
            for n in nodes.iter().filter(|n| !n.record.removed) {
                let name = &n.record.name;
                match replan(&c, name).await {
                    Ok(Some(revision)) => {
                        if !settled(&c, name, pace.settle_timeout).await {
                            tracing::warn!(
                                node = %name,
                                revision,
                                "rotation: node not healthy after its new certificates; \
                                 the other nodes wait for the next round"
                            );
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(node = %name, error = %e, "rotation: replan failed"),
                }
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = round => {}
        }
    }
}

/// Waits until node `name` is healthy, at most `timeout`, looking again at each report
/// the controller stores.
async fn settled(c: &Controller, name: &str, timeout: std::time::Duration) -> bool {
    let mut reports = c.reports.subscribe();
    let healthy = || {
        c.nodes().is_ok_and(|nodes| {
            nodes.iter().any(|n| {
                n.record.name == name && crate::health::assess(Some(&n.info()), now()).is_healthy()
            })
        })
    };
    tokio::time::timeout(timeout, async {
        while !healthy() {
            if reports.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

/// Recomputes a node's plan and publishes it if it changed. Returns the new revision, or
/// `None` when nothing changed.
pub async fn replan(c: &Controller, name: &str) -> Result<Option<u64>, ControllerError> {
    let record = c
        .node(name)?
        .filter(|r| !r.removed)
        .ok_or_else(|| ControllerError::NoSuchNode(name.to_owned()))?;
    let plan = plan(c, &record).await??;
    let n = name.to_owned();
    let changed = c
        .store
        .write(move |txn| assign::store_plan(txn, &n, plan))
        .await?;
    Ok(match changed {
        Some(a) => {
            let rev = a.revision;
            c.hub.publish(a).await;
            Some(rev)
        }
        None => None,
    })
}

/// Reloads the planner's sources ([`crate::assign::Planner::reload`]) and re-plans every
/// node that is not removed; returns the nodes whose assignment changed.
pub async fn reload(c: &Controller) -> Result<Vec<String>, ControllerError> {
    let planner = c.planner.clone();
    tokio::task::spawn_blocking(move || planner.reload())
        .await
        .map_err(|e| ControllerError::Reload(format!("the planner failed: {e}")))?
        .map_err(ControllerError::Reload)?;
    let mut changed = Vec::new();
    for n in c.nodes()?.iter().filter(|n| !n.record.removed) {
        match replan(c, &n.record.name).await {
            Ok(Some(_)) => changed.push(n.record.name.to_string()),
            Ok(None) => {}
            Err(e) => tracing::warn!(node = %n.record.name, error = %e, "reload: replan failed"),
        }
    }
    tracing::info!(?changed, "reloaded the configuration");
    Ok(changed)
}

/// Marks node `name` drained or not ([`crate::drain::hold_back`]) and re-plans it; returns
/// its new revision (`None`: the plan did not change).
pub async fn set_drained(
    c: &Controller,
    name: &str,
    drained: bool,
) -> Result<Option<u64>, ControllerError> {
    let n = name.to_owned();
    let found = c
        .store
        .write(move |txn| {
            crate::records::update_node(txn, &n, |rec| {
                (!rec.removed).then(|| rec.drained = drained)
            })
        })
        .await?
        .is_some();
    if !found {
        return Err(ControllerError::NoSuchNode(name.to_owned()));
    }
    tracing::info!(node = %name, drained, "node drained state set");
    replan(c, name).await
}

/// Records that node `name`'s machine is being started ([`NodeRecord::reports_since`]);
/// a node the controller does not know is left alone.
pub async fn mark_starting(c: &Controller, name: &str) -> Result<(), ControllerError> {
    let n = name.to_owned();
    c.store
        .write(move |txn| {
            crate::records::update_node(txn, &n, |rec| {
                rec.reports_since = Some(now());
                Some(())
            })
        })
        .await?;
    Ok(())
}

/// Removes node `name`: its agent certificate is refused from now on and its watch stream
/// ends; every cluster certificate issued for it is revoked and the remaining nodes are
/// re-planned at once, so the etcd members get the new revocation list (and refuse the
/// removed node's etcd certificates) within seconds.
pub async fn remove(c: &Controller, name: &str) -> Result<(), ControllerError> {
    let n = name.to_owned();
    let found = c
        .store
        .write(move |txn| {
            crate::records::update_node(txn, &n, |rec| {
                rec.removed = true;
                rec.active_serials.clear();
                Some(())
            })
        })
        .await?
        .is_some();
    if !found {
        return Err(ControllerError::NoSuchNode(name.to_owned()));
    }
    c.hub.close(name).await;
    c.jobs.close(name, "the node was removed");
    let revoked = crate::revocation::revoke_node(&c.pki, &c.config.state_dir, name)?;
    tracing::info!(node = %name, revoked, "node removed; its certificates are revoked");
    for other in c.nodes()?.iter().filter(|n| !n.record.removed) {
        if let Err(e) = replan(c, &other.record.name).await {
            tracing::warn!(node = %other.record.name, error = %e, "revocation: replan failed");
        }
    }
    Ok(())
}
