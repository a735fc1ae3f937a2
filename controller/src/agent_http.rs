//! Serves the agent binary to booting nodes over plain HTTP on the nodes' private network:
//! cloud-init fetches `GET /pangaea-agent` before any identity exists, and checks the
//! SHA-256 written into its user-data before installing it, so integrity does not depend on
//! the transport. Nothing else is served.

use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The only path served.
pub const PATH: &str = "/pangaea-agent";

/// The agent binary shipped beside this `pangaea-ctl`.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("pangaea-agent")))
        .unwrap_or_else(|| PathBuf::from("pangaea-agent"))
}

/// Serves `binary` at [`PATH`] to every connection on `listener`, one task per connection,
/// one request per connection (`Connection: close`); anything else gets 404. Never returns.
pub async fn serve(listener: TcpListener, binary: PathBuf) {
    loop {
        let Ok((mut sock, peer)) = listener.accept().await else {
            continue;
        };
        let binary = binary.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            if line != format!("GET {PATH} HTTP/1.1") && line != format!("GET {PATH} HTTP/1.0") {
                tracing::debug!(%peer, request = %line, "agent download: not found");
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                return;
            }
            let mut file = match tokio::fs::File::open(&binary).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(binary = %binary.display(), error = %e, "cannot serve the agent binary");
                    let _ = sock.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    return;
                }
            };
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            if sock.write_all(header.as_bytes()).await.is_ok()
                && tokio::io::copy(&mut file, &mut sock).await.is_ok()
            {
                tracing::info!(%peer, bytes = len, "agent binary served");
            }
            let _ = sock.shutdown().await;
        });
    }
}
