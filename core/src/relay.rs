//! A TCP load balancer over the cluster's API servers, so that losing any one node leaves
//! the API reachable: on every node (`pangaea-agent api-lb`, for the kubelet and
//! kube-proxy of worker nodes) and on the operator's machine (the controller daemon, for the
//! admin kubeconfig). It relays bytes, so TLS stays end to end between the client and an
//! API server (whose certificate carries 127.0.0.1 as well as its node's address).
//!
//! A connection goes to the backends in turn (round robin), healthy ones first: a backend
//! that refuses or does not answer within [`CONNECT_TIMEOUT`] is marked down and the next is
//! tried, so a lost node costs a client at most that timeout once; [`Pool::check`] (every
//! few seconds, [`health_loop`]) marks backends up and down by connecting to them, so later
//! clients skip a dead one at once. Connections are capped ([`MAX_CONNECTIONS`]): a flood
//! waits in the kernel's queue instead of exhausting file descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long a backend may take to accept a connection before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often [`health_loop`] checks the backends.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Connections relayed at once, at most.
pub const MAX_CONNECTIONS: usize = 4096;

struct Backend {
    addr: SocketAddr,
    healthy: AtomicBool,
}

/// The backends of one load balancer.
pub struct Pool {
    backends: Vec<Backend>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool over `addrs`, all taken as healthy until shown otherwise.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Arc<Pool> {
        Arc::new(Pool {
            backends: addrs
                .into_iter()
                .map(|addr| Backend {
                    addr,
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// Every backend, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    /// The backends now taken as healthy.
    pub fn healthy(&self) -> Vec<SocketAddr> {
        self.backends
            .iter()
            .filter(|b| b.healthy.load(Ordering::Relaxed))
            .map(|b| b.addr)
            .collect()
    }

    /// Connects to a backend: the next in turn among the healthy ones, then the others;
    /// each attempt marks the backend up or down.
    pub async fn connect(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let n = self.backends.len();
        if n == 0 {
            return Err(std::io::Error::other("no backend configured"));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<&Backend> = (0..n).map(|i| &self.backends[(start + i) % n]).collect();
        order.sort_by_key(|b| !b.healthy.load(Ordering::Relaxed));
        let mut last = None;
        for b in order {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(b.addr)).await {
                Ok(Ok(s)) => {
                    b.healthy.store(true, Ordering::Relaxed);
                    return Ok((s, b.addr));
                }
                Ok(Err(e)) => last = Some(format!("{}: {e}", b.addr)),
                Err(_) => last = Some(format!("{}: no answer within {CONNECT_TIMEOUT:?}", b.addr)),
            }
            if b.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(backend = %b.addr, "API server unreachable; marked down");
            }
        }
        Err(std::io::Error::other(format!(
            "no API server reachable (last: {})",
            last.unwrap_or_default()
        )))
    }

    /// Connects to every backend at once and marks each up or down.
    pub async fn check(self: &Arc<Self>) {
        let mut probes = tokio::task::JoinSet::new();
        for i in 0..self.backends.len() {
            let pool = self.clone();
            probes.spawn(async move {
                let b = &pool.backends[i];
                let up = matches!(
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(b.addr)).await,
                    Ok(Ok(_))
                );
                if b.healthy.swap(up, Ordering::Relaxed) != up {
                    tracing::info!(backend = %b.addr, up, "API server health changed");
                }
            });
        }
        probes.join_all().await;
    }
}

/// The backends of a backends file: one `ADDRESS:PORT` per line, blank lines and `#`
/// comments ignored; an error names the line that is not one.
pub fn parse_backends(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            line.parse()
                .map_err(|e| format!("line {}: {line:?} is not ADDRESS:PORT ({e})", i + 1))?,
        );
    }
    if out.is_empty() {
        return Err("no API server listed".into());
    }
    Ok(out)
}

/// Checks `pool` every `every`, forever.
pub async fn health_loop(pool: Arc<Pool>, every: Duration) {
    loop {
        pool.check().await;
        tokio::time::sleep(every).await;
    }
}

/// Relays every connection accepted on `listener` to a backend of `pool`, until the
/// listener fails.
pub async fn serve(listener: TcpListener, pool: Arc<Pool>) -> std::io::Result<()> {
    serve_with(listener, move || pool.clone()).await
}

/// [`serve`] with the pool `current` gives for each connection (the backends change when
/// the cluster's control plane does).
pub async fn serve_with(
    listener: TcpListener,
    current: impl Fn() -> Arc<Pool> + Send + Sync + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let (mut client, peer) = listener.accept().await?;
        let pool = current();
        tokio::spawn(async move {
            let _permit = permit;
            match pool.connect().await {
                Ok((mut backend, addr)) => {
                    let _ = client.set_nodelay(true);
                    let _ = backend.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                        tracing::debug!(%peer, backend = %addr, error = %e, "relay ended");
                    }
                }
                Err(e) => tracing::warn!(%peer, error = %e, "connection dropped"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its `name` and closes; stops when the
    /// returned handle is aborted.
    async fn backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        (addr, task)
    }

    async fn ask(lb: SocketAddr) -> String {
        let mut s = TcpStream::connect(lb).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out)).await;
        out
    }

    #[tokio::test]
    async fn connections_go_round_the_backends_and_skip_a_lost_one() {
        let (a, ta) = backend("a").await;
        let (b, _tb) = backend("b").await;
        let (c, _tc) = backend("c").await;
        let pool = Pool::new([a, b, c]);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = l.local_addr().unwrap();
        tokio::spawn(serve(l, pool.clone()));
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..6 {
            seen.push(ask(lb).await);
        }
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b", "c", "c"]);

        // Node a is lost: every client is still served, by the others.
        ta.abort();
        let _ = ta.await;
        for _ in 0..6 {
            let got = ask(lb).await;
            assert!(got == "b" || got == "c", "{got:?}");
        }
        assert!(!pool.healthy().contains(&a));
        // A check brings it back once it listens again (here: a new listener, same port).
        let again = TcpListener::bind(a).await.unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = again.accept().await.unwrap();
                let _ = s.write_all(b"a").await;
            }
        });
        pool.check().await;
        assert!(pool.healthy().contains(&a));
    }

    #[test]
    fn backends_files_are_read_line_by_line() {
        assert_eq!(
            parse_backends("# API servers\n10.0.0.11:6443\n\n10.0.0.12:6443  # cp-2\n").unwrap(),
            [
                "10.0.0.11:6443".parse().unwrap(),
                "10.0.0.12:6443".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(
            parse_backends("10.0.0.11:6443\nnode-2\n").unwrap_err(),
            "line 2: \"node-2\" is not ADDRESS:PORT (invalid socket address syntax)"
        );
        assert!(parse_backends("# none\n").is_err());
    }

    #[tokio::test]
    async fn with_every_backend_gone_a_client_is_closed_at_once() {
        let (a, ta) = backend("a").await;
        ta.abort();
        let _ = ta.await;
        let pool = Pool::new([a]);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = l.local_addr().unwrap();
        tokio::spawn(serve(l, pool));
        let t = std::time::Instant::now();
        assert_eq!(ask(lb).await, "");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(Pool::new([]).connect().await.is_err());
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_unchanged() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let lbl = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = lbl.local_addr().unwrap();
        tokio::spawn(serve(lbl, Pool::new([echo])));
        let mut s = TcpStream::connect(lb).await.unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let ((), n) = tokio::join!(send, recv);
        assert_eq!(n.unwrap(), data.len());
        assert_eq!(back, data);
    }
}
