//! `pangaea-ctl up`: bring the cluster up, idempotently. Each step checks before it acts:
//! the provider's image and network, the artifact mirror, the controller daemon, then the
//! reconcile loop over the nodes ([`crate::reconcile`]), and the admin kubeconfig.

use super::{Ctx, print_warnings, step};
use crate::admin::Backend;
use crate::compile::Compilation;
use crate::mirror::Mirror;
use crate::reconcile::{Bootstrap, Reconciler, WantedNode};
use crate::registry::{Record, Registry};
use crate::state_dir::{AGENT_HTTP_PORT, GRPC_PORT};
use anyhow::Context;
use pangaea_compiler::artifact_set::ArtifactSource;
use pangaea_compiler::provider::ProviderKind;
use pangaea_core::NodeName;
use std::time::{Duration, Instant};

/// `up` or `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Create what is missing, boot what is stopped.
    Up,
    /// Boot the nodes that exist; create nothing.
    Start,
}

/// Records `artifactSource: SOURCE` in the cluster's pangaea.yaml (`up --artifact-source`),
/// keeping everything else in the file as it is; nothing is written when it says so already.
pub fn record_artifact_source(ctx: &Ctx, source: &str) -> anyhow::Result<()> {
    let source = ArtifactSource::parse(source)
        .ok_or_else(|| anyhow::anyhow!("unknown artifact source {source:?}"))?;
    pangaea_compiler::config_edit::write_artifact_source(&ctx.config, source)?;
    step(&format!(
        "{}: artifactSource: {}",
        ctx.config.display(),
        source.as_str()
    ));
    Ok(())
}

