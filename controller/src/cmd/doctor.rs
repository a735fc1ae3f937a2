//! `pangaea-ctl doctor [--install]`: the host's requirements for the configured cluster
//! ([`crate::doctor`]), and with `--install` apt-get for what is missing.

use super::{Ctx, print_data};
use crate::cli::Output;
use crate::doctor::Outcome;
use anyhow::Context;

/// Runs `doctor`.
pub fn run(ctx: &Ctx, install: bool, output: Output) -> anyhow::Result<()> {
    let loaded = pangaea_compiler::config::Loaded::load(&ctx.config)?;
    let path = std::env::var("PATH").unwrap_or_default();
    let check = || crate::doctor::run(&loaded, &path, ctx.state.path(), &ctx.image_cache);
    let mut checks = check();
    if install {
        let wanted = crate::doctor::packages(&checks);
        if !wanted.is_empty() {
            apt_install(&wanted, &path)?;
            checks = check();
        }
    }
    print_data(output, &checks, || {
        for c in &checks {
            let mark = match c.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "warn",
                Outcome::Missing => "MISSING",
            };
            crate::outln!("{mark:<7} {:<22} {}", c.name, c.found);
            if let Some(fix) = &c.fix {
                crate::outln!("{:<7} {:<22} why: {}; fix: {fix}", "", "", c.why);
            }
        }
        Ok(())
    })?;
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| c.outcome == Outcome::Missing)
        .map(|c| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(crate::exit::Refusal(format!(
            "this host lacks what `up` needs: {} (`pangaea-ctl doctor --install` installs what apt can)",
            missing.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// `apt-get install` of the packages apt knows (the others are named, with their fix).
fn apt_install(packages: &[String], path: &str) -> anyhow::Result<()> {
    let apt = crate::doctor::find("apt-get", path).context(
        "no apt-get on this host: install what is missing by hand (see the fixes below)",
    )?;
    let known = |p: &str| {
        std::process::Command::new("apt-cache")
            .args(["show", "--no-all-versions", p])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let (installable, unknown): (Vec<&String>, Vec<&String>) =
        packages.iter().partition(|p| known(p));
    for p in &unknown {
        crate::errln!(
            "{p}: apt does not know it here (its vendor's repository is not set up); see its fix"
        );
    }
    if installable.is_empty() {
        return Ok(());
    }
    super::step(&format!(
        "apt-get install {}",
        installable
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let status = std::process::Command::new(apt)
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(installable.iter().map(|s| s.as_str()))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get")?;
    anyhow::ensure!(
        status.success(),
        "apt-get install failed ({status}); as root? (`sudo pangaea-ctl doctor --install`)"
    );
    Ok(())
}
