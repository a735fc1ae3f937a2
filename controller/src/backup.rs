//! `pangaea-ctl backup FILE` and `restore FILE`: the cluster's `.pangaea/` — its CA keys,
//! secrets and state — must not be one laptop away from loss.
//!
//! A backup is an [age](https://age-encryption.org) file encrypted to a passphrase (age's
//! scrypt recipient: the key is derived from the passphrase with scrypt, the content sealed
//! with ChaCha20-Poly1305), so the `age` command decrypts it too (`age -d FILE`). Inside is a
//! `.tar.gz` of what [`StateDir::backed_up`] lists, plus `state.redb`: a copy of the state
//! store made by the controller from one snapshot ([`crate::store::Store::copy_to`]), so a
//! backup taken while the controller runs is consistent. The file is written beside FILE
//! (0600) and renamed over it once complete.
//!
//! A restore decrypts and unpacks into a new directory beside `.pangaea/`, and only then
//! puts it in place; an existing `.pangaea/` with a PKI is kept aside (with `--force`), never
//! overwritten, except what belongs to the machine rather than the backup
//! ([`StateDir::machine_local`]: the mirror, the nodes' files), which moves into the
//! restored directory. A wrong passphrase or a damaged file changes nothing.

use crate::admin::Backend;
use crate::state_dir::StateDir;
use age::secrecy::{ExposeSecret, SecretString};
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The environment variable a passphrase may come from.
pub const PASSPHRASE_ENV: &str = "PANGAEA_BACKUP_PASSPHRASE";

/// The shortest passphrase accepted for a new backup.
pub const MIN_PASSPHRASE: usize = 12;

/// The largest decrypted archive a restore reads (a backup holds keys and a small store).
const MAX_ARCHIVE: u64 = 1 << 30;

/// The passphrase: the first line of `file` (`-`: standard input), else `$PANGAEA_BACKUP_PASSPHRASE`.
pub fn passphrase(file: Option<&Path>, env: Option<String>) -> anyhow::Result<SecretString> {
    let text = match file {
        // One line: typed at a terminal, Enter ends it.
        Some(p) if p == Path::new("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_line(&mut s)
                .context("read the passphrase from standard input")?;
            s
        }
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("read the passphrase file {}", p.display()))?,
        None => env.with_context(|| {
            format!("give the backup's passphrase with --passphrase-file FILE (`-` for standard input) or in ${PASSPHRASE_ENV}")
        })?,
    };
    let line = text.lines().next().unwrap_or_default().to_owned();
    if line.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(SecretString::from(line))
}

/// What a backup holds.
#[derive(Debug)]
pub struct Summary {
    /// Files in it.
    pub files: usize,
    /// Bytes of the encrypted file.
    pub bytes: u64,
}

/// Writes an encrypted backup of `state` to `dest`.
pub async fn backup(
    state: &StateDir,
    dest: &Path,
    passphrase: SecretString,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        passphrase.expose_secret().chars().count() >= MIN_PASSPHRASE,
        "the passphrase is shorter than {MIN_PASSPHRASE} characters: it is all that protects the cluster's CA keys"
    );
    anyhow::ensure!(
        state.pki().is_dir(),
        "{} holds no cluster (no PKI): nothing to back up",
        state.path().display()
    );
    let staging = tempfile::Builder::new()
        .prefix("backup-")
        .tempdir_in(state.path())
        .context("a staging directory")?;
    let tree = staging.path().join("tree");
    std::fs::create_dir(&tree)?;
    let mut files = 0;
    for src in state.backed_up() {
        if src.exists() {
            let name = src.file_name().expect("a name");
            files += copy_tree(&src, &tree.join(name))?;
        }
    }
    let store_copy = tree.join(
        state
            .store()
            .file_name()
            .expect("the store has a file name"),
    );
    let store_copy = std::path::absolute(&store_copy)?;
    Backend::connect(state)
        .await?
        .copy_store(&store_copy)
        .await
        .context("copy the state store")?;
    files += 1;
    let archive = staging.path().join("backup.tar.gz");
    pangaea_artifact::tree::pack(&tree, &archive).context("pack the backup")?;

    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut out = tempfile::Builder::new()
        .prefix(".backup-")
        .tempfile_in(dir)
        .with_context(|| format!("a temporary file in {}", dir.display()))?;
    {
        let mut writer = age::Encryptor::with_user_passphrase(passphrase)
            .wrap_output(out.as_file_mut())
            .context("start encrypting")?;
        let mut input = std::fs::File::open(&archive)?;
        std::io::copy(&mut input, &mut writer).context("encrypt")?;
        writer.finish().context("finish encrypting")?.flush()?;
    }
    out.as_file().sync_all()?;
    let bytes = out.as_file().metadata()?.len();
    out.persist(dest)
        .map_err(|e| anyhow::anyhow!("rename into {}: {}", dest.display(), e.error))?;
    pangaea_core::fsutil::sync_dir(dir)?;
    Ok(Summary { files, bytes })
}

