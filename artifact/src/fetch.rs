//! The install pipeline: skip if current, otherwise download (resuming), verify, rename.

use crate::archive;
use crate::digest::{Digest, Hasher};
use crate::error::FetchError;
use crate::progress::{Progress, State};
use crate::source::Sources;
use crate::spec::ArtifactSpec;
use bytes::Bytes;
use pangaea_core::backoff::Backoff;
use pangaea_core::fsutil;
use std::io::{Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Space kept free beyond the artifact itself, so a node is not filled to the last block.
const SPACE_MARGIN: u64 = 16 << 20;

/// The most a download whose size nobody declared may be (4 GiB): a body without a
/// `Content-Length` (or a source that reports no size) is abandoned beyond it rather than
/// written until the disk is full. Several times the largest artifact in
/// `compiler/artifacts.yaml` (the Kubernetes server bundle, a few hundred MiB); change it
/// with [`Fetcher::with_max_size`].
pub const DEFAULT_MAX_SIZE: u64 = 4 << 30;

/// What [`Fetcher::install`] did: callers restart units only when something `changed`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// The destination (or a member) changed.
    pub changed: bool,
    /// Bytes transferred by the attempt that succeeded (0 when nothing was downloaded).
    pub downloaded_bytes: u64,
    /// Where that attempt resumed from (0 when it started from the beginning).
    pub resumed_from: u64,
    /// Download attempts made (0 when the destination was already current).
    pub attempts: u32,
}

/// How often and how patiently a failed download is tried again (only for errors that
/// [`FetchError::retryable`] says another attempt may fix).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the first retry; it grows ×1.6 per failure, with jitter.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// Installs artifacts: a limited number of downloads at once, each through the verified,
/// resumable, atomic pipeline described in the crate documentation, with their state in a
/// shared [`Progress`].
pub struct Fetcher {
    sources: Sources,
    limit: Arc<Semaphore>,
    policy: RetryPolicy,
    progress: Progress,
    max_size: u64,
}

fn io_err(
    url: &str,
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> FetchError {
    let (url, path) = (url.to_owned(), path.to_owned());
    move |e| FetchError::Io {
        url,
        action,
        path,
        message: e.to_string(),
    }
}

/// `.NAME.<digest prefix>.partial` beside the destination: per digest, so a different
/// artifact for the same destination never resumes from the wrong bytes.
pub fn partial_path(dest: &Path, digest: &Digest) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}.partial", &digest.hex()[..16]))
}

fn free_bytes(dir: &Path) -> Option<u64> {
    nix::sys::statvfs::statvfs(dir)
        .ok()
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
}

/// Bytes the destination's file system must have free to take the rest of a `total`-byte
/// artifact whose first `start` bytes are already on disk, plus [`SPACE_MARGIN`]. Saturating:
/// a huge (or hostile) announced size asks for more than any disk has instead of wrapping
/// around to a small number that passes the check.
fn space_needed(total: u64, start: u64) -> u64 {
    total.saturating_sub(start).saturating_add(SPACE_MARGIN)
}

impl Fetcher {
    /// `max_concurrent` downloads run at once; more wait their turn.
    pub fn new(sources: Sources, max_concurrent: usize) -> Fetcher {
        Fetcher {
            sources,
            limit: Arc::new(Semaphore::new(max_concurrent.max(1))),
            policy: RetryPolicy::default(),
            progress: Progress::default(),
            max_size: DEFAULT_MAX_SIZE,
        }
    }

    /// Replaces the most a download of undeclared size may be ([`DEFAULT_MAX_SIZE`]). When
    /// the source declares the size (`Content-Length`, `Content-Range`, a file's length),
    /// that size is the limit instead; either way a body running past its limit fails with
    /// [`FetchError::TooLarge`] and installs nothing.
    pub fn with_max_size(mut self, bytes: u64) -> Fetcher {
        self.max_size = bytes;
        self
    }

