//! Artifact installation: content arrives in a temporary file beside the destination while
//! being hashed, is fsynced, verified against its SHA-256, renamed into place and the
//! directory fsynced. A wrong or partial file never reaches the destination, and the
//! previous version stays in place on any failure.
//!
//! Sources: `file://` paths (the controller's mirror and air-gapped imports are served this
//! way on the node). HTTP sources, resumable downloads and the controller mirror over mTLS
//! are the artifact pipeline's work (issue #3).

use pangaea_core::fsutil;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact {url}: unsupported source (supported: file://)")]
    UnsupportedSource { url: String },
    #[error("artifact {url}: digest {digest:?} is not 64 lowercase hex digits")]
    BadDigest { url: String, digest: String },
    #[error("artifact {url} -> {dest}: {action}: {source}")]
    Io {
        url: String,
        dest: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(
        "artifact {url}: SHA-256 mismatch (expected {expected}, got {actual}); {dest} left untouched"
    )]
    Mismatch {
        url: String,
        dest: PathBuf,
        expected: String,
        actual: String,
    },
}

/// SHA-256 of a file, streaming; `None` if it cannot be read.
pub fn sha256_file(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(hex::encode(h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Installs the artifact at `dest` unless it already has the digest. Returns whether the
/// destination changed.
pub async fn install(
    url: &str,
    sha256: &str,
    dest: &Path,
    mode: u32,
) -> Result<bool, ArtifactError> {
    let (url, sha256, dest) = (url.to_owned(), sha256.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || install_blocking(&url, &sha256, &dest, mode))
        .await
        .expect("artifact task does not panic")
}

fn install_blocking(
    url: &str,
    sha256: &str,
    dest: &Path,
    mode: u32,
) -> Result<bool, ArtifactError> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ArtifactError::BadDigest {
            url: url.into(),
            digest: sha256.into(),
        });
    }
    let current_mode = std::fs::metadata(dest)
        .map(|m| m.permissions().mode() & 0o7777)
        .ok();
    if sha256_file(dest).as_deref() == Some(sha256) {
        if current_mode != Some(mode) {
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode)).map_err(
                |source| ArtifactError::Io {
                    url: url.into(),
                    dest: dest.into(),
                    action: "chmod",
                    source,
                },
            )?;
        }
        return Ok(false);
    }
    let src = url
        .strip_prefix("file://")
        .ok_or_else(|| ArtifactError::UnsupportedSource { url: url.into() })?;
    let io = |action: &'static str| {
        move |source| ArtifactError::Io {
            url: url.into(),
            dest: dest.into(),
            action,
            source,
        }
    };
    let dir = dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io("create directory"))?;
    let tmp = fsutil::temp_path_for(dest);
    let result = (|| {
        let mut input = File::open(src).map_err(io("open source"))?;
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create temporary file"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = input.read(&mut buf).map_err(io("read source"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("write"))?;
        }
        out.sync_all().map_err(io("fsync"))?;
        let actual = hex::encode(h.finalize());
        if actual != sha256 {
            return Err(ArtifactError::Mismatch {
                url: url.into(),
                dest: dest.into(),
                expected: sha256.into(),
                actual,
            });
        }
        out.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod"))?;
        std::fs::rename(&tmp, dest).map_err(io("rename into place"))?;
        fsutil::sync_dir(dir).map_err(|e| ArtifactError::Io {
            url: url.into(),
            dest: dest.into(),
            action: "fsync directory",
            source: e.source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn installs_verifies_and_skips_when_current() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::write(&src, b"binary v1").unwrap();
        let digest = sha256_file(&src).unwrap();
        let dest = d.path().join("bin/tool");
        let url = format!("file://{}", src.display());
        assert!(install(&url, &digest, &dest, 0o755).await.unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"binary v1");
        assert!(!install(&url, &digest, &dest, 0o755).await.unwrap());

        // A wrong digest leaves the installed version in place and no temporary file.
        std::fs::write(&src, b"binary v2, corrupted").unwrap();
        let err = install(&url, &"0".repeat(64), &dest, 0o755)
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::Mismatch { .. }), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"binary v1");
        assert_eq!(
            std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
