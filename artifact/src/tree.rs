//! A directory tree as a `.tar.gz`: packed where it is made (the controller restores an
//! etcd data directory from a snapshot), unpacked on a node (the agent puts it in place).
//! Only directories and regular files travel, under relative paths without `..`; file
//! modes are kept. Unpacking writes a new directory and syncs every file and directory in
//! it, so that the caller can rename it into place knowing it is whole on disk.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

/// Packs the tree below `dir` (its entries, not `dir` itself) into the `.tar.gz` `out`.
/// Anything but directories and regular files is refused.
pub fn pack(dir: &Path, out: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    // Plain entries only (etcd preallocates its WAL files, which would otherwise become
    // GNU sparse entries): the zeros compress to almost nothing.
    tar.sparse(false);
    add(&mut tar, dir, Path::new(""))?;
    let gz = tar.into_inner()?;
    let file = gz.finish()?;
    file.sync_all()
}

fn add<W: Write>(tar: &mut tar::Builder<W>, base: &Path, rel: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(base.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = rel.join(e.file_name());
        let kind = e.file_type()?;
        if kind.is_dir() {
            tar.append_dir(&rel, base.join(&rel))?;
            add(tar, base, &rel)?;
        } else if kind.is_file() {
            tar.append_path_with_name(base.join(&rel), &rel)?;
        } else {
            return Err(std::io::Error::other(format!(
                "{} is neither a directory nor a regular file",
                base.join(&rel).display()
            )));
        }
    }
    Ok(())
}

/// Unpacks the `.tar.gz` `archive` into the new directory `dest` (mode 0700; it must not
/// exist), every file and directory synced. Entries that are not directories or regular
/// files, or whose path is absolute or climbs with `..`, are refused; on any error `dest`
/// is removed again.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|e| format!("create {}: {e}", dest.display()))?;
    let r = unpack_into(archive, dest);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    r
}

fn unpack_into(archive: &Path, dest: &Path) -> Result<(), String> {
    let file =
        std::fs::File::open(archive).map_err(|e| format!("open {}: {e}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut dirs = vec![dest.to_owned()];
    for entry in tar
        .entries()
        .map_err(|e| format!("read {}: {e}", archive.display()))?
    {
        let mut entry = entry.map_err(|e| format!("read {}: {e}", archive.display()))?;
        let path = entry
            .path()
            .map_err(|e| format!("an entry's path: {e}"))?
            .into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "entry {} is not a plain relative path: refused",
                path.display()
            ));
        }
        let to = dest.join(&path);
        let mode = entry.header().mode().unwrap_or(0o600) & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&to)
                    .map_err(|e| format!("create {}: {e}", to.display()))?;
                dirs.push(to);
            }
            tar::EntryType::Regular => {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&to)
                    .map_err(|e| format!("create {}: {e}", to.display()))?;
                std::io::copy(&mut entry, &mut out)
                    .map_err(|e| format!("write {}: {e}", to.display()))?;
                out.sync_all()
                    .map_err(|e| format!("sync {}: {e}", to.display()))?;
            }
            other => {
                return Err(format!(
                    "entry {} is a {other:?}, not a directory or regular file: refused",
                    path.display()
                ));
            }
        }
    }
    for d in dirs.iter().rev() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .and_then(|()| std::fs::File::open(d)?.sync_all())
            .map_err(|e| format!("sync {}: {e}", d.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_travels_whole_and_a_climbing_entry_is_refused() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("member/snap")).unwrap();
        std::fs::create_dir_all(src.path().join("member/wal")).unwrap();
        std::fs::write(src.path().join("member/snap/db"), b"database").unwrap();
        std::fs::write(src.path().join("member/wal/0.wal"), vec![7u8; 100_000]).unwrap();
        // A sparse file, as etcd preallocates its WAL: packed as a plain file.
        let sparse = std::fs::File::create(src.path().join("member/wal/1.wal")).unwrap();
        sparse.set_len(1 << 20).unwrap();
        let work = tempfile::tempdir().unwrap();
        let archive = work.path().join("data.tar.gz");
        pack(src.path(), &archive).unwrap();
        let dest = work.path().join("etcd");
        unpack(&archive, &dest).unwrap();
        assert_eq!(
            std::fs::read(dest.join("member/snap/db")).unwrap(),
            b"database"
        );
        assert_eq!(
            std::fs::read(dest.join("member/wal/0.wal")).unwrap().len(),
            100_000
        );
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // An existing destination is never written into.
        assert!(unpack(&archive, &dest).is_err());

        // A symlink is not packed.
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        assert!(pack(src.path(), &work.path().join("x.tar.gz")).is_err());

        // An archive with `../` in a path is refused and leaves nothing.
        let evil = work.path().join("evil.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&evil).unwrap(),
                flate2::Compression::fast(),
            );
            let mut b = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            let data = b"x";
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`: write the name bytes directly.
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let out = work.path().join("out");
        let e = unpack(&evil, &out).unwrap_err();
        assert!(e.contains("not a plain relative path"), "{e}");
        assert!(!out.exists());
        assert!(!work.path().join("escape").exists());
    }
}
