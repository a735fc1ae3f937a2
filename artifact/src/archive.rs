//! Extracting named members from a verified `.tar.gz` (Kubernetes server bundle, etcd and
//! containerd releases). Only members asked for are written, each through a temporary file
//! that is renamed into place once *all* of them were found, so a missing member installs
//! nothing. Member names are compared without a leading `./`. A wanted member that is not a
//! regular file (a symbolic or hard link, a directory, a device) is refused, again installing
//! nothing: its data is empty, and a link's target is not ours to follow.

use crate::digest::Digest;
use crate::error::FetchError;
use crate::spec::Member;
use pangaea_core::fsutil;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn normalize(p: &str) -> &str {
    p.trim_start_matches("./")
}

/// Extracts `members` from the `.tar.gz` at `archive` into their destinations: all of them,
/// or (when one is missing or cannot be written) none.
pub fn extract(archive: &Path, members: &[Member]) -> Result<(), FetchError> {
    let err = |message: String| FetchError::Archive {
        archive: archive.to_owned(),
        message,
    };
    let file = std::fs::File::open(archive).map_err(|e| err(format!("open: {e}")))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::io::BufReader::with_capacity(1 << 20, file),
    ));
    let mut staged: Vec<(PathBuf, &Member)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, &Member)]| {
        staged
            .iter()
            .for_each(|(t, _)| drop(std::fs::remove_file(t)))
    };
    let entries = tar.entries().map_err(|e| err(format!("read: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            cleanup(&staged);
            err(format!("read: {e}"))
        })?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(member) = members
            .iter()
            .find(|m| normalize(&m.path) == normalize(&name))
        else {
            continue;
        };
        if staged.iter().any(|(_, m)| m.path == member.path) {
            continue;
        }
        if let Some(what) = not_a_file(&entry) {
            cleanup(&staged);
            return Err(err(format!(
                "member {name} is {what}: refused, only regular files are extracted; no member was installed"
            )));
        }
        let dir = member.dest.parent().unwrap_or(Path::new("/"));
        let tmp = fsutil::temp_path_for(&member.dest);
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            std::io::copy(&mut entry, &mut out)?;
            out.flush()?;
            out.set_permissions(std::fs::Permissions::from_mode(member.mode))?;
            out.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            cleanup(&staged);
            return Err(err(format!(
                "extract {name} to {}: {e}",
                member.dest.display()
            )));
        }
        staged.push((tmp, member));
    }
    let missing: Vec<&str> = members
        .iter()
        .filter(|m| !staged.iter().any(|(_, s)| s.path == m.path))
        .map(|m| m.path.as_str())
        .collect();
    if !missing.is_empty() {
        cleanup(&staged);
        return Err(err(format!("members not found: {}", missing.join(", "))));
    }
    for (tmp, member) in &staged {
        std::fs::rename(tmp, &member.dest)
            .map_err(|e| err(format!("rename into {}: {e}", member.dest.display())))?;
        fsutil::sync_dir(member.dest.parent().unwrap_or(Path::new("/")))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// What an entry is when it is not a regular file (a link, a directory, a device…): copying
/// its (empty) data would install an empty file in the member's place.
fn not_a_file<R: std::io::Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    use tar::EntryType;
    let kind = entry.header().entry_type();
    let target = || {
        entry
            .link_name()
            .ok()
            .flatten()
            .map(|t| t.display().to_string())
            .unwrap_or_default()
    };
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => None,
        EntryType::Symlink => Some(format!("a symbolic link to {:?}", target())),
        EntryType::Link => Some(format!("a hard link to {:?}", target())),
        other => Some(format!("not a regular file ({other:?})")),
    }
}

/// Where the record of an archive's last extraction lives: `.NAME.members` beside it.
fn record_path(archive: &Path) -> PathBuf {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    archive.with_file_name(format!(".{name}.members"))
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Extracted {
    digest: String,
    /// Member destination → (size, modification time in ns).
    members: std::collections::BTreeMap<PathBuf, (u64, u128)>,
}

fn stamp(path: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some((m.len(), t))
}

fn snapshot(digest: &Digest, members: &[Member]) -> Option<Extracted> {
    let members = members
        .iter()
        .map(|m| stamp(&m.dest).map(|s| (m.dest.clone(), s)))
        .collect::<Option<_>>()?;
    Some(Extracted {
        digest: digest.to_string(),
        members,
    })
}

/// Records that `members` were just extracted from the archive with `digest` that will be
/// (or is) at `archive`.
pub fn record(archive: &Path, digest: &Digest, members: &[Member]) -> Result<(), FetchError> {
    let err = |message: String| FetchError::Archive {
        archive: archive.to_owned(),
        message,
    };
    let snap =
        snapshot(digest, members).ok_or_else(|| err("an extracted member vanished".into()))?;
    let text = serde_json::to_vec(&snap).map_err(|e| err(e.to_string()))?;
    fsutil::atomic_write(&record_path(archive), &text, 0o644).map_err(|e| err(e.to_string()))
}

/// Whether every member is exactly as the last extraction of this archive left it.
pub fn members_current(archive: &Path, digest: &Digest, members: &[Member]) -> bool {
    let Ok(text) = std::fs::read(record_path(archive)) else {
        return false;
    };
    let Ok(recorded) = serde_json::from_slice::<Extracted>(&text) else {
        return false;
    };
    snapshot(digest, members).is_some_and(|now| now == recorded)
}
