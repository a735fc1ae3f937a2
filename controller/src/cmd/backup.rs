//! `pangaea-ctl backup FILE` and `pangaea-ctl restore FILE` ([`crate::backup`]).

use super::Ctx;
use crate::backup::{PASSPHRASE_ENV, passphrase};
use std::path::Path;

/// Writes the encrypted backup.
pub async fn backup(ctx: &Ctx, file: &Path, passphrase_file: Option<&Path>) -> anyhow::Result<()> {
    let pass = passphrase(passphrase_file, std::env::var(PASSPHRASE_ENV).ok())?;
    let s = crate::backup::backup(&ctx.state, file, pass).await?;
    crate::outln!(
        "backup of {} written to {}: {} files, {} encrypted (age, passphrase); keep it off this machine",
        ctx.state.path().display(),
        file.display(),
        s.files,
        super::human(s.bytes)
    );
    Ok(())
}

/// Restores from a backup; refused while the cluster's controller runs.
pub async fn restore(
    ctx: &Ctx,
    file: &Path,
    passphrase_file: Option<&Path>,
    force: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !crate::daemon::is_up(&ctx.state).await,
        "the cluster's controller runs on {}: stop it first (`pangaea-ctl stop`)",
        ctx.state.socket().display()
    );
    let pass = passphrase(passphrase_file, std::env::var(PASSPHRASE_ENV).ok())?;
    let kept = crate::backup::restore(&ctx.state, file, pass, force)?;
    if let Some(k) = kept {
        crate::outln!("the previous directory is kept at {}", k.display());
    }
    crate::outln!(
        "{} restored from {}; `pangaea-ctl up` (or `start`) goes on with the cluster",
        ctx.state.path().display(),
        file.display()
    );
    Ok(())
}