/// Runs `up` (or `start`), waiting at most `timeout` for the nodes to become healthy.
pub async fn run(ctx: &Ctx, timeout: Duration, mode: Mode) -> anyhow::Result<()> {
    let started = Instant::now();
    let c = match mode {
        Mode::Up => checked_compilation(ctx).await?,
        Mode::Start => ctx.compilation()?,
    };
    print_warnings(&c.loaded);
    let provider = ctx.provider(&c)?;
    super::print_runtime_findings(provider.as_ref(), &c);
    for line in c.os_packages.iter().flat_map(|i| i.report()) {
        step(&line);
    }
    if mode == Mode::Up && c.loaded.config.provider.kind() == ProviderKind::Gce {
        // What the machines will cost, before anything is created on the cloud.
        let e = crate::cost::estimate(&c.loaded, &crate::cost::PriceTable::built_in())?;
        step("estimated cost of this cluster (`pangaea-ctl cost` prints it again):");
        crate::errln!("{}", super::cost::table_text(&e).trim_end());
    }
    provider.prepare(&step).await?;
    // The API's external address where the provider reserves one, recorded before the
    // controller compiles: every API server certificate names it.
    crate::api_address::save(&ctx.state, provider.api_address().await?)?;
    let endpoint = provider.controller_endpoint().await?;
    let mut phases = vec![("image and network", started.elapsed())];

    // Nodes behind the controller's reverse tunnels authorize its key at first boot.
    let tunnel = if endpoint.tunnel {
        let public = crate::tunnel::ensure_key(&ctx.state, &c.loaded.config.name)?;
        Some(pangaea_compiler::cloudinit::TunnelLogin {
            user: crate::tunnel::USER.to_owned(),
            authorized_key: crate::tunnel::authorized_key(&public),
        })
    } else {
        None
    };
    fill_mirror(ctx, &c).await?;
    crate::daemon::ensure(&ctx.state, &ctx.config, &endpoint, &step).await?;
    phases.push(("artifacts and controller", started.elapsed()));

    let mut backend = Backend::connect(&ctx.state).await?;
    let agent = crate::agent_http::default_binary();
    let agent_sha256 =
        pangaea_artifact::Digest::of_file(pangaea_artifact::DigestKind::Sha256, &agent)
            .with_context(|| format!("read {}", agent.display()))?
            .hex();
    let bootstrap = Bootstrap {
        controller: format!("{}:{GRPC_PORT}", endpoint.advertise),
        ca_pin: c.pki.controller_pin().to_string(),
        agent_url: format!(
            "http://{}:{AGENT_HTTP_PORT}{}",
            endpoint.advertise,
            crate::agent_http::PATH
        ),
        agent_sha256,
        token_ttl: crate::reconcile::NODE_TOKEN_TTL,
        tunnel,
        metadata_server: provider.metadata_server(),
    };
    let mut wanted = wanted_nodes(&c);
    if mode == Mode::Start {
        let existing: Vec<NodeName> = provider.list().await?.into_iter().map(|n| n.name).collect();
        let (keep, missing): (Vec<WantedNode>, Vec<WantedNode>) =
            wanted.into_iter().partition(|n| existing.contains(&n.name));
        for n in &missing {
            step(&format!(
                "{}: does not exist; `pangaea-ctl up` creates it",
                n.name
            ));
        }
        anyhow::ensure!(
            !keep.is_empty(),
            "nothing to start: no node of cluster {} exists (`pangaea-ctl up` creates them)",
            c.loaded.config.name
        );
        wanted = keep;
    }
    // The running controller follows pangaea.yaml as it is now (a pool grown, a template
    // edited) before any node asks for its plan.
    let changed = backend.reload().await?;
    if !changed.is_empty() {
        step(&format!(
            "configuration reloaded: new assignments for {}",
            changed.join(", ")
        ));
    }
    // etcd nodes new to a running cluster join it one at a time, after the others.
    let joiners = match mode {
        Mode::Up => {
            let existing: Vec<NodeName> =
                provider.list().await?.into_iter().map(|n| n.name).collect();
            crate::etcd_join::joiners(&c.model, &crate::etcd_join::load(&c.state_dir)?, &existing)
        }
        Mode::Start => vec![],
    };
    let (joining, first): (Vec<WantedNode>, Vec<WantedNode>) = wanted
        .iter()
        .cloned()
        .partition(|n| joiners.contains(&n.name));
    let names: Vec<NodeName> = first.iter().map(|n| n.name.clone()).collect();
    let mut reconciler = Reconciler {
        provider: provider.as_ref(),
        backend: &mut backend,
        bootstrap: &bootstrap,
        progress: &step,
    };
    reconciler.ensure_nodes(&first).await?;
    phases.push(("nodes started", started.elapsed()));
    reconciler.wait_healthy(&names, timeout).await?;
    phases.push(("all healthy", started.elapsed()));
    if !joining.is_empty() {
        join_etcd(&c, provider.as_ref(), &mut reconciler, &joining, timeout).await?;
        phases.push(("etcd members joined", started.elapsed()));
    }

    let kubeconfig = ctx.state.admin_kubeconfig();
    // Through the controller's load balancer over the API servers, so the operator's kubectl
    // keeps working when any one node is lost.
    let server = std::fs::read_to_string(ctx.state.api_proxy_addr())
        .map(|a| format!("https://{}", a.trim()))
        .unwrap_or_else(|_| c.model.api_endpoint.clone());
    pangaea_core::fsutil::atomic_write(
        &kubeconfig,
        c.operator_kubeconfig(&server)?.as_bytes(),
        0o600,
    )
    .with_context(|| format!("write {}", kubeconfig.display()))?;
    crate::outln!(
        "cluster {} is up: {} nodes healthy in {:.1}s",
        c.loaded.config.name,
        wanted.len(),
        started.elapsed().as_secs_f64()
    );
    for (phase, at) in &phases {
        crate::outln!("  {phase:<26} +{:.1}s", at.as_secs_f64());
    }
    for n in backend.list_nodes().await?.iter().filter(|n| !n.removed) {
        let r = n.last_report.clone().unwrap_or_default();
        let names = |f: &dyn Fn(&pangaea_proto::UnitState) -> bool| {
            r.units
                .iter()
                .filter(|u| f(u))
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let active = names(&pangaea_proto::UnitState::is_active);
        let missing = names(&|u| u.not_started().is_some());
        crate::outln!(
            "  {:<12} {}  active: {active}",
            n.name,
            n.addresses.first().map_or("-", String::as_str),
        );
        if !missing.is_empty() {
            crate::outln!("  {:<12} not started, program not installed: {missing}", "");
        }
    }
    crate::outln!("admin kubeconfig: {}", kubeconfig.display());
    if let Some(ip) = crate::api_address::load(&ctx.state)? {
        crate::outln!(
            "API at its static address: https://{ip}:{} (pangaea-ctl kubeconfig --external)",
            pangaea_compiler::node::API_PORT
        );
    }
    crate::outln!("etcd: eval \"$(pangaea-ctl env etcdctl)\"; etcdctl endpoint health");
    Ok(())
}

/// Joins `joining` (etcd nodes new to the running cluster) one at a time
/// ([`crate::etcd_join::join`]), asking the etcd members whose machines run.
async fn join_etcd(
    c: &Compilation,
    provider: &dyn crate::provider::Provider,
    reconciler: &mut Reconciler<'_>,
    joining: &[WantedNode],
    timeout: Duration,
) -> anyhow::Result<()> {
    struct UpBring<'a, 'r> {
        reconciler: &'a mut Reconciler<'r>,
        wanted: &'a [WantedNode],
    }
    impl crate::etcd_join::Bring for UpBring<'_, '_> {
        async fn reload(&mut self) -> anyhow::Result<()> {
            self.reconciler.backend.reload().await?;
            Ok(())
        }
        async fn start(&mut self, node: &NodeName, timeout: Duration) -> anyhow::Result<()> {
            let w: Vec<WantedNode> = self
                .wanted
                .iter()
                .filter(|w| &w.name == node)
                .cloned()
                .collect();
            self.reconciler.ensure_nodes(&w).await?;
            self.reconciler
                .wait_healthy(std::slice::from_ref(node), timeout)
                .await?;
            Ok(())
        }
        async fn exists(&mut self, node: &NodeName) -> anyhow::Result<bool> {
            Ok(self.reconciler.provider.describe(node).await?.is_some())
        }
    }
    let etcd = crate::etcd::operator_client(c)?;
    for w in joining {
        let node = c
            .model
            .node(&w.name)
            .with_context(|| format!("{} is not in the configuration", w.name))?;
        let (running, _) = crate::etcd::running_members(c, provider).await?;
        let endpoints: Vec<String> = running.into_iter().map(|(_, url)| url).collect();
        step(&format!(
            "{}: joining the running etcd cluster as a learner",
            w.name
        ));
        let mut bring = UpBring {
            reconciler: &mut *reconciler,
            wanted: joining,
        };
        crate::etcd_join::join(c, &etcd, &endpoints, node, &mut bring, timeout, &step).await?;
    }
    Ok(())
}

/// The nodes the configuration wants, as the reconcile loop takes them.
pub fn wanted_nodes(c: &Compilation) -> Vec<WantedNode> {
    c.model
        .nodes
        .iter()
        .map(|n| WantedNode {
            name: n.name.clone(),
            address: n.address,
            memory_mib: n.memory_mib,
            cpus: n.cpus,
        })
        .collect()
}

/// `up`'s checks before it creates anything (every artifact can be had; no other cluster
/// of this host has its name or addresses), then the compilation (which creates the state
/// directory and the PKI), recorded in the host's cluster registry.
async fn checked_compilation(ctx: &Ctx) -> anyhow::Result<Compilation> {
    let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
    crate::preflight::check_artifacts(&loaded, &Mirror::new(&ctx.state.artifacts())).await?;
    let registry = Registry::open(&crate::registry::dir())?;
    let record = Record::of(&loaded, &ctx.config, &ctx.state);
    registry
        .check(&record)
        .map_err(|why| crate::exit::Refusal(format!("{why}\n(nothing was created)")))?;
    let c = ctx.compilation()?;
    registry.put(&record)?;
    Ok(c)
}

/// Fills the mirror, before any node asks, with each artifact some node downloads (once per
/// cluster, however many nodes take it).
async fn fill_mirror(ctx: &Ctx, c: &Compilation) -> anyhow::Result<()> {
    let mirror = Mirror::new(&ctx.state.artifacts());
    let wanted = crate::preflight::wanted(&c.artifacts, &c.model);
    for a in wanted {
        if !mirror.has(&a.digest()) {
            step(&format!("fetching artifact {} ({})", a.name, a.url));
        }
        mirror.ensure(&a.url, &a.digest()).await.with_context(|| {
            format!(
                "artifact {} (disable it in pangaea.yaml with `disabled: true` if it cannot be had here)",
                a.name
            )
        })?;
    }
    Ok(())
}
