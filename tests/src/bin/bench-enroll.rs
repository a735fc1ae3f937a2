//! Enrollment throughput: N simulated agents, C at a time, each doing a full join — a new
//! TLS connection with the pinned-CA check, a fresh P-256 key and CSR, token check, CSR
//! signing, and the durable (fsynced) node record — against an in-process controller on
//! loopback. Client and controller share the machine, as they would not in real life, so
//! the figure is a lower bound.
//!
//! Usage: bench-enroll [JOINS] [CONCURRENCY]    (defaults: 5000 64)

use pangaea_controller::tokens::NewToken;
use pangaea_controller::{Controller, ControllerConfig};
use pangaea_proto as pb;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let joins = args.first().copied().unwrap_or(5000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    pangaea_core::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let controller = Controller::open(ControllerConfig::new(dir.path().join(".pangaea")), None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let c = controller.clone();
        tokio::spawn(async move { pangaea_controller::service::serve(&c, listener, std::future::pending()).await });
        let token = controller.create_token(NewToken { uses: joins as u32, ttl: Duration::from_secs(3600), ..Default::default() }).await.unwrap().0.expose();
        let pin = controller.pki().controller_pin();

        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (next, token, endpoint) = (next.clone(), token.clone(), endpoint.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= joins {
                        return latencies;
                    }
                    let t = Instant::now();
                    let name = format!("node-{i}");
                    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                    let mut params = rcgen::CertificateParams::default();
                    params.distinguished_name.push(rcgen::DnType::CommonName, name.as_str());
                    let csr_der = params.serialize_request(&key).unwrap().der().to_vec();
                    let channel = pangaea_core::tls::channel(&endpoint, pangaea_agent::identity::pinned_config(pin)).unwrap();
                    let facts = pb::NodeFacts { instance_id: format!("i-{i}"), hostname: name.clone(), addresses: vec!["192.0.2.1".into()], boot_id: String::new() };
                    let resp = pb::enrollment_client::EnrollmentClient::new(channel)
                        .join(pb::JoinRequest { token: token.clone(), csr_der, node_name: name, facts: Some(facts) })
                        .await
                        .expect("join succeeds");
                    assert!(!resp.into_inner().certificate_pem.is_empty());
                    latencies.push(t.elapsed());
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = start.elapsed();
        all.sort();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        assert_eq!(controller.nodes().unwrap().len(), joins, "every join is durably recorded");
        println!(
            "joins={joins} concurrency={concurrency} seconds={:.3} joins_per_second={:.0} p50_ms={:.2} p99_ms={:.2}",
            elapsed.as_secs_f64(),
            joins as f64 / elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
    });
}
