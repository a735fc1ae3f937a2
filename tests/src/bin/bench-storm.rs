//! Hardening #7, the reconnect storm (the cascading failure of Kubernetes issue #87794):
//! AGENTS simulated agents, each a node joined to the real controller daemon
//! (`pangaea-ctl serve`, its own process) with its own key and mTLS certificate, hold the
//! assignment and jobs streams and report every 15 s as `pangaea-agent` does. The daemon is killed
//! (SIGKILL) and started again on the same port; every agent notices, and reconnects with
//! the agent's own jittered backoff (`pangaea_core::backoff::Backoff`: after a lost session
//! 1 s ±20 %, then ×1.6 per failed attempt). Measured: the time from the kill until every
//! agent again has a watch stream open and a report accepted by the new daemon (target
//! ≤ 60 s), and the new daemon's peak RSS (VmHWM, target ≤ 256 MiB).
//!
//! The cluster is real: a control-plane node and AGENTS workers in `pangaea.yaml`, so each
//! join plans the node with the compiler and issues its certificates, and each watch
//! carries the node's real assignment. That makes joining slow (minutes for 5,000), so
//! `--dir DIR` keeps the cluster and the agents' identities in DIR for the next run.
//!
//! Usage: bench-storm [AGENTS] [--dir DIR]     (default: 5000, a temporary directory)
//! Needs `pangaea-ctl` beside it: cargo build --release -p pangaea-controller -p pangaea-tests

use anyhow::{Context, bail, ensure};
use pangaea_agent::identity::Identity;
use pangaea_core::backoff::Backoff;
use pangaea_proto as pb;
use pangaea_tests::bench::{Daemon, cluster_yaml, ctl, join, percentiles};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// `pangaea-agent`'s default report interval.
const REPORT_INTERVAL: Duration = Duration::from_secs(15);
const TARGET: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let mut agents = 5000;
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = Some(args.next().context("--dir DIR")?),
            n => agents = n.parse().context("AGENTS is a number")?,
        }
    }
    // One connection per agent, and the joins'.
    let nofile = pangaea_controller::fdlimit::raise_nofile()?;
    ensure!(
        nofile as usize > agents + 512,
        "this process may open only {nofile} files; raise the hard limit (ulimit -Hn)"
    );
    pangaea_core::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            std::path::PathBuf::from(d)
        }
        None => tmp.path().to_owned(),
    };
    rt.block_on(run(agents, &dir))
}

/// An agent's session came up: watch open and a report accepted.
struct Up {
    agent: usize,
    generation: u64,
    at: Instant,
}