    /// Replaces the default retry policy (5 attempts, 1 s to 30 s apart).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Fetcher {
        self.policy = policy;
        self
    }

    /// The state of every download this fetcher was asked for.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Makes `spec.dest` hold exactly the artifact (and its members, for an archive).
    pub async fn install(&self, spec: &ArtifactSpec) -> Result<Installed, FetchError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .expect("semaphore is never closed");
        // Attached to the future, not entered across its awaits: an entered span would stay
        // current on the thread for whatever other task runs there meanwhile.
        let span = tracing::info_span!("artifact", url = %spec.url, dest = %spec.dest.display());
        self.progress.update(&spec.dest, |s| {
            s.url = spec.url.clone();
            s.state = State::Downloading;
            s.error = None;
        });
        let result = tracing::Instrument::instrument(self.install_inner(spec), span).await;
        match &result {
            Ok(_) => self.progress.update(&spec.dest, |s| {
                s.state = State::Installed;
                s.error = None;
            }),
            Err(e) => self.progress.update(&spec.dest, |s| {
                s.state = State::Failed;
                s.error = Some(e.to_string());
            }),
        }
        result
    }

    async fn install_inner(&self, spec: &ArtifactSpec) -> Result<Installed, FetchError> {
        let (dest, kind) = (spec.dest.clone(), spec.digest.kind);
        let current = tokio::task::spawn_blocking(move || Digest::of_file(kind, &dest))
            .await
            .expect("hash task");
        if current.as_ref() == Some(&spec.digest) {
            set_mode(&spec.url, &spec.dest, spec.mode)?;
            let changed = self.refresh_members(spec).await?;
            return Ok(Installed {
                changed,
                ..Default::default()
            });
        }
        let mut backoff = Backoff::new(self.policy.initial, self.policy.max);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download(spec).await {
                Ok((downloaded_bytes, resumed_from)) => {
                    remove_stale_partials(&spec.dest, &spec.digest);
                    tracing::info!(
                        bytes = downloaded_bytes,
                        resumed_from,
                        attempt,
                        "artifact installed"
                    );
                    return Ok(Installed {
                        changed: true,
                        downloaded_bytes,
                        resumed_from,
                        attempts: attempt,
                    });
                }
                Err(e) if e.retryable() && attempt < self.policy.attempts => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, attempt, retry_in = ?delay, "artifact download failed; retrying");
                    self.progress.update(&spec.dest, |s| {
                        s.state = State::Retrying;
                        s.error = Some(e.to_string());
                    });
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: resume or start the partial file, stream into it while hashing on a
    /// blocking thread, verify, rename into place. Returns (bytes transferred, resume offset).
    async fn download(&self, spec: &ArtifactSpec) -> Result<(u64, u64), FetchError> {
        let url = spec.url.as_str();
        let dir = spec.dest.parent().unwrap_or(Path::new("/")).to_owned();
        std::fs::create_dir_all(&dir).map_err(io_err(url, "create directory", &dir))?;
        let partial = partial_path(&spec.dest, &spec.digest);
        let have = partial_on_disk(url, &partial)?;
        let mut hasher = spec.digest.hasher();
        if have > 0 {
            let (p, mut h) = (partial.clone(), hasher.clone());
            hasher = tokio::task::spawn_blocking(move || hash_prefix(&p, &mut h).map(|()| h))
                .await
                .expect("hash task")
                .map_err(io_err(url, "read", &partial))?;
        }
        let body = self.sources.for_url(url)?.open(url, have).await?;
        let start = body.start;
        if start != have {
            tracing::info!(had = have, "the source does not resume; starting over");
            hasher = spec.digest.hasher();
        }
        if let Some(total) = body.total {
            let need = space_needed(total, start);
            if let Some(free) = free_bytes(&dir).filter(|f| *f < need) {
                let _ = std::fs::remove_file(&partial);
                return Err(FetchError::DiskFull {
                    url: url.to_owned(),
                    dir,
                    dest: spec.dest.clone(),
                    need_mib: need.div_ceil(1 << 20),
                    free_mib: free >> 20,
                });
            }
        }
        // Every download has a limit, so a body that never ends cannot fill the disk.
        let (limit, declared) = match body.total {
            Some(total) => (total, true),
            None => (self.max_size, false),
        };
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            limit,
            declared,
        };
        if start > limit {
            let _ = std::fs::remove_file(&partial);
            return Err(too_large());
        }
        self.progress.update(&spec.dest, |s| {
            s.state = State::Downloading;
            s.bytes_done = start;
            s.bytes_total = body.total;
            s.resumed_from = start;
        });

        // Writing and hashing run on a blocking thread while this task receives the next
        // chunks; the bounded channel keeps at most a few chunks in memory.
        let (tx, mut rx) = mpsc::channel::<Bytes>(8);
        let writer_path = partial.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut f = open_partial(&writer_path, start).map_err(|e| ("open", e))?;
            let mut written = 0u64;
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
                f.write_all(&chunk).map_err(|e| ("write", e))?;
                written += chunk.len() as u64;
            }
            f.sync_all().map_err(|e| ("write", e))?;
            Ok::<_, (&'static str, std::io::Error)>((hasher, written))
        });
        let mut chunks = body.chunks;
        let mut received = 0u64;
        let mut transfer_error = None;
        let mut over_limit = false;
        loop {
            match chunks.next_chunk().await {
                Ok(Some(b)) => {
                    if (start + received).saturating_add(b.len() as u64) > limit {
                        over_limit = true;
                        break; // nothing past the limit is written
                    }
                    received += b.len() as u64;
                    self.progress
                        .update(&spec.dest, |s| s.bytes_done = start + received);
                    if tx.send(b).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    transfer_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer.await.expect("writer task");
        if over_limit {
            tracing::warn!(limit, "artifact body exceeds its limit; abandoned");
            let _ = std::fs::remove_file(&partial);
            return Err(too_large());
        }
        let (hasher, written) = match written {
            Ok(w) => w,
            Err((_, e)) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                let _ = std::fs::remove_file(&partial);
                return Err(FetchError::DiskFull {
                    url: url.to_owned(),
                    dir: dir.clone(),
                    dest: spec.dest.clone(),
                    need_mib: body.total.unwrap_or(0).div_ceil(1 << 20),
                    free_mib: free_bytes(&dir).unwrap_or(0) >> 20,
                });
            }
            Err((action, e)) => return Err(io_err(url, action, &partial)(e)),
        };
        if let Some(e) = transfer_error {
            return Err(e); // the partial file keeps what arrived, for the next attempt
        }
        let size = start + written;
        if let Some(total) = body.total
            && size < total
        {
            return Err(FetchError::Truncated {
                url: url.to_owned(),
                got: size,
                expected: total,
            });
        }
        let actual = hasher.finish();
        if actual != spec.digest {
            let _ = std::fs::remove_file(&partial);
            return Err(FetchError::Mismatch {
                url: url.to_owned(),
                expected: spec.digest.to_string(),
                actual: actual.to_string(),
                resumed: start > 0,
            });
        }
        // An archive's members go into place before the archive itself: if extraction fails
        // (a missing member, a full disk) or is interrupted, the previous archive is still
        // the installed one and the next attempt extracts again.
        if !spec.members.is_empty() {
            let (p, d, digest, members) = (
                partial.clone(),
                spec.dest.clone(),
                spec.digest.clone(),
                spec.members.clone(),
            );
            let extracted = tokio::task::spawn_blocking(move || {
                archive::extract(&p, &members).and_then(|()| archive::record(&d, &digest, &members))
            })
            .await
            .expect("extract task");
            if let Err(e) = extracted {
                let _ = std::fs::remove_file(&partial); // nothing of a failed install is left behind
                return Err(e);
            }
        }
        chmod_nofollow(&partial, spec.mode).map_err(io_err(url, "chmod", &partial))?;
        std::fs::rename(&partial, &spec.dest).map_err(io_err(
            url,
            "rename into place",
            &spec.dest,
        ))?;
        fsutil::sync_dir(&dir).map_err(|e| FetchError::Io {
            url: url.to_owned(),
            action: "fsync directory",
            path: dir.clone(),
            message: e.source.to_string(),
        })?;
        Ok((received, start))
    }

    /// For an archive already in place: re-extracts all members unless each is exactly as
    /// the last extraction of this archive left it (size and modification time).
    async fn refresh_members(&self, spec: &ArtifactSpec) -> Result<bool, FetchError> {
        if spec.members.is_empty()
            || archive::members_current(&spec.dest, &spec.digest, &spec.members)
        {
            return Ok(false);
        }
        let (d, digest, members) = (spec.dest.clone(), spec.digest.clone(), spec.members.clone());
        tokio::task::spawn_blocking(move || {
            archive::extract(&d, &members).and_then(|()| archive::record(&d, &digest, &members))
        })
        .await
        .expect("extract task")?;
        Ok(true)
    }
}

