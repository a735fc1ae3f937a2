//! The controller's verified artifact mirror in `.pangaea/artifacts/`: each upstream
//! artifact is fetched once per cluster through the same pipeline the agents use (so it is
//! verified, resumable and atomic), stored content-addressed as `<algorithm>/<hex>`, and
//! served to agents over the mutual-TLS channel. A small JSON sidecar next to each blob
//! records where it came from.
//!
//! Imported files (air-gapped use) are stored under both their SHA-256 and SHA-512 (a hard
//! link), so they match a pin of either kind.

use pangaea_artifact::{ArtifactSpec, Digest, DigestKind, FetchError, Fetcher, Sources};
use pangaea_core::fsutil;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A mirrored blob, as recorded in its JSON sidecar.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MirrorEntry {
    /// The blob's digest, `<algorithm>:<hex>`.
    pub digest: String,
    /// Size in bytes (0 if the blob could not be read when recorded).
    pub size: u64,
    /// Where the content came from: its upstream URL or the imported file.
    pub source: String,
    /// When the entry was recorded, unix seconds.
    pub added_at: i64,
}

/// The mirror directory, and the fetcher that fills it.
pub struct Mirror {
    dir: PathBuf,
    fetcher: Fetcher,
}

impl Mirror {
    /// A mirror kept in `dir`; nothing is read or created until used.
    pub fn new(dir: &Path) -> Mirror {
        Mirror {
            dir: dir.to_owned(),
            fetcher: Fetcher::new(Sources::standard(), 3),
        }
    }