/// Copies the file or directory `src` to `dest` (new), file modes kept; the number of files.
fn copy_tree(src: &Path, dest: &Path) -> anyhow::Result<usize> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.is_file() {
        std::fs::copy(src, dest).with_context(|| format!("copy {}", src.display()))?;
        return Ok(1);
    }
    anyhow::ensure!(
        meta.is_dir(),
        "{} is neither a file nor a directory",
        src.display()
    );
    std::fs::create_dir(dest)?;
    std::fs::set_permissions(dest, meta.permissions())?;
    let mut n = 0;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        n += copy_tree(&e.path(), &dest.join(e.file_name()))?;
    }
    Ok(n)
}

/// Restores the backup `src` into `state`. An existing directory with a PKI is refused
/// unless `force`, and then kept aside; returns where, if it was.
pub fn restore(
    state: &StateDir,
    src: &Path,
    passphrase: SecretString,
    force: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let target = state.path();
    if target.join("pki").exists() && !force {
        return Err(crate::exit::Refusal(format!(
            "{} already holds a cluster (its PKI): restoring would replace it; pass --force to keep it aside and restore",
            target.display()
        ))
        .into());
    }
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".pangaea-restore-")
        .tempdir_in(parent)
        .with_context(|| format!("a working directory in {}", parent.display()))?;
    let archive = work.path().join("backup.tar.gz");
    {
        let input = std::fs::File::open(src).with_context(|| format!("open {}", src.display()))?;
        let not_ours = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{} cannot be decrypted: {e} (a pangaea-ctl backup is an age file encrypted to a passphrase)",
                src.display()
            )
        };
        let decryptor =
            age::Decryptor::new(std::io::BufReader::new(input)).map_err(|e| not_ours(&e))?;
        if !decryptor.is_scrypt() {
            return Err(not_ours(&"it is not encrypted to a passphrase"));
        }
        let identity = age::scrypt::Identity::new(passphrase);
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                    anyhow::anyhow!("{}: wrong passphrase", src.display())
                }
                e => not_ours(&e),
            })?;
        let mut out = std::fs::File::create(&archive)?;
        let copied = std::io::copy(&mut (&mut reader).take(MAX_ARCHIVE + 1), &mut out)
            .map_err(|e| not_ours(&e))?;
        anyhow::ensure!(
            copied <= MAX_ARCHIVE,
            "{} is larger than a backup can be",
            src.display()
        );
    }
    let unpacked = work.path().join("pangaea");
    pangaea_artifact::tree::unpack(&archive, &unpacked)
        .map_err(|e| anyhow::anyhow!("{}: {e}", src.display()))?;
    anyhow::ensure!(
        unpacked.join("pki").is_dir() && unpacked.join("state.redb").is_file(),
        "{} is not a pangaea-ctl backup: no PKI or state store in it",
        src.display()
    );
    let kept = if target.exists() {
        let aside = parent.join(format!(
            "{}.before-restore-{}",
            target
                .file_name()
                .map_or("pangaea".into(), |n| n.to_string_lossy()),
            crate::records::now()
        ));
        std::fs::rename(target, &aside)
            .with_context(|| format!("move {} aside", target.display()))?;
        Some(aside)
    } else {
        None
    };
    // What is not in a backup stays with the machine: the mirror, the nodes' files.
    if let Some(aside) = &kept {
        let restored = StateDir::new(&unpacked);
        for (from, to) in StateDir::new(aside)
            .machine_local()
            .iter()
            .zip(restored.machine_local())
        {
            if from.exists() {
                std::fs::rename(from, &to).with_context(|| {
                    format!("keep {} in the restored directory", from.display())
                })?;
            }
        }
    }
    std::fs::rename(&unpacked, target)
        .with_context(|| format!("put the restored directory at {}", target.display()))?;
    pangaea_core::fsutil::sync_dir(parent)?;
    Ok(kept)
}
