//! Hardening #1 and #2, secrets at rest: after the commands that create a cluster's state
//! (PKI, issued certificates, the encryption key, the store, tokens, the admin socket), no
//! file under `.pangaea/` can be read by another local user, tried for real as `nobody`.
//!
//! Needs root (CI runs as root) to switch to `nobody` with `setpriv` (util-linux).

use pangaea_tests::{binary, files_below, readable_by_nobody};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ctl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(binary("pangaea-ctl"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pangaea-ctl {args:?}: {text}");
    text
}

#[test]
fn no_file_of_the_state_directory_is_readable_by_another_user() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (CI runs as root): it reads files as user nobody"
    );
    let tmp = tempfile::tempdir().unwrap();
    // tempdir() makes its directory 0700; open it, so that only .pangaea's own modes protect.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path();
    let control = dir.join("public.txt");
    std::fs::write(&control, "anyone may read this").unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).unwrap();

    // PKI, every node's issued certificates and keys, the encryption key.
    ctl(dir, &["compile", "--out", "compiled"]);
    // The store and the admin socket (created by a running controller), a token through it,
    // and the operator's etcd client certificate.
    let mut serve = Command::new(binary("pangaea-ctl"))
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = dir.join(".pangaea");
    let socket = state.join("ctl.sock");
    pangaea_tests::poll_until(
        "the admin socket",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || socket.exists().then_some(()),
    );
    // Hardening #2: the socket was created owner-only (not chmod'ed afterwards).
    let socket_mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(socket_mode, 0o600, "admin socket mode {socket_mode:o}");
    ctl(dir, &["token", "create", "--description", "at-rest test"]);
    ctl(dir, &["env", "etcdctl"]);
    let all_while_running = files_below(&state);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    serve.wait().unwrap();

    let dir_mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "state directory mode {dir_mode:o}");
    let all = files_below(&state);
    for wanted in [
        "state.redb",
        "pki/cluster-ca.key",
        "pki/etcd-ca.key",
        "pki/sa.key",
        "secrets/encryption-key",
        "pki/issued/cluster__etcd-operator.key",
    ] {
        assert!(
            all.contains(&state.join(wanted)),
            "{wanted} was not created: {all:?}"
        );
    }
    for f in &all {
        let mode = std::fs::symlink_metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", f.display());
    }

    // The check itself works: nobody reads the public control file.
    assert_eq!(
        readable_by_nobody(std::slice::from_ref(&control)),
        vec![control.display().to_string()]
    );
    let mut tried = all.clone();
    tried.extend(all_while_running.into_iter().filter(|p| p.exists()));
    assert_eq!(
        readable_by_nobody(&tried),
        Vec::<String>::new(),
        "files of the state directory readable by another user"
    );
}
