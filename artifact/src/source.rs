//! Where artifact bytes come from, chosen by URL scheme. A source opens the content at an
//! offset; if it cannot honour the offset (an HTTP server that ignores `Range`), it says so
//! by returning a body that starts at 0, and the pipeline starts over.

use crate::error::FetchError;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The future a [`Source`] or [`Chunks`] returns (boxed, so the traits stay object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A body delivered in chunks. `None` marks its end.
pub trait Chunks: Send {
    /// The next chunk, or `None` at the end of the body.
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, FetchError>>;
}

/// What a source delivers for one request: where it starts, and the bytes from there.
pub struct Body {
    /// Offset of the first byte this body delivers (0 when the offset was not honoured).
    pub start: u64,
    /// Size of the whole content, when the source knows it.
    pub total: Option<u64>,
    /// The bytes, from `start` on.
    pub chunks: Box<dyn Chunks>,
}

/// Where artifact bytes come from, for the URLs of one scheme.
pub trait Source: Send + Sync {
    /// Opens `url` at byte `offset`. A source that cannot start there returns a body that
    /// starts at 0, and the pipeline starts the file over.
    fn open<'a>(&'a self, url: &'a str, offset: u64) -> BoxFuture<'a, Result<Body, FetchError>>;
}

/// Sources by scheme (`https`, `http`, `file`, and any the program registers).
#[derive(Clone)]
pub struct Sources {
    by_scheme: BTreeMap<String, Arc<dyn Source>>,
}

impl Sources {
    /// HTTP(S) with connect and read timeouts, and `file://`.
    pub fn standard() -> Sources {
        let http: Arc<dyn Source> = Arc::new(HttpSource::new());
        let mut by_scheme = BTreeMap::new();
        by_scheme.insert("https".to_owned(), http.clone());
        by_scheme.insert("http".to_owned(), http);
        by_scheme.insert("file".to_owned(), Arc::new(FileSource) as Arc<dyn Source>);
        Sources { by_scheme }
    }

    /// Adds (or replaces) the source for URLs of `scheme` (e.g. the agent's mirror source
    /// under [`crate::MIRROR_SCHEME`]).
    pub fn register(&mut self, scheme: &str, source: Arc<dyn Source>) {
        self.by_scheme.insert(scheme.to_owned(), source);
    }

    /// The source for `url`'s scheme.
    pub fn for_url(&self, url: &str) -> Result<&Arc<dyn Source>, FetchError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
        self.by_scheme
            .get(scheme)
            .ok_or_else(|| FetchError::UnsupportedSource {
                url: url.to_owned(),
                supported: self
                    .by_scheme
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// `http://` and `https://` through reqwest, resuming with `Range` requests.
pub struct HttpSource {
    client: reqwest::Client,
}

impl Default for HttpSource {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpSource {
    /// A client with connect and read timeouts, so a stalled server is abandoned and the
    /// download resumed rather than waited on forever.
    pub fn new() -> HttpSource {
        // reqwest's rustls needs the process-wide provider; installing it is idempotent.
        pangaea_core::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Between chunks: a stalled server is abandoned and the download resumed.
            .read_timeout(Duration::from_secs(30))
            .user_agent(concat!("pangaea/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("reqwest client builds with the process crypto provider");
        HttpSource { client }
    }
}

struct HttpChunks {
    url: String,
    response: reqwest::Response,
}

impl Chunks for HttpChunks {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, FetchError>> {
        Box::pin(async move {
            self.response
                .chunk()
                .await
                .map_err(|e| FetchError::Transport {
                    url: self.url.clone(),
                    message: pangaea_core::error_chain(&e),
                })
        })
    }
}

/// Parses `Content-Range: bytes START-END/TOTAL`.
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()))
}

impl Source for HttpSource {
    fn open<'a>(&'a self, url: &'a str, offset: u64) -> BoxFuture<'a, Result<Body, FetchError>> {
        Box::pin(async move {
            let mut req = self.client.get(url);
            if offset > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            }
            let response = req.send().await.map_err(|e| FetchError::Transport {
                url: url.to_owned(),
                message: pangaea_core::error_chain(&e),
            })?;
            let status = response.status();
            let (start, total) = match status.as_u16() {
                200 => (0, response.content_length()),
                206 => {
                    let header = response
                        .headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let (start, total) =
                        content_range(header).ok_or_else(|| FetchError::Transport {
                            url: url.to_owned(),
                            message: format!("206 with unusable Content-Range {header:?}"),
                        })?;
                    if start != offset {
                        return Err(FetchError::Transport {
                            url: url.to_owned(),
                            message: format!(
                                "asked for bytes from {offset}, server sent from {start}"
                            ),
                        });
                    }
                    (start, total)
                }
                // Asked to resume at or past the end: the partial file may already be whole.
                416 if offset > 0 => {
                    return Ok(Body {
                        start: offset,
                        total: None,
                        chunks: Box::new(Empty),
                    });
                }
                code => {
                    return Err(FetchError::Http {
                        url: url.to_owned(),
                        status: code,
                    });
                }
            };
            Ok(Body {
                start,
                total,
                chunks: Box::new(HttpChunks {
                    url: url.to_owned(),
                    response,
                }),
            })
        })
    }
}

struct Empty;

impl Chunks for Empty {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, FetchError>> {
        Box::pin(async { Ok(None) })
    }
}

/// `file:///path`: local files (imports, air-gapped sources, tests).
pub struct FileSource;

struct FileChunks {
    url: String,
    file: tokio::fs::File,
}

impl Chunks for FileChunks {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, FetchError>> {
        Box::pin(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            let n = self
                .file
                .read(&mut buf)
                .await
                .map_err(|e| FetchError::Transport {
                    url: self.url.clone(),
                    message: e.to_string(),
                })?;
            buf.truncate(n);
            Ok((n > 0).then(|| Bytes::from(buf)))
        })
    }
}

impl Source for FileSource {
    fn open<'a>(&'a self, url: &'a str, offset: u64) -> BoxFuture<'a, Result<Body, FetchError>> {
        Box::pin(async move {
            use tokio::io::AsyncSeekExt;
            let path = url.strip_prefix("file://").unwrap_or(url);
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => FetchError::Http {
                        url: url.to_owned(),
                        status: 404,
                    },
                    _ => FetchError::Transport {
                        url: url.to_owned(),
                        message: e.to_string(),
                    },
                })?;
            let total = file
                .metadata()
                .await
                .map_err(|e| FetchError::Transport {
                    url: url.to_owned(),
                    message: e.to_string(),
                })?
                .len();
            let start = offset.min(total);
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| FetchError::Transport {
                    url: url.to_owned(),
                    message: e.to_string(),
                })?;
            Ok(Body {
                start,
                total: Some(total),
                chunks: Box::new(FileChunks {
                    url: url.to_owned(),
                    file,
                }),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
    }
}
