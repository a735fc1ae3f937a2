//! The recovery token of a Compute Engine node, read from its instance metadata.
//!
//! `pangaea-ctl up` cannot write to a cloud VM's disk the way it writes a local node's seed,
//! so on Compute Engine it sets the token as the instance metadata item
//! [`RECOVERY_TOKEN_METADATA_KEY`] (with `instances.setMetadata`, which works on a stopped
//! instance too), and the agent reads it from the metadata server, the way Google's own
//! guest tools read theirs: `GET http://169.254.169.254/computeMetadata/v1/instance/attributes/KEY`
//! with the `Metadata-Flavor: Google` header, and an answer trusted only when it carries
//! the same header (a proxy or another server at that address does not).

use pangaea_core::token::RECOVERY_TOKEN_METADATA_KEY;
use std::time::Duration;

/// How long one read may take: the server is on the VM's host, so an answer that has not
/// come in this time will not come; the join is retried anyway.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the metadata server gave no answer to trust.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// No answer (not on Compute Engine, or the server is unreachable).
    #[error("metadata server {url}: {message}")]
    Transport {
        /// The item's URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// An answer that is not the metadata server's.
    #[error("metadata server {url}: {message}")]
    Refused {
        /// The item's URL.
        url: String,
        /// Why it is not trusted.
        message: String,
    },
}

/// The URL of the recovery token's item on the metadata server at `server` (`HOST[:PORT]`).
pub fn recovery_token_url(server: &str) -> String {
    format!("http://{server}/computeMetadata/v1/instance/attributes/{RECOVERY_TOKEN_METADATA_KEY}")
}

/// The recovery token set on this instance, `None` when there is none (the item is
/// missing or empty).
pub async fn recovery_token(server: &str) -> Result<Option<String>, MetadataError> {
    let url = recovery_token_url(server);
    let transport = |e: reqwest::Error| MetadataError::Transport {
        url: url.clone(),
        message: pangaea_core::error_chain(&e),
    };
    pangaea_core::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        // The metadata server answers directly; a proxy from the environment must not.
        .no_proxy()
        .build()
        .map_err(transport)?;
    let response = client
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .map_err(transport)?;
    if response
        .headers()
        .get("Metadata-Flavor")
        .is_none_or(|v| v != "Google")
    {
        return Err(MetadataError::Refused {
            url,
            message: format!(
                "answered {} without the Metadata-Flavor: Google header",
                response.status()
            ),
        });
    }
    match response.status() {
        reqwest::StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => {
            let text = response.text().await.map_err(transport)?;
            let token = text.trim();
            Ok((!token.is_empty()).then(|| token.to_owned()))
        }
        s => Err(MetadataError::Refused {
            url,
            message: format!("answered {s}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers one request with `response` and hands back the request.
    async fn answer_once(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn the_token_is_read_with_googles_header_and_trusted_only_with_it() {
        let (addr, request) = answer_once(
            "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nContent-Length: 24\r\n\r\nabcdef.0123456789abcdef\n",
        )
        .await;
        assert_eq!(
            recovery_token(&addr).await.unwrap().as_deref(),
            Some("abcdef.0123456789abcdef")
        );
        let request = request.await.unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with(
                "get /computemetadata/v1/instance/attributes/pangaea-recovery-token http/1.1"
            ),
            "{request}"
        );
        assert!(request.contains("metadata-flavor: google"), "{request}");

        // No item: no token, and no error.
        let (addr, _) = answer_once(
            "HTTP/1.1 404 Not Found\r\nMetadata-Flavor: Google\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(recovery_token(&addr).await.unwrap(), None);

        // Another server at that address (no Metadata-Flavor in its answer): refused.
        let (addr, _) =
            answer_once("HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\nabcdef.0123456789abcdef\n")
                .await;
        let e = recovery_token(&addr).await.unwrap_err();
        assert!(matches!(e, MetadataError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("without the Metadata-Flavor"), "{e}");

        // Nobody there (not on Compute Engine): an error to log, never a token.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = recovery_token(&closed).await.unwrap_err();
        assert!(matches!(e, MetadataError::Transport { .. }), "{e}");
    }
}
