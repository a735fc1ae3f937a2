//! Serves the agent binary to booting nodes over plain HTTP on the nodes' private network:
//! cloud-init fetches `GET /pangaea-agent` before any identity exists, and checks the
//! SHA-256 written into its user-data before installing it, so integrity does not depend on
//! the transport. Nothing else is served.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The only path served.
pub const PATH: &str = "/pangaea-agent";

/// The agent binary shipped beside this `pangaea-ctl`.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("pangaea-agent")))
        .unwrap_or_else(|| PathBuf::from("pangaea-agent"))
}

/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send its request head: an idle connection is closed
/// after this, so idle connections cannot hold the endpoint.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one transfer may take (the binary is tens of MiB on a local network).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// Serves `binary` at [`PATH`] to every connection on `listener`, one task per connection
/// (at most [`MAX_CONNECTIONS`]), one request per connection (`Connection: close`);
/// anything else gets 404. An accept error (out of file descriptors) pauses accepting
/// briefly instead of spinning. Never returns.
pub async fn serve(listener: TcpListener, binary: PathBuf) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "agent download: accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let binary = binary.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if tokio::time::timeout(TRANSFER_TIMEOUT, answer(sock, peer, &binary))
                .await
                .is_err()
            {
                tracing::warn!(%peer, "agent download: transfer timed out");
            }
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut sock: TcpStream, peer: std::net::SocketAddr, binary: &std::path::Path) {
    let head = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        Some(head)
    })
    .await;
    let Ok(Some(head)) = head else {
        return;
    };
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if line != format!("GET {PATH} HTTP/1.1") && line != format!("GET {PATH} HTTP/1.0") {
        tracing::debug!(%peer, request = %line, "agent download: not found");
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    let opened = match tokio::fs::File::open(binary).await {
        Ok(f) => f.metadata().await.map(|m| (f, m.len())),
        Err(e) => Err(e),
    };
    let (mut file, len) = match opened {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(binary = %binary.display(), error = %e, "cannot serve the agent binary");
            let _ = sock.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            return;
        }
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    if sock.write_all(header.as_bytes()).await.is_ok()
        && tokio::io::copy(&mut file, &mut sock).await.is_ok()
    {
        tracing::info!(%peer, bytes = len, "agent binary served");
    }
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening #6 (agent HTTP port): hundreds of idle connections neither block a
    /// download nor stay open past the head timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_do_not_block_a_download() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("agent");
        std::fs::write(&binary, vec![7u8; 100_000]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, binary));
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {PATH} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("served within 5 s")
            .unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200 OK"), "{:?}", &got[..20]);
        assert!(got.ends_with(&[7u8; 100]), "the whole body");
        assert!(started.elapsed() < Duration::from_secs(5));
        // An idle connection is closed after the head timeout.
        let mut one = idle.pop().unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(HEAD_TIMEOUT + Duration::from_secs(2), one.read(&mut buf))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0, "the server closed the idle connection");
    }
}
