//! The agent's life: bring the node up from the last applied assignment, join (once — and
//! again only if its identity expired, with a recovery token), then keep a session with the
//! controller — watch the assignment, apply it, report health, renew the certificate, run
//! the controller's one-shot jobs ([`crate::jobs`]) — and reconnect with jittered backoff
//! whenever it breaks.

use crate::apply::{Applied, Applier, ApplyError};
use crate::artifact::{MIRROR_SCHEME, MirrorSource};
use crate::blocking;
use crate::command::{CommandRunner, Processes};
use crate::config::AgentConfig;
use crate::health::{AgentStatus, Reporter};
use crate::identity::{self, Identity, IdentityError};
use crate::jobs::Jobs;
use crate::service_manager::ServiceManager;
use pangaea_artifact::{Fetcher, Sources};
use pangaea_core::backoff::Backoff;
use pangaea_proto as pb;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// Why the agent stopped (everything else is retried).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The identity on disk is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

enum SessionEnd {
    Shutdown,
    Renew,
    Lost { connected: bool, why: String },
}

struct Agent {
    cfg: AgentConfig,
    applier: Arc<Applier>,
    units: Arc<dyn ServiceManager>,
    status: AgentStatus,
    reporter: Reporter,
    /// The newest assignment not yet applied: queued behind a running apply, or failed and
    /// retried at each report tick.
    pending: Option<pb::Assignment>,
    applying: Option<tokio::task::JoinHandle<(pb::Assignment, Result<Applied, ApplyError>)>>,
    /// Index into `cfg.controller`; moves to the next endpoint when one cannot be reached.
    endpoint: usize,
    /// The controller's artifact mirror; gets each new session's channel.
    mirror: MirrorSource,
    fetcher: Arc<Fetcher>,
    /// The controller's one-shot jobs (image loads).
    jobs: Jobs,
}

/// Downloads at once: enough to overlap latency, few enough for a small node's memory.
const MAX_CONCURRENT_DOWNLOADS: usize = 3;

/// Runs the agent until `shutdown` turns true (or its sender is dropped); jobs run their
/// programs as real processes.
pub async fn run(
    cfg: AgentConfig,
    units: Arc<dyn ServiceManager>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    run_with(cfg, units, Arc::new(Processes), shutdown).await
}

/// [`run`] with the programs of jobs (`ctr`) run through `commands`.
pub async fn run_with(
    cfg: AgentConfig,
    units: Arc<dyn ServiceManager>,
    commands: Arc<dyn CommandRunner>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mirror = MirrorSource::with_node_mirror(
        cfg.root
            .join(pangaea_artifact::NODE_MIRROR_DIR.trim_start_matches('/')),
    );
    let mut sources = Sources::standard();
    sources.register(MIRROR_SCHEME, Arc::new(mirror.clone()));
    let fetcher = Arc::new(Fetcher::new(sources, MAX_CONCURRENT_DOWNLOADS));
    let applier = Arc::new(Applier::new(
        &cfg.root,
        &cfg.state_dir,
        units.clone(),
        fetcher.clone(),
    ));
    let (job_reports, mut job_outcomes) = mpsc::unbounded_channel();
    let jobs = Jobs::new(
        &cfg.root,
        &cfg.state_dir.join("jobs"),
        fetcher.clone(),
        commands,
        mirror.clone(),
        job_reports,
    );
    let mut agent = Agent {
        cfg,
        applier,
        units,
        status: AgentStatus::default(),
        reporter: Reporter::default(),
        pending: None,
        applying: None,
        endpoint: 0,
        mirror,
        fetcher,
        jobs,
    };
    agent.boot_from_disk().await;

    let mut backoff = Backoff::default();
    loop {
        let Some(mut identity) = obtain_identity(&agent.cfg, &mut backoff, &mut shutdown).await?
        else {
            return Ok(());
        };
        agent.status.cert_not_after = identity.not_after;
        // Until the identity expires (the controller was away longer than its lifetime):
        // then it joins again, with the recovery token `up` delivers.
        while !identity.expired() {
            match agent
                .session(&identity, &mut shutdown, &mut job_outcomes)
                .await
            {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Renew => {
                    match identity::renew(&agent.cfg, agent.current_endpoint(), &identity).await {
                        Ok(id) => {
                            agent.status.cert_not_after = id.not_after;
                            identity = id;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "certificate renewal failed; retrying")
                        }
                    }
                }
                SessionEnd::Lost { connected, why } => {
                    if connected {
                        backoff.reset();
                    } else {
                        agent.endpoint += 1;
                    }
                    tracing::warn!(reason = %why, "lost the controller; reconnecting");
                }
            }
            if wait_or_shutdown(backoff.next_delay(), &mut shutdown).await {
                return Ok(());
            }
        }
        tracing::error!(
            node = %identity.node_name,
            "this node's certificate expired: joining again (a recovery token from `pangaea-ctl up` lets it)"
        );
    }
}