async fn run(n: usize, d: &Path) -> anyhow::Result<()> {
    let yaml = cluster_yaml(&format!(
        "  - {{name: cp, count: 1, roles: [etcd, control-plane]}}\n  - {{name: worker, count: {n}, roles: [worker]}}\n"
    ));
    let saved = d.join("agents.json");
    let reuse = std::fs::read_to_string(d.join("pangaea.yaml")).ok() == Some(yaml.clone())
        && saved.exists();
    if !reuse {
        let _ = std::fs::remove_dir_all(d.join(".pangaea"));
        let _ = std::fs::remove_file(&saved);
        std::fs::write(d.join("pangaea.yaml"), &yaml)?;
    }
    let daemon = Daemon::start(d, "127.0.0.1:0", None)?;
    let endpoint = daemon.addr()?;
    let identities = if reuse {
        load(&saved)?
    } else {
        let t = Instant::now();
        let ids = join_all(d, &endpoint, n).await?;
        save(&saved, &ids)?;
        eprintln!(
            "joined {n} nodes in {:.1} s (each planned by the compiler, its certificates issued)",
            t.elapsed().as_secs_f64()
        );
        ids
    };
    ensure!(identities.len() == n, "{saved:?} holds another fleet");
    let identities: Vec<Arc<Identity>> = identities.into_iter().map(Arc::new).collect();

    // The fleet.
    let generation = Arc::new(AtomicU64::new(0));
    let (up_tx, mut up_rx) = mpsc::unbounded_channel::<Up>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let attempts = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for (i, id) in identities.iter().enumerate() {
        tokio::spawn(agent(
            i,
            id.clone(),
            endpoint.clone(),
            generation.clone(),
            attempts.clone(),
            up_tx.clone(),
            stop_rx.clone(),
        ));
    }
    let first = wait_all(&mut up_rx, n, 0, started, Duration::from_secs(300)).await?;
    let first_max = *first.iter().max().context("agents")?;
    let (rss_before, hwm_before) = daemon.memory_kib()?;
    let files_before = daemon.open_files()?;
    eprintln!(
        "{n} agents connected and reporting after {:.1} s; daemon VmRSS {:.1} MiB, VmHWM {:.1} MiB, {files_before} open files",
        first_max.as_secs_f64(),
        rss_before as f64 / 1024.0,
        hwm_before as f64 / 1024.0
    );

    // The crash, and the restart on the same port.
    let port = endpoint.rsplit_once(':').context("HOST:PORT")?.1.to_owned();
    daemon.kill()?;
    // From now on a new session can reach only the new daemon.
    generation.store(1, Ordering::SeqCst);
    attempts.store(0, Ordering::SeqCst);
    let killed = Instant::now();
    let daemon = Daemon::start(d, &format!("127.0.0.1:{port}"), None)?;
    let listening = killed.elapsed();
    let mut back = wait_all(&mut up_rx, n, 1, killed, Duration::from_secs(300)).await?;
    let all_back = *back.iter().max().context("agents")?;
    let (p50, p99) = percentiles(&mut back);
    let (rss_storm, hwm_storm) = daemon.memory_kib()?;
    let files = daemon.open_files()?;
    let tries = attempts.load(Ordering::SeqCst);
    // One more report round, all connected, to see where memory settles.
    tokio::time::sleep(REPORT_INTERVAL).await;
    let (rss_after, hwm_after) = daemon.memory_kib()?;
    let _ = stop_tx.send(true);
    daemon.stop()?;

    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let s = |t: Duration| format!("{:.1} s", t.as_secs_f64());
    println!(
        "agents={n} restart_listening={} all_back={} p50={} p99={} sessions_tried={tries} \
         open_files={files} vmhwm_storm={} vmrss_storm={} vmrss_after={} vmhwm_after={} \
         (before the crash: vmrss={} vmhwm={})",
        s(listening),
        s(all_back),
        s(p50),
        s(p99),
        mib(hwm_storm),
        mib(rss_storm),
        mib(rss_after),
        mib(hwm_after),
        mib(rss_before),
        mib(hwm_before),
    );
    println!(
        "| {} | {n} | {} | {} | {} / {} | {} | {} |",
        time::OffsetDateTime::now_utc().date(),
        s(listening),
        s(all_back),
        s(p50),
        s(p99),
        mib(hwm_after),
        mib(rss_after),
    );
    ensure!(all_back <= TARGET, "not all back within {TARGET:?}");
    ensure!(
        hwm_after < 256 * 1024,
        "controller peak RSS over the 256 MiB target"
    );
    Ok(())
}

