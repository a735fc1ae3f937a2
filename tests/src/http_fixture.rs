//! A deliberately simple HTTP/1.1 server on loopback that serves one artifact and can
//! misbehave on request: wrong status, a corrupted byte, a truncated or extended body, a
//! connection closed mid-stream, `Range` ignored, throttled delivery. Every request is
//! logged with the range it asked for, so tests can prove a download resumed.
//!
//! It is a stand-in for an upstream release server, which cannot be reached from here;
//! the client side under test is the real reqwest-based pipeline.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Answer every request with this status and no body.
    pub status: Option<u16>,
    /// Answer the first N requests with 500.
    pub fail_first: usize,
    /// Flip one byte at this offset of the content.
    pub corrupt_at: Option<u64>,
    /// Close the connection once the body reached this offset (Content-Length still
    /// announces the whole content).
    pub close_at: Option<u64>,
    /// Serve a body (and Content-Length) this many bytes longer than the content.
    pub extend_by: usize,
    /// Send the extra bytes beyond the announced Content-Length instead.
    pub trailing_garbage: usize,
    /// Ignore `Range` and always send the whole content with 200.
    pub ignore_range: bool,
    /// Pause this long after each 256 KiB (to give SIGKILL tests time to strike).
    pub chunk_delay: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub range_start: Option<u64>,
    pub status: u16,
}

pub struct HttpFixture {
    pub addr: std::net::SocketAddr,
    pub faults: Arc<Mutex<Faults>>,
    pub log: Arc<Mutex<Vec<Logged>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpFixture {
    pub async fn start(content: Vec<u8>) -> HttpFixture {
        Self::start_on(content, 0).await
    }

    /// Like [`HttpFixture::start`] on a given loopback port (0 picks one).
    pub async fn start_on(content: Vec<u8>, port: u16) -> HttpFixture {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let content = Arc::new(content);
        let (f, l) = (faults.clone(), log.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (content, faults, log) = (content.clone(), f.clone(), l.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, &content, &faults, &log).await;
                });
            }
        });
        HttpFixture {
            addr,
            faults,
            log,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/artifact", self.addr)
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    content: &[u8],
    faults: &Mutex<Faults>,
    log: &Mutex<Vec<Logged>>,
) -> std::io::Result<()> {
    let Some(range_start) = read_request(&mut sock).await? else {
        return Ok(());
    };
    let f = faults.lock().unwrap().clone();
    let served_so_far = log.lock().unwrap().len();
    let status = if let Some(s) = f.status {
        s
    } else if served_so_far < f.fail_first {
        500
    } else if range_start.is_some() && !f.ignore_range {
        206
    } else {
        200
    };
    log.lock().unwrap().push(Logged {
        range_start,
        status,
    });
    if status != 200 && status != 206 {
        let msg =
            format!("HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return sock.write_all(msg.as_bytes()).await;
    }
    let body: std::borrow::Cow<[u8]> = if f.corrupt_at.is_none() && f.extend_by == 0 {
        content.into()
    } else {
        let mut b = content.to_vec();
        if let Some(at) = f.corrupt_at {
            b[at as usize] ^= 0xff;
        }
        b.extend(std::iter::repeat_n(b'X', f.extend_by));
        b.into()
    };
    let total = body.len() as u64;
    let start = if status == 206 {
        range_start.unwrap_or(0).min(total)
    } else {
        0
    };
    let mut headers = format!(
        "HTTP/1.1 {status} OK\r\nAccept-Ranges: bytes\r\nContent-Length: {}\r\nConnection: close\r\n",
        total - start
    );
    if status == 206 {
        headers.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            total.saturating_sub(1)
        ));
    }
    headers.push_str("\r\n");
    sock.write_all(headers.as_bytes()).await?;
    let mut pos = start;
    while pos < total {
        let end = (pos + 256 * 1024)
            .min(total)
            .min(f.close_at.filter(|c| *c > pos).unwrap_or(u64::MAX));
        sock.write_all(&body[pos as usize..end as usize]).await?;
        pos = end;
        if f.close_at == Some(pos) {
            sock.flush().await?;
            return Ok(()); // dropped: the client sees the connection close mid-body
        }
        if let Some(d) = f.chunk_delay {
            tokio::time::sleep(d).await;
        }
    }
    if f.trailing_garbage > 0 {
        sock.write_all(&vec![b'G'; f.trailing_garbage]).await?;
    }
    sock.shutdown().await
}

/// Reads one request head from `sock`: `None` when the client closed first, else the start
/// of its `Range: bytes=N-` (if any).
pub async fn read_request(
    sock: &mut tokio::net::TcpStream,
) -> std::io::Result<Option<Option<u64>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    Ok(Some(
        text.lines()
            .find_map(|l| l.strip_prefix("range: bytes="))
            .and_then(|r| r.trim().trim_end_matches('-').parse::<u64>().ok()),
    ))
}