/// The node's identity: the one on disk while it is valid, else a new one from a join
/// (retried with backoff until it succeeds). `None` when shutdown was asked for.
async fn obtain_identity(
    cfg: &AgentConfig,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Identity>, AgentError> {
    loop {
        let state_dir = cfg.state_dir.clone();
        // An expired identity stays on disk until a new one replaces it.
        if let Some(id) = blocking::run(move || Identity::load(&state_dir)).await?
            && !id.expired()
        {
            return Ok(Some(id));
        }
        match identity::join(cfg).await {
            Ok(id) => {
                backoff.reset();
                return Ok(Some(id));
            }
            Err(e) => {
                if e.needs_operator() {
                    tracing::error!(error = %e, "cannot join");
                } else {
                    tracing::warn!(error = %e, "cannot join yet");
                }
                if wait_or_shutdown(backoff.next_delay(), shutdown).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Waits `d`; returns true when shutdown was requested meanwhile.
async fn wait_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}

impl Agent {
    fn current_endpoint(&self) -> &str {
        &self.cfg.controller[self.endpoint % self.cfg.controller.len()]
    }

    /// Brings the node's services up from the last applied assignment, before (and
    /// without) the controller: the cluster must not depend on the controller being up.
    async fn boot_from_disk(&mut self) {
        let applier = self.applier.clone();
        match blocking::run(move || applier.last_applied()).await {
            Ok(Some(a)) => {
                tracing::info!(
                    revision = a.revision,
                    "re-applying the last applied assignment from disk"
                );
                let result = self.applier.apply(&a, true).await;
                self.finish_apply(a, result);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "no usable last assignment on disk"),
        }
    }

    /// Records the outcome of applying `a`.
    fn finish_apply(&mut self, a: pb::Assignment, result: Result<Applied, ApplyError>) {
        match result {
            Ok(done) => {
                tracing::info!(revision = done.revision, changed = done.changed.len(), removed = done.removed.len(), started = ?done.started, restarted = ?done.restarted, "assignment applied");
                for e in &done.errors {
                    tracing::warn!(revision = done.revision, "{e}");
                }
                for s in &done.skipped {
                    tracing::warn!(revision = done.revision, "{s}");
                }
                self.status.applied_revision = a.revision;
                self.status.units = a.units.iter().map(|u| u.name.clone()).collect();
                self.status.errors = done.errors;
                self.status.skipped = done.skipped;
                if done.incomplete {
                    // Artifacts that failed are tried again at the next report tick.
                    self.pending.get_or_insert(a);
                }
            }
            Err(e) => {
                tracing::error!(revision = a.revision, error = %e, "assignment not applied; will retry");
                self.status.errors = vec![e.to_string()];
                // Retry it, unless a newer revision arrived meanwhile.
                self.pending.get_or_insert(a);
            }
        }
    }

    /// Asks for `a` to be applied as soon as the current apply (if any) is done.
    fn want(&mut self, a: pb::Assignment) {
        // A unit held back because its program is missing may start once it is installed,
        // so a revision with skipped units is applied again too.
        if a.revision != self.status.applied_revision
            || self.pending.is_some()
            || !self.status.errors.is_empty()
            || !self.status.skipped.is_empty()
        {
            self.pending = Some(a);
            self.start_next();
        }
    }

    /// Applies in the background, so that reports (with download progress) keep flowing
    /// while a large artifact downloads.
    fn start_next(&mut self) {
        if self.applying.is_some() {
            return;
        }
        if let Some(a) = self.pending.take() {
            let applier = self.applier.clone();
            self.applying = Some(tokio::spawn(async move {
                let result = applier.apply(&a, false).await;
                (a, result)
            }));
        }
    }

    async fn report(
        &mut self,
        client: &mut pb::node_service_client::NodeServiceClient<tonic::transport::Channel>,
    ) -> Result<(), tonic::Status> {
        let report = self
            .reporter
            .collect(&self.status, self.units.as_ref(), self.fetcher.progress())
            .await;
        client.report(report).await.map(drop)
    }

    async fn session(
        &mut self,
        identity: &Identity,
        shutdown: &mut watch::Receiver<bool>,
        job_reports: &mut mpsc::UnboundedReceiver<pb::JobReport>,
    ) -> SessionEnd {
        let endpoint = self.current_endpoint().to_owned();
        let channel = match identity.channel(&endpoint) {
            Ok(c) => c,
            Err(e) => {
                return SessionEnd::Lost {
                    connected: false,
                    why: e.to_string(),
                };
            }
        };
        self.mirror.set_channel(channel.clone());
        let mut client = pb::node_service_client::NodeServiceClient::new(channel)
            .max_decoding_message_size(pangaea_proto::MAX_MESSAGE_BYTES);
        let mut stream = match client
            .watch_assignment(pb::WatchRequest {
                node_name: identity.node_name.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => {
                return SessionEnd::Lost {
                    connected: false,
                    why: lost_reason(&s),
                };
            }
        };
        // The jobs stream; a controller that predates jobs has none, and the node does
        // without.
        let mut jobs = match client.watch_jobs(pb::WatchJobsRequest {}).await {
            Ok(s) => Some(s.into_inner()),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::warn!(
                    "the controller sends no jobs (an older version); image loads will not reach this node"
                );
                None
            }
            Err(s) => {
                return SessionEnd::Lost {
                    connected: true,
                    why: lost_reason(&s),
                };
            }
        };
        tracing::info!(node = %identity.node_name, controller = %endpoint, "connected to the controller");
        let renew_in = identity
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let renew = tokio::time::sleep(renew_in);
        tokio::pin!(renew);
        let mut ticker =
            tokio::time::interval(Duration::from_secs(self.cfg.report_interval_seconds.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return SessionEnd::Shutdown },
                _ = &mut renew => return SessionEnd::Renew,
                msg = stream.message() => match msg {
                    Ok(Some(a)) => self.want(a),
                    Ok(None) => return SessionEnd::Lost { connected: true, why: "the controller ended the assignment stream".into() },
                    Err(s) => return SessionEnd::Lost { connected: true, why: lost_reason(&s) },
                },
                set = async { jobs.as_mut().expect("guarded").message().await }, if jobs.is_some() => match set {
                    Ok(Some(set)) => {
                        for again in self.jobs.update(set) {
                            if let Err(s) = client.report_job(again).await {
                                return SessionEnd::Lost { connected: true, why: lost_reason(&s) };
                            }
                        }
                    }
                    Ok(None) => return SessionEnd::Lost { connected: true, why: "the controller ended the jobs stream".into() },
                    Err(s) => return SessionEnd::Lost { connected: true, why: lost_reason(&s) },
                },
                Some(r) = job_reports.recv() => {
                    self.jobs.note(&r);
                    match client.report_job(r).await {
                        // The job was cancelled or timed out meanwhile: nobody waits for it.
                        Err(s) if s.code() == tonic::Code::NotFound => {}
                        Err(s) => return SessionEnd::Lost { connected: true, why: lost_reason(&s) },
                        Ok(_) => {}
                    }
                }
                done = async { self.applying.as_mut().expect("guarded").await }, if self.applying.is_some() => {
                    self.applying = None;
                    let (a, result) = done.expect("apply task does not panic");
                    self.finish_apply(a, result);
                    self.start_next();
                    if let Err(s) = self.report(&mut client).await {
                        return SessionEnd::Lost { connected: true, why: lost_reason(&s) };
                    }
                }
                _ = ticker.tick() => {
                    self.start_next();
                    if let Err(s) = self.report(&mut client).await {
                        return SessionEnd::Lost { connected: true, why: lost_reason(&s) };
                    }
                }
            }
        }
    }
}

fn lost_reason(s: &tonic::Status) -> String {
    if matches!(
        s.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) {
        tracing::error!(code = ?s.code(), "the controller refuses this node's identity: {}", s.message());
    }
    format!("{:?}: {}", s.code(), s.message())
}