/// Bytes an earlier attempt left in the partial file. Anything else at that path — a
/// symbolic link (planted so the download writes through it), a file with other hard links,
/// a directory — is removed (the name only: what a link points to is never touched) and the
/// download starts from zero.
fn partial_on_disk(url: &str, partial: &Path) -> Result<u64, FetchError> {
    match std::fs::symlink_metadata(partial) {
        Ok(m) if not_plain(&m).is_none() => Ok(m.len()),
        Ok(m) => {
            tracing::warn!(
                path = %partial.display(),
                found = %not_plain(&m).unwrap_or_default(),
                "not a plain partial file: removing it (without following it) and starting over"
            );
            std::fs::remove_file(partial).map_err(io_err(
                url,
                "remove what is not a plain partial file at",
                partial,
            ))?;
            Ok(0)
        }
        Err(_) => Ok(0),
    }
}

/// What is at a partial file's path when it is not a plain file of ours (one link, ours alone).
fn not_plain(m: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let t = m.file_type();
    if t.is_symlink() {
        Some("a symbolic link".into())
    } else if t.is_dir() {
        Some("a directory".into())
    } else if !t.is_file() {
        Some("a special file".into())
    } else if m.nlink() != 1 {
        Some(format!("a file with {} hard links", m.nlink()))
    } else {
        None
    }
}

