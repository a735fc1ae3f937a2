//! The three ways to install (operator experience issue #13), each in a clean environment:
//! `cargo install` into a root of its own, the Python wheel with pip into a fresh venv, and
//! the Debian package, installed with dpkg in a clean Debian: the local provider's node
//! image (debootstrap's minbase of bookworm, nothing of this workspace in it) booted as a
//! throwaway container (every write goes to an overlay's upper directory, deleted after).
//!
//! Each test builds its package first, as README says, from this checkout: `cargo deb`,
//! `maturin build`, `cargo install`. The release compilation itself is `.ci/run`'s (before
//! the tests, like the debug build of `cargo test`), so these builds mostly pack; cargo-deb
//! and maturin missing fail naming their install command.

use pangaea_tests::{binary, require_node_host};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One package build at a time: each writes the release binaries (maturin strips
/// `pangaea-ctl` in place, cargo rebuilds it unstripped) that another one packs.
static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This workspace's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// Runs `program args` in the workspace with the tests' target directory; its output, or a
/// failure naming the command (and `install`, the way to get the program).
fn build(program: &str, install: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .current_dir(workspace())
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (install it: {install})"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        pangaea_tests::output_text(&out)
    );
    pangaea_tests::output_text(&out)
}

/// The cargo on PATH.
fn cargo() -> String {
    pangaea_tests::which("cargo")
        .to_str()
        .expect("a UTF-8 path")
        .to_owned()
}

/// The agent's release binary, which both the Debian package and the wheel carry beside
/// pangaea-ctl (a no-op when it is fresh).
fn release_agent() {
    build(
        &cargo(),
        "rustup",
        &[
            "build",
            "--release",
            "--locked",
            "--quiet",
            "-p",
            "pangaea-agent",
        ],
    );
}

/// The Debian package, built as README says: the agent's release build, then `cargo deb
/// -p pangaea-controller` (which builds the controller's); `target/debian/pangaea_<version>-1_amd64.deb`.
fn package() -> PathBuf {
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    release_agent();
    build(
        &cargo(),
        "cargo install --locked cargo-deb",
        &["deb", "--locked", "--quiet", "-p", "pangaea-controller"],
    );
    let deb = target_dir().join(format!(
        "debian/pangaea_{}-1_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.is_file(), "cargo deb made no {}", deb.display());
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

/// The workspace's target directory (`target/`, or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    binary("pangaea-ctl")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/pangaea-ctl")
        .to_owned()
}

/// `pangaea-ctl --version` and `pangaea-agent --help` of the binaries in `bin`: both there,
/// side by side (the controller serves the agent found beside it), and both run.
fn assert_both_run(bin: &Path, how: &str) {
    let ctl = Command::new(bin.join("pangaea-ctl"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{how}: run {}/pangaea-ctl: {e}", bin.display()));
    assert!(ctl.status.success(), "{how}: {ctl:?}");
    let version = String::from_utf8_lossy(&ctl.stdout);
    assert!(
        version.contains(&format!("pangaea-ctl {}", env!("CARGO_PKG_VERSION"))),
        "{how}: {version}"
    );
    let agent = Command::new(bin.join("pangaea-agent"))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{how}: run {}/pangaea-agent: {e}", bin.display()));
    assert!(agent.status.success(), "{how}: {agent:?}");
}

/// The wheel, built as README says (`pip install pangaea-ctl`, as ruff and uv ship theirs:
/// the agent's release binary copied into the wheel's data scripts, then `maturin build`),
/// installed with pip into a fresh virtual environment (no system site packages, no
/// index): both binaries land in the venv's `bin/`.
#[test]
fn the_python_wheel_installs_with_pip_in_a_fresh_venv_and_runs() {
    let wheels = tempfile::tempdir().unwrap();
    {
        let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        release_agent();
        // Where controller/pyproject.toml's `data` points (the workspace's target/,
        // whatever CARGO_TARGET_DIR says).
        let scripts = workspace().join("target/wheel-data/scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        std::fs::copy(
            target_dir().join("release/pangaea-agent"),
            scripts.join("pangaea-agent"),
        )
        .unwrap();
        build(
            "maturin",
            "pip install 'maturin>=1.5,<2'",
            &[
                "build",
                "--release",
                "--locked",
                "-m",
                "controller/Cargo.toml",
                "--out",
                wheels.path().to_str().expect("a UTF-8 path"),
            ],
        );
    }
    let wheels = wheels.path();
    let prefix = format!("pangaea_ctl-{}-py3-none-", env!("CARGO_PKG_VERSION"));
    let wheel = std::fs::read_dir(wheels)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && n.ends_with(".whl")
            })
        })
        .unwrap_or_else(|| panic!("maturin made no {prefix}*.whl in {}", wheels.display()));
    let python = pangaea_tests::which("python3");
    let tmp = tempfile::tempdir().unwrap();
    let venv = tmp.path().join("venv");
    let made = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap();
    assert!(made.status.success(), "python3 -m venv: {made:?}");
    let bin = venv.join("bin");
    assert!(!bin.join("pangaea-ctl").exists());
    let pip = Command::new(bin.join("pip"))
        .args([
            "install",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(&wheel)
        .env_remove("PIP_FIND_LINKS")
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "pip install {}: {}",
        wheel.display(),
        pangaea_tests::output_text(&pip)
    );
    assert_both_run(&bin, "pip install");
    let gone = Command::new(bin.join("pip"))
        .args(["uninstall", "--yes", "pangaea-ctl"])
        .output()
        .unwrap();
    assert!(gone.status.success(), "{gone:?}");
    assert!(!bin.join("pangaea-ctl").exists() && !bin.join("pangaea-agent").exists());
}

/// `cargo install` from this checkout, as README says, into a root of the test's own: the
/// controller and the agent (two packages, one command), offline, with the lock file.
#[test]
fn cargo_install_installs_both_binaries_and_they_run() {
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let root_dir = root.path().to_str().expect("a UTF-8 path");
    for package in ["controller", "agent"] {
        build(
            &cargo(),
            "rustup",
            &[
                "install",
                "--locked",
                "--offline",
                "--quiet",
                "--root",
                root_dir,
                "--path",
                package,
            ],
        );
    }
    assert_both_run(&root.path().join("bin"), "cargo install");
}
