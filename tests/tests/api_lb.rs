//! An API endpoint that survives any node (lifecycle): the real `pangaea-agent api-lb`
//! relaying TLS connections to API-server stand-ins on loopback — TLS servers with a
//! certificate for 127.0.0.1, as the API servers' certificates carry it. A client verifying
//! the server through the load balancer's address completes the handshake (TLS is end to
//! end), connections go round the servers, and when one is lost every new client is still
//! served by the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CA and a server certificate for 127.0.0.1 signed by it (PEM key and chain).
fn pki() -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::ServerConfig,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["kubernetes".to_owned()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.signed_by(&key, &issuer).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    (ca_cert.der().clone(), server)
}

/// An API-server stand-in: over TLS, answers each connection with its name.
async fn api_server(
    name: &'static str,
    tls: Arc<rustls::ServerConfig>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(s).await {
                    let _ = s.write_all(name.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    (addr, task)
}

/// Connects through `lb` verifying the server as 127.0.0.1 against `ca`; what it says.
async fn ask(lb: SocketAddr, ca: &rustls::pki_types::CertificateDer<'static>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(lb).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = connector
        .connect(name, tcp)
        .await
        .expect("TLS through the load balancer");
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_load_balancer_keeps_the_api_reachable_when_a_server_is_lost() {
    pangaea_tests::init();
    let (ca, tls) = pki();
    let tls = Arc::new(tls);
    let (a, task_a) = api_server("a", tls.clone()).await;
    let (b, _task_b) = api_server("b", tls.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let backends = dir.path().join("api-servers");
    std::fs::write(&backends, format!("# two API servers\n{a}\n{b}\n")).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", pangaea_tests::free_port())
        .parse()
        .unwrap();
    let mut lb = std::process::Command::new(pangaea_tests::binary("pangaea-agent"))
        .args(["api-lb", "--listen", &listen.to_string(), "--backends"])
        .arg(&backends)
        .spawn()
        .unwrap();
    let ready = Instant::now();
    while TcpStream::connect(listen).await.is_err() {
        assert!(ready.elapsed() < Duration::from_secs(10), "api-lb listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(ask(listen, &ca).await);
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"], "round the servers");

    // Server a is lost: every new client is served by b, without waiting.
    task_a.abort();
    let _ = task_a.await;
    let t = Instant::now();
    for _ in 0..6 {
        assert_eq!(ask(listen, &ca).await, "b");
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // A bad list is refused with its line.
    std::fs::write(&backends, "10.0.0.1:6443\nnode-2\n").unwrap();
    let out = std::process::Command::new(pangaea_tests::binary("pangaea-agent"))
        .args(["api-lb", "--listen", "127.0.0.1:0", "--backends"])
        .arg(&backends)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2: \"node-2\" is not ADDRESS:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = lb.kill();
    let _ = lb.wait();
}