/// Opens the partial file to write from `start` on: never through a symbolic link
/// (`O_NOFOLLOW`), and only a plain file with no other hard link, so that nothing planted at
/// the partial path (say a link to `/etc/passwd`) is ever written to. [`partial_on_disk`]
/// removes such a thing beforehand; this catches one planted in between.
fn open_partial(path: &Path, start: u64) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => std::io::Error::new(
                e.kind(),
                "a symbolic link is in its place; refusing to write through it",
            ),
            _ => e,
        })?;
    if let Some(found) = not_plain(&f.metadata()?) {
        return Err(std::io::Error::other(format!(
            "{found} is in its place; refusing to write to it"
        )));
    }
    f.set_len(start)?;
    f.seek(std::io::SeekFrom::Start(start))?;
    Ok(f)
}

/// `chmod` of the verified partial file through a descriptor opened with `O_NOFOLLOW`, so a
/// link put in its place is not followed to change another file's mode.
fn chmod_nofollow(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?
        .set_permissions(std::fs::Permissions::from_mode(mode))
}

fn hash_prefix(path: &Path, hasher: &mut Hasher) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn set_mode(url: &str, path: &Path, mode: u32) -> Result<(), FetchError> {
    let current = std::fs::metadata(path)
        .map_err(io_err(url, "stat", path))?
        .permissions()
        .mode()
        & 0o7777;
    if current != mode & 0o7777 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(url, "chmod", path))?;
    }
    Ok(())
}

