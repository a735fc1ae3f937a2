//! The `pangaea-ctl` binary's help teaches its commands. (Also makes `cargo test
//! --workspace` build the binary, which the end-to-end CLI test in `tests/` drives.)

use std::process::Command;

fn ctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pangaea-ctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn help_lists_the_commands() {
    let (ok, text) = ctl(&["--help"]);
    assert!(ok);
    for cmd in ["serve", "pki", "token", "status", "node"] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
}

#[test]
fn token_create_help_shows_defaults() {
    let (ok, text) = ctl(&["token", "create", "--help"]);
    assert!(ok);
    assert!(
        text.contains("[default: 1h]") && text.contains("--node"),
        "{text}"
    );
}

#[test]
fn an_unknown_command_fails() {
    let (ok, text) = ctl(&["frobnicate"]);
    assert!(!ok);
    assert!(text.contains("unrecognized subcommand"), "{text}");
}

#[test]
fn artifacts_import_fetch_and_list() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join(".pangaea");
    let s = state.to_str().unwrap();
    let blob = d.path().join("etcd.tar.gz");
    std::fs::write(&blob, b"pretend this is etcd").unwrap();
    let sha = {
        let out = Command::new("sha256sum").arg(&blob).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };

    let (ok, text) = ctl(&["--state-dir", s, "artifacts", "list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("kubernetes-server") && text.contains("missing"),
        "{text}"
    );

    // A local source for the pinned etcd entry, with the digest of what it serves.
    let overrides = d.path().join("overrides.yaml");
    std::fs::write(
        &overrides,
        format!(
            "- name: etcd\n  url: file://{}\n  digest: sha256:{sha}\n  members: {{}}\n",
            blob.display()
        ),
    )
    .unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "fetch",
        "etcd",
        "--overrides",
        overrides.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("sha256:{sha}")), "{text}");
    assert!(state.join("artifacts/sha256").join(&sha).is_file());

    // The wrong digest for a source: refused, nothing stored.
    let wrong = "1".repeat(64);
    std::fs::write(
        &overrides,
        format!(
            "- name: runc\n  url: file://{}\n  digest: sha256:{wrong}\n",
            blob.display()
        ),
    )
    .unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "fetch",
        "runc",
        "--overrides",
        overrides.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("digest mismatch"), "{text}");
    assert!(!state.join("artifacts/sha256").join(&wrong).exists());

    // Unknown names and malformed overrides are clear errors.
    let (ok, text) = ctl(&["--state-dir", s, "artifacts", "fetch", "nosuch"]);
    assert!(
        !ok && text.contains("no artifact named \"nosuch\""),
        "{text}"
    );
    std::fs::write(&overrides, "- name: etcd\n  colour: blue\n").unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "fetch",
        "--overrides",
        overrides.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("overrides.yaml:2:"), "{text}");

    // Import: stored under both digests, listed.
    let other = d.path().join("tool");
    std::fs::write(&other, b"a tool").unwrap();
    let (ok, text) = ctl(&[
        "--state-dir",
        s,
        "artifacts",
        "import",
        other.to_str().unwrap(),
    ]);
    assert!(
        ok && text.contains("sha256:") && text.contains("sha512:"),
        "{text}"
    );
    let (ok, text) = ctl(&["--state-dir", s, "artifacts", "list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("also in the mirror") && text.contains("tool"),
        "{text}"
    );
}