    /// Where the blob with digest `d` is (or would be) stored: `<dir>/<algorithm>/<hex>`.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        pangaea_artifact::blob_path(&self.dir, d)
    }

    fn sidecar(&self, d: &Digest) -> PathBuf {
        self.dir
            .join(d.algorithm())
            .join(format!("{}.json", d.hex()))
    }

    /// The mirror's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds the file at `tmp` (in the mirror's directory, so that a rename moves it) under
    /// its SHA-256, with a link under its SHA-512, recording `source`: fsynced, renamed,
    /// directory fsynced. Content already present is left as it is and `tmp` removed.
    pub fn adopt(&self, tmp: &Path, source: &str) -> std::io::Result<MirrorEntry> {
        let bad = |what: &str| std::io::Error::other(format!("{what} {}", tmp.display()));
        let s256 = Digest::of_file(DigestKind::Sha256, tmp).ok_or_else(|| bad("cannot read"))?;
        let s512 = Digest::of_file(DigestKind::Sha512, tmp).ok_or_else(|| bad("cannot read"))?;
        let dest = self.blob_path(&s256);
        std::fs::create_dir_all(dest.parent().expect("blob has a parent"))?;
        if dest.is_file() {
            std::fs::remove_file(tmp)?;
        } else {
            std::fs::File::open(tmp)?.sync_all()?;
            std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            std::fs::rename(tmp, &dest)?;
            fsutil::sync_dir(dest.parent().expect("blob has a parent"))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let link = self.blob_path(&s512);
        std::fs::create_dir_all(link.parent().expect("blob has a parent"))?;
        if !link.exists() {
            std::fs::hard_link(&dest, &link)?;
        }
        let record = |d: &Digest| {
            self.record(d, source)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        record(&s512)?;
        record(&s256)
    }

    /// Whether the blob with digest `d` is present (its sidecar is not checked).
    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// The URL under which agents fetch `d` from this mirror.
    pub fn url(d: &Digest) -> String {
        pangaea_artifact::MirrorUrl::new(d.clone()).to_string()
    }

    fn record(&self, d: &Digest, source: &str) -> Result<MirrorEntry, FetchError> {
        let path = self.blob_path(d);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let entry = MirrorEntry {
            digest: d.to_string(),
            size,
            source: source.to_owned(),
            added_at: crate::records::now(),
        };
        fsutil::atomic_write(
            &self.sidecar(d),
            &serde_json::to_vec_pretty(&entry).expect("json"),
            0o600,
        )
        .map_err(|e| FetchError::Io {
            url: source.into(),
            action: "record",
            path: e.path.clone(),
            message: e.source.to_string(),
        })?;
        Ok(entry)
    }

    /// Makes the mirror hold `digest`, fetching it from `url` if it does not yet.
    pub async fn ensure(&self, url: &str, digest: &Digest) -> Result<MirrorEntry, FetchError> {
        if self.has(digest)
            && let Some(e) = self.entry(digest)
        {
            return Ok(e);
        }
        let spec = ArtifactSpec {
            url: url.to_owned(),
            digest: digest.clone(),
            dest: self.blob_path(digest),
            mode: 0o600,
            members: vec![],
        };
        self.fetcher.install(&spec).await?;
        self.record(digest, url)
    }

    /// Imports a local file; returns its SHA-256 and SHA-512 entries.
    pub async fn import(&self, file: &Path) -> Result<[MirrorEntry; 2], FetchError> {
        let source = file.display().to_string();
        let f = file.to_owned();
        let (s256, s512) = tokio::task::spawn_blocking(move || {
            (
                Digest::of_file(DigestKind::Sha256, &f),
                Digest::of_file(DigestKind::Sha512, &f),
            )
        })
        .await
        .expect("hash task");
        let (Some(s256), Some(s512)) = (s256, s512) else {
            return Err(FetchError::Io {
                url: source.clone(),
                action: "read",
                path: file.to_owned(),
                message: "cannot read the file".into(),
            });
        };
        let abs = std::fs::canonicalize(file).map_err(|e| FetchError::Io {
            url: source.clone(),
            action: "resolve",
            path: file.to_owned(),
            message: e.to_string(),
        })?;
        let url = format!("file://{}", abs.display());
        let spec = ArtifactSpec {
            url: url.clone(),
            digest: s256.clone(),
            dest: self.blob_path(&s256),
            mode: 0o600,
            members: vec![],
        };
        self.fetcher.install(&spec).await?;
        let link = self.blob_path(&s512);
        std::fs::create_dir_all(link.parent().expect("blob has a parent")).map_err(|e| {
            FetchError::Io {
                url: url.clone(),
                action: "create directory",
                path: link.clone(),
                message: e.to_string(),
            }
        })?;
        if !link.exists() {
            std::fs::hard_link(self.blob_path(&s256), &link).map_err(|e| FetchError::Io {
                url: url.clone(),
                action: "link",
                path: link.clone(),
                message: e.to_string(),
            })?;
        }
        Ok([self.record(&s256, &source)?, self.record(&s512, &source)?])
    }

    /// Copies `file` into the mirror under its SHA-256, hashing while it copies (the file is
    /// read once), and records `file` as its source; a file larger than `limit` bytes is
    /// refused once the copy passes it. Content already present is kept as it is. Blocking
    /// (it reads the whole file): run it on the blocking pool.
    pub fn add_file(&self, file: &Path, limit: u64) -> Result<MirrorEntry, FetchError> {
        self.add_file_as(file, &file.display().to_string(), limit)
    }

    /// [`Mirror::add_file`], recording `source` as where the content came from.
    pub fn add_file_as(
        &self,
        file: &Path,
        source: &str,
        limit: u64,
    ) -> Result<MirrorEntry, FetchError> {
        use std::io::{Read, Write};
        let source = source.to_owned();
        let io = |action: &'static str, path: &Path| {
            let (source, path) = (source.clone(), path.to_owned());
            move |e: std::io::Error| FetchError::Io {
                url: source,
                action,
                path,
                message: e.to_string(),
            }
        };
        let dir = self.dir.join("sha256");
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let mut input = std::fs::File::open(file).map_err(io("open", file))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".incoming.")
            .tempfile_in(&dir)
            .map_err(io("create a temporary file in", &dir))?;
        let mut hasher = pangaea_artifact::digest::Hasher::new(DigestKind::Sha256);
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = input.read(&mut buf).map_err(io("read", file))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                return Err(FetchError::TooLarge {
                    url: source,
                    limit,
                    declared: false,
                });
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io("write", tmp.path()))?;
        }
        let digest = hasher.finish();
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            tmp.as_file().sync_all().map_err(io("sync", tmp.path()))?;
            tmp.persist(&dest)
                .map_err(|e| io("rename into", &dest)(e.error))?;
            fsutil::sync_dir(&dir)
                .map_err(|e| io("sync", &dir)(std::io::Error::other(e.to_string())))?;
        }
        self.record(&digest, &source)
    }

    /// The sidecar entry of `d`; `None` unless both the sidecar and the blob are present.
    pub fn entry(&self, d: &Digest) -> Option<MirrorEntry> {
        let text = std::fs::read(self.sidecar(d)).ok()?;
        serde_json::from_slice(&text).ok().filter(|_| self.has(d))
    }

    /// Every blob present, with its sidecar.
    pub fn list(&self) -> Vec<MirrorEntry> {
        let mut out = Vec::new();
        for algo in ["sha256", "sha512"] {
            for e in std::fs::read_dir(self.dir.join(algo))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(d) = Digest::parse(&format!("{algo}:{name}"))
                    .ok()
                    .and_then(|d| self.entry(&d))
                {
                    out.push(d);
                }
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }
}

/// Points every artifact of `plan` whose content the mirror at `dir` holds to the mirror,
/// so nodes fetch it from the controller instead of the internet.
pub fn localize(dir: &Path, plan: &mut crate::assign::Plan) {
    for a in &mut plan.artifacts {
        if let Ok(d) = Digest::parse(&a.digest)
            && dir.join(d.algorithm()).join(d.hex()).is_file()
        {
            a.url = Mirror::url(&d);
        }
    }
}