/// Joins `worker-1`..`worker-N`, 16 at a time.
async fn join_all(d: &Path, endpoint: &str, n: usize) -> anyhow::Result<Vec<Identity>> {
    let pin = pangaea_core::pin::SpkiPin::parse(ctl(d, &["pki", "pin"])?.trim())?;
    let token = ctl(
        d,
        &["token", "create", "--uses", &n.to_string(), "--ttl", "1d"],
    )?
    .trim()
    .to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (next, token, endpoint) = (next.clone(), token.clone(), endpoint.to_owned());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return Ok::<_, tonic::Status>(ids);
                }
                let id = join(&endpoint, pin, &token, &format!("worker-{}", i + 1)).await?;
                ids.push((i, id));
                if i % 500 == 499 {
                    eprintln!("joined {}", i + 1);
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

fn save(path: &Path, ids: &[Identity]) -> anyhow::Result<()> {
    let v: Vec<_> = ids
        .iter()
        .map(|id| {
            serde_json::json!({"name": id.node_name, "key": id.key_pem, "cert": id.cert_pem, "ca": id.ca_pem})
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&v)?)?;
    Ok(())
}

fn load(path: &Path) -> anyhow::Result<Vec<Identity>> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(path)?)?;
    v.into_iter()
        .map(|e| {
            let s = |k: &str| {
                e[k].as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{k} in {}", path.display()))
            };
            Ok(Identity {
                node_name: s("name")?,
                key_pem: s("key")?,
                cert_pem: s("cert")?,
                ca_pem: s("ca")?,
                not_before: 0,
                not_after: 0,
            })
        })
        .collect()
}

/// Waits until every agent has come up in `generation`; returns each one's time since
/// `since`.
async fn wait_all(
    up: &mut mpsc::UnboundedReceiver<Up>,
    n: usize,
    generation: u64,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut seen = vec![None; n];
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while count < n {
        let Ok(Some(u)) = tokio::time::timeout_at(deadline, up.recv()).await else {
            bail!("only {count} of {n} agents came back within {limit:?}");
        };
        if u.generation == generation && seen[u.agent].is_none() {
            seen[u.agent] = Some(u.at.saturating_duration_since(since));
            count += 1;
        }
    }
    Ok(seen.into_iter().flatten().collect())
}

/// One simulated agent: sessions as `pangaea-agent` runs them (agent/src/run.rs), and
/// between them the agent's backoff, reset after a session that had connected.
async fn agent(
    i: usize,
    id: Arc<Identity>,
    endpoint: String,
    generation: Arc<AtomicU64>,
    attempts: Arc<AtomicUsize>,
    up: mpsc::UnboundedSender<Up>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    loop {
        let g = generation.load(Ordering::SeqCst);
        attempts.fetch_add(1, Ordering::Relaxed);
        if session(i, &id, &endpoint, g, &up, &mut stop).await {
            backoff.reset();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// A session: a new mTLS channel, the assignment and jobs streams, a report at once and
/// every [`REPORT_INTERVAL`]; true if the watch stream was opened.
async fn session(
    i: usize,
    id: &Identity,
    endpoint: &str,
    generation: u64,
    up: &mpsc::UnboundedSender<Up>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Ok(channel) = id.channel(endpoint) else {
        return false;
    };
    let mut client = pb::node_service_client::NodeServiceClient::new(channel)
        .max_decoding_message_size(pangaea_proto::MAX_MESSAGE_BYTES);
    let Ok(stream) = client
        .watch_assignment(pb::WatchRequest {
            node_name: id.node_name.clone(),
        })
        .await
    else {
        return false;
    };
    let mut stream = stream.into_inner();
    // The jobs stream the agent opens beside it (agent/src/run.rs).
    let Ok(jobs) = client.watch_jobs(pb::WatchJobsRequest {}).await else {
        return true;
    };
    let mut jobs = jobs.into_inner();
    let mut applied = 0;
    let mut reported = false;
    let mut ticker = tokio::time::interval(REPORT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return true,
            m = stream.message() => match m {
                Ok(Some(a)) => applied = a.revision,
                _ => return true,
            },
            j = jobs.message() => if !matches!(j, Ok(Some(_))) {
                return true;
            },
            _ = ticker.tick() => {
                let report = pb::HealthReport { applied_revision: applied, ..Default::default() };
                if client.report(report).await.is_err() {
                    return true;
                }
                if !reported {
                    reported = true;
                    let _ = up.send(Up { agent: i, generation, at: Instant::now() });
                }
            }
        }
    }
}
