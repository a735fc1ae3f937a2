//! The Debian package the project builds (operator experience issue #13), installed with
//! dpkg in a clean Debian: the local provider's node image (debootstrap's minbase of
//! bookworm, nothing of this workspace in it) booted as a throwaway container
//! (every write goes to an overlay's upper directory, deleted after).
//!
//! The package is built before the tests, as `.ci/run` does:
//! `cargo build --release -p pangaea-controller -p pangaea-agent && cargo deb -p
//! pangaea-controller --no-build`. A missing or stale package fails with that command.

use pangaea_tests::{binary, require_node_host};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/debian/pangaea_<version>-1_amd64.deb` of this workspace.
fn package() -> PathBuf {
    let target = binary("pangaea-ctl")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/pangaea-ctl")
        .to_owned();
    let deb = target.join(format!(
        "debian/pangaea_{}-1_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.is_file(),
        "{} not found: build it with `cargo build --release -p pangaea-controller -p pangaea-agent && cargo deb -p pangaea-controller --no-build` (.ci/run does; cargo-deb: `cargo install --locked cargo-deb`)",
        deb.display()
    );
    let release = target.join("release/pangaea-ctl");
    let (built, packed) = (
        std::fs::metadata(&release).and_then(|m| m.modified()),
        std::fs::metadata(&deb).and_then(|m| m.modified()),
    );
    if let (Ok(built), Ok(packed)) = (built, packed) {
        assert!(
            packed >= built,
            "{} is older than {}: build it again (cargo deb -p pangaea-controller --no-build)",
            deb.display(),
            release.display()
        );
    }
    deb
}

#[test]
fn the_debian_package_installs_in_a_clean_debian_and_runs() {
    require_node_host();
    let deb = package();
    let image = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pangaea_controller::provider::local::image::ensure_image(
            Path::new("/var/cache/pangaea/images"),
            &|step| eprintln!("==> {step}"),
        ))
        .expect("the node image (debootstrap)");
    let script = "set -e
! command -v pangaea-ctl
dpkg -i /tmp/pangaea.deb >/dev/null
pangaea-ctl --version
test -x /usr/bin/pangaea-agent && echo agent-beside
pangaea-agent --help >/dev/null && echo agent-runs
cd /tmp && pangaea-ctl init lab >/dev/null && pangaea-ctl --config lab/pangaea.yaml cost -o json | grep -q '\"cluster\"' && echo init-and-cost
test -f /usr/share/doc/pangaea/configuration.md && echo docs
dpkg -r pangaea >/dev/null && test ! -e /usr/bin/pangaea-ctl && test ! -e /usr/bin/pangaea-agent && echo removed";
    // Writes go to an upper directory of the test's own (as the local provider's nodes),
    // the image stays as it was.
    let upper = tempfile::tempdir().unwrap();
    let out = Command::new("systemd-nspawn")
        .args(["--quiet", "--register=no", "--keep-unit"])
        .arg("-D")
        .arg(&image)
        .arg(format!(
            "--overlay={}:{}:/",
            image.display(),
            upper.path().display()
        ))
        .arg(format!("--bind-ro={}:/tmp/pangaea.deb", deb.display()))
        .args(["/bin/sh", "-c", script])
        .output()
        .expect("systemd-nspawn");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let shown = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{shown}");
    assert!(
        stdout.contains(&format!("pangaea-ctl {}", env!("CARGO_PKG_VERSION"))),
        "{shown}"
    );
    for want in [
        "agent-beside",
        "agent-runs",
        "init-and-cost",
        "docs",
        "removed",
    ] {
        assert!(stdout.lines().any(|l| l == want), "{want}: {shown}");
    }
}
