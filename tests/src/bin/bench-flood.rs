//! Hardening #6, under attack: the real controller daemon (`pangaea-ctl serve`, its own
//! process, a one-node cluster) while IDLE TCP connections are held open against its gRPC
//! port and as many against its agent-binary port (each reopened when the controller
//! closes it), and JOINS join requests with oversized (512 KiB) bodies are sent over one
//! connection. Meanwhile a legitimate join, a renewal and a 16 MiB artifact download each
//! must succeed within 5 s; the daemon's peak RSS (VmHWM) is read at the end.
//!
//! Usage: bench-flood [IDLE] [JOINS]     (defaults: 1000 5000)
//! Needs `pangaea-ctl` beside it: cargo build --release -p pangaea-controller -p pangaea-tests

use anyhow::{Context, ensure};
use pangaea_proto as pb;
use pangaea_tests::bench::{Daemon, cluster_yaml, ctl, join};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

const LIMIT: Duration = Duration::from_secs(5);
const ARTIFACT_BYTES: usize = 16 << 20;
const OVERSIZED_BYTES: usize = 512 * 1024;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments are numbers"))
        .collect::<Result<_, _>>()?;
    let idle = args.first().copied().unwrap_or(1000);
    let joins = args.get(1).copied().unwrap_or(5000);
    // This process holds 2 × IDLE connections plus the flood's and the measured ones.
    pangaea_controller::fdlimit::raise_nofile()?;
    pangaea_core::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(idle, joins))
}

/// Counters of the idle connections held against one port.
#[derive(Default)]
struct Idle {
    open: AtomicUsize,
    closed_by_server: AtomicUsize,
    opened: Notify,
}