/// Partial downloads of other versions of this destination are of no further use.
fn remove_stale_partials(dest: &Path, keep: &Digest) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let keep = partial_path(dest, keep);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".partial") && e.path() != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Body, BoxFuture, Chunks, Source};

    /// A source under the `canned:` scheme: announces `total` (true or not), then delivers
    /// `data` once, or over and over when `endless`.
    struct Canned {
        total: Option<u64>,
        data: Bytes,
        endless: bool,
    }

    struct CannedChunks {
        data: Option<Bytes>,
        endless: bool,
    }

    impl Chunks for CannedChunks {
        fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, FetchError>> {
            let next = if self.endless {
                self.data.clone()
            } else {
                self.data.take()
            };
            Box::pin(async move { Ok(next) })
        }
    }

    impl Source for Canned {
        fn open<'a>(
            &'a self,
            _url: &'a str,
            _offset: u64,
        ) -> BoxFuture<'a, Result<Body, FetchError>> {
            Box::pin(async move {
                Ok(Body {
                    start: 0,
                    total: self.total,
                    chunks: Box::new(CannedChunks {
                        data: Some(self.data.clone()),
                        endless: self.endless,
                    }),
                })
            })
        }
    }

    const URL: &str = "canned:artifact";

    fn fetcher(source: Canned) -> Fetcher {
        let mut sources = Sources::standard();
        sources.register("canned", Arc::new(source));
        Fetcher::new(sources, 1).with_policy(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        })
    }

    fn spec(dest: &Path, data: &[u8]) -> ArtifactSpec {
        let mut h = Hasher::new(crate::DigestKind::Sha256);
        h.update(data);
        ArtifactSpec {
            url: URL.to_owned(),
            digest: h.finish(),
            dest: dest.to_owned(),
            mode: 0o755,
            members: Vec::new(),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    /// hardening #11, case 2: `total - start + margin` overflowed for a huge announced size
    /// (a panic in debug builds, a tiny wrapped-around need in release builds).
    #[test]
    fn space_needed_saturates_for_huge_sizes() {
        assert_eq!(space_needed(u64::MAX, 0), u64::MAX);
        assert_eq!(space_needed(u64::MAX - 1, 1), u64::MAX);
        assert_eq!(space_needed(u64::MAX - SPACE_MARGIN / 2, 0), u64::MAX);
        assert_eq!(space_needed(300, 100), 200 + SPACE_MARGIN);
        assert_eq!(space_needed(100, 300), SPACE_MARGIN);
    }

    /// hardening #11, case 2: a u64::MAX-ish announced size is refused with the free-space
    /// error before a byte is written, never passed because the need wrapped around.
    #[tokio::test]
    async fn huge_announced_size_is_refused_as_disk_full() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tool");
        std::fs::write(&dest, b"previous").unwrap();
        for total in [u64::MAX, u64::MAX - 1, u64::MAX - SPACE_MARGIN / 2] {
            let f = fetcher(Canned {
                total: Some(total),
                data: Bytes::from_static(b"small"),
                endless: false,
            });
            let err = f
                .install(&spec(&dest, b"small"))
                .await
                .expect_err("a size no disk holds must be refused");
            assert!(matches!(err, FetchError::DiskFull { .. }), "{total}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains("not enough space") && msg.contains(URL),
                "{msg}"
            );
            assert_eq!(std::fs::read(&dest).unwrap(), b"previous", "{total}");
            assert_eq!(names(tmp.path()), ["tool"], "{total}: no partial file");
        }
    }

    /// hardening #11, case 1: a body of undeclared size that never ends is abandoned at the
    /// fetcher's maximum; the partial file is removed and the previous version stays.
    #[tokio::test]
    async fn endless_body_of_undeclared_size_stops_at_the_maximum() {
        assert_eq!(
            Fetcher::new(Sources::standard(), 1).max_size,
            DEFAULT_MAX_SIZE
        );
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tool");
        std::fs::write(&dest, b"previous").unwrap();
        let f = fetcher(Canned {
            total: None,
            data: Bytes::from(vec![b'x'; 64 << 10]),
            endless: true,
        })
        .with_max_size(1 << 20);
        let err = f
            .install(&spec(&dest, b"whatever"))
            .await
            .expect_err("an endless body must not install");
        assert!(
            matches!(
                err,
                FetchError::TooLarge {
                    limit: 1048576,
                    declared: false,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        for w in [
            URL,
            "1048576 bytes",
            "undeclared size",
            "nothing was installed",
        ] {
            assert!(msg.contains(w), "{msg:?} should mention {w:?}");
        }
        assert!(!err.retryable());
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
        assert_eq!(names(tmp.path()), ["tool"], "the partial file is removed");
    }

    /// hardening #11, case 1: a body running past the size its source declared is abandoned
    /// there, and one of exactly the maximum still installs.
    #[tokio::test]
    async fn body_past_its_declared_size_is_abandoned_and_the_limit_itself_is_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("tool");
        let f = fetcher(Canned {
            total: Some(100_000),
            data: Bytes::from(vec![b'x'; 64 << 10]),
            endless: true,
        });
        let err = f.install(&spec(&dest, b"whatever")).await.unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::TooLarge {
                    limit: 100_000,
                    declared: true,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("the size the source declared"),
            "{err}"
        );
        assert!(names(tmp.path()).is_empty(), "nothing left behind");

        let data = vec![b'y'; 1000];
        let f = fetcher(Canned {
            total: None,
            data: Bytes::from(data.clone()),
            endless: false,
        })
        .with_max_size(1000);
        let installed = f.install(&spec(&dest, &data)).await.unwrap();
        assert_eq!(installed.downloaded_bytes, 1000);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }

    /// hardening #11, case 4: a link planted at the partial path between the check and the
    /// open (a race [`partial_on_disk`] cannot close) is not written through: opening it
    /// fails with a clear error, and what it points to is untouched (nor created).
    #[test]
    fn open_partial_refuses_links_and_leaves_their_targets_alone() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("passwd");
        std::fs::write(&victim, b"root:x:0:0\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();

        let link = tmp.path().join(".tool.0123.partial");
        symlink(&victim, &link).unwrap();
        let e = open_partial(&link, 0).unwrap_err();
        assert!(
            e.to_string().contains("a symbolic link is in its place"),
            "{e}"
        );
        assert!(chmod_nofollow(&link, 0o777).is_err());

        let dangling = tmp.path().join(".dangling.partial");
        symlink(tmp.path().join("created"), &dangling).unwrap();
        let e = open_partial(&dangling, 0).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(
            !tmp.path().join("created").exists(),
            "created through a link"
        );

        let hard = tmp.path().join(".hard.partial");
        std::fs::hard_link(&victim, &hard).unwrap();
        let e = open_partial(&hard, 0).unwrap_err();
        assert!(e.to_string().contains("a file with 2 hard links"), "{e}");

        assert_eq!(std::fs::read(&victim).unwrap(), b"root:x:0:0\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
    }
}