/// Holds `n` idle connections to `addr`, opening a new one whenever the server closes one.
fn hold_idle(addr: String, n: usize) -> Arc<Idle> {
    let idle = Arc::new(Idle::default());
    for _ in 0..n {
        let (idle, addr) = (idle.clone(), addr.clone());
        tokio::spawn(async move {
            loop {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                idle.open.fetch_add(1, Ordering::SeqCst);
                idle.opened.notify_waiters();
                let mut buf = [0u8; 64];
                // Never writes; returns when the server closes the connection.
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                idle.open.fetch_sub(1, Ordering::SeqCst);
                idle.closed_by_server.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    idle
}

async fn all_open(idle: &Idle, n: usize) {
    loop {
        let notified = idle.opened.notified();
        if idle.open.load(Ordering::SeqCst) >= n {
            return;
        }
        notified.await;
    }
}

/// Times `f`, which must succeed within [`LIMIT`].
async fn within_limit<T>(
    what: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let v = tokio::time::timeout(LIMIT, f)
        .await
        .with_context(|| format!("{what} did not complete within {LIMIT:?}"))??;
    Ok((v, started.elapsed()))
}

async fn run(idle_n: usize, joins: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(
        d.join("pangaea.yaml"),
        cluster_yaml("  - {name: node, count: 1, roles: [etcd, control-plane, worker]}\n"),
    )?;
    let artifact: Vec<u8> = (0..ARTIFACT_BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    std::fs::write(d.join("artifact"), &artifact)?;
    let imported = ctl(
        d,
        &[
            "artifacts",
            "import",
            &d.join("artifact").display().to_string(),
        ],
    )?;
    let digest = imported
        .split_whitespace()
        .next()
        .context("artifacts import prints the digest")?
        .to_owned();
    let daemon = Daemon::start(d, "127.0.0.1:0", Some("127.0.0.1:0"))?;
    let endpoint = daemon.addr()?;
    let pin = pangaea_core::pin::SpkiPin::parse(ctl(d, &["pki", "pin"])?.trim())?;
    let token = ctl(d, &["token", "create", "--node", "node-1"])?
        .trim()
        .to_owned();

    // 1. Idle connections on both ports.
    let grpc_idle = hold_idle(endpoint.clone(), idle_n);
    let http_idle = hold_idle(daemon.agent_http_addr()?, idle_n);
    all_open(&grpc_idle, idle_n).await;
    all_open(&http_idle, idle_n).await;

    // 2. The flood: oversized joins over one connection, 64 in flight from this client
    //    (the controller serves 16 at a time per connection; the rest wait in its queue).
    let flooder = pb::enrollment_client::EnrollmentClient::new(pangaea_core::tls::channel(
        &endpoint,
        pangaea_agent::identity::pinned_config(pin),
    )?);
    let (refused, accepted, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let started_flood = Arc::new(Notify::new());
    let next = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (mut c, next) = (flooder.clone(), next.clone());
        let (refused, accepted, failed, started) = (
            refused.clone(),
            accepted.clone(),
            failed.clone(),
            started_flood.clone(),
        );
        flood.spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < joins {
                let r = c
                    .join(pb::JoinRequest {
                        token: "abcdef.0123456789abcdef".into(),
                        csr_der: vec![0u8; OVERSIZED_BYTES],
                        node_name: "node-z".into(),
                        facts: None,
                    })
                    .await;
                match r {
                    Ok(_) => accepted.fetch_add(1, Ordering::SeqCst),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        refused.fetch_add(1, Ordering::SeqCst)
                    }
                    Err(s) => {
                        eprintln!("flood: {s:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                started.notify_one();
            }
        });
    }
    // The flood is under way once its first refusal came back.
    started_flood.notified().await;
    let flood_started = Instant::now();

    // 3. The legitimate calls, one after the other, each within 5 s.
    let (node, join_t) = within_limit("the legitimate join", async {
        Ok(join(&endpoint, pin, &token, "node-1").await?)
    })
    .await?;
    let mut client = pb::node_service_client::NodeServiceClient::new(node.channel(&endpoint)?)
        .max_decoding_message_size(pangaea_proto::MAX_MESSAGE_BYTES);
    let (_, renew_t) = within_limit("the renewal", async {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "node-1");
        let csr_der = p.serialize_request(&key)?.der().to_vec();
        let cert = client
            .renew(pb::RenewRequest { csr_der })
            .await?
            .into_inner()
            .certificate_pem;
        ensure!(cert.contains("BEGIN CERTIFICATE"), "a certificate");
        Ok(())
    })
    .await?;
    let (_, fetch_t) = within_limit("the artifact download", async {
        let mut s = client
            .fetch_artifact(pb::FetchArtifactRequest {
                digest: digest.clone(),
                offset: 0,
            })
            .await?
            .into_inner();
        let mut got = Vec::with_capacity(ARTIFACT_BYTES);
        while let Some(c) = s.message().await? {
            got.extend_from_slice(&c.data);
        }
        ensure!(got == artifact, "the artifact arrived whole and unchanged");
        Ok(())
    })
    .await?;
    let during = flood_started.elapsed();
    let flood_done_at_end = refused.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst);
    let (grpc_open, http_open, grpc_closed, http_closed) = (
        grpc_idle.open.load(Ordering::SeqCst),
        http_idle.open.load(Ordering::SeqCst),
        grpc_idle.closed_by_server.load(Ordering::SeqCst),
        http_idle.closed_by_server.load(Ordering::SeqCst),
    );
    let open_files = daemon.open_files()?;

    while let Some(r) = flood.join_next().await {
        r?;
    }
    let flood_t = flood_started.elapsed();
    let (rss, hwm) = daemon.memory_kib()?;
    daemon.stop()?;
    let (refused, accepted, failed) = (
        refused.load(Ordering::SeqCst),
        accepted.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    println!(
        "idle_grpc={idle_n} idle_http={idle_n} oversized_joins={joins} refused={refused} \
         accepted={accepted} failed={failed} flood_seconds={:.1}",
        flood_t.as_secs_f64()
    );
    println!(
        "while measuring ({:.1} s into the flood, {flood_done_at_end}/{joins} flood requests answered): \
         idle connections open grpc={grpc_open} http={http_open}, controller open files={open_files}; \
         idle connections closed by the controller so far: grpc={grpc_closed} http={http_closed}",
        during.as_secs_f64(),
    );
    let ms = |t: Duration| format!("{:.0} ms", t.as_secs_f64() * 1e3);
    println!(
        "| {} | {idle_n} + {idle_n} | {joins} × 512 KiB | {} | {} | {} | {:.1} MiB | {:.1} MiB |",
        time::OffsetDateTime::now_utc().date(),
        ms(join_t),
        ms(renew_t),
        ms(fetch_t),
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
    );
    ensure!(accepted == 0, "an oversized join was admitted");
    ensure!(
        hwm < 256 * 1024,
        "controller peak RSS {hwm} KiB over the 256 MiB target"
    );
    Ok(())
}
